"""systemd/mailer.service: systemd's own checker accepts it, its hardening scores as such, and
secrets reach the daemon as systemd credentials (LoadCredential=)."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from mailer.config import load_settings, read_secret
from mailer.errors import ConfigError

UNIT = Path(__file__).resolve().parent.parent / "systemd" / "mailer.service"
EXAMPLE = Path(__file__).resolve().parent.parent / "examples" / "mailer.toml"
INSTALLED = "/opt/mailer/venv/bin/mailer"  # the README's path, in the shipped unit
# CI (MAILER_REQUIRE_MAILENV=1) fails rather than skips without systemd-analyze:
# scripts/install-mailservers.sh installs it (Debian package systemd).
REQUIRE = os.environ.get("MAILER_REQUIRE_MAILENV") == "1"


def analyze() -> str:
    found = shutil.which("systemd-analyze")
    if found is None and REQUIRE:
        pytest.fail("systemd-analyze is missing (scripts/install-mailservers.sh installs it)")
    if found is None:
        pytest.skip("needs systemd-analyze (Debian package systemd)")
    return found


def rendered(tmp_path: Path, text: str | None = None) -> Path:
    """The unit as installed here: systemd-analyze insists that ExecStart's program exists, so
    the README's /opt path becomes this checkout's own `mailer`."""
    mailer = Path(sys.executable).parent / "mailer"
    assert mailer.is_file(), "the venv's mailer script (./run setup installs it)"
    unit = tmp_path / "mailer.service"
    unit.write_text(
        (text or UNIT.read_text(encoding="utf-8")).replace(INSTALLED, str(mailer)),
        encoding="utf-8",
    )
    return unit


def verify(unit: Path) -> subprocess.CompletedProcess[str]:
    # systemd-analyze logs problems it only warns about and still exits 0: both are checked.
    return subprocess.run(
        [analyze(), "verify", "--man=no", str(unit)], capture_output=True, text=True, timeout=120
    )


def directives(text: str) -> dict[str, list[str]]:
    found: dict[str, list[str]] = {}
    for line in text.splitlines():
        if re.match(r"^[A-Za-z]+=", line):
            key, _, value = line.partition("=")
            found.setdefault(key, []).append(value)
    return found


def test_systemd_analyze_verify_accepts_the_unit(tmp_path: Path) -> None:
    assert INSTALLED in UNIT.read_text(encoding="utf-8")
    done = verify(rendered(tmp_path))
    assert done.returncode == 0 and done.stdout + done.stderr == "", done.stdout + done.stderr
    # The check has teeth: a mistyped value is reported.
    broken = UNIT.read_text(encoding="utf-8").replace("Type=notify", "Type=notfy")
    done = verify(rendered(tmp_path, broken))
    assert "Failed to parse service type" in done.stdout + done.stderr


def test_the_unit_asks_for_what_the_daemon_does_and_is_hardened(tmp_path: Path) -> None:
    found = directives(UNIT.read_text(encoding="utf-8"))
    for key, expected in {
        "Type": "notify",
        "NotifyAccess": "main",
        "Restart": "on-failure",
        "ExecReload": "/bin/kill -HUP $MAINPID",
        "ProtectSystem": "strict",
        "ReadWritePaths": "/var/lib/mailer",
        "NoNewPrivileges": "yes",
        "PrivateTmp": "yes",
        "ProtectHome": "yes",
        "CapabilityBoundingSet": "",
        "RestrictAddressFamilies": "AF_INET AF_INET6 AF_UNIX",
        "StateDirectory": "mailer",
    }.items():
        assert expected in found.get(key, []), key
    assert "@system-service" in found["SystemCallFilter"]
    assert found["LoadCredential"] and found["User"] == ["mailer"]
    # The keep-alives (half of WatchdogSec) come far more often than systemd gives up.
    assert re.fullmatch(r"\d+s", found["WatchdogSec"][0])
    # systemd's own score of the sandbox: 0 is a locked box, 10 an open one ("OK" is < 2.0...).
    done = subprocess.run(
        [analyze(), "security", "--offline=yes", "--no-pager", str(rendered(tmp_path))],
        capture_output=True,
        text=True,
        timeout=120,
    )
    match = re.search(r"Overall exposure level for mailer.service: ([\d.]+)", done.stdout)
    assert match is not None, done.stdout + done.stderr
    assert float(match.group(1)) <= 2.0, done.stdout


def test_passwords_come_from_systemd_credentials(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    config = tmp_path / "mailer.toml"
    text = EXAMPLE.read_text(encoding="utf-8")
    text, count = re.subn(
        r'password_env = "[A-Z_]+"', 'password_file = "${CREDENTIALS_DIRECTORY}/cobros"', text
    )
    assert count >= 1
    config.write_text(text, encoding="utf-8")
    identity = load_settings(config).identity("cobros")
    assert identity.password_file == "${CREDENTIALS_DIRECTORY}/cobros"
    credentials = tmp_path / "credentials"
    credentials.mkdir()
    (credentials / "cobros").write_text("s3cret-from-systemd\n", encoding="utf-8")
    monkeypatch.setenv("CREDENTIALS_DIRECTORY", str(credentials))
    assert read_secret(identity) == "s3cret-from-systemd"
    # Outside systemd the placeholder says what is wrong instead of reading a strange path.
    monkeypatch.delenv("CREDENTIALS_DIRECTORY")
    with pytest.raises(ConfigError, match="LoadCredential"):
        read_secret(identity)
