"""Instalment plans: the split, the plan's reminders, templates, staff's agreement, the flow."""

from __future__ import annotations

import asyncio
import email
import email.policy
import shutil
from collections.abc import Iterator
from dataclasses import replace
from datetime import UTC, date, datetime, time, timedelta
from decimal import Decimal
from email.message import EmailMessage
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mailer.app import App, Rules, _representative, instalment_contexts, sample_cases
from mailer.config import Settings, load_settings
from mailer.daemon import Daemon, build_transports, open_mailbox
from mailer.demo import write_config
from mailer.domain import planner
from mailer.domain.calendar import HolidayCalendar, in_window, local_wall_to_utc, zone
from mailer.domain.instalments import (
    COMPLETE,
    MISSED_REVIEW,
    TEMPLATES,
    Instalment,
    paid_toward,
    plan_instalments,
    seq_of,
    split,
    steps_for,
    template_values,
)
from mailer.domain.models import (
    DEFAULT_PROFILES,
    Campaign,
    Case,
    CaseStatus,
    Contact,
    ContactStatus,
    Debtor,
    DebtorKind,
    HistoryEntry,
    Idle,
    Invoice,
    LookAgain,
    MessageState,
    Payment,
    Policy,
    SendStep,
    Step,
)
from mailer.domain.policy import effective_policy
from mailer.errors import ConfigError, MailerError
from mailer.flows import instalments as flow
from mailer.flows.instalments import Instalments
from mailer.flows.outbound import Outbound, TickReport
from mailer.flows.staff import agree_instalments
from mailer.ledger import parse_invoices, parse_payments
from mailer.localservers import LocalMailServers
from mailer.render import TemplateSet, build_context, check_templates, render
from mailer.store import outbox
from mailer.store.db import Store
from mailer.store.inbound import open_review, open_reviews
from mailer.store.ledger import import_invoices, import_payments

ROOT = Path(__file__).resolve().parent.parent
MADRID = "Europe/Madrid"
ES_MD = HolidayCalendar("ES", "MD")
POLICY = effective_policy(Policy(), DEFAULT_PROFILES[DebtorKind.BUSINESS])  # Mon-Fri 9-18, gap 5
AGREED = date(2026, 2, 2)  # a Monday
PLAN = [
    Instalment(1, date(2026, 2, 16), Decimal("100.00"), AGREED),  # Monday
    Instalment(2, date(2026, 3, 16), Decimal("100.00"), AGREED),
    Instalment(3, date(2026, 4, 15), Decimal("100.00"), AGREED),
]
DUE_1, MISSED_1 = steps_for(1)
DUE_2, MISSED_2 = steps_for(2)
DUE_3, MISSED_3 = steps_for(3)


def utc(year: int, month: int, day: int, hour: int = 0, minute: int = 0) -> datetime:
    return datetime(year, month, day, hour, minute, tzinfo=UTC)


def make_case(
    payments: tuple[tuple[date, str], ...] = (),
    status: CaseStatus = CaseStatus.INSTALMENTS,
    lang: str = "es",
    contact: ContactStatus = ContactStatus.ACTIVE,
) -> Case:
    debtor = Debtor(
        "D1", "Acme S.L.", DebtorKind.BUSINESS, lang, "ES", "MD", MADRID,
        (Contact("pay@acme.example", contact),),
    )  # fmt: skip
    paid = tuple(Payment("F-1", on, Decimal(amount)) for on, amount in payments)
    invoice = Invoice(
        "F-1", "D1", "EUR", Decimal("300.00"), date(2025, 12, 1), date(2026, 1, 15), payments=paid
    )
    return Case(1, debtor, (invoice,), status)


BEFORE = datetime(2026, 2, 1, tzinfo=UTC)


def sent(
    *steps: int, at: datetime = BEFORE, state: MessageState = MessageState.SENT
) -> list[HistoryEntry]:
    return [HistoryEntry(step, at, state) for step in steps]


def at_nine(day: date) -> datetime:
    return local_wall_to_utc(day, time(9, 0), zone(MADRID))


# --- split -------------------------------------------------------------------------------------


