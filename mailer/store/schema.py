"""The database schema as ordered migrations; each runs once, in a transaction with its record."""

from __future__ import annotations

# Money is stored as decimal TEXT ("1210.00"), never REAL. Times are UTC ISO 8601 TEXT.
# Events and blobs are evidence: triggers make them append-only at the database level too.
_V1 = [
    """CREATE TABLE debtors (
        id TEXT PRIMARY KEY,
        name TEXT NOT NULL,
        kind TEXT NOT NULL CHECK (kind IN ('business', 'consumer')),
        lang TEXT NOT NULL,
        country TEXT NOT NULL,
        region TEXT,
        timezone TEXT NOT NULL,
        created_at TEXT NOT NULL,
        updated_at TEXT NOT NULL)""",
    """CREATE TABLE contacts (
        id INTEGER PRIMARY KEY,
        debtor_id TEXT NOT NULL REFERENCES debtors(id),
        address TEXT NOT NULL COLLATE NOCASE,
        position INTEGER NOT NULL,
        status TEXT NOT NULL DEFAULT 'active',
        status_reason TEXT,
        updated_at TEXT NOT NULL,
        UNIQUE (debtor_id, address))""",
    "CREATE INDEX contacts_address ON contacts (address)",
    """CREATE TABLE invoices (
        number TEXT PRIMARY KEY,
        debtor_id TEXT NOT NULL REFERENCES debtors(id),
        currency TEXT NOT NULL,
        amount TEXT NOT NULL,
        issue_date TEXT NOT NULL,
        due_date TEXT NOT NULL,
        pdf_path TEXT,
        payment_link TEXT,
        created_at TEXT NOT NULL,
        updated_at TEXT NOT NULL)""",
    "CREATE INDEX invoices_debtor ON invoices (debtor_id)",
    """CREATE TABLE payments (
        id INTEGER PRIMARY KEY,
        key TEXT NOT NULL UNIQUE,
        invoice_number TEXT NOT NULL REFERENCES invoices(number),
        paid_on TEXT NOT NULL,
        amount TEXT NOT NULL,
        reference TEXT,
        source TEXT,
        imported_at TEXT NOT NULL)""",
    "CREATE INDEX payments_invoice ON payments (invoice_number)",
    """CREATE TABLE cases (
        id INTEGER PRIMARY KEY,
        debtor_id TEXT NOT NULL REFERENCES debtors(id),
        status TEXT NOT NULL,
        status_reason TEXT,
        paused_until TEXT,
        campaign TEXT NOT NULL,
        identity TEXT,
        opened_at TEXT NOT NULL,
        closed_at TEXT,
        next_action_at TEXT)""",
    # At most one open case per debtor: all of their unpaid invoices are chased together.
    "CREATE UNIQUE INDEX cases_open ON cases (debtor_id) WHERE closed_at IS NULL",
    "CREATE INDEX cases_next ON cases (next_action_at) WHERE closed_at IS NULL",
    """CREATE TABLE blobs (
        sha256 TEXT PRIMARY KEY,
        size INTEGER NOT NULL,
        data BLOB NOT NULL)""",
    """CREATE TABLE messages (
        id INTEGER PRIMARY KEY,
        case_id INTEGER NOT NULL REFERENCES cases(id),
        step INTEGER NOT NULL,
        step_name TEXT NOT NULL,
        channel TEXT NOT NULL,
        identity TEXT NOT NULL,
        message_id TEXT NOT NULL UNIQUE,
        state TEXT NOT NULL,
        scheduled_at TEXT NOT NULL,
        recipients TEXT NOT NULL,
        subject TEXT NOT NULL,
        raw_sha256 TEXT REFERENCES blobs(sha256),
        in_reply_to TEXT,
        attempts INTEGER NOT NULL DEFAULT 0,
        next_attempt_at TEXT,
        deadline_at TEXT,
        last_error TEXT,
        receipt TEXT,
        sent_at TEXT,
        copied_at TEXT,
        copy_attempts INTEGER NOT NULL DEFAULT 0,
        created_at TEXT NOT NULL,
        updated_at TEXT NOT NULL,
        UNIQUE (case_id, step))""",
    "CREATE INDEX messages_state ON messages (state, next_attempt_at)",
    "CREATE INDEX messages_uncopied ON messages (state) WHERE copied_at IS NULL",
    """CREATE TABLE events (
        id INTEGER PRIMARY KEY,
        at TEXT NOT NULL,
        kind TEXT NOT NULL,
        case_id INTEGER,
        message_id INTEGER,
        debtor_id TEXT,
        body TEXT NOT NULL,
        prev_hash TEXT NOT NULL,
        hash TEXT NOT NULL)""",
    "CREATE INDEX events_case ON events (case_id)",
    """CREATE TRIGGER events_append_only_u BEFORE UPDATE ON events
        BEGIN SELECT RAISE(ABORT, 'events are append-only'); END""",
    """CREATE TRIGGER events_append_only_d BEFORE DELETE ON events
        BEGIN SELECT RAISE(ABORT, 'events are append-only'); END""",
    """CREATE TRIGGER blobs_append_only_u BEFORE UPDATE ON blobs
        BEGIN SELECT RAISE(ABORT, 'stored messages are never changed'); END""",
]

