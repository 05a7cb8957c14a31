#!/usr/bin/env bash
# Runs the README's walk-through block exactly as written (only the binary
# and /tmp are pointed at this test's own), so the README stays true.
source "$(dirname "$0")/lib.sh"

readme=$(dirname "$0")/../../README.md
block=$(awk '/^## The administrator.s walk-through/ {on = 1} on && /^```sh$/ {grab = 1; next}
             grab && /^```$/ {exit} grab {print}' "$readme")
assert_true "README has the walk-through block" test -n "$block"
assert_contains "block starts with the binary" "$block" "b=build/release/ctl/smtpsyncctl"

script=${block//\/tmp\//$T\/}
script=${script//b=build\/release\/ctl\/smtpsyncctl/b=$SMTPSYNCCTL}
run bash -euo pipefail -c "$script"
assert_exit "walk-through runs" 0
assert_contains "saved revision 1" "$OUT" "saved revision 1"
assert_contains "saved revision 2" "$OUT" "saved revision 2"
assert_contains "diff shows the port" "$OUT" "primary.port: 465 -> 587"
assert_contains "diff shows the mode" "$OUT" "primary.tls_mode: strict -> starttls"
assert_contains "rolled back" "$OUT" "rolled back to 1 as revision 3"
assert_not_contains "no password in output" "$OUT$ERR" "S3cret-pw"

# The last command printed the record as JSON, after the rollback.
OUT=${OUT#*rolled back to 1 as revision 3}
assert_eq "port back to 465" 465 "$(json 'd["instances"]["primary"]["port"]')"
assert_eq "mode back to strict" strict "$(json 'd["instances"]["primary"]["tls_mode"]')"
assert_eq "password masked" "********" "$(json 'd["instances"]["primary"]["password"]')"
finish
