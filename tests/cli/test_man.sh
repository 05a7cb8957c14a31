#!/usr/bin/env bash
# The man pages built from docs/man (scdoc): smtpsyncctl(1),
# smtpsync-primary(8) and smtpsync-replica(8) render without a warning from
# man or groff, and document everything the programs' --help lists: every
# verb of smtpsyncctl has its own subsection, every option of smtpsyncctl
# and of each verb's --help is named, and each daemon page names every
# option of its daemon's --help. A new verb or option without
# documentation fails here.
#
# What the pages say is checked against the code where it can be: the stop
# (the sender's drain, SENDER_DRAIN_MS_DEFAULT, then the outbox) in the
# daemons' pages and --help; the by-hand example makes /run/smtpsync as the
# unit does and runs the daemon as smtpsync; the walk-through says where
# smtpsyncctl finds its connection; [sender] helo names the EHLO fallback
# of smtp_client.c; smtpsyncctl(1) runs local mode as smtpsync, and names
# as remote-only exactly the verbs that refuse local mode.
set -euo pipefail
source "$(dirname "$0")/lib.sh"

# The pages are built next to the programs: BUILD/docs/man/manN.
MAN=$BUILD/docs/man
CTL_PAGE=$MAN/man1/smtpsyncctl.1
declare -A PAGE=([smtpsync-primary]=$MAN/man8/smtpsync-primary.8
    [smtpsync-replica]=$MAN/man8/smtpsync-replica.8)
declare -A BIN=([smtpsync-primary]=$PRIMARY [smtpsync-replica]=$REPLICA)

for page in "$CTL_PAGE" "${PAGE[@]}"; do
    if [ ! -s "$page" ]; then
        echo "missing man page $page (built by the 'man' target of docs/man)" >&2
        exit 1
    fi
done

# render PAGE: plain text, lines long enough that nothing is hyphenated or
# broken inside a word.
render() {
    LC_ALL=C MANWIDTH=2000 man -l "$1" 2>/dev/null | col -bx
}

# has TEXT WORD: WORD (an option, a verb) occurs in TEXT as a whole word.
has() {
    local re
    re=$(printf '%s' "$2" | sed 's/[][\.*^$/]/\\&/g')
    grep -Eq -- "(^|[^A-Za-z0-9_-])$re([^A-Za-z0-9_-]|\$)" <<<"$1"
}

# names_all LABEL TEXT WORDS: TEXT names each of WORDS (one per line).
names_all() {
    local missing='' w
    while read -r w; do
        has "$2" "$w" || missing+=" $w"
    done <<<"$3"
    assert_eq "$1" "" "$missing"
}

# ---- no warnings ----
for page in "$CTL_PAGE" "${PAGE[@]}"; do
    name=$(basename "$page")
    run env MANWIDTH=80 man --warnings -l "$page"
    assert_exit "$name: man renders it" 0
    assert_eq "$name: no warning from man --warnings" "" "$ERR"
    assert_true "$name: has text" test "$(printf '%s' "$OUT" | wc -l)" -gt 50
    run groff -man -ww -z "$page"
    assert_eq "$name: no warning from groff -ww" "" "$ERR$OUT"
    # The sections an operator looks for.
    text=$(render "$page")
    for section in NAME SYNOPSIS DESCRIPTION OPTIONS CONFIGURATION ENVIRONMENT FILES \
        "EXIT STATUS" EXAMPLES "SEE ALSO"; do
        [[ $name == smtpsyncctl.1 && $section == OPTIONS ]] && section="GLOBAL OPTIONS"
        assert_true "$name: section $section" grep -qx "$section" <<<"$text"
    done
    assert_false "$name: every @VAR@ was filled in" grep -qE '@[A-Z_]+@' "$page"
done

# The facts the pages state, from the sources.
drain_s=$(sed -nE 's/^#define SENDER_DRAIN_MS_DEFAULT +\(([0-9]+) \* 1000\)$/\1/p' \
    "$SRC/common/sender.c")
