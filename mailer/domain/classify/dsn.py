"""Failed recipients of a bounce: RFC 3464 fields first, else the many prose formats MTAs send."""

from __future__ import annotations

import dataclasses
import json
import re
from collections.abc import Sequence
from dataclasses import dataclass

from mailer.domain.classify import mime
from mailer.domain.classify.diagnosis import decide_reason
from mailer.domain.classify.model import FailedRecipient, Reason
from mailer.domain.classify.reasons import (
    reply_code_in_text,
    status_in_text,
)
from mailer.domain.classify.report import Report

# Addresses that are the reporting system, never the recipient that failed.
_SYSTEM_LOCALS = re.compile(
    r"^(?:mailer-daemon|postmaster|mail-daemon|maildaemon|mailerdaemon|mailer_daemon|"
    r"daemon|nobody|root|no-?reply|bounces?|double-bounce|mail-?delivery|"
    r"abuse|hostmaster|webmaster|mdaemon|smtp)$",
    re.IGNORECASE,
)
_DELAY_WORDS = re.compile(
    r"delayed|will (?:continue|keep) trying|will be retried|still trying|not yet been delivered|"
    r"warning: message|delivery (?:is )?delayed|temporar(?:y|ily) (?:failure|error|problem)",
    re.IGNORECASE,
)


@dataclass(frozen=True, slots=True)
class _Found:
    address: str
    diagnostic: str
    status: str = ""
    action: str = ""
    original_recipient: str = ""


def clean_address(value: str) -> str | None:
    value = value.strip()
    if ";" in value:
        value = value.split(";", 1)[1]
    value = value.strip().strip("<>").strip()
    if value.lower().startswith("mailto:"):
        value = value[7:]
    found = mime.ADDRESS_RE.search(value)
    if not found:
        return None
    addr = found.group(0).strip(".").lower()
    # Keep a quoted local part only when it is the whole address (Sisimai keeps it too).
    return addr


def _from_blocks(report: Report) -> list[_Found]:
    found: list[_Found] = []
    seen: set[str] = set()
    for block in report.blocks:
        raw = (
            block.get("final-recipient")
            or block.get("x-actual-recipient")
            or block.get("original-recipient")
        )
        if not raw:
            continue
        addr = clean_address(raw)
        if addr is None or addr in seen:
            continue
        seen.add(addr)
        original = clean_address(block.get("original-recipient", "")) or ""
        found.append(
            _Found(
                address=addr,
                diagnostic=block.get("diagnostic-code", "").partition(";")[2].strip()
                or block.get("diagnostic-code", ""),
                status=block.get("status", "").strip(),
                action=block.get("action", "").strip().lower(),
                original_recipient=original,
            )
        )
    return found


# Lines that name the failed recipient in prose bounces, most specific first.
_LINE_PATTERNS = (
    # qmail / Postfix / many: "<user@example.com>:" then the reason
    re.compile(r"^\s*<([^<>\s]+@[^<>\s]+)>\s*:?\s*(.*)$"),
    # Sendmail: "user@example.com... User unknown" / "<user@example.com>... "
    re.compile(r"^\s*(?:[45]\d\d[ -](?:[45]\.\d+\.\d+ )?)?<?([^<>\s]+@[^<>\s]+?)>?\.\.\.\s*(.*)$"),
    # Exim, Gmail, Courier: the address alone, indented, on its own line
    re.compile(r"^\s+<?([^<>\s:]+@[^<>\s:]+?)>?\s*$"),
    # "Recipient address: x", "Failed recipient: x", "RCPT TO:<x>", "Original-Recipient: rfc822;x"
    re.compile(
        r"(?i)(?:\b(?:recipient(?:\(s\))?(?: address)?|address(?:ee)?|rcpt to|to|destinatario"
        r"|destinataire|empf[äa]nger|final-recipient|original-recipient)\s*:"
        r"|\b(?:undeliverable to|delivered to|delivery to|failed to deliver to)\s*:?)\s*(?:rfc822;)?\s*<?([^<>\s,;]+@[^<>\s,;]*[^<>\s,;.])>?(.*)$"
    ),
    # Bare address at the start of a line followed by a colon and the reason (Exim variants)
    re.compile(r"^\s*([^<>\s:]+@[^<>\s:]+?)\s*[:(]\s*(.*)$"),
)


def _from_prose(report: Report, exclude: set[str]) -> list[_Found]:
    lines = report.prose.split("\n")
    hits: list[tuple[int, str, str]] = []  # (line number, address, rest of line)
    for number, line in enumerate(lines):
        for pattern in _LINE_PATTERNS:
            m = pattern.search(line) if pattern.pattern.startswith("(?i)") else pattern.match(line)
            if not m:
                continue
            addr = clean_address(m.group(1))
            if addr is None:
                continue
            if not _is_system(addr, exclude):
                hits.append((number, addr, m.group(2) if m.lastindex and m.lastindex >= 2 else ""))
            break
    if not hits:
        # Last resort: any address in the prose that is not the reporting system or the sender.
        for number, line in enumerate(lines):
            for m in mime.ADDRESS_RE.finditer(line):
                addr = clean_address(m.group(0))
                if addr and not _is_system(addr, exclude):
                    hits.append((number, addr, line[m.end() :]))
    found: list[_Found] = []
    seen: set[str] = set()
    for i, (number, addr, rest) in enumerate(hits):
        if addr in seen:
            continue
        seen.add(addr)
        # The recipient's diagnostic: its own line plus what follows, up to the next recipient.
        # Lines naming the same address again belong to it: Sendmail lists it above its
        # transcript, Exim repeats it in "after RCPT TO:<x>".
        last = i
        while last + 1 < len(hits) and hits[last + 1][1] == addr:
            last += 1
        following_hit = hits[last + 1][0] if last + 1 < len(hits) else -1
        end = following_hit if following_hit > number else min(len(lines), hits[last][0] + 12)
        following = "\n".join(lines[number + 1 : max(end, number + 1)])
        found.append(_Found(address=addr, diagnostic=(rest + "\n" + following).strip()))
    return found


