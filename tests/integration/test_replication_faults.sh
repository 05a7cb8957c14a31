#!/usr/bin/env bash
# Replication under faults and hostile peers, with real processes on
# loopback (issue 4): one smtpsync-primary, three smtpsync-replica.
#
#   - SIGKILL of a replica while pushes arrive (killed as soon as its log
#     shows the primary's Hello, or at a random moment), and of the primary
#     right after it sent a push, while a loop saves ~100 KB records: every
#     replica ends at the primary's revision and hash, and its store reads;
#   - divergence injected into replica stores (a local revision saved with
#     smtpsyncctl --data-dir while stopped: at the primary's revision, behind
#     it, ahead of it) is repaired by a snapshot;
#   - a node certificate of the CA that is not a member (a fake primary
#     daemon, and a raw client) is refused at the handshake and logged; a
#     member that is not the primary cannot push;
#   - expired and wrong-CA certificates: smtpsyncctl says so clearly, a raw
#     client presenting them is refused and logged, a daemon configured
#     with them does not start; the daemons keep running;
#   - an operator is refused every write, told the role it needs;
#   - malformed frames from a raw TLS client (tests/tools/raw_frame.py):
#     oversized length, truncated frame, garbage inside and instead of TLS,
#     undecodable protobuf, a frame with no body, an empty frame, a client
#     that never starts TLS; each closes only its own connection, logged
#     with its reason; both daemons answer status and replicate after.
# shellcheck disable=SC2317 # functions run through wait_until
set -euo pipefail
# shellcheck source=repl_lib.sh
source "$(dirname "$0")/repl_lib.sh"

REPLICAS=(site-b site-c site-d)
RAW=$SMTPSYNC_TOOLS/raw_frame.py
INSTANCES=16

for r in "${REPLICAS[@]}"; do
    node_config "$r" replica '[replication]' 'primary = primary'
done
lines=()
for r in "${REPLICAS[@]}"; do
    lines+=("[replica \"$r\"]" "address = 127.0.0.1:${NODE_PORT[$r]}")
done
# Short interval: the backoff after a failure is capped by it. Debug logs:
# the kill of the primary is timed on its "delta ... sent" lines.
node_config primary primary '[replication]' 'interval = 3' 'jitter = 0' 'history_keep = 2' \
    "${lines[@]}" '[log]' 'level = debug'

# bundle OUT SKIP: about 100 KB of current CA certificates from the system
# bundle (CA:TRUE, no SAN, valid for a year), skipping the first SKIP: large
# records make every push, and so every apply, take longer.
bundle() {
    python3 - "$1" "$2" <<'PY'
import datetime, re, subprocess, sys
out, skip = sys.argv[1], int(sys.argv[2])
text = subprocess.run("openssl crl2pkcs7 -nocrl -certfile /etc/ssl/certs/ca-certificates.crt"
                      " | openssl pkcs7 -print_certs -text", shell=True,
                      capture_output=True, text=True).stdout
soon = datetime.datetime.now(datetime.timezone.utc).replace(tzinfo=None) + datetime.timedelta(days=365)
good = []
for block in text.split("-----END CERTIFICATE-----")[:-1]:
    if "-----BEGIN CERTIFICATE-----" not in block:
        continue
    pem = block[block.index("-----BEGIN CERTIFICATE-----"):] + "-----END CERTIFICATE-----\n"
    m = re.search(r"Not After : (.*) GMT", block)
    if not m or "CA:TRUE" not in block or "Subject Alternative Name" in block:
        continue
    if datetime.datetime.strptime(" ".join(m.group(1).split()), "%b %d %H:%M:%S %Y") < soon:
        continue
    good.append(pem)
size, chosen = 0, []
for pem in good[skip:]:
    if size + len(pem) > 110000:
        break
    chosen.append(pem)
    size += len(pem)
open(out, "w").write("".join(chosen))
print(len(chosen), size)
PY
}

step "setup: $INSTANCES instances of ~100 KB each on the primary, then first sync"
read -r n size < <(bundle "$T/bundle0.pem" 0)
bundle "$T/bundle1.pem" 1 >/dev/null
if [ "$n" -lt 10 ]; then
    # No usable system bundle: small records (the test still holds, it is
    # only less likely to catch an apply in the middle).
    cp "$PKI/ca.pem" "$T/bundle0.pem"
    cp "$PKI/other-ca.pem" "$T/bundle1.pem"
