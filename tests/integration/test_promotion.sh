#!/usr/bin/env bash
# Promotion and fencing with real processes on loopback (issue 4, item 6),
# following the disaster-recovery runbook: the primary is lost, a replica
# is promoted with `smtpsyncctl promote`, the other replicas follow it, and
# the old primary, when it comes back, learns it was fenced and stops
# pushing.
#
#   - promote is refused to an operator, and to a replica known to lag
#     (unless --force);
#   - after `promote`, the new primary has epoch 2, takes writes, and pushes
#     them to the other replicas, which refuse the old primary from then on;
#   - the old primary restarted with its old store: it is fenced (status
#     says so), pushes nothing more, and no replica takes anything from it;
#   - the status table of the new primary.
# shellcheck disable=SC2317 # functions run through wait_until
set -euo pipefail
# shellcheck source=repl_lib.sh
source "$(dirname "$0")/repl_lib.sh"

REPLICAS=(site-b site-c site-d)
RAW=$SMTPSYNC_TOOLS/raw_frame.py

for r in "${REPLICAS[@]}"; do
    # Every node may become the primary: the same [replication] everywhere.
    node_config "$r" replica '[replication]' 'interval = 5' 'jitter = 0' 'primary = primary'
done
lines=()
for r in "${REPLICAS[@]}"; do
    lines+=("[replica \"$r\"]" "address = 127.0.0.1:${NODE_PORT[$r]}")
done
node_config primary primary '[replication]' 'interval = 5' 'jitter = 0' "${lines[@]}"

epoch_of() { # NAME: the epoch NAME's daemon reports
    as monitor "$1" status --json
    [ "$RC" -eq 0 ] && json 'd["node"]["epoch"]'
}

# store_epoch_is NAME EPOCH: NAME's store is at EPOCH (read locally, cheap).
store_epoch_is() {
    [ "$("$SMTPSYNCCTL" --data-dir "$T/$1.data" status --json 2>/dev/null |
        awk -F'\t' '/"epoch":/ { e = $NF; gsub(/[^0-9]/, "", e); print e; exit }')" = "$2" ]
}

role_of() {
    as monitor "$1" status --json
    [ "$RC" -eq 0 ] && json 'd["node"]["role"]'
}

step "a primary and three replicas in sync at epoch 1"
ctl "$T/primary.data" settings set --instance primary --hostname mail0.example.test \
    --from noreply@example.test --test-address ops@example.test
ctl "$T/primary.data" settings save --comment "epoch 1"
assert_exit "revision 1" 0
for r in "${REPLICAS[@]}"; do node_start "$r" || finish; done
node_start primary || finish
wait_same 20 primary "${REPLICAS[@]}"
save_change primary "epoch 1, second"
wait_same 10 primary "${REPLICAS[@]}"
OLD_STATE=$(state_of primary)
for r in "${REPLICAS[@]}"; do
    assert_eq "$r: epoch 1" 1 "$(epoch_of "$r")"
done

step "promote: refused to an operator, and to the primary itself"
as monitor site-b promote
assert_exit "operator promote" 1
assert_contains "operator promote: the role it needs" "$ERR" "this needs the super-admin role"
as alice primary promote
assert_exit "promote the primary" 1
printf '  promote on the primary: %s\n' "$ERR"
assert_eq "site-b still a replica" replica "$(role_of site-b)"

step "disaster: the primary is killed"
node_kill primary
assert_true "site-b answers status without its primary" node_answers site-b

step "promote refused to a replica that knows it lags, unless --force"
# A Hello from the primary's certificate announcing revision 99 (the real
# primary is gone, nothing announces anything else): site-d now knows it
# lags.
run python3 "$RAW" --port "${NODE_PORT[site-d]}" --ca "$PKI/ca.pem" --cert "$PKI/primary.pem" \
    --key "$PKI/primary.key" --scenario hello --node primary --epoch 1 --revision 99
printf '  Hello announcing revision 99 to site-d: %s\n' "$OUT"
assert_contains "site-d answers the Hello with its State" "$OUT" "result=reply body=state"
as alice site-d promote
assert_exit "promote a lagging replica" 1
printf '  promote on site-d: %s\n' "$ERR"
assert_match "promote on site-d: says it lags and names --force" "$ERR" 'lag|behind'
assert_contains "promote on site-d: names --force" "$ERR" "--force"
assert_eq "site-d still a replica at epoch 1" "replica 1" "$(role_of site-d) $(epoch_of site-d)"

