#!/usr/bin/env bash
# Prometheus metrics of the real daemons (issue 5): a primary and a replica
# with [node] metrics_listen = 127.0.0.1:0, scraped with curl over HTTP.
#
#   - the body passes `promtool check metrics` (format and lint);
#   - state gauges: revision and epoch on both, the replica's state set on
#     the primary (in_sync), lag, the replica's last contact with the
#     primary, outbox depth, the settings revision in use, certificate
#     expiry of the node, the CA and the imported SMTP trust certificate
#     (compared with `openssl x509 -enddate`);
#   - event counters: pushes acknowledged (and one lost with its connection:
#     failed), mail delivered to Postfix (SMTPS
#     with AUTH) and its latency histogram, mTLS handshakes refused (a
#     certificate of another CA: unknown_ca; a CA-signed one that is no
#     member or admin: not_authorized; a silent client: timeout; a Test
#     Connection trusting another CA: channel smtp, unknown_ca);
#   - HTTP: 404 for another path, 405 for POST, HEAD answered;
#   - the SMTP password is never in a scrape;
#   - configuration: a non-loopback metrics_listen is refused at startup
#     with FILE:LINE, a busy port is fatal, a SIGHUP change needs a restart.
# shellcheck disable=SC2317 # functions run through wait_until and assert_true
set -euo pipefail
# shellcheck source=repl_lib.sh
source "$(dirname "$0")/repl_lib.sh"
postfix_env

command -v curl >/dev/null || { echo "SKIP: curl is not installed" >&2; exit 77; }
command -v promtool >/dev/null || { echo "SKIP: promtool is not installed" >&2; exit 77; }

RUN=$$-$RANDOM
declare -A MPORT=()

# with_metrics NAME: metrics_listen = 127.0.0.1:0 in NAME's [node].
with_metrics() {
    sed -i '/^listen = /a metrics_listen = 127.0.0.1:0' "$T/$1.ini"
}

# metrics_port NAME: the port NAME logged ("metrics: listening on ...").
metrics_port() {
    grep -o 'metrics: listening on http://127\.0\.0\.1:[0-9]*/metrics' "$T/$1.log" | tail -n1 |
        sed 's|.*:\([0-9]*\)/metrics|\1|'
}

# scrape NAME: GET /metrics into $T/NAME.prom; HTTP_CODE is the status.
scrape() {
    HTTP_CODE=$(curl -s -m 10 -o "$T/$1.prom" -w '%{http_code}' \
        "http://127.0.0.1:${MPORT[$1]}/metrics" || true)
}

# metric NAME SERIES: the value of SERIES (name{labels} as rendered) in
# NAME's last scrape; "" when absent.
metric() {
    awk -v k="$2" '$1 == k { print $2; exit }' "$T/$1.prom"
}

# metric_ge NAME SERIES MIN: the value is a number >= MIN.
metric_ge() {
    local v
    v=$(metric "$1" "$2")
    [ -n "$v" ] && awk -v v="$v" -v m="$3" 'BEGIN { exit !(v + 0 >= m + 0) }'
}

# not_after FILE: the notAfter of the first certificate of FILE, Unix time.
not_after() {
    date -u -d "$(openssl x509 -enddate -noout -in "$1" | cut -d= -f2)" +%s
}

# series_is NAME SERIES VALUE: a fresh scrape of NAME has SERIES at VALUE.
series_is() {
    scrape "$1"
    [ "$HTTP_CODE" = 200 ] && [ "$(metric "$1" "$2")" = "$3" ]
}

# series_ge NAME SERIES MIN: a fresh scrape of NAME has SERIES >= MIN.
series_ge() {
    scrape "$1"
    [ "$HTTP_CODE" = 200 ] && metric_ge "$@"
}

# ---- configuration refused --------------------------------------------------