def test_split_gives_the_remainder_to_the_last_instalment() -> None:
    assert split(Decimal("100.00"), 3, date(2026, 3, 1), 30) == [
        (1, date(2026, 3, 1), Decimal("33.33")),
        (2, date(2026, 3, 31), Decimal("33.33")),
        (3, date(2026, 4, 30), Decimal("33.34")),
    ]
    assert [str(a) for _, _, a in split(Decimal("1210"), 2, date(2026, 3, 1), 7)] == [
        "605.00",
        "605.00",
    ]


@pytest.mark.parametrize(
    ("balance", "n", "every"),
    [("100.00", 0, 30), ("100.00", 2, 0), ("0.00", 2, 30), ("-5.00", 1, 30), ("1.005", 1, 30),
     ("0.02", 3, 30)],
)  # fmt: skip
def test_split_refuses_what_cannot_be_split(balance: str, n: int, every: int) -> None:
    with pytest.raises(ValueError):
        split(Decimal(balance), n, date(2026, 3, 1), every)


@settings(max_examples=300, deadline=None)
@given(
    cents=st.integers(min_value=1, max_value=10**9),
    n=st.integers(min_value=1, max_value=60),
    every=st.integers(min_value=1, max_value=400),
    first=st.dates(min_value=date(2020, 1, 1), max_value=date(2040, 1, 1)),
)
def test_split_is_exact_to_the_cent(cents: int, n: int, every: int, first: date) -> None:
    balance = Decimal(cents).scaleb(-2)
    if cents < n:
        with pytest.raises(ValueError):
            split(balance, n, first, every)
        return
    schedule = split(balance, n, first, every)
    amounts = [a for _, _, a in schedule]
    assert sum(amounts) == balance
    assert [k for k, _, _ in schedule] == list(range(1, n + 1))
    assert all(a.as_tuple().exponent == -2 and a >= Decimal("0.01") for a in amounts)
    assert len(set(amounts[:-1])) <= 1 and amounts[-1] - amounts[0] < Decimal(n).scaleb(-2)
    assert [d for _, d, _ in schedule] == [first + timedelta(days=every * k) for k in range(n)]


# --- the plan's reminders ----------------------------------------------------------------------


def plan(case: Case, history: list[HistoryEntry], now: datetime) -> object:
    return plan_instalments(case, PLAN, history, ES_MD, POLICY, now)


def test_due_soon_three_business_days_before_at_the_window_start() -> None:
    # Due Monday 16 February: three business days before is Wednesday the 11th, 09:00 Madrid.
    assert plan(make_case(), [], utc(2026, 2, 2, 10)) == SendStep(DUE_1, utc(2026, 2, 11, 8))


def test_missed_three_business_days_after_once_due_soon_went() -> None:
    action = plan(make_case(), sent(DUE_1.index, at=utc(2026, 2, 11, 8)), utc(2026, 2, 12, 10))
    assert action == SendStep(MISSED_1, utc(2026, 2, 19, 8))  # Thursday the 19th


def test_a_covered_instalment_gets_no_reminder() -> None:
    case = make_case(((date(2026, 2, 5), "100.00"),))
    assert plan(case, [], utc(2026, 2, 6, 10)) == SendStep(DUE_2, at_nine(date(2026, 3, 11)))


def test_payments_before_the_plan_do_not_count_toward_it() -> None:
    case = make_case(((date(2026, 2, 1), "100.00"),))
    assert paid_toward(case, PLAN) == 0
    assert plan(case, [], utc(2026, 2, 2, 10)) == SendStep(DUE_1, utc(2026, 2, 11, 8))


def test_coverage_is_cumulative() -> None:
    # 150 paid: the first instalment is covered, the second half covered, so it is the next.
    case = make_case(((date(2026, 2, 3), "50.00"), (date(2026, 2, 9), "100.00")))
    assert plan(case, [], utc(2026, 2, 10, 10)) == SendStep(DUE_2, at_nine(date(2026, 3, 11)))
    values = template_values(PLAN, 2, paid_toward(case, PLAN))
    assert values["number"] == 2 and values["of"] == 3
    assert values["outstanding"] == Decimal("50.00")
    assert values["remaining"] == Decimal("150.00") and values["paid"] == Decimal("150.00")
    assert [row["covered"] for row in values["schedule"]] == [True, False, False]


