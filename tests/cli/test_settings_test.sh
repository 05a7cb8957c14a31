#!/usr/bin/env bash
# `settings test` (Test Connection) in local mode: usage errors, a missing
# store or instance, a closed port that fails at the connect step with its
# diagnosis, the JSON shape, draft versus --saved, --to, AUTH refused, and a
# test mail accepted by a small scripted SMTP server. The password is never
# in any output.
source "$(dirname "$0")/lib.sh"

PW='Heron-3391-UNIQUE-clipw'
PW2='Wrong-7720-UNIQUE-clipw'
ALL=
SRV_PID=
trap '[ -n "$SRV_PID" ] && kill "$SRV_PID" 2>/dev/null; rm -rf "$T"' EXIT

# Collects every output so that it can be searched for the password.
collect() {
    ALL+="$OUT"$'\n'"$ERR"$'\n'
    assert_not_contains "$1: stdout has no password" "$OUT" "UNIQUE-clipw"
    assert_not_contains "$1: stderr has no password" "$ERR" "UNIQUE-clipw"
}

# --- usage errors ----------------------------------------------------------

ctl settings test --help
assert_exit "--help" 0
assert_contains "--help: usage" "$OUT" "usage: smtpsyncctl [global options] settings test"
run "$SMTPSYNCCTL" help settings test
assert_exit "help settings test" 0
assert_contains "help settings test" "$OUT" "--instance ID"

ctl settings test
assert_exit "missing --instance" 2
assert_contains "missing --instance: message" "$ERR" "--instance ID is required"
ctl settings test --instance 'bad id!'
assert_exit "invalid instance id" 2
assert_contains "invalid instance id: message" "$ERR" "invalid instance id"
ctl settings test --instance primary --to 'not an address'
assert_exit "bad --to" 2
assert_contains "bad --to: message" "$ERR" "--to 'not an address' is not a valid mail address"
ctl settings test --instance primary --to $'a@b\r\nRCPT TO:<x@y>'
assert_exit "--to with CRLF" 2
assert_not_contains "--to with CRLF: escaped" "$ERR" $'\r'
ctl settings test --instance primary stray
assert_exit "stray argument" 2
ctl settings test --instance primary --bogus
assert_exit "unknown option" 2
ctl settings test --instance
assert_exit "--instance without a value" 2

# --- no store, no instance -------------------------------------------------

run "$SMTPSYNCCTL" settings test --instance primary
assert_exit "no --data-dir" 2
run "$SMTPSYNCCTL" --data-dir "$T/absent" settings test --instance primary
assert_exit "no store" 1
assert_contains "no store: message" "$ERR" "no such directory"
assert_true "no store: nothing created" test ! -e "$T/absent"

CLOSED=$(free_port)

ctl_in "$PW"$'\n'"$PW"$'\n' settings set --instance primary --hostname 127.0.0.1 \
    --port "$CLOSED" --from noreply@example.com --test-address admin@example.com --logon \
    --user smtpuser --password-stdin --allow-plaintext-auth on --timeout-connect 5
assert_exit "set up the draft" 0
collect "set"

ctl settings test --instance nosuch
assert_exit "unknown instance" 1
assert_contains "unknown instance: message" "$ERR" "instance nosuch has no settings"
ctl settings test --instance primary --saved
assert_exit "--saved without saved settings" 1
assert_contains "--saved without saved settings: message" "$ERR" "has no saved settings"

# --- a closed port ---------------------------------------------------------

ctl settings test --instance primary
assert_exit "closed port" 1
collect "closed port"
assert_contains "closed port: header" "$OUT" "Test Connection: instance primary (draft, nothing saved yet)"
assert_contains "closed port: connect step" "$OUT" "  FAIL  connect"
assert_contains "closed port: diagnosis" "$OUT" \
    "        diagnosis: nothing listens on 127.0.0.1:$CLOSED (connection refused)"
assert_contains "closed port: result" "$OUT" "  result: FAILED at connect"
assert_eq "closed port: nothing on stderr" "" "$ERR"

