"""The review page over plain HTTP: sessions, CSRF, Origin and Host checks, escaping, decisions."""

from __future__ import annotations

import os
import queue
import shutil
import signal
import subprocess
import sys
import threading
from pathlib import Path
from urllib.parse import quote

import pytest
from reviewpage import (
    HARDSHIP,
    HOSTILE,
    PASSWORD_ENV,
    WEB_PASSWORD,
    Client,
    Served,
    case_state,
    scene,
    served,
)

from mailer.config import load_settings
from mailer.errors import ConfigError

__all__ = ["scene", "served"]  # the fixtures, from reviewpage

DECISION = {"action": "promise", "promise_date": "2026-01-20"}
TYPO = "Tr0ub4dor&3-typo"


def test_every_page_but_login_needs_a_session(served: Served) -> None:
    client = Client(served.url)
    before = case_state(served.store, 2)
    for path, login in (
        ("/", "/login"),
        ("/case/2", "/login?next=/case/2"),
        ("/identities", "/login?next=/identities"),
        ("/nothing", "/login?next=/nothing"),
    ):
        answer = client.get(path)
        assert (answer.status, answer.location) == (303, login)
    assert client.post("/case/2/decide", {**DECISION, "csrf": "x"}).status == 403
    assert client.post("/logout", {"csrf": "x"}).status == 403
    # A made-up session cookie is no session.
    client.cookie = "mailer_session=forged"
    assert client.get("/case/2").status == 303
    assert client.post("/case/2/decide", {**DECISION, "csrf": "x"}).status == 403
    assert case_state(served.store, 2) == before
    login = client.get("/login")
    assert login.status == 200 and 'type="password"' in login.text


def test_the_login_goes_back_to_the_page_asked_for_and_only_to_this_site(
    served: Served,
) -> None:
    client = Client(served.url)
    login = client.get(client.get("/case/2").location)
    assert 'name="next" value="/case/2"' in login.text
    answer = client.post("/login", {"name": "Ana", "password": WEB_PASSWORD, "next": "/case/2"})
    assert (answer.status, answer.location) == (303, "/case/2")
    assert "Set-Cookie" in answer.headers
    # Anywhere else is the queue: the login is never a way to send someone to another site.
    for elsewhere in (
        "//evil.example/x", "https://evil.example/", "/\\evil.example", "/case/2?x=1",
        "javascript:alert(1)", "/login", "", "/../etc",
    ):  # fmt: skip
        other = Client(served.url)
        answer = other.post("/login", {"name": "Ana", "password": WEB_PASSWORD, "next": elsewhere})
        assert (answer.status, answer.location) == (303, "/"), elsewhere
        page = other.get(f"/login?next={quote(elsewhere, safe='')}")
        assert 'name="next" value="/"' in page.text


def test_a_wrong_password_is_refused_and_logins_pause_after_five(served: Served) -> None:
    client = Client(served.url)
    answer = client.login("wrong password!")
    assert answer.status == 401 and "Wrong password" in answer.text
    assert answer.headers.get("Set-Cookie") is None and client.cookie is None
    assert client.get("/").status == 303
    for _ in range(4):
        assert client.login("still wrong").status == 401
    throttled = client.login()  # the right password, but too many wrong ones just before
    assert throttled.status == 429 and client.cookie is None
    served.clock.advance(minutes=2)
    assert client.login().status == 303
    assert client.get("/").status == 200


def test_the_session_cookie_and_the_security_headers(served: Served) -> None:
    client = Client(served.url)
    answer = client.login()
    assert answer.location == "/"
    cookie = answer.headers["Set-Cookie"]
    assert "HttpOnly" in cookie and "SameSite=Strict" in cookie and "Path=/" in cookie
    page = client.get("/")
    assert page.status == 200
    assert "script-src" not in page.headers["Content-Security-Policy"]  # default-src 'none'
    assert "default-src 'none'" in page.headers["Content-Security-Policy"]
    assert page.headers["X-Frame-Options"] == "DENY"
    assert page.headers["Cache-Control"] == "no-store"
    assert page.headers["Server"].startswith("mailer") and "Python" not in page.headers["Server"]
    # The session ends after session_hours (12 by default)...
    served.clock.advance(hours=13)
    assert client.get("/").status == 303
    # ...and at logout, for good.
    client.cookie = None
    client.login()
    assert client.post("/logout", {"csrf": client.csrf()}).location == "/login"
    assert client.get("/").status == 303


