#!/usr/bin/env bash
# deploy/demo, the README's first command, end to end with the binaries
# under test (SMTPSYNC_DEMO_BIN, the build of $SMTPSYNC_PRIMARY) in a
# directory of $T and on ports of its own (SMTPSYNC_DEMO_PORT_BASE):
#
#   - every step runs and is shown; Test Connection passes (SMTPS, then
#     STARTTLS); both replicas in-sync; a tokencode from each of the three
#     nodes is delivered (checked in the maildir: From, Subject, the node's
#     EHLO name); site-c shown unreachable while down, then caught up;
#   - the logon password is in no output, daemon log or store;
#   - the daemons are left running, and answer;
#   - a second run over the first stops it and works again;
#   - `deploy/demo stop` leaves no process, no Postfix instance and no
#     directory, and the suite's Postfix fixture keeps running.
#
# Sanitizer reports of the daemons (which outlive each run) go to
# $T/sanitizer.* (log_path) and fail the test.
set -euo pipefail
# shellcheck source=lib.sh
source "$(dirname "$0")/lib.sh"

if [ "$(id -u)" -ne 0 ] || ! command -v postfix >/dev/null; then
    echo "SKIP: the demo's Postfix needs root and postfix"
    exit 77
fi

DEMO=$SMTPSYNC_SOURCE/deploy/demo
BIN=$(cd "$(dirname "$SMTPSYNC_PRIMARY")/.." && pwd)
DIR=$T/demo
for b in primary/smtpsync-primary replica/smtpsync-replica ctl/smtpsyncctl; do
    [ -x "$BIN/$b" ] || { echo "FAIL: $BIN/$b is missing (derived from SMTPSYNC_PRIMARY)" >&2; exit 1; }
done

# A base whose nine ports (see deploy/demo) are free now, below the
# kernel's ephemeral range (deploy/demo warns about ports in it).
BASE=$(python3 - <<'PY'
import random, socket
lo = int(open("/proc/sys/net/ipv4/ip_local_port_range").read().split()[0])
for _ in range(200):
    base = random.randrange(10000, max(10100, lo - 600), 100)
    socks = []
    try:
        for off in (25, 465, 587, 443, 444, 445, 90, 91, 92):
            s = socket.socket()
            s.bind(("127.0.0.1", base + off))
            socks.append(s)
    except OSError:
        continue
    finally:
        for s in socks:
            s.close()
    print(base)
    break
PY
)
[ -n "$BASE" ] || { echo "FAIL: no free port base" >&2; exit 1; }

demo_env=(env SMTPSYNC_DEMO_DIR="$DIR" SMTPSYNC_DEMO_BIN="$BIN" SMTPSYNC_DEMO_PORT_BASE="$BASE"
    ASAN_OPTIONS="${ASAN_OPTIONS:-}:log_path=$T/sanitizer.asan"
    UBSAN_OPTIONS="${UBSAN_OPTIONS:-}:log_path=$T/sanitizer.ubsan")

# Whatever happens, the demo's daemons and Postfix do not outlive the test.
# shellcheck disable=SC2317 # called by the trap
on_exit() {
    local rc=$?
    "${demo_env[@]}" "$DEMO" stop >/dev/null 2>&1
    (exit "$rc")
    cleanup
}
trap on_exit EXIT

fixture_running=
if [ -n "${SMTPSYNC_POSTFIX_DIR:-}" ] && "$SMTPSYNC_TOOLS/postfix.sh" status "$SMTPSYNC_POSTFIX_DIR"; then
    fixture_running=1
fi

# section FROM TO: the lines of $OUT from the heading matching FROM up to
# the next heading matching TO.
section() {
    printf '%s\n' "$OUT" | sed -n "/==> $1/,/==> $2/p"
}

# replica_line SECTION_TEXT ID: the status table row of replica ID.
replica_row() {
    printf '%s\n' "$1" | grep -E "^$2 +(in-sync|behind|syncing|unreachable|diverged|fenced|never-synced) " |
        tail -n 1
}

