"""The events' canonical JSON: orjson's text is the json module's, for every kind of value events hold."""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import UTC, date, datetime
from enum import IntEnum, StrEnum
from typing import Any

from hypothesis import given
from hypothesis import strategies as st

from mailer.store.db import Canonical, Store, canonical

# What the events' data was always encoded with (before orjson wrote it).
REFERENCE = json.JSONEncoder(sort_keys=True, separators=(",", ":"), ensure_ascii=False, default=str)


class Colour(StrEnum):
    RED = "red"


class Level(IntEnum):
    HIGH = 3


class Name(str):
    """A str subclass that prints otherwise (the json module encodes its characters)."""

    def __str__(self) -> str:
        return f"Name({str.__str__(self)})"


class Count(int):
    """An int subclass (the json module encodes its number)."""


@dataclass(frozen=True)
class Point:
    x: int


class Tagged(dict[str, Any]):
    """A dict subclass, as some libraries hand back."""


texts = st.text(alphabet=st.characters(blacklist_categories=("Cs",)))  # any but lone surrogates
scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**63), max_value=2**64 - 1),
    texts,
    st.decimals(allow_nan=False, allow_infinity=False),
    st.dates(),
    st.datetimes(timezones=st.just(UTC)),
    st.sampled_from([Colour.RED, Level.HIGH, Point(1), Name("n"), Count(7)]),
)
values = st.recursive(
    scalars,
    lambda inner: st.one_of(
        st.lists(inner, max_size=4),
        st.lists(inner, max_size=4).map(tuple),
        st.dictionaries(texts, inner, max_size=4),
        st.dictionaries(texts, inner, max_size=4).map(Tagged),
    ),
    max_leaves=20,
)


@given(values)
def test_the_fast_encoder_writes_what_the_json_module_writes(value: object) -> None:
    assert canonical(value) == REFERENCE.encode(value)


def test_what_orjson_refuses_the_json_module_writes() -> None:
    for value in ({1: "int key"}, 2**70, {"big": [2**65]}, "\ud800 lone surrogate"):
        assert canonical(value) == REFERENCE.encode(value)


def test_control_characters_and_other_scripts() -> None:
    text = "".join(chr(c) for c in range(0x20)) + '"\\/\x7f\u2028\u2029é€😀'
    assert canonical({"t": text, "k\n": [text]}) == REFERENCE.encode({"t": text, "k\n": [text]})


def test_a_spliced_value_is_its_text_and_the_rest_is_encoded(tmp_path: Any) -> None:
    store = Store.open(tmp_path / "m.db")
    inner = {"kind": "human_reply", "reply_text": 'a "quote"\nand é'}
    at = datetime(2026, 2, 2, 10, 0, tzinfo=UTC)
    spliced = store.append_event(
        at, "x", {"c": Canonical(canonical(inner)), "z": 1, "a": date(2026, 1, 1)}
    )
    plain = store.append_event(at, "x", {"c": inner, "z": 1, "a": date(2026, 1, 1)})
    bodies = dict(store.conn.execute("SELECT id, body FROM events WHERE kind = 'x'").fetchall())
    assert json.loads(bodies[spliced])["data"] == json.loads(bodies[plain])["data"]
    assert bodies[spliced] == bodies[plain]
    assert store.verify_chain() is None
    store.close()