ctl --json settings test --instance primary
assert_exit "closed port, --json" 1
collect "closed port --json"
assert_eq "json: instance" "primary" "$(json 'd["instance"]')"
assert_eq "json: ok" "false" "$(json 'd["ok"]')"
assert_eq "json: node" "$(hostname)" "$(json 'd["node"]')"
assert_eq "json: keys" '["instance", "node", "ok", "steps"]' "$(json 'sorted(d)')"
assert_eq "json: step keys" '["detail", "diagnosis", "elapsed_ms", "ok", "server_reply", "step"]' \
    "$(json 'sorted(d["steps"][0])')"
assert_eq "json: every step has all keys" "true" \
    "$(json 'all(sorted(s) == sorted(d["steps"][0]) for s in d["steps"])')"
assert_eq "json: elapsed_ms are numbers" "true" \
    "$(json 'all(isinstance(s["elapsed_ms"], (int, float)) for s in d["steps"])')"
assert_eq "json: the last step is connect" "connect" "$(json 'd["steps"][-1]["step"]')"
assert_eq "json: and it failed" "false" "$(json 'd["steps"][-1]["ok"]')"
assert_contains "json: diagnosis" "$(json 'd["steps"][-1]["diagnosis"]')" \
    "nothing listens on 127.0.0.1:$CLOSED"
assert_eq "json: ok steps have no diagnosis" "true" \
    "$(json 'all(s["diagnosis"] is None for s in d["steps"] if s["ok"])')"
ctl settings test --instance primary --json
assert_exit "--json after the subverb" 1
assert_eq "--json after the subverb: parses" "primary" "$(json 'd["instance"]')"

# --- settings that cannot be tried -----------------------------------------

ctl settings set --instance empty --from noreply@example.com
assert_exit "draft without a hostname" 0
ctl settings test --instance empty
assert_exit "unusable settings" 1
assert_contains "unusable: settings step" "$OUT" "  FAIL  settings"
assert_contains "unusable: hostname named" "$OUT" "hostname: is required"
assert_contains "unusable: test address named" "$OUT" "test_address: is required"
assert_contains "unusable: result" "$OUT" "  result: FAILED at settings"
ctl --json settings test --instance empty
assert_exit "unusable settings, --json" 1
assert_eq "unusable --json: one step" "settings" "$(json 'd["steps"][0]["step"]')"

# --- a server that accepts the test mail -----------------------------------

# One small SMTP server: AUTH PLAIN for smtpuser with $PW, RCPT to any
# address but deny@..., every message appended to $T/mail.log.
cat >"$T/smtpd.py" <<'PY'
import base64, socket, sys
port_file, log_file, password = sys.argv[1], sys.argv[2], sys.argv[3]
srv = socket.socket()
srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
srv.bind(("127.0.0.1", 0))
srv.listen(8)
with open(port_file + ".tmp", "w") as f:
    f.write(str(srv.getsockname()[1]))
import os
os.rename(port_file + ".tmp", port_file)
while True:
    conn, _ = srv.accept()
    rf = conn.makefile("rb")
    send = lambda s: conn.sendall(s.encode() + b"\r\n")
    send("220 fake.test ESMTP")
    data = None
    while True:
        line = rf.readline()
        if not line:
            break
        if data is not None:
            if line == b".\r\n":
                with open(log_file, "ab") as f:
                    f.write(data)
                data = None
                send("250 2.0.0 Ok: queued as 42")
            else:
                data += line
            continue
        cmd = line.decode(errors="replace").rstrip("\r\n")
        verb = cmd.split(" ")[0].upper()
        with open(log_file, "a") as f:
            f.write("> " + (cmd if verb != "AUTH" else "AUTH ...") + "\n")
        if verb == "EHLO":
            send("250-fake.test\r\n250-AUTH PLAIN\r\n250 SIZE 1000000")
        elif verb == "AUTH":
            arg = cmd.split(" ")[2] if len(cmd.split(" ")) > 2 else None
            if arg is None:
                send("334 ")
                arg = rf.readline().decode().strip()
            creds = base64.b64decode(arg).split(b"\0")
            ok = creds[1:] == [b"smtpuser", password.encode()]
            send("235 2.7.0 Authentication successful" if ok
                 else "535 5.7.8 Error: authentication failed")
        elif verb == "MAIL":
            send("250 2.1.0 Ok")
        elif verb == "RCPT":
            send("550 5.7.1 Relay access denied" if "deny@" in cmd else "250 2.1.5 Ok")
        elif verb == "DATA":
            data = b""
            send("354 End data with <CR><LF>.<CR><LF>")
        elif verb == "QUIT":
            send("221 2.0.0 Bye")
            break
        else:
            send("250 2.0.0 Ok")
    conn.close()