def test_forms_without_the_right_token_or_origin_change_nothing(served: Served) -> None:
    client = Client(served.url)
    client.login()
    token = client.csrf()
    before = case_state(served.store, 2)
    refused = [
        client.post("/case/2/decide", DECISION),  # no token
        client.post("/case/2/decide", {**DECISION, "csrf": token[:-2] + "xx"}),  # wrong token
        client.post("/case/2/decide", {**DECISION, "csrf": ""}),
        # the right token, posted from another site, or from nowhere the browser would say
        client.post("/case/2/decide", {**DECISION, "csrf": token}, Origin="http://evil.example"),
        client.post(
            "/case/2/decide",
            {**DECISION, "csrf": token},
            Origin="",
            Referer="http://evil.example/page",
        ),
        client.post("/case/2/decide", {**DECISION, "csrf": token}, Origin="", Referer=""),
    ]
    assert [a.status for a in refused] == [403] * len(refused)
    assert case_state(served.store, 2) == before
    # Another session's token is no good either.
    other = Client(served.url)
    other.login(name="Bea")
    assert other.post("/case/2/decide", {**DECISION, "csrf": token}).status == 403
    assert case_state(served.store, 2) == before
    # The same form with its own token and origin goes through (so the refusals above mean it).
    done = client.post("/case/2/decide", {**DECISION, "csrf": token}, Origin="", Referer=client.url)
    assert (done.status, done.location) == (303, "/case/2")
    status, reviews, events = case_state(served.store, 2)
    assert (status, reviews) == ("paused", 0) and events > before[2]


def test_a_page_asked_for_under_another_host_name_is_refused(served: Served) -> None:
    # DNS rebinding: a site whose name now resolves to 127.0.0.1 gets nothing, not even a login.
    port = served.url.rsplit(":", 1)[1].rstrip("/")
    client = Client(served.url)
    assert client.get("/login", Host=f"evil.example:{port}").status == 421
    assert (
        client.post("/login", {"password": WEB_PASSWORD}, Host=f"evil.example:{port}").status == 421
    )
    assert client.get("/login", Host=f"localhost:{port}").status == 200


def test_reply_text_is_shown_escaped(served: Served) -> None:
    client = Client(served.url)
    client.login()
    queue = client.get("/")
    assert "<script>" not in queue.text and "<img" not in queue.text
    assert "&lt;script&gt;alert(&#34;x&#34;)&lt;/script&gt;&lt;img src=x onerror=alert(1)&gt;" in (
        queue.text
    )
    assert HARDSHIP in queue.text and "hardship" in queue.text  # the text and its intent
    assert "1,210.00 EUR" in queue.text and "500.00 EUR" in queue.text  # what each owes
    case = client.get("/case/1")
    assert case.status == 200 and "<script>" not in case.text and "&lt;script&gt;" in case.text
    assert HOSTILE not in case.text


def test_decisions_go_through_the_staff_flow_with_the_name_recorded(served: Served) -> None:
    client = Client(served.url)
    client.login(name="Ana <b>")
    token = client.csrf()
    stop = client.post("/case/1/decide", {"action": "stop", "note": "lawyer", "csrf": token})
    assert stop.location == "/case/1"
    page = client.get("/case/1")
    assert "Case 1: stop; 1 review item(s) closed." in page.text
    assert "stopped by staff: lawyer" in page.text
    assert case_state(served.store, 1)[:2] == ("stopped", 0)
    plan = client.post(
        "/case/2/decide", {"action": "instalments", "count": "2", "every": "30", "csrf": token}
    )
    assert plan.location == "/case/2"
    page = client.get("/case/2")
    assert "250.00 due 2026-02-07, 250.00 due 2026-03-09" in page.text
    assert case_state(served.store, 2)[:2] == ("instalments", 0)
    kinds = [
        (e["kind"], e["data"].get("by"))
        for e in served.store.events(1) + served.store.events(2)
        if e["kind"] in ("case_resolved", "instalments_agreed")
    ]
    assert kinds == [("case_resolved", "Ana <b> (web)"), ("instalments_agreed", "Ana <b> (web)")]
    assert "Ana &lt;b&gt; (web)" in page.text  # the name is shown escaped too
    assert client.get("/").text.count('class="review"') == 0


def test_a_wrong_decision_is_explained_and_changes_nothing(served: Served) -> None:
    client = Client(served.url)
    client.login()
    token = client.csrf()
    before = case_state(served.store, 2)
    for form in (
        {"action": "promise", "promise_date": "next week"},
        {"action": "instalments", "count": "0", "every": "30"},
        {"action": "instalments", "count": "3", "every": "30", "first": "2025-01-01"},
        {"action": "forgive"},
    ):
        answer = client.post("/case/2/decide", {**form, "csrf": token})
        assert answer.location == "/case/2"
        assert 'class="flash error"' in client.get("/case/2").text
    assert case_state(served.store, 2) == before
    assert client.get("/case/99").status == 404


