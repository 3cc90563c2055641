"""A real mail environment on loopback (Postfix, Dovecot, a scripted remote MX) for the tests."""

from __future__ import annotations

import contextlib
import email
import email.policy
import imaplib
import json
import os
import pwd
import re
import shlex
import shutil
import signal
import smtplib
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from email.message import EmailMessage
from pathlib import Path

HERE = Path(__file__).resolve().parent
HOST = "127.0.0.1"
PASSWORD = "secret"
TMP_PREFIX = "mailer-mailenv."

# The creditor: one business, two sender identities (each its own login and mailbox).
BILLING = "billing@creditor.test"
ACCOUNTS = "accounts@creditor.test"
# Senders the default tables block: 550 5.7.1 at RCPT (Postfix) / Sieve discard (see tests).
BLOCKED_SENDER = "blocked@creditor.test"
SILENT_SENDER = "silent@creditor.test"
DEBTORS = tuple(f"debtor{i}@debtor.test" for i in range(1, 7))
# Not a mailbox: Postfix accepts it, Dovecot LMTP refuses it, the sender gets a real DSN.
UNKNOWN_DEBTOR = "nobody@debtor.test"
DEFAULT_USERS: tuple[str, ...] = (
    BILLING,
    ACCOUNTS,
    "postmaster@creditor.test",
    BLOCKED_SENDER,
    SILENT_SENDER,
    *DEBTORS,
    "postmaster@debtor.test",
)
DEFAULT_BLOCK_REPLY = "550 5.7.1 Sender blocked by recipient"


class MailEnvError(RuntimeError):
    """The mail environment could not be started or driven."""


