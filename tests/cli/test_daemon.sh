#!/usr/bin/env bash
# The daemons as an operator runs them: smtpsync-primary and
# smtpsync-replica with real config files. Bad command lines and configs
# exit 2 with every problem on its own line; a running daemon serves its
# submission socket (mode 0660) to `smtpsyncctl queue`, refuses a second
# daemon on its socket or data directory, keeps running through SIGHUP
# (good config or bad), picks up a revision saved by another process,
# exits 0 within a second of SIGTERM with its socket removed, and never
# shows the SMTP password. With [tls], a primary pushes what is saved to
# real replica processes, reloads its certificate on SIGHUP, and a
# restarted replica catches up.
source "$(dirname "$0")/lib.sh"

# The daemons sit next to smtpsyncctl in the build tree unless named.
for bin in "$PRIMARY" "$REPLICA"; do
    [ -x "$bin" ] || {
        echo "missing daemon binary $bin (set SMTPSYNC_PRIMARY / SMTPSYNC_REPLICA)" >&2
        exit 1
    }
done

PW='Daemon-7788-osprey-UNIQUE-pw'

# write_config NAME ID [LINES...]: $T/NAME.ini with its own data dir and socket.
write_config() {
    local name=$1 id=$2
    shift 2
    {
        printf '; %s test config\n[node]\nid = %s\n' "$name" "$id"
        printf 'data_dir = %s\nsubmit_socket = %s\n' "$T/$name.data" "$T/$name.sock"
        printf '\n[sender]\nretry_initial = 0.2\nretry_max = 1\n'
        for line in "$@"; do
            printf '%s\n' "$line"
        done
    } >"$T/$name.ini"
}

# start BIN NAME [ARGS...]: the daemon on $T/NAME.ini (lib.sh's daemon_start).
start() {
    daemon_start "$1" "$2" "$T/$2.ini" "${@:3}"
}

# stop NAME SIGNAL: sends the signal and expects exit 0 within a second.
stop() {
    local name=$1 sig=$2 pid=${PID[$1]} i rc=0
    kill -"$sig" "$pid"
    for ((i = 0; i < 10; i++)); do
        kill -0 "$pid" 2>/dev/null || break
        sleep 0.1
    done
    if kill -0 "$pid" 2>/dev/null; then
        fail "$name still running 1 s after SIG$sig"
        kill -KILL "$pid"
    else
        pass
    fi
    wait "$pid" || rc=$?
    assert_eq "$name: exit status after SIG$sig" 0 "$rc"
    assert_true "$name: socket removed after SIG$sig" test ! -e "$T/$name.sock"
    assert_true "$name: logs its stop" grep -Eq 'info stopped$|"msg":"stopped"' "$T/$name.log"
    assert_not_contains "$name: no sanitizer report" "$(cat "$T/$name.log")" "Sanitizer"
}

# wait_for TENTHS CMD...: polls CMD every 0.1 s, at most TENTHS times.
wait_for() {
    local n=$1 i
    shift
    for ((i = 0; i < n; i++)); do
        "$@" && return 0
        sleep 0.1
    done
    return 1
}

q() {
    run "$SMTPSYNCCTL" --socket "$T/$1.sock" queue "${@:2}"
}


# ---- command line ----

for bin in "$PRIMARY" "$REPLICA"; do
    prog=$(basename "$bin")
    run "$bin" --help
    assert_exit "$prog --help" 0
    assert_contains "$prog --help" "$OUT" "--config FILE"
    run "$bin" --version
    assert_exit "$prog --version" 0
    assert_contains "$prog --version" "$OUT" "$prog "
    run "$bin"
    assert_exit "$prog without --config" 2
    assert_contains "$prog without --config" "$ERR" "$prog: --config FILE is required"
    run "$bin" --config
    assert_exit "$prog --config without a value" 2
    run "$bin" --conf "$T/x.ini"
    assert_exit "$prog: abbreviated option refused" 2
    assert_contains "$prog: abbreviated option" "$ERR" "unknown option '--conf'"
    run "$bin" --config "$T/x.ini" --log-level loud
    assert_exit "$prog: bad --log-level" 2
    assert_contains "$prog: bad --log-level" "$ERR" "'loud' is not debug, info, warn or error"
    run "$bin" --config "$T/x.ini" --log-format xml
    assert_exit "$prog: bad --log-format" 2
    run "$bin" --config "$T/x.ini" extra
    assert_exit "$prog: stray argument" 2
    run "$bin" --config "$T/none.ini"
    assert_exit "$prog: missing config file" 2
    assert_contains "$prog: missing config file" "$ERR" "$prog: $T/none.ini: cannot read: No such file or directory"
done

# ---- bad configs: every problem, one per line, with its line number ----

