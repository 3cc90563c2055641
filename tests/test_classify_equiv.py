"""The classifier's quick regular expressions match exactly where the plain ones they stand for do."""

from __future__ import annotations

import re
from email.message import Message
from email.policy import compat32
from re import _constants as sre  # type: ignore[attr-defined]
from re import _parser as sre_parse  # type: ignore[attr-defined]
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mailer.domain.classify import autoreply, dates, intent, mime
from mailer.domain.classify.lookahead import starting_with

_WRAPPED = re.compile(r"\(\?=\[(?P<first>.*?)\]\)\(\?:(?P<inner>.*)\)", re.DOTALL)

# Every pattern put behind lookahead.starting_with.
QUICK: dict[str, re.Pattern[str]] = {
    "intent._STOP": intent._STOP,
    "intent._DISPUTE": intent._DISPUTE,
    "intent._PAID": intent._PAID,
    "intent._HARDSHIP": intent._HARDSHIP,
    "intent._PROMISE": intent._PROMISE,
    "intent._NEGATED_PROMISE": intent._NEGATED_PROMISE,
    "intent._NOT_PAID": intent._NOT_PAID,
    "dates._DAY_ONLY": dates._DAY_ONLY,
    "autoreply._RETURN_CUE": autoreply._RETURN_CUE,
    **{f"dates.{kind}": pattern for kind, pattern in dates._PATTERNS},
}


def _split(pattern: re.Pattern[str]) -> tuple[str, str]:
    m = _WRAPPED.fullmatch(pattern.pattern)
    assert m is not None, pattern.pattern
    return m.group("first"), m.group("inner")


_DIGITS = "any Unicode digit"  # what \d can start a match with
_ALL_DIGITS = [c for c in map(chr, range(0x110000)) if c.isdecimal()]  # \d's own set


def _first(items: Any) -> set[str] | None:
    """The characters a match of this parsed sequence can start with; None: not known (it may
    start with anything, or be empty)."""
    out: set[str] = set()
    for op, av in items:
        if op is sre.LITERAL:
            return out | {chr(av)}
        if op is sre.IN:
            for kind, value in av:
                if kind is sre.LITERAL:
                    out.add(chr(value))
                elif kind is sre.RANGE:
                    out.update(chr(c) for c in range(value[0], value[1] + 1))
                elif kind is sre.CATEGORY and value is sre.CATEGORY_DIGIT:
                    out.add(_DIGITS)
                else:
                    return None
            return out
        if op is sre.SUBPATTERN:
            found = _first(av[3])
            return None if found is None else out | found
        if op is sre.BRANCH:
            for alternative in av[1]:
                found = _first(alternative)
                if found is None:
                    return None
                out |= found
            return out
        if op in (sre.MAX_REPEAT, sre.MIN_REPEAT):
            found = _first(av[2])
            if found is None:
                return None
            out |= found
            if av[0] >= 1:
                return out
            continue  # optional: what follows may come first
        if op in (sre.AT, sre.ASSERT, sre.ASSERT_NOT):
            continue  # zero-width: the next item gives the first character
        return None
    return None  # the sequence can match the empty string


def _uncovered(first: str, inner: str) -> set[str]:
    """The characters a match of `inner` can start with that `[first]` refuses."""
    found = _first(sre_parse.parse(inner))
    assert found is not None, "the pattern's first character could not be worked out"
    allowed = re.compile(f"[{first}]")
    missing = set()
    for ch in found:
        if ch == _DIGITS:
            if not all(allowed.fullmatch(d) for d in _ALL_DIGITS):
                missing.add(ch)
        elif not allowed.fullmatch(ch):
            missing.add(ch)
    return missing


@pytest.mark.parametrize("name", sorted(QUICK))
def test_the_look_ahead_admits_every_first_character(name: str) -> None:
    first, inner = _split(QUICK[name])
    assert _uncovered(first, inner) == set()


def test_the_check_catches_a_missing_letter() -> None:
    # Proof that the test above can fail: _STOP without "u" (unsubscribe), and \d without "0".
    _first_letters, inner = _split(intent._STOP)
    assert _uncovered("abcdehlnrst", inner) == {"u"}
    _digits, numeric = _split(dict(dates._PATTERNS)["numeric"])
    assert _uncovered("1-9", numeric) == {"0", _DIGITS}


