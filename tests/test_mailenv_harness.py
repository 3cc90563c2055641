"""Proof that the real mail harness (tests/mailenv) does what the other tests rely on."""

from __future__ import annotations

import email.utils
import smtplib
import time
from collections.abc import Callable
from email.message import EmailMessage

import pytest
from imapclient import IMAPClient
from mailenv import (
    ACCOUNTS,
    BILLING,
    BLOCKED_SENDER,
    DEBTORS,
    HOST,
    UNKNOWN_DEBTOR,
    MailEnv,
)


def make_msg(
    frm: str, to: str, subject: str, body: str = "Please pay invoice 4711."
) -> EmailMessage:
    msg = EmailMessage()
    msg["From"] = frm
    msg["To"] = to
    msg["Subject"] = subject
    msg["Date"] = email.utils.formatdate(localtime=True)
    msg["Message-ID"] = email.utils.make_msgid(domain=frm.partition("@")[2])
    msg.set_content(body)
    return msg


def submit(env: MailEnv, msg: EmailMessage, user: str | None = None) -> None:
    """Send over the submission port with AUTH as ``user`` (default: the From address)."""
    with smtplib.SMTP(HOST, env.submission_port, timeout=10) as smtp:
        smtp.login(user or str(msg["From"]), env.password)
        smtp.send_message(msg)


def relay(env: MailEnv, msg: EmailMessage) -> None:
    """Send over the plain SMTP port (no AUTH; loopback is a trusted network)."""
    with smtplib.SMTP(HOST, env.smtp_port, timeout=10) as smtp:
        smtp.send_message(msg)


def imap(env: MailEnv, user: str) -> IMAPClient:
    client = IMAPClient(HOST, port=env.imap_port, ssl=False, timeout=10)
    client.login(user, env.password)
    return client


def has_id(msg: EmailMessage) -> Callable[[EmailMessage], bool]:
    return lambda m: m["Message-ID"] == msg["Message-ID"]


def test_submission_with_auth_delivers_to_debtor_maildir(mailenv: MailEnv) -> None:
    for identity in (BILLING, ACCOUNTS):
        msg = make_msg(identity, DEBTORS[0], f"Invoice 4711 overdue ({identity})")
        submit(mailenv, msg)
        got = mailenv.wait_for_message(DEBTORS[0], has_id(msg))
        assert got["Subject"] == msg["Subject"]
        assert "Please pay" in got.get_content()


def test_submission_without_auth_is_refused(mailenv: MailEnv) -> None:
    msg = make_msg(BILLING, DEBTORS[0], "no auth")
    with (
        smtplib.SMTP(HOST, mailenv.submission_port, timeout=10) as smtp,
        pytest.raises(smtplib.SMTPRecipientsRefused) as info,
    ):
        smtp.send_message(msg)
    ((code, _text),) = info.value.recipients.values()
    assert code == 554


def test_unknown_debtor_gives_real_dsn_in_creditor_inbox(mailenv: MailEnv) -> None:
    msg = make_msg(ACCOUNTS, UNKNOWN_DEBTOR, "Invoice to nobody")
    submit(mailenv, msg)  # accepted at SMTP time, bounced by LMTP afterwards
    dsn = mailenv.wait_for_message(ACCOUNTS, lambda m: m.get_content_type() == "multipart/report")
    assert dsn.get_param("report-type") == "delivery-status"
    assert dsn["Auto-Submitted"] == "auto-replied"
    assert "MAILER-DAEMON" in dsn["From"]
    parts = {p.get_content_type(): p for p in dsn.walk()}
    status = parts["message/delivery-status"].as_string()
    assert f"Final-Recipient: rfc822; {UNKNOWN_DEBTOR}" in status
    assert "Action: failed" in status
    assert "Status: 5.1.1" in status
    assert "Diagnostic-Code:" in status
    assert msg["Message-ID"] in parts["message/rfc822"].as_string()


def test_sender_block_is_550_5_7_1_at_rcpt_and_live(mailenv: MailEnv) -> None:
    debtor = DEBTORS[2]
    blocked = make_msg(BLOCKED_SENDER, debtor, "blocked by the default table")
    with pytest.raises(smtplib.SMTPRecipientsRefused) as info:
        submit(mailenv, blocked)
    ((code, text),) = info.value.recipients.values()
    assert code == 550
    assert text.startswith(b"5.7.1") and b"blocked" in text
    try:
        # live edit: only this debtor blocks billing@; accounts@ and other debtors still work
        mailenv.set_sender_blocks({BILLING: "550 5.7.1 Debtor3 blocked you"}, recipients=[debtor])
        with pytest.raises(smtplib.SMTPRecipientsRefused) as info:
            submit(mailenv, make_msg(BILLING, debtor, "blocked identity"))
        ((code, text),) = info.value.recipients.values()
        assert (code, text.startswith(b"5.7.1")) == (550, True)
        assert b"Debtor3 blocked you" in text
        submit(mailenv, make_msg(ACCOUNTS, debtor, "other identity"))
        submit(mailenv, make_msg(BILLING, DEBTORS[3], "other debtor"))
    finally:
        mailenv.set_sender_blocks([BLOCKED_SENDER])
    submit(mailenv, make_msg(BILLING, debtor, "unblocked again"))


