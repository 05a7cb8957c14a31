#!/usr/bin/env bash
# Every verb explains itself: --help prints its usage on stdout and exits 0,
# without a store; `help VERB` prints the same; --version prints the version.
source "$(dirname "$0")/lib.sh"

# help_ok WHAT FLAGS... -- ARGS: `smtpsyncctl ARGS --help` mentions FLAGS.
help_ok() {
    local what=$1
    shift
    local flags=()
    while [ "$1" != "--" ]; do
        flags+=("$1")
        shift
    done
    shift
    run "$SMTPSYNCCTL" "$@" --help
    assert_exit "$what --help" 0
    assert_contains "$what --help: usage line" "$OUT" "usage: smtpsyncctl"
    assert_eq "$what --help: stderr empty" "" "$ERR"
    for f in "${flags[@]}"; do
        assert_contains "$what --help mentions $f" "$OUT" "$f"
    done
    local via_flag=$OUT
    run "$SMTPSYNCCTL" help "$@"
    assert_exit "help $what" 0
    assert_eq "help $what equals $what --help" "$via_flag" "$OUT"
}

help_ok "settings set" --instance --hostname --port --from --logon --no-logon --user \
    --password-file --password-stdin --password-prompt --smtps --no-smtps --tls-mode --test-address \
    --starttls-fallback --allow-plaintext-auth --timeout-connect --timeout-data-term \
    --fallback-relays -- settings set
help_ok "settings import-cert" --instance FILE -- settings import-cert
help_ok "settings show" --instance --revision --draft --json -- settings show
help_ok "settings save" --instance --comment -- settings save
help_ok "settings discard" --instance -- settings discard
help_ok "settings" set import-cert show save discard -- settings
help_ok "history" --limit --json -- history
help_ok "diff" R1 R2 --json -- diff
help_ok "rollback" --comment -- rollback

# `settings set --help` offers no way to pass the password as an argument,
# and says how a password file's confirmation works.
run "$SMTPSYNCCTL" settings set --help
assert_true "no --password option" \
    bash -c '! grep -qE -- "--password( |=|$)" <<<"$1"' _ "$OUT"
assert_contains "set --help: one line confirms itself" "$OUT" "one line confirms itself"
assert_contains "set --help: a second line must match" "$OUT" "which must"
assert_contains "set --help: a pipe works" "$OUT" "<(pass show smtp)"

# --help wins over everything else on the line and needs no store: with
# the store's directory given, nothing is made there.
for args in "settings set --instance x --hostname bad_host --help" \
    "settings import-cert --instance x --help" "settings show --help" "history --help"; do
    # shellcheck disable=SC2086
    run "$SMTPSYNCCTL" --data-dir "$DATA" $args
    assert_exit "$args" 0
    assert_contains "$args" "$OUT" "usage: smtpsyncctl"
    assert_true "$args: creates nothing" test ! -e "$DATA"
done

# The top level.
for args in --help help; do
    run "$SMTPSYNCCTL" $args
    assert_exit "smtpsyncctl $args" 0
    for verb in "settings set" "settings import-cert" "settings show" "settings save" \
        "settings discard" history diff rollback --data-dir --json --key-file --version; do
        assert_contains "smtpsyncctl $args lists $verb" "$OUT" "$verb"
    done
done

# Which verbs work in which mode: sync and promote refuse local mode (a
# usage error naming --server), and the help says so on their lines and
# in its last paragraph; no "every verb but" claim.
run "$SMTPSYNCCTL" --help
top=$OUT
for verb in sync promote; do
    assert_match "--help: $verb is remote mode only" "$top" "^  $verb .*\(remote mode only\)$"
    run "$SMTPSYNCCTL" --data-dir "$DATA" "$verb"
    assert_exit "$verb in local mode: a usage error" 2
    assert_contains "$verb in local mode: needs --server" "$ERR" "$verb needs --server"
done
assert_true "no store made by sync or promote" test ! -e "$DATA"
assert_contains "--help: the modes" "$(tr '\n' ' ' <<<"$top")" \
    "settings, history, diff, rollback and status work in both modes, with the same output; sync and promote need --server"
assert_not_contains "--help: no 'every verb but'" "$top" "Every verb but"

run "$SMTPSYNCCTL" --version
assert_exit "--version" 0
assert_true "--version format" bash -c '[[ $1 =~ ^smtpsyncctl\ [0-9]+\.[0-9]+\.[0-9]+$ ]]' _ "$OUT"

run "$SMTPSYNCCTL" help nosuchverb
assert_exit "help for an unknown verb" 2
run "$SMTPSYNCCTL" help settings nosuch
assert_exit "help for an unknown settings subcommand" 2

finish
