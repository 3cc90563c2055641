"""Reply intent in Spanish and English, and the promised payment date, on sentences debtors write."""

from __future__ import annotations

from datetime import date

import pytest

from mailer.domain.classify.dates import find_dates
from mailer.domain.classify.intent import classify_intent
from mailer.domain.classify.model import Intent

# Wednesday 4 March 2026: "el viernes" is the 6th, "next week" ends Friday the 13th.
REF = date(2026, 3, 4)

INTENTS: list[tuple[str, Intent]] = [
    # promise to pay
    ("Buenos días, pagaré el día 15 sin falta.", Intent.PROMISE_TO_PAY),
    ("Le haré la transferencia la semana que viene.", Intent.PROMISE_TO_PAY),
    ("Vamos a pagar la factura a final de mes, cuando cobremos.", Intent.PROMISE_TO_PAY),
    ("El pago se hará el viernes, disculpe el retraso.", Intent.PROMISE_TO_PAY),
    ("Mañana mismo les ingresamos el importe. Abonaremos el 20/03.", Intent.PROMISE_TO_PAY),
    ("Perdón por la demora, el lunes realizaremos el pago.", Intent.PROMISE_TO_PAY),
    ("We will pay on Friday.", Intent.PROMISE_TO_PAY),
    ("I'll pay by 15 March, apologies for the delay.", Intent.PROMISE_TO_PAY),
    ("Payment will be made at the end of the month.", Intent.PROMISE_TO_PAY),
    ("We're going to settle the invoice next week.", Intent.PROMISE_TO_PAY),
    ("Thanks for the reminder, I will transfer the money tomorrow.", Intent.PROMISE_TO_PAY),
    # paid already
    ("Ya está pagado desde el martes.", Intent.PAID_ALREADY),
    ("Adjunto justificante de la transferencia.", Intent.PAID_ALREADY),
    ("Hola, la factura ya la hemos abonado, revisen su cuenta por favor.", Intent.PAID_ALREADY),
    ("Hicimos la transferencia ayer, les envío el comprobante.", Intent.PAID_ALREADY),
    ("We paid last week, please check again.", Intent.PAID_ALREADY),
    ("This invoice has already been paid.", Intent.PAID_ALREADY),
    ("Please find attached the remittance advice for our payment.", Intent.PAID_ALREADY),
    ("I sent the payment on Monday by bank transfer.", Intent.PAID_ALREADY),
    # dispute
    ("No estamos de acuerdo con la factura, el importe es incorrecto.", Intent.DISPUTE),
    ("Nunca recibimos la mercancía, así que no vamos a pagar.", Intent.DISPUTE),
    ("Esta factura no corresponde a ningún pedido nuestro.", Intent.DISPUTE),
    ("The invoice is wrong: we were charged twice for the same order.", Intent.DISPUTE),
    ("We never received the goods, so we will not pay this.", Intent.DISPUTE),
    ("I dispute this charge; the service was never delivered.", Intent.DISPUTE),
    # hardship
    ("¿Podemos pagar a plazos? Ahora mismo no llegamos.", Intent.HARDSHIP),
    ("No puedo pagar ahora, estoy en paro desde enero.", Intent.HARDSHIP),
    ("Necesito un poco más de tiempo para reunir el dinero.", Intent.HARDSHIP),
    ("¿Sería posible fraccionar el pago en tres meses?", Intent.HARDSHIP),
    ("Can we pay in instalments? Business has been slow.", Intent.HARDSHIP),
    ("We need more time, cash flow is very tight this quarter.", Intent.HARDSHIP),
    ("I can't afford to pay the full amount right now.", Intent.HARDSHIP),
    ("Could we agree a payment plan? I will pay what I can each month.", Intent.HARDSHIP),
    # stop contact
    ("Dejen de escribirme, por favor.", Intent.STOP_CONTACT),
    ("No me envíen más correos a esta dirección.", Intent.STOP_CONTACT),
    ("Quiero darme de baja de estos avisos.", Intent.STOP_CONTACT),
    ("Stop emailing me.", Intent.STOP_CONTACT),
    ("Unsubscribe", Intent.STOP_CONTACT),
    ("Please do not contact me again about this.", Intent.STOP_CONTACT),
    # stop and dispute win over whatever else the message says
    ("La factura es incorrecta, pagaré solo cuando la corrijan.", Intent.DISPUTE),
    ("We will pay on Friday, but stop emailing me every day.", Intent.STOP_CONTACT),
    # questions and anything else a person must read
    ("¿Me pueden reenviar la factura en PDF?", Intent.OTHER),
    ("¿A qué número de cuenta tengo que hacer el pago?", Intent.OTHER),
    ("Who should I talk to about this invoice?", Intent.OTHER),
    ("Could you send me a copy of the invoice?", Intent.OTHER),
    ("Gracias por el aviso.", Intent.OTHER),
]


@pytest.mark.parametrize(("text", "expected"), INTENTS)
def test_intent(text: str, expected: Intent) -> None:
    intent, _promised = classify_intent(text, REF)
    assert intent is expected, text


def test_table_is_large_enough() -> None:
    assert len(INTENTS) >= 40


PROMISED: list[tuple[str, date]] = [
    ("Pagaré el día 15.", date(2026, 3, 15)),
    ("Pagaré el día 2.", date(2026, 4, 2)),  # the 2nd has passed: next month's
    ("Le haremos la transferencia el 15 de marzo.", date(2026, 3, 15)),
    ("Abonaremos la factura el 15/03.", date(2026, 3, 15)),
    ("Le pagaré el viernes.", date(2026, 3, 6)),
    ("We will pay next Friday.", date(2026, 3, 6)),
    ("I'll pay by 15 March.", date(2026, 3, 15)),
    ("We will pay at the end of the month.", date(2026, 3, 31)),
    ("Vamos a pagar a final de mes.", date(2026, 3, 31)),
    ("Le haré la transferencia la semana que viene.", date(2026, 3, 13)),
    ("I will pay on 2026-04-01.", date(2026, 4, 1)),
    ("Te pagaré mañana por la tarde.", date(2026, 3, 5)),
    ("We'll pay you on January 10th.", date(2027, 1, 10)),  # the date has passed this year
]


@pytest.mark.parametrize(("text", "expected"), PROMISED)
def test_promised_date(text: str, expected: date) -> None:
    intent, promised = classify_intent(text, REF)
    assert intent is Intent.PROMISE_TO_PAY, text
    assert promised == expected, text


def test_a_promise_without_a_date_has_none() -> None:
    assert classify_intent("We will pay as soon as possible.", REF) == (
        Intent.PROMISE_TO_PAY,
        None,
    )


@pytest.mark.parametrize(
    "text",
    [
        "Total: 1.250,50 €",
        "Son 3.5 horas de trabajo",
        "version 2.10 del programa",
        "el 50% restante",
    ],
)
def test_amounts_and_numbers_are_not_dates(text: str) -> None:
    assert find_dates(text, REF) == []
