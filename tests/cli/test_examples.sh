#!/usr/bin/env bash
# The annotated example configs of deploy/examples/ are what the programs
# accept: primary.conf and replica.conf start the real daemons (with only
# their paths, ports and peer addresses moved into a temporary directory)
# that log their start, answer on their socket and stop cleanly on SIGTERM;
# --check-config accepts both, and replica.conf with every commented-out
# key set; ctl.conf, pointed at the primary from primary.conf, gets its
# status over mutual TLS, and an unreachable server is a connection error,
# not a parse error. Every key of common/config.c's tables is explained in both daemon
# examples, with its default and whether SIGHUP applies.
set -euo pipefail
source "$(dirname "$0")/lib.sh"

EX=$SRC/deploy/examples


# ---- every key is documented ----
# Sections, keys, defaults and the live (SIGHUP) column straight from the
# tables of common/config.c: a new key without an example fails here. In
# both daemon examples every key has a line (set, or commented out with its
# default); in primary.conf the comment above each key names its default
# (or says it is required) and says "Reload: yes" for a live key,
# "Reload: restart" for one that needs a restart.
cat >"$T/keys.py" <<'PY'
import re, sys
src, hdr = open(sys.argv[1]).read(), open(sys.argv[2]).read()
macros = dict(re.findall(r'#define (\w+)\s+"([^"]*)"', hdr))
table = []
for sect, body in re.findall(r'static const struct config_key (\w+)_keys\[\] = \{(.*?)\n\};', src, re.S):
    for key, rest, live in re.findall(r'\{"(\w+)",\s*KIND_\w+,(.*?)(true|false)\}', body, re.S):
        d = re.findall(r'("[^"]*"|NULL|[A-Z_]+_DEFAULT),\s*$', rest.strip())
        d = d[0] if d else "?"
        d = None if d == "NULL" else macros.get(d, d.strip('"'))
        table.append((sect, key, d, live == "true"))
problems = []
if len(table) < 25:
    problems.append("only %d keys found in config.c" % len(table))

def parse(path):
    """section -> key -> the comment block that explains it (the last
    non-empty block since the section's header)."""
    out, sect, block, last = {}, None, [], ""
    for line in open(path):
        line = line.rstrip("\n")
        m = re.match(r'\[(\w+)( "[^"]*")?\]', line)
        if m:
            sect, block, last = m.group(1), [], ""
            out.setdefault(sect, {})
            continue
        if sect is None:
            continue
        m = re.match(r';?(\w+) = ', line)
        if m and not line.startswith("; "):
            if block:
                last = " ".join(block)
            out[sect].setdefault(m.group(1), last)
            block = []
        elif line.startswith(";"):
            block.append(line.lstrip("; "))
            for k in re.findall(r'\((\w+) = ', line):   # "(address = HOST:PORT, ...)"
                out[sect].setdefault(k, line)
        else:
            block = []
    return out

primary, replica = parse(sys.argv[3]), parse(sys.argv[4])
for sect, key, default, live in table:
    for name, conf in (("primary.conf", primary), ("replica.conf", replica)):
        where = conf.get(sect, {})
        if sect == "replica":   # labelled: its keys are in the text of replica.conf
            where = dict(where, **{k: v for s in conf.values() for k, v in s.items()
                                   if "[replica" in v})
        if key not in where:
            problems.append("%s: no line for [%s] %s" % (name, sect, key))
    text = primary.get(sect, {}).get(key, "")
    want = "Reload: yes" if live else "Reload: restart"
    got = re.findall(r'Reload: \w+', text)
    if got[-1:] != [want]:
        problems.append("primary.conf: [%s] %s should say %r (got %r)" % (sect, key, want, got))
    if default is None:
        if "required" not in text:
            problems.append("primary.conf: [%s] %s should say it is required" % (sect, key))
    elif not re.search(r'[Dd]efaults?\b', text):
        problems.append("primary.conf: [%s] %s names no default" % (sect, key))
    elif default and not re.search(r'(?<![\w/])' + re.escape(default) + r'(?![\w/])', text):
        problems.append("primary.conf: [%s] %s: default %s not in %r" % (sect, key, default, text))
