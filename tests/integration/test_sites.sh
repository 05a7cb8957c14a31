#!/usr/bin/env bash
# Partitions on the multi-site test bed (issue 5, item 3): the mail server,
# the primary and two replicas each in a network namespace (deploy/netns-sites),
# real smtpsync-primary / smtpsync-replica daemons over mutual TLS between
# the sites' addresses, Postfix's smtp-sink as the mail server.
#
# The bed has two networks: "repl" (primary and replicas) and "mail" (the
# mail server and every node); `cut SITE` takes the site's repl link down,
# so a partition separates a site from the other smtpsync nodes, not from
# its mail server.
#
#   1. a replica partitioned from the primary keeps delivering mail with its
#      last settings (revision R) while the primary saves R+1; the primary's
#      status shows it lagging (behind: its connection is still open), and
#      unreachable with the reason once the primary, restarted meanwhile
#      (a clean stop, bounded), cannot connect; once the link is back the
#      primary's own retry brings it to R+1 (no sync asked), and it
#      delivers with R+1;
#   2. the primary partitioned away (with its connections open): every
#      node keeps delivering (the primary through its own mail link), each
#      mail once, from its own site's address (smtp-sink's X-Client-Addr),
#      with its own From; a replica answers status for itself and its last
#      push from the primary grows old; the primary shows both lagging; a
#      save made meanwhile reaches them once healed (TCP retransmission on
#      the same connections); no mail lost or doubled;
#   3. netns-sites itself: status shows the cut, bad input is refused,
#      `delay` says where the kernel has no tc netem.
#
# Skips (77) unless root with network namespaces. Each namespace is
# prefixed ss$$ and removed on exit, whatever happens.
# shellcheck disable=SC2317 # functions run through wait_until
set -euo pipefail
# shellcheck source=sites_lib.sh
source "$(dirname "$0")/sites_lib.sh"

REPLICAS=(replica-1 replica-2)
NODES=(primary "${REPLICAS[@]}")
RUN=$$-$RANDOM

step "test bed: mail server, primary, two replicas, each in a namespace"
sites_up 2 || finish
assert_contains "up: names the namespaces it made" "$OUT" "$SITES_PREFIX-replica-2"
sites_pki "${NODES[@]}" || finish
sink_start || finish

for r in "${REPLICAS[@]}"; do
    node_config "$r" replica '[replication]' 'primary = primary'
done
lines=()
for r in "${REPLICAS[@]}"; do
    lines+=("[replica \"$r\"]" "address = ${SITE_ADDR[$r]}:${NODE_PORT[$r]}")
done
# A short interval: it also caps the reconnect backoff.
node_config primary primary '[replication]' 'interval = 2' 'jitter = 0' "${lines[@]}"

# Revision 1 (before any daemon): every instance sends to the sink, each
# with its own From.
for n in "${NODES[@]}"; do
    ctl "$T/primary.data" settings set --instance "$n" --hostname "${MAIL_ADDR[mail]}" --port 25 \
        --from "$n-v1@example.test" --test-address "ops@example.test" --no-smtps
    assert_exit "revision 1: settings of $n" 0
done
ctl "$T/primary.data" settings save --comment "every site to the sink"
assert_exit "revision 1: save" 0
for n in "${REPLICAS[@]}" primary; do node_start "$n" || finish; done
wait_same 20 primary "${REPLICAS[@]}"
for r in "${REPLICAS[@]}"; do wait_replica_state 10 primary "$r" in-sync; done
print_status primary

# send_token SITE TAG: a tokencode mail through SITE's submission socket
# (a unix socket: reachable across namespaces); the token is TAG-RUN.
send_token() {
    local site=$1 token="$2-$RUN"
    printf 'Your code for %s: %s\n' "$site" "$token" >"$T/body"
    send_mail "$T/$site.sock" --to "user@example.test" --subject "code $token" \
        --priority tokencode --body-file "$T/body"
    assert_exit "$site: send $token" 0
}

# delivered SITE TAG FROM: the mail TAG reached the sink once, from SITE's
# mail address, with From FROM.
delivered() {
    local site=$1 token="$2-$RUN" from=$3 f
    if wait_until 20 sink_has "$token"; then
        f=$(sink_files "$token" | head -n 1)
        assert_eq "$token: delivered once" 1 "$(sink_count "$token")"
        assert_eq "$token: sent from $site's mail address" "${MAIL_ADDR[$site]}" "$(sink_client "$f")"
        assert_contains "$token: From" "$(sink_from "$f")" "$from"
    else
        sctl "$T/$site.sock" queue
        fail "$token: not delivered by $site; queue: $OUT; log: $(tail -n 10 "$T/$site.log")"
    fi
}

for n in "${NODES[@]}"; do
    send_token "$n" "start-$n"
done
for n in "${NODES[@]}"; do
    delivered "$n" "start-$n" "$n-v1@example.test"
done
R=$(state_of primary | cut -d' ' -f1)

# ---- 1. a partitioned replica ------------------------------------------------