# Messages: a step may go again, to the debtor's next address, after a hard bounce. The copy is
# a numbered resend of the same step, so UNIQUE (case, step) becomes UNIQUE (case, step, resend):
# SQLite cannot alter a constraint, hence the rebuild.
_MESSAGE_COLUMNS = (
    "id, case_id, step, step_name, channel, identity, message_id, state, scheduled_at,"
    " recipients, subject, raw_sha256, in_reply_to, attempts, next_attempt_at, deadline_at,"
    " last_error, receipt, sent_at, copied_at, copy_attempts, created_at, updated_at"
)
_V2 = [
    """CREATE TABLE messages_v2 (
        id INTEGER PRIMARY KEY,
        case_id INTEGER NOT NULL REFERENCES cases(id),
        step INTEGER NOT NULL,
        step_name TEXT NOT NULL,
        channel TEXT NOT NULL,
        identity TEXT NOT NULL,
        message_id TEXT NOT NULL UNIQUE,
        state TEXT NOT NULL,
        scheduled_at TEXT NOT NULL,
        recipients TEXT NOT NULL,
        subject TEXT NOT NULL,
        raw_sha256 TEXT REFERENCES blobs(sha256),
        in_reply_to TEXT,
        attempts INTEGER NOT NULL DEFAULT 0,
        next_attempt_at TEXT,
        deadline_at TEXT,
        last_error TEXT,
        receipt TEXT,
        sent_at TEXT,
        copied_at TEXT,
        copy_attempts INTEGER NOT NULL DEFAULT 0,
        created_at TEXT NOT NULL,
        updated_at TEXT NOT NULL,
        resend INTEGER NOT NULL DEFAULT 0,
        UNIQUE (case_id, step, resend))""",
    f"INSERT INTO messages_v2 ({_MESSAGE_COLUMNS}) SELECT {_MESSAGE_COLUMNS} FROM messages",
    "DROP TABLE messages",
    "ALTER TABLE messages_v2 RENAME TO messages",
    "CREATE INDEX messages_state ON messages (state, next_attempt_at)",
    "CREATE INDEX messages_uncopied ON messages (state) WHERE copied_at IS NULL",
    "CREATE INDEX messages_case ON messages (case_id)",
    # Consecutive soft bounces: after a few, the address counts as undeliverable.
    "ALTER TABLE contacts ADD COLUMN soft_bounces INTEGER NOT NULL DEFAULT 0",
    # Where the watcher is in each folder: UIDs only mean something under one UIDVALIDITY.
    """CREATE TABLE mailbox_state (
        identity TEXT NOT NULL,
        folder TEXT NOT NULL,
        uidvalidity INTEGER NOT NULL,
        last_uid INTEGER NOT NULL,
        updated_at TEXT NOT NULL,
        PRIMARY KEY (identity, folder))""",
    # Case-related incoming mail only; the raw bytes are in blobs. Unrelated mail never lands here.
    """CREATE TABLE inbound (
        id INTEGER PRIMARY KEY,
        identity TEXT NOT NULL,
        folder TEXT NOT NULL,
        uidvalidity INTEGER,
        uid INTEGER,
        message_id TEXT,
        raw_sha256 TEXT NOT NULL REFERENCES blobs(sha256),
        state TEXT NOT NULL CHECK (state IN ('handled', 'quarantined')),
        kind TEXT NOT NULL,
        case_id INTEGER REFERENCES cases(id),
        related_message INTEGER REFERENCES messages(id),
        from_address TEXT,
        subject TEXT NOT NULL DEFAULT '',
        classification TEXT NOT NULL,
        error TEXT,
        received_at TEXT NOT NULL)""",
    "CREATE UNIQUE INDEX inbound_sha ON inbound (raw_sha256)",
    "CREATE INDEX inbound_message_id ON inbound (message_id)",
    "CREATE INDEX inbound_case ON inbound (case_id)",
    # The review queue: what a person must read or decide. Evidence stays in events.
    """CREATE TABLE reviews (
        id INTEGER PRIMARY KEY,
        case_id INTEGER NOT NULL REFERENCES cases(id),
        inbound_id INTEGER REFERENCES inbound(id),
        reason TEXT NOT NULL,
        intent TEXT,
        text TEXT NOT NULL DEFAULT '',
        created_at TEXT NOT NULL,
        resolved_at TEXT,
        resolution TEXT)""",
    "CREATE INDEX reviews_open ON reviews (case_id) WHERE resolved_at IS NULL",
    # An agreed instalment plan: reminders follow each instalment instead of the campaign.
    """CREATE TABLE instalments (
        case_id INTEGER NOT NULL REFERENCES cases(id),
        seq INTEGER NOT NULL,
        due_date TEXT NOT NULL,
        amount TEXT NOT NULL,
        created_at TEXT NOT NULL,
        cancelled_at TEXT,
        PRIMARY KEY (case_id, seq))""",
]

