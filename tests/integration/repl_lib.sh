# shellcheck shell=bash disable=SC2034
# repl_lib.sh: shared helpers of the replication tests (test_replication.sh,
# test_replication_faults.sh, test_promotion.sh): a real smtpsync-primary
# and smtpsync-replica processes on loopback, talking mutual TLS with
# certificates made by tests/tools/make-pki.sh (the openssl CLI).
#
# Source it from a script under `set -euo pipefail`; it sources lib.sh
# (temporary directory $T, run/assert helpers, cleanup of every process in
# PIDS on exit) and adds:
#
# PKI ($PKI): make-pki.sh -a alice -a monitor $PKI primary site-b site-c
#   site-d intruder: the deployment CA, one node certificate per id
#   (intruder is CA-signed but never a member), admin certificates alice
#   (super-admin) and monitor (operator), plus expired.pem / foreign.pem /
#   other-ca.pem (see make-pki.sh). admin_cert OUT CN ISSUER [START END]
#   makes another client certificate (EKU clientAuth) with the openssl CLI.
#
# Nodes (NAME is the node id):
#   node_config NAME KIND [INI-LINES...]   writes $T/NAME.ini: [node] id,
#       data_dir $T/NAME.data, submit_socket $T/NAME.sock, listen on a free
#       loopback port (NODE_PORT[NAME], kept across calls), [tls] with the
#       node's certificate, [admin] alice / monitor, short [sender] retries,
#       then INI-LINES. KIND is primary or replica (the binary to run).
#   node_start NAME       starts it (stderr appended to $T/NAME.log) and
#       waits until it answers `status` over mTLS; fails the test otherwise
#   node_stop NAME        SIGTERM, waits, asserts exit 0 and a clean log
#   node_kill NAME        SIGKILL
#   node_alive NAME       the process is running
#   log_mark NAME / log_since NAME   the log lines written after the mark
#   log_has NAME TEXT     TEXT (fixed string) in the log since the mark
#
# Also: step TEXT (prints a step heading with the elapsed time), free_port.
#
# Talking to nodes:
#   as WHO NAME ARGS...   smtpsyncctl --server NAME's port with WHO's
#                         certificate (alice, monitor, site-b, ...): run's
#                         OUT, ERR, RC
#   node_answers NAME     NAME answers `status` (as monitor)
#   state_of NAME         "REVISION HASH" of NAME's store, read locally
#                         (smtpsyncctl --data-dir status, while the daemon
#                         runs or not; cheap enough to poll); "" when it
#                         cannot be read
#   same_state A B        A and B are at the same revision with the same hash
#   wait_same SECS A B... every node B... reaches A's revision and hash
#   save_change NAME COMMENT   a draft change of instance `primary` saved by
#                         alice through NAME's admin API; SAVED_REV is the
#                         revision (0 on failure), SAVED_AT_MS when the save
#                         returned (Unix ms)
#   replica_field NAME REPLICA FIELD   a field of REPLICA in NAME's
#                         `status --json` ("" when absent)
#   wait_replica_state SECS NAME REPLICA STATE
#   print_status NAME     prints `status` of NAME, for the log of the run
#
# Timing: every helper polls with a deadline; nothing sleeps for a fixed
# time to let something happen, except where a test waits on purpose.

# shellcheck source=lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
: "${SMTPSYNC_REPLICA:?set SMTPSYNC_REPLICA to the smtpsync-replica binary}"

PKI=$T/pki
"$SMTPSYNC_TOOLS/make-pki.sh" -a alice -a monitor "$PKI" primary site-b site-c site-d intruder \
    >/dev/null || {
    echo "make-pki.sh failed" >&2
    exit 1
}

declare -A NODE_PORT=() NODE_HOST=() NODE_PID=() NODE_BIN=() LOG_MARK=()
CHANGE_SEQ=0
SAVED_REV=0
SAVED_AT_MS=0

step() {
    printf '\n=== [%3ds] %s\n' "$SECONDS" "$*"
}


