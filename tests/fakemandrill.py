"""A local stand-in for Mailchimp Transactional (Mandrill): the endpoints mailer uses, as documented.

Requests come from the real SDK (mailchimp-transactional) over real HTTP on loopback. As in the
documented contract (https://mandrillapp.com/api/docs/messages.html), every call is a POST of a
JSON body carrying the API key as ``key``, to ``/api/1.x/<group>/<method>.json``; answers are 200
with JSON, and every error is HTTP 500 with ``{"status": "error", "code": …, "name": …,
"message": …}`` (Invalid_Key, ValidationError, PaymentRequired, Unknown_Message; mailer reads
the name, never the code). A send answers per recipient: ``sent`` / ``queued`` / ``scheduled``,
``rejected`` with a ``reject_reason`` (hard-bounce, soft-bounce, spam, unsub, custom,
invalid-sender, invalid, test-mode-limit, unsigned, rule), or ``invalid``. Mandrill rejects mail from unverified sending domains
("unsigned"), and mail to addresses on its rejection denylist. Tests inject 429s, 5xx and lost
answers with ``fail``, and move Mandrill's side on with ``deliver_scheduled``, ``open``,
``click``, ``bounce``, ``complain`` and ``unsubscribe``.

Where the contract says nothing the stand-in chooses the strict reading, and says so: a 429
(documented by its status only) comes with a plain-text body; a scheduled message is unknown to
messages/info and messages/search until it goes out; search matches only "*" as a query (mailer
sends no other); scheduling on an account without a positive balance answers PaymentRequired.
"""

from __future__ import annotations

import email
import email.policy
import email.utils
import json
import re
import threading
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import urlsplit

TIME = "%Y-%m-%d %H:%M:%S"
ADDRESS = re.compile(r"^[^@\s]+@[^@\s]+\.[^@\s]+$")


class Error(Exception):
    """Mandrill's one error shape, always with HTTP 500."""

    def __init__(self, name: str, message: str, code: int = -1) -> None:
        super().__init__(message)
        self.name, self.message, self.code = name, message, code

    def body(self) -> dict[str, Any]:
        return {"status": "error", "code": self.code, "name": self.name, "message": self.message}


@dataclass
class Message:
    """One recipient's copy, as Mandrill keeps it."""

    id: str
    ts: int
    sender: str
    from_name: str
    subject: str
    email: str
    state: str  # sent, scheduled, rejected, bounced, soft-bounced, spam, unsub
    raw: str
    created_at: str
    send_at: str | None = None
    reject_reason: str | None = None
    opens_detail: list[dict[str, Any]] = field(default_factory=list)
    clicks_detail: list[dict[str, Any]] = field(default_factory=list)
    smtp_events: list[dict[str, Any]] = field(default_factory=list)

    def info(self) -> dict[str, Any]:
        return {
            "ts": self.ts, "_id": self.id, "sender": self.sender, "template": None,
            "subject": self.subject, "email": self.email, "tags": [],
            "opens": len(self.opens_detail), "opens_detail": list(self.opens_detail),
            "clicks": len(self.clicks_detail),
            "clicks_detail": list(self.clicks_detail), "state": self.state, "metadata": {},
            "smtp_events": list(self.smtp_events),
        }  # fmt: skip


@dataclass
class Fault:
    pattern: re.Pattern[str]
    status: int  # 0: the connection is closed without an answer
    text: str  # a JSON error's name (HTTP 500), or a plain-text body
    times: int
    after: bool  # a lost answer: the request is carried out, then the connection dropped


@dataclass
class Request:
    path: str
    body: dict[str, Any]


