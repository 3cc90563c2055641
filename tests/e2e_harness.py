"""The end-to-end world: mailer's real daemon on a simulated clock against Postfix and Dovecot.

A ``World`` is one creditor with two identities (billing@ and accounts@creditor.test) on the
mail environment of tests/mailenv: it submits through Postfix's submission port (AUTH, STARTTLS
verified against the environment's CA) and reads its mailboxes from Dovecot. Each scenario adds
its own debtor with its own mailboxes, then moves the clock: every tick reads each identity's
mailbox once (the daemon's watchers, ``one_pass``) and runs one ``Daemon.tick``, as
``mailer demo`` does. Ledger imports, staff decisions and the evidence commands go through
the ``mailer`` CLI, at the simulated moment (``--now``).

Real servers deliver after they accept: a tick that sent something waits until Postfix's queue
is empty, so the mailboxes, the DSNs and the Sieve auto-replies its sends caused are all there
when the next tick reads (the simulated clock moves an hour per tick, the servers take
milliseconds). Nothing here sleeps for timing. And as an hour passes between two ticks, no
SMTP connection is kept from one to the next: a server closes an idle one within minutes, and
Postfix applies a changed sender-block table to new connections only.
"""

from __future__ import annotations

import asyncio
import contextlib
import csv
import email
import email.policy
import email.utils
import json
import os
import shutil
import sqlite3
import tempfile
import zipfile
from collections.abc import Callable, Coroutine, Iterable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from email.message import EmailMessage
from email.parser import BytesHeaderParser
from pathlib import Path
from typing import Any, TypeVar
from zoneinfo import ZoneInfo

from click.testing import CliRunner
from mailenv import ACCOUNTS, BILLING, DEFAULT_USERS, MailEnv, start, stop

from mailer.cli import main
from mailer.config import load_settings
from mailer.daemon import make_box, make_daemon
from mailer.demo_debtors import reply_to
from mailer.flows.outbound import TickReport
from mailer.mailbox.imap import ImapMailbox
from mailer.mailbox.watcher import Watcher

REPO = Path(__file__).resolve().parent.parent
PASSWORD_ENV = "MAILER_E2E_PASSWORD"
START_VAR = "MAILER_E2E_START"
MADRID = ZoneInfo("Europe/Madrid")  # the creditor's and every debtor's time zone here
IDENTITIES = {"billing": BILLING, "accounts": ACCOUNTS}  # the failover pool, in order
# The debtors' side: one mailbox (or two) per scenario, so scenarios sharing the world never
# read each other's mail. Scenario 3's first address, nobody@debtor.test, has no mailbox.
MAILBOXES = (
    "forgot@debtor.test",  # 1: pays after the second reminder
    "promise@debtor.test",  # 2: "pagaré el día 15"
    "second@debtor.test",  # 3: the address after nobody@debtor.test
    "refuses@debtor.test",  # 4: its server refuses identity A (sender-block table)
    "discards@debtor.test",  # 5: its Sieve discards identity A
    "stop@debtor.test",  # 6: "dejen de escribirme" ...
    "stop-home@debtor.test",  # 6: ... and an address mailer must not fall back to
    "holiday@debtor.test",  # 7: Sieve vacation auto-reply
    "idle@debtor.test",  # 8: answers while the watcher IDLEs and Dovecot restarts
)
INVOICE_COLUMNS = [
    "invoice_number", "debtor_id", "debtor_name", "debtor_emails", "debtor_lang", "debtor_kind",
    "country", "region", "currency", "amount", "issue_date", "due_date",
]  # fmt: skip
T = TypeVar("T")


def start_moment(today: date) -> datetime:
    """The simulated clock's start: 06:00 UTC on the first Monday after ``today`` (the real
    date), or after $MAILER_E2E_START (a later date, to replay a run across other holidays).

    Tied to the real date because the servers write real dates: a Sieve vacation reply is
    dated by Dovecot, and the classifier reads "back on ..." against the Date it was written
    on, so the simulated days must not lie before the servers' own.
    """
    wanted = os.environ.get(START_VAR)
    if wanted:
        today = max(today, date.fromisoformat(wanted))
    monday = today + timedelta(days=7 - today.weekday())
    return datetime(monday.year, monday.month, monday.day, 6, 0, tzinfo=UTC)


