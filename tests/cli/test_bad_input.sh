#!/usr/bin/env bash
# Malformed and hostile input on every input path of smtpsyncctl: each is
# refused with a one-line error naming what was wrong, the right exit status
# (1 failure, 2 usage), nothing written, and no crash.
source "$(dirname "$0")/lib.sh"

# no_draft WHAT INSTANCE: the instance has no draft.
no_draft() {
    local what=$1 instance=$2 save_out=$OUT save_err=$ERR save_rc=$RC
    ctl settings show --draft --instance "$instance"
    assert_exit "$what: no draft written" 1
    assert_contains "$what: no draft written" "$ERR" "has no draft"
    OUT=$save_out ERR=$save_err RC=$save_rc
}

# no_raw_control WHAT TEXT: TEXT holds no control character but newline.
no_raw_control() {
    if printf '%s' "$2" | tr -d '\n' | LC_ALL=C grep -q '[[:cntrl:]]'; then
        fail "$1: raw control characters in output"
    else
        pass
    fi
}

# A complete, saved baseline so that revisions exist.
PW=$T/pw
printf 'baseline-pw\n' >"$PW"
chmod 600 "$PW"
ctl settings set --instance primary --hostname mail.test --from noreply@example.com \
    --test-address admin@example.com --logon --user u --password-file "$PW" \
    --allow-plaintext-auth on
assert_exit "baseline set" 0
ctl settings save --comment baseline
assert_exit "baseline save" 0

# --- field values: every problem at once ---------------------------------
ctl settings set --instance site-b --hostname 'bad host!' --port 70000 --from not-an-address \
    --test-address 'x@'
assert_exit "4 bad fields" 1
assert_eq "4 bad fields: 4 problem lines" "4" \
    "$(printf '%s\n' "$ERR" | grep -cE '^smtpsyncctl: (hostname|port|from_address|test_address): ')"
for f in hostname port from_address test_address; do
    assert_contains "4 bad fields: names $f" "$ERR" "smtpsyncctl: $f: "
done
assert_eq "4 bad fields: stdout empty" "" "$OUT"
no_draft "4 bad fields" site-b
ctl settings show --draft --json
assert_eq "4 bad fields: no drafts at all" "{}" "$(json 'd["instances"]')"

for port in 12abc -1 65536 99999999999999999999999 ' 25' 0x19; do
    ctl settings set --instance site-b --port "$port"
    assert_exit "port '$port'" 1
    assert_contains "port '$port'" "$ERR" "smtpsyncctl: port: "
done
no_draft "bad ports" site-b

ctl settings set --instance site-b --tls-mode sometimes --starttls-fallback maybe \
    --timeout-connect 12abc
assert_exit "bad enum/bool/timeout" 1
assert_contains "bad tls_mode" "$ERR" "smtpsyncctl: tls_mode: "
assert_contains "bad starttls_fallback" "$ERR" "smtpsyncctl: starttls_fallback: "
assert_contains "bad timeout" "$ERR" "smtpsyncctl: timeout_connect: "

# Invalid UTF-8 and control characters never reach the store or the terminal.
for from in $'a\x01b@example.com' $'\xff\xfe@example.com' $'a@exa\nmple.com' $'\e[31mred@example.com'; do
    ctl settings set --instance site-b --from "$from"
    assert_exit "hostile --from" 1
    assert_contains "hostile --from" "$ERR" "smtpsyncctl: from_address: "
    no_raw_control "hostile --from" "$ERR"
done
ctl settings set --instance site-b --hostname $'\e]0;owned\a'
assert_exit "escape sequence in hostname" 1
no_raw_control "escape sequence in hostname" "$ERR"
no_draft "hostile text" site-b

