"""A case driven through real loopback servers, time-stamped by a real local TSA, exported, checked.

The export is checked the way a stranger would: hashlib and `sha256sum -c` on the files, the
chain recomputed from the segment, `openssl ts -verify` on every token.
"""

from __future__ import annotations

import asyncio
import csv
import hashlib
import io
import json
import os
import shutil
import subprocess
import zipfile
import zlib
from collections.abc import Iterator
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from email.message import EmailMessage
from email.utils import format_datetime
from pathlib import Path

import pytest
from click.testing import CliRunner
from localtsa import LocalTsa, running_tsa

from mailer.app import App
from mailer.cli import main
from mailer.config import EvidenceSettings, load_settings
from mailer.daemon import build_transports, make_box, open_mailbox
from mailer.demo import IDENTITIES, write_config
from mailer.evidence.check_export import verify_export
from mailer.evidence.export import export_evidence
from mailer.evidence.tsa import BadTokenError, TimestampError, timestamp_if_due
from mailer.evidence.verify import verify_store
from mailer.flows.inbound import Inbound
from mailer.flows.outbound import Outbound
from mailer.ledger import parse_invoices
from mailer.localservers import LocalMailServers, deliver
from mailer.store import outbox
from mailer.store.db import Store

START = datetime(2026, 1, 5, 6, 0, tzinfo=UTC)  # Monday
BILLING = IDENTITIES["cobros"][0]
LEDGER = (
    "invoice_number,debtor_id,debtor_name,debtor_emails,debtor_lang,debtor_kind,country,region,"
    "currency,amount,issue_date,due_date\n"
    "F-1,D1,Acme Trading Ltd,pay@acme.example,en,business,ES,MD,EUR,1210.00,2025-11-01,2025-12-01\n"
    "F-2,D2,Beta S.L.,admin@beta.example,es,business,ES,MD,EUR,500.00,2025-11-01,2025-12-01\n"
)
# CI (MAILER_REQUIRE_MAILENV=1) fails rather than skips without the tools:
# scripts/install-mailservers.sh installs them.
REQUIRE = os.environ.get("MAILER_REQUIRE_MAILENV") == "1"


def tool(name: str, *, optional: bool = False) -> str | None:
    found = shutil.which(name)
    if found is None and REQUIRE:
        pytest.fail(f"{name} is missing (scripts/install-mailservers.sh installs it)")
    if found is None and not optional:
        pytest.skip(f"needs the {name} command")
    return found


@pytest.fixture
def tsa(tmp_path: Path) -> Iterator[LocalTsa]:
    tool("openssl")
    with running_tsa(tmp_path / "tsa") as running:
        yield running


@pytest.fixture
def app(tmp_path: Path, servers: LocalMailServers, tsa: LocalTsa) -> Iterator[App]:
    config = write_config(tmp_path, servers, grace_seconds=0)
    with config.open("a", encoding="utf-8") as f:
        f.write(f'\n[evidence]\ntsa_url = "{tsa.url}"\ntsa_ca_file = "{tsa.ca_file}"\n')
    settings = load_settings(config)
    opened = App.open(settings)
    ledger = tmp_path / "invoices.csv"
    ledger.write_text(LEDGER, encoding="utf-8")
    from mailer.store.ledger import import_invoices

    import_invoices(opened.store, parse_invoices(ledger), START, "invoices.csv", settings.profiles)
    yield opened
    opened.store.close()


def reply_to(message_id: str, when: datetime) -> bytes:
    msg = EmailMessage()
    msg["From"] = "Acme Trading <pay@acme.example>"
    msg["To"] = BILLING
    msg["Subject"] = "Re: invoice F-1"
    msg["Date"] = format_datetime(when)
    msg["Message-ID"] = "<reply.1@acme.example>"
    msg["In-Reply-To"] = message_id
    msg["References"] = message_id
    msg.set_content("We will pay on the 15th. Regards")
    return msg.as_bytes()


