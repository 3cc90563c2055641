"""The case report for a lawyer: parties, invoices, interest worked out, timeline; HTML and PDF."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

import jinja2
from fpdf import FPDF

from mailer.domain.calendar import zone
from mailer.domain.models import ZERO, Creditor
from mailer.domain.money import cents
from mailer.evidence.record import CaseRecord
from mailer.evidence.timeline import build
from mailer.evidence.words import LABELS, STATUS
from mailer.render_format import format_money, format_percent

_TEMPLATES = Path(__file__).resolve().parent.parent / "data" / "evidence"
_ENV = jinja2.Environment(
    loader=jinja2.FileSystemLoader(_TEMPLATES),
    autoescape=True,
    undefined=jinja2.StrictUndefined,
)


@dataclass(frozen=True, slots=True)
class Report:
    lang: str
    html: bytes
    pdf: bytes


def view(record: CaseRecord, creditor: Creditor, lang: str, generated: datetime) -> dict[str, Any]:
    """Every value the report shows, already formatted as text in ``lang``."""
    labels = LABELS[lang]
    tz = zone(creditor.timezone)
    case, debtor = record.case, record.case.debtor

    def money(amount: Decimal, currency: str = "EUR") -> str:
        return format_money(cents(amount), currency, lang)

    def local(moment: datetime | None) -> str:
        return "" if moment is None else f"{moment.astimezone(tz):%Y-%m-%d %H:%M}"

    invoices, segments, payments = [], [], []
    totals = {"balance": ZERO, "interest": ZERO, "compensation": ZERO}
    provisional = False
    basis = ""
    for invoice in sorted(record.invoices, key=lambda i: (i.due_date, i.number)):
        computed = record.interest.get(invoice.number)
        interest = computed.interest if computed else ZERO
        compensation = computed.compensation if computed else ZERO
        totals["balance"] += invoice.balance
        totals["interest"] += interest
        totals["compensation"] += compensation
        invoices.append(
            {
                "number": invoice.number, "issued": invoice.issue_date.isoformat(),
                "due": invoice.due_date.isoformat(), "amount": money(invoice.amount, invoice.currency),
                "paid": money(invoice.paid, invoice.currency),
                "balance": money(invoice.balance, invoice.currency),
                "days": computed.days_overdue if computed else labels["none"],
                "interest": money(interest, invoice.currency) if computed else labels["none"],
                "compensation": money(compensation, invoice.currency),
                "total": money(invoice.balance + interest + compensation, invoice.currency),
            }
        )  # fmt: skip
        for p in invoice.payments:
            payments.append(
                {"invoice": invoice.number, "date": p.paid_on.isoformat(),
                 "amount": money(p.amount, invoice.currency)}
            )  # fmt: skip
        if computed is None:
            continue
        basis = computed.basis
        provisional = provisional or computed.provisional
        for s in computed.segments:
            segments.append(
                {
                    "number": invoice.number, "start": s.start.isoformat(), "end": s.end.isoformat(),
                    "days": s.days, "principal": money(s.principal, invoice.currency),
                    "rate": format_percent(s.rate, lang), "provisional": s.provisional,
                    "interest": money(cents(s.interest), invoice.currency),
                }
            )  # fmt: skip
    currency = record.invoices[0].currency if record.invoices else "EUR"
    entries = [
        {"when": local(e.at), "text": e.text, "file": e.file, "event_id": e.event_id}
        for e in build(record, lang)
    ]
    return {
        "lang": lang,
        "L": labels,
        "intro": labels["intro"].format(tz=creditor.timezone),
        "computation_intro": labels["computation_intro"].format(
            until=record.as_of.isoformat(), basis=basis or labels["none"]
        ),
        "generated": local(generated),
        "case": {"id": case.id},
        "creditor": {
            "legal_name": creditor.legal_name,
            "tax_id": creditor.tax_id,
            "address": creditor.address,
        },
        "debtor": {"name": debtor.name, "id": debtor.id},
        "debtor_kind": labels[debtor.kind.value],
        "contacts": ", ".join(c.address for c in debtor.contacts),
        "status": STATUS[lang].get(case.status.value, case.status.value)
        + (f" ({record.status_reason})" if record.status_reason else ""),
        "opened": local(record.opened_at),
        "closed": local(record.closed_at),
        "blocked": local(record.blocked_at),
        "invoices": invoices,
        "payments": payments,
        "totals": {
            "balance": money(totals["balance"], currency),
            "interest": money(totals["interest"], currency),
            "compensation": money(totals["compensation"], currency),
            "total": money(sum(totals.values(), ZERO), currency),
        },
        "segments": segments,
        "provisional": provisional,
        "entries": entries,
    }


def render(record: CaseRecord, creditor: Creditor, lang: str, generated: datetime) -> Report:
    values = view(record, creditor, lang, generated)
    html = _ENV.get_template("report.html").render(values).encode("utf-8")
    return Report(lang, html, render_pdf(values, generated))


# --- PDF ---------------------------------------------------------------------------------------

_ENCODING = "windows-1252"  # the PDF core fonts' Western set: Spanish, English and the € sign


def _pdf_text(text: object) -> str:
    # Core fonts have no glyph outside windows-1252 (emoji, CJK): those become "?", the HTML
    # and the .eml files keep them exactly.
    return str(text).encode(_ENCODING, "replace").decode(_ENCODING)


class _Pdf(FPDF):
    footer_text = ""

    def footer(self) -> None:
        self.set_y(-12)
        self.set_font("Helvetica", size=7)
        self.cell(0, 5, _pdf_text(f"{self.footer_text} — {self.page_no()}"), align="C")


def _width(pdf: FPDF, text: str) -> float:
    """The text's width in the current core font: its own width table (get_string_width and
    cell() cost ~100 µs a call, too much for a timeline of 10,000 emails)."""
    font: Any = pdf.current_font
    widths = font.cw  # a core font's table: one width per character of its encoding
    units = sum(widths[chr(b)] for b in text.encode(_ENCODING, "replace"))
    return float(units * pdf.font_size / 1000)


def _wrap(pdf: FPDF, text: str, width: float) -> list[str]:
    """Greedy word wrap by the font's own widths; a word too long for a line is cut."""
    lines: list[str] = []
    space = _width(pdf, " ")
    for paragraph in text.split("\n"):
        line, used = "", 0.0
        for word in paragraph.split(" "):
            size = _width(pdf, word)
            if line and used + space + size <= width:
                line, used = f"{line} {word}", used + space + size
                continue
            if line:
                lines.append(line)
            while size > width and len(word) > 1:
                cut = max(1, int(len(word) * width / size) - 1)
                lines.append(word[:cut])
                word = word[cut:]
                size = _width(pdf, word)
            line, used = word, size
        lines.append(line)
    return lines


