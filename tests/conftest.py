"""Shared fixtures: the real mail servers (Postfix + Dovecot) for the tests that need them."""

from mailenv.fixtures import mailenv  # noqa: F401  (pytest finds fixtures by name)
