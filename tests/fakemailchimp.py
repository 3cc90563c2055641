"""A local stand-in for Mailchimp's Marketing API 3.0: the endpoints mailer uses, and their contract.

Requests come from the real SDK (mailchimp-marketing) over real HTTP on loopback. Answers follow
Mailchimp's documented contract: JSON resources with the fields mailer reads, 204 No Content for
actions and tag updates, and errors as ``application/problem+json`` with type, title, status,
detail and instance (https://mailchimp.com/developer/marketing/docs/errors/). State is kept:
members (subscribed, unsubscribed, cleaned, pending…), tags, merge fields, static segments,
campaigns and their content, sends, email activity and abuse reports. Tests inject 429s, 400s,
5xx and lost answers with ``fail``, and move Mailchimp's side on with ``open``, ``bounce``,
``set_status``, ``abuse`` and ``deliver_scheduled``.

Where Mailchimp's behaviour is not documented the stand-in chooses the strict reading, and says so:
unknown merge tags are refused (so mailer must create its merge fields), and a plan without
scheduling answers the schedule action 403 (as reported in afup/web#1184; the wording is ours).
"""

from __future__ import annotations

import base64
import hashlib
import itertools
import json
import re
import threading
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit

ERRORS_DOC = "https://mailchimp.com/developer/marketing/docs/errors/"
STATUSES = ("subscribed", "unsubscribed", "cleaned", "pending", "transactional", "archived")


def md5(address: str) -> str:
    return hashlib.md5(address.lower().encode(), usedforsecurity=False).hexdigest()


def stamp(moment: datetime) -> str:
    return moment.astimezone(UTC).isoformat(timespec="seconds")


class Problem(Exception):
    def __init__(self, status: int, title: str, detail: str, **extra: Any) -> None:
        super().__init__(detail)
        self.status, self.title, self.detail, self.extra = status, title, detail, extra

    def body(self) -> dict[str, Any]:
        return {"type": ERRORS_DOC, "title": self.title, "status": self.status,
                "detail": self.detail, "instance": str(uuid.uuid4()), **self.extra}  # fmt: skip


def not_found() -> Problem:
    return Problem(404, "Resource Not Found", "The requested resource could not be found.")


@dataclass
class Member:
    email: str
    status: str
    merge_fields: dict[str, str] = field(default_factory=dict)
    tags: set[str] = field(default_factory=set)
    last_changed: str = ""


@dataclass
class Fault:
    method: str
    pattern: re.Pattern[str]
    status: int  # 0: the connection is closed without an answer
    title: str
    detail: str
    times: int
    after: bool  # a lost answer: the request is carried out, then the connection dropped


@dataclass
class Request:
    method: str
    path: str
    query: dict[str, list[str]]
    body: Any
    authorization: str


