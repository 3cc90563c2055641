"""mailer.toml + environment → frozen, validated settings; every default is documented here."""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, replace
from datetime import time
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

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
}  # fmt: skip
INBOUND_KEYS = {
    "folders", "lookback_days", "promise_grace_days", "soft_bounce_limit", "soft_retry_hours",
    "idle_seconds", "poll_seconds",
}  # fmt: skip
EVIDENCE_KEYS = {
    "tsa_url", "tsa_ca_file", "tsa_certs_file", "timestamp_interval_hours", "tsa_timeout_seconds",
    "business_lang", "block_after_years", "purge_after_years",
}  # fmt: skip
DAEMON_KEYS = {
    "interval_seconds", "shutdown_timeout_seconds", "retry_deadline_hours", "reconcile_grace_seconds",
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
    if identity.password_env:
        value = os.environ.get(identity.password_env)
        if value is None:
            raise ConfigError([f"identity {identity.name}: ${identity.password_env} is not set"])
        return value
    if identity.password_file:
        try:
            return Path(identity.password_file).read_text(encoding="utf-8").rstrip("\r\n")
        except OSError as exc:
            raise ConfigError(
                [f"identity {identity.name}: cannot read password file: {exc.strerror}"]
            ) from exc
    raise ConfigError([f"identity {identity.name}: no password_env or password_file configured"])


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
    )


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
    for key in ("soft_retry_hours", "idle_seconds", "poll_seconds"):
        value = table.get(key, getattr(default, key))
        if isinstance(value, bool) or not isinstance(value, int | float) or value <= 0:
            src.problem(f"{key} must be a number > 0", "inbound", key)
        else:
            values[key] = float(value)
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
