"""Ledger CSV files → validated rows; a bad file is refused whole, each bad row as file:line."""

from __future__ import annotations

import csv
import gc
import itertools
import re
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import date
from decimal import Decimal
from pathlib import Path
from typing import Any, TextIO

from mailer.config import is_address
from mailer.domain.calendar import timezone_for
from mailer.domain.models import Contact, Debtor, DebtorKind, Invoice, Payment
from mailer.domain.money import parse_amount
from mailer.errors import ImportRefusedError

INVOICE_REQUIRED = (
    "invoice_number", "debtor_id", "debtor_name", "debtor_emails", "debtor_lang",
    "debtor_kind", "country", "currency", "amount", "issue_date", "due_date",
)  # fmt: skip
INVOICE_OPTIONAL = ("region", "invoice_pdf", "payment_link")
PAYMENT_REQUIRED = ("invoice_number", "date", "amount")
PAYMENT_OPTIONAL = ("reference",)
LANGS = ("es", "en")
MAX_PROBLEMS = 200  # a wholly wrong file should not print a million lines


@dataclass(frozen=True, slots=True)
class InvoiceRow:
    line: int
    debtor: Debtor
    invoice: Invoice


@dataclass(frozen=True, slots=True)
class PaymentRow:
    line: int
    key: str  # what makes re-importing the same payment a no-op
    payment: Payment
    reference: str | None


class _Semicolon(csv.excel):
    delimiter = ";"


class _Problems:
    def __init__(self, path: Path) -> None:
        self.path = path
        self.items: list[str] = []

    def add(self, line: int, message: str) -> None:
        if len(self.items) < MAX_PROBLEMS:
            self.items.append(f"{self.path}:{line}: {message}")
        elif len(self.items) == MAX_PROBLEMS:
            self.items.append(f"{self.path}:{line}: too many problems, stopping here")

    def raise_if_any(self) -> None:
        if self.items:
            raise ImportRefusedError(self.items)


def _rows(
    path: Path, required: tuple[str, ...], optional: tuple[str, ...], problems: _Problems
) -> Iterator[tuple[int, dict[str, str]]]:
    """Stripped records by column name with the line each starts on, read as a stream."""
    try:
        # utf-8-sig: Excel writes a BOM. Streamed, so a large ledger is never all in memory.
        with path.open(encoding="utf-8-sig", newline="") as handle:
            yield from _records(handle, required, optional, problems)
    except OSError as exc:
        problems.add(0, f"cannot read: {exc.strerror}")
    except UnicodeDecodeError:
        line, offset = _first_bad_byte(path)
        problems.add(line, f"not UTF-8 text (byte {offset}); export the sheet as CSV UTF-8")


def _first_bad_byte(path: Path) -> tuple[int, int]:
    """Where decoding fails (line, byte offset): the streamed reader only knows its chunk."""
    data = path.read_bytes()
    try:
        data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        return data.count(b"\n", 0, exc.start) + 1, exc.start
    return 0, 0


def _records(
    handle: TextIO, required: tuple[str, ...], optional: tuple[str, ...], problems: _Problems
) -> Iterator[tuple[int, dict[str, str]]]:
    # Spreadsheets in Spanish locales export with ';' (the comma is the decimal separator).
    first = handle.readline()
    dialect = _Semicolon if ";" in first and "," not in first else csv.excel
    reader = csv.reader(itertools.chain((first,), handle), dialect=dialect)
    try:
        header = [h.strip() for h in next(reader, [])]
    except csv.Error as exc:
        problems.add(1, f"not valid CSV: {exc}")
        return
    missing = [c for c in required if c not in header]
    unknown = [c for c in header if c not in required and c not in optional]
    if missing:
        problems.add(1, f"missing column(s): {', '.join(missing)}")
    if unknown:
        problems.add(
            1,
            f"unknown column(s): {', '.join(unknown)} (expected {', '.join(required + optional)})",
        )
    if missing or unknown:
        return
    width = len(header)
    while True:
        line = reader.line_num + 1  # where the record starts (a quoted field may span lines)
        try:
            record = next(reader)
        except StopIteration:
            break
        except csv.Error as exc:
            problems.add(line, f"not valid CSV: {exc}")
            return
        if not record:
            continue  # csv.DictReader skipped empty records too
        if len(record) > width:
            problems.add(line, "more fields than columns")
            continue
        if len(record) < width:
            problems.add(line, "fewer fields than columns")
            continue
        values = dict(zip(header, map(str.strip, record), strict=True))
        if not any(values.values()):
            continue  # blank lines at the end of exported sheets
        yield line, values


