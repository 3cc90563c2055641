"""`mailer evidence export`: a case's evidence as one zip a lawyer can file and anyone can check.

Layout (every path is listed in manifest.json and SHA256SUMS with its SHA-256):

    README.txt                  what is here and how to check it with sha256sum and openssl
    case-N/report-LANG.html|pdf the case explained: parties, invoices, interest, timeline
    case-N/emails/*.eml         every email out and in, byte for byte
    case-N/ledger/*.csv         invoices, payments, the interest computation segment by segment
    case-N/events.jsonl         the case's events, whole rows (body, body_sha256, hashes)
    chain/segment.csv           id, prev_hash, body_sha256, hash of every event from the export's
                                first event to a time-stamped head (other cases' bodies withheld)
    timestamps/head-N.txt|.tsr  RFC 3161 tokens on chain heads, the stamped text, the TSA's CA
    manifest.json, manifest.tsr the file list, the chain segment, the stamps; a token on it
    SHA256SUMS                  for `sha256sum -c`

The export itself is recorded (``evidence_exported``, with the manifest's SHA-256), so a
manifest changed afterwards no longer matches the record.
"""

from __future__ import annotations

import csv
import io
import json
import os
import secrets
import zipfile
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from mailer.config import Settings
from mailer.errors import MailerError
from mailer.evidence import tsa
from mailer.evidence.readme import readme
from mailer.evidence.record import CaseRecord, event_rows, load_record
from mailer.evidence.report import render
from mailer.store.chain import sha256_hex
from mailer.store.db import Store, iso

FORMAT = "mailer-evidence-1"
EXPORT_EVENT = "evidence_exported"


@dataclass
class ExportReport:
    path: Path
    cases: list[int]
    files: int = 0
    events: int = 0
    chain: tuple[int, int] | None = None
    timestamps: int = 0
    manifest_sha256: str = ""
    manifest_stamped: bool = False
    warnings: list[str] = field(default_factory=list)


class _Zip:
    """A zip being written; remembers each member's SHA-256 and size."""

    def __init__(self, target: zipfile.ZipFile, moment: datetime) -> None:
        self.zip = target
        self.date = moment.astimezone(UTC).timetuple()[:6]
        self.files: list[dict[str, Any]] = []

    def add(self, name: str, data: bytes, *, listed: bool = True) -> str:
        info = zipfile.ZipInfo(name, date_time=self.date)
        info.compress_type = zipfile.ZIP_DEFLATED
        info.external_attr = 0o644 << 16
        self.zip.writestr(info, data, compresslevel=6)
        digest = sha256_hex(data)
        if listed:
            self.files.append({"path": name, "sha256": digest, "size": len(data)})
        return digest


def _csv(header: list[str], rows: list[list[Any]]) -> bytes:
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(header)
    writer.writerows(rows)
    return buffer.getvalue().encode("utf-8")


def select_cases(store: Store, case_ids: list[int] | None, since: datetime | None) -> list[int]:
    """The cases asked for (all when None), only those with something recorded since ``since``."""
    if case_ids is not None:
        known = {r[0] for r in store.conn.execute("SELECT id FROM cases")}
        missing = [c for c in case_ids if c not in known]
        if missing:
            raise MailerError(f"no case {', '.join(map(str, missing))}")
        chosen = sorted(set(case_ids))
    else:
        chosen = [int(r[0]) for r in store.conn.execute("SELECT id FROM cases ORDER BY id")]
    if since is None:
        return chosen
    active = {
        int(r[0])
        for r in store.conn.execute(
            "SELECT DISTINCT case_id FROM events WHERE at >= ? AND case_id IS NOT NULL",
            (iso(since),),
        )
    }
    return [c for c in chosen if c in active]


