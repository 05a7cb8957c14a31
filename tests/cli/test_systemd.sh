#!/usr/bin/env bash
# The systemd units of deploy/systemd and the installation.
#
# - `systemd-analyze verify` accepts both units with no warning at all. The
#   units name /usr/local/sbin in ExecStart and ExecReload (verify checks
#   that the programs exist), so they are verified as copies made from
#   deploy/systemd/ the way CMake makes the installed ones, with the daemon
#   pointing at the built ones; Documentation=man: is checked against the
#   built man pages.
# - A reload checks the file first: the first ExecReload= runs the daemon
#   with --check-config on the ExecStart= config (a bad file fails the
#   reload and no SIGHUP is sent), the second sends SIGHUP; each command
#   of those lines, run as the unit would, passes on a good file and the
#   check fails on a bad one.
# - Every hardening directive the deployment relies on is there, in both
#   units, and `systemd-analyze security --offline=true` rates them below
#   2.0 ("OK"; the score is printed).
# - A start that keeps failing stops: StartLimitIntervalSec= and
#   StartLimitBurst= are in [Unit], and StartLimitBurst restarts at
#   RestartSec= apart fit in the interval (the default limit, 5 in 10 s,
#   never trips with RestartSec=5s). TimeoutStopSec= is above the sender's
#   stop drain (SENDER_DRAIN_MS_DEFAULT of common/sender.c), and the comment
#   on stopping says that drain and what happens after it.
# - The comments say what is true: no "/usr/local" outside the Exec lines
#   (the installed copy names another prefix), and the core limit's
#   setrlimit() is prlimit64, allowed by the filter.
# - smtpsync-replica.service is smtpsync-primary.service with the roles
#   swapped, and smtpsync.sysusers makes the user smtpsync.
# - What the daemon does (mutual TLS, the submission socket, the store, a
#   metrics scrape, a reload and a stop) uses only system calls the unit's
#   SystemCallFilter= allows (strace, when installed).
# - `cmake --install` puts the programs, man pages, units, sysusers file
#   and examples where they belong.
set -euo pipefail
source "$(dirname "$0")/lib.sh"

UNITS=$SRC/deploy/systemd

if ! command -v systemd-analyze >/dev/null; then
    echo "SKIP: systemd-analyze is not installed" >&2
    exit 77
fi
# verify runs offline (no systemd as PID 1 needed); a unit that it must
# refuse shows it really checks here.
mkdir -p "$T/probe"
printf '[Service]\nExecStart=/bin/true\nNoSuchKey=1\n' >"$T/probe/probe.service"
if ! SYSTEMD_LOG_COLOR=0 systemd-analyze verify --man=no "$T/probe/probe.service" 2>&1 |
    grep -q NoSuchKey; then
    echo "SKIP: systemd-analyze verify does not work here" >&2
    exit 77
fi

# ---- verify ----
# The same rewrite as the root CMakeLists.txt does for the installed
# copies: only the directory of the daemon in ExecStart and ExecReload.
mkdir -p "$T/units"
sed -E "s#^(ExecStart|ExecReload)=/usr/local/sbin/smtpsync-primary #\1=$PRIMARY #" \
    "$UNITS/smtpsync-primary.service" >"$T/units/smtpsync-primary.service"
sed -E "s#^(ExecStart|ExecReload)=/usr/local/sbin/smtpsync-replica #\1=$REPLICA #" \
    "$UNITS/smtpsync-replica.service" >"$T/units/smtpsync-replica.service"
for unit in smtpsync-primary smtpsync-replica; do
    assert_eq "$unit: only ExecStart and the checking ExecReload rewritten" 2 \
        "$(diff "$UNITS/$unit.service" "$T/units/$unit.service" | grep -c '^>' || true)"
done
# MANPATH: the built pages, for Documentation=man:...; nothing else.
run env SYSTEMD_LOG_COLOR=0 MANPATH="$BUILD/docs/man" systemd-analyze verify \
    "$T/units/smtpsync-primary.service" "$T/units/smtpsync-replica.service"
assert_exit "systemd-analyze verify" 0
assert_eq "systemd-analyze verify: no warning" "" "$OUT$ERR"
# The copies CMake made for installing: the same but for the sbin path.
for unit in smtpsync-primary smtpsync-replica; do
    built=$BUILD/deploy/systemd/$unit.service
    assert_true "$unit: made by CMake in the build tree" test -s "$built"
    sbin=$(sed -n "s#^ExecStart=\(/[^ ]*\)/$unit --config .*#\1#p" "$built")
    assert_match "$unit: installed ExecStart is an absolute sbin path" "$sbin" '^/.*sbin$'
    assert_eq "$unit: the installed copy differs only in the daemon's directory" "" \
        "$(sed -E "s#^(ExecStart|ExecReload)=/usr/local/sbin/#\1=$sbin/#" "$UNITS/$unit.service" |
            diff - "$built" || true)"
