/*
 * metrics: the daemon's Prometheus metrics.
 *
 * Two kinds of figures, kept apart on purpose:
 *
 *   events   counters and histograms bumped where the event happens (a
 *            push acknowledged, a mail delivered, a TLS handshake refused).
 *            They live in one process-wide table, so a module needs no
 *            handle to count: metrics_count() / metrics_observe().
 *   state    gauges read at scrape time from the module that owns the
 *            state (revision, epoch, replica lag, outbox depth, expiry).
 *            The daemon registers one collector that writes them through
 *            metrics_out; nothing is copied between scrapes.
 *
 * Every function runs on the loop thread only; there are no locks. Label
 * values are escaped on output (\\, \", \n), so any string may be passed;
 * a family keeps at most METRICS_MAX_SERIES label combinations and counts
 * the rest under the value "other" rather than growing without bound.
 *
 * Names follow Prometheus conventions: smtpsync_ prefix, _total for
 * counters, base units (seconds, bytes). docs/OPERATIONS.md lists them.
 */
#ifndef SMTPSYNC_METRICS_H
#define SMTPSYNC_METRICS_H

#include <stddef.h>
#include <stdint.h>

#define METRICS_MAX_SERIES 64

/* Event counters, one label set each (the label names are fixed per id). */
enum metrics_counter {
    /* smtpsync_replication_pushes_total{replica, result}: Delta or
     * Snapshot frames sent; result "ok" once acknowledged, "failed" when
     * the replica refused it or the connection was lost before the Ack. */
    METRICS_REPL_PUSHES,
    /* smtpsync_replication_push_bytes_total{replica, result}: their
     * encoded size in octets, by the same result. */
    METRICS_REPL_PUSH_BYTES,
    /* smtpsync_deliveries_total{priority, result}: "delivered" once per
     * message, when its last recipient is accepted; "deferred" per attempt
     * that left recipients to retry (a partial delivery included); "dead"
     * once per message. */
    METRICS_DELIVERIES,
    /* smtpsync_tls_handshake_failures_total{channel, reason}: channel
     * "replication" (mTLS, both directions) or "smtp" (to the mail server);
     * reason one of the METRICS_TLS_* strings below. */
    METRICS_TLS_HANDSHAKE_FAILURES,
    METRICS_COUNTER_COUNT
};

/* Event histograms. */
enum metrics_histogram {
    /* smtpsync_delivery_latency_seconds{priority}: submission accepted to
     * the server's 250 after DATA, once per message, when its last
     * recipient is accepted. Buckets from 5 ms to
     * 1 h, so both a tokencode's milliseconds and a deferred report's
     * retries land in a bucket that means something. */
    METRICS_DELIVERY_LATENCY,
    METRICS_HISTOGRAM_COUNT
};

/* Reasons for METRICS_TLS_HANDSHAKE_FAILURES, a small closed set so the
 * series stay few. metrics_tls_reason() maps an X509 verify result. */
#define METRICS_TLS_UNKNOWN_CA        "unknown_ca"
#define METRICS_TLS_EXPIRED           "expired"
#define METRICS_TLS_NOT_YET_VALID     "not_yet_valid"
#define METRICS_TLS_HOSTNAME_MISMATCH "hostname_mismatch"
#define METRICS_TLS_NOT_AUTHORIZED    "not_authorized" /* mTLS: not a member or admin */
#define METRICS_TLS_PROTOCOL          "protocol"       /* version, cipher, bad record */
#define METRICS_TLS_TIMEOUT           "timeout"
#define METRICS_TLS_OTHER             "other"

/* Adds `n` to the counter's series for the label values (a, b); b is
 * ignored by families with one label. NULL counts as "". */
void metrics_count(enum metrics_counter id, const char *a, const char *b, uint64_t n);
/* Records one observation (in seconds) under label value `a`. */
void metrics_observe(enum metrics_histogram id, const char *a, double seconds);
/* The reason string for an X509_V_ERR_* verify result (X509_V_OK and
 * unknown codes give METRICS_TLS_OTHER). */
const char *metrics_tls_reason(long verify_result);
/* Forgets every event figure (tests). */
void metrics_reset(void);

/* ---- output (scrape time) ---- */

/* A growing text buffer in the Prometheus text exposition format 0.0.4.
 * On allocation failure it stops growing and remembers it; metrics_render()
 * then fails, so the scrape is answered 500 rather than with a truncated
 * body. */
struct metrics_out;

enum metrics_type { METRICS_GAUGE, METRICS_COUNTER, METRICS_HISTOGRAM };

/* Starts a family: its # HELP and # TYPE lines. Each family once. */
void metrics_family(struct metrics_out *o, const char *name, enum metrics_type type,
                    const char *help);
/* One sample of the current family. `labels` is NULL or a NULL-terminated
 * list of name, value pairs: (const char *[]){"replica", id, NULL}. */
void metrics_sample(struct metrics_out *o, const char *name, const char *const *labels,
                    double value);

/* Collectors write the state gauges; `arg` is what was registered. */
typedef void (*metrics_collect_cb)(struct metrics_out *o, void *arg);

/* Renders everything: the collector's gauges, then the event families
 * (every family is present, with no samples until its first event).
 * Returns 0 and the body (caller frees) or -ENOMEM. */
int metrics_render(metrics_collect_cb collect, void *arg, char **body, size_t *len);

#endif