cat >"$T/bad.ini" <<EOF
[node]
id = -bad
data_dir = relative/dir
submit_socket = $T/bad.sock
[sender]
max_sessions = 300
max_session = 4
idle = 2 s
[replication]
interval = 0
[log]
level = loud
EOF
run "$PRIMARY" --config "$T/bad.ini"
assert_exit "bad config" 2
for line in \
    "smtpsync-primary: $T/bad.ini:2: invalid value '-bad' for 'id' in [node]:" \
    "smtpsync-primary: $T/bad.ini:3: invalid value 'relative/dir' for 'data_dir' in [node]: must be an absolute path" \
    "smtpsync-primary: $T/bad.ini:6: invalid value '300' for 'max_sessions' in [sender]: must be a whole number from 1 to 256" \
    "smtpsync-primary: $T/bad.ini:7: unknown key 'max_session' in [sender]" \
    "smtpsync-primary: $T/bad.ini:8: invalid value '2 s' for 'idle' in [sender]:" \
    "smtpsync-primary: $T/bad.ini:10: invalid value '0' for 'interval' in [replication]: must be a duration from 1s" \
    "smtpsync-primary: $T/bad.ini:12: invalid value 'loud' for 'level' in [log]:"; do
    assert_contains "bad config reports: $line" "$ERR" "$line"
done
assert_eq "bad config: one line per problem" 7 "$(printf '%s\n' "$ERR" | wc -l)"
assert_true "bad config: nothing created" test ! -e "$T/bad.sock"

printf '[node]\nid = x\n' >"$T/noddir.ini"
run "$REPLICA" --config "$T/noddir.ini"
assert_exit "missing data_dir" 2
assert_eq "missing data_dir message" \
    "smtpsync-replica: $T/noddir.ini: missing required key 'data_dir' in [node]" "$ERR"

# ---- a running primary ----

# A record with a password for this node, saved before the daemon starts;
# its relay is a closed local port, so delivery is deferred.
DATA=$T/p1.data
ctl_in "$PW"$'\n'"$PW"$'\n' settings set --instance primary --hostname 127.0.0.1 --port 9 \
    --from noreply@example.com --test-address admin@example.com --logon --user smtpuser \
    --password-stdin --smtps --tls-mode strict
assert_exit "settings set with a password" 0
ctl settings import-cert --instance primary "$CERTS/leaf.pem"
assert_exit "import-cert" 0
ctl settings save --comment "first"
assert_exit "settings save" 0

write_config p1 primary
start "$PRIMARY" p1 --log-level debug
assert_eq "socket mode 0660" 660 "$(stat -c %a "$T/p1.sock")"
assert_eq "data dir mode 0700" 700 "$(stat -c %a "$T/p1.data")"
assert_eq "outbox dir mode 0700" 700 "$(stat -c %a "$T/p1.data/outbox")"
bad_modes=$(find "$T/p1.data" -type f ! -perm 600)
assert_eq "data files are 0600" "" "$bad_modes"
assert_eq "no core dumps" 0 "$(awk '/Max core file size/ {print $5}' "/proc/${PID[p1]}/limits")"
assert_contains "started line" "$(cat "$T/p1.log")" \
    "info started role=primary node=primary version="

q p1
assert_exit "queue on an empty daemon" 0
assert_eq "queue on an empty daemon" $'no mail pending\nno dead mail' "$OUT"
q p1 --json
assert_exit "queue --json on an empty daemon" 0
assert_eq "queue --json: no pending" "[]" "$(json 'd["pending"]')"
assert_eq "queue --json: no dead" "[]" "$(json 'd["dead"]')"
q p1 retry 12345
assert_exit "queue retry of an unknown id" 1
assert_contains "queue retry of an unknown id" "$ERR" "no message 12345 in the queue"
q p1 drop 0
assert_exit "queue drop 0" 2
q p1 drop 12x
assert_exit "queue drop 12x" 2
assert_contains "queue drop 12x" "$ERR" "'12x' is not a message id"

# A submission is logged with its id, the submitter's uid, recipients and size.
run_in $'hello\n' "$SMTPSYNCCTL" --socket "$T/p1.sock" send --to a@example.com --cc b@example.com \
    --subject "daemon test"
assert_exit "send" 0
assert_contains "send prints the id" "$OUT" "queued 1"
assert_true "submission logged" grep -Eq \
    "info submission accepted id=1 uid=$(id -u) rcpts=2 size=[0-9]+ priority=report" "$T/p1.log"
q p1 --json
assert_eq "queue lists the message" 1 "$(json '[m["id"] for m in d["pending"] + d["dead"]][0]')"
assert_eq "queue lists its recipients" '["a@example.com", "b@example.com"]' \
    "$(json '(d["pending"] + d["dead"])[0]["recipients"]')"
