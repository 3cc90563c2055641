"""mailer.toml + environment → frozen, validated settings; every default is documented here."""

from __future__ import annotations

import ipaddress
import os
import re
from dataclasses import dataclass, field, replace
from datetime import time, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from mailer.domain.blocking import BlockingRules
from mailer.domain.models import (
    DEFAULT_PROFILES,
    ComplianceProfile,
    Creditor,
    DebtorKind,
    Identity,
    SmtpSecurity,
)
from mailer.errors import ConfigError
from mailer.tomlsource import TomlSource

ENV_CONFIG = "MAILER_CONFIG"
DEFAULT_NAME = "mailer.toml"
_ADDRESS = re.compile(
    r"^[A-Za-z0-9.!#$%&'*+/=?^_`{|}~-]+@[A-Za-z0-9](?:[A-Za-z0-9.-]*[A-Za-z0-9])?$"
)

CREDITOR_KEYS = {
    "legal_name", "tax_id", "address", "country", "timezone", "iban", "bic",
    "payment_link_template", "phone", "website",
}  # fmt: skip
IDENTITY_KEYS = {
    "address", "display_name", "smtp_host", "smtp_port", "smtp_security", "smtp_user",
    "password_env", "password_file", "imap_host", "imap_port", "imap_security", "imap_user",
    "sent_folder", "reply_to", "rate_per_minute", "concurrency", "verify_tls", "ca_file",
    "receipt_copy",
}  # fmt: skip
PROFILE_KEYS = {"campaign", "earliest", "latest", "max_per_30_days", "min_gap_days", "opt_out_line"}
STORAGE_KEYS = {"database", "evidence_dir"}
PATH_KEYS = {"campaigns", "templates"}
TOP_KEYS = {
    "creditor", "identities", "storage", "paths", "profiles", "daemon", "inbound", "evidence",
    "web", "blocking", "metrics", "mailchimp", "mandrill",
}  # fmt: skip
MAILCHIMP_KEYS = {
    "api_key_env", "api_key_file", "audience_id", "server", "base_url", "from_name", "reply_to",
    "new_member_status", "schedule", "concurrency", "timeout_seconds", "poll_minutes",
    "poll_days", "tags",
}  # fmt: skip
MANDRILL_KEYS = {
    "api_key_env", "api_key_file", "base_url", "from_name", "timeout_seconds", "poll_minutes",
    "poll_days",
}  # fmt: skip
METRICS_KEYS = {"listen", "allow_remote"}
CREDENTIALS = "${CREDENTIALS_DIRECTORY}"  # in password_file: systemd's credentials directory
BLOCKING_KEYS = {
    "silence_after", "max_switches", "max_identities", "pool", "problem_domains",
    "problem_window_days",
}  # fmt: skip
INBOUND_KEYS = {
    "folders", "lookback_days", "promise_grace_days", "soft_bounce_limit", "soft_retry_hours",
    "idle_seconds", "poll_seconds", "move_bounces_to", "first_read_seconds",
}  # fmt: skip
EVIDENCE_KEYS = {
    "tsa_url", "tsa_ca_file", "tsa_certs_file", "timestamp_interval_hours", "tsa_timeout_seconds",
    "business_lang", "block_after_years", "purge_after_years",
}  # fmt: skip
WEB_KEYS = {"listen", "password_env", "password_file", "allow_remote", "session_hours"}
DAEMON_KEYS = {
    "interval_seconds", "shutdown_timeout_seconds", "retry_deadline_hours", "reconcile_grace_seconds",
    "stall_seconds",
}  # fmt: skip


def is_address(text: str) -> bool:
    """A plain addr-spec, no display name, no whitespace or control characters."""
    return len(text) <= 254 and _ADDRESS.match(text) is not None


@dataclass(frozen=True, slots=True)
class InboundSettings:
    """How the mailbox watcher reads each identity's mailbox and acts on what arrives."""

    folders: tuple[str, ...] = ("INBOX",)  # read-only: flags are never changed, nothing moved
    lookback_days: int = 7  # first start: read this much of the mailbox's recent past
    promise_grace_days: int = 3  # a promise to pay on D pauses the case until D + this
    soft_bounce_limit: int = 3  # consecutive soft bounces after which an address is given up
    soft_retry_hours: float = 24.0  # a soft bounce sends the same reminder again after this
    idle_seconds: float = 25 * 60.0  # IDLE is re-issued before the server's 29-minute limit
    poll_seconds: float = 60.0  # without IDLE, look this often
    # At start, the first tick (the first reminders) waits at most this long for each mailbox
    # to be read once: a reply that came while mailer was down acts on its case first.
    first_read_seconds: float = 120.0
    # Opt-in: handled bounce reports about our messages are moved to this folder (created if
    # missing), out of the person's way. None: nothing is ever moved.
    move_bounces_to: str | None = None