def _row(pdf: FPDF, widths: list[float], cells: list[str], height: float = 4.2) -> None:
    """One table row whose cells wrap; a new page first when it would not fit."""
    wrapped = [_wrap(pdf, _pdf_text(c), w - 2) for c, w in zip(cells, widths, strict=True)]
    lines = max(len(w) for w in wrapped)
    if pdf.get_y() + lines * height > pdf.page_break_trigger:
        pdf.add_page()
    y = pdf.get_y()
    x = pdf.l_margin
    baseline = height * 0.72
    for column, width in zip(wrapped, widths, strict=True):
        pdf.rect(x, y, width, lines * height)
        for n, text in enumerate(column):
            if text:
                pdf.text(x + 1, y + n * height + baseline, text)
        x += width
    pdf.set_xy(pdf.l_margin, y + lines * height)


def _heading(pdf: FPDF, text: str) -> None:
    pdf.ln(3)
    pdf.set_font("Helvetica", "B", 11)
    pdf.cell(0, 6, _pdf_text(text), new_x="LMARGIN", new_y="NEXT")
    pdf.set_font("Helvetica", size=8)


def _paragraph(pdf: FPDF, text: str) -> None:
    for line in _wrap(pdf, _pdf_text(text), pdf.epw):
        pdf.cell(0, 4.2, line, new_x="LMARGIN", new_y="NEXT")


