#!/usr/bin/env bash
# Delivery through the daemon's own sender (not Test Connection) where it
# must neither lose nor leak mail:
#   - a STARTTLS-stripping server (STARTTLS not offered): no AUTH, MAIL or
#     DATA in clear; the message stays pending with the reason;
#   - a 451 to one recipient of two: delivered to the other at once, the
#     451 one kept pending and delivered on a retry, each exactly once;
#   - a node without settings (a new replica starts empty): the tokencode
#     is deferred, not dead, and delivered once settings are saved, without
#     a restart;
#   - 550 to both EHLO and HELO: deferred, not dead (the relay's failure).
# shellcheck disable=SC2317 # functions run through wait_until
set -euo pipefail
# shellcheck source=lib.sh
source "$(dirname "$0")/lib.sh"

FROM=noreply@example.test
PW=$T/password
printf 'delivery-secret-pw\n' >"$PW"
chmod 600 "$PW"

# configure DATA ID PORT [settings set options...]: a saved revision for
# instance ID against 127.0.0.1:PORT.
configure() {
    local data=$1 id=$2 port=$3
    shift 3
    ctl "$data" settings set --instance "$id" --hostname 127.0.0.1 --port "$port" --from "$FROM" \
        --test-address user@example.test "$@"
    assert_exit "$id: settings set" 0
}

save() {
    ctl "$1" settings save --comment "$2"
    assert_exit "$2: settings save" 0
}

# attempted SOCK ID TEXT: message ID is pending, tried at least once, and
# its last error contains TEXT.
attempted() {
    local e
    sctl "$1" queue --json
    e=$(queue_entry pending "$2" 2>/dev/null || echo null)
    [ "$e" != null ] || return 1
    [ "$(json "(next((m for m in d.get('pending', []) if str(m.get('id')) == '$2'), None) or {}).get('attempts', 0) >= 1" 2>/dev/null)" = true ] || return 1
    [[ $e == *"$3"* ]]
}

delivered_count() {
    [ "$(hostile_delivered "$1")" -ge "$2" ]
}

# The server named NAME saw the command VERB (any case) from the client.
saw() {
    grep -qiE "C: $2( |\$)" "$T/$1.smtp"
}

# ---- STARTTLS stripped: fail closed, keep the mail ----

hostile_start strip starttls-not-offered
mkdir -p "$T/strip"
configure "$T/strip" strip "$HOSTILE_PORT" --smtps --tls-mode starttls --logon --user u \
    --password-file "$PW"
ctl "$T/strip" settings import-cert --instance strip "$CERTS/ca.pem"
assert_exit "strip: import-cert" 0
save "$T/strip" strip
daemon_start strip strip "$T/strip"
STRIP_SOCK=$SOCK
printf 'code 111111\n' >"$T/strip.body"
send_mail "$STRIP_SOCK" --to user@example.test --subject strip --priority tokencode \
    --body-file "$T/strip.body"
assert_exit "strip: send" 0
STRIP_ID=$MSG_ID
assert_true "strip: deferred with a STARTTLS reason" \
    wait_until 20 attempted "$STRIP_SOCK" "$STRIP_ID" STARTTLS
sctl "$STRIP_SOCK" queue --json
assert_eq "strip: not dead" null "$(queue_entry dead "$STRIP_ID")"
assert_false "strip: no AUTH in clear" saw strip AUTH
assert_false "strip: no MAIL in clear" saw strip MAIL
assert_false "strip: no DATA in clear" saw strip DATA
assert_eq "strip: nothing delivered" 0 "$(hostile_delivered strip)"
assert_false "strip: the password never reached the server" grep -q delivery-secret-pw "$T/strip.smtp"
assert_false "strip: nor the daemon's log" grep -q delivery-secret-pw "$T/strip.log"

# ---- 451 to one recipient of two ----

hostile_start partial tempfail-then-ok --fail-times 1
mkdir -p "$T/partial"
configure "$T/partial" partial "$HOSTILE_PORT" --no-smtps
save "$T/partial" partial
daemon_start partial partial "$T/partial"
PARTIAL_SOCK=$SOCK
printf 'report for two\n' >"$T/partial.body"
send_mail "$PARTIAL_SOCK" --to first@example.test --to second@example.test --subject partial \
    --body-file "$T/partial.body"