# --- instance ids ---------------------------------------------------------
ctl settings set --hostname mail.test
assert_exit "missing --instance" 2
assert_contains "missing --instance" "$ERR" "--instance"
for id in '' '-x' 'a/b' '../etc' "$(printf 'x%.0s' {1..65})" $'a\nb'; do
    ctl settings set --instance "$id" --hostname mail.test
    assert_exit "bad instance id" 2
    assert_contains "bad instance id" "$ERR" "--instance: invalid instance id"
    no_raw_control "bad instance id" "$ERR"
done

# --- passwords ------------------------------------------------------------
printf 'one-password\nanother-password\n' >"$T/mismatch"
chmod 600 "$T/mismatch"
ctl settings set --instance site-c --hostname mail.test --logon --user u --password-file "$T/mismatch"
assert_exit "password mismatch" 1
assert_contains "password mismatch" "$ERR" "smtpsyncctl: password: "
assert_not_contains "password mismatch: no secret" "$ERR" "one-password"
assert_not_contains "password mismatch: no secret" "$ERR" "another-password"
no_draft "password mismatch" site-c

ctl_in $'one\ntwo\n' settings set --instance site-c --logon --password-stdin
assert_exit "stdin mismatch" 1
assert_contains "stdin mismatch" "$ERR" "password: does not match"
no_draft "stdin mismatch" site-c

printf 'p1\np1\nextra\n' >"$T/three"
chmod 600 "$T/three"
ctl settings set --instance site-c --password-file "$T/three"
assert_exit "three lines" 1
assert_contains "three lines" "$ERR" "more than two lines"

: >"$T/emptypw"
chmod 600 "$T/emptypw"
ctl settings set --instance site-c --password-file "$T/emptypw"
assert_exit "empty password file" 1
assert_contains "empty password file" "$ERR" "empty"

printf '\nconfirm\n' >"$T/emptyline"
chmod 600 "$T/emptyline"
ctl settings set --instance site-c --password-file "$T/emptyline"
assert_exit "empty first line" 1

printf 'crlf-pw\r\ncrlf-pw\r\n' >"$T/crlf"
chmod 600 "$T/crlf"
ctl settings set --instance site-c --logon --password-file "$T/crlf"
assert_exit "CRLF password file" 1
assert_contains "CRLF password file" "$ERR" "password: "
assert_not_contains "CRLF password file: no secret" "$ERR" "crlf-pw"

printf 'world-readable\n' >"$T/open"
chmod 644 "$T/open"
ctl settings set --instance site-c --password-file "$T/open"
assert_exit "mode 0644 password file" 1
assert_contains "mode 0644 password file" "$ERR" "chmod 600"
assert_not_contains "mode 0644: no secret" "$ERR" "world-readable"

ctl settings set --instance site-c --password-file "$T/does-not-exist"
assert_exit "missing password file" 1
assert_contains "missing password file" "$ERR" "cannot open password file"

ctl settings set --instance site-c --password-file "$T"
assert_exit "password file is a directory" 1

head -c 5000 /dev/zero | tr '\0' 'p' >"$T/longpw"
chmod 600 "$T/longpw"
ctl settings set --instance site-c --password-file "$T/longpw"
assert_exit "password too long" 1
assert_not_contains "password too long: no secret" "$ERR" "pppppppp"

ctl_in $'pw\n' settings set --instance site-c --password-file "$PW" --password-stdin
assert_exit "both password sources" 2

for arg in --password --password=hunter2-argv --passwd --pass; do
    ctl settings set --instance site-c "$arg" hunter2-argv
    assert_exit "password in argv ($arg)" 2
    assert_contains "password in argv ($arg)" "$ERR" "unknown option"
    assert_not_contains "password in argv ($arg): not echoed" "$ERR" "hunter2-argv"
done
# An abbreviation of --password-file is not taken either.
ctl settings set --instance site-c --password-f "$PW"
assert_exit "abbreviated option" 2
no_draft "passwords" site-c

