#!/usr/bin/env bash
# The outbox under SIGKILL: several submitters queue messages as fast as
# they can while the daemon delivers them to Postfix's smtp-sink; the daemon
# is killed twice mid-way and restarted, the second time with the sink
# frozen so that mail is queued and sessions hang mid-transaction. Every message whose submission was
# acknowledged ("queued N") must reach the sink at least once.
# shellcheck disable=SC2317 # functions run through wait_until
set -euo pipefail
# shellcheck source=lib.sh
source "$(dirname "$0")/lib.sh"

WORKERS=4
PER_WORKER=75
RUN=$$-$RANDOM

# The sink (drops privileges to nobody, so its dump directory is its own).
SINK_DIR=$T/sink
mkdir -p "$SINK_DIR"
chown nobody "$SINK_DIR"
SINK_PORT=$(free_port)
smtp-sink -u nobody -d "$SINK_DIR/%H%M%S." "127.0.0.1:$SINK_PORT" 256 2>"$T/sink.err" &
SINK_PID=$!
PIDS+=("$SINK_PID")
wait_until 10 bash -c "(exec 3<>/dev/tcp/127.0.0.1/$SINK_PORT) 2>/dev/null" ||
    { fail "smtp-sink did not start: $(cat "$T/sink.err")"; finish; }

DATA=$T/crash
ctl "$DATA" settings set --instance crash --hostname 127.0.0.1 --port "$SINK_PORT" \
    --from noreply@example.test --test-address sink@example.test --no-smtps
assert_exit "settings set" 0
ctl "$DATA" settings save --comment "crash test"
assert_exit "save" 0
daemon_start crash crash "$DATA"

# worker N: submits PER_WORKER messages; "TOKEN ID" per acknowledged one
# in $T/acks.N. A refused submission (daemon down) is simply not
# acknowledged; the worker goes on.
worker() {
    local w=$1 i token out
    for ((i = 1; i <= PER_WORKER; i++)); do
        token="crash-$RUN-$w-$i"
        printf 'Crash test message %s.\n.\n' "$token" >"$T/body.$w"
        if out=$("$SMTPSYNCCTL" --socket "$SOCK" send --to "sink-$w@example.test" \
            --subject "$token" --priority report --body-file "$T/body.$w" 2>>"$T/worker.$w.err"); then
            if [[ $out =~ ^queued\ ([0-9]+)$ ]]; then
                printf '%s %s\n' "$token" "${BASH_REMATCH[1]}" >>"$T/acks.$w"
            else
                printf 'unexpected output: %s\n' "$out" >>"$T/worker.$w.err"
            fi
        else
            sleep 0.02
        fi
    done
}

acked() {
    cat "$T"/acks.* 2>/dev/null | wc -l
}

WORKER_PIDS=()
for ((w = 1; w <= WORKERS; w++)); do
    worker "$w" &
    WORKER_PIDS+=($!)
    PIDS+=($!)
done

acked_at_least() {
    if wait_until 60 bash -c "[ \$(cat '$T'/acks.* 2>/dev/null | wc -l) -ge $1 ]"; then
        return 0
    fi
    fail "only $(acked) submissions acknowledged, waiting for $1"
    return 1
}

# Kill 1: while the sink keeps up.
if acked_at_least 100; then
    daemon_kill crash
    sleep 0.3
    daemon_start crash crash "$DATA"
fi
# Kill 2: with the sink frozen (SIGSTOP), so mail piles up in the outbox
# and sessions hang mid-transaction when the daemon dies.
if acked_at_least 150; then
    kill -STOP "$SINK_PID"
    if acked_at_least 200; then
        sctl "$SOCK" queue --json
        depth=$(json 'len(d.get("pending", []))' 2>/dev/null || echo 0)
        assert_true "mail pending at the second kill ($depth)" [ "$depth" -gt 0 ]
        daemon_kill crash
        sleep 0.3
        daemon_start crash crash "$DATA"
    fi
    kill -CONT "$SINK_PID"
fi

for pid in "${WORKER_PIDS[@]}"; do
    wait "$pid" || true
done

total=$(acked)
assert_true "most submissions acknowledged ($total of $((WORKERS * PER_WORKER)))" \
    [ "$total" -ge $((WORKERS * PER_WORKER / 2)) ]
assert_eq "every id given once" "$total" "$(cat "$T"/acks.* | cut -d' ' -f2 | sort -u | wc -l)"
if grep -lE 'Sanitizer|runtime error' "$T"/worker.*.err >/dev/null 2>&1; then
    fail "smtpsyncctl send: sanitizer report: $(grep -h -m1 -A20 -E 'Sanitizer|runtime error' "$T"/worker.*.err)"
fi

# Every acknowledged token in the sink (tokens may arrive more than once).
cat "$T"/acks.* | cut -d' ' -f1 | sort -u >"$T/acked"
missing() {
    grep -rhoE "crash-$RUN-[0-9]+-[0-9]+" "$SINK_DIR" 2>/dev/null | sort -u >"$T/delivered" || true
    comm -23 "$T/acked" "$T/delivered" >"$T/missing"
    [ ! -s "$T/missing" ]
}
if wait_until 90 missing; then
    pass
else
    fail "$(wc -l <"$T/missing") acknowledged messages never delivered, e.g. $(head -n5 "$T/missing" | tr '\n' ' '); queue: $(sctl "$SOCK" queue && echo "${OUT:0:1000}")"
fi
assert_true "queue drained" wait_until 30 queue_empty "$SOCK"
sctl "$SOCK" queue --json
assert_eq "nothing dead" 0 "$(json 'len(d.get("dead", []))')"
printf '%s acknowledged, %s distinct delivered, %s deliveries in all\n' "$total" \
    "$(wc -l <"$T/delivered")" "$(find "$SINK_DIR" -type f | wc -l)"

daemon_stop crash
finish