# shellcheck disable=SC2317 # called through assert_false
port_is_open() {
    (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null
}

alive() { kill -0 "$1" 2>/dev/null; }

pids_of_run() {
    cat "$DIR"/*/pid 2>/dev/null || true
}

check_run() { # LABEL
    local label=$1 n pw f s8 s10 s11 row
    RUN_OUT=$OUT
    assert_exit "$label: deploy/demo" 0
    if [ "$RC" -ne 0 ]; then
        printf -- '--- output:\n%s\n--- stderr:\n%s\n' "$OUT" "$ERR" >&2
        return 1
    fi
    for s in "1. The deployment's PKI" "2. The mail server's certificate" "3. A private Postfix" \
        "4. One primary and two replicas" "5. Draft the primary instance's settings" \
        "6. Import the mail server's certificate" "7. Test Connection" "8. Save" \
        "9. A tokencode mail from each node" "10. site-c goes down" "11. site-c comes back" \
        "12. A few metrics" "Done: the cluster is running"; do
        assert_contains "$label: step shown: $s" "$OUT" "==> $s"
    done
    assert_contains "$label: smtpsyncctl lines are shown" "$OUT" \
        '$ smtpsyncctl settings save --apply-to-replicas'
    assert_contains "$label: the PKI comes from deploy/smtpsync-pki" "$OUT" '$ deploy/smtpsync-pki -d demo-run/pki init'
    assert_not_contains "$label: the demo directory is shown abbreviated" "$OUT" "$DIR/pki"
    assert_eq "$label: Test Connection passed twice (SMTPS, STARTTLS)" 2 \
        "$(printf '%s\n' "$OUT" | grep -c 'result: ok, the test mail was accepted')"
    assert_match "$label: the first test on the SMTPS port" "$(section '7\.' '8\.')" \
        "ok +connect +[0-9.]+ ms +127\.0\.0\.1:$((BASE + 465))"
    assert_match "$label: the second test on the STARTTLS port" "$(section '10\.' '11\.')" \
        "ok +connect +[0-9.]+ ms +127\.0\.0\.1:$((BASE + 587))"
    assert_match "$label: STARTTLS step in the second test" "$(section '10\.' '11\.')" \
        'ok +starttls +[0-9.]+ ms +220'
    assert_contains "$label: revision 1 saved" "$OUT" "saved revision 1"
    assert_contains "$label: revision 2 saved" "$OUT" "saved revision 2"

    s8=$(section '8\.' '9\.')
    for n in site-b site-c; do
        row=$(replica_row "$s8" "$n")
        assert_match "$label: $n in-sync at revision 1 after the save" "$row" "^$n +in-sync +1 +1 "
    done
    s10=$(section '10\.' '11\.')
    assert_match "$label: site-c unreachable while down" "$(replica_row "$s10" site-c)" \
        '^site-c +unreachable +1 +2 .*connection refused'
    assert_match "$label: site-b in-sync at 2 meanwhile" "$(replica_row "$s10" site-b)" \
        '^site-b +in-sync +2 +2 '
    s11=$(section '11\.' '12\.')
    assert_contains "$label: sync reports site-c caught up" "$s11" \
        "replica site-c: in-sync at revision 2 of 2"
    assert_match "$label: site-c in-sync at 2 in the status" "$(replica_row "$s11" site-c)" \
        '^site-c +in-sync +2 +2 '
    assert_contains "$label: site-c has the STARTTLS settings" "$s11" "tls_mode: starttls"
    assert_match "$label: metrics of the primary shown" "$(section '12\.' 'Done')" \
        '^smtpsync_[a-z_]+(\{[^}]*\})? [0-9]'

    # The mail, in the maildir of the demo's Postfix.
    # shellcheck disable=SC1091
    source "$DIR/postfix/instance.env"
    for n in primary site-b site-c; do
        f=$(grep -rlF -- "Subject: Your tokencode (sent by $n)" "$MAIL_DIR"/*/new 2>/dev/null | head -n 1 || true)
        if [ -z "$f" ]; then
            fail "$label: no tokencode mail from $n in $MAIL_DIR"
            continue
        fi
        pass
        assert_contains "$label: $n's mail: From" "$(header_value "$f" From)" "tokencodes@example.test"
        assert_contains "$label: $n's mail: To" "$(header_value "$f" To)" "user@example.test"
        assert_match "$label: $n's mail came from $n, authenticated over TLS" \
            "$(header_value "$f" Received)" "^from $n\\.demo\\.test .*with ESMTPSA"
        assert_contains "$label: $n's mail shown" "$OUT" "Subject: Your tokencode (sent by $n)"
        assert_match "$label: $n's mail is a tokencode" "$(body_of "$f")" '^Your tokencode is [0-9]{6}\.'
    done

    # The password: in no output, log or store.
    pw=$(head -n 1 "$SASL_PASSWORD_FILE")
    assert_true "$label: a SASL password was made" test -n "$pw"
    assert_not_contains "$label: no password on stdout" "$OUT" "$pw"
    assert_not_contains "$label: no password on stderr" "$ERR" "$pw"
    for n in primary site-b site-c; do
        assert_false "$label: no password in $n's log" grep -qF -- "$pw" "$DIR/$n/log"
        assert_false "$label: no password in $n's store" grep -qaF -- "$pw" "$DIR/$n/data/data.mdb"
        assert_false "$label: no password in $n's config" grep -qF -- "$pw" "$DIR/$n/$n.ini"
    done

    # Left running, and usable with the printed configuration.
    for n in primary site-b site-c; do
        assert_true "$label: $n still runs" kill -0 "$(cat "$DIR/$n/pid")"
    done
    run env SMTPSYNC_CONFIG="$DIR/ctl.conf" "$SMTPSYNCCTL" status --json
    assert_exit "$label: status through demo-run/ctl.conf after the demo" 0
    assert_eq "$label: both replicas in-sync after the demo" "in-sync in-sync" \
        "$(json '" ".join(r["state"] for r in d["replicas"])')"
    assert_true "$label: no sanitizer report so far" test -z "$(ls "$T"/sanitizer.* 2>/dev/null)"
    OUT=$RUN_OUT
}