step "a metrics_listen that is not loopback is refused at startup with FILE:LINE"
mkdir -p "$T/bad.data"
for bad in 0.0.0.0:9465 10.1.2.3:9465 '[::]:9465' mail.example.test:9465; do
    printf '[node]\nid = bad\ndata_dir = %s\nmetrics_listen = %s\nsubmit_socket = %s\n' \
        "$T/bad.data" "$bad" "$T/bad.sock" >"$T/bad.ini"
    run "$SMTPSYNC_PRIMARY" --config "$T/bad.ini"
    assert_exit "metrics_listen = $bad: usage error" 2
    assert_contains "metrics_listen = $bad: FILE:LINE and why" "$ERR" \
        "$T/bad.ini:4: invalid value '$bad' for 'metrics_listen' in [node]: metrics are served on loopback only"
done
assert_false "nothing was started for it" test -S "$T/bad.sock"

# ---- a primary and a replica -----------------------------------------------

step "a primary and a replica, each serving metrics on a port of its choice"
node_config site-b replica '[replication]' 'primary = primary'
with_metrics site-b
node_config primary primary '[replication]' 'interval = 600' 'jitter = 0' \
    '[replica "site-b"]' "address = 127.0.0.1:${NODE_PORT[site-b]}"
with_metrics primary
node_start site-b || finish
node_start primary || finish
for n in primary site-b; do
    MPORT[$n]=$(metrics_port "$n")
    assert_match "$n logs where it serves metrics" "${MPORT[$n]}" '^[1-9][0-9]*$'
done
if [ -z "${MPORT[primary]}" ] || [ -z "${MPORT[site-b]}" ]; then finish; fi
# A client that connects to site-b and never says a word: its handshake
# times out after 10 s (PEER_HANDSHAKE_TIMEOUT_DEFAULT_MS), counted below.
exec 7<>"/dev/tcp/127.0.0.1/${NODE_PORT[site-b]}"

step "settings for Postfix over SMTPS with AUTH, trusting the test CA, everywhere"
as alice primary settings set --instance primary --hostname 127.0.0.1 --port "$PORT_SMTPS" \
    --from "metrics@example.test" --logon --user "$SASL_USER" \
    --password-file "$SASL_PASSWORD_FILE" --smtps --tls-mode strict \
    --test-address user@example.test
assert_exit "set" 0
as alice primary settings import-cert --instance primary "$CERTS/ca.pem"
assert_exit "import-cert" 0
as alice primary settings save --apply-to-replicas --comment "metrics test" --json
assert_exit "save --apply-to-replicas" 0
REV=$(json 'd["revision"]')
wait_same 20 primary site-b
wait_replica_state 20 primary site-b in-sync

step "mail delivered by both nodes"
printf 'A mail counted by the metrics.\n' >"$T/body"
for i in 1 2 3; do
    send_mail "$T/primary.sock" --to user@example.test --subject "metrics-p$i-$RUN" \
        --priority tokencode --body-file "$T/body"
    assert_exit "primary: send $i" 0
done
for i in 1 2; do
    send_mail "$T/site-b.sock" --to user@example.test --subject "metrics-b$i-$RUN" \
        --priority report --body-file "$T/body"
    assert_exit "site-b: send $i" 0
done
for tag in p1 p2 p3 b1 b2; do
    if wait_until 30 postfix_has "metrics-$tag-$RUN"; then
        pass
    else
        fail "mail metrics-$tag-$RUN not delivered: $(tail -n 10 "$T/primary.log" "$T/site-b.log")"
    fi
done
wait_until 10 queue_empty "$T/primary.sock" || true
wait_until 10 queue_empty "$T/site-b.sock" || true

step "handshakes refused on the primary's mTLS port"
# (openssl s_client: smtpsyncctl checks its own certificate against --ca
# before it connects.)
run timeout 10 openssl s_client -connect "127.0.0.1:${NODE_PORT[primary]}" -CAfile "$PKI/ca.pem" \
    -cert "$PKI/foreign.pem" -key "$PKI/foreign.key"
