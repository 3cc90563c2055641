"""A chunk of mail recorded at once leaves the store exactly as one message at a time would."""

from __future__ import annotations

import itertools
import os
import re
import secrets
import zlib
from datetime import UTC, datetime, timedelta
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

import mailer.flows.recording as flow
from mailer.app import App
from mailer.config import load_settings
from mailer.demo import write_config
from mailer.demo_debtors import auto_reply, delivery_report, reply_to
from mailer.domain.models import MessageState
from mailer.flows.inbound import Inbound
from mailer.ledger import parse_invoices
from mailer.store import inbound as store_inbound
from mailer.store import outbox
from mailer.store.db import Store, compress
from mailer.store.ledger import import_invoices

NOW = datetime(2026, 2, 2, 10, 0, tzinfo=UTC)
ACME = ("pay@acme.example", "boss@acme.example")
BETA = "ap@beta.example"
LEDGER = (
    "invoice_number,debtor_id,debtor_name,debtor_emails,debtor_lang,debtor_kind,country,region,"
    "currency,amount,issue_date,due_date\n"
    f"F-1,D1,Acme S.L.,{ACME[0]};{ACME[1]},es,business,ES,MD,EUR,1210.00,2025-12-01,2025-12-31\n"
    f"F-2,D2,Beta Ltd,{BETA},en,consumer,ES,,EUR,500.00,2025-12-01,2025-12-31\n"
)
# The tables an inbound pass writes, and the ones its decisions read.
TABLES = ("inbound", "events", "blobs", "reviews", "contacts", "cases", "messages",
          "delivery_signals")  # fmt: skip


def open_app(tmp_path: Path) -> App:
    os.environ["MAILER_DEMO_PASSWORD"] = "unused"
    tmp_path.mkdir()
    nowhere = SimpleNamespace(
        smtp_host="127.0.0.1", smtp_port=9, imap_host="127.0.0.1", imap_port=9
    )
    app = App.open(load_settings(write_config(tmp_path, nowhere)))  # type: ignore[arg-type]
    ledger = tmp_path / "invoices.csv"
    ledger.write_text(LEDGER, encoding="utf-8")
    import_invoices(app.store, parse_invoices(ledger), NOW - timedelta(days=40), "invoices.csv",
                    app.settings.profiles)  # fmt: skip
    # What we sent: each case's first reminder, to the first address; Acme's second too.
    for case_id, to in ((1, ACME[0]), (2, BETA)):
        raw = sent_mail(case_id, to)
        row = outbox.enqueue(
            app.store, case_id=case_id, step=1, step_name="friendly", channel="smtp",
            identity="cobros", message_id=f"<sent.{case_id}@taller-demo.example>",
            recipients=[to], subject="Factura", raw=raw, in_reply_to=None,
            state=MessageState.QUEUED, now=NOW - timedelta(days=3), deadline=None,
        )  # fmt: skip
        app.store.conn.execute(
            "UPDATE messages SET state = 'sent', sent_at = ? WHERE id = ?",
            ((NOW - timedelta(days=2)).isoformat(), row),
        )
    return app


def sent_mail(case_id: int, to: str) -> bytes:
    return (
        f"From: Cobros <cobros@taller-demo.example>\r\nTo: {to}\r\nSubject: Factura F-{case_id}\r\n"
        f"Message-ID: <sent.{case_id}@taller-demo.example>\r\n"
        "Date: Fri, 30 Jan 2026 09:00:00 +0100\r\n\r\nFactura pendiente.\r\n"
    ).encode()


def mailbox(failing: bool) -> list[bytes]:
    """Every kind of mail the inbound side meets, some of it twice, in an order where earlier
    messages change what later ones decide (a soft bounce, then an answer from the address);
    ``failing`` adds one that the flow fails on."""
    when = NOW - timedelta(hours=5)
    acme, beta = sent_mail(1, ACME[0]), sent_mail(2, BETA)
    soft = delivery_report(acme, ACME[0], "5.2.2", "552 5.2.2 Mailbox full", when, "mx.acme")
    mails = [
        soft,
        reply_to(acme, ACME[0], "Pagaremos la factura el 20 de febrero.", when),
        soft,  # the same bytes again
        delivery_report(beta, BETA, "5.2.2", "552 5.2.2 Mailbox full (1)", when, "mx.beta"),
        delivery_report(beta, BETA, "5.2.2", "552 5.2.2 Mailbox full (2)", when, "mx.beta"),
        auto_reply(beta, BETA, "Out of office until 9 February 2026.", when),
        reply_to(beta, BETA, "Please stop emailing me about this.", when),
        delivery_report(
            acme,
            ACME[0],
            "5.7.1",
            "554 5.7.1 Service unavailable; client host blocked using zen.spamhaus.org",
            when,
            "mx.acme",
        ),
        delivery_report(acme, ACME[0], "5.1.1", "550 5.1.1 User unknown", when, "mx.acme"),
        reply_to(acme, ACME[1], "explode" if failing else "¿Me reenvían la factura?", when),
        reply_to(acme, ACME[1], "No reconocemos este cargo, lo reclamamos.", when),
        b"\x00\x01 not mail at all",
        f"From: {ACME[1]}\r\nSubject: sin cabeceras\r\n\r\nhola\r\n".encode(),
        reply_to(sent_mail(9, "me@elsewhere.example"), "friend@elsewhere.example", "hola", when),
    ]
    mails.append(mails[6].replace(b"Subject: ", b"Subject: (copy) ", 1))  # same Message-ID
    no_id = f"From: {ACME[1]}\r\nSubject: Re: factura\r\n\r\nPagaremos el lunes.\r\n".encode()
    mails += [no_id, mails[11], no_id]  # the same bytes again, without a Message-ID
    return mails