# ---- a port taken by another program: refused before anything is made -------
# hold_port HOST PORT: another program listens on HOST:PORT (HOLDER).
hold_port() {
    rm -f "$T/holder.ready"
    python3 -c '
import socket, sys, time
six = ":" in sys.argv[1]
s = socket.socket(socket.AF_INET6 if six else socket.AF_INET)
if six:
    s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind((sys.argv[1], int(sys.argv[2])))
s.listen(1)
open(sys.argv[3], "w").close()
time.sleep(120)' "$1" "$2" "$T/holder.ready" &
    HOLDER=$!
    PIDS+=("$HOLDER")
    wait_until 10 test -e "$T/holder.ready" || true
}

release_port() {
    kill "$HOLDER" 2>/dev/null || true
    wait "$HOLDER" 2>/dev/null || true
}

hold_port 127.0.0.1 $((BASE + 444))
run "${demo_env[@]}" timeout 120 "$DEMO"
assert_exit "a port in use" 1
assert_contains "a port in use: named" "$ERR" "port $((BASE + 444)) on 127.0.0.1 is in use"
assert_contains "a port in use: what to change" "$ERR" "SMTPSYNC_DEMO_PORT_BASE"
assert_true "a port in use: nothing made" test ! -e "$DIR"
release_port

# The same on [::1] only (where Postfix listens too), when the host has it.
if grep -q '^0\{31\}1 ' /proc/net/if_inet6 2>/dev/null; then
    hold_port ::1 $((BASE + 465))
    run "${demo_env[@]}" timeout 120 "$DEMO"
    assert_exit "a port in use on [::1]" 1
    assert_contains "a port in use on [::1]: named" "$ERR" "port $((BASE + 465)) on [::1] is in use"
    assert_true "a port in use on [::1]: nothing made" test ! -e "$DIR"
    release_port