def _date(value: str, column: str, line: int, problems: _Problems) -> date | None:
    try:
        return date.fromisoformat(value)
    except ValueError:
        problems.add(line, f"{column} {value!r} is not a date (YYYY-MM-DD)")
        return None


def _amount(value: str, line: int, problems: _Problems) -> Decimal | None:
    try:
        amount = parse_amount(value)
    except ValueError as exc:
        problems.add(line, f"amount {value!r}: {exc}")
        return None
    if amount <= 0:
        problems.add(line, f"amount {value!r} must be more than zero")
        return None
    return amount


_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


def _one_line(values: dict[str, str], line: int, problems: _Problems) -> bool:
    """No line breaks or control characters: a value may end up in an email header."""
    if _CONTROL.search("".join(values.values())) is None:  # one scan for the usual clean row
        return True
    for column, value in values.items():
        if _CONTROL.search(value):
            problems.add(line, f"{column} contains a line break or control character")
    return False


class _Places:
    """timezone_for per distinct (country, region): a ledger has a handful, and many rows."""

    def __init__(self) -> None:
        self._known: dict[tuple[str, str | None], str | ValueError] = {}

    def timezone(self, country: str, region: str | None) -> str:
        key = (country, region)
        found = self._known.get(key)
        if found is None:
            try:
                found = timezone_for(country, region)
            except ValueError as exc:
                found = exc
            self._known[key] = found
        if isinstance(found, ValueError):
            raise found
        return found


@contextmanager
def collector_paused() -> Iterator[None]:
    """Pause the cyclic GC while building many acyclic objects; it would rescan them repeatedly.

    Parsing or importing 300k rows with it on costs a fifth more time and frees nothing: rows and
    events hold no reference cycles. Its previous state is restored whatever happens.
    """
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()


def parse_invoices(path: Path) -> list[InvoiceRow]:
    """Every row of an invoices CSV, or ImportRefusedError listing every bad row."""
    with collector_paused():
        return _parse_invoices(path)


def _parse_invoices(path: Path) -> list[InvoiceRow]:
    problems = _Problems(path)
    result: list[InvoiceRow] = []
    first_line: dict[str, int] = {}
    debtor_seen: dict[str, tuple[int, Debtor]] = {}
    places = _Places()
    # Equal values share one object (dates, currencies, names, the Debtor itself): 300k rows
    # of a few hundred debtors' worth of distinct values then fit in a fraction of the memory.
    shared: dict[object, Any] = {}
    share = shared.setdefault
    # A ledger lists a debtor's invoices together: the same debtor columns as the row before
    # are the same, already validated, Debtor.
    last_raw: tuple[str, ...] = ()
    last_debtor: Debtor | None = None
    for line, v in _rows(path, INVOICE_REQUIRED, INVOICE_OPTIONAL, problems):
        ok = _one_line(v, line, problems)
        for column in INVOICE_REQUIRED:
            if not v[column]:
                problems.add(line, f"{column} is empty")
                ok = False
        if not ok:
            continue
        number = v["invoice_number"]
        if number in first_line:
            problems.add(line, f"invoice {number} already on line {first_line[number]}")
            continue
        first_line[number] = line
        raw = (
            v["debtor_id"], v["debtor_name"], v["debtor_emails"], v["debtor_lang"],
            v["debtor_kind"], v["country"], v.get("region", ""),
        )  # fmt: skip
        debtor = last_debtor if raw == last_raw else _debtor(v, line, problems, places, share)
        currency = v["currency"].upper()
        if len(currency) != 3 or not currency.isalpha():
            problems.add(line, f"currency {v['currency']!r} is not an ISO 4217 code")
            ok = False
        amount = _amount(v["amount"], line, problems)
        issued = _date(v["issue_date"], "issue_date", line, problems)
        due = _date(v["due_date"], "due_date", line, problems)
        if issued and due and due < issued:
            problems.add(line, "due_date is before issue_date")
            ok = False
        if not ok or debtor is None or amount is None or issued is None or due is None:
            last_raw, last_debtor = (), None
            continue
        last_raw, last_debtor = raw, debtor
        seen = debtor_seen.get(debtor.id)
        if seen is None:
            debtor_seen[debtor.id] = (line, debtor)
        elif seen[1] is not debtor:
            if seen[1] != debtor:
                problems.add(
                    line,
                    f"debtor {debtor.id} differs from line {seen[0]}"
                    " (name, emails, language, kind or country)",
                )
                continue
            debtor = last_debtor = seen[1]
        invoice = Invoice(
            number=number, debtor_id=debtor.id, currency=share(currency, currency), amount=amount,
            issue_date=share(issued, issued), due_date=share(due, due),
            pdf_path=v.get("invoice_pdf") or None, payment_link=v.get("payment_link") or None,
        )  # fmt: skip
        result.append(InvoiceRow(line, debtor, invoice))
    problems.raise_if_any()
    if not result:
        raise ImportRefusedError([f"{path}:1: no invoice rows"])
    return result