class FakeMandrill:
    """One account. ``clock`` is the tests' simulated time."""

    def __init__(self, api_key: str, clock: Callable[[], datetime]) -> None:
        self.api_key = api_key
        self.clock = clock
        self.verified_domains = {"taller-demo.example"}  # sending domains with DKIM and SPF
        self.denylist: dict[str, str] = {}  # address → reject_reason
        self.positive_balance = True  # scheduled email is paid for
        self.messages: dict[str, Message] = {}
        self.requests: list[Request] = []
        self.faults: list[Fault] = []
        self.lock = threading.Lock()
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(self))
        self.server.daemon_threads = True

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}/api/1.0"

    @contextmanager
    def running(self) -> Iterator[FakeMandrill]:
        thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        thread.start()
        try:
            yield self
        finally:
            self.server.shutdown()
            self.server.server_close()
            thread.join(5)

    # --- what tests do to Mandrill's side ------------------------------------------------------

    def fail(self, path: str, status: int, text: str = "", *, times: int = 1,
             after: bool = False) -> None:  # fmt: skip
        """The next ``times`` requests to a matching path answer ``status`` (0: no answer)."""
        self.faults.append(Fault(re.compile(path), status, text, times, after))

    def calls(self, pattern: str) -> list[Request]:
        return [r for r in self.requests if re.search(pattern, r.path)]

    def sent(self) -> list[Message]:
        return [m for m in self.messages.values() if m.state != "rejected"]

    def _now(self) -> int:
        return int(self.clock().timestamp())

    def deliver_scheduled(self) -> None:
        """Mandrill's side of the clock: scheduled messages whose time has come go out."""
        with self.lock:
            for m in self.messages.values():
                if m.state == "scheduled" and m.send_at and m.send_at <= _stamp(self.clock()):
                    m.state, m.ts = "sent", self._now()

    def open(self, message_id: str) -> None:
        self.messages[message_id].opens_detail.append(
            {"ts": self._now(), "ip": "192.0.2.1", "location": "Madrid, ES", "ua": "Mail/1.0"}
        )

    def click(self, message_id: str, url: str) -> None:
        self.messages[message_id].clicks_detail.append(
            {"ts": self._now(), "url": url, "ip": "192.0.2.1", "location": "Madrid, ES", "ua": ""}
        )

    def bounce(self, message_id: str, *, hard: bool, diag: str = "") -> None:
        m = self.messages[message_id]
        m.state = "bounced" if hard else "soft-bounced"
        m.smtp_events.append({"ts": self._now(), "type": m.state, "diag": diag})
        if hard:
            self.denylist[m.email] = "hard-bounce"  # Mandrill denylists a hard-bounced address

    def complain(self, message_id: str) -> None:
        self.messages[message_id].state = "spam"
        self.denylist[self.messages[message_id].email] = "spam"

    def unsubscribe(self, message_id: str) -> None:
        self.messages[message_id].state = "unsub"
        self.denylist[self.messages[message_id].email] = "unsub"

    # --- the API ----------------------------------------------------------------------------------

    def handle(self, method: str, body: dict[str, Any]) -> Any:
        if body.get("key") != self.api_key:
            raise Error("Invalid_Key", "Invalid API key")
        routes: dict[str, Callable[[dict[str, Any]], Any]] = {
            "messages/send-raw": self._send_raw,
            "messages/info": self._info,
            "messages/search": self._search,
            "messages/list-scheduled": self._list_scheduled,
        }
        if method not in routes:
            raise Error("ValidationError", f"Unknown method {method}")
        return routes[method](body)

    def _send_raw(self, body: dict[str, Any]) -> list[dict[str, Any]]:
        raw = body.get("raw_message")
        if not isinstance(raw, str) or not raw:
            raise Error("ValidationError", "You must specify a raw_message value")
        msg = email.message_from_string(raw, policy=email.policy.default)
        sender = str(body.get("from_email") or email.utils.parseaddr(str(msg["From"]))[1])
        to = body.get("to") or [a for _n, a in email.utils.getaddresses(msg.get_all("To", []))]
        when = body.get("send_at")
        if when is not None:
            try:
                moment = datetime.strptime(str(when), TIME).replace(tzinfo=UTC)
            except ValueError:
                raise Error("ValidationError", "send_at must be YYYY-MM-DD HH:MM:SS") from None
            if moment <= self.clock():
                when = None  # a time in the past: sent at once
            elif not self.positive_balance:
                raise Error("PaymentRequired", "Scheduled email requires a positive balance")
        results = []
        for address in to:
            reason = None
            if not ADDRESS.match(str(address)):
                status = "invalid"
            elif sender.rpartition("@")[2].lower() not in self.verified_domains:
                status, reason = "rejected", "unsigned"
            elif str(address).lower() in self.denylist:
                status, reason = "rejected", self.denylist[str(address).lower()]
            else:
                status = "scheduled" if when is not None else "sent"
            m = Message(uuid.uuid4().hex, self._now(), sender, str(body.get("from_name") or ""),
                        str(msg["Subject"] or ""), str(address), status, raw, _stamp(self.clock()),
                        send_at=when, reject_reason=reason)  # fmt: skip
            if status != "invalid":
                self.messages[m.id] = m
            results.append({"email": address, "status": status, "_id": m.id,
                            "reject_reason": reason, "queued_reason": None})  # fmt: skip
        return results

    def _known(self, message_id: object) -> Message:
        m = self.messages.get(str(message_id))
        if m is None or m.state == "scheduled":
            raise Error("Unknown_Message", f"No message exists with the id '{message_id}'", 11)
        return m

    def _info(self, body: dict[str, Any]) -> dict[str, Any]:
        return self._known(body.get("id")).info()

    def _search(self, body: dict[str, Any]) -> list[dict[str, Any]]:
        if body.get("query", "*") not in ("*", "", None):
            raise Error("ValidationError", "the stand-in searches only with the query '*'")
        limit = int(body.get("limit") or 100)
        if not 1 <= limit <= 1000:
            raise Error("ValidationError", "limit must be between 1 and 1000")
        start = _day(body.get("date_from")) or self.clock() - timedelta(days=7)
        end = (_day(body.get("date_to")) or self.clock()) + timedelta(days=1)
        senders = body.get("senders")
        found = [
            m.info() for m in self.messages.values()
            if m.state != "scheduled" and start.timestamp() <= m.ts < end.timestamp()
            and (not senders or m.sender in senders)
        ]  # fmt: skip
        return found[:limit]

    def _list_scheduled(self, body: dict[str, Any]) -> list[dict[str, Any]]:
        to = body.get("to")
        return [
            {"_id": m.id, "created_at": m.created_at, "send_at": m.send_at,
             "from_email": m.sender, "to": m.email, "subject": m.subject}
            for m in self.messages.values()
            if m.state == "scheduled" and (not to or m.email.lower() == str(to).lower())
        ]  # fmt: skip


