"""Prometheus metrics: a pure renderer of a health snapshot, and the tiny page that serves it.

The page is an asyncio server on the daemon's own event loop rather than http.server in a
thread: it starts and stops with the daemon, needs no thread of its own, and reads the
watchers' connection state on the loop's thread, where the watchers write it. The store
queries behind a scrape run in a worker thread on a connection of their own (read-only), so
a scrape never holds up sending or the watchdog.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable, Iterable, Mapping
from datetime import datetime

from mailer.errors import MailerError
from mailer.health import Snapshot

log = logging.getLogger(__name__)
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
Sample = tuple[Mapping[str, str], float]


def render(snapshot: Snapshot) -> str:
    """The Prometheus text format (0.0.4) of ``snapshot``."""
    out: list[str] = []

    def family(name: str, kind: str, text: str, samples: Iterable[Sample]) -> None:
        out.append(f"# HELP {name} {text}")
        out.append(f"# TYPE {name} {kind}")
        for labels, value in samples:
            out.append(f"{name}{_labels(labels)} {_number(value)}")

    def by(label: str, counts: Mapping[str, int]) -> list[Sample]:
        return [({label: key}, value) for key, value in sorted(counts.items())]

    messages = snapshot.messages
    family(
        "mailer_messages_sent_total", "counter", "Messages the SMTP server accepted.",
        [({}, messages.get("sent", 0))],
    )  # fmt: skip
    family(
        "mailer_messages_failed_total", "counter", "Messages given up (refused, or past their deadline).",
        [({}, messages.get("failed", 0))],
    )  # fmt: skip
    family(
        "mailer_send_deferrals_total", "counter",
        "Temporary send failures (4xx, timeouts), each retried later.", [({}, snapshot.deferrals)],
    )  # fmt: skip
    family("mailer_messages", "gauge", "Messages in each outbox state now.", by("state", messages))
    family(
        "mailer_queue_depth", "gauge", "Messages waiting to go (queued, deferred, sending).",
        [({}, snapshot.queue_depth)],
    )  # fmt: skip
    family(
        "mailer_bounces_total", "counter",
        "Bounce reports about our messages, by class (hard: the address is dead).",
        by("class", snapshot.bounces),
    )  # fmt: skip
    family(
        "mailer_replies_total", "counter", "Replies from debtors, by the intent read in them.",
        by("intent", snapshot.replies),
    )  # fmt: skip
    family(
        "mailer_inbound_total", "counter", "Case-related mail handled, by kind.",
        by("kind", snapshot.inbound),
    )  # fmt: skip
    family(
        "mailer_inbound_quarantined_total", "counter",
        "Mail that could not be read, kept for a person.", [({}, snapshot.quarantined)],
    )  # fmt: skip
    family("mailer_cases", "gauge", "Cases in each status now.", by("status", snapshot.cases))
    family(
        "mailer_reviews_open", "gauge", "Items waiting for a person in `mailer review`.",
        [({}, snapshot.open_reviews)],
    )  # fmt: skip
    idents = snapshot.identities
    family(
        "mailer_identity_sent_total", "counter", "Messages sent from each identity.",
        [({"identity": i.name}, i.sent) for i in idents],
    )  # fmt: skip
    family(
        "mailer_identity_likely_blocks_total", "counter",
        "Verdicts that a debtor's side likely blocks this identity.",
        [({"identity": i.name}, i.likely_blocks) for i in idents],
    )  # fmt: skip
    family(
        "mailer_identity_last_smtp_send_timestamp_seconds", "gauge",
        "When the identity's last message was accepted (Unix time; absent: never).",
        [({"identity": i.name}, _unix(i.last_smtp_send)) for i in idents if i.last_smtp_send],
    )  # fmt: skip
    family(
        "mailer_identity_last_imap_contact_timestamp_seconds", "gauge",
        "When the identity's mailbox was last read through (Unix time; absent: not yet).",
        [({"identity": i.name}, _unix(i.last_imap_contact)) for i in idents if i.last_imap_contact],
    )  # fmt: skip
    family(
        "mailer_identity_mailbox_connected", "gauge",
        "1 while the watcher holds a connection to the identity's mailbox.",
        [({"identity": i.name}, 1 if i.connected else 0) for i in idents if i.watched],
    )  # fmt: skip
    return "\n".join(out) + "\n"


def _labels(labels: Mapping[str, str]) -> str:
    if not labels:
        return ""
    inner = ",".join(f'{key}="{_escape(value)}"' for key, value in labels.items())
    return "{" + inner + "}"


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def _number(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else repr(float(value))


def _unix(moment: datetime | None) -> float:
    return moment.timestamp() if moment else 0.0


class MetricsServer:
    """GET /metrics on a loopback port: each request renders a fresh snapshot."""

    def __init__(self, host: str, port: int, snapshot: Callable[[], Awaitable[Snapshot]]) -> None:
        self.host = host
        self.port = port  # 0 until started: then the port actually bound
        self._snapshot = snapshot
        self._server: asyncio.Server | None = None

    @property
    def address(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{host}:{self.port}"

    async def start(self) -> None:
        try:
            self._server = await asyncio.start_server(self._handle, self.host, self.port)
        except OSError as exc:
            raise MailerError(f"metrics: cannot listen on {self.address}: {exc.strerror}") from exc
        self.port = int(self._server.sockets[0].getsockname()[1])
        log.info("metrics on http://%s/metrics", self.address)

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
            self._server = None

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            # The request head only; a client that dawdles or sends 64 KiB of it is dropped.
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
            parts = head.split(b"\r\n", 1)[0].decode("latin-1").split(" ")
            method, target = (parts[0], parts[1]) if len(parts) == 3 else ("", "")
            if method not in ("GET", "HEAD"):
                status, body = "405 Method Not Allowed", "GET /metrics\n"
            elif target.split("?", 1)[0] != "/metrics":
                status, body = "404 Not Found", "mailer serves /metrics only\n"
            else:
                try:
                    status, body = "200 OK", render(await self._snapshot())
                except Exception:
                    log.exception("metrics: reading the snapshot failed")
                    status, body = "500 Internal Server Error", "see the log\n"
            data = body.encode("utf-8")
            writer.write(
                f"HTTP/1.1 {status}\r\nContent-Type: {CONTENT_TYPE}\r\n"
                f"Content-Length: {len(data)}\r\nConnection: close\r\n\r\n".encode("ascii")
            )
            if method != "HEAD":
                writer.write(data)
            await writer.drain()
        except (TimeoutError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, OSError):
            pass  # the client went away or misbehaved: nothing to answer
        finally:
            writer.close()
            with contextlib.suppress(OSError):
                await writer.wait_closed()
