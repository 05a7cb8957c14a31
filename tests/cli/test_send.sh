#!/usr/bin/env bash
# smtpsyncctl send and sendmail: every input mistake is refused before the
# daemon is contacted (exit 2 for the command line, 1 for a bad value or
# input), with a one-line error naming it; without a daemon the error says
# so; and against a fake daemon on the submission socket, what is handed
# over (envelope and message) and what is printed are checked. Real
# delivery is covered by the integration tests.
source "$(dirname "$0")/lib.sh"

SOCK=$T/submit.sock
REQS=$T/requests
mkdir -p "$REQS"

# The fake daemon: answers each submission frame with the next id (from
# 42), refuses it when the message holds "X-Fake-Refuse", hangs up without
# a reply when it holds "X-Fake-Hangup", and records
# the decoded request as JSON in $REQS/N.json. Protobuf is encoded by hand
# (the few fields of Frame, SubmitRequest and SubmitReply), so the test
# needs no generated code.
cat >"$T/fake_submit.py" <<'EOF'
import base64, json, os, socket, struct, sys

path, reqdir = sys.argv[1], sys.argv[2]

def varint(b, i):
    v = shift = 0
    while True:
        c = b[i]; i += 1
        v |= (c & 0x7f) << shift; shift += 7
        if c < 0x80:
            return v, i

def fields(b):
    out, i = {}, 0
    while i < len(b):
        key, i = varint(b, i)
        num, wt = key >> 3, key & 7
        if wt == 0:
            v, i = varint(b, i)
        elif wt == 2:
            n, i = varint(b, i)
            v = b[i:i + n]; i += n
        else:
            raise ValueError("wire type %d" % wt)
        out.setdefault(num, []).append(v)
    return out

def enc_varint(v):
    out = bytearray()
    while True:
        c = v & 0x7f; v >>= 7
        if v:
            out.append(c | 0x80)
        else:
            out.append(c)
            return bytes(out)

def field(num, wt, payload):
    key = enc_varint(num << 3 | wt)
    if wt == 0:
        return key + enc_varint(payload)
    return key + enc_varint(len(payload)) + payload

def recv_all(c, n):
    b = b""
    while len(b) < n:
        chunk = c.recv(n - len(b))
        if not chunk:
            raise EOFError
        b += chunk
    return b

srv = socket.socket(socket.AF_UNIX)
srv.bind(path + ".tmp")
os.rename(path + ".tmp", path)
srv.listen(8)
count = 0
while True:
    c, _ = srv.accept()
    try:
        n = struct.unpack(">I", recv_all(c, 4))[0]
        frame = fields(recv_all(c, n))
        req = fields(frame[52][0])
        count += 1
        msg = req.get(3, [b""])[0]
        with open(os.path.join(reqdir, "%d.json" % count), "w") as f:
            json.dump({"frame_id": frame.get(1, [0])[0],
                       "priority": req.get(1, [0])[0],
                       "rcpt_to": [r.decode() for r in req.get(2, [])],
                       "expires_ms": req.get(4, [0])[0],
                       "message": base64.b64encode(msg).decode()}, f)
        if b"X-Fake-Hangup" in msg:
            c.close()
            continue
        if b"X-Fake-Refuse" in msg:
            reply = field(2, 2, b"refused by the fake daemon\x1b[31m")
        else:
            reply = field(1, 0, 41 + count)
        body = field(1, 0, frame.get(1, [0])[0]) + field(53, 2, reply)
        c.sendall(struct.pack(">I", len(body)) + body)
    except (EOFError, KeyError, ValueError):
        pass
    c.close()
EOF

FAKE_PID=
start_fake() {
    python3 "$T/fake_submit.py" "$SOCK" "$REQS" &
    FAKE_PID=$!
    for _ in $(seq 100); do
        [ -S "$SOCK" ] && return 0
        sleep 0.05
    done
    fail "the fake daemon did not start"
}
stop_fake() {
    if [ -n "$FAKE_PID" ]; then
        kill "$FAKE_PID" 2>/dev/null
        wait "$FAKE_PID" 2>/dev/null
        FAKE_PID=
    fi
    rm -f "$SOCK"
}
trap 'stop_fake; rm -rf "$T"' EXIT

