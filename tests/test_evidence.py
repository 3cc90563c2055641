"""The evidence record: verify finds each kind of tampering where it is; purge keeps the chain."""

from __future__ import annotations

import json
import sqlite3
import zipfile
import zlib
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from mailer.config import EvidenceSettings, load_settings
from mailer.domain.models import DEFAULT_PROFILES, MessageState
from mailer.errors import ConfigError, PermanentError
from mailer.evidence.check_export import verify_export
from mailer.evidence.export import export_evidence, select_cases
from mailer.evidence.retention import apply_retention, due, purge_case
from mailer.evidence.verify import verify_store
from mailer.ledger import parse_invoices, parse_payments
from mailer.store import outbox
from mailer.store.chain import GENESIS, event_hash
from mailer.store.db import Store
from mailer.store.ledger import import_invoices, import_payments

NOW = datetime(2026, 1, 5, 9, 0, tzinfo=UTC)
HEADER = (
    "invoice_number,debtor_id,debtor_name,debtor_emails,debtor_lang,debtor_kind,country,region,"
    "currency,amount,issue_date,due_date\n"
)
LEDGER = (
    "F-1,D1,Acme S.L.,pay@acme.example,es,business,ES,MD,EUR,1210.00,2025-11-01,2025-12-01\n"
    "F-2,D2,Beta Ltd,ap@beta.example,en,business,ES,,EUR,500.00,2025-11-01,2025-12-01\n"
)
EVIDENCE = EvidenceSettings()


def raw_mail(n: int, to: str) -> bytes:
    return (
        f"From: cobros@taller.example\r\nTo: {to}\r\nSubject: Recordatorio {n}\r\n"
        f"Message-ID: <m{n}@taller.example>\r\n\r\nFactura pendiente {n}.\r\n"
    ).encode()


@pytest.fixture
def store(tmp_path: Path) -> Store:
    opened = Store.open(tmp_path / "mailer.db")
    ledger = tmp_path / "invoices.csv"
    ledger.write_text(HEADER + LEDGER, encoding="utf-8")
    import_invoices(opened, parse_invoices(ledger), NOW, "invoices.csv", DEFAULT_PROFILES)
    for n, (case_id, to) in enumerate([(1, "pay@acme.example"), (2, "ap@beta.example")], 1):
        row = outbox.enqueue(
            opened, case_id=case_id, step=0, step_name="friendly", channel="smtp",
            identity="cobros", message_id=f"<m{n}@taller.example>", recipients=[to],
            subject=f"Recordatorio {n}", raw=raw_mail(n, to), in_reply_to=None,
            state=MessageState.QUEUED, now=NOW, deadline=None,
        )  # fmt: skip
        assert row is not None
        message = outbox.get(opened, row)
        assert message is not None
        outbox.move(opened, message, MessageState.SENDING, NOW, "send_attempt", {"attempt": 1})
        moved = outbox.get(opened, row)
        assert moved is not None
        outbox.move(
            opened, moved, MessageState.SENT, NOW, "message_sent",
            {"receipt": {"code": 250, "text": "2.0.0 Ok"}}, sent_at=NOW,
        )  # fmt: skip
    return opened


def drop_triggers(store: Store) -> None:
    """What a tamperer with the database file can do; the test does it to prove verify sees it."""
    for name in ("events_append_only_u", "events_append_only_d", "blobs_append_only_u"):
        store.conn.execute(f"DROP TRIGGER {name}")


def first_problem(store: Store) -> str:
    report = verify_store(store, EVIDENCE)
    assert not report.ok
    return str(report.problems[0])


def test_an_untouched_store_verifies(store: Store) -> None:
    report = verify_store(store, EVIDENCE)
    assert report.ok, report.problems
    assert report.blobs == 2 and report.events > 10


def test_the_triggers_refuse_changes_in_place(store: Store) -> None:
    with pytest.raises(sqlite3.IntegrityError, match="append-only"):
        store.conn.execute("UPDATE events SET body = '{}' WHERE id = 3")
    with pytest.raises(sqlite3.IntegrityError, match="append-only"):
        # A redaction must keep every hash (and verify checks a purge recorded it).
        store.conn.execute("UPDATE events SET redacted_by = 99, hash = 'x' WHERE id = 3")
    with pytest.raises(sqlite3.IntegrityError, match="append-only"):
        store.conn.execute("DELETE FROM events WHERE id = 3")
    with pytest.raises(sqlite3.IntegrityError, match="never"):
        store.conn.execute("UPDATE blobs SET data = x'00'")
    with pytest.raises(sqlite3.IntegrityError, match="never"):
        store.conn.execute("DELETE FROM blobs")