# admin_cert OUT CN ISSUER [START END]: a client certificate OUT.pem /
# OUT.key for CN (SAN DNS:CN, EKU clientAuth) signed by ISSUER.pem/.key.
admin_cert() {
    DAYS=30 "$SMTPSYNC_TOOLS/sign-cert.sh" "$1" "$2" "DNS:$2" admin "$3" "${@:4}"
}

node_config() {
    local name=$1 kind=$2
    shift 2
    [ -n "${NODE_PORT[$name]:-}" ] || NODE_PORT[$name]=$(free_port)
    case $kind in
    primary) NODE_BIN[$name]=$SMTPSYNC_PRIMARY ;;
    replica) NODE_BIN[$name]=$SMTPSYNC_REPLICA ;;
    *) echo "node_config: kind $kind" >&2; exit 2 ;;
    esac
    node_config_write "$name" "$@"
}

# node_config_write NAME [LINE]...: NAME's config file, listening on
# ${NODE_HOST[NAME]} (127.0.0.1 unless set) at ${NODE_PORT[NAME]}.
node_config_write() {
    local name=$1 line
    shift
    {
        printf '[node]\nid = %s\ndata_dir = %s\nsubmit_socket = %s\nlisten = %s:%s\n' \
            "$name" "$T/$name.data" "$T/$name.sock" "${NODE_HOST[$name]:-127.0.0.1}" \
            "${NODE_PORT[$name]}"
        printf '\n[tls]\nca = %s\ncert = %s\nkey = %s\n' "$PKI/ca.pem" "$PKI/$name.pem" \
            "$PKI/$name.key"
        printf '\n[admin]\nsuper_admins = alice\noperators = monitor\n'
        printf '\n[sender]\nretry_initial = 1\nretry_max = 2\n'
        for line in "$@"; do
            printf '%s\n' "$line"
        done
    } >"$T/$name.ini"
}

node_alive() {
    [ -n "${NODE_PID[$1]:-}" ] && kill -0 "${NODE_PID[$1]}" 2>/dev/null
}

# ctl_near NAME ARGS...: smtpsyncctl where NAME's port can be reached from
# (here, anywhere; sites_lib.sh runs it in NAME's network namespace).
ctl_near() {
    shift
    "$SMTPSYNCCTL" "$@"
}

node_answers() {
    ctl_near "$1" --server "${NODE_HOST[$1]:-127.0.0.1}:${NODE_PORT[$1]}" --server-id "$1" \
        --ca "$PKI/ca.pem" --cert "$PKI/monitor.pem" --key "$PKI/monitor.key" --timeout 2 \
        status >/dev/null 2>&1
}

node_start() {
    local name=$1 i
    mkdir -p "$T/$name.data"
    "${NODE_BIN[$name]}" --config "$T/$name.ini" >>"$T/$name.out" 2>>"$T/$name.log" </dev/null &
    NODE_PID[$name]=$!
    PIDS+=("$!")
    for ((i = 0; i < 150; i++)); do
        if node_answers "$name"; then
            pass
            return 0
        fi
        node_alive "$name" || break
        sleep 0.1
    done
    fail "$name did not come up: $(tail -n 30 "$T/$name.log")"
    return 1
}

node_log_clean() {
    if sanitizer_report "$(cat "$T/$1.log")"; then
        fail "$1: sanitizer report: $(grep -m1 -A40 -E 'Sanitizer|runtime error' "$T/$1.log")"
    else
        pass
    fi
}

node_stop() {
    local name=$1 pid=${NODE_PID[$1]} rc=0 i
    kill -TERM "$pid" 2>/dev/null || true
    for ((i = 0; i < 200; i++)); do
        kill -0 "$pid" 2>/dev/null || break
        sleep 0.1
    done
    wait "$pid" 2>/dev/null || rc=$?
    NODE_PID[$name]=
    if [ "$rc" -eq 0 ]; then
        pass
    else
        fail "$name exited $rc after SIGTERM: $(tail -n 30 "$T/$name.log")"
    fi
    node_log_clean "$name"
}

