#!/usr/bin/env bash
# smtpsyncctl's remote mode: --server HOST:PORT with --ca, --cert and --key,
# or [ctl] of --config FILE / SMTPSYNC_CONFIG, and the node id the server
# must prove (--server-id / server_id, else the DNS name of --server; an IP
# address needs an id). First what goes wrong before
# a daemon answers (missing or unreadable files, bad [ctl] files, nothing
# listening, not TLS, a server of another CA, a server that never answers):
# each exits 1 or 2 with one clear line. Then, with a real smtpsync-primary
# and smtpsync-replica on loopback, every verb through the daemon: the same
# output as local mode, roles (an operator refused every write and told the
# role it needs), the password never shown, a replica refusing writes, a
# node of the CA that is not the one named refused before anything is sent.
source "$(dirname "$0")/lib.sh"

TOOLS=$(cd "$(dirname "$0")/../tools" && pwd)
PW='Remote-4471-heron-UNIQUE-pw'

PKI=$T/pki
"$TOOLS/make-pki.sh" -a alice -a monitor -a stranger "$PKI" primary site-b >/dev/null ||
    { echo "make-pki.sh failed" >&2; exit 1; }

# A free TCP port on loopback (nothing listens on it afterwards).

# admin NAME ARGS...: smtpsyncctl as admin NAME against $SERVER, which
# must be node $SERVER_ID.
admin() {
    local who=$1
    shift
    run "$SMTPSYNCCTL" --server "$SERVER" --server-id "$SERVER_ID" --ca "$PKI/ca.pem" \
        --cert "$PKI/$who.pem" --key "$PKI/$who.key" "$@"
}

admin_in() {
    local input=$1 who=$2
    shift 2
    run_in "$input" "$SMTPSYNCCTL" --server "$SERVER" --server-id "$SERVER_ID" \
        --ca "$PKI/ca.pem" --cert "$PKI/$who.pem" --key "$PKI/$who.key" "$@"
}
SERVER_ID=primary

# ---- the command line --------------------------------------------------

run "$SMTPSYNCCTL" --help
assert_exit "--help" 0
assert_contains "--help names --server" "$OUT" "--server HOST:PORT"
assert_contains "--help names --config" "$OUT" "--config FILE"
assert_contains "--help names --server-id" "$OUT" "--server-id NODE"

run "$SMTPSYNCCTL" --server 127.0.0.1:1 settings show
assert_exit "no certificate files" 2
assert_contains "no certificate files" "$ERR" \
    "smtpsyncctl: remote mode needs --ca, --cert and --key (missing: --ca --cert --key)"
run "$SMTPSYNCCTL" --server 127.0.0.1:1 --ca "$PKI/ca.pem" --cert "$PKI/alice.pem" history
assert_exit "no --key" 2
assert_contains "no --key" "$ERR" "(missing: --key)"
run "$SMTPSYNCCTL" --ca "$PKI/ca.pem" --cert "$PKI/alice.pem" --key "$PKI/alice.key" status
assert_exit "certificates without --server" 2
assert_contains "certificates without --server" "$ERR" "give --server HOST:PORT too"
run "$SMTPSYNCCTL" --server nocolon --ca "$PKI/ca.pem" --cert "$PKI/alice.pem" \
    --key "$PKI/alice.key" status
assert_exit "--server without a port" 2
assert_contains "--server without a port" "$ERR" "--server: 'nocolon' is not HOST:PORT"
run "$SMTPSYNCCTL" --server 127.0.0.1:1 --server-id primary --ca "$T/none.pem" \
    --cert "$PKI/alice.pem" --key "$T/none.key" status
assert_exit "unreadable files" 1
assert_contains "unreadable --ca" "$ERR" "--ca $T/none.pem: No such file or directory"
assert_contains "unreadable --key" "$ERR" "--key $T/none.key: No such file or directory"
run "$SMTPSYNCCTL" --server 127.0.0.1:1 --server-id primary --ca "$PKI/ca.pem" \
    --cert "$PKI/alice.pem" --key "$PKI/monitor.key" status
assert_exit "a key that is not the certificate's" 1
assert_contains "a key that is not the certificate's" "$ERR" \
    "smtpsyncctl: cannot use --ca, --cert and --key:"
