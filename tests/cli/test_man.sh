#!/usr/bin/env bash
# The man pages built from docs/man (scdoc): smtpsyncctl(1),
# smtpsync-primary(8) and smtpsync-replica(8) render without a warning from
# man or groff, and document everything the programs' --help lists: every
# verb of smtpsyncctl has its own subsection, every option of smtpsyncctl
# and of each verb's --help is named, and each daemon page names every
# option of its daemon's --help. A new verb or option without
# documentation fails here.
set -euo pipefail
source "$(dirname "$0")/lib.sh"

# The pages are built next to the programs: BUILD/docs/man/manN.
BUILD=$(cd "$(dirname "$SMTPSYNCCTL")/.." && pwd)
PRIMARY=${SMTPSYNC_PRIMARY:-$BUILD/primary/smtpsync-primary}
REPLICA=${SMTPSYNC_REPLICA:-$BUILD/replica/smtpsync-replica}
SRC=${SMTPSYNC_SOURCE:-$(cd "$(dirname "$0")/../.." && pwd)}
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
missing=
while read -r opt; do
    has "$text" "$opt" || missing+=" $opt"
done <<<"$options"
assert_eq "smtpsyncctl.1 names every option of the helps" "" "$missing"
for env in SMTPSYNC_CONFIG SMTPSYNC_DATA_DIR SMTPSYNC_SOCKET; do
    assert_true "smtpsyncctl.1: ENVIRONMENT has $env" \
        grep -qx "       $env" < <(awk '/^ENVIRONMENT/,/^FILES/' <<<"$text")
done
assert_contains "smtpsyncctl.1: the draft, test, save walk-through" "$text" \
    "smtpsyncctl settings save --apply-to-replicas"

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
    options=$(grep -oE '(^|[][ ,|(])--[a-z][a-z-]*' <<<"$OUT" | sed -E 's/^[][ ,|(]//' | sort -u)
    assert_true "$prog: options found in --help" test "$(wc -l <<<"$options")" -ge 5
    missing=
    while read -r opt; do
        has "$text" "$opt" || missing+=" $opt"
    done <<<"$options"
    assert_eq "$prog.8 names every option of $prog --help" "" "$missing"
    for sig in SIGTERM SIGINT SIGHUP; do
        assert_true "$prog.8: SIGNALS explains $sig" \
            grep -q "$sig" < <(awk '/^SIGNALS/,/^FILES/' <<<"$text")
    done
    assert_contains "$prog.8: its config file" "$text" "/etc/smtpsync/$role.conf"
    assert_contains "$prog.8: sees the other daemon" "$text" "$other(8)"
    # Every key of the config file is named (the tables of common/config.c).
    keys=$(sed -nE 's/^ *\{"([a-z_]+)", KIND_.*/\1/p' "$SRC/common/config.c" | sort -u)
    missing=
    while read -r key; do
        has "$text" "$key" || missing+=" $key"
    done <<<"$keys"
    assert_eq "$prog.8 names every config key" "" "$missing"
done
finish
