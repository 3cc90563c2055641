"""The IMAP edge: file sent copies and look messages up by Message-ID (imapclient, blocking)."""

from __future__ import annotations

import imaplib
import socket
import ssl
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager, suppress
from datetime import date, datetime
from email.parser import BytesHeaderParser
from types import TracebackType
from typing import Any

import imapclient
from imapclient.exceptions import LoginError
from imapclient.imapclient import SENT

from mailer.domain.models import Identity, SmtpSecurity
from mailer.errors import PermanentError, TemporaryError

# Tried in order when no folder carries the \Sent special-use attribute (or the server, like
# pymap, does not implement SPECIAL-USE). Compared case-insensitively.
SENT_NAMES = ("Sent", "Sent Items", "INBOX.Sent", "INBOX/Sent", "Enviados", "Elementos enviados")
# Response codes (RFC 5530) saying a NO is about the server's state, not the request.
_TRANSIENT_CODES = ("[UNAVAILABLE]", "[INUSE]", "[SERVERBUG]", "[LIMIT]")
_SEEN = rb"\Seen"


def _is_transient(exc: BaseException) -> bool:
    text = str(exc).upper()
    return any(code in text for code in _TRANSIENT_CODES)


@contextmanager
def _mapped(what: str) -> Iterator[None]:
    """Translate imapclient/imaplib, socket and TLS errors into mailer's error tree, once."""
    try:
        yield
    except LoginError as exc:
        if _is_transient(exc):
            raise TemporaryError(f"IMAP {what}: {exc}") from exc
        raise PermanentError(f"IMAP {what}: login refused: {exc}") from exc
    except imaplib.IMAP4.readonly as exc:  # before .abort: it is a subclass
        raise PermanentError(f"IMAP {what}: mailbox is read-only: {exc}") from exc
    except imaplib.IMAP4.abort as exc:  # the connection broke or the server hung up
        raise TemporaryError(f"IMAP {what}: connection lost: {exc}") from exc
    except imaplib.IMAP4.error as exc:  # a NO or BAD reply
        if _is_transient(exc):
            raise TemporaryError(f"IMAP {what}: {exc}") from exc
        raise PermanentError(f"IMAP {what}: refused: {exc}") from exc
    except ssl.SSLCertVerificationError as exc:  # retrying cannot fix a bad certificate
        raise PermanentError(f"IMAP {what}: TLS certificate rejected: {exc}") from exc
    except (OSError, EOFError) as exc:  # refused, reset, timeout, other TLS errors
        raise TemporaryError(f"IMAP {what}: {exc.__class__.__name__}: {exc}") from exc


def _tune(sock: socket.socket) -> None:
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    # A watcher sits in IDLE for many minutes: keepalives find a peer that vanished without a
    # word (a NAT timeout, a crashed server) in about two minutes rather than never.
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
    for name, value in (("TCP_KEEPIDLE", 60), ("TCP_KEEPINTVL", 15), ("TCP_KEEPCNT", 4)):
        if hasattr(socket, name):
            sock.setsockopt(socket.IPPROTO_TCP, getattr(socket, name), value)


def _ssl_context(verify: bool, ca_file: str | None) -> ssl.SSLContext:
    context = ssl.create_default_context(cafile=ca_file)
    if not verify:
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    return context