@dataclass(frozen=True)
class MailEnv:
    """A running environment: where everything listens and lives (all from start.sh's output)."""

    dir: Path
    smtp_port: int  # Postfix "MX + trusted relay": no AUTH, loopback may relay
    submission_port: int  # Postfix submission: AUTH (Dovecot SASL); STARTTLS offered
    imap_port: int  # Dovecot IMAP (IDLE), plaintext login
    lmtp_port: int  # Dovecot LMTP (Postfix delivers here)
    sasl_port: int  # Dovecot auth for Postfix
    remote_mx_port: int  # aiosmtpd "rest of the internet" (every non-local domain)
    password: str  # the same for every user
    users: tuple[str, ...]
    postfix_conf: Path  # editable texthash tables live here
    remote_rules: Path  # remote_mx.py rules, re-read per transaction
    remote_maildir: Path  # what the remote MX accepted
    startup_seconds: float
    env: Mapping[str, str] = field(compare=False, repr=False)  # start.sh's KEY=VALUE output
    host: str = HOST
    ca_file: Path | None = None  # the CA of submission's STARTTLS certificate (None: no TLS)

    # ------------------------------------------------------------ where mail lands
    def home(self, user: str) -> Path:
        local, _, domain = user.lower().partition("@")
        return self.dir / "mail" / domain / local

    def maildir(self, user: str, folder: str = "INBOX") -> Path:
        """The user's Maildir (INBOX) or a folder of it (Maildir++: ``.Sent``)."""
        root = self.home(user) / "Maildir"
        return root if folder.upper() == "INBOX" else root / f".{folder.replace('/', '.')}"

    def messages(self, user: str, folder: str = "INBOX") -> list[EmailMessage]:
        """Messages stored in a folder, oldest first, read straight from the Maildir."""
        return _read_maildir(self.maildir(user, folder))

    def raw_messages(self, user: str, folder: str = "INBOX") -> list[bytes]:
        """The stored bytes of a folder's messages, oldest first (Dovecot stores LF line ends
        and prepends Return-Path, Delivered-To and Received)."""
        return [data for _mtime, data in _maildir_files(self.maildir(user, folder))]

    def remote_messages(self) -> list[EmailMessage]:
        """Messages the remote MX accepted (with X-Envelope-From/-To headers)."""
        return _read_maildir(self.remote_maildir)

    def wait_for_message(
        self,
        user: str,
        match: Callable[[EmailMessage], bool] = lambda _m: True,
        folder: str = "INBOX",
        timeout: float = 15.0,
    ) -> EmailMessage:
        """Poll the Maildir until a message matching ``match`` is there; TimeoutError if not."""
        deadline = time.monotonic() + timeout
        while True:
            for msg in self.messages(user, folder):
                if match(msg):
                    return msg
            if time.monotonic() > deadline:
                raise TimeoutError(f"no matching message for {user} in {folder} in {timeout}s")
            time.sleep(0.05)

    # ------------------------------------------------------------ live knobs
    def set_sender_blocks(
        self,
        blocks: Mapping[str, str] | Iterable[str],
        recipients: Iterable[str] = ("debtor.test",),
    ) -> None:
        """Replace the sender-block table: mail from these senders (address or domain) to
        ``recipients`` (addresses or domains) is refused at RCPT with the given reply
        (default ``550 5.7.1 Sender blocked by recipient``). Takes effect on the next SMTP
        connection; an empty ``blocks`` lifts every block."""
        if isinstance(blocks, str):
            blocks = [blocks]
        items = blocks.items() if isinstance(blocks, Mapping) else ((b, "") for b in blocks)
        lines = [f"{s.lower()}\t{reply or DEFAULT_BLOCK_REPLY}" for s, reply in items]
        self._write_table("sender_blocks", lines)
        self._write_table(
            "recipient_policy", [f"{r.lower()}\trecipient_sender_blocks" for r in recipients]
        )

    def set_sieve(self, user: str, script: str | None) -> None:
        """Install ``script`` as the user's active Sieve script (None removes it); used from
        the next delivery on: ``discard;`` is a silent block, ``vacation`` an auto-reply."""
        home = self.home(user)
        active = home / ".dovecot.sieve"
        with contextlib.suppress(FileNotFoundError):
            (home / ".dovecot.svbin").unlink()  # compiled copy; recompiled on mtime anyway
        if script is None:
            active.unlink(missing_ok=True)
            return
        st = home.stat()
        _atomic_write(active, script, owner=(st.st_uid, st.st_gid))

    def set_remote_rules(self, rules: Mapping[str, object]) -> None:
        """Replace the remote MX rules (keys: blocked_senders, unknown_recipients,
        tempfail_recipients, reject_all; see remote_mx.py)."""
        _atomic_write(self.remote_rules, json.dumps(dict(rules), indent=2))

    def add_user(self, user: str) -> None:
        """Create one more mailbox (same password) on a domain the environment already hosts."""
        user = user.lower()
        domain = user.partition("@")[2]
        if domain not in {u.partition("@")[2] for u in self.users}:
            raise MailEnvError(f"{domain!r} is not hosted here (Postfix would need a restart)")
        home = self.home(user)
        owner = self.home(self.users[0]).stat()
        home.mkdir(parents=True, exist_ok=True)
        os.chown(home, owner.st_uid, owner.st_gid)
        # Dovecot re-reads its passwd-file when it changes; vmailbox only matters with
        # MAILENV_REJECT_UNKNOWN=1
        with (self.dir / "dovecot" / "users").open("a", encoding="utf-8") as f:
            f.write(f"{user}:{{PLAIN}}{self.password}::::::\n")
        vmailbox = self.postfix_conf / "vmailbox"
        self._write_table(
            "vmailbox", [*vmailbox.read_text(encoding="utf-8").splitlines(), f"{user} ok"]
        )
        self._wait_for_login(user)

    def _wait_for_login(self, user: str, timeout: float = 5.0) -> None:
        # Dovecot stats its passwd-file at most once per wall-clock second: a lookup in the
        # second of the edit may still say "User doesn't exist" (and LMTP would bounce).
        deadline = time.monotonic() + timeout
        while True:
            time.sleep(1.02 - time.time() % 1)
            try:
                with imaplib.IMAP4(self.host, self.imap_port, timeout=5) as client:
                    client.login(user, self.password)
                    client.logout()
                return
            except imaplib.IMAP4.error as exc:
                if time.monotonic() > deadline:
                    raise MailEnvError(f"Dovecot does not know {user} yet") from exc

    def queue(self) -> str:
        """Postfix's queue listing (``postqueue -p``)."""
        return self._postqueue("-p")

    def flush_queue(self) -> None:
        """Retry deferred mail now (``postqueue -f``)."""
        self._postqueue("-f")

    def log(self, name: str = "postfix") -> str:
        """A server's log (postfix, dovecot, remote_mx), for assertions and failure messages."""
        path = self.dir / "log" / f"{name}.log"
        return path.read_text(encoding="utf-8", errors="replace") if path.exists() else ""

    def wait_for_empty_queue(self, timeout: float = 30.0) -> None:
        """Wait until Postfix has nothing left to deliver: what was accepted is in its
        mailboxes, and the mail it caused (DSNs, Sieve vacation replies, which are queued
        before the message that caused them leaves the queue) has been delivered too."""
        deadline = time.monotonic() + timeout
        while not self.queue_empty():
            if time.monotonic() > deadline:
                raise TimeoutError(f"Postfix queue not empty after {timeout}s:\n{self.queue()}")
            time.sleep(0.01)

    def queue_empty(self) -> bool:
        """Whether Postfix holds no message: its queue directories (what ``postqueue -p``
        lists) have no file; read directly, it costs a fraction of a millisecond."""
        queue = self.dir / "postfix" / "queue"
        for name in ("maildrop", "incoming", "active", "deferred", "hold"):
            for _root, _dirs, files in os.walk(queue / name):
                if files:
                    return False
        return True

    def submit(
        self, data: bytes, sender: str, recipients: Sequence[str], login: str | None = None
    ) -> None:
        """Send ``data`` as a mail client does: the submission port, AUTH as ``login``
        (default: ``sender``) against Dovecot."""
        with smtplib.SMTP(self.host, self.submission_port, timeout=10) as smtp:
            smtp.login(login or sender, self.password)
            smtp.sendmail(sender, list(recipients), _crlf(data))

    def relay(self, data: bytes, sender: str, recipients: Sequence[str]) -> None:
        """Send ``data`` as another mail server does: the plain SMTP port, no AUTH (works
        while Dovecot, which checks AUTH, is down; Postfix queues until LMTP is back)."""
        with smtplib.SMTP(self.host, self.smtp_port, timeout=10) as smtp:
            smtp.sendmail(sender, list(recipients), _crlf(data))

    def sieve_discarded(self, user: str) -> set[str]:
        """Message-IDs a user's own Sieve script discarded, from Dovecot's delivery log."""
        pattern = re.compile(
            rf"lmtp\({re.escape(user.lower())}\)\S*: Info: sieve: msgid=(<[^>\s]*>):"
            r" discard action"
        )
        return set(pattern.findall(self.log("dovecot")))

    # ------------------------------------------------------------ Dovecot restarts
    def stop_dovecot(self, crash: bool = False, timeout: float = 10.0) -> None:
        """Stop Dovecot (master and every service): IMAP clients get ``BYE`` (or, with
        ``crash``, SIGKILL: the connections just end), AUTH on submission fails, Postfix
        defers LMTP deliveries until it is back."""
        pid_file = self.dir / "pids" / "dovecot.pid"
        master = int(pid_file.read_text(encoding="ascii").strip())
        # TERM the services too: the master alone takes ~1 s to wind them down
        pids = [master, *_children(master)]
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL if crash else signal.SIGTERM)
        deadline = time.monotonic() + timeout
        while any(_alive(pid) for pid in pids):
            if time.monotonic() > deadline:
                for pid in pids:
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(pid, signal.SIGKILL)
                break
            time.sleep(0.02)
        pid_file.unlink()
        # A killed master leaves its pid file behind; where init reaps nobody (containers) that
        # PID stays a zombie and the next start would think Dovecot is still running.
        (self.dir / "dovecot" / "run" / "master.pid").unlink(missing_ok=True)
        while _port_open(self.host, self.imap_port):
            if time.monotonic() > deadline:
                raise MailEnvError("Dovecot stopped but its IMAP port still answers")
            time.sleep(0.02)

    def start_dovecot(self, timeout: float = 15.0) -> None:
        """Start Dovecot again on the same ports, config and mail (UIDs and UIDVALIDITY
        survive), the way start.sh does; returns once IMAP, LMTP and AUTH answer."""
        argv = [_sbin("dovecot"), "-F", "-c", str(self.dir / "dovecot" / "dovecot.conf")]
        if os.geteuid() == 0:
            # as start.sh: the whole of Dovecot runs as the mail user that owns the maildirs
            owner = (self.dir / "mail").stat()
            argv = ["setpriv", f"--reuid={owner.st_uid}", f"--regid={owner.st_gid}",
                    "--clear-groups", "--reset-env", *argv]  # fmt: skip
        log = self.dir / "log" / "dovecot.stdout"
        pid_file = self.dir / "pids" / "dovecot.pid"
        # backgrounded by a shell that exits at once: Dovecot is nobody's child, as at start
        subprocess.run(
            [
                "bash",
                "-c",
                f"setsid {shlex.join(argv)} </dev/null >>{shlex.quote(str(log))} 2>&1 &"
                f" echo $! > {shlex.quote(str(pid_file))}",
            ],
            check=True,
            timeout=10,
        )
        deadline = time.monotonic() + timeout
        for port in (self.imap_port, self.lmtp_port, self.sasl_port):
            while not _port_open(self.host, port):
                if time.monotonic() > deadline:
                    raise MailEnvError(f"Dovecot did not come back on port {port}: see {log}")
                time.sleep(0.02)

    def restart_dovecot(self, crash: bool = False) -> None:
        self.stop_dovecot(crash)
        self.start_dovecot()

    def idling(self, user: str) -> bool:
        """Whether one of ``user``'s IMAP sessions is inside IDLE right now, as Dovecot's own
        process titles say (verbose_proctitle)."""
        instance = f"dovecot-mailenv-{self.dir.name}/imap"
        for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
            try:
                title = cmdline.read_bytes().replace(b"\0", b" ").decode("utf-8", "replace")
            except OSError:
                continue
            if title.startswith(instance) and f"[{user.lower()} " in title and " IDLE]" in title:
                return True
        return False

    def _postqueue(self, flag: str) -> str:
        p = subprocess.run(
            [_sbin("postqueue"), "-c", str(self.postfix_conf), flag],
            capture_output=True,
            text=True,
            check=False,
        )
        if p.returncode != 0:
            raise MailEnvError(f"postqueue {flag} failed: {p.stderr.strip()}")
        return p.stdout

    def _write_table(self, name: str, lines: Iterable[str]) -> None:
        # Postfix re-reads a table every 300 ms until it is >1 s old (half-written guard),
        # which stalls each smtpd: back-date what we write.
        path = self.postfix_conf / name
        _atomic_write(path, "".join(f"{line}\n" for line in lines))
        old = time.time() - 10
        os.utime(path, (old, old))


