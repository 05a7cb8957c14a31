#!/usr/bin/env bash
# `smtpsync-primary|replica --config FILE --check-config` (the check the
# systemd units run before each reload):
# - the annotated examples (TLS paths moved to a test PKI) and a config
#   without [tls] pass: exit 0, one "FILE: configuration ok (...)" line on
#   stdout naming the node and the certificate's id and expiry, nothing on
#   stderr;
# - every kind of bad file fails with exit 2 and each problem on its own
#   "PROG: FILE:LINE: message" line: syntax, unknown section and key, bad
#   values, a missing required key, a non-loopback metrics_listen, a
#   [replica] section without address, a bad [admin] id, several problems
#   at once; so do [tls] files a start refuses: missing, key not the
#   certificate's, a certificate of another CA, an expired one;
# - a certificate whose id is not [node] id is a warning, as at start;
# - nothing is opened, bound, locked or made: a data_dir that does not
#   exist stays so, and beside a running daemon with the same file the
#   check passes while the daemon goes on untouched (its socket, lock and
#   store as they were; no bind/listen/flock under strace, when installed);
# - no secret (the private key, a key file's content) is ever printed.
set -euo pipefail
source "$(dirname "$0")/lib.sh"

EX=$SRC/deploy/examples
PKI=$T/pki
"$SRC/tests/tools/make-pki.sh" -a alice "$PKI" primary site-b >/dev/null


# check BIN FILE [ARGS...]: runs the check on FILE.
check() {
    local bin=$1 file=$2
    shift 2
    run "$bin" --config "$file" --check-config "$@"
}

# ok_re FILE NODE CERT_ID: the success line, as an ERE.
ok_re() {
    printf '^%s: configuration ok \\(node '\''%s'\''; tls certificate '\''%s'\'' expires %s\\)$' \
        "$1" "$2" "$3" '20[0-9]{2}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}Z'
}

# ---- good files ----
# The examples, with their [tls] files from the test PKI and data_dir and
# submit_socket in $T (neither is made). The rest is as shipped, including
# listen = 0.0.0.0:7443 and metrics_listen = 127.0.0.1:9465: nothing binds.
localize() { # SRC NAME ID
    sed -e "s#^data_dir = /var/lib/smtpsync\$#data_dir = $T/$2.nodata#" \
        -e "s#^;\\?submit_socket = /run/smtpsync/submit.sock\$#submit_socket = $T/$2.sock#" \
        -e "s#^ca = /etc/smtpsync/ca.pem\$#ca = $PKI/ca.pem#" \
        -e "s#^cert = /etc/smtpsync/node.pem\$#cert = $PKI/$3.pem#" \
        -e "s#^key = /etc/smtpsync/node.key\$#key = $PKI/$3.key#" \
        "$1" >"$T/$2.conf"
    assert_eq "$2: the lines rewritten" 5 "$(diff "$1" "$T/$2.conf" | grep -c '^>' || true)"
}
localize "$EX/primary.conf" primary primary
localize "$EX/replica.conf" replica site-b

check "$PRIMARY" "$T/primary.conf"
assert_exit "primary.conf: ok" 0
assert_match "primary.conf: the success line" "$OUT" "$(ok_re "$T/primary.conf" primary primary)"
assert_eq "primary.conf: one line" 1 "$(wc -l <<<"$OUT")"
assert_eq "primary.conf: nothing on stderr" "" "$ERR"
check "$REPLICA" "$T/replica.conf"
assert_exit "replica.conf: ok" 0
assert_match "replica.conf: the success line" "$OUT" "$(ok_re "$T/replica.conf" site-b site-b)"
assert_eq "replica.conf: nothing on stderr" "" "$ERR"
# Either daemon checks either file (the role is the store's, not the file's),
# and the log options are taken along.
check "$REPLICA" "$T/primary.conf" --log-level debug --log-format json
assert_exit "primary.conf checked by smtpsync-replica, with log options" 0
assert_eq "log options: nothing logged" "" "$ERR"

