/*
 * metrics: see metrics.h.
 *
 * The event tables below are the one deliberate piece of process-wide
 * mutable state (STYLE.md point 4 otherwise forbids it). An event is counted
 * deep inside modules (the SMTP session, the replication handshake, the TLS
 * layer) that have no business carrying a metrics handle through every
 * constructor and callback; threading one through would touch every API for
 * a figure that means "this process" anyway, like log.h's settings. All
 * access is from the loop thread (metrics.h), so there are no locks.
 */
#include "metrics.h"

#include <errno.h>
#include <inttypes.h>
#include <math.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <openssl/x509_vfy.h>

#include "error.h"

#define OVERFLOW_VALUE "other"

/* ---- family descriptions (const) ---- */

struct family_desc {
    const char *name;
    const char *help;
    const char *labels[2]; /* label names; labels[1] NULL for one label */
};

static const struct family_desc counter_desc[METRICS_COUNTER_COUNT] = {
    [METRICS_REPL_PUSHES] = {"smtpsync_replication_pushes_total",
                             "Delta or Snapshot frames pushed to a replica, by outcome "
                             "(ok once acknowledged, failed when refused or lost).",
                             {"replica", "result"}},
    [METRICS_REPL_PUSH_BYTES] = {"smtpsync_replication_push_bytes_total",
                                 "Encoded size in octets of the frames pushed to a replica, "
                                 "by outcome.",
                                 {"replica", "result"}},
    [METRICS_DELIVERIES] = {"smtpsync_deliveries_total",
                            "Delivery outcomes: delivered (once per message, when no "
                            "recipient is left), deferred (per deferred attempt, partial "
                            "deliveries included), dead.",
                            {"priority", "result"}},
    [METRICS_TLS_HANDSHAKE_FAILURES] = {"smtpsync_tls_handshake_failures_total",
                                        "TLS handshakes that failed, by channel "
                                        "(replication, smtp) and reason.",
                                        {"channel", "reason"}},
};

static const struct family_desc histogram_desc[METRICS_HISTOGRAM_COUNT] = {
    [METRICS_DELIVERY_LATENCY] = {"smtpsync_delivery_latency_seconds",
                                  "Seconds from submission accepted to the server's 250 after "
                                  "DATA, once per message when its last recipient is delivered.",
                                  {"priority", NULL}},
};

/* Upper bounds of the latency buckets; +Inf is implicit (the last slot). */
static const double latency_bounds[] = {0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1,
                                        2.5,   5,    10,    30,   60,  300,  900, 3600};
#define LATENCY_BUCKETS (sizeof(latency_bounds) / sizeof(latency_bounds[0]))

/* ---- the event tables (process-wide, see the top of the file) ---- */

/* The label sets of one family. Slots 0..n-1 hold them in order of first
 * event, as malloc'd copies; slot METRICS_MAX_SERIES is the overflow
 * series ("other"; constant, never freed), used once the others are full
 * or a copy could not be allocated. A histogram's second value is "". */
struct series_keys {
    size_t n;
    bool overflow_used;
    char *a[METRICS_MAX_SERIES + 1], *b[METRICS_MAX_SERIES + 1];
};

struct counter_family {
    struct series_keys k;
    uint64_t value[METRICS_MAX_SERIES + 1];
};

struct histogram_values {
    uint64_t buckets[LATENCY_BUCKETS + 1]; /* per bucket, not cumulative; last is +Inf */
    uint64_t count;
    double sum;
};

struct histogram_family {
    struct series_keys k;
    struct histogram_values v[METRICS_MAX_SERIES + 1];
};

static struct counter_family counters[METRICS_COUNTER_COUNT];
static struct histogram_family histograms[METRICS_HISTOGRAM_COUNT];

static bool same(const char *x, const char *y)
{
    return strcmp(x, y) == 0;
}

/* The slot of label values (a, b), taken now if they are new: *fresh then
 * says so, and the caller zeroes the slot's figures. The overflow series is
 * ("other", "other") for a family of two labels, ("other", "") for one. */
