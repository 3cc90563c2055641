"""The session-scoped ``mailenv`` pytest fixture: one real mail environment per test session."""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest

from . import MailEnv, available, start, stop

REQUIRE_VAR = "MAILER_REQUIRE_MAILENV"


def require_mailenv() -> None:
    """Skip the calling test when this machine cannot run the environment, unless
    MAILER_REQUIRE_MAILENV=1 (CI) makes that a loud failure."""
    ok, why = available()
    if ok:
        return
    if os.environ.get(REQUIRE_VAR) == "1":
        pytest.fail(f"{REQUIRE_VAR}=1 but the mail environment cannot run: {why}", pytrace=False)
    pytest.skip(f"mail environment unavailable: {why}")


@pytest.fixture(scope="session")
def mailenv() -> Iterator[MailEnv]:
    """Postfix + Dovecot + remote MX on free loopback ports, started once, stopped at the end.

    Without the servers installed the tests that use it are skipped, unless
    MAILER_REQUIRE_MAILENV=1 (CI) makes that a loud failure."""
    require_mailenv()
    # start() picks a fresh 0755 dir under /tmp: pytest's tmp_path is 0700 and Dovecot
    # runs as an unprivileged user that must traverse every parent dir
    env = start()
    try:
        yield env
    finally:
        stop(env)
