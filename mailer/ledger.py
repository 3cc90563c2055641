"""Ledger CSV files → validated rows; a bad file is refused whole, each bad row as file:line."""

from __future__ import annotations

import csv
import gc
import hashlib
import itertools
import re
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import date
from decimal import Decimal
from operator import itemgetter
from pathlib import Path
from typing import Any, TextIO

from mailer.config import is_address
from mailer.domain.calendar import timezone_for
from mailer.domain.models import Contact, Debtor, DebtorKind, Invoice, Payment
from mailer.domain.money import parse_amount
from mailer.errors import ImportRefusedError
from mailer.slots import slot_constructor

INVOICE_REQUIRED = (
    "invoice_number", "debtor_id", "debtor_name", "debtor_emails", "debtor_lang",
    "debtor_kind", "country", "currency", "amount", "issue_date", "due_date",
)  # fmt: skip
INVOICE_OPTIONAL = ("region", "invoice_pdf", "payment_link")
INVOICE_COLUMNS = INVOICE_REQUIRED + INVOICE_OPTIONAL
PAYMENT_REQUIRED = ("invoice_number", "date", "amount")
PAYMENT_OPTIONAL = ("reference",)
PAYMENT_COLUMNS = PAYMENT_REQUIRED + PAYMENT_OPTIONAL
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


def _records(
    path: Path, required: tuple[str, ...], optional: tuple[str, ...], problems: _Problems
) -> Iterator[tuple[int, tuple[str, ...]]]:
    """Stripped records with the line each starts on, read as a stream.

    Values come in the order ``required + optional`` whatever the file's column order; an
    optional column the file lacks reads as "".
    """
    try:
        # utf-8-sig: Excel writes a BOM. Streamed, so a large ledger is never all in memory.
        with path.open(encoding="utf-8-sig", newline="") as handle:
            yield from _read_records(handle, required, optional, problems)
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


def _read_records(
    handle: TextIO, required: tuple[str, ...], optional: tuple[str, ...], problems: _Problems
) -> Iterator[tuple[int, tuple[str, ...]]]:
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
    # An absent optional column reads the "" appended to every record at index ``width``.
    pick = itemgetter(*(header.index(c) if c in header else width for c in required + optional))
    strip = str.strip
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
        if len(record) != width:
            problems.add(line, f"{'more' if len(record) > width else 'fewer'} fields than columns")
            continue
        record.append("")
        values = tuple(map(strip, pick(record)))
        if not any(values):
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


def _one_line(
    values: tuple[str, ...], columns: tuple[str, ...], line: int, problems: _Problems
) -> bool:
    """No line breaks or control characters: a value may end up in an email header."""
    if _CONTROL.search("".join(values)) is None:  # one scan for the usual clean row
        return True
    for column, value in zip(columns, values, strict=True):
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
    """Every row of an invoices CSV, or ImportRefusedError listing every bad row.

    Holds the whole file, for a small ledger; ``mailer import`` streams ``read_invoices``.
    """
    with collector_paused():
        return list(read_invoices(path))


def read_invoices(path: Path) -> Iterator[InvoiceRow]:
    """The valid rows of an invoices CSV as a stream, in file order.

    Every row is validated on the way; once the file is read, ImportRefusedError lists every
    bad row as ``file:line`` (so whoever stores rows while reading does it in a transaction).
    Between rows only what checks across rows need is kept: the line of each invoice number
    and a digest of each debtor's details, never the rows. Memory stays flat however long the
    file is, but for those two.
    """
    problems = _Problems(path)
    yield from _invoice_rows(path, problems)
    problems.raise_if_any()


_new_invoice = slot_constructor(Invoice)
_new_row = slot_constructor(InvoiceRow)

# Column positions in the order _records gives them: INVOICE_REQUIRED, then INVOICE_OPTIONAL.
(_NUMBER, _DEBTOR_ID, _NAME, _EMAILS, _LANG, _KIND, _COUNTRY, _CURRENCY, _AMOUNT, _ISSUE, _DUE,
 _REGION, _PDF, _LINK) = range(len(INVOICE_REQUIRED) + len(INVOICE_OPTIONAL))  # fmt: skip
_DEBTOR_COLUMNS = itemgetter(_DEBTOR_ID, _NAME, _EMAILS, _LANG, _KIND, _COUNTRY, _REGION)