PY
python3 "$T/smtpd.py" "$T/port" "$T/mail.log" "$PW" &
SRV_PID=$!
for _ in $(seq 100); do
    [ -s "$T/port" ] && break
    sleep 0.05
done
PORT=$(cat "$T/port")

ctl settings save --instance primary --comment "closed port"
assert_exit "save (closed port)" 0
ctl settings set --instance primary --port "$PORT"
assert_exit "draft: the server's port" 0

ctl settings test --instance primary
assert_exit "accepted" 0
collect "accepted"
assert_contains "accepted: header" "$OUT" "(draft on revision 1)"
assert_contains "accepted: auth" "$OUT" "  ok    auth"
assert_contains "accepted: data" "$OUT" "  ok    data"
assert_contains "accepted: result" "$OUT" "  result: ok, the test mail was accepted"
assert_not_contains "accepted: no failure" "$OUT" "FAIL"
assert_contains "accepted: envelope" "$(cat "$T/mail.log")" "> RCPT TO:<admin@example.com>"
assert_contains "accepted: subject" "$(cat "$T/mail.log")" \
    "Subject: smtpsync Test Connection from $(hostname)"
assert_contains "accepted: body names the instance" "$(cat "$T/mail.log")" "instance: primary"

ctl --json settings test --instance primary
assert_exit "accepted, --json" 0
collect "accepted --json"
assert_eq "accepted --json: ok" "true" "$(json 'd["ok"]')"
assert_eq "accepted --json: every step ok" "true" "$(json 'all(s["ok"] for s in d["steps"])')"
assert_eq "accepted --json: steps in order" "true" \
    "$(json '[s["step"] for s in d["steps"] if s["step"] in ("connect","greeting","ehlo","auth","mail","rcpt","data")] == ["connect","greeting","ehlo","auth","mail","rcpt","data"]')"

ctl settings test --instance primary --to other@example.org
assert_exit "--to" 0
assert_contains "--to: envelope" "$(cat "$T/mail.log")" "> RCPT TO:<other@example.org>"

ctl settings test --instance primary --saved
assert_exit "--saved tries the saved settings (closed port)" 1
assert_contains "--saved: header" "$OUT" "(revision 1)"
assert_contains "--saved: connect fails" "$OUT" "  result: FAILED at connect"

ctl settings test --instance primary --to deny@example.org
assert_exit "relay denied" 1
collect "relay denied"
assert_contains "relay denied: reply" "$OUT" "server reply: 550 5.7.1 Relay access denied"
assert_contains "relay denied: diagnosis" "$OUT" \
    "diagnosis: the server refused to relay to deny@example.org: relay denied"
assert_contains "relay denied: result" "$OUT" "  result: FAILED at rcpt"

# A wrong password: AUTH refused, and neither password is shown.
ctl_in "$PW2"$'\n'"$PW2"$'\n' settings set --instance primary --password-stdin
assert_exit "set a wrong password" 0
ctl settings test --instance primary
assert_exit "auth refused" 1
collect "auth refused"
assert_contains "auth refused: reply" "$OUT" "535 5.7.8 Error: authentication failed"
assert_contains "auth refused: diagnosis" "$OUT" \
    "diagnosis: the server refused user smtpuser: check the user ID and password"
assert_contains "auth refused: result" "$OUT" "  result: FAILED at auth"
ctl --json settings test --instance primary
assert_exit "auth refused, --json" 1
collect "auth refused --json"

assert_not_contains "no output ever held the password" "$ALL" "$PW"
assert_not_contains "no output ever held the second password" "$ALL" "$PW2"
assert_not_contains "no output held the password in base64" "$ALL" \
    "$(printf '%s' "$PW" | base64)"

finish
