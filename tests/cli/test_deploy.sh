#!/usr/bin/env bash
# The helper scripts around smtpsyncctl: deploy/demo removes only what it
# made, deploy/install-deps says plainly when it cannot install, and
# tests/tools/make-certs.sh makes its files anew when it or its signer changes.
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

# A relative SMTPSYNC_DEMO_DIR is the current directory's, made absolute.
RT=$(cd "$T" && pwd -P)
mkdir "$T/rel-run"
: >"$T/rel-run/.smtpsync-demo"
(cd "$T" && SMTPSYNC_DEMO_DIR=rel-run run "$demo" stop && printf '%s' "$OUT" >"$T/rel.out")
assert_contains "demo stop with a relative directory: absolute" "$(cat "$T/rel.out")" "removed $RT/rel-run"
assert_true "demo stop with a relative directory: removed" test ! -e "$T/rel-run"

# Run through a symlink: the checkout is the script's, not the link's.
mkdir "$T/tree/demo-run"
: >"$T/tree/demo-run/.smtpsync-demo"
ln -s "$demo" "$T/demo-link"
run env -u SMTPSYNC_DEMO_DIR "$T/demo-link" stop
assert_exit "demo stop through a symlink" 0
assert_true "demo stop through a symlink: the checkout's demo-run removed" test ! -e "$T/tree/demo-run"

# Directories Postfix's lists or the output's sed would split are refused.
for bad in "$T/a b" "$T/a,b" "$T/a|b" "$T/a&b" "$T/a
b"; do
    SMTPSYNC_DEMO_DIR=$bad run "$demo" stop
    assert_exit "demo refuses SMTPSYNC_DEMO_DIR '$bad'" 2
    assert_contains "demo refuses SMTPSYNC_DEMO_DIR '$bad'" "$ERR" "refusing SMTPSYNC_DEMO_DIR"
done

# stop also ends a daemon of the run whose pid file was never written (it
# has `--config RUN/...`), and nothing else naming the run.
mkdir -p "$T/orphan-run/site-b"
: >"$T/orphan-run/.smtpsync-demo"
python3 -c 'import time; time.sleep(60)' --config "$T/orphan-run/site-b/site-b.ini" &
orphan=$!
python3 -c 'import time; time.sleep(60)' "$T/orphan-run/site-b/other" &
bystander=$!
SMTPSYNC_DEMO_DIR=$T/orphan-run run "$demo" stop
assert_exit "demo stop with a daemon without a pid file" 0
assert_contains "demo stop names it" "$OUT" "without a pid file (pid $orphan)"
wait "$orphan" 2>/dev/null || true
alive() { kill -0 "$1" 2>/dev/null; }
assert_false "demo stop: the daemon without a pid file is gone" alive "$orphan"
assert_true "demo stop: a process that only names the run is left" alive "$bystander"
kill "$bystander" 2>/dev/null || true
wait "$bystander" 2>/dev/null || true

# Ports in the ephemeral range are warned about (the copy has no
# install-deps: the run stops right after).
SMTPSYNC_DEMO_DIR=$T/eph-run SMTPSYNC_DEMO_PORT_BASE=40000 run timeout 60 "$demo"
assert_contains "demo warns about ephemeral ports" "$ERR" "ephemeral range"
assert_true "demo with ephemeral ports: nothing made" test ! -e "$T/eph-run"

# --- deploy/install-deps: not root, no sudo ------------------------------
# A PATH where the user is not root, every package is missing and there is
# no sudo; apt-get records that it was called.
fake=$T/fakebin
mkdir "$fake"
ln -s "$(command -v bash)" "$fake/bash"
ln -s "$(command -v cat)" "$fake/cat"
# shellcheck disable=SC2016 # a script's text: $1 is its argument
printf '#!%s\n[ "$1" = -u ] && echo 1000 || echo "uid=1000"\n' "$(command -v bash)" >"$fake/id"
printf '#!%s\necho not-installed\n' "$(command -v bash)" >"$fake/dpkg-query"
printf '#!%s\necho called >>"%s"\n' "$(command -v bash)" "$T/apt-called" >"$fake/apt-get"
chmod +x "$fake/id" "$fake/dpkg-query" "$fake/apt-get"
run env PATH="$fake" "$(command -v bash)" "$top/deploy/install-deps" build
assert_exit "install-deps without root or sudo" 1
assert_contains "install-deps without root or sudo" "$ERR" "run as root or install sudo"
assert_contains "install-deps names what is missing" "$ERR" "libuv1-dev"
assert_true "install-deps did not run apt-get" test ! -e "$T/apt-called"

# --- tests/tools/make-certs.sh: .done holds the hash of the script and of
# the signer it uses ----------------------------------------------------------
make_certs=$top/tests/tools/make-certs.sh
sum=$(cat "$make_certs" "$top/tests/tools/sign-cert.sh" | sha256sum | cut -d' ' -f1)
run "$make_certs" "$T/certs"
assert_exit "make-certs" 0
assert_eq "make-certs: .done holds the scripts' SHA-256" "$sum" "$(cat "$T/certs/.done")"
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