class FakeMailchimp:
    """One account with one audience (``list_id``). ``clock`` is the tests' simulated time."""

    def __init__(self, api_key: str, list_id: str, clock: Callable[[], datetime]) -> None:
        self.api_key = api_key
        self.list_id = list_id
        self.clock = clock
        self.members: dict[str, Member] = {}
        self.forgotten: set[str] = set()  # permanently deleted: cannot be re-imported
        self.merge_fields: dict[str, dict[str, Any]] = {}
        self.segments: dict[int, dict[str, Any]] = {}
        self.campaigns: dict[str, dict[str, Any]] = {}
        self.content: dict[str, dict[str, str]] = {}
        self.recipients: dict[str, list[str]] = {}  # campaign → addresses it went to
        self.activity: dict[tuple[str, str], list[dict[str, Any]]] = {}
        self.abuse_reports: dict[str, list[dict[str, Any]]] = {}
        self.launches: list[tuple[str, str]] = []  # (campaign, "schedule" | "send") carried out
        self.requests: list[Request] = []
        self.faults: list[Fault] = []
        self.schedule_allowed = True
        self.lock = threading.Lock()
        self._ids = itertools.count(1)
        for tag, name in (("FNAME", "First Name"), ("LNAME", "Last Name")):
            self._add_merge_field({"tag": tag, "name": name, "type": "text"})
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(self))
        self.server.daemon_threads = True

    @property
    def base_url(self) -> str:
        # Never the word "server" here: the SDK replaces it with the data-center prefix.
        return f"http://127.0.0.1:{self.server.server_address[1]}/3.0"

    @contextmanager
    def running(self) -> Iterator[FakeMailchimp]:
        thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        thread.start()
        try:
            yield self
        finally:
            self.server.shutdown()
            self.server.server_close()
            thread.join(5)

    # --- what tests do to Mailchimp's side -----------------------------------------------------

    def fail(self, method: str, path: str, status: int, title: str = "", detail: str = "",
             *, times: int = 1, after: bool = False) -> None:  # fmt: skip
        """The next ``times`` requests matching answer ``status`` (0: no answer at all)."""
        self.faults.append(Fault(method, re.compile(path), status, title, detail, times, after))

    def add_member(self, email: str, status: str) -> None:
        self.members[md5(email)] = Member(email, status, last_changed=stamp(self.clock()))

    def set_status(self, email: str, status: str) -> None:
        self.members[md5(email)].status = status
        self.members[md5(email)].last_changed = stamp(self.clock())

    def _act(self, campaign_id: str, email: str, **item: Any) -> None:
        item.setdefault("timestamp", stamp(self.clock()))
        self.activity.setdefault((campaign_id, md5(email)), []).append(item)

    def open(self, campaign_id: str, email: str) -> None:
        self._act(campaign_id, email, action="open", ip="192.0.2.1")

    def click(self, campaign_id: str, email: str, url: str) -> None:
        self._act(campaign_id, email, action="click", url=url, ip="192.0.2.1")

    def bounce(self, campaign_id: str, email: str, kind: str) -> None:
        self._act(campaign_id, email, action="bounce", type=kind)
        if kind == "hard":
            self.set_status(email, "cleaned")  # Mailchimp cleans a hard-bounced address

    def abuse(self, campaign_id: str, email: str) -> None:
        reports = self.abuse_reports.setdefault(campaign_id, [])
        reports.append({
            "id": next(self._ids), "campaign_id": campaign_id, "list_id": self.list_id,
            "email_id": md5(email), "email_address": email, "merge_fields": {}, "vip": False,
            "date": stamp(self.clock()),
        })  # fmt: skip
        self.set_status(email, "unsubscribed")  # a complaint unsubscribes the member too

    def deliver_scheduled(self) -> None:
        """Mailchimp's side of the clock: scheduled campaigns whose time has come go out."""
        with self.lock:
            for campaign in self.campaigns.values():
                if campaign["status"] == "schedule" and campaign["send_time"] <= stamp(
                    self.clock()
                ):
                    self._deliver(campaign)

    def calls(self, method: str, pattern: str) -> list[Request]:
        return [r for r in self.requests if r.method == method and re.search(pattern, r.path)]

    # --- the API ----------------------------------------------------------------------------------

    def handle(
        self, method: str, path: str, query: dict[str, list[str]], body: Any
    ) -> tuple[int, Any]:
        p = path.removeprefix("/3.0")
        lst = f"/lists/{re.escape(self.list_id)}"
        routes: list[tuple[str, str, Callable[..., tuple[int, Any]]]] = [
            ("GET", rf"^{lst}/merge-fields$", self._get_merge_fields),
            ("POST", rf"^{lst}/merge-fields$", self._post_merge_field),
            ("PUT", rf"^{lst}/members/(\w+)$", self._put_member),
            ("GET", rf"^{lst}/members/(\w+)$", self._get_member),
            ("POST", rf"^{lst}/members/(\w+)/tags$", self._post_tags),
            ("POST", rf"^{lst}/segments$", self._post_segment),
            ("POST", r"^/campaigns$", self._post_campaign),
            ("GET", r"^/campaigns$", self._list_campaigns),
            ("GET", r"^/campaigns/(\w+)$", self._get_campaign),
            ("PUT", r"^/campaigns/(\w+)/content$", self._put_content),
            ("POST", r"^/campaigns/(\w+)/actions/schedule$", self._schedule),
            ("POST", r"^/campaigns/(\w+)/actions/send$", self._send),
            ("GET", r"^/reports/(\w+)$", self._report),
            ("GET", r"^/reports/(\w+)/email-activity/(\w+)$", self._activity),
            ("GET", r"^/reports/(\w+)/abuse-reports$", self._abuse),
        ]
        for verb, pattern, fn in routes:
            match = re.match(pattern, p)
            if match and verb == method:
                return fn(*match.groups(), query=query, body=body)
        raise not_found()

    def _add_merge_field(self, body: dict[str, Any]) -> dict[str, Any]:
        tag = str(body.get("tag", "")).upper()
        if not tag or len(tag) > 10:
            raise Problem(400, "Invalid Resource", "The resource submitted could not be validated.",
                          errors=[{"field": "tag", "message": "The tag must be 1-10 characters."}])  # fmt: skip
        if tag in self.merge_fields:
            raise Problem(400, "Invalid Resource", f'A Merge Field with the tag "{tag}" already exists for this list.')  # fmt: skip
        field_ = {"merge_id": len(self.merge_fields) + 1, "tag": tag, "name": body.get("name", tag),
                  "type": body.get("type", "text"), "required": bool(body.get("required", False)),
                  "default_value": "", "public": False, "display_order": len(self.merge_fields) + 1,
                  "options": {"size": 25}, "help_text": "", "list_id": self.list_id}  # fmt: skip
        self.merge_fields[tag] = field_
        return field_

    def _get_merge_fields(self, *, query: Any, body: Any) -> tuple[int, Any]:
        fields = list(self.merge_fields.values())
        return 200, {"merge_fields": fields, "list_id": self.list_id, "total_items": len(fields)}

    def _post_merge_field(self, *, query: Any, body: Any) -> tuple[int, Any]:
        return 200, self._add_merge_field(body)

    def _member_json(self, m: Member) -> dict[str, Any]:
        h = md5(m.email)
        return {
            "id": h, "email_address": m.email, "unique_email_id": h[:10], "contact_id": h[10:20],
            "full_name": "", "web_id": int(h[:6], 16), "email_type": "html", "status": m.status,
            "merge_fields": dict(m.merge_fields), "ip_signup": "", "timestamp_signup": "",
            "language": "", "vip": False, "source": "API - Generic", "tags_count": len(m.tags),
            "tags": [{"id": i, "name": t} for i, t in enumerate(sorted(m.tags), 1)],
            "list_id": self.list_id, "last_changed": m.last_changed,
            "_links": [{"rel": "self", "href": f"/lists/{self.list_id}/members/{h}", "method": "GET"}],
        }  # fmt: skip

    def _put_member(self, h: str, *, query: Any, body: dict[str, Any]) -> tuple[int, Any]:
        email = str(body.get("email_address", ""))
        if not re.match(r"^[^@\s]+@[^@\s]+\.[^@\s]+$", email):
            raise Problem(400, "Invalid Resource", f"{email} looks fake or invalid, please enter a real email address.")  # fmt: skip
        if md5(email) != h:
            raise Problem(400, "Invalid Resource", "The email address does not match the subscriber hash.")  # fmt: skip
        merge = body.get("merge_fields", {}) or {}
        unknown = [t for t in merge if t not in self.merge_fields]
        if unknown:
            raise Problem(400, "Invalid Resource", "Your merge fields were invalid.",
                          errors=[{"field": t, "message": "This merge field does not exist."} for t in unknown])  # fmt: skip
        member = self.members.get(h)
        wanted = body.get("status")
        if member is None:
            if email.lower() in self.forgotten:
                raise Problem(400, "Forgotten Email Not Subscribed", f"{email} was permanently deleted and cannot be re-imported. The contact must re-subscribe to get back on the list.")  # fmt: skip
            status = wanted or body.get("status_if_new")
            if status not in STATUSES:
                raise Problem(400, "Invalid Resource", "The resource submitted could not be validated.",
                              errors=[{"field": "status_if_new", "message": "Status is required."}])  # fmt: skip
            member = self.members[h] = Member(email, status, last_changed=stamp(self.clock()))
        elif wanted is not None and wanted != member.status:
            if wanted == "subscribed" and member.status in ("unsubscribed", "cleaned"):
                raise Problem(400, "Member In Compliance State", f"{email} is in a compliance state due to unsubscribe, bounce, or compliance review and cannot be subscribed.")  # fmt: skip
            member.status = wanted
        member.merge_fields.update({k: str(v) for k, v in merge.items()})
        return 200, self._member_json(member)

    def _get_member(self, h: str, *, query: Any, body: Any) -> tuple[int, Any]:
        if h not in self.members:
            raise not_found()
        return 200, self._member_json(self.members[h])

    def _post_tags(self, h: str, *, query: Any, body: dict[str, Any]) -> tuple[int, Any]:
        if h not in self.members:
            raise not_found()
        for tag in body.get("tags", []):
            if tag.get("status") == "inactive":
                self.members[h].tags.discard(tag["name"])
            else:
                self.members[h].tags.add(tag["name"])
        return 204, None

    def _post_segment(self, *, query: Any, body: dict[str, Any]) -> tuple[int, Any]:
        if not body.get("name"):
            raise Problem(400, "Invalid Resource", "The resource submitted could not be validated.")
        emails = [e for e in body.get("static_segment", []) if md5(e) in self.members]
        segment_id = next(self._ids)
        now = stamp(self.clock())
        self.segments[segment_id] = {
            "id": segment_id, "name": body["name"], "member_count": len(emails), "type": "static",
            "created_at": now, "updated_at": now, "list_id": self.list_id, "emails": emails,
        }  # fmt: skip
        return 200, {k: v for k, v in self.segments[segment_id].items() if k != "emails"}

    def _campaign_json(self, c: dict[str, Any]) -> dict[str, Any]:
        return {**c, "_links": [{"rel": "self", "href": f"/campaigns/{c['id']}", "method": "GET"}]}

    def _post_campaign(self, *, query: Any, body: dict[str, Any]) -> tuple[int, Any]:
        if body.get("type") not in ("regular", "plaintext", "absplit", "rss", "variate"):
            raise Problem(400, "Invalid Resource", "The resource submitted could not be validated.",
                          errors=[{"field": "type", "message": "Value is not one of the enum values."}])  # fmt: skip
        recipients = body.get("recipients", {})
        if recipients.get("list_id") != self.list_id:
            raise Problem(400, "Invalid Resource", "The resource submitted could not be validated.",
                          errors=[{"field": "recipients.list_id", "message": "Invalid list id."}])  # fmt: skip
        segment = recipients.get("segment_opts", {}).get("saved_segment_id")
        if segment is not None and segment not in self.segments:
            raise Problem(400, "Invalid Resource", "The segment does not exist.")
        campaign_id = uuid.uuid4().hex[:10]
        self.campaigns[campaign_id] = {
            "id": campaign_id, "web_id": next(self._ids), "type": body["type"],
            "create_time": stamp(self.clock()), "status": "save", "emails_sent": 0,
            "send_time": "", "content_type": "html",
            "recipients": {"list_id": self.list_id, "segment_opts": {"saved_segment_id": segment},
                           "recipient_count": len(self._audience(segment))},
            "settings": dict(body.get("settings", {})),
            "tracking": {"opens": True, "html_clicks": True, "text_clicks": False},
        }  # fmt: skip
        return 200, self._campaign_json(self.campaigns[campaign_id])

    def _audience(self, segment: int | None) -> list[str]:
        emails = (
            self.segments[segment]["emails"]
            if segment
            else [m.email for m in self.members.values()]
        )
        return [e for e in emails if self.members[md5(e)].status == "subscribed"]

    def _campaign(self, campaign_id: str) -> dict[str, Any]:
        if campaign_id not in self.campaigns:
            raise not_found()
        return self.campaigns[campaign_id]

    def _list_campaigns(self, *, query: dict[str, list[str]], body: Any) -> tuple[int, Any]:
        found = list(self.campaigns.values())
        if "list_id" in query:
            found = [c for c in found if c["recipients"]["list_id"] == query["list_id"][0]]
        if "since_create_time" in query:
            since = datetime.fromisoformat(query["since_create_time"][0])
            found = [c for c in found if datetime.fromisoformat(c["create_time"]) > since]
        offset = int(query.get("offset", ["0"])[0])
        count = int(query.get("count", ["10"])[0])
        page = found[offset : offset + count]
        return 200, {"campaigns": [self._campaign_json(c) for c in page], "total_items": len(found)}

    def _get_campaign(self, campaign_id: str, *, query: Any, body: Any) -> tuple[int, Any]:
        return 200, self._campaign_json(self._campaign(campaign_id))

    def _put_content(
        self, campaign_id: str, *, query: Any, body: dict[str, Any]
    ) -> tuple[int, Any]:
        campaign = self._campaign(campaign_id)
        if campaign["status"] not in ("save", "paused"):
            raise Problem(400, "Bad Request", "Cannot update a campaign that has already been sent or scheduled.")  # fmt: skip
        html = body.get("html")
        text = body.get("plain_text")
        if html is None and text is None:
            raise Problem(400, "Invalid Resource", "Content is required.")
        if text is None and html is not None:
            text = re.sub(r"<[^>]+>", "", html)  # Mailchimp makes a plain-text version itself
        self.content[campaign_id] = {
            "html": html or "",
            "plain_text": text or "",
            "archive_html": html or "",
        }
        return 200, {**self.content[campaign_id], "_links": []}

    def _ready(self, campaign: dict[str, Any]) -> None:
        if campaign["status"] not in ("save", "paused"):
            raise Problem(400, "Bad Request", "This campaign has already been scheduled or sent.")
        if campaign["id"] not in self.content or not self._audience(
            campaign["recipients"]["segment_opts"]["saved_segment_id"]
        ):
            raise Problem(400, "Bad Request", "Your Campaign is not ready to send.")  # fmt: skip

    def _schedule(self, campaign_id: str, *, query: Any, body: dict[str, Any]) -> tuple[int, Any]:
        campaign = self._campaign(campaign_id)
        if not self.schedule_allowed:
            raise Problem(403, "Forbidden", "Scheduling is not available on this account's plan.")
        self._ready(campaign)
        when = datetime.fromisoformat(str(body.get("schedule_time", "")))
        if when.minute % 15 or when.second or when <= self.clock():
            raise Problem(400, "Bad Request", "This campaign cannot be scheduled: the time must be in the future, on the quarter-hour (:00, :15, :30, :45).")  # fmt: skip
        campaign["status"] = "schedule"
        campaign["send_time"] = stamp(when)
        self.launches.append((campaign_id, "schedule"))
        return 204, None

    def _send(self, campaign_id: str, *, query: Any, body: Any) -> tuple[int, Any]:
        campaign = self._campaign(campaign_id)
        self._ready(campaign)
        campaign["send_time"] = stamp(self.clock())
        self._deliver(campaign)
        self.launches.append((campaign_id, "send"))
        return 204, None

    def _deliver(self, campaign: dict[str, Any]) -> None:
        to = self._audience(campaign["recipients"]["segment_opts"]["saved_segment_id"])
        campaign["status"] = "sent"
        campaign["emails_sent"] = len(to)
        self.recipients[campaign["id"]] = to

    def _report(self, campaign_id: str, *, query: Any, body: Any) -> tuple[int, Any]:
        campaign = self._campaign(campaign_id)
        if campaign["status"] != "sent":
            raise not_found()
        acts = [a for (c, _h), items in self.activity.items() if c == campaign_id for a in items]
        opens = [a for a in acts if a["action"] == "open"]
        return 200, {
            "id": campaign_id, "campaign_title": campaign["settings"].get("title", ""),
            "type": campaign["type"], "list_id": self.list_id, "emails_sent": campaign["emails_sent"],
            "abuse_reports": len(self.abuse_reports.get(campaign_id, [])),
            "unsubscribed": 0, "send_time": campaign["send_time"],
            "bounces": {"hard_bounces": sum(a.get("type") == "hard" for a in acts),
                        "soft_bounces": sum(a.get("type") == "soft" for a in acts),
                        "syntax_errors": 0},
            "opens": {"opens_total": len(opens), "unique_opens": len({a["timestamp"] for a in opens}),
                      "open_rate": 1.0 if opens else 0.0, "last_open": opens[-1]["timestamp"] if opens else ""},
            "_links": [],
        }  # fmt: skip

    def _activity(self, campaign_id: str, h: str, *, query: Any, body: Any) -> tuple[int, Any]:
        campaign = self._campaign(campaign_id)
        if h not in {md5(e) for e in self.recipients.get(campaign["id"], [])}:
            raise not_found()
        return 200, {
            "campaign_id": campaign_id, "list_id": self.list_id, "list_is_active": True,
            "email_id": h, "email_address": self.members[h].email,
            "activity": list(self.activity.get((campaign_id, h), [])), "_links": [],
        }  # fmt: skip

    def _abuse(self, campaign_id: str, *, query: Any, body: Any) -> tuple[int, Any]:
        self._campaign(campaign_id)
        reports = self.abuse_reports.get(campaign_id, [])
        return 200, {"abuse_reports": reports, "campaign_id": campaign_id,
                     "total_items": len(reports), "_links": []}  # fmt: skip


