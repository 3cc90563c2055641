"""Logging to stderr for journald: readable by default, JSON on request, ids carried along."""

from __future__ import annotations

import json
import logging
import sys
from datetime import UTC, datetime

_IDS = ("case_id", "message_id")


class _Human(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        ids = " ".join(f"{k}={getattr(record, k)}" for k in _IDS if hasattr(record, k))
        base = f"{record.levelname.lower():7} {record.name}: {record.getMessage()}"
        text = f"{base} [{ids}]" if ids else base
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


def setup_logging(fmt: str = "human", level: int = logging.INFO) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(_Json() if fmt == "json" else _Human())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    # Library chatter (imapclient logs every command) stays out unless asked for.
    for noisy in ("imapclient", "aiosmtpd", "mail.log", "asyncio", "pymap"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
