#!/usr/bin/env bash
# The SMTP password never leaves smtpsyncctl in the clear: not in any
# output of any verb (text, JSON or error), not in the store's files, not as
# an argument; and it survives saves and rollbacks, shown as ********.
source "$(dirname "$0")/lib.sh"

PW='Zebra-4711-quartz-UNIQUE-pw'
PW2='Second-9042-falcon-UNIQUE-pw'
PW3='Prompted-5521-heron-UNIQUE-pw'
ALL=

# Collects every output so that it can be searched at the end, too.
collect() {
    ALL+="$OUT"$'\n'"$ERR"$'\n'
    assert_not_contains "$1: stdout has no password" "$OUT" "UNIQUE-pw"
    assert_not_contains "$1: stderr has no password" "$ERR" "UNIQUE-pw"
}

ctl_in "$PW"$'\n'"$PW"$'\n' settings set --instance primary --hostname mail.test \
    --from noreply@example.com --test-address admin@example.com --logon --user smtpuser \
    --password-stdin --smtps --tls-mode strict
assert_exit "set with --password-stdin" 0
collect "set"
ctl settings import-cert --instance primary "$CERTS/leaf.pem"
assert_exit "import-cert" 0
collect "import-cert"

for args in "settings show --draft" "settings show --draft --json" \
    "settings show --draft --instance primary"; do
    # shellcheck disable=SC2086
    ctl $args
    assert_exit "$args" 0
    collect "$args"
done
ctl --json settings show --draft
assert_eq "draft: password masked" "********" "$(json 'd["instances"]["primary"]["password"]')"

ctl settings save --comment "with a password"
assert_exit "save 1" 0
collect "save 1"

# A change of another field starts from the saved record, password included.
ctl settings set --instance primary --port 2525
assert_exit "set port (password carried over)" 0
collect "set port"
ctl settings save --comment "port 2525"
assert_exit "save 2" 0
collect "save 2"
ctl diff 1 2
assert_exit "diff 1 2" 0
collect "diff 1 2"
assert_not_contains "unchanged password is not in the diff" "$OUT" "password"

# A new password, from a one-line file (no confirmation line).
printf '%s\n' "$PW2" >"$T/pw2"
chmod 600 "$T/pw2"
ctl settings set --instance primary --password-file "$T/pw2"
assert_exit "set new password from a file" 0
collect "set new password"
ctl settings save
assert_exit "save 3" 0
collect "save 3"
ctl diff 2 3
collect "diff 2 3"
ctl diff 2 3 --json
collect "diff 2 3 --json"

# Error paths that hold a password.
ctl_in "$PW"$'\n'"$PW2"$'\n' settings set --instance primary --password-stdin
assert_exit "mismatch" 1
collect "mismatch"
ctl_in "$PW"$'\n'"$PW"$'\n'"$PW2"$'\n' settings set --instance primary --password-stdin
assert_exit "three lines" 1
collect "three lines"
printf '%s\n' "$PW" >"$T/open"
chmod 640 "$T/open"
ctl settings set --instance primary --password-file "$T/open"
assert_exit "group-readable file" 1
collect "group-readable file"
for arg in --password "--password=$PW" --pass -p; do
    ctl settings set --instance primary "$arg" "$PW"
    assert_exit "password as an argument ($arg)" 2
    collect "password as an argument ($arg)"
done
run "$SMTPSYNCCTL" --data-dir "$DATA" --password "$PW" settings show
assert_exit "global --password" 2
collect "global --password"

# A draft for a second instance, so the drafts also hold a sealed password.
ctl_in "$PW"$'\n' settings set --instance site-b --logon --user u --password-stdin
assert_exit "draft for site-b" 0
collect "draft for site-b"

# Every read verb, both forms.
for args in "settings show" "settings show --json" "settings show --draft" \
    "settings show --draft --json" "settings show --revision 1" "settings show --revision 1 --json" \
    "history" "history --json" "diff 1 3" "diff 1 3 --json" "diff 3 1"; do
    # shellcheck disable=SC2086
    ctl $args
    assert_exit "$args" 0
    collect "$args"
done

