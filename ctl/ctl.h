/*
 * ctl: the context of one smtpsyncctl run and the helpers every verb shares.
 *
 * main.c builds one `struct ctl` from the global options and passes it to
 * the verb; nothing else holds state (STYLE.md, point 4). The store is
 * opened lazily by ctl_store_open(), after the verb has parsed its own
 * options, so `--help` and usage errors never touch the data directory.
 *
 * Exit status: CTL_EXIT_OK, CTL_EXIT_FAIL (the operation failed) or
 * CTL_EXIT_USAGE (the command line was wrong). Every error is one line on
 * stderr, prefixed "smtpsyncctl: ".
 */
#ifndef SMTPSYNC_CTL_H
#define SMTPSYNC_CTL_H

#include <getopt.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <sys/stat.h>

#include "store.h"

#define CTL_PROG "smtpsyncctl"

enum {
    CTL_EXIT_OK = 0,
    CTL_EXIT_FAIL = 1,
    CTL_EXIT_USAGE = 2,
};

struct ctl {
    const char *data_dir; /* --data-dir or SMTPSYNC_DATA_DIR; NULL if neither */
    const char *key_file; /* --key-file; NULL: the store's default */
    bool json;            /* --json, global or given to a read verb */
    struct store *store;  /* owned; opened by ctl_store_open, closed by main */
    int argi;             /* index on the command line of the verb's argv[0] */
    /* --socket or SMTPSYNC_SOCKET: the local daemon's submission socket;
     * NULL: CTL_SOCKET_DEFAULT. Used by send, sendmail and queue. */
    const char *socket;

    /* Remote mode (ctl_remote.c): --server HOST:PORT with --ca, --cert and
     * --key, each also from [ctl] of --config FILE or SMTPSYNC_CONFIG (the
     * command line wins). NULL when not given. */
    const char *server;
    /* --server-id, or server_id of [ctl] when the server came from there
     * too: the node id the server's certificate must carry. After
     * ctl_remote_setup() it is set in remote mode (the host of --server
     * when it is a DNS name), so the server is always authenticated. */
    const char *server_id;
    const char *ca;
    const char *cert;
    const char *key;
    const char *config;        /* --config */
    bool server_option;        /* --server was on the command line */
    uint64_t timeout_ms;       /* --timeout: wait for a reply; 0: the verb's default */
    struct ctl_remote *remote; /* the connection; owned, closed by main */
    struct ctl_conf *conf;     /* values read from [ctl]; owned, freed by main */
};

struct ctl_remote;
struct ctl_conf;

#define CTL_SOCKET_DEFAULT "/run/smtpsync/submit.sock"

/* The submission socket path for this run (see struct ctl). */
const char *ctl_socket_path(const struct ctl *ctl);

/* A verb: argv[0] is the verb's own name (for messages and getopt). Returns
 * the exit status. */
typedef int (*ctl_verb_fn)(struct ctl *ctl, int argc, char **argv);

/*
 * Opens the store in ctl->data_dir unless it is open already. Only the
 * verbs that write a draft pass `create`: for every other verb a directory
 * without a store is an error and nothing is created in it, so a mistyped
 * path for a read leaves no trace. Prints any error itself and returns the
 * exit status for it: CTL_EXIT_OK, CTL_EXIT_USAGE (no --data-dir) or
 * CTL_EXIT_FAIL.
 */
int ctl_store_open(struct ctl *ctl, bool create);

/* ctl_store_open() without `create`, then store_info() into *info. Prints
 * any error; returns the exit status. */
int ctl_store_open_info(struct ctl *ctl, struct store_info *info);

/*
 * Parses a revision argument `text` (named `what` in messages): a number
 * from 1 up to `head`, the newest revision (UINT64_MAX: syntax only, before
 * the store is open). Prints the problem; returns CTL_EXIT_OK, or
 * CTL_EXIT_USAGE for a malformed number, CTL_EXIT_FAIL beyond the head.
 */
int ctl_parse_revision(const char *what, const char *text, uint64_t head, const char *usage,
                       uint64_t *out);