node_kill() {
    local pid=${NODE_PID[$1]}
    kill -KILL "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
    NODE_PID[$1]=
}

log_mark() {
    LOG_MARK[$1]=$(wc -l <"$T/$1.log")
}

log_since() {
    tail -n "+$((${LOG_MARK[$1]:-0} + 1))" "$T/$1.log"
}

# log_has NAME TEXT: TEXT (fixed string) in NAME's log since its mark.
log_has() {
    # Not grep -q: under pipefail, tail's SIGPIPE would make a match false.
    log_since "$1" | grep -F -- "$2" >/dev/null
}

as() {
    local who=$1 name=$2
    shift 2
    run ctl_near "$name" --server "${NODE_HOST[$name]:-127.0.0.1}:${NODE_PORT[$name]}" \
        --server-id "$name" --ca "$PKI/ca.pem" --cert "$PKI/$who.pem" --key "$PKI/$who.key" "$@"
}

state_of() {
    # The first "revision" and "hash" of the JSON are the node's (awk, not
    # python: this is polled, and must cost milliseconds).
    "$SMTPSYNCCTL" --data-dir "$T/$1.data" status --json 2>/dev/null | awk -F'\t' '
        /"revision":/ && r == "" { r = $NF; gsub(/[^0-9]/, "", r) }
        /"hash":/ && h == "" { h = $NF; gsub(/[",]/, "", h) }
        END { if (r != "") print r, h }'
}

same_state() {
    local a b
    a=$(state_of "$1")
    b=$(state_of "$2")
    [ -n "$a" ] && [ "$a" = "$b" ]
}

# wait_same SECS REF NODE...: asserts every NODE reaches REF's state.
wait_same() {
    local secs=$1 ref=$2 n
    shift 2
    for n in "$@"; do
        if wait_until "$secs" same_state "$ref" "$n"; then
            pass
        else
            fail "$n did not reach $ref's state: $ref=[$(state_of "$ref")] $n=[$(state_of "$n")]; $n log: $(tail -n 15 "$T/$n.log")"
        fi
    done
}

save_change() {
    local name=$1 comment=$2
    CHANGE_SEQ=$((CHANGE_SEQ + 1))
    SAVED_REV=0
    as alice "$name" settings set --instance primary --hostname "mail$CHANGE_SEQ.example.test" \
        --port $((2000 + CHANGE_SEQ)) --from noreply@example.test --test-address ops@example.test
    if [ "$RC" -ne 0 ]; then
        fail "settings set on $name: exit $RC: $ERR"
        return 1
    fi
    as alice "$name" settings save --comment "$comment" --json
    SAVED_AT_MS=$(date +%s%3N)
    if [ "$RC" -ne 0 ]; then
        fail "settings save on $name: exit $RC: $ERR"
        return 1
    fi
    # Not through python: SAVED_AT_MS is timed from here.
    if [[ $OUT =~ \"revision\"[^0-9]*([0-9]+) ]]; then
        SAVED_REV=${BASH_REMATCH[1]}
    else
        fail "settings save on $name: no revision in [$OUT]"
        return 1
    fi
}

replica_field() {
    local name=$1 replica=$2 field=$3
    as monitor "$name" status --json
    [ "$RC" -eq 0 ] || return 0
    json "next((str(r.get('$field')) if r.get('$field') is not None else '' for r in d['replicas'] if r['id'] == '$replica'), '')"
}

replica_state_is() {
    [ "$(replica_field "$1" "$2" state)" = "$3" ]
}

wait_replica_state() {
    local secs=$1 name=$2 replica=$3 state=$4
    if wait_until "$secs" replica_state_is "$name" "$replica" "$state"; then
        pass
    else
        fail "$name: replica $replica is not $state but [$(replica_field "$name" "$replica" state)] (last_error: $(replica_field "$name" "$replica" last_error))"
    fi
}

print_status() {
    as monitor "$1" status
    printf -- '--- smtpsyncctl status on %s:\n%s\n---\n' "$1" "$OUT"
}
