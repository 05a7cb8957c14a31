#!/usr/bin/env bash
# Replication between real processes on loopback (issue 4): one
# smtpsync-primary and three smtpsync-replica daemons over mutual TLS with
# certificates made by the openssl CLI (make-pki.sh).
#
#   - first sync by snapshot, then a delta after a save;
#   - push_on_commit: every replica has a revision within 1 s of the save
#     returning; with push_on_commit off (SIGHUP), it waits for the
#     schedule (or `sync`);
#   - the status table: every replica in-sync, then a stopped one
#     unreachable with its last error, then caught up after its restart;
#     `status --json` has the fields of DESIGN.md;
#   - a replica stopped during saves catches up by delta, and by snapshot
#     once the primary compacted the history it missed (history_keep);
#   - mail from every replica with its own replicated settings (saved with
#     --apply-to-replicas) into the Postfix fixture while the primary is
#     down; the replicas answer status themselves meanwhile;
#   - the primary's view of its replicas survives its restart.
set -euo pipefail
# shellcheck source=repl_lib.sh
source "$(dirname "$0")/repl_lib.sh"
postfix_env

REPLICAS=(site-b site-c site-d)
KEEP_HISTORY=4
RUN=$$-$RANDOM

for r in "${REPLICAS[@]}"; do
    node_config "$r" replica '[replication]' 'primary = primary'
done
primary_config() { # PUSH_ON_COMMIT
    local lines=() r
    for r in "${REPLICAS[@]}"; do
        lines+=("[replica \"$r\"]" "address = 127.0.0.1:${NODE_PORT[$r]}")
    done
    node_config primary primary '[replication]' 'interval = 10' 'jitter = 0' \
        "push_on_commit = $1" "history_keep = $KEEP_HISTORY" "${lines[@]}"
}
primary_config yes

# ---- first sync by snapshot ------------------------------------------------

step "first sync: a primary with revision 1 and three empty replicas"
ctl "$T/primary.data" settings set --instance primary --hostname mail0.example.test \
    --from noreply@example.test --test-address ops@example.test
assert_exit "revision 1: set" 0
ctl "$T/primary.data" settings save --comment "before any replica"
assert_exit "revision 1: save" 0
for r in "${REPLICAS[@]}"; do
    node_start "$r" || finish
    assert_eq "$r starts empty" "0" "$(state_of "$r" | cut -d' ' -f1)"
done
node_start primary || finish
wait_same 20 primary "${REPLICAS[@]}"
for r in "${REPLICAS[@]}"; do
    assert_true "$r: revision 1 came by snapshot (replica log)" \
        grep -q "applied the snapshot of revision 1 " "$T/$r.log"
    assert_true "$r: the primary sent it a snapshot (primary log)" \
        grep -q "replica $r: snapshot of revision 1 sent" "$T/primary.log"
    assert_eq "$r: epoch 1" 1 "$(as monitor "$r" status --json && json 'd["node"]["epoch"]')"
done

step "status on the primary: every replica in-sync, with the fields of DESIGN.md"
for r in "${REPLICAS[@]}"; do
    wait_replica_state 10 primary "$r" in-sync
done
as monitor primary status --json
assert_exit "status --json" 0
assert_eq "status --json: primary id" primary "$(json 'd["primary"]["id"]')"
assert_eq "status --json: replicas listed in order" "site-b site-c site-d" \
    "$(json '" ".join(r["id"] for r in d["replicas"])')"
for key in id state applied_revision primary_revision lag_revisions lag_seconds last_contact \
    last_success last_error next_push cert_expiry outbox_depth; do
    assert_eq "status --json: every replica has $key" True \
        "$(json "str(all('$key' in r for r in d['replicas']))")"
done
assert_eq "status --json: applied = primary revision = 1" "1 1 1 1 1 1" \
    "$(json '" ".join("%d %d" % (r["applied_revision"], r["primary_revision"]) for r in d["replicas"])')"
assert_eq "status --json: no lag" "0 0 0" "$(json '" ".join(str(r["lag_revisions"]) for r in d["replicas"])')"
assert_eq "status --json: last_error null when in sync" "[null, null, null]" \
    "$(json '[r["last_error"] for r in d["replicas"]]')"