# ---------------------------------------------------------------- start / stop
def available() -> tuple[bool, str]:
    """Whether this machine can run the environment, and if not, why."""
    missing = [b for b in ("dovecot", "doveconf", "postfix", "postqueue") if not _which(b)]
    if not Path("/usr/lib/dovecot/lmtp").exists():
        missing.append("dovecot-lmtpd")
    if not Path("/usr/lib/dovecot/modules/lib90_sieve_plugin.so").exists():
        missing.append("dovecot-sieve")
    if missing:
        return (
            False,
            f"mail servers not installed ({', '.join(missing)}): scripts/install-mailservers.sh",
        )
    try:
        pwd.getpwnam("postfix")
    except KeyError:
        return False, "system user 'postfix' missing: scripts/install-mailservers.sh"
    if os.geteuid() != 0:
        return False, "Postfix needs root to start (its master refuses otherwise)"
    try:
        import aiosmtpd  # noqa: F401 - the remote MX runs on it
    except ImportError:
        return False, f"aiosmtpd not importable by {sys.executable}"
    return True, "ok"


def start(
    base: Path | None = None,
    users: Sequence[str] = DEFAULT_USERS,
    password: str = PASSWORD,
    timeout: float = 60.0,
) -> MailEnv:
    """Start everything in ``base`` (default: a fresh 0755 dir under /tmp) on free ports;
    returns once every port answers. ``base`` and all its parents must be traversable by
    the unprivileged mail user (not pytest's 0700 tmp_path)."""
    ok, why = available()
    if not ok:
        raise MailEnvError(why)
    reap_stale()
    if base is None:
        base = Path(tempfile.mkdtemp(prefix=TMP_PREFIX, dir="/tmp"))
    elif (base / "pids").is_dir():
        _stop_dir(base, keep=False)  # leftovers of an earlier run in the same place
    base.mkdir(parents=True, exist_ok=True)
    base.chmod(0o755)
    (base / "owner").write_text(_process_identity(os.getpid()), encoding="ascii")
    run_env = {
        **os.environ,
        "MAILENV_PYTHON": sys.executable,
        "MAILENV_REMOTE_MX": "1",
        "MAILENV_POSTFIX": "1",
        "MAILENV_USERS": " ".join(u.lower() for u in users),
        "MAILENV_PASSWORD": password,
    }
    try:
        p = subprocess.run(
            ["bash", str(HERE / "start.sh"), str(base)],
            env=run_env,
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
    except subprocess.TimeoutExpired as exc:
        _stop_dir(base, keep=True)
        raise MailEnvError(f"start.sh took over {timeout}s; logs kept in {base}/log") from exc
    if p.returncode != 0:
        (base / "owner").unlink(missing_ok=True)  # start.sh stopped it all; keep the logs
        raise MailEnvError(f"start.sh failed (logs kept in {base}/log):\n{p.stdout}\n{p.stderr}")
    info: dict[str, str] = json.loads((base / "env.json").read_text(encoding="utf-8"))
    return MailEnv(
        dir=Path(info["MAILENV_DIR"]),
        smtp_port=int(info["MAILENV_SMTP_PORT"]),
        submission_port=int(info["MAILENV_SUBMIT_PORT"]),
        imap_port=int(info["MAILENV_IMAP_PORT"]),
        lmtp_port=int(info["MAILENV_LMTP_PORT"]),
        sasl_port=int(info["MAILENV_SASL_PORT"]),
        remote_mx_port=int(info["MAILENV_MX_PORT"]),
        password=info["MAILENV_PASSWORD"],
        users=tuple(info["MAILENV_USERS"].split()),
        postfix_conf=Path(info["MAILENV_POSTFIX_CONF"]),
        remote_rules=Path(info["MAILENV_MX_RULES"]),
        remote_maildir=Path(info["MAILENV_MX_MAILDIR"]),
        startup_seconds=float(info["MAILENV_STARTUP_SECONDS"]),
        env=info,
        ca_file=Path(info["MAILENV_CA_FILE"]) if "MAILENV_CA_FILE" in info else None,
    )


def stop(env: MailEnv, keep: bool | None = None) -> None:
    """Stop every server by recorded PID and delete the dir (kept with keep=True or
    MAILENV_KEEP=1, for the logs)."""
    if keep is None:
        keep = os.environ.get("MAILENV_KEEP") == "1"
    _stop_dir(env.dir, keep)


def reap_stale() -> list[Path]:
    """Stop environments under /tmp whose owning process is gone (a killed test run)."""
    reaped = []
    for owner in Path("/tmp").glob(f"{TMP_PREFIX}*/owner"):
        try:
            pid_text = owner.read_text(encoding="ascii").split()[0]
            alive = _process_identity(int(pid_text)) == owner.read_text(encoding="ascii")
        except (OSError, ValueError, IndexError):
            alive = False
        if not alive and (owner.parent / "pids").is_dir():
            _stop_dir(owner.parent, keep=False)
            reaped.append(owner.parent)
    return reaped


# ---------------------------------------------------------------- helpers
def _stop_dir(path: Path, keep: bool) -> None:
    if keep:  # a kept dir is for a person to read: reap_stale() leaves it alone
        (path / "owner").unlink(missing_ok=True)
    if not (path / "pids").is_dir():
        return
    subprocess.run(
        ["bash", str(HERE / "stop.sh"), str(path)],
        env={**os.environ, "MAILENV_KEEP": "1" if keep else "0"},
        stdin=subprocess.DEVNULL,
        capture_output=True,
        check=False,
        timeout=30,
    )


def _process_identity(pid: int) -> str:
    """'PID STARTTIME': survives PID reuse, unlike the PID alone."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text(encoding="ascii", errors="replace")
    except OSError:
        return ""
    return f"{pid} {stat.rpartition(')')[2].split()[19]}\n"  # field 22: starttime


def _maildir_files(root: Path) -> list[tuple[float, bytes]]:
    found: list[tuple[float, bytes]] = []
    for sub in ("cur", "new"):
        d = root / sub
        if not d.is_dir():
            continue
        for path in d.iterdir():
            try:  # Dovecot may move new/ -> cur/ under our feet
                data = path.read_bytes()
                mtime = path.stat().st_mtime
            except FileNotFoundError:
                continue
            found.append((mtime, data))
    found.sort(key=lambda pair: pair[0])
    return found


def _read_maildir(root: Path) -> list[EmailMessage]:
    messages = []
    for _mtime, data in _maildir_files(root):
        msg = email.message_from_bytes(data, policy=email.policy.default)
        assert isinstance(msg, EmailMessage)
        messages.append(msg)
    return messages


def _crlf(data: bytes) -> bytes:
    """SMTP line ends (smtplib sends bytes as given; email's default policy writes LF)."""
    return data.replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")


def _alive(pid: int) -> bool:
    """Running and not a zombie (a stopped daemon waits for init to reap it)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text(encoding="ascii", errors="replace")
    except OSError:
        return False
    return stat.rpartition(")")[2].split()[0] != "Z"


def _children(pid: int) -> list[int]:
    kids = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text(encoding="ascii", errors="replace").rpartition(")")[2].split()
        except OSError:
            continue
        if fields and int(fields[1]) == pid:
            kids.append(int(stat.parent.name))
    return kids


def _port_open(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=1):
            return True
    except OSError:
        return False


def _atomic_write(path: Path, text: str, owner: tuple[int, int] | None = None) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text, encoding="utf-8")
    tmp.chmod(0o644)
    if owner is not None:
        os.chown(tmp, *owner)
    tmp.replace(path)


def _which(name: str) -> str | None:
    return shutil.which(name) or shutil.which(name, path="/usr/sbin:/sbin:/usr/bin")


def _sbin(name: str) -> str:
    found = _which(name)
    if found is None:
        raise MailEnvError(f"{name} not found")
    return found
