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

# raw_free TEXT: TEXT is valid UTF-8 and holds nothing that could steer a
# terminal: no C0 control but newline, no DEL, no C1 control (U+0080-U+009F),
# no bidirectional control or line separator. no_raw_control WHAT TEXT
# asserts it.
raw_free() {
    printf '%s' "$1" | python3 -c '
import sys
try:
    text = sys.stdin.buffer.read().decode("utf-8")
except UnicodeDecodeError:
    sys.exit(1)
unsafe = [c for c in text if (ord(c) < 0x20 and c != "\n") or 0x7f <= ord(c) <= 0x9f
          or ord(c) in (0x61c, 0x200e, 0x200f) or 0x2028 <= ord(c) <= 0x202e
          or 0x2066 <= ord(c) <= 0x2069]
sys.exit(1 if unsafe else 0)'
}
no_raw_control() {
    if raw_free "$2"; then
        pass
    else
        fail "$1: raw control or invisible formatting characters in output: ${2:0:300}"
    fi
}
# The check sees what it looks for.
for bad in $'\x1b' $'\x7f' $'\xc2\x9b' $'\xe2\x80\xae' $'\xe2\x81\xa6' $'\xe2\x80\x8e' $'\xff'; do
    if raw_free "a${bad}b"; then
        fail "raw_free misses $(printf %q "$bad")"
    else
        pass
    fi
done

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

# Invalid UTF-8, control characters (C0 and C1, raw or UTF-8 encoded) and
# bidirectional controls never reach the store or the terminal.
for from in $'a\x01b@example.com' $'\xff\xfe@example.com' $'a@exa\nmple.com' $'\e[31mred@example.com' \
    $'a\xc2\x9b31mred@example.com' $'a\xc2\x85b@example.com' $'moc.elpmaxe@\xe2\x80\xaeadmin' \
    $'a\xe2\x81\xa6b\xe2\x81\xa9@example.com' $'a\xe2\x80\x8fb@example.com' $'a\xe2\x80\xa8b@example.com'; do
    ctl settings set --instance site-b --from "$from"
    assert_exit "hostile --from" 1
    assert_contains "hostile --from" "$ERR" "smtpsyncctl: from_address: "
    no_raw_control "hostile --from" "$ERR"
done
ctl settings set --instance site-b --hostname $'\e]0;owned\a'
assert_exit "escape sequence in hostname" 1
no_raw_control "escape sequence in hostname" "$ERR"
no_draft "hostile text" site-b
ctl settings set --instance site-b --hostname $'mail\xe2\x80\xae.test'
assert_exit "bidi control in hostname" 1
assert_contains "bidi control in hostname: shown escaped" "$ERR" '\u202e'
no_raw_control "bidi control in hostname" "$ERR"
ctl settings save --comment $'looks \xe2\x80\xaefine'
assert_exit "bidi control in --comment" 2
assert_contains "bidi control in --comment: shown escaped" "$ERR" '\u202e'
no_raw_control "bidi control in --comment" "$ERR"
ctl settings save --comment $'c1 \xc2\x9b control'
assert_exit "C1 control in --comment" 2
assert_contains "C1 control in --comment: shown escaped" "$ERR" '\u009b'
no_raw_control "C1 control in --comment" "$ERR"

# Every problem at once: a failed set also lists what is still missing.
ctl settings set --instance fresh --port 70000
assert_exit "bad port on a new instance" 1
assert_contains "bad port on a new instance" "$ERR" "smtpsyncctl: port: "
for f in hostname from_address test_address; do
    assert_contains "failed set: still needed $f" "$ERR" "still needed before save: $f:"
done
no_draft "bad port on a new instance" fresh

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

# The path of a password file is never shown: it may be the password,
# given where the path belongs.
ctl settings set --instance site-c --password-file "hunter2-as-path"
assert_exit "missing password file" 1
assert_contains "missing password file" "$ERR" \
    "cannot open password file (given with --password-file): No such file or directory"