# --- tests/tools/postfix.sh: nothing planted in /var/tmp is used ----------
# An instance whose DIR Postfix's users cannot reach lives in a fresh
# mktemp directory of /var/tmp: not the predictable name of older versions
# (planted here as a symlink to a directory that must not be chowned), not
# a directory DIR/instance links to unless root made it; the password file
# is written anew (a symlink in its place is replaced, its target kept);
# DIRs with spaces are refused; dead alternate_config_directories entries
# are pruned.
if [ "$(id -u)" -eq 0 ] && command -v postfix >/dev/null && command -v saslpasswd2 >/dev/null &&
    id postfix >/dev/null 2>&1; then
    pf=$top/tests/tools/postfix.sh
    RT=$(cd "$T" && pwd -P)
    mkdir -m 700 "$RT/private"
    pdir=$RT/private/pf
    mkdir "$pdir"
    mkdir -m 700 "$RT/victim"
    old=/var/tmp/smtpsync-postfix-$(printf '%s' "$pdir" | sha256sum | cut -c1-16)
    ln -sfn "$RT/victim" "$old"
    evil=$(mktemp -d /var/tmp/smtpsync-postfix.XXXXXX)
    chown nobody "$evil"
    ln -s "$evil" "$pdir/instance"
    dead=/nonexistent-smtpsync-test.$$/etc
    # A listed directory some other user owns (recreated after a run died).
    foreign=$RT/foreign-etc
    mkdir "$foreign"
    chown nobody "$foreign"
    # shellcheck disable=SC2317 # called by the trap
    pf_cleanup() {
        "$pf" remove "$pdir" >/dev/null 2>&1 || true
        rm -f "$old"
        rm -rf "$evil" "$T"
    }
    trap pf_cleanup EXIT
    # shellcheck disable=SC2016 # expanded by the inner bash
    flock -w 60 /run/smtpsync-postfix.lock bash -c '
        cur=$(postconf -h alternate_config_directories)
        postconf -e "alternate_config_directories = ${cur:+$cur, }$1, $2"' _ "$dead" "$foreign"
    ports=$(python3 -c '
import socket
s = [socket.socket() for _ in range(3)]
for x in s: x.bind(("127.0.0.1", 0))
print(" ".join(str(x.getsockname()[1]) for x in s))')
    SMTPSYNC_POSTFIX_PORTS=$ports run "$pf" start "$pdir" "$CERTS"
    assert_exit "postfix.sh start in an unreachable DIR" 0
    home=$(readlink "$pdir/instance")
    # shellcheck disable=SC2016 # expanded by the inner bash
    assert_true "postfix.sh: the home is a fresh mktemp directory ($home)" \
        bash -c '[[ $1 =~ ^/var/tmp/smtpsync-postfix\.[A-Za-z0-9]{6}$ ]]' _ "$home"
    assert_true "postfix.sh: not the planted directory" test "$home" != "$evil"
    assert_eq "postfix.sh: the home is root's, 0755" "0 755" "$(stat -c '%u %a' "$home")"
    assert_eq "postfix.sh: the planted directory is untouched" "nobody" "$(stat -c %U "$evil")"
    assert_true "postfix.sh: the planted directory is empty" test -z "$(ls -A "$evil")"
    assert_eq "postfix.sh: the symlink's target is not chowned" "0 700" "$(stat -c '%u %a' "$RT/victim")"
    assert_true "postfix.sh: nothing made through the old name" test -z "$(ls -A "$RT/victim")"
    listed=$(postconf -h alternate_config_directories)
    assert_contains "postfix.sh: the instance is listed" "$listed" "$home/etc"
    assert_not_contains "postfix.sh: the dead entry is pruned" "$listed" "$dead"
    assert_not_contains "postfix.sh: another user's entry is pruned" "$listed" "$foreign"
    if head -n 1 /etc/postfix/main.cf | grep -q "smtpsync's tests/tools/postfix.sh"; then
        assert_eq "postfix.sh's main.cf disables the default instance's inet services" \
            "inet" "$(postconf -h master_service_disable)"
        assert_eq "postfix.sh's main.cf: loopback only" "loopback-only" "$(postconf -h inet_interfaces)"
    fi
    pw1=$(cat "$home/password")
    echo keep >"$RT/pw-target"
    rm -f "$home/password"
    ln -s "$RT/pw-target" "$home/password"
    SMTPSYNC_POSTFIX_PORTS=$ports run "$pf" start "$pdir" "$CERTS"
    assert_exit "postfix.sh restart" 0
    assert_eq "postfix.sh restart: the same home" "$home" "$(readlink "$pdir/instance")"
    assert_eq "postfix.sh restart: the symlink's target is kept" "keep" "$(cat "$RT/pw-target")"
    # shellcheck disable=SC2016 # expanded by the inner bash
    assert_true "postfix.sh restart: the password is a new regular file" \
        bash -c '[ ! -L "$1" ] && [ -f "$1" ]' _ "$home/password"
    assert_eq "postfix.sh restart: the password file is 0600" "600" "$(stat -c %a "$home/password")"
    assert_true "postfix.sh restart: a new password" test "$pw1" != "$(cat "$home/password")"

    mkdir "$RT/with space"
    run "$pf" start "$RT/with space" "$CERTS"
    assert_exit "postfix.sh start in a DIR with a space" 1
    assert_contains "postfix.sh start in a DIR with a space" "$ERR" "refusing DIR"
    assert_not_contains "postfix.sh: a DIR with a space is not listed" \
        "$(postconf -h alternate_config_directories)" "with space"

    run "$pf" remove "$pdir"
    assert_exit "postfix.sh remove" 0
    assert_true "postfix.sh remove: the home is gone" test ! -e "$home"
    assert_not_contains "postfix.sh remove: unlisted" "$(postconf -h alternate_config_directories)" "$home/etc"
    assert_true "postfix.sh remove: the planted symlink's target is kept" test -d "$RT/victim"
else
    echo "SKIP: postfix.sh checks need root, postfix and sasl2-bin"
fi

finish