done

# ---- the directives ----
required=(
    "Type=simple"
    "User=smtpsync"
    "Group=smtpsync"
    "Restart=on-failure"
    "RestartSec=5s"
    "StartLimitIntervalSec=120s"
    "StartLimitBurst=5"
    "TimeoutStopSec=90s"
    "RestartPreventExitStatus=2"
    "StateDirectory=smtpsync"
    "StateDirectoryMode=0700"
    "RuntimeDirectory=smtpsync"
    "RuntimeDirectoryMode=0750"
    "ConfigurationDirectory=smtpsync"
    "UMask=0077"
    "LimitCORE=0"
    "NoNewPrivileges=yes"
    "ProtectSystem=strict"
    "ProtectHome=yes"
    "PrivateTmp=yes"
    "PrivateDevices=yes"
    "CapabilityBoundingSet="
    "AmbientCapabilities="
    "RestrictAddressFamilies=AF_UNIX AF_INET AF_INET6"
    "SystemCallFilter=@system-service"
    "SystemCallFilter=~@privileged @resources"
    "SystemCallErrorNumber=EPERM"
    "SystemCallArchitectures=native"
    "MemoryDenyWriteExecute=yes"
    "LockPersonality=yes"
    "RestrictRealtime=yes"
    "RestrictSUIDSGID=yes"
    "RestrictNamespaces=yes"
    "ProtectKernelTunables=yes"
    "ProtectKernelModules=yes"
    "ProtectKernelLogs=yes"
    "ProtectControlGroups=yes"
    "ProtectClock=yes"
    "ProtectHostname=yes"
    "ProtectProc=invisible"
    "PrivateIPC=yes"
    "RemoveIPC=yes"
    "PrivateMounts=yes"
    "WantedBy=multi-user.target"
)
for unit in smtpsync-primary smtpsync-replica; do
    role=${unit#smtpsync-}
    for line in "${required[@]}" \
        "ExecStart=/usr/local/sbin/$unit --config /etc/smtpsync/$role.conf" \
        "Documentation=man:$unit(8)"; do
        assert_true "$unit: $line" grep -qxF -- "$line" "$UNITS/$unit.service"
    done
    # A reload: the check of the file ExecStart names, then SIGHUP, in
    # this order and nothing else (systemd stops at the first that fails).
    assert_eq "$unit: ExecReload= checks, then sends SIGHUP" \
        "ExecReload=/usr/local/sbin/$unit --config /etc/smtpsync/$role.conf --check-config
ExecReload=/bin/kill -HUP \$MAINPID" "$(grep '^ExecReload=' "$UNITS/$unit.service")"
    # Nothing gives a privilege back, and the socket stays the group's.
    assert_false "$unit: no capability granted" grep -Eq '^(CapabilityBoundingSet|AmbientCapabilities)=.' \
        "$UNITS/$unit.service"
    assert_false "$unit: no second ExecStart" \
        test "$(grep -c '^ExecStart=' "$UNITS/$unit.service")" -ne 1
done
# seconds VALUE: a systemd time span of the units (120s, 2min, 5) in
# seconds.
seconds() {
    local v=$1
    case $v in
    *min) echo $((${v%min} * 60)) ;;
    *s) echo "${v%s}" ;;
    *) echo "$v" ;;
    esac
}
# The sender's stop drain, as the daemon uses it (node.c leaves the default).
drain_s=$(sed -nE 's/^#define SENDER_DRAIN_MS_DEFAULT +\(([0-9]+) \* 1000\)$/\1/p' \
    "$SRC/common/sender.c")
assert_match "SENDER_DRAIN_MS_DEFAULT found in sender.c" "$drain_s" '^[0-9]+$'
assert_false "node.c leaves the sender's drain_ms at its default" \
    grep -q 'drain_ms' "$SRC/common/node.c"
