"""Locale formatting for templates (amounts, dates, rates) and the opt-out sentence, via babel."""

from __future__ import annotations

from datetime import date, datetime
from decimal import Decimal
from functools import cache, lru_cache

from babel import Locale
from babel.dates import format_date as babel_format_date
from babel.numbers import format_currency, format_decimal

# The debtor's `lang` picks the locale: Spanish as written in Spain, English as in the UK/EU
# (day month year, € before the amount).
LOCALES = {"es": "es_ES", "en": "en_GB"}

# Appended by the renderer itself when the compliance profile asks for it (consumers), so no
# template can forget it. The reply keywords are what the inbound classifier honours.
OPT_OUT_LINES = {
    "es": (
        "Si no desea recibir más correos sobre este asunto, responda con «BAJA» "
        "y dejaremos de escribirle."
    ),
    "en": (
        "If you would rather not receive further emails about this matter, reply with "
        "“UNSUBSCRIBE” and we will stop writing to you."
    ),
}
OPT_OUT_KEYWORDS = {"es": "BAJA", "en": "UNSUBSCRIBE"}

_NBSP = "\u00a0"


def locale_for(lang: str) -> str:
    return LOCALES.get(lang, lang)


# Formatting runs several times per email: the parsed locale is kept (babel would parse the
# name on every call) and so are recent results (the same amounts and dates recur in a
# message's text and HTML, and across cases). Equal Decimals format alike: every format here
# has a fixed number of decimals.
@cache
def _locale(lang: str) -> Locale:
    return Locale.parse(locale_for(lang))


def _decimal(value: object) -> Decimal:
    if isinstance(value, Decimal):
        return value
    if isinstance(value, bool) or not isinstance(value, int | str):
        # floats would bring binary rounding into invoices; templates get Decimal from us.
        raise TypeError(f"expected an amount (Decimal), got {type(value).__name__}")
    return Decimal(value)


def format_money(amount: object, currency: str = "EUR", lang: str = "es") -> str:
    """``1.210,00 €`` (es) or ``€1,210.00`` (en); always two decimals."""
    return _money(_decimal(amount), currency, lang)


@lru_cache(maxsize=4096)
def _money(amount: Decimal, currency: str, lang: str) -> str:
    text: str = format_currency(amount, currency, locale=_locale(lang))
    # babel puts a no-break space between amount and sign; a plain space reads the same and
    # matches what staff type when they search their mail for an amount.
    return text.replace(_NBSP, " ")


def format_long_date(value: object, lang: str = "es") -> str:
    """``15 de mayo de 2025`` (es) or ``15 May 2025`` (en)."""
    if isinstance(value, datetime):
        value = value.date()
    if not isinstance(value, date):
        raise TypeError(f"expected a date, got {type(value).__name__}")
    return _long_date(value, lang)


@lru_cache(maxsize=4096)
def _long_date(value: date, lang: str) -> str:
    return str(babel_format_date(value, format="long", locale=_locale(lang)))


def format_percent(value: object, lang: str = "es") -> str:
    """An annual percent as stored in the rate tables (``Decimal("11.15")``) → ``11,15 %``."""
    number = format_decimal(_decimal(value), format="#,##0.00", locale=_locale(lang))
    # Spanish style (RAE) separates the sign; English writes it closed up.
    return f"{number} %" if lang == "es" else f"{number}%"


def opt_out_line(lang: str) -> str:
    """The one-line "how to ask for no more email" sentence in ``lang`` (English if unknown)."""
    return OPT_OUT_LINES.get(lang, OPT_OUT_LINES["en"])