def dump(store: Store) -> dict[str, list[tuple[Any, ...]]]:
    out: dict[str, list[tuple[Any, ...]]] = {}
    for table in TABLES:
        rows = store.conn.execute(f"SELECT * FROM {table} ORDER BY rowid").fetchall()
        if table == "blobs":  # compared by content: how it is compressed may differ
            rows = [(r[0], r[1], zlib.decompress(r[2]), *r[3:]) for r in rows]
        out[table] = rows
    return out


def drawn_ids_masked(tables: dict[str, list[tuple[Any, ...]]]) -> dict[str, list[tuple[Any, ...]]]:
    """Drawn Message-IDs (and every hash that covers one) as placeholders."""

    def mask(value: Any) -> Any:
        if isinstance(value, bytes):
            return mask(value.decode("latin-1"))
        if not isinstance(value, str):
            return value
        return re.sub(r"[0-9a-f]{16}", "<id>", re.sub(r"[0-9a-f]{64}", "<sha>", value))

    return {name: [tuple(map(mask, row)) for row in rows] for name, rows in tables.items()}


def pinned_ids(monkeypatch: pytest.MonkeyPatch) -> None:
    """Message-IDs and boundaries from a counter: two runs of the same mail write the same."""
    counter = itertools.count()
    monkeypatch.setattr(secrets, "token_hex", lambda n=32: f"{next(counter):0{2 * n}x}")


def explode_on_marker(monkeypatch: pytest.MonkeyPatch) -> None:
    """Deciding on a reply that says "explode" raises, as a bug would: for the rollback paths."""
    real = flow.decide

    def flaky(c, *args, **kw):  # type: ignore[no-untyped-def]
        if "explode" in c.reply_text:
            raise RuntimeError("a bug met this message")
        return real(c, *args, **kw)

    monkeypatch.setattr(flow, "decide", flaky)


def run(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, chunk: int, failing: bool
) -> tuple[list[str], App]:
    pinned_ids(monkeypatch)
    mails = mailbox(failing)
    app = open_app(tmp_path)
    explode_on_marker(monkeypatch)
    inbound = Inbound(app)
    items = [(uid, raw, uid != 13) for uid, raw in enumerate(mails, 1)]  # 13: header unreadable
    outcomes: list[str] = []
    for start in range(0, len(items), chunk):
        outcomes += inbound.process_many("cobros", "INBOX", 1, items[start : start + chunk], NOW)
    return outcomes, app


@pytest.mark.parametrize("failing", [False, True], ids=["recorded at once", "one fails"])
def test_a_chunk_at_once_records_what_one_message_at_a_time_does(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, failing: bool
) -> None:
    alone, one_by_one = run(tmp_path / "alone", monkeypatch, chunk=1, failing=failing)
    together, whole = run(tmp_path / "together", monkeypatch, chunk=100, failing=failing)
    assert together == alone
    assert {"stored", "duplicate", "quarantined", "unrelated"} <= set(together)
    assert ("a bug met this message" in str(dump(whole.store)["inbound"])) is failing
    expected = dump(one_by_one.store)
    got = dump(whole.store)
    if failing:
        # The chunk was recorded, rolled back and recorded again one message at a time: the
        # resends drew Message-IDs twice. Everything else is the same.
        expected, got = drawn_ids_masked(expected), drawn_ids_masked(got)
    for table in TABLES:
        assert got[table] == expected[table], table
    kinds = {row[2] for row in got["events"]}
    # What the mix was built to reach: each kind of effect, the failure, the failover's record.
    assert {"mail_received", "mail_quarantined", "soft_bounce", "contact_status",
            "message_resend_planned", "review_opened"} <= kinds  # fmt: skip
    assert any(row[7] == "refused" for row in got["delivery_signals"])
    assert whole.store.verify_chain() is None
    for app in (one_by_one, whole):
        app.store.close()


