#!/usr/bin/env bash
# stop.sh DIR - stop what start.sh DIR started (by the PIDs it recorded) and delete DIR.
#   MAILENV_KEEP=1   keep DIR (logs, maildirs) for inspection
set -euo pipefail  # every step below is best-effort: failures are guarded with || true
DIR=${1:-${MAILENV_DIR:-}}
[ -n "$DIR" ] && [ -d "$DIR/pids" ] || { echo "usage: stop.sh DIR (a dir made by start.sh)" >&2; exit 2; }

# alive PID: running and not a zombie (the daemons were re-parented to PID 1 when
# start.sh exited; a slow init may take seconds to reap them - don't wait for that)
alive() { local st; st=$(awk '{print $3}' "/proc/$1/stat" 2>/dev/null) || return 1; [ -n "$st" ] && [ "$st" != Z ]; }

pids_to_wait=()
for name in postfix remote_mx dovecot; do
    f="$DIR/pids/$name.pid"
    [ -f "$f" ] || continue
    pid=$(tr -d ' \n' < "$f")
    [ -n "$pid" ] && alive "$pid" || { rm -f "$f"; continue; }
    # TERM the children too: Dovecot's master alone takes ~1 s to wind its services down
    kids=$(ps -o pid= --ppid "$pid" 2>/dev/null || true)
    # shellcheck disable=SC2086  # $kids is a list of PIDs
    kill -TERM "$pid" $kids 2>/dev/null || true
    pids_to_wait+=("$pid" $kids)
    rm -f "$f"
done

# wait up to 5 s, then SIGKILL the stragglers (only the PIDs collected above)
for _ in $(seq 1 250); do
    left=()
    for p in "${pids_to_wait[@]}"; do alive "$p" && left+=("$p"); done
    [ ${#left[@]} -eq 0 ] && break
    sleep 0.02
done
for p in "${left[@]:-}"; do [ -n "$p" ] && kill -KILL "$p" 2>/dev/null && echo "stop.sh: killed $p" >&2; done

if [ "${MAILENV_KEEP:-0}" != 1 ]; then
    case "$DIR" in /|/tmp|/root|/home|"") echo "stop.sh: refusing to delete $DIR" >&2; exit 1;; esac
    rm -rf "$DIR"
fi
exit 0
