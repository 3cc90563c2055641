"""Who may use the review page: the password check, server-side sessions, CSRF and Origin checks."""

from __future__ import annotations

import hashlib
import hmac
import secrets
import threading
from collections import deque
from dataclasses import dataclass, field
from datetime import datetime, timedelta

COOKIE = "mailer_session"
MAX_SESSIONS = 200  # a handful of staff; the oldest login goes first beyond this
MAX_FAILURES = 5  # wrong passwords within FAILURE_WINDOW before logins pause
FAILURE_WINDOW = timedelta(minutes=1)


@dataclass
class Session:
    """Kept in this process only: a restart logs everyone out, and nothing needs signing."""

    token: str  # the cookie's value: 256 random bits
    who: str  # recorded with every decision, e.g. "Ana (web)"
    csrf: str  # every form carries it; a page on another site cannot read it
    expires: datetime
    flash: tuple[str, str] | None = None  # (kind, text) shown once, after a redirect


def _digest(text: str) -> bytes:
    # Comparing digests keeps the comparison's time independent of the password's length.
    return hashlib.sha256(text.encode("utf-8")).digest()


def same(a: str, b: str) -> bool:
    """Constant-time equality of two secrets."""
    return hmac.compare_digest(_digest(a), _digest(b))


def who_from(name: str) -> str:
    """The name staff give at login, as the event log records it (one short printable line)."""
    clean = " ".join("".join(ch for ch in name if ch.isprintable()).split())[:60]
    return f"{clean} (web)" if clean else "web"


@dataclass
class Sessions:
    """Logins and their sessions; safe to use from the server's request threads."""

    password: str
    lifetime: timedelta
    _sessions: dict[str, Session] = field(default_factory=dict)
    _failures: deque[datetime] = field(default_factory=deque)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def throttled(self, now: datetime) -> bool:
        """Too many wrong passwords lately: refuse logins (even right ones) for a while."""
        with self._lock:
            while self._failures and now - self._failures[0] > FAILURE_WINDOW:
                self._failures.popleft()
            return len(self._failures) >= MAX_FAILURES

    def login(self, password: str, name: str, now: datetime) -> Session | None:
        if not same(password, self.password):
            with self._lock:
                self._failures.append(now)
            return None
        session = Session(
            token=secrets.token_urlsafe(32),
            who=who_from(name),
            csrf=secrets.token_urlsafe(32),
            expires=now + self.lifetime,
        )
        with self._lock:
            # A fresh token at every login: a token planted before it is worth nothing.
            self._sessions[session.token] = session
            while len(self._sessions) > MAX_SESSIONS:
                del self._sessions[next(iter(self._sessions))]
        return session

    def get(self, token: str | None, now: datetime) -> Session | None:
        if not token:
            return None
        with self._lock:
            session = self._sessions.get(token)
            if session is not None and session.expires <= now:
                del self._sessions[token]
                return None
            return session

    def logout(self, token: str) -> None:
        with self._lock:
            self._sessions.pop(token, None)


def csrf_ok(session: Session, sent: str | None) -> bool:
    return sent is not None and same(sent, session.csrf)


def origin_ok(host: str, origin: str | None, referer: str | None) -> bool:
    """A form posted from our own pages: Origin (or, lacking it, Referer) names this host."""
    ours = (f"http://{host}", f"https://{host}")
    if origin is not None:
        return origin in ours
    if referer is not None:
        return any(referer.startswith(f"{o}/") for o in ours)
    return False  # browsers send at least one on a form post; a request with neither is not ours


def cookie_value(header: str | None) -> str | None:
    """Our session cookie's value from a Cookie header (other cookies on the host ignored)."""
    for part in (header or "").split(";"):
        name, _, value = part.strip().partition("=")
        if name == COOKIE and value:
            return value
    return None


def set_cookie(session: Session, now: datetime) -> str:
    seconds = max(int((session.expires - now).total_seconds()), 0)
    # No Secure flag: the page is served over plain HTTP on loopback (TLS is a proxy's job).
    return f"{COOKIE}={session.token}; HttpOnly; SameSite=Strict; Path=/; Max-Age={seconds}"


def clear_cookie() -> str:
    return f"{COOKIE}=; HttpOnly; SameSite=Strict; Path=/; Max-Age=0"