assert_match "status --json: times are RFC 3339" "$(json 'd["replicas"][0]["last_success"]')" \
    '^[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}(\.[0-9]+)?(Z|[+-][0-9]{2}:[0-9]{2})$'
assert_match "status --json: peer certificate expiry known" "$(json 'd["replicas"][0]["cert_expiry"]')" \
    '^20[0-9]{2}-'
print_status primary
assert_match "status table: header" "$OUT" 'REPLICA +STATE +APPLIED +PRIMARY'
for r in "${REPLICAS[@]}"; do
    assert_match "status table: $r in-sync at 1 of 1" "$OUT" "^$r +in-sync +1 +1 "
done

step "a replica answers status about itself"
as monitor site-b status --json
assert_exit "replica status" 0
assert_eq "replica status: role" replica "$(json 'd["node"]["role"]')"
assert_eq "replica status: revision" 1 "$(json 'd["node"]["revision"]')"
assert_eq "replica status: no replicas of its own" "[]" "$(json 'd["replicas"]')"

# ---- delta after a save ----------------------------------------------------

step "a save through the admin API reaches every replica as a delta"
for n in primary "${REPLICAS[@]}"; do log_mark "$n"; done
save_change primary "second"
assert_eq "save returns revision 2" 2 "$SAVED_REV"
wait_same 10 primary "${REPLICAS[@]}"
for r in "${REPLICAS[@]}"; do
    assert_true "$r: revision 2 applied as a delta" log_has "$r" "applied revisions 2..2 from primary"
    assert_false "$r: no snapshot for it" log_has "$r" "applied the snapshot"
    ctl "$T/$r.data" history --json
    assert_eq "$r: the delta carries the revision's comment and actor" "second alice" \
        "$(json '" ".join(next((h.get("comment", ""), h.get("actor", "")) for h in d if h["revision"] == 2))')"
done
assert_false "primary: no snapshot for a delta" log_has primary "snapshot of revision"

# ---- push_on_commit ----------------------------------------------------------

# has_rev NAME REV: NAME's store is at REV or later.
has_rev() {
    local s
    s=$(state_of "$1")
    [ -n "$s" ] && [ "${s%% *}" -ge "$2" ]
}

# log_time_ms NAME TEXT: the time (Unix ms) of the first line of NAME's log
# containing TEXT, from its timestamp; "" when there is none.
log_time_ms() {
    grep -m1 -F -- "$2" "$T/$1.log" | python3 -c '
import datetime, sys
line = sys.stdin.readline()
if line:
    t = datetime.datetime.strptime(line.split()[0], "%Y-%m-%dT%H:%M:%S.%fZ")
    print(int(t.replace(tzinfo=datetime.timezone.utc).timestamp() * 1000))'
}

step "push_on_commit: every replica has each of 5 saves within 1 s of the save returning"
for i in 1 2 3 4 5; do
    save_change primary "push $i"
    declare -A seen=()
    for r in "${REPLICAS[@]}"; do
        while ! has_rev "$r" "$SAVED_REV" && [ $(($(date +%s%3N) - SAVED_AT_MS)) -lt 3000 ]; do
            sleep 0.01
        done
        seen[$r]=$(($(date +%s%3N) - SAVED_AT_MS))
    done
    # Then, untimed: the verdicts and the replicas' own log times.
    line="save $i -> revision $SAVED_REV, seen on"
    for r in "${REPLICAS[@]}"; do
        if [ "${seen[$r]}" -le 1000 ] && has_rev "$r" "$SAVED_REV"; then
            pass
        else
            fail "push $i: revision $SAVED_REV not on $r within 1 s of the save (after ${seen[$r]} ms: [$(state_of "$r")])"
        fi
        applied=$(log_time_ms "$r" "applied revisions $SAVED_REV..$SAVED_REV ")
        line+=" $r +${seen[$r]} ms (applied at ${applied:+$((applied - SAVED_AT_MS))} ms),"
    done
    printf '%s\n' "${line%,}"
