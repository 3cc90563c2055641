"""The Mandrill channel (Mailchimp Transactional): the step's stored message sent as it is.

``MandrillChannel`` is the outbox's transport for ``channel = "mandrill"``: messages/send-raw
with the exact stored bytes. The recipient's status decides: taken → a receipt with Mandrill's
``_id``; rejected → kept for the flow and raised; the sender unverified → the identity waits.
``reconcile`` settles a message a crash or a lost answer left in "sending" by looking it up
(messages/search, messages/list-scheduled), never by sending again. The read-back and what
refusals lead to are in mandrill_readback.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from datetime import datetime, timedelta
from typing import Any, NoReturn

from mailer.app import App
from mailer.compose import from_address
from mailer.config import MandrillSettings
from mailer.domain.models import MessageState
from mailer.errors import (
    AmbiguousDeliveryError,
    IdentityUnavailableError,
    MailerError,
    PermanentError,
    TemporaryError,
)
from mailer.flows.mailchimp import _outbox_row
from mailer.store import mailchimp as sends
from mailer.store import outbox
from mailer.store.db import canonical, iso
from mailer.transports.base import Receipt
from mailer.transports.mandrill import (
    TAKEN,
    Answer,
    MandrillApi,
    MandrillApiError,
    MandrillRejectedError,
    from_text,
)

CHANNEL = "mandrill"
# reject_reasons that are the identity's own setup (domain not verified, no DKIM/SPF), not the
# address's: nothing went, the identity waits until a person fixes it.
SENDER = frozenset({"invalid-sender", "unsigned"})
HELD = frozenset({"launched", "sent", "settled"})  # row states once Mandrill has taken the message
SEARCH_MARGIN = timedelta(minutes=5)  # the lookup window opens this long before the attempt


class MandrillChannel:
    """Transport for ``channel = "mandrill"``; looks the outbox row up by the Message-ID."""

    def __init__(self, app: App, api: MandrillApi, clock: Callable[[], datetime]) -> None:
        assert app.settings.mandrill is not None
        self.app = app
        self.api = api
        self.clock = clock  # the daemon's: the only reading of the time, passed in
        self.settings: MandrillSettings = app.settings.mandrill
        self._can_schedule = True  # until Mandrill answers PaymentRequired to a send_at

    async def close(self) -> None:
        return None  # the SDK opens one HTTP request per call: nothing is left open

    async def send(
        self, sender: str, recipients: Sequence[str], data: bytes, *, copy_to: str | None = None
    ) -> Receipt:
        """One send_raw of these exact bytes; ``copy_to`` is unused (Mandrill's own answer and
        messages/info, not a receipt copy, say whether it went)."""
        store = self.app.store
        now = self.clock()
        message = _outbox_row(self.app, data)
        if len(recipients) != 1:
            raise PermanentError("a Mandrill message goes to exactly one address")
        address = recipients[0]
        row = sends.start(
            store, message.id, CHANNEL, address, f"mandrill {message.message_id}", now
        )
        if row.state in HELD and row.remote_id:  # taken before; only the outbox missed it
            return _receipt(row.remote_id, address, "sent", row.scheduled_for)
        # The message's own time: in the daemon's flow it has come (the outbox hands a message
        # over when due, inside the debtor's window); one handed over early is scheduled.
        when = (
            message.next_attempt_at
            if message.next_attempt_at and message.next_attempt_at > now
            else None
        )
        if when is not None and not self._can_schedule:
            raise TemporaryError(f"not due until {iso(when)}, and Mandrill cannot schedule here")
        identity = self.app.settings.identity(message.identity)
        name = (
            self.settings.from_name
            or from_address(self.app.settings.creditor, identity).display_name
        )
        sends.update(store, message.id, now, state="launching", launched_at=now)
        try:
            answer = await call(self.app, message, now, self.api.send_raw, data, identity.address,
                                name, [address], when)  # fmt: skip
        except MandrillApiError as exc:
            if exc.name != "PaymentRequired" or when is None:
                raise
            # Scheduling is paid for (the account needs a positive balance): never send early,
            # wait for the time instead, and stop asking.
            self._can_schedule = False
            store.append_event(now, "mandrill_schedule_unavailable",
                               {"message_id": message.message_id, "error": str(exc),
                                "then": f"sent when due, {iso(when)}"},
                               case_id=message.case_id, message_id=message.id)  # fmt: skip
            raise TemporaryError(f"{exc}: the message waits until {iso(when)}") from None
        results = answer.body if isinstance(answer.body, list) else []
        mine = [r for r in results if str(r.get("email", "")).lower() == address.lower()]
        if len(mine) != 1:  # taken or not, it does not say: looked up later, never resent blindly
            raise AmbiguousDeliveryError(f"Mandrill's answer names no one status for {address}")
        status, remote_id = str(mine[0].get("status", "")), str(mine[0].get("_id", ""))
        if status in TAKEN:
            scheduled = when if status == "scheduled" else None
            first_look = (scheduled or now) + every(self.settings)
            sends.update(store, message.id, now, state="launched", remote_id=remote_id,
                         scheduled_for=scheduled, next_poll_at=first_look)  # fmt: skip
            return _receipt(remote_id, address, status, scheduled)
        reason = "invalid" if status == "invalid" else str(mine[0].get("reject_reason") or status)
        if reason in SENDER:
            sends.update(store, message.id, now, state="new")  # nothing went: a later try may
            raise IdentityUnavailableError(
                f"Mailchimp Transactional rejects mail from {identity.address} ({reason}): verify"
                " the sending domain and its DKIM and SPF records in Mandrill"
            )
        _refuse(self.app, message, address, remote_id, reason, now)


def _refuse(app: App, message: outbox.OutboxMessage, address: str, remote_id: str | None,
            reason: str, now: datetime) -> NoReturn:  # fmt: skip
    """Mandrill will not send this to ``address``: kept for the flow, raised for the outbox."""
    sends.update(app.store, message.id, now, state="refused", refusal=reason, remote_id=remote_id)
    raise MandrillRejectedError(address, reason, f"rejected ({reason})")


async def call(app: App, message: outbox.OutboxMessage, now: datetime,
               fn: Callable[..., Answer], *args: Any) -> Answer:  # fmt: skip
    """One API call in a worker thread; its answer, or its error, recorded as an event."""
    name = getattr(fn, "__name__", "call")
    about = {"message_id": message.message_id, "call": name}
    try:
        answer = await asyncio.to_thread(fn, *args)
    except MailerError as exc:
        body = exc.body if isinstance(exc, MandrillApiError) else None
        app.store.append_event(now, "mandrill_api", {**about, "error": str(exc), "body": body},
                               case_id=message.case_id, message_id=message.id)  # fmt: skip
        raise
    app.store.append_event(now, "mandrill_api", {**about, "status": answer.status,
                                                 "body": answer.body},
                           case_id=message.case_id, message_id=message.id)  # fmt: skip
    return answer


def _receipt(remote_id: str, address: str, status: str, when: datetime | None) -> Receipt:
    text = f"Mandrill message {remote_id} " + (f"scheduled for {iso(when)}" if when else status)
    return Receipt(code=200, text=text, accepted=(address,), queue_id=remote_id, server="mandrill",
                   extra={"channel": CHANNEL, "status": status,
                          "scheduled_for": iso(when) if when else None})  # fmt: skip


def every(settings: MandrillSettings) -> timedelta:
    """How often a message's state is read back."""
    return timedelta(minutes=settings.poll_minutes)


