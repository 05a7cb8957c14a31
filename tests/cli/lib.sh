# shellcheck shell=bash disable=SC2034
# lib.sh: a tiny assert library for the smtpsyncctl CLI tests.
#
# Source it from a test script. It needs SMTPSYNCCTL (the binary) and uses
# SMTPSYNC_TEST_CERTS (made with tests/tools/make-certs.sh when unset).
# Every script gets its own temporary directory $T, removed on exit, and a
# store directory $DATA inside it.
#
#   ctl ARGS...            run "$SMTPSYNCCTL" --data-dir "$DATA" ARGS...
#   ctl_in TEXT ARGS...    the same with TEXT on stdin
#
# run, run_in, json, the assert_* helpers and finish come from
# tests/tools/assert.sh (see there). A run whose stderr shows a sanitizer
# report fails the test by itself.

set -u

: "${SMTPSYNCCTL:?set SMTPSYNCCTL to the smtpsyncctl binary}"

T=$(mktemp -d "${TMPDIR:-/tmp}/smtpsync-cli.XXXXXX")
trap 'rm -rf "$T"' EXIT
DATA=$T/data
# shellcheck source-path=SCRIPTDIR/../tools source=assert.sh disable=SC1091
source "$(dirname "${BASH_SOURCE[0]}")/../tools/assert.sh"

if [ -z "${SMTPSYNC_TEST_CERTS:-}" ]; then
    SMTPSYNC_TEST_CERTS=$T/certs
    "$(dirname "${BASH_SOURCE[0]}")/../tools/make-certs.sh" "$SMTPSYNC_TEST_CERTS"
fi
CERTS=$SMTPSYNC_TEST_CERTS
# The global option must not leak in from the caller's environment.
unset SMTPSYNC_DATA_DIR

ctl() {
    run "$SMTPSYNCCTL" --data-dir "$DATA" "$@"
}

ctl_in() {
    local input=$1
    shift
    run_in "$input" "$SMTPSYNCCTL" --data-dir "$DATA" "$@"
}