done
printf '(times after the save command returned: "seen" by polling smtpsyncctl --data-dir status, "applied" from the replica log; negative: applied before the save reply reached the client)\n'
wait_same 5 primary "${REPLICAS[@]}"

step "push_on_commit = no (SIGHUP): a save waits for the schedule, sync pushes at once"
primary_config no
log_mark primary
kill -HUP "${NODE_PID[primary]}"
assert_true "primary reloaded its config" wait_until 10 log_has primary "reload: TLS files reloaded"
assert_true "the reload turned push_on_commit off" log_has primary \
    'reload: [replication] push_on_commit "yes" -> "no"'
save_change primary "no push on commit"
sleep 1.5
assert_false "1.5 s later no replica has it" has_rev site-b "$SAVED_REV"
as alice primary sync
assert_exit "sync" 0
assert_contains "sync: site-b in sync" "$OUT" "replica site-b: in-sync at revision $SAVED_REV of $SAVED_REV"
wait_same 5 primary "${REPLICAS[@]}"
primary_config yes
log_mark primary
kill -HUP "${NODE_PID[primary]}"
assert_true "primary reloaded its config again" wait_until 10 log_has primary \
    "reload: TLS files reloaded"
assert_true "the reload turned push_on_commit on" log_has primary \
    'reload: [replication] push_on_commit "no" -> "yes"'

# ---- a stopped replica: unreachable, then caught up by delta -------------------

step "site-d stopped: unreachable in the primary's status, with its last error"
node_stop site-d
save_change primary "while site-d is down 1"
wait_replica_state 20 primary site-d unreachable
assert_true "site-d: last_error says why" test -n "$(replica_field primary site-d last_error)"
printf 'site-d last_error: %s\n' "$(replica_field primary site-d last_error)"
as monitor primary status --json
assert_eq "site-d: applied revision still the old one" $((SAVED_REV - 1)) \
    "$(json 'next(r["applied_revision"] for r in d["replicas"] if r["id"] == "site-d")')"
assert_eq "site-d: lag 1 revision" 1 \
    "$(json 'next(r["lag_revisions"] for r in d["replicas"] if r["id"] == "site-d")')"
assert_eq "site-b, site-c still in sync" "in-sync in-sync" \
    "$(json '" ".join(r["state"] for r in d["replicas"] if r["id"] != "site-d")')"
print_status primary
assert_match "status table: site-d unreachable" "$OUT" "^site-d +unreachable "
save_change primary "while site-d is down 2"
DOWN_LAST=$SAVED_REV

step "site-d restarted: it catches up by delta (history reaches back)"
log_mark site-d
node_start site-d || finish
wait_same 30 primary site-d
assert_true "site-d: applied the missed revisions as a delta" log_has site-d "applied revisions"
assert_false "site-d: no snapshot" log_has site-d "applied the snapshot"
ctl "$T/site-d.data" history --json
assert_eq "site-d: both missed revisions in its history" "2" \
    "$(json 'len([h for h in d if h.get("comment", "").startswith("while site-d is down")])')"
wait_replica_state 20 primary site-d in-sync
assert_eq "site-d: applied = $DOWN_LAST" "$DOWN_LAST" "$(replica_field primary site-d applied_revision)"
assert_eq "site-d: last_error cleared once in sync" "" "$(replica_field primary site-d last_error)"

# ---- a stopped replica beyond the kept history: snapshot -----------------------

step "site-c stopped during $((KEEP_HISTORY + 2)) saves (history_keep = $KEEP_HISTORY): caught up by snapshot"
node_stop site-c
C_BEFORE=$(state_of site-c | cut -d' ' -f1)
for ((i = 1; i <= KEEP_HISTORY + 2; i++)); do
    save_change primary "while site-c is down $i"
done
ctl "$T/primary.data" history --json
assert_true "primary compacted: revision $((C_BEFORE + 1)) is gone from its history" \
    test "$(json "len([h for h in d if h['revision'] == $((C_BEFORE + 1))])")" = 0
log_mark site-c
node_start site-c || finish
wait_same 30 primary site-c
assert_true "site-c: caught up by a snapshot" log_has site-c "applied the snapshot of revision $SAVED_REV"
assert_true "primary: says why it sent a snapshot" grep -q "replica site-c: revision $C_BEFORE is" \
    "$T/primary.log"
