#!/usr/bin/env bash
# Interop with a real Postfix (tests/tools/postfix.sh) in each TLS mode, each
# with SASL AUTH: Test Connection from the store (local mode), then mail
# through a running daemon (`send`, `sendmail -t`), checked in the maildir
# byte for byte. One daemon serves all three modes in turn: each mode is a
# new saved revision, which the daemon must use without a restart.
# Then Test Connection failures against the same Postfix: wrong password,
# relay denied, and a TLS mode that does not match the port.
set -euo pipefail
# shellcheck source=lib.sh
source "$(dirname "$0")/lib.sh"
postfix_env

FROM=noreply@example.test
RUN=$$-$RANDOM
DATA=$T/primary
BODY=$T/body.txt

# A body every dot-stuffing bug shows in: lines that are only dots, lines
# that start with one, a line with a dot after a CR-less LF boundary.
body_for() {
    printf 'Your tokencode is 424242 (%s).\n.\n..\n...\n.leading dot\n. dot space\nend.\n' "$1"
    # Over STARTTLS, a UTF-8 body too (sent quoted-printable: compared decoded).
    [ "$2" != starttls ] || printf '.Grüße ✓ ünïcödé\n'
}

# settings_for MODE: the draft for instance primary in MODE, then save.
settings_for() {
    local mode=$1
    case $mode in
    plain)
        ctl "$DATA" settings set --instance primary --hostname 127.0.0.1 --port "$PORT_PLAIN" \
            --from "$FROM" --logon --user "$SASL_USER" --password-file "$SASL_PASSWORD_FILE" \
            --no-smtps --allow-plaintext-auth on --test-address "user@example.test"
        ;;
    smtps)
        ctl "$DATA" settings set --instance primary --hostname 127.0.0.1 --port "$PORT_SMTPS" \
            --from "$FROM" --logon --user "$SASL_USER" --password-file "$SASL_PASSWORD_FILE" \
            --smtps --tls-mode strict --allow-plaintext-auth off \
            --test-address "user@example.test"
        ;;
    starttls)
        ctl "$DATA" settings set --instance primary --hostname 127.0.0.1 --port "$PORT_SUBMIT" \
            --from "$FROM" --logon --user "$SASL_USER" --password-file "$SASL_PASSWORD_FILE" \
            --smtps --tls-mode starttls --allow-plaintext-auth off \
            --test-address "user@example.test"
        ;;
    esac
    assert_exit "$mode: settings set" 0
    if [ "$mode" != plain ]; then
        ctl "$DATA" settings import-cert --instance primary "$CERTS/ca.pem"
        assert_exit "$mode: import-cert" 0
    fi
    ctl "$DATA" settings save --comment "interop $mode"
    assert_exit "$mode: save" 0
}

# test_connection MODE: settings test against Postfix, step by step.
test_connection() {
    local mode=$1 to ok
    to="conntest-$mode-$RUN@example.test"
    ctl "$DATA" settings test --instance primary --to "$to"
    assert_exit "$mode: settings test" 0
    printf -- '--- Test Connection, %s:\n%s\n' "$mode" "$OUT"
    ctl "$DATA" settings test --instance primary --to "$to" --json
    assert_exit "$mode: settings test --json" 0
    assert_eq "$mode: test ok" true "$(json 'd["ok"]')"
    assert_eq "$mode: no failing step" "" "$(step_failed)"
    ok=" $(steps_ok) "
    for step in connect greeting ehlo auth mail rcpt data; do
        assert_contains "$mode: step $step passed" "$ok" " $step "
    done
    if [ "$mode" = plain ]; then
        assert_not_contains "$mode: no TLS step" "$ok" " tls "
    else
        assert_contains "$mode: TLS step" "$ok" " tls "
        assert_match "$mode: TLS protocol and cipher" "$(step_text tls)" 'TLSv1\.[23].*(AES|CHACHA)'
        assert_contains "$mode: certificate step" "$ok" " certificate "
        assert_contains "$mode: certificate subject" "$(step_text certificate)" "mail.test"
    fi
    if [ "$mode" = starttls ]; then
        assert_contains "$mode: STARTTLS step" "$ok" " starttls "
    fi
    assert_match "$mode: AUTH mechanism" "$(step_text auth)" 'PLAIN|LOGIN|CRAM-MD5'
    assert_match "$mode: DATA accepted" "$(step_text data)" '250'
    # Twice (text, then JSON): two test mails arrive.
    assert_true "$mode: test mail delivered" wait_until 30 postfix_has "$to"
}

