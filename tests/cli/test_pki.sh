#!/usr/bin/env bash
# deploy/smtpsync-pki, the operator's certificate tool: every command's
# success path checked with the openssl CLI (names and their order, EKU,
# signature, modes), every refusal (a second init, no CA, hostile ids and
# names, a duplicate, an unknown rotate, an openssl failure) with its exit
# status and one clear line, rotate keeping the names with a new key and
# serial, list; then a real smtpsync-primary serving with a node
# certificate of the tool and answering an admin certificate of the tool.
set -euo pipefail
source "$(dirname "$0")/lib.sh"

PKI_TOOL=$SRC/deploy/smtpsync-pki
D=$T/pki
unset SMTPSYNC_PKI_DIR

pki() {
    run "$PKI_TOOL" -d "$D" "$@"
}

mode_of() {
    stat -c %a "$1"
}

# ext FILE NAME: the value lines of extension NAME of certificate FILE.
ext() {
    openssl x509 -in "$1" -noout -ext "$2" 2>/dev/null | sed -n '2,$p' | sed 's/^ *//'
}

# shellcheck disable=SC2317 # called through assert_true / assert_false
quiet() {
    "$@" >/dev/null 2>&1
}

serial_of() {
    openssl x509 -in "$1" -noout -serial
}

pubkey_of() {
    openssl pkey -in "$1" -pubout 2>/dev/null
}

cert_pubkey_of() {
    openssl x509 -in "$1" -noout -pubkey
}

# The temporary files of a run never stay behind.
no_leftovers() {
    local left
    left=$(find "$D" -maxdepth 1 -name '.*' ! -name . -printf '%f ' 2>/dev/null || true)
    assert_eq "$1: no temporary files left in DIR" "" "$left"
}

# ---- usage -------------------------------------------------------------

run "$PKI_TOOL" --help
assert_exit "--help" 0
assert_contains "--help" "$OUT" "usage: smtpsync-pki [-d DIR] COMMAND"
run "$PKI_TOOL" -h
assert_exit "-h" 0
run "$PKI_TOOL"
assert_exit "no command" 2
assert_contains "no command: usage on stderr" "$ERR" "usage: smtpsync-pki"
run "$PKI_TOOL" -d "$D" frobnicate
assert_exit "unknown command" 2
assert_contains "unknown command" "$ERR" "unknown command 'frobnicate'"
assert_contains "unknown command: usage on stderr" "$ERR" "usage: smtpsync-pki"
assert_eq "unknown command: nothing on stdout" "" "$OUT"
run "$PKI_TOOL" -x init
assert_exit "unknown option" 2
run "$PKI_TOOL" -d
assert_exit "-d without a value" 2
pki list extra
assert_exit "list with an argument" 2

# ---- no CA yet ---------------------------------------------------------

pki node primary
assert_exit "node without a CA" 1
assert_eq "node without a CA" "smtpsync-pki: no CA in $D: run 'smtpsync-pki -d $D init' first" "$ERR"
pki admin alice
assert_exit "admin without a CA" 1
assert_contains "admin without a CA" "$ERR" "no CA in $D"
pki rotate primary
assert_exit "rotate without a CA" 1
assert_contains "rotate without a CA" "$ERR" "no CA in $D"
pki list
assert_exit "list without a CA" 1
assert_false "nothing was made without a CA" test -e "$D/primary.pem"

# ---- init --------------------------------------------------------------

for bad in 0 -5 abc 1.5 99999999 ""; do
    pki init --days "$bad"
    assert_exit "init --days '$bad'" 2
    assert_contains "init --days '$bad'" "$ERR" "bad --days"
done
pki init --days
assert_exit "init --days without a value" 2
pki init --cn "$(printf 'a\nb')"
assert_exit "init --cn with a newline" 2
pki init --bogus
assert_exit "init with an unknown argument" 2
assert_false "no CA after refused inits" test -e "$D/ca.key"

pki init --cn "Example ops/CA + test"
assert_exit "init" 0
assert_contains "init says where the CA is" "$OUT" "$D/ca.pem"
assert_eq "CA key mode" 600 "$(mode_of "$D/ca.key")"
assert_eq "DIR mode" 700 "$(mode_of "$D")"
assert_eq "CA subject (the -subj syntax escaped)" 'subject=CN = "Example ops/CA + test"' \
    "$(openssl x509 -in "$D/ca.pem" -noout -subject)"