# --- verbs and options ----------------------------------------------------
ctl frobnicate
assert_exit "unknown verb" 2
assert_contains "unknown verb" "$ERR" "unknown verb 'frobnicate'"
ctl settings test --instance primary
assert_exit "settings test is not there yet" 2
assert_contains "settings test" "$ERR" "unknown subcommand 'test'"
ctl settings
assert_exit "settings without subcommand" 2
run "$SMTPSYNCCTL"
assert_exit "no verb" 2
ctl settings show --bogus
assert_exit "unknown option" 2
assert_contains "unknown option: usage" "$ERR" "usage: smtpsyncctl"
ctl settings show --json=yes
assert_exit "value for a flag" 2
ctl settings save stray-argument
assert_exit "stray argument" 2

# --- numbers --------------------------------------------------------------
for n in abc -1 99999999999999999999999 0 12abc ' 1' +1 0x1 ''; do
    ctl history --limit "$n"
    assert_exit "history --limit '$n'" 2
    ctl rollback "$n"
    assert_exit "rollback '$n'" 2
    ctl diff "$n" 1
    assert_exit "diff '$n' 1" 2
    ctl diff 1 "$n"
    assert_exit "diff 1 '$n'" 2
    ctl settings show --revision "$n"
    assert_exit "show --revision '$n'" 2
done
ctl rollback 99
assert_exit "rollback beyond head" 1
assert_contains "rollback beyond head" "$ERR" "revision 99 does not exist (the newest is 1)"
ctl diff 1 99
assert_exit "diff beyond head" 1
assert_contains "diff beyond head" "$ERR" "revision 99 does not exist"
ctl settings show --revision 18446744073709551615
assert_exit "show --revision max" 1
ctl diff 1
assert_exit "diff with one revision" 2
ctl rollback
assert_exit "rollback without revision" 2

# --- certificates ---------------------------------------------------------
import_fails() {
    local what=$1 file=$2 expect=$3
    ctl settings import-cert --instance certs "$file"
    assert_exit "import $what" 1
    assert_contains "import $what" "$ERR" "$expect"
    no_draft "import $what" certs
}
: >"$T/empty.pem"
head -c 204800 /dev/zero | tr '\0' 'A' >"$T/big.pem"
{ cat "$CERTS/leaf.pem"; head -c 204800 /dev/zero | tr '\0' '\n'; } >"$T/big-tail.pem"
import_fails "garbage.pem" "$CERTS/garbage.pem" "trust_certificate"
import_fails "a private key" "$CERTS/leaf.key" "trust_certificate"
import_fails "expired.pem" "$CERTS/expired.pem" "trust_certificate"
import_fails "an empty file" "$T/empty.pem" "empty"
import_fails "a missing file" "$T/none.pem" "cannot open"
import_fails "a 200 KiB file" "$T/big.pem" "larger than"
import_fails "a 200 KiB file that starts well" "$T/big-tail.pem" "larger than"
import_fails "a directory" "$T" "cannot read"
ctl settings import-cert --instance certs
assert_exit "import without FILE" 2
ctl settings import-cert "$CERTS/leaf.pem"
assert_exit "import without --instance" 2

run_in "$(cat "$CERTS/garbage.pem")" "$SMTPSYNCCTL" --data-dir "$DATA" settings import-cert \
    --instance certs -
assert_exit "import garbage from stdin" 1

# A leaf must name the hostname.
ctl settings set --instance mismatch --hostname other.test
assert_exit "draft with other.test" 0
ctl settings import-cert --instance mismatch "$CERTS/leaf.pem"
assert_exit "hostname mismatch" 1
assert_contains "hostname mismatch" "$ERR" "smtpsyncctl: hostname: "
assert_contains "hostname mismatch names the host" "$ERR" "other.test"
assert_contains "hostname mismatch names the certificate" "$ERR" "certificate"
ctl settings show --draft --json --instance mismatch
assert_eq "hostname mismatch: draft unchanged" "null" \
    "$(json 'd["instances"]["mismatch"]["trust_certificate_pem"]')"
