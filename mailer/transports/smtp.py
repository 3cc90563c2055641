"""SMTP through the mailbox's own server (aiosmtplib): TLS verified, pooled, rate-limited."""

from __future__ import annotations

import asyncio
import logging
import re
import ssl
from collections.abc import Sequence
from typing import TypeVar

import aiosmtplib
from tenacity import (
    AsyncRetrying,
    retry_if_exception,
    stop_after_attempt,
    wait_exponential,
)

from mailer.domain.models import Identity, SmtpSecurity
from mailer.errors import (
    AmbiguousDeliveryError,
    IdentityUnavailableError,
    MailerError,
    TemporaryError,
)
from mailer.transports.base import DeliveryRefusedError, Receipt, RecipientRefusal

log = logging.getLogger(__name__)
_E = TypeVar("_E", bound=BaseException)
_QUEUE_ID = re.compile(r"queued as ([A-Za-z0-9._-]+)", re.IGNORECASE)


def tls_context(identity: Identity) -> ssl.SSLContext:
    """Certificate and host name checked by default; only an explicit setting turns it off."""
    context = ssl.create_default_context(cafile=identity.ca_file)
    if not identity.verify_tls:
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    return context


class _RateLimit:
    """At most ``per_minute`` starts a minute, spaced evenly (monotonic clock: pacing, not policy)."""

    def __init__(self, per_minute: int) -> None:
        self.interval = 60.0 / per_minute if per_minute > 0 else 0.0
        self.next_free = 0.0
        self.lock = asyncio.Lock()

    async def wait(self) -> None:
        if not self.interval:
            return
        async with self.lock:
            loop = asyncio.get_running_loop()
            delay = self.next_free - loop.time()
            if delay > 0:
                await asyncio.sleep(delay)
            self.next_free = max(loop.time(), self.next_free) + self.interval


def _retryable(exc: BaseException) -> bool:
    # A lost reply after DATA may mean "accepted": that is reconciled, never retried blindly.
    return isinstance(exc, TemporaryError) and not isinstance(
        exc, AmbiguousDeliveryError | IdentityUnavailableError
    )


class SmtpTransport:
    """One identity's submission server: a small pool of reused connections."""

    def __init__(
        self,
        identity: Identity,
        password: str | None,
        *,
        timeout: float = 60.0,
        attempts: int = 3,
        backoff: float = 1.0,
    ) -> None:
        self.identity = identity
        self.password = password
        self.timeout = timeout
        self.attempts = attempts
        self.backoff = backoff
        self._idle: list[aiosmtplib.SMTP] = []
        self._slots = asyncio.Semaphore(max(1, identity.concurrency))
        self._rate = _RateLimit(identity.rate_per_minute)
        self._tls = (
            tls_context(identity) if identity.smtp_security is not SmtpSecurity.PLAIN else None
        )

    @property
    def server(self) -> str:
        return f"{self.identity.smtp_host}:{self.identity.smtp_port}"

    async def send(
        self, sender: str, recipients: Sequence[str], data: bytes, *, copy_to: str | None = None
    ) -> Receipt:
        """Deliver ``data``; connection trouble before DATA is retried (tenacity).

        ``copy_to`` (our own mailbox, envelope only) is added after the real recipients and
        only if at least one of them was accepted: a receipt copy never makes a send "succeed".
        """
        async with self._slots:
            await self._rate.wait()
            async for attempt in AsyncRetrying(
                retry=retry_if_exception(_retryable),
                stop=stop_after_attempt(self.attempts),
                wait=wait_exponential(multiplier=self.backoff, max=30),
                reraise=True,
            ):
                with attempt:
                    return await self._send_once(sender, recipients, data, copy_to)
        raise AssertionError("unreachable")  # pragma: no cover

    async def _connect(self) -> aiosmtplib.SMTP:
        ident = self.identity
        client = aiosmtplib.SMTP(
            hostname=ident.smtp_host,
            port=ident.smtp_port,
            timeout=self.timeout,
            use_tls=ident.smtp_security is SmtpSecurity.TLS,
            start_tls=False,  # below, by hand: a server without STARTTLS is refused, not used
            tls_context=self._tls,
            validate_certs=ident.smtp_security is not SmtpSecurity.PLAIN and ident.verify_tls,
        )
        try:
            await client.connect()
            if ident.smtp_security is SmtpSecurity.STARTTLS:
                await client.ehlo()
                if not client.supports_extension("starttls"):
                    raise IdentityUnavailableError(
                        f"{self.server} does not offer STARTTLS; mailer never sends in clear"
                        ' unless smtp_security = "plain" is configured'
                    )
                await client.starttls()
            if ident.smtp_user:
                await client.login(ident.smtp_user, self.password or "")
        except MailerError:
            await _quietly_close(client)
            raise
        except BaseException as exc:
            await _quietly_close(client)
            raise _map(exc, "connect") from exc
        return client

    async def _send_once(
        self, sender: str, recipients: Sequence[str], data: bytes, copy_to: str | None
    ) -> Receipt:
        client = self._idle.pop() if self._idle else None
        if client is not None and not client.is_connected:
            await _quietly_close(client)
            client = None
        fresh = client is None
        if client is None:
            client = await self._connect()
        stage = "mail"
        try:
            try:
                await client.mail(sender)
            except aiosmtplib.SMTPServerDisconnected:
                if fresh:
                    raise
                # An idle connection the server timed out: open a new one, once.
                await _quietly_close(client)
                client = await self._connect()
                await client.mail(sender)
            stage = "rcpt"
            accepted: list[str] = []
            refused: list[RecipientRefusal] = []
            for recipient in recipients:
                try:
                    await client.rcpt(recipient)
                    accepted.append(recipient)
                except aiosmtplib.SMTPRecipientRefused as exc:
                    refused.append(RecipientRefusal(recipient, exc.code, exc.message))
            if not accepted:
                await client.rset()
                self._idle.append(client)
                raise _all_refused(refused)
            copy_refused: RecipientRefusal | None = None
            if copy_to:
                try:
                    await client.rcpt(copy_to)
                except aiosmtplib.SMTPRecipientRefused as exc:
                    copy_refused = RecipientRefusal(copy_to, exc.code, exc.message)
            stage = "data"
            reply = await client.data(data)
        except MailerError:
            raise
        except BaseException as exc:
            await _quietly_close(client)
            raise _map(exc, stage) from exc
        self._idle.append(client)
        match = _QUEUE_ID.search(reply.message)
        return Receipt(
            code=reply.code,
            text=reply.message,
            accepted=tuple(accepted),
            refused=tuple(refused),
            queue_id=match.group(1) if match else None,
            server=self.server,
            extra={"copy_to": copy_to, "copy_refused": copy_refused is not None} if copy_to else {},
        )

    async def close(self) -> None:
        while self._idle:
            client = self._idle.pop()
            try:
                await asyncio.wait_for(client.quit(), timeout=5)
            except Exception:
                await _quietly_close(client)


