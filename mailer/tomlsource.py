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
    _lines: tuple[dict[tuple[str, int], int], dict[tuple[str, int, str], int]] | None = field(
        default=None, init=False, repr=False, compare=False
    )

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

        A root key may also be written as a table (``[polcy]`` is the unknown root key
        "polcy"). Falls back to the table header, then to line 1: a message always has a place.
        """
        tables, keys = self._index()
        if key is not None:
            found = keys.get((table, occurrence, key))
            if found is None and not table:
                found = tables.get((key, 0))
            if found is not None:
                return found
        return tables.get((table, occurrence), 1)

    def _index(self) -> tuple[dict[tuple[str, int], int], dict[tuple[str, int, str], int]]:
        """Where each table header and key first stands, by scanning the text once."""
        if self._lines is None:
            tables: dict[tuple[str, int], int] = {}
            keys: dict[tuple[str, int, str], int] = {}
            counts: dict[str, int] = {}
            current = ("", 0)
            closing: str | None = None  # the quotes that end the multi-line string being read
            for number, line in enumerate(self.text.splitlines(), start=1):
                if closing is not None:
                    if line.count(closing) % 2 == 1:
                        closing = None
                    continue  # nothing inside a multi-line string is a header or a key
                header = _HEADER.match(line)
                if header:
                    name = _norm(header.group(2))
                    current = (name, counts.get(name, 0))
                    counts[name] = current[1] + 1
                    tables.setdefault(current, number)
                    # `[identities.billing]` also places the table `identities`.
                    parts = name.split(".")
                    for end in range(1, len(parts)):
                        tables.setdefault((".".join(parts[:end]), 0), number)
                    continue
                found = _KEY.match(line)
                if found:
                    name = _norm(found.group(1))
                    keys.setdefault((*current, name), number)
                    keys.setdefault((*current, name.split(".")[0]), number)  # `policy.window =`
                for quote in ('"""', "'''"):
                    if line.count(quote) % 2 == 1:
                        closing = quote
                        break
            self._lines = (tables, keys)
        return self._lines

    def problem(
        self, message: str, table: str = "", key: str | None = None, occurrence: int = 0
    ) -> None:
        """Record a problem at the line of ``table``/``key``."""
        self.problems.append(f"{self.path}:{self.line_of(table, key, occurrence)}: {message}")

    def raise_if_problems(self) -> None:
        if self.problems:
            raise ConfigError(self.problems)
