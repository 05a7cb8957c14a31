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
#   SRC, BUILD, PRIMARY, REPLICA   the source tree, the build, the daemons
#   daemon_start BIN NAME CONF [ARGS...]   a daemon in the background
#                          (stdout $T/NAME.out, stderr $T/NAME.log), up once
#                          daemon_up NAME succeeds: by default `queue`
#                          answers on $T/NAME.sock (a script may redefine it)
#   mtls_primary_conf NAME PKI   writes $T/NAME.conf: a primary with [tls]
#                          from PKI (admin alice), on free ports PORT
#                          (mTLS) and MPORT (metrics), data in $T/NAME.data
#
# run, run_in, json, the assert_* helpers and finish come from
# tests/tools/assert.sh (see there). A run whose stderr shows a sanitizer
# report fails the test by itself.

set -u

: "${SMTPSYNCCTL:?set SMTPSYNCCTL to the smtpsyncctl binary}"

T=$(mktemp -d "${TMPDIR:-/tmp}/smtpsync-cli.XXXXXX")
# Daemons a script starts, by name (daemon_start, or PID[NAME]=$! by
# hand): killed on exit, whatever happens.
declare -A PID=()
# shellcheck disable=SC2317 # run by the EXIT trap
lib_exit() {
    local p
    for p in "${PID[@]}"; do
        kill -KILL "$p" 2>/dev/null || true
    done
    rm -rf "$T"
}
trap lib_exit EXIT
DATA=$T/data
# shellcheck source-path=SCRIPTDIR/../tools source=assert.sh disable=SC1091
source "$(dirname "${BASH_SOURCE[0]}")/../tools/assert.sh"

if [ -z "${SMTPSYNC_TEST_CERTS:-}" ]; then
    SMTPSYNC_TEST_CERTS=$T/certs
    "$(dirname "${BASH_SOURCE[0]}")/../tools/make-certs.sh" "$SMTPSYNC_TEST_CERTS"
fi
CERTS=$SMTPSYNC_TEST_CERTS
# The source tree and the build's daemons (CTest sets them; by hand, they
# are found from the checkout and from $SMTPSYNCCTL's build directory).
SRC=${SMTPSYNC_SOURCE:-$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)}
BUILD=$(cd "$(dirname "$SMTPSYNCCTL")/.." && pwd)
PRIMARY=${SMTPSYNC_PRIMARY:-$BUILD/primary/smtpsync-primary}
REPLICA=${SMTPSYNC_REPLICA:-$BUILD/replica/smtpsync-replica}
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

mtls_primary_conf() {
    local name=$1 pki=$2
    PORT=$(free_port)
    MPORT=$(free_port)
    cat >"$T/$name.conf" <<EOF
[node]
id = primary
data_dir = $T/$name.data
submit_socket = $T/$name.sock
listen = 127.0.0.1:$PORT
metrics_listen = 127.0.0.1:$MPORT
[tls]
ca = $pki/ca.pem
cert = $pki/primary.pem
key = $pki/primary.key
[admin]
super_admins = alice
EOF
}

daemon_up() {
    [ -S "$T/$1.sock" ] && "$SMTPSYNCCTL" --socket "$T/$1.sock" queue >/dev/null 2>&1
}

daemon_start() {
    local bin=$1 name=$2 conf=$3 i
    shift 3
    "$bin" --config "$conf" "$@" >"$T/$name.out" 2>>"$T/$name.log" </dev/null &
    PID[$name]=$!
    for ((i = 0; i < 100; i++)); do
        if daemon_up "$name"; then
            pass
            return 0
        fi
        kill -0 "${PID[$name]}" 2>/dev/null || break
        sleep 0.1
    done
    fail "$name did not come up: $(tail -n 20 "$T/$name.log")"
    return 1
}
