#!/usr/bin/env bash
# The SMTP client against scripted misbehaving servers
# (tests/tools/hostile_smtp.py): Test Connection must fail at the right step
# with the server's reply and a plain diagnosis, never leak AUTH or mail
# over a connection it should not trust; and the daemon's outbox must retry
# 4xx and broken sessions, and bury 5xx with the reason.
# shellcheck disable=SC2317 # functions run through wait_until
set -euo pipefail
# shellcheck source=lib.sh
source "$(dirname "$0")/lib.sh"

FROM=noreply@example.test
PW=$T/password
printf 'hostile-secret-pw\n' >"$PW"
chmod 600 "$PW"

# Certificates the scenarios serve, all for 127.0.0.1 unless the name is
# the point: a good one, one for another name, one from another CA, an
# expired one.
make_cert "$T/good" mail.test "DNS:mail.test, IP:127.0.0.1" "$CERTS/ca"
make_cert "$T/wrong" wrong.test "DNS:wrong.test" "$CERTS/ca"
make_cert "$T/otherca" mail.test "DNS:mail.test, IP:127.0.0.1" "$CERTS/other-ca"
make_cert "$T/expired" mail.test "DNS:mail.test, IP:127.0.0.1" "$CERTS/ca" \
    20200101000000Z 20200201000000Z

# configure DATA ID PORT CLIENT-MODE [extra settings options...]: a draft
# for instance ID against 127.0.0.1:PORT. CLIENT-MODE: plain, strict,
# starttls (the last two trust the test CA).
configure() {
    local data=$1 id=$2 port=$3 mode=$4
    shift 4
    local tls=(--no-smtps)
    case $mode in
    strict) tls=(--smtps --tls-mode strict) ;;
    starttls) tls=(--smtps --tls-mode starttls) ;;
    esac
    ctl "$data" settings set --instance "$id" --hostname 127.0.0.1 --port "$port" --from "$FROM" \
        --test-address user@example.test "${tls[@]}" "$@"
    assert_exit "$id: settings set" 0
    if [ "$mode" != plain ]; then
        ctl "$data" settings import-cert --instance "$id" "$CERTS/ca.pem"
        assert_exit "$id: import-cert" 0
    fi
}

