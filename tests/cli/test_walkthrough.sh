#!/usr/bin/env bash
# The README walk-through, step by step, against a fresh local store:
# set -> import-cert -> show -> save -> history -> change -> save -> diff
# -> rollback -> show -> history.
source "$(dirname "$0")/lib.sh"

PW=$T/smtp-password
printf 'walk-through-pw\nwalk-through-pw\n' >"$PW"
chmod 600 "$PW"

# 1. A draft for the primary, with every field of an SMTPS logon setup.
ctl settings set --instance primary --hostname mail.test --port 465 \
    --from noreply@example.com --logon --user smtpuser --password-file "$PW" \
    --smtps --tls-mode strict --test-address admin@example.com
assert_exit "set" 0
assert_eq "set: stdout" "draft saved for instance primary" "$OUT"
assert_contains "set: the certificate is still needed" "$ERR" \
    "still needed before save: trust_certificate:"

# 2. The server's certificate.
ctl settings import-cert --instance primary "$CERTS/leaf.pem"
assert_exit "import-cert" 0
assert_contains "import-cert: summary" "$OUT" "certificate imported into the draft for instance primary"
assert_contains "import-cert: subject" "$OUT" "CN=mail.test"
assert_eq "import-cert: nothing still needed" "" "$ERR"

# 3. The draft as text and as JSON.
ctl settings show --draft
assert_exit "show --draft" 0
assert_contains "show --draft: hostname" "$OUT" "hostname: mail.test"
assert_contains "show --draft: port" "$OUT" "port: 465"
assert_contains "show --draft: password masked" "$OUT" "password: ********"
assert_not_contains "show --draft: nothing missing" "$OUT" "still needed"

ctl --json settings show --draft
assert_exit "show --draft --json" 0
assert_eq "json: draft flag" "true" "$(json 'd["draft"]')"
assert_eq "json: hostname" "mail.test" "$(json 'd["instances"]["primary"]["hostname"]')"
assert_eq "json: port" "465" "$(json 'd["instances"]["primary"]["port"]')"
assert_eq "json: password" "********" "$(json 'd["instances"]["primary"]["password"]')"
assert_eq "json: logon" "true" "$(json 'd["instances"]["primary"]["logon_required"]')"
assert_eq "json: smtps" "true" "$(json 'd["instances"]["primary"]["smtps_enabled"]')"
assert_eq "json: tls_mode" "strict" "$(json 'd["instances"]["primary"]["tls_mode"]')"
assert_eq "json: user" "smtpuser" "$(json 'd["instances"]["primary"]["user_id"]')"
assert_eq "json: no problems left" "[]" "$(json 'd["instances"]["primary"]["problems"]')"
assert_eq "json: pem" "True" \
    "$(json 'str(d["instances"]["primary"]["trust_certificate_pem"].startswith("-----BEGIN CERTIFICATE-----"))')"
assert_contains "json: certificate summary" \
    "$(json 'd["instances"]["primary"]["trust_certificate"]')" "CN=mail.test"
assert_eq "json: absent values are null" "null" "$(json 'd["instances"]["primary"]["timeout_connect"]')"
assert_eq "json: no relays" "[]" "$(json 'd["instances"]["primary"]["fallback_relays"]')"

# Nothing is saved yet.
ctl settings show
assert_exit "show before save" 0
assert_eq "show before save" "no settings saved yet" "$OUT"

# 4. Save.
ctl settings save --comment "initial SMTPS settings"
assert_exit "save" 0
assert_eq "save: stdout" "saved revision 1" "$OUT"

ctl settings show --draft
assert_eq "no draft after save" "no drafts" "$OUT"

# 5. History.
ctl history
assert_exit "history" 0
assert_contains "history: comment" "$OUT" "initial SMTPS settings"
assert_contains "history: actor" "$OUT" "local:"
assert_contains "history: instance" "$OUT" "primary"