static size_t series_slot(struct series_keys *k, const char *a, const char *b, bool two,
                          bool *fresh)
{
    const char *ob = two ? OVERFLOW_VALUE : "";
    char *ca, *cb;

    *fresh = false;
    for (size_t i = 0; i < k->n; i++)
        if (same(k->a[i], a) && same(k->b[i], b))
            return i;
    if (k->overflow_used && same(a, OVERFLOW_VALUE) && same(b, ob))
        return METRICS_MAX_SERIES;
    if (k->n < METRICS_MAX_SERIES) {
        ca = strdup(a);
        cb = strdup(b);
        if (ca != NULL && cb != NULL) {
            k->a[k->n] = ca;
            k->b[k->n] = cb;
            *fresh = true;
            return k->n++;
        }
        free(ca);
        free(cb);
    }
    /* A series that already carries the overflow values absorbs the rest,
     * so the same label set is never written twice. */
    for (size_t i = 0; i < k->n; i++)
        if (same(k->a[i], OVERFLOW_VALUE) && same(k->b[i], ob))
            return i;
    if (!k->overflow_used) {
        k->overflow_used = true;
        k->a[METRICS_MAX_SERIES] = (char *)OVERFLOW_VALUE;
        k->b[METRICS_MAX_SERIES] = two ? (char *)OVERFLOW_VALUE : (char *)"";
        *fresh = true;
    }
    return METRICS_MAX_SERIES;
}

static bool series_used(const struct series_keys *k, size_t i)
{
    return i == METRICS_MAX_SERIES ? k->overflow_used : i < k->n;
}

static void series_free(struct series_keys *k)
{
    for (size_t i = 0; i < k->n; i++) {
        free(k->a[i]);
        free(k->b[i]);
    }
}

void metrics_count(enum metrics_counter id, const char *a, const char *b, uint64_t n)
{
    struct counter_family *f;
    uint64_t *v;
    bool fresh;

    if ((unsigned)id >= METRICS_COUNTER_COUNT)
        return;
    if (counter_desc[id].labels[1] == NULL)
        b = NULL;
    f = &counters[id];
    v = &f->value[series_slot(&f->k, a != NULL ? a : "", b != NULL ? b : "",
                              counter_desc[id].labels[1] != NULL, &fresh)];
    if (fresh)
        *v = 0;
    /* A counter saturates rather than wrapping: a wrap would read as a
     * reset to rate(). */
    *v = n > UINT64_MAX - *v ? UINT64_MAX : *v + n;
}

void metrics_observe(enum metrics_histogram id, const char *a, double seconds)
{
    struct histogram_family *f;
    struct histogram_values *s;
    bool fresh;
    size_t i;

    /* A NaN would poison _sum for the life of the process; a negative
     * latency can only be a clock step and counts as 0. */
    if ((unsigned)id >= METRICS_HISTOGRAM_COUNT || isnan(seconds))
        return;
    if (seconds < 0)
        seconds = 0;
    f = &histograms[id];
    s = &f->v[series_slot(&f->k, a != NULL ? a : "", "", false, &fresh)];
    if (fresh)
        memset(s, 0, sizeof(*s));
    for (i = 0; i < LATENCY_BUCKETS && seconds > latency_bounds[i]; i++)
        ;
    s->buckets[i]++;
    s->count++;
    s->sum += seconds;
}

const char *metrics_tls_reason(long verify_result)
{
    switch (verify_result) {
    case X509_V_ERR_UNABLE_TO_GET_ISSUER_CERT:
    case X509_V_ERR_UNABLE_TO_GET_ISSUER_CERT_LOCALLY:
    case X509_V_ERR_UNABLE_TO_VERIFY_LEAF_SIGNATURE:
    case X509_V_ERR_DEPTH_ZERO_SELF_SIGNED_CERT:
    case X509_V_ERR_SELF_SIGNED_CERT_IN_CHAIN:
    case X509_V_ERR_CERT_UNTRUSTED:
        return METRICS_TLS_UNKNOWN_CA;
    case X509_V_ERR_CERT_HAS_EXPIRED:
        return METRICS_TLS_EXPIRED;
    case X509_V_ERR_CERT_NOT_YET_VALID:
        return METRICS_TLS_NOT_YET_VALID;
    case X509_V_ERR_HOSTNAME_MISMATCH:
    case X509_V_ERR_IP_ADDRESS_MISMATCH:
        return METRICS_TLS_HOSTNAME_MISMATCH;
    default:
        return METRICS_TLS_OTHER;
    }
}