step "1. replica-1 cut from the primary at revision $R"
sites cut replica-1
assert_exit "cut replica-1" 0
sites status
assert_match "status shows replica-1's repl link cut" "$OUT" "^replica-1 .* CUT"
printf '%s\n' "$OUT" | sed 's/^/    /'
assert_false "the primary cannot reach replica-1" \
    ip netns exec "$(ns_of primary)" timeout 4 bash -c "(exec 3<>/dev/tcp/${SITE_ADDR[replica-1]}/7443) 2>/dev/null"

step "1. the primary saves revision $((R + 1)): replica-1's From changes"
as alice primary settings set --instance replica-1 --from "replica-1-v2@example.test"
assert_exit "set replica-1's From" 0
as alice primary settings save --comment "replica-1: new From, while it is cut off" --json
assert_exit "save" 0
R1=$(json 'd["revision"]')
assert_eq "the save is revision R+1" "$((R + 1))" "$R1"
wait_same 10 primary replica-2
wait_replica_state 10 primary replica-2 in-sync
lagging() {
    [ "$(replica_field primary replica-1 applied_revision)" = "$R" ] &&
        [ "$(replica_field primary replica-1 state)" != in-sync ]
}
assert_true "the primary's status: replica-1 lags at revision $R" wait_until 10 lagging
printf '    replica-1 on the primary: state %s, applied %s, lag %s revision(s), last error: %s\n' \
    "$(replica_field primary replica-1 state)" "$(replica_field primary replica-1 applied_revision)" \
    "$(replica_field primary replica-1 lag_revisions)" "$(replica_field primary replica-1 last_error)"

step "1. replica-1, cut off, delivers with its last settings (revision $R)"
assert_eq "replica-1's store is still at revision $R" "$R" "$(state_of replica-1 | cut -d' ' -f1)"
ctl "$T/replica-1.data" settings show --instance replica-1 --json
assert_eq "replica-1's own settings: the From of revision $R" "replica-1-v1@example.test" \
    "$(json 'd["instances"]["replica-1"]["from_address"]')"
send_token replica-1 cut-replica-1
delivered replica-1 cut-replica-1 "replica-1-v1@example.test"

# The primary's connection to replica-1 was open when the link went down:
# nothing fails on it (TCP retransmits) until the Delta has gone unanswered
# for 20 s, so the primary shows replica-1 behind meanwhile (unit_repl
# covers the answer timeout). A primary restarted during the partition
# cannot connect at all: replica-1 is unreachable at once, with the reason.
step "1. the primary restarts while replica-1 is cut off: replica-1 unreachable"
# Its SIGTERM waits (at most the 10 s handshake timeout) for replica-1 to
# take the octets still queued for it, which never comes.
stop_at=$SECONDS
node_stop primary
printf '    the primary stopped in %ss\n' "$((SECONDS - stop_at))"
assert_true "the primary's stop is bounded" test $((SECONDS - stop_at)) -le 15
node_start primary || finish
wait_replica_state 20 primary replica-1 unreachable
assert_match "replica-1's last error: the connection failed" \
    "$(replica_field primary replica-1 last_error)" 'connect|route|unreachable|timed out|timeout'
printf '    replica-1 on the primary: state %s, last error: %s\n' \
    "$(replica_field primary replica-1 state)" "$(replica_field primary replica-1 last_error)"
wait_replica_state 10 primary replica-2 in-sync

step "1. heal: replica-1 catches up and delivers with revision $R1"
healed_at=$SECONDS
sites heal replica-1
assert_exit "heal replica-1" 0
# Nobody asks: the primary's reconnect backoff (capped at the 2 s interval)
# finds the link back and pushes the missed revision by itself.
wait_same 15 primary replica-1
printf '    replica-1 at revision %s %ss after the link came back\n' \
    "$(state_of replica-1 | cut -d' ' -f1)" "$((SECONDS - healed_at))"
wait_replica_state 20 primary replica-1 in-sync
send_token replica-1 healed-replica-1
delivered replica-1 healed-replica-1 "replica-1-v2@example.test"
print_status primary

# ---- 2. the primary partitioned away -----------------------------------------

step "2. the primary cut from both replicas"
sites cut primary
assert_exit "cut primary" 0
cut_ms=$(date +%s%3N)
as alice primary settings set --instance replica-2 --from "replica-2-v2@example.test"
as alice primary settings save --comment "replica-2: new From, while the primary is cut off" --json
assert_exit "save on the cut-off primary" 0
R2=$(json 'd["revision"]')
for i in 1 2 3; do
    for n in "${NODES[@]}"; do
        send_token "$n" "apart-$n-$i"
    done
done
for i in 1 2 3; do
    delivered primary "apart-primary-$i" "primary-v1@example.test"
    delivered replica-1 "apart-replica-1-$i" "replica-1-v2@example.test"
    delivered replica-2 "apart-replica-2-$i" "replica-2-v1@example.test"