def _near(prose: str, address: str) -> str:
    at = prose.lower().find(address)
    return prose[at : at + 600] if at >= 0 else prose


def ses_notification(prose: str) -> bool:
    return bool(_from_json(prose))


def _from_json(prose: str) -> list[_Found]:
    """Amazon SES notifications delivered as an SNS email: JSON with bouncedRecipients."""
    if "bouncedRecipients" not in prose:
        return []
    try:
        outer, _end = json.JSONDecoder(strict=False).raw_decode(prose[prose.index("{") :])
        inner = (
            json.loads(outer["Message"], strict=False)
            if isinstance(outer.get("Message"), str)
            else outer
        )
        listed = inner["bounce"]["bouncedRecipients"]
        bounce_type = str(inner["bounce"].get("bounceType", ""))
    except (ValueError, KeyError, TypeError, AttributeError):
        return []
    found = []
    for item in listed if isinstance(listed, list) else []:
        if not isinstance(item, dict):
            continue
        addr = clean_address(str(item.get("emailAddress", "")))
        if addr:
            status = str(item.get("status", "")) or ("5.0.0" if bounce_type == "Permanent" else "")
            code = str(item.get("diagnosticCode", ""))
            found.append(
                _Found(
                    address=addr,
                    diagnostic=code.partition(";")[2] or code,
                    status=status,
                    action=str(item.get("action", "")),
                )
            )
    return found


def _is_system(addr: str, exclude: set[str]) -> bool:
    local = addr.rsplit("@", 1)[0].strip('"')
    return addr in exclude or bool(_SYSTEM_LOCALS.match(local))


def failed_recipients(
    report: Report,
    *,
    exclude: set[str],
    listed: Sequence[str] = (),
    fallback_to: str = "",
) -> list[FailedRecipient]:
    """Every recipient the report says failed (or was delayed), with reason, status and diagnostic."""
    found = [f for f in _from_blocks(report) if not _success(f.action)]
    if found and any(not f.diagnostic for f in found):
        # DSN fields without a Diagnostic-Code (OpenSMTPD, Mail.ru): the prose says why.
        said = {f.address: f.diagnostic for f in _from_prose(report, exclude)}
        found = [
            f if f.diagnostic else dataclasses.replace(f, diagnostic=said.get(f.address, ""))
            for f in found
        ]
    if not found:
        found = _from_json(report.prose)
    if not found and not report.blocks:
        found = _from_prose(report, exclude)
    if listed:
        # Exim's X-Failed-Recipients is the authoritative list; the prose only adds diagnostics.
        by_address = {f.address: f for f in found}
        found = [
            by_address.get(a) or _Found(address=a, diagnostic=_near(report.prose, a))
            for a in listed
        ]
    if not found and fallback_to:
        # Some reports name no address at all; Sisimai then takes the original's To: header.
        addr = clean_address(fallback_to)
        if addr and addr not in exclude:
            found = [_Found(address=addr, diagnostic="")]
    # With one recipient the whole prose speaks about it; with several it could be any of them.
    context = report.prose if len(found) == 1 else ""
    return [_judge(f, context) for f in found]


def _judge(f: _Found, prose: str) -> FailedRecipient:
    diagnostic = re.sub(r"\s+", " ", f.diagnostic).strip()
    status = _clean_status(f.status)
    text_status = status_in_text(diagnostic) or (status_in_text(prose) if not status else "")
    if not status or (status.endswith(".0.0") and text_status and text_status[0] == status[0]):
        status = text_status or status
    reason = decide_reason(f.diagnostic.strip(), status, prose)
    delayed = f.action == "delayed" or (
        not f.action and not status and bool(_DELAY_WORDS.search(prose + diagnostic))
    )
    if reason is None and f.address.endswith("@googlegroups.com"):
        reason = Reason.REJECTED  # Google Groups refuses posts from non-members, in any language
    if reason is None:
        reason = Reason.EXPIRED if delayed else Reason.ON_HOLD
    if not status:
        code = reply_code_in_text(diagnostic)
        if code:
            status = f"{code[0]}.0.0"
    permanent = status[0] == "5" if status else not delayed
    if not status:
        status = "5.0.0" if permanent else "4.0.0"
    return FailedRecipient(
        address=f.address,
        reason=reason,
        status=status,
        permanent=permanent,
        diagnostic=diagnostic[:1000],
    )


def _clean_status(value: str) -> str:
    m = re.search(r"([245])\.(\d{1,3})\.(\d{1,3})", value)
    return ".".join(m.groups()) if m else ""


def delivered_recipients(report: Report) -> list[FailedRecipient]:
    """A success DSN: the addresses it reports delivered, for the evidence log."""
    out = []
    for f in _from_blocks(report):
        if _success(f.action):
            out.append(
                FailedRecipient(
                    address=f.address,
                    reason=Reason.DELIVERED,
                    status=_clean_status(f.status),
                    permanent=False,
                    diagnostic=f.diagnostic,
                )
            )
    return out


def only_successes(report: Report) -> bool:
    actions = [f.action for f in _from_blocks(report)]
    return bool(actions) and all(_success(a) for a in actions)


def _success(action: str) -> bool:
    # Postfix's address verification says "deliverable"; RFC 3464 says delivered/relayed/expanded.
    return action.startswith(("deliver", "relay", "expand"))
