"""Persistence: SQLite through sqlite-utils, migrations, the ledger and the outbox."""