for unit in smtpsync-primary smtpsync-replica; do
    file=$UNITS/$unit.service
    # section KEY: the section the key is set in.
    section() {
        awk -v k="$1" '/^\[/ { s = $0 } index($0, k "=") == 1 { print s }' "$file"
    }
    for key in StartLimitIntervalSec StartLimitBurst; do
        assert_eq "$unit: $key is in [Unit] (systemd ignores it elsewhere)" "[Unit]" \
            "$(section "$key")"
    done
    interval=$(seconds "$(sed -n 's/^StartLimitIntervalSec=//p' "$file")")
    burst=$(sed -n 's/^StartLimitBurst=//p' "$file")
    restart=$(seconds "$(sed -n 's/^RestartSec=//p' "$file")")
    stop=$(seconds "$(sed -n 's/^TimeoutStopSec=//p' "$file")")
    assert_true "$unit: $burst failed starts ${restart}s apart trip the ${interval}s start limit" \
        test $((burst * restart)) -lt "$interval"
    assert_true "$unit: the default start limit (5 in 10 s) would never trip" \
        test "$restart" -ge 2
    assert_true "$unit: TimeoutStopSec (${stop}s) is above the ${drain_s}s drain" \
        test "$stop" -gt "$((drain_s + 10))"
    # The comment on stopping: the drain, then the outbox; no promise that
    # every mail under way is finished.
    stopping=$(grep -B4 '^KillSignal=' "$file")
    assert_not_contains "$unit: no 'finished first' claim" "$stopping" "finished first"
    assert_contains "$unit: the stop comment gives the drain" "$stopping" "$drain_s s to"
    assert_contains "$unit: the stop comment: cancelled" "$stopping" "cancelled"
    assert_contains "$unit: the stop comment: unsent mail stays" "$stopping" "stays in the outbox"
    # True in the installed copy too: the prefix only in the Exec lines.
    assert_eq "$unit: /usr/local only in ExecStart and ExecReload" "" \
        "$(grep -v '^Exec' "$file" | grep '/usr/local' || true)"
    assert_not_contains "$unit: no claim that setrlimit fails" "$(cat "$file")" "may fail harmlessly"
    assert_contains "$unit: the core limit's system call" "$(cat "$file")" "prlimit64"
done
# What the comment says of prlimit64 and setrlimit: the filter allows the
# first, refuses the second.
assert_true "prlimit64 is in @default" \
    grep -qx ' *prlimit64' < <(systemd-analyze syscall-filter @default)
assert_false "prlimit64 is in neither @privileged nor @resources" \
    grep -qx ' *prlimit64' < <(systemd-analyze syscall-filter @privileged @resources)
assert_true "setrlimit is in @resources" \
    grep -qx ' *setrlimit' < <(systemd-analyze syscall-filter @resources)

# One unit is the other with the roles swapped.
assert_eq "smtpsync-replica.service is smtpsync-primary.service with the roles swapped" "" \
    "$(sed 's/\bprimary\b/@X@/g; s/\breplica\b/primary/g; s/@X@/replica/g' \
        "$UNITS/smtpsync-primary.service" | diff - "$UNITS/smtpsync-replica.service" || true)"

# ---- the reload check ----
# The first ExecReload= of each (built-daemon) copy, run as systemd would
# run it but on a config in $T: a good file passes, a bad one fails (exit
# 2, the problem said), so systemd would not go on to send SIGHUP.
printf '[node]\nid = site-a\ndata_dir = %s\nsubmit_socket = %s\n' "$T/reload.nodata" \
    "$T/reload.sock" >"$T/good.conf"