def _invoice_rows(path: Path, problems: _Problems) -> Iterator[InvoiceRow]:
    first_line: dict[str, int] = {}  # invoice number -> its line: duplicates name the first
    debtor_seen: dict[str, tuple[int, bytes]] = {}  # debtor id -> (first line, digest)
    places = _Places()
    dates: dict[str, date | None] = {}
    currencies: dict[str, str | None] = {}
    # Equal values share one object (dates, currencies, languages, places): rows that are
    # kept (a small ledger parsed whole) then take a fraction of the memory.
    shared: dict[object, Any] = {}
    share = shared.setdefault
    # A ledger lists a debtor's invoices together: the same debtor columns as the row before
    # are the same, already validated, Debtor.
    last_raw: tuple[str, ...] = ()
    last_debtor: Debtor | None = None
    rows = 0
    for line, v in _records(path, INVOICE_REQUIRED, INVOICE_OPTIONAL, problems):
        ok = _one_line(v, INVOICE_COLUMNS, line, problems)
        if not all(v[: len(INVOICE_REQUIRED)]):
            for column, value in zip(INVOICE_REQUIRED, v, strict=False):
                if not value:
                    problems.add(line, f"{column} is empty")
            ok = False
        if not ok:
            continue
        number = v[_NUMBER]
        if number in first_line:
            problems.add(line, f"invoice {number} already on line {first_line[number]}")
            continue
        first_line[number] = line
        raw = _DEBTOR_COLUMNS(v)
        debtor = last_debtor if raw == last_raw else _debtor(v, line, problems, places, share)
        currency = currencies.get(v[_CURRENCY], "")
        if currency == "":
            currency = currencies[v[_CURRENCY]] = _currency(v[_CURRENCY])
        if currency is None:
            problems.add(line, f"currency {v[_CURRENCY]!r} is not an ISO 4217 code")
            ok = False
        amount = _amount(v[_AMOUNT], line, problems)
        issued = dates.get(v[_ISSUE]) or _cached_date(
            dates, v[_ISSUE], "issue_date", line, problems
        )
        due = dates.get(v[_DUE]) or _cached_date(dates, v[_DUE], "due_date", line, problems)
        if issued and due and due < issued:
            problems.add(line, "due_date is before issue_date")
            ok = False
        if not ok or debtor is None or amount is None or issued is None or due is None:
            last_raw, last_debtor = (), None
            continue
        if debtor is not last_debtor:
            digest = _digest(debtor)
            seen = debtor_seen.get(debtor.id)
            if seen is None:
                debtor_seen[debtor.id] = (line, digest)
            elif seen[1] != digest:
                problems.add(
                    line,
                    f"debtor {debtor.id} differs from line {seen[0]}"
                    " (name, emails, language, kind or country)",
                )
                last_raw, last_debtor = (), None
                continue
        last_raw, last_debtor = raw, debtor
        # Invoice(number, debtor_id, currency, amount, issue_date, due_date, pdf_path,
        # payment_link), built at half the cost of its __init__: this runs once per row.
        invoice = _new_invoice(
            number, debtor.id, currency, amount, issued, due, v[_PDF] or None, v[_LINK] or None
        )
        rows += 1
        yield _new_row(line, debtor, invoice)
    if not rows and not problems.items:
        problems.add(1, "no invoice rows")


def _currency(text: str) -> str | None:
    currency = text.upper()
    return currency if len(currency) == 3 and currency.isalpha() else None


def _cached_date(
    dates: dict[str, date | None], value: str, column: str, line: int, problems: _Problems
) -> date | None:
    """A ledger has few distinct dates and many rows: each is parsed once (and shared)."""
    if value in dates:
        found = dates[value]
        if found is None:
            problems.add(line, f"{column} {value!r} is not a date (YYYY-MM-DD)")
        return found
    found = dates[value] = _date(value, column, line, problems)
    return found


def _digest(debtor: Debtor) -> bytes:
    """What must agree between rows of one debtor, in 16 bytes instead of the whole Debtor."""
    # No value holds a line break (checked first), so joining by one is unambiguous.
    text = "\n".join(
        (debtor.name, debtor.kind.value, debtor.lang, debtor.country, debtor.region or "",
         debtor.timezone, *(c.address for c in debtor.contacts))
    )  # fmt: skip
    return hashlib.blake2b(text.encode(), digest_size=16).digest()


def _debtor(
    v: tuple[str, ...],
    line: int,
    problems: _Problems,
    places: _Places,
    share: Callable[[Any, Any], Any],
) -> Debtor | None:
    """The row's debtor, or None after reporting what is wrong with it."""
    ok = True
    addresses = [a.strip() for a in v[_EMAILS].split(";") if a.strip()]
    bad = [a for a in addresses if not is_address(a)]
    if bad or not addresses:
        problems.add(line, f"debtor_emails: not an email address: {', '.join(bad) or '(none)'}")
        ok = False
    lang = v[_LANG].lower()
    if lang not in LANGS:
        problems.add(line, f"debtor_lang {v[_LANG]!r} must be one of {', '.join(LANGS)}")
        ok = False
    kind = _KINDS.get(v[_KIND].lower())
    if kind is None:
        problems.add(line, f"debtor_kind {v[_KIND]!r} must be business or consumer")
        ok = False
    country = v[_COUNTRY].upper()
    region = v[_REGION].upper() or None
    try:
        tz = places.timezone(country, region)
    except ValueError as exc:
        problems.add(line, f"country/region: {exc}")
        ok = False
    if not ok or kind is None:
        return None
    # Keep the address order: the first one is the main contact.
    contacts = tuple(Contact(a) for a in dict.fromkeys(a.lower() for a in addresses))
    return Debtor(
        id=v[_DEBTOR_ID], name=v[_NAME], kind=kind, lang=share(lang, lang),
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
    for line, values in _records(path, PAYMENT_REQUIRED, PAYMENT_OPTIONAL, problems):
        if not _one_line(values, PAYMENT_COLUMNS, line, problems):
            continue
        v = dict(zip(PAYMENT_COLUMNS, values, strict=True))
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