/* Prints the error of a store call about revisions (`doing`: "roll back"),
 * naming the oldest revision still kept when it was compacted away. */
void ctl_revision_error(const char *doing, int err, uint64_t base);

/*
 * Opens a file the user named as input: a regular file, or a FIFO or pipe
 * (so `--password-file <(pass show smtp)` works). The open is non-blocking,
 * so a FIFO without a writer cannot hang it, and the descriptor is made
 * blocking again afterwards (such a FIFO then reads as empty). Directories,
 * devices and sockets are refused. `what` names the file in messages: the
 * caller decides whether it shows the path. Prints the problem; returns the
 * descriptor (*st filled by fstat) or a negative error.
 */
int ctl_open_input(const char *path, const char *what, struct stat *st);

/* "smtpsyncctl: <message>\n" on stderr. Text from the user that goes into
 * a message must be passed through ctl_quote() first. */
void ctl_errorf(const char *fmt, ...) __attribute__((format(printf, 1, 2)));

/* Prints `message` (one line) and then the synopsis of `usage` (its first
 * paragraph) on stderr; returns CTL_EXIT_USAGE. */
int ctl_usage_error(const char *usage, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

/*
 * Writes a printable, bounded form of untrusted text into buf: C0 controls,
 * DEL and bytes that are not valid UTF-8 become \xNN; C1 controls
 * (U+0080-U+009F), bidirectional controls and line separators (U+061C,
 * U+200E, U+200F, U+2028-U+202E, U+2066-U+2069) become \uNNNN, as they
 * could reorder or forge what a terminal shows; text past `len` is cut
 * with "...". For echoing user input in messages.
 */
const char *ctl_quote(const char *text, char *buf, size_t len);

/* Prints the synopsis of `usage` on stderr (after an error line was
 * printed); returns CTL_EXIT_USAGE. */
int ctl_usage(const char *usage);

/* True if text is valid UTF-8 with nothing ctl_quote() would escape. */
bool ctl_text_clean(const char *text);

/* Checks an --instance value: a valid instance id. Prints the problem. */
bool ctl_instance_ok(const char *id);

/* Checks a --comment: printable UTF-8 of at most STORE_COMMENT_MAX
 * bytes. Prints the problem. */
bool ctl_comment_ok(const char *comment);

/* Writes `text` to f with the same escaping as ctl_quote but unbounded. */
void ctl_fputs_safe(const char *text, FILE *f);

/*
 * Strict unsigned decimal: digits only (no sign, space or base prefix), the
 * whole string consumed, no overflow, within [min, max]. 0 or ERROR_INVALID.
 */
int ctl_parse_u64(const char *text, uint64_t min, uint64_t max, uint64_t *out);

/*
 * getopt_long() with the messages of smtpsyncctl and without GNU's
 * abbreviation of long options: `--password` must never be taken for
 * `--password-file`, so only names written in full are accepted. On an
 * unknown option or a missing value it prints the error line and returns
 * '?'. `optstring` should start with ':' (after an optional '+' or '-').
 */
int ctl_getopt(int argc, char **argv, const char *optstring, const struct option *longopts);

/* --- remote mode (ctl_remote.c) ------------------------------------------- */

/* How long a reply may take (unless --timeout): most verbs, and those that
 * wait for the network beyond the daemon (settings test, sync). */
#define CTL_REPLY_TIMEOUT_MS      60000u
#define CTL_REPLY_TIMEOUT_LONG_MS 600000u

/*
 * Reads [ctl] (server, server_id, ca, cert, key) of the file named by --config, else
 * by SMTPSYNC_CONFIG, into ctl->conf, filling what the command line did
 * not give (server_id only with the file's own server: an address given
 * on the command line goes with --server-id or its own host name). Other
 * sections are ignored (the file may be a node's config); an unknown key
 * in [ctl] is an error. Relative paths are taken from the file's
 * directory. Then checks that remote mode has all it needs, and sets
 * ctl->server_id: --server-id, else the host of --server when it is a DNS
 * name; an IP address without an id is a usage error. Prints the
 * problems; returns the exit status.
 */
int ctl_remote_setup(struct ctl *ctl);

/* True when this run talks to a daemon (a server was given). */
bool ctl_remote(const struct ctl *ctl);

/*
 * Sends `req` (its id is set here) and waits up to `timeout_ms` (0: the
 * default, or --timeout) for its AdminReply, connecting first if this run
 * has not yet. Transport failures (cannot connect, TLS refused, timeout,
 * connection closed) are printed as one line and give CTL_EXIT_FAIL. On
 * CTL_EXIT_OK *out is the reply, whatever its code; free it with
 * smtpsync__admin_reply__free_unpacked(*out, NULL).
 */
int ctl_remote_call(struct ctl *ctl, Smtpsync__Frame *req, uint64_t timeout_ms,
                    Smtpsync__AdminReply **out);

/*
 * ctl_remote_call(), then ctl_remote_fail() for a reply whose code is not
 * 0: CTL_EXIT_OK only with a successful reply in *out (freed by the
 * caller as above); every failure is printed.
 */
int ctl_remote_ask(struct ctl *ctl, Smtpsync__Frame *req, uint64_t timeout_ms, bool problems_all,
                   Smtpsync__AdminReply **out);

/*
 * For a reply whose code is not 0: prints its problems as local mode does
 * (what is wrong, then what is missing; with `all`, every problem alike,
 * as save prints them), then its error line, and for a refusal the role
 * it needs. Returns CTL_EXIT_FAIL.
 */
int ctl_remote_fail(const Smtpsync__AdminReply *r, bool all);

/* The problems of a reply, as local mode keeps them. */
void ctl_remote_problems(const Smtpsync__AdminReply *r, struct settings_problems *p);

/* A record of a reply as a struct settings (initialised by the caller). */
int ctl_remote_settings(const Smtpsync__Settings *m, struct settings *s);

/* Closes the connection, if any (main does at the end). */
void ctl_remote_close(struct ctl *ctl);
void ctl_remote_free_conf(struct ctl *ctl);

/* Verbs (ctl_settings.c, ctl_settings_edit.c, ctl_history.c, ctl_test.c,
 * ctl_send.c, ctl_queue.c). */
int ctl_settings_main(struct ctl *ctl, int argc, char **argv);
int ctl_history_main(struct ctl *ctl, int argc, char **argv);
int ctl_diff_main(struct ctl *ctl, int argc, char **argv);
int ctl_rollback_main(struct ctl *ctl, int argc, char **argv);
int ctl_settings_test(struct ctl *ctl, int argc, char **argv); /* settings test */
int ctl_settings_set(struct ctl *ctl, int argc, char **argv);  /* ctl_settings_edit.c */
int ctl_settings_import_cert(struct ctl *ctl, int argc, char **argv);
int ctl_send_main(struct ctl *ctl, int argc, char **argv);
int ctl_sendmail_main(struct ctl *ctl, int argc, char **argv);
int ctl_queue_main(struct ctl *ctl, int argc, char **argv);
/* ctl_status.c */
int ctl_status_main(struct ctl *ctl, int argc, char **argv);
int ctl_sync_main(struct ctl *ctl, int argc, char **argv);
int ctl_promote_main(struct ctl *ctl, int argc, char **argv);

/* Usage texts, also printed by `smtpsyncctl help VERB`. */
extern const char ctl_settings_usage[];
extern const char ctl_settings_set_usage[];
extern const char ctl_settings_import_usage[];
extern const char ctl_settings_show_usage[];
extern const char ctl_settings_test_usage[];
extern const char ctl_send_usage[];
extern const char ctl_sendmail_usage[];
extern const char ctl_queue_usage[];
extern const char ctl_settings_save_usage[];
extern const char ctl_settings_discard_usage[];
extern const char ctl_history_usage[];
extern const char ctl_diff_usage[];
extern const char ctl_rollback_usage[];
extern const char ctl_status_usage[];
extern const char ctl_sync_usage[];
extern const char ctl_promote_usage[];

#endif