assert_contains "CA basicConstraints" "$(ext "$D/ca.pem" basicConstraints)" "CA:TRUE"
assert_contains "CA key usage" "$(ext "$D/ca.pem" keyUsage)" "Certificate Sign"
assert_match "CA key is EC P-256 or P-384" "$(openssl pkey -in "$D/ca.key" -noout -text 2>&1)" \
    "NIST CURVE: P-(256|384)"
assert_true "CA self-signature verifies" quiet openssl verify -CAfile "$D/ca.pem" "$D/ca.pem"
assert_not_contains "init prints no key" "$OUT$ERR" "PRIVATE KEY"
ca_sum=$(sha256sum <"$D/ca.key")

pki init
assert_exit "init twice" 1
assert_eq "init twice" \
    "smtpsync-pki: $D already holds a CA ($D/ca.key); refusing to overwrite it. Remove $D to start over." \
    "$ERR"
assert_eq "init twice leaves the CA key" "$ca_sum" "$(sha256sum <"$D/ca.key")"

# SMTPSYNC_PKI_DIR, else ./pki.
SMTPSYNC_PKI_DIR=$T/envdir run "$PKI_TOOL" init --days 10
assert_exit "init in \$SMTPSYNC_PKI_DIR" 0
assert_true "CA in \$SMTPSYNC_PKI_DIR" test -f "$T/envdir/ca.pem"
mkdir "$T/cwd"
(cd "$T/cwd" && "$PKI_TOOL" init >/dev/null)
assert_true "CA in ./pki by default" test -f "$T/cwd/pki/ca.key"
assert_eq "./pki mode" 700 "$(mode_of "$T/cwd/pki")"

# ---- node --------------------------------------------------------------

pki node primary --ip 127.0.0.1 --dns primary.example.test --ip ::1
assert_exit "node" 0
no_leftovers "node"
assert_eq "node SANs, DNS:ID first, in the order given" \
    "DNS:primary, IP Address:127.0.0.1, DNS:primary.example.test, IP Address:0:0:0:0:0:0:0:1" \
    "$(ext "$D/primary.pem" subjectAltName)"
assert_eq "node EKU" "TLS Web Server Authentication, TLS Web Client Authentication" \
    "$(ext "$D/primary.pem" extendedKeyUsage)"
assert_contains "node is no CA" "$(ext "$D/primary.pem" basicConstraints)" "CA:FALSE"
assert_eq "node subject" "subject=CN = primary" "$(openssl x509 -in "$D/primary.pem" -noout -subject)"
run openssl verify -CAfile "$D/ca.pem" "$D/primary.pem"
assert_exit "node cert verifies against the CA" 0
run openssl verify -CAfile "$T/envdir/ca.pem" "$D/primary.pem"
assert_exit "node cert does not verify against another CA" 2
assert_eq "node key mode" 600 "$(mode_of "$D/primary.key")"
assert_eq "node key matches the cert" "$(cert_pubkey_of "$D/primary.pem")" "$(pubkey_of "$D/primary.key")"
assert_not_contains "node prints no key" "$OUT$ERR" "PRIVATE KEY"
assert_true "default lifetime is longer than 800 days" \
    quiet openssl x509 -in "$D/primary.pem" -noout -checkend $((800 * 86400))

pki node site-b --days 30
assert_exit "node --days" 0
assert_eq "node without extra names" "DNS:site-b" "$(ext "$D/site-b.pem" subjectAltName)"
assert_true "--days 30: valid in 29 days" quiet openssl x509 -in "$D/site-b.pem" -noout -checkend $((29 * 86400))
assert_false "--days 30: expired in 31 days" quiet openssl x509 -in "$D/site-b.pem" -noout -checkend $((31 * 86400))
assert_false "two certs, two serials" test "$(serial_of "$D/primary.pem")" = "$(serial_of "$D/site-b.pem")"

sum=$(sha256sum <"$D/primary.pem")
pki node primary
assert_exit "duplicate node" 1
assert_contains "duplicate node" "$ERR" "use 'rotate primary'"
assert_eq "duplicate node leaves the cert" "$sum" "$(sha256sum <"$D/primary.pem")"