def drive(app: App, servers: LocalMailServers) -> tuple[datetime, bytes]:
    """Send the first reminders, stamp, take a reply in, stamp again; (now, the reply's bytes)."""
    outbound = Outbound(app, build_transports(app.settings), open_mailbox)
    inbound = Inbound(app)

    async def scenario() -> tuple[datetime, bytes]:
        now = START
        while not outbox.select(app.store, "state = 'sent' AND case_id = 1"):
            now += timedelta(hours=1)
            await outbound.tick(now)
        assert timestamp_if_due(app.store, app.settings, now) is not None
        assert timestamp_if_due(app.store, app.settings, now) is None  # not due yet
        (first,) = outbox.select(app.store, "state = 'sent' AND case_id = 1")
        now += timedelta(hours=2)
        raw = reply_to(first.message_id, now)
        deliver(servers.mailbox_path(BILLING), raw)
        box = make_box(app.settings.identity("cobros"))
        await asyncio.to_thread(box.connect)
        try:
            assert (await inbound.sync("cobros", box, now)).stored == 1
        finally:
            await asyncio.to_thread(box.close)
        for transport in outbound.transports.values():
            await transport.close()
        now += timedelta(hours=25)
        assert timestamp_if_due(app.store, app.settings, now) is not None
        return now, raw

    return asyncio.run(scenario())


