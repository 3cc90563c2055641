"""The review page's requests and answers: login, queue, case, decisions, identity health (no sockets)."""

from __future__ import annotations

import logging
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta
from decimal import Decimal
from importlib.resources import files
from typing import Any

from jinja2 import Environment, PackageLoader, StrictUndefined

from mailer.config import Settings
from mailer.errors import MailerError
from mailer.flows.staff import Resolution, agree_instalments, resolve
from mailer.store.db import Store
from mailer.views import (
    case_sheet,
    identity_rows,
    local_time,
    promise_end,
    review_queue,
    short,
)
from mailer.web.auth import (
    Session,
    Sessions,
    clear_cookie,
    cookie_value,
    csrf_ok,
    origin_ok,
    set_cookie,
)

log = logging.getLogger(__name__)

# Sent with every answer: no scripts at all, styles from our own sheet, never in a frame,
# nothing cached (the pages hold debtors' words and amounts).
SECURITY_HEADERS = (
    (
        "Content-Security-Policy",
        "default-src 'none'; style-src 'self'; form-action 'self'; frame-ancestors 'none';"
        " base-uri 'none'",
    ),
    ("X-Content-Type-Options", "nosniff"),
    ("X-Frame-Options", "DENY"),
    ("Referrer-Policy", "same-origin"),
    ("Cache-Control", "no-store"),
)
_CASE = re.compile(r"^/case/(\d{1,12})(/decide)?$")
MAX_INSTALMENTS = 120
MAX_EVERY_DAYS = 366


@dataclass(frozen=True, slots=True)
class Request:
    method: str
    path: str  # without the query string
    host: str  # the Host header, already checked by the server
    headers: Mapping[str, str]  # names in lower case
    form: Mapping[str, str]  # a POST's fields (the last of a repeated name)
    now: datetime  # read from the clock by the server, at its edge
    query: Mapping[str, str] = field(default_factory=dict)  # the URL's (last of a name)


@dataclass
class Response:
    status: int
    body: bytes = b""
    headers: list[tuple[str, str]] = field(default_factory=list)

    @classmethod
    def redirect(cls, where: str, *headers: tuple[str, str]) -> Response:
        # 303: after a POST the browser GETs the page (reloading it posts nothing again).
        return cls(303, b"", [("Location", where), *headers])


# A page of this site to go back to after the login: a path of ours, never another site's
# address (no "//host", no scheme, no backslash tricks), so the login cannot be an open redirect.
_PAGE = re.compile(r"/(?:[A-Za-z0-9_-]+(?:/[A-Za-z0-9_-]+)*)?")


def _local_page(target: str | None) -> str:
    """``target`` if it is one of this site's pages, else the queue ("/")."""
    if target and _PAGE.fullmatch(target) and target != "/login":
        return target
    return "/"


class BadInput(MailerError):
    """A decision form filled in wrongly: said to the person, nothing changed."""


