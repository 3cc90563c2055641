"""Shared fixtures: the real mail servers (embedded ones, and Postfix + Dovecot) for the tests."""

from loopback import servers  # noqa: F401
from mailenv.fixtures import mailenv  # noqa: F401  (pytest finds fixtures by name)