fi
printf 'record size: %s certificates, %s octets of PEM\n' "$n" "$size"
for ((i = 1; i <= INSTANCES; i++)); do
    ctl "$T/primary.data" settings set --instance "big$i" --hostname "big$i.example.test" \
        --from noreply@example.test --test-address ops@example.test
    assert_exit "big$i: set" 0
    ctl "$T/primary.data" settings import-cert --instance "big$i" "$T/bundle0.pem"
    assert_exit "big$i: import-cert" 0
done
ctl "$T/primary.data" settings save --comment "big records"
assert_exit "revision 1 with the big records" 0
for r in "${REPLICAS[@]}"; do node_start "$r" || finish; done
node_start primary || finish
wait_same 30 primary "${REPLICAS[@]}"

# ---- a load of saves, run in the background ---------------------------------

# saver: import-cert into big1..N in turn (alternating bundles so every save
# changes ~100 KB) and save, through the primary's admin API, until
# $T/saver.stop exists. Failures (the primary is down) are retried. Uses
# its own files: run/OUT belong to the foreground.
saver() {
    local i=0 inst pem ctlargs
    ctlargs=(--server "127.0.0.1:${NODE_PORT[primary]}" --server-id primary --ca "$PKI/ca.pem" --cert "$PKI/alice.pem"
        --key "$PKI/alice.key" --timeout 5)
    while [ ! -e "$T/saver.stop" ]; do
        i=$((i + 1))
        # Each round over the instances swaps every one to the other bundle.
        inst=big$(((i - 1) % INSTANCES + 1))
        pem=$T/bundle$((((i - 1) / INSTANCES + 1) % 2)).pem
        if "$SMTPSYNCCTL" "${ctlargs[@]}" settings import-cert --instance "$inst" "$pem" \
            >/dev/null 2>>"$T/saver.err" &&
            "$SMTPSYNCCTL" "${ctlargs[@]}" settings save --comment "load $i" \
                >>"$T/saver.out" 2>>"$T/saver.err"; then
            :
        else
            sleep 0.1
        fi
    done
}

saver_start() {
    rm -f "$T/saver.stop"
    : >"$T/saver.out"
    saver &
    SAVER_PID=$!
    PIDS+=("$SAVER_PID")
}

saver_stop() {
    touch "$T/saver.stop"
    wait "$SAVER_PID" 2>/dev/null || true
    printf 'saves made by the load loop: %d\n' "$(grep -c '^saved revision' "$T/saver.out" || true)"
}

# wait_log NAME SECS TEXT: polls NAME's log (since its mark) every few ms.
wait_log() {
    local name=$1 secs=$2 text=$3 i
    for ((i = 0; i < secs * 200; i++)); do
        log_has "$name" "$text" && return 0
        sleep 0.005
    done
    return 1
}

# store_reads NAME: the stopped node's store opens and lists its history.
store_reads() {
    ctl "$T/$1.data" history --limit 3
    assert_exit "$1: history reads after SIGKILL" 0
    ctl "$T/$1.data" status --json
    assert_exit "$1: status reads after SIGKILL" 0
}

# ---- SIGKILL of a replica while pushes arrive ------------------------------------

step "SIGKILL of site-b while the primary pushes ~100 KB revisions to it (6 kills)"
saver_start
midway=0
log_mark site-b
for k in 1 2 3 4 5 6; do
    if [ $((k % 2)) = 0 ]; then
        # site-b was just restarted: the primary reconnects, says Hello,
        # and its Delta or Snapshot follows at once.
        if ! wait_log site-b 15 "primary primary connected"; then
            fail "kill $k: the primary did not reconnect to site-b within 15 s"
        fi
        # A snapshot arrives and is applied 20-50 ms after the Hello here.
        delay=$((RANDOM % 30))
        sleep "$(printf '0.%03d' "$delay")"
        how="${delay} ms after the primary's Hello"
    else
        sleep "0.$((RANDOM % 8 + 1))"
        how="at a random moment"
    fi
    node_kill site-b
    if log_has site-b "primary primary connected" && ! log_has site-b "applied"; then
        midway=$((midway + 1))
        how+=" (a push had started, nothing applied yet)"
    fi
    printf 'kill %d of site-b %s; store then at [%s]\n' "$k" "$how" "$(state_of site-b | cut -c1-20)"
    store_reads site-b
    log_mark site-b
    node_start site-b || finish
