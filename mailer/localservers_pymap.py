"""pymap's maildir backend served in-process on loopback, storing message bytes unchanged."""

from __future__ import annotations

import asyncio
import io
import os
import ssl
from argparse import Namespace
from collections.abc import Callable, Mapping
from contextlib import AsyncExitStack
from email.generator import BytesGenerator
from email.message import Message as EmailMessage
from email.policy import compat32
from mailbox import MaildirMessage
from pathlib import Path
from typing import TYPE_CHECKING, Any

from proxyprotocol.reader import ProxyProtocolReader
from proxyprotocol.sock import SocketInfo
from pymap.backend.maildir import Config, Identity, Login
from pymap.backend.maildir.layout import MaildirLayout
from pymap.backend.maildir.mailbox import Maildir
from pymap.concurrent import Subsystem
from pymap.frozen import frozendict
from pymap.imap import IMAPServer
from pymap.interfaces.login import IdentityInterface
from pymap.user import UserMetadata
from pysasl.creds.server import ServerCredentials
from pysasl.hashing import Cleartext

if TYPE_CHECKING:
    from _typeshed import SupportsWrite

HOST = "127.0.0.1"
# pymap 0.36 does not implement SPECIAL-USE (RFC 6154): LIST shows only \HasNoChildren,
# so clients find this folder by its name.
SENT_FOLDER = "Sent"
_CRLF = compat32.clone(linesep="\r\n")


class _RawMessage(MaildirMessage):
    raw = b""

    def __bytes__(self) -> bytes:
        return self.raw


class _ExactMaildir(Maildir):
    """pymap re-generates messages through ``email`` with LF endings; keep CRLF and bytes."""

    def get_message(self, key: str) -> MaildirMessage:
        # pymap only calls bytes() on this, for FETCH: give it the file as delivered.
        msg = _RawMessage(super().get_message(key))
        msg.raw = Path(self._join(self._lookup(key))).read_bytes()
        return msg

    def _dump_message(
        self, message: Any, target: SupportsWrite[bytes], mangle_from_: bool = False
    ) -> None:
        # APPEND arrives here already parsed; write it back with CRLF and without refolding.
        if not isinstance(message, EmailMessage):
            super()._dump_message(message, target, mangle_from_)
            return
        buffer = io.BytesIO()
        BytesGenerator(buffer, mangle_from_=False, maxheaderlen=0, policy=_CRLF).flatten(message)
        target.write(buffer.getvalue())


class _ExactIdentity(Identity):
    def _load_maildir(self, mailbox_path: str) -> tuple[Maildir, MaildirLayout[Any]]:
        full_path = os.path.join(self.config.base_dir, mailbox_path)
        layout = MaildirLayout.get(full_path, self.config.layout, _ExactMaildir)
        maildir = _ExactMaildir(full_path, create=not os.path.exists(full_path))
        return maildir, layout


class _ExactLogin(Login):
    async def authenticate(self, credentials: ServerCredentials) -> Identity:
        found = await super().authenticate(credentials)
        return _ExactIdentity(self.config, self.tokens, found.name, None, found.roles)

    async def authorize(self, authenticated: IdentityInterface, authzid: str) -> Identity:
        found = await super().authorize(authenticated, authzid)
        return _ExactIdentity(self.config, self.tokens, found.name, None, found.roles)


class _LoopbackConfig(Config):
    @property
    def greeting(self) -> bytes:
        # pymap's default calls socket.getfqdn() per connection, a DNS lookup: none here.
        return b"Server ready localhost"


async def start_imap(
    stack: AsyncExitStack,
    maildir_root: Path,
    users: Mapping[str, str],
    mailbox_path: Callable[[str], Path],
    port: int,
) -> int:
    """Serve ``users``' maildirs over IMAP on 127.0.0.1:``port`` until ``stack`` closes."""
    args = Namespace(debug=False, proxy_protocol=None, passlib_cfg=None, tls=False)
    config = _LoopbackConfig(
        args,
        host=HOST,
        port=port,
        base_dir=str(maildir_root),
        layout="++",
        colon=None,
        # Everything on this loop: no worker threads to leak, and the files are small.
        subsystem=Subsystem.for_asyncio(),
        cpu_subsystem=Subsystem.for_asyncio(),
        hash_context=Cleartext(),  # throwaway loopback passwords, stored as given
        ssl_context=ssl.create_default_context(ssl.Purpose.CLIENT_AUTH),
        tls_enabled=False,  # plaintext LOGIN: loopback only
        reject_dnsbl=False,
        invalid_user_sleep=0.0,
    )
    config.apply_context()  # pymap reads its subsystem from a context variable
    login = _ExactLogin(config)
    for address, password in users.items():
        identity = _ExactIdentity(config, login.tokens, address, None, {"admin"})
        rel = os.path.relpath(mailbox_path(address), maildir_root)
        params = frozendict({"mailbox_path": rel})
        await identity.set(UserMetadata(config, address, password=password, params=params))

    imap_server = IMAPServer(login, config)
    tasks: set[asyncio.Task[Any]] = set()
    writers: set[asyncio.StreamWriter] = set()

    async def tracked(
        reader: asyncio.StreamReader, writer: asyncio.StreamWriter, info: SocketInfo
    ) -> None:
        # pymap runs each connection in a task of its own: remember it, to cancel at stop.
        task = asyncio.current_task()
        assert task is not None
        tasks.add(task)
        try:
            await imap_server(reader, writer, info)
        finally:
            tasks.discard(task)
            writers.discard(writer)

    proxy_callback = ProxyProtocolReader(config.proxy_protocol).get_callback(tracked)

    async def on_connect(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writers.add(writer)  # known from the first moment, before pymap's task starts
        await proxy_callback(reader, writer)

    server = await asyncio.start_server(on_connect, HOST, port)
    stack.push_async_callback(_close, server, tasks, writers)
    return int(server.sockets[0].getsockname()[1])


async def close_server(server: asyncio.Server) -> None:
    """Stop listening without losing a connection accepted a moment ago."""
    # Python 3.11: a connection accepted but not yet given its transport when the server
    # closes fails an assertion and leaks its socket. Let those finish first.
    for _ in range(3):
        await asyncio.sleep(0)
    server.close()
    await server.wait_closed()


async def _close(
    server: asyncio.Server, tasks: set[asyncio.Task[Any]], writers: set[asyncio.StreamWriter]
) -> None:
    await close_server(server)
    pending = list(tasks)
    for task in pending:
        task.cancel()
    for writer in list(writers):
        # abort(), not close(): a server that stops drops its connections at once, as a
        # restarted Dovecot does, so clients in IDLE see the end instead of a silent socket.
        writer.transport.abort()
    await asyncio.gather(*pending, return_exceptions=True)