def render_pdf(v: dict[str, Any], generated: datetime) -> bytes:
    labels = v["L"]
    pdf = _Pdf(format="A4")
    pdf.core_fonts_encoding = _ENCODING
    pdf.set_creation_date(generated)  # the export's moment, not the clock's
    pdf.set_title(_pdf_text(f"{labels['title']} — {labels['case']} {v['case']['id']}"))
    pdf.set_author(_pdf_text(v["creditor"]["legal_name"]))
    pdf.footer_text = f"{labels['case']} {v['case']['id']} · {v['debtor']['name']}"
    pdf.set_auto_page_break(True, margin=15)
    pdf.add_page()
    pdf.set_font("Helvetica", "B", 15)
    pdf.cell(0, 9, _pdf_text(labels["title"]), new_x="LMARGIN", new_y="NEXT")
    pdf.set_font("Helvetica", size=8)
    _paragraph(
        pdf,
        f"{labels['case']} {v['case']['id']} · {labels['generated']} {v['generated']} · "
        f"{v['creditor']['legal_name']}",
    )
    pdf.ln(2)
    _paragraph(pdf, v["intro"])
    _heading(pdf, labels["parties"])
    c, d = v["creditor"], v["debtor"]
    status = f"{v['status']} — {labels['opened']} {v['opened']}"
    if v["closed"]:
        status += f", {labels['closed']} {v['closed']}"
    if v["blocked"]:
        status += f"\n{labels['blocked']} {v['blocked']}"
    width = [40.0, pdf.epw - 40.0]
    _row(pdf, width, [labels["creditor"], f"{c['legal_name']}\n{labels['tax_id']}: {c['tax_id']}\n"
                      f"{labels['address']}: {c['address']}"])  # fmt: skip
    _row(pdf, width, [labels["debtor"], f"{d['name']} ({d['id']})\n{labels['kind']}: "
                      f"{v['debtor_kind']}\n{labels['emails']}: {v['contacts'] or labels['none']}"])  # fmt: skip
    _row(pdf, width, [labels["status"], status])
    _heading(pdf, labels["invoices"])
    keys = [
        "number",
        "due",
        "amount",
        "paid",
        "balance",
        "days",
        "interest",
        "compensation",
        "total",
    ]
    widths = [20.0, 19.0, 22.0, 18.0, 22.0, 14.0, 18.0, 23.0]
    widths.append(pdf.epw - sum(widths))
    _row(pdf, widths, [labels[k] for k in keys])
    for row in v["invoices"]:
        _row(pdf, widths, [str(row[k]) for k in keys])
    t = v["totals"]
    _row(pdf, widths, [labels["total"], "", "", "", t["balance"], "", t["interest"],
                       t["compensation"], t["total"]])  # fmt: skip
    if v["payments"]:
        _heading(pdf, labels["payments"])
        pw = [40.0, 30.0, 30.0]
        _row(pdf, pw, [labels["number"], labels["date"], labels["amount"]])
        for p in v["payments"]:
            _row(pdf, pw, [p["invoice"], p["date"], p["amount"]])
    _heading(pdf, labels["computation"])
    _paragraph(pdf, v["computation_intro"])
    keys = ["number", "from", "to", "days", "principal", "rate", "interest"]
    sw = [26.0, 22.0, 22.0, 14.0, 28.0, 22.0]
    sw.append(pdf.epw - sum(sw))
    _row(pdf, sw, [labels[k] for k in keys])
    for s in v["segments"]:
        rate = s["rate"] + (" *" if s["provisional"] else "")
        _row(pdf, sw, [s["number"], s["start"], s["end"], str(s["days"]), s["principal"], rate,
                       s["interest"]])  # fmt: skip
    if v["provisional"]:
        _paragraph(pdf, f"* {labels['provisional']}")
    _heading(pdf, labels["timeline"])
    tw = [26.0, pdf.epw - 26.0 - 48.0, 48.0]
    _row(pdf, tw, [labels["when"], labels["what"], labels["evidence"]])
    for e in v["entries"]:
        proof = f"{e['file']}\n" if e["file"] else ""
        _row(pdf, tw, [e["when"], e["text"], f"{proof}{labels['event']} {e['event_id']}"])
    _heading(pdf, labels["verify"])
    _paragraph(pdf, labels["verify_text"])
    return bytes(pdf.output())