class ImapMailbox:
    """One logged-in IMAP connection to one of the business's mailboxes. Not thread-safe."""

    def __init__(
        self,
        host: str,
        port: int,
        security: SmtpSecurity,
        user: str,
        password: str,
        *,
        verify_tls: bool = True,
        ca_file: str | None = None,
        timeout: float = 30.0,
        sent_folder: str | None = None,
    ) -> None:
        self.host = host
        self.port = port
        self.security = security
        self.user = user
        self._password = password
        self.verify_tls = verify_tls
        self.ca_file = ca_file
        self.timeout = timeout
        self._sent_folder = sent_folder
        self._client: Any = None  # imapclient.IMAPClient once connected

    def __repr__(self) -> str:
        return f"ImapMailbox({self.user}@{self.host}:{self.port}, {self.security})"

    @classmethod
    def for_identity(cls, identity: Identity, password: str, **kw: Any) -> ImapMailbox:
        if not identity.imap_host:
            raise PermanentError(f"identity {identity.name}: no imap_host configured")
        kw.setdefault("verify_tls", identity.verify_tls)
        kw.setdefault("ca_file", identity.ca_file)
        kw.setdefault("sent_folder", identity.sent_folder)
        return cls(
            identity.imap_host,
            identity.imap_port,
            identity.imap_security,
            identity.imap_user or identity.smtp_user or identity.address,
            password,
            **kw,
        )

    # ------------------------------------------------------------------ connection
    def connect(self) -> None:
        if self._client is not None:
            return
        context = None
        if self.security is not SmtpSecurity.PLAIN:
            try:
                context = _ssl_context(self.verify_tls, self.ca_file)
            except (OSError, ssl.SSLError) as exc:  # a missing or bad ca_file: configuration
                raise PermanentError(f"{self!r}: cannot load ca_file: {exc}") from exc
        client: Any = None
        try:
            with _mapped("connect"):
                client = imapclient.IMAPClient(
                    self.host,
                    self.port,
                    ssl=self.security is SmtpSecurity.TLS,
                    ssl_context=context,
                    timeout=self.timeout,
                )
                if self.security is SmtpSecurity.STARTTLS:
                    client.starttls(context)
                # imaplib writes an APPEND literal and its closing CRLF separately: with Nagle
                # on, the second write waits for a delayed ACK (~40 ms per message).
                with suppress(OSError, AttributeError):
                    _tune(client.socket())
                client.login(self.user, self._password)
        except BaseException:
            if client is not None:
                with suppress(Exception):
                    client.shutdown()
            raise
        self._client = client

    def close(self) -> None:
        client, self._client = self._client, None
        if client is None:
            return
        try:
            client.logout()
        except Exception:
            # Logging out is a courtesy: the socket is closed below whatever happened.
            with suppress(Exception):
                client.shutdown()

    def __enter__(self) -> ImapMailbox:
        self.connect()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    @property
    def _imap(self) -> Any:
        if self._client is None:
            raise TemporaryError(f"{self!r}: not connected")
        return self._client

    # ------------------------------------------------------------------ folders
    def sent_folder(self) -> str:
        """The configured Sent folder, else the one marked \\Sent, else a usual name."""
        if self._sent_folder is not None:
            return self._sent_folder
        with _mapped("LIST"):
            folders = self._imap.list_folders()
        # The same test as imapclient's find_special_folder(SENT), on a single LIST.
        for flags, _delim, name in folders:
            if any(bytes(flag).lower() == SENT.lower() for flag in flags):
                self._sent_folder = str(name)
                return self._sent_folder
        by_lower = {str(name).lower(): str(name) for _flags, _delim, name in folders}
        for candidate in SENT_NAMES:
            if candidate.lower() in by_lower:
                self._sent_folder = by_lower[candidate.lower()]
                return self._sent_folder
        raise PermanentError(
            f"{self!r}: no Sent folder (none marked \\Sent, none named {', '.join(SENT_NAMES)}); "
            "set sent_folder for this identity"
        )

    # ------------------------------------------------------------------ messages
    def append_sent(self, data: bytes, when: datetime) -> None:
        """File ``data`` unchanged in the Sent folder, already read, dated ``when``."""
        folder = self.sent_folder()
        with _mapped(f"APPEND to {folder}"):
            self._imap.append(folder, data, flags=(_SEEN,), msg_time=when)

    def find_message_id(self, message_id: str, folders: Sequence[str] | None = None) -> list[str]:
        """The folders (default INBOX and Sent) holding a message with this Message-ID.

        Folders are opened read-only (EXAMINE) and only SEARCH and BODY.PEEK are used, so
        no flag, \\Seen included, changes.
        """
        if folders is None:
            folders = ["INBOX", self.sent_folder()]
        return [f for f in folders if self._uids_with_message_id(f, message_id)]

    def fetch_raw(self, folder: str, message_id: str) -> bytes | None:
        """The exact bytes of the first message in ``folder`` with this Message-ID."""
        uids = self._uids_with_message_id(folder, message_id)
        if not uids:
            return None
        with _mapped(f"FETCH in {folder}"):
            response = self._imap.fetch(uids[:1], ["BODY.PEEK[]"])
        data = response.get(uids[0], {}).get(b"BODY[]")
        return bytes(data) if data is not None else None

    def _uids_with_message_id(self, folder: str, message_id: str) -> list[int]:
        # SEARCH HEADER matches substrings: confirm each hit against the whole header.
        wanted = message_id.strip()
        with _mapped(f"SEARCH in {folder}"):
            self._imap.select_folder(folder, readonly=True)
            uids = list(self._imap.search(["HEADER", "Message-ID", wanted]))
            if not uids:
                return []
            headers = self._imap.fetch(uids, ["BODY.PEEK[HEADER.FIELDS (MESSAGE-ID)]"])
        parser = BytesHeaderParser()
        matches = []
        for uid in uids:
            raw = headers.get(uid, {}).get(b"BODY[HEADER.FIELDS (MESSAGE-ID)]", b"")
            found = parser.parsebytes(bytes(raw)).get("Message-ID", "")
            if str(found).strip() == wanted:
                matches.append(uid)
        return matches

    def message_ids(self, folder: str, since: date | None = None) -> set[str]:
        """Every Message-ID in ``folder`` (arrived on or after ``since``), read-only.

        One pass for many look-ups: after a crash, reconciling hundreds of messages one SEARCH
        at a time costs a full folder scan each on servers without a header index.
        """
        with _mapped(f"FETCH Message-IDs in {folder}"):
            self._imap.select_folder(folder, readonly=True)
            uids = list(self._imap.search(["SINCE", since] if since else ["ALL"]))
            ids: set[str] = set()
            parser = BytesHeaderParser()
            for start in range(0, len(uids), 500):
                chunk = uids[start : start + 500]
                fetched = self._imap.fetch(chunk, ["BODY.PEEK[HEADER.FIELDS (MESSAGE-ID)]"])
                for item in fetched.values():
                    raw = item.get(b"BODY[HEADER.FIELDS (MESSAGE-ID)]", b"")
                    found = str(parser.parsebytes(bytes(raw)).get("Message-ID", "")).strip()
                    if found:
                        ids.add(found)
        return ids

    # ------------------------------------------------------------------ watching
    # Every read below opens the folder read-only (EXAMINE) and fetches with BODY.PEEK, so the
    # person's flags, \\Seen included, never change because mailer looked.

    def folder_status(self, folder: str) -> tuple[int, int]:
        """(UIDVALIDITY, UIDNEXT) of ``folder``, selecting it read-only."""
        with _mapped(f"EXAMINE {folder}"):
            info = self._imap.select_folder(folder, readonly=True)
        validity = int(info.get(b"UIDVALIDITY", 0))
        uidnext = int(info.get(b"UIDNEXT", 0))
        if not uidnext:  # optional in the SELECT response of old servers: ask for it
            with _mapped(f"STATUS {folder}"):
                uidnext = int(self._imap.folder_status(folder, [b"UIDNEXT"])[b"UIDNEXT"])
        return validity, uidnext

    def uids_after(self, folder: str, last_uid: int) -> list[int]:
        """UIDs above ``last_uid`` in ``folder``, ascending."""
        with _mapped(f"SEARCH in {folder}"):
            self._imap.select_folder(folder, readonly=True)
            # "n:*" always matches the highest UID, even when it is below n (RFC 3501 6.4.8).
            found = self._imap.search(["UID", f"{last_uid + 1}:*"])
        return sorted(uid for uid in found if uid > last_uid)

    def uids_since(self, folder: str, day: date) -> list[int]:
        """UIDs of messages that arrived on or after ``day`` (INTERNALDATE), ascending."""
        with _mapped(f"SEARCH in {folder}"):
            self._imap.select_folder(folder, readonly=True)
            return sorted(self._imap.search(["SINCE", day]))

    def fetch_headers(self, folder: str, uids: Sequence[int]) -> dict[int, bytes]:
        """The raw header block of each message (BODY.PEEK[HEADER])."""
        return self._fetch(folder, uids, "BODY.PEEK[HEADER]", b"BODY[HEADER]")

    def fetch_messages(self, folder: str, uids: Sequence[int]) -> dict[int, bytes]:
        """The exact bytes of each message (BODY.PEEK[])."""
        return self._fetch(folder, uids, "BODY.PEEK[]", b"BODY[]")

    def _fetch(self, folder: str, uids: Sequence[int], item: str, key: bytes) -> dict[int, bytes]:
        if not uids:
            return {}
        with _mapped(f"FETCH in {folder}"):
            self._imap.select_folder(folder, readonly=True)
            response = self._imap.fetch(list(uids), [item])
        return {
            int(uid): bytes(data[key])
            for uid, data in response.items()
            if data.get(key) is not None
        }

    def move_messages(self, folder: str, uids: Sequence[int], target: str) -> int:
        """Move ``uids`` from ``folder`` to ``target`` (created if missing); returns how many.

        The one write mailer makes to a watched folder, and only when configured. UID MOVE
        (RFC 6851) where the server has it, else UID COPY + \\Deleted + UID EXPUNGE (UIDPLUS,
        RFC 4315), which expunges exactly these messages. A server with neither is left alone:
        a plain EXPUNGE would also remove mail the person flagged \\Deleted.
        """
        if not uids:
            return 0
        with _mapped(f"MOVE from {folder}"):
            imap = self._imap
            if not imap.folder_exists(target):
                imap.create_folder(target)
            imap.select_folder(folder, readonly=False)
            try:
                if imap.has_capability("MOVE"):
                    imap.move(list(uids), target)
                elif imap.has_capability("UIDPLUS"):
                    imap.copy(list(uids), target)
                    imap.add_flags(list(uids), [b"\\Deleted"], silent=True)
                    imap.uid_expunge(list(uids))
                else:
                    return 0
            finally:
                # Back to read-only. Not CLOSE: it would expunge what the person flagged
                # \\Deleted; selecting again deselects without removing anything.
                imap.select_folder(folder, readonly=True)
        return len(uids)

    def supports_idle(self) -> bool:
        with _mapped("CAPABILITY"):
            return bool(self._imap.has_capability("IDLE"))

    def idle_wait(self, folder: str, seconds: float, stop: Callable[[], bool]) -> bool:
        """IDLE on ``folder`` until the server reports a change, ``seconds`` pass, or ``stop()``.

        True when the server said something arrived or changed. The wait is cut into one-second
        slices so a shutdown is never held up by a quiet mailbox; callers re-issue IDLE before
        the 29-minute limit of RFC 2177 by passing ``seconds`` below it.
        """
        deadline = time.monotonic() + seconds
        changed = False
        with _mapped(f"IDLE on {folder}"):
            self._imap.select_folder(folder, readonly=True)
            self._imap.idle()
            try:
                quick_empty = 0
                while not stop():
                    left = deadline - time.monotonic()
                    if left <= 0:
                        break
                    wait = min(1.0, left)
                    began = time.monotonic()
                    responses = self._imap.idle_check(timeout=wait)
                    if any(_is_change(r) for r in responses):
                        changed = True
                        break
                    # imapclient swallows EOF inside idle_check and returns [] at once, forever:
                    # an empty answer well before the timeout, again and again, is a dead line.
                    if not responses and time.monotonic() - began < wait / 2:
                        quick_empty += 1
                        if quick_empty >= 3:
                            raise imaplib.IMAP4.abort("socket error: EOF during IDLE")
                    else:
                        quick_empty = 0
            finally:
                self._imap.idle_done()
        return changed


def _is_change(response: Any) -> bool:
    """An untagged EXISTS, RECENT or EXPUNGE (something arrived or went), or the server's BYE."""
    if not isinstance(response, tuple) or not response:
        return False
    if response[0] == b"BYE":  # (b"BYE", text): leave IDLE; the next command finds the line dead
        return True
    return len(response) >= 2 and response[1] in (b"EXISTS", b"RECENT", b"EXPUNGE")
