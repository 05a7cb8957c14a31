/*
 * config: the daemons' INI file (DESIGN.md, "Interfaces users see").
 *
 *   [node]
 *   id = primary                  ; required: this node's instance id
 *   data_dir = /var/lib/smtpsync  ; required: settings store, node key, outbox
 *   submit_socket = /run/smtpsync/submit.sock
 *   listen = 0.0.0.0:7443         ; mTLS: replication and admin ([tls] needed)
 *   address = 10.0.0.1:7443       ; how other nodes reach this one (kept in the
 *                                 ; membership, used after a promotion);
 *                                 ; default: listen, unless it is a wildcard
 *   metrics_listen = 127.0.0.1:9465 ; Prometheus GET /metrics; loopback only
 *                                 ; (127.0.0.0/8, [::1], localhost: no
 *                                 ; authentication); port 0: any free port;
 *                                 ; empty or absent: off; restart to change
 *
 *   [tls]                         ; required with listen or [replica] sections
 *   ca = /etc/smtpsync/ca.pem
 *   cert = /etc/smtpsync/node.pem
 *   key = /etc/smtpsync/node.key
 *
 *   [replication]                 ; both daemons (a replica may be promoted)
 *   interval = 600                ; scheduled push every interval ...
 *   jitter = 600                  ; ... plus a random 0..jitter
 *   push_on_commit = yes          ; push right after each save
 *   history_keep = 1000           ; revisions kept; older ones are compacted
 *   snapshot_concurrency = 4      ; snapshots in flight at once
 *   primary = primary             ; replica: the primary's id, accepted
 *                                 ; before any membership is known
 *
 *   [replica "site-b"]            ; primary: one section per replica
 *   address = 10.0.0.2:7443
 *
 *   [admin]                       ; admin certificate ids -> roles
 *   super_admins = alice, ops-bot
 *   operators = monitor
 *
 *   [sender]
 *   max_sessions = 4              ; 1-256 concurrent SMTP sessions
 *   max_per_session = 100         ; 1-10000 messages before QUIT
 *   idle = 2                      ; keep an idle session open this long
 *   retry_initial = 30            ; first retry delay, doubling ...
 *   retry_max = 3600              ; ... up to this
 *   tokencode_expiry = 600        ; a tokencode is dead after this
 *   report_expiry = 432000        ; a report is dead after this (5 days)
 *   helo = mail.example.com       ; EHLO name; default: this host's name
 *
 *   [log]
 *   level = info                  ; debug, info, warn, error
 *   format = text                 ; text or json
 *
 * Syntax, strictly: `[section]` or `[section "label"]` headers, `key =
 * value` lines, comments on lines of their own starting with ';' or '#',
 * and after a value following a space and ';' (inih's rules). Leading
 * spaces are ignored: there are no continuation lines. A line holds at most
 * CONFIG_LINE_MAX characters. Values are taken as written (no quotes).
 *
 * Durations are seconds, with up to three decimals ("0.25"), or a number
 * with a unit: "250ms", "30s", "10m", "1h", "5d". They are kept in
 * milliseconds. Booleans are yes/no, on/off, true/false, 1/0. Lists are
 * comma-separated ids ("alice, ops-bot").
 *
 * Everything wrong is collected, not just the first problem (STYLE.md,
 * point 7): an unknown section or key, a key given twice, a bad value, a
 * missing required key, and what contradicts another key (an admin id that
 * is also a node's, a [replica] that is this node, [tls] missing where
 * replication needs it). Each problem is one line "FILE:LINE: message"
 * ("FILE: message" when no line applies), e.g.
 *   /etc/smtpsync/primary.ini:7: unknown key 'max_session' in [sender]
 *
 * Sections and keys come from one table (config.c).
 */
#ifndef SMTPSYNC_CONFIG_H
#define SMTPSYNC_CONFIG_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

#include "log.h"
#include "settings.h"
#include "syntax.h"

#define CONFIG_LINE_MAX   196 /* inih's line buffer, less the line end */
#define CONFIG_PATH_MAX   256
#define CONFIG_SOCKET_MAX 108 /* sun_path, with its NUL */
#define CONFIG_ADDR_MAX   (SYNTAX_HOSTNAME_MAX + 8)

#define CONFIG_SUBMIT_SOCKET_DEFAULT "/run/smtpsync/submit.sock"
#define CONFIG_ADMIN_ID_MAX          SYNTAX_HOSTNAME_MAX /* a certificate id (mtls.h) */

