/*
 * bench_submit: durable submissions through a daemon's submission socket,
 * as fast as C parallel submitters can make them.
 *
 *   bench_submit --socket PATH --count N [--concurrency C] [--size OCTETS]
 *                [--priority tokencode|report] [--rcpt ADDRESS] [--pace MS]
 *                [--trace FILE]
 *
 * Each of C threads opens its own connection per submission (submit_call(),
 * exactly what `smtpsyncctl send` does, without the process start) and
 * waits for the reply, which the daemon sends only after the outbox commit.
 * --pace waits that many milliseconds between a thread's submissions, for
 * latency runs in which the queue never builds up. --trace writes one line
 * "ID CALL_MS" per accepted submission: the outbox id and the wall-clock
 * time (milliseconds since the epoch, three decimals) at which
 * submit_call() was entered, so that the run script can measure enqueue to
 * the server's 250 from the submitter's side, against the daemon's log.
 *
 * Prints one line of key=value pairs on stdout, for tests/bench/run:
 *   submitted=N failed=F seconds=S rate=R p50_ms=A p99_ms=B max_ms=M
 * where the latencies are those of submit_call(), i.e. until the id of the
 * committed message is back. Exits 1 if any submission failed.
 */
#include <errno.h>
#include <inttypes.h>
#include <pthread.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "submit.h"

#define BENCH_THREADS_MAX 256
#define BENCH_COUNT_MAX   10000000u
#define BENCH_SIZE_MAX    (1024u * 1024)
#define BENCH_LINE        76 /* body line length, as a mail client would wrap */

struct bench_params {
    const char *socket;
    unsigned count;
    unsigned concurrency;
    size_t size;
    Smtpsync__Priority priority;
    const char *rcpt;
    unsigned pace_ms;
    const char *trace;
};

/* One thread's share and what it measured. */
struct bench_worker {
    pthread_t thread;
    const struct bench_params *p;
    const char *message;
    size_t message_len;
    unsigned first, count; /* submissions [first, first + count) */
    double *latency_ms;    /* count entries, owned by main */
    uint64_t *ids;         /* count entries, owned by main; 0: failed */
    double *call_wall_ms;  /* count entries, owned by main */
    unsigned failed;
    char last_error[256];
};

static double now_ms(void)
{
    struct timespec ts;

    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec * 1e3 + (double)ts.tv_nsec / 1e6;
}

static double wall_ms(void)
{
    struct timespec ts;

    clock_gettime(CLOCK_REALTIME, &ts);
    return (double)ts.tv_sec * 1e3 + (double)ts.tv_nsec / 1e6;
}

static void sleep_ms(unsigned ms)
{
    struct timespec ts = {.tv_sec = ms / 1000, .tv_nsec = (long)(ms % 1000) * 1000000L};

    while (nanosleep(&ts, &ts) != 0 && errno == EINTR)
        ;
}

/* "To: RCPT\r\nSubject: bench\r\n\r\n" and `size` octets of body in CRLF
 * lines; the daemon adds Date and Message-ID. Returns a malloc'd string. */
static char *bench_message(const char *rcpt, size_t size, size_t *len)
{
    static const char alphabet[] = "abcdefghijklmnopqrstuvwxyz0123456789";
    size_t cap = strlen(rcpt) + 64 + size + 2, n;
    char *msg = malloc(cap);

    if (msg == NULL)
        return NULL;
    n = (size_t)snprintf(msg, cap, "To: <%s>\r\nSubject: smtpsync bench\r\n\r\n", rcpt);
    /* Full lines, then one shorter line with what is left. */
    for (size_t left = size; left >= 2;) {
        size_t line = left - 2 < BENCH_LINE ? left - 2 : BENCH_LINE;

        for (size_t i = 0; i < line; i++)
            msg[n++] = alphabet[i % (sizeof(alphabet) - 1)];
        msg[n++] = '\r';
        msg[n++] = '\n';
        left -= line + 2;
    }
    msg[n] = '\0';
    *len = n;
    return msg;
}

