# shellcheck shell=bash disable=SC2034
# lib.sh: shared helpers of the integration tests (tests/integration/test_*.sh).
#
# Source it from a test script that runs under `set -euo pipefail`. CTest
# provides (tests/CMakeLists.txt):
#   SMTPSYNCCTL, SMTPSYNC_PRIMARY, SMTPSYNC_REPLICA   the binaries
#   SMTPSYNC_POSTFIX_DIR   the Postfix instance started by the `postfix`
#                          fixture (tests/tools/postfix.sh); when unset, the
#                          script starts a private one in $T and stops it
#   SMTPSYNC_TOOLS         tests/tools
#   SMTPSYNC_TEST_CERTS    tests/tools/make-certs.sh output (made in $T when unset)
#
# Every script gets a temporary directory $T, removed on exit with every
# process started through this file (daemons, hostile servers, sinks);
# KEEP=1 keeps $T for a post-mortem.
#
# Running commands and asserting: run, run_in, json, pass / fail, the
# assert_* helpers, wait_until, sanitizer_report and finish come from
# tests/tools/assert.sh (see there); this file adds
#   ctl DATA ARGS...      run smtpsyncctl --data-dir DATA ARGS...
#   sctl SOCKET ARGS...   run smtpsyncctl --socket SOCKET ARGS...
#
# Peers:
#   postfix_env           sources the instance's instance.env: PORT_PLAIN,
#                         PORT_SMTPS, PORT_SUBMIT, SASL_USER,
#                         SASL_PASSWORD_FILE, MAIL_DIR, MAILLOG
#   postfix_find TEXT     delivered maildir files containing TEXT
#   hostile_start NAME SCENARIO [ARGS...]   starts tests/tools/hostile_smtp.py
#                         with its dialogue in $T/NAME.smtp, delivering into
#                         $T/NAME.mail; sets HOSTILE_PORT
#   hostile_sent NAME VERB   the client sent the command VERB to it
#   make_cert OUT CN SAN ISSUER [START END]   a server certificate
#                         OUT.pem / OUT.key, made with the openssl CLI
#
# Daemons:
#   daemon_start NAME ID DATA [INI-LINES...]  writes $T/NAME.ini ([node] id,
#                         data_dir, submit_socket = $T/NAME.sock, [sender]
#                         with short retries, plus INI-LINES), starts
#                         smtpsync-primary with it (stderr to $T/NAME.log)
#                         and waits for its socket; sets SOCK
#   daemon_stop NAME      SIGTERM, waits, asserts a clean exit
#   daemon_kill NAME      SIGKILL
#
# Test Connection results (settings test --json):
#   step_failed           the kind of the first failing step in $OUT
#   step_text KIND        detail, reply and diagnosis of that step
#
# Any run whose stderr shows a sanitizer report fails the test.

: "${SMTPSYNCCTL:?set SMTPSYNCCTL to the smtpsyncctl binary}"
: "${SMTPSYNC_PRIMARY:?set SMTPSYNC_PRIMARY to the smtpsync-primary binary}"
SMTPSYNC_TOOLS=${SMTPSYNC_TOOLS:-$(cd "$(dirname "${BASH_SOURCE[0]}")/../tools" && pwd)}

T=$(mktemp -d "${TMPDIR:-/tmp}/smtpsync-it.XXXXXX")
# Peers that drop privileges (smtp-sink) write below $T.
chmod 755 "$T"
# shellcheck source-path=SCRIPTDIR/../tools source=assert.sh disable=SC1091
source "$(dirname "${BASH_SOURCE[0]}")/../tools/assert.sh"
PIDS=()             # every background process to end on exit
declare -A DAEMON_PID=()
OWN_POSTFIX=

cleanup() {
    local rc=$? pid
    set +e
    for pid in "${PIDS[@]}"; do
        kill -TERM "$pid" 2>/dev/null
    done
    for pid in "${PIDS[@]}"; do
        for _ in $(seq 50); do
            kill -0 "$pid" 2>/dev/null || break
            sleep 0.1
        done
        kill -KILL "$pid" 2>/dev/null
        wait "$pid" 2>/dev/null
    done
    if [ -n "$OWN_POSTFIX" ]; then
        "$SMTPSYNC_TOOLS/postfix.sh" stop "$OWN_POSTFIX" >/dev/null 2>&1
    fi
    if [ "${KEEP:-0}" = 1 ]; then
        printf 'kept %s\n' "$T" >&2
    else
        rm -rf "$T"
    fi
    exit "$rc"
}
trap cleanup EXIT

if [ -z "${SMTPSYNC_TEST_CERTS:-}" ]; then
    SMTPSYNC_TEST_CERTS=$T/certs
    "$SMTPSYNC_TOOLS/make-certs.sh" "$SMTPSYNC_TEST_CERTS"
fi
CERTS=$SMTPSYNC_TEST_CERTS
if [ -z "${SMTPSYNC_POSTFIX_DIR:-}" ]; then
    OWN_POSTFIX=$T/postfix
    SMTPSYNC_POSTFIX_DIR=$OWN_POSTFIX
    "$SMTPSYNC_TOOLS/postfix.sh" start "$OWN_POSTFIX" "$CERTS" >/dev/null
