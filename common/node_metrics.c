/*
 * node_metrics: the node's state gauges (node_metrics.h).
 *
 * Every metric the daemons export, state gauges (written here) and event
 * counters (metrics.h, counted where they happen):
 *
 *   name                                            type       labels
 *   smtpsync_info                                   gauge      node, role, version (always 1)
 *   smtpsync_store_revision                         gauge      -
 *   smtpsync_epoch                                  gauge      -
 *   smtpsync_replica_state                          gauge      replica, state (state set: 1 for
 *                                                              the current state, 0 for the others)
 *   smtpsync_replica_revision                       gauge      replica
 *   smtpsync_replica_lag_revisions                  gauge      replica
 *   smtpsync_replica_last_success_timestamp_seconds gauge      replica (no sample: never)
 *   smtpsync_primary_last_contact_timestamp_seconds gauge      - (no sample: never)
 *   smtpsync_outbox_messages                        gauge      priority, state
 *   smtpsync_sender_sessions_active                 gauge      -
 *   smtpsync_settings_revision_in_use               gauge      -
 *   smtpsync_certificate_expiry_timestamp_seconds   gauge      cert
 *   smtpsync_replication_pushes_total               counter    replica, result
 *   smtpsync_replication_push_bytes_total           counter    replica, result
 *   smtpsync_deliveries_total                       counter    priority, result
 *   smtpsync_delivery_latency_seconds               histogram  priority
 *   smtpsync_tls_handshake_failures_total           counter    channel, reason
 *
 * Label values:
 *   role       primary, replica (what the node is now: a promoted replica
 *              daemon says primary)
 *   state      replica: never_synced, in_sync, behind, syncing, unreachable,
 *              diverged, fenced; outbox: pending (by priority), dead (no
 *              priority label: the outbox counts dead mail as a whole)
 *   priority   tokencode, report
 *   cert       node and ca ([tls]: this node's certificate and the earliest
 *              notAfter of the CA file), smtp_trusted (the earliest notAfter
 *              of the trust_certificate bundle imported in this node's own
 *              SMTP settings)
 *   result     pushes: ok (acknowledged), failed (refused, answered
 *              otherwise, or the connection lost before the Ack);
 *              deliveries: delivered, deferred, dead
 *   channel    replication (the mTLS port, both directions), smtp (the mail
 *              server: every session, Test Connection included)
 *   reason     metrics.h METRICS_TLS_*
 *
 * Replica gauges come only from the primary (it is the one that knows
 * them); smtpsync_primary_last_contact_timestamp_seconds only from a node
 * that is not the primary. Timestamps are Unix seconds.
 */
#include "node_metrics.h"

#include <inttypes.h>
#include <stdio.h>
#include <string.h>

#include <openssl/x509.h>

#include "pem.h"
#include "settings.h"

static const struct {
    Smtpsync__ReplicaState state;
    const char *label;
} replica_states[] = {
    {SMTPSYNC__REPLICA_STATE__REPLICA_STATE_NEVER_SYNCED, "never_synced"},
    {SMTPSYNC__REPLICA_STATE__REPLICA_STATE_IN_SYNC, "in_sync"},
    {SMTPSYNC__REPLICA_STATE__REPLICA_STATE_BEHIND, "behind"},
    {SMTPSYNC__REPLICA_STATE__REPLICA_STATE_SYNCING, "syncing"},
    {SMTPSYNC__REPLICA_STATE__REPLICA_STATE_UNREACHABLE, "unreachable"},
    {SMTPSYNC__REPLICA_STATE__REPLICA_STATE_DIVERGED, "diverged"},
    {SMTPSYNC__REPLICA_STATE__REPLICA_STATE_FENCED, "fenced"},
};

#define NSTATES (sizeof(replica_states) / sizeof(replica_states[0]))