assert_not_contains "missing password file: path not echoed" "$ERR" "hunter2"

ctl settings set --instance site-c --password-file "$T"
assert_exit "password file is a directory" 1
assert_contains "password file is a directory" "$ERR" "it is a directory"
ctl settings set --instance site-c --password-file /dev/zero
assert_exit "password file is /dev/zero" 1
assert_contains "password file is /dev/zero" "$ERR" "it is a character device"
python3 -c 'import socket, sys; socket.socket(socket.AF_UNIX).bind(sys.argv[1])' "$T/sock"
ctl settings set --instance site-c --password-file "$T/sock"
assert_exit "password file is a socket" 1
assert_contains "password file is a socket" "$ERR" "it is a socket"
# A FIFO nobody writes to reads as empty instead of hanging.
mkfifo -m 600 "$T/fifo"
run timeout 5 "$SMTPSYNCCTL" --data-dir "$DATA" settings set --instance site-c \
    --password-file "$T/fifo"
assert_exit "FIFO without a writer does not hang" 1
assert_contains "FIFO without a writer" "$ERR" "empty"
# A pipe from the shell works: --password-file <(command).
run "$SMTPSYNCCTL" --data-dir "$DATA" settings set --instance site-d --logon --user u \
    --password-file <(printf 'piped-pw\n')
assert_exit "--password-file <(...)" 0
ctl settings show --draft --json --instance site-d
assert_eq "--password-file <(...): password set" "********" \
    "$(json 'd["instances"]["site-d"]["password"]')"
ctl settings discard --instance site-d

head -c 5000 /dev/zero | tr '\0' 'p' >"$T/longpw"
chmod 600 "$T/longpw"
ctl settings set --instance site-c --password-file "$T/longpw"
assert_exit "password too long" 1
assert_not_contains "password too long: no secret" "$ERR" "pppppppp"

ctl_in $'pw\n' settings set --instance site-c --password-file "$PW" --password-stdin
assert_exit "both password sources" 2
ctl settings set --instance site-c --password-file "$PW" --password-prompt
assert_exit "--password-file and --password-prompt" 2
assert_contains "--password-file and --password-prompt" "$ERR" "only one of"

for arg in --password --password=hunter2-argv --passwd --pass; do
    ctl settings set --instance site-c "$arg" hunter2-argv
    assert_exit "password in argv ($arg)" 2
    assert_contains "password in argv ($arg)" "$ERR" "unknown option"
    assert_not_contains "password in argv ($arg): not echoed" "$ERR" "hunter2-argv"
done
# An abbreviation of --password-file is not taken either.
ctl settings set --instance site-c --password-f "$PW"
assert_exit "abbreviated option" 2
# A stray word is named by its position, never shown: it may be the
# password (`--logon hunter2`).
ctl settings set --instance site-c --logon hunter2-stray
assert_exit "stray word in settings set" 2
assert_contains "stray word: position" "$ERR" "unexpected argument (#8 on the command line"
assert_not_contains "stray word: not echoed" "$ERR" "hunter2"
ctl settings set --instance site-c -- hunter2-after-dashes
assert_exit "stray word after --" 2
assert_contains "stray word after --: position" "$ERR" "unexpected argument (#8 on the command line"
assert_not_contains "stray word after --: not echoed" "$ERR" "hunter2"
no_draft "passwords" site-c

