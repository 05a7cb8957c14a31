/*
 * node_metrics: the node's state gauges for GET /metrics (metrics.h), read
 * from the modules that own the state at scrape time, nothing cached.
 * Every name and label is in the table at the top of node_metrics.c.
 *
 * node.c builds a node_metrics_source from the node at each scrape (the
 * sender is replaced on a reload, replication may be off) and hands it to
 * node_metrics_write(). Everything runs on the loop thread.
 */
#ifndef SMTPSYNC_NODE_METRICS_H
#define SMTPSYNC_NODE_METRICS_H

#include <stdbool.h>

#include "metrics.h"
#include "mtls.h"
#include "outbox.h"
#include "repl.h"
#include "sender.h"
#include "store.h"

/* What the gauges are read from; all borrowed for the call. */
struct node_metrics_source {
    const char *node_id; /* [node] id: the label of smtpsync_info, the instance of the settings */
    const char *role;    /* "primary" or "replica": what the node is now */
    const char *version;
    struct store *store;
    struct outbox *outbox;  /* NULL: no outbox gauges */
    struct sender *sender;  /* NULL while it restarts: no sender gauges */
    struct mtls_ctx *ctx;   /* NULL without [tls]: no node/ca certificate gauges */
    struct repl_node *repl; /* NULL without [tls]: no replica gauges */
};

/* Writes every gauge family, with the samples that can be read now; a
 * figure that cannot be read (a store error) leaves its family empty. */
void node_metrics_write(struct metrics_out *o, const struct node_metrics_source *src);

/* The "state" label value of a replica state ("in_sync", ...); NULL for
 * a value outside the known set. */
const char *node_metrics_replica_state(Smtpsync__ReplicaState s);

#endif