done
saver_stop
printf '%d of 6 kills landed between the Hello and the apply of a push\n' "$midway"
wait_same 40 primary "${REPLICAS[@]}"
wait_replica_state 20 primary site-b in-sync
as monitor site-b history --limit 1
assert_exit "site-b: history through its daemon" 0

# ---- SIGKILL of the primary right after it pushed -------------------------------

step "SIGKILL of the primary right after it sent a push (3 kills), saves looping"
saver_start
for k in 1 2 3; do
    log_mark primary
    if wait_log primary 20 "sent"; then
        node_kill primary
        printf 'kill %d of the primary after: %s\n' "$k" \
            "$(log_since primary | grep -F sent | head -n1 | cut -d' ' -f3-)"
    else
        fail "kill $k: the primary sent nothing within 20 s"
        node_kill primary
    fi
    store_reads primary
    node_start primary || finish
done
saver_stop
wait_same 40 primary "${REPLICAS[@]}"
for r in "${REPLICAS[@]}"; do
    wait_replica_state 20 primary "$r" in-sync
    ctl "$T/$r.data" history --limit 1
    assert_exit "$r: history reads" 0
done
printf 'after the kills every node is at [%s]\n' "$(state_of primary)"

# ---- divergence -------------------------------------------------------------------

# local_save NAME COMMENT: a revision saved into NAME's store behind the
# replication's back (the node is stopped).
LOCAL_SEQ=0
local_save() {
    LOCAL_SEQ=$((LOCAL_SEQ + 1))
    ctl "$T/$1.data" settings set --instance "$1" --hostname "diverged.example.test" \
        --port $((3000 + LOCAL_SEQ)) \
        --from rogue@example.test --test-address ops@example.test
    assert_exit "$1: local set" 0
    ctl "$T/$1.data" settings save --comment "$2"
    assert_exit "$1: local save ($2)" 0
}

# repaired NAME: NAME holds the primary's state and none of its local change.
repaired() {
    local name=$1
    wait_same 30 primary "$name"
    ctl "$T/$name.data" settings show --json
    assert_eq "$name: the local record is gone" False \
        "$(json "str('$name' in d.get('instances', {}) and d['instances']['$name'].get('hostname') == 'diverged.example.test')")"
    ctl "$T/$name.data" history --json
    assert_eq "$name: no local revision in its history" 0 \
        "$(json 'len([h for h in d if "local" in h.get("comment", "")])')"
    wait_replica_state 20 primary "$name" in-sync
}

# show_states: where each node stands, for the log of the run.
show_states() {
    printf '  primary at %s; site-b at %s, site-c at %s, site-d at %s\n' \
        "$(state_of primary | cut -c1-20)" "$(state_of site-b | cut -c1-20)" \
        "$(state_of site-c | cut -c1-20)" "$(state_of site-d | cut -c1-20)"
}

step "divergence: local revisions saved into stopped replicas"
for r in "${REPLICAS[@]}"; do node_stop "$r"; done
local_save site-b "local 1" # site-b: at the primary's revision, other hash
local_save site-c "local 1" # site-c: behind the primary, on another chain
local_save site-d "local 1" # site-d: ahead of the primary, on another chain
local_save site-d "local 2"
local_save site-d "local 3"
save_change primary "after the divergence 1"
assert_eq "site-b: at the primary's revision" "$SAVED_REV" "$(state_of site-b | cut -d' ' -f1)"
assert_false "site-b: with another hash" same_state primary site-b
show_states
for n in primary "${REPLICAS[@]}"; do log_mark "$n"; done
node_start site-b || finish
repaired site-b
assert_true "site-b: repaired by a snapshot (replica log)" log_has site-b "applied the snapshot"
save_change primary "after the divergence 2"
show_states
for r in site-c site-d; do node_start "$r" || finish; done
for r in site-c site-d; do
    repaired "$r"
    assert_true "$r: repaired by a snapshot (replica log)" log_has "$r" "applied the snapshot"