def test_identity_health(served: Served) -> None:
    client = Client(served.url)
    client.login()
    page = client.get("/identities")
    assert page.status == 200
    row = page.text.split('id="identity-cobros"')[1].split("</tr>")[0]
    cells = [c.split("<")[0] for c in row.split('class="num">')[1:]]
    assert cells[:3] == ["2", "2", "0"]  # sent, accepted, not accepted: the two reminders


def _config(tmp_path: Path, scene: Path, web: str) -> Path:
    text = (scene / "mailer.toml").read_text(encoding="utf-8").split("\n[web]")[0]
    path = tmp_path / "mailer.toml"
    path.write_text(f"{text}\n[web]\n{web}", encoding="utf-8")
    return path


def test_web_config_is_checked_with_file_and_line(tmp_path: Path, scene: Path) -> None:
    path = _config(
        tmp_path,
        scene,
        'listen = "0.0.0.0:8025"\npassword = "hunter2hunter2"\nsession_hours = 0\n',
    )
    with pytest.raises(ConfigError) as refused:
        load_settings(path)
    lines = path.read_text(encoding="utf-8").splitlines()
    at = {p.split(":")[1]: p for p in refused.value.problems}
    listen, password, hours = (
        str(next(n for n, line in enumerate(lines, 1) if line.startswith(key)))
        for key in ("listen =", "password =", "session_hours =")
    )
    assert "not a loopback address" in at[listen]
    assert "never go in the file" in at[password]
    assert "session_hours" in at[hours]
    assert any("needs password_env or password_file" in p for p in refused.value.problems)
    assert "hunter2" not in "\n".join(refused.value.problems)
    remote = load_settings(
        _config(tmp_path, scene, 'listen = "[::]:8025"\nallow_remote = true\npassword_env = "X"\n')
    )
    assert remote.web is not None and (remote.web.host, remote.web.port) == ("::", 8025)
    default = load_settings(_config(tmp_path, scene, 'password_file = "/run/credentials/web"\n'))
    assert default.web is not None and (default.web.host, default.web.port) == ("127.0.0.1", 8025)


@pytest.mark.parametrize("command", ["web", "run"])
def test_mailer_web_and_mailer_run_serve_the_page(
    command: str, scene: Path, tmp_path: Path
) -> None:
    """The real commands: the page answers, the password is not logged, SIGTERM stops cleanly."""
    work = tmp_path / "work"
    shutil.copytree(scene, work)
    env = {**os.environ, PASSWORD_ENV: WEB_PASSWORD, "MAILER_DEMO_PASSWORD": "unused"}
    args = [sys.executable, "-m", "mailer.cli", "--config", str(work / "mailer.toml")]
    # --now pins the clock; `mailer run` then sends nothing (the servers are gone) and only
    # logs its failed attempts, which is all this test needs of it.
    process = subprocess.Popen(
        [*args, "--now", "2026-01-08T10:00:00+00:00", command],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        env=env,
        text=True,
    )
    lines: queue.Queue[str | None] = queue.Queue()
    reader = threading.Thread(target=_read_lines, args=(process, lines), daemon=True)
    reader.start()
    seen: list[str] = []
    try:
        url = _wait_for_url(lines, seen)
        client = Client(url)
        assert client.get("/login").status == 200
        assert client.login().status == 303
        assert client.login(TYPO).status == 401
        assert "Case 2" in client.get("/").text
    finally:
        process.send_signal(signal.SIGTERM)
        process.wait(timeout=60)
        reader.join(timeout=60)
        assert process.stdout is not None
        process.stdout.close()
    while not lines.empty():
        seen.append(lines.get() or "")
    output = "".join(seen)
    assert process.returncode == 0, output
    assert "wrong password" in output  # the attempt is logged...
    assert WEB_PASSWORD not in output and TYPO not in output  # ...never what was typed
    assert "mailer_session=" not in output


def _read_lines(process: subprocess.Popen[str], lines: queue.Queue[str | None]) -> None:
    assert process.stdout is not None
    for line in process.stdout:
        lines.put(line)
    lines.put(None)  # the command's output has ended


def _wait_for_url(lines: queue.Queue[str | None], seen: list[str]) -> str:
    """The address the command prints (`mailer web`) or logs (`mailer run`) once it listens."""
    while True:
        try:
            line = lines.get(timeout=60)
        except queue.Empty:
            raise AssertionError(
                "no review page address within a minute:\n" + "".join(seen)
            ) from None
        if line is None:
            raise AssertionError("the command ended:\n" + "".join(seen))
        seen.append(line)
        if "review page on http://" in line:
            return line.split("review page on ")[1].split()[0]
