# lib.sh: a tiny assert library for the smtpsyncctl CLI tests.
#
# Source it from a test script. It needs SMTPSYNCCTL (the binary) and uses
# SMTPSYNC_TEST_CERTS (made with tests/tools/make-certs.sh when unset).
# Every script gets its own temporary directory $T, removed on exit, and a
# store directory $DATA inside it.
#
#   run CMD...             runs CMD with stdin from /dev/null; sets OUT, ERR, RC
#   run_in TEXT CMD...     the same with TEXT (printf %s) on stdin
#   ctl ARGS...            run "$SMTPSYNCCTL" --data-dir "$DATA" ARGS...
#   ctl_in TEXT ARGS...    the same with TEXT on stdin
#   json EXPR              evaluates the Python expression EXPR on d = the JSON
#                          in $OUT; prints str values raw, others as JSON
#   assert_eq / assert_contains / assert_not_contains / assert_exit / assert_true
#   finish                 prints "N passed, M failed" and exits non-zero on failure
#
# A run whose stderr shows a sanitizer report fails the test by itself.

set -u

: "${SMTPSYNCCTL:?set SMTPSYNCCTL to the smtpsyncctl binary}"

T=$(mktemp -d "${TMPDIR:-/tmp}/smtpsync-cli.XXXXXX")
trap 'rm -rf "$T"' EXIT
DATA=$T/data
PASSED=0
FAILED=0
FAILURES=()
OUT=
ERR=
RC=0

if [ -z "${SMTPSYNC_TEST_CERTS:-}" ]; then
    SMTPSYNC_TEST_CERTS=$T/certs
    "$(dirname "${BASH_SOURCE[0]}")/../tools/make-certs.sh" "$SMTPSYNC_TEST_CERTS"
fi
CERTS=$SMTPSYNC_TEST_CERTS
# The global option must not leak in from the caller's environment.
unset SMTPSYNC_DATA_DIR

pass() {
    PASSED=$((PASSED + 1))
}

fail() {
    FAILED=$((FAILED + 1))
    FAILURES+=("$1")
    printf 'FAIL: %s\n' "$1" >&2
}

# Fails the current test when the last run tripped a sanitizer or crashed.
check_crash() {
    local what=$1
    if [[ $ERR == *Sanitizer* || $ERR == *"runtime error:"* ]] || [ "$RC" -ge 128 ]; then
        fail "$what: crashed (exit $RC): ${ERR:0:2000}"
        return 1
    fi
    return 0
}

LAST_CMD=
run() {
    LAST_CMD="$*"
    "$@" >"$T/.out" 2>"$T/.err" </dev/null
    RC=$?
    OUT=$(cat "$T/.out")
    ERR=$(cat "$T/.err")
    check_crash "${LAST_CMD:0:200}" || true
}

run_in() {
    local input=$1
    shift
    LAST_CMD="$*"
    printf '%s' "$input" | "$@" >"$T/.out" 2>"$T/.err"
    RC=${PIPESTATUS[1]}
    OUT=$(cat "$T/.out")
    ERR=$(cat "$T/.err")
    check_crash "${LAST_CMD:0:200}" || true
}

ctl() {
    run "$SMTPSYNCCTL" --data-dir "$DATA" "$@"
}

ctl_in() {
    local input=$1
    shift
    run_in "$input" "$SMTPSYNCCTL" --data-dir "$DATA" "$@"
}

json() {
    printf '%s' "$OUT" | python3 -c '
import json, sys
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
        fail "$what: [${haystack:0:1000}] does not contain [$needle]"
    fi
}

assert_not_contains() {
    local what=$1 haystack=$2 needle=$3
    if [[ $haystack != *"$needle"* ]]; then
        pass
    else
        fail "$what: [${haystack:0:1000}] contains [$needle]"
    fi
}

# assert_exit WHAT CODE: the exit status of the last run.
assert_exit() {
    local what=$1 expected=$2
    if [ "$RC" -eq "$expected" ]; then
        pass
    else
        fail "$what: exit $RC, expected $expected (cmd: ${LAST_CMD:0:200}; stderr: ${ERR:0:1000}; stdout: ${OUT:0:300})"
    fi
}

# assert_true WHAT CMD...: CMD succeeds.
assert_true() {
    local what=$1
    shift
    if "$@"; then
        pass
    else
        fail "$what"
    fi
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
