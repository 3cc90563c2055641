"""The new text of a reply: quoted history, reply headers and signatures cut away."""

from __future__ import annotations

import re

# A line that opens quoted history: "On <date>, <name> wrote:" in many languages and clients.
_WROTE_LINE = re.compile(
    r"^\s*(?:"
    r"on\b.{0,200}\b(?:wrote|writes|said|sent)\s*:?"
    r"|el\b.{0,200}\b(?:escribi[oó]|escribio)\s*:?"
    r"|em\b.{0,200}\b(?:escreveu)\s*:?"
    r"|le\b.{0,200}\b(?:a [ée]crit)\s*:?"
    r"|am\b.{0,200}\b(?:schrieb|geschrieben)\s*:?"
    r"|il\b.{0,200}\b(?:ha scritto)\s*:?"
    r"|op\b.{0,200}\b(?:geschreven)\s*:?"
    r"|den\b.{0,200}\b(?:skrev)\s*:?"
    r"|\d{1,4}[/.-]\d{1,2}[/.-]\d{1,4}.{0,120}\b(?:wrote|escribi[oó]|a [ée]crit|schrieb|skrev)\s*:?"
    r"|.{0,200}\b(?:wrote|escribi[oó]|a [ée]crit|schrieb|skrev|kirjoitti|napisał)\s*:"
    r")\s*$",
    re.IGNORECASE,
)
# Separators clients put above the quoted message.
_SEPARATOR = re.compile(
    r"^\s*(?:"
    r"-{2,}\s*(?:original message|mensaje original|message d'origine|urspr[üu]ngliche nachricht|"
    r"mensagem original|messaggio originale|forwarded message|mensaje reenviado|oorspronkelijk bericht|"
    r"opprinnelig melding|original meddelelse|alkuper[äa]inen viesti)\s*-{2,}"
    r"|_{10,}"
    r"|-{5,}\s*(?:reply above this line|responda por encima)?.*"
    r"|#{2,}\s*-?\s*(?:please type your reply above this line|reply above this line).*"
    r"|\*?(?:from|de|von|van|fra|da|lähettäjä|od)\s*:\*?\s.+"
    r"|begin forwarded message:"
    r")\s*$",
    re.IGNORECASE,
)
# Header blocks pasted by Outlook: "From: x / Sent: y / To: z / Subject: w".
_HEADER_LINE = re.compile(
    r"^\s*\*?(?:from|sent|to|cc|subject|date|de|enviado(?: el)?|para|asunto|fecha|envoy[ée]|[àa]|objet|"
    r"von|gesendet|an|betreff|datum|em|assunto|data|fra|sendt|til|emne|emne)\s*:\*?",
    re.IGNORECASE,
)
# Signature openers; the text from here on is the sender's furniture, not their message.
_SIGNATURE = re.compile(
    r"^\s*(?:"
    r"--\s*|__+\s*"
    r"|sent from my [\w -]+|sent from (?:mail|outlook|yahoo mail|gmail|windows mail)\b.*"
    r"|enviado desde mi [\w -]+|enviado desde (?:outlook|correo)\b.*|envoy[ée] de mon [\w -]+"
    r"|von meinem [\w -]+ gesendet|gesendet von (?:meinem )?[\w -]+|enviado do meu [\w -]+"
    r"|get outlook for \w+.*"
    r")$",
    re.IGNORECASE,
)


def _is_quote(line: str) -> bool:
    return line.lstrip().startswith(">")


def _cut_at_history(lines: list[str]) -> list[str]:
    for i, line in enumerate(lines):
        if _is_quote(line) and i > 0:
            # Quoted lines after some text of our own: history starts here (or at the line above
            # when that is an "On ... wrote:" header broken over two lines).
            head = i
            if head > 0 and not lines[head - 1].strip():
                head -= 1
            return (
                lines[:head]
                if any(ln.strip() for ln in lines[:head])
                else _own_text_after_quotes(lines)
            )
        if _WROTE_LINE.match(line) and i > 0:
            return lines[:i]
        # "On Tue, 1 Mar 2016 at 10:00, Name <x@y>" then "wrote:" on the next line
        if i + 1 < len(lines) and re.match(
            r"^\s*(?:wrote|escribi[oó]|a [ée]crit|schrieb)\s*:\s*$", lines[i + 1], re.I
        ):
            return lines[:i]
        if (
            i + 1 < len(lines)
            and _WROTE_LINE.match(line + " " + lines[i + 1].strip())
            and re.match(r"^\s*(?:on|el|le|am|em)\b", line, re.I)
        ):
            return lines[:i]
        if _SEPARATOR.match(line) and i > 0:
            if re.match(r"^\s*\*?(?:from|de|von|van|fra|da)\s*:", line, re.I):
                # Only a pasted header block (From: followed by Sent:/To:/Subject:) opens history.
                window = lines[i + 1 : i + 6]
                if sum(bool(_HEADER_LINE.match(w)) for w in window) < 1:
                    continue
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
    text = re.sub(r"\r\n?", "\n", body).replace("\u00a0", " ")
    lines = text.split("\n")
    lines = _cut_at_history(lines)
    lines = _cut_signature(lines)
    return "\n".join(lines).strip()