def _ledger(z: _Zip, folder: str, record: CaseRecord) -> None:
    invoices, payments, segments = [], [], []
    for inv in sorted(record.invoices, key=lambda i: (i.due_date, i.number)):
        c = record.interest.get(inv.number)
        invoices.append(
            [inv.number, inv.currency, inv.amount, inv.issue_date, inv.due_date, inv.paid,
             inv.balance, c.until if c else "", c.days_overdue if c else "",
             c.interest if c else "", c.compensation if c else "",
             inv.balance + c.total if c else "", c.basis if c else "no rate published",
             c.provisional if c else ""]
        )  # fmt: skip
        payments += [[inv.number, p.paid_on, p.amount] for p in inv.payments]
        for s in c.segments if c else ():
            segments.append(
                [inv.number, s.start, s.end, s.days, s.principal, s.rate, s.interest, s.provisional]
            )
    z.add(
        f"{folder}/ledger/invoices.csv",
        _csv(["invoice", "currency", "amount", "issue_date", "due_date", "paid", "balance",
              "interest_until", "days_overdue", "interest", "compensation", "total_due",
              "legal_basis", "provisional_rate"], invoices),
    )  # fmt: skip
    z.add(f"{folder}/ledger/payments.csv", _csv(["invoice", "paid_on", "amount"], payments))
    z.add(
        f"{folder}/ledger/interest.csv",
        _csv(["invoice", "from", "to", "days", "principal", "annual_rate_percent",
              "interest_unrounded", "provisional_rate"], segments),
    )  # fmt: skip


def _case(z: _Zip, store: Store, settings: Settings, record: CaseRecord, now: datetime) -> None:
    folder = f"case-{record.case.id}"
    for number, mail in enumerate(record.mails, 1):
        if mail.sha256 is None:
            continue
        try:
            raw = store.get_blob(mail.sha256)
        except KeyError:
            continue  # purged: the report and events.jsonl still say it existed
        mail.file = f"emails/{mail.file_name(number)}"
        z.add(f"{folder}/{mail.file}", raw)
    _ledger(z, folder, record)
    lines = "".join(json.dumps(e.to_json(), ensure_ascii=False) + "\n" for e in record.events)
    z.add(f"{folder}/events.jsonl", lines.encode("utf-8"))
    langs = [settings.evidence.business_lang]
    if record.case.debtor.lang not in langs and record.case.debtor.lang in ("es", "en"):
        langs.append(record.case.debtor.lang)
    for lang in langs:
        report = render(record, settings.creditor, lang, now)
        z.add(f"{folder}/report-{lang}.html", report.html)
        z.add(f"{folder}/report-{lang}.pdf", report.pdf)


def _segment_end(store: Store, last: int) -> int:
    """The first time-stamped head at or after ``last``, else the chain's head now."""
    row = store.conn.execute(
        "SELECT min(json_extract(body, '$.data.head_id')) FROM events WHERE kind = ?"
        " AND redacted_by IS NULL AND json_extract(body, '$.data.head_id') >= ?",
        (tsa.EVENT, last),
    ).fetchone()
    if row[0] is not None:
        return int(row[0])
    return int(store.conn.execute("SELECT max(id) FROM events").fetchone()[0])


def _chain(z: _Zip, store: Store, settings: Settings, first: int, last: int) -> dict[str, Any]:
    rows = store.conn.execute(
        "SELECT id, prev_hash, body_sha256, hash FROM events WHERE id BETWEEN ? AND ? ORDER BY id",
        (first, last),
    ).fetchall()
    z.add(
        "chain/segment.csv",
        _csv(
            ["id", "prev_hash", "body_sha256", "hash"], [[a, b, c or "", d] for a, b, c, d in rows]
        ),
    )
    stamps = []
    for event in event_rows(
        store, "kind = ? AND redacted_by IS NULL AND json_extract(body, '$.data.head_id')"
        " BETWEEN ? AND ?", (tsa.EVENT, first, last),
    ):  # fmt: skip
        data = event.data
        head = int(data["head_id"])
        try:
            token = store.get_blob(data["token_sha256"])
        except KeyError:
            continue
        z.add(f"timestamps/head-{head}.txt", tsa.stamped_bytes(data["head_hash"]))
        z.add(f"timestamps/head-{head}.tsr", token)
        stamps.append(
            {"head_id": head, "head_hash": data["head_hash"], "gen_time": data["gen_time"],
             "tsa_url": data.get("tsa_url"), "event_id": event.id,
             "data_file": f"timestamps/head-{head}.txt", "token_file": f"timestamps/head-{head}.tsr"}
        )  # fmt: skip
    evidence = settings.evidence
    for source, name in (
        (evidence.tsa_ca_file, "tsa-ca.pem"),
        (evidence.tsa_certs_file, "tsa-certs.pem"),
    ):
        if source is not None and source.is_file():
            z.add(f"timestamps/{name}", source.read_bytes())
    return {
        "first_id": first, "last_id": last, "first_prev_hash": rows[0][1], "head_hash": rows[-1][3],
        "rule": "hash = sha256(prev_hash + '\\n' + body_sha256); body_sha256 = sha256(body)",
        "file": "chain/segment.csv", "timestamps": stamps,
    }  # fmt: skip