/* "host:port", "[v6]:port"; all empty when not configured. */
struct config_addr {
    char text[CONFIG_ADDR_MAX + 1];
    char host[SYNTAX_HOSTNAME_MAX + 1]; /* without brackets */
    uint16_t port;
};

/* A list of ids (malloc'd strings), in the order written. */
struct config_ids {
    char **ids;
    size_t n;
};

/* One [replica "id"] section. */
struct config_replica {
    char id[SETTINGS_INSTANCE_MAX + 1];
    struct config_addr address;
    int line; /* of its (first) header */
};

/*
 * A loaded file. It owns its lists: copy it with config_copy(), release it
 * with config_clear().
 */
struct config {
    struct {
        char id[SETTINGS_INSTANCE_MAX + 1];
        char data_dir[CONFIG_PATH_MAX];
        char submit_socket[CONFIG_SOCKET_MAX];
        struct config_addr listen;
        struct config_addr address;
        struct config_addr metrics_listen; /* text "" when off; port 0: any */
    } node;
    struct {
        char ca[CONFIG_PATH_MAX]; /* "" when not configured */
        char cert[CONFIG_PATH_MAX];
        char key[CONFIG_PATH_MAX];
    } tls;
    struct {
        uint64_t interval_ms;
        uint64_t jitter_ms;
        bool push_on_commit;
        unsigned history_keep;
        unsigned snapshot_concurrency;
        char primary[SETTINGS_INSTANCE_MAX + 1]; /* "": not configured */
    } replication;
    struct config_replica *replicas; /* [replica "id"] sections, in file order */
    size_t nreplicas;
    struct {
        struct config_ids super_admins;
        struct config_ids operators;
    } admin;
    struct {
        unsigned max_sessions;
        unsigned max_per_session;
        uint64_t idle_ms;
        uint64_t retry_initial_ms;
        uint64_t retry_max_ms;
        uint64_t tokencode_expiry_ms;
        uint64_t report_expiry_ms;
        char helo[SYNTAX_HOSTNAME_MAX + 1]; /* "": this host's name */
    } sender;
    struct {
        enum log_level level;
        enum log_format format;
    } log;
};

/* Every problem found, each a malloc'd line "FILE:LINE: message". */
struct config_problems {
    char **lines;
    size_t count;
    size_t dropped; /* beyond CONFIG_PROBLEMS_MAX, counted only */
};

#define CONFIG_PROBLEMS_MAX 100

void config_problems_init(struct config_problems *p);
void config_problems_free(struct config_problems *p);

/* Sets every key to its default (required keys to ""). */
void config_init(struct config *c);

/*
 * Reads the file at `path` into `c` (defaults first). Returns 0;
 * ERROR_INVALID with every problem in `p` (then `c` must not be used); or
 * a negative errno when the file cannot be read, also recorded in `p` as
 * "FILE: cannot read: reason". `p` must be initialised; problems are
 * appended.
 */
int config_load(const char *path, struct config *c, struct config_problems *p);

/* The same from an open stream; `name` stands for the file in messages. */
int config_load_file(FILE *f, const char *name, struct config *c, struct config_problems *p);

/* Releases what `c` owns and leaves it as config_init() does without the
 * defaults (all zero). Safe on a config that failed to load. */
void config_clear(struct config *c);

/* A deep copy of `src` into `dst` (which is overwritten, not cleared).
 * Returns 0 or -ENOMEM (then `dst` holds nothing to clear). */
int config_copy(struct config *dst, const struct config *src);

/* The [replica] section of `id`, or NULL. */
const struct config_replica *config_replica_find(const struct config *c, const char *id);

/* True if `id` is in the list. */
bool config_ids_has(const struct config_ids *l, const char *id);

/*
 * Calls `cb` for every key whose value differs between `old` and `new`,
 * with both values in their display form ("" for a [replica] section that
 * is new or gone; its section is then `replica "id"`). `live` is true when
 * a running daemon can take the new value without a restart (SIGHUP):
 * [tls], [replication], [replica], [admin], [sender] and [log] keys;
 * [node] keys need a restart.
 */
typedef void (*config_change_cb)(const char *section, const char *key, const char *old_value,
                                 const char *new_value, bool live, void *arg);
void config_diff(const struct config *old, const struct config *new, config_change_cb cb,
                 void *arg);

/* The display form of one key's value (durations as "30s" or "250ms").
 * Returns 0, or ERROR_NOT_FOUND for an unknown section or key. */
int config_format(const struct config *c, const char *section, const char *key, char *buf,
                  size_t len);

/* Parses a duration as described above into milliseconds: 0 or ERROR_INVALID. */
int config_parse_duration(const char *text, uint64_t *ms);

#endif