static void *bench_worker_run(void *arg)
{
    struct bench_worker *w = arg;
    const char *rcpts[1] = {w->p->rcpt};
    Smtpsync__SubmitRequest req = SMTPSYNC__SUBMIT_REQUEST__INIT;
    Smtpsync__Frame frame = SMTPSYNC__FRAME__INIT;

    req.priority = w->p->priority;
    req.n_rcpt_to = 1;
    /* protobuf-c only reads through these pointers when packing. */
    req.rcpt_to = (char **)(uintptr_t)rcpts;
    req.message.data = (uint8_t *)(uintptr_t)w->message;
    req.message.len = w->message_len;
    frame.body_case = SMTPSYNC__FRAME__BODY_SUBMIT;
    frame.submit = &req;

    for (unsigned i = 0; i < w->count; i++) {
        Smtpsync__Frame *reply = NULL;
        char why[256] = "";
        double t0;
        int err;

        if (i > 0 && w->p->pace_ms > 0)
            sleep_ms(w->p->pace_ms);
        frame.id = w->first + i + 1;
        w->call_wall_ms[i] = wall_ms();
        t0 = now_ms();
        err = submit_call(w->p->socket, &frame, 0, &reply, why, sizeof(why));
        w->latency_ms[i] = now_ms() - t0;
        if (err == 0 && reply->body_case == SMTPSYNC__FRAME__BODY_SUBMIT_REPLY &&
            reply->submit_reply->id > 0) {
            w->ids[i] = reply->submit_reply->id;
            smtpsync__frame__free_unpacked(reply, NULL);
            continue;
        }
        w->failed++;
        if (err != 0)
            snprintf(w->last_error, sizeof(w->last_error), "%s",
                     why[0] != '\0' ? why : strerror(-err));
        else if (reply->body_case == SMTPSYNC__FRAME__BODY_SUBMIT_REPLY)
            snprintf(w->last_error, sizeof(w->last_error), "refused: %s",
                     reply->submit_reply->error);
        else
            snprintf(w->last_error, sizeof(w->last_error), "unexpected reply");
        if (reply != NULL)
            smtpsync__frame__free_unpacked(reply, NULL);
    }
    return NULL;
}

static int write_trace(const char *path, const uint64_t *ids, const double *call_wall_ms,
                       unsigned count)
{
    FILE *f = fopen(path, "w");

    if (f == NULL) {
        fprintf(stderr, "bench_submit: %s: %s\n", path, strerror(errno));
        return -1;
    }
    for (unsigned i = 0; i < count; i++)
        if (ids[i] > 0)
            fprintf(f, "%" PRIu64 " %.3f\n", ids[i], call_wall_ms[i]);
    if (fclose(f) != 0) {
        fprintf(stderr, "bench_submit: %s: %s\n", path, strerror(errno));
        return -1;
    }
    return 0;
}

static int cmp_double(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;

    return (x > y) - (x < y);
}

/* The nearest-rank percentile of sorted v[0..n). */
static double percentile(const double *v, size_t n, double pct)
{
    size_t rank = (size_t)((pct / 100.0) * (double)n + 0.999999);

    if (n == 0)
        return 0;
    if (rank < 1)
        rank = 1;
    return v[(rank > n ? n : rank) - 1];
}

static int usage(const char *why)
{
    fprintf(stderr,
            "bench_submit: %s\n"
            "usage: bench_submit --socket PATH --count N [--concurrency C] [--size OCTETS]\n"
            "                    [--priority tokencode|report] [--rcpt ADDRESS] [--pace MS]\n"
            "                    [--trace FILE]\n",
            why);
    return 2;
}

static bool parse_uint(const char *text, unsigned long max, unsigned long *out)
{
    char *end;
    unsigned long v;

    errno = 0;
    v = strtoul(text, &end, 10);
    if (errno != 0 || end == text || *end != '\0' || text[0] == '-' || v > max)
        return false;
    *out = v;
    return true;
}

