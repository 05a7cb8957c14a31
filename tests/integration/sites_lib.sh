# shellcheck shell=bash disable=SC2034,SC2153
# sites_lib.sh: the multi-site test bed (deploy/netns-sites) for integration
# tests: every node and the mail server in its own network namespace, so a
# partition is a link taken down, not a process stopped.
#
# Source it from a script under `set -euo pipefail`. Before anything else it
# skips the test (exit 77) unless it runs as root where network namespaces
# can be made and Postfix's smtp-sink is installed. Then it sources
# repl_lib.sh (and so lib.sh: $T, run/assert helpers, PIDS cleaned up on
# exit) and puts the replication helpers on the test bed: node ids are the
# site names (primary, replica-1, ...), and these helpers of repl_lib.sh
# are redefined to work across namespaces, with the same interface:
#
#   node_config NAME KIND [INI-LINES...]  as in repl_lib.sh, but listening on
#       the site's repl address (port NODE_PORT[NAME] = 7443: each namespace
#       has its own ports), with the certificates of $PKI; the daemon runs in
#       the site's namespace (NODE_BIN[NAME] is a wrapper that execs
#       `ip netns exec`, so NODE_PID is the daemon's own PID)
#   ctl_near NAME ARGS...   smtpsyncctl run inside NAME's namespace, so
#       node_answers and `as WHO NAME` reach NAME's address (NODE_HOST)
#
# Everything else of repl_lib.sh (node_start, node_stop, state_of,
# wait_same, replica_field, wait_replica_state, print_status, log_*, step)
# works unchanged on top of these.
#
# Test bed:
#   SITES            deploy/netns-sites
#   SITES_PREFIX     ss$$: this run's namespaces (ss$$-primary, ...)
#   sites ARGS...    deploy/netns-sites -p SITES_PREFIX ARGS... (run's OUT,
#                    ERR, RC; the command is echoed to the test's log)
#   sites_up N       brings up the mail server, the primary and N replicas;
#                    SITE_ADDR[SITE] (repl address) and MAIL_ADDR[SITE] (mail
#                    address) of every site
#   sites_down       takes it down (asserted)
#   On exit (any exit): the daemons get SIGTERM (SIGKILL after 5 s), then the
#   test bed is taken down, then lib.sh's cleanup runs.
#
# PKI ($PKI): deploy/smtpsync-pki (init, a node certificate per site with its
#   repl address as IP SAN, admins alice (super-admin) and monitor
#   (operator)) when it is there, else tests/tools/make-pki.sh with the same
#   ids. (The daemons identify a peer by its certificate's first DNS name and
#   do not check IP SANs: either works.)
#
# Mail server: smtp-sink (Postfix's SMTP test server) in the mail namespace.
#   sink_start       starts it on MAIL_ADDR[mail]:25 (plaintext), dumping
#                    every mail into $SINK_DIR
#   sink_files TEXT  dumps holding TEXT, one a line
#   sink_count TEXT  how many
#   sink_client FILE the address the mail in FILE came from (X-Client-Addr)
#   sink_from FILE   its From header

sites_skip() {
    printf 'SKIP: %s\n' "$*"
    exit 77
}

[ "$(id -u)" -eq 0 ] || sites_skip "the multi-site test bed needs root (network namespaces)"
command -v ip >/dev/null 2>&1 || sites_skip "ip (iproute2) is not installed"
command -v smtp-sink >/dev/null 2>&1 || sites_skip "smtp-sink (Postfix) is not installed"
SITES_PREFIX=ss$$
if ! ip netns add "$SITES_PREFIX-probe" 2>/dev/null; then
    sites_skip "'ip netns add' is not permitted here (no network namespaces in this container?)"
fi
ip netns del "$SITES_PREFIX-probe"

# This test's mail server is smtp-sink in a namespace, not the shared
# Postfix instance: lib.sh must not start one of its own when run by hand.
SMTPSYNC_POSTFIX_DIR=${SMTPSYNC_POSTFIX_DIR:-/nonexistent/unused-by-the-sites-test}
# shellcheck source=repl_lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/repl_lib.sh"

SITES=$(cd "$(dirname "${BASH_SOURCE[0]}")/../../deploy" && pwd)/netns-sites
declare -A SITE_ADDR=() MAIL_ADDR=()
SITES_UP=0
SINK_DIR=$T/sink
SINK_PID=

sites() {
    printf '  $ netns-sites %s\n' "$*"
    run "$SITES" -p "$SITES_PREFIX" "$@"
    printf '%s\n' "$OUT" "$ERR" >>"$T/sites.log"
}

