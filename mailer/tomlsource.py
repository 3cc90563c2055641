"""Read a staff-edited TOML file and point problems at its lines (`file:line: message`)."""

from __future__ import annotations

import re
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mailer.errors import ConfigError

_HEADER = re.compile(r"^\s*(\[\[?)\s*([^\]]+?)\s*\]\]?\s*(#.*)?$")
_KEY = re.compile(r"""^\s*("[^"]*"|'[^']*'|[A-Za-z0-9_.-]+)\s*=""")
_SYNTAX_LINE = re.compile(r"\(at line (\d+), column \d+\)")


def _norm(name: str) -> str:
    return ".".join(part.strip().strip("\"'") for part in name.split("."))


@dataclass
class TomlSource:
    """A parsed TOML document that can say on which line a table or key was written."""

    path: Path
    text: str
    data: dict[str, Any]
    problems: list[str] = field(default_factory=list)

    @classmethod
    def read(cls, path: Path) -> TomlSource:
        """Parse ``path``; a syntax error becomes a ``ConfigError`` naming its line."""
        try:
            text = path.read_text(encoding="utf-8")
        except OSError as exc:
            raise ConfigError([f"{path}:0: cannot read: {exc.strerror}"]) from exc
        except UnicodeDecodeError as exc:
            raise ConfigError([f"{path}:0: not UTF-8 text"]) from exc
        try:
            data = tomllib.loads(text)
        except tomllib.TOMLDecodeError as exc:
            match = _SYNTAX_LINE.search(str(exc))
            line = match.group(1) if match else "0"
            message = _SYNTAX_LINE.sub("", str(exc)).strip()
            raise ConfigError([f"{path}:{line}: TOML syntax error: {message}"]) from exc
        return cls(path=path, text=text, data=data)

    def line_of(self, table: str = "", key: str | None = None, occurrence: int = 0) -> int:
        """Line (1-based) of ``key`` inside ``[table]`` (the ``occurrence``-th ``[[table]]``).

        Falls back to the table header, then to line 1: a message is never without a place.
        """
        lines = self.text.splitlines()
        current = ""
        seen = -1
        header_line = 0
        for number, line in enumerate(lines, start=1):
            header = _HEADER.match(line)
            if header:
                current = _norm(header.group(2))
                if current == table:
                    seen += 1
                    if seen == occurrence:
                        header_line = number
                continue
            in_table = current == table and (seen == occurrence or not table)
            if key is not None and in_table:
                found = _KEY.match(line)
                if found and _norm(found.group(1)) == key:
                    return number
        return header_line or 1

    def problem(
        self, message: str, table: str = "", key: str | None = None, occurrence: int = 0
    ) -> None:
        """Record a problem at the line of ``table``/``key``."""
        self.problems.append(f"{self.path}:{self.line_of(table, key, occurrence)}: {message}")

    def raise_if_problems(self) -> None:
        if self.problems:
            raise ConfigError(self.problems)