# Evidence (see mailer.store.chain and mailer.evidence): from here on an event's hash covers the
# SHA-256 of its body, so a body may be redacted by a recorded purge and the chain still verifies.
# The append-only triggers are replaced by ones that allow exactly that one change, and nothing
# else: a redaction keeps every hash, a purged blob keeps its name and size and loses its bytes.
_EVENT_KEEPS = " AND ".join(
    f"NEW.{c} IS OLD.{c}"
    for c in ("id", "at", "kind", "case_id", "message_id", "debtor_id", "prev_hash", "hash")
)
_V3 = [
    "ALTER TABLE events ADD COLUMN body_sha256 TEXT",
    "ALTER TABLE events ADD COLUMN redacted_by INTEGER",
    "DROP TRIGGER events_append_only_u",
    f"""CREATE TRIGGER events_append_only_u BEFORE UPDATE ON events
        WHEN NOT (OLD.redacted_by IS NULL AND NEW.redacted_by IS NOT NULL
                  AND OLD.body_sha256 IS NOT NULL AND NEW.body_sha256 IS OLD.body_sha256
                  AND {_EVENT_KEEPS})
        BEGIN SELECT RAISE(ABORT, 'events are append-only (a recorded purge may only redact)'); END""",
    "CREATE INDEX events_debtor ON events (debtor_id) WHERE case_id IS NULL",
    "ALTER TABLE blobs ADD COLUMN purged_by INTEGER",
    "DROP TRIGGER blobs_append_only_u",
    """CREATE TRIGGER blobs_append_only_u BEFORE UPDATE ON blobs
        WHEN NOT (OLD.purged_by IS NULL AND NEW.purged_by IS NOT NULL AND length(NEW.data) = 0
                  AND NEW.sha256 IS OLD.sha256 AND NEW.size IS OLD.size)
        BEGIN SELECT RAISE(ABORT, 'stored messages are never changed'); END""",
    """CREATE TRIGGER blobs_append_only_d BEFORE DELETE ON blobs
        BEGIN SELECT RAISE(ABORT, 'stored messages are never deleted (a purge empties them)'); END""",
    # Retention (LOPDGDD art. 32): a closed case is first blocked, later its personal data purged.
    "ALTER TABLE cases ADD COLUMN blocked_at TEXT",
    "ALTER TABLE cases ADD COLUMN purged_at TEXT",
]