assert_true "a certificate of another CA is refused and logged" \
    wait_until 10 grep -q "peer refused id=- remote=127.0.0.1" "$T/primary.log"
run "$SMTPSYNCCTL" --server "127.0.0.1:${NODE_PORT[primary]}" --server-id primary \
    --ca "$PKI/ca.pem" --cert "$PKI/intruder.pem" --key "$PKI/intruder.key" --timeout 5 status
assert_false "a CA-signed certificate of no member or admin is refused" test "$RC" -eq 0

# ---- the scrape -------------------------------------------------------------

step "scrapes pass promtool"
for n in primary site-b; do
    scrape "$n"
    assert_eq "$n: GET /metrics" 200 "$HTTP_CODE"
    run promtool check metrics <"$T/$n.prom"
    assert_exit "$n: promtool check metrics ($OUT $ERR)" 0
    assert_eq "$n: promtool reports no lint problem" "" "$OUT$ERR"
    curl -s -m 10 -D "$T/$n.headers" -o /dev/null "http://127.0.0.1:${MPORT[$n]}/metrics" || true
    assert_match "$n: text exposition format" "$(cat "$T/$n.headers")" \
        'content-type: text/plain; version=0\.0\.4'
done
printf -- '--- primary scrape (excerpt):\n%s\n---\n' "$(grep -v '^#' "$T/primary.prom" | head -n 40)"

step "state gauges"
# The sender reloads the settings within a second of the save.
assert_true "primary: the sender uses revision $REV" \
    wait_until 10 series_is primary smtpsync_settings_revision_in_use "$REV"
assert_true "site-b: the sender uses revision $REV" \
    wait_until 10 series_is site-b smtpsync_settings_revision_in_use "$REV"
VERSION=$("$SMTPSYNC_PRIMARY" --version | awk '{ print $NF }')
for n in primary site-b; do
    role=replica
    [ "$n" = primary ] && role=primary
    assert_eq "$n: smtpsync_info" 1 \
        "$(metric "$n" "smtpsync_info{node=\"$n\",role=\"$role\",version=\"$VERSION\"}")"
    assert_eq "$n: store revision is the saved one" "$REV" "$(metric "$n" smtpsync_store_revision)"
    assert_eq "$n: epoch 1" 1 "$(metric "$n" smtpsync_epoch)"
    for p in tokencode report; do
        assert_eq "$n: no $p mail pending" 0 \
            "$(metric "$n" "smtpsync_outbox_messages{priority=\"$p\",state=\"pending\"}")"
    done
    assert_eq "$n: no dead mail" 0 "$(metric "$n" 'smtpsync_outbox_messages{state="dead"}')"
    assert_match "$n: sessions active is a count" \
        "$(metric "$n" smtpsync_sender_sessions_active)" '^[0-9]+$'
    assert_eq "$n: node certificate expiry" "$(not_after "$PKI/$n.pem")" \
        "$(metric "$n" 'smtpsync_certificate_expiry_timestamp_seconds{cert="node"}')"
    assert_eq "$n: CA expiry" "$(not_after "$PKI/ca.pem")" \
        "$(metric "$n" 'smtpsync_certificate_expiry_timestamp_seconds{cert="ca"}')"
    assert_eq "$n: SMTP trust certificate expiry" "$(not_after "$CERTS/ca.pem")" \
        "$(metric "$n" 'smtpsync_certificate_expiry_timestamp_seconds{cert="smtp_trusted"}')"
done
assert_eq "primary: site-b in_sync" 1 \
    "$(metric primary 'smtpsync_replica_state{replica="site-b",state="in_sync"}')"
for s in never_synced behind syncing unreachable diverged fenced; do
    assert_eq "primary: site-b not $s" 0 \
        "$(metric primary "smtpsync_replica_state{replica=\"site-b\",state=\"$s\"}")"