class ReviewSite:
    """Every page and decision; the database is opened per request (a thread's own connection)."""

    def __init__(
        self, settings: Settings, password: str, open_store: Callable[[], Store] | None = None
    ) -> None:
        assert settings.web is not None
        self.settings = settings
        self.sessions = Sessions(password, timedelta(hours=settings.web.session_hours))
        self.open_store = open_store or (lambda: Store.open(settings.database))
        self.tz = settings.creditor.timezone
        self.env = Environment(
            loader=PackageLoader("mailer.web", "templates"),
            autoescape=True,  # every value is escaped; nothing is marked safe anywhere
            undefined=StrictUndefined,
            trim_blocks=True,
            lstrip_blocks=True,
        )
        self.env.filters["local"] = lambda moment: local_time(moment, self.tz)
        self.env.filters["money"] = _money
        self.css = files("mailer.web").joinpath("style.css").read_bytes()

    # --- dispatch --------------------------------------------------------------------------

    def handle(self, request: Request) -> Response:
        try:
            response = self._route(request)
        except Exception:
            log.exception("review page: %s %s failed", request.method, request.path)
            response = self._page(500, "error.html", None, message="Something went wrong.")
        response.headers.extend(SECURITY_HEADERS)
        return response

    def _route(self, request: Request) -> Response:
        method, path, now = request.method, request.path, request.now
        if path == "/style.css" and method == "GET":
            return Response(200, self.css, [("Content-Type", "text/css; charset=utf-8")])
        if path == "/login":
            return self._login(request)
        session = self.sessions.get(cookie_value(request.headers.get("cookie")), now)
        if session is None:
            # A page asked for is sent to the login, which comes back to it; a form posted
            # without a session is refused.
            if method != "GET":
                return self._forbidden()
            back = _local_page(path)
            return Response.redirect(f"/login?next={back}" if back != "/" else "/login")
        if method == "POST":
            if not origin_ok(
                request.host, request.headers.get("origin"), request.headers.get("referer")
            ):
                log.warning("review page: POST %s from another origin refused", path)
                return self._forbidden()
            if not csrf_ok(session, request.form.get("csrf")):
                log.warning("review page: POST %s without a valid form token refused", path)
                return self._forbidden()
        case = _CASE.match(path)
        if method == "GET" and path == "/":
            return self._queue(session)
        if method == "GET" and path == "/identities":
            return self._identities(session, now)
        if method == "GET" and case and not case.group(2):
            return self._case(session, int(case.group(1)))
        if method == "POST" and case and case.group(2):
            return self._decide(request, session, int(case.group(1)))
        if method == "POST" and path == "/logout":
            self.sessions.logout(session.token)
            return Response.redirect("/login", ("Set-Cookie", clear_cookie()))
        return self._page(404, "error.html", session, message="No such page.")

    def _page(self, status: int, template: str, session: Session | None, **values: Any) -> Response:
        flash = None
        if session is not None:
            flash, session.flash = session.flash, None
        html = self.env.get_template(template).render(session=session, flash=flash, **values)
        return Response(
            status, html.encode("utf-8"), [("Content-Type", "text/html; charset=utf-8")]
        )

    def _forbidden(self) -> Response:
        return self._page(403, "error.html", None, message="Refused.")

    # --- pages -----------------------------------------------------------------------------

    def _login(self, request: Request) -> Response:
        now = request.now
        back = _local_page(request.form.get("next") or request.query.get("next"))
        if request.method == "GET":
            return self._page(200, "login.html", None, error=None, next=back)
        if request.method != "POST":
            return self._page(405, "error.html", None, message="Not allowed.")
        if not origin_ok(
            request.host, request.headers.get("origin"), request.headers.get("referer")
        ):
            return self._forbidden()
        if self.sessions.throttled(now):
            log.warning("review page: login refused, too many wrong passwords in a minute")
            return self._page(
                429, "login.html", None, error="Too many attempts: wait a minute.", next=back
            )
        session = self.sessions.login(
            request.form.get("password", ""), request.form.get("name", ""), now
        )
        if session is None:
            log.warning("review page: wrong password")  # never what was typed
            return self._page(401, "login.html", None, error="Wrong password.", next=back)
        log.info("review page: %s logged in", session.who)
        return Response.redirect(back, ("Set-Cookie", set_cookie(session, now)))

    def _queue(self, session: Session) -> Response:
        store = self.open_store()
        try:
            rows = review_queue(store)
        finally:
            store.close()
        return self._page(200, "queue.html", session, rows=rows, tz=self.tz)

    def _case(self, session: Session, case_id: int) -> Response:
        store = self.open_store()
        try:
            sheet = case_sheet(store, case_id)
        except MailerError:
            return self._page(404, "error.html", session, message=f"No case {case_id}.")
        finally:
            store.close()
        return self._page(200, "case.html", session, case=sheet)

    def _identities(self, session: Session, now: datetime) -> Response:
        store = self.open_store()
        try:
            rows = identity_rows(store, self.settings, now)
        finally:
            store.close()
        return self._page(200, "identities.html", session, identities=rows)

    # --- decisions -------------------------------------------------------------------------

    def _decide(self, request: Request, session: Session, case_id: int) -> Response:
        store = self.open_store()
        try:
            done = self._carry_out(store, case_id, request.form, request.now, session.who)
        except MailerError as exc:  # BadInput included: the person reads why, nothing changed
            session.flash = ("error", str(exc))
        else:
            session.flash = ("done", done)
            log.info("review page: %s decided on case %d", session.who, case_id,
                     extra={"case_id": case_id})  # fmt: skip
        finally:
            store.close()
        return Response.redirect(f"/case/{case_id}")

    def _carry_out(
        self, store: Store, case_id: int, form: Mapping[str, str], now: datetime, who: str
    ) -> str:
        """The same calls as `mailer resolve`; returns what was done, in one line."""
        action = form.get("action", "")
        note = short(form.get("note", ""), 500)
        if action in ("resume", "stop"):
            closed = resolve(store, case_id, Resolution(action), now, who, note=note)
            return f"Case {case_id}: {action}; {closed} review item(s) closed."
        if action == "promise":
            day = _day(form.get("promise_date", ""), "promise date")
            until = promise_end(store, case_id, day, self.settings.inbound.promise_grace_days)
            closed = resolve(store, case_id, Resolution.PROMISE, now, who, until=until, note=note)
            return (
                f"Case {case_id}: paused until {local_time(until, self.tz)}"
                f" (promised {day.isoformat()}); {closed} review item(s) closed."
            )
        if action == "instalments":
            count = _whole(form.get("count", ""), "instalments", MAX_INSTALMENTS)
            every = _whole(form.get("every", ""), "days between instalments", MAX_EVERY_DAYS)
            first_text = form.get("first", "").strip()
            first = _day(first_text, "first due date") if first_text else None
            schedule = agree_instalments(store, case_id, count, every, first, now, who)
            plan = ", ".join(
                f"{_money(amount)} due {due.isoformat()}" for _, due, amount in schedule
            )
            return f"Case {case_id}: instalment plan agreed: {plan}."
        raise BadInput(f"unknown decision {short(action, 40)!r}")


def _money(amount: Decimal) -> str:
    return f"{amount:,.2f}"


def _day(text: str, what: str) -> date:
    try:
        return date.fromisoformat(text.strip())
    except ValueError:
        raise BadInput(f"{what}: give a date as YYYY-MM-DD") from None


def _whole(text: str, what: str, most: int) -> int:
    value = text.strip()
    if not value.isdigit() or not 1 <= int(value) <= most:
        raise BadInput(f"{what}: give a whole number from 1 to {most}")
    return int(value)