void metrics_reset(void)
{
    for (size_t f = 0; f < METRICS_COUNTER_COUNT; f++) {
        series_free(&counters[f].k);
        memset(&counters[f], 0, sizeof(counters[f]));
    }
    for (size_t f = 0; f < METRICS_HISTOGRAM_COUNT; f++) {
        series_free(&histograms[f].k);
        memset(&histograms[f], 0, sizeof(histograms[f]));
    }
}

/* ---- output ---- */

struct metrics_out {
    char *buf;
    size_t len, cap;
    bool failed; /* an allocation failed: the body is incomplete */
};

static void out_append(struct metrics_out *o, const char *s, size_t n)
{
    size_t cap;
    char *p;

    if (o->failed)
        return;
    if (n > SIZE_MAX - 1 - o->len) {
        o->failed = true;
        return;
    }
    if (o->len + n + 1 > o->cap) {
        cap = o->cap != 0 ? o->cap : 4096;
        while (cap < o->len + n + 1)
            cap = cap > SIZE_MAX / 2 ? SIZE_MAX : cap * 2;
        p = realloc(o->buf, cap);
        if (p == NULL) {
            o->failed = true;
            return;
        }
        o->buf = p;
        o->cap = cap;
    }
    memcpy(o->buf + o->len, s, n);
    o->len += n;
    o->buf[o->len] = '\0';
}

static void out_str(struct metrics_out *o, const char *s)
{
    out_append(o, s, strlen(s));
}

/* Escapes backslash and newline, and the double quote too when `quote`
 * (label values; HELP text keeps its quotes, as the format says). */
static void out_escaped(struct metrics_out *o, const char *s, bool quote)
{
    const char *run = s;

    for (; *s != '\0'; s++) {
        const char *esc = NULL;

        if (*s == '\\')
            esc = "\\\\";
        else if (*s == '\n')
            esc = "\\n";
        else if (*s == '"' && quote)
            esc = "\\\"";
        if (esc != NULL) {
            out_append(o, run, (size_t)(s - run));
            out_str(o, esc);
            run = s + 1;
        }
    }
    out_append(o, run, (size_t)(s - run));
}

/* A sample value or an `le` bound, as Go's ParseFloat (Prometheus) reads
 * it: integral values without exponent or fraction, others in the
 * shortest form that reads back as the same double. (No libm: the
 * library does not link it.) */
static void format_number(char *buf, size_t len, double v)
{
    if (isnan(v)) {
        snprintf(buf, len, "NaN");
    } else if (isinf(v)) {
        snprintf(buf, len, v > 0 ? "+Inf" : "-Inf");
    } else if (v > -1e15 && v < 1e15 && v == (double)(long long)v) {
        snprintf(buf, len, "%.0f", v == 0 ? 0.0 : v);
    } else {
        for (int prec = 15; prec <= 17; prec++) {
            snprintf(buf, len, "%.*g", prec, v);
            if (strtod(buf, NULL) == v)
                break;
        }
    }
}

static const char *type_name(enum metrics_type type)
{
    switch (type) {
    case METRICS_GAUGE:
        return "gauge";
    case METRICS_COUNTER:
        return "counter";
    case METRICS_HISTOGRAM:
        return "histogram";
    }
    return "untyped";
}

void metrics_family(struct metrics_out *o, const char *name, enum metrics_type type,
                    const char *help)
{
    out_str(o, "# HELP ");
    out_str(o, name);
    out_str(o, " ");
    out_escaped(o, help != NULL ? help : "", false);
    out_str(o, "\n# TYPE ");
    out_str(o, name);
    out_str(o, " ");
    out_str(o, type_name(type));
    out_str(o, "\n");
}

/* One sample line with its value already formatted; `extra_name` and
 * `extra_value` add one label after `labels` (the histogram's le). */
