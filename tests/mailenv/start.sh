#!/usr/bin/env bash
# start.sh [DIR] - start mailer's throw-away REAL mail environment on 127.0.0.1 high ports
# (adapted from shared/mailenv; driven by tests/mailenv/__init__.py, usable by hand too):
#   Dovecot 2.3  IMAP (IDLE) + LMTP + SASL + Sieve    (rootless, runs as an unprivileged user)
#   Postfix 3.7  SMTP "MX/relay" port + AUTH submission port -> LMTP, real DSN bounces (needs root)
#   remote_mx.py aiosmtpd "rest of the internet": scriptable accept/550/451 (any user)
# No systemd, no syslog; everything (config, sockets, queue, logs, mail) lives in DIR.
# Prints KEY=VALUE lines (also stored in DIR/env and DIR/env.json). Stop with stop.sh DIR.
#
# Environment knobs:
#   MAILENV_DIR          state dir (default: $1 or mktemp -d /tmp/mailer-mailenv.XXXXXX)
#   MAILENV_PORT_BASE    use ports BASE..BASE+4 (IMAP,LMTP,SMTP,SUBMIT,SASL) and BASE+5 (MX);
#                        default: ask the kernel for free ports
#   MAILENV_USERS        space separated addresses (default below); password for all:
#   MAILENV_PASSWORD     (default: secret)
#   MAILENV_MAIL_USER    unix user that owns the mail when started as root (default: nobody)
#   MAILENV_POSTFIX      1/0 (default: 1 if root, else 0 - Postfix refuses to run unprivileged)
#   MAILENV_REMOTE_MX    1/0 (default: 1 if MAILENV_PYTHON can import aiosmtpd)
#   MAILENV_PYTHON       python with aiosmtpd for remote_mx.py (default: python3)
#   MAILENV_REJECT_UNKNOWN  1 = reject unknown local users at RCPT time (default 0 = accept+DSN)
#   MAILENV_SIEVE_DIR    dir with <address>.sieve files installed as the users' active script
#   MAILENV_TIMEOUT      seconds to wait for every port (default 15)
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
TPL=$HERE/templates
DIR=${1:-${MAILENV_DIR:-}}
[ -n "$DIR" ] || DIR=$(mktemp -d /tmp/mailer-mailenv.XXXXXX)
mkdir -p "$DIR"
DIR=$(cd "$DIR" && pwd)
T_START=$EPOCHREALTIME

# creditor.test: the business (two sender identities) + senders the templates block;
# debtor.test: the debtors; any other local-part on these domains -> real DSN 5.1.1;
# every other domain goes to remote_mx.py.
USERS=${MAILENV_USERS:-"billing@creditor.test accounts@creditor.test postmaster@creditor.test blocked@creditor.test silent@creditor.test debtor1@debtor.test debtor2@debtor.test debtor3@debtor.test debtor4@debtor.test debtor5@debtor.test debtor6@debtor.test postmaster@debtor.test"}
PASSWORD=${MAILENV_PASSWORD:-secret}
TIMEOUT=${MAILENV_TIMEOUT:-15}
PY=${MAILENV_PYTHON:-python3}

die() { echo "start.sh: $*" >&2; exit 1; }
export PATH="$PATH:/usr/sbin:/sbin"  # postfix/dovecot live in sbin, absent from some users' PATH
for b in dovecot doveconf; do command -v $b >/dev/null || die "$b not installed (apt-get install dovecot-imapd dovecot-lmtpd dovecot-sieve)"; done

# ---------------------------------------------------------------- who runs what
if [ "$(id -u)" = 0 ]; then
    RUNUSER=${MAILENV_MAIL_USER:-nobody}
    DO_POSTFIX=${MAILENV_POSTFIX:-1}
else
    RUNUSER=$(id -un)
    DO_POSTFIX=${MAILENV_POSTFIX:-0}
    [ "$DO_POSTFIX" = 1 ] && die "Postfix must be started as root (its master refuses otherwise)"
fi
RUNUID=$(id -u "$RUNUSER"); RUNGID=$(id -g "$RUNUSER"); RUNGROUP=$(id -gn "$RUNUSER")
if [ "$DO_POSTFIX" = 1 ]; then
    command -v postfix >/dev/null || die "postfix not installed"
    id postfix >/dev/null 2>&1 || die "system user 'postfix' missing (comes with the postfix package)"
fi
if [ -z "${MAILENV_REMOTE_MX:-}" ]; then
    if "$PY" -c 'import aiosmtpd' 2>/dev/null; then DO_MX=1; else DO_MX=0; fi