fi

# ---- the first run ----------------------------------------------------------
SECONDS=0
run "${demo_env[@]}" timeout 300 "$DEMO"
check_run "first run" || finish
assert_not_contains "first run: no warning about its ports" "$ERR" "ephemeral range"
FIRST_OUT=$OUT
FIRST_PIDS=$(pids_of_run)
printf 'first run: %ss\n' "$SECONDS"

# ---- again, over the first ----------------------------------------------------
SECONDS=0
run "${demo_env[@]}" timeout 300 "$DEMO"
check_run "second run" || finish
assert_contains "second run: stops the first" "$OUT" "==> Stopping the previous run"
for n in primary site-b site-c; do
    assert_contains "second run: $n of the first run stopped" "$OUT" "demo: stopped $n"
done
for pid in $FIRST_PIDS; do
    assert_false "second run: pid $pid of the first run is gone" alive "$pid"
done
printf 'second run: %ss\n' "$SECONDS"

# ---- stop -----------------------------------------------------------------------
# A pid file naming a process that is not the demo's (here: a sleep of the
# test) does not get it signalled.
sleep 300 &
GHOST=$!
PIDS+=("$GHOST")
mkdir "$DIR/ghost"
echo "$GHOST" >"$DIR/ghost/pid"
# A daemon whose pid file was never written (the demo interrupted right
# after starting it) is found by its --config under the run's directory.
ORPHAN=$(cat "$DIR/site-b/pid")
rm "$DIR/site-b/pid"
# shellcheck disable=SC1091
source "$DIR/postfix/instance.env"
PF_ETC=$POSTFIX_CONFIG
run "${demo_env[@]}" "$DEMO" stop
assert_exit "demo stop" 0
assert_contains "demo stop: the daemon without a pid file is stopped" "$OUT" \
    "without a pid file (pid $ORPHAN)"
# Gone, or a zombie its new parent has not reaped yet.
gone() { [ ! -e "/proc/$1" ] || [ "$(awk '{ print $3 }' "/proc/$1/stat" 2>/dev/null)" = Z ]; }
assert_true "demo stop: the daemon without a pid file is gone" wait_until 10 gone "$ORPHAN"
assert_contains "demo stop: stopped Postfix" "$OUT" "stopped Postfix"
assert_true "demo stop: the directory is gone" test ! -e "$DIR"
assert_true "demo stop: a process not the demo's is left alone" alive "$GHOST"
assert_false "demo stop: no process of the demo is left" pgrep -f "$DIR/"
assert_false "demo stop: no Postfix of the demo is left" pgrep -f "$PF_ETC"
assert_true "demo stop: the Postfix instance is gone" test ! -e "$PF_ETC"
assert_false "demo stop: its configuration directory is forgotten" \
    grep -qF -- "$PF_ETC" /etc/postfix/main.cf
for off in 25 465 587 443 444 445; do
    assert_false "demo stop: port $((BASE + off)) closed" port_is_open $((BASE + off))
done
run "${demo_env[@]}" "$DEMO" stop
assert_exit "demo stop again" 0
assert_contains "demo stop again: nothing to remove" "$OUT" "nothing to remove"
if [ -n "$fixture_running" ]; then
    assert_true "the suite's Postfix fixture still runs" \
        "$SMTPSYNC_TOOLS/postfix.sh" status "$SMTPSYNC_POSTFIX_DIR"
fi
assert_true "no sanitizer report from the daemons" test -z "$(ls "$T"/sanitizer.* 2>/dev/null)"
if [ -n "$(ls "$T"/sanitizer.* 2>/dev/null)" ]; then
    head -n 60 "$T"/sanitizer.* >&2
fi
if [ "$FAILED" -ne 0 ]; then
    printf -- '--- output of the first run:\n%s\n' "$FIRST_OUT" >&2
fi
finish
