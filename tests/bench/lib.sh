# shellcheck shell=bash
# lib.sh: node helpers shared by tests/bench/repl/run and tests/bench/ops/run
# (real smtpsync-primary / smtpsync-replica processes on loopback, mutual
# TLS with certificates from tests/tools/make-pki.sh).
#
# Source it after setting, under `set -euo pipefail`:
#   T     the run's temporary directory; the PKI is in $T/pki (make-pki.sh
#         -a alice $T/pki NODE...: ca.pem, NODE.pem / NODE.key, alice.*)
#   CTL   smtpsyncctl
#   KEEP  1: bench_remove_tmp keeps $T
#   PRIMARY_LOG_LEVEL  the primary's --log-level (default info)
# It declares the global maps PID[NAME] (the daemons started by node_start,
# unset by node_stop) and PORT[NAME] (each node's listen port: the caller
# fills it before node_config).
#
#   say TEXT...                    a timestamped line on stderr
#   free_ports K                   K distinct free loopback ports, one a line
#   node_config DIR NAME [INI...]  writes DIR/NAME.ini, makes DIR/NAME.data
#   node_start DIR NAME BIN        starts NAME, waits until its port listens
#   node_stop NAME                 SIGTERM, then waits for it
#   ctl_remote ARGS...             smtpsyncctl against the primary as alice
#   wait_acks LOG REV N SECS       N "in sync at revision REV" lines in LOG
#   bench_stop_nodes               node_stop for every node still running
#                                  (the callers' EXIT traps)
#   bench_remove_tmp               removes $T, or says it is kept (KEEP=1)

declare -gA PID=() PORT=()

say() { printf '[%s] %s\n' "$(date -u +%H:%M:%S)" "$*" >&2; }

# free_ports K: K distinct free loopback ports, one a line.
free_ports() {
    python3 - "$1" <<'PY'
import socket, sys
socks = []
for _ in range(int(sys.argv[1])):
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    socks.append(s)
print("\n".join(str(s.getsockname()[1]) for s in socks))
PY
}

# node_config DIR NAME [INI-LINES...]: DIR/NAME.ini
node_config() {
    local dir=$1 name=$2 line
    shift 2
    {
        printf '[node]\nid = %s\ndata_dir = %s\nsubmit_socket = %s\nlisten = 127.0.0.1:%s\n' \
            "$name" "$dir/$name.data" "$dir/$name.sock" "${PORT[$name]}"
        printf '\n[tls]\nca = %s\ncert = %s\nkey = %s\n' "$T/pki/ca.pem" "$T/pki/$name.pem" \
            "$T/pki/$name.key"
        printf '\n[admin]\nsuper_admins = alice\n'
        for line in "$@"; do printf '%s\n' "$line"; done
    } >"$dir/$name.ini"
    mkdir -p "$dir/$name.data"
}

# node_start DIR NAME BIN: started with --log-level info (the primary:
# PRIMARY_LOG_LEVEL), stderr to DIR/NAME.log; waits until its port listens.
node_start() {
    local dir=$1 name=$2 bin=$3 i level=info
    [ "$name" = primary ] && level=${PRIMARY_LOG_LEVEL:-info}
    "$bin" --config "$dir/$name.ini" --log-level "$level" >"$dir/$name.out" 2>"$dir/$name.log" \
        </dev/null &
    PID[$name]=$!
    for ((i = 0; i < 500; i++)); do
        if [ -n "$(ss -Hltn "sport = :${PORT[$name]}")" ]; then return 0; fi
        kill -0 "${PID[$name]}" 2>/dev/null || break
        sleep 0.02
    done
    echo "run: $name did not start: $(tail -n 20 "$dir/$name.log")" >&2
    exit 1
}

node_stop() {
    local name=$1
    [ -n "${PID[$name]:-}" ] || return 0
    kill -TERM "${PID[$name]}" 2>/dev/null || true
    wait "${PID[$name]}" 2>/dev/null || true
    unset "PID[$name]"
}

ctl_remote() {
    "$CTL" --server "127.0.0.1:${PORT[primary]}" --server-id primary --ca "$T/pki/ca.pem" \
        --cert "$T/pki/alice.pem" --key "$T/pki/alice.key" "$@"
}

wait_acks() { # LOG REV N SECS
    local log=$1 rev=$2 n=$3 secs=$4 c deadline
    deadline=$((SECONDS + secs))
    while :; do
        c=$(grep -c -E " in sync at revision $rev\$" "$log" || true)
        ((c >= n)) && return 0
        ((SECONDS > deadline)) && return 1
        sleep 0.01
    done
}

# bench_stop_nodes: every daemon still running is sent SIGTERM first, then
# waited for, so they shut down side by side rather than one after another.
bench_stop_nodes() {
    local n
    for n in "${!PID[@]}"; do
        if [ -n "${PID[$n]}" ]; then kill -TERM "${PID[$n]}" 2>/dev/null || true; fi
    done
    for n in "${!PID[@]}"; do
        if [ -n "${PID[$n]}" ]; then wait "${PID[$n]}" 2>/dev/null || true; fi
    done
}

bench_remove_tmp() {
    if [ "${KEEP:-0}" = 1 ]; then
        echo "run: kept $T" >&2
    else
        rm -rf "$T"
    fi
}