def test_a_missed_instalment_is_reminded_once_then_the_plan_goes_on() -> None:
    history = sent(DUE_1.index, MISSED_1.index)
    action = plan(make_case(), history, utc(2026, 2, 20, 10))
    assert action == SendStep(DUE_2, at_nine(date(2026, 3, 11)))
    # With arrears, the next reminder names what brings the plan up to date.
    assert template_values(PLAN, 2, Decimal(0))["outstanding"] == Decimal("200.00")


def test_due_soon_is_skipped_once_it_would_no_longer_be_true() -> None:
    # First seen on the due date itself: no "due soon", the "missed" reminder follows.
    assert plan(make_case(), [], utc(2026, 2, 16, 10)) == SendStep(MISSED_1, utc(2026, 2, 19, 8))


def test_the_minimum_gap_holds_and_can_push_due_soon_out() -> None:
    # A campaign email on Tuesday the 10th: with 5 days' gap, nothing before Monday the 16th,
    # the due date, so "due soon" is dropped and "missed" comes on its own date.
    history = sent(2, at=utc(2026, 2, 10, 8))
    assert plan(make_case(), history, utc(2026, 2, 10, 9)) == SendStep(
        MISSED_1, utc(2026, 2, 19, 8)
    )


def test_quiet_hours_hold() -> None:
    # Missed is due Thursday 19th; at 21:00 Madrid it waits for Friday's window.
    history = sent(DUE_1.index, at=utc(2026, 2, 11, 8))
    action = plan(make_case(), history, utc(2026, 2, 19, 20))
    assert action == SendStep(MISSED_1, utc(2026, 2, 20, 8))
    assert isinstance(action, SendStep) and in_window(action.at, MADRID, POLICY, ES_MD)


def test_a_cancelled_reminder_is_not_planned_again() -> None:
    history = sent(DUE_1.index, state=MessageState.CANCELLED)
    assert plan(make_case(), history, utc(2026, 2, 12, 10)) == SendStep(
        MISSED_1, utc(2026, 2, 19, 8)
    )


def test_every_instalment_covered_completes_the_plan() -> None:
    case = make_case(((date(2026, 3, 1), "300.00"),))
    assert plan(case, [], utc(2026, 3, 2, 10)) == Idle(COMPLETE)


def test_the_last_instalment_missed_goes_to_review() -> None:
    case = make_case(((date(2026, 3, 1), "200.00"),))
    assert plan(case, sent(DUE_3.index), utc(2026, 4, 16, 10)) == SendStep(
        MISSED_3, at_nine(ES_MD.add_business_days(date(2026, 4, 15), 3))
    )
    assert plan(case, sent(DUE_3.index, MISSED_3.index), utc(2026, 4, 30)) == Idle(MISSED_REVIEW)


@pytest.mark.parametrize(
    ("case", "reason"),
    [
        (make_case(status=CaseStatus.ACTIVE), "not on an instalment plan"),
        (make_case(contact=ContactStatus.OPTED_OUT), "no address may be mailed"),
    ],
)
def test_no_reminders_off_a_plan_or_without_an_address(case: Case, reason: str) -> None:
    assert plan(case, [], utc(2026, 2, 2, 10)) == Idle(reason)


def test_naive_now_is_refused_and_steps_map_back() -> None:
    with pytest.raises(ValueError):
        plan(make_case(), [], datetime(2026, 2, 2, 10))
    assert (seq_of(DUE_2.index), seq_of(MISSED_2.index), seq_of(5)) == (2, 2, None)
    assert (DUE_2.index, MISSED_2.index, DUE_2.template, MISSED_2.template) == (
        104, 105, "instalment_due", "instalment_missed",
    )  # fmt: skip