nreqs() {
    find "$REQS" -name '*.json' | wc -l
}
# req N EXPR: Python expression on d = request N (d["msg"]: the message text).
# As with any $(...), trailing newlines of the result are lost.
req() {
    python3 -c '
import base64, json, sys
d = json.load(open(sys.argv[1]))
d["msg"] = base64.b64decode(d["message"]).decode("utf-8", "replace")
v = eval(sys.argv[2])
print(v if isinstance(v, str) else json.dumps(v))' "$REQS/$1.json" "$2"
}

send() {
    run "$SMTPSYNCCTL" --socket "$SOCK" send "$@"
}
send_in() {
    local input=$1
    shift
    run_in "$input" "$SMTPSYNCCTL" --socket "$SOCK" send "$@"
}
sendmail_in() {
    local input=$1
    shift
    run_in "$input" "$SMTPSYNCCTL" --socket "$SOCK" sendmail "$@"
}

# --- help -------------------------------------------------------------------
for verb in send sendmail; do
    run "$SMTPSYNCCTL" "$verb" --help
    assert_exit "$verb --help" 0
    assert_contains "$verb --help" "$OUT" "usage: smtpsyncctl [global options] $verb"
    assert_eq "$verb --help: stderr empty" "" "$ERR"
    help_text=$OUT
    run "$SMTPSYNCCTL" help "$verb"
    assert_eq "help $verb equals $verb --help" "$help_text" "$OUT"
done
run "$SMTPSYNCCTL" send --help
for f in --to --cc --subject --priority tokencode report --body-file --expires --json; do
    assert_contains "send --help mentions $f" "$OUT" "$f"
done
run "$SMTPSYNCCTL" sendmail --help
for f in -t -i -oi -f -F -B -oem -odi --priority "ignored" MAILTO; do
    assert_contains "sendmail --help mentions $f" "$OUT" "$f"
done

# --- send: the command line (exit 2) ------------------------------------------
send --subject s
assert_exit "send without --to" 2
assert_contains "send without --to" "$ERR" "--to is required"
send --to a@example.com
assert_exit "send without --subject" 2
assert_contains "send without --subject" "$ERR" "--subject is required"
send --to a@example.com --subject s b@example.com
assert_exit "send with a stray argument" 2
assert_contains "send with a stray argument" "$ERR" "unexpected argument 'b@example.com'"
send --to a@example.com --subject s --priority urgent
assert_exit "unknown priority" 2
assert_contains "unknown priority" "$ERR" "unknown priority 'urgent' (tokencode or report)"
for e in 0 -5 1.5 abc 99999999999; do
    send --to a@example.com --subject s --expires "$e"
    assert_exit "--expires $e" 2
    assert_contains "--expires $e" "$ERR" "--expires: "
done
send --to a@example.com --subject s --bogus
assert_exit "unknown option" 2
assert_contains "unknown option" "$ERR" "unknown option '--bogus'"
send --to
assert_exit "--to without a value" 2

# --- send: bad values (exit 1), every one named at once ------------------------
send --to bad --to 'ok@example.com' --cc 'c@' --to $'x@example.com\r\nBcc: evil@example.com' \
    --subject s
assert_exit "bad addresses" 1
assert_contains "bad address: no @" "$ERR" "--to 'bad' is not a valid address: it has no \"@\""
assert_contains "bad address: cc" "$ERR" "--cc 'c@' is not a valid address"
assert_contains "bad address: injection" "$ERR" "holds a control character"
assert_eq "bad addresses: one line each" 3 "$(grep -c 'not a valid address' <<<"$ERR")"
assert_not_contains "bad addresses: quoted on output" "$ERR" $'\r'
assert_eq "bad addresses: stdout empty" "" "$OUT"
send --to a@example.com --subject $'Hello\r\nBcc: evil@example.com'
assert_exit "CR LF in subject" 1
assert_contains "CR LF in subject" "$ERR" "--subject holds a line break"
send --to a@example.com --subject $'Hello\nthere'
assert_exit "LF in subject" 1
assert_contains "LF in subject" "$ERR" "line break"
send --to a@example.com --subject $'bell\a'
assert_exit "control in subject" 1
assert_contains "control in subject" "$ERR" "--subject holds a control character"
send --to a@example.com --subject $'caf\xe9'
assert_exit "subject not UTF-8" 1
assert_contains "subject not UTF-8" "$ERR" "the subject is not valid UTF-8"
many=()
for i in $(seq 101); do many+=(--to "u$i@example.com"); done
send "${many[@]}" --subject s
assert_exit "101 recipients" 1
assert_contains "101 recipients" "$ERR" "101 recipients; at most 100"