static void out_sample(struct metrics_out *o, const char *name, const char *const *labels,
                       const char *extra_name, const char *extra_value, const char *value)
{
    bool any = false;

    out_str(o, name);
    for (size_t i = 0; labels != NULL && labels[i] != NULL; i += 2) {
        out_str(o, any ? "," : "{");
        out_str(o, labels[i]);
        out_str(o, "=\"");
        /* An odd list (a name without its value) gives "" rather than
         * reading past the terminator. */
        if (labels[i + 1] == NULL) {
            out_str(o, "\"");
            any = true;
            break;
        }
        out_escaped(o, labels[i + 1], true);
        out_str(o, "\"");
        any = true;
    }
    if (extra_name != NULL) {
        out_str(o, any ? "," : "{");
        out_str(o, extra_name);
        out_str(o, "=\"");
        out_escaped(o, extra_value, true);
        out_str(o, "\"");
        any = true;
    }
    if (any)
        out_str(o, "}");
    out_str(o, " ");
    out_str(o, value);
    out_str(o, "\n");
}

void metrics_sample(struct metrics_out *o, const char *name, const char *const *labels,
                    double value)
{
    char num[64];

    format_number(num, sizeof(num), value);
    out_sample(o, name, labels, NULL, NULL, num);
}

static void render_counter(struct metrics_out *o, enum metrics_counter id)
{
    const struct family_desc *d = &counter_desc[id];
    const struct counter_family *f = &counters[id];
    char num[32];

    metrics_family(o, d->name, METRICS_COUNTER, d->help);
    for (size_t i = 0; i <= METRICS_MAX_SERIES; i++) {
        if (!series_used(&f->k, i))
            continue;
        snprintf(num, sizeof(num), "%" PRIu64, f->value[i]);
        out_sample(o, d->name,
                   (const char *const[]){d->labels[0], f->k.a[i], d->labels[1],
                                         d->labels[1] != NULL ? f->k.b[i] : NULL, NULL},
                   NULL, NULL, num);
    }
}

static void render_histogram(struct metrics_out *o, enum metrics_histogram id)
{
    const struct family_desc *d = &histogram_desc[id];
    const struct histogram_family *f = &histograms[id];
    char name[128], num[64], le[64];

    metrics_family(o, d->name, METRICS_HISTOGRAM, d->help);
    for (size_t i = 0; i <= METRICS_MAX_SERIES; i++) {
        const struct histogram_values *s = &f->v[i];
        const char *const labels[] = {d->labels[0], f->k.a[i], NULL};
        uint64_t cumulative = 0;

        if (!series_used(&f->k, i))
            continue;
        snprintf(name, sizeof(name), "%s_bucket", d->name);
        for (size_t b = 0; b <= LATENCY_BUCKETS; b++) {
            cumulative += s->buckets[b];
            if (b < LATENCY_BUCKETS)
                format_number(le, sizeof(le), latency_bounds[b]);
            else
                snprintf(le, sizeof(le), "+Inf");
            snprintf(num, sizeof(num), "%" PRIu64, cumulative);
            out_sample(o, name, labels, "le", le, num);
        }
        snprintf(name, sizeof(name), "%s_sum", d->name);
        format_number(num, sizeof(num), s->sum);
        out_sample(o, name, labels, NULL, NULL, num);
        snprintf(name, sizeof(name), "%s_count", d->name);
        snprintf(num, sizeof(num), "%" PRIu64, s->count);
        out_sample(o, name, labels, NULL, NULL, num);
    }
}

int metrics_render(metrics_collect_cb collect, void *arg, char **body, size_t *len)
{
    struct metrics_out o = {0};

    *body = NULL;
    *len = 0;
    if (collect != NULL)
        collect(&o, arg);
    for (int id = 0; id < METRICS_COUNTER_COUNT; id++)
        render_counter(&o, (enum metrics_counter)id);
    for (int id = 0; id < METRICS_HISTOGRAM_COUNT; id++)
        render_histogram(&o, (enum metrics_histogram)id);
    if (o.failed || o.buf == NULL) {
        free(o.buf);
        return -ENOMEM;
    }
    *body = o.buf;
    *len = o.len;
    return 0;
}
