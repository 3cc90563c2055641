"""`mailer evidence verify --export FILE.zip`: check an export as a lawyer's expert would.

Every file against manifest.json and SHA256SUMS, nothing extra or missing; the chain segment
link by link; each exported event against the segment; every time-stamp token with
``openssl ts -verify``; and, when the database is at hand, that the manifest is the one the
export recorded (``evidence_exported``).
"""

from __future__ import annotations

import csv
import io
import json
import tempfile
import zipfile
from pathlib import Path
from typing import Any

from mailer.evidence.tsa import openssl_problem, read_response, stamped_bytes
from mailer.evidence.verify import Problem
from mailer.store.chain import GENESIS, event_hash, sha256_hex
from mailer.store.db import Store

_UNLISTED = {"manifest.json", "manifest.tsr", "SHA256SUMS"}  # what the manifest cannot list


def verify_export(
    path: Path, store: Store | None = None, ca_file: Path | None = None
) -> list[Problem]:
    """Problems found, first break first; an empty list when the export holds."""
    try:
        archive = zipfile.ZipFile(path)
    except (OSError, zipfile.BadZipFile) as exc:
        return [Problem(str(path), f"not a readable zip: {exc}")]
    with archive:
        files = {name: archive.read(name) for name in archive.namelist()}
    problems: list[Problem] = []
    try:
        manifest = json.loads(files["manifest.json"])
    except (KeyError, ValueError) as exc:
        return [Problem("manifest.json", f"missing or unreadable: {exc}")]
    listed = {f["path"]: f["sha256"] for f in manifest.get("files", [])}
    for name, digest in listed.items():
        if name not in files:
            problems.append(Problem(name, "listed in manifest.json but missing"))
        elif sha256_hex(files[name]) != digest:
            problems.append(Problem(name, "its SHA-256 differs from manifest.json"))
    for name in files:
        if name not in listed and name not in _UNLISTED:
            problems.append(Problem(name, "in the zip but not in manifest.json"))
    sums = {}
    for line in files.get("SHA256SUMS", b"").decode("utf-8", "replace").splitlines():
        digest, _, name = line.partition("  ")
        sums[name] = digest
    for name, data in files.items():
        if name != "SHA256SUMS" and sums.get(name) != sha256_hex(data):
            problems.append(Problem(name, "its SHA-256 differs from SHA256SUMS"))
    manifest_sha = sha256_hex(files["manifest.json"])
    if store is not None:
        recorded = store.conn.execute(
            "SELECT 1 FROM events WHERE kind = 'evidence_exported'"
            " AND json_extract(body, '$.data.manifest_sha256') = ? LIMIT 1",
            (manifest_sha,),
        ).fetchone()
        if recorded is None:
            problems.append(Problem("manifest.json", "no recorded export has this manifest"))
    with tempfile.TemporaryDirectory(prefix="mailer-export-") as tmp:
        ca = ca_file
        if ca is None and "timestamps/tsa-ca.pem" in files:
            # The CA shipped in the export: it proves the tokens are intact and consistent;
            # whether that CA is to be trusted is for the reader (a qualified TSA is listed in
            # the EU trusted lists).
            ca = Path(tmp, "tsa-ca.pem")
            ca.write_bytes(files["timestamps/tsa-ca.pem"])
        if "manifest.tsr" in files:
            problems += _token(files["manifest.tsr"], files["manifest.json"], ca, "manifest.tsr")
        chain = manifest.get("chain")
        if chain:
            problems += _chain(files, chain, ca)
    return problems


def _token(token: bytes, data: bytes, ca: Path | None, where: str) -> list[Problem]:
    try:
        info = read_response(token)
    except Exception as exc:  # a token is untrusted input: any failure to read it is a finding
        return [Problem(where, f"unreadable token: {exc}")]
    if info.imprint_sha256 != sha256_hex(data):
        return [Problem(where, "the token stamps other data")]
    if ca is None:
        return [Problem(where, "no CA certificate to check the token's signature")]
    problem = openssl_problem(data, token, ca)
    return [Problem(where, problem)] if problem else []


def _chain(files: dict[str, bytes], chain: dict[str, Any], ca: Path | None) -> list[Problem]:
    problems: list[Problem] = []
    rows = list(csv.DictReader(io.StringIO(files.get(chain["file"], b"").decode("utf-8"))))
    hashes: dict[int, tuple[str, str]] = {}
    expected = chain.get("first_prev_hash") or GENESIS
    for row in rows:
        event_id = int(row["id"])
        if row["prev_hash"] != expected:
            problems.append(Problem(f"chain event {event_id}", "its link to the one before breaks"))
            break
        if row["body_sha256"] and event_hash(row["prev_hash"], row["body_sha256"]) != row["hash"]:
            problems.append(Problem(f"chain event {event_id}", "its hash does not hold"))
            break
        hashes[event_id] = (row["body_sha256"], row["hash"])
        expected = row["hash"]
    for name, data in files.items():
        if not name.endswith("/events.jsonl"):
            continue
        for line in data.decode("utf-8").splitlines():
            event = json.loads(line)
            found = hashes.get(int(event["id"]))
            where = f"{name} event {event['id']}"
            if found is None:
                problems.append(Problem(where, "not in the chain segment"))
            elif found[1] != event["hash"]:
                problems.append(Problem(where, "its hash differs from the chain segment"))
            elif (
                event["redacted_by"] is None
                and event["body_sha256"]
                and (sha256_hex(event["body"]) != found[0])
            ):
                problems.append(Problem(where, "its body does not hash to the chain's record"))
    for stamp in chain.get("timestamps", []):
        head = int(stamp["head_id"])
        where = stamp["token_file"]
        if hashes.get(head, ("", ""))[1] != stamp["head_hash"]:
            problems.append(Problem(where, f"the chain segment has another hash for event {head}"))
        if files.get(stamp["data_file"]) != stamped_bytes(stamp["head_hash"]):
            problems.append(Problem(stamp["data_file"], "is not the stamped head hash"))
        token = files.get(where, b"")
        problems += _token(token, stamped_bytes(stamp["head_hash"]), ca, where)
    return problems