static int parse_args(int argc, char **argv, struct bench_params *p)
{
    for (int i = 1; i < argc; i++) {
        const char *opt = argv[i], *val = i + 1 < argc ? argv[i + 1] : NULL;
        unsigned long v;

        if (val == NULL)
            return usage("an option is missing its value");
        i++;
        if (strcmp(opt, "--socket") == 0) {
            p->socket = val;
        } else if (strcmp(opt, "--trace") == 0) {
            p->trace = val;
        } else if (strcmp(opt, "--rcpt") == 0) {
            p->rcpt = val;
        } else if (strcmp(opt, "--priority") == 0) {
            if (strcmp(val, "tokencode") == 0)
                p->priority = SMTPSYNC__PRIORITY__PRIORITY_TOKENCODE;
            else if (strcmp(val, "report") == 0)
                p->priority = SMTPSYNC__PRIORITY__PRIORITY_REPORT;
            else
                return usage("--priority is tokencode or report");
        } else if (strcmp(opt, "--count") == 0 && parse_uint(val, BENCH_COUNT_MAX, &v) && v > 0) {
            p->count = (unsigned)v;
        } else if (strcmp(opt, "--concurrency") == 0 && parse_uint(val, BENCH_THREADS_MAX, &v) &&
                   v > 0) {
            p->concurrency = (unsigned)v;
        } else if (strcmp(opt, "--size") == 0 && parse_uint(val, BENCH_SIZE_MAX, &v)) {
            p->size = v;
        } else if (strcmp(opt, "--pace") == 0 && parse_uint(val, 60000, &v)) {
            p->pace_ms = (unsigned)v;
        } else {
            return usage("unknown option or bad value");
        }
    }
    if (p->socket == NULL || p->count == 0)
        return usage("--socket and --count are required");
    return 0;
}

int main(int argc, char **argv)
{
    struct bench_params p = {.concurrency = 1,
                             .size = 1024,
                             .priority = SMTPSYNC__PRIORITY__PRIORITY_REPORT,
                             .rcpt = "bench@example.com"};
    struct bench_worker *workers = NULL;
    double *latency = NULL, *call_wall = NULL, t0, seconds;
    uint64_t *ids = NULL;
    unsigned failed = 0, started = 0;
    size_t message_len;
    char *message = NULL;
    int rc;

    if ((rc = parse_args(argc, argv, &p)) != 0)
        return rc;
    if (p.concurrency > p.count)
        p.concurrency = p.count;
    message = bench_message(p.rcpt, p.size, &message_len);
    workers = calloc(p.concurrency, sizeof(*workers));
    latency = calloc(p.count, sizeof(*latency));
    call_wall = calloc(p.count, sizeof(*call_wall));
    ids = calloc(p.count, sizeof(*ids));
    if (message == NULL || workers == NULL || latency == NULL || call_wall == NULL || ids == NULL) {
        fprintf(stderr, "bench_submit: out of memory\n");
        rc = 1;
        goto out;
    }

    t0 = now_ms();
    for (unsigned i = 0, first = 0; i < p.concurrency; i++) {
        struct bench_worker *w = &workers[i];

        w->p = &p;
        w->message = message;
        w->message_len = message_len;
        w->first = first;
        w->count = p.count / p.concurrency + (i < p.count % p.concurrency ? 1 : 0);
        w->latency_ms = latency + first;
        w->call_wall_ms = call_wall + first;
        w->ids = ids + first;
        first += w->count;
        if ((rc = pthread_create(&w->thread, NULL, bench_worker_run, w)) != 0) {
            fprintf(stderr, "bench_submit: pthread_create: %s\n", strerror(rc));
            break;
        }
        started++;
    }
    for (unsigned i = 0; i < started; i++)
        pthread_join(workers[i].thread, NULL);
    seconds = (now_ms() - t0) / 1e3;
    if (started < p.concurrency) {
        rc = 1;
        goto out;
    }

    for (unsigned i = 0; i < p.concurrency; i++) {
        failed += workers[i].failed;
        if (workers[i].failed > 0)
            fprintf(stderr, "bench_submit: %u failed, last: %s\n", workers[i].failed,
                    workers[i].last_error);
    }
    if (p.trace != NULL && write_trace(p.trace, ids, call_wall, p.count) != 0)
        failed++;
    qsort(latency, p.count, sizeof(*latency), cmp_double);
    printf("submitted=%u failed=%u seconds=%.3f rate=%.1f p50_ms=%.2f p99_ms=%.2f max_ms=%.2f\n",
           p.count - failed, failed, seconds, (double)(p.count - failed) / seconds,
           percentile(latency, p.count, 50), percentile(latency, p.count, 99),
           latency[p.count - 1]);
    rc = failed > 0 ? 1 : 0;
out:
    free(ids);
    free(call_wall);
    free(latency);
    free(workers);
    free(message);
    return rc;
}