# --- the store's batched events ------------------------------------------------------------


def appended(store: Store, batched: bool) -> list[tuple[Any, ...]]:
    with store.transaction():
        if batched:
            with store.batched_events():
                ids = [store.append_event(NOW, "a", {"n": n}, case_id=n) for n in range(3)]
                store.append_events(NOW, [("b", {"n": n}, None, None, "D1") for n in range(3)])
                ids.append(store.append_event(NOW, "c"))
        else:
            ids = [store.append_event(NOW, "a", {"n": n}, case_id=n) for n in range(3)]
            store.append_events(NOW, [("b", {"n": n}, None, None, "D1") for n in range(3)])
            ids.append(store.append_event(NOW, "c"))
    assert ids == [1, 2, 3, 7]
    return store.conn.execute("SELECT * FROM events ORDER BY id").fetchall()


def test_batched_events_are_the_events_appended_one_by_one() -> None:
    assert appended(Store.open(None), batched=True) == appended(Store.open(None), batched=False)


def test_a_savepoint_rolled_back_in_a_batch_takes_its_events_along() -> None:
    store = Store.open(None)
    with store.transaction(), store.batched_events():
        store.append_event(NOW, "kept")
        with pytest.raises(RuntimeError), store.savepoint():
            store.append_event(NOW, "dropped")
            raise RuntimeError
        with store.unbatched():  # a part that reads the table sees every event so far
            assert [r[0] for r in store.conn.execute("SELECT kind FROM events")] == ["kept"]
            store.append_event(NOW, "direct")
        store.append_event(NOW, "after")
        assert store.conn.execute("SELECT count(*) FROM events").fetchone()[0] == 2
    assert [e["kind"] for e in store.events()] == ["kept", "direct", "after"]
    assert [e["id"] for e in store.events()] == [1, 2, 3]
    assert store.verify_chain() is None


def test_a_batch_that_fails_writes_nothing() -> None:
    store = Store.open(None)
    with pytest.raises(RuntimeError), store.transaction(), store.batched_events():
        store.append_event(NOW, "lost")
        raise RuntimeError
    store.append_event(NOW, "first")
    assert [(e["id"], e["kind"]) for e in store.events()] == [(1, "first")]
    assert store.verify_chain() is None
    with pytest.raises(RuntimeError, match="transaction"), store.batched_events():
        pass


def test_blobs_of_any_size_read_back_with_plain_zlib(tmp_path: Path) -> None:
    store = Store.open(tmp_path / "blobs.db")
    for size in (0, 1, 700, 1023, 1024, 5000, 70_000):
        data = (os.urandom(size // 2) + b"Estimado cliente, " * size)[:size]
        digest = store.put_blob(data)
        assert store.get_blob(digest) == data
        (stored,) = store.conn.execute(
            "SELECT data FROM blobs WHERE sha256 = ?", (digest,)
        ).fetchone()
        assert zlib.decompress(stored) == data  # what evidence verify and export read
        assert zlib.decompress(compress(data)) == data
    big = b"Estimado cliente, la factura sigue pendiente. " * 200
    assert len(compress(big)) < len(big) // 10  # larger mail is still compressed
    # Written before this change (zlib.compress level 6): still read.
    old = b"an old message " * 100
    store.conn.execute(
        "INSERT INTO blobs (sha256, size, data) VALUES (?, ?, ?)",
        ("0" * 64, len(old), zlib.compress(old, 6)),
    )
    assert store.get_blob("0" * 64) == old


def test_contact_cases_prefers_the_open_case_else_the_newest() -> None:
    store = Store.open(None)
    conn = store.conn
    for debtor, address in (("D1", "Pay@Acme.example"), ("D2", "ap@beta.example")):
        conn.execute(
            "INSERT INTO debtors (id, name, kind, lang, country, timezone, created_at, updated_at)"
            " VALUES (?, ?, 'business', 'es', 'ES', 'Europe/Madrid', 'x', 'x')",
            (debtor, debtor),
        )
        conn.execute(
            "INSERT INTO contacts (debtor_id, address, position, updated_at) VALUES (?, ?, 0, 'x')",
            (debtor, address),
        )
    for case_id, debtor, closed in ((1, "D1", "x"), (2, "D1", None), (3, "D1", "x"),
                                    (4, "D2", "x"), (5, "D2", "x")):  # fmt: skip
        conn.execute(
            "INSERT INTO cases (id, debtor_id, status, campaign, opened_at, closed_at)"
            " VALUES (?, ?, 'active', 'c', 'x', ?)",
            (case_id, debtor, closed),
        )
    found = store_inbound.contact_cases(
        store, ["pay@acme.example", "AP@BETA.EXAMPLE", "mailer-daemon@mx.example", ""]
    )
    assert found == {"pay@acme.example": 2, "ap@beta.example": 5}
