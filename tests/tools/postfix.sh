#!/usr/bin/env bash
# A private Postfix instance on loopback for the integration tests.
#
#   postfix.sh start DIR CERTS   (re)starts the instance that lives in DIR,
#                                with the test certificates in CERTS
#                                (tests/tools/make-certs.sh)
#   postfix.sh stop DIR          stops it; harmless when it is not running
#   postfix.sh remove DIR        stops it, forgets its configuration directory
#                                and deletes what start made (DIR included)
#   postfix.sh status DIR        exit 0 if it runs
#   postfix.sh find DIR TEXT     paths of delivered messages (maildir new/
#                                files) that contain TEXT, oldest first
#
# Needs root (Postfix's master runs as root and drops privileges), postfix
# and sasl2-bin (deploy/install-deps test installs them).
#
# What the instance offers, all on 127.0.0.1 (and [::1] when the host has it):
#
#   $PORT_PLAIN  (25025)  plaintext; STARTTLS offered (security level may);
#                         AUTH offered in clear
#   $PORT_SMTPS  (25465)  implicit TLS (smtpd_tls_wrappermode=yes); AUTH
#   $PORT_SUBMIT (25587)  STARTTLS required (security level encrypt); AUTH
#                         only after it
#
# The server certificate is CERTS/leaf.pem (SAN mail.test, 127.0.0.1, ::1)
# sent with its chain (CERTS/chain.pem), so a client trusting CERTS/ca.pem
# or the leaf itself and connecting to 127.0.0.1 verifies it.
#
# The instance lives in DIR, unless the users Postfix runs as cannot reach
# DIR by its path (a checkout under /root): then in a fresh directory
# /var/tmp/smtpsync-postfix.XXXXXX (mktemp: no name anyone can plant ahead),
# linked as DIR/instance. Paths below say DIR for either. DIR may hold
# letters, digits and / . _ + @ % = : ~ - only: Postfix splits
# alternate_config_directories on spaces and commas, and expands $.
#
# Mail for any address @example.test is accepted from anyone (relaying
# elsewhere needs AUTH) and delivered into maildirs under DIR/mail:
# user@example.test into DIR/mail/user/, every other local part into
# DIR/mail/catchall/. Nothing ever leaves the host: the default transport
# bounces.
#
# SASL (Cyrus, private sasldb DIR/sasldb2): user "$SASL_USER" (also accepted
# as "$SASL_USER@example.test"), password in DIR/password (mode 0600, one
# line: usable as --password-file). Mechanisms PLAIN LOGIN CRAM-MD5.
#
# DIR/instance.env is a shell fragment with PORT_PLAIN, PORT_SMTPS,
# PORT_SUBMIT, SASL_USER, SASL_PASSWORD_FILE, MAIL_DIR, MAILLOG and
# POSTFIX_CONFIG for the tests to source. The ports are the fixed ones
# above unless SMTPSYNC_POSTFIX_PORTS="PLAIN SMTPS SUBMIT" says otherwise,
# or another program holds one of them: then free ports are picked and the
# choice is printed. The log of the instance is DIR/maillog.
#
# Postfix only accepts `-c DIR/etc` for a directory listed in
# alternate_config_directories of the default configuration, so start adds
# DIR/etc there (creating a minimal /etc/postfix/main.cf if the package was
# installed with "No configuration": that one disables the default
# instance's network services). Entries whose directory no longer exists
# (runs that were killed), or is not root's, are pruned whenever the list
# is rewritten (under the lock): a listed directory is one postqueue and
# postdrop accept with -c, so a stale entry is a path some other user might
# recreate. The default instance is never started.
set -euo pipefail
# Postfix's users read what start writes (main.cf, vmailbox, ...), whatever
# the caller's umask; secrets are written with umask 077 below.
umask 022

SASL_USER=smtpuser
SASL_DOMAIN=example.test
MAIL_USER=smtpsync-testmail
DEFAULT_PORTS="25025 25465 25587"

die() {
    printf 'postfix.sh: %s\n' "$*" >&2
    exit 1
}