def test_a_case_back_from_a_plan_goes_on_with_its_campaign() -> None:
    steps = (Step(0, "friendly", 3, "friendly"), Step(1, "firm", 20, "firm"))
    history = [*sent(0, at=utc(2026, 1, 21, 8)), *sent(DUE_1.index, MISSED_1.index)]
    action = planner.plan(
        make_case(status=CaseStatus.ACTIVE), Campaign("c", "", steps, POLICY), history, ES_MD,
        utc(2026, 3, 2, 10),
    )  # fmt: skip
    assert action == SendStep(steps[1], utc(2026, 3, 2, 10))


@settings(max_examples=150, deadline=None)
@given(
    n=st.integers(min_value=1, max_value=5),
    every=st.integers(min_value=5, max_value=45),
    lead=st.integers(min_value=0, max_value=40),
    agreed=st.dates(min_value=date(2026, 1, 1), max_value=date(2027, 6, 1)),
    payments=st.lists(
        st.tuples(st.integers(min_value=-5, max_value=250), st.integers(1, 60_000)), max_size=4
    ),
    hour=st.integers(min_value=0, max_value=23),
)
def test_a_plan_run_to_its_end(
    n: int, every: int, lead: int, agreed: date, payments: list[tuple[int, int]], hour: int
) -> None:
    """Never two sends for one step, always in the window, only for uncovered instalments."""
    schedule = split(Decimal("1000.00"), n, agreed + timedelta(days=lead), every)
    instalments = [Instalment(k, due, amount, agreed) for k, due, amount in schedule]
    dated = sorted((agreed + timedelta(days=d), Decimal(c).scaleb(-2)) for d, c in payments)
    now = datetime.combine(agreed, time(hour), tzinfo=UTC)
    history: list[HistoryEntry] = []
    action: object = None
    for _ in range(4 * n + 2 * len(dated) + 10):
        today = now.astimezone(zone(MADRID)).date()
        case = make_case(tuple((d, str(a)) for d, a in dated if d <= today))
        action = plan_instalments(case, instalments, history, ES_MD, POLICY, now)
        assert not isinstance(action, LookAgain)
        if isinstance(action, Idle):
            break
        assert isinstance(action, SendStep)
        assert action.at >= now and in_window(action.at, MADRID, POLICY, ES_MD)
        if action.at > now:
            # The flow looks every tick; a payment dated before then is seen first.
            upcoming = [d for d, _ in dated if today < d]
            if upcoming and local_wall_to_utc(upcoming[0], time(0), zone(MADRID)) < action.at:
                now = local_wall_to_utc(upcoming[0], time(0), zone(MADRID))
            else:
                now = action.at
            continue
        seq = seq_of(action.step.index)
        values = template_values(instalments, seq or 0, paid_toward(case, instalments))
        assert values["outstanding"] > 0  # never a reminder for a covered instalment
        history.append(HistoryEntry(action.step.index, now, MessageState.SENT))
        now += timedelta(hours=1)
    else:
        pytest.fail(f"the plan never ended: {action}")
    steps = [e.step for e in history]
    assert len(steps) == len(set(steps)) and len(steps) <= 2 * n
    today = now.astimezone(zone(MADRID)).date()  # as the planner saw it, in Madrid
    final = make_case(tuple((d, str(a)) for d, a in dated if d <= today))
    covered = paid_toward(final, instalments) >= Decimal("1000.00")
    assert action == Idle(COMPLETE if covered else MISSED_REVIEW)
    if not covered:
        assert steps_for(n)[1].index in steps


# --- templates ---------------------------------------------------------------------------------

TEMPLATE_SET = TemplateSet(ROOT / "templates")


@pytest.fixture(scope="module")
def example() -> Settings:
    return load_settings(ROOT / "examples" / "mailer.toml")