else
    DO_MX=$MAILENV_REMOTE_MX
fi

# ---------------------------------------------------------------- ports
if [ -n "${MAILENV_PORT_BASE:-}" ]; then
    B=$MAILENV_PORT_BASE
    read -r IMAP_PORT LMTP_PORT SMTP_PORT SUBMIT_PORT SASL_PORT MX_PORT <<<"$B $((B+1)) $((B+2)) $((B+3)) $((B+4)) $((B+5))"
else
    # (prefer the distro python: a pyenv shim alone costs ~0.2 s)
    SYSPY=$(command -v /usr/bin/python3 || command -v python3)
    read -r IMAP_PORT LMTP_PORT SMTP_PORT SUBMIT_PORT SASL_PORT MX_PORT < <("$SYSPY" - <<'EOF'
import socket
ss = [socket.socket() for _ in range(6)]
for s in ss: s.bind(("127.0.0.1", 0))
print(*[s.getsockname()[1] for s in ss])
for s in ss: s.close()
EOF
)
fi

# ---------------------------------------------------------------- layout
mkdir -p "$DIR"/{log,pids,dovecot/run,dovecot/state,mail,remote}
: > "$DIR/log/dovecot.log"
DOMAINS=$(for u in $USERS; do d=${u#*@}; echo "${d,,}"; done | sort -u | paste -sd, | sed 's/,/, /g')
: > "$DIR/dovecot/users"
for u in $USERS; do
    echo "${u,,}:{PLAIN}$PASSWORD::::::" >> "$DIR/dovecot/users"
    local_part=${u%@*}; domain=${u#*@}
    home="$DIR/mail/${domain,,}/${local_part,,}"
    mkdir -p "$home"
    if [ -n "${MAILENV_SIEVE_DIR:-}" ] && [ -f "$MAILENV_SIEVE_DIR/$u.sieve" ]; then
        cp "$MAILENV_SIEVE_DIR/$u.sieve" "$home/.dovecot.sieve"
    fi
done

if [ "$DO_MX" = 1 ]; then
    DEFAULT_TRANSPORT="smtp:[127.0.0.1]:$MX_PORT"
else
    DEFAULT_TRANSPORT="error:5.4.4 no route to the outside world in the test environment"
fi
if [ "${MAILENV_REJECT_UNKNOWN:-0}" = 1 ]; then
    VMAILBOX_MAPS="texthash:$DIR/postfix/conf/vmailbox"
else
    VMAILBOX_MAPS=""
fi

render() {  # render TEMPLATE > OUT
    sed -e "s|@@DIR@@|$DIR|g" -e "s|@@INSTANCE@@|$(basename "$DIR")|g" \
        -e "s|@@RUNUSER@@|$RUNUSER|g" -e "s|@@RUNGROUP@@|$RUNGROUP|g" \
        -e "s|@@IMAP_PORT@@|$IMAP_PORT|g" -e "s|@@LMTP_PORT@@|$LMTP_PORT|g" \
        -e "s|@@SMTP_PORT@@|$SMTP_PORT|g" -e "s|@@SUBMIT_PORT@@|$SUBMIT_PORT|g" \
        -e "s|@@SASL_PORT@@|$SASL_PORT|g" -e "s|@@MX_PORT@@|$MX_PORT|g" \
        -e "s|@@DOMAINS@@|$DOMAINS|g" -e "s|@@DEFAULT_TRANSPORT@@|$DEFAULT_TRANSPORT|g" \
        -e "s|@@VMAILBOX_MAPS@@|$VMAILBOX_MAPS|g" "$1"
}
# ---------------------------------------------------------------- TLS for submission
# A throw-away CA and a certificate for 127.0.0.1 (and localhost): submission offers STARTTLS
# (smtpd_tls_security_level=may, so clients that do not ask keep talking plain) and clients
# verify it with DIR/tls/ca.pem (MAILENV_CA_FILE). Without openssl, or if it fails, the
# environment starts without TLS and MAILENV_CA_FILE is left out.
TLS_DIR=$DIR/tls
if [ "$DO_POSTFIX" = 1 ] && command -v openssl >/dev/null; then
    mkdir -p "$TLS_DIR"
    if ! (
        # "&&" all along: errexit does not apply inside an if condition
        EC=(-newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes)
        cd "$TLS_DIR" &&
        openssl req -x509 "${EC[@]}" -keyout ca.key -out ca.pem -days 7 -subj "/CN=mailenv test CA" \
            -addext "basicConstraints=critical,CA:TRUE" \
            -addext "keyUsage=critical,keyCertSign,cRLSign" &&
        printf '%s\n' "subjectAltName=IP:127.0.0.1,DNS:localhost" "basicConstraints=critical,CA:FALSE" \
            "keyUsage=critical,digitalSignature" "extendedKeyUsage=serverAuth" \
            "subjectKeyIdentifier=hash" "authorityKeyIdentifier=keyid" > server.ext &&
        openssl req -new "${EC[@]}" -keyout server.key -out server.csr -subj "/CN=mail.creditor.test" &&
        openssl x509 -req -in server.csr -CA ca.pem -CAkey ca.key -CAcreateserial -days 7 \
            -extfile server.ext -out server.pem &&
        chmod 600 ca.key server.key
    ) >>"$DIR/log/tls.log" 2>&1; then
        echo "start.sh: no TLS on submission, openssl failed (see $DIR/log/tls.log)" >&2
        rm -rf "$TLS_DIR"
    fi
fi

render "$TPL/dovecot.conf.in" > "$DIR/dovecot/dovecot.conf"

if [ "$DO_POSTFIX" = 1 ]; then
    mkdir -p "$DIR/postfix/conf" "$DIR/postfix/queue" "$DIR/postfix/data"
    render "$TPL/main.cf.in"   > "$DIR/postfix/conf/main.cf"
    render "$TPL/master.cf.in" > "$DIR/postfix/conf/master.cf"
    # editable lookup tables (texthash: plain text, no postmap needed, re-read per connection)
    for f in recipient_policy sender_blocks virtual_alias transport vmailbox; do
        [ -f "$TPL/$f" ] && cp "$TPL/$f" "$DIR/postfix/conf/$f" || : > "$DIR/postfix/conf/$f"
    done
    for u in $USERS; do echo "${u,,} ok" >> "$DIR/postfix/conf/vmailbox"; done
    # Postfix's load_file() re-reads a config/texthash file every 300 ms until its mtime is
    # >1 s old (guards against half-written files): back-date everything we just wrote,
    # otherwise "postfix start" (and every smtpd) stalls ~1.5-2 s.
    touch -d '-10 seconds' "$DIR"/postfix/conf/*
    chown postfix "$DIR/postfix/data"
    # Pre-create the queue (same owners/modes as /etc/postfix/postfix-files) and drop a
    # "quick-start" marker: "postfix start" then skips its ~0.4-3 s integrity check
    # (post-install create-missing + postsuper + a find over the installation).
    Q="$DIR/postfix/queue"
    install -d -o root -g root -m 755 "$Q/pid"
    for d in active bounce corrupt defer deferred flush hold incoming private saved trace; do
        install -d -o postfix -g root -m 700 "$Q/$d"
    done
    install -d -o postfix -g postdrop -m 730 "$Q/maildrop"
    install -d -o postfix -g postdrop -m 710 "$Q/public"
    touch "$Q/quick-start"
fi
if [ "$DO_MX" = 1 ]; then
    [ -f "$TPL/remote_rules.json" ] && cp "$TPL/remote_rules.json" "$DIR/remote/rules.json" || echo '{}' > "$DIR/remote/rules.json"
fi
if [ "$(id -u)" = 0 ]; then
    chown -R "$RUNUSER:$RUNGROUP" "$DIR/mail" "$DIR/dovecot" "$DIR/log/dovecot.log"
fi
chmod 755 "$DIR" "$DIR/log"
if [ "$(id -u)" = 0 ] && ! setpriv --reuid="$RUNUID" --regid="$RUNGID" --clear-groups test -w "$DIR/mail"; then
    die "$RUNUSER cannot reach $DIR/mail - every parent dir must be o+x (e.g. pytest's tmp_path is 0700)"
fi

# on any failure: stop whatever was started, keep DIR for the logs
trap 'rc=$?; if [ $rc -ne 0 ]; then echo "start.sh: failed, logs kept in $DIR/log" >&2; MAILENV_KEEP=1 bash "$HERE/stop.sh" "$DIR"; fi' EXIT

wait_port() {  # wait_port PORT NAME PID
    local deadline=$(( $(date +%s) + TIMEOUT ))
    until (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; do
        if [ -n "${3:-}" ] && ! kill -0 "$3" 2>/dev/null; then
            echo "start.sh: $2 died, see $DIR/log/" >&2; tail -n 20 "$DIR"/log/*.log >&2 || true; return 1
        fi
        [ "$(date +%s)" -lt "$deadline" ] || { echo "start.sh: timeout waiting for $2 on port $1" >&2; return 1; }
        sleep 0.02
    done
}

# ---------------------------------------------------------------- start dovecot (foreground mode, backgrounded)
doveconf -c "$DIR/dovecot/dovecot.conf" -n > /dev/null || die "bad dovecot config"
if [ "$(id -u)" = 0 ]; then
    # run the whole of Dovecot unprivileged (same recipe as for a normal user)
    setpriv --reuid="$RUNUID" --regid="$RUNGID" --clear-groups --reset-env \
        "$(command -v dovecot)" -F -c "$DIR/dovecot/dovecot.conf" </dev/null >>"$DIR/log/dovecot.stdout" 2>&1 &
else
    dovecot -F -c "$DIR/dovecot/dovecot.conf" </dev/null >>"$DIR/log/dovecot.stdout" 2>&1 &
fi
echo $! > "$DIR/pids/dovecot.pid"

# ---------------------------------------------------------------- start remote MX simulator
if [ "$DO_MX" = 1 ]; then
    "$PY" "$HERE/remote_mx.py" --port "$MX_PORT" --rules "$DIR/remote/rules.json" \
        --maildir "$DIR/remote/Maildir" </dev/null >>"$DIR/log/remote_mx.log" 2>&1 &
    echo $! > "$DIR/pids/remote_mx.pid"
fi

# ---------------------------------------------------------------- start postfix (daemonizes itself)
if [ "$DO_POSTFIX" = 1 ]; then
    postfix -c "$DIR/postfix/conf" start </dev/null >>"$DIR/log/postfix.stdout" 2>&1 \
        || { cat "$DIR/log/postfix.stdout" "$DIR/log/postfix.log" >&2 2>/dev/null; die "postfix start failed"; }
    tr -d ' ' < "$DIR/postfix/queue/pid/master.pid" > "$DIR/pids/postfix.pid"
fi

wait_port "$IMAP_PORT" dovecot-imap "$(cat "$DIR/pids/dovecot.pid")"
wait_port "$LMTP_PORT" dovecot-lmtp "$(cat "$DIR/pids/dovecot.pid")"
wait_port "$SASL_PORT" dovecot-auth "$(cat "$DIR/pids/dovecot.pid")"
[ "$DO_MX" = 1 ] && wait_port "$MX_PORT" remote-mx "$(cat "$DIR/pids/remote_mx.pid")"
if [ "$DO_POSTFIX" = 1 ]; then
    wait_port "$SMTP_PORT" postfix-smtp "$(cat "$DIR/pids/postfix.pid")"
    wait_port "$SUBMIT_PORT" postfix-submission "$(cat "$DIR/pids/postfix.pid")"
fi
T_END=$EPOCHREALTIME

# ---------------------------------------------------------------- describe the environment
{
    echo "MAILENV_DIR=$DIR"
    echo "MAILENV_IMAP_PORT=$IMAP_PORT"
    echo "MAILENV_LMTP_PORT=$LMTP_PORT"
    [ "$DO_POSTFIX" = 1 ] && echo "MAILENV_SMTP_PORT=$SMTP_PORT" && echo "MAILENV_SUBMIT_PORT=$SUBMIT_PORT"
    echo "MAILENV_SASL_PORT=$SASL_PORT"
    [ -f "$TLS_DIR/ca.pem" ] && echo "MAILENV_CA_FILE=$TLS_DIR/ca.pem"
    [ "$DO_MX" = 1 ] && echo "MAILENV_MX_PORT=$MX_PORT" && echo "MAILENV_MX_RULES=$DIR/remote/rules.json" && echo "MAILENV_MX_MAILDIR=$DIR/remote/Maildir"
    echo "MAILENV_PASSWORD=$PASSWORD"
    echo "MAILENV_USERS='$USERS'"
    echo "MAILENV_MAILDIR_ROOT=$DIR/mail"
    [ "$DO_POSTFIX" = 1 ] && echo "MAILENV_POSTFIX_CONF=$DIR/postfix/conf"
    echo "MAILENV_DOVECOT_CONF=$DIR/dovecot/dovecot.conf"
    echo "MAILENV_STARTUP_SECONDS=$(awk "BEGIN{printf \"%.3f\", $T_END-$T_START}")"
} > "$DIR/env"
# same as JSON (values contain no quotes/backslashes)
{
    echo "{"
    sep=""
    while IFS='=' read -r k v; do
        v=${v#\'}; v=${v%\'}
        printf '%s "%s": "%s"' "$sep" "$k" "$v"; sep=$',\n'
    done < "$DIR/env"
    printf '\n}\n'
} > "$DIR/env.json"
cat "$DIR/env"
