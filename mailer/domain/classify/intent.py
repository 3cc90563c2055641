"""What a debtor's reply asks for, by Spanish and English rules, with the promised date when stated."""

from __future__ import annotations

import re
from datetime import date

from mailer.domain.classify.dates import find_dates, normalize
from mailer.domain.classify.lookahead import starting_with
from mailer.domain.classify.model import Intent

# Rules run on accent-free lower-case text (see dates.normalize), so "envíen" is written "envien".
# Each is put behind a look-ahead for the letters its alternatives start with (see
# lookahead.starting_with): a search then tries them only where such a word could begin.
_STOP = starting_with(
    "abcdehlnrstu",
    r"\b(?:"
    r"dejen? de (?:escribir|enviar|mandar|contactar|molestar|llamar)|no (?:me |nos )?(?:envien|manden|escriban|contacten|molesten|vuelvan a)"
    r"|no quiero (?:recibir|que me)|dar(?:me|nos)? de baja|darse de baja|baja de (?:la|su|esta) lista|borren? mi (?:correo|direccion|email)"
    r"|eliminen? mi (?:correo|direccion|email)|no (?:deseo|quiero) (?:recibir|mas)|acoso"
    r"|stop (?:e-?mailing|emailing|contacting|writing|sending|messaging|harass)|do not (?:contact|email|e-mail|write)"
    r"|don'?t (?:contact|email|e-mail|write to) me|unsubscribe|remove (?:me|my (?:e-?mail|address))|take me off"
    r"|no (?:more|further) (?:e-?mails|emails|contact|messages)|leave me alone|harass(?:ment|ing)|cease and desist"
    r")",
)
_DISPUTE = starting_with(
    "cdefilnorstw",
    r"\b(?:"
    r"no (?:estamos|estoy) de acuerdo|(?:la )?factura (?:es |esta )?(?:incorrecta|erronea|mal)|importe (?:es )?(?:incorrecto|erroneo)"
    r"|no (?:reconozco|reconocemos)|no (?:hemos|he) recibido (?:el|la|los|las|ningun|nada|mercancia|pedido|producto|material|servicio)"
    r"|nunca (?:recibimos|recibi|llego|llegaron|nos llego)|no (?:nos |me )?(?:llego|llegaron) (?:el|la|los|las|nunca|nada)"
    r"|no (?:debemos|debo) nada|no (?:es|son) (?:nuestra|mia|correcta)|reclamacion|disconformidad|no corresponde"
    r"|(?:esta|la) factura (?:ya )?(?:no )?(?:es|esta) (?:duplicada|incorrecta)|servicio (?:no|nunca) (?:se )?(?:presto|realizo)|defectuos"
    r"|(?:the )?invoice is (?:wrong|incorrect|not correct|inaccurate)|(?:wrong|incorrect) (?:amount|invoice)|(?:we|i) (?:dispute|contest)"
    r"|never (?:received|got|ordered|delivered)|did(?:n'?t| not) (?:receive|order|get) (?:the|any|it|them|our)|not what (?:we|i) ordered"
    r"|(?:do|does)(?:n'?t| not) owe|not (?:our|my) (?:invoice|debt)|(?:i|we) do not recognise|(?:i|we) do(?:n'?t| not) recogni[sz]e"
    r"|overcharg|charged twice|double(?:-| )charg|defective|damaged goods|disagree"
    r")",
)
_PAID = starting_with(
    "aefhiloprstwy",
    r"\b(?:"
    r"ya (?:esta|estan|ha sido|han sido|lo hemos|lo he|la hemos|la he|hemos|he|se ha|se hizo|se realizo|fue|quedo)\s*(?:\w+\s+){0,2}?(?:pagad|abonad|transferid|saldad|liquidad|ingresad|hech|realizad|pag|abon)"
    r"|(?:hemos|he) (?:pagado|abonado|transferido|realizado (?:el pago|la transferencia)|hecho (?:el pago|la transferencia)|ingresado|liquidado|saldado)"
    r"|(?:adjunto|adjuntamos|os envio|le envio|te envio|envio|envie|enviamos) (?:el |un )?(?:justificante|comprobante|recibo)"
    r"|(?:se|lo|la) (?:pago|pagamos|abonamos|transferimos) (?:ayer|el|la semana pasada|hace)|pagad[oa] (?:ayer|el|hace)|(?:fue|ha sido) (?:pagada|abonada)"
    r"|(?:already|have|has been|was|were) (?:been )?(?:paid|settled|transferred|sent the payment)|we paid|i paid|(?:we|i)'ve paid|payment (?:was|has been) (?:made|sent|processed)"
    r"|proof of (?:payment|transfer)|(?:remittance|payment) (?:advice|confirmation) (?:attached|enclosed)|(?:attached|enclosed) (?:is |please find )?(?:the )?(?:remittance|proof|receipt)"
    r"|(?:we|i) (?:sent|made|transferred|wired) (?:the |a |you the )?(?:payment|transfer|money|funds)"
    r")",
)
_HARDSHIP = starting_with(
    "abcdefhilmnpsuw",
    r"\b(?:"
    r"(?:pagar|pago|pagos|abonar) (?:a|en) plazos|plazos|fraccionar|aplazar|aplazamiento|(?:mas|un poco de|algo de|un poco mas de|algo mas de) (?:tiempo|plazo|margen)|prorroga"
    r"|no (?:puedo|podemos|podre|podremos) (?:pagar|abonar|hacer frente|asumir)|(?:dificultades|problemas) (?:economicas|financieros|economicos|de liquidez|de tesoreria)"
    r"|(?:mala|dificil) situacion|sin liquidez|falta de liquidez|(?:en |por )?(?:paro|desempleo)|concurso de acreedores|pagos parciales|pago parcial|poco a poco"
    r"|instal+ments?|payment plan|(?:more|extra|additional) time|extension|(?:can'?t|cannot|can not|unable to|won'?t be able to|not able to) (?:pay|afford)"
    r"|(?:financial|cash ?flow) (?:difficult|problem|hardship|issue)|hardship|(?:pay|paying) (?:in )?(?:part|parts|monthly)|partial payment|spread (?:the )?(?:payment|cost)"
    r"|struggling|lost my job|unemployed|bankrupt"
    r")",
)
_PROMISE = starting_with(
    "aehilmopqrstvw",
    r"\b(?:"
    r"(?:le |les |te |os )?(?:pagare|pagaremos|abonare|abonaremos|transferire|transferiremos|ingresare|ingresaremos|liquidare|liquidaremos|saldare|saldaremos)"
    r"|(?:le |les |te |os )?(?:hare|haremos|realizare|realizaremos|mandare|mandaremos|enviare|enviaremos) (?:el|la|un|una) (?:pago|transferencia|ingreso|abono)"
    r"|(?:vamos a|voy a|va a|van a) (?:pagar|abonar|transferir|hacer (?:el|la) (?:pago|transferencia)|realizar (?:el|la) (?:pago|transferencia)|ingresar|liquidar)"
    r"|(?:el|la) (?:pago|transferencia) (?:se )?(?:hara|realizara|saldra|estara|llegara|se hara)|(?:esta|queda) (?:programad|ordenad)[oa]"
    r"|(?:i|we)(?:'ll| will| shall| are going to| am going to|'m going to|'re going to) (?:\w+ )?(?:pay|settle|transfer|send (?:the |you )?(?:payment|money|funds)|make (?:the |a )?payment|wire)"
    r"|payment (?:will be|is) (?:made|sent|scheduled|processed|on its way)|(?:is|has been) scheduled for|(?:will|should) (?:be )?(?:paid|settled)"
    r")",
)
_NEGATED_PROMISE = starting_with(
    "acnw",
    r"\bno (?:le |les |te |os )?(?:pagare|pagaremos|vamos a pagar|voy a pagar|podre pagar|podremos pagar)"
    r"|\b(?:won'?t|will not|can'?t|cannot|am not going to|are not going to) (?:be able to )?pay",
)
_NOT_PAID = starting_with(
    "ahnt",
    r"\b(?:todavia|aun) no (?:hemos|he) pagado|\bnot (?:yet )?(?:been )?paid\b|\bhaven'?t paid\b",
)