async def _quietly_close(client: aiosmtplib.SMTP) -> None:
    try:
        client.close()
    except Exception:
        log.debug("closing a broken SMTP connection failed", exc_info=True)


def _all_refused(refused: Sequence[RecipientRefusal]) -> MailerError:
    detail = "; ".join(f"{r.address}: {r.code} {r.text}" for r in refused)
    if refused and all(r.permanent for r in refused):
        first = refused[0]
        return DeliveryRefusedError(
            f"every recipient refused: {detail}",
            code=first.code,
            detail=detail,
            stage="rcpt",
            refusals=refused,
        )
    return TemporaryError(f"recipients deferred: {detail}")


def _cause(exc: BaseException, kind: type[_E]) -> _E | None:
    """``exc`` or the exception it was raised from (aiosmtplib wraps ssl errors on connect)."""
    seen: BaseException | None = exc
    for _ in range(5):
        if seen is None or isinstance(seen, kind):
            return seen
        seen = seen.__cause__ or seen.__context__
    return None


def _map(exc: BaseException, stage: str) -> BaseException:
    """aiosmtplib, ssl and socket errors → mailer's tree, once, here."""
    if isinstance(exc, asyncio.CancelledError | KeyboardInterrupt | SystemExit):
        return exc
    untrusted = _cause(exc, ssl.SSLCertVerificationError)
    if untrusted is not None:
        # Not retried and not the message's fault: the identity waits until a person fixes
        # the server's certificate or the identity's ca_file.
        return IdentityUnavailableError(
            f"TLS certificate not trusted: {untrusted.verify_message}"
            " (set ca_file for a private CA; verify_tls = false only if you must)"
        )
    if isinstance(exc, aiosmtplib.SMTPAuthenticationError):
        return IdentityUnavailableError(f"login refused: {exc.code} {exc.message}")
    if isinstance(exc, aiosmtplib.SMTPResponseException):
        if exc.code >= 500:
            refusals: tuple[RecipientRefusal, ...] = ()
            if isinstance(exc, aiosmtplib.SMTPSenderRefused):
                refusals = (RecipientRefusal(exc.sender, exc.code, exc.message),)
            return DeliveryRefusedError(
                f"{stage} refused: {exc.code} {exc.message}",
                code=exc.code,
                detail=exc.message,
                stage=stage,
                refusals=refusals,
            )
        return TemporaryError(f"{stage}: {exc.code} {exc.message}")
    if stage == "data" and isinstance(exc, aiosmtplib.SMTPException | OSError):
        return AmbiguousDeliveryError(f"connection lost during DATA: {exc}")
    if isinstance(exc, aiosmtplib.SMTPException | OSError | ssl.SSLError):
        return TemporaryError(f"{stage}: {type(exc).__name__}: {exc}")
    return exc