done
# Long enough for several scheduled pushes (interval 2 s) to have failed.
old_enough() {
    [ $(($(date +%s%3N) - cut_ms)) -ge 6000 ]
}
wait_until 10 old_enough
for r in "${REPLICAS[@]}"; do
    as monitor "$r" status --json
    assert_exit "$r answers status with the primary cut off" 0
    assert_eq "$r: still at revision $R1" "$R1" "$(json 'd["node"]["revision"]')"
    assert_eq "$r: its primary" primary "$(json 'd["node"]["primary"]')"
    last_push=$(json 'd["node"]["last_push"] or ""')
    last_ms=$(date -d "$last_push" +%s%3N)
    printf '    %s: last push from the primary %s, %s s ago\n' "$r" "$last_push" \
        "$((($(date +%s%3N) - last_ms) / 1000))"
    assert_true "$r: no push since the cut ($last_push)" test "$last_ms" -le "$cut_ms"
    assert_true "$r: alive" node_alive "$r"
done
assert_true "primary: alive" node_alive primary
for r in "${REPLICAS[@]}"; do
    assert_eq "the primary's status: $r at revision $R1" "$R1" \
        "$(replica_field primary "$r" applied_revision)"
    assert_false "the primary's status: $r not in sync" replica_state_is primary "$r" in-sync
done
print_status primary

step "2. heal: revision $R2 reaches both replicas, nothing was lost"
healed_at=$SECONDS
sites heal primary
assert_exit "heal primary" 0
wait_same 30 primary "${REPLICAS[@]}"
printf '    replicas at revision %s %ss after the link came back\n' "$R2" "$((SECONDS - healed_at))"
for r in "${REPLICAS[@]}"; do wait_replica_state 20 primary "$r" in-sync; done
as monitor replica-2 status --json
last_ms=$(date -d "$(json 'd["node"]["last_push"] or "1970-01-01T00:00:00Z"')" +%s%3N)
assert_true "replica-2: a push since the heal" test "$last_ms" -gt "$cut_ms"
send_token replica-2 healed-replica-2
delivered replica-2 healed-replica-2 "replica-2-v2@example.test"
# Every token sent, each exactly once (delivered counted each as it came).
assert_eq "mails in the sink: every one sent, none twice" "$((3 + 2 + 9 + 1))" \
    "$(grep -rlF -- "-$RUN" "$SINK_DIR" | wc -l)"
for n in "${NODES[@]}"; do
    assert_true "$n: queue drained" wait_until 10 queue_empty "$T/$n.sock"
done
print_status primary

# ---- 3. the tool -------------------------------------------------------------

step "3. netns-sites: bad input, delay"
sites cut nowhere
assert_exit "cut an unknown site" 2
assert_contains "cut an unknown site: says why" "$ERR" "bad site 'nowhere'"
sites cut replica-9
assert_exit "cut a site the bed does not have" 1
assert_contains "cut replica-9: names the sites" "$ERR" "no site 'replica-9'"
sites up -n 3
assert_exit "up again with another layout" 1
assert_contains "up again: says to run down first" "$ERR" "down' first"
sites delay replica-1 50 1%
if [ "$RC" -eq 0 ]; then
    printf '    tc netem is available: 50 ms, 1%% loss on replica-1\n'
    sites status
    assert_contains "status shows the delay" "$OUT" "delay 50"
    sites delay replica-1 0
    assert_exit "delay removed" 0
else
    assert_exit "delay without netem" 1
    assert_contains "delay without netem: says so" "$ERR" \
        "netns-sites: tc netem is not available on this kernel; links run without added latency"
fi

# An up interrupted halfway removes what it made: an `ip` that is slow
# (1 s) on replica-2's namespace leaves the time to send SIGTERM.
iprefix=${SITES_PREFIX}i
mkdir "$T/slowip"
cat >"$T/slowip/ip" <<EOF
#!/usr/bin/env bash
case " \$* " in
*" netns add $iprefix-replica-2 "*) : >"$T/slowip/reached"; sleep 1 ;;
esac
exec $(command -v ip) "\$@"
EOF
chmod +x "$T/slowip/ip"
PATH=$T/slowip:$PATH "$SITES" -p "$iprefix" up -n 3 >"$T/interrupted.out" 2>"$T/interrupted.err" &
up_pid=$!
if wait_until 20 test -e "$T/slowip/reached"; then
    kill -TERM "$up_pid"
fi
rc=0
wait "$up_pid" || rc=$?
assert_eq "up interrupted: exit 1" 1 "$rc"
assert_contains "up interrupted: says so" "$(cat "$T/interrupted.err")" "interrupted"
assert_false "up interrupted: no namespace of it is left" \
    bash -c "ip netns list | grep -q '^$iprefix-'"
"$SITES" -p "$iprefix" down >/dev/null 2>&1 || true

step "everything stops cleanly"
for n in "${REPLICAS[@]}" primary; do
    node_stop "$n"
done
# A bed with an address missing is not "already up".
ip -n "$SITES_PREFIX-replica-2" addr flush dev mail0
sites up
assert_exit "up over an incomplete bed" 1
assert_contains "up over an incomplete bed: says so" "$ERR" "incomplete test bed"
assert_contains "up over an incomplete bed: run down first" "$ERR" "down' first"
sites_down
assert_false "no namespace of this run is left" bash -c "ip netns list | grep -q '^$SITES_PREFIX-'"
sites down
assert_exit "down again" 0
finish
