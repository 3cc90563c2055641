"""The review page's test scene: two cases whose debtors replied, read by the real watcher; a served page."""

from __future__ import annotations

import asyncio
import http.client
import re
import shutil
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from urllib.parse import urlencode

import pytest
from loopback import PASSWORD
from office import START, Office, answer, sent_to
from test_watcher import BILLING, HEADER, LEDGER

from mailer.app import App
from mailer.config import load_settings
from mailer.demo import demo_users, write_config
from mailer.ledger import parse_invoices
from mailer.localservers import deliver, running_local_servers
from mailer.store.db import Store
from mailer.store.ledger import import_invoices
from mailer.web import WebServer, build_web

WEB_PASSWORD = "correct horse battery staple"
PASSWORD_ENV = "MAILER_TEST_WEB_PASSWORD"
NOW = datetime(2026, 1, 8, 10, 0, tzinfo=UTC)
# Acme's reply tries to smuggle markup into the page; Beta asks for instalments.
HOSTILE = (
    '<script>alert("x")</script><img src=x onerror=alert(1)> No estamos de acuerdo con el importe.'
)
HARDSHIP = "¿Podemos pagarlo en tres plazos?"


@pytest.fixture(scope="module")
def scene(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A config and database after a real exchange: reminders sent, two replies read over IMAP.

    Built once per module (it takes a few seconds of real SMTP and IMAP); each test serves a
    copy of it (``served``), so what one test decides never reaches another.
    """
    root = tmp_path_factory.mktemp("scene")
    work = root / "work"
    work.mkdir()
    # In a thread of its own: Playwright's sync API keeps an event loop running in this one.
    with ThreadPoolExecutor(1) as pool:
        pool.submit(_exchange, root, work).result()
    with (work / "mailer.toml").open("a", encoding="utf-8") as f:
        f.write(f'\n[web]\nlisten = "127.0.0.1:0"\npassword_env = "{PASSWORD_ENV}"\n')
    return work


def _exchange(root: Path, work: Path) -> None:
    with running_local_servers(root / "servers", demo_users(PASSWORD)) as servers:
        settings = load_settings(write_config(work, servers, grace_seconds=0))
        app = App.open(settings)
        ledger = work / "invoices.csv"
        ledger.write_text(HEADER + LEDGER, encoding="utf-8")
        import_invoices(app.store, parse_invoices(ledger), START, "invoices.csv", settings.profiles)
        inbox = servers.mailbox_path(BILLING)

        async def exchange() -> None:
            office = Office(app)
            await office.until_sent("admin@beta.example")
            acme = sent_to(app, "pay@acme.example")[0]
            beta = sent_to(app, "admin@beta.example")[0]
            deliver(inbox, answer(app, acme, "pay@acme.example", HOSTILE, office.now))
            deliver(inbox, answer(app, beta, "admin@beta.example", HARDSHIP, office.now))
            assert (await office.sync()).stored == 2
            await office.close()

        try:
            asyncio.run(exchange())
        finally:
            app.store.close()


@dataclass
class Clock:
    """The page's clock, moved by the test (the server reads it once per request)."""

    now: datetime = NOW

    def __call__(self) -> datetime:
        return self.now

    def advance(self, **delta: float) -> None:
        self.now += timedelta(**delta)


@dataclass
class Served:
    server: WebServer
    store: Store  # the copy's database, for checking what changed
    clock: Clock

    @property
    def url(self) -> str:
        return self.server.url


@pytest.fixture
def served(scene: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Served]:
    """A copy of the scene, its review page listening on an ephemeral loopback port."""
    work = tmp_path / "work"
    shutil.copytree(scene, work)
    monkeypatch.setenv(PASSWORD_ENV, WEB_PASSWORD)
    settings = load_settings(work / "mailer.toml")
    clock = Clock()
    server = build_web(settings, clock)
    assert server is not None
    server.start()
    store = Store.open(settings.database)
    try:
        yield Served(server, store, clock)
    finally:
        server.stop()
        store.close()


@dataclass
class Answer:
    status: int
    headers: http.client.HTTPMessage
    text: str

    @property
    def location(self) -> str | None:
        return self.headers.get("Location")


@dataclass
class Client:
    """A plain HTTP client that follows no redirect and keeps our session cookie by hand."""

    url: str
    cookie: str | None = None
    extra: dict[str, str] = field(default_factory=dict)

    @property
    def origin(self) -> str:
        return self.url.rstrip("/")

    def request(
        self,
        method: str,
        path: str,
        form: dict[str, str] | None = None,
        headers: dict[str, str] | None = None,
    ) -> Answer:
        host, port = self.url.split("/")[2].rsplit(":", 1)
        conn = http.client.HTTPConnection(host, int(port), timeout=30)
        sent = {"Origin": self.origin, **self.extra, **(headers or {})}
        sent = {k: v for k, v in sent.items() if v}  # an empty value: leave the header out
        if self.cookie:
            sent["Cookie"] = self.cookie
        body = None
        if form is not None:
            body = urlencode(form).encode()
            sent["Content-Type"] = "application/x-www-form-urlencoded"
        try:
            conn.request(method, path, body=body, headers=sent)
            response = conn.getresponse()
            answer = Answer(response.status, response.headers, response.read().decode())
        finally:
            conn.close()
        return answer

    def get(self, path: str, **headers: str) -> Answer:
        return self.request("GET", path, headers=headers)

    def post(self, path: str, form: dict[str, str], **headers: str) -> Answer:
        return self.request("POST", path, form, headers)

    def login(self, password: str = WEB_PASSWORD, name: str = "Ana") -> Answer:
        answer = self.post("/login", {"name": name, "password": password})
        cookie = answer.headers.get("Set-Cookie")
        if answer.status == 303 and cookie:
            self.cookie = cookie.split(";")[0]
        return answer

    def csrf(self, path: str = "/") -> str:
        found = re.search(r'name="csrf" value="([^"]+)"', self.get(path).text)
        assert found, "no form token on the page"
        return found.group(1)


def case_state(store: Store, case_id: int) -> tuple[str, int, int]:
    """(status, open review items, events) of a case: what a refused request must not change."""
    (status,) = store.conn.execute("SELECT status FROM cases WHERE id = ?", (case_id,)).fetchone()
    (reviews,) = store.conn.execute(
        "SELECT count(*) FROM reviews WHERE case_id = ? AND resolved_at IS NULL", (case_id,)
    ).fetchone()
    (events,) = store.conn.execute(
        "SELECT count(*) FROM events WHERE case_id = ?", (case_id,)
    ).fetchone()
    return status, reviews, events