cp "$T/good.conf" "$T/bad.conf"
printf '[sender]\nmax_sessions = lots\n' >>"$T/bad.conf"
for unit in smtpsync-primary smtpsync-replica; do
    role=${unit#smtpsync-}
    cmd=$(sed -n '0,/^ExecReload=/s/^ExecReload=//p' "$T/units/$unit.service")
    for conf in good bad; do
        read -ra argv <<<"${cmd/\/etc\/smtpsync\/$role.conf/$T/$conf.conf}"
        run "${argv[@]}"
        if [ "$conf" = good ]; then
            assert_exit "$unit: the reload check passes on a good file" 0
            assert_contains "$unit: the reload check says so" "$OUT" "configuration ok"
        else
            assert_exit "$unit: the reload check fails on a bad file" 2
            assert_contains "$unit: the reload check says why" "$ERR" "$T/bad.conf:6:"
        fi
    done
done
assert_false "the reload check made no data_dir" test -e "$T/reload.nodata"

# ---- exposure ----
for unit in smtpsync-primary smtpsync-replica; do
    run env SYSTEMD_LOG_COLOR=0 systemd-analyze security --offline=true --no-pager \
        "$T/units/$unit.service"
    score=$(sed -n "s/.*Overall exposure level for $unit.service: \([0-9.]*\).*/\1/p" <<<"$OUT")
    printf '%s: exposure %s\n' "$unit" "${score:-?}"
    assert_match "$unit: an exposure score" "$score" '^[0-9]+\.[0-9]$'
    assert_true "$unit: exposure $score below 2.0" \
        awk -v s="${score:-99}" 'BEGIN { exit !(s < 2.0) }'
done

# ---- the user ----
mkdir -p "$T/sysroot/etc"
run systemd-sysusers --root="$T/sysroot" "$UNITS/smtpsync.sysusers"
assert_exit "systemd-sysusers takes smtpsync.sysusers" 0
assert_match "sysusers: the system user smtpsync, no login" \
    "$(cat "$T/sysroot/etc/passwd" 2>/dev/null)" '^smtpsync:x:[0-9]+:[0-9]+:[^:]*:/var/lib/smtpsync:/usr/sbin/nologin$'
assert_match "sysusers: its group" "$(cat "$T/sysroot/etc/group" 2>/dev/null)" '^smtpsync:x:[0-9]+:'

# ---- system calls ----
# The daemon under strace: every system call it makes must be in
# @system-service and in neither @privileged nor @resources, as in the
# units. (LeakSanitizer cannot run under ptrace: leaks are other tests'.)

syscall_check() {
    local pki=$T/pki port mport trace_pid i names
    "$SRC/tests/tools/make-pki.sh" -a alice "$pki" primary >/dev/null
    mtls_primary_conf st "$pki"
    port=$PORT mport=$MPORT
    ASAN_OPTIONS=detect_leaks=0 strace -f -qq -o "$T/trace" "$PRIMARY" --config "$T/st.conf" \
        2>"$T/st.log" &
    trace_pid=$!
    for ((i = 0; i < 200; i++)); do
        grep -qs 'started role=' "$T/st.log" && break
        sleep 0.1
    done
    PID['traced']=$(pgrep -P "$trace_pid" || true)
    assert_true "under strace: the daemon started" grep -qs 'started role=' "$T/st.log"
    run "$SMTPSYNCCTL" --server "127.0.0.1:$port" --server-id primary --ca "$pki/ca.pem" \
        --cert "$pki/alice.pem" --key "$pki/alice.key" status
    assert_exit "under strace: status over mutual TLS" 0
    run_in "body" "$SMTPSYNCCTL" --socket "$T/st.sock" send --to a@example.com --subject s
    assert_exit "under strace: send on the socket" 0
    run python3 -c 'import sys, urllib.request
print(urllib.request.urlopen("http://127.0.0.1:%s/metrics" % sys.argv[1], timeout=10).read().decode())' "$mport"
    assert_exit "under strace: a metrics scrape" 0
    if [ -n "${PID[traced]}" ]; then
        kill -HUP "${PID[traced]}"
        wait_until 10 grep -q 'reload: ' "$T/st.log" || true
        kill -TERM "${PID[traced]}"
    fi
    wait "$trace_pid" || true
    unset 'PID[traced]'
    assert_true "under strace: the daemon stopped" grep -q 'info stopped' "$T/st.log"
    systemd-analyze syscall-filter >"$T/groups"
    names=$(python3 - "$T/groups" "$T/trace" <<'PY'
import re, sys
groups, cur = {}, None
for line in open(sys.argv[1]):
    if line.startswith("@"):
        cur = line.split()[0]
        groups[cur] = set()
    elif cur and line.strip() and not line.strip().startswith("#"):
        groups[cur].add(line.strip())
def expand(g):
    out = set()
    for m in groups.get(g, ()):
        out |= expand(m) if m.startswith("@") else {m}
    return out
allowed = expand("@system-service") - expand("@privileged") - expand("@resources")
used = set()
for line in open(sys.argv[2]):
    m = re.match(r"\d+\s+([a-z_0-9]+)\(", line)
    if m:
        used.add(m.group(1))
print(len(used), " ".join(sorted(used - allowed)))
PY
)
    printf 'system calls seen: %s\n' "${names%% *}"
    assert_true "under strace: system calls seen" test "${names%% *}" -gt 30
    assert_eq "system calls outside SystemCallFilter=" "" "${names#* }"
}
if command -v strace >/dev/null && strace -qq -o /dev/null true 2>/dev/null; then
    syscall_check
else
    echo "strace is missing or cannot trace here: system calls not checked" >&2
fi

# ---- cmake --install ----
CMAKE=$(sed -n 's/^CMAKE_COMMAND:INTERNAL=//p' "$BUILD/CMakeCache.txt")
run "${CMAKE:-cmake}" --install "$BUILD" --prefix "$T/root"
assert_exit "cmake --install" 0
for f in bin/smtpsyncctl sbin/smtpsync-primary sbin/smtpsync-replica; do
    assert_true "installed $f (executable)" test -x "$T/root/$f"
done
for f in share/man/man1/smtpsyncctl.1 share/man/man8/smtpsync-primary.8 \
    share/man/man8/smtpsync-replica.8 lib/systemd/system/smtpsync-primary.service \
    lib/systemd/system/smtpsync-replica.service lib/sysusers.d/smtpsync.conf \
    share/doc/smtpsync/examples/primary.conf share/doc/smtpsync/examples/replica.conf \
    share/doc/smtpsync/examples/ctl.conf; do
    assert_true "installed $f" test -s "$T/root/$f"
done
assert_true "installed units are the built ones" \
    cmp -s "$T/root/lib/systemd/system/smtpsync-primary.service" \
    "$BUILD/deploy/systemd/smtpsync-primary.service"
finish
