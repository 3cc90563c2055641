#!/usr/bin/env bash
# install-mailservers.sh - install Postfix + Dovecot (IMAP, LMTP, Sieve) for the test harness
# in tests/mailenv/, without leaving the distribution's own mail services running; also the
# command-line tools the evidence tests check exports with (openssl ts, pdftoppm/pdftotext, and
# a headless Chromium that opens the HTML report and runs the review page's browser tests),
# and systemd-analyze, which checks systemd/mailer.service.
# Idempotent: exits 0 at once when the binaries are already there. Needs root (apt-get).
set -euo pipefail

PACKAGES=(dovecot-imapd dovecot-lmtpd dovecot-sieve postfix openssl poppler-utils
          chromium-headless-shell systemd)
export PATH="$PATH:/usr/sbin:/sbin"

have_all() {
    command -v dovecot >/dev/null && command -v doveconf >/dev/null \
        && command -v postfix >/dev/null && id postfix >/dev/null 2>&1 \
        && [ -e /usr/lib/dovecot/lmtp ] && [ -e /usr/lib/dovecot/modules/lib90_sieve_plugin.so ] \
        && command -v openssl >/dev/null && command -v pdftoppm >/dev/null \
        && command -v pdftotext >/dev/null && command -v chromium-headless-shell >/dev/null \
        && command -v systemd-analyze >/dev/null
}

if have_all; then
    echo "install-mailservers: dovecot and postfix already installed"
    exit 0
fi
if [ "$(id -u)" != 0 ]; then
    echo "install-mailservers: dovecot/postfix are missing and installing them needs root;" >&2
    echo "  run: sudo $0   (or: apt-get install -y --no-install-recommends ${PACKAGES[*]})" >&2
    exit 1
fi

export DEBIAN_FRONTEND=noninteractive
# no questions: Postfix gets no system-wide configuration (the harness brings its own)
echo "postfix postfix/main_mailer_type select No configuration" | debconf-set-selections

# Keep the packages' own daemons from starting: invoke-rc.d (and deb-systemd-invoke) ask
# policy-rc.d, and 101 means "action forbidden". Only ours is removed afterwards.
POLICY=/usr/sbin/policy-rc.d
OWN_POLICY=0
if [ ! -e "$POLICY" ]; then
    printf '#!/bin/sh\n# temporary, from install-mailservers.sh\nexit 101\n' > "$POLICY"
    chmod 755 "$POLICY"
    OWN_POLICY=1
fi
cleanup() { if [ "$OWN_POLICY" = 1 ]; then rm -f "$POLICY"; fi; }
trap cleanup EXIT

apt_install() {
    apt-get install -y --no-install-recommends -o DPkg::Lock::Timeout=300 \
        -o Dpkg::Options::=--force-confold "${PACKAGES[@]}"
}
# the package lists may be missing (fresh machine) or stale: update once, then retry
if ! apt-cache show "${PACKAGES[@]}" >/dev/null 2>&1 || ! apt_install; then
    apt-get -o DPkg::Lock::Timeout=300 update
    apt_install
fi

# Belt and braces: should a service have been started anyway (a policy-rc.d that allows it,
# systemd on the host), stop it and keep it from starting at boot.
if [ -d /run/systemd/system ] && command -v systemctl >/dev/null; then
    systemctl disable --now dovecot.service postfix.service >/dev/null 2>&1 || true
fi
if [ -s /var/spool/postfix/pid/master.pid ] && kill -0 "$(tr -d ' ' </var/spool/postfix/pid/master.pid)" 2>/dev/null; then
    postfix stop >/dev/null 2>&1 || true
fi
if [ -s /run/dovecot/master.pid ] && kill -0 "$(cat /run/dovecot/master.pid)" 2>/dev/null; then
    doveadm stop >/dev/null 2>&1 || kill "$(cat /run/dovecot/master.pid)" || true
fi

have_all || { echo "install-mailservers: installed, but binaries still missing" >&2; exit 1; }
echo "install-mailservers: installed ${PACKAGES[*]}"