print("\n".join(problems))
print("checked %d keys" % len(table), file=sys.stderr)
PY
run python3 "$T/keys.py" "$SRC/common/config.c" "$SRC/common/config.h" "$EX/primary.conf" "$EX/replica.conf"
assert_exit "key check ran" 0
assert_eq "examples explain every key of config.c" "" "$OUT"
assert_match "key check saw the table" "$ERR" "checked (2[5-9]|[3-9][0-9]) keys"
# [sender] helo: the comment names the EHLO name used when this host's
# name is not a valid DNS name (pick_helo of common/smtp_client.c).
helo_fallback=$(sed -n '/^static int pick_helo/,/^}/s/.*snprintf(buf, len, "\([a-z.]*\)");.*/\1/p' \
    "$SRC/common/smtp_client.c")
assert_eq "pick_helo's fallback found in smtp_client.c" localhost "$helo_fallback"
for name in primary replica; do
    sender=$(awk '/^\[/ { on = ($0 == "[sender]") } on' "$EX/$name.conf" | tr '\n' ' ')
    assert_contains "$name.conf: [sender] has helo" "$sender" "helo = "
    assert_contains "$name.conf: helo's fallback" "$sender" "\"$helo_fallback\" in EHLO"
    assert_contains "$name.conf: when the fallback applies" "$sender" "not a valid DNS"
done

# ---- the daemons accept primary.conf and replica.conf ----
PKI=$T/pki
"$SRC/tests/tools/make-pki.sh" -a alice -a ops-bot -a monitor "$PKI" primary site-b site-c \
    >/dev/null
P_PORT=$(free_port)
P_METRICS=$(free_port)
R_PORT=$(free_port)
R_METRICS=$(free_port)
DEAD_PORT=$(free_port)

# localize FILE NAME ID PORT METRICS LINES: the example with its paths and
# ports in $T (NAME.data, NAME.sock, the test PKI) and the peers on
# loopback; exactly LINES lines change, nothing else.
localize() {
    local file=$1 name=$2 id=$3 port=$4 metrics=$5 lines=$6
    sed -e "s#^data_dir = /var/lib/smtpsync\$#data_dir = $T/$name.data#" \
        -e "s#^;\\?submit_socket = /run/smtpsync/submit.sock\$#submit_socket = $T/$name.sock#" \
        -e "s#^listen = 0.0.0.0:7443\$#listen = 127.0.0.1:$port#" \
        -e "s#^address = $id.example.com:7443\$#address = 127.0.0.1:$port#" \
        -e "s#^address = site-b.example.com:7443\$#address = 127.0.0.1:$R_PORT#" \
        -e "s#^address = site-c.example.com:7443\$#address = 127.0.0.1:$DEAD_PORT#" \
        -e "s#^metrics_listen = 127.0.0.1:9465\$#metrics_listen = 127.0.0.1:$metrics#" \
        -e "s#^ca = /etc/smtpsync/ca.pem\$#ca = $PKI/ca.pem#" \
        -e "s#^cert = /etc/smtpsync/node.pem\$#cert = $PKI/$id.pem#" \
        -e "s#^key = /etc/smtpsync/node.key\$#key = $PKI/$id.key#" \
        "$file" >"$T/$name.conf"
    # Only those lines changed, and each of them did.
    assert_eq "$name: lines rewritten" "$lines" \
        "$(diff "$file" "$T/$name.conf" | grep -c '^>' || true)"
    assert_true "$name: nothing left in /etc, /var or /run" \
        bash -c "! grep -Eq '^[a-z_]+ = (/etc|/var|/run)' '$T/$name.conf'"
}

# start BIN NAME: the daemon on $T/NAME.conf, up once it logs its start
# and answers `queue` on its socket.
start() {
    daemon_start "$1" "$2" "$T/$2.conf" || return 1
    assert_true "$2 logs its start with the example config" grep -qs 'started role=' "$T/$2.log"
}

stop() {
    local name=$1 pid=${PID[$1]} rc=0
    kill -TERM "$pid"
    wait "$pid" || rc=$?
    unset "PID[$name]"
    assert_eq "$name: exit status after SIGTERM" 0 "$rc"
    assert_not_contains "$name: no sanitizer report" "$(cat "$T/$name.log")" "Sanitizer"
    assert_not_contains "$name: no config problem" "$(cat "$T/$name.log")" "$T/$name.conf:"
}

