#!/usr/bin/env bash
# Makes a deployment PKI for mutual TLS tests with the real openssl command
# line, into DIR. EC P-256 keys, mode 0600.
#
#   ca.pem / ca.key             the deployment CA
#   NODE.pem / NODE.key         per node id: SAN DNS:NODE, IP:127.0.0.1,
#                               EKU serverAuth + clientAuth (a node is server
#                               and client)
#   ADMIN.pem / ADMIN.key       per -a ADMIN: CN and SAN DNS:ADMIN, EKU clientAuth
#   cnonly.pem / .key           CA-signed, CN=cnonly and no SAN (CN fallback)
#   expired.pem / .key          the first node's id, valid 2020-01-01..2020-02-01
#   future.pem / .key           the first node's id, valid from 2099-01-01
#   renewed.pem / .key          the first node's id, another key, valid 400 days
#                               (a renewal, as swapped in by a reload)
#   other-ca.pem / .key         an unrelated CA
#   foreign.pem / .key          the first node's id, signed by the unrelated CA
#   chain-NODE.pem              NODE.pem followed by ca.pem
#
# Usage: make-pki.sh [-a ADMIN_ID]... DIR NODE_ID...
# Idempotent: nothing is done when DIR/.done holds the SHA-256 of this script,
# sign-cert.sh, deploy/smtpsync-pki and the arguments; otherwise every file
# is made anew.
#
# The CA, node and admin certificates (and other-ca, foreign, renewed) are
# made by the operator's tool, deploy/smtpsync-pki, so the tests run on
# what a deployment gets; the certificates that tool cannot make (no SAN,
# dates in the past or future) by tests/tools/sign-cert.sh.
set -euo pipefail
tools=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
pki_tool=$(cd "$tools/../../deploy" && pwd)/smtpsync-pki
admins=()
while getopts a: opt; do
    case $opt in
    a) admins+=("$OPTARG") ;;
    *) echo "usage: make-pki.sh [-a ADMIN_ID]... DIR NODE_ID..." >&2; exit 2 ;;
    esac
done
shift $((OPTIND - 1))
dir=${1:?usage: make-pki.sh [-a ADMIN_ID]... DIR NODE_ID...}
shift
[ $# -ge 1 ] || { echo "make-pki: at least one node id is needed" >&2; exit 2; }
nodes=("$@")
for id in "${nodes[@]}" "${admins[@]}"; do
    [[ $id =~ ^[A-Za-z0-9][A-Za-z0-9._-]*$ ]] || { echo "make-pki: bad id '$id'" >&2; exit 2; }
done

stamp=$({ cat "${BASH_SOURCE[0]}" "$tools/sign-cert.sh" "$pki_tool" | sha256sum | cut -d' ' -f1
    printf '%s\n' "${nodes[@]}" -- "${admins[@]}"; } | sha256sum | cut -d' ' -f1)
[ -f "$dir/.done" ] && [ "$(cat "$dir/.done")" = "$stamp" ] && exit 0
umask 077
mkdir -p "$dir"
cd "$dir"
rm -f .done
rm -rf ca-db ca.cnf .other .renew
rm -f ca.pem ca.key other-ca.pem other-ca.key

# pki DIR ARGS...: deploy/smtpsync-pki -d DIR ARGS... (its stderr on failure).
pki() {
    local d=$1
    shift
    "$pki_tool" -d "$d" "$@" >/dev/null || { echo "make-pki: failed: smtpsync-pki $*" >&2; exit 1; }
}

# take FROM TO: FROM.pem / FROM.key become TO.pem / TO.key.
take() {
    mv -f "$1.pem" "$2.pem"
    mv -f "$1.key" "$2.key"
}

# cert NAME CN SAN [STARTDATE ENDDATE]: a node certificate of the deployment
# CA with the given dates (SAN may be empty).
cert() {
    "$tools/sign-cert.sh" "$1" "$2" "$3" node ca "${@:4}"
}

first=${nodes[0]}
# smtpsync-pki init makes DIR 0700; a DIR the caller made keeps its mode.
dir_mode=$(stat -c %a .)
pki . init --cn "smtpsync deployment test CA" --days 3650
for id in "${nodes[@]}"; do
    rm -f "$id.pem" "$id.key"
    pki . node "$id" --ip 127.0.0.1
    cat "$id.pem" ca.pem > "chain-$id.pem"
done
for id in "${admins[@]}"; do
    rm -f "$id.pem" "$id.key"
    pki . admin "$id"
done
# An unrelated CA, and the first node's id signed by it.
pki .other init --cn "unrelated test CA" --days 3650
pki .other node "$first"
take .other/ca other-ca
take ".other/$first" foreign
# The first node's id again: another key, valid 400 days (a renewal).
mkdir -p .renew
ln -f ca.pem ca.key .renew/
pki .renew node "$first" --ip 127.0.0.1 --days 400
take ".renew/$first" renewed
rm -rf .other .renew
cert cnonly cnonly ""
cert expired "$first" "DNS:$first" 20200101000000Z 20200201000000Z
cert future "$first" "DNS:$first" 20990101000000Z 20991231000000Z
chmod 600 ./*.key
chmod 644 ./*.pem
chmod "$dir_mode" .
printf '%s\n' "$stamp" > .done
