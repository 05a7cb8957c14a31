#!/usr/bin/env bash
# Signs a test certificate with the real openssl command line, for what
# deploy/smtpsync-pki does not make on purpose (a certificate without a
# SAN, or with dates in the past or the future).
#
#   sign-cert.sh OUT CN SAN KIND ISSUER [STARTDATE ENDDATE]
#
# OUT.key (EC P-256, mode 0600) and OUT.pem, CN=CN, subjectAltName SAN
# ("" for none), signed by ISSUER.pem / ISSUER.key. KIND is the key usage:
# server (serverAuth), node (serverAuth and clientAuth) or admin
# (clientAuth). Dates as YYYYMMDDHHMMSSZ; without them, $DAYS days (825)
# from now. A random serial, so two certificates never share one.
set -euo pipefail
usage="usage: sign-cert.sh OUT CN SAN server|node|admin ISSUER [STARTDATE ENDDATE]"
[ $# -eq 5 ] || [ $# -eq 7 ] || { echo "$usage" >&2; exit 2; }
out=$1 cn=$2 san=$3 kind=$4 issuer=$5 start=${6:-} end=${7:-}
case $kind in
server) eku=serverAuth usage_bits="digitalSignature, keyEncipherment" ;;
node) eku="serverAuth, clientAuth" usage_bits="digitalSignature, keyEncipherment" ;;
admin) eku=clientAuth usage_bits=digitalSignature ;;
*) echo "$usage" >&2; exit 2 ;;
esac

umask 077
db=$(mktemp -d)
trap 'rm -rf "$db"' EXIT
mkdir "$db/new"
: >"$db/index.txt"
openssl rand -hex 16 >"$db/serial"
cat >"$db/ca.cnf" <<CNF
[ ca ]
default_ca = c
[ c ]
dir = $db
database = \$dir/index.txt
new_certs_dir = \$dir/new
serial = \$dir/serial
default_md = sha256
policy = any
copy_extensions = copy
unique_subject = no
[ any ]
commonName = supplied
[ leaf ]
basicConstraints = critical, CA:FALSE
keyUsage = critical, $usage_bits
extendedKeyUsage = $eku
CNF

# q CMD...: CMD quietly; its output and a failure line if it fails.
q() { "$@" >"$db/log" 2>&1 || { cat "$db/log" >&2; echo "sign-cert: failed: $*" >&2; exit 1; }; }

sanopt=()
[ -n "$san" ] && sanopt=(-addext "subjectAltName = $san")
q openssl req -new -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -subj "/CN=$cn" \
    "${sanopt[@]}" -keyout "$out.key" -out "$db/req.csr"
dates=(-days "${DAYS:-825}")
[ -n "$start" ] && dates=(-startdate "$start" -enddate "$end")
q openssl ca -batch -config "$db/ca.cnf" -cert "$issuer.pem" -keyfile "$issuer.key" \
    -extensions leaf "${dates[@]}" -in "$db/req.csr" -out "$out.pem" -notext
chmod 600 "$out.key"
chmod 644 "$out.pem"