long=$(printf 'n%.0s' {1..65})
for bad in "../x" "-rf" "" "$long" "a b" ".hidden" "a/b" "_x" "x;y" "é" "a,b"; do
    pki node "$bad"
    assert_exit "node id '$bad'" 2
    assert_match "node id '$bad': a clear message" "$ERR" "^smtpsync-pki: (bad id|id .* is longer|the id is empty)"
    assert_eq "node id '$bad': one line" 1 "$(wc -l <<<"$ERR")"
    pki admin "$bad"
    assert_exit "admin id '$bad'" 2
done
assert_eq "no file made for a bad id" "" "$(find "$T" -name 'x.pem' -o -name '*rf*' -o -name 'n*n.pem')"
pki node "${long:1}"
assert_exit "a 64-character id" 0
pki node ca
assert_exit "node 'ca'" 1

for bad in 300.1.1.1 1.2.3 abc 1.2.3.4/24 "::1::2" "1:2:3:4:5:6:7:8:9" 12345::1 "" "127.0.0.1, DNS:evil"; do
    pki node ipnode --ip "$bad"
    assert_exit "--ip '$bad'" 2
    assert_contains "--ip '$bad'" "$ERR" "bad --ip"
done
for bad in "a b" bad_name "x,IP:1.2.3.4" "-x.example" "a..b" "" "$(printf 'a\nsubjectAltName=DNS:evil')"; do
    pki node dnsnode --dns "$bad"
    assert_exit "--dns '$bad'" 2
done
for bad in 08.8.8.8 010.0.0.1 127.0.0.01 00.1.2.3; do
    pki node ipnode --ip "$bad"
    assert_exit "--ip '$bad' (leading zero)" 2
    assert_contains "--ip '$bad' (leading zero)" "$ERR" "no leading zeros"
done
pki node zero --ip 0.0.0.0 --ip 10.0.100.1
assert_exit "--ip with zero octets" 0
rm -f "$D/zero.pem" "$D/zero.key"
# A wildcard is refused, whatever files the current directory holds (a
# word split would glob '*' into them).
mkdir "$T/globdir"
: >"$T/globdir/mail"
for bad in "*.example.com" "*" "mail.*"; do
    (cd "$T/globdir" && "$PKI_TOOL" -d "$D" node wild --dns "$bad" >"$T/wild.out" 2>"$T/wild.err") && rc=0 || rc=$?
    assert_eq "--dns '$bad' in a directory with files" 2 "$rc"
done
assert_contains "--dns wildcard: says why" "$(cat "$T/wild.err")" "wildcards are not allowed"
assert_false "no cert for a wildcard" test -e "$D/wild.pem"
pki node ipnode --ip
assert_exit "--ip without a value" 2
pki node ipnode --nope
assert_exit "node with an unknown argument" 2
assert_false "no cert for refused nodes" test -e "$D/ipnode.pem"
pki node v6 --ip 2001:db8::10 --ip fe80::1:2
assert_exit "IPv6 names" 0
assert_eq "IPv6 names" "DNS:v6, IP Address:2001:DB8:0:0:0:0:0:10, IP Address:FE80:0:0:0:0:0:1:2" \
    "$(ext "$D/v6.pem" subjectAltName)"

# An openssl failure: its own message, no half-made pair.
cp "$D/ca.key" "$T/ca.key.good"
printf 'not a key\n' >"$D/ca.key"
pki node broken
assert_exit "openssl failure" 1
assert_contains "openssl failure names openssl" "$ERR" "openssl"
assert_false "openssl failure: no key" test -e "$D/broken.key"
assert_false "openssl failure: no cert" test -e "$D/broken.pem"
no_leftovers "openssl failure"
cp "$T/ca.key.good" "$D/ca.key"

# ---- admin -------------------------------------------------------------

pki admin alice --role super-admin
assert_exit "admin super-admin" 0
assert_contains "admin: the config line" "$OUT" "add 'alice' to [admin] super_admins in every node's config"
assert_eq "admin SAN" "DNS:alice" "$(ext "$D/alice.pem" subjectAltName)"
assert_eq "admin EKU" "TLS Web Client Authentication" "$(ext "$D/alice.pem" extendedKeyUsage)"
assert_eq "admin key mode" 600 "$(mode_of "$D/alice.key")"
assert_true "admin cert verifies" quiet openssl verify -CAfile "$D/ca.pem" "$D/alice.pem"
pki admin monitor --role operator
assert_exit "admin operator" 0
assert_contains "operator: the config line" "$OUT" "add 'monitor' to [admin] operators in every node's config"
pki admin bob --role root
assert_exit "admin --role root" 2
pki admin alice
assert_exit "duplicate admin" 1
assert_contains "duplicate admin" "$ERR" "use 'rotate alice'"