usage() {
    sed -n '2,12p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//' >&2
    exit 2
}

# Absolute form of a path whose parent exists.
abspath() {
    local d
    d=$(cd "$(dirname "$1")" && pwd -P)
    printf '%s/%s\n' "$d" "$(basename "$1")"
}

# valid_home PATH: PATH is a home place_instance made in /var/tmp: a name
# it gives, a real directory (no symlink), owned by root and writable by
# root only (so nothing in it was planted by another user).
valid_home() {
    local h=$1 mode
    [[ $h =~ ^/var/tmp/smtpsync-postfix[.-][A-Za-z0-9]+$ ]] || return 1
    { [ -d "$h" ] && [ ! -L "$h" ]; } || return 1
    [ "$(stat -c %u -- "$h")" = 0 ] || return 1
    mode=$(stat -c %a -- "$h")
    [ $((8#$mode & 8#022)) -eq 0 ]
}

# Where the instance of DIR lives: DIR itself, or the home DIR/instance
# links to (see place_instance). Fails (printing nothing) when DIR/instance
# links to anything else.
home_of() {
    local h
    if [ -L "$1/instance" ]; then
        h=$(readlink -- "$1/instance")
        valid_home "$h" || return 1
        printf '%s\n' "$h"
    else
        printf '%s\n' "$1"
    fi
}

# True if user $1 can reach directory $2 by its path.
reachable_by() {
    runuser -u "$1" -- test -x "$2" 2>/dev/null
}

# Chooses the home of the instance of DIR. Postfix's processes run as
# postfix (smtpd reads the sasldb) and as $MAIL_USER (virtual writes the
# maildirs), so they must reach it by its path; a checkout under /root
# (mode 0700) is not reachable, and then the instance lives in a fresh
# directory of /var/tmp (mktemp: a name nobody can create first), linked as
# DIR/instance. A restart reuses the home DIR/instance links to only while
# valid_home holds (a real root-owned directory of ours).
place_instance() {
    local dir=$1 home
    if reachable_by postfix "$dir" && reachable_by "$MAIL_USER" "$dir"; then
        rm -f -- "$dir/instance"
        printf '%s\n' "$dir"
        return
    fi
    if [ -L "$dir/instance" ]; then
        home=$(readlink -- "$dir/instance")
        if valid_home "$home"; then
            if [[ $home == /var/tmp/smtpsync-postfix.* ]]; then
                printf '%s\n' "$home"
                return
            fi
            # A home of an older version, named after DIR (predictable):
            # stopped already, replaced by a fresh one.
            rm -rf -- "$home"
        fi
    fi
    home=$(mktemp -d /var/tmp/smtpsync-postfix.XXXXXX) || die "cannot make a directory in /var/tmp"
    chmod 755 "$home"
    ln -sfn -- "$home" "$dir/instance"
    printf '%s\n' "$home"
}

# fresh_dir PATH OWNER MODE: PATH as a real directory (a symlink or file
# in its place is removed first) with OWNER and MODE. Its parent is
# writable by root only, so nothing can swap it between check and chown.
fresh_dir() {
    if [ -L "$1" ] || { [ -e "$1" ] && [ ! -d "$1" ]; }; then
        rm -f -- "$1"
    fi
    mkdir -p -- "$1"
    chown -h -- "$2" "$1"
    chmod -- "$3" "$1"
}

# safe_path PATH: PATH has only characters that survive Postfix's lists
# (split on space and comma) and its $-expansion.
safe_path() {
    [[ $1 =~ ^/[A-Za-z0-9/._+@%=:~-]*$ ]]
}

running() {
    local etc=$1/etc
    [ -f "$etc/main.cf" ] && postfix -c "$etc" status >/dev/null 2>&1
}

# True if something accepts TCP connections on 127.0.0.1:$1.
port_open() {
    (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null
}

# Three free loopback ports, chosen by the kernel.
free_ports() {
    python3 - <<'PY'
import socket
socks = []
for _ in range(3):
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    socks.append(s)
print(" ".join(str(s.getsockname()[1]) for s in socks))
PY
}

have_ipv6() {
    grep -q '^0\{31\}1 ' /proc/net/if_inet6 2>/dev/null
}

# Runs "$@" holding a lock on the default configuration: instances started
# or removed at the same time (the test suite's, the demo's) each rewrite
# alternate_config_directories. The lock file is in /run, where only root
# creates files (in /run/lock any user could hold it forever).
LOCK_FILE=/run/smtpsync-postfix.lock
with_config_lock() {
    local rc=0
    exec {lock_fd}>"$LOCK_FILE"
    if ! flock -w 60 "$lock_fd"; then
        exec {lock_fd}>&-
        die "timed out after 60 s waiting for the lock $LOCK_FILE (held by: $(fuser "$LOCK_FILE" 2>/dev/null || echo unknown))"
    fi
    "$@" || rc=$?
    exec {lock_fd}>&-
    return "$rc"
}

# listed_dirs: alternate_config_directories of the default instance, one a
# line (split as Postfix does: on spaces and commas, no globbing).
listed_dirs() {
    local current d list=()
    current=$(postconf -c /etc/postfix -h alternate_config_directories 2>/dev/null || true)
    IFS=$' \t\n,' read -ra list <<<"$current"
    for d in "${list[@]}"; do
        [ -z "$d" ] || printf '%s\n' "$d"
    done
}

# still_ours DIR: a listed DIR worth keeping: it exists and root owns it
# (one recreated by another user after a run died is dropped).
still_ours() {
    [ -d "$1" ] && [ "$(stat -L -c %u -- "$1" 2>/dev/null)" = 0 ]
}

# set_listed_dirs DIR...: rewrites alternate_config_directories (removed
# when empty).
set_listed_dirs() {
    local joined='' d
    for d in "$@"; do
        joined+="${joined:+, }$d"
    done
    if [ -z "$joined" ]; then
        if [ -n "$(postconf -c /etc/postfix -n alternate_config_directories 2>/dev/null)" ]; then
            postconf -c /etc/postfix -X alternate_config_directories
        fi
    else
        postconf -c /etc/postfix -e "alternate_config_directories = $joined"
    fi
}

OUR_MAIN_CF_MARK="# Written by smtpsync's tests/tools/postfix.sh"

# Lists DIR/etc in alternate_config_directories of the default instance,
# and prunes the entries whose directory is gone.
register_config_dir() {
    local etc=$1 d old=() new=()
    if [ ! -f /etc/postfix/main.cf ]; then
        # The Debian package configured with "No configuration" ships none.
        # Should the default instance ever start (a reboot, `postfix
        # start`), it must not listen anywhere: no inet services at all.
        cat >/etc/postfix/main.cf <<EOF
$OUR_MAIN_CF_MARK because the Debian package
# was installed with "No configuration" (deploy/install-deps). The default
# Postfix instance is not used: its network services are disabled
# (master_service_disable, inet_interfaces) so that it listens nowhere
# should it start; this file only lists the private test instances below.
# Replace it with a real configuration if this host runs Postfix for mail.
compatibility_level = 3.6
master_service_disable = inet
inet_interfaces = loopback-only
EOF
    elif head -n 1 /etc/postfix/main.cf | grep -qF -- "$OUR_MAIN_CF_MARK" &&
        [ -z "$(postconf -c /etc/postfix -n master_service_disable 2>/dev/null)" ]; then
        # One an older version of this script wrote: made safe the same
        # way. A main.cf of the administrator's is never changed here.
        postconf -c /etc/postfix -e "master_service_disable = inet" "inet_interfaces = loopback-only"
    fi
    mapfile -t old < <(listed_dirs)
    for d in "${old[@]}"; do
        # Dead entries (a killed run's) go; ours is listed last.
        if [ "$d" != "$etc" ] && still_ours "$d"; then new+=("$d"); fi
    done
    new+=("$etc")
    [ "${old[*]}" = "${new[*]}" ] || set_listed_dirs "${new[@]}"
}

ensure_mail_user() {
    id -u "$MAIL_USER" >/dev/null 2>&1 && return 0
    useradd --system --no-create-home --home-dir /nonexistent --shell /usr/sbin/nologin \
        --user-group "$MAIL_USER" >/dev/null ||
        die "cannot create the user $MAIL_USER that owns the test maildirs"
}

write_main_cf() {
    local dir=$1 uid gid
    uid=$(id -u "$MAIL_USER")
    gid=$(id -g "$MAIL_USER")
    cat >"$dir/etc/main.cf" <<EOF
# Private Postfix instance of the smtpsync integration tests
# (tests/tools/postfix.sh). Regenerated by every start.
compatibility_level = 3.6
queue_directory = $dir/queue
data_directory = $dir/data
mail_owner = postfix
setgid_group = postdrop
myhostname = postfix.example.test
mydomain = example.test
myorigin = \$myhostname
inet_interfaces = loopback-only
inet_protocols = $INET_PROTOCOLS
mynetworks_style = host
mydestination =
local_recipient_maps =
local_transport = error:local delivery is disabled in the test instance
default_transport = error:the test instance delivers nothing off this host
relay_transport = \$default_transport
relayhost =
smtp_dns_support_level = disabled
smtpd_peername_lookup = no
biff = no
maillog_file = $dir/maillog
maillog_file_prefixes = $dir
# Headers are stored exactly as the client sent them: no address rewriting.
local_header_rewrite_clients =
remote_header_rewrite_domain =
# Fast and tolerant of a test suite hammering it.
in_flow_delay = 0s
smtpd_error_sleep_time = 0s
smtpd_soft_error_limit = 1000
smtpd_hard_error_limit = 1000
smtpd_junk_command_limit = 1000
smtpd_client_connection_count_limit = 0
smtpd_client_connection_rate_limit = 0
smtpd_client_message_rate_limit = 0
default_process_limit = 100

virtual_mailbox_domains = $SASL_DOMAIN
virtual_mailbox_base = $dir/mail
virtual_mailbox_maps = texthash:$dir/etc/vmailbox
virtual_uid_maps = static:$uid
virtual_gid_maps = static:$gid
virtual_minimum_uid = 1

smtpd_banner = \$myhostname ESMTP smtpsync test Postfix
smtpd_relay_restrictions = permit_sasl_authenticated, reject_unauth_destination
smtpd_recipient_restrictions = permit_sasl_authenticated, reject_unauth_destination
smtpd_sasl_auth_enable = yes
smtpd_sasl_type = cyrus
smtpd_sasl_path = smtpd
# Debian's Postfix looks in \$config_directory/sasl whatever this says.
cyrus_sasl_config_path = $dir/etc/sasl
smtpd_sasl_local_domain = $SASL_DOMAIN
smtpd_sasl_security_options = noanonymous
smtpd_sasl_tls_security_options = noanonymous
smtpd_tls_auth_only = no
broken_sasl_auth_clients = no

smtpd_tls_cert_file = $dir/etc/tls/chain.pem
smtpd_tls_key_file = $dir/etc/tls/leaf.key
smtpd_tls_security_level = may
smtpd_tls_loglevel = 1
smtpd_tls_received_header = yes
smtpd_tls_session_cache_database =
EOF
}

write_master_cf() {
    local dir=$1 hosts=(127.0.0.1) host
    have_ipv6 && hosts+=("[::1]")
    {
        cat <<'EOF'
# Private Postfix instance of the smtpsync integration tests: three smtpd
# listeners on loopback, everything unchrooted (chroot column "n") so that
# smtpd reaches the private sasldb and certificates by their real paths.
EOF
        for host in "${hosts[@]}"; do
            cat <<EOF
$host:$PORT_PLAIN inet n - n - - smtpd
  -o syslog_name=postfix-test/plain
  -o smtpd_tls_security_level=may
$host:$PORT_SMTPS inet n - n - - smtpd
  -o syslog_name=postfix-test/smtps
  -o smtpd_tls_wrappermode=yes
  -o smtpd_tls_security_level=encrypt
$host:$PORT_SUBMIT inet n - n - - smtpd
  -o syslog_name=postfix-test/submission
  -o smtpd_tls_security_level=encrypt
  -o smtpd_tls_auth_only=yes
EOF
        done
        cat <<'EOF'
pickup    unix  n       -       n       60      1       pickup
cleanup   unix  n       -       n       -       0       cleanup
qmgr      unix  n       -       n       300     1       qmgr
tlsmgr    unix  -       -       n       1000?   1       tlsmgr
rewrite   unix  -       -       n       -       -       trivial-rewrite
bounce    unix  -       -       n       -       0       bounce
defer     unix  -       -       n       -       0       bounce
trace     unix  -       -       n       -       0       bounce
verify    unix  -       -       n       -       1       verify
flush     unix  n       -       n       1000?   0       flush
proxymap  unix  -       -       n       -       -       proxymap
proxywrite unix -       -       n       -       1       proxymap
smtp      unix  -       -       n       -       -       smtp
relay     unix  -       -       n       -       -       smtp
showq     unix  n       -       n       -       -       showq
error     unix  -       -       n       -       -       error
retry     unix  -       -       n       -       -       error
discard   unix  -       -       n       -       -       discard
local     unix  -       n       n       -       -       local
virtual   unix  -       n       n       -       -       virtual
anvil     unix  -       -       n       -       1       anvil
scache    unix  -       -       n       -       1       scache
postlog   unix-dgram n  -       n       -       1       postlogd
EOF
    } >"$dir/etc/master.cf"
}

write_sasl() {
    local dir=$1 password
    mkdir -p "$dir/etc/sasl"
    cat >"$dir/etc/sasl/smtpd.conf" <<EOF
pwcheck_method: auxprop
auxprop_plugin: sasldb
sasldb_path: $dir/sasldb2
mech_list: PLAIN LOGIN CRAM-MD5
EOF
    chmod 644 "$dir/etc/sasl/smtpd.conf"
    # A new password every start, into a new file: whatever was at the name
    # (a file of other content or mode, a symlink) is not reused.
    password=$(od -An -N12 -tx1 /dev/urandom | tr -d ' \n')
    rm -f -- "$dir/password"
    (umask 077 && set -o noclobber && printf '%s\n' "$password" >"$dir/password")
    rm -f "$dir/sasldb2"
    printf '%s' "$password" | saslpasswd2 -p -f "$dir/sasldb2" -c -u "$SASL_DOMAIN" "$SASL_USER"
    # smtpd runs as postfix when it checks a password.
    chown root:postfix "$dir/sasldb2"
    chmod 640 "$dir/sasldb2"
}

choose_ports() {
    local dir=$1 wanted p busy=
    wanted=${SMTPSYNC_POSTFIX_PORTS:-$DEFAULT_PORTS}
    read -r PORT_PLAIN PORT_SMTPS PORT_SUBMIT <<<"$wanted"
    [ -n "${PORT_SUBMIT:-}" ] || die "SMTPSYNC_POSTFIX_PORTS needs three ports, got '$wanted'"
    for p in $PORT_PLAIN $PORT_SMTPS $PORT_SUBMIT; do
        port_open "$p" && busy+=" $p"
    done
    if [ -n "$busy" ]; then
        if [ -n "${SMTPSYNC_POSTFIX_PORTS:-}" ]; then
            die "port(s)$busy already in use (SMTPSYNC_POSTFIX_PORTS=$wanted)"
        fi
        read -r PORT_PLAIN PORT_SMTPS PORT_SUBMIT <<<"$(free_ports)"
        printf 'postfix.sh: port(s)%s in use by another program: using %s %s %s\n' \
            "$busy" "$PORT_PLAIN" "$PORT_SMTPS" "$PORT_SUBMIT" >&2
    fi
}

# Waits until every listener greets; fails with the end of the log.
wait_ready() {
    local dir=$1 p i ok
    for p in $PORT_PLAIN $PORT_SMTPS $PORT_SUBMIT; do
        ok=
        for ((i = 0; i < 150; i++)); do
            if port_open "$p"; then
                ok=1
                break
            fi
            sleep 0.1
        done
        if [ -z "$ok" ]; then
            printf 'postfix.sh: the instance in %s does not accept on 127.0.0.1:%s\n' "$dir" "$p" >&2
            printf -- '--- last lines of %s/maillog:\n' "$dir" >&2
            tail -n 40 "$dir/maillog" >&2 2>/dev/null || true
            postfix -c "$dir/etc" stop >/dev/null 2>&1 || true
            exit 1
        fi
    done
    # The greeting of the plaintext listener proves smtpd itself starts
    # (bad TLS or SASL settings make it die right after accept).
    if ! python3 - "$PORT_PLAIN" <<'PY'; then
import socket, sys
s = socket.create_connection(("127.0.0.1", int(sys.argv[1])), timeout=10)
line = s.makefile("rb").readline()
s.sendall(b"QUIT\r\n")
sys.exit(0 if line.startswith(b"220 ") else 1)
PY
        printf 'postfix.sh: smtpd on 127.0.0.1:%s does not greet\n' "$PORT_PLAIN" >&2
        printf -- '--- last lines of %s/maillog:\n' "$dir" >&2
        tail -n 40 "$dir/maillog" >&2 2>/dev/null || true
        exit 1
    fi
}

start() {
    local top dir certs f
    [ $# -eq 2 ] || usage
    [ "$(id -u)" -eq 0 ] || die "must run as root (Postfix's master runs as root)"
    command -v postfix >/dev/null || die "postfix is not installed (deploy/install-deps test)"
    command -v saslpasswd2 >/dev/null || die "saslpasswd2 is missing (package sasl2-bin)"
    mkdir -p -- "$1"
    top=$(cd -- "$1" && pwd -P)
    certs=$(cd -- "$2" && pwd -P)
    safe_path "$top" || die "refusing DIR '$top': Postfix's lists split paths on spaces and commas; use only letters, digits and / . _ + @ % = : ~ -"
    for f in chain.pem leaf.key ca.pem; do
        [ -r "$certs/$f" ] || die "$certs/$f is missing (tests/tools/make-certs.sh $certs)"
    done

    stop "$top"
    ensure_mail_user
    dir=$(place_instance "$top")
    safe_path "$dir" || die "refusing instance directory '$dir' (see DIR above)"
    INET_PROTOCOLS=ipv4
    have_ipv6 && INET_PROTOCOLS=all
    choose_ports "$dir"

    # Postfix insists on root-owned, not group- or world-writable paths.
    # Nothing is chowned or chmodded through a symlink (fresh_dir).
    chmod go-w -- "$dir"
    fresh_dir "$dir/etc" root:root 755
    fresh_dir "$dir/queue" root:root 755
    fresh_dir "$dir/data" postfix:postfix 700
    fresh_dir "$dir/mail" "$MAIL_USER:$MAIL_USER" 755

    # smtpd reads these as root before it drops privileges; a copy keeps
    # the instance whole wherever CERTS is.
    fresh_dir "$dir/etc/tls" root:root 755
    cp "$certs/chain.pem" "$dir/etc/tls/chain.pem"
    (umask 077 && cp "$certs/leaf.key" "$dir/etc/tls/leaf.key")
    write_main_cf "$dir"
    write_master_cf "$dir"
    printf '%s@%s user/\n@%s catchall/\n' user "$SASL_DOMAIN" "$SASL_DOMAIN" >"$dir/etc/vmailbox"
    write_sasl "$dir"
    : >"$dir/maillog"
    with_config_lock register_config_dir "$dir/etc"

    cat >"$top/instance.env" <<EOF
PORT_PLAIN=$PORT_PLAIN
PORT_SMTPS=$PORT_SMTPS
PORT_SUBMIT=$PORT_SUBMIT
SASL_USER=$SASL_USER
SASL_DOMAIN=$SASL_DOMAIN
SASL_PASSWORD_FILE=$dir/password
MAIL_DIR=$dir/mail
MAILLOG=$dir/maillog
POSTFIX_CONFIG=$dir/etc
EOF

    # Creates the queue's subdirectories and fixes their owners, then
    # checks the configuration.
    if ! postfix -c "$dir/etc" set-permissions >"$dir/setup.log" 2>&1 ||
        ! postfix -c "$dir/etc" check >>"$dir/setup.log" 2>&1; then
        cat "$dir/setup.log" >&2
        die "the configuration in $dir/etc is refused"
    fi
    if ! postfix -c "$dir/etc" start >>"$dir/setup.log" 2>&1; then
        cat "$dir/setup.log" >&2
        tail -n 40 "$dir/maillog" >&2 2>/dev/null || true
        die "postfix -c $dir/etc start failed"
    fi
    wait_ready "$dir"
    [ "$top" = "$dir" ] || cp "$top/instance.env" "$dir/instance.env"
    printf 'postfix.sh: instance %s ready on 127.0.0.1 ports %s (plain), %s (smtps), %s (starttls)\n' \
        "$dir" "$PORT_PLAIN" "$PORT_SMTPS" "$PORT_SUBMIT"
}

stop() {
    local dir i
    [ $# -eq 1 ] || usage
    [ -d "$1" ] || return 0
    dir=$(home_of "$(cd -- "$1" && pwd -P)") || return 0
    [ -f "$dir/etc/main.cf" ] || return 0
    running "$dir" || return 0
    postfix -c "$dir/etc" stop >/dev/null 2>&1 || true
    # `postfix stop` returns before the master has exited.
    for ((i = 0; i < 100; i++)); do
        running "$dir" || return 0
        sleep 0.1
    done
    postfix -c "$dir/etc" abort >/dev/null 2>&1 || true
}

# Takes DIR/etc out of alternate_config_directories, and the entries whose
# directory is gone.
unregister_config_dir() {
    local etc=$1 d kept=() all=0
    [ -f /etc/postfix/main.cf ] || return 0
    while IFS= read -r d; do
        all=$((all + 1))
        if [ "$d" != "$etc" ] && still_ours "$d"; then kept+=("$d"); fi
    done < <(listed_dirs)
    [ "${#kept[@]}" -ne "$all" ] || return 0
    set_listed_dirs "${kept[@]}"
}

# Stops the instance of DIR and deletes it: DIR, and the directory in
# /var/tmp DIR/instance links to.
remove() {
    local top dir
    [ $# -eq 1 ] || usage
    [ -e "$1" ] || return 0
    if [ -L "$1" ] || [ ! -d "$1" ]; then die "$1 is not a directory"; fi
    top=$(cd -- "$1" && pwd -P)
    stop "$top"
    # A DIR/instance that links elsewhere is only unlinked (rm -rf below).
    dir=$(home_of "$top") || dir=$top
    if [ "$dir" != "$top" ]; then
        rm -rf -- "$dir"
    fi
    if [ -d /etc/postfix ]; then
        with_config_lock unregister_config_dir "$dir/etc"
    fi
    rm -rf -- "$top"
}

status() {
    [ $# -eq 1 ] || usage
    local dir
    [ -d "$1" ] || return 1
    dir=$(home_of "$(abspath "$1")") || return 1
    running "$dir"
}

# Delivered messages containing TEXT (fixed string), oldest first.
find_messages() {
    local dir text
    [ $# -eq 2 ] || usage
    dir=$(home_of "$(abspath "$1")") || return 0
    text=$2
    [ -d "$dir/mail" ] || return 0
    find "$dir/mail" -path '*/new/*' -type f -printf '%T@ %p\n' 2>/dev/null | sort -n |
        cut -d' ' -f2- | while IFS= read -r f; do
        if grep -qF -- "$text" "$f"; then
            printf '%s\n' "$f"
        fi
    done
}

cmd=${1:-}
[ $# -ge 1 ] && shift
case $cmd in
start) start "$@" ;;
stop) stop "$@" ;;
remove) remove "$@" ;;
status) status "$@" ;;
find) find_messages "$@" ;;
*) usage ;;
esac