@pytest.mark.parametrize("lang", ["es", "en"])
@pytest.mark.parametrize("paid", ["0", "150.00"])
def test_instalment_templates_render(example: Settings, lang: str, paid: str) -> None:
    case = make_case(((date(2026, 2, 9), paid),) if paid != "0" else (), lang=lang)
    values = template_values(PLAN, 2, paid_toward(case, PLAN))
    for step in steps_for(2):
        context = build_context(
            case, step, example.creditor, example.identities[0], date(2026, 3, 11),
            instalment=values,
        )  # fmt: skip
        email_ = render(TEMPLATE_SET, lang, step.template, context, opt_out_line=None)
        words = {"es": ("plazo 2 de 3", "100,00 €", "16 de marzo de 2026"),
                 "en": ("instalment 2 of 3", "€100.00", "16 March 2026")}[lang]  # fmt: skip
        assert words[0] in email_.subject.lower()
        for part in (email_.text, email_.html):
            assert words[1] in part and words[2] in part and "None" not in part
        owed = {"es": "150,00 €", "en": "€150.00"}[lang] if paid != "0" else None
        if owed:  # what is left of the plan, after the 150.00 paid
            assert owed in email_.text


def test_check_renders_the_instalment_templates_and_reports_mistakes(
    example: Settings, tmp_path: Path
) -> None:
    contexts = instalment_contexts(example, _representative(sample_cases(example)))
    assert set(contexts) == set(TEMPLATES) and all(contexts.values())
    assert check_templates(TEMPLATE_SET, {}, [], contexts) == []
    broken = tmp_path / "templates"
    shutil.copytree(ROOT / "templates", broken)
    (broken / "es" / "instalment_due.subject.txt").write_text("Plazo {{ instalment.numero }}\n")
    (broken / "en" / "instalment_missed.html").unlink()
    (broken / "en" / "friendly.txt").write_text("{{ instalment.number }}\n")
    problems = check_templates(TemplateSet(broken), {}, [build_context_for(example)], contexts)
    assert any(
        p.startswith(f"{broken}/es/instalment_due.subject.txt:1:") and "numero" in p
        for p in problems
    ), problems
    missing = f"{broken}/en/instalment_missed.html:1: missing template"
    assert f"{missing} (mailer needs 'instalment_missed')" in problems
    # Other templates have no ``instalment``: using it there is caught too.
    assert any(p.startswith(f"{broken}/en/friendly.txt:1:") for p in problems), problems
    with pytest.raises(ConfigError):
        Rules.load(replace(example, templates_dir=broken))


def build_context_for(example: Settings) -> dict[str, Any]:
    return build_context(
        make_case(), steps_for(1)[0], example.creditor, example.identities[0], date(2026, 2, 11)
    )


# --- staff agrees a plan; the flow without servers ---------------------------------------------

HEADER = (
    "invoice_number,debtor_id,debtor_name,debtor_emails,debtor_lang,debtor_kind,country,region,"
    "currency,amount,issue_date,due_date\n"
)
LEDGER = (
    "F-1,D1,Acme S.L.,pay@acme.example;boss@acme.example,es,business,ES,MD,EUR,1210.00,"
    "2025-12-01,2025-12-31\n"
    "F-2,D2,Beta S.L.,admin@beta.example,en,business,ES,MD,EUR,500.00,2025-12-01,2025-12-31\n"
)
START = datetime(2026, 1, 5, 6, 0, tzinfo=UTC)  # Monday


def import_ledger(app: App, tmp_path: Path) -> None:
    path = tmp_path / "invoices.csv"
    path.write_text(HEADER + LEDGER, encoding="utf-8")
    import_invoices(app.store, parse_invoices(path), START, "invoices.csv", app.settings.profiles)


def pay(app: App, tmp_path: Path, day: date, amount: str, now: datetime) -> None:
    path = tmp_path / f"payments-{day}.csv"
    path.write_text(f"invoice_number,date,amount\nF-1,{day},{amount}\n", encoding="utf-8")
    import_payments(app.store, parse_payments(path), now, path.name, app.settings.profiles)


def case_id(app: App, debtor: str) -> int:
    row = app.store.conn.execute("SELECT id FROM cases WHERE debtor_id = ?", (debtor,)).fetchone()
    return int(row[0])


def case_status(app: App, debtor: str) -> str:
    row = app.store.conn.execute(
        "SELECT status FROM cases WHERE debtor_id = ?", (debtor,)
    ).fetchone()
    return str(row[0])