@dataclass(frozen=True, slots=True)
class EvidenceSettings:
    """RFC 3161 time-stamps of the event chain, the export's languages, and retention."""

    tsa_url: str | None = None  # a time-stamping authority (RFC 3161 over HTTP); None: no stamps
    tsa_ca_file: Path | None = None  # required with tsa_url: the CA its tokens are checked against
    tsa_certs_file: Path | None = None  # the TSA's own and intermediate certificates, if not sent
    timestamp_interval_hours: float = 24.0  # stamp the chain head this often, if it moved
    tsa_timeout_seconds: float = 30.0
    business_lang: str = "es"  # the export's report comes in this and the debtor's language
    # LOPDGDD art. 32: once a case is closed its data is blocked (kept only for claims and
    # courts), and purged when claims are time-barred (Código de Comercio art. 30: 6 years).
    block_after_years: int = 0
    purge_after_years: int = 6


@dataclass(frozen=True, slots=True)
class WebSettings:
    """The review page (`mailer web`, or inside `mailer run`): where it listens, who may log in."""

    host: str = "127.0.0.1"  # `listen = "127.0.0.1:8025"`; port 0 picks a free one
    port: int = 8025
    password_env: str | None = None  # the password or token: from this environment variable,
    password_file: str | None = None  # or this file (systemd LoadCredential=); never the TOML
    allow_remote: bool = False  # beyond loopback only when asked for in so many words
    session_hours: float = 12.0  # a login lasts this long, and never beyond a restart


@dataclass(frozen=True, slots=True)
class MetricsSettings:
    """Prometheus metrics from `mailer run` (off unless [metrics] is in the file)."""

    host: str = "127.0.0.1"  # `listen = "127.0.0.1:9464"`; port 0 picks a free one (logged)
    port: int = 9464
    allow_remote: bool = False  # beyond loopback only when asked for in so many words


@dataclass(frozen=True, slots=True)
class MailchimpSettings:
    """[mailchimp]: steps with channel = "mailchimp" go out as one-member Mailchimp campaigns."""

    audience_id: str  # the audience (list) each debtor's address is added to
    api_key_env: str | None = None  # the API key: from this environment variable,
    api_key_file: str | None = None  # or this file; never the TOML, never logged
    server: str | None = None  # data-center prefix ("us21"); default: the key's "-us21" suffix
    base_url: str | None = None  # only for tests: a local stand-in for the API (no "server")
    from_name: str | None = None  # default: the creditor's legal name
    reply_to: str | None = None  # default: the case identity's address (verified in Mailchimp)
    new_member_status: str = "subscribed"  # or "pending": Mailchimp asks the person first
    schedule: bool = True  # schedule on the quarter-hour (paid plans); false: send at once
    concurrency: int = 4  # API calls at once; Mailchimp allows 10 connections per account
    timeout_seconds: float = 30.0
    poll_minutes: float = 60.0  # read each campaign's report this often...
    poll_days: int = 30  # ...for this many days after it went out
    tags: tuple[str, ...] = ("mailer",)  # tags every debtor member carries


@dataclass(frozen=True, slots=True)
class MandrillSettings:
    """[mandrill]: steps with channel = "mandrill" go out through Mailchimp Transactional."""

    api_key_env: str | None = None  # the API key: from this environment variable,
    api_key_file: str | None = None  # or this file; never the TOML, never logged
    base_url: str | None = None  # only for tests: a local stand-in for the API
    from_name: str | None = None  # default: the identity's name and the creditor's legal name
    timeout_seconds: float = 30.0
    poll_minutes: float = 60.0  # ask each message's state (messages/info) this often...
    poll_days: int = 30  # ...for this many days after it went out