done
assert_eq "primary: site-b lags 0 revisions" 0 \
    "$(metric primary 'smtpsync_replica_lag_revisions{replica="site-b"}')"
assert_eq "primary: site-b at revision $REV" "$REV" \
    "$(metric primary 'smtpsync_replica_revision{replica="site-b"}')"
now=$(date +%s)
last=$(metric primary 'smtpsync_replica_last_success_timestamp_seconds{replica="site-b"}')
assert_true "primary: site-b's last success is recent ($last, now $now)" \
    awk -v v="$last" -v now="$now" 'BEGIN { exit !(v != "" && v > now - 120 && v <= now + 1) }'
contact=$(metric site-b smtpsync_primary_last_contact_timestamp_seconds)
assert_true "site-b: the primary's last contact is recent ($contact, now $now)" \
    awk -v v="$contact" -v now="$now" 'BEGIN { exit !(v != "" && v > now - 120 && v <= now + 1) }'
assert_eq "site-b: no replica gauges on a replica" "" \
    "$(grep '^smtpsync_replica_state{' "$T/site-b.prom" || true)"
assert_eq "primary: no primary contact gauge on the primary" "" \
    "$(metric primary smtpsync_primary_last_contact_timestamp_seconds)"

step "event counters"
assert_true "primary: pushes to site-b acknowledged" \
    metric_ge primary 'smtpsync_replication_pushes_total{replica="site-b",result="ok"}' 1
pushes=$(metric primary 'smtpsync_replication_pushes_total{replica="site-b",result="ok"}')
assert_true "primary: their bytes, more than a few per push" \
    metric_ge primary 'smtpsync_replication_push_bytes_total{replica="site-b",result="ok"}' \
    "$((pushes * 16))"
assert_eq "primary: 3 tokencodes delivered" 3 \
    "$(metric primary 'smtpsync_deliveries_total{priority="tokencode",result="delivered"}')"
assert_eq "primary: latency observed for each" 3 \
    "$(metric primary 'smtpsync_delivery_latency_seconds_count{priority="tokencode"}')"
assert_eq "primary: every one within the +Inf bucket" 3 \
    "$(metric primary 'smtpsync_delivery_latency_seconds_bucket{priority="tokencode",le="+Inf"}')"
assert_true "primary: latency sum is positive" \
    awk -v v="$(metric primary 'smtpsync_delivery_latency_seconds_sum{priority="tokencode"}')" \
    'BEGIN { exit !(v > 0 && v < 90) }'
assert_eq "site-b: 2 reports delivered" 2 \
    "$(metric site-b 'smtpsync_deliveries_total{priority="report",result="delivered"}')"
assert_eq "site-b: latency observed for each" 2 \
    "$(metric site-b 'smtpsync_delivery_latency_seconds_count{priority="report"}')"
assert_true "primary: a foreign certificate counted as unknown_ca" \
    metric_ge primary 'smtpsync_tls_handshake_failures_total{channel="replication",reason="unknown_ca"}' 1
assert_true "primary: a non-member counted as not_authorized" \
    metric_ge primary 'smtpsync_tls_handshake_failures_total{channel="replication",reason="not_authorized"}' 1
assert_eq "primary: no SMTP handshake failed" "" \
    "$(grep '^smtpsync_tls_handshake_failures_total{channel="smtp"' "$T/primary.prom" || true)"

assert_eq "primary: no push failed" "" \
    "$(metric primary 'smtpsync_replication_pushes_total{replica="site-b",result="failed"}')"

assert_true "site-b: a silent client counted as a handshake timeout" \
    wait_until 20 series_is site-b \
    'smtpsync_tls_handshake_failures_total{channel="replication",reason="timeout"}' 1
exec 7>&-

