"""Mailchimp Transactional (Mandrill) at the edge: each SDK call, its errors mapped once; webhooks.

Mandrill answers every error with one JSON shape, ``{"status": "error", "code": …, "name":
"Invalid_Key", "message": …}``, and (unlike the Marketing API) with HTTP 500 for all of them: a
named error is Mandrill's definite "no", not an outage. What has no such body (a 429, a proxy's
502, a dropped line) says nothing about whether the request was carried out.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import requests
from mailchimp_transactional import Client
from mailchimp_transactional.api_client import ApiClientError

from mailer.config import MandrillSettings
from mailer.errors import AmbiguousDeliveryError, MailerError, PermanentError, TemporaryError

# Per-recipient statuses of a send: Mandrill has taken the message (sync mode: "sent" or
# "queued"; with send_at: "scheduled"). Anything else ("rejected", "invalid") did not go.
TAKEN = frozenset({"sent", "queued", "scheduled"})
# Error names that mean "not done now, ask again later" rather than "no".
RETRY_NAMES = frozenset({"ServiceUnavailable"})
TIME_FORMAT = "%Y-%m-%d %H:%M:%S"  # Mandrill's UTC timestamps (send_at, created_at)


class MandrillApiError(PermanentError):
    """Mandrill refused the call: ``name`` is its error name (Invalid_Key, ValidationError,
    PaymentRequired, Unknown_Message, …), ``body`` what it answered."""

    def __init__(self, message: str, *, status: int, name: str, body: dict[str, Any]) -> None:
        super().__init__(message, code=status, detail=str(body.get("message", "")))
        self.status = status
        self.name = name
        self.body = body


class MandrillRejectedError(PermanentError):
    """Mandrill took the call but will not send to this address (``reason``: its reject_reason,
    or "invalid"). Not an SMTP refusal: the Mandrill flow decides what follows."""

    def __init__(self, address: str, reason: str, detail: str) -> None:
        super().__init__(f"Mailchimp Transactional will not send to {address}: {detail}",
                         detail=detail)  # fmt: skip
        self.address = address
        self.reason = reason


@dataclass(frozen=True, slots=True)
class Answer:
    """One API response: the HTTP status and the JSON body (a list for sends and searches)."""

    status: int
    body: Any


def send_at(when: datetime) -> str:
    """A moment as Mandrill's send_at: UTC, "YYYY-MM-DD HH:MM:SS"."""
    return when.astimezone(UTC).strftime(TIME_FORMAT)


def from_ts(value: object) -> datetime | None:
    """A Unix timestamp from Mandrill (ts, opens_detail[].ts) as an aware UTC datetime."""
    try:
        return datetime.fromtimestamp(float(str(value)), UTC) if value is not None else None
    except (ValueError, OverflowError, OSError):
        return None


def from_text(value: object) -> datetime | None:
    """A "YYYY-MM-DD HH:MM:SS" UTC time from Mandrill (created_at, send_at)."""
    try:
        return datetime.strptime(str(value), TIME_FORMAT).replace(tzinfo=UTC) if value else None
    except ValueError:
        return None