# ---- rotate ------------------------------------------------------------

old_serial=$(serial_of "$D/primary.pem")
old_pub=$(cert_pubkey_of "$D/primary.pem")
old_sans=$(ext "$D/primary.pem" subjectAltName)
cp "$D/primary.pem" "$T/primary.pem.before"
cp "$D/primary.key" "$T/primary.key.before"
pki rotate primary
assert_exit "rotate node" 0
no_leftovers "rotate"
assert_contains "rotate: reload hint" "$OUT" "reload the daemon: systemctl reload smtpsync-primary (or kill -HUP PID)"
assert_not_contains "rotate prints no key" "$OUT$ERR" "PRIVATE KEY"
assert_eq "rotate keeps the SANs and their order" "$old_sans" "$(ext "$D/primary.pem" subjectAltName)"
assert_eq "rotate keeps the EKU" "TLS Web Server Authentication, TLS Web Client Authentication" \
    "$(ext "$D/primary.pem" extendedKeyUsage)"
assert_false "rotate: new serial" test "$old_serial" = "$(serial_of "$D/primary.pem")"
assert_false "rotate: new key" test "$old_pub" = "$(cert_pubkey_of "$D/primary.pem")"
assert_eq "rotate: key matches the cert" "$(cert_pubkey_of "$D/primary.pem")" "$(pubkey_of "$D/primary.key")"
assert_true "rotate: verifies" quiet openssl verify -CAfile "$D/ca.pem" "$D/primary.pem"
assert_true "rotate: old cert kept" cmp -s "$T/primary.pem.before" "$D/primary.pem.old"
assert_true "rotate: old key kept" cmp -s "$T/primary.key.before" "$D/primary.key.old"
assert_eq "rotate: key mode" 600 "$(mode_of "$D/primary.key")"
assert_eq "rotate: old key mode" 600 "$(mode_of "$D/primary.key.old")"

pki rotate alice
assert_exit "rotate admin" 0
assert_eq "rotate admin keeps clientAuth only" "TLS Web Client Authentication" \
    "$(ext "$D/alice.pem" extendedKeyUsage)"
assert_eq "rotate admin keeps the SAN" "DNS:alice" "$(ext "$D/alice.pem" subjectAltName)"

pki rotate nosuch
assert_exit "rotate unknown" 1
assert_contains "rotate unknown" "$ERR" "no certificate $D/nosuch.pem"
pki rotate ca
assert_exit "rotate ca" 1
pki rotate "../primary"
assert_exit "rotate a bad id" 2
printf 'garbage\n' >"$D/junk.pem"
pki rotate junk
assert_exit "rotate of a file that is no certificate" 1
rm -f "$D/junk.pem"
# Names this tool never writes are not copied back into openssl's config.
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -subj /CN=odd -days 1 \
    -addext "subjectAltName = DNS:odd, URI:http://x/y" -keyout "$D/odd.key" -out "$D/odd.pem" 2>/dev/null
pki rotate odd
assert_exit "rotate of a certificate with other names" 1
assert_contains "rotate of a certificate with other names" "$ERR" "names this tool does not make"
rm -f "$D/odd.pem" "$D/odd.key"

# ---- list --------------------------------------------------------------

pki list
assert_exit "list" 0
assert_match "list: the CA" "$OUT" "^ca +ca +- +[0-9]{4}-[0-9]{2}-[0-9]{2}"
assert_match "list: a node with its names" "$OUT" \
    "^primary +node +DNS:primary,IP:127.0.0.1,DNS:primary.example.test,IP:0:0:0:0:0:0:0:1 +[0-9]{4}-"
assert_match "list: an admin" "$OUT" "^alice +admin +DNS:alice +[0-9]{4}-"
assert_not_contains "list: no .old files" "$OUT" ".old"
assert_eq "list: one line per cert" 7 "$(wc -l <<<"$OUT")"

# ---- half a CA, odd DIRs -----------------------------------------------