@pytest.fixture
def memory_app(example: Settings, tmp_path: Path) -> Iterator[App]:
    app = App(example, Store.open(None), Rules.load(example))
    import_ledger(app, tmp_path)
    yield app
    app.store.close()


def test_agreeing_a_plan(memory_app: App) -> None:
    app, store = memory_app, memory_app.store
    cid = case_id(app, "D1")
    now = utc(2026, 1, 8, 10)  # the first campaign reminder is due for both debtors
    # Something was already queued for the case, and it waits in review.
    Outbound(app, {}).plan_due(now, report := TickReport())
    assert report.planned == 2
    with store.transaction():
        open_review(store, cid, None, "reply to read", None, "", now)
    schedule = agree_instalments(store, cid, 3, 30, date(2026, 1, 20), now, "ana")
    assert schedule == [
        (1, date(2026, 1, 20), Decimal("403.33")),
        (2, date(2026, 2, 19), Decimal("403.33")),
        (3, date(2026, 3, 21), Decimal("403.34")),
    ]
    assert case_status(app, "D1") == "instalments"
    assert [m.state for m in outbox.select(store, "case_id = ?", (cid,))] == [
        MessageState.CANCELLED
    ]
    assert open_reviews(store, cid) == []
    (event,) = [e for e in store.events(cid) if e["kind"] == "instalments_agreed"]
    assert "403.34" in str(event)
    # Agreed again: the old plan is cancelled, the new one continues the numbering.
    again = agree_instalments(store, cid, 2, 14, None, now, "ana")
    assert again == [
        (1, date(2026, 1, 22), Decimal("605.00")),
        (2, date(2026, 2, 5), Decimal("605.00")),
    ]
    rows = store.conn.execute(
        "SELECT seq, cancelled_at IS NULL FROM instalments WHERE case_id = ? ORDER BY seq", (cid,)
    ).fetchall()
    assert [tuple(r) for r in rows] == [(1, 0), (2, 0), (3, 0), (4, 1), (5, 1)]


@pytest.mark.parametrize(
    ("count", "every", "first", "why"),
    [(0, 30, None, "at least one"), (3, 0, None, "one day apart"),
     (3, 30, date(2026, 1, 1), "in the past"), (200_000, 30, None, "cannot split")],
)  # fmt: skip
def test_agreeing_refuses(
    memory_app: App, count: int, every: int, first: date | None, why: str
) -> None:
    cid = case_id(memory_app, "D1")
    with pytest.raises(MailerError, match=why):
        agree_instalments(memory_app.store, cid, count, every, first, START, "ana")


def test_agreeing_refuses_a_closed_case(memory_app: App, tmp_path: Path) -> None:
    pay(memory_app, tmp_path, date(2026, 1, 5), "1210.00", START)
    with pytest.raises(MailerError, match="no open case"):
        agree_instalments(memory_app.store, case_id(memory_app, "D1"), 2, 30, None, START, "ana")


def test_the_flow_is_idempotent_and_one_bad_case_stops_nothing(
    memory_app: App, monkeypatch: pytest.MonkeyPatch
) -> None:
    app, store = memory_app, memory_app.store
    d1, d2 = case_id(app, "D1"), case_id(app, "D2")
    agree_instalments(store, d1, 2, 30, date(2026, 1, 20), START, "ana")
    agree_instalments(store, d2, 2, 30, date(2026, 1, 20), START, "ana")
    due_soon = utc(2026, 1, 15, 9)  # three business days before the 20th, in the window
    assert Instalments(app).tick(due_soon) == 2
    assert Instalments(app).tick(due_soon) == 0  # the same step is never stored twice
    assert Instalments(app).tick(due_soon + timedelta(hours=1)) == 0
    names = [m.step_name for m in outbox.select(store, "state = 'queued'")]
    assert names == ["instalment-1-due", "instalment-1-due"]
    # The campaign leaves both cases alone.
    Outbound(app, {}).plan_due(due_soon, report := TickReport())
    assert report.planned == 0

    real = flow.plan_instalments

    def broken(case: Case, *args: Any) -> object:
        if case.id == d1:
            raise RuntimeError("boom")
        return real(case, *args)

    monkeypatch.setattr(flow, "plan_instalments", broken)
    missed = utc(2026, 1, 23, 9)  # three business days after the 20th
    assert Instalments(app).tick(missed) == 1  # D2's missed reminder: D1's failure stops nothing
    assert Instalments(app).tick(missed + timedelta(minutes=5)) == 0
    errors = [e for e in store.events(d1) if e["kind"] == "case_error"]
    assert len(errors) == 1  # recorded once an hour, not once a tick