# The server's identity: an IP address names no node.
for addr in 127.0.0.1:1 '[::1]:1' '::1:1'; do
    run "$SMTPSYNCCTL" --server "$addr" --ca "$PKI/ca.pem" --cert "$PKI/alice.pem" \
        --key "$PKI/alice.key" status
    assert_exit "IP $addr without --server-id" 2
    assert_contains "IP $addr without --server-id" "$ERR" \
        "smtpsyncctl: --server is an IP address: give --server-id NODE so the server's certificate can be checked"
done
run "$SMTPSYNCCTL" --server 127.0.0.1:1 --server-id '' --ca "$PKI/ca.pem" \
    --cert "$PKI/alice.pem" --key "$PKI/alice.key" status
assert_exit "empty --server-id" 2
assert_contains "empty --server-id" "$ERR" "--server-id: '' is not a node id"
run "$SMTPSYNCCTL" --server 'bad_host!:1' --ca "$PKI/ca.pem" --cert "$PKI/alice.pem" \
    --key "$PKI/alice.key" status
assert_exit "--server with a bad host" 2
assert_contains "--server with a bad host" "$ERR" "--server: 'bad_host!:1' is not HOST:PORT:"
run "$SMTPSYNCCTL" --server-id primary --ca "$PKI/ca.pem" --cert "$PKI/alice.pem" \
    --key "$PKI/alice.key" status
assert_exit "--server-id without --server" 2
assert_contains "--server-id without --server" "$ERR" "give --server HOST:PORT too"
run "$SMTPSYNCCTL" --server-id primary --socket "$T/s.sock" queue
assert_exit "--server-id with a local verb" 2
run "$SMTPSYNCCTL" --server 127.0.0.1:1 --data-dir "$DATA" status
assert_exit "--server and --data-dir" 2
assert_contains "--server and --data-dir" "$ERR" "--data-dir and --server exclude each other"
run "$SMTPSYNCCTL" --server 127.0.0.1:1 --socket "$T/s.sock" queue
assert_exit "queue is local" 2
assert_contains "queue is local" "$ERR" "queue works with the local daemon (--socket)"
run "$SMTPSYNCCTL" --server 127.0.0.1:1 --timeout 0 status
assert_exit "--timeout 0" 2
run "$SMTPSYNCCTL" --server 127.0.0.1:1 --timeout soon status
assert_exit "--timeout soon" 2

# ---- [ctl] in a config file ---------------------------------------------

mkdir -p "$T/etc"
cp "$PKI/ca.pem" "$PKI/alice.pem" "$PKI/alice.key" "$T/etc/"
cat >"$T/etc/bad.ini" <<EOF
; admin's settings
[ctl]
server = 127.0.0.1:1
sever = 127.0.0.1:2
ca = ca.pem
ca = other.pem
EOF
run "$SMTPSYNCCTL" --config "$T/etc/bad.ini" status
assert_exit "bad [ctl]" 2
assert_contains "unknown key, with its line" "$ERR" \
    "smtpsyncctl: $T/etc/bad.ini:4: unknown key 'sever' in [ctl] (known: server, server_id, ca, cert, key)"
assert_contains "key twice" "$ERR" "$T/etc/bad.ini:6: key 'ca' given twice in [ctl]"
printf '[node]\nid = x\n' >"$T/etc/noctl.ini"
run "$SMTPSYNCCTL" --config "$T/etc/noctl.ini" status
assert_exit "no [ctl] section" 2
assert_contains "no [ctl] section" "$ERR" "no [ctl] section"
printf '[ctl]\nserver_id = primary\nca = ca.pem\n' >"$T/etc/idonly.ini"
run "$SMTPSYNCCTL" --config "$T/etc/idonly.ini" status
assert_exit "server_id without server" 2
assert_contains "server_id without server" "$ERR" "server_id in [ctl] is the id of the node at server"
printf '[ctl\nserver = x:1\n' >"$T/etc/broken.ini"
run "$SMTPSYNCCTL" --config "$T/etc/broken.ini" status
assert_exit "not INI" 2
assert_contains "not INI" "$ERR" "$T/etc/broken.ini:1: not a valid INI line"
run "$SMTPSYNCCTL" --config "$T/etc/missing.ini" status
assert_exit "missing config file" 1
assert_contains "missing config file" "$ERR" "--config"
run "$SMTPSYNCCTL" --config "$T/etc" status
assert_exit "config is a directory" 1

# Files named relative to the config file, found from anywhere.
PORT=$(free_port)
printf '[ctl]\nserver = 127.0.0.1:%s\nserver_id = primary\nca = ca.pem\ncert = alice.pem\nkey = alice.key\n' \
    "$PORT" >"$T/etc/ctl.ini"