# On exit: daemons first, so that none outlives its links, then the bed.
sites_cleanup() {
    local rc=$? name pid i
    set +e
    for name in "${!NODE_PID[@]}"; do
        pid=${NODE_PID[$name]}
        [ -n "$pid" ] && kill -TERM "$pid" 2>/dev/null
    done
    for name in "${!NODE_PID[@]}"; do
        pid=${NODE_PID[$name]}
        [ -n "$pid" ] || continue
        for ((i = 0; i < 50; i++)); do
            kill -0 "$pid" 2>/dev/null || break
            sleep 0.1
        done
        kill -KILL "$pid" 2>/dev/null
    done
    if [ -n "$SINK_PID" ]; then
        kill -TERM "$SINK_PID" 2>/dev/null
    fi
    if [ "$SITES_UP" = 1 ]; then
        "$SITES" -p "$SITES_PREFIX" down >>"$T/sites.log" 2>&1 ||
            printf 'netns-sites down failed: %s\n' "$(tail -n 5 "$T/sites.log")" >&2
    fi
    (exit "$rc")
    cleanup
}
trap sites_cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# ---- PKI ----

PKI=$T/sites-pki
PKI_TOOL=$(cd "$(dirname "${BASH_SOURCE[0]}")/../../deploy" && pwd)/smtpsync-pki

# sites_pki SITE...: the node certificates (after sites_up: IP SANs).
sites_pki() {
    local s
    if [ -x "$PKI_TOOL" ]; then
        {
            "$PKI_TOOL" -d "$PKI" init &&
                for s in "$@"; do
                    "$PKI_TOOL" -d "$PKI" node "$s" --ip "${SITE_ADDR[$s]}" || exit 1
                done &&
                "$PKI_TOOL" -d "$PKI" admin alice --role super-admin &&
                "$PKI_TOOL" -d "$PKI" admin monitor --role operator
        } >"$T/pki.log" 2>&1 || {
            fail "smtpsync-pki: $(cat "$T/pki.log")"
            return 1
        }
    else
        "$SMTPSYNC_TOOLS/make-pki.sh" -a alice -a monitor "$PKI" "$@" >"$T/pki.log" 2>&1 || {
            fail "make-pki.sh: $(cat "$T/pki.log")"
            return 1
        }
    fi
}

# ---- test bed ----

sites_up() {
    local n=$1 s i
    sites up -n "$n"
    if [ "$RC" -ne 0 ]; then
        fail "netns-sites up: exit $RC: $ERR $OUT"
        return 1
    fi
    SITES_UP=1
    printf '%s\n' "$OUT" | sed -n '/^SITE/,$p' | sed 's/^/    /'
    SITE_LIST=(mail primary)
    for ((i = 1; i <= n; i++)); do
        SITE_LIST+=("replica-$i")
    done
    for s in "${SITE_LIST[@]}"; do
        MAIL_ADDR[$s]=$("$SITES" -p "$SITES_PREFIX" addr "$s" mail)
        [ "$s" = mail ] || SITE_ADDR[$s]=$("$SITES" -p "$SITES_PREFIX" addr "$s" repl)
    done
}

# Takes the bed down (asserted); the exit trap has nothing left to do.
sites_down() {
    sites down
    assert_exit "netns-sites down" 0
    [ "$RC" -ne 0 ] || SITES_UP=0
}

ns_of() {
    printf '%s-%s' "$SITES_PREFIX" "$1"
}

# ---- repl_lib.sh on the test bed ----

node_config() {
    local name=$1 kind=$2 bin
    shift 2
    NODE_PORT["$name"]=7443
    case $kind in
    primary) bin=$SMTPSYNC_PRIMARY ;;
    replica) bin=$SMTPSYNC_REPLICA ;;
    *) echo "node_config: kind $kind" >&2; exit 2 ;;
    esac
    # exec all the way down: the PID node_start records is the daemon's.
    printf '#!/bin/sh\nexec ip netns exec %q %q "$@"\n' "$(ns_of "$name")" "$bin" >"$T/in-$name"
    chmod 755 "$T/in-$name"
    NODE_BIN["$name"]=$T/in-$name
    NODE_HOST["$name"]=${SITE_ADDR[$name]}
    node_config_write "$name" "$@"
}

ctl_near() {
    local name=$1
    shift
    ip netns exec "$(ns_of "$name")" "$SMTPSYNCCTL" "$@"
}

# ---- the mail server ----

sink_start() {
    local addr=${MAIL_ADDR[mail]}
    mkdir -p "$SINK_DIR"
    chown nobody "$SINK_DIR"
    ip netns exec "$(ns_of mail)" smtp-sink -u nobody -d "$SINK_DIR/%H%M%S." "$addr:25" 256 \
        2>"$T/sink.err" &
    SINK_PID=$!
    PIDS+=("$SINK_PID")
    # Ready once it accepts a connection from the primary's site.
    if wait_until 10 ip netns exec "$(ns_of primary)" bash -c "(exec 3<>/dev/tcp/$addr/25) 2>/dev/null"; then
        pass
    else
        fail "smtp-sink did not start on $addr:25: $(cat "$T/sink.err")"
        return 1
    fi
}

sink_files() {
    grep -rlF -- "$1" "$SINK_DIR" 2>/dev/null || true
}

sink_count() {
    sink_files "$1" | wc -l
}

# True once at least N dumps hold TEXT.
sink_has() { # TEXT [N]
    [ "$(sink_count "$1")" -ge "${2:-1}" ]
}

sink_client() {
    sed -n 's/^X-Client-Addr: *//p' "$1" | head -n 1 | tr -d '\r'
}

sink_from() {
    header_value "$1" From
}
