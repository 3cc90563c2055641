"""The Mailchimp channel: a step's own stored message goes out as a one-member campaign.

``MailchimpChannel`` is the outbox's transport for ``channel = "mailchimp"``: upsert the member
(never re-subscribing anyone), tag it, address a campaign to it through a static segment, give it
the stored message's own HTML and text, and schedule it on the quarter hour (or send it when the
plan cannot schedule). Every API answer is an event. ``reconcile`` settles a message a crash left
in "sending" by asking Mailchimp, never by sending again. The read-back is in mailchimp_readback.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Sequence
from datetime import datetime, timedelta
from email.parser import BytesHeaderParser
from typing import Any, NoReturn

from mailer.app import App
from mailer.compose import from_address
from mailer.config import MailchimpSettings
from mailer.domain.calendar import next_slot
from mailer.domain.models import Case, MessageState
from mailer.errors import MailerError, PermanentError
from mailer.store import mailchimp as sends
from mailer.store import outbox
from mailer.store.db import Store, canonical, iso
from mailer.store.ledger import load_cases
from mailer.transports.base import Receipt
from mailer.transports.mailchimp import (
    LAUNCHED,
    MERGE_FIELDS,
    REFUSING_TITLES,
    SENDABLE,
    Answer,
    MailchimpApi,
    MailchimpApiError,
    MemberRefusedError,
    evidence,
    merge_values,
    mime_parts,
    quarter_hour_after,
)

log = logging.getLogger(__name__)
CHANNEL = "mailchimp"


class MailchimpChannel:
    """Transport for ``channel = "mailchimp"``; looks the outbox row up by the Message-ID."""

    def __init__(self, app: App, api: MailchimpApi, clock: Callable[[], datetime]) -> None:
        assert app.settings.mailchimp is not None
        self.app = app
        self.api = api
        self.clock = clock  # the daemon's: the only reading of the time, passed in
        self.settings: MailchimpSettings = app.settings.mailchimp
        self._slots = asyncio.Semaphore(self.settings.concurrency)
        self._fields_ready = False
        self._fields_lock = asyncio.Lock()
        self._can_schedule = self.settings.schedule

    async def close(self) -> None:
        return None  # the SDK opens one HTTP request per call: nothing is left open

    async def send(
        self, sender: str, recipients: Sequence[str], data: bytes, *, copy_to: str | None = None
    ) -> Receipt:
        """The campaign for this message, created once, launched once; ``copy_to`` is unused
        (Mailchimp's own report, not a receipt copy, says whether it went)."""
        store = self.app.store
        now = self.clock()
        message = _outbox_row(self.app, data)
        if len(recipients) != 1:
            raise PermanentError("a Mailchimp campaign goes to exactly one address")
        address = recipients[0]
        row = sends.start(store, message.id, CHANNEL, address, f"mailer {message.message_id}", now)
        async with self._slots:
            if row.remote_id:
                # An earlier attempt made the campaign: if it was launched, it is not launched
                # again, whatever happened to the answer.
                got = await call(self.app, message, now, self.api.get_campaign, row.remote_id)
                if got.body.get("status") in LAUNCHED:
                    sends.update(store, message.id, now, state="launched", next_poll_at=now)
                    return _receipt(row.remote_id, address, row.scheduled_for, self.api.list_id)
            parts = mime_parts(data)
            if parts.attachments:
                names = ", ".join(parts.attachments)
                _refuse(store, message, address, now, "attachments",
                        f"a campaign cannot carry the attachments ({names})")  # fmt: skip
            case = _case(self.app, message.case_id)
            await self._ensure_merge_fields(message, now)
            merge = merge_values(case, self.app.settings.creditor)
            try:
                member = await call(self.app, message, now, self.api.upsert_member, address, merge,
                                    self.settings.new_member_status)  # fmt: skip
            except MailchimpApiError as exc:
                if exc.status == 400 and exc.title in REFUSING_TITLES:
                    _refuse(store, message, address, now, "compliance",
                            f"{exc.title}: {exc.problem.get('detail', '')}")  # fmt: skip
                raise
            status = str(member.body.get("status", ""))
            if status != SENDABLE:
                _refuse(store, message, address, now, status or "unknown",
                        f"the audience member is {status or 'of unknown status'}")  # fmt: skip
            await call(self.app, message, now, self.api.tag_member, address, self.settings.tags)
            if row.segment_id is None:
                segment = await call(
                    self.app, message, now, self.api.create_segment, row.title, address
                )
                row = sends.update(store, message.id, now, segment_id=int(segment.body["id"]))
            assert row.segment_id is not None
            if row.remote_id is None:
                row = await self._create(message, row, parts.subject, parts.html is not None, now)
            assert row.remote_id is not None
            await call(self.app, message, now, self.api.set_content, row.remote_id, parts.html,
                       parts.text)  # fmt: skip
            when = self._schedule_time(case, now)
            sends.update(store, message.id, now, state="launching", member_status=status)
            when = await self._launch(message, row.remote_id, when, now)
            sends.update(store, message.id, now, state="launched", launched_at=now,
                         scheduled_for=when, next_poll_at=when or now)  # fmt: skip
        return _receipt(row.remote_id, address, when, self.api.list_id)

    async def _ensure_merge_fields(self, message: outbox.OutboxMessage, now: datetime) -> None:
        """The audience gets mailer's merge fields once (an audience may lack them)."""
        async with self._fields_lock:  # concurrent first sends would add each field twice
            if self._fields_ready:
                return
            answer = await call(self.app, message, now, self.api.merge_fields)
            have = {f.get("tag") for f in answer.body.get("merge_fields", [])}
            for tag in MERGE_FIELDS:
                if tag not in have:
                    await call(self.app, message, now, self.api.add_merge_field, tag)
            self._fields_ready = True

    async def _create(
        self, message: outbox.OutboxMessage, row: sends.SendRow, subject: str, html: bool,
        now: datetime,
    ) -> sends.SendRow:  # fmt: skip
        """Create the campaign; "creating" is committed first, so after a crash (or a lost
        answer) the campaign is looked up by its unique title instead of made twice."""
        store = self.app.store
        found = None
        if row.state == "creating":
            since = row.created_at - timedelta(days=1)
            found = await call(self.app, message, now, self.api.find_campaign, row.title, since)
        if found is None or not found.body:
            sends.update(store, message.id, now, state="creating")
            identity = self.app.settings.identity(message.identity)
            name = (
                self.settings.from_name
                or from_address(self.app.settings.creditor, identity).display_name
            )
            reply_to = self.settings.reply_to or identity.address
            assert row.segment_id is not None
            found = await call(self.app, message, now, self.api.create_campaign, row.title, subject,
                               name, reply_to, row.segment_id, html)  # fmt: skip
        return sends.update(
            store, message.id, now, remote_id=str(found.body["id"]), state="created"
        )

    def _schedule_time(self, case: Case, now: datetime) -> datetime | None:
        """The next quarter hour, if the debtor's window is still open then; else None: send."""
        if not self._can_schedule:
            return None
        when = quarter_hour_after(now)
        campaign = self.app.campaign_for(case)
        calendar = self.app.calendar(case.debtor.country, case.debtor.region)
        return (
            when
            if next_slot(when, case.debtor.timezone, campaign.policy, calendar) == when
            else None
        )

    async def _launch(
        self, message: outbox.OutboxMessage, campaign_id: str, when: datetime | None, now: datetime
    ) -> datetime | None:
        """Schedule, or send now; returns the scheduled time (None: sent at once).

        A plan without scheduling (the Free plan) answers the schedule action with 403: then
        the campaign is sent at once, and this process stops trying to schedule.
        """
        if when is not None:
            try:
                await call(self.app, message, now, self.api.schedule, campaign_id, when)
                return when
            except MailchimpApiError as exc:
                if exc.status != 403:
                    raise
                self._can_schedule = False
                self.app.store.append_event(
                    now, "mailchimp_schedule_unavailable",
                    {"message_id": message.message_id, "campaign_id": campaign_id,
                     "error": str(exc), "then": "campaigns.send"},
                    case_id=message.case_id, message_id=message.id,
                )  # fmt: skip
                log.warning("Mailchimp refuses to schedule (%s): sending at once instead", exc)
        await call(self.app, message, now, self.api.send, campaign_id)
        return None


async def call(app: App, message: outbox.OutboxMessage | None, now: datetime,
               fn: Callable[..., Answer], *args: Any) -> Answer:  # fmt: skip
    """One API call in a worker thread; its answer, or its error, recorded as an event."""
    name = getattr(fn, "__name__", "call")
    case_id, row = (message.case_id, message.id) if message else (None, None)
    about = {"message_id": message.message_id} if message else {}
    try:
        answer = await asyncio.to_thread(fn, *args)
    except MailerError as exc:
        problem = exc.problem if isinstance(exc, MailchimpApiError) else None
        app.store.append_event(
            now, "mailchimp_api", {**about, "call": name, "error": str(exc), "problem": problem},
            case_id=case_id, message_id=row,
        )  # fmt: skip
        raise
    app.store.append_event(
        now, "mailchimp_api", {**about, "call": name, **evidence(answer)},
        case_id=case_id, message_id=row,
    )  # fmt: skip
    return answer


def _outbox_row(app: App, data: bytes) -> outbox.OutboxMessage:
    """The outbox row of these exact bytes, by their Message-ID."""
    message_id = BytesHeaderParser().parsebytes(data).get("Message-ID", "").strip()
    found = outbox.select(app.store, "message_id = ?", (message_id,), 1)
    if not found:
        raise PermanentError(f"no outbox message with Message-ID {message_id!r}")
    return found[0]


def _case(app: App, case_id: int) -> Case:
    found = next(iter(load_cases(app.store, [case_id], include_closed=True)), None)
    if found is None:
        raise PermanentError(f"no case {case_id}")
    return found


def _refuse(store: Store, message: outbox.OutboxMessage, address: str, now: datetime, why: str,
            detail: str) -> NoReturn:  # fmt: skip
    """Mailchimp will not send this to ``address``: kept for the flow, raised for the outbox."""
    sends.update(store, message.id, now, state="refused", refusal=why)
    raise MemberRefusedError(address, why, detail)


def _receipt(campaign_id: str, address: str, when: datetime | None, list_id: str) -> Receipt:
    text = f"Mailchimp campaign {campaign_id} " + (f"scheduled for {iso(when)}" if when else "sent")
    return Receipt(
        code=204,  # the HTTP answer to the schedule/send action
        text=text,
        accepted=(address,),
        queue_id=campaign_id,
        server="mailchimp",
        extra={"channel": CHANNEL, "campaign_id": campaign_id, "list_id": list_id,
               "scheduled_for": iso(when) if when else None},
    )  # fmt: skip


# --- after a crash: ask Mailchimp, never send again ----------------------------------------------


async def reconcile(
    app: App, api: MailchimpApi, message: outbox.OutboxMessage, now: datetime
) -> None:
    """A message left in "sending": launched in Mailchimp → sent; not → queued again (the
    next attempt reuses the campaign); refused → failed."""
    store = app.store
    row = sends.get(store, message.id)
    if row is not None and row.state == "refused":
        outbox.move(store, message, MessageState.FAILED, now, "send_failed",
                    {"error": f"Mailchimp will not send to {row.address}: {row.refusal}",
                     "reconciled": True},
                    last_error=row.refusal)  # fmt: skip
        return
    campaign_id = row.remote_id if row else None
    if row is not None and campaign_id is None and row.state == "creating":
        found = await call(app, message, now, api.find_campaign, row.title,
                           row.created_at - timedelta(days=1))  # fmt: skip
        if found.body:
            campaign_id = str(found.body["id"])
            sends.update(store, message.id, now, remote_id=campaign_id, state="created")
    if campaign_id is None:
        _requeue(app, message, now, "no campaign was made")
        return
    try:
        got = await call(app, message, now, api.get_campaign, campaign_id)
    except MailchimpApiError as exc:
        if exc.status != 404:
            raise
        outbox.move(store, message, MessageState.FAILED, now, "send_unknown",
                    {"error": f"campaign {campaign_id} is gone from Mailchimp: check there"
                              " whether it was sent, and resend by hand if not"},
                    last_error=str(exc))  # fmt: skip
        return
    status = got.body.get("status")
    if status in LAUNCHED:
        when = parse_time(got.body.get("send_time")) if status == "schedule" else None
        receipt = _receipt(campaign_id, row.address if row else "", None, api.list_id)
        outbox.move(store, message, MessageState.SENT, now, "message_sent",
                    {"reconciled": True, "campaign_id": campaign_id, "status": status,
                     "receipt": receipt.to_json()},
                    sent_at=message.updated_at, receipt=canonical(receipt.to_json()))  # fmt: skip
        sends.update(store, message.id, now, state="launched", launched_at=message.updated_at,
                     next_poll_at=now, scheduled_for=when)  # fmt: skip
    else:
        _requeue(app, message, now, f"campaign {campaign_id} is {status}, not launched")


def _requeue(app: App, message: outbox.OutboxMessage, now: datetime, why: str) -> None:
    outbox.move(app.store, message, MessageState.QUEUED, now,
                "send_retry_after_reconcile", {"channel": CHANNEL, "found": why},
                next_attempt_at=now)  # fmt: skip


def parse_time(text: object) -> datetime | None:
    """An ISO 8601 time from Mailchimp (they come with an offset), None if absent or unreadable."""
    try:
        return datetime.fromisoformat(str(text)) if text else None
    except ValueError:
        return None
