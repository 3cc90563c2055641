"""The classifier's quick MIME reader gives the email package's trees, and the same classifications."""

from __future__ import annotations

import email
import email.utils
from email.message import Message
from email.policy import compat32
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mailer.domain.classify import classify, fastmime, mime, report

CORPUS = Path(__file__).resolve().parents[2] / "shared" / "corpus"
needs_corpus = pytest.mark.skipif(not CORPUS.is_dir(), reason="../shared/corpus is not here")


def _tree(msg: Message) -> list[Any]:
    """Everything the classifier can read of a parsed message."""
    ctype = msg.get_content_type()
    payload = msg.get_payload()
    body: Any = [_tree(sub) for sub in payload] if isinstance(payload, list) else payload
    return [msg.items(), ctype, msg.get_default_type(), msg.preamble, msg.epilogue, body]


def _same_as_email_package(raw: bytes) -> bool:
    """True when the quick reader read it (and agrees); False when it left it to `email`."""
    fast = fastmime.parse(raw.decode("ascii", "surrogateescape"))
    if fast is None:
        return False
    assert _tree(fast) == _tree(email.message_from_bytes(raw, policy=compat32))
    return True


def _corpus_files() -> list[Path]:
    if not CORPUS.is_dir():
        return []
    return sorted(p for p in CORPUS.rglob("*") if p.is_file() and p.suffix in (".eml", ".txt"))