class MandrillApi:
    """One account; synchronous (the SDK uses requests): call from a thread."""

    def __init__(self, settings: MandrillSettings, api_key: str) -> None:
        self.client = Client(api_key)
        if settings.base_url:
            self.client.api_client.host = settings.base_url.rstrip("/")
        self.client.set_timeout(settings.timeout_seconds)
        self._key = api_key  # kept only to scrub it from any text that leaves this class

    # --- the boundary -------------------------------------------------------------------------

    def call(self, name: str, fn: Callable[[dict[str, Any]], Any], body: dict[str, Any],
             *, final: bool = False) -> Answer:  # fmt: skip
        """Run one SDK call; requests' and the SDK's errors → mailer's tree, once, here.

        The SDK writes the key into the body it is given, so it gets a copy, never a dict that
        is kept or logged. ``final`` marks the call that makes Mandrill send: when its answer is
        lost or unreadable the message may have gone, so the error is ambiguous, never retried
        blindly.
        """
        try:
            result = fn(dict(body))
        except ApiClientError as exc:
            raise self._mapped(name, exc.status_code, exc.text, final) from None
        except requests.RequestException as exc:
            text = f"{name}: no answer from Mailchimp Transactional: {self.scrub(str(exc))[:300]}"
            sure = isinstance(exc, requests.ConnectTimeout)  # never reached the server
            raise (
                AmbiguousDeliveryError(text) if final and not sure else TemporaryError(text)
            ) from None
        if isinstance(result, requests.Response):
            # The SDK hands back the response itself when the JSON is empty ([] or {}) or
            # unreadable, error or not.
            if not result.ok:
                raise self._mapped(name, result.status_code, None, final)
            try:
                result = result.json()
            except ValueError:
                text = f"{name}: {result.status_code} with an empty or unreadable answer"
                raise AmbiguousDeliveryError(text) if final else TemporaryError(text) from None
        if not isinstance(result, dict | list):
            text = f"{name}: an answer that is not JSON: {self.scrub(str(result))[:200]}"
            raise AmbiguousDeliveryError(text) if final else TemporaryError(text)
        return Answer(200, result)

    def _mapped(self, name: str, status: int, text: object, final: bool) -> MailerError:
        if isinstance(text, dict) and text.get("status") == "error" and text.get("name"):
            body = {k: self.scrub(v) if isinstance(v, str) else v for k, v in text.items()}
            message = f"{name}: {body['name']} {body.get('message', '')}".strip()
            if status == 429 or body["name"] in RETRY_NAMES:
                return TemporaryError(message)
            return MandrillApiError(message, status=status, name=str(body["name"]), body=body)
        detail = self.scrub(str(text or "")).strip()[:300]
        message = f"{name}: {status} {detail}".strip()
        if status == 429:
            return TemporaryError(message)  # throttled: not carried out
        if status >= 500:
            return AmbiguousDeliveryError(message) if final else TemporaryError(message)
        return MandrillApiError(message, status=status, name="", body={"message": detail})

    def scrub(self, text: str) -> str:
        return text.replace(self._key, "[api key]") if self._key else text

    # --- messages ---------------------------------------------------------------------------

    def send_raw(self, raw: bytes, from_email: str, from_name: str, to: list[str],
                 when: datetime | None) -> Answer:  # fmt: skip
        """The stored message's exact bytes, to the envelope recipients; sync mode, so the
        answer says per recipient whether Mandrill took it."""
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise PermanentError(f"the stored message is not UTF-8 text: {exc}") from None
        body: dict[str, Any] = {
            "raw_message": text,
            "from_email": from_email,
            "from_name": from_name,
            "to": to,
            "async": False,
        }
        if when is not None:
            body["send_at"] = send_at(when)
        return self.call("messages.send_raw", self.client.messages.send_raw, body, final=True)

    def info(self, message_id: str) -> Answer:
        return self.call("messages.info", self.client.messages.info, {"id": message_id})

    def find(self, sender: str, address: str, subject: str, since: datetime,
             until: datetime) -> Answer:  # fmt: skip
        """Messages from ``sender`` to ``address`` with this subject sent since ``since``, found
        with messages/search (senders and dates only: documented filters, no query syntax). Only
        the matches are kept: the rest are other people's mail."""
        body = {"query": "*", "senders": [sender], "limit": 1000,
                "date_from": since.astimezone(UTC).date().isoformat(),
                "date_to": until.astimezone(UTC).date().isoformat()}  # fmt: skip
        answer = self.call("messages.search", self.client.messages.search, body)
        start = since.timestamp()
        return Answer(answer.status, [
            m for m in answer.body if isinstance(m, dict)
            and str(m.get("email", "")).lower() == address.lower()
            and m.get("subject") == subject and float(m.get("ts") or 0) >= start
        ])  # fmt: skip

    def find_scheduled(self, address: str, subject: str, since: datetime) -> Answer:
        """Messages scheduled for ``address`` with this subject, made since ``since``."""
        answer = self.call("messages.list_scheduled", self.client.messages.list_scheduled,
                           {"to": address})  # fmt: skip
        return Answer(answer.status, [
            {**m, "state": "scheduled"} for m in answer.body if isinstance(m, dict)
            and m.get("subject") == subject
            and (from_text(m.get("created_at")) or since) >= since
        ])  # fmt: skip


# --- webhooks -----------------------------------------------------------------------------------


def webhook_signature(key: str, url: str, params: Mapping[str, str]) -> str:
    """The signature Mandrill sends with a webhook POST to ``url``.

    The URL exactly as configured (query string and trailing slash included), then each POST
    variable's key and value with no delimiter, sorted by key; HMAC-SHA1 with the webhook's
    key; base64 of the binary digest (Mailchimp Transactional, "How to Authenticate Webhook
    Requests").
    """
    signed = url + "".join(k + params[k] for k in sorted(params))
    digest = hmac.new(key.encode("utf-8"), signed.encode("utf-8"), hashlib.sha1).digest()
    return base64.b64encode(digest).decode("ascii")


def verify_webhook(key: str, url: str, params: Mapping[str, str], header: str | None) -> bool:
    """True only when ``header`` (X-Mandrill-Signature) is the request's signature.

    Compared in constant time, so the answer's timing tells nothing about the right one.
    """
    if not header:
        return False
    expected = webhook_signature(key, url, params)
    return hmac.compare_digest(expected.encode("ascii"), header.strip().encode("ascii", "replace"))