done
# site-d was ahead: the snapshot took it back, and it says so loudly.
assert_true "site-d: going back is a warning" log_has site-d "this store went BACK from revision"
assert_true "site-d: at warn level" log_has site-d " warn applied the snapshot of revision"
assert_false "site-c: going forward is not" log_has site-c "went BACK"
printf 'what the primary logged about the diverged replicas:\n'
log_since primary | grep -E 'replica site-[bcd]: .*(snapshot|diverged|Diverged|hash)' | cut -d' ' -f3- |
    grep -vE ' -> (ready|snapshot)$' | sed 's/^/  /' | head -n 12

# ---- certificates that are not members ------------------------------------------

step "a fake primary with a CA-signed certificate that is not a member pushes to site-b"
node_config intruder primary '[replication]' 'interval = 2' 'jitter = 0' \
    "[replica \"site-b\"]" "address = 127.0.0.1:${NODE_PORT[site-b]}"
ctl "$T/intruder.data" settings set --instance site-b --hostname evil.example.test \
    --from evil@example.test --test-address evil@example.test
ctl "$T/intruder.data" settings save --comment "evil"
assert_exit "intruder: its own revision 1" 0
B_STATE=$(state_of site-b)
log_mark site-b
node_start intruder || finish
assert_true "site-b refuses intruder at the handshake and logs it" \
    wait_until 20 log_has site-b "'intruder' refused: not a member of the cluster"
assert_eq "site-b: store untouched" "$B_STATE" "$(state_of site-b)"
intruder_failed() {
    [ -n "$(replica_field intruder site-b last_error)" ]
}
assert_true "intruder: records why its push failed" wait_until 15 intruder_failed
as monitor intruder status --json
assert_eq "intruder: site-b is not in-sync for it" True \
    "$(json 'str(d["replicas"][0]["state"] != "in-sync")')"
printf 'the intruder sees site-b as %s: %s\n' "$(json 'd["replicas"][0]["state"]')" \
    "$(json 'd["replicas"][0]["last_error"]')"
node_stop intruder
assert_eq "site-b: still the primary's state" "$(state_of primary)" "$(state_of site-b)"

step "a fake primary with the primary's id and a certificate of another CA pushes to site-b"
# It trusts both CAs, so it accepts site-b's certificate and shows its own:
# site-b alone must refuse it.
cat "$PKI/ca.pem" "$PKI/other-ca.pem" >"$T/both-ca.pem"
node_config fake primary '[replication]' 'interval = 2' 'jitter = 0' \
    "[replica \"site-b\"]" "address = 127.0.0.1:${NODE_PORT[site-b]}"
sed -i "s|^id = .*|id = primary|; s|^ca = .*|ca = $T/both-ca.pem|; s|^cert = .*|cert = $PKI/foreign.pem|; s|^key = .*|key = $PKI/foreign.key|" \
    "$T/fake.ini"
ctl "$T/fake.data" settings set --instance site-b --hostname evil.example.test \
    --from evil@example.test --test-address evil@example.test
ctl "$T/fake.data" settings save --comment "evil"
assert_exit "fake: its own revision 1" 0
log_mark site-b
: >"$T/fake.log"
log_mark fake
"$SMTPSYNC_PRIMARY" --config "$T/fake.ini" >>"$T/fake.out" 2>>"$T/fake.log" </dev/null &
NODE_PID[fake]=$!
PIDS+=("$!")
# (It sends its whole chain, so OpenSSL says "self-signed certificate in
# certificate chain" rather than "unable to get local issuer certificate".)
assert_true "site-b refuses the foreign certificate at the handshake and logs it" \
    wait_until 20 log_has site-b "peer refused id=- remote=127.0.0.1"
assert_true "the fake primary's push failed" wait_until 10 log_has fake "replica site-b:"
printf '  site-b: %s\n' "$(log_since site-b | grep -m1 -F 'peer refused id=-' | cut -d' ' -f3-)"
printf '  fake:   %s\n' "$(log_since fake | grep -m1 -E 'replica site-b: .*(refused|failed|closed)' | cut -d' ' -f3-)"
assert_eq "site-b: still the primary's state" "$(state_of primary)" "$(state_of site-b)"
node_stop fake