step "promote site-b: epoch 2, the other replicas follow it"
for n in "${REPLICAS[@]}"; do log_mark "$n"; done
as alice site-b promote
assert_exit "promote site-b" 0
printf '  %s\n' "$OUT"
assert_contains "promote site-b: output" "$OUT" "promoted site-b to primary: epoch 2"
assert_eq "site-b: role primary" primary "$(role_of site-b)"
assert_eq "site-b: epoch 2" 2 "$(epoch_of site-b)"
as alice site-b promote
assert_exit "promote it again" 1
printf '  promote again: %s\n' "$ERR"
for r in site-c site-d; do
    assert_true "$r: follows site-b at epoch 2" wait_until 20 store_epoch_is "$r" 2
    assert_true "$r: logged the new primary" wait_until 10 log_has "$r" "site-b is the primary now"
done

step "the new primary takes writes and pushes them"
save_change site-b "epoch 2, first"
assert_true "a save on site-b" test "$SAVED_REV" -gt 0
wait_same 20 site-b site-c site-d
for r in site-c site-d; do
    ctl "$T/$r.data" history --json
    assert_eq "$r: revision $SAVED_REV was saved at epoch 2" 2 \
        "$(json "next(h.get('epoch') for h in d if h['revision'] == $SAVED_REV)")"
    wait_replica_state 20 site-b "$r" in-sync
done
NEW_STATE=$(state_of site-b)
print_status site-b
assert_match "site-b's table lists site-c" "$OUT" '^site-c +in-sync '
assert_match "site-b's table lists the old primary" "$OUT" '^primary +'

step "the old primary returns with its old store: it learns it was fenced"
assert_eq "the old primary's store is still at epoch 1's state" "$OLD_STATE" "$(state_of primary)"
for n in "${REPLICAS[@]}"; do log_mark "$n"; done
log_mark primary
node_start primary || finish
assert_true "the old primary logs that it was fenced" wait_until 20 log_has primary "FENCED"
log_since primary | grep -E 'FENCED|fenced|epoch' | cut -d' ' -f3- | sed 's/^/  primary: /' | head -n 6
as monitor primary status --json
printf '  old primary status: role=%s epoch=%s\n' "$(json 'd["node"]["role"]')" "$(json 'd["node"]["epoch"]')"
fenced_shown() {
    as monitor primary status
    [[ $OUT == *fenced* ]]
}
# Until site-b's next push makes it a replica of epoch 2, both forms say by
# which epoch it was fenced (one poll, both in the same window).
fenced_epoch_shown() {
    as monitor primary status --json
    [ "$RC" -eq 0 ] && [ "$(json 'd["node"].get("fenced_epoch")')" = 2 ] || return 1
    as monitor primary status
    [[ $OUT == *"FENCED by epoch 2: a newer primary exists"* ]]
}
assert_true "the old primary's status says fenced" wait_until 10 fenced_shown
assert_true "the old primary's status (text and --json) says FENCED by epoch 2" \
    wait_until 10 fenced_epoch_shown
as monitor site-c status --json
assert_eq "site-c's status --json: its primary" site-b "$(json 'd["node"]["primary"]')"
assert_eq "site-c's status --json: last push known" True \
    "$(json 'str(d["node"]["last_push"] is not None)')"
assert_eq "site-b's status --json: not fenced" None \
    "$(as monitor site-b status --json && json 'str(d["node"]["fenced_epoch"])')"
as monitor primary status
printf -- '--- smtpsyncctl status on the old primary:\n%s\n---\n' "$OUT"
assert_false "the old primary does not claim to be the primary" \
    test "$(role_of primary)" = primary
refusals=0
for r in "${REPLICAS[@]}"; do
    if log_has "$r" "refused a push from primary at epoch 1"; then
        refusals=$((refusals + 1))
        printf '  %s: %s\n' "$r" "$(log_since "$r" | grep -m1 -F 'refused a push' | cut -d' ' -f3-)"
    fi
    assert_false "$r: took no Hello from the old primary" log_has "$r" "primary primary connected"
done
# Once one replica answered Fenced, the old primary closes its other
# connections, maybe before they sent anything: one refusal is enough.
assert_true "a replica refused the old primary's push (Fenced)" test "$refusals" -ge 1

step "a save on the old primary reaches no replica"
log_mark primary
as alice primary settings set --instance primary --hostname stale.example.test
as alice primary settings save --comment "stale write on the fenced primary"
printf '  save on the fenced primary: exit %s %s%s\n' "$RC" "$OUT" "$ERR"
sleep 2
for r in "${REPLICAS[@]}"; do
    ctl "$T/$r.data" settings show --instance primary --json
    assert_eq "$r: no stale write" False \
        "$(json 'str(d["instances"]["primary"]["hostname"] == "stale.example.test")')"
done
assert_eq "site-b's state unchanged" "$NEW_STATE" "$(state_of site-b)"
wait_same 10 site-b site-c site-d
assert_false "the fenced primary pushed nothing (no delta or snapshot sent)" \
    log_has primary "sent ("
save_change site-b "epoch 2, second"
wait_same 20 site-b site-c site-d
print_status site-b

step "everything stops cleanly"
for n in primary "${REPLICAS[@]}"; do
    node_stop "$n"
done
finish