def test_a_case_exported_checks_out_with_standard_tools(
    app: App, servers: LocalMailServers, tsa: LocalTsa, tmp_path: Path
) -> None:
    now, reply = drive(app, servers)
    assert verify_store(app.store, app.settings.evidence).ok
    target = tmp_path / "case-1.zip"
    report = export_evidence(app.store, app.settings, target, now, case_ids=[1])
    assert report.manifest_stamped and report.timestamps >= 1 and not report.warnings
    out = tmp_path / "unzipped"
    with zipfile.ZipFile(target) as archive:
        archive.extractall(out)
    manifest = json.loads((out / "manifest.json").read_text(encoding="utf-8"))

    # 1. Every file as the manifest says, checked with hashlib and with sha256sum.
    listed = {f["path"]: f["sha256"] for f in manifest["files"]}
    on_disk = {str(p.relative_to(out)) for p in out.rglob("*") if p.is_file()} - {
        "manifest.json",
        "manifest.tsr",
        "SHA256SUMS",
    }
    assert on_disk == set(listed)
    for path, digest in listed.items():
        assert hashlib.sha256((out / path).read_bytes()).hexdigest() == digest, path
    checked = subprocess.run(["sha256sum", "-c", "SHA256SUMS"], cwd=out, capture_output=True)
    assert checked.returncode == 0, checked.stdout + checked.stderr

    # 2. The emails are the very bytes the server received and the debtor sent.
    emails = sorted((out / "case-1" / "emails").iterdir())
    assert [p.name.split("-")[1] for p in emails] == ["out", "in"]
    received = [m.data for m in servers.sink_messages() if "pay@acme.example" in m.rcpt_tos]
    assert emails[0].read_bytes() == received[0]
    assert emails[1].read_bytes() == reply
    assert not any("beta" in name for name in listed)  # another debtor's mail stays out

    # 3. The chain segment recomputes, the case's events sit in it, their bodies hash right.
    rows = list(csv.DictReader(io.StringIO((out / "chain" / "segment.csv").read_text())))
    previous = manifest["chain"]["first_prev_hash"]
    for row in rows:
        assert row["prev_hash"] == previous
        link = f"{row['prev_hash']}\n{row['body_sha256']}".encode()
        assert hashlib.sha256(link).hexdigest() == row["hash"]
        previous = row["hash"]
    segment = {int(r["id"]): r for r in rows}
    events = [
        json.loads(line) for line in (out / "case-1" / "events.jsonl").read_text().splitlines()
    ]
    assert {"message_sent", "mail_received", "case_paused"} <= {e["kind"] for e in events}
    for event in events:
        assert hashlib.sha256(event["body"].encode()).hexdigest() == event["body_sha256"]
        assert segment[event["id"]]["hash"] == event["hash"]
    assert all(json.loads(e["body"])["case_id"] in (1, None) for e in events)

    # 4. openssl accepts every time-stamp token, on the chain heads and on the manifest.
    stamps = manifest["chain"]["timestamps"]
    assert stamps and int(stamps[-1]["head_id"]) == int(rows[-1]["id"])
    ca = out / "timestamps" / "tsa-ca.pem"
    for stamp in stamps:
        assert (out / stamp["data_file"]).read_text() == segment[stamp["head_id"]]["hash"]
        ok = subprocess.run(
            ["openssl", "ts", "-verify", "-data", stamp["data_file"], "-in",
             stamp["token_file"], "-CAfile", str(ca)], cwd=out, capture_output=True, text=True,
        )  # fmt: skip
        assert ok.returncode == 0 and "Verification: OK" in ok.stdout, ok.stderr
    ok = subprocess.run(
        ["openssl", "ts", "-verify", "-data", "manifest.json", "-in", "manifest.tsr",
         "-CAfile", str(ca)], cwd=out, capture_output=True, text=True,
    )  # fmt: skip
    assert ok.returncode == 0, ok.stderr

    # 5. The report, in the business's and the debtor's language, HTML and PDF.
    for lang, word in (("es", "Cronología"), ("en", "Timeline")):
        html = (out / "case-1" / f"report-{lang}.html").read_text(encoding="utf-8")
        assert word in html and "Acme Trading Ltd" in html and "F-1" in html
        assert "emails/001-out-" in html and "emails/002-in-" in html
        assert (out / "case-1" / f"report-{lang}.pdf").read_bytes().startswith(b"%PDF-")
    assert "We will pay on the 15th" in (out / "case-1" / "report-en.html").read_text()
    pdftoppm, pdftotext = tool("pdftoppm", optional=True), tool("pdftotext", optional=True)
    if pdftoppm and pdftotext:  # the PDF renders, and its text is there to read and search
        pdf = out / "case-1" / "report-es.pdf"
        subprocess.run([pdftoppm, "-r", "50", "-png", pdf, tmp_path / "page"], check=True)
        assert (tmp_path / "page-1.png").read_bytes().startswith(b"\x89PNG")
        text = subprocess.run([pdftotext, pdf, "-"], capture_output=True, text=True, check=True)
        words = " ".join(text.stdout.split())
        assert "Cronología" in words and "Acme Trading Ltd" in words and "1.262,11 €" in words
    browser = tool("chromium-headless-shell", optional=True)
    if browser:  # a real browser opens the HTML report and takes a screenshot of it
        html = (out / "case-1" / "report-en.html").as_uri()
        flags = [browser, "--no-sandbox", "--disable-gpu", "--window-size=1000,1400"]
        shot = tmp_path / "report.png"
        subprocess.run([*flags, f"--screenshot={shot}", html], capture_output=True, timeout=120)
        assert shot.read_bytes().startswith(b"\x89PNG")
        dom = subprocess.run(
            [*flags, "--dump-dom", html], capture_output=True, text=True, timeout=120
        )
        assert "Timeline" in dom.stdout and "We will pay on the 15th" in dom.stdout
    invoices = (out / "case-1" / "ledger" / "invoices.csv").read_text()
    assert "F-1,EUR,1210.00" in invoices and "Ley 3/2004" in invoices

    # 6. mailer's own check agrees, and finds one changed byte in the manifest.
    assert verify_export(target, app.store) == []
    forged = tmp_path / "forged.zip"
    with zipfile.ZipFile(target) as src, zipfile.ZipFile(forged, "w") as dst:
        for item in src.infolist():
            data = src.read(item)
            if item.filename == "manifest.json":
                data = data.replace(b'"format"', b'"Format"', 1)
            dst.writestr(item, data)
    problems = [str(p) for p in verify_export(forged, app.store)]
    assert any(p.startswith("manifest.json:") for p in problems)
    assert any("manifest.tsr" in p for p in problems)