wait_replica_state 20 primary site-c in-sync
as monitor site-c settings show --instance primary --json
assert_eq "site-c: has the last saved record" "mail$CHANGE_SEQ.example.test" \
    "$(json 'd["instances"]["primary"]["hostname"]')"

# ---- mail from the replicas with their own settings, primary down --------------

step "settings for Postfix saved with --apply-to-replicas"
as alice primary settings set --instance primary --hostname 127.0.0.1 --port "$PORT_PLAIN" \
    --from "replicated@example.test" --logon --user "$SASL_USER" \
    --password-file "$SASL_PASSWORD_FILE" --no-smtps --allow-plaintext-auth on \
    --test-address user@example.test
assert_exit "set the Postfix settings" 0
as alice primary settings save --apply-to-replicas --comment "to Postfix, everywhere" --json
assert_exit "save --apply-to-replicas" 0
MAIL_REV=$(json 'd["revision"]')
wait_same 10 primary "${REPLICAS[@]}"
for r in "${REPLICAS[@]}"; do
    as monitor "$r" settings show --instance "$r" --json
    assert_eq "$r: its own instance points at Postfix" "127.0.0.1:$PORT_PLAIN" \
        "$(json '"%s:%s" % (d["instances"]["'"$r"'"]["hostname"], d["instances"]["'"$r"'"]["port"])')"
    assert_eq "$r: password masked in show" "********" "$(json 'd["instances"]["'"$r"'"]["password"]')"
done
for r in "${REPLICAS[@]}"; do wait_replica_state 10 primary "$r" in-sync; done
print_status primary
REAL_RUN_TABLE=$OUT

step "primary stopped: the replicas answer status and deliver mail themselves"
node_stop primary
ctl "$T/primary.data" status --json
assert_exit "the stopped primary's store: status" 0
assert_eq "its persisted view lists the three replicas" "site-b site-c site-d" \
    "$(json '" ".join(r["id"] for r in d["replicas"])')"
for r in "${REPLICAS[@]}"; do
    as monitor "$r" status --json
    assert_exit "$r answers status with the primary down" 0
    assert_eq "$r: at the primary's last revision" "$MAIL_REV" "$(json 'd["node"]["revision"]')"
    token="replica-mail-$r-$RUN"
    printf 'Delivered by %s with its own settings (%s).\n' "$r" "$token" >"$T/body.$r"
    send_mail "$T/$r.sock" --to user@example.test --subject "$token" --priority tokencode \
        --body-file "$T/body.$r"
    assert_exit "$r: send through its submission socket" 0
done
for r in "${REPLICAS[@]}"; do
    token="replica-mail-$r-$RUN"
    if wait_until 30 postfix_has "$token"; then
        pass
        f=$(postfix_find "$token" | head -n1)
        assert_contains "$r: From is the replicated from_address" "$(header_value "$f" From)" \
            "replicated@example.test"
        assert_match "$r: authenticated with the replicated password" "$(cat "$f")" 'with ESMTPS?A'
    else
        sctl "$T/$r.sock" queue
        fail "$r: mail $token not delivered; queue: $OUT; log: $(tail -n 10 "$T/$r.log")"
    fi
done

step "primary restarted: its view survived, every replica is caught up"
node_start primary || finish
as monitor primary status --json
assert_eq "the view after the restart lists the three replicas" "site-b site-c site-d" \
    "$(json '" ".join(r["id"] for r in d["replicas"])')"
for r in "${REPLICAS[@]}"; do
    wait_replica_state 20 primary "$r" in-sync
done
save_change primary "after the primary's restart"
wait_same 10 primary "${REPLICAS[@]}"
print_status primary

step "everything stops cleanly"
for n in primary "${REPLICAS[@]}"; do
    node_stop "$n"
done
for r in "${REPLICAS[@]}"; do
    ctl "$T/$r.data" history
    assert_exit "$r: history readable after the run" 0
done
printf -- '\n--- status table of this run (primary, three replicas, after the mail step):\n%s\n' \
    "$REAL_RUN_TABLE"
finish