step "raw clients: a non-member, and a member that is not the primary, sending a Hello"
raw() { # NAME CERT SCENARIO [ARGS...]
    local name=$1 cert=$2 sc=$3
    shift 3
    run python3 "$RAW" --port "${NODE_PORT[$name]}" --ca "$PKI/ca.pem" --cert "$cert.pem" \
        --key "$cert.key" --scenario "$sc" --timeout 5 "$@"
    printf '  %-8s %-30s %-12s %s\n' "$name" "${cert##*/}" "$sc" "$OUT"
}
log_mark site-b
raw site-b "$PKI/intruder" hello --node intruder --epoch 99 --revision 99
assert_contains "intruder's Hello: refused" "$OUT" "result=refused"
raw site-b "$PKI/site-c" hello --node site-c --epoch 1 --revision 99
assert_match "site-c's Hello to site-b: closed, not the primary" "$OUT" \
    'result=closed error code=-?[0-9]+ message=.*not the primary'
assert_true "site-b logged the refusal of site-c" log_has site-b "refused site-c"
assert_eq "site-b: still the primary's state" "$(state_of primary)" "$(state_of site-b)"
# A member's higher epoch, without a membership naming it the primary, would
# fence the real primary: refused, nothing adopted.
log_mark site-b
raw site-b "$PKI/site-c" hello --node site-c --epoch 5 --revision 99
assert_match "site-c's Hello at epoch 5 to site-b: closed, not the primary" "$OUT" \
    'result=closed error code=-?[0-9]+ message=.*not the primary of epoch 5'
assert_true "site-b logged the refused epoch" log_has site-b "refused epoch 5 from site-c"
as monitor site-b status --json
assert_eq "site-b: still at epoch 1" 1 "$(json 'd["node"]["epoch"]')"
# The primary's own id, at its own epoch, to the primary: it takes no push.
log_mark primary
raw primary "$PKI/primary" hello --node primary --epoch 1 --revision 99
assert_match "the primary's own id, Hello to the primary: closed" "$OUT" \
    'result=closed error code=-?[0-9]+ message=.*own id'
assert_true "the primary logged the refusal" log_has primary "refused primary"
save_change primary "after the hostile Hellos"
wait_same 15 primary "${REPLICAS[@]}"
as monitor primary status --json
assert_eq "the primary is still the primary" primary "$(json 'd["node"]["role"]')"
assert_eq "the primary is not fenced" None "$(json 'str(d["node"]["fenced_epoch"])')"
assert_eq "the primary: still epoch 1" 1 "$(json 'd["node"]["epoch"]')"

step "expired and wrong-CA certificates"
admin_cert "$T/alice-expired" alice "$PKI/ca" 20200101000000Z 20200201000000Z
admin_cert "$T/alice-foreign" alice "$PKI/other-ca"
for cert in alice-expired alice-foreign; do
    run "$SMTPSYNCCTL" --server "127.0.0.1:${NODE_PORT[primary]}" --server-id primary --ca "$PKI/ca.pem" \
        --cert "$T/$cert.pem" --key "$T/$cert.key" status
    assert_exit "smtpsyncctl with $cert" 1
    case $cert in
    alice-expired) assert_contains "smtpsyncctl: expired, says so" "$ERR" "expired on 2020-02-01" ;;
    alice-foreign) assert_contains "smtpsyncctl: wrong CA, says so" "$ERR" \
        "does not verify against the deployment CA" ;;
    esac
    printf '  smtpsyncctl with %s: %s\n' "$cert" "$ERR"
done
# The daemons' side: a client that presents them anyway.
for n in primary site-b; do
    log_mark "$n"
    for cert in "$T/alice-expired" "$PKI/expired" "$T/alice-foreign" "$PKI/foreign"; do
        raw "$n" "$cert" status
        assert_contains "$n refuses ${cert##*/}" "$OUT" "result=refused"
    done
    assert_true "$n logged the expired certificate" log_has "$n" "certificate has expired"
    assert_true "$n logged the wrong CA" log_has "$n" "unable to get local issuer certificate"
    assert_true "$n logged who presented the wrong-CA certificate" \
        log_has "$n" 'peer refused certificate remote=127.0.0.1'
    assert_true "$n logged its subject and names" log_has "$n" 'subject="/CN=alice" san="alice"'
    assert_true "$n still answers status" node_answers "$n"
