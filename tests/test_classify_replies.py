"""Reply text extraction against the reply corpus (talon, email_reply_parser and kin)."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest

from mailer.domain.classify import classify, extract_reply
from mailer.domain.classify.mime import html_to_text

CORPUS = Path(__file__).resolve().parents[2] / "shared" / "corpus"
needs_corpus = pytest.mark.skipif(not CORPUS.is_dir(), reason="../shared/corpus is not here")

# Where the source project's expectation is not ours: talon keeps the signature below "-- ",
# mailer strips it (a signature says nothing about paying).
KNOWN_DIFFERENT = {"replies/talon/standard_replies/sparrow.eml"}


def _rows() -> list[dict[str, Any]]:
    if not CORPUS.is_dir():
        return []
    text = (CORPUS / "replies_expected.jsonl").read_text(encoding="utf-8")
    return [json.loads(line) for line in text.splitlines() if line.strip()]


def _reply(row: dict[str, Any]) -> str:
    raw = (CORPUS / row["file"]).read_bytes()
    if row["format"] == "eml":
        return classify(raw).reply_text
    text = raw.decode("utf-8", "replace")
    return extract_reply(html_to_text(text) if row["format"] == "html_body" else text)


def _failures(row: dict[str, Any], got: str) -> list[str]:
    """The row's expectations on the visible reply (its first fragment) that `got` misses."""
    failed = []
    expected = row.get("expected_reply") or row.get("expected_first_fragment")
    if expected is not None:
        if row["format"] == "html_body":
            same = re.sub(r"\s", "", got) == re.sub(r"\s", "", expected)
        else:
            same = got.strip() == expected.strip()
        if not same:
            failed.append("expected text")
    for check in row["assertions"]:
        if check["target"] not in ("visible", "fragment[0]"):
            continue
        op, value = check["op"], str(check["value"])
        if op in ("equals", "equals_stripped"):
            ok = got.strip() == value.strip()
        elif op == "contains":
            ok = value in got
        elif op == "not_contains":
            ok = value not in got
        elif op in ("matches", "matches_multiline"):
            ok = re.search(value, got, re.M if op == "matches_multiline" else 0) is not None
        else:
            ok = True
        if not ok:
            failed.append(f"{op} {value!r}")
    return failed


@needs_corpus
@pytest.mark.parametrize("row", _rows(), ids=lambda r: str(r["file"]))
def test_reply_text(row: dict[str, Any]) -> None:
    got = _reply(row)
    failed = _failures(row, got)
    if row["file"] in KNOWN_DIFFERENT:
        assert failed, "now agrees with its source: drop it from KNOWN_DIFFERENT"
        return
    assert not failed, f"{row['file']}: {failed}\n---\n{got}"


@needs_corpus
def test_human_replies_in_corpus_are_human() -> None:
    for row in _rows():
        if row["format"] == "eml":
            result = classify((CORPUS / row["file"]).read_bytes())
            assert result.kind.value == "human_reply", row["file"]
            assert not result.recipients


def test_quote_signature_and_outlook_header_are_cut() -> None:
    body = (
        "Hola,\n\nYa está pagado, adjunto justificante.\n\nSaludos\n--\nAna Pérez\nTel 600 000 000\n\n"
        "De: Cobros <cobros@empresa.example>\nEnviado: martes, 3 de marzo de 2026 9:00\n"
        "Para: Ana <ana@cliente.example>\nAsunto: Factura pendiente\n\nLe recordamos...\n"
    )
    assert extract_reply(body) == "Hola,\n\nYa está pagado, adjunto justificante.\n\nSaludos"


def test_a_sentence_with_wrote_is_not_a_quote_header() -> None:
    body = "I wrote to your colleague last week about this.\nWe will pay on Friday.\n"
    assert extract_reply(body) == body.strip()
