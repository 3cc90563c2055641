"""The new text of a reply: quoted history, reply headers and signatures cut away."""

from __future__ import annotations

import re

# Verbs mail clients put in the line above quoted history ("On ..., X wrote:"), by language.
_WROTE_VERB = (
    r"wrote|writes|escribi[oó]|escreveu|a [ée]crit|schrieb|schreef|geschreven|ha scritto|"
    r"scrisse|skrev|kirjoitti|napisa[łl]|написал[аи]?|пишет|yazd[ıi]"
)
# "On Tue, 1 Mar 2016 at 10:00, Name <x@y> wrote:" and its kin, possibly with dashes around.
_WROTE_LINE = re.compile(
    rf"^[\s-]*\S.{{0,250}}(?<![/\w-])(?:{_WROTE_VERB})(?:\b[^\n]{{0,80}}:)?[\s-]*$",
    re.IGNORECASE,
)
# A date-ish line that ends with the quoted author's address: '26.06.2014, 14:41, "X" <x@y>:'
_AUTHOR_LINE = re.compile(
    r"^\s*\S.{0,250}(?:<[^<>\s]+@[^<>\s]*>?|\b\S+@\S+\.\w+)\s*>?\s*:\s*$", re.IGNORECASE
)
# Separators clients put above the quoted message.
_SEPARATOR = re.compile(
    r"^\s*(?:"
    r"-{2,}\s*(?:original message|mensaje original|message d'origine|urspr[üu]ngliche nachricht|"
    r"mensagem original|messaggio originale|forwarded message|mensaje reenviado|oorspronkelijk bericht|"
    r"opprinnelig melding|original meddelelse|alkuper[äa]inen viesti)\s*-{2,}"
    r"|_{10,}|={4,}|\*{10,}"
    r"|-{5,}\s*(?:reply above this line|responda por encima)?.*"
    r"|#{2,}\s*-?\s*(?:please type your reply above this line|reply above this line).*"
    r"|begin forwarded message:|message du\s*:.*"
    r")\s*$",
    re.IGNORECASE,
)
# "From: x / Sent: y / To: z / Subject: w" pasted by Outlook and others, in any language.
_FIELD_LINE = re.compile(r"^\s*\*?[^\W\d_][^:\n]{0,24}:\*?(?:\s*\S.*)?$")
# Signature openers; the text from here on is the sender's furniture, not their message.
_SIGNATURE = re.compile(
    r"^\s*(?:"
    r"--\s*|__+\s*"
    r"|sent from my \w.*|sent from (?:mail|outlook|yahoo mail|gmail|windows mail)\b.*"
    r"|enviado desde mi \w.*|enviado desde (?:outlook|correo)\b.*|envoy[ée] de mon \w.*"
    r"|von meinem \w.* gesendet|gesendet von \w.*|enviado do meu \w.*|inviato da \w.*"
    r"|get outlook for \w.*|sent with \w.*"
    r")$",
    re.IGNORECASE,
)


def _is_quote(line: str) -> bool:
    return line.lstrip().startswith(">")


def _opens_history(lines: list[str], i: int) -> bool:
    """Whether quoted history starts at line i: a quote header, a separator or pasted headers."""
    line = lines[i]
    if not line.strip():
        return False
    joined = line + " " + lines[i + 1].strip() if i + 1 < len(lines) else line
    for candidate in (line, joined):
        if len(candidate) < 400 and (_WROTE_LINE.match(candidate) or _AUTHOR_LINE.match(candidate)):
            # A sentence that merely contains "wrote" is not a header: headers end the paragraph
            # or are followed by quoted lines.
            nxt = (
                lines[i + 2]
                if candidate is joined and i + 2 < len(lines)
                else (lines[i + 1] if i + 1 < len(lines) else "")
            )
            if candidate.rstrip().endswith(":") or not nxt.strip() or _is_quote(nxt):
                return True
    if _SEPARATOR.match(line):
        return True
    window = lines[i : i + 4]
    if len(window) >= 3 and all(_FIELD_LINE.match(w) for w in window[:3]):
        # Three "Field: value" lines in a row, one of them naming an address or a date.
        return any(re.search(r"@|\d{4}|\d{1,2}:\d{2}", w) for w in window[:3])
    return False


def _cut_at_history(lines: list[str]) -> list[str]:
    for i, line in enumerate(lines):
        if i == 0:
            continue
        if _is_quote(line):
            head = i
            while head > 0 and not lines[head - 1].strip():
                head -= 1
            if head > 0 and _opens_history(lines, head - 1):
                head -= 1
            if any(ln.strip() for ln in lines[:head]):
                return lines[:head]
            return _own_text_after_quotes(lines)
        if _opens_history(lines, i):
            return lines[:i]
    if lines and _is_quote(lines[0]):
        return _own_text_after_quotes(lines)
    return lines


def _own_text_after_quotes(lines: list[str]) -> list[str]:
    """Bottom-posting: the reply is the unquoted text after the quoted history."""
    out = [ln for ln in lines if not _is_quote(ln)]
    return _cut_at_history(out) if out != lines else out


def _cut_signature(lines: list[str]) -> list[str]:
    for i, line in enumerate(lines):
        if i > 0 and _SIGNATURE.match(line):
            return lines[:i]
    return lines


def extract_reply(body: str) -> str:
    """The words the person wrote in this message, as they wrote them."""
    text = re.sub(r"\r\n?", "\n", body).replace("\u00a0", " ").replace("\u200e", "")
    lines = text.split("\n")
    lines = _cut_at_history(lines)
    lines = _cut_signature(lines)
    return "\n".join(lines).strip()
