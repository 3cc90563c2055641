"""Out-of-office and other automatic replies: recognising them and reading when the person is back."""

from __future__ import annotations

import re
from datetime import date

from mailer.domain.classify.dates import find_dates, normalize
from mailer.domain.classify.lookahead import starting_with

# Body phrases of vacation responders in the five languages our debtors write in.
_OOO_BODY = re.compile(
    r"out of (?:the )?office|away from (?:the |my )?(?:office|desk)|on (?:annual )?(?:leave|vacation|holiday)|"
    r"limited access to (?:my )?e-?mail|i am (?:currently )?(?:away|out)|i'?m (?:currently )?(?:away|out of)|"
    r"will (?:be )?(?:back|return)|automatic reply|auto-?reply|"
    r"fuera de (?:la )?oficina|de vacaciones|ausente|estar[eé] fuera|sin acceso al correo|respuesta autom[aá]tica|"
    r"fora do escrit[oó]rio|de f[eé]rias|estarei ausente|resposta autom[aá]tica|"
    r"absent(?:e)? du bureau|en cong[eé]s?|je suis absent|r[eé]ponse automatique|de retour le|"
    r"nicht im b[uü]ro|abwesend|im urlaub|au[sß]er haus|automatische antwort|wieder (?:im b[uü]ro|erreichbar|da)",
)
# Words after which a date is the day the person is back ("until", "back on", "hasta", "bis", ...).
_RETURN_CUE = starting_with(  # see lookahead.starting_with
    "abdhjrtuvwz",
    r"\b(?:until|till|til|through|thru|back (?:on|in the office on|at work on)?|return(?:ing)? (?:on|to the office on)?|"
    r"returning|resume|hasta(?: el)?|regreso(?: el)?|regresar[eé](?: el)?|volver[eé](?: el)?|vuelvo(?: el)?|"
    r"de vuelta(?: el)?|reincorporo(?: el)?|retorno(?: el)?|ate|at[eé] (?:o dia|dia)?|retorno(?: no dia| em)?|"
    r"volto(?: no dia| em)?|jusqu'?(?:au|a)|de retour(?: le)?|retour(?: le)?|bis(?: zum| einschlie[sß]lich)?|"
    r"ab(?: dem)?|wieder(?: ab)?|zur[uü]ck(?: am)?)\b",
)


def looks_like_out_of_office(subject: str, body: str) -> bool:
    # Lower-case patterns on lower-cased text: far quicker than re.IGNORECASE.
    return bool(_OOO_BODY.search(subject.lower()) or _OOO_BODY.search(body[:3000].lower()))


def return_date(text: str, ref: date) -> date | None:
    """The day the person says they are back; the last date of a stated absence otherwise."""
    low = normalize(text[:4000])
    mentions = [m for m in find_dates(text[:4000], ref, low=low) if m.value >= ref]
    if not mentions:
        return None
    for cue in _RETURN_CUE.finditer(low):
        for mention in mentions:
            # The date must follow the cue closely: "back on Monday 15 March", "hasta el 15 de marzo".
            if 0 <= mention.start - cue.end() <= 25:
                return mention.value
    # "From 1 to 15 March", "del 1 al 15": a range's end is the last day away.
    return max(m.value for m in mentions)