def test_one_changed_byte_in_a_stored_message_is_found_with_its_message_and_case(
    store: Store,
) -> None:
    drop_triggers(store)
    digest, data = store.conn.execute(
        "SELECT sha256, data FROM blobs ORDER BY rowid DESC"
    ).fetchone()
    changed = raw_mail(2, "ap@beta.example").replace(b"pendiente", b"pendienTe")
    store.conn.execute(
        "UPDATE blobs SET data = ? WHERE sha256 = ?", (zlib.compress(changed), digest)
    )
    assert zlib.decompress(data) != changed
    problem = first_problem(store)
    assert problem.startswith(f"blob {digest} (outgoing message 2, case 2)")
    assert "no longer hash" in problem


def test_one_changed_byte_in_an_event_breaks_the_chain_at_that_event(store: Store) -> None:
    drop_triggers(store)
    event_id, body = store.conn.execute(
        "SELECT id, body FROM events WHERE kind = 'message_sent' ORDER BY id LIMIT 1"
    ).fetchone()
    store.conn.execute(
        "UPDATE events SET body = ? WHERE id = ?",
        (body.replace('"code":250', '"code":251'), event_id),
    )
    problem = first_problem(store)
    assert problem.startswith(f"event {event_id}: event {event_id} (")
    assert "message_sent, case 1" in problem and "body has changed" in problem


def test_a_removed_event_breaks_the_link_of_the_next(store: Store) -> None:
    drop_triggers(store)
    store.conn.execute("DELETE FROM events WHERE id = 5")
    assert "event 6 (" in first_problem(store) and "link" in first_problem(store)


def test_a_row_moved_to_another_case_is_found(store: Store) -> None:
    drop_triggers(store)
    event_id = store.conn.execute(
        "SELECT id FROM events WHERE kind = 'message_sent' AND case_id = 2"
    ).fetchone()[0]
    store.conn.execute("UPDATE events SET case_id = 1 WHERE id = ?", (event_id,))
    assert "case_id column" in first_problem(store)


def test_a_message_pointed_at_other_bytes_is_found(store: Store) -> None:
    other = store.conn.execute("SELECT raw_sha256 FROM messages WHERE id = 2").fetchone()[0]
    store.conn.execute("UPDATE messages SET raw_sha256 = ? WHERE id = 1", (other,))
    assert first_problem(store).startswith("outgoing message 1 (case 1): points at")


def test_a_redaction_no_purge_recorded_is_a_break(store: Store) -> None:
    drop_triggers(store)
    victim = store.conn.execute("SELECT id FROM events WHERE case_id = 1 LIMIT 1").fetchone()[0]
    purge = store.conn.execute("SELECT max(id) FROM events").fetchone()[0]  # not a purge
    store.conn.execute(
        "UPDATE events SET body = '{}', redacted_by = ? WHERE id = ?", (purge, victim)
    )
    assert "it is no purge" in first_problem(store)


def close_case_one(store: Store, tmp_path: Path) -> None:
    payments = tmp_path / "payments.csv"
    payments.write_text("invoice_number,date,amount\nF-1,2026-01-05,1210.00\n", encoding="utf-8")
    import_payments(store, parse_payments(payments), NOW, "payments.csv", DEFAULT_PROFILES)


def test_retention_blocks_then_purges_and_verify_still_passes(store: Store, tmp_path: Path) -> None:
    close_case_one(store, tmp_path)
    settings = EvidenceSettings(block_after_years=0, purge_after_years=6)
    with pytest.raises(PermanentError, match="still open"):
        purge_case(store, 2, NOW, "test")
    assert due(store, settings, NOW + timedelta(days=1)) == ([1], [])
    assert apply_retention(store, settings, NOW + timedelta(days=1)).blocked == [1]
    assert store.conn.execute("SELECT blocked_at FROM cases WHERE id = 1").fetchone()[0]
    assert due(store, settings, NOW + timedelta(days=365 * 6)) == ([], [])  # not yet six years
    later = NOW + timedelta(days=365 * 6 + 2)
    report = apply_retention(store, settings, later)
    (purged,) = report.purged
    assert purged.case_id == 1 and purged.blobs_emptied == 1 and purged.debtor_purged
    assert purged.events_redacted > 5 and purged.legacy_events_kept == 0
    assert verify_store(store, EVIDENCE).ok, verify_store(store, EVIDENCE).problems
    # The personal data is gone: names, addresses, the email's bytes, the event bodies.
    dump = "\n".join(store.conn.iterdump())
    assert "pay@acme.example" not in dump and "Acme S.L." not in dump
    assert "Recordatorio 1" not in dump
    with pytest.raises(KeyError, match="purged"):
        store.get_blob(
            store.conn.execute("SELECT raw_sha256 FROM messages WHERE id = 1").fetchone()[0]
        )
    # ...and the other debtor's record is whole.
    assert "ap@beta.example" in dump and "Beta Ltd" in dump
    assert store.get_blob(
        store.conn.execute("SELECT raw_sha256 FROM messages WHERE id = 2").fetchone()[0]
    )
    # The purge itself is on record, with what it redacted.
    purge = [e for e in store.events(case_id=1) if e["kind"] == "retention_purged"]
    assert purge[0]["data"]["events"]["count"] == purged.events_redacted
    assert apply_retention(store, settings, later).purged == []  # once only


