#!/usr/bin/env bash
# Certificate rotation on a running deployment, with the operator's tool
# (deploy/smtpsync-pki) and real daemons: a primary and one replica over
# mutual TLS, every certificate made by the tool.
#
# 1. `rotate site-b` and `rotate primary` (a new key and serial, 400 days),
#    SIGHUP both: each logs that it reloaded its TLS files, serves the new
#    certificate on its port (the serial openssl s_client sees is the new
#    ID.pem's), and a settings change saved afterwards reaches the replica
#    (in-sync at the new revision: no push lost across the swap). Then five
#    saves, each followed at once by SIGHUP to both while its push is under
#    way: the replica ends in-sync at the last, the open connection is kept
#    and no push is refused.
# 2. A rotation whose new certificate is broken (ID.pem truncated, as by a
#    full disk) + SIGHUP: the node logs an error, keeps serving the
#    certificate loaded before, and pushes keep working.
set -euo pipefail
source "$(dirname "$0")/repl_lib.sh"

PKI_TOOL=${SMTPSYNC_SOURCE:-$(cd "$(dirname "$0")/../.." && pwd)}/deploy/smtpsync-pki

# repl_lib.sh's helpers read $PKI: the deployment is the tool's instead of
# make-pki.sh's.
PKI=$T/deploy-pki
pki() {
    "$PKI_TOOL" -d "$PKI" "$@" >>"$T/pki.out" 2>&1 || {
        fail "smtpsync-pki $*: $(tail -n 5 "$T/pki.out")"
        finish
    }
}
pki init --cn "rotation test CA"
pki node primary --ip 127.0.0.1
pki node site-b --ip 127.0.0.1
pki admin alice --role super-admin
pki admin monitor --role operator
assert_false "the tool prints no key material" grep -q "PRIVATE KEY" "$T/pki.out"

# served_serial NAME: the serial of the certificate NAME presents on its
# port to a client with an admin certificate.
served_serial() {
    openssl s_client -connect "127.0.0.1:${NODE_PORT[$1]}" -CAfile "$PKI/ca.pem" \
        -cert "$PKI/alice.pem" -key "$PKI/alice.key" -verify_return_error </dev/null 2>/dev/null |
        openssl x509 -noout -serial 2>/dev/null || true
}

file_serial() {
    openssl x509 -in "$1" -noout -serial
}

# shellcheck disable=SC2317 # called through wait_until / assert_false
serves() { # NAME SERIAL
    [ "$(served_serial "$1")" = "$2" ]
}

# in_sync_at REV: the primary reports site-b in-sync with REV applied.
# shellcheck disable=SC2317 # called through wait_until
in_sync_at() {
    [ "$(replica_field primary site-b state)" = in-sync ] &&
        [ "$(replica_field primary site-b applied_revision)" = "$1" ]
}

# push_reaches WHAT: a change saved on the primary now reaches site-b.
push_reaches() {
    save_change primary "$1" || return 0
    wait_same 20 primary site-b
    if wait_until 10 in_sync_at "$SAVED_REV"; then
        pass
    else
        fail "$1: site-b not in-sync at revision $SAVED_REV: state [$(replica_field primary site-b state)] applied [$(replica_field primary site-b applied_revision)] last_error [$(replica_field primary site-b last_error)]"
    fi
}

node_config site-b replica '[replication]' 'primary = primary'
node_config primary primary '[replication]' 'interval = 600' 'jitter = 0' 'push_on_commit = yes' \
    '[replica "site-b"]' "address = 127.0.0.1:${NODE_PORT[site-b]}"

step "a primary and a replica with the tool's certificates"
node_start site-b || finish
node_start primary || finish
push_reaches "before any rotation"
for n in primary site-b; do
    assert_eq "$n serves its certificate" "$(file_serial "$PKI/$n.pem")" "$(served_serial "$n")"
done

step "rotate site-b and primary, SIGHUP both"
declare -A OLD_SERIAL=()
for n in site-b primary; do
    OLD_SERIAL[$n]=$(file_serial "$PKI/$n.pem")
    pki rotate "$n" --days 400
    assert_false "$n: rotate made a new serial" test "${OLD_SERIAL[$n]}" = "$(file_serial "$PKI/$n.pem")"
    log_mark "$n"
    kill -HUP "${NODE_PID[$n]}"