# --- after a crash or a lost answer: ask Mandrill, never send again ------------------------------


async def reconcile(app: App, api: MandrillApi, message: outbox.OutboxMessage,
                    now: datetime) -> None:  # fmt: skip
    """A message left in "sending": taken by Mandrill → sent; rejected → failed; not found →
    queued again. Mailer cannot add metadata (the bytes are sent as stored) and Mandrill's search
    results carry no headers, so the message is found by its sender, recipient and subject from
    the attempt on: one step of one case, sent one at a time."""
    store = app.store
    row = sends.get(store, message.id)
    if row is None or row.state == "new":
        return _requeue(app, message, now, "Mandrill was never asked to send it")
    if row.state == "refused":
        outbox.move(store, message, MessageState.FAILED, now, "send_failed",
                    {"error": f"Mailchimp Transactional will not send to {row.address}:"
                              f" rejected ({row.refusal})", "reconciled": True},
                    last_error=row.refusal)  # fmt: skip
        return None
    if row.state in HELD and row.remote_id:  # the answer was recorded, the outbox's move not
        return _sent(app, message, row, row.remote_id, row.scheduled_for, now)
    identity = app.settings.identity(message.identity)
    since = (row.launched_at or row.created_at) - SEARCH_MARGIN
    found = await call(app, message, now, api.find, identity.address, row.address,
                       message.subject, since, now)  # fmt: skip
    if not found.body:
        found = await call(app, message, now, api.find_scheduled, row.address, message.subject,
                           since)  # fmt: skip
    # A rejected try and a taken one may both be there (a sender fixed in between).
    hits = sorted(found.body, key=lambda h: h.get("state") == "rejected")
    if not hits:
        return _requeue(app, message, now, "Mandrill has no such message")
    remote_id = str(hits[0]["_id"])
    if hits[0].get("state") == "rejected":
        sends.update(store, message.id, now, state="refused", refusal="rejected",
                     remote_id=remote_id)  # fmt: skip
        return await reconcile(app, api, message, now)
    return _sent(app, message, row, remote_id, from_text(hits[0].get("send_at")), now)


def _sent(app: App, message: outbox.OutboxMessage, row: sends.SendRow, remote_id: str,
          scheduled: datetime | None, now: datetime) -> None:  # fmt: skip
    """Mandrill has it: the outbox says so (sent when it was handed over), the read-back starts."""
    receipt = _receipt(remote_id, row.address, "scheduled" if scheduled else "sent", scheduled)
    outbox.move(app.store, message, MessageState.SENT, now, "message_sent",
                {"reconciled": True, "mandrill_id": remote_id, "receipt": receipt.to_json()},
                sent_at=message.updated_at, receipt=canonical(receipt.to_json()))  # fmt: skip
    if row.state not in HELD:
        sends.update(app.store, message.id, now, state="launched", remote_id=remote_id,
                     scheduled_for=scheduled, next_poll_at=scheduled or now)  # fmt: skip


def _requeue(app: App, message: outbox.OutboxMessage, now: datetime, why: str) -> None:
    outbox.move(app.store, message, MessageState.QUEUED, now, "send_retry_after_reconcile",
                {"channel": CHANNEL, "found": why}, next_attempt_at=now)  # fmt: skip
