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

#include "config.h"

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

/* Runs the node until it is stopped; returns NODE_EXIT_OK or
 * NODE_EXIT_FAIL. Every failure is logged. */
int node_run(const struct node_params *params);

/*
 * The whole daemon: `PROG --config FILE [--log-level L] [--log-format
 * text|json] [--version] [--help]`, config problems printed one per line
 * ("PROG: FILE:LINE: message"), then node_run(). Returns the exit status.
 * primary/main.c and replica/main.c are this call with their role.
 */
int node_main(enum node_role role, int argc, char **argv);

/* "primary" or "replica". */
const char *node_role_name(enum node_role role);

#endif