const char *node_metrics_replica_state(Smtpsync__ReplicaState s)
{
    for (size_t i = 0; i < NSTATES; i++)
        if (replica_states[i].state == s)
            return replica_states[i].label;
    return NULL;
}

static void write_node(struct metrics_out *o, const struct node_metrics_source *src)
{
    struct store_info info;
    bool have = src->store != NULL && store_info(src->store, &info) == 0;

    metrics_family(o, "smtpsync_info", METRICS_GAUGE,
                   "This node: its id, its role now and the daemon's version (always 1).");
    metrics_sample(
        o, "smtpsync_info",
        (const char *[]){"node", src->node_id, "role", src->role, "version", src->version, NULL},
        1);
    metrics_family(o, "smtpsync_store_revision", METRICS_GAUGE,
                   "The settings revision this node's store holds.");
    if (have)
        metrics_sample(o, "smtpsync_store_revision", NULL, (double)info.revision);
    metrics_family(o, "smtpsync_epoch", METRICS_GAUGE,
                   "The membership epoch this node's store holds (raised by each promotion).");
    if (have)
        metrics_sample(o, "smtpsync_epoch", NULL, (double)info.epoch);
}

/* The replica gauges (primary) and the primary's last contact (others),
 * from the status the admin API shows. */
static void write_replication(struct metrics_out *o, const struct node_metrics_source *src)
{
    Smtpsync__StatusReply *st = NULL;
    size_t n;

    if (src->repl != NULL && repl_node_status(src->repl, &st) != 0)
        st = NULL;
    n = st != NULL ? st->n_replicas : 0;

    metrics_family(o, "smtpsync_replica_state", METRICS_GAUGE,
                   "Primary: each replica's state (1 for the current state, 0 for the others).");
    for (size_t i = 0; i < n; i++)
        for (size_t k = 0; k < NSTATES; k++)
            metrics_sample(o, "smtpsync_replica_state",
                           (const char *[]){"replica", st->replicas[i]->id, "state",
                                            replica_states[k].label, NULL},
                           st->replicas[i]->state == replica_states[k].state ? 1 : 0);
    metrics_family(o, "smtpsync_replica_revision", METRICS_GAUGE,
                   "Primary: the revision each replica acknowledged.");
    for (size_t i = 0; i < n; i++)
        metrics_sample(o, "smtpsync_replica_revision",
                       (const char *[]){"replica", st->replicas[i]->id, NULL},
                       (double)st->replicas[i]->applied_revision);
    metrics_family(o, "smtpsync_replica_lag_revisions", METRICS_GAUGE,
                   "Primary: revisions each replica lacks.");
    for (size_t i = 0; i < n; i++)
        metrics_sample(o, "smtpsync_replica_lag_revisions",
                       (const char *[]){"replica", st->replicas[i]->id, NULL},
                       (double)st->replicas[i]->lag_revisions);
    metrics_family(o, "smtpsync_replica_last_success_timestamp_seconds", METRICS_GAUGE,
                   "Primary: when each replica was last in sync (no sample: never).");
    for (size_t i = 0; i < n; i++)
        if (st->replicas[i]->last_success_ms > 0)
            metrics_sample(o, "smtpsync_replica_last_success_timestamp_seconds",
                           (const char *[]){"replica", st->replicas[i]->id, NULL},
                           (double)st->replicas[i]->last_success_ms / 1000.0);
    metrics_family(o, "smtpsync_primary_last_contact_timestamp_seconds", METRICS_GAUGE,
                   "Replica: when the primary was last heard from (no sample: never since this "
                   "process started).");
    if (st != NULL && st->node != NULL && st->node->role != SMTPSYNC__ROLE__ROLE_PRIMARY &&
        st->node->last_push_ms > 0)
        metrics_sample(o, "smtpsync_primary_last_contact_timestamp_seconds", NULL,
                       (double)st->node->last_push_ms / 1000.0);
    if (st != NULL)
        smtpsync__status_reply__free_unpacked(st, NULL);
}