# --- send: the body -----------------------------------------------------------
send --to a@example.com --subject s --body-file "$T/absent"
assert_exit "missing body file" 1
assert_contains "missing body file" "$ERR" "cannot open the body file '$T/absent': No such file"
send --to a@example.com --subject s --body-file "$T"
assert_exit "body file is a directory" 1
assert_contains "body file is a directory" "$ERR" "it is a directory"
send --to a@example.com --subject s --body-file /dev/zero
assert_exit "body file is a device" 1
assert_contains "body file is a device" "$ERR" "device"
if [ "$(id -u)" -ne 0 ]; then
    printf 'secret\n' >"$T/unreadable"
    chmod 000 "$T/unreadable"
    send --to a@example.com --subject s --body-file "$T/unreadable"
    assert_exit "unreadable body file" 1
    assert_contains "unreadable body file" "$ERR" "Permission denied"
fi
printf 'a\0b\n' >"$T/nul"
send --to a@example.com --subject s --body-file "$T/nul"
assert_exit "NUL in body" 1
assert_contains "NUL in body" "$ERR" "NUL"
printf 'caf\xe9\n' >"$T/latin1"
send --to a@example.com --subject s --body-file "$T/latin1"
assert_exit "body not UTF-8" 1
assert_contains "body not UTF-8" "$ERR" "the body is not valid UTF-8"
head -c $((10 * 1024 * 1024 + 1)) /dev/zero | tr '\0' 'a' >"$T/big"
run "$SMTPSYNCCTL" --socket "$SOCK" send --to a@example.com --subject s --body-file "$T/big"
assert_exit "body file too big" 1
assert_contains "body file too big" "$ERR" "is larger than 10485760 octets"
"$SMTPSYNCCTL" --socket "$SOCK" send --to a@example.com --subject s <"$T/big" \
    >"$T/.out" 2>"$T/.err"
RC=$? ERR=$(cat "$T/.err")
assert_exit "stdin too big" 1
assert_contains "stdin too big" "$ERR" "the body on standard input is larger than 10485760 octets"

# --- no daemon ----------------------------------------------------------------
send_in "hello" --to a@example.com --subject s
assert_exit "no daemon" 1
assert_contains "no daemon" "$ERR" "cannot reach the smtpsync daemon"
assert_contains "no daemon: names the socket" "$ERR" "$SOCK"
assert_eq "no daemon: one line" 1 "$(printf '%s\n' "$ERR" | wc -l)"
python3 -c 'import socket, sys; socket.socket(socket.AF_UNIX).bind(sys.argv[1])' "$T/dead.sock"
run_in "hello" "$SMTPSYNCCTL" --socket "$T/dead.sock" send --to a@example.com --subject s
assert_exit "nobody listening" 1
assert_contains "nobody listening" "$ERR" "cannot reach the smtpsync daemon"
SMTPSYNC_SOCKET=$T/env.sock run_in "hello" "$SMTPSYNCCTL" send --to a@example.com --subject s
assert_exit "SMTPSYNC_SOCKET is used" 1
assert_contains "SMTPSYNC_SOCKET is used" "$ERR" "$T/env.sock"
sendmail_in $'To: a@example.com\n\nhi\n' -t
assert_exit "sendmail: no daemon" 1
assert_contains "sendmail: no daemon" "$ERR" "cannot reach the smtpsync daemon"

# --- send, to the fake daemon ---------------------------------------------------
start_fake
send_in $'Line one\nLine two\n' --to a@example.com --to b@example.org --cc C@Example.org \
    --cc a@EXAMPLE.com --subject 'Nightly report'
assert_exit "send" 0
assert_eq "send: prints the id" "queued 42" "$OUT"
assert_eq "send: stderr empty" "" "$ERR"
assert_eq "send: rcpt_to is To and Cc, once each" \
    '["a@example.com", "b@example.org", "C@Example.org"]' "$(req 1 'd["rcpt_to"]')"
assert_eq "send: priority report by default" 2 "$(req 1 'd["priority"]')"
assert_eq "send: no expiry by default" 0 "$(req 1 'd["expires_ms"]')"
assert_contains "send: To header" "$(req 1 'd["msg"]')" \
    $'\r\nTo: a@example.com, b@example.org\r\nCc: C@Example.org, a@EXAMPLE.com\r\n'
