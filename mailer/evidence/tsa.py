"""RFC 3161 time-stamps of the chain head from a configured TSA, and how they are checked.

What is stamped is the head event's hash written as 64 lowercase hex characters, no newline:
anyone can recreate that file and run ``openssl ts -verify -data FILE -in TOKEN.tsr -CAfile CA``.
Because every event's hash covers the one before, a token on the head proves that the whole
chain up to it existed at the token's time. Each token is kept as a blob and recorded by a
``chain_timestamped`` event, so a token removed later is missed by ``mailer evidence verify``.

Requests are built and responses read with asn1crypto (pure Python); the signature and the
certificate chain are checked by the ``openssl`` command, the same standard tool a lawyer's
expert would use. ``timestamp_if_due`` is the hook the daemon calls now and then.
"""

from __future__ import annotations

import logging
import secrets
import shutil
import subprocess
import tempfile
import urllib.error
import urllib.request
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from asn1crypto import algos, tsp

from mailer.config import Settings
from mailer.errors import PermanentError, TemporaryError
from mailer.store.chain import sha256_hex
from mailer.store.db import Store

log = logging.getLogger(__name__)

EVENT = "chain_timestamped"
QUERY_TYPE = "application/timestamp-query"
REPLY_TYPE = "application/timestamp-reply"


class TimestampError(TemporaryError):
    """The TSA could not be reached or answered with an error: try at the next interval."""


class BadTokenError(PermanentError):
    """A token that does not stamp what was asked, or cannot be read: never stored."""


@dataclass(frozen=True, slots=True)
class TokenInfo:
    """What a time-stamp response says, read from its TSTInfo."""

    gen_time: datetime
    imprint_sha256: str  # hex: the SHA-256 of the stamped bytes
    nonce: int | None
    serial: int
    policy: str
    tsa: str | None


@dataclass(frozen=True, slots=True)
class Stamp:
    """A token stored and recorded for the chain head ``head_id``."""

    event_id: int
    head_id: int
    head_hash: str
    token_sha256: str
    gen_time: datetime


def stamped_bytes(head_hash: str) -> bytes:
    """The exact bytes whose SHA-256 is time-stamped: the head hash as hex text."""
    return head_hash.encode("ascii")


def build_request(digest_hex: str, nonce: int) -> bytes:
    """A DER TimeStampReq for a SHA-256 digest, asking the TSA to include its certificate."""
    request = tsp.TimeStampReq(
        {
            "version": "v1",
            "message_imprint": {
                "hash_algorithm": algos.DigestAlgorithm({"algorithm": "sha256"}),
                "hashed_message": bytes.fromhex(digest_hex),
            },
            "nonce": nonce,
            "cert_req": True,
        }
    )
    return bytes(request.dump())


def read_response(data: bytes) -> TokenInfo:
    """Status and TSTInfo of a DER TimeStampResp; BadTokenError if refused or unreadable."""
    try:
        response: Any = tsp.TimeStampResp.load(data)
        status = response["status"]["status"].native
        if status not in ("granted", "granted_with_mods"):
            text = response["status"]["status_string"].native
            raise BadTokenError(f"the TSA refused: {status} {text or ''}".strip())
        signed = response["time_stamp_token"]["content"]
        info = signed["encap_content_info"]["content"].parsed
        imprint = info["message_imprint"]
        algorithm = imprint["hash_algorithm"]["algorithm"].native
        if algorithm != "sha256":
            raise BadTokenError(f"the token stamps a {algorithm} digest, not sha256")
        tsa = info["tsa"]
        return TokenInfo(
            gen_time=info["gen_time"].native,
            imprint_sha256=imprint["hashed_message"].native.hex(),
            nonce=info["nonce"].native,
            serial=int(info["serial_number"].native),
            policy=str(info["policy"].native),
            tsa=None if tsa.native is None else str(tsa.chosen.native),
        )
    except BadTokenError:
        raise
    except (ValueError, TypeError, KeyError, AttributeError) as exc:
        raise BadTokenError(f"not a time-stamp response: {exc}") from exc


def ask_tsa(url: str, request: bytes, timeout: float) -> bytes:
    """POST the request (RFC 3161 section 3.4); the DER response."""
    http = urllib.request.Request(
        url, data=request, method="POST", headers={"Content-Type": QUERY_TYPE}
    )
    try:
        with urllib.request.urlopen(http, timeout=timeout) as answer:
            kind = answer.headers.get("Content-Type", "")
            body = bytes(answer.read())
    except urllib.error.HTTPError as exc:
        raise TimestampError(f"TSA {url}: HTTP {exc.code} {exc.reason}") from exc
    except (urllib.error.URLError, OSError) as exc:
        raise TimestampError(f"TSA {url}: {exc}") from exc
    if REPLY_TYPE not in kind:
        raise TimestampError(f"TSA {url}: answered {kind or 'no content type'}, not a time-stamp")
    return body