static void write_outbox(struct metrics_out *o, const struct node_metrics_source *src)
{
    struct outbox_depth d;
    bool have = src->outbox != NULL && outbox_depth(src->outbox, &d) == 0;

    metrics_family(o, "smtpsync_outbox_messages", METRICS_GAUGE,
                   "Mail in the outbox: pending by priority, and dead.");
    if (!have)
        return;
    metrics_sample(o, "smtpsync_outbox_messages",
                   (const char *[]){"priority", outbox_priority_name(OUTBOX_TOKENCODE), "state",
                                    "pending", NULL},
                   (double)d.pending[OUTBOX_TOKENCODE]);
    metrics_sample(
        o, "smtpsync_outbox_messages",
        (const char *[]){"priority", outbox_priority_name(OUTBOX_REPORT), "state", "pending", NULL},
        (double)d.pending[OUTBOX_REPORT]);
    metrics_sample(o, "smtpsync_outbox_messages", (const char *[]){"state", "dead", NULL},
                   (double)d.dead);
}

static void write_sender(struct metrics_out *o, const struct node_metrics_source *src)
{
    struct sender_stats st;

    if (src->sender != NULL)
        sender_stats(src->sender, &st);
    metrics_family(o, "smtpsync_sender_sessions_active", METRICS_GAUGE,
                   "SMTP sessions the sender has open now.");
    if (src->sender != NULL)
        metrics_sample(o, "smtpsync_sender_sessions_active", NULL, (double)st.sessions_active);
    metrics_family(o, "smtpsync_settings_revision_in_use", METRICS_GAUGE,
                   "The settings revision the sender delivers with (0: none loaded yet).");
    if (src->sender != NULL)
        metrics_sample(o, "smtpsync_settings_revision_in_use", NULL, (double)st.settings_revision);
}

/* The earliest notAfter of the trust_certificate bundle of this node's own
 * settings; -1 without one. */
static long long smtp_trusted_expiry(const struct node_metrics_source *src)
{
    struct settings s;
    STACK_OF(X509) *certs = NULL;
    long long earliest = -1;
    char why[128];

    if (src->store == NULL)
        return -1;
    settings_init(&s);
    if (store_get(src->store, src->node_id, 0, 0, &s) == 0 && s.trust_certificate != NULL &&
        pem_read_certs(s.trust_certificate, strlen(s.trust_certificate), &certs, why,
                       sizeof(why)) == 0) {
        earliest = pem_earliest_not_after(certs);
        sk_X509_pop_free(certs, X509_free);
    }
    settings_clear(&s);
    return earliest;
}

static void write_certs(struct metrics_out *o, const struct node_metrics_source *src)
{
    const char *const name = "smtpsync_certificate_expiry_timestamp_seconds";
    long long smtp = smtp_trusted_expiry(src);

    metrics_family(o, name, METRICS_GAUGE,
                   "notAfter of the certificates this node relies on: node and ca ([tls]), "
                   "smtp_trusted (the SMTP trust_certificate imported in its settings; the "
                   "earliest of the bundle).");
    if (src->ctx != NULL) {
        metrics_sample(o, name, (const char *[]){"cert", "node", NULL},
                       (double)mtls_ctx_expiry(src->ctx));
        if (mtls_ctx_ca_expiry(src->ctx) >= 0)
            metrics_sample(o, name, (const char *[]){"cert", "ca", NULL},
                           (double)mtls_ctx_ca_expiry(src->ctx));
    }
    if (smtp >= 0)
        metrics_sample(o, name, (const char *[]){"cert", "smtp_trusted", NULL}, (double)smtp);
}

void node_metrics_write(struct metrics_out *o, const struct node_metrics_source *src)
{
    write_node(o, src);
    write_replication(o, src);
    write_outbox(o, src);
    write_sender(o, src);
    write_certs(o, src);
}