def _sentences(text: str) -> list[str]:
    return [s for s in re.split(r"(?<=[.!?¿¡])\s+|\n+", text) if s.strip()]


def classify_intent(text: str, ref: date) -> tuple[Intent, date | None]:
    """The debtor's intent and, for a promise, the day they promised to pay by."""
    low = normalize(text)
    # A person who asks us to stop, or says the debt is wrong, must be heard first: both take a
    # case out of automatic chasing whatever else the message says.
    if _STOP.search(low):
        return Intent.STOP_CONTACT, None
    if _DISPUTE.search(low):
        return Intent.DISPUTE, None
    negated = bool(_NEGATED_PROMISE.search(low))
    if _PAID.search(low) and not _NOT_PAID.search(low):
        return Intent.PAID_ALREADY, None
    promise = _PROMISE.search(low)
    # "can we pay in instalments" or "I can't pay now" is hardship even when a date follows.
    if (_HARDSHIP.search(low) or negated) and (
        not promise
        or negated
        or _HARDSHIP.search(low[: promise.start()])
        or re.search(r"plazos|instal+ment|payment plan", low)
    ):
        return Intent.HARDSHIP, None
    if promise:
        return Intent.PROMISE_TO_PAY, _promised_date(text, low, promise.start(), ref)
    return Intent.OTHER, None


def _promised_date(text: str, low: str, at: int, ref: date) -> date | None:
    """The first date in the sentence of the promise, else the first one after it."""
    mentions = find_dates(text, ref, low=low)
    if not mentions:
        return None
    start = max(low.rfind(".", 0, at), low.rfind("\n", 0, at), 0)
    in_sentence = [m for m in mentions if m.start >= start]
    return (in_sentence or mentions)[0].value
