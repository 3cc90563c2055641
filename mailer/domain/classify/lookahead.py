"""Regular expressions put behind a look-ahead for the characters their matches can start with."""

from __future__ import annotations

import re


def starting_with(first: str, pattern: str) -> re.Pattern[str]:
    """`pattern` compiled behind ``(?=[first])``: the same matches, found sooner.

    `first` is a character set (as inside [...]) holding every character a match of `pattern`
    can start with, so the look-ahead never refuses a match. A pattern that opens with \\b and an
    alternation has no literal start for the regex engine to scan for: it tries the whole
    alternation at every word boundary (and at every word's end). The look-ahead refuses most of
    those positions in one character test. Groups are unchanged (the added ones do not capture).
    tests/test_classify_equiv.py checks each `first` against the pattern's own parse.
    """
    return re.compile(f"(?=[{first}])(?:{pattern})")
