"""The review page on a socket: a small threaded HTTP server, on loopback, in a thread of its own."""

from __future__ import annotations

import logging
import signal
import socket
import threading
from collections.abc import Callable
from datetime import datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import FrameType
from urllib.parse import parse_qsl, urlsplit

from mailer.config import Settings, WebSettings, is_loopback, read_web_secret
from mailer.errors import ConfigError, MailerError
from mailer.web.site import SECURITY_HEADERS, Request, Response, ReviewSite

log = logging.getLogger(__name__)
Clock = Callable[[], datetime]

MAX_BODY = 64 * 1024  # the largest form is a few hundred bytes
MIN_PASSWORD = 12  # characters; a token from `openssl rand -base64 24` has 32


class _Server(ThreadingHTTPServer):
    daemon_threads = True  # a browser's idle keep-alive never holds up a stop
    site: ReviewSite
    clock: Clock
    hosts: frozenset[str] | None  # the Host values we answer to; None: any (allow_remote)


class _Server6(_Server):
    address_family = socket.AF_INET6


class _Handler(BaseHTTPRequestHandler):
    server: _Server
    server_version = "mailer"
    sys_version = ""  # not the Python version
    timeout = 30  # a client that stops sending mid-request frees its thread

    def do_GET(self) -> None:
        self._answer("GET")

    def do_POST(self) -> None:
        self._answer("POST")

    def _answer(self, method: str) -> None:
        now = self.server.clock()  # the only clock read of a request
        host = self.headers.get("Host", "").lower()
        if self.server.hosts is not None and host not in self.server.hosts:
            # DNS rebinding: a page elsewhere whose name now points at 127.0.0.1.
            self._send(_plain(421, "unknown host"))
            return
        form: dict[str, str] = {}
        if method == "POST":
            refused = self._read_form(form)
            if refused is not None:
                self._send(refused)
                return
        url = urlsplit(self.path)
        try:
            query = dict(parse_qsl(url.query, max_num_fields=10))
        except ValueError:
            query = {}  # a query this site never makes: as if there were none
        request = Request(
            method=method,
            path=url.path,
            query=query,
            host=host,
            headers={name.lower(): value for name, value in self.headers.items()},
            form=form,
            now=now,
        )
        self._send(self.server.site.handle(request))

    def _read_form(self, form: dict[str, str]) -> Response | None:
        length_text = self.headers.get("Content-Length", "")
        if not length_text.isdigit() or int(length_text) > MAX_BODY:
            return _plain(413, "form too large or without a length")
        if self.headers.get_content_type() != "application/x-www-form-urlencoded":
            return _plain(415, "forms only")
        body = self.rfile.read(int(length_text))
        try:
            form.update(parse_qsl(body.decode("utf-8"), keep_blank_values=True, max_num_fields=50))
        except (UnicodeDecodeError, ValueError):
            return _plain(400, "unreadable form")
        return None

    def _send(self, response: Response) -> None:
        self.send_response(response.status)
        for name, value in response.headers:
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(response.body)))
        self.end_headers()
        self.wfile.write(response.body)

    def log_message(self, format: str, *args: object) -> None:
        # The request line and status only: cookies and form fields are never logged.
        log.debug("review page: " + format, *args)


def _plain(status: int, text: str) -> Response:
    return Response(
        status, text.encode(), [("Content-Type", "text/plain; charset=utf-8"), *SECURITY_HEADERS]
    )


def _url_host(host: str) -> str:
    return f"[{host}]" if ":" in host else host


class WebServer:
    """The review page listening on ``host:port``; ``start`` binds and serves from a thread."""

    def __init__(self, site: ReviewSite, web: WebSettings, clock: Clock) -> None:
        if not (web.allow_remote or is_loopback(web.host)):
            raise ConfigError([f"[web]: {web.host} is not loopback and allow_remote is not set"])
        self.site, self.web, self.clock = site, web, clock
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None

    @property
    def port(self) -> int:
        assert self._server is not None, "start() first"
        return int(self._server.server_address[1])

    @property
    def url(self) -> str:
        return f"http://{_url_host(self.web.host)}:{self.port}/"

    def start(self) -> None:
        cls = _Server6 if ":" in self.web.host else _Server
        try:
            server = cls((self.web.host, self.web.port), _Handler)
        except OSError as exc:
            raise MailerError(
                f"review page: cannot listen on {self.web.host}:{self.web.port}: {exc.strerror}"
            ) from exc
        server.site, server.clock = self.site, self.clock
        port = server.server_address[1]
        names = ("127.0.0.1", "localhost", "[::1]", _url_host(self.web.host))
        server.hosts = None if self.web.allow_remote else frozenset(f"{n}:{port}" for n in names)
        self._server = server
        self._thread = threading.Thread(
            target=server.serve_forever, name="review-page", daemon=True
        )
        self._thread.start()
        log.info("review page on %s", self.url)

    def stop(self) -> None:
        if self._server is None:
            return
        self._server.shutdown()
        self._server.server_close()
        if self._thread is not None:
            self._thread.join()
        self._server = self._thread = None


def build_web(settings: Settings, clock: Clock) -> WebServer | None:
    """The review page as configured in [web] (not yet listening); None without [web]."""
    if settings.web is None:
        return None
    password = read_web_secret(settings.web)
    if len(password) < MIN_PASSWORD:
        raise ConfigError([f"[web]: the password must be at least {MIN_PASSWORD} characters"])
    return WebServer(ReviewSite(settings, password), settings.web, clock)


def serve(settings: Settings, clock: Clock, started: Callable[[str], None]) -> None:
    """`mailer web`: serve until SIGTERM or Ctrl-C; ``started`` is told the address."""
    server = build_web(settings, clock)
    if server is None:
        raise MailerError("no [web] section in the configuration: see README, Review page")
    stop = threading.Event()

    def on_signal(signum: int, frame: FrameType | None) -> None:
        stop.set()

    previous = signal.signal(signal.SIGTERM, on_signal)
    server.start()
    try:
        started(server.url)
        stop.wait()
    except KeyboardInterrupt:
        pass
    finally:
        server.stop()
        signal.signal(signal.SIGTERM, previous)