fi
# Neither may leak in from the caller's environment.
unset SMTPSYNC_DATA_DIR SMTPSYNC_SOCKET

# ---- smtpsyncctl ----

ctl() {
    local data=$1
    shift
    run "$SMTPSYNCCTL" --data-dir "$data" "$@"
}

sctl() {
    local sock=$1
    shift
    run "$SMTPSYNCCTL" --socket "$sock" "$@"
}

# ---- Postfix ----

postfix_env() {
    # shellcheck disable=SC1091
    source "$SMTPSYNC_POSTFIX_DIR/instance.env"
}

postfix_find() {
    "$SMTPSYNC_TOOLS/postfix.sh" find "$SMTPSYNC_POSTFIX_DIR" "$1"
}

postfix_has() {
    [ -n "$(postfix_find "$1")" ]
}

# ---- hostile servers ----

hostile_start() {
    local name=$1 scenario=$2 i
    shift 2
    rm -f "$T/$name.port"
    python3 "$SMTPSYNC_TOOLS/hostile_smtp.py" --scenario "$scenario" --port-file "$T/$name.port" \
        --log "$T/$name.smtp" --deliver-dir "$T/$name.mail" "$@" >/dev/null 2>"$T/$name.err" &
    PIDS+=($!)
    for ((i = 0; i < 100; i++)); do
        [ -s "$T/$name.port" ] && break
        sleep 0.05
    done
    if [ ! -s "$T/$name.port" ]; then
        fail "hostile server $name ($scenario) did not start: $(cat "$T/$name.err")"
        return 1
    fi
    HOSTILE_PORT=$(cat "$T/$name.port")
}

# hostile_sent NAME VERB: the client sent VERB (any case) to server NAME.
hostile_sent() {
    grep -qiE "^\[[0-9]+\] C: $2( |\$)" "$T/$1.smtp"
}

# Messages the hostile server NAME accepted.
hostile_delivered() {
    find "$T/$1.mail" -name '*.eml' 2>/dev/null | wc -l
}

# ---- certificates ----

# make_cert OUT CN SAN ISSUER [START END]: a server certificate OUT.pem /
# OUT.key signed by ISSUER.pem/.key, valid 30 days or START..END.
make_cert() {
    DAYS=30 "$SMTPSYNC_TOOLS/sign-cert.sh" "$1" "$2" "$3" server "$4" "${@:5}"
}

# ---- daemons ----

daemon_start() {
    local name=$1 id=$2 data=$3 i pid
    shift 3
    mkdir -p "$data"
    {
        printf '[node]\nid = %s\ndata_dir = %s\nsubmit_socket = %s\n' "$id" "$data" "$T/$name.sock"
        printf '\n[sender]\nretry_initial = 1\nretry_max = 2\n'
        for line in "$@"; do
            printf '%s\n' "$line"
        done
    } >"$T/$name.ini"
    "$SMTPSYNC_PRIMARY" --config "$T/$name.ini" >>"$T/$name.out" 2>>"$T/$name.log" </dev/null &
    pid=$!
    PIDS+=("$pid")
    DAEMON_PID[$name]=$pid
    SOCK=$T/$name.sock
    # Ready when it answers on its socket (a socket file left by a killed
    # predecessor proves nothing).
    for ((i = 0; i < 150; i++)); do
        if [ -S "$SOCK" ] && "$SMTPSYNCCTL" --socket "$SOCK" queue --json >/dev/null 2>&1; then
            return 0
        fi
        if ! kill -0 "$pid" 2>/dev/null; then
            break
        fi
        sleep 0.1
    done
    fail "daemon $name does not answer on $SOCK: $(tail -n 30 "$T/$name.log")"
    return 1
}

# The daemon's log so far has no sanitizer report.
daemon_log_clean() {
    local name=$1
    if sanitizer_report "$(cat "$T/$name.log")"; then
        fail "daemon $name: sanitizer report: $(grep -m1 -A30 -E 'Sanitizer|runtime error' "$T/$name.log")"
    else
        pass
    fi
}

daemon_stop() {
    local name=$1 pid=${DAEMON_PID[$1]} rc=0 i
    kill -TERM "$pid" 2>/dev/null || true
    for ((i = 0; i < 200; i++)); do
        kill -0 "$pid" 2>/dev/null || break
        sleep 0.1
    done
    wait "$pid" || rc=$?
    if [ "$rc" -eq 0 ]; then
        pass
    else
        fail "daemon $name exited $rc after SIGTERM: $(tail -n 30 "$T/$name.log")"
    fi
    daemon_log_clean "$name"
}

daemon_kill() {
    local pid=${DAEMON_PID[$1]}
    kill -KILL "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
}

# ---- submission ----