def openssl_problem(
    data: bytes, response: bytes, ca_file: Path, certs_file: Path | None = None
) -> str | None:
    """``openssl ts -verify``: None when the token's signature and certificates hold."""
    openssl = shutil.which("openssl")
    if openssl is None:
        return "cannot check the TSA's signature: the openssl command is not installed"
    with tempfile.TemporaryDirectory(prefix="mailer-ts-") as tmp:
        data_file, token_file = Path(tmp, "data"), Path(tmp, "token.tsr")
        data_file.write_bytes(data)
        token_file.write_bytes(response)
        command = [openssl, "ts", "-verify", "-data", str(data_file), "-in", str(token_file)]
        command += ["-CAfile", str(ca_file)]
        if certs_file is not None:
            command += ["-untrusted", str(certs_file)]
        done = subprocess.run(command, capture_output=True, text=True, timeout=60, check=False)
    if done.returncode == 0 and "Verification: OK" in done.stdout:
        return None
    detail = " ".join((done.stdout + " " + done.stderr).split())[:300]
    return f"openssl ts -verify refuses the token: {detail}"


def check_token(
    response: bytes, head_hash: str, ca_file: Path | None, certs_file: Path | None
) -> tuple[TokenInfo | None, str | None]:
    """(what the token says, the first problem or None): imprint, then signature and certs."""
    try:
        info = read_response(response)
    except BadTokenError as exc:
        return None, str(exc)
    if info.imprint_sha256 != sha256_hex(stamped_bytes(head_hash)):
        return info, "the token stamps something other than this chain head"
    if ca_file is None:
        return info, "no tsa_ca_file configured: the TSA's signature cannot be checked"
    return info, openssl_problem(stamped_bytes(head_hash), response, ca_file, certs_file)


def last_stamp(store: Store) -> tuple[int, int, datetime] | None:
    """(event id, head id, when) of the latest time-stamp recorded, if any."""
    row = store.conn.execute(
        "SELECT id, at, json_extract(body, '$.data.head_id') FROM events WHERE kind = ?"
        " ORDER BY id DESC LIMIT 1",
        (EVENT,),
    ).fetchone()
    return None if row is None else (int(row[0]), int(row[2]), datetime.fromisoformat(row[1]))


def due_head(store: Store, settings: Settings, now: datetime) -> tuple[int, str] | None:
    """(id, hash) of the chain head to stamp now, or None: no TSA, too soon, or nothing new."""
    evidence = settings.evidence
    if evidence.tsa_url is None:
        return None
    last = last_stamp(store)
    if last is not None:
        if now - last[2] < timedelta(hours=evidence.timestamp_interval_hours):
            return None
        moved = store.conn.execute(
            "SELECT 1 FROM events WHERE id > ? AND kind != ? LIMIT 1", (last[1], EVENT)
        ).fetchone()
        if moved is None:
            return None  # only our own stamp events since: nothing new to prove
    head = store.conn.execute("SELECT id, hash FROM events ORDER BY id DESC LIMIT 1").fetchone()
    return None if head is None else (int(head[0]), str(head[1]))


def fetch_token(settings: Settings, head_hash: str) -> tuple[bytes, TokenInfo]:
    """Ask the TSA to stamp ``head_hash`` and check its answer; no database, so a thread may run it.

    Raises TimestampError (temporary) or BadTokenError (an answer that does not hold).
    """
    evidence = settings.evidence
    assert evidence.tsa_url is not None
    nonce = secrets.randbits(63)
    request = build_request(sha256_hex(stamped_bytes(head_hash)), nonce)
    response = ask_tsa(evidence.tsa_url, request, evidence.tsa_timeout_seconds)
    info, problem = check_token(response, head_hash, evidence.tsa_ca_file, evidence.tsa_certs_file)
    if info is not None and problem is None and info.nonce != nonce:
        problem = "the TSA's answer carries another request's nonce"
    if info is None or problem is not None:
        raise BadTokenError(f"TSA {evidence.tsa_url}: {problem}")
    return response, info


def record_token(
    store: Store, settings: Settings, now: datetime, head: tuple[int, str], token: bytes,
    info: TokenInfo,
) -> Stamp:  # fmt: skip
    """Keep the token as a blob and record it in the chain (``chain_timestamped``)."""
    head_id, head_hash = head
    with store.transaction():
        token_sha = store.put_blob(token)
        event_id = store.append_event(
            now,
            EVENT,
            {
                "head_id": head_id,
                "head_hash": head_hash,
                "token_sha256": token_sha,
                "gen_time": info.gen_time.isoformat(),
                "serial": str(info.serial),
                "policy": info.policy,
                "tsa_url": settings.evidence.tsa_url,
                "tsa_name": info.tsa,
            },
        )
    log.info("chain head %s time-stamped at %s", head_id, info.gen_time)
    return Stamp(event_id, head_id, head_hash, token_sha, info.gen_time)


def timestamp_if_due(store: Store, settings: Settings, now: datetime) -> Stamp | None:
    """Stamp the chain head when a TSA is configured, the interval has passed and it moved.

    The daemon's periodic hook: the stamp made, or None when nothing was due. It blocks for the
    TSA's answer (at most ``tsa_timeout_seconds``); a daemon that must not wait that long calls
    ``due_head``, then ``fetch_token`` in a thread, then ``record_token``. Raises TimestampError
    (temporary: the TSA unreachable or failing) or BadTokenError (the answer does not stamp the
    head, or its signature fails); nothing is stored then.
    """
    head = due_head(store, settings, now)
    if head is None:
        return None
    token, info = fetch_token(settings, head[1])
    return record_token(store, settings, now, head, token, info)
