"""Mailchimp's Marketing API (mailchimp-marketing) at the edge: each call, its errors mapped once."""

from __future__ import annotations

import email
import email.policy
import hashlib
import json
import logging
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from email.message import EmailMessage
from typing import Any

import requests
from mailchimp_marketing import Client
from mailchimp_marketing.api_client import ApiClientError

from mailer.config import MailchimpSettings
from mailer.domain.models import Case, Creditor
from mailer.errors import AmbiguousDeliveryError, MailerError, PermanentError, TemporaryError

log = logging.getLogger(__name__)

# Campaign states in which Mailchimp has taken the send over: it happens without us.
LAUNCHED = frozenset({"schedule", "sending", "sent"})
# Member statuses: only "subscribed" members receive campaigns.
SENDABLE = "subscribed"
# 400 titles with which Mailchimp refuses to (re)add an address: never retried, never forced.
REFUSING_TITLES = frozenset({"Member In Compliance State", "Forgotten Email Not Subscribed"})
# The audience's merge fields mailer fills in (tags are at most 10 characters).
MERGE_FIELDS = {
    "AMOUNTDUE": "Amount due",
    "INVOICES": "Invoice numbers",
    "DUEDATE": "Due date",
    "PAYLINK": "Payment link",
}
_TEXT_LIMIT = 255  # a text merge field holds at most this many characters


class MailchimpApiError(PermanentError):
    """Mailchimp answered 4xx (other than 429): the request is wrong or not allowed.

    ``problem`` is the problem-details body (type, title, status, detail, instance).
    """

    def __init__(self, message: str, *, status: int, problem: dict[str, Any]) -> None:
        super().__init__(message, code=status, detail=str(problem.get("detail", "")))
        self.status = status
        self.title = str(problem.get("title", ""))
        self.problem = problem


class MemberRefusedError(PermanentError):
    """Mailchimp will not send to this address (a member not subscribed, a compliance state,
    content a campaign cannot carry). Not an SMTP refusal: no server judged the sender, so it
    is recorded as a failed send and the Mailchimp flow decides what follows."""

    def __init__(self, address: str, reason: str, detail: str) -> None:
        super().__init__(f"Mailchimp will not send to {address}: {detail}", detail=detail)
        self.address = address
        self.reason = reason


@dataclass(frozen=True, slots=True)
class Answer:
    """One API response: the HTTP status and the JSON body ({} for 204 No Content)."""

    status: int
    body: dict[str, Any]


def subscriber_hash(address: str) -> str:
    """Mailchimp's member id: the MD5 of the lower-cased address."""
    return hashlib.md5(address.lower().encode("utf-8"), usedforsecurity=False).hexdigest()


def quarter_hour_after(now: datetime, lead: timedelta = timedelta(minutes=5)) -> datetime:
    """The first quarter hour (:00 :15 :30 :45, UTC) at least ``lead`` after ``now``.

    Mailchimp schedules only on the quarter hour, and only in the future.
    """
    earliest = now.astimezone(UTC) + lead
    base = earliest.replace(second=0, microsecond=0)
    if base < earliest:
        base += timedelta(minutes=1)
    return base + timedelta(minutes=(-base.minute) % 15)


@dataclass(frozen=True, slots=True)
class Parts:
    """What a campaign needs from mailer's own message: the same words, no attachment."""

    subject: str
    html: str | None
    text: str | None
    attachments: tuple[str, ...]


def mime_parts(raw: bytes) -> Parts:
    """Subject, HTML and plain text of the stored message, exactly as composed."""
    msg = email.message_from_bytes(raw, policy=email.policy.default)
    assert isinstance(msg, EmailMessage)
    html = text = None
    attachments = []
    for part in msg.walk():
        if part.is_multipart():
            continue
        assert isinstance(part, EmailMessage)
        if part.get_content_disposition() == "attachment":
            attachments.append(part.get_filename() or part.get_content_type())
        elif part.get_content_type() == "text/html" and html is None:
            html = str(part.get_content())
        elif part.get_content_type() == "text/plain" and text is None:
            text = str(part.get_content())
    return Parts(str(msg.get("Subject", "")), html, text, tuple(attachments))