@needs_corpus
def test_same_trees_as_the_email_package_on_the_corpus() -> None:
    read = 0
    variants = 0
    for path in _corpus_files():
        raw = path.read_bytes()
        for variant in (raw, raw.replace(b"\n", b"\r\n"), raw[: len(raw) // 2], raw[::-1]):
            variants += 1
            read += _same_as_email_package(variant)
    assert read > 0.8 * variants  # the rest (bare CRs, mbox "From " lines) went to `email`


@needs_corpus
def test_same_classifications_with_either_reader(monkeypatch: pytest.MonkeyPatch) -> None:
    files = [p for p in _corpus_files() if p.suffix == ".eml"]
    quick = [classify(p.read_bytes()).to_json() for p in files]
    monkeypatch.setattr(fastmime, "parse", lambda text: None)
    assert [classify(p.read_bytes()).to_json() for p in files] == quick


NESTED = (
    "From: a@example.com\r\nSubject: x\r\nMIME-Version: 1.0\r\n"
    'Content-Type: multipart/mixed; boundary="outer"\r\n\r\n'
    "preamble line\r\n--outer\r\n"
    "Content-Type: multipart/alternative; boundary=inner\r\n\r\n"
    "--inner\r\nContent-Type: text/plain; charset=utf-8\r\n\r\nhola\r\n\r\n"
    "--inner\r\nContent-Type: text/html\r\n\r\n<p>hola</p>\r\n"
    "--outer\r\nContent-Type: message/rfc822\r\n\r\n"
    "From: b@example.com\r\nSubject: inner\r\n\r\nbody of the attached one\r\n"
    "--outer--\r\nepilogue\r\n"
)


@pytest.mark.parametrize(
    "text",
    [
        NESTED,
        NESTED.replace("\r\n", "\n"),
        NESTED.replace("--outer--\r\nepilogue\r\n", ""),  # no closing boundary
        NESTED.replace("--inner\r\nContent-Type: text/html", "--outer\r\nContent-Type: text/html"),
        "Subject: folded\n and continued\nX-Empty:\n\nbody without a final newline",
        "Subject: only headers\n",
        "no header at all\n\njust text\n",
        " leading continuation\nSubject: x\n\nbody\n",
        ":no name\nSubject: x\n\nbody\n",
        "Subject: x\nContent-Type: multipart/mixed\n\nno boundary parameter\n",
        'Subject: x\nContent-Type: multipart/mixed; boundary="b"\n\nno boundary line at all\n',
        "Subject: x\nContent-Type: multipart/mixed; boundary=b\n\n--b\n\nno part headers\n--b--",
        "Subject: caf\udcc3\udca9\nContent-Type: text/plain; charset=utf-8\n\nol\udcc3\udca1\n",
        "Subject: x\nContent-Type: message/delivery-status\n\nAction: failed\n\nStatus: 5.1.1\n",
    ],
)
def test_same_trees_on_hand_written_mime(text: str) -> None:
    assert _same_as_email_package(text.encode("ascii", "surrogateescape"))


@pytest.mark.parametrize(
    "text",
    [
        "Subject: x\rwith a bare CR\n\nbody\n",
        "From someone@example.com Wed Mar  4 10:00:00 2026\nSubject: mbox\n\nbody\n",
        "Subject: x\nContent-Type: multipart/digest; boundary=b\n\n--b\n\nmsg\n--b--\n",
        "Subject: x\nContent-Type: multipart/mixed; boundary=b\n\n--b\n--b\nX: y\n\nz\n--b--\n",
    ],
)
def test_unusual_mime_is_left_to_the_email_package(text: str) -> None:
    assert fastmime.parse(text) is None
    assert mime.parse(text.encode()).get("Subject") == "x" or text.startswith("From ")


@pytest.mark.parametrize(
    "value",
    [
        'text/plain; charset="UTF-8"; format=flowed',
        "text/plain;charset = iso-8859-1 ",
        'text/plain; name="a;b"; charset=x',
        "text/plain; charset*=utf-8''%e2%82%ac",
        'multipart/mixed; boundary="<abc>"',
        'multipart/mixed; boundary="=_x\\"y"',
        "multipart/mixed;\n boundary=b1; BOUNDARY=b2",
        "text/plain",
    ],
)
def test_parameters_as_the_email_package_reads_them(value: str) -> None:
    part = Message()
    part["Content-Type"] = value
    assert mime._charset(part) == part.get_content_charset()
    found = fastmime.simple_param(value, "boundary")
    if found is not fastmime.NOT_SIMPLE:
        assert (fastmime._unquote(found).rstrip() if isinstance(found, str) else None) == (
            part.get_boundary()
        )


@pytest.mark.parametrize(
    "value",
    [
        "ana@cliente.example",
        "Ana Pérez <ana@cliente.example>",
        "MAILER-DAEMON@mx.example (Mail Delivery System)",
        "a@x.example, B <b@y.example>",
        '"Pérez, Ana" <ana@cliente.example>',
        "undisclosed-recipients:;",
        "a@b.example x",
        "",
    ],
)
def test_addresses_as_the_email_package_reads_them(value: str) -> None:
    assert mime.addresses(value) == [a for _n, a in email.utils.getaddresses([value])]


_MIME_LINES = st.lists(
    st.sampled_from(
        [
            "From: a@example.com\n",
            "Subject: x\r\n",
            " continued\n",
            "X-Odd:value\n",
            ":no name\n",
            "not a header\n",
            "Content-Type: multipart/mixed; boundary=b\n",
            'Content-Type: multipart/alternative; boundary="c"\n',
            "Content-Type: message/rfc822\n",
            "Content-Type: message/delivery-status\n",
            "Content-Type: text/plain; charset=utf-8\n",
            "Content-Transfer-Encoding: base64\n",
            "\n",
            "\r\n",
            "--b\n",
            "--b--\n",
            "--b \t\n",
            "--c\n",
            "--c--",
            "--bb\n",
            "--b--\r\n",
            "--b-- trailing\n",
            "text \udcc3\udca9\n",
            "Status: 5.1.1\n",
            "From x@example.com Wed Mar  4 10:00:00 2026\n",
            "Content-Type: multipart/digest; boundary=b\n",
            "body without a newline",
        ]
    ),
    max_size=40,
)


@given(_MIME_LINES)
@settings(max_examples=400, deadline=None)
def test_same_trees_on_generated_mime(lines: list[str]) -> None:
    _same_as_email_package("".join(lines).encode("ascii", "surrogateescape"))


@pytest.mark.parametrize(
    "text",
    [
        "Subject: x\x0cy\n\nbody\x0cmore\n",  # form feeds end lines for str.splitlines only
        "Subject: x\n\nbody\x1cmore\x1d\x1e",
        "Subject: x\r\nX-A: \x0b\r\n\r\nbody\r\nends in a line end of its own\x0c",
    ],
)
def test_same_trees_with_other_line_ends(text: str) -> None:
    assert _same_as_email_package(text.encode("ascii", "surrogateescape"))
    # Decoded text (a returned original read from a prose part) can have the Unicode ones too.
    decoded = text.replace("\x0c", "\u2028").replace("\x1c", "\x85")
    fast = fastmime.parse(decoded)
    assert fast is not None
    assert _tree(fast) == _tree(email.message_from_string(decoded, policy=compat32))


_PART_HEADERS = st.lists(
    st.sampled_from(
        [
            "Content-Type: text/plain; charset=utf-8\n",
            'content-type: TEXT/HTML; charset="ISO-8859-1"\n',
            "Content-Type: multipart/report; report-type=delivery-status; boundary=b\n",
            "Content-Type: text/plain; charset*=utf-8''x\n",
            "Content-Type: nonsense\n",
            "Content-Type:\n",
            'Content-Type: text/plain; name="caf\udcc3\udca9"\n',
            "Content-Transfer-Encoding: base64\n",
            "Content-Transfer-Encoding: BASE64\n",
            "Content-Transfer-Encoding: quoted-printable\n",
            "Content-Transfer-Encoding: base64 \n",
            "Content-Transfer-Encoding: 8bit\n",
            "Content-Transfer-Encoding: x-uuencode\n",
            "Content-Disposition: Attachment; filename=a.txt\n",
            "Content-Disposition: inline\n",
            "X-Other: y\n",
        ]
    ),
    max_size=5,
)
_BODIES = st.sampled_from(
    ["", "hola\n", "ol\udcc3\udca1 =C3=A1\n", "aG9sYQ==\n", "begin 644 x\n#:&]L80``\n`\nend\n"]
)


@given(_PART_HEADERS, _BODIES)
@settings(max_examples=300, deadline=None)
def test_part_readers_as_the_email_package_reads_them(headers: list[str], body: str) -> None:
    """content_type, decode_payload, disposition and content_param read plain headers directly:
    they must answer what the email package's own methods give."""
    raw = ("".join(headers) + "\n" + body).encode("ascii", "surrogateescape")
    part = email.message_from_bytes(raw, policy=compat32)
    if part.is_multipart():
        return
    assert mime.content_type(part) == part.get_content_type().lower()
    assert mime.disposition(part) == str(part.get("Content-Disposition", "")).lower()
    assert mime.content_param(part, "report-type") == part.get_param("report-type")
    # decode_payload takes a payload without a transfer encoding to undo as it is: the bytes
    # must be those the email package would decode, or None (then it asks the package).
    quick = mime._undecoded_bytes(part)
    assert quick is None or quick == part.get_payload(decode=True)


@given(st.lists(st.sampled_from(["a", "\n", " ", "-", ">", "original message", "x"]), max_size=30))
@settings(max_examples=300, deadline=None)
def test_line_start_search_as_a_search(pieces: list[str]) -> None:
    text = "".join(pieces)
    for pattern in (report._ORIGINAL_MARKERS, report._DSN_FIELD_ANYWHERE):
        quick, plain = report.search_lines(pattern, text), pattern.search(text)
        assert (quick and quick.span()) == (plain and plain.span())