# send_and_check MODE: a tokencode through the daemon, checked in the maildir.
send_and_check() {
    local mode=$1 token f
    token="interop-$mode-$RUN"
    body_for "$token" "$mode" >"$BODY"
    send_mail "$SOCK" --to user@example.test --subject 'Tokencode ✓ ü' \
        --priority tokencode --body-file "$BODY"
    assert_exit "$mode: send" 0
    assert_match "$mode: send prints the id" "$OUT" '^queued [0-9]+$'
    if ! wait_until 30 postfix_has "$token"; then
        fail "$mode: message $token not delivered; queue: $(sctl "$SOCK" queue && echo "$OUT"); log: $(tail -n 20 "$T/primary.log")"
        return
    fi
    pass
    f=$(postfix_find "$token" | head -n1) || true
    assert_eq "$mode: From" "<$FROM>" "$(header_value "$f" From | sed 's/^\([^<]*\)$/<\1>/')"
    assert_contains "$mode: To" "$(header_value "$f" To)" "user@example.test"
    assert_match "$mode: Subject is RFC 2047" "$(header_value "$f" Subject)" '^=\?utf-8\?[bq]\?'
    assert_eq "$mode: Subject decodes" 'Tokencode ✓ ü' "$(header_decoded "$f" Subject)"
    assert_match "$mode: Date" "$(header_value "$f" Date)" \
        '^([A-Z][a-z]{2}, )?[0-9]{1,2} [A-Z][a-z]{2} [0-9]{4} [0-9]{2}:[0-9]{2}(:[0-9]{2})? [+-][0-9]{4}'
    assert_match "$mode: Message-ID" "$(header_value "$f" Message-ID)" '^<[^<>@ ]+@[^<>@ ]+>$'
    assert_eq "$mode: body byte for byte" "$(od -c "$BODY")" "$(body_of "$f" | od -c)"
    assert_eq "$mode: no header twice" "" "$(header_names "$f" | sort | uniq -d)"
    # The first lines of the maildir file are Postfix's trace headers, then
    # exactly what smtpsync sent: nothing of smtpsync precedes them.
    assert_match "$mode: Postfix delivered it" "$(head -n1 "$f")" "^Return-Path: <$FROM>$"
    if [ "$mode" != plain ]; then
        assert_match "$mode: received over TLS" "$(cat "$f")" 'with ESMTPSA|using TLSv1\.[23]'
    fi
}

# sendmail_and_check MODE: `sendmail -t`; the message arrives as written
# (From replaced by the instance's, Bcc removed).
sendmail_and_check() {
    local mode=$1 token f g msg expected
    token="sendmail-$mode-$RUN"
    expected=$T/expected-$mode.eml
    cat >"$expected" <<EOF
To: A User <user@example.test>
Cc: cc-$token@example.test
Subject: sendmail -t $token
Date: Thu, 03 Dec 2026 10:00:00 +0000
Message-ID: <$token@smtpsync.test>
MIME-Version: 1.0
Content-Type: text/plain; charset=us-ascii

A cron report ($token).
..two dots
.one dot
end
EOF
    # What the script gives sendmail: the same with a From to be replaced
    # and a Bcc to be removed.
    msg="From: someone-else@example.test
Bcc: bcc-$token@example.test
$(cat "$expected")
"
    run_in "$msg" "$SMTPSYNCCTL" --socket "$SOCK" sendmail -t
    assert_exit "$mode: sendmail -t" 0
    if ! wait_until 30 postfix_has "Message-ID: <$token@smtpsync.test>"; then
        fail "$mode: sendmail message $token not delivered; log: $(tail -n 20 "$T/primary.log")"
        return
    fi
    pass
    f=$(postfix_find "Delivered-To: user@example.test" | xargs -r grep -lF "<$token@smtpsync.test>" |
        head -n1) || true
    if [ -z "$f" ]; then
        fail "$mode: no copy for user@example.test"
        return
    fi
    assert_true "$mode: sendmail message byte for byte" message_compare "$f" "$expected"
    assert_eq "$mode: sendmail From is the instance's" "<$FROM>" \
        "$(header_value "$f" From | sed 's/^\([^<]*\)$/<\1>/')"
    assert_eq "$mode: Bcc removed" "" "$(header_value "$f" Bcc)"
    assert_true "$mode: Cc delivered" wait_until 10 postfix_has "Delivered-To: cc-$token@example.test"
    assert_true "$mode: Bcc delivered" wait_until 10 postfix_has "Delivered-To: bcc-$token@example.test"
    g=$(postfix_find "Delivered-To: bcc-$token@example.test" | head -n1) || true
    if [ -n "$g" ]; then
        assert_eq "$mode: Bcc copy has no Bcc header" "" "$(header_value "$g" Bcc)"
    fi
}