# Rollback keeps the password (as the revision had it).
ctl rollback 1 --comment "first password again"
assert_exit "rollback 1" 0
collect "rollback 1"
ctl settings show --json --instance primary
assert_exit "show after rollback" 0
assert_eq "after rollback: password set" "********" "$(json 'd["instances"]["primary"]["password"]')"
assert_eq "after rollback: port" "null" "$(json 'd["instances"]["primary"]["port"]')"
ctl settings show
assert_contains "after rollback: text shows the mask" "$OUT" "password: ********"
collect "show after rollback"

# ... and can be carried into a new revision again.
ctl settings set --instance primary --test-address ops@example.com
assert_exit "set after rollback" 0
ctl settings save --instance primary
assert_exit "save after rollback" 0
collect "save after rollback"
ctl history --json
collect "history --json"
ctl settings discard
collect "discard"

# The prompt: a terminal asked twice, with echo off, and echo back on after.
# pty_session ANSWERS... -- ARGS: smtpsyncctl --data-dir $DATA ARGS on a new
# terminal, typing each answer at "Password: " / "Confirm password: " in
# turn; OUT is the session's JSON report (tests/cli/pty_session.py).
pty_session() {
    local script=() prompts=("Password: " "Confirm password: ") i=0
    while [ "$1" != "--" ]; do
        script+=("${prompts[i]}" "$1")
        i=$((i + 1))
        shift
    done
    shift
    rm -f "$T/.pty.json"
    python3 "$(dirname "$0")/pty_session.py" "$T/.pty.json" "${script[@]}" -- \
        "$SMTPSYNCCTL" --data-dir "$DATA" "$@"
    local what="pty: ${*:3}"
    OUT=$(cat "$T/.pty.json" 2>/dev/null || echo '{}')
    PROMPT=$(json 'd.get("transcript", "")')
    ALL+="$PROMPT"$'\n'
    assert_eq "$what: no timeout" "False" "$(json 'str(d.get("timed_out"))')"
    assert_not_contains "$what: no sanitizer report" "$PROMPT" "Sanitizer"
    assert_eq "$what: echo is on again afterwards" "True" "$(json 'str(d.get("echo_after"))')"
}

# --logon with no password yet, and a terminal: asked, twice.
pty_session "$PW3" "$PW3" -- settings set --instance prompted --hostname mail.test --logon --user u
assert_eq "prompt: both answered with echo off" "[false, false]" "$(json 'd["echo_at_prompt"]')"
assert_eq "prompt: exit 0" "0" "$(json 'd["exit"]')"
assert_contains "prompt: draft saved" "$PROMPT" "draft saved for instance prompted"
assert_not_contains "prompt: no echo" "$PROMPT" "$PW3"
ctl settings show --draft --json --instance prompted
assert_eq "prompt: password set" "********" "$(json 'd["instances"]["prompted"]["password"]')"
collect "show prompted"

# --password-stdin on a terminal asks the same way, never reading with echo.
pty_session "$PW2" "$PW2" -- settings set --instance prompted --password-stdin
assert_eq "--password-stdin on a terminal: asked with echo off" "[false, false]" \
    "$(json 'd["echo_at_prompt"]')"
assert_eq "--password-stdin on a terminal: exit 0" "0" "$(json 'd["exit"]')"
assert_not_contains "--password-stdin on a terminal: no echo" "$PROMPT" "$PW2"

# --password-prompt changes a password that is already set.
pty_session "$PW3" "$PW3" -- settings set --instance prompted --password-prompt
assert_eq "--password-prompt: asked with echo off" "[false, false]" "$(json 'd["echo_at_prompt"]')"
assert_eq "--password-prompt: exit 0" "0" "$(json 'd["exit"]')"

# A typo at the confirmation: refused, nothing written, echo restored.
ctl settings show --draft --json --instance prompted
draft_before=$OUT
pty_session "$PW3" "$PW2" -- settings set --instance prompted --password-prompt
assert_eq "prompt mismatch: exit 1" "1" "$(json 'd["exit"]')"
assert_contains "prompt mismatch: said so" "$PROMPT" "password: does not match"
assert_not_contains "prompt mismatch: no echo" "$PROMPT" "UNIQUE-pw"
ctl settings show --draft --json --instance prompted
assert_eq "prompt mismatch: draft unchanged" "$draft_before" "$OUT"