@dataclass(frozen=True, slots=True)
class Settings:
    source: Path
    creditor: Creditor
    identities: tuple[Identity, ...]
    profiles: dict[DebtorKind, ComplianceProfile]
    database: Path
    evidence_dir: Path
    campaigns_dir: Path
    templates_dir: Path
    interval_seconds: float = 30.0  # one tick of the daemon every so often
    shutdown_timeout_seconds: float = 20.0  # SIGTERM: finish the message in hand within this
    retry_deadline_hours: float = 72.0  # a message still deferred after this has failed
    reconcile_grace_seconds: float = 120.0  # wait this long for the receipt copy to arrive
    inbound: InboundSettings = InboundSettings()
    evidence: EvidenceSettings = EvidenceSettings()
    web: WebSettings | None = None  # no [web] table: no review page in `mailer run`
    blocking: BlockingRules = field(default_factory=BlockingRules)
    metrics: MetricsSettings | None = None  # no [metrics] table: no metrics page
    mailchimp: MailchimpSettings | None = None  # no [mailchimp] table: no Mailchimp channel
    mandrill: MandrillSettings | None = None  # no [mandrill] table: no Mailchimp Transactional
    # A tick that reaches no new step (a message, a phase) for this long is stuck: the
    # systemd watchdog keep-alives stop, and systemd restarts mailer.
    stall_seconds: float = 600.0

    def failover_pool(self) -> tuple[str, ...]:
        """The identities a case may write from, in order: [blocking] pool, else all of them."""
        return self.blocking.pool or tuple(i.name for i in self.identities)

    def identity(self, name: str) -> Identity:
        for ident in self.identities:
            if ident.name == name:
                return ident
        raise KeyError(name)


def find_config(explicit: str | None) -> Path:
    """``--config``, else ``$MAILER_CONFIG``, else ``./mailer.toml``."""
    candidate = explicit or os.environ.get(ENV_CONFIG) or DEFAULT_NAME
    path = Path(candidate)
    if not path.is_file():
        raise ConfigError(
            [
                f"{path}:0: no configuration file here (give --config FILE, set ${ENV_CONFIG}, "
                f"or create ./{DEFAULT_NAME}; `mailer demo` needs none)"
            ]
        )
    return path


def read_secret(identity: Identity) -> str:
    """The identity's password, from its environment variable or file. Never logged."""
    return _secret(f"identity {identity.name}", identity.password_env, identity.password_file)


def read_mailchimp_key(settings: MailchimpSettings) -> str:
    """The Mailchimp API key, from its environment variable or file. Never logged."""
    return _secret("[mailchimp]", settings.api_key_env, settings.api_key_file)


def read_mandrill_key(settings: MandrillSettings) -> str:
    """The Mailchimp Transactional API key, from its environment variable or file. Never logged."""
    return _secret("[mandrill]", settings.api_key_env, settings.api_key_file)


def read_web_secret(web: WebSettings) -> str:
    """The review page's password or token, from its environment variable or file. Never logged."""
    return _secret("[web]", web.password_env, web.password_file)


def _secret(owner: str, env: str | None, file: str | None) -> str:
    if env:
        value = os.environ.get(env)
        if value is None:
            raise ConfigError([f"{owner}: ${env} is not set"])
        return value
    if file:
        try:
            return _credential_path(owner, file).read_text(encoding="utf-8").rstrip("\r\n")
        except OSError as exc:
            raise ConfigError([f"{owner}: cannot read password file: {exc.strerror}"]) from exc
    raise ConfigError([f"{owner}: no password_env or password_file configured"])


def _credential_path(owner: str, file: str) -> Path:
    """``password_file = "${CREDENTIALS_DIRECTORY}/billing"``: a systemd credential
    (LoadCredential=billing:/etc/mailer/billing.password), readable by the service alone."""
    if CREDENTIALS not in file:
        return Path(file)
    directory = os.environ.get("CREDENTIALS_DIRECTORY")
    if not directory:
        raise ConfigError(
            [
                f"{owner}: password_file uses {CREDENTIALS}, which systemd sets only for a"
                " service with LoadCredential=; outside systemd give the file's path"
            ]
        )
    return Path(file.replace(CREDENTIALS, directory))