def _debtor(
    v: dict[str, str],
    line: int,
    problems: _Problems,
    places: _Places,
    share: Callable[[Any, Any], Any],
) -> Debtor | None:
    """The row's debtor, or None after reporting what is wrong with it."""
    ok = True
    addresses = [a.strip() for a in v["debtor_emails"].split(";") if a.strip()]
    bad = [a for a in addresses if not is_address(a)]
    if bad or not addresses:
        problems.add(line, f"debtor_emails: not an email address: {', '.join(bad) or '(none)'}")
        ok = False
    lang = v["debtor_lang"].lower()
    if lang not in LANGS:
        problems.add(line, f"debtor_lang {v['debtor_lang']!r} must be one of {', '.join(LANGS)}")
        ok = False
    kind = _KINDS.get(v["debtor_kind"].lower())
    if kind is None:
        problems.add(line, f"debtor_kind {v['debtor_kind']!r} must be business or consumer")
        ok = False
    country = v["country"].upper()
    region = v.get("region", "").upper() or None
    try:
        tz = places.timezone(country, region)
    except ValueError as exc:
        problems.add(line, f"country/region: {exc}")
        ok = False
    if not ok or kind is None:
        return None
    # Keep the address order: the first one is the main contact.
    contacts = tuple(Contact(a) for a in dict.fromkeys(a.lower() for a in addresses))
    name = v["debtor_name"]
    return Debtor(
        id=v["debtor_id"], name=share(name, name), kind=kind, lang=share(lang, lang),
        country=share(country, country), region=share(region, region), timezone=tz,
        contacts=contacts,
    )  # fmt: skip


_KINDS = {kind.value: kind for kind in DebtorKind}


def parse_payments(path: Path) -> list[PaymentRow]:
    """Every row of a payments CSV, or ImportRefusedError listing every bad row.

    Without a ``reference`` column a payment is known by (invoice, date, amount, n-th identical
    row): re-importing the same file, or a later export that repeats earlier payments, adds
    nothing twice.
    """
    problems = _Problems(path)
    result: list[PaymentRow] = []
    ordinal: Counter[tuple[str, str, str]] = Counter()
    references: dict[str, int] = {}
    for line, v in _rows(path, PAYMENT_REQUIRED, PAYMENT_OPTIONAL, problems):
        if not _one_line(v, line, problems):
            continue
        if not v["invoice_number"]:
            problems.add(line, "invoice_number is empty")
            continue
        paid_on = _date(v["date"], "date", line, problems)
        amount = _amount(v["amount"], line, problems)
        if paid_on is None or amount is None:
            continue
        reference = v.get("reference") or None
        if reference:
            if reference in references:
                problems.add(line, f"reference {reference} already on line {references[reference]}")
                continue
            references[reference] = line
            key = f"ref:{reference}"
        else:
            ident = (v["invoice_number"], paid_on.isoformat(), str(amount))
            ordinal[ident] += 1
            key = "row:" + "|".join(ident) + f"|{ordinal[ident]}"
        result.append(
            PaymentRow(line, key, Payment(v["invoice_number"], paid_on, amount), reference)
        )
    problems.raise_if_any()
    if not result:
        raise ImportRefusedError([f"{path}:1: no payment rows"])
    return result