assert_match "SENDER_DRAIN_MS_DEFAULT found in sender.c" "$drain_s" '^[0-9]+$'
helo_fallback=$(sed -n '/^static int pick_helo/,/^}/s/.*snprintf(buf, len, "\([a-z.]*\)");.*/\1/p' \
    "$SRC/common/smtp_client.c")
assert_eq "pick_helo's fallback found in smtp_client.c" localhost "$helo_fallback"
rundir_mode=$(sed -n 's/^RuntimeDirectoryMode=//p' "$SRC/deploy/systemd/smtpsync-primary.service")
assert_match "the unit's RuntimeDirectoryMode" "$rundir_mode" '^0[0-7]{3}$'

# ---- smtpsyncctl(1) against smtpsyncctl --help ----
text=$(render "$CTL_PAGE")
run "$SMTPSYNCCTL" --help
assert_exit "smtpsyncctl --help" 0
help=$OUT
# The verbs: the lines of the "verbs:" list, "settings SUB" as two words.
verbs=$(awk '/^verbs:/ { on = 1; next } on && /^$/ { exit }
             on { if ($1 == "settings") print $1 " " $2; else print $1 }' <<<"$help")
assert_true "verbs found in --help" test "$(wc -l <<<"$verbs")" -ge 15
helps=$help
while read -r verb; do
    # Its own subsection (an indented heading line of its own).
    assert_true "smtpsyncctl.1: a subsection for '$verb'" grep -qxE "   $verb" <<<"$text"
    [ "$verb" = help ] && continue
    # shellcheck disable=SC2086 # "settings set" is two words
    run "$SMTPSYNCCTL" $verb --help
    assert_exit "smtpsyncctl $verb --help" 0
    helps+=$'\n'$OUT
done <<<"$verbs"
# Every option in any of those helps: long ones, and sendmail's short ones.
options=$(grep -oE '(^|[][ ,|(])-{1,2}[A-Za-z][A-Za-z0-9-]*' <<<"$helps" |
    sed -E 's/^[][ ,|(]//' | sort -u)
assert_true "options found in the helps" test "$(wc -l <<<"$options")" -ge 60
names_all "smtpsyncctl.1 names every option of the helps" "$text" "$options"
for env in SMTPSYNC_CONFIG SMTPSYNC_DATA_DIR SMTPSYNC_SOCKET; do
    assert_true "smtpsyncctl.1: ENVIRONMENT has $env" \
        grep -qx "       $env" < <(awk '/^ENVIRONMENT/,/^FILES/' <<<"$text")
done
assert_contains "smtpsyncctl.1: the draft, test, save walk-through" "$text" \
    "smtpsyncctl settings save --apply-to-replicas"
# Local mode as the daemon's user: root would make root's 0600 files.
assert_contains "smtpsyncctl.1: local mode run as smtpsync" "$text" \
    "runuser -u smtpsync -- smtpsyncctl --data-dir /var/lib/smtpsync"
# Which verbs work in local mode: each verb (but the socket's and help)
# run on a store; those that refuse it are the ones the page calls remote
# mode only, and the others are named as working in both.
refused=
while read -r verb; do
    case $verb in help | send | sendmail | queue) continue ;; esac
    # shellcheck disable=SC2086 # "settings set" is two words
    run "$SMTPSYNCCTL" --data-dir "$T/local" $verb
    if grep -q 'needs --server' <<<"$ERR"; then
        assert_exit "smtpsyncctl $verb in local mode: a usage error" 2
        refused+=" $verb"
    fi
done <<<"$verbs"
assert_eq "the verbs that refuse local mode" " sync promote" "$refused"
assert_contains "smtpsyncctl.1: sync and promote are remote mode only" "$text" \
    "sync and promote are remote mode only"
assert_contains "smtpsyncctl.1: they fail in local mode" "$text" \
    "in local mode they fail with exit status 2"
both=$(grep 'work in both' <<<"$text" || true)
while read -r verb; do
    case $verb in help | send | sendmail | queue | sync | promote) continue ;; esac
    assert_true "smtpsyncctl.1: '${verb%% *}' works in both modes" has "$both" "${verb%% *}"