def test_sieve_discard_is_a_silent_block(mailenv: MailEnv) -> None:
    debtor = DEBTORS[1]
    mailenv.set_sieve(debtor, f'if address :is "from" "{BILLING}" {{ discard; stop; }}\n')
    try:
        dropped = make_msg(BILLING, debtor, "discard me")
        submit(mailenv, dropped)  # the sender sees 250 ...
        control = make_msg(ACCOUNTS, debtor, "control")
        submit(mailenv, control)
        mailenv.wait_for_message(debtor, has_id(control))
        deadline = time.monotonic() + 10
        while "Mail queue is empty" not in mailenv.queue():
            assert time.monotonic() < deadline
            time.sleep(0.05)
    finally:
        mailenv.set_sieve(debtor, None)
    # ... and nothing is stored, nothing bounces
    assert all(m["Message-ID"] != dropped["Message-ID"] for m in mailenv.messages(debtor))
    assert all(m.get_content_type() != "multipart/report" for m in mailenv.messages(BILLING))
    assert "discard" in mailenv.log("dovecot")


def test_imap_idle_sees_a_debtor_reply(mailenv: MailEnv) -> None:
    with imap(mailenv, BILLING) as client:
        client.select_folder("INBOX")
        client.idle()
        reply = make_msg(DEBTORS[4], BILLING, "Re: Invoice 4712", "I will pay on Friday.")
        t0 = time.monotonic()
        relay(mailenv, reply)
        events: list[tuple[object, ...]] = []
        while not any(b"EXISTS" in e for e in events):
            assert time.monotonic() - t0 < 15, f"IDLE saw nothing: {events}"
            events += client.idle_check(timeout=1)
        client.idle_done()
        print(f"send -> IDLE EXISTS {time.monotonic() - t0:.3f}s")
        uids = client.search(["HEADER", "Message-ID", reply["Message-ID"]])
        assert len(uids) == 1


def test_sent_folder_has_special_use_and_takes_append(mailenv: MailEnv) -> None:
    with imap(mailenv, BILLING) as client:
        sent = [name for flags, _sep, name in client.list_folders() if b"\\Sent" in flags]
        assert sent == ["Sent"]
        assert "Sent" in [name for _flags, _sep, name in client.list_sub_folders()]
        msg = make_msg(BILLING, DEBTORS[5], "copy for Sent")
        client.append("Sent", msg.as_bytes(), flags=[b"\\Seen"])
    stored = mailenv.messages(BILLING, "Sent")
    assert [m["Message-ID"] for m in stored] == [msg["Message-ID"]]


def test_remote_mx_block_becomes_dsn(mailenv: MailEnv) -> None:
    mailenv.set_remote_rules(
        {"blocked_senders": {BILLING: "550 5.7.1 Sender blocked by recipient"}}
    )
    try:
        msg = make_msg(BILLING, "someone@remote.test", "Pay")
        submit(mailenv, msg)
        dsn = mailenv.wait_for_message(
            BILLING, lambda m: msg["Message-ID"] in m.as_string() and m["Subject"] != "Pay"
        )
    finally:
        mailenv.set_remote_rules({})
    status = next(p for p in dsn.walk() if p.get_content_type() == "message/delivery-status")
    text = status.as_string()
    assert "Status: 5.7.1" in text
    assert "Diagnostic-Code: smtp; 550 5.7.1 Sender blocked by recipient" in text
    ok = make_msg(BILLING, "someone@remote.test", "accepted")
    submit(mailenv, ok)
    deadline = time.monotonic() + 10
    while ok["Message-ID"] not in [m["Message-ID"] for m in mailenv.remote_messages()]:
        assert time.monotonic() < deadline
        time.sleep(0.05)


def test_add_user_can_log_in_and_receive(mailenv: MailEnv) -> None:
    new = "debtor7@debtor.test"
    mailenv.add_user(new)
    msg = make_msg(BILLING, new, "hello new debtor")
    submit(mailenv, msg)
    mailenv.wait_for_message(new, has_id(msg))
    with imap(mailenv, new) as client:
        assert client.select_folder("INBOX")[b"EXISTS"] == 1