run "$SMTPSYNCCTL" --config "$T/etc/ctl.ini" status
assert_exit "nothing listening" 1
assert_contains "nothing listening" "$ERR" \
    "smtpsyncctl: cannot connect to 127.0.0.1:$PORT: connection refused"
assert_eq "one line" 1 "$(printf '%s\n' "$ERR" | wc -l)"
SMTPSYNC_CONFIG=$T/etc/ctl.ini run "$SMTPSYNCCTL" history
assert_exit "SMTPSYNC_CONFIG" 1
assert_contains "SMTPSYNC_CONFIG" "$ERR" "cannot connect to 127.0.0.1:$PORT"
# The command line wins over the file.
run "$SMTPSYNCCTL" --config "$T/etc/ctl.ini" --server 127.0.0.1:1 --server-id primary status
assert_contains "--server over [ctl]" "$ERR" "cannot connect to 127.0.0.1:1"
# ... and server_id of [ctl] names the file's server, not another one.
run "$SMTPSYNCCTL" --config "$T/etc/ctl.ini" --server 127.0.0.1:1 status
assert_exit "server_id of [ctl] is not for --server" 2
assert_contains "server_id of [ctl] is not for --server" "$ERR" "--server is an IP address"
# A DNS name is the id by default; localhost resolves, nothing listens.
run "$SMTPSYNCCTL" --config "$T/etc/ctl.ini" --server "localhost:$PORT" status
assert_exit "a DNS name needs no --server-id" 1
assert_contains "a DNS name needs no --server-id" "$ERR" "cannot connect to localhost:$PORT"
# --data-dir wins over a server from SMTPSYNC_CONFIG (it is only a default).
SMTPSYNC_CONFIG=$T/etc/ctl.ini run "$SMTPSYNCCTL" --data-dir "$DATA" history
assert_contains "--data-dir over SMTPSYNC_CONFIG" "$ERR" "no such directory"

# ---- servers that are not what they should be ---------------------------

# One that accepts and never says anything.
SILENT=$(free_port)
python3 -c '
import socket, sys, time
s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("127.0.0.1", int(sys.argv[1]))); s.listen(8)
conns = []
while True:
    c, _ = s.accept(); conns.append(c)
' "$SILENT" &
PID['silent']=$!
# One that speaks SMTP, not TLS.
PLAIN=$(free_port)
python3 -c '
import socket, sys
s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("127.0.0.1", int(sys.argv[1]))); s.listen(8)
while True:
    c, _ = s.accept()
    try:
        c.sendall(b"220 mail.test ESMTP\r\n" * 4); c.recv(4096)
    except OSError:
        pass
    c.close()
' "$PLAIN" &
PID['plain']=$!
# A TLS server whose certificate comes from another CA.
FOREIGN=$(free_port)
openssl s_server -quiet -accept "127.0.0.1:$FOREIGN" -cert "$PKI/foreign.pem" \
    -key "$PKI/foreign.key" -Verify 1 -CAfile "$PKI/ca.pem" </dev/null >/dev/null 2>&1 &
PID['foreign']=$!
sleep 0.5

SERVER=127.0.0.1:$SILENT
START=$(date +%s)
admin alice --timeout 1 status
assert_exit "silent server" 1
assert_contains "silent server" "$ERR" "cannot connect to 127.0.0.1:$SILENT: timed out"
assert_true "silent server: --timeout bounds the wait" test $(($(date +%s) - START)) -le 4

SERVER=127.0.0.1:$PLAIN
admin alice status
assert_exit "not TLS" 1
assert_contains "not TLS" "$ERR" "smtpsyncctl: TLS with 127.0.0.1:$PLAIN failed:"

SERVER=127.0.0.1:$FOREIGN
admin alice status
assert_exit "server of another CA" 1
assert_contains "server of another CA" "$ERR" "smtpsyncctl: TLS with 127.0.0.1:$FOREIGN failed:"
assert_contains "server of another CA: what to check" "$ERR" "are --ca, --cert and --key"

for name in silent plain foreign; do
    kill "${PID[$name]}" 2>/dev/null
    wait "${PID[$name]}" 2>/dev/null
    unset "PID[$name]"
done

# ---- local mode: status, and what needs a daemon -------------------------

