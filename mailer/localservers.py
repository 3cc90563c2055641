"""Real SMTP (aiosmtpd) and IMAP (pymap, maildir) servers on loopback, for `mailer demo` and tests."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import logging
import os
import threading
import time
import uuid
from collections.abc import AsyncIterator, Iterator, Mapping, Sequence
from contextlib import AsyncExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from aiosmtpd.smtp import SMTP, AuthResult, Envelope, LoginPassword, Session

from mailer.localservers_pymap import HOST, SENT_FOLDER, close_server, start_imap

SINK_FILE = "smtp-sink.jsonl"

# A fail rule: one reply for every attempt, or replies consumed in order, then accept.
FailRule = str | Sequence[str]
# Keys: a recipient address (replied at RCPT TO) or the 1-based number of a message
# transaction on this server (replied at end of DATA instead of 250).
FailRules = Mapping[str | int, FailRule]


@dataclass(frozen=True, slots=True)
class SinkMessage:
    """One message the SMTP server accepted, exactly as received."""

    envelope_from: str
    rcpt_tos: tuple[str, ...]
    data: bytes


def read_sink(root: Path) -> list[SinkMessage]:
    """Every message accepted by servers started under ``root``, in order (any process)."""
    path = root / SINK_FILE
    if not path.exists():
        return []
    result = []
    for line in path.read_text(encoding="utf-8").splitlines():
        row = json.loads(line)
        result.append(SinkMessage(row["from"], tuple(row["to"]), base64.b64decode(row["data"])))
    return result


def maildir_path(maildir_root: Path, address: str) -> Path:
    local, _, domain = address.lower().partition("@")
    return maildir_root / domain / local


def deliver(mailbox: Path, data: bytes, folder: str = "INBOX") -> Path:
    """Put ``data`` in a maildir folder atomically: written in tmp/, then renamed into new/."""
    base = mailbox if folder == "INBOX" else mailbox / f".{folder}"
    name = f"{time.time_ns()}.{uuid.uuid4().hex}.mailer"
    tmp = base / "tmp" / name
    # No fsync: these servers stand in for a provider in demos and tests and are never asked
    # to survive a power cut; the rename alone keeps readers from seeing half a message.
    with open(tmp, "wb") as fh:
        fh.write(data)
    target = base / "new" / name
    os.rename(tmp, target)
    return target


def _make_maildir(mailbox: Path) -> None:
    # Maildir++ as pymap's "++" layout reads it: the root is INBOX, folders are ".Name".
    for base in (mailbox, mailbox / f".{SENT_FOLDER}"):
        for sub in ("cur", "new", "tmp"):
            (base / sub).mkdir(parents=True, exist_ok=True)
    (mailbox / f".{SENT_FOLDER}" / "maildirfolder").touch()


class _SmtpHandler:
    """aiosmtpd handler: enforces AUTH, applies fail rules, delivers locally, records the sink."""

    def __init__(
        self, servers: LocalMailServers, fail_rules: FailRules | None, sink_path: Path
    ) -> None:
        self._servers = servers
        self._sink_path = sink_path
        self._by_rcpt: dict[str, list[str] | str] = {}
        self._by_count: dict[int, str] = {}
        for key, rule in (fail_rules or {}).items():
            if isinstance(key, int):
                self._by_count[key] = rule if isinstance(rule, str) else rule[0]
            else:
                self._by_rcpt[key.lower()] = rule if isinstance(rule, str) else list(rule)
        self._transactions = 0

    def authenticate(
        self, server: SMTP, session: Session, envelope: Envelope, mechanism: str, data: Any
    ) -> AuthResult:
        if not isinstance(data, LoginPassword):
            return AuthResult(success=False, handled=False)
        login, password = data.login.decode(), data.password.decode()
        expected = self._servers.users.get(login)
        # handled=False: aiosmtpd then sends the 535 reply itself.
        return AuthResult(success=expected is not None and expected == password, handled=False)

    async def handle_MAIL(
        self, server: SMTP, session: Session, envelope: Envelope, address: str, options: list[str]
    ) -> str:
        # Required AUTH is enforced here, not with aiosmtpd's auth_required, which warns
        # (an error under pytest) when TLS is not required too; loopback needs no TLS.
        if not session.authenticated:
            return "530 5.7.0 Authentication required"
        envelope.mail_from = address
        envelope.mail_options.extend(options)
        return "250 OK"

    async def handle_RCPT(
        self, server: SMTP, session: Session, envelope: Envelope, address: str, options: list[str]
    ) -> str:
        domain = address.rpartition("@")[2].lower()
        sender = (envelope.mail_from or "").lower()
        blocks = self._servers.sender_blocks
        block = blocks.get((sender, domain)) or blocks.get((sender, "*"))
        if block is not None:
            return block  # the receiving side refuses this sender, as a sender-block table does
        rule = self._by_rcpt.get(address.lower())
        if isinstance(rule, str):
            return rule
        if rule:
            return rule.pop(0)
        envelope.rcpt_tos.append(address)
        envelope.rcpt_options.extend(options)
        return "250 OK"

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        self._transactions += 1
        reply = self._by_count.get(self._transactions)
        if reply is not None:
            return reply
        data = envelope.original_content or b""
        message = SinkMessage(envelope.mail_from or "", tuple(envelope.rcpt_tos), data)
        # Deliver before answering 250, as a real MTA would: once the client has its 250,
        # a Bcc to the sender's own address is already in that sender's INBOX.
        for rcpt in message.rcpt_tos:
            if rcpt.lower() in self._servers.users_lower:
                deliver(self._servers.mailbox_path(rcpt), data)
        row = {"from": message.envelope_from, "to": list(message.rcpt_tos)}
        row["data"] = base64.b64encode(data).decode("ascii")
        with open(self._sink_path, "a", encoding="utf-8") as fh:
            fh.write(json.dumps(row) + "\n")
        self._servers._sink.append(message)
        if self._servers.data_delay:
            await asyncio.sleep(self._servers.data_delay)  # a server's time to queue the message
        return "250 2.0.0 OK: queued"


@dataclass
class LocalMailServers:
    """Where the embedded servers listen and where their mail lives."""

    smtp_host: str
    smtp_port: int
    imap_host: str
    imap_port: int
    maildir_root: Path
    users: dict[str, str]  # address -> password, for both SMTP AUTH and IMAP LOGIN
    root: Path
    # (sender, recipient domain or "*") → the reply to RCPT: a receiving side that refuses one
    # of the business's identities. Changed at any time by a test or the demo.
    sender_blocks: dict[tuple[str, str], str] = field(default_factory=dict)
    # Seconds before the reply to the end of DATA (benchmarks: a real server's queue write,
    # content checks and network, which loopback has none of).
    data_delay: float = 0.0
    _sink: list[SinkMessage] = field(default_factory=list, repr=False)
    _stack: AsyncExitStack = field(default_factory=AsyncExitStack, repr=False)

    @property
    def users_lower(self) -> set[str]:
        return {u.lower() for u in self.users}

    @property
    def sink_path(self) -> Path:
        return self.root / SINK_FILE

    def mailbox_path(self, address: str) -> Path:
        return maildir_path(self.maildir_root, address)

    def sink_messages(self) -> list[SinkMessage]:
        return list(self._sink)

    async def stop(self) -> None:
        await self._stack.aclose()


async def start_local_servers(
    root: Path,
    users: Mapping[str, str],
    *,
    smtp_port: int = 0,
    imap_port: int = 0,
    fail_rules: FailRules | None = None,
) -> LocalMailServers:
    """Start SMTP and IMAP on 127.0.0.1 in the running loop; ``await servers.stop()`` to end."""
    root.mkdir(parents=True, exist_ok=True)
    servers = LocalMailServers(
        smtp_host=HOST,
        smtp_port=0,
        imap_host=HOST,
        imap_port=0,
        maildir_root=root / "maildir",
        users=dict(users),
        root=root,
    )
    servers.maildir_root.mkdir(exist_ok=True)
    for address in servers.users:
        _make_maildir(servers.mailbox_path(address))
    stack = servers._stack
    try:
        servers.smtp_port = await _start_smtp(stack, servers, smtp_port, fail_rules)
        servers.imap_port = await start_imap(
            stack, servers.maildir_root, servers.users, servers.mailbox_path, imap_port
        )
    except BaseException:
        await stack.aclose()
        raise
    return servers


class _QuietLoginData(logging.Filter):
    # aiosmtpd 1.4 itself sets the deprecated Session.login_data on every successful AUTH
    # and logs a warning about it: noise in the demo's output, not our doing.
    def filter(self, record: logging.LogRecord) -> bool:
        return "login_data is deprecated" not in record.getMessage()


async def _start_smtp(
    stack: AsyncExitStack, servers: LocalMailServers, port: int, fail_rules: FailRules | None
) -> int:
    loop = asyncio.get_running_loop()
    smtp_log = logging.getLogger("mail.log")
    if not any(isinstance(f, _QuietLoginData) for f in smtp_log.filters):
        smtp_log.addFilter(_QuietLoginData())
    handler = _SmtpHandler(servers, fail_rules, servers.sink_path)
    protocols: list[SMTP] = []

    def factory() -> SMTP:
        proto = SMTP(
            handler,
            hostname="localhost",
            authenticator=handler.authenticate,
            auth_require_tls=False,
            loop=loop,
        )
        protocols[:] = [p for p in protocols if p.transport is not None]  # drop finished ones
        protocols.append(proto)
        return proto

    server = await loop.create_server(factory, HOST, port)
    stack.push_async_callback(_close_smtp, server, protocols)
    return int(server.sockets[0].getsockname()[1])


async def _close_smtp(server: asyncio.Server, protocols: list[SMTP]) -> None:
    await close_server(server)
    # Python 3.11's wait_closed() does not wait for open connections: close them here.
    tasks = []
    for proto in protocols:
        if proto.transport is not None:
            proto.transport.close()
        if proto._handler_coroutine is not None:
            tasks.append(proto._handler_coroutine)
    await asyncio.gather(*tasks, return_exceptions=True)


@contextlib.contextmanager
def running_local_servers(
    root: Path,
    users: Mapping[str, str],
    *,
    smtp_port: int = 0,
    imap_port: int = 0,
    fail_rules: FailRules | None = None,
) -> Iterator[LocalMailServers]:
    """The same servers, run in a background thread with its own event loop (sync callers)."""
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, name="local-mail-servers", daemon=True)
    thread.start()
    try:
        coro = start_local_servers(
            root, users, smtp_port=smtp_port, imap_port=imap_port, fail_rules=fail_rules
        )
        servers = asyncio.run_coroutine_threadsafe(coro, loop).result(timeout=30)
        try:
            yield servers
        finally:
            asyncio.run_coroutine_threadsafe(servers.stop(), loop).result(timeout=30)
    finally:
        asyncio.run_coroutine_threadsafe(_drain(), loop).result(timeout=30)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(timeout=30)
        loop.close()


async def _drain() -> None:
    # Let transports closed by stop() run their connection_lost callbacks before the loop closes.
    for _ in range(3):
        await asyncio.sleep(0)
    await asyncio.get_running_loop().shutdown_asyncgens()


@contextlib.asynccontextmanager
async def local_servers(
    root: Path, users: Mapping[str, str], **kw: Any
) -> AsyncIterator[LocalMailServers]:
    """``async with local_servers(root, users) as servers:`` on the running loop."""
    servers = await start_local_servers(root, users, **kw)
    try:
        yield servers
    finally:
        await servers.stop()