done
# A daemon given such a certificate does not start, and says why.
for cert in expired foreign; do
    sed "s|^cert = .*|cert = $PKI/$cert.pem|; s|^key = .*|key = $PKI/$cert.key|; s|^listen = .*|listen = 127.0.0.1:$(free_port)|; s|$T/site-d|$T/bad-$cert|" \
        "$T/site-d.ini" >"$T/bad-$cert.ini"
    run timeout 20 "$SMTPSYNC_REPLICA" --config "$T/bad-$cert.ini"
    assert_true "a replica with the $cert certificate does not start (exit $RC)" \
        test "$RC" -ne 0 -a "$RC" -ne 124
    case $cert in
    expired) assert_contains "expired node certificate: why" "$ERR" "expired on 2020-02-01" ;;
    foreign) assert_contains "foreign node certificate: why" "$ERR" \
        "does not verify against the deployment CA" ;;
    esac
    printf '  smtpsync-replica with %s.pem: exit %s: %s\n' "$cert" "$RC" \
        "$(printf '%s\n' "$ERR" | grep -m1 -E 'error|cannot')"
done

# ---- roles ---------------------------------------------------------------------------

step "an operator reads but is refused every write, told which role it needs"
as monitor primary status
assert_exit "operator: status" 0
as monitor primary history --limit 2
assert_exit "operator: history" 0
as monitor primary settings show --instance big1
assert_exit "operator: settings show" 0
for verb in "settings set --instance big1 --port 2600" "settings save" "settings discard" \
    "settings import-cert --instance big1 $PKI/ca.pem" "rollback 1" "sync" "promote"; do
    # shellcheck disable=SC2086
    as monitor primary $verb
    assert_exit "operator: $verb refused" 1
    assert_contains "operator: $verb names the role" "$ERR" "this needs the super-admin role"
done
printf '  operator save: %s\n' "$(as monitor primary settings save; echo "$ERR" | head -n1)"
assert_eq "nothing changed on the primary" "$(state_of site-b)" "$(state_of primary)"

# ---- malformed frames ------------------------------------------------------------------

step "malformed frames from a raw TLS client, to the primary and to site-b"
# The handshake timeout (10 s) runs meanwhile.
python3 "$RAW" --port "${NODE_PORT[primary]}" --ca "$PKI/ca.pem" --cert "$PKI/monitor.pem" \
    --key "$PKI/monitor.key" --scenario silent-tcp --timeout 20 >"$T/silent.out" 2>&1 &
SILENT_PID=$!
PIDS+=("$SILENT_PID")
for n in primary site-b; do
    log_mark "$n"
    member=site-b
    [ "$n" = site-b ] && member=primary
    for cert in monitor "$member"; do
        raw "$n" "$PKI/$cert" status
        assert_match "$n, $cert: a valid request is answered" "$OUT" 'result=reply body=(admin_reply|status_reply)'
        raw "$n" "$PKI/$cert" oversized
        assert_contains "$n, $cert: oversized frame closed" "$OUT" "result=closed"
        raw "$n" "$PKI/$cert" truncated
        raw "$n" "$PKI/$cert" garbage
        assert_contains "$n, $cert: garbage closed" "$OUT" "result=closed"
        raw "$n" "$PKI/$cert" undecodable
        assert_contains "$n, $cert: undecodable frame closed" "$OUT" "result=closed"
        raw "$n" "$PKI/$cert" nobody
        assert_contains "$n, $cert: frame with no body closed" "$OUT" "result=closed"
        raw "$n" "$PKI/$cert" empty
        assert_contains "$n, $cert: empty frame closed" "$OUT" "result=closed"
        raw "$n" "$PKI/$cert" garbage-tls
        assert_contains "$n, $cert: garbage instead of TLS closed" "$OUT" "result=closed"
        assert_true "$n still runs" node_alive "$n"
    done
    assert_true "$n logged: over the size limit" log_has "$n" "frame over the size limit"
    assert_true "$n logged: truncated frame" log_has "$n" "truncated frame"
    assert_true "$n logged: undecodable frame" log_has "$n" "undecodable frame"
    assert_true "$n logged: not TLS" log_has "$n" "TLS handshake failed"
    assert_true "$n answers status after" node_answers "$n"
done
wait "$SILENT_PID" || true
printf '  primary  monitor  silent-tcp   %s\n' "$(cat "$T/silent.out")"
assert_match "a client that never starts TLS is closed by the handshake timeout" \
    "$(cat "$T/silent.out")" 'result=closed after=(9|10|11|12)\.'
save_change primary "after the malformed frames"
wait_same 10 primary "${REPLICAS[@]}"

step "everything stops cleanly"
for n in primary "${REPLICAS[@]}"; do
    node_stop "$n"
done
finish
