"""The embedded loopback servers with the demo identities' mailboxes, as the integration tests use them."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from mailer.demo import demo_users
from mailer.localservers import LocalMailServers, running_local_servers

PASSWORD = "loopback-secret"


@pytest.fixture
def servers(tmp_path: Path) -> Iterator[LocalMailServers]:
    """aiosmtpd + pymap on loopback ports, in a thread of their own, for one test."""
    with running_local_servers(tmp_path / "servers", demo_users(PASSWORD)) as running:
        yield running