@contextlib.contextmanager
def open_world(users: Iterable[str] = MAILBOXES) -> Iterator[World]:
    """A fresh mail environment with the debtors' ``users`` and a world on it (for a module
    fixture: the servers start in about a second). MAILENV_KEEP=1 keeps the servers' mail
    and logs and the world's directory (database, exports) for a person to read."""
    env = start(users=(*DEFAULT_USERS, *users))
    workdir = Path(tempfile.mkdtemp(prefix="mailer-e2e."))
    world = None
    try:
        world = World(env, workdir, start_moment(datetime.now(UTC).date()))
        yield world
    finally:
        if world is not None:
            world.close()
        stop(env)
        if os.environ.get("MAILENV_KEEP") == "1":
            print(f"kept: {env.dir} (servers), {workdir} (mailer)")
        else:
            shutil.rmtree(workdir, ignore_errors=True)


def write_config(workdir: Path, env: MailEnv) -> Path:
    """mailer.toml for the two identities on the environment's Postfix and Dovecot."""
    if env.ca_file is not None:
        tls = f'smtp_security = "starttls"\nca_file = "{env.ca_file}"'
    else:  # start.sh found no openssl: submission offers no STARTTLS
        tls = 'smtp_security = "plain"'
    identities = "".join(
        f"""
[identities.{name}]
address = "{address}"
display_name = "{name.capitalize()}"
smtp_host = "{env.host}"
smtp_port = {env.submission_port}
{tls}
smtp_user = "{address}"
password_env = "{PASSWORD_ENV}"
imap_host = "{env.host}"
imap_port = {env.imap_port}
imap_security = "plain"
rate_per_minute = 600
"""
        for name, address in IDENTITIES.items()
    )
    path = workdir / "mailer.toml"
    path.write_text(
        f"""# The creditor of the end-to-end tests (tests/e2e_harness.py).
[creditor]
legal_name = "Acreedora Pruebas S.L."
tax_id = "B00000001"
address = "Calle Mayor 1, 28013 Madrid"
country = "ES"
timezone = "Europe/Madrid"
iban = "ES91 2100 0418 4502 0005 1332"

[storage]
database = "mailer.db"
evidence_dir = "evidence"

[paths]
campaigns = "{REPO / "campaigns"}"
templates = "{REPO / "templates"}"

[inbound]
idle_seconds = 600  # scenario 8 runs the watcher's own loop: only IDLE can wake it early

[blocking]
silence_after = 2  # scenario 5: two unanswered messages after a reply mean likely blocked
{identities}""",
        encoding="utf-8",
    )
    return path


@dataclass(frozen=True)
class Debtor:
    key: str
    name: str
    addresses: tuple[str, ...]  # the first is the main contact
    kind: str
    invoice: str
    amount: str

    @property
    def id(self) -> str:
        return f"D-{self.key}"


@dataclass
class Evidence:
    """What an export (``mailer evidence export``) says happened to a case's mail."""

    # (Message-ID, the recipients the submission server accepted) of every send
    accepted: list[tuple[str, tuple[str, ...]]] = field(default_factory=list)
    # (Message-ID, address) that a DSN in the evidence reports as failed
    bounced: set[tuple[str, str]] = field(default_factory=set)
    emails: dict[str, bytes] = field(default_factory=dict)  # Message-ID -> the exported bytes


def read_export(path: Path) -> Evidence:
    found = Evidence()
    with zipfile.ZipFile(path) as z:
        for name in z.namelist():
            if name.endswith(".eml"):
                raw = z.read(name)
                found.emails[header_message_id(raw)] = raw
            elif name.endswith("/events.jsonl"):
                for line in z.read(name).decode("utf-8").splitlines():
                    _read_event(json.loads(json.loads(line)["body"]), found)
    return found