def merge_values(case: Case, creditor: Creditor) -> dict[str, str]:
    """The case as merge fields: amount due, invoice numbers, oldest due date, payment link."""
    invoices = case.open_invoices
    currency = invoices[0].currency if invoices else ""
    link = next((i.payment_link for i in invoices if i.payment_link), None)
    if link is None and creditor.payment_link_template and invoices:
        link = creditor.payment_link_template.format(invoice=invoices[0].number)
    due = case.anchor_due_date
    values = {
        "AMOUNTDUE": f"{case.balance} {currency}".strip(),
        "INVOICES": ", ".join(i.number for i in invoices),
        "DUEDATE": due.isoformat() if due else "",
        "PAYLINK": link or "",
    }
    return {tag: value[:_TEXT_LIMIT] for tag, value in values.items()}


def _problem(text: object) -> dict[str, Any]:
    """The error body as a dict: the SDK hands over problem+json as text, not parsed."""
    if isinstance(text, dict):
        return text
    try:
        body = json.loads(str(text))
    except ValueError:
        return {"detail": str(text)[:500]}
    return body if isinstance(body, dict) else {"detail": str(body)[:500]}


class MailchimpApi:
    """One audience of one account; synchronous (the SDK uses requests): call from a thread."""

    def __init__(self, settings: MailchimpSettings, api_key: str) -> None:
        config: dict[str, Any] = {"api_key": api_key, "timeout": settings.timeout_seconds}
        if settings.server:
            config["server"] = settings.server
        self.client = Client(config)
        if settings.base_url:
            self.client.api_client.host = settings.base_url.rstrip("/")
        self.list_id = settings.audience_id
        self._key = api_key  # kept only to scrub it from any text that leaves this class

    # --- the boundary -------------------------------------------------------------------------

    def call(self, name: str, fn: Callable[..., Any], *args: Any, final: bool = False,
             **kwargs: Any) -> Answer:  # fmt: skip
        """Run one SDK call; ApiClientError → mailer's tree, once, here.

        ``final`` marks the call that makes Mailchimp send (schedule, send): when its answer is
        lost or is a 5xx, the campaign may have gone, so the error is ambiguous, never retried
        blindly. 429 means not processed: always temporary.
        """
        try:
            result = fn(*args, **kwargs)
        except ApiClientError as exc:
            raise self._mapped(name, exc, final) from None
        if isinstance(result, requests.Response):  # 204 No Content: the SDK returns the response
            return Answer(result.status_code, {})
        if isinstance(result, dict):
            return Answer(200, result)
        return Answer(200, {"value": self.scrub(str(result))[:500]})

    def _mapped(self, name: str, exc: ApiClientError, final: bool) -> MailerError:
        status = exc.status_code
        problem = _problem(self.scrub(str(exc.text)))
        summary = " ".join(str(problem.get(k, "")) for k in ("title", "detail")).strip()
        if status is None:
            text = f"{name}: no answer from Mailchimp: {summary}"
            return AmbiguousDeliveryError(text) if final else TemporaryError(text)
        message = f"{name}: {status} {summary}"
        if status >= 500:
            return AmbiguousDeliveryError(message) if final else TemporaryError(message)
        if status == 429:
            return TemporaryError(message)
        return MailchimpApiError(message, status=status, problem=problem)

    def scrub(self, text: str) -> str:
        return text.replace(self._key, "[api key]") if self._key else text

    # --- the audience ---------------------------------------------------------------------------

    def merge_fields(self) -> Answer:
        return self.call(
            "lists.get_list_merge_fields",
            self.client.lists.get_list_merge_fields,
            self.list_id,
            count=1000,
        )

    def add_merge_field(self, tag: str) -> Answer:
        body = {"tag": tag, "name": MERGE_FIELDS[tag], "type": "text", "required": False}
        return self.call(
            "lists.add_list_merge_field", self.client.lists.add_list_merge_field, self.list_id, body
        )

    def upsert_member(self, address: str, merge: dict[str, str], status_if_new: str) -> Answer:
        """Add or update; an existing member's status is never sent, so never changed: an
        unsubscribed or cleaned member stays so (mailer never re-subscribes anyone)."""
        body = {"email_address": address, "status_if_new": status_if_new, "merge_fields": merge}
        return self.call(
            "lists.set_list_member",
            self.client.lists.set_list_member,
            self.list_id,
            subscriber_hash(address),
            body,
        )

    def get_member(self, address: str) -> Answer:
        return self.call(
            "lists.get_list_member",
            self.client.lists.get_list_member,
            self.list_id,
            subscriber_hash(address),
        )

    def tag_member(self, address: str, tags: tuple[str, ...]) -> Answer:
        body = {"tags": [{"name": t, "status": "active"} for t in tags]}
        return self.call(
            "lists.update_list_member_tags",
            self.client.lists.update_list_member_tags,
            self.list_id,
            subscriber_hash(address),
            body,
        )

    def create_segment(self, name: str, address: str) -> Answer:
        """A static segment holding this one address: the campaign's only recipient."""
        body = {"name": name[:100], "static_segment": [address]}
        return self.call(
            "lists.create_segment", self.client.lists.create_segment, self.list_id, body
        )

    # --- campaigns ------------------------------------------------------------------------------

    def create_campaign(
        self, title: str, subject: str, from_name: str, reply_to: str, segment_id: int, html: bool
    ) -> Answer:
        body = {
            "type": "regular" if html else "plaintext",
            "recipients": {
                "list_id": self.list_id,
                "segment_opts": {"saved_segment_id": segment_id},
            },
            "settings": {
                "title": title,
                "subject_line": subject[:150],
                "from_name": from_name[:100],
                "reply_to": reply_to,
            },
        }
        return self.call("campaigns.create", self.client.campaigns.create, body)

    def find_campaign(self, title: str, since: datetime) -> Answer:
        """The campaign named ``title`` created since ``since`` ({} if none): found again after
        a crash. The list is what Mailchimp answered; only the match is kept."""
        answer = self.call(
            "campaigns.list",
            self.client.campaigns.list,
            list_id=self.list_id,
            since_create_time=since.astimezone(UTC).isoformat(timespec="seconds"),
            count=1000,
        )
        for campaign in answer.body.get("campaigns", []):
            if campaign.get("settings", {}).get("title") == title:
                return Answer(answer.status, dict(campaign))
        return Answer(answer.status, {})

    def get_campaign(self, campaign_id: str) -> Answer:
        return self.call("campaigns.get", self.client.campaigns.get, campaign_id)

    def set_content(self, campaign_id: str, html: str | None, text: str | None) -> Answer:
        body = {k: v for k, v in (("html", html), ("plain_text", text)) if v is not None}
        return self.call(
            "campaigns.set_content", self.client.campaigns.set_content, campaign_id, body
        )

    def schedule(self, campaign_id: str, when: datetime) -> Answer:
        body = {"schedule_time": when.astimezone(UTC).isoformat(timespec="seconds")}
        return self.call(
            "campaigns.schedule", self.client.campaigns.schedule, campaign_id, body, final=True
        )

    def send(self, campaign_id: str) -> Answer:
        return self.call("campaigns.send", self.client.campaigns.send, campaign_id, final=True)

    # --- reports --------------------------------------------------------------------------------

    def report(self, campaign_id: str) -> Answer:
        return self.call(
            "reports.get_campaign_report", self.client.reports.get_campaign_report, campaign_id
        )

    def activity(self, campaign_id: str, address: str) -> Answer:
        return self.call(
            "reports.get_email_activity_for_subscriber",
            self.client.reports.get_email_activity_for_subscriber,
            campaign_id,
            subscriber_hash(address),
        )

    def abuse_reports(self, campaign_id: str) -> Answer:
        return self.call(
            "reports.get_campaign_abuse_reports",
            self.client.reports.get_campaign_abuse_reports,
            campaign_id,
        )


def evidence(answer: Answer) -> dict[str, Any]:
    """A response as recorded in the event log: links dropped, content bodies as their hashes."""
    body = {k: v for k, v in answer.body.items() if k != "_links"}
    for key in ("html", "plain_text", "archive_html"):
        value = body.get(key)
        if isinstance(value, str):
            data = value.encode("utf-8")
            body[key] = {"sha256": hashlib.sha256(data).hexdigest(), "size": len(data)}
    return {"status": answer.status, "body": body}
