#!/usr/bin/env bash
# Makes the test certificates with the real openssl command line, into DIR.
#
#   ca.pem / ca.key           a test CA
#   leaf.pem / leaf.key       server certificate signed by the CA:
#                             SAN DNS:mail.test, DNS:*.wild.test, IP:127.0.0.1, IP:::1
#   chain.pem                 leaf.pem followed by ca.pem
#   selfsigned.pem/.key       self-signed server certificate, CN and SAN mail.test
#   cnonly.pem                CA-signed leaf with CN=cn.test and no SAN
#   expired.pem               CA-signed leaf for mail.test, valid 2020-01-01..2020-02-01
#   future.pem                CA-signed leaf for mail.test, valid from 2099-01-01
#   other-ca.pem              an unrelated CA
#   garbage.pem               a CERTIFICATE block whose body is not a certificate
#
# Usage: make-certs.sh DIR   (idempotent: does nothing if DIR/.done holds the
# SHA-256 of this script and sign-cert.sh; a change makes every file anew)
set -euo pipefail
dir=${1:?usage: make-certs.sh DIR}
tools=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
self=$(cat "${BASH_SOURCE[0]}" "$tools/sign-cert.sh" | sha256sum | cut -d' ' -f1)
[ -f "$dir/.done" ] && [ "$(cat "$dir/.done")" = "$self" ] && exit 0
mkdir -p "$dir"
cd "$dir"
# Not done until every file below is made again.
rm -f .done
rm -rf ca-db ca.cnf

q() { "$@" >/dev/null 2>&1 || { echo "make-certs: failed: $*" >&2; "$@"; exit 1; }; }

q openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 3650 \
    -subj "/CN=smtpsync test CA" -keyout ca.key -out ca.pem
q openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 3650 \
    -subj "/CN=unrelated test CA" -keyout other-ca.key -out other-ca.pem

# leaf NAME CN SAN [STARTDATE ENDDATE]: a server certificate of the CA.
leaf() {
    DAYS=3650 "$tools/sign-cert.sh" "$1" "$2" "$3" server ca "${@:4}"
}

leaf leaf mail.test "DNS:mail.test, DNS:*.wild.test, IP:127.0.0.1, IP:::1"
leaf cnonly cn.test ""
leaf expired mail.test "DNS:mail.test" 20200101000000Z 20200201000000Z
leaf future mail.test "DNS:mail.test" 20990101000000Z 20991231000000Z
cat leaf.pem ca.pem > chain.pem

q openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 3650 \
    -subj "/CN=mail.test" -addext "subjectAltName = DNS:mail.test" \
    -keyout selfsigned.key -out selfsigned.pem

printf -- '-----BEGIN CERTIFICATE-----\nTm90IGEgY2VydGlmaWNhdGUgYXQgYWxs\n-----END CERTIFICATE-----\n' > garbage.pem
chmod 600 ./*.key
printf '%s\n' "$self" > .done