def test_the_cli_verifies_exports_and_names_the_first_break(
    app: App, servers: LocalMailServers, tmp_path: Path
) -> None:
    now, _ = drive(app, servers)
    config = str(app.settings.source)
    runner = CliRunner()
    clock = ["--config", config, "--now", now.isoformat()]
    done = runner.invoke(main, [*clock, "evidence", "verify"])
    assert done.exit_code == 0, done.output
    assert "ok:" in done.output and "time-stamps" in done.output
    target = tmp_path / "all.zip"
    done = runner.invoke(main, [*clock, "evidence", "export", "--all", "-o", str(target)])
    assert done.exit_code == 0, done.output
    with zipfile.ZipFile(target) as archive:
        names = archive.namelist()
    assert "case-1/report-en.pdf" in names and "case-2/report-es.pdf" in names
    done = runner.invoke(main, [*clock, "evidence", "verify", "--export", str(target)])
    assert done.exit_code == 0, done.output
    # A token swapped for one byte's difference, and an event changed: both found, first first.
    conn = app.store.conn
    for trigger in ("events_append_only_u", "blobs_append_only_u"):
        conn.execute(f"DROP TRIGGER {trigger}")
    event_id, body = conn.execute(
        "SELECT id, body FROM events WHERE kind = 'mail_received'"
    ).fetchone()
    conn.execute(
        "UPDATE events SET body = ? WHERE id = ?", (body.replace("15th", "16th"), event_id)
    )
    done = runner.invoke(main, [*clock, "evidence", "verify"])
    assert done.exit_code == 1
    assert f"the first break is event {event_id}" in done.output.replace("\n", " ")


def test_stamps_come_only_when_due_and_a_changed_token_is_found(
    tsa: LocalTsa, tmp_path: Path
) -> None:
    settings = load_settings(Path(__file__).resolve().parent.parent / "examples" / "mailer.toml")
    settings = replace(
        settings, evidence=EvidenceSettings(tsa_url=tsa.url, tsa_ca_file=tsa.ca_file)
    )
    store = Store.open(tmp_path / "mailer.db")
    store.append_event(START, "case_note", {"n": 1})
    first = timestamp_if_due(store, settings, START)
    assert first is not None and first.head_id == 1
    assert timestamp_if_due(store, settings, START + timedelta(hours=25)) is None  # no news
    store.append_event(START + timedelta(hours=26), "case_note", {"n": 2})
    second = timestamp_if_due(store, settings, START + timedelta(hours=26))
    assert second is not None and second.head_id == 3  # stamps the event after the first stamp
    assert verify_store(store, settings.evidence).ok
    assert tsa.requests == 2
    # Another authority's token does not check out against this CA: refused, nothing stored.
    with running_tsa(tmp_path / "other") as other:
        wrong = replace(settings, evidence=replace(settings.evidence, tsa_url=other.url))
        store.append_event(START + timedelta(hours=60), "case_note", {"n": 3})
        with pytest.raises(BadTokenError, match="openssl ts -verify refuses"):
            timestamp_if_due(store, wrong, START + timedelta(hours=60))
    down = replace(settings, evidence=replace(settings.evidence, tsa_url="http://127.0.0.1:9/"))
    with pytest.raises(TimestampError):
        timestamp_if_due(store, down, START + timedelta(hours=60))
    # One byte of a stored token changed: the blob and the stamp both fail verify.
    store.conn.execute("DROP TRIGGER blobs_append_only_u")
    token = store.get_blob(first.token_sha256)
    forged = token[:-40] + bytes([token[-40] ^ 1]) + token[-39:]
    store.conn.execute(
        "UPDATE blobs SET data = ? WHERE sha256 = ?", (zlib.compress(forged), first.token_sha256)
    )
    problems = [str(p) for p in verify_store(store, settings.evidence).problems]
    assert problems[0].startswith(f"blob {first.token_sha256}")
    assert any(p.startswith(f"time-stamp event {first.event_id} (chain head 1)") for p in problems)
    store.close()