assert_exit "partial: send" 0
PARTIAL_ID=$MSG_ID
# The first RCPT gets the 451, the second is delivered at once; the
# message stays pending for the first (seen pending in between, or the
# retry already went through: both deliveries are checked below).
seen_pending=
partial_done() {
    local e
    sctl "$PARTIAL_SOCK" queue --json
    e=$(queue_entry pending "$PARTIAL_ID" 2>/dev/null || echo null)
    [[ $e == *"delivered to 1 of 2"* ]] && seen_pending=$e
    [ "$(hostile_delivered partial)" -ge 2 ] && queue_empty "$PARTIAL_SOCK"
}
assert_true "partial: delivered to both in the end" wait_until 30 partial_done
assert_eq "partial: two deliveries" 2 "$(hostile_delivered partial)"
envs=$(cat "$T"/partial.mail/*.env 2>/dev/null | sort | tr '\n' ' ')
assert_eq "partial: each recipient once" 2 "$(cat "$T"/partial.mail/*.env | grep -c '^RCPT TO:')"
assert_contains "partial: the second recipient" "$envs" "second@example.test"
assert_contains "partial: the first recipient, on the retry" "$envs" "first@example.test"
first_delivery=$(grep -l second@example.test "$T"/partial.mail/*.env | head -n1)
assert_false "partial: the first delivery did not include the 451 recipient" \
    grep -q first@example.test "$first_delivery"
assert_eq "partial: one 451" 1 "$(grep -c 'S: 451' "$T/partial.smtp" || true)"
if [ -n "$seen_pending" ]; then
    assert_contains "partial: pending with the 451" "$seen_pending" "451"
    assert_contains "partial: pending for the first recipient only" "$seen_pending" \
        'first@example.test'
    assert_not_contains "partial: not for the second" "$seen_pending" 'second@example.test'
fi
sctl "$PARTIAL_SOCK" queue --json
assert_eq "partial: not dead" null "$(queue_entry dead "$PARTIAL_ID")"
assert_match "partial: the daemon logged the deferred recipient" "$(cat "$T/partial.log")" \
    'rcpt deferred id=[0-9]+ rcpt=first@example\.test code=451'

# ---- a node without settings ----

hostile_start late ok
mkdir -p "$T/empty"
daemon_start empty empty "$T/empty"
EMPTY_SOCK=$SOCK
printf 'code 222222\n' >"$T/empty.body"
send_mail "$EMPTY_SOCK" --to user@example.test --subject early --priority tokencode \
    --body-file "$T/empty.body"
assert_exit "empty: send accepted" 0
EMPTY_ID=$MSG_ID
assert_true "empty: deferred for want of settings" \
    wait_until 20 attempted "$EMPTY_SOCK" "$EMPTY_ID" "no settings for instance empty"
# A second try meanwhile (retry_initial = 1 s) logs nothing new.
sleep 2.5
sctl "$EMPTY_SOCK" queue --json
assert_eq "empty: not dead" null "$(queue_entry dead "$EMPTY_ID")"
assert_eq "empty: the problem logged once" 1 \
    "$(grep -c 'sender settings instance=empty .*unusable' "$T/empty.log" || true)"
configure "$T/empty" empty "$HOSTILE_PORT" --no-smtps
save "$T/empty" empty
assert_true "empty: delivered once settings are saved" wait_until 20 delivered_count late 1
assert_true "empty: queue empty" wait_until 10 queue_empty "$EMPTY_SOCK"
assert_eq "empty: delivered once" 1 "$(hostile_delivered late)"
assert_contains "empty: the tokencode" "$(cat "$T"/late.mail/*.eml)" "code 222222"
assert_true "empty: the same process (no restart)" kill -0 "${DAEMON_PID[empty]}"

# ---- 550 to EHLO and to HELO ----

cat >"$T/refuse.py" <<'PY'
import os, socket, sys, threading
port_file, log_file = sys.argv[1], sys.argv[2]
log = open(log_file, "a", buffering=1)
srv = socket.socket()
srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
srv.bind(("127.0.0.1", 0))
srv.listen(8)
open(port_file + ".tmp", "w").write("%d\n" % srv.getsockname()[1])
os.rename(port_file + ".tmp", port_file)

def serve(c):
    f = c.makefile("rb")
    def say(t):
        log.write("S: %s\n" % t)
        c.sendall((t + "\r\n").encode())
    say("220 refuse.test ESMTP")
    while True:
        line = f.readline()
        if not line:
            break
        t = line.decode("latin1").rstrip("\r\n")
        log.write("C: %s\n" % t)
        verb = t.split(" ", 1)[0].upper()
        if verb in ("EHLO", "HELO"):
            say("550 5.7.1 you are not welcome here")
        elif verb == "QUIT":
            say("221 2.0.0 bye")
            break
        else:
            say("503 5.5.1 say hello first")
    c.close()

while True:
    conn, _ = srv.accept()
    threading.Thread(target=serve, args=(conn,), daemon=True).start()
PY
python3 "$T/refuse.py" "$T/refuse.port" "$T/refuse.smtp" 2>"$T/refuse.err" &
PIDS+=($!)
wait_until 5 test -s "$T/refuse.port" || fail "refusing server did not start: $(cat "$T/refuse.err")"
REFUSE_PORT=$(cat "$T/refuse.port")
mkdir -p "$T/refuse"
configure "$T/refuse" refuse "$REFUSE_PORT" --no-smtps
save "$T/refuse" refuse
daemon_start refuse refuse "$T/refuse"
REFUSE_SOCK=$SOCK
REFUSE_IDS=()
for i in 1 2; do
    printf 'report %s\n' "$i" >"$T/refuse.body"
    send_mail "$REFUSE_SOCK" --to user@example.test --subject "refused $i" --body-file "$T/refuse.body"
    assert_exit "refuse: send $i" 0
    REFUSE_IDS[i]=$MSG_ID
done
for i in 1 2; do
    assert_true "refuse: message $i deferred with the 550" \
        wait_until 20 attempted "$REFUSE_SOCK" "${REFUSE_IDS[i]}" 550
done
# Tried again after the backoff: deferred again, still not dead.
retried() {
    sctl "$REFUSE_SOCK" queue --json
    [ "$(json "min((m.get('attempts', 0) for m in d.get('pending', [])), default=0) >= 2")" = true ]
}
assert_true "refuse: retried" wait_until 20 retried
sctl "$REFUSE_SOCK" queue --json
assert_eq "refuse: nothing dead" 0 "$(json 'len(d.get("dead", []))')"
assert_eq "refuse: both pending" 2 "$(json 'len(d.get("pending", []))')"
assert_false "refuse: no MAIL" saw refuse MAIL

for name in strip partial empty refuse; do
    daemon_stop "$name"
done

finish