ctl history --json
assert_exit "history --json" 0
assert_eq "history json: one row" "1" "$(json 'len(d)')"
assert_eq "history json: revision" "1" "$(json 'd[0]["revision"]')"
assert_eq "history json: comment" "initial SMTPS settings" "$(json 'd[0]["comment"]')"
assert_eq "history json: instances" '["primary"]' "$(json 'd[0]["instances"]')"
assert_eq "history json: rollback_of" "null" "$(json 'd[0]["rollback_of"]')"
assert_eq "history json: short hash" "12" "$(json 'len(d[0]["short_hash"])')"
assert_eq "history json: hash" "64" "$(json 'len(d[0]["hash"])')"
assert_true "history json: RFC 3339 time" python3 -c '
import re, sys
sys.exit(0 if re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", sys.argv[1]) else 1)' \
    "$(json 'd[0]["time"]')"

# 6. A second revision: STARTTLS on 587.
ctl settings set --instance primary --port 587 --tls-mode starttls
assert_exit "set starttls" 0
assert_eq "set starttls: nothing missing" "" "$ERR"
ctl settings save --comment "STARTTLS on 587"
assert_exit "save 2" 0
assert_eq "save 2: stdout" "saved revision 2" "$OUT"

# 7. diff 1 2 shows exactly port and tls_mode.
ctl diff 1 2
assert_exit "diff" 0
assert_contains "diff: port" "$OUT" "primary.port: 465 -> 587"
assert_contains "diff: tls_mode" "$OUT" "primary.tls_mode: strict -> starttls"
assert_eq "diff: two lines" "2" "$(printf '%s\n' "$OUT" | wc -l)"

ctl --json diff 1 2
assert_exit "diff --json" 0
assert_eq "diff json: fields" '["port", "tls_mode"]' "$(json '[x["field"] for x in d]')"
assert_eq "diff json: old port" "465" "$(json '[x["old"] for x in d if x["field"] == "port"][0]')"
assert_eq "diff json: new port" "587" "$(json '[x["new"] for x in d if x["field"] == "port"][0]')"
assert_eq "diff json: instance" "primary" "$(json 'd[0]["instance"]')"

# 8. Roll back to 1.
ctl rollback 1 --comment "back to SMTPS"
assert_exit "rollback" 0
assert_eq "rollback: stdout" "rolled back to 1 as revision 3" "$OUT"

ctl settings show
assert_exit "show after rollback" 0
assert_contains "show after rollback: port" "$OUT" "port: 465"
assert_contains "show after rollback: tls_mode" "$OUT" "tls_mode: strict"
assert_contains "show after rollback: password kept" "$OUT" "password: ********"

ctl settings show --json --instance primary
assert_eq "show json: revision" "3" "$(json 'd["revision"]')"
assert_eq "show json: port" "465" "$(json 'd["instances"]["primary"]["port"]')"
assert_eq "show json: tls_mode" "strict" "$(json 'd["instances"]["primary"]["tls_mode"]')"

# An older revision is still there as it was.
ctl settings show --revision 2 --json
assert_exit "show --revision 2" 0
assert_eq "show --revision 2: port" "587" "$(json 'd["instances"]["primary"]["port"]')"

# 9. History lists the rollback.
ctl history
assert_contains "history: rollback row" "$OUT" "rollback to 1"
assert_contains "history: rollback comment" "$OUT" "back to SMTPS"
ctl history --json --limit 1
assert_eq "history --limit 1" "1" "$(json 'len(d)')"
assert_eq "history json: rollback_of" "1" "$(json 'd[0]["rollback_of"]')"
assert_eq "history json: newest first" "3" "$(json 'd[0]["revision"]')"

# A rollback to the current state changes nothing.
ctl rollback 3
assert_exit "rollback to the current state" 1
assert_contains "rollback to the current state" "$ERR" "nothing to roll back"

# Discarding a draft.
ctl settings set --instance site-b --hostname relay.example.com
assert_exit "draft for site-b" 0
ctl settings discard --instance site-b
assert_exit "discard" 0
assert_eq "discard: stdout" "discarded the draft of instance site-b" "$OUT"
ctl settings discard
assert_exit "discard with no drafts" 1

# The data directory can come from the environment.
SMTPSYNC_DATA_DIR=$DATA run "$SMTPSYNCCTL" history --limit 1
assert_exit "SMTPSYNC_DATA_DIR" 0
assert_contains "SMTPSYNC_DATA_DIR" "$OUT" "rollback to 1"

finish