localize "$EX/primary.conf" primary primary "$P_PORT" "$P_METRICS" 10
localize "$EX/replica.conf" replica site-b "$R_PORT" "$R_METRICS" 8
# --check-config, what `systemctl reload` runs first, accepts them and
# makes nothing.
for name in primary replica; do
    bin=$PRIMARY
    [ "$name" = replica ] && bin=$REPLICA
    run "$bin" --config "$T/$name.conf" --check-config
    assert_exit "$name: --check-config" 0
    assert_match "$name: --check-config says ok" "$OUT" "^$T/$name.conf: configuration ok "
    assert_eq "$name: --check-config, nothing on stderr" "" "$ERR"
    assert_false "$name: --check-config made no data_dir" test -e "$T/$name.data"
done
start "$PRIMARY" primary || true
assert_contains "primary: logs its role" "$(cat "$T/primary.log")" "started role=primary node=primary"
start "$REPLICA" replica || true
assert_contains "replica: logs its role" "$(cat "$T/replica.log")" "started role=replica node=site-b"

# The metrics endpoint of the examples answers where the file says.
for name in primary replica; do
    port=$P_METRICS
    [ "$name" = replica ] && port=$R_METRICS
    run python3 -c 'import sys, urllib.request
print(urllib.request.urlopen("http://127.0.0.1:%s/metrics" % sys.argv[1], timeout=10).read().decode())' "$port"
    assert_exit "$name: metrics_listen answers" 0
    assert_contains "$name: Prometheus text" "$OUT" "# TYPE "
done

# ---- ctl.conf ----
sed -e "s#^server = primary.example.com:7443\$#server = 127.0.0.1:$P_PORT#" \
    -e "s#^ca = /home/alice/.config/smtpsync/#ca = $PKI/#" \
    -e "s#^cert = /home/alice/.config/smtpsync/#cert = $PKI/#" \
    -e "s#^key = /home/alice/.config/smtpsync/#key = $PKI/#" \
    "$EX/ctl.conf" >"$T/ctl.conf"
assert_eq "ctl.conf: lines rewritten" 4 "$(diff "$EX/ctl.conf" "$T/ctl.conf" | grep -c '^>' || true)"
run "$SMTPSYNCCTL" --config "$T/ctl.conf" status --json
assert_exit "status with ctl.conf" 0
assert_eq "status with ctl.conf: the primary answers" primary "$(json 'd["node"]["id"]' 2>/dev/null || true)"
# The primary pushes to the replica of replica.conf: the two examples fit.
synced=no
for ((i = 0; i < 100; i++)); do
    run "$SMTPSYNCCTL" --config "$T/ctl.conf" status --json
    state=$(json '[r["state"] for r in d["replicas"] if r["id"] == "site-b"][0]' 2>/dev/null || true)
    if [ "$state" = in-sync ]; then
        synced=yes
        break
    fi
    sleep 0.1
done
assert_eq "site-b (replica.conf) is in sync with primary.conf's primary" yes "$synced"
# The same file through SMTPSYNC_CONFIG, against a server that is not there.
sed -i "s#^server = 127.0.0.1:$P_PORT\$#server = 127.0.0.1:$DEAD_PORT#" "$T/ctl.conf"
RC=0
OUT=$(SMTPSYNC_CONFIG=$T/ctl.conf "$SMTPSYNCCTL" status 2>"$T/ctl.err") || RC=$?
ERR=$(cat "$T/ctl.err")
assert_true "ctl.conf via SMTPSYNC_CONFIG, server down: fails" test "$RC" -ne 0
assert_not_contains "server down: not a config problem" "$ERR" "ctl.conf:"
assert_match "server down: a connection error" "$ERR" "connect|refused|reach"

stop replica
stop primary
# The keys replica.conf shows commented out are valid as they stand.
sed -E 's/^;([a-z_]+ = )/\1/' "$EX/replica.conf" >"$T/replica-all.src"
assert_true "replica.conf: commented-out keys found" \
    test "$(diff "$EX/replica.conf" "$T/replica-all.src" | grep -c '^>')" -ge 15
localize "$T/replica-all.src" replica-all site-b "$R_PORT" "$R_METRICS" 8
# What a start checks before opening anything is what --check-config runs.
run "$REPLICA" --config "$T/replica-all.conf" --check-config
assert_exit "replica.conf with every key set: --check-config" 0
assert_match "replica-all: ok" "$OUT" "^$T/replica-all.conf: configuration ok \(node 'site-b'; tls certificate 'site-b' "
assert_eq "replica-all: no warning" "" "$ERR"
finish