q p1 drop 1
assert_exit "queue drop 1" 0
assert_eq "queue drop 1" "message 1 dropped" "$OUT"
q p1 drop 1
assert_exit "queue drop 1 again" 1

# A second daemon on the same socket is refused; the first keeps serving.
write_config p2 p2
sed -i "s|^submit_socket = .*|submit_socket = $T/p1.sock|" "$T/p2.ini"
run "$PRIMARY" --config "$T/p2.ini"
assert_exit "second daemon on the same socket" 1
assert_contains "second daemon on the same socket" "$ERR" "another daemon is listening on it"
# ... and on the same data directory with another socket.
write_config p3 primary
sed -i "s|^data_dir = .*|data_dir = $T/p1.data|" "$T/p3.ini"
run "$PRIMARY" --config "$T/p3.ini"
assert_exit "second daemon on the same data directory" 1
assert_contains "second daemon on the same data directory" "$ERR" \
    "another daemon is using the data directory"
assert_true "second daemon left no socket" test ! -e "$T/p3.sock"
q p1
assert_exit "first daemon still answers" 0

# A revision saved by another process is picked up without a restart.
ctl settings set --instance primary --port 10
ctl settings save --comment "second"
assert_exit "save revision 2 behind the daemon's back" 0
assert_true "new revision picked up" wait_for 30 grep -q "settings revision 2 (was 1)" "$T/p1.log"

# SIGHUP: a good config applies [sender] and [log] at once and names what
# needs a restart; a bad one is reported and changes nothing.
write_config p1 primary "max_sessions = 8"
sed -i "s|^data_dir = .*|data_dir = $T/elsewhere|" "$T/p1.ini"
kill -HUP "${PID[p1]}"
assert_true "reload: sender limit applied" \
    wait_for 30 grep -q "reload: \[sender\] max_sessions \"4\" -> \"8\"" "$T/p1.log"
assert_true "reload: data_dir needs a restart" grep -q \
    "reload: \[node\] data_dir changed .* restart needed" "$T/p1.log"
assert_true "reload: sender restarted" wait_for 30 grep -q "reload: sender restarted" "$T/p1.log"
printf '[node]\nid = primary\nbogus = 1\n' >"$T/p1.ini"
kill -HUP "${PID[p1]}"
assert_true "reload: bad config reported" \
    wait_for 30 grep -q "reload: $T/p1.ini:3: unknown key 'bogus' in \[node\]" "$T/p1.log"
assert_true "reload: bad config changes nothing" grep -q "reload: configuration unchanged" \
    "$T/p1.log"
assert_true "still running after SIGHUP" kill -0 "${PID[p1]}"
q p1
assert_exit "still answers after SIGHUP" 0

# The password is nowhere a daemon shows things.
assert_not_contains "no password in argv" "$(tr '\0' ' ' <"/proc/${PID[p1]}/cmdline")" "$PW"
stop p1 TERM
assert_not_contains "no password in the log" "$(cat "$T/p1.log")" "UNIQUE-pw"
assert_not_contains "no password on stdout" "$(cat "$T/p1.out")" "UNIQUE-pw"

# After SIGKILL the stale socket file is replaced at the next start.
write_config p1 primary
start "$PRIMARY" p1
kill -KILL "${PID[p1]}"
wait "${PID[p1]}" 2>/dev/null
assert_true "socket file left by SIGKILL" test -S "$T/p1.sock"
start "$PRIMARY" p1
assert_true "stale socket replaced" grep -q "removed stale socket" "$T/p1.log"
stop p1 INT

# ---- the replica ----

write_config r1 site-b "[log]" "format = json"
start "$REPLICA" r1
assert_true "replica: JSON log names the program" grep -q \
    '"level":"info","prog":"smtpsync-replica","msg":"started role=replica node=site-b' "$T/r1.log"
assert_true "replica: a fresh store was made" test -f "$T/r1.data/data.mdb"
q r1
assert_exit "replica: queue" 0
kill -HUP "${PID[r1]}"
assert_true "replica: SIGHUP with no change" wait_for 30 grep -q "reload: no change" "$T/r1.log"
stop r1 TERM

# ---- replication: a primary and two replicas over mutual TLS ----