printf '%s\n' "$PW" >"$T/pw"
chmod 600 "$T/pw"
ctl settings set --instance primary --hostname mail.example.com --from noreply@example.com \
    --test-address ops@example.com
assert_exit "local set" 0
ctl settings save --comment "local"
assert_exit "local save" 0
ctl status
assert_exit "local status" 0
assert_contains "local status: revision" "$OUT" "revision:    1 (hash"
assert_contains "local status: the outbox is the daemon's" "$OUT" \
    "outbox:      not read in local mode"
ctl status --json
assert_eq "local status --json: outbox_depth null" null "$(json 'd["node"]["outbox_depth"]')"
ctl status --json
assert_exit "local status --json" 0
assert_eq "local status --json: revision" 1 "$(json 'd["node"]["revision"]')"
assert_eq "local status --json: replicas" "[]" "$(json 'd["replicas"]')"
ctl sync
assert_exit "local sync" 2
assert_contains "local sync" "$ERR" "sync needs --server HOST:PORT"
ctl promote
assert_exit "local promote" 2
assert_contains "local promote" "$ERR" "promote needs --server HOST:PORT"
ctl settings save --apply-to-replicas
assert_exit "local --apply-to-replicas without a membership" 1
assert_contains "local --apply-to-replicas without a membership" "$ERR" "names no primary"

# ---- a real primary and replica ------------------------------------------

# The daemons take part only once they serve the admin API on [node] listen.
if [ ! -x "$PRIMARY" ] || [ ! -x "$REPLICA" ] || ! grep -qa 'super_admins' "$PRIMARY"; then
    echo "skipping the daemon part: smtpsync-primary does not serve the admin API" >&2
    finish
fi

# write_config NAME ID PORT [LINES...]
write_config() {
    local name=$1 id=$2 port=$3
    shift 3
    {
        printf '[node]\nid = %s\ndata_dir = %s\nsubmit_socket = %s\n' "$id" "$T/$name.data" \
            "$T/$name.sock"
        printf 'listen = 127.0.0.1:%s\n' "$port"
        printf '\n[tls]\nca = %s\ncert = %s\nkey = %s\n' "$PKI/ca.pem" "$PKI/$id.pem" "$PKI/$id.key"
        printf '\n[admin]\nsuper_admins = alice\noperators = monitor\n'
        for line in "$@"; do
            printf '%s\n' "$line"
        done
    } >"$T/$name.ini"
}

# start BIN NAME PORT ID: the daemon in the background, up when status
# answers over mTLS.
declare -A UP_AT=() UP_ID=()
daemon_up() {
    "$SMTPSYNCCTL" --server "127.0.0.1:${UP_AT[$1]}" --server-id "${UP_ID[$1]}" --ca "$PKI/ca.pem" \
        --cert "$PKI/monitor.pem" --key "$PKI/monitor.key" status >/dev/null 2>&1
}
start() {
    UP_AT[$2]=$3
    UP_ID[$2]=$4
    daemon_start "$1" "$2" "$T/$2.ini"
}

PPORT=$(free_port)
RPORT=$(free_port)
write_config primary primary "$PPORT" \
    '[replication]' 'interval = 600' 'jitter = 0' \
    '[replica "site-b"]' "address = 127.0.0.1:$RPORT"
write_config replica site-b "$RPORT" '[replication]' 'primary = primary'
start "$REPLICA" replica "$RPORT" site-b || finish
start "$PRIMARY" primary "$PPORT" primary || finish
SERVER=127.0.0.1:$PPORT
SERVER_ID=primary

# The server proves it is the node named, before anything is sent: a node
# of the same CA at the address (a stolen replica certificate, say) is
# refused, and a super-admin's password never reaches it.
SERVER_ID=site-b
admin_in "$PW" alice settings set --instance primary --port 25 --password-stdin
assert_exit "wrong --server-id" 1
assert_contains "wrong --server-id: says who is who" "$ERR" \
    "smtpsyncctl: 127.0.0.1:$PPORT is not the node expected: the server's certificate is for 'primary', not 'site-b'"
assert_eq "wrong --server-id: one line" 1 "$(printf '%s\n' "$ERR" | wc -l)"
SERVER=127.0.0.1:$RPORT SERVER_ID=primary
admin alice status
assert_exit "the replica posing as the primary" 1
assert_contains "the replica posing as the primary" "$ERR" \
    "the server's certificate is for 'site-b', not 'primary'"