def export_evidence(
    store: Store,
    settings: Settings,
    out: Path,
    now: datetime,
    *,
    case_ids: list[int] | None,
    since: datetime | None = None,
    stamp: bool = True,
) -> ExportReport:
    """Write the zip (atomically: a temporary file renamed) and record the export."""
    chosen = select_cases(store, case_ids, since)
    if not chosen:
        raise MailerError("nothing to export: no case matches")
    report = ExportReport(out, chosen)
    out.parent.mkdir(parents=True, exist_ok=True)
    partial = out.with_name(f".{out.name}.{secrets.token_hex(4)}.partial")
    try:
        with zipfile.ZipFile(partial, "w", allowZip64=True) as target:
            z = _Zip(target, now)
            ids: list[int] = []
            summaries = []
            for case_id in chosen:
                record = load_record(store, case_id, now.date(), since)
                _case(z, store, settings, record, now)
                ids += [e.id for e in record.events]
                report.events += len(record.events)
                summaries.append(
                    {"id": case_id, "debtor_id": record.case.debtor.id,
                     "debtor": record.case.debtor.name, "status": record.case.status.value,
                     "events": len(record.events),
                     "emails": sum(1 for m in record.mails if m.file)}
                )  # fmt: skip
            chain = None
            if ids:
                chain = _chain(z, store, settings, min(ids), _segment_end(store, max(ids)))
                report.chain = (chain["first_id"], chain["last_id"])
                report.timestamps = len(chain["timestamps"])
            z.add("README.txt", readme(settings.creditor.legal_name, chosen, now).encode("utf-8"))
            manifest = {
                "format": FORMAT,
                "created_at": iso(now),
                "creditor": {"legal_name": settings.creditor.legal_name,
                             "tax_id": settings.creditor.tax_id},
                "scope": {"cases": chosen if case_ids is not None else "all",
                          "since": iso(since) if since else None},
                "cases": summaries,
                "chain": chain,
                "files": list(z.files),
            }  # fmt: skip
            data = json.dumps(manifest, indent=1, ensure_ascii=False, default=str).encode("utf-8")
            report.manifest_sha256 = z.add("manifest.json", data)
            if stamp and settings.evidence.tsa_url:
                token = _stamp_manifest(settings, data, report)
                if token is not None:
                    z.add("manifest.tsr", token)
                    report.manifest_stamped = True
            sums = "".join(f"{f['sha256']}  {f['path']}\n" for f in z.files)
            z.add("SHA256SUMS", sums.encode("utf-8"), listed=False)
            report.files = len(z.files)
        os.replace(partial, out)
    finally:
        partial.unlink(missing_ok=True)
    store.append_event(
        now,
        EXPORT_EVENT,
        {"file": out.name, "cases": chosen if len(chosen) <= 100 else len(chosen),
         "since": iso(since) if since else None, "manifest_sha256": report.manifest_sha256,
         "files": report.files},
        case_id=chosen[0] if len(chosen) == 1 else None,
    )  # fmt: skip
    return report


def _stamp_manifest(settings: Settings, data: bytes, report: ExportReport) -> bytes | None:
    """An RFC 3161 token on manifest.json itself; a warning (not a failure) if the TSA fails."""
    evidence = settings.evidence
    assert evidence.tsa_url is not None
    nonce = secrets.randbits(63)
    try:
        token = tsa.ask_tsa(
            evidence.tsa_url,
            tsa.build_request(sha256_hex(data), nonce),
            evidence.tsa_timeout_seconds,
        )
        info = tsa.read_response(token)
    except (tsa.TimestampError, tsa.BadTokenError) as exc:
        report.warnings.append(f"manifest.json not time-stamped: {exc}")
        return None
    if info.imprint_sha256 != sha256_hex(data) or info.nonce != nonce:
        report.warnings.append("manifest.json not time-stamped: the TSA stamped something else")
        return None
    return token
