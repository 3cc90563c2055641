"""The real outbound and inbound flows on a simulated clock, as the integration tests drive them."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta

from mailer.app import App
from mailer.daemon import build_transports, make_box, open_mailbox
from mailer.demo_debtors import reply_to
from mailer.flows.inbound import Inbound, InboundReport
from mailer.flows.outbound import Outbound
from mailer.store import outbox

START = datetime(2026, 1, 5, 6, 0, tzinfo=UTC)  # a Monday


class Office:
    """Drives the real outbound and inbound flows on a simulated clock."""

    def __init__(self, app: App, start: datetime = START) -> None:
        self.app = app
        self.now = start
        self.outbound = Outbound(app, build_transports(app.settings), open_mailbox)
        self.inbound = Inbound(app)

    async def advance(self, hours: int) -> None:
        for _ in range(hours):
            self.now += timedelta(hours=1)
            await self.outbound.tick(self.now)

    async def sync(self, identity: str = "cobros") -> InboundReport:
        box = make_box(self.app.settings.identity(identity))
        await asyncio.to_thread(box.connect)
        try:
            return await self.inbound.sync(identity, box, self.now)
        finally:
            await asyncio.to_thread(box.close)

    async def until_sent(self, address: str, count: int = 1, limit: int = 24 * 30) -> None:
        """Advance hour by hour until ``address`` has ``count`` sent messages."""
        for _ in range(limit):
            if len(sent_to(self.app, address)) >= count:
                return
            await self.advance(1)
        raise AssertionError(f"{address} never got {count} messages")

    async def close(self) -> None:
        for transport in self.outbound.transports.values():
            await transport.close()


def sent_to(app: App, address: str) -> list[outbox.OutboxMessage]:
    return [m for m in outbox.select(app.store, "state = 'sent'") if address in m.recipients]


def answer(
    app: App, message: outbox.OutboxMessage, sender: str, text: str, when: datetime
) -> bytes:
    """The debtor's reply to one of our messages, threaded to it."""
    return reply_to(outbox.raw(app.store, message), sender, text, when)