done
assert_true "rotate told the operator to reload" grep -q "reload the daemon: systemctl reload smtpsync-primary (or kill -HUP PID)" "$T/pki.out"
for n in site-b primary; do
    if wait_until 10 log_has "$n" "reload: TLS files reloaded (certificate id '$n')"; then
        pass
    else
        fail "$n did not log the TLS reload: $(log_since "$n" | tail -n 10)"
    fi
    assert_false "$n: no error on reload" log_has "$n" "cannot load the [tls] files"
    new=$(file_serial "$PKI/$n.pem")
    if wait_until 5 serves "$n" "$new"; then
        pass
    else
        fail "$n serves [$(served_serial "$n")], not the rotated certificate's $new"
    fi
    assert_false "$n no longer serves the old certificate" serves "$n" "${OLD_SERIAL[$n]}"
done
# The node's own certificate in status is the new one (400 days, against
# the 825 of the first).
not_after=$(openssl x509 -in "$PKI/primary.pem" -noout -enddate -dateopt iso_8601)
not_after=${not_after#notAfter=}
as monitor primary status --json
assert_exit "status after the rotation" 0
assert_eq "status: cert_expiry is the rotated certificate's" "${not_after/ /T}" \
    "$(json 'd["node"]["cert_expiry"]')"

step "a change saved after the rotation reaches the replica"
push_reaches "after the rotation"

step "SIGHUP on both while pushes are under way: none lost, no connection dropped"
for n in primary site-b; do log_mark "$n"; done
for i in 1 2 3 4 5; do
    # push_on_commit: the Delta leaves as the save returns, and the reloads
    # land while it is on the wire or being applied.
    save_change primary "during reload $i" || break
    kill -HUP "${NODE_PID[primary]}" "${NODE_PID[site-b]}"
done
wait_same 20 primary site-b
if wait_until 10 in_sync_at "$SAVED_REV"; then
    pass
else
    fail "after the reloads: site-b not in-sync at $SAVED_REV: $(replica_field primary site-b state)"
fi
for n in primary site-b; do
    assert_true "$n reloaded meanwhile" log_has "$n" "reload: "
done
assert_false "the primary's connection to site-b was not dropped" log_has primary "connection to 127.0.0.1"
assert_false "no push refused" log_has primary "refused the push"

step "a broken rotation (truncated site-b.pem) + SIGHUP keeps the certificate loaded before"
good_serial=$(file_serial "$PKI/site-b.pem")
pki rotate site-b
head -c 200 "$PKI/site-b.pem" >"$T/truncated.pem"
mv -f "$T/truncated.pem" "$PKI/site-b.pem"
log_mark site-b
kill -HUP "${NODE_PID[site-b]}"
if wait_until 10 log_has site-b "reload: keeping the TLS files loaded before"; then
    pass
else
    fail "site-b did not log that it keeps its TLS files: $(log_since site-b | tail -n 10)"
fi
assert_true "site-b says why" log_has site-b "cannot load the [tls] files"
assert_false "site-b did not claim a reload" log_has site-b "reload: TLS files reloaded"
assert_true "site-b still answers" node_answers site-b
assert_eq "site-b still serves the certificate loaded before" "$good_serial" "$(served_serial site-b)"
push_reaches "after a broken rotation"

step "the old pair back (ID.pem.old) + SIGHUP: reloaded"
cp "$PKI/site-b.pem.old" "$PKI/site-b.pem"
cp "$PKI/site-b.key.old" "$PKI/site-b.key"
log_mark site-b
kill -HUP "${NODE_PID[site-b]}"
assert_true "site-b reloads the restored pair" wait_until 10 log_has site-b \
    "reload: TLS files reloaded (certificate id 'site-b')"
assert_eq "site-b serves the restored certificate" "$good_serial" "$(served_serial site-b)"
push_reaches "after the restore"

step "stop"
node_stop primary
node_stop site-b
finish