# conntest SCENARIO CLIENT-MODE STEP DIAGNOSIS-ERE [server args] [-- settings options]:
# settings test against the scenario fails at STEP (a|b allowed) with text
# matching DIAGNOSIS-ERE (case-insensitive) in that step's detail, reply or
# diagnosis.
conntest() {
    local scenario=$1 mode=$2 step=$3 diag=$4 server=() settings=() failed text start
    shift 4
    while [ $# -gt 0 ] && [ "$1" != -- ]; do
        server+=("$1")
        shift
    done
    [ $# -gt 0 ] && shift
    settings=("$@")
    hostile_start "$scenario" "$scenario" "${server[@]}"
    configure "$T/ct-$scenario" h "$HOSTILE_PORT" "$mode" "${settings[@]}"
    start=$SECONDS
    ctl "$T/ct-$scenario" settings test --instance h
    assert_exit "$scenario: settings test fails" 1
    printf -- '--- Test Connection, %s:\n%s\n' "$scenario" "$OUT"
    ctl "$T/ct-$scenario" settings test --instance h --json
    assert_exit "$scenario: settings test --json fails" 1
    assert_eq "$scenario: result not ok" false "$(json 'd["ok"]' 2>/dev/null || echo "[$OUT]")"
    failed=$(step_failed 2>/dev/null || true)
    if [[ $failed =~ ^($step)$ ]]; then
        pass
    else
        fail "$scenario: failing step is '$failed', expected $step: $OUT"
    fi
    text=$(step_text "$failed" 2>/dev/null || true)
    assert_match "$scenario: diagnosis" "$text" "$diag"
    # The client names the step it failed at: a plaintext session never
    # fails at (or even has) a TLS step.
    if [ "$mode" = plain ]; then
        assert_eq "$scenario: no TLS step on a plaintext session" "" \
            "$(json "' '.join(kind(s) for s in d['steps'] if kind(s) in ('tls', 'certificate'))")"
    fi
    # Both runs together stay well inside the timeouts under test.
    assert_true "$scenario: quick ($((SECONDS - start)) s)" [ $((SECONDS - start)) -lt 30 ]
    # Nothing the server could not be trusted with ever reached it.
    if [ "$mode" != plain ] || [ "$scenario" = auth-fail ]; then
        assert_false "$scenario: no MAIL sent" hostile_sent "$scenario" MAIL
    fi
    assert_eq "$scenario: nothing delivered" 0 "$(hostile_delivered "$scenario")"
}

# step_field KIND FIELD: FIELD of the first step of KIND in $OUT (JSON).
step_field() {
    json "next((str(s.get('$2') or '') for s in d['steps'] if kind(s) == '$1'), '')"
}

# ---- Test Connection, one scenario each ----

conntest starttls-not-offered starttls 'starttls' 'starttls' \
    -- --logon --user u --password-file "$PW"
assert_false "starttls-not-offered: no AUTH in clear" hostile_sent starttls-not-offered AUTH

conntest starttls-454 starttls 'starttls' '454' --cert "$T/good.pem" --key "$T/good.key" \
    -- --logon --user u --password-file "$PW"
assert_false "starttls-454: no AUTH in clear" hostile_sent starttls-454 AUTH

conntest starttls-injection starttls 'starttls|tls' 'inject|after|unexpected|pipelin|extra|plaintext' \
    --cert "$T/good.pem" --key "$T/good.key" -- --logon --user u --password-file "$PW"
assert_false "starttls-injection: no AUTH" hostile_sent starttls-injection AUTH

conntest wrong-hostname-cert strict 'certificate|tls' 'hostname|name|127\.0\.0\.1|wrong\.test' \
    --cert "$T/wrong.pem" --key "$T/wrong.key"

conntest other-ca-cert strict 'certificate' \
    'certificate \(issuer CN=unrelated test CA\) is not signed by the imported certificate \(subject CN=smtpsync test CA\)' \
    --cert "$T/otherca.pem" --key "$T/otherca.key"

conntest expired-cert strict 'certificate|tls' 'expired' \
    --cert "$T/expired.pem" --key "$T/expired.key"

# The server's protocol_version alert reaches the step (OpenSSL's reason),
# and the diagnosis says what it means.
conntest tls10-only strict 'tls' 'offers only TLS versions older than 1\.2' \
    --cert "$T/good.pem" --key "$T/good.key"
assert_match "tls10-only: OpenSSL's reason in the step" "$(step_field tls detail)" \
    'protocol version|unsupported protocol'
assert_contains "tls10-only: the server sent its alert" "$(cat "$T/tls10-only.smtp")" \
    'unsupported protocol' 

conntest auth-fail strict 'auth' '535' --cert "$T/good.pem" --key "$T/good.key" \
    -- --logon --user u --password-file "$PW"

# 421 to the pipelined MAIL: the MAIL step, with the reply, and a diagnosis
# that the server closed the session.
conntest 421-mid-session plain 'mail' 'closed the session in reply to MAIL FROM \(421: service temporarily unavailable\)'
assert_match "421-mid-session: the reply" "$(step_field mail server_reply)" '^421 4\.3\.2 '

conntest slow-greeting plain 'greeting' 'time' -- --timeout-greeting 2

conntest endless-multiline plain 'ehlo' 'lines|too many|too long|reply'

conntest oversized-line plain 'greeting' 'longer than 512 octets'
assert_match "oversized-line: the line quoted" "$(step_field greeting server_reply)" '^220 xxxxxxxx'

conntest tempfail-then-ok plain 'rcpt' '451' --fail-times 1000

conntest permfail plain 'rcpt' '550'

conntest close-after-data plain 'data' 'clos|connection|lost|eof|reset'

# ---- delivery through the daemon's outbox ----
# One daemon per scenario (the daemon delivers with the settings of the
# instance named by its node id), all running at once.

# deliver_setup NAME SCENARIO [server args]: a hostile server, a store
# whose instance NAME points at it, a daemon; then one tokencode queued.
# Sets ID[NAME] and SOCKS[NAME].
declare -A ID=() SOCKS=()
deliver_setup() {
    local name=$1 scenario=$2
    shift 2
    hostile_start "d-$name" "$scenario" "$@"
    configure "$T/d-$name" "$name" "$HOSTILE_PORT" plain
    ctl "$T/d-$name" settings save --comment "$scenario"
    assert_exit "$name: save" 0
    daemon_start "d-$name" "$name" "$T/d-$name"
    printf 'token for %s\n' "$name" >"$T/d-$name.body"
    send_mail "$SOCK" --to "$name@example.test" --subject "hostile $name" \
        --priority tokencode --body-file "$T/d-$name.body"
    assert_exit "$name: send" 0
    if [ -z "$MSG_ID" ]; then
        fail "$name: send printed no id: $OUT"
    fi
    ID[$name]=$MSG_ID
    SOCKS[$name]=$SOCK
}

deliver_setup permfail permfail
deliver_setup abort 421-mid-session
deliver_setup closed close-after-data
# Last, so that its retries (about 1 + 2 + 2 s) are watched from the start.
deliver_setup tempfail tempfail-then-ok --fail-times 3

# 4xx: retried with backoff, then delivered.
seen_451=
saw_451() {
    local e
    sctl "${SOCKS[tempfail]}" queue --json
    e=$(queue_entry pending "${ID[tempfail]}" 2>/dev/null || echo null)
    [[ $e == *451* ]] && seen_451=1
    [ "$(hostile_delivered d-tempfail)" -ge 1 ]
}
assert_true "tempfail: delivered after retries" wait_until 30 saw_451
assert_eq "tempfail: pending with the 451 seen in between" 1 "${seen_451:-0}"
assert_true "tempfail: queue empty afterwards" wait_until 10 queue_empty "${SOCKS[tempfail]}"
assert_eq "tempfail: delivered once" 1 "$(hostile_delivered d-tempfail)"
assert_eq "tempfail: three 451s before" 3 "$(grep -c 'S: 451' "$T/d-tempfail.smtp" || true)"
sctl "${SOCKS[tempfail]}" queue --json
assert_eq "tempfail: not dead" null "$(queue_entry dead "${ID[tempfail]}")"

# 5xx: dead at once, with the server's reply.
assert_true "permfail: dead" wait_until 20 queue_has "${SOCKS[permfail]}" dead "${ID[permfail]}"
sctl "${SOCKS[permfail]}" queue --json
assert_contains "permfail: reason quotes the 550" "$(queue_entry dead "${ID[permfail]}")" "550"
assert_eq "permfail: not pending" null "$(queue_entry pending "${ID[permfail]}")"
assert_eq "permfail: tried once" 1 "$(grep -c 'S: 550' "$T/d-permfail.smtp" || true)"
sctl "${SOCKS[permfail]}" queue
assert_exit "permfail: queue (text)" 0
assert_contains "permfail: queue text shows the id" "$OUT" "${ID[permfail]}"

# 421 after MAIL: deferred with the reply, kept pending.
pending_with() {
    local e
    sctl "$1" queue --json
    e=$(queue_entry pending "$2" 2>/dev/null || echo null)
    [[ $e == *"$3"* ]]
}
assert_true "421: deferred with the reply" wait_until 20 pending_with "${SOCKS[abort]}" "${ID[abort]}" 421
sctl "${SOCKS[abort]}" queue --json
assert_eq "421: not dead" null "$(queue_entry dead "${ID[abort]}")"
# queue retry makes it due now; queue drop removes it.
sctl "${SOCKS[abort]}" queue retry "${ID[abort]}"
assert_exit "421: queue retry" 0
sctl "${SOCKS[abort]}" queue drop "${ID[abort]}"
assert_exit "421: queue drop" 0
sctl "${SOCKS[abort]}" queue --json
assert_eq "421: dropped from pending" null "$(queue_entry pending "${ID[abort]}")"
sctl "${SOCKS[abort]}" queue drop 999999
assert_exit "queue drop of an unknown id" 1

# Closed after DATA: the outcome is unknown, so it is deferred (sent again
# later: at least once), never dead.
# tried SOCK ID: message ID is pending after at least one attempt.
tried() {
    sctl "$1" queue --json
    [ "$(json "(next((m for m in d.get('pending', []) if str(m.get('id')) == '$2'), None) or {}).get('attempts', 0) >= 1" 2>/dev/null)" = true ]
}
assert_true "close-after-data: deferred" wait_until 20 tried "${SOCKS[closed]}" "${ID[closed]}"
sctl "${SOCKS[closed]}" queue --json
assert_match "close-after-data: reason" "$(queue_entry pending "${ID[closed]}")" \
    'clos|connection|lost|eof|reset|timed? ?out'
assert_eq "close-after-data: not dead" null "$(queue_entry dead "${ID[closed]}")"
assert_contains "close-after-data: the data was sent" "$(cat "$T/d-closed.smtp")" "octets of data"

for name in tempfail permfail abort closed; do
    daemon_stop "d-$name"
done

finish
