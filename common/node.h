/*
 * node: the runtime both daemons share (smtpsync-primary, smtpsync-replica).
 *
 * One libuv loop, single-threaded, holding:
 *   - the node's settings store (store.h) in [node] data_dir, created empty
 *     when missing (a fresh replica starts with nothing), and a lock file
 *     there so that two daemons never drain the same outbox;
 *   - the outbox (outbox.h) in <data_dir>/outbox;
 *   - the sender (sender.h), which delivers with the node's own settings;
 *   - the submission socket (submit.h): submissions are normalized
 *     (smtp_message_normalize), collected for one loop iteration and
 *     committed in one outbox transaction, then answered with their ids;
 *     `queue` queries and actions are answered from the outbox;
 *   - a 1 s timer that compares the store's revision, so a revision saved
 *     by another process (smtpsyncctl --data-dir, later replication) is
 *     used without a restart;
 *   - with [tls]: replication and the admin API (repl.h, repl_node): the
 *     [node] listen port, the pusher while this node is the primary, the
 *     agent that applies pushes; a new revision is pushed at once;
 *   - signals: SIGTERM and SIGINT stop accepting, let the sender drain and
 *     exit 0; SIGHUP re-reads the config file ([sender], [log],
 *     [replication], [replica], [admin] and [tls] apply at once, the TLS
 *     files reloaded without dropping a connection, the sender restarting
 *     with its new limits; [node] changes are logged as needing a
 *     restart).
 *
 * The process is hardened first: no core dumps and not dumpable (it holds
 * SMTP passwords), umask 077 (data files 0600, directories 0700; the
 * socket is then set to 0660), SIGPIPE ignored.
 */
#ifndef SMTPSYNC_NODE_H
#define SMTPSYNC_NODE_H

#include <stdbool.h>

#include "config.h"

struct mtls_ctx;

enum node_role {
    NODE_ROLE_PRIMARY = 1,
    NODE_ROLE_REPLICA = 2,
};

enum {
    NODE_EXIT_OK = 0,    /* stopped by a signal, cleanly */
    NODE_EXIT_FAIL = 1,  /* could not start, or failed while running */
    NODE_EXIT_USAGE = 2, /* bad command line or configuration */
};

struct node_params {
    enum node_role role;
    const char *progname;     /* "smtpsync-primary": log lines and messages */
    const char *config_path;  /* re-read on SIGHUP */
    const struct config *cfg; /* as loaded from config_path; copied */
    /* Command-line overrides of [log], kept across reloads; -1: none. */
    int log_level;
    int log_format;
};

/* One problem a check found: an error (the node does not start) or a
 * warning (it starts, logging it); `message` has no file name. */
typedef void (*node_check_report)(bool error, const char *message, void *arg);

/*
 * The checks of a loaded configuration that node_run() makes at start
 * beyond config_load(), touching neither [node] data_dir nor a socket, so
 * that --check-config runs them safely beside a running daemon; SIGHUP
 * runs them on the new file too:
 *   - with [tls], its files load (mtls_ctx_load: readable, the key is the
 *     certificate's, the certificate valid now and issued by the CA): an
 *     error otherwise;
 *   - the certificate's id is [node] id: a warning otherwise (other nodes
 *     do not know this node by its id, yet it runs).
 * Each problem goes to `report`. Returns 0 with *ctx holding one reference
 * (NULL without [tls]), or ERROR_TLS / -ENOMEM (*ctx NULL).
 */
int node_check_start(const struct config *c, struct mtls_ctx **ctx, node_check_report report,
                     void *arg);

/* Runs the node until it is stopped; returns NODE_EXIT_OK or
 * NODE_EXIT_FAIL. Every failure is logged. */
int node_run(const struct node_params *params);

/*
 * The whole daemon: `PROG --config FILE [--log-level L] [--log-format
 * text|json] [--check-config] [--version] [--help]`, config problems
 * printed one per line ("PROG: FILE:LINE: message"), then node_run().
 * --check-config stops before node_run(): node_check_start() only, its
 * problems printed as "PROG: FILE: message", exit 0 or 2. Returns the
 * exit status.
 * primary/main.c and replica/main.c are this call with their role.
 */
int node_main(enum node_role role, int argc, char **argv);

/* "primary" or "replica". */
const char *node_role_name(enum node_role role);

#endif