# send_mail SOCK ARGS...: smtpsyncctl --socket SOCK send ARGS...; sets MSG_ID
# from "queued N".
send_mail() {
    local sock=$1
    shift
    sctl "$sock" send "$@"
    MSG_ID=
    if [[ $OUT =~ queued\ ([0-9]+) ]]; then
        MSG_ID=${BASH_REMATCH[1]}
    fi
}

# The pending / dead entry for id $2 in `queue --json` output in $OUT, as
# JSON (null if absent). $1 is "pending" or "dead".
queue_entry() {
    json "next((m for m in d.get('$1', []) if str(m.get('id')) == '$2'), None)"
}

# queue_field SOCK LIST ID FIELD: one field of a queue entry ("" if absent).
queue_field() {
    sctl "$1" queue --json
    json "str(next((m for m in d.get('$2', []) if str(m.get('id')) == '$3'), {}).get('$4') or '')"
}

# True once message $3 is in list $2 (pending or dead) of daemon socket $1.
queue_has() {
    sctl "$1" queue --json
    [ "$RC" -eq 0 ] && [ "$(queue_entry "$2" "$3")" != null ]
}

queue_empty() {
    sctl "$1" queue --json
    [ "$RC" -eq 0 ] && [ "$(json 'len(d.get("pending", []))')" = 0 ]
}

# ---- Test Connection ----

# The kind of the first failing step of the `settings test --json` in $OUT.
step_failed() {
    json "next((kind(s) for s in d['steps'] if not s.get('ok')), '')"
}

# Detail, server reply and diagnosis of the steps of KIND in $OUT.
step_text() {
    json "' | '.join(str(s.get(f) or '') for s in d['steps'] if kind(s) == '$1' for f in ('detail', 'server_reply', 'diagnosis'))"
}

# Kinds of the steps that passed, space-separated.
steps_ok() {
    json "' '.join(kind(s) for s in d['steps'] if s.get('ok'))"
}

# ---- messages ----

# message_compare FILE EXPECTED: the delivered maildir FILE equals the
# EXPECTED message (CRLF or LF) once Postfix's trace headers are removed
# from the top (Return-Path, X-Original-To, Delivered-To, Received) and the
# From header is taken out of both (its value is checked apart, as the
# daemon writes it at delivery). Prints the difference on failure.
message_compare() {
    python3 - "$1" "$2" <<'PY'
import sys
got = open(sys.argv[1], "rb").read().replace(b"\r\n", b"\n")
want = open(sys.argv[2], "rb").read().replace(b"\r\n", b"\n")

def split(m):
    head, sep, body = m.partition(b"\n\n")
    fields = []
    for line in head.split(b"\n"):
        if line[:1] in (b" ", b"\t") and fields:
            fields[-1] += b"\n" + line
        else:
            fields.append(line)
    return fields, body

trace = (b"return-path:", b"x-original-to:", b"delivered-to:", b"received:")
gh, gb = split(got)
while gh and gh[0].lower().startswith(trace):
    gh.pop(0)
wh, wb = split(want)
gh = [f for f in gh if not f.lower().startswith(b"from:")]
wh = [f for f in wh if not f.lower().startswith(b"from:")]
ok = True
if gh != wh:
    ok = False
    sys.stderr.write("headers differ:\n got:  %r\n want: %r\n" % (gh, wh))
if gb != wb:
    ok = False
    sys.stderr.write("bodies differ:\n got:  %r\n want: %r\n" % (gb[:2000], wb[:2000]))
sys.exit(0 if ok else 1)
PY
}

# header_value FILE NAME: the (unfolded, undecoded) value of the first
# header NAME in FILE, after the trace headers.
header_value() {
    python3 - "$1" "$2" <<'PY'
import email.parser, email.policy, sys
m = email.parser.BytesParser(policy=email.policy.compat32).parse(open(sys.argv[1], "rb"))
v = m.get(sys.argv[2])
print("" if v is None else " ".join(str(v).split()))
PY
}

# header_decoded FILE NAME: the same, RFC 2047 decoded.
header_decoded() {
    python3 - "$1" "$2" <<'PY'
import email.parser, email.policy, sys
m = email.parser.BytesParser(policy=email.policy.default).parse(open(sys.argv[1], "rb"))
v = m.get(sys.argv[2])
print("" if v is None else str(v))
PY
}

# header_names FILE: the names of the headers after the trace headers, one
# a line, lowercase.
header_names() {
    python3 - "$1" <<'PY'
import email.parser, email.policy, sys
m = email.parser.BytesParser(policy=email.policy.compat32).parse(open(sys.argv[1], "rb"))
trace = {"return-path", "x-original-to", "delivered-to", "received"}
for k in m.keys():
    if k.lower() not in trace:
        print(k.lower())
PY
}

# body_of FILE: the body of the message in FILE (LF line ends), as decoded
# by its Content-Transfer-Encoding.
body_of() {
    python3 - "$1" <<'PY'
import email.parser, email.policy, sys
m = email.parser.BytesParser(policy=email.policy.compat32).parse(open(sys.argv[1], "rb"))
sys.stdout.buffer.write(m.get_payload(decode=True).replace(b"\r\n", b"\n"))
PY
}