# The first revision exists before the daemon starts; the next ones are
# picked up while it runs.
settings_for plain
daemon_start primary primary "$DATA"

for mode in plain smtps starttls; do
    [ "$mode" != plain ] && settings_for "$mode"
    test_connection "$mode"
    send_and_check "$mode"
    sendmail_and_check "$mode"
done

sctl "$SOCK" queue --json
assert_exit "queue --json" 0
assert_eq "nothing left pending" 0 "$(json 'len(d.get("pending", []))')"
assert_eq "nothing dead" 0 "$(json 'len(d.get("dead", []))')"
daemon_stop primary

# ---- failures against the same Postfix (local mode, no daemon) ----
BAD=$T/bad
WRONG_PW=$T/wrong-password
printf 'not-the-password\n' >"$WRONG_PW"
chmod 600 "$WRONG_PW"

# AUTH refused (535 from Cyrus sasldb).
ctl "$BAD" settings set --instance bad --hostname 127.0.0.1 --port "$PORT_SMTPS" --from "$FROM" \
    --logon --user "$SASL_USER" --password-file "$WRONG_PW" --smtps --tls-mode strict \
    --test-address user@example.test
ctl "$BAD" settings import-cert --instance bad "$CERTS/ca.pem"
ctl "$BAD" settings test --instance bad
assert_exit "wrong password: test fails" 1
printf -- '--- Test Connection, wrong password:\n%s\n' "$OUT"
ctl "$BAD" settings test --instance bad --json
assert_exit "wrong password: --json fails" 1
assert_eq "wrong password: failing step" auth "$(step_failed)"
assert_contains "wrong password: server reply" "$(step_text auth)" "535"
assert_match "wrong password: diagnosis" "$(step_text auth)" 'password|credentials|refused|rejected|denied|failed'

# Relay denied: no logon, a recipient outside example.test.
ctl "$BAD" settings set --instance bad --no-logon --port "$PORT_SUBMIT" --tls-mode starttls
ctl "$BAD" settings test --instance bad --to someone@elsewhere.test --json
assert_exit "relay denied: test fails" 1
assert_eq "relay denied: failing step" rcpt "$(step_failed)"
assert_contains "relay denied: server reply" "$(step_text rcpt)" "Relay access denied"
assert_match "relay denied: diagnosis" "$(step_text rcpt)" 'relay'

# tls_mode strict against the STARTTLS port: the server greets in plaintext.
ctl "$BAD" settings set --instance bad --tls-mode strict --port "$PORT_SUBMIT" --timeout-greeting 5
ctl "$BAD" settings test --instance bad --json
assert_exit "strict on the STARTTLS port: test fails" 1
assert_eq "strict on the STARTTLS port: failing step" tls "$(step_failed)"
assert_match "strict on the STARTTLS port: diagnosis" "$(step_text tls)" 'plaintext|starttls|port'

# tls_mode starttls against the implicit-TLS port: no greeting ever comes.
ctl "$BAD" settings set --instance bad --tls-mode starttls --port "$PORT_SMTPS" --timeout-greeting 2
ctl "$BAD" settings test --instance bad --json
assert_exit "starttls on the SMTPS port: test fails" 1
assert_eq "starttls on the SMTPS port: failing step" greeting "$(step_failed)"
assert_match "starttls on the SMTPS port: diagnosis" "$(step_text greeting)" 'time|strict|port|TLS'

finish