cat >"$T/plain.conf" <<EOF
[node]
id = site-c
data_dir = $T/plain.nodata
submit_socket = $T/plain.sock
EOF
check "$PRIMARY" "$T/plain.conf"
assert_exit "no [tls]: ok" 0
assert_eq "no [tls]: the success line" \
    "$T/plain.conf: configuration ok (node 'site-c'; no [tls]: replication and the admin API off)" \
    "$OUT"
for name in primary replica plain; do
    assert_false "$name: data_dir not made" test -e "$T/$name.nodata"
    assert_false "$name: no socket made" test -e "$T/$name.sock"
done

# ---- bad files ----
# bad NAME PATTERN...: $T/NAME.conf (written before) fails with exit 2,
# nothing on stdout, every line of stderr "smtpsync-primary: FILE...", and
# each PATTERN (an ERE) on a line of its own.
bad() {
    local name=$1 file=$T/$1.conf pat others
    shift
    check "$PRIMARY" "$file"
    assert_exit "$name: exit 2" 2
    assert_eq "$name: nothing on stdout" "" "$OUT"
    others=$(grep -v "^smtpsync-primary: $file:" <<<"$ERR" || true)
    assert_eq "$name: every line is 'PROG: FILE:...'" "" "$others"
    for pat in "$@"; do
        assert_match "$name: $pat" "$ERR" "^smtpsync-primary: $file$pat"
    done
}

# base NAME: a valid [node] section into $T/NAME.conf, more lines from stdin.
base() {
    {
        printf '[node]\nid = primary\ndata_dir = %s\nsubmit_socket = %s\n' "$T/bad.nodata" \
            "$T/bad.sock"
        cat
    } >"$T/$1.conf"
}

base syntax <<<$'[sender\nmax_sessions = 2'
bad syntax ':5: '
base nokey <<<$'[sender]\nno_such_key = 1'
bad nokey ':6: .*no_such_key'
base nosection <<<$'[nonsense]\nx = 1'
bad nosection ':5: .*nonsense'
base badnum <<<$'[sender]\nmax_sessions = lots'
bad badnum ':6: .*max_sessions'
base badduration <<<$'[replication]\ninterval = 5 parsecs'
bad badduration ':6: .*interval'
base badbool <<<$'[replication]\npush_on_commit = perhaps'
bad badbool ':6: .*push_on_commit'
base badlevel <<<$'[log]\nlevel = loud'
bad badlevel ':6: .*level'
base twice <<<$'[sender]\nmax_sessions = 2\nmax_sessions = 3'
bad twice ':7: .*max_sessions'
printf '[node]\nid = primary\n' >"$T/required.conf"
bad required ':.*data_dir'
base metrics <<<$'metrics_listen = 0.0.0.0:9465'
bad metrics ':5: .*loopback'
base metrics6 <<<$'metrics_listen = [2001:db8::1]:9465'
bad metrics6 ':5: .*loopback'
base replica <<<$'[tls]\nca = '"$PKI/ca.pem"$'\ncert = '"$PKI/primary.pem"$'\nkey = '"$PKI/primary.key"$'\n[replica "site-b"]\nport = 7443'
bad replica ':.*address'
base admin <<<$'[admin]\nsuper_admins = alice, bad id!'
bad admin ':6: .*super_admins'
base badaddr <<<$'listen = nowhere'
bad badaddr ':5: .*listen'
# Several problems: each on its own line, none hides another.
base many <<<$'metrics_listen = 192.0.2.1:1\n[sender]\nmax_sessions = x\nbogus = 1\n[log]\nformat = xml'
bad many ':5: .*loopback' ':7: .*max_sessions' ':8: .*bogus' ':10: .*format'
assert_true "many: at least 4 problem lines" test "$(wc -l <<<"$ERR")" -ge 4
run "$PRIMARY" --config "$T/no-such.conf" --check-config
assert_exit "a missing config file: exit 2" 2
assert_match "a missing config file: says so" "$ERR" "^smtpsync-primary: $T/no-such.conf: .*(cannot read|No such file)"
run "$PRIMARY" --check-config
assert_exit "--check-config without --config: usage error" 2
assert_contains "--check-config without --config: says so" "$ERR" "--config FILE is required"

