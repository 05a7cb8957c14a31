#!/usr/bin/env bash
# Runs the README's walk-through block exactly as written, so the README
# stays true. Only the binary is pointed at the one under test; TMPDIR sends
# the block's `mktemp -d` into this test's own directory, where the block
# must leave nothing behind.
source "$(dirname "$0")/lib.sh"

readme=$(dirname "$0")/../../README.md
block=$(awk '/^## The administrator.s walk-through/ {on = 1} on && /^```sh$/ {grab = 1; next}
             grab && /^```$/ {exit} grab {print}' "$readme")
assert_true "README has the walk-through block" test -n "$block"
assert_contains "block starts with the binary" "$block" "b=build/release/ctl/smtpsyncctl"
assert_contains "block works in a mktemp directory" "$block" 't=$(mktemp -d)'
assert_not_contains "block uses no fixed /tmp path" "$block" "/tmp/"
assert_contains "block cleans up" "$block" 'rm -rf "$t"'

script=${block//b=build\/release\/ctl\/smtpsyncctl/b=$SMTPSYNCCTL}
mkdir "$T/tmp"
run env TMPDIR="$T/tmp" bash -euo pipefail -c "$script"
assert_exit "walk-through runs" 0
assert_contains "saved revision 1" "$OUT" "saved revision 1"
assert_contains "saved revision 2" "$OUT" "saved revision 2"
assert_contains "diff shows the port" "$OUT" "primary.port: 465 -> 587"
assert_contains "diff shows the mode" "$OUT" "primary.tls_mode: strict -> starttls"
assert_contains "rolled back" "$OUT" "rolled back to 1 as revision 3"
assert_not_contains "no password in output" "$OUT$ERR" "S3cret-pw"
assert_eq "the block removed its directory" "" "$(ls -A "$T/tmp")"

# The last command printed the record as JSON, after the rollback.
OUT=${OUT#*rolled back to 1 as revision 3}
assert_eq "port back to 465" 465 "$(json 'd["instances"]["primary"]["port"]')"
assert_eq "mode back to strict" strict "$(json 'd["instances"]["primary"]["tls_mode"]')"
assert_eq "password masked" "********" "$(json 'd["instances"]["primary"]["password"]')"
finish