def load_settings(path: Path) -> Settings:
    """Read and validate the whole file; every problem is reported at once as ``file:line``."""
    src = TomlSource.read(path)
    data = src.data
    base = path.resolve().parent
    for key in data:
        if key not in TOP_KEYS:
            src.problem(
                f"unknown section or key {key!r}", key if isinstance(data[key], dict) else "", key
            )
    creditor = _creditor(src, data.get("creditor"))
    identities = _identities(src, data.get("identities"))
    profiles = _profiles(src, data.get("profiles", {}))
    storage = _table(src, data, "storage", STORAGE_KEYS)
    paths = _table(src, data, "paths", PATH_KEYS)
    daemon = _table(src, data, "daemon", DAEMON_KEYS)
    inbound = _inbound(src, _table(src, data, "inbound", INBOUND_KEYS))
    country = creditor.country if creditor else ""
    evidence = _evidence(src, _table(src, data, "evidence", EVIDENCE_KEYS), base, country)
    web = _web(src, _table(src, data, "web", WEB_KEYS)) if "web" in data else None
    blocking = _blocking(src, _table(src, data, "blocking", BLOCKING_KEYS), identities)
    metrics = (
        _metrics(src, _table(src, data, "metrics", METRICS_KEYS)) if "metrics" in data else None
    )
    mailchimp = (
        _mailchimp(src, _table(src, data, "mailchimp", MAILCHIMP_KEYS))
        if "mailchimp" in data
        else None
    )
    mandrill = (
        _mandrill(src, _table(src, data, "mandrill", MANDRILL_KEYS)) if "mandrill" in data else None
    )
    stall = daemon.get("stall_seconds", 600.0)
    if isinstance(stall, bool) or not isinstance(stall, int | float) or stall <= 0:
        src.problem("stall_seconds must be a number > 0", "daemon", "stall_seconds")
    src.raise_if_problems()
    assert creditor is not None
    return Settings(
        source=path,
        creditor=creditor,
        identities=identities,
        profiles=profiles,
        database=(base / str(storage.get("database", "var/mailer.db"))).resolve(),
        evidence_dir=(base / str(storage.get("evidence_dir", "var/evidence"))).resolve(),
        campaigns_dir=(base / str(paths.get("campaigns", "campaigns"))).resolve(),
        templates_dir=(base / str(paths.get("templates", "templates"))).resolve(),
        interval_seconds=float(daemon.get("interval_seconds", 30.0)),
        shutdown_timeout_seconds=float(daemon.get("shutdown_timeout_seconds", 20.0)),
        retry_deadline_hours=float(daemon.get("retry_deadline_hours", 72.0)),
        reconcile_grace_seconds=float(daemon.get("reconcile_grace_seconds", 120.0)),
        inbound=inbound,
        evidence=evidence,
        web=web,
        blocking=blocking,
        metrics=metrics,
        mailchimp=mailchimp,
        mandrill=mandrill,
        stall_seconds=float(stall),
    )


def _blocking(
    src: TomlSource, table: dict[str, Any], identities: tuple[Identity, ...]
) -> BlockingRules:
    where = "blocking"
    default = BlockingRules()
    values: dict[str, Any] = {}
    for key in ("silence_after", "max_switches", "max_identities", "problem_domains"):
        value = table.get(key, getattr(default, key))
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            src.problem(f"{key} must be a whole number >= 0", where, key)
        else:
            values[key] = value
    days = table.get("problem_window_days", default.problem_window.days)
    if isinstance(days, bool) or not isinstance(days, int) or days < 1:
        src.problem("problem_window_days must be a whole number >= 1", where, "problem_window_days")
    else:
        values["problem_window"] = timedelta(days=days)
    pool = table.get("pool", [])
    names = {i.name for i in identities}
    if not isinstance(pool, list) or not all(isinstance(n, str) for n in pool):
        src.problem("pool must be a list of identity names", where, "pool")
    else:
        for name in pool:
            if names and name not in names:
                src.problem(f"pool: no identity named {name!r}", where, "pool")
        if len(set(pool)) != len(pool):
            src.problem("pool names an identity twice", where, "pool")
        values["pool"] = tuple(pool)
    if values.get("max_identities") == 0:
        src.problem("max_identities must be at least 1 (the identity writing now)", where)
    return BlockingRules(**values)


