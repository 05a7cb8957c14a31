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
# Idempotent: nothing is done when DIR/.done holds the SHA-256 of this script
# and of the arguments; otherwise every file is made anew.
set -euo pipefail
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

stamp=$({ sha256sum "${BASH_SOURCE[0]}" | cut -d' ' -f1; printf '%s\n' "${nodes[@]}" -- "${admins[@]}"; } |
    sha256sum | cut -d' ' -f1)
[ -f "$dir/.done" ] && [ "$(cat "$dir/.done")" = "$stamp" ] && exit 0
umask 077
mkdir -p "$dir"
cd "$dir"
rm -f .done
rm -rf ca-db && mkdir -p ca-db/new && : > ca-db/index.txt && echo 1000 > ca-db/serial

cat > ca.cnf <<'CNF'
[ ca ]
default_ca = pki_ca
[ pki_ca ]
dir = ./ca-db
database = $dir/index.txt
new_certs_dir = $dir/new
serial = $dir/serial
default_md = sha256
policy = any
copy_extensions = copy
unique_subject = no
[ any ]
commonName = supplied
[ v3_node ]
basicConstraints = critical, CA:FALSE
keyUsage = critical, digitalSignature, keyEncipherment
extendedKeyUsage = serverAuth, clientAuth
[ v3_admin ]
basicConstraints = critical, CA:FALSE
keyUsage = critical, digitalSignature
extendedKeyUsage = clientAuth
CNF

q() { "$@" >/dev/null 2>&1 || { echo "make-pki: failed: $*" >&2; "$@"; exit 1; }; }

ca() {
    local name=$1 cn=$2
    q openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 3650 \
        -subj "/CN=$cn" -keyout "$name.key" -out "$name.pem"
}

# cert NAME CN SAN EXT ISSUER [STARTDATE ENDDATE]
cert() {
    local name=$1 cn=$2 san=$3 ext=$4 issuer=$5 start=${6:-} end=${7:-}
    local sanopt=()
    [ -n "$san" ] && sanopt=(-addext "subjectAltName = $san")
    q openssl req -new -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -subj "/CN=$cn" \
        "${sanopt[@]}" -keyout "$name.key" -out "$name.csr"
    local dates=(-days "${DAYS:-825}")
    [ -n "$start" ] && dates=(-startdate "$start" -enddate "$end")
    q openssl ca -batch -config ca.cnf -cert "$issuer.pem" -keyfile "$issuer.key" \
        -extensions "$ext" "${dates[@]}" -in "$name.csr" -out "$name.pem" -notext
    rm -f "$name.csr"
}

ca ca "smtpsync deployment test CA"
ca other-ca "unrelated test CA"
for id in "${nodes[@]}"; do
    cert "$id" "$id" "DNS:$id, IP:127.0.0.1" v3_node ca
    cat "$id.pem" ca.pem > "chain-$id.pem"
done
for id in "${admins[@]}"; do
    cert "$id" "$id" "DNS:$id" v3_admin ca
done
first=${nodes[0]}
cert cnonly cnonly "" v3_node ca
cert expired "$first" "DNS:$first" v3_node ca 20200101000000Z 20200201000000Z
cert future "$first" "DNS:$first" v3_node ca 20990101000000Z 20991231000000Z
cert foreign "$first" "DNS:$first" v3_node other-ca
DAYS=400 cert renewed "$first" "DNS:$first, IP:127.0.0.1" v3_node ca
chmod 600 ./*.key
chmod 644 ./*.pem
printf '%s\n' "$stamp" > .done
