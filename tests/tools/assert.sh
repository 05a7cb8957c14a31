# shellcheck shell=bash
# assert.sh: the run and assert helpers shared by the shell tests
# (sourced by tests/cli/lib.sh and tests/integration/lib.sh, which add
# their own setup and their own `ctl`).
#
# The sourcing file sets T, an existing temporary directory of the test,
# before any helper runs. The helpers work with or without `set -euo
# pipefail` in the test script.
#
#   run CMD...            runs CMD with stdin from /dev/null; sets OUT, ERR,
#                         RC (the exit status of CMD) and LAST_CMD
#   run_in TEXT CMD...    the same with TEXT (printf %s) on stdin
#   check_crash [WHAT]    fails the test when the last run crashed (a
#                         sanitizer report on stderr or an exit by signal)
#                         and returns 1 then; WHAT defaults to LAST_CMD
#   sanitizer_report TEXT TEXT holds an ASan/UBSan report
#   json EXPR             evaluates the Python expression EXPR on d = the
#                         JSON in $OUT; prints str values raw, others as
#                         JSON. kind(step) names a Test Connection step with
#                         one lowercase word ("TLS handshake",
#                         "TEST_STEP_TLS", "tls" -> tls)
#   pass / fail MESSAGE   counts one assertion
#   assert_eq WHAT EXPECTED ACTUAL
#   assert_contains / assert_not_contains WHAT HAYSTACK NEEDLE
#   assert_match WHAT TEXT ERE   TEXT matches ERE (extended, any case)
#   assert_exit WHAT CODE  the exit status of the last run
#   assert_true / assert_false WHAT CMD...   CMD succeeds / fails
#   wait_until SECONDS CMD...   polls CMD every 0.1 s; false on timeout
#   finish                prints "N passed, M failed" and exits non-zero on
#                         failure
#
# Every run whose stderr shows a sanitizer report fails the test by itself.

PASSED=0
FAILED=0
FAILURES=()
OUT=
ERR=
RC=0
LAST_CMD=

pass() {
    PASSED=$((PASSED + 1))
}

fail() {
    FAILED=$((FAILED + 1))
    FAILURES+=("$1")
    printf 'FAIL: %s\n' "$1" >&2
}

sanitizer_report() {
    [[ $1 == *Sanitizer* || $1 == *"runtime error:"* ]]
}

check_crash() {
    local what=${1:-${LAST_CMD:0:200}}
    if sanitizer_report "$ERR" || [ "$RC" -ge 128 ]; then
        fail "$what: crashed (exit $RC): ${ERR:0:2000}"
        return 1
    fi
    return 0
}

run() {
    LAST_CMD="$*"
    RC=0
    "$@" >"$T/.out" 2>"$T/.err" </dev/null || RC=$?
    OUT=$(cat "$T/.out")
    ERR=$(cat "$T/.err")
    check_crash "${LAST_CMD:0:200}" || true
}

# RC is the status of CMD alone: printf dying of SIGPIPE because CMD did not
# read its input is no crash of CMD (with or without pipefail).
run_in() {
    local input=$1
    shift
    LAST_CMD="$*"
    RC=0
    printf '%s' "$input" | "$@" >"$T/.out" 2>"$T/.err" || RC=${PIPESTATUS[1]}
    OUT=$(cat "$T/.out")
    ERR=$(cat "$T/.err")
    check_crash "${LAST_CMD:0:200}" || true
}

json() {
    printf '%s' "$OUT" | python3 -c '
import json, re, sys

def kind(step):
    k = str(step.get("kind", step.get("step", step.get("name", "")))).lower()
    k = re.sub(r"^test_step_", "", k)
    for word, names in (("resolve", ("resolv", "dns", "lookup")),
                        ("connect", ("connect", "tcp")),
                        ("starttls", ("starttls",)),
                        ("certificate", ("cert",)),
                        ("tls", ("tls", "handshake")),
                        ("greeting", ("greet", "banner")),
                        ("ehlo", ("ehlo", "helo")),
                        ("auth", ("auth",)),
                        ("mail", ("mail",)),
                        ("rcpt", ("rcpt", "recipient")),
                        ("data", ("data", "message")),
                        ("quit", ("quit",))):
        if any(n in k for n in names):
            return word
    return k

d = json.load(sys.stdin)
v = eval(sys.argv[1])
print(v if isinstance(v, str) else json.dumps(v))' "$1"
}

assert_eq() {
    local what=$1 expected=$2 actual=$3
    if [ "$expected" == "$actual" ]; then
        pass
    else
        fail "$what: expected [${expected:0:500}], got [${actual:0:500}]"
    fi
}

assert_contains() {
    local what=$1 haystack=$2 needle=$3
    if [[ $haystack == *"$needle"* ]]; then
        pass
    else
        fail "$what: [${haystack:0:1500}] does not contain [$needle]"
    fi
}

assert_not_contains() {
    local what=$1 haystack=$2 needle=$3
    if [[ $haystack != *"$needle"* ]]; then
        pass
    else
        fail "$what: [${haystack:0:1500}] contains [$needle]"
    fi
}

assert_match() {
    local what=$1 text=$2 re=$3
    # A here-string, not a pipe: grep -q exits at the first match, and
    # under pipefail the writer's SIGPIPE would turn a match into a failure.
    if grep -qiE -- "$re" <<<"$text"; then
        pass
    else
        fail "$what: [${text:0:1500}] does not match /$re/i"
    fi
}

assert_exit() {
    local what=$1 expected=$2
    if [ "$RC" -eq "$expected" ]; then
        pass
    else
        fail "$what: exit $RC, expected $expected (cmd: ${LAST_CMD:0:200}; stderr: ${ERR:0:1500}; stdout: ${OUT:0:1500})"
    fi
}

assert_true() {
    local what=$1
    shift
    if "$@"; then
        pass
    else
        fail "$what"
    fi
}

assert_false() {
    local what=$1
    shift
    if "$@"; then
        fail "$what"
    else
        pass
    fi
}

wait_until() {
    local seconds=$1 i
    shift
    for ((i = 0; i < seconds * 10; i++)); do
        "$@" && return 0
        sleep 0.1
    done
    "$@"
}

finish() {
    printf '%d passed, %d failed\n' "$PASSED" "$FAILED"
    if [ "$FAILED" -ne 0 ]; then
        printf 'failed:\n' >&2
        printf '  %s\n' "${FAILURES[@]}" >&2
        exit 1
    fi
    exit 0
}

# free_port: a loopback TCP port nothing listens on now (the OS's pick).
free_port() {
    python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}