# Text made of the patterns' own words and of what is tricky around them: word boundaries,
# accents (precomposed and combining), letters whose lower case is longer or odd, digits of
# other scripts, apostrophes, punctuation and line ends.
_PIECES = [
    "no ", "me ", "nos ", "envien", "dejen de escribir", "baja", "stop emailing", "unsubscribe",
    "don't", "dont", "harass", "factura", "la factura es incorrecta", "no reconocemos", "nunca",
    "never received", "we dispute", "ya esta pagada", "hemos pagado", "already paid", "we paid",
    "i've paid", "adjunto el justificante", "plazos", "instalments", "installment", "more time",
    "can't pay", "cannot pay", "pagaremos", "le pagare", "vamos a pagar", "we will pay",
    "i'll pay", "we're going to settle", "payment will be made", "no pagaremos", "won't pay",
    "todavia no hemos pagado", "not yet paid", "haven't paid", "until", "till", "back on",
    "hasta el", "jusqu'au", "bis zum", "zuruck am", "ate", "at\u00e9 o dia", "el dia", "el d\u00eda",
    "on the", "the", "le", "am", "dia", "15", "3", "31st", "9th", "1\u00ba", "2.", "2026", "1999",
    "-", "/", ".", ",", ":", "%", "\u20ac", "march", "mar", "marzo", "m\u00e4rz", "february", "feb",
    "sept", "set", "ago", "pago", "out", "dez", "friday", "viernes", "next", "el pr\u00f3ximo",
    "ma\u00f1ana", "manana", "tomorrow", "semana", "next week", "fin de mes", "end of the month",
    "in 10 days", "en 5 d\u00edas", "heute", "aujourd'hui", "morgen", " ", "  ", "\n", "\t", "\u00a0",
    "(", ")", "'", "_", "x", "\u00f1", "\u00e9", "e\u0301", "\u00df", "\u0130", "\u212a", "\ufb01",
    "\u01c5", "\u0663", "\uff11", "\u00bd", "a", "w", "n", "o",
]  # fmt: skip
texts = st.lists(st.sampled_from(_PIECES), max_size=14).map("".join)


def _matches(pattern: re.Pattern[str], text: str) -> list[tuple[tuple[int, int], Any]]:
    return [(m.span(), m.groups()) for m in pattern.finditer(text)]


@settings(max_examples=3000, deadline=None)
@given(texts)
def test_the_quick_patterns_find_what_the_plain_ones_find(text: str) -> None:
    for name, quick in QUICK.items():
        plain = re.compile(_split(quick)[1])
        for candidate in (text, text.lower(), dates.normalize(text)):
            assert _matches(quick, candidate) == _matches(plain, candidate), name


@settings(max_examples=300, deadline=None)
@given(st.data())
def test_the_quick_patterns_on_strings_the_plain_ones_match(data: st.DataObject) -> None:
    name = data.draw(st.sampled_from(sorted(QUICK)))
    plain = re.compile(_split(QUICK[name])[1])
    text = data.draw(st.from_regex(plain, fullmatch=False))
    assert _matches(QUICK[name], text) == _matches(plain, text)


def test_a_wrong_look_ahead_is_noticed() -> None:
    # Proof that the comparison above can fail: the same pattern behind too narrow a set.
    _first_letters, inner = _split(intent._STOP)
    wrong = starting_with("abcdehlnrst", inner)
    assert _matches(wrong, "please unsubscribe me") != _matches(
        re.compile(inner), "please unsubscribe me"
    )


# _RELATIVE_WORDS: where it finds nothing, no _RELATIVE pattern may match.
@settings(max_examples=3000, deadline=None)
@given(texts)
def test_no_relative_date_without_a_relative_word(text: str) -> None:
    for candidate in (text, text.lower(), dates.normalize(text)):
        if dates._ANY_RELATIVE.search(candidate):
            assert dates._RELATIVE_WORDS.search(candidate), candidate