# Likely blocking (mailer.domain.blocking): what each delivery attempt and answer says about mail
# from one identity to one address, read back per case and per identity; the events keep the proof.
_V4 = [
    """CREATE TABLE delivery_signals (
        id INTEGER PRIMARY KEY,
        at TEXT NOT NULL,
        case_id INTEGER REFERENCES cases(id),
        message_id INTEGER REFERENCES messages(id),
        identity TEXT,
        address TEXT NOT NULL,
        domain TEXT NOT NULL,
        kind TEXT NOT NULL,
        source TEXT NOT NULL,
        detail TEXT NOT NULL DEFAULT '',
        judged_at TEXT)""",
    "CREATE INDEX delivery_signals_case ON delivery_signals (case_id)",
    # Refusals wait here for the failover pass, which judges them together: an identity that
    # every domain refuses is seen as such before any case switches away from it.
    """CREATE INDEX delivery_signals_unjudged ON delivery_signals (case_id)
        WHERE judged_at IS NULL AND kind IN ('refused', 'filtered', 'misconfigured')""",
    "CREATE INDEX delivery_signals_identity ON delivery_signals (identity, at)",
    "ALTER TABLE cases ADD COLUMN identity_switches INTEGER NOT NULL DEFAULT 0",
]

# Mailchimp (mailer.flows.mailchimp): what each message sent through Mailchimp became there. The
# campaign's title is unique and stored before it is created, its id right after: a crash at any
# point is settled by asking Mailchimp, never by sending again. Read-back progress lives here too.
_V5 = [
    """CREATE TABLE mailchimp_sends (
        message INTEGER PRIMARY KEY REFERENCES messages(id),
        channel TEXT NOT NULL,
        address TEXT NOT NULL,
        title TEXT NOT NULL UNIQUE,
        state TEXT NOT NULL,
        remote_id TEXT,
        segment_id INTEGER,
        scheduled_for TEXT,
        launched_at TEXT,
        refusal TEXT,
        outcome TEXT,
        member_status TEXT,
        seen TEXT NOT NULL DEFAULT '[]',
        abuse_seen INTEGER NOT NULL DEFAULT 0,
        next_poll_at TEXT,
        created_at TEXT NOT NULL,
        updated_at TEXT NOT NULL)""",
    "CREATE INDEX mailchimp_sends_poll ON mailchimp_sends (next_poll_at)"
    " WHERE next_poll_at IS NOT NULL",
    "CREATE INDEX mailchimp_sends_state ON mailchimp_sends (state)",
]

# Planning reads each case's oldest unpaid invoice and whether any address may be mailed
# (mailer.store.cases.load_plan_facts). With the due date in the debtor index SQLite walks a
# debtor's invoices oldest first and stops at the first unpaid one, instead of reading every
# invoice and its payments (0.13-0.2 s of a 100k-case pass, bench/scale.py); the old index was
# its prefix, so every query that used it uses this one, and the import still writes one index
# on invoices. The contacts index answers "an active address?" without reading the rows
# (0.04 s of the pass; no cost measured on the import).
_V6 = [
    "DROP INDEX invoices_debtor",
    "CREATE INDEX invoices_debtor_due ON invoices (debtor_id, due_date)",
    "CREATE INDEX contacts_debtor_status ON contacts (debtor_id, status, position)",
]

MIGRATIONS: list[tuple[int, str, list[str]]] = [
    (1, "ledger, cases, outbox, events", _V1),
    (2, "mailbox watcher, inbound mail, reviews, resends, instalments", _V2),
    (3, "evidence: body hashes in the chain, redaction, retention", _V3),
    (4, "likely blocking: delivery signals, identity switches", _V4),
    (5, "mailchimp: campaigns and transactional messages per outbox message", _V5),
    (6, "planning: invoices by debtor and due date, addresses by status", _V6),
]