# ---- [tls] files a start refuses ----
# tls NAME CA CERT KEY: a config with those [tls] files.
tls() {
    base "$1" <<EOF
[tls]
ca = $2
cert = $3
key = $4
EOF
}
tls_bad() { # NAME PATTERN
    bad "$1" ": cannot load the \\[tls\\] files: .*$2"
    assert_eq "$1: one problem" 1 "$(wc -l <<<"$ERR")"
}
tls nocert "$PKI/ca.pem" "$T/missing.pem" "$PKI/primary.key"
tls_bad nocert "missing.pem"
tls noca "$T/missing-ca.pem" "$PKI/primary.pem" "$PKI/primary.key"
tls_bad noca "missing-ca.pem"
tls nokeyfile "$PKI/ca.pem" "$PKI/primary.pem" "$T/missing.key"
tls_bad nokeyfile "missing.key"
tls mismatch "$PKI/ca.pem" "$PKI/primary.pem" "$PKI/site-b.key"
tls_bad mismatch "$PKI/site-b.key does not match the certificate in $PKI/primary.pem"
tls foreign "$PKI/ca.pem" "$PKI/foreign.pem" "$PKI/foreign.key"
tls_bad foreign "$PKI/foreign.pem: does not verify against the deployment CA"
tls otherca "$PKI/other-ca.pem" "$PKI/primary.pem" "$PKI/primary.key"
tls_bad otherca "$PKI/primary.pem: does not verify against the deployment CA"
tls expired "$PKI/ca.pem" "$PKI/expired.pem" "$PKI/expired.key"
tls_bad expired "expired on 2020-02-01"
tls future "$PKI/ca.pem" "$PKI/future.pem" "$PKI/future.key"
tls_bad future "not valid before 2099-01-01"
# What config_load itself refuses in [tls], before any file is read.
tls relative pki/ca.pem "$PKI/primary.pem" "$PKI/primary.key"
bad relative ':6: .*absolute'
base incomplete <<<$'[tls]\nkey = '"$PKI/primary.key"
bad incomplete ": missing required key 'ca' in \\[tls\\]" ": missing required key 'cert'"
# A key file that is no key: its content (a would-be secret) is not shown.
printf 'hunter2-s3cret-value\n' >"$T/notakey.key"
chmod 0600 "$T/notakey.key"
tls notakey "$PKI/ca.pem" "$PKI/primary.pem" "$T/notakey.key"
tls_bad notakey ""
assert_not_contains "notakey: the key file's content is not printed" "$ERR" "hunter2"
# Nor is the private key of a real key file, whatever went wrong.
for name in mismatch notakey; do
    check "$PRIMARY" "$T/$name.conf"
    assert_not_contains "$name: no PEM printed" "$OUT$ERR" "PRIVATE KEY"
    assert_not_contains "$name: no key material printed" "$OUT$ERR" \
        "$(sed -n 2p "$PKI/site-b.key" | cut -c1-24)"
done
check "$PRIMARY" "$T/primary.conf"
assert_not_contains "ok: no key material printed" "$OUT$ERR" "$(sed -n 2p "$PKI/primary.key" | cut -c1-24)"

# ---- the certificate's id is not [node] id: a warning, as at start ----
tls wrongid "$PKI/ca.pem" "$PKI/site-b.pem" "$PKI/site-b.key"
check "$PRIMARY" "$T/wrongid.conf"
assert_exit "wrong id: ok (a start goes on too)" 0
assert_eq "wrong id: the warning" \
    "smtpsync-primary: $T/wrongid.conf: warning: the certificate's id is 'site-b', not this node's id 'primary': other nodes will not know it by its id" \
    "$ERR"