def _evidence(src: TomlSource, table: dict[str, Any], base: Path, country: str) -> EvidenceSettings:
    where = "evidence"
    default = EvidenceSettings()
    values: dict[str, Any] = {"business_lang": "es" if country in ("", "ES") else "en"}
    url = _str(src, table, where, "tsa_url", False)
    if url is not None and not url.lower().startswith(("http://", "https://")):
        src.problem("tsa_url must be an http:// or https:// address", where, "tsa_url")
    values["tsa_url"] = url
    for key in ("tsa_ca_file", "tsa_certs_file"):
        name = _str(src, table, where, key, False)
        if name is None:
            continue
        path = (base / name).resolve()
        if not path.is_file():
            src.problem(f"{key}: no file {path}", where, key)
        values[key] = path
    if url and "tsa_ca_file" not in values:
        src.problem("tsa_url needs tsa_ca_file: a time-stamp no one can check proves little", where)
    for key in ("timestamp_interval_hours", "tsa_timeout_seconds"):
        value = table.get(key, getattr(default, key))
        if isinstance(value, bool) or not isinstance(value, int | float) or value <= 0:
            src.problem(f"{key} must be a number > 0", where, key)
        else:
            values[key] = float(value)
    lang = table.get("business_lang", values["business_lang"])
    if lang not in ("es", "en"):
        src.problem("business_lang must be es or en", where, "business_lang")
    else:
        values["business_lang"] = lang
    for key in ("block_after_years", "purge_after_years"):
        value = table.get(key, getattr(default, key))
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            src.problem(f"{key} must be a whole number of years >= 0", where, key)
        else:
            values[key] = value
    if values.get("purge_after_years", 6) < values.get("block_after_years", 0):
        src.problem("purge_after_years may not come before block_after_years", where)
    return EvidenceSettings(**values)


def _web(src: TomlSource, table: dict[str, Any]) -> WebSettings:
    where = "web"
    values: dict[str, Any] = {}
    for key in ("password", "token"):
        if key in table:
            src.problem(
                f"{key}s never go in the file: use password_env or password_file", where, key
            )
    values["password_env"] = _str(src, table, where, "password_env", False)
    values["password_file"] = _str(src, table, where, "password_file", False)
    if not (values["password_env"] or values["password_file"]):
        src.problem("[web] needs password_env or password_file: the page is never open", where)
    allow_remote = table.get("allow_remote", False)
    if not isinstance(allow_remote, bool):
        src.problem("allow_remote must be true or false", where, "allow_remote")
        allow_remote = False
    values["allow_remote"] = allow_remote
    listen = _listen(src, table, where, allow_remote, "the review page")
    if listen is not None:
        values["host"], values["port"] = listen
    hours = table.get("session_hours", WebSettings().session_hours)
    if isinstance(hours, bool) or not isinstance(hours, int | float) or hours <= 0:
        src.problem("session_hours must be a number > 0", where, "session_hours")
    else:
        values["session_hours"] = float(hours)
    return WebSettings(**values)


def _metrics(src: TomlSource, table: dict[str, Any]) -> MetricsSettings:
    where = "metrics"
    allow_remote = table.get("allow_remote", False)
    if not isinstance(allow_remote, bool):
        src.problem("allow_remote must be true or false", where, "allow_remote")
        allow_remote = False
    listen = _listen(src, table, where, allow_remote, "the metrics page")
    if listen is None:
        return MetricsSettings(allow_remote=allow_remote)
    return MetricsSettings(host=listen[0], port=listen[1], allow_remote=allow_remote)


def _listen(
    src: TomlSource, table: dict[str, Any], where: str, allow_remote: bool, what: str
) -> tuple[str, int] | None:
    """``listen = "host:port"`` (IPv6 as "[::1]:9464"), loopback unless ``allow_remote``."""
    listen = _str(src, table, where, "listen", False)
    if listen is None:
        return None
    host, _, port = listen.rpartition(":")
    host = host[1:-1] if host.startswith("[") and host.endswith("]") else host
    if not host or not port.isdigit() or int(port) > 65535:
        src.problem('listen must be "host:port", e.g. "127.0.0.1:9464"', where, "listen")
        return None
    if not (allow_remote or is_loopback(host)):
        src.problem(
            f"listen: {host} is not a loopback address; {what} serves this machine only"
            " unless allow_remote = true",
            where,
            "listen",
        )
        return None
    return host, int(port)


