"""What every outbound channel returns or raises: a receipt, or a refusal per recipient."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, Protocol

from mailer.errors import PermanentError


@dataclass(frozen=True, slots=True)
class RecipientRefusal:
    address: str
    code: int
    text: str

    @property
    def permanent(self) -> bool:
        return self.code >= 500


@dataclass(frozen=True, slots=True)
class Receipt:
    """The server's final word on an accepted message: stored as delivery evidence."""

    code: int
    text: str
    accepted: tuple[str, ...]
    refused: tuple[RecipientRefusal, ...] = ()
    queue_id: str | None = None
    server: str = ""
    extra: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        # What dataclasses.asdict gives, written out: it runs for every message sent.
        return {
            "code": self.code,
            "text": self.text,
            "accepted": self.accepted,
            "refused": tuple(asdict(r) for r in self.refused),
            "queue_id": self.queue_id,
            "server": self.server,
            "extra": dict(self.extra),
        }


class DeliveryRefusedError(PermanentError):
    """The server refused the message for good; ``refusals`` says who and why (feeds bounces)."""

    def __init__(
        self,
        message: str,
        *,
        code: int,
        detail: str,
        stage: str,
        refusals: Sequence[RecipientRefusal],
    ) -> None:
        super().__init__(message, code=code, detail=detail)
        self.stage = stage  # "mail" (sender refused), "rcpt", or "data"
        self.refusals = tuple(refusals)


class Transport(Protocol):
    """Send exact bytes to an envelope; raise TemporaryError / PermanentError subclasses only."""

    async def send(
        self, sender: str, recipients: Sequence[str], data: bytes, *, copy_to: str | None = None
    ) -> Receipt: ...

    async def close(self) -> None: ...