assert_match "wrong id: ok line counts it" "$OUT" \
    "^$T/wrongid.conf: configuration ok \\(node 'primary'; tls certificate 'site-b' expires .*; 1 warning above\\)$"
assert_false "bad files: data_dir not made" test -e "$T/bad.nodata"

# ---- beside the running daemon, with the same file ----
mtls_primary_conf live "$PKI"
mkdir -p "$T/live.data"
"$PRIMARY" --config "$T/live.conf" >"$T/live.out" 2>"$T/live.log" </dev/null &
PID['live']=$!
# shellcheck disable=SC2317 # called through wait_until
answers() {
    "$SMTPSYNCCTL" --socket "$T/live.sock" queue --json >/dev/null 2>&1
}
assert_true "the daemon answers on its socket" wait_until 15 answers
# What the check must leave as it is.
snapshot() {
    (
        cd "$T/live.data"
        find . -printf '%p %i %s %T@\n' | sort
    )
    stat -c '%i %Y' "$T/live.sock"
}
before=$(snapshot)
log_before=$(cat "$T/live.log")
check "$PRIMARY" "$T/live.conf"
assert_exit "beside the daemon: ok" 0
assert_match "beside the daemon: the success line" "$OUT" "$(ok_re "$T/live.conf" primary primary)"
assert_eq "beside the daemon: nothing on stderr" "" "$ERR"
check "$REPLICA" "$T/live.conf"
assert_exit "beside the daemon, by smtpsync-replica: ok" 0
sleep 0.3
assert_true "the daemon still runs" kill -0 "${PID[live]}"
assert_eq "data_dir, lock and socket untouched" "$before" "$(snapshot)"
assert_eq "the daemon logged nothing more" "$log_before" "$(cat "$T/live.log")"
run "$SMTPSYNCCTL" --socket "$T/live.sock" queue --json
assert_exit "the daemon still answers on its socket" 0
run "$SMTPSYNCCTL" --server "127.0.0.1:$PORT" --server-id primary --ca "$PKI/ca.pem" \
    --cert "$PKI/alice.pem" --key "$PKI/alice.key" status --json
assert_exit "the daemon still answers over mutual TLS" 0
# The check makes no call that binds, listens, locks or creates a directory.
if command -v strace >/dev/null && strace -qq -o /dev/null true 2>/dev/null; then
    ASAN_OPTIONS=detect_leaks=0 strace -f -qq -e trace=bind,listen,flock,mkdir,mkdirat,unlink,unlinkat \
        -o "$T/trace" "$PRIMARY" --config "$T/live.conf" --check-config >/dev/null 2>&1
    assert_eq "under strace: no bind, listen, flock, mkdir or unlink" "" \
        "$(grep -Ev '^[0-9]+ +\+\+\+ exited' "$T/trace" || true)"
else
    echo "strace is missing or cannot trace here: system calls not checked" >&2
fi
# A bad file beside it: the check fails, the daemon is not told anything.
printf '[sender]\nmax_sessions = none\n' >>"$T/live.conf"
check "$PRIMARY" "$T/live.conf"
assert_exit "beside the daemon, a bad file: exit 2" 2
assert_match "beside the daemon, a bad file: the problem" "$ERR" "^smtpsync-primary: $T/live.conf:14: .*max_sessions"
assert_true "the daemon still runs after a failed check" kill -0 "${PID[live]}"
kill -TERM "${PID[live]}"
rc=0
wait "${PID[live]}" || rc=$?
unset 'PID[live]'
assert_eq "the daemon stops cleanly" 0 "$rc"
assert_not_contains "the daemon: no sanitizer report" "$(cat "$T/live.log")" "Sanitizer"
finish