def _handler(fake: FakeMailchimp) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, format: str, *args: Any) -> None:
            return None  # the tests read fake.requests instead

        def _serve(self) -> None:
            url = urlsplit(self.path)
            length = int(self.headers.get("Content-Length") or 0)
            raw = self.rfile.read(length) if length else b""
            body = json.loads(raw) if raw else None
            auth = self.headers.get("Authorization", "")
            with fake.lock:
                fake.requests.append(
                    Request(self.command, url.path, parse_qs(url.query), body, auth)
                )
                fault = next((f for f in fake.faults if f.times > 0 and f.method == self.command
                              and f.pattern.search(url.path)), None)  # fmt: skip
                if fault is not None:
                    fault.times -= 1
                if fault is not None and not fault.after:
                    status, answer = self._fault(fault)
                else:
                    status, answer = self._answer(url.path, parse_qs(url.query), body, auth)
                    if fault is not None:
                        status, answer = self._fault(fault)
            self._write(status, answer)

        def _fault(self, fault: Fault) -> tuple[int, Any]:
            if fault.status == 0:
                return 0, None
            titles = {
                429: "Too Many Requests",
                500: "Internal Server Error",
                503: "Service Unavailable",
            }
            details = {429: "You have exceeded the limit of 10 simultaneous connections."}
            return fault.status, Problem(
                fault.status, fault.title or titles.get(fault.status, "Bad Request"),
                fault.detail or details.get(fault.status, "An error occurred."),
            ).body()  # fmt: skip

        def _answer(
            self, path: str, query: dict[str, list[str]], body: Any, auth: str
        ) -> tuple[int, Any]:
            expected = "Basic " + base64.b64encode(f"user:{fake.api_key}".encode()).decode()
            if auth != expected:
                return 401, Problem(401, "API Key Invalid", "Your API key may be invalid, or you've attempted to access the wrong datacenter.").body()  # fmt: skip
            try:
                return fake.handle(self.command, path, query, body)
            except Problem as problem:
                return problem.status, problem.body()

        def _write(self, status: int, answer: Any) -> None:
            if status == 0:
                self.close_connection = True  # a lost answer: the client sees the line drop
                return
            if status == 204:
                self.send_response(204)
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            data = json.dumps(answer).encode()
            kind = "application/json" if status < 400 else "application/problem+json; charset=utf-8"
            self.send_response(status)
            self.send_header("Content-Type", kind)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        do_GET = do_PUT = do_POST = do_PATCH = do_DELETE = _serve

    return Handler