assert_contains "send: Subject" "$(req 1 'd["msg"]')" $'\r\nSubject: Nightly report\r\n'
assert_contains "send: body with CRLF" "$(req 1 'd["msg"]')" $'\r\n\r\nLine one\r\nLine two\r'
assert_true "send: Date first" grep -q '^Date: ' <<<"$(req 1 'd["msg"]')"
assert_not_contains "send: no From header" "$(req 1 'd["msg"]')" "From:"
assert_true "send: Message-ID of this host" grep -qE "^Message-ID: <[0-9a-f]{32}@[A-Za-z0-9.-]+>" \
    <<<"$(req 1 'd["msg"]')"

printf 'Gr\xc3\xbc\xc3\x9fe\n' >"$T/utf8"
before=$(date +%s)
send --to a@example.com --subject $'K\xc3\xb6ln \xe2\x80\x94 report' --priority tokencode \
    --expires 300 --body-file "$T/utf8" --json
assert_exit "send --json" 0
assert_eq "send --json" 43 "$(json 'd["id"]')"
assert_eq "send: tokencode" 1 "$(req 2 'd["priority"]')"
assert_true "send: expires in 300 s" python3 -c '
import sys; e, b = int(sys.argv[1]), int(sys.argv[2]) * 1000
sys.exit(0 if b + 300000 <= e <= b + 310000 else 1)' "$(req 2 'd["expires_ms"]')" "$before"
assert_contains "send: encoded subject" "$(req 2 'd["msg"]')" "Subject: =?UTF-8?"
assert_contains "send: quoted-printable" "$(req 2 'd["msg"]')" \
    $'Content-Transfer-Encoding: quoted-printable\r\n\r\nGr=C3=BC=C3=9Fe\r'
assert_true "send: 7-bit on the wire" python3 -c '
import base64, json, sys
m = base64.b64decode(json.load(open(sys.argv[1]))["message"])
sys.exit(0 if all(c < 0x80 for c in m) else 1)' "$REQS/2.json"

send_in $'X-Fake-Refuse\n' --to a@example.com --subject s
assert_exit "refused by the daemon" 1
assert_contains "refused by the daemon" "$ERR" \
    "the daemon refused the mail: refused by the fake daemon\x1b[31m"
assert_eq "refused: stdout empty" "" "$OUT"

send_in $'X-Fake-Hangup\n' --to a@example.com --subject s
assert_exit "daemon hangs up" 1
assert_contains "daemon hangs up" "$ERR" "closed the connection without replying"
assert_contains "daemon hangs up: the outcome is unknown" "$ERR" "may or may not be queued"

# Nothing reaches the daemon after a mistake.
n=$(nreqs)
send --to bad --subject s
send_in "x" --to a@example.com --subject $'a\rb'
"$SMTPSYNCCTL" --socket "$SOCK" send --to a@example.com --subject s <"$T/big" >/dev/null 2>&1
assert_eq "send: nothing submitted after refusals" "$n" "$(nreqs)"

# --- sendmail -----------------------------------------------------------------
sendmail_in "x"
assert_exit "sendmail without -t or address" 2
assert_contains "sendmail without -t or address" "$ERR" "no recipient"
sendmail_in "x" -bp
assert_exit "sendmail -bp" 2
assert_contains "sendmail -bp" "$ERR" "-bp is not supported"
sendmail_in "x" -t --priority later
assert_exit "sendmail: unknown priority" 2
sendmail_in "x" -Z a@example.com
assert_exit "sendmail: unknown flag" 2
assert_contains "sendmail: unknown flag" "$ERR" "unknown option '-Z'"

msg=$'From: script@example.com\nTo: Ann <ann@example.com>, undisclosed:;\nCc: "Doe, Bob" <bob@example.com>\nBcc: hidden@example.com,\n ann@EXAMPLE.COM\nSubject: cron\n\nbody\n'
n=$(nreqs)
sendmail_in "$msg" -t -i -f ignored@example.com -FCronDaemon -B8BITMIME -oem -odi -oi \
    extra@example.com
assert_exit "sendmail -t" 0
assert_eq "sendmail: silent" "" "$OUT$ERR"
n=$((n + 1))
assert_eq "sendmail: arguments, then To, Cc, Bcc; once each" \
    '["extra@example.com", "ann@example.com", "bob@example.com", "hidden@example.com"]' \
    "$(req $n 'd["rcpt_to"]')"