done <<<"$verbs"
assert_not_contains "smtpsyncctl.1: no 'every verb but'" "$text" "Every verb but"

# ---- the daemons' pages ----
for prog in smtpsync-primary smtpsync-replica; do
    page=${PAGE[$prog]}
    text=$(render "$page")
    role=${prog#smtpsync-}
    other=smtpsync-primary
    [ "$role" = primary ] && other=smtpsync-replica
    assert_true "$prog.8: NAME names it" grep -qx "       $prog - the smtpsync $role daemon" <<<"$text"
    run "${BIN[$prog]}" --help
    assert_exit "$prog --help" 0
    # Its stop, as in SIGNALS below.
    assert_not_contains "$prog --help: no 'finished first' claim" "$OUT" "finished first"
    assert_contains "$prog --help: the drain" "$OUT" "get $drain_s s to"
    assert_contains "$prog --help: the outbox keeps the rest" "$(tr '\n' ' ' <<<"$OUT")" \
        "unsent mail stays in the outbox"
    options=$(grep -oE '(^|[][ ,|(])--[a-z][a-z-]*' <<<"$OUT" | sed -E 's/^[][ ,|(]//' | sort -u)
    assert_true "$prog: options found in --help" test "$(wc -l <<<"$options")" -ge 5
    names_all "$prog.8 names every option of $prog --help" "$text" "$options"
    for sig in SIGTERM SIGINT SIGHUP; do
        assert_true "$prog.8: SIGNALS explains $sig" \
            grep -q "$sig" < <(awk '/^SIGNALS/,/^FILES/' <<<"$text")
    done
    signals=$(awk '/^SIGNALS/,/^FILES/' <<<"$text")
    assert_not_contains "$prog.8: SIGNALS, no 'finished first' claim" "$signals" "finished first"
    assert_contains "$prog.8: SIGNALS, the drain" "$signals" "get $drain_s seconds to finish"
    assert_contains "$prog.8: SIGNALS, cancelled" "$signals" "cancelled"
    assert_contains "$prog.8: SIGNALS, the outbox keeps the rest" "$signals" \
        "stays in the outbox, to be sent after the next start"
    examples=$(awk '/^EXAMPLES/,/^SEE ALSO/' <<<"$text")
    # By hand: the unit's runtime directory, then the daemon as smtpsync.
    assert_contains "$prog.8: by hand, /run/smtpsync made as the unit makes it" "$examples" \
        "install -d -o smtpsync -g smtpsync -m $rundir_mode /run/smtpsync"
    assert_contains "$prog.8: by hand, run as smtpsync" "$examples" \
        "runuser -u smtpsync -- $prog --config /etc/smtpsync/$role.conf"
    assert_eq "$prog.8: the daemon started only through runuser" "" \
        "$(grep -E "^ *$prog --config" <<<"$examples" | grep -v -- '--check-config' || true)"
    # The walk-through says where smtpsyncctl finds its connection first.
    first=$(grep -nE '^ *(export SMTPSYNC_CONFIG=|smtpsyncctl )' <<<"$examples" | head -n 1)
    assert_match "$prog.8: the walk-through sets SMTPSYNC_CONFIG first" "$first" \
        '^[0-9]+: *export SMTPSYNC_CONFIG='
    assert_contains "$prog.8: the walk-through names [ctl]" "$examples" "[ctl]"
    # [sender] helo: its fallback.
    sender=$(awk '/^       \[sender\]/,/^       \[log\]/' <<<"$text")
    assert_contains "$prog.8: helo's EHLO fallback" "$sender" "EHLO says $helo_fallback"
    assert_contains "$prog.8: its config file" "$text" "/etc/smtpsync/$role.conf"
    assert_contains "$prog.8: sees the other daemon" "$text" "$other(8)"
    # Every key of the config file is named (the tables of common/config.c).
    keys=$(sed -nE 's/^ *\{"([a-z_]+)", KIND_.*/\1/p' "$SRC/common/config.c" | sort -u)
    names_all "$prog.8 names every config key" "$text" "$keys"
done
finish