SERVER=127.0.0.1:$PPORT SERVER_ID=primary
admin monitor settings show --draft
assert_exit "nothing was written by the refused request" 0
assert_eq "nothing was written by the refused request" "no drafts" "$OUT"
# The host of --server is the id by default: localhost is not 'primary'.
run "$SMTPSYNCCTL" --server "localhost:$PPORT" --ca "$PKI/ca.pem" --cert "$PKI/monitor.pem" \
    --key "$PKI/monitor.key" status
assert_exit "DNS name by default" 1
assert_contains "DNS name by default" "$ERR" "the server's certificate is for 'primary', not 'localhost'"
run "$SMTPSYNCCTL" --server "localhost:$PPORT" --server-id primary --ca "$PKI/ca.pem" \
    --cert "$PKI/monitor.pem" --key "$PKI/monitor.key" status
assert_exit "DNS name with --server-id" 0
# server_id in [ctl], with the file's server.
printf '[ctl]\nserver = 127.0.0.1:%s\nserver_id = primary\nca = %s\ncert = %s\nkey = %s\n' \
    "$PPORT" "$PKI/ca.pem" "$PKI/monitor.pem" "$PKI/monitor.key" >"$T/etc/good.ini"
run "$SMTPSYNCCTL" --config "$T/etc/good.ini" status
assert_exit "server_id in [ctl]" 0
assert_contains "server_id in [ctl]" "$OUT" "node:        primary (primary)"
sed -i 's/^server_id = .*/server_id = site-b/' "$T/etc/good.ini"
run "$SMTPSYNCCTL" --config "$T/etc/good.ini" status
assert_exit "wrong server_id in [ctl]" 1
assert_contains "wrong server_id in [ctl]" "$ERR" "certificate is for 'primary', not 'site-b'"
run "$SMTPSYNCCTL" --config "$T/etc/good.ini" --server-id primary status
assert_exit "--server-id over [ctl]" 0

# Remote set, password through a file, never in argv; the same lines as local mode.
admin alice settings set --instance primary --hostname mail.example.com --port 587 \
    --from noreply@example.com --test-address ops@example.com --logon --user mailer \
    --password-file "$T/pw" --tls-mode starttls
assert_exit "remote set" 0
assert_eq "remote set: output" "draft saved for instance primary" "$OUT"
assert_contains "remote set: what is still needed" "$ERR" "still needed before save:"
admin alice settings set --instance primary --port 99999 --hostname 'bad host'
assert_exit "remote set: bad values" 1
assert_contains "remote set: bad port" "$ERR" "smtpsyncctl: port:"
assert_contains "remote set: nothing written" "$ERR" "nothing was written"
admin alice settings set --instance primary --allow-plaintext-auth on --tls-mode ''
assert_exit "remote set: complete" 0
admin alice settings show --draft
assert_exit "remote show --draft" 0
assert_contains "remote show: password masked" "$OUT" "password: ********"
assert_not_contains "remote show: no password" "$OUT" "$PW"
admin monitor settings show --draft --json
assert_exit "operator show --draft --json" 0
assert_eq "show --json: masked" "********" "$(json 'd["instances"]["primary"]["password"]')"
assert_eq "show --json: draft" "True" "$(json 'str(d["draft"])')"

# An operator reads but does not write.
admin monitor settings save
assert_exit "operator save" 1
assert_contains "operator save" "$ERR" "smtpsyncctl: this needs the super-admin role"
admin_in "$PW" monitor settings set --instance primary --port 25 --password-stdin
assert_exit "operator set" 1
assert_contains "operator set" "$ERR" "this needs the super-admin role"
for verb in "settings discard" "rollback 1" "sync" "promote" "settings test --instance primary"; do
    # shellcheck disable=SC2086
    admin monitor $verb
    assert_exit "operator $verb" 1
    assert_contains "operator $verb" "$ERR" "this needs the super-admin role"
done
# A certificate of the CA with no role is refused at the handshake.
admin stranger status
assert_exit "no role" 1
assert_contains "no role" "$ERR" "your certificate is not accepted"