# --- end to end, through real SMTP and IMAP servers on loopback --------------------------------


@pytest.fixture
def office_app(tmp_path: Path, servers: LocalMailServers) -> Iterator[App]:
    app = App.open(load_settings(write_config(tmp_path, servers, grace_seconds=0)))
    import_ledger(app, tmp_path)
    yield app
    app.store.close()


class Office:
    """The daemon's own tick (outbound, then instalments) on a simulated clock."""

    def __init__(self, app: App) -> None:
        self.app = app
        self.now = START
        outbound = Outbound(app, build_transports(app.settings), open_mailbox)
        self.daemon = Daemon(app, outbound, interval=0, clock=lambda: self.now)

    async def until(self, moment: datetime, step: timedelta = timedelta(hours=3)) -> None:
        while self.now < moment:
            self.now += step
            await self.daemon.tick()

    async def close(self) -> None:
        for transport in self.daemon.outbound.transports.values():
            await transport.close()


def sent_messages(app: App, address: str) -> list[outbox.OutboxMessage]:
    return [m for m in outbox.select(app.store, "state = 'sent'") if address in m.recipients]


def test_a_plan_end_to_end(office_app: App, servers: LocalMailServers, tmp_path: Path) -> None:
    app = office_app
    cid = case_id(app, "D1")
    schedule = agree_instalments(app.store, cid, 3, 30, date(2026, 1, 20), START, "ana")
    first, second, third = schedule

    async def scenario() -> None:
        office = Office(app)
        await office.until(utc(2026, 1, 12, 10))
        pay(app, tmp_path, date(2026, 1, 12), str(first[2]), office.now)  # before "due soon"
        await office.until(utc(2026, 2, 26))
        names = [m.step_name for m in sent_messages(app, "pay@acme.example")]
        assert names == ["instalment-2-due", "instalment-2-missed"]  # nothing for the paid one
        await office.until(utc(2026, 4, 1))
        await office.close()

    asyncio.run(scenario())
    mine = sent_messages(app, "pay@acme.example")
    assert [m.step_name for m in mine] == [
        "instalment-2-due", "instalment-2-missed", "instalment-3-due", "instalment-3-missed",
    ]  # fmt: skip
    days = [m.sent_at.astimezone(zone(MADRID)).date() for m in mine if m.sent_at]
    assert days == [
        ES_MD.add_business_days(second[1], -3),
        ES_MD.add_business_days(second[1], 3),
        ES_MD.add_business_days(third[1], -3),
        ES_MD.add_business_days(third[1], 3),
    ]
    # The campaign went on for the other debtor, and never for the one on a plan.
    assert sent_messages(app, "admin@beta.example")
    assert not [m for m in mine if seq_of(m.step) is None]
    # What the server accepted: threaded, in Spanish, about the right instalment.
    accepted = [s for s in servers.sink_messages() if "pay@acme.example" in s.rcpt_tos]
    assert len(accepted) == 4
    parsed = [email.message_from_bytes(s.data, policy=email.policy.default) for s in accepted]
    assert isinstance(parsed[1], EmailMessage)
    assert "plazo 2 de 3" in str(parsed[1]["Subject"]).lower()
    assert parsed[1]["In-Reply-To"] == mine[0].message_id
    body = parsed[1].get_body(("plain",))
    assert body is not None and "403,33 €" in body.get_content()
    # The last instalment missed: a person decides.
    assert case_status(app, "D1") == "review"
    (review,) = open_reviews(app.store, cid)
    assert "last instalment" in review.reason
    assert any(e["kind"] == "case_review" for e in app.store.events(cid))