# The same file through stdin works for the right host.
ctl settings set --instance mismatch --hostname mail.test
run_in "$(cat "$CERTS/leaf.pem")" "$SMTPSYNCCTL" --data-dir "$DATA" settings import-cert \
    --instance mismatch -
assert_exit "import from stdin" 0

# --- save with an incomplete draft lists every missing field -------------
ctl settings set --instance partial --logon --smtps
assert_exit "incomplete draft is stored" 0
for f in hostname from_address test_address user_id password trust_certificate tls_mode; do
    assert_contains "set: still needed $f" "$ERR" "still needed before save: $f:"
done
ctl settings save --instance partial
assert_exit "save incomplete" 1
for f in hostname from_address test_address user_id password trust_certificate tls_mode; do
    assert_contains "save: missing $f" "$ERR" "smtpsyncctl: partial.$f: "
done
ctl settings save --instance nosuch --instance other
assert_exit "save of instances without drafts" 1
assert_contains "save: names nosuch" "$ERR" "instance nosuch has no draft"
assert_contains "save: names other" "$ERR" "instance other has no draft"
ctl history --json
assert_eq "failed saves wrote nothing" "1" "$(json 'len(d)')"
ctl settings save --comment $'two\nlines'
assert_exit "comment with a newline" 2
ctl settings save --comment "$(head -c 2000 /dev/zero | tr '\0' c)"
assert_exit "comment too long" 2

# --- data directory -------------------------------------------------------
run "$SMTPSYNCCTL" settings show
assert_exit "no --data-dir" 2
assert_contains "no --data-dir" "$ERR" "--data-dir"
run "$SMTPSYNCCTL" --data-dir "" settings show
assert_exit "empty --data-dir" 2
run "$SMTPSYNCCTL" --server primary:7443 settings show
assert_exit "--server" 2
assert_contains "--server" "$ERR" \
    "remote mode (--server) is not available yet; use --data-dir"
: >"$T/a-file"
run "$SMTPSYNCCTL" --data-dir "$T/a-file" settings set --instance x --hostname mail.test
assert_exit "--data-dir is a file" 1
assert_contains "--data-dir is a file" "$ERR" "not a directory"
run "$SMTPSYNCCTL" --data-dir "$T/nowhere" history
assert_exit "--data-dir does not exist (read)" 1
assert_contains "--data-dir does not exist (read)" "$ERR" "no such directory"
assert_true "a read does not create the directory" test ! -e "$T/nowhere"
if [ "$(id -u)" -eq 0 ]; then
    # root ignores modes; /proc refuses new directories to everyone.
    unwritable=/proc/self/smtpsync-test
else
    mkdir "$T/ro" && chmod 500 "$T/ro"
    unwritable=$T/ro/data
fi
run "$SMTPSYNCCTL" --data-dir "$unwritable" settings set --instance x --hostname mail.test
assert_exit "unwritable --data-dir" 1
assert_contains "unwritable --data-dir" "$ERR" "cannot open store in"

# --- very long arguments --------------------------------------------------
LONG=$(head -c 102400 /dev/zero | tr '\0' a)
for args in "--hostname $LONG" "--from $LONG@example.com" "--user $LONG" "--fallback-relays $LONG"; do
    # shellcheck disable=SC2086
    ctl settings set --instance long $args
    assert_exit "100 KB value (${args:0:12})" 1
    assert_true "100 KB value: short error" test "${#ERR}" -lt 4096
done
ctl settings set --instance "$LONG"
assert_exit "100 KB instance" 2
assert_true "100 KB instance: short error" test "${#ERR}" -lt 4096
ctl "$LONG"
assert_exit "100 KB verb" 2
assert_true "100 KB verb: short error" test "${#ERR}" -lt 4096
ctl "--$LONG"
assert_exit "100 KB option" 2
ctl settings show --instance primary --revision "$LONG"
assert_exit "100 KB number" 2
no_draft "long values" long

finish