# --- verbs and options ----------------------------------------------------
ctl frobnicate
assert_exit "unknown verb" 2
assert_contains "unknown verb" "$ERR" "unknown verb 'frobnicate'"
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
# An unknown letter in a cluster is named, not the word before it.
ctl settings show --json -Zh
assert_exit "unknown letter in a cluster" 2
assert_contains "unknown letter in a cluster" "$ERR" "unknown option '-Z'"
assert_not_contains "unknown letter in a cluster: not the previous word" "$ERR" "'--json'"
ctl history --limit 1 -hZ
assert_exit "--help in a cluster wins" 0
ctl settings show --hel
assert_exit "abbreviated --help" 2
assert_contains "abbreviated --help" "$ERR" "options are not abbreviated"
# Options after operands also work where POSIXLY_CORRECT is set.
run env POSIXLY_CORRECT=1 "$SMTPSYNCCTL" --data-dir "$DATA" diff 1 1 --json
assert_exit "POSIXLY_CORRECT: diff 1 1 --json" 0
assert_eq "POSIXLY_CORRECT: JSON output" "[]" "$(json 'd')"

# Output that cannot be written is a failure, not a silent success.
LAST_CMD="smtpsyncctl --help >/dev/full"
"$SMTPSYNCCTL" --help >/dev/full 2>"$T/.err"
RC=$? ERR=$(cat "$T/.err")
check_crash "$LAST_CMD" || true
assert_exit "--help >/dev/full" 1
assert_contains "--help >/dev/full" "$ERR" "write error: standard output: No space left on device"
LAST_CMD="smtpsyncctl settings show --json >/dev/full"
"$SMTPSYNCCTL" --data-dir "$DATA" settings show --json >/dev/full 2>"$T/.err"
RC=$? ERR=$(cat "$T/.err")
check_crash "$LAST_CMD" || true
assert_exit "settings show >/dev/full" 1
assert_contains "settings show >/dev/full" "$ERR" "write error:"

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
assert_contains "show --revision max" "$ERR" "--revision: revision 18446744073709551615 does not exist (the newest is 1)"
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
import_fails "/dev/zero" /dev/zero "it is a character device"
run timeout 5 "$SMTPSYNCCTL" --data-dir "$DATA" settings import-cert --instance certs "$T/fifo"
assert_exit "import from a FIFO without a writer does not hang" 1
assert_contains "import from a FIFO without a writer" "$ERR" "empty"
run "$SMTPSYNCCTL" --data-dir "$DATA" settings import-cert --instance certs-pipe \
    <(cat "$CERTS/leaf.pem")
assert_exit "import-cert <(...)" 0
ctl settings discard --instance certs-pipe
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
# Remote mode needs its certificate files (tests/cli/test_remote.sh has more).
run "$SMTPSYNCCTL" --server primary:7443 settings show
assert_exit "--server without certificates" 2
assert_contains "--server without certificates" "$ERR" \
    "remote mode needs --ca, --cert and --key"
run "$SMTPSYNCCTL" --server primary:7443 --data-dir "$T" settings show
assert_exit "--server and --data-dir" 2
assert_contains "--server and --data-dir" "$ERR" "--data-dir and --server exclude each other"
: >"$T/a-file"
run "$SMTPSYNCCTL" --data-dir "$T/a-file" settings set --instance x --hostname mail.test
assert_exit "--data-dir is a file" 1
assert_contains "--data-dir is a file" "$ERR" "not a directory"
run "$SMTPSYNCCTL" --data-dir "$T/nowhere" history
assert_exit "--data-dir does not exist (read)" 1
assert_contains "--data-dir does not exist (read)" "$ERR" "no such directory"
assert_true "a read does not create the directory" test ! -e "$T/nowhere"
# An existing directory without a store: every verb but set and import-cert
# says so and leaves the directory as it was.
mkdir "$T/empty"
for args in history "diff 1 2" "rollback 1" "settings show" "settings show --draft" \
    "settings save" "settings discard"; do
    # shellcheck disable=SC2086
    run "$SMTPSYNCCTL" --data-dir "$T/empty" $args
    assert_exit "$args in a directory without a store" 1
    assert_contains "$args in a directory without a store" "$ERR" \
        "no store in $T/empty (nothing has been saved or drafted there yet)"
    assert_eq "$args in a directory without a store: nothing created" "" "$(ls -A "$T/empty")"
done
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