def _stamp(moment: datetime) -> str:
    return moment.astimezone(UTC).strftime(TIME)


def _day(text: object) -> datetime | None:
    return datetime.fromisoformat(str(text)[:10]).replace(tzinfo=UTC) if text else None


def _handler(fake: FakeMandrill) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, format: str, *args: Any) -> None:
            return None  # the tests read fake.requests instead

        def do_POST(self) -> None:
            path = urlsplit(self.path).path
            length = int(self.headers.get("Content-Length") or 0)
            body = json.loads(self.rfile.read(length) or b"{}")
            match = re.match(r"^/api/1\.\d+/(\w+/[\w-]+)\.json$", path)
            with fake.lock:
                fake.requests.append(Request(path, body))
                fault = next((f for f in fake.faults if f.times > 0 and f.pattern.search(path)),
                             None)  # fmt: skip
                if fault is not None:
                    fault.times -= 1
                if match is None:
                    answer: tuple[int, Any] = (404, "Not Found")
                elif fault is not None and not fault.after:
                    answer = self._fault(fault)
                else:
                    try:
                        answer = (200, fake.handle(match.group(1), body))
                    except Error as error:
                        answer = (500, error.body())
                    if fault is not None:
                        answer = self._fault(fault)
            self._write(*answer)

        def _fault(self, fault: Fault) -> tuple[int, Any]:
            if fault.status == 500 and fault.text and " " not in fault.text:
                return 500, Error(fault.text, "An error occurred").body()  # a named error
            return fault.status, fault.text or {429: "Too Many Requests"}.get(fault.status, "")

        def _write(self, status: int, answer: Any) -> None:
            if status == 0:
                self.close_connection = True  # a lost answer: the client sees the line drop
                return
            is_json = not isinstance(answer, str)
            data = json.dumps(answer).encode() if is_json else answer.encode()
            self.send_response(status)
            kind = "application/json; charset=utf-8" if is_json else "text/plain; charset=utf-8"
            self.send_header("Content-Type", kind)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

    return Handler