def _read_event(body: dict[str, Any], found: Evidence) -> None:
    data = body["data"]
    if body["kind"] == "message_sent":
        receipt = data.get("receipt")
        # A send reconciled after a crash names no recipients: these scenarios have none.
        assert isinstance(receipt, dict), f"no SMTP receipt for {data['message_id']}: {data}"
        found.accepted.append((data["message_id"], tuple(a.lower() for a in receipt["accepted"])))
    elif body["kind"] == "mail_received" and data["classification"]["kind"] == "bounce":
        for failed in data["classification"]["recipients"]:
            found.bounced.add((data["in_reply_to"], failed["address"].lower()))


async def wait_for(condition: Callable[[], bool], what: str, limit: float = 30.0) -> None:
    """Let other tasks run until ``condition()``; the limit only stops a broken test hanging."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + limit
    while not condition():
        assert loop.time() < deadline, f"gave up waiting ({limit} s): {what}"
        await asyncio.sleep(0.02)


def header_message_id(raw: bytes) -> str:
    head = BytesHeaderParser(policy=email.policy.default).parsebytes(raw)
    return str(head["Message-ID"]).strip()


class World:
    """One creditor, its ledger and the real daemon, on a clock the test moves."""

    def __init__(
        self, env: MailEnv, workdir: Path, start: datetime, step: timedelta = timedelta(hours=1)
    ) -> None:
        self.env = env
        self.workdir = workdir
        self.now = start
        self.step = step
        self.debtors: dict[str, Debtor] = {}
        os.environ[PASSWORD_ENV] = env.password  # read by mailer like any deployment's secret
        self.config = write_config(workdir, env)
        self.settings = load_settings(self.config)
        self.daemon = make_daemon(self.settings, clock=lambda: self.now)
        self.app = self.daemon.app
        self._runner = asyncio.Runner()  # one loop for the world: SMTP connections live on it
        self.boxes: dict[str, ImapMailbox] = {}
        self.connect()

    # --- running --------------------------------------------------------------------------

    def run(self, coro: Coroutine[Any, Any, T]) -> T:
        return self._runner.run(coro)

    def connect(self) -> None:
        """(Re)open the IMAP sessions the per-tick reading uses (after a Dovecot restart)."""
        for box in self.boxes.values():
            box.close()
        self.boxes = {w.identity.name: make_box(w.identity) for w in self.daemon.watchers}
        for box in self.boxes.values():
            box.connect()

    def watcher(self, identity: str) -> Watcher:
        return next(w for w in self.daemon.watchers if w.identity.name == identity)

    def tick(self) -> TickReport:
        self.now += self.step
        return self.run(self._tick())

    async def _tick(self) -> TickReport:
        for watcher in self.daemon.watchers:
            got = await watcher.one_pass(self.boxes[watcher.identity.name], lambda: False)
            assert not got.errors and not got.quarantined, f"{self.now}: mailbox pass {got}"
        report = await self.daemon.tick()
        assert not report.errors, f"{self.now}: tick errors {report.errors}"
        if report.sent:
            await asyncio.to_thread(self.env.wait_for_empty_queue)
        # An hour passes before the next tick: Postfix would have closed an idle connection
        # long before (smtpd_timeout), and it reads its tables (sender blocks) per connection.
        for transport in self.daemon.outbound.transports.values():
            await transport.close()
        return report

    def advance(self, days: float = 0, hours: float = 0) -> None:
        end = self.now + timedelta(days=days, hours=hours)
        while self.now + self.step <= end:
            self.tick()

    def advance_to(self, moment: datetime) -> None:
        while self.now < moment:
            self.tick()

    def advance_until(self, condition: Callable[[], bool], days: float, what: str) -> None:
        """Tick until ``condition()``; fails after ``days`` simulated days."""
        end = self.now + timedelta(days=days)
        while not condition():
            assert self.now < end, f"not within {days} simulated days: {what}"
            self.tick()

    def local(self, moment: datetime | None = None) -> datetime:
        return (moment or self.now).astimezone(MADRID)

    # --- the ledger, through the CLI --------------------------------------------------------

    def cli(self, *args: str) -> str:
        """``mailer --config ... --now <simulated now> ARGS``, in-process; must exit 0."""
        result = CliRunner().invoke(
            main,
            ["--config", str(self.config), "--now", self.now.isoformat(), *args],
            catch_exceptions=False,
        )
        assert result.exit_code == 0, f"mailer {' '.join(args)}: {result.output}"
        return result.output

    def add_debtor(
        self,
        key: str,
        addresses: tuple[str, ...],
        *,
        kind: str = "business",
        amount: str = "1210.00",
        overdue_days: int = 10,
    ) -> Debtor:
        """A debtor with one invoice ``overdue_days`` past due, imported with
        ``mailer import invoices``: its case opens now."""
        debtor = Debtor(key, f"Deudor {key.capitalize()}", addresses, kind, f"F-{key}", amount)
        due = self.now.date() - timedelta(days=overdue_days)
        row = [debtor.invoice, debtor.id, debtor.name, ";".join(addresses), "es", kind, "ES",
               "MD", "EUR", amount, (due - timedelta(days=30)).isoformat(), due.isoformat()]  # fmt: skip
        path = self._csv(f"invoices-{key}.csv", INVOICE_COLUMNS, [row])
        assert "1 new" in self.cli("import", "invoices", str(path))
        self.debtors[key] = debtor
        return debtor

    def pay(self, debtor: Debtor, amount: str | None = None) -> str:
        """The debtor pays (today, the whole invoice by default): ``mailer import payments``."""
        row = [debtor.invoice, self.now.date().isoformat(), amount or debtor.amount,
               f"transfer-{debtor.key}-{self.now:%Y%m%d%H}"]  # fmt: skip
        path = self._csv(
            f"payments-{debtor.key}-{self.now:%Y%m%d%H}.csv",
            ["invoice_number", "date", "amount", "reference"],
            [row],
        )
        return self.cli("import", "payments", str(path))

    def _csv(self, name: str, header: list[str], rows: list[list[str]]) -> Path:
        path = self.workdir / "ledger" / name
        path.parent.mkdir(exist_ok=True)
        with path.open("w", encoding="utf-8", newline="") as f:
            writer = csv.writer(f)
            writer.writerow(header)
            writer.writerows(rows)
        return path

    # --- the debtors' side ------------------------------------------------------------------

    def mailbox(self, address: str) -> list[EmailMessage]:
        """What the debtor's mailbox holds (its Maildir, as Dovecot stored it)."""
        return self.env.messages(address)

    def senders(self, address: str) -> list[str]:
        """The From address of each message in the debtor's mailbox, oldest first."""
        return [email.utils.parseaddr(str(m["From"]))[1].lower() for m in self.mailbox(address)]

    def answer(self, address: str, text: str, to: bytes | None = None) -> bytes:
        """The debtor's answer to ``to`` (default: the last message in its mailbox), threaded
        with In-Reply-To and References, dated now, the original quoted below."""
        original = to if to is not None else self.env.raw_messages(address)[-1]
        return reply_to(original, address, text, self.now)

    def reply(self, address: str, text: str, to: bytes | None = None) -> str:
        """The debtor answers from its own mailbox through Postfix (submission, AUTH as the
        debtor); returns the answer's Message-ID once it is in the creditor's mailbox."""
        data = self.answer(address, text, to)
        msg = email.message_from_bytes(data, policy=email.policy.default)
        recipient = email.utils.parseaddr(str(msg["To"]))[1]
        self.env.submit(data, address, [recipient])
        message_id = str(msg["Message-ID"])
        self.env.wait_for_message(recipient, lambda m: m["Message-ID"] == message_id)
        return message_id

    # --- what mailer recorded ---------------------------------------------------------------

    def _rows(self, sql: str, args: tuple[Any, ...]) -> list[sqlite3.Row]:
        return self.app.store.query(sql, args)

    def case(self, debtor: Debtor) -> sqlite3.Row:
        rows = self._rows("SELECT * FROM cases WHERE debtor_id = ? ORDER BY id DESC", (debtor.id,))
        assert rows, f"no case for {debtor.id}"
        return rows[0]

    def contacts(self, debtor: Debtor) -> dict[str, str]:
        rows = self._rows("SELECT address, status FROM contacts WHERE debtor_id = ?", (debtor.id,))
        return {r["address"]: r["status"] for r in rows}

    def outbox(self, debtor: Debtor) -> list[sqlite3.Row]:
        """Every message mailer stored for the debtor's cases, in order."""
        return self._rows(
            "SELECT m.* FROM messages m JOIN cases c ON c.id = m.case_id WHERE c.debtor_id = ?"
            " ORDER BY m.id",
            (debtor.id,),
        )

    def sent(self, debtor: Debtor) -> list[sqlite3.Row]:
        return [m for m in self.outbox(debtor) if m["state"] == "sent"]

    def inbound(self, debtor: Debtor) -> list[sqlite3.Row]:
        return self._rows(
            "SELECT i.* FROM inbound i JOIN cases c ON c.id = i.case_id WHERE c.debtor_id = ?"
            " ORDER BY i.id",
            (debtor.id,),
        )

    def reviews(self, debtor: Debtor) -> list[sqlite3.Row]:
        return self._rows(
            "SELECT r.* FROM reviews r JOIN cases c ON c.id = r.case_id WHERE c.debtor_id = ?"
            " ORDER BY r.id",
            (debtor.id,),
        )

    def events(self, debtor: Debtor, kind: str) -> list[dict[str, Any]]:
        """The data of the debtor's case's events of one kind, in order."""
        return [
            e["data"] for e in self.app.store.events(self.case(debtor)["id"]) if e["kind"] == kind
        ]

    # --- evidence ---------------------------------------------------------------------------

    def export(self, debtor: Debtor) -> Path:
        """``mailer evidence export --case`` for the debtor's case, checked with
        ``mailer evidence verify --export``."""
        case_id = self.case(debtor)["id"]
        out = self.workdir / "exports" / f"case-{case_id}-{self.now:%Y%m%d%H%M}.zip"
        self.cli("evidence", "export", "--case", str(case_id), "-o", str(out))
        assert "ok:" in self.cli("evidence", "verify", "--export", str(out))
        return out

    def check_mailboxes(self, debtor: Debtor) -> None:
        """Each of the debtor's mailboxes holds exactly the messages the exported evidence says
        its server accepted, byte for byte, less those the evidence records as bounced and
        those its own Sieve discarded (Dovecot's log)."""
        evidence = read_export(self.export(debtor))
        assert evidence.accepted, f"{debtor.id}: the evidence records no accepted message"
        for address in debtor.addresses:
            discarded = self.env.sieve_discarded(address)
            expected = sorted(
                message_id
                for message_id, accepted in evidence.accepted
                if address in accepted
                and (message_id, address) not in evidence.bounced
                and message_id not in discarded
            )
            stored = {header_message_id(raw): raw for raw in self.env.raw_messages(address)}
            assert len(stored) == len(self.env.raw_messages(address)), f"{address}: duplicates"
            assert sorted(stored) == expected, f"{address}: mailbox {sorted(stored)} != {expected}"
            for message_id, raw in stored.items():
                # Dovecot stores LF line ends below the trace headers the servers prepend.
                sent = evidence.emails[message_id].replace(b"\r\n", b"\n")
                assert raw.endswith(sent), f"{address}: {message_id} differs from the evidence"

    def close(self) -> None:
        for box in self.boxes.values():
            box.close()
        self.run(self.daemon.close())
        self._runner.close()
        os.environ.pop(PASSWORD_ENV, None)
