"""Frozen values the whole of mailer speaks in: debtors, invoices, cases, campaigns, actions."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import date, datetime, time
from decimal import Decimal
from enum import StrEnum

ZERO = Decimal("0.00")


class DebtorKind(StrEnum):
    BUSINESS = "business"
    CONSUMER = "consumer"


class ContactStatus(StrEnum):
    ACTIVE = "active"
    UNDELIVERABLE = "undeliverable"  # hard bounce: never mailed again
    OPTED_OUT = "opted_out"  # the person asked for no more email


class CaseStatus(StrEnum):
    ACTIVE = "active"
    PAUSED = "paused"  # until ``paused_until`` (a promise, an out-of-office) or a person resumes
    REVIEW = "review"  # a person must decide (dispute, refusal, reply that needs reading)
    RESOLVED = "resolved"  # fully paid
    HANDED_OVER = "handed_over"  # given to an agency or a court: mailer stops
    STOPPED = "stopped"  # staff or the debtor ended automatic mail
    INSTALMENTS = "instalments"  # an agreed plan: its own reminders (flows/instalments.py)


class Channel(StrEnum):
    SMTP = "smtp"
    MAILCHIMP = "mailchimp"
    MANDRILL = "mandrill"


class MessageState(StrEnum):
    AWAITING_APPROVAL = "awaiting_approval"
    QUEUED = "queued"
    SENDING = "sending"
    SENT = "sent"
    DEFERRED = "deferred"
    FAILED = "failed"
    CANCELLED = "cancelled"


# States in which a planned step counts as taken: it is never planned again.
STEP_TAKEN_STATES = frozenset(
    {
        MessageState.AWAITING_APPROVAL,
        MessageState.QUEUED,
        MessageState.SENDING,
        MessageState.SENT,
        MessageState.DEFERRED,
        MessageState.FAILED,
    }
)


@dataclass(frozen=True, slots=True)
class Contact:
    address: str
    status: ContactStatus = ContactStatus.ACTIVE


@dataclass(frozen=True, slots=True)
class Debtor:
    id: str
    name: str
    kind: DebtorKind
    lang: str  # "es" or "en"
    country: str  # ISO 3166-1 alpha-2
    region: str | None  # ISO 3166-2 subdivision code without the country, e.g. "MD", "CN"
    timezone: str  # IANA name, derived from country/region at import
    contacts: tuple[Contact, ...]

    @property
    def active_addresses(self) -> tuple[str, ...]:
        return tuple(c.address for c in self.contacts if c.status is ContactStatus.ACTIVE)


@dataclass(frozen=True, slots=True)
class Payment:
    invoice_number: str
    paid_on: date
    amount: Decimal


@dataclass(frozen=True, slots=True)
class Invoice:
    number: str
    debtor_id: str
    currency: str
    amount: Decimal  # including VAT
    issue_date: date
    due_date: date
    pdf_path: str | None = None
    payment_link: str | None = None
    payments: tuple[Payment, ...] = ()

    @property
    def paid(self) -> Decimal:
        return sum((p.amount for p in self.payments), ZERO)

    @property
    def balance(self) -> Decimal:
        return max(self.amount - self.paid, ZERO)

    @property
    def is_paid(self) -> bool:
        return self.balance == ZERO


@dataclass(frozen=True, slots=True)
class Case:
    """One per debtor: every unpaid invoice of theirs is chased together, one email per step."""

    id: int
    debtor: Debtor
    invoices: tuple[Invoice, ...]
    status: CaseStatus = CaseStatus.ACTIVE
    paused_until: datetime | None = None  # aware UTC; None with PAUSED means "until a person acts"

    @property
    def open_invoices(self) -> tuple[Invoice, ...]:
        return tuple(i for i in self.invoices if not i.is_paid)

    @property
    def balance(self) -> Decimal:
        return sum((i.balance for i in self.invoices), ZERO)

    @property
    def anchor_due_date(self) -> date | None:
        """The due date the campaign's offsets count from: the oldest unpaid invoice's."""
        dues = [i.due_date for i in self.open_invoices]
        return min(dues) if dues else None


@dataclass(frozen=True, slots=True)
class Step:
    index: int  # 0-based position in the campaign
    name: str
    offset_days: int  # business days from the anchor due date; negative = before it
    template: str  # template name, looked up as templates/<lang>/<template>.*
    channel: Channel = Channel.SMTP
    approval: bool = False  # a person must approve before it goes
    fallback_smtp: bool = False  # if the channel cannot reach the debtor, send by SMTP


@dataclass(frozen=True, slots=True)
class Policy:
    """When a campaign may send: local weekdays and hours, gaps and caps."""

    weekdays: frozenset[int] = frozenset({0, 1, 2, 3, 4})  # Monday = 0
    window_start: time = time(9, 0)  # debtor-local; sends only in [start, end)
    window_end: time = time(18, 0)
    min_gap_days: int = 5  # calendar days between two messages to the same debtor
    max_per_30_days: int = 4
    skip_holidays: bool = True


@dataclass(frozen=True, slots=True)
class Campaign:
    name: str
    description: str
    steps: tuple[Step, ...]
    policy: Policy
    source: str = ""  # file it was read from, for messages


@dataclass(frozen=True, slots=True)
class HistoryEntry:
    """A step already taken for a case: what the planner needs to know of the outbox."""

    step: int
    at: datetime  # aware UTC: when it was sent, or when it is scheduled to go
    state: MessageState


# --- what the planner returns ----------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class SendStep:
    """Send ``step`` at ``at`` (aware UTC); due when ``at <= now``."""

    step: Step
    at: datetime


@dataclass(frozen=True, slots=True)
class LookAgain:
    """Nothing to send yet; call the planner again at ``at``."""

    at: datetime
    reason: str


@dataclass(frozen=True, slots=True)
class Idle:
    """Nothing will be sent for this case until something changes (payment, staff, reply)."""

    reason: str


Action = SendStep | LookAgain | Idle


@dataclass(frozen=True, slots=True)
class PlanInput:
    """Everything the planner needs for one case, gathered by the caller."""

    case: Case
    campaign: Campaign
    history: Sequence[HistoryEntry] = field(default_factory=tuple)


# --- the business side ------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Creditor:
    legal_name: str
    tax_id: str
    address: str
    country: str  # ISO 3166-1 alpha-2
    timezone: str  # IANA
    iban: str | None = None
    bic: str | None = None
    payment_link_template: str | None = None  # e.g. "https://pay.example/{invoice}"; str.format
    phone: str | None = None
    website: str | None = None


class SmtpSecurity(StrEnum):
    TLS = "tls"  # implicit TLS (port 465)
    STARTTLS = "starttls"  # port 587
    PLAIN = "plain"  # only when explicitly configured, e.g. loopback tests


@dataclass(frozen=True, slots=True)
class Identity:
    """One of the business's own sender mailboxes."""

    name: str  # config key, e.g. "billing"
    address: str
    display_name: str  # shown as "<display_name> — <creditor legal name>" in From
    smtp_host: str
    smtp_port: int
    smtp_security: SmtpSecurity
    smtp_user: str | None
    password_env: str | None  # where the password comes from: an environment variable...
    password_file: str | None  # ...or a file (systemd LoadCredential=); never the TOML itself
    imap_host: str | None
    imap_port: int
    imap_security: SmtpSecurity
    imap_user: str | None
    sent_folder: str | None = None  # None: find it via SPECIAL-USE \Sent
    reply_to: str | None = None
    rate_per_minute: int = 30
    concurrency: int = 2
    verify_tls: bool = True
    ca_file: str | None = None
    # Every send also goes (envelope only, like Bcc) to this mailbox, so after a crash the
    # outbox can tell an accepted message from a lost one by finding its Message-ID there.
    receipt_copy: bool = True

    @property
    def domain(self) -> str:
        return self.address.rsplit("@", 1)[1]


@dataclass(frozen=True, slots=True)
class ComplianceProfile:
    """Outer limits by debtor kind; a campaign's policy may only be stricter, never looser."""

    name: str  # "business" or "consumer"
    campaign: str  # campaign used for debtors of this kind
    earliest: time  # debtor-local bounds of any sending window
    latest: time
    max_per_30_days: int
    min_gap_days: int
    opt_out_line: bool  # every email says in one line how to ask for no more email


DEFAULT_PROFILES: dict[DebtorKind, ComplianceProfile] = {
    DebtorKind.BUSINESS: ComplianceProfile(
        name="business",
        campaign="business",
        earliest=time(8, 0),
        latest=time(20, 0),
        max_per_30_days=4,
        min_gap_days=3,
        opt_out_line=False,
    ),
    DebtorKind.CONSUMER: ComplianceProfile(
        name="consumer",
        campaign="consumer",
        earliest=time(8, 0),
        latest=time(21, 0),
        max_per_30_days=3,
        min_gap_days=5,
        opt_out_line=True,
    ),
}