def test_a_purge_cannot_be_stretched_to_more_rows(store: Store, tmp_path: Path) -> None:
    close_case_one(store, tmp_path)
    report = purge_case(store, 1, NOW, "test")
    drop_triggers(store)
    victim = store.conn.execute("SELECT id FROM events WHERE case_id = 2 LIMIT 1").fetchone()[0]
    store.conn.execute(
        "UPDATE events SET body = '{}', redacted_by = ? WHERE id = ?", (report.event_id, victim)
    )
    assert "not the ones it recorded" in first_problem(store)


def test_a_blob_emptied_outside_a_purge_is_found(store: Store, tmp_path: Path) -> None:
    close_case_one(store, tmp_path)
    report = purge_case(store, 1, NOW, "test")
    other = store.conn.execute("SELECT raw_sha256 FROM messages WHERE id = 2").fetchone()[0]
    # The trigger lets an emptied blob through only as a purge would do it; verify still
    # notices that the purge never named this one.
    store.conn.execute(
        "UPDATE blobs SET data = x'', purged_by = ? WHERE sha256 = ?", (report.event_id, other)
    )
    problem = first_problem(store)
    assert f"blob {other}" in problem or "did not record" in problem
    body = store.conn.execute(
        "SELECT body FROM events WHERE id = ?", (report.event_id,)
    ).fetchone()[0]
    assert json.loads(body)["data"]["blobs"]["count"] == 1


def test_evidence_settings_are_checked_with_file_and_line(tmp_path: Path) -> None:
    config = tmp_path / "mailer.toml"
    config.write_text(
        '[creditor]\nlegal_name = "T"\ntax_id = "B1"\naddress = "A"\niban = "ES00"\n\n'
        '[identities.a]\naddress = "a@t.example"\ndisplay_name = "A"\nsmtp_host = "h"\n\n'
        '[evidence]\ntsa_url = "ftp://tsa.example"\ntimestamp_interval_hours = 0\n'
        'block_after_years = 7\npurge_after_years = 5\nbusiness_lang = "fr"\n',
        encoding="utf-8",
    )
    with pytest.raises(ConfigError) as info:
        load_settings(config)
    problems = "\n".join(info.value.problems)
    assert f"{config}:13: tsa_url must be an http" in problems
    assert "tsa_url needs tsa_ca_file" in problems
    assert f"{config}:14: timestamp_interval_hours must be a number > 0" in problems
    assert f"{config}:17: business_lang must be es or en" in problems
    assert "purge_after_years may not come before block_after_years" in problems


def test_a_purged_case_still_exports_and_the_export_checks_out(
    store: Store, tmp_path: Path
) -> None:
    settings = load_settings(Path(__file__).resolve().parent.parent / "examples" / "mailer.toml")
    close_case_one(store, tmp_path)
    purge_case(store, 1, NOW + timedelta(days=1), "test")
    target = tmp_path / "purged.zip"
    report = export_evidence(store, settings, target, NOW + timedelta(days=2), case_ids=[1, 2])
    assert report.cases == [1, 2] and not report.manifest_stamped
    assert verify_export(target, store) == []
    with zipfile.ZipFile(target) as archive:
        names = archive.namelist()
        html = archive.read("case-1/report-es.html").decode()
    assert not any(n.startswith("case-1/emails/") for n in names)  # its bytes are gone
    assert any(n.startswith("case-2/emails/") for n in names)
    assert "Contenido suprimido" in html and "Acme" not in html
    # --since: only cases with something recorded from then on.
    assert select_cases(store, None, NOW + timedelta(days=1)) == [1]
    assert select_cases(store, None, None) == [1, 2]


def test_events_from_before_schema_3_verify_by_the_old_rule() -> None:
    store = Store.open(None)
    body = json.dumps({"at": "2025-01-01T00:00:00+00:00", "kind": "old", "case_id": None,
                       "message_id": None, "debtor_id": None, "data": {}})  # fmt: skip
    store.conn.execute(
        "INSERT INTO events (at, kind, body, prev_hash, hash) VALUES (?, 'old', ?, ?, ?)",
        ("2025-01-01T00:00:00+00:00", body, GENESIS, event_hash(GENESIS, body)),
    )
    store.append_event(NOW, "new", {"x": 1})
    assert store.chain_break() is None
    with pytest.raises(sqlite3.IntegrityError):  # an old event cannot be redacted
        store.conn.execute("UPDATE events SET redacted_by = 2, body = '{}' WHERE id = 1")