@pytest.mark.parametrize("index", range(len(dates._RELATIVE)))
@settings(max_examples=400, deadline=None)
@given(data=st.data())
def test_every_relative_date_holds_a_relative_word(index: int, data: st.DataObject) -> None:
    pattern = dates._RELATIVE[index][0]
    text = data.draw(st.from_regex(pattern, fullmatch=True))
    assert dates._RELATIVE_WORDS.search(text), text


def test_every_relative_alternative_holds_a_relative_word_exhaustively() -> None:
    # Each alternative's shortest and longest forms (every optional part left out, or in).
    for pattern, _kind in dates._RELATIVE:
        for example in _examples(pattern.pattern):
            assert pattern.search(example), (pattern.pattern, example)
            assert dates._RELATIVE_WORDS.search(example), example


def _examples(pattern: str) -> list[str]:
    """Strings the pattern matches: every alternative of every group, each optional part
    present and absent (few enough here to list them all)."""
    out = [""]
    for piece in _expand(sre_parse.parse(pattern)):
        out.append(piece)
    return [o for o in out if o]


def _expand(items: Any) -> list[str]:
    results = [""]
    for op, av in items:
        options: list[str]
        if op is sre.LITERAL:
            options = [chr(av)]
        elif op is sre.IN:
            options = []
            for kind, value in av:
                if kind is sre.LITERAL:
                    options.append(chr(value))
                elif kind is sre.CATEGORY:
                    options.append({sre.CATEGORY_DIGIT: "7", sre.CATEGORY_SPACE: " "}[value])
                elif kind is sre.RANGE:
                    options.append(chr(value[0]))
        elif op is sre.SUBPATTERN:
            options = _expand(av[3])
        elif op is sre.BRANCH:
            options = [s for alternative in av[1] for s in _expand(alternative)]
        elif op in (sre.MAX_REPEAT, sre.MIN_REPEAT):
            inner = _expand(av[2])
            options = [s * max(av[0], 1) for s in inner] + ([""] if av[0] == 0 else [])
        elif op in (sre.AT, sre.ASSERT, sre.ASSERT_NOT):
            options = [""]
        else:
            raise AssertionError(f"not expanded: {op}")
        results = [r + o for r in results for o in options]
    return results


def test_a_missing_relative_word_is_noticed() -> None:
    # Proof that the checks above can fail: the gate without "tage" misses "in 5 tagen".
    narrow = re.compile(dates._RELATIVE_WORDS.pattern.replace("|tage", ""))
    assert dates._ANY_RELATIVE.search("in 5 tagen") and not narrow.search("in 5 tagen")


# The header index: the same answers as the header list read on every call.
def _message(headers: list[tuple[str, str]]) -> Message:
    msg = Message(policy=compat32)
    msg._headers = list(headers)  # type: ignore[attr-defined]
    return msg


_NAMES = [
    "Content-Type",
    "content-type",
    "CONTENT-TYPE",
    "X-Autoreply",
    "Subject",
    "Date",
    "\u0130d",
]


@settings(max_examples=500, deadline=None)
@given(
    st.lists(
        st.tuples(
            st.sampled_from(_NAMES),
            st.sampled_from(["", " ", "text/plain", "a\udce9b", "=?utf-8?q?x?=", "  b  c "]),
        ),
        max_size=8,
    )
)
def test_the_header_index_answers_as_the_header_list(headers: list[tuple[str, str]]) -> None:
    msg = _message(headers)
    for name in {n.lower() for n in _NAMES}:
        listed = [(k, v) for k, v in headers if k.lower() == name]
        try:
            got: object = mime.plain_header(msg, name)
        except mime._NotPlain:
            got = "not plain"
        if not listed:
            assert got is None
        else:
            assert got == (listed[0][1] if listed[0][1].isascii() else "not plain")
        head = mime.Headers(msg)
        expected = msg.get(name)
        assert head.present(name) == bool(expected)
        assert head[name] == ("" if expected is None else mime._decode(expected))


def test_the_header_index_follows_a_replaced_header_list() -> None:
    msg = _message([("Subject", "one")])
    assert mime.plain_header(msg, "subject") == "one"
    msg._headers = [("Subject", "two")]  # type: ignore[attr-defined]
    assert mime.plain_header(msg, "subject") == "two"
    msg._headers.append(("X-New", "three"))  # type: ignore[attr-defined]
    assert mime.plain_header(msg, "x-new") == "three"