assert_eq "sendmail: priority report" 2 "$(req $n 'd["priority"]')"
assert_eq "sendmail: the message as read (the daemon normalizes)" "$msg" "$(req $n 'd["msg"]')
"

# Without -t only the arguments; the header is still checked.
sendmail_in $'To: ann@example.com\n\nbody\n' only@example.com --json
assert_exit "sendmail with an address" 0
n=$((n + 1))
assert_eq "sendmail --json" "$((41 + n))" "$(json 'd["id"]')"
assert_eq "sendmail without -t" '["only@example.com"]' "$(req $n 'd["rcpt_to"]')"

# A line of one dot ends the message unless -i or -oi.
sendmail_in $'To: ann@example.com\n\nbefore\n.\nafter\n' -t
assert_exit "sendmail: dot ends input" 0
n=$((n + 1))
assert_eq "sendmail: dot ends input" $'To: ann@example.com\n\nbefore\n' "$(req $n 'd["msg"]')
"
for flag in -i -oi; do
    sendmail_in $'To: ann@example.com\n\nbefore\n.\nafter\n' -t "$flag"
    assert_exit "sendmail $flag: dot is text" 0
    n=$((n + 1))
    assert_contains "sendmail $flag: dot is text" "$(req $n 'd["msg"]')" $'before\n.\nafter'
done

n=$(nreqs)
sendmail_in $'To: root\n\nhi\n' -t
assert_exit "sendmail: bare user name" 1
assert_contains "sendmail: bare user name" "$ERR" 'To: "root" is not an address'
sendmail_in $'Subject: x\n\nhi\n' -FCronDaemon -i -B8BITMIME -oem root
assert_exit "sendmail: bare user name argument" 1
assert_contains "sendmail: bare user name argument" "$ERR" "recipient 'root' is not a valid"
sendmail_in $'Subject: no recipient\n\nhi\n' -t
assert_exit "sendmail: no recipient in header" 1
assert_contains "sendmail: no recipient in header" "$ERR" "names no recipient"
sendmail_in "" -t
assert_exit "sendmail: empty input" 1
assert_contains "sendmail: empty input" "$ERR" "is empty"
sendmail_in $'Hello, this is not a header\n\nbody\n' -t
assert_exit "sendmail: no header" 1
assert_contains "sendmail: no header" "$ERR" "line 1 is not a header field"
sendmail_in $'To: ann@example.com\nBcc : hidden@example.com\n\nbody\n' -t
assert_exit "sendmail: space before colon" 1
assert_contains "sendmail: space before colon" "$ERR" "white space"
sendmail_in $'To: ann@example.com\r\nSubject: a\rb\r\n\r\nbody\r\n' -t
assert_exit "sendmail: bare CR" 1
assert_contains "sendmail: bare CR" "$ERR" "carriage return"
sendmail_in $'To: ann@example.com\n\n'"$(head -c 1000 /dev/zero | tr '\0' x)"$'\n' -t
assert_exit "sendmail: body line over 998" 1
assert_contains "sendmail: body line over 998" "$ERR" "line 3 is longer than 998 octets"
rcpts=$(for i in $(seq 101); do printf 'u%d@example.com,\n ' "$i"; done)
sendmail_in "To: ${rcpts}last@example.com"$'\n\nhi\n' -t
assert_exit "sendmail: 101 recipients" 1
assert_contains "sendmail: 101 recipients" "$ERR" "more than 100 recipients"
{
    printf 'To: ann@example.com\n\n'
    cat "$T/big"
} >"$T/big.eml"
"$SMTPSYNCCTL" --socket "$SOCK" sendmail -t -i <"$T/big.eml" >"$T/.out" 2>"$T/.err"
RC=$? ERR=$(cat "$T/.err")
assert_exit "sendmail: too big" 1
assert_contains "sendmail: too big" "$ERR" "larger than 10485760 octets"
"$SMTPSYNCCTL" --socket "$SOCK" sendmail -t <"$T/big.eml" >"$T/.out" 2>"$T/.err"
RC=$? ERR=$(cat "$T/.err")
assert_exit "sendmail: too big (reading for a dot)" 1
assert_contains "sendmail: too big (reading for a dot)" "$ERR" "larger than 10485760 octets"
assert_eq "sendmail: nothing submitted after refusals" "$n" "$(nreqs)"

stop_fake
finish