# Save, history, diff, rollback: the same output as local mode.
admin alice settings save --comment "first remote"
assert_exit "remote save" 0
assert_eq "remote save" "saved revision 1" "$OUT"
admin alice settings set --instance primary --port 2525
admin alice settings save --json
assert_eq "remote save --json" 2 "$(json 'd["revision"]')"
admin monitor history
assert_exit "remote history" 0
assert_contains "remote history: header" "$OUT" "REVISION"
assert_contains "remote history: actor" "$OUT" "alice"
assert_contains "remote history: comment" "$OUT" "first remote"
admin monitor history --json --limit 1
assert_eq "remote history --limit" 1 "$(json 'len(d)')"
admin monitor diff 1 2
assert_exit "remote diff" 0
assert_eq "remote diff" "primary.port: 587 -> 2525" "$OUT"
admin monitor diff 1 7
assert_exit "remote diff beyond the head" 1
assert_contains "remote diff beyond the head" "$ERR" "R2: revision 7 does not exist (the newest is 2)"
admin alice rollback 1 --comment back
assert_exit "remote rollback" 0
assert_eq "remote rollback" "rolled back to 1 as revision 3" "$OUT"
admin monitor settings show --revision 2 --json
assert_eq "remote show --revision" 2525 "$(json 'd["instances"]["primary"]["port"]')"
admin alice settings discard
assert_exit "remote discard without drafts" 1
assert_contains "remote discard without drafts" "$ERR" "there are no drafts to discard"

# Import a certificate remotely.
admin alice settings import-cert --instance primary "$CERTS/ca.pem"
assert_exit "remote import-cert" 0
assert_contains "remote import-cert" "$OUT" "certificate imported into the draft for instance primary"
assert_contains "remote import-cert: summary" "$OUT" "certificate 1:"
admin alice settings discard --instance primary
assert_eq "remote discard" "discarded the draft of instance primary" "$OUT"

# Status, sync and --apply-to-replicas.
admin monitor status
assert_exit "remote status" 0
assert_contains "remote status: node" "$OUT" "node:        primary (primary)"
assert_contains "remote status: replica" "$OUT" "site-b"
admin monitor status --json
assert_exit "remote status --json" 0
assert_eq "status --json: primary id" primary "$(json 'd["primary"]["id"]')"
assert_eq "status --json: replica id" site-b "$(json 'd["replicas"][0]["id"]')"
for key in id state applied_revision primary_revision lag_revisions lag_seconds last_contact \
    last_success last_error next_push cert_expiry outbox_depth; do
    assert_eq "status --json: $key" True "$(json "str('$key' in d['replicas'][0])")"
done
admin alice sync --replica site-b
assert_exit "remote sync" 0
assert_contains "remote sync" "$OUT" "replica site-b:"
admin alice sync --replica nosuch
assert_exit "remote sync of an unknown replica" 1
admin alice settings save --apply-to-replicas --comment everywhere
assert_exit "remote --apply-to-replicas" 0
admin monitor settings show --instance site-b --json
assert_eq "applied to site-b: host" mail.example.com "$(json 'd["instances"]["site-b"]["hostname"]')"
assert_eq "applied to site-b: masked" "********" "$(json 'd["instances"]["site-b"]["password"]')"

# The replica answers status itself and refuses writes.
SERVER=127.0.0.1:$RPORT SERVER_ID=site-b
admin monitor status
assert_exit "replica status" 0
assert_contains "replica status" "$OUT" "site-b (replica)"
admin alice settings set --instance site-b --port 25
assert_exit "replica refuses a write" 1
assert_contains "replica refuses a write" "$ERR" "is a replica"

# Promotion through the replica's admin API: it becomes the primary with a
# new epoch, and takes writes.
admin monitor promote
assert_exit "operator promote" 1
assert_contains "operator promote" "$ERR" "this needs the super-admin role"
admin alice promote
assert_exit "promote the replica" 0
assert_contains "promote the replica" "$OUT" "promoted site-b to primary: epoch 2"
admin alice promote
assert_exit "promote a primary" 1
assert_contains "promote a primary" "$ERR" "not promoted:"
admin monitor status --json
assert_eq "promoted: role" primary "$(json 'd["node"]["role"]')"
assert_eq "promoted: epoch" 2 "$(json 'd["node"]["epoch"]')"

# Both daemons stop cleanly; nothing ever showed the password.
for name in primary replica; do
    kill -TERM "${PID[$name]}"
    rc=0
    wait "${PID[$name]}" || rc=$?
    unset "PID[$name]"
    assert_eq "$name: exit status after SIGTERM" 0 "$rc"
    assert_not_contains "$name: no sanitizer report" "$(cat "$T/$name.log")" "Sanitizer"
done
for f in "$T"/*.log "$T"/*.out; do
    assert_not_contains "no password in $(basename "$f")" "$(cat "$f")" "$PW"
done
finish
