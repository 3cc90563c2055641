"""Logging to stderr for journald: readable by default, JSON on request, ids carried along."""

from __future__ import annotations

import json
import logging
import os
import sys
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import TextIO

_IDS = ("case_id", "message_id")
# Libraries that log every command (imapclient: the whole IMAP conversation, LOGIN redacted by
# imapclient itself) stay at WARNING unless the person asks for DEBUG.
_CHATTY = ("imapclient", "aiosmtpd", "mail.log", "asyncio", "pymap")
# syslog priorities: journald reads a "<N>" line prefix as the entry's priority, so
# `journalctl -u mailer -p warning` shows warnings and errors only.
_PRIORITY = {
    logging.CRITICAL: 2,
    logging.ERROR: 3,
    logging.WARNING: 4,
    logging.INFO: 6,
    logging.DEBUG: 7,
}


class _Human(logging.Formatter):
    def __init__(self, journal: bool = False) -> None:
        super().__init__()
        self.journal = journal

    def format(self, record: logging.LogRecord) -> str:
        ids = " ".join(f"{k}={getattr(record, k)}" for k in _IDS if hasattr(record, k))
        base = f"{record.levelname.lower():7} {record.name}: {record.getMessage()}"
        text = f"{base} [{ids}]" if ids else base
        if self.journal:
            text = f"<{_PRIORITY.get(record.levelno, 6)}>{text}"
        if record.exc_info:
            text += "\n" + self.formatException(record.exc_info)
        return text


class _Json(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        data = {
            "ts": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        for key in _IDS:
            if hasattr(record, key):
                data[key] = getattr(record, key)
        if record.exc_info:
            data["exc"] = self.formatException(record.exc_info)
        return json.dumps(data, ensure_ascii=False)


def to_journal(stream: TextIO, environ: Mapping[str, str] = os.environ) -> bool:
    """True when ``stream`` is systemd's journal: $JOURNAL_STREAM names its device:inode."""
    expected = environ.get("JOURNAL_STREAM", "")
    try:
        info = os.fstat(stream.fileno())
    except (OSError, ValueError):
        return False
    return expected == f"{info.st_dev}:{info.st_ino}"


def setup_logging(fmt: str = "human", level: int = logging.INFO) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(_Json() if fmt == "json" else _Human(journal=to_journal(sys.stderr)))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    chatty_level = logging.DEBUG if level <= logging.DEBUG else logging.WARNING
    for chatty in _CHATTY:
        logging.getLogger(chatty).setLevel(chatty_level)