step "an SMTP handshake refused: Test Connection of a draft trusting another CA"
# Test Connection runs in the daemon asked, with the daemon's SMTP client:
# its handshakes count under channel="smtp" like the sender's.
as alice primary settings import-cert --instance primary "$PKI/other-ca.pem"
assert_exit "a draft trusting another CA" 0
as alice primary settings test --instance primary
assert_exit "its Test Connection fails" 1
scrape primary
assert_true "primary: counted as smtp unknown_ca" \
    metric_ge primary 'smtpsync_tls_handshake_failures_total{channel="smtp",reason="unknown_ca"}' 1
as alice primary settings discard --instance primary
assert_exit "draft discarded" 0

step "a push lost with its connection counts as failed"
# site-b frozen: the Delta of the next save waits unanswered; killed: the
# connection closes with it unacknowledged.
kill -STOP "${NODE_PID[site-b]}"
save_change primary "while site-b is frozen"
assert_true "primary: the push to site-b is in flight" \
    wait_until 10 replica_state_is primary site-b syncing
node_kill site-b
assert_true "primary: counted as a failed push" \
    wait_until 20 series_is primary \
    'smtpsync_replication_pushes_total{replica="site-b",result="failed"}' 1
assert_true "primary: with its bytes" \
    metric_ge primary 'smtpsync_replication_push_bytes_total{replica="site-b",result="failed"}' 16
node_start site-b || finish
wait_same 30 primary site-b
assert_true "primary: site-b's catch-up acknowledged" \
    wait_until 10 series_ge primary \
    'smtpsync_replication_pushes_total{replica="site-b",result="ok"}' "$((pushes + 1))"
assert_true "primary: site-b back in_sync" \
    wait_until 10 series_is primary 'smtpsync_replica_state{replica="site-b",state="in_sync"}' 1

step "secrets stay out"
password=$(head -n1 "$SASL_PASSWORD_FILE")
for n in primary site-b; do
    if grep -qF -- "$password" "$T/$n.prom"; then
        fail "$n: the SMTP password is in the scrape"
    else
        pass
    fi
done

# ---- HTTP -------------------------------------------------------------------

step "other paths and methods"
base="http://127.0.0.1:${MPORT[primary]}"
assert_eq "GET /nope: 404" 404 "$(curl -s -m 10 -o /dev/null -w '%{http_code}' "$base/nope" || true)"
assert_eq "POST /metrics: 405" 405 \
    "$(curl -s -m 10 -o /dev/null -w '%{http_code}' -X POST --data x "$base/metrics" || true)"
assert_eq "HEAD /metrics: 200" 200 \
    "$(curl -s -m 10 -I -o /dev/null -w '%{http_code}' "$base/metrics" || true)"
scrape primary
assert_eq "still serving after them" 200 "$HTTP_CODE"

# ---- restart-only and fatal ---------------------------------------------------

step "SIGHUP: a changed metrics_listen needs a restart; the old port keeps serving"
log_mark primary
sed -i 's|^metrics_listen = .*|metrics_listen = 127.0.0.1:1|' "$T/primary.ini"
kill -HUP "${NODE_PID[primary]}"
assert_true "the reload says a restart is needed" \
    wait_until 10 log_has primary \
    '[node] metrics_listen changed from "127.0.0.1:0" to "127.0.0.1:1": restart needed'
scrape primary
assert_eq "the old port still serves" 200 "$HTTP_CODE"

step "a metrics port in use is fatal at startup"
cat >"$T/busy.ini" <<INI
[node]
id = busy
data_dir = $T/busy.data
submit_socket = $T/busy.sock
metrics_listen = 127.0.0.1:${MPORT[primary]}
INI
mkdir -p "$T/busy.data"
run timeout 30 "$SMTPSYNC_PRIMARY" --config "$T/busy.ini"
assert_exit "exits 1" 1
assert_contains "says why" "$ERR" "cannot serve metrics on 127.0.0.1:${MPORT[primary]}"
assert_false "its submission socket is gone" test -S "$T/busy.sock"

step "clean stops"
node_stop primary
node_stop site-b
finish
