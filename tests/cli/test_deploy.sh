#!/usr/bin/env bash
# The helper scripts around smtpsyncctl: deploy/demo removes only what it
# made, deploy/install-deps says plainly when it cannot install, and
# tests/tools/make-certs.sh makes its files anew when the script changes.
source "$(dirname "$0")/lib.sh"

top=$(cd "$(dirname "$0")/../.." && pwd)

# --- deploy/demo: only a directory with the demo's marker is removed -----
# A copy of the script, in a tree with nothing to build: should the refusal
# ever fail, the demo stops at the build instead of building the real tree.
mkdir -p "$T/tree/deploy"
cp "$top/deploy/demo" "$T/tree/deploy/demo"
demo=$T/tree/deploy/demo
mkdir -p "$T/precious/sub"
echo keep >"$T/precious/sub/file"
SMTPSYNC_DEMO_DIR=$T/precious run "$demo" stop
assert_exit "demo stop on a foreign directory" 1
assert_contains "demo stop on a foreign directory" "$ERR" "refusing to remove $T/precious"
assert_contains "demo stop names the marker" "$ERR" ".smtpsync-demo"
assert_true "demo stop left the foreign directory" test -f "$T/precious/sub/file"

# The run itself refuses before it installs or builds anything.
SMTPSYNC_DEMO_DIR=$T/precious run timeout 60 "$demo"
assert_exit "demo run over a foreign directory" 1
assert_contains "demo run over a foreign directory" "$ERR" "refusing to remove $T/precious"
assert_not_contains "demo run: stopped before building" "$OUT" "Building"
assert_true "demo run left the foreign directory" test -f "$T/precious/sub/file"

ln -s "$T/precious" "$T/link"
: >"$T/precious/.smtpsync-demo"
SMTPSYNC_DEMO_DIR=$T/link run "$demo" stop
assert_exit "demo stop on a symlink" 1
assert_true "demo stop left the symlink's target" test -f "$T/precious/sub/file"

SMTPSYNC_DEMO_DIR=$T/precious run "$demo" stop
assert_exit "demo stop on the demo's directory" 0
assert_true "demo stop removed the demo's directory" test ! -e "$T/precious"
SMTPSYNC_DEMO_DIR=$T/precious run "$demo" stop
assert_exit "demo stop with nothing there" 0
assert_contains "demo stop with nothing there" "$OUT" "nothing to remove"
mkdir "$T/empty-run"
SMTPSYNC_DEMO_DIR=$T/empty-run run "$demo" stop
assert_exit "demo stop on an empty directory" 0
assert_true "demo stop removed the empty directory" test ! -e "$T/empty-run"

# --- deploy/install-deps: not root, no sudo ------------------------------
# A PATH where the user is not root, every package is missing and there is
# no sudo; apt-get records that it was called.
fake=$T/fakebin
mkdir "$fake"
ln -s "$(command -v bash)" "$fake/bash"
ln -s "$(command -v cat)" "$fake/cat"
printf '#!%s\n[ "$1" = -u ] && echo 1000 || echo "uid=1000"\n' "$(command -v bash)" >"$fake/id"
printf '#!%s\necho not-installed\n' "$(command -v bash)" >"$fake/dpkg-query"
printf '#!%s\necho called >>"%s"\n' "$(command -v bash)" "$T/apt-called" >"$fake/apt-get"
chmod +x "$fake/id" "$fake/dpkg-query" "$fake/apt-get"
run env PATH="$fake" "$(command -v bash)" "$top/deploy/install-deps" build
assert_exit "install-deps without root or sudo" 1
assert_contains "install-deps without root or sudo" "$ERR" "run as root or install sudo"
assert_contains "install-deps names what is missing" "$ERR" "libuv1-dev"
assert_true "install-deps did not run apt-get" test ! -e "$T/apt-called"

# --- tests/tools/make-certs.sh: .done holds the script's hash ------------
make_certs=$top/tests/tools/make-certs.sh
sum=$(sha256sum "$make_certs" | cut -d' ' -f1)
run "$make_certs" "$T/certs"
assert_exit "make-certs" 0
assert_eq "make-certs: .done holds the script's SHA-256" "$sum" "$(cat "$T/certs/.done")"
before=$(sha256sum "$T/certs/ca.pem")
run "$make_certs" "$T/certs"
assert_exit "make-certs again" 0
assert_eq "make-certs again: nothing made anew" "$before" "$(sha256sum "$T/certs/ca.pem")"
echo "an older script" >"$T/certs/.done"
run "$make_certs" "$T/certs"
assert_exit "make-certs after a change" 0
assert_true "make-certs after a change: made anew" \
    test "$before" != "$(sha256sum "$T/certs/ca.pem")"
assert_eq "make-certs after a change: .done updated" "$sum" "$(cat "$T/certs/.done")"

finish
