"""Dated tables of Spain's statutory interest rates, each value with its official reference.

Two tables, both tuples of ``RatePeriod`` (inclusive ``start``/``end`` dates, annual percent):

``LATE_PAYMENT_RATES``
    The *tipo legal de interés de demora* for commercial transactions (Ley 3/2004, art. 7, as
    amended by Real Decreto-ley 4/2013 and Ley 11/2013): the ECB rate of its most recent main
    refinancing operation before the first day of the half-year, plus 8 points (7 points before
    24 February 2013). The Tesoro publishes it in the BOE at the end of every June and December
    for the coming half-year.

``LEGAL_INTEREST_RATES``
    The *interés legal del dinero* (Ley 24/1984, art. 1; Código Civil, art. 1108), set for each
    calendar year by the Ley de Presupuestos Generales del Estado (LPGE). When a budget is
    extended (art. 134.4 of the Constitution) its rate stays in force, as in 2019-2020 and
    2024-2026.

How each value was checked (Nov 2026) is written next to it. "ECB+8" means the value was derived
from the ECB's key-rate table (main refinancing operations, rate in force on the last operation
of the previous half-year) by the art. 7 formula, and the BOE text itself was not read.

Missing on purpose: Ley 3/2004 rate for 2026-H2 (July-December 2026). Its BOE resolution
(expected late June 2026) could not be read, so ``rate_on`` raises ``LookupError`` for business
debtors from 2026-07-01 until someone adds it.

How to add the next half-year:
1. Find the BOE resolution "... por la que se publica el tipo legal de interés de demora aplicable
   a las operaciones comerciales durante el [primer|segundo] semestre natural del año YYYY"
   (Ministerio de Economía, Sección III, published about 28 June / 31 December).
2. Append ``_half(YYYY, 1 or 2, "x.xx", "BOE-A-...: Resolución de <fecha> ...")`` to
   ``LATE_PAYMENT_RATES``, keeping date order; check the value against the ECB rate + 8.
3. For a new calendar year, append ``_year(YYYY, "x.xx", "<Ley de Presupuestos>, disposición
   adicional ...")`` to ``LEGAL_INTEREST_RATES`` (or "<ley> prorrogada" if the budget was
   extended). ``tests/test_money.py`` checks that the tables stay contiguous and ordered.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date
from decimal import Decimal


@dataclass(frozen=True, slots=True)
class RatePeriod:
    """One rate in force from ``start`` to ``end``, both inclusive."""

    start: date
    end: date
    rate: Decimal  # annual percent, e.g. Decimal("11.15")
    reference: str  # where the value is officially published
    # True when the table had no value yet for a day after its last period and the last
    # published rate was carried forward: the figure must be shown as provisional.
    provisional: bool = False

    def covers(self, day: date) -> bool:
        return self.start <= day <= self.end


def _half(year: int, half: int, rate: str, reference: str) -> RatePeriod:
    start = date(year, 1, 1) if half == 1 else date(year, 7, 1)
    end = date(year, 6, 30) if half == 1 else date(year, 12, 31)
    return RatePeriod(start, end, Decimal(rate), reference)


def _year(year: int, rate: str, reference: str) -> RatePeriod:
    return RatePeriod(date(year, 1, 1), date(year, 12, 31), Decimal(rate), reference)


_SGTPF = "Resolución de la Secretaría General del Tesoro y Política Financiera"
_SGTFI = "Resolución de la Secretaría General del Tesoro y Financiación Internacional"
_TITLE = "tipo legal de interés de demora en operaciones comerciales"

LATE_PAYMENT_RATES: tuple[RatePeriod, ...] = (
    # 2013-H1 was split by Real Decreto-ley 4/2013 (in force 24-02-2013: 7 -> 8 points over the
    # ECB's 0.75 %). Checked: studylib.es table of BOE rates; larioja.org; perebrachfield.com.
    RatePeriod(
        date(2013, 1, 1),
        date(2013, 2, 23),
        Decimal("7.75"),
        f"BOE, resolución del Tesoro, {_TITLE}, 1.er semestre 2013 (BCE 0,75 % + 7)",
    ),
    RatePeriod(
        date(2013, 2, 24),
        date(2013, 6, 30),
        Decimal("8.75"),
        f"BOE, resolución del Tesoro que adapta el {_TITLE} del 24-02-2013 al 30-06-2013 "
        "al Real Decreto-ley 4/2013 (BCE 0,75 % + 8)",
    ),
    # ECB+8: MRO 0.50 % from 08-05-2013.
    _half(2013, 2, "8.50", f"BOE, {_SGTPF}, {_TITLE}, 2.º semestre 2013"),
    # studylib.es table; ECB+8 (0.25 % from 13-11-2013).
    _half(2014, 1, "8.25", f"BOE, {_SGTPF}, {_TITLE}, 1.er semestre 2014"),
    # BOE text read: "8,15 por 100" (ECB 0.15 % on 24-06-2014).
    _half(2014, 2, "8.15", f"BOE-A-2014-6914, {_SGTPF} de 27 de junio de 2014"),
    # studylib.es table; ECB+8 (0.05 % from 10-09-2014).
    _half(2015, 1, "8.05", f"BOE, {_SGTPF}, {_TITLE}, 1.er semestre 2015"),
    # ECB+8: MRO 0.05 % from 10-09-2014 until 16-03-2016.
    _half(2015, 2, "8.05", f"BOE, {_SGTPF}, {_TITLE}, 2.º semestre 2015"),
    # elEconomista/Servimedia 29-12-2016 ("primer semestre de 2016 (8,05%)").
    _half(2016, 1, "8.05", f"BOE, {_SGTPF}, {_TITLE}, 1.er semestre 2016"),
    # elEconomista/Servimedia 29-12-2016 ("se mantiene con respecto a la última mitad de 2016").
    _half(2016, 2, "8.00", f"BOE, {_SGTPF}, {_TITLE}, 2.º semestre 2016"),
    # From here to 2022-H2 the ECB MRO rate stayed at 0.00 % (16-03-2016 to 27-07-2022), so every
    # half-year is 8.00 %; values also read where noted.
    # gestoresderiesgo.com / elEconomista: Resolución de 27 de diciembre de 2016, 8,00 por 100.
    _half(2017, 1, "8.00", f"BOE, {_SGTPF} de 27 de diciembre de 2016"),
    # contem.es ("2n semestre 2017: 8%").
    _half(2017, 2, "8.00", f"BOE, {_SGTPF}, {_TITLE}, 2.º semestre 2017"),
    _half(2018, 1, "8.00", f"BOE, {_SGTPF}, {_TITLE}, 1.er semestre 2018"),  # ECB+8
    # contratodeobras.com quotes the BOE text: "8,00 por 100".
    _half(2018, 2, "8.00", f"BOE, {_SGTFI} de 27 de junio de 2018"),
    _half(2019, 1, "8.00", f"BOE, {_SGTFI}, {_TITLE}, 1.er semestre 2019"),  # ECB+8
    _half(2019, 2, "8.00", f"BOE, {_SGTFI}, {_TITLE}, 2.º semestre 2019"),  # ECB+8
    # BOE text read: "8,00 por 100" (ECB 0.00 % on 23-12-2019).
    _half(2020, 1, "8.00", f"BOE-A-2019-18736, {_SGTFI} de 27 de diciembre de 2019"),
    _half(2020, 2, "8.00", f"BOE, {_SGTFI}, {_TITLE}, 2.º semestre 2020"),  # ECB+8
    _half(2021, 1, "8.00", f"BOE, {_SGTFI}, {_TITLE}, 1.er semestre 2021"),  # ECB+8
    _half(2021, 2, "8.00", f"BOE, {_SGTFI}, {_TITLE}, 2.º semestre 2021"),  # ECB+8
    # kaf-kb.tntu.edu.ua quotes "first half of 2022 is 8%".
    _half(2022, 1, "8.00", f"BOE, {_SGTFI}, {_TITLE}, 1.er semestre 2022"),
    # ECB+8: the ECB's first rise (to 0.50 %) took effect 27-07-2022, after 1 July.
    _half(2022, 2, "8.00", f"BOE, {_SGTFI}, {_TITLE}, 2.º semestre 2022"),
    # buadeslegal.com: Resolución de 28-12-2022, BOE 30-12-2022, 10,5 %; ECB 2.50 % from 21-12-2022.
    _half(2023, 1, "10.50", f"BOE 30-12-2022, {_SGTFI} de 28 de diciembre de 2022"),
    # ECB+8 (4.00 % from 21-06-2023); resolution date from ceac-aragon.org.
    _half(2023, 2, "12.00", f"BOE 29-06-2023, {_SGTFI} de 28 de junio de 2023"),
    # srbasesores.com ("primer semestre natural de 2024 és del 12,50%"); ECB 4.50 % from 20-09-2023.
    _half(2024, 1, "12.50", f"BOE, {_SGTFI}, {_TITLE}, 1.er semestre 2024"),
    # ECB+8 (4.25 % from 12-06-2024).
    _half(2024, 2, "12.25", f"BOE, {_SGTFI}, {_TITLE}, 2.º semestre 2024"),
    # orientelegal.es: Resolución de 30-12-2024, 11,15 % (ECB 3.15 % from 18-12-2024).
    _half(2025, 1, "11.15", f"BOE, {_SGTFI} de 30 de diciembre de 2024"),
    # BOE title read on oficius.es; value by ECB+8 (2.15 % from 11-06-2025).
    _half(2025, 2, "10.15", f"BOE-A-2025-13217, {_SGTFI} de 25 de junio de 2025"),
    # BOE title read on oficius.es; value by ECB+8 (2.15 % kept on 18-12-2025: Europa Press, RTVE).
    _half(2026, 1, "10.15", f"BOE-A-2025-27201, {_SGTFI} de 23 de diciembre de 2025"),
    # 2026-H2: not found; see the module docstring.
)

_LPGE = "Ley de Presupuestos Generales del Estado"

LEGAL_INTEREST_RATES: tuple[RatePeriod, ...] = (
    # Values checked against: padulles.net table 2007-2020; sanjuanasesores.com (2013);
    # joresp.cat (2015, 2017, 2018, 2022); papelea.com (2018-2020); bancaelectronica.net (2021);
    # assessoriacodina.com (2023); gamebob.dev ("2024, 2025, and 2026 ... 3.25%"); a public code
    # table citing the Banco de España "Tabla de tipos de interés legal" (1995-2026).
    _year(2013, "4.00", f"Ley 17/2012, {_LPGE} para 2013, disposición adicional 39.ª"),
    _year(2014, "4.00", f"Ley 22/2013, {_LPGE} para 2014"),
    _year(2015, "3.50", f"Ley 36/2014, {_LPGE} para 2015, disposición adicional 32.ª"),
    _year(2016, "3.00", f"Ley 48/2015, {_LPGE} para 2016"),
    _year(2017, "3.00", f"Ley 3/2017, {_LPGE} para 2017"),
    _year(2018, "3.00", f"Ley 6/2018, {_LPGE} para 2018, disposición adicional 57.ª"),
    _year(2019, "3.00", "Ley 6/2018, disposición adicional 57.ª (presupuestos prorrogados)"),
    _year(2020, "3.00", "Ley 6/2018, disposición adicional 57.ª (presupuestos prorrogados)"),
    _year(2021, "3.00", f"Ley 11/2020, {_LPGE} para 2021"),
    _year(2022, "3.00", f"Ley 22/2021, {_LPGE} para 2022, disposición adicional 46.ª"),
    _year(2023, "3.25", f"Ley 31/2022, {_LPGE} para 2023"),
    _year(2024, "3.25", "Ley 31/2022 (presupuestos prorrogados, art. 134.4 CE)"),
    _year(2025, "3.25", "Ley 31/2022 (presupuestos prorrogados, art. 134.4 CE)"),
    _year(2026, "3.25", "Ley 31/2022 (presupuestos prorrogados, art. 134.4 CE)"),
)