# What an init killed between its two renames leaves: init and node agree
# that it is half a CA, and say what to do.
H=$T/half
mkdir -m 700 "$H"
cp "$D/ca.key" "$H/ca.key"
run "$PKI_TOOL" -d "$H" init
assert_exit "init over a lone ca.key" 1
assert_eq "init over a lone ca.key: says so" \
    "smtpsync-pki: incomplete CA in $H: ca.key without ca.pem. Remove $H and run init again." "$ERR"
run "$PKI_TOOL" -d "$H" node n1
assert_exit "node with a lone ca.key" 1
assert_contains "node with a lone ca.key: the same words" "$ERR" "incomplete CA in $H: ca.key without ca.pem"
rm "$H/ca.key"
cp "$D/ca.pem" "$H/ca.pem"
run "$PKI_TOOL" -d "$H" admin a1
assert_exit "admin with a lone ca.pem" 1
assert_contains "admin with a lone ca.pem" "$ERR" "incomplete CA in $H: ca.pem without ca.key"
assert_false "nothing made with half a CA" test -e "$H/a1.pem"

# A DIR starting with '-' is a directory, not an option of mkdir, mktemp
# or openssl.
(cd "$T" && "$PKI_TOOL" -d -dashdir init >/dev/null 2>"$T/dash.err" &&
    "$PKI_TOOL" -d -dashdir node n1 --ip 127.0.0.1 >/dev/null 2>>"$T/dash.err") && rc=0 || rc=$?
assert_eq "a DIR starting with '-': init and node" 0 "$rc"
assert_eq "a DIR starting with '-': no error" "" "$(cat "$T/dash.err")"
assert_true "a DIR starting with '-': the files are in it" test -f "$T/-dashdir/n1.key"
assert_eq "a DIR starting with '-': mode 0700" 700 "$(mode_of "$T/-dashdir")"

# ---- a real daemon with the tool's certificates ------------------------

PRIMARY=${SMTPSYNC_PRIMARY:-}
if [ -z "$PRIMARY" ] || [ ! -x "$PRIMARY" ]; then
    echo "skipping the daemon part: SMTPSYNC_PRIMARY is not set" >&2
    finish
fi
port=$(free_port)
printf '[node]\nid = primary\ndata_dir = %s\nsubmit_socket = %s\nlisten = 127.0.0.1:%s\n[tls]\nca = %s\ncert = %s\nkey = %s\n[admin]\nsuper_admins = alice\noperators = monitor\n' \
    "$T/data" "$T/p.sock" "$port" "$D/ca.pem" "$D/primary.pem" "$D/primary.key" >"$T/p.ini"
mkdir -p "$T/data"
"$PRIMARY" --config "$T/p.ini" >"$T/p.out" 2>"$T/p.log" </dev/null &
pid=$!
# shellcheck disable=SC2034 # lib.sh kills it on exit
PID['p']=$pid
remote() {
    local who=$1 ca=$2
    shift 2
    run "$SMTPSYNCCTL" --server "127.0.0.1:$port" --server-id primary --ca "$ca/ca.pem" \
        --cert "$ca/$who.pem" --key "$ca/$who.key" --timeout 2 "$@"
}
# shellcheck disable=SC2317 # called through wait_until
up() {
    remote monitor "$D" status
    [ "$RC" -eq 0 ]
}
if wait_until 15 up; then
    pass
else
    fail "smtpsync-primary with the tool's certificate did not answer: $ERR $(tail -n 20 "$T/p.log")"
fi
remote alice "$D" status --json
assert_exit "the rotated admin cert is accepted" 0
assert_contains "the daemon knows itself by the cert's id" "$OUT" '"primary"'
# An admin of another deployment CA is refused.
"$PKI_TOOL" -d "$T/envdir" admin alice >/dev/null
cp "$D/ca.pem" "$T/envdir/ca-of-d.pem"
run "$SMTPSYNCCTL" --server "127.0.0.1:$port" --server-id primary --ca "$D/ca.pem" \
    --cert "$T/envdir/alice.pem" --key "$T/envdir/alice.key" --timeout 2 status
assert_false "an admin of another CA is refused" test "$RC" -eq 0
kill -TERM "$pid"
rc=0
wait "$pid" || rc=$?
assert_eq "primary exits cleanly" 0 "$rc"
assert_false "no sanitizer report" sanitizer_report "$(cat "$T/p.log")"
finish