def is_loopback(host: str) -> bool:
    """An address of this machine only: 127.0.0.0/8, ::1 or the name localhost."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False  # a name other than localhost could resolve anywhere


def _inbound(src: TomlSource, table: dict[str, Any]) -> InboundSettings:
    default = InboundSettings()
    values: dict[str, Any] = {}
    folders = table.get("folders", list(default.folders))
    if not (
        isinstance(folders, list) and folders and all(isinstance(f, str) and f for f in folders)
    ):
        src.problem("folders must be a non-empty list of folder names", "inbound", "folders")
    else:
        values["folders"] = tuple(folders)
    for key in ("lookback_days", "promise_grace_days", "soft_bounce_limit"):
        value = table.get(key, getattr(default, key))
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            src.problem(f"{key} must be a whole number >= 0", "inbound", key)
        else:
            values[key] = value
    for key in ("soft_retry_hours", "idle_seconds", "poll_seconds", "first_read_seconds"):
        value = table.get(key, getattr(default, key))
        if isinstance(value, bool) or not isinstance(value, int | float) or value <= 0:
            src.problem(f"{key} must be a number > 0", "inbound", key)
        else:
            values[key] = float(value)
    target = table.get("move_bounces_to")
    if target is not None:
        if not isinstance(target, str) or not target.strip():
            src.problem("move_bounces_to must be a folder name", "inbound", "move_bounces_to")
        elif target in values.get("folders", ()):
            src.problem(
                "move_bounces_to must not be a watched folder", "inbound", "move_bounces_to"
            )
        else:
            values["move_bounces_to"] = target
    if values.get("idle_seconds", 0) > 29 * 60:
        src.problem("idle_seconds must stay under 29 minutes (RFC 2177)", "inbound", "idle_seconds")
    return InboundSettings(**values)


def _table(src: TomlSource, data: dict[str, Any], name: str, allowed: set[str]) -> dict[str, Any]:
    table = data.get(name, {})
    if not isinstance(table, dict):
        src.problem(f"[{name}] must be a table", "", name)
        return {}
    for key in table:
        if key not in allowed:
            src.problem(f"unknown key {key!r} in [{name}]", name, key)
    return table


def _str(
    src: TomlSource, table: dict[str, Any], where: str, key: str, required: bool
) -> str | None:
    value = table.get(key)
    if value is None:
        if required:
            src.problem(f"[{where}] needs {key!r}", where)
        return None
    if not isinstance(value, str) or not value.strip():
        src.problem(f"{key} must be a non-empty string", where, key)
        return None
    if any(ch in value for ch in "\r\n\0"):
        src.problem(f"{key} must be one line", where, key)
        return None
    return value.strip()


def _int(src: TomlSource, table: dict[str, Any], where: str, key: str, default: int) -> int:
    value = table.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        src.problem(f"{key} must be a positive integer", where, key)
        return default
    return value


def _creditor(src: TomlSource, raw: Any) -> Creditor | None:
    if not isinstance(raw, dict):
        src.problem("a [creditor] table is required (legal_name, tax_id, address, country, ...)")
        return None
    for key in raw:
        if key not in CREDITOR_KEYS:
            src.problem(f"unknown key {key!r} in [creditor]", "creditor", key)
    values = {
        k: _str(src, raw, "creditor", k, k in {"legal_name", "tax_id", "address"})
        for k in CREDITOR_KEYS
    }
    country = (values["country"] or "ES").upper()
    tz = values["timezone"] or "Europe/Madrid"
    try:
        ZoneInfo(tz)
    except (ZoneInfoNotFoundError, ValueError):
        src.problem(f"unknown time zone {tz!r}", "creditor", "timezone")
    if not values["iban"] and not values["payment_link_template"]:
        src.problem("give iban and/or payment_link_template: debtors need a way to pay", "creditor")
    template = values["payment_link_template"]
    if template and "{invoice}" not in template:
        src.problem(
            "payment_link_template must contain {invoice}", "creditor", "payment_link_template"
        )
    return Creditor(
        legal_name=values["legal_name"] or "",
        tax_id=values["tax_id"] or "",
        address=values["address"] or "",
        country=country,
        timezone=tz,
        iban=values["iban"],
        bic=values["bic"],
        payment_link_template=template,
        phone=values["phone"],
        website=values["website"],
    )


def _security(
    src: TomlSource, raw: dict[str, Any], where: str, key: str, default: str
) -> SmtpSecurity:
    value = raw.get(key, default)
    try:
        return SmtpSecurity(value)
    except ValueError:
        src.problem(f"{key} must be one of tls, starttls, plain", where, key)
        return SmtpSecurity(default)


def _identities(src: TomlSource, raw: Any) -> tuple[Identity, ...]:
    if not isinstance(raw, dict) or not raw:
        src.problem("at least one [identities.NAME] table is required")
        return ()
    result = []
    for name, ident in raw.items():
        where = f"identities.{name}"
        if not isinstance(ident, dict):
            src.problem(f"[{where}] must be a table", "identities", name)
            continue
        for key in ident:
            if key not in IDENTITY_KEYS:
                src.problem(f"unknown key {key!r} in [{where}]", where, key)
        if "password" in ident:
            src.problem("passwords never go in the file: use password_env or password_file", where)
        address = _str(src, ident, where, "address", True) or ""
        if address and not is_address(address):
            src.problem(f"{address!r} is not an email address", where, "address")
        reply_to = _str(src, ident, where, "reply_to", False)
        if reply_to and not is_address(reply_to):
            src.problem(f"{reply_to!r} is not an email address", where, "reply_to")
        smtp_security = _security(src, ident, where, "smtp_security", "starttls")
        imap_security = _security(src, ident, where, "imap_security", "tls")
        password_env = _str(src, ident, where, "password_env", False)
        password_file = _str(src, ident, where, "password_file", False)
        smtp_user = _str(src, ident, where, "smtp_user", False)
        if smtp_user and not (password_env or password_file):
            src.problem("smtp_user needs password_env or password_file", where, "smtp_user")
        verify = ident.get("verify_tls", True)
        if not isinstance(verify, bool):
            src.problem("verify_tls must be true or false", where, "verify_tls")
            verify = True
        result.append(
            Identity(
                name=name,
                address=address,
                display_name=_str(src, ident, where, "display_name", True) or "",
                smtp_host=_str(src, ident, where, "smtp_host", True) or "",
                smtp_port=_int(src, ident, where, "smtp_port", 587),
                smtp_security=smtp_security,
                smtp_user=smtp_user,
                password_env=password_env,
                password_file=password_file,
                imap_host=_str(src, ident, where, "imap_host", False),
                imap_port=_int(src, ident, where, "imap_port", 993),
                imap_security=imap_security,
                imap_user=_str(src, ident, where, "imap_user", False),
                sent_folder=_str(src, ident, where, "sent_folder", False),
                reply_to=reply_to,
                rate_per_minute=_int(src, ident, where, "rate_per_minute", 30),
                concurrency=_int(src, ident, where, "concurrency", 2),
                verify_tls=verify,
                ca_file=_str(src, ident, where, "ca_file", False),
                receipt_copy=bool(ident.get("receipt_copy", True)),
            )
        )
    return tuple(result)


def _clock(src: TomlSource, raw: dict[str, Any], where: str, key: str, default: time) -> time:
    value = raw.get(key)
    if value is None:
        return default
    if isinstance(value, time):
        return value
    if isinstance(value, str):
        try:
            return time.fromisoformat(value)
        except ValueError:
            pass
    src.problem(f'{key} must be a time like "08:00"', where, key)
    return default


def _profiles(src: TomlSource, raw: Any) -> dict[DebtorKind, ComplianceProfile]:
    profiles = dict(DEFAULT_PROFILES)
    if not isinstance(raw, dict):
        src.problem("[profiles] must be a table", "", "profiles")
        return profiles
    for name, table in raw.items():
        where = f"profiles.{name}"
        try:
            kind = DebtorKind(name)
        except ValueError:
            src.problem(f"unknown profile {name!r} (business or consumer)", where)
            continue
        if not isinstance(table, dict):
            src.problem(f"[{where}] must be a table", where)
            continue
        for key in table:
            if key not in PROFILE_KEYS:
                src.problem(f"unknown key {key!r} in [{where}]", where, key)
        default = DEFAULT_PROFILES[kind]
        profile = replace(
            default,
            campaign=_str(src, table, where, "campaign", False) or default.campaign,
            earliest=_clock(src, table, where, "earliest", default.earliest),
            latest=_clock(src, table, where, "latest", default.latest),
            max_per_30_days=_int(src, table, where, "max_per_30_days", default.max_per_30_days),
            min_gap_days=_int(src, table, where, "min_gap_days", default.min_gap_days),
            opt_out_line=bool(table.get("opt_out_line", default.opt_out_line)),
        )
        # A profile is an outer limit set by law and good practice: config may tighten, not loosen.
        if profile.earliest < default.earliest or profile.latest > default.latest:
            src.problem(
                f"{name} sending hours may not go beyond "
                f"{default.earliest:%H:%M}-{default.latest:%H:%M}",
                where,
            )
        if profile.max_per_30_days > default.max_per_30_days:
            src.problem(
                f"max_per_30_days may not exceed {default.max_per_30_days} for {name}",
                where,
                "max_per_30_days",
            )
        if kind is DebtorKind.CONSUMER and not profile.opt_out_line:
            src.problem("consumer emails must carry the opt-out line", where, "opt_out_line")
        profiles[kind] = profile
    return profiles


_SERVER_PREFIX = re.compile(r"^[a-z]{2,4}[0-9]{1,3}$")


def _mailchimp(src: TomlSource, table: dict[str, Any]) -> MailchimpSettings:
    where = "mailchimp"
    default = MailchimpSettings(audience_id="")
    if "api_key" in table:
        src.problem("API keys never go in the file: use api_key_env or api_key_file", where)
    values: dict[str, Any] = {
        key: _str(src, table, where, key, key == "audience_id")
        for key in ("audience_id", "api_key_env", "api_key_file", "server", "base_url",
                    "from_name", "reply_to")
    }  # fmt: skip
    if not (values["api_key_env"] or values["api_key_file"]):
        src.problem("[mailchimp] needs api_key_env or api_key_file", where)
    server = values["server"]
    if server is not None and not _SERVER_PREFIX.match(server):
        src.problem(f'server must be a data-center prefix like "us21", not {server!r}', where)
    url = values["base_url"]
    if url is not None and not url.lower().startswith(("http://", "https://")):
        src.problem("base_url must be an http:// or https:// address", where, "base_url")
    elif url is not None and "server" in url:
        # The SDK replaces the word "server" in every URL with the data-center prefix.
        src.problem('base_url may not contain the word "server"', where, "base_url")
    if values["reply_to"] is not None and not is_address(values["reply_to"]):
        src.problem("reply_to must be a plain email address", where, "reply_to")
    status = table.get("new_member_status", default.new_member_status)
    if status not in ("subscribed", "pending"):
        src.problem('new_member_status must be "subscribed" or "pending"', where)
    values["new_member_status"] = status
    schedule = table.get("schedule", default.schedule)
    if not isinstance(schedule, bool):
        src.problem("schedule must be true or false", where, "schedule")
    values["schedule"] = schedule is True
    concurrency = _int(src, table, where, "concurrency", default.concurrency)
    if concurrency > 10:
        src.problem("concurrency: Mailchimp allows at most 10 connections", where, "concurrency")
    values["concurrency"] = min(concurrency, 10)
    values["poll_days"] = _int(src, table, where, "poll_days", default.poll_days)
    for key in ("timeout_seconds", "poll_minutes"):
        value = table.get(key, getattr(default, key))
        if isinstance(value, bool) or not isinstance(value, int | float) or value <= 0:
            src.problem(f"{key} must be a number > 0", where, key)
        else:
            values[key] = float(value)
    tags = table.get("tags", list(default.tags))
    if not (isinstance(tags, list) and all(isinstance(t, str) and 0 < len(t) <= 100 for t in tags)):
        src.problem("tags must be a list of names (1-100 characters each)", where, "tags")
    else:
        values["tags"] = tuple(tags)
    values["audience_id"] = values["audience_id"] or ""
    return MailchimpSettings(**values)


def _mandrill(src: TomlSource, table: dict[str, Any]) -> MandrillSettings:
    where = "mandrill"
    default = MandrillSettings()
    if "api_key" in table:
        src.problem("API keys never go in the file: use api_key_env or api_key_file", where)
    values: dict[str, Any] = {
        key: _str(src, table, where, key, False)
        for key in ("api_key_env", "api_key_file", "base_url", "from_name")
    }
    if not (values["api_key_env"] or values["api_key_file"]):
        src.problem("[mandrill] needs api_key_env or api_key_file", where)
    url = values["base_url"]
    if url is not None and not url.lower().startswith(("http://", "https://")):
        src.problem("base_url must be an http:// or https:// address", where, "base_url")
    values["poll_days"] = _int(src, table, where, "poll_days", default.poll_days)
    for key in ("timeout_seconds", "poll_minutes"):
        value = table.get(key, getattr(default, key))
        if isinstance(value, bool) or not isinstance(value, int | float) or value <= 0:
            src.problem(f"{key} must be a number > 0", where, key)
        else:
            values[key] = float(value)
    return MandrillSettings(**values)