PKI=$T/pki
bash "$(dirname "$0")/../tools/make-pki.sh" -a alice "$PKI" primary site-b site-c >/dev/null
PP=$(free_port)
PB=$(free_port)
PC=$(free_port)
tls_lines() {
    printf '%s\n' "[tls]" "ca = $PKI/ca.pem" "cert = $PKI/$1.pem" "key = $PKI/$1.key"
}
write_config rp primary "[log]" "level = debug"
sed -i "/^submit_socket/a listen = 127.0.0.1:$PP" "$T/rp.ini"
{
    tls_lines primary
    printf '%s\n' "[replication]" "interval = 60" "jitter = 0"
    printf '%s\n' "[replica \"site-b\"]" "address = 127.0.0.1:$PB"
    printf '%s\n' "[replica \"site-c\"]" "address = 127.0.0.1:$PC"
    printf '%s\n' "[admin]" "super_admins = alice"
} >>"$T/rp.ini"
for r in b c; do
    port=$PB
    [ $r = c ] && port=$PC
    write_config "r$r" "site-$r"
    sed -i "/^submit_socket/a listen = 127.0.0.1:$port" "$T/r$r.ini"
    { tls_lines "site-$r"; printf '%s\n' "[replication]" "primary = primary"; } >>"$T/r$r.ini"
done

# A [replica] section without [tls] is a configuration error.
printf '[node]\nid = primary\ndata_dir = %s\n[replica "site-b"]\naddress = 127.0.0.1:1\n' \
    "$T/x.data" >"$T/notls.ini"
run "$PRIMARY" --config "$T/notls.ini"
assert_exit "replicas without [tls]" 2
assert_contains "replicas without [tls]" "$ERR" \
    "missing required key 'ca' in [tls] (needed by the [replica] sections)"

start "$REPLICA" rb
start "$REPLICA" rc
start "$PRIMARY" rp
assert_true "primary listens" grep -q "listening for replication and admins on 127.0.0.1:$PP" \
    "$T/rp.log"
assert_true "primary pushes to both" wait_for 50 grep -q "replica site-c: in sync at revision 0" \
    "$T/rp.log"

# A save on the primary (by another process) reaches both replicas.
"$SMTPSYNCCTL" --data-dir "$T/rp.data" settings set --instance site-b --hostname mail.example.com \
    --port 587 --from noreply@example.com --test-address ops@example.com >/dev/null 2>&1
run "$SMTPSYNCCTL" --data-dir "$T/rp.data" settings save --comment "replicated"
assert_exit "save on the primary" 0
replica_has() { # NAME REVISION
    grep -q "^$2 .*replicated" <<<"$("$SMTPSYNCCTL" --data-dir "$T/$1.data" history 2>/dev/null)"
}
assert_true "site-b got revision 1" wait_for 50 replica_has rb 1
assert_true "site-c got revision 1" wait_for 50 replica_has rc 1
assert_true "site-b's sender uses it" wait_for 30 grep -q \
    "sender settings instance=site-b revision=1 relay=mail.example.com:587" "$T/rb.log"
run "$SMTPSYNCCTL" --data-dir "$T/rb.data" settings show --instance site-b
assert_contains "site-b shows the replicated record" "$OUT" "mail.example.com"

# SIGHUP reloads the TLS files (here a renewed certificate) without
# dropping anything; pushes go on.
sed -i "s|^cert = .*|cert = $PKI/renewed.pem|; s|^key = .*|key = $PKI/renewed.key|" "$T/rp.ini"
kill -HUP "${PID[rp]}"
assert_true "reload: TLS files reloaded" wait_for 30 grep -q \
    "reload: TLS files reloaded (certificate id 'primary')" "$T/rp.log"
"$SMTPSYNCCTL" --data-dir "$T/rp.data" settings set --instance site-c --hostname mail-c.example.com \
    --port 587 --from noreply@example.com --test-address ops@example.com >/dev/null 2>&1
"$SMTPSYNCCTL" --data-dir "$T/rp.data" settings save --comment "replicated again" >/dev/null 2>&1
assert_true "site-c got revision 2 after the reload" wait_for 50 replica_has rc 2
# A key that cannot be read: the old files stay in use.
sed -i "s|^key = .*|key = $PKI/missing.key|" "$T/rp.ini"
kill -HUP "${PID[rp]}"
assert_true "reload: bad TLS files kept out" wait_for 30 grep -q \
    "reload: keeping the TLS files loaded before" "$T/rp.log"
assert_true "primary still running" kill -0 "${PID[rp]}"

# A replica restarted catches up.
stop rb TERM
"$SMTPSYNCCTL" --data-dir "$T/rp.data" settings set --instance site-b --port 2525 >/dev/null 2>&1
"$SMTPSYNCCTL" --data-dir "$T/rp.data" settings save --comment "replicated while down" \
    >/dev/null 2>&1
start "$REPLICA" rb
assert_true "site-b caught up after its restart" wait_for 100 replica_has rb 3

stop rp TERM
stop rb TERM
stop rc INT
assert_not_contains "primary: no sanitizer report" "$(cat "$T/rp.log")" "runtime error"

finish
