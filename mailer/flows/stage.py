"""Staging one step of a case: render, compose and store its exact bytes in the outbox."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from mailer.app import App
from mailer.compose import Attachment, compose, new_message_id
from mailer.domain.models import Case, Identity, MessageState, Step
from mailer.errors import NeedsReviewError, PermanentError
from mailer.render_context import PreviousMessage
from mailer.store import outbox


def stage(
    app: App,
    case: Case,
    step: Step,
    identity: Identity,
    now: datetime,
    *,
    resend: int = 0,
    instalment: Mapping[str, Any] | None = None,
) -> tuple[int, str] | None:
    """Store ``step``'s message for ``case`` from ``identity``: (row id, Message-ID), or None
    when that step (with that ``resend`` number) is already stored.

    One consolidated email to the debtor's first address that may be mailed. Raises
    NeedsReviewError when no address is left. ``resend`` > 0 stores the step again (after a
    bounce or an identity switch); the templates see every earlier message with its sender, so
    a message from a new identity can say where the earlier ones came from.
    """
    settings = app.settings
    addresses = case.debtor.active_addresses
    if not addresses:
        raise NeedsReviewError("no deliverable address left")
    recipient = addresses[0]
    senders = {i.name: i.address for i in settings.identities}
    previous = [
        PreviousMessage(m.sent_at.date(), m.subject, senders.get(m.identity, ""))
        for m in outbox.select(app.store, "case_id = ? AND state = 'sent'", (case.id,))
        if m.sent_at
    ]
    rendered = app.render(case, step, identity, now, previous, instalment)
    in_reply_to, references = outbox.thread(app.store, case.id)
    message_id = new_message_id(identity, case.id, step.index)
    raw = compose(
        settings.creditor,
        identity,
        case,
        rendered,
        recipients=[recipient],
        message_id=message_id,
        date=now,
        in_reply_to=in_reply_to,
        references=references,
        attachments=attachments(case),
        opt_out=settings.profiles[case.debtor.kind].opt_out_line,
    )
    state = MessageState.AWAITING_APPROVAL if step.approval else MessageState.QUEUED
    row = outbox.enqueue(
        app.store,
        case_id=case.id,
        step=step.index,
        step_name=step.name,
        channel=step.channel.value,
        identity=identity.name,
        message_id=message_id,
        recipients=[recipient],
        subject=rendered.subject,
        raw=raw,
        in_reply_to=in_reply_to,
        state=state,
        now=now,
        deadline=now + timedelta(hours=settings.retry_deadline_hours),
        resend=resend,
    )
    return None if row is None else (row, message_id)


def attachments(case: Case) -> list[Attachment]:
    """The open invoices' PDFs the ledger names."""
    files = []
    for invoice in case.open_invoices:
        if invoice.pdf_path:
            path = Path(invoice.pdf_path)
            try:
                files.append(Attachment(path.name, path.read_bytes()))
            except OSError as exc:
                raise PermanentError(
                    f"invoice {invoice.number}: cannot read {path}: {exc.strerror}"
                ) from exc
    return files