# One byte over the limit at the prompt is the prompt's own error.
long=$(head -c 1025 /dev/zero | tr '\0' L)
pty_session "$long" "$long" -- settings set --instance toolong --hostname mail.test --logon --user u
assert_eq "prompt too long: exit 1" "1" "$(json 'd["exit"]')"
assert_contains "prompt too long: said so" "$PROMPT" "the password is longer than 1024 bytes"
assert_not_contains "prompt too long: not asked to confirm" "$PROMPT" "Confirm password: "
pty_session "$(head -c 1024 /dev/zero | tr '\0' L)" "$(head -c 1024 /dev/zero | tr '\0' L)" -- \
    settings set --instance prompted --password-prompt
assert_eq "prompt of exactly 1024 bytes: exit 0" "0" "$(json 'd["exit"]')"

# --password-prompt without a terminal is an error, not a silent skip.
run setsid -w "$SMTPSYNCCTL" --data-dir "$DATA" settings set --instance prompted \
    --password-prompt
assert_exit "--password-prompt without a terminal" 1
assert_contains "--password-prompt without a terminal" "$ERR" "no terminal to ask on"

# Without a terminal there is no prompt: the password is just still needed.
ctl settings set --instance noterm --hostname mail.test --logon --user u
assert_exit "no terminal, no prompt" 0
assert_contains "no terminal: still needed" "$ERR" "still needed before save: password:"

# A store opened with another node key cannot open the sealed passwords.
ctl settings show --json
ctl_key_before=$OUT
run "$SMTPSYNCCTL" --data-dir "$DATA" --key-file "$T/other.key" settings set --instance primary \
    --port 25
assert_exit "another node key" 1
assert_contains "another node key: names the key file" "$ERR" \
    "node key $T/other.key is missing or does not match the store in $DATA"
assert_true "another node key: no key file made" test ! -e "$T/other.key"
collect "another node key"
head -c 32 /dev/urandom >"$T/wrong.key"
chmod 600 "$T/wrong.key"
run "$SMTPSYNCCTL" --data-dir "$DATA" --key-file "$T/wrong.key" settings show
assert_exit "a wrong node key" 1
assert_contains "a wrong node key: names the key file" "$ERR" \
    "node key $T/wrong.key is missing or does not match the store in $DATA"
mv "$DATA/node.key" "$T/node.key.saved"
ctl history
assert_exit "the store's node key is missing" 1
assert_contains "the store's node key is missing" "$ERR" \
    "node key $DATA/node.key is missing or does not match the store in $DATA"
assert_true "the store's node key is not made anew" test ! -e "$DATA/node.key"
mv "$T/node.key.saved" "$DATA/node.key"

# Nothing printed anywhere held a password.
for p in "$PW" "$PW2" "$PW3"; do
    assert_not_contains "all output" "$ALL" "$p"
done

# The store's files hold only sealed passwords.
assert_true "store files exist" test -f "$DATA/data.mdb" -a -f "$DATA/lock.mdb"
for f in "$DATA"/*; do
    for p in "$PW" "$PW2" "$PW3"; do
        assert_true "$(basename "$f") does not contain a password" python3 -c '
import sys
sys.exit(1 if sys.argv[2].encode() in open(sys.argv[1], "rb").read() else 0)' "$f" "$p"
    done
done
# mdb_dump shows every record decoded; without it this check cannot run,
# which must not pass for a success.
if command -v "${MDB_DUMP:-mdb_dump}" >/dev/null; then
    run "${MDB_DUMP:-mdb_dump}" -a -p "$DATA"
    assert_exit "mdb_dump" 0
    assert_contains "mdb_dump dumped the drafts" "$OUT" "drafts"
    for p in "$PW" "$PW2" "$PW3"; do
        assert_not_contains "mdb_dump shows no password" "$OUT" "$p"
    done
else
    fail "mdb_dump (${MDB_DUMP:-mdb_dump}) not found: install lmdb-utils (deploy/install-deps test)"
fi
assert_eq "show unaffected by the failed key" "$ctl_key_before" "$(
    "$SMTPSYNCCTL" --data-dir "$DATA" settings show --json 2>/dev/null
)"

finish
