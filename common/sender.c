/*
 * sender: see sender.h.
 *
 * Everything runs on the loop thread, except the commits of results
 * (outbox_apply_async: the libuv thread pool). The moving parts:
 *   ready     messages taken (leased) from the outbox and not yet handed to
 *             a session, tokencodes first; bounded by ready_max so a long
 *             queue is not held in memory
 *   sessions  live smtp_client sessions, at most max_sessions; each pulls
 *             from `ready` through on_next, one message at a time
 *             (sender_session.c)
 *   results   outcomes not yet committed; applied by the pump in one
 *             outbox_apply_async() transaction, gathered for up to
 *             SENDER_APPLY_DELAY_MS while sessions are busy; while one
 *             commit is in flight (the batch: aresults, ...) the next
 *             outcomes gather for the commit after it. Room for the
 *             result of every message held is reserved before it is taken,
 *             so an outcome is never dropped for want of memory. When the
 *             commit fails (a full disk) the results stay here, their
 *             messages stay leased (the outbox hands them to nobody), no new
 *             mail is taken, and the commit is tried again with backoff.
 *   pump      the one place that applies results, takes due mail, reloads
 *             the settings and starts or kicks sessions. It runs from a
 *             uv_idle handle, so at most once per loop iteration, and batches
 *             every outcome that the iteration's I/O produced.
 *   wake      one timer at outbox_next_due(), or sooner when results
 *             wait for their commit
 *   drain     sender_stop()'s deadline
 *
 * Settings come in generations (struct sender_cfg), one per store revision
 * that changed the instance's record. A session keeps the generation it was
 * started with; once a newer one is current, the session is not given
 * another message and closes. While the settings are unusable, mail is
 * deferred, and the first messages deferred that way are made due again
 * as soon as usable settings arrive (sender_release_waiting).
 */
#include "sender.h"

#include <errno.h>
#include <inttypes.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "error.h"
#include "log.h"
#include "metrics.h"
#include "sender_internal.h"
#include "settings.h"
#include "smtp_client.h"
#include "smtp_message.h"

#define SENDER_MAX_SESSIONS_DEFAULT     4
#define SENDER_MAX_PER_SESSION_DEFAULT  100
#define SENDER_IDLE_MS_DEFAULT          2000
#define SENDER_RETRY_INITIAL_MS_DEFAULT (30 * 1000)
#define SENDER_RETRY_MAX_MS_DEFAULT     (60 * 60 * 1000)
#define SENDER_DRAIN_MS_DEFAULT         (10 * 1000)
/* Messages taken ahead of the sessions: at least this many, or two per session. */
#define SENDER_READY_MIN                16
/* Messages asked from outbox_take() at a time. */
#define SENDER_TAKE_CHUNK               32
/* While sessions are still busy, outcomes are committed together at most
 * this long after the first (loop time), or once this many have gathered:
 * every commit is an fsync, and one per message caps a session at the
 * disk's sync rate. A crash loses at most this window's outcomes, and the
 * messages are sent again (delivery is at least once anyway). */
#define SENDER_APPLY_DELAY_MS           10
#define SENDER_APPLY_BATCH              256
/* After a store or outbox error, the pump tries again this much later. */
#define SENDER_RETRY_SOON_MS            1000
#define SENDER_BUSY_RECHECK_MS          50 /* due, not taken, a commit in flight */
/* A commit that failed is tried again after backoff from
 * SENDER_RETRY_SOON_MS up to this. */
#define SENDER_APPLY_RETRY_MAX_MS       (60 * 1000)
/* Validation problems quoted in a reason. */
#define SENDER_PROBLEMS_SHOWN           3

/* Clock */

static int64_t sender_wall_ms(void)
{
    struct timespec ts;

    clock_gettime(CLOCK_REALTIME, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

/* The loop's cached time, moved onto the wall clock (outbox times are wall
 * clock milliseconds); the offset is refreshed by every pump. */
static void sender_clock_sync(struct sender *s)
{
    s->clock_offset = sender_wall_ms() - (int64_t)uv_now(s->loop);
}

int64_t sender__now(const struct sender *s)
{
    if (s->now_fn != NULL)
        return s->now_fn(s->now_arg);
    return (int64_t)uv_now(s->loop) + s->clock_offset;
}

/* Helpers */

bool sender__has_8bit(const char *p, size_t len)
{
    for (size_t i = 0; i < len; i++)
        if ((unsigned char)p[i] >= 0x80)
            return true;
    return false;
}

void sender__set_last_error(struct sender *s, const char *error)
{
    snprintf(s->stats.last_error, sizeof(s->stats.last_error), "%s", error);
}

/* Settings generations */

void sender__cfg_unref(struct sender_cfg *cfg)
{
    if (cfg == NULL || --cfg->refs > 0)
        return;
    settings_clear(&cfg->settings);
    free(cfg);
}

/* A problem of the trust certificate (expired, not yet valid, unreadable
 * dates...) is left to the TLS handshake, which checks the certificate the
 * server shows against the bundle at the moment of sending: the verdict
 * does not change with the time the settings were read, and a bundle with
 * one current certificate among expired ones still works. */
static bool sender_problem_is_cert(const struct settings_problem *p)
{
    return strcmp(p->field, "trust_certificate") == 0;
}

/* "<prefix> field: message; field: message (and N more)" of the problems
 * that are (cert) or are not (!cert) the trust certificate's. */
static void sender_problems_text(char *buf, size_t len, const char *prefix,
                                 const struct settings_problems *p, bool cert)
{
    size_t off, shown = 0, more = p->dropped;
    int n;

    n = snprintf(buf, len, "%s", prefix);
    off = n > 0 ? (size_t)n : 0;
    for (size_t i = 0; i < p->count && i < SETTINGS_PROBLEMS_MAX; i++) {
        if (sender_problem_is_cert(&p->items[i]) != cert)
            continue;
        if (shown == SENDER_PROBLEMS_SHOWN || off >= len) {
            more++;
            continue;
        }
        n = snprintf(buf + off, len - off, "%s %s: %s", shown ? ";" : "", p->items[i].field,
                     p->items[i].message);
        off += n > 0 ? (size_t)n : 0;
        shown++;
    }
    if (more > 0 && off < len)
        snprintf(buf + off, len - off, " (and %zu more)", more);
}

/* Reads and checks the instance's record as of `revision` (the current one).
 * Returns NULL only when out of memory. */
static struct sender_cfg *sender_cfg_load(struct sender *s, uint64_t revision, int64_t now)
{
    struct settings_problems *problems;
    struct sender_cfg *cfg;
    size_t other = 0, cert = 0;
    int rc;

    cfg = calloc(1, sizeof(*cfg));
    if (cfg == NULL)
        return NULL;
    cfg->refs = 1;
    cfg->revision = revision;
    settings_init(&cfg->settings);
    rc = store_get(s->store, s->instance, 0, STORE_UNSEAL, &cfg->settings);
    if (rc == ERROR_NOT_FOUND) {
        /* A new node starts empty: its settings are on their way. */
        snprintf(cfg->problem, sizeof(cfg->problem),
                 "no settings for instance %s yet (none saved or replicated to this node)",
                 s->instance);
        return cfg;
    }
    if (rc < 0) {
        /* An LMDB error or a password that does not open: keep the mail. */
        cfg->reread = true;
        snprintf(cfg->problem, sizeof(cfg->problem), "cannot read settings: %s", error_str(rc));
        return cfg;
    }
    problems = calloc(1, sizeof(*problems));
    if (problems == NULL) {
        sender__cfg_unref(cfg);
        return NULL;
    }
    (void)settings_validate(&cfg->settings, NULL, (time_t)(now / 1000), problems);
    for (size_t i = 0; i < problems->count && i < SETTINGS_PROBLEMS_MAX; i++) {
        if (sender_problem_is_cert(&problems->items[i]))
            cert++;
        else
            other++;
    }
    other += problems->dropped;
    if (cert > 0)
        sender_problems_text(cfg->warning, sizeof(cfg->warning), "settings:", problems, true);
    if (other > 0) {
        sender_problems_text(cfg->problem, sizeof(cfg->problem), "invalid settings:", problems,
                             false);
    } else if (smtp_message_from_header(cfg->settings.from_address, cfg->from_header,
                                        sizeof(cfg->from_header)) < 0) {
        snprintf(cfg->problem, sizeof(cfg->problem),
                 "invalid settings: from_address: not usable in a From header");
    } else {
        cfg->usable = true;
        cfg->from_header_len = strlen(cfg->from_header);
        cfg->from_8bit = sender__has_8bit(cfg->from_header, cfg->from_header_len);
    }
    free(problems);
    return cfg;
}

/* Same record and same verdict: a revision that changed other instances
 * only must not disturb open sessions (nor log again). */
static bool sender_cfg_same(const struct sender_cfg *a, const struct sender_cfg *b)
{
    if (a->usable != b->usable || a->reread != b->reread || strcmp(a->problem, b->problem) != 0 ||
        strcmp(a->warning, b->warning) != 0)
        return false;
    for (int f = 0; f < SETTINGS_F_COUNT; f++)
        if (settings_field_differs(&a->settings, &b->settings, (enum settings_field)f))
            return false;
    return true;
}

void sender__relay_of(const struct sender_cfg *cfg, unsigned relay, const char **host,
                      uint32_t *port)
{
    const struct settings_relay *r;

    if (relay == 0 || relay > cfg->settings.nrelays) {
        *host = cfg->settings.hostname;
        *port = settings_port(&cfg->settings);
        return;
    }
    r = &cfg->settings.relays[relay - 1];
    *host = r->hostname;
    *port = r->port != 0 ? r->port : settings_port(&cfg->settings);
}

void sender__relay_name(char *buf, size_t len, const char *host, uint32_t port)
{
    snprintf(buf, len, strchr(host, ':') != NULL ? "[%s]:%" PRIu32 : "%s:%" PRIu32, host, port);
}

/* Makes the store's current revision the one in use, if it changed. A new
 * verdict is logged once: a revision that changes nothing for this
 * instance, or the same unusable record read again, logs nothing. */
static void sender_load_settings(struct sender *s, int64_t now)
{
    char quoted[SENDER_QUOTE_MAX], quoted2[SENDER_QUOTE_MAX];
    struct sender_cfg *cfg;
    struct store_info info;
    int rc;

    s->reload = false;
    rc = store_info(s->store, &info);
    if (rc < 0) {
        log_warnx("sender settings instance=%s error=\"cannot read the store: %s\"", s->instance,
                  error_str(rc));
        s->retry_soon = true;
        return;
    }
    if (s->cfg != NULL && s->cfg->revision == info.revision && !s->cfg->reread)
        return;
    cfg = sender_cfg_load(s, info.revision, now);
    if (cfg == NULL) {
        log_error("sender settings instance=%s error=\"out of memory\"", s->instance);
        s->retry_soon = true;
        return;
    }
    if (cfg->reread)
        s->retry_soon = true;
    if (s->cfg != NULL && sender_cfg_same(s->cfg, cfg)) {
        s->cfg->revision = info.revision;
        s->stats.settings_revision = info.revision;
        sender__cfg_unref(cfg);
        return;
    }
    if (cfg->usable) {
        char relay[SENDER_RELAY_MAX];
        const char *host;
        uint32_t port;

        sender__relay_of(cfg, 0, &host, &port);
        sender__relay_name(relay, sizeof(relay), host, port);
        if (cfg->warning[0] == '\0')
            log_info("sender settings instance=%s revision=%" PRIu64 " relay=%s", s->instance,
                     info.revision, relay);
        else
            log_warnx("sender settings instance=%s revision=%" PRIu64 " relay=%s warning=%s "
                      "note=\"sending all the same: the TLS handshake checks the certificate\"",
                      s->instance, info.revision, relay,
                      log_quote(quoted, sizeof(quoted), cfg->warning));
    } else {
        log_warnx("sender settings instance=%s revision=%" PRIu64
                  " unusable reason=%s%s%s note=\"mail is deferred until usable settings arrive "
                  "or it expires\"",
                  s->instance, info.revision, log_quote(quoted, sizeof(quoted), cfg->problem),
                  cfg->warning[0] != '\0' ? " warning=" : "",
                  cfg->warning[0] != '\0' ? log_quote(quoted2, sizeof(quoted2), cfg->warning) : "");
    }
    sender__cfg_unref(s->cfg);
    s->cfg = cfg;
    s->stats.settings_revision = info.revision;
}

/* Results */

/* Makes room for `cap` pending results. Called before messages are taken,
 * for every message held: adding a result then never needs memory. */
static int sender_results_reserve(struct sender *s, size_t cap)
{
    struct outbox_result *nr;
    struct outbox_rcpts *nk;
    struct sender_result_data *nd;

    if (cap <= s->results_cap)
        return 0;
    if (cap < 2 * s->results_cap)
        cap = 2 * s->results_cap;
    if (cap < 16)
        cap = 16;
    nr = realloc(s->results, cap * sizeof(*nr));
    if (nr == NULL)
        return -ENOMEM;
    s->results = nr;
    nk = realloc(s->keep, cap * sizeof(*nk));
    if (nk == NULL)
        return -ENOMEM;
    s->keep = nk;
    nd = realloc(s->rdata, cap * sizeof(*nd));
    if (nd == NULL)
        return -ENOMEM;
    s->rdata = nd;
    s->results_cap = cap;
    return 0;
}

/* Adds the result of a message held; `m`, when given, is the message whose
 * first `nkeep` recipients a DEFER keeps (the result owns it then). */
static void sender_result_add(struct sender *s, uint64_t id, enum outbox_outcome outcome,
                              int64_t next_try_ms, const char *error, struct outbox_msg *m,
                              size_t nkeep)
{
    size_t i = s->nresults;

    /* Reserved when the message was taken (sender__take). */
    if (i == s->results_cap)
        abort();
    s->results[i] = (struct outbox_result){
        .id = id, .outcome = outcome, .next_try_ms = next_try_ms, .error = NULL};
    s->keep[i] = (struct outbox_rcpts){.rcpts = m != NULL ? (const char *const *)m->rcpts : NULL,
                                       .nrcpts = m != NULL ? nkeep : 0};
    snprintf(s->rdata[i].error, sizeof(s->rdata[i].error), "%s", error != NULL ? error : "");
    s->rdata[i].m = m;
    s->nresults++;
    s->nheld--;
}

static void sender_results_clear(struct sender *s)
{
    for (size_t i = 0; i < s->nresults; i++) {
        outbox_msg_free(s->rdata[i].m);
        s->rdata[i].m = NULL;
    }
    s->nresults = 0;
    s->apply_by = 0;
}

/* Forgets the batch that was committed (or given back). */
static void sender_batch_clear(struct sender *s)
{
    for (size_t i = 0; i < s->napply; i++) {
        outbox_msg_free(s->ardata[i].m);
        s->ardata[i].m = NULL;
    }
    s->napply = 0;
}

static void sender_batch_swap(struct sender *s)
{
    struct outbox_result *r = s->results;
    struct outbox_rcpts *k = s->keep;
    struct sender_result_data *d = s->rdata;
    size_t cap = s->results_cap, n = s->nresults;

    s->results = s->aresults;
    s->keep = s->akeep;
    s->rdata = s->ardata;
    s->results_cap = s->apply_cap;
    s->nresults = s->napply;
    s->aresults = r;
    s->akeep = k;
    s->ardata = d;
    s->apply_cap = cap;
    s->napply = n;
}

/* Moves the pending results into the batch to commit, behind those of a
 * batch that failed (which keeps its place). False when memory lacks: the
 * pending ones then wait for the commit after. */
static bool sender_batch_fill(struct sender *s)
{
    size_t need = s->napply + s->nresults, cap;
    void *p;

    if (s->nresults == 0)
        return true;
    if (s->napply == 0) {
        sender_batch_swap(s);
        /* The pending arrays keep room for every message held
         * (sender_result_add() never allocates). */
        if (sender_results_reserve(s, s->nheld) < 0) {
            sender_batch_swap(s);
            return false;
        }
        s->apply_by = 0;
        return true;
    }
    if (need > s->apply_cap) {
        cap = need > 2 * s->apply_cap ? need : 2 * s->apply_cap;
        if ((p = realloc(s->aresults, cap * sizeof(*s->aresults))) == NULL)
            return false;
        s->aresults = p;
        if ((p = realloc(s->akeep, cap * sizeof(*s->akeep))) == NULL)
            return false;
        s->akeep = p;
        if ((p = realloc(s->ardata, cap * sizeof(*s->ardata))) == NULL)
            return false;
        s->ardata = p;
        s->apply_cap = cap;
    }
    memcpy(s->aresults + s->napply, s->results, s->nresults * sizeof(*s->results));
    memcpy(s->akeep + s->napply, s->keep, s->nresults * sizeof(*s->keep));
    memcpy(s->ardata + s->napply, s->rdata, s->nresults * sizeof(*s->rdata));
    s->napply = need;
    s->nresults = 0;
    s->apply_by = 0;
    return true;
}

/* A commit of the batch failed: it stays, its messages stay leased, and
 * the next try waits for backoff. */
static void sender_apply_failed(struct sender *s, int rc)
{
    char error[OUTBOX_ERROR_MAX];
    uint64_t delay;

    if (s->apply_failures < UINT32_MAX)
        s->apply_failures++;
    delay =
        backoff_delay(SENDER_RETRY_SOON_MS, SENDER_APPLY_RETRY_MAX_MS, s->apply_failures, &s->rng);
    s->apply_after = uv_now(s->loop) + delay;
    log_error("sender apply results=%zu failures=%u retry_in_ms=%" PRIu64
              " error=\"%s\" note=\"no mail is taken until the outcomes are recorded\"",
              s->napply, s->apply_failures, delay, error_str(rc));
    snprintf(error, sizeof(error), "cannot record delivery outcomes: %s", error_str(rc));
    sender__set_last_error(s, error);
}

static void sender_on_applied(int rc, void *arg)
{
    struct sender *s = arg;

    s->applying = false;
    if (rc < 0) {
        sender_apply_failed(s, rc);
    } else {
        if (s->apply_failures > 0)
            log_info("sender apply results=%zu recovered after %u failures", s->napply,
                     s->apply_failures);
        s->apply_failures = 0;
        sender_batch_clear(s);
    }
    /* Results that came meanwhile, mail to take, or a stop to finish. */
    sender__schedule(s);
}

/* Commits every pending result (and a batch that failed before) in one
 * transaction on the thread pool, so that sessions move while it waits
 * for the disk; one at a time: what comes meanwhile goes with the next.
 * After a failure the next try waits for backoff (unless `force`). */
static void sender_apply(struct sender *s, int64_t now, bool force)
{
    int rc;

    if (s->applying || (s->nresults == 0 && s->napply == 0))
        return;
    if (!force && s->apply_failures > 0 && uv_now(s->loop) < s->apply_after)
        return;
    if (!sender_batch_fill(s) && s->napply == 0) {
        sender_apply_failed(s, -ENOMEM);
        return;
    }
    for (size_t i = 0; i < s->napply; i++)
        s->aresults[i].error = s->ardata[i].error;
    rc = outbox_apply_async(s->outbox, s->loop, s->aresults, s->akeep, s->napply, now,
                            sender_on_applied, s);
    if (rc < 0) {
        sender_apply_failed(s, rc);
        return;
    }
    s->applying = true;
}

/* Stopping, and the outcomes still cannot be recorded: the leases are
 * given back (a release writes nothing), so that the messages are tried
 * again, as after a crash, rather than held by a sender that is gone. */
static void sender_results_abandon(struct sender *s, int64_t now)
{
    if (s->nresults == 0 && s->napply == 0)
        return;
    log_error("sender stop: outcomes of %zu messages not recorded: they will be sent again",
              s->nresults + s->napply);
    for (size_t i = 0; i < s->nresults; i++) {
        s->results[i].outcome = OUTBOX_RELEASE;
        s->keep[i].nrcpts = 0;
    }
    for (size_t i = 0; i < s->napply; i++) {
        s->aresults[i].outcome = OUTBOX_RELEASE;
        s->akeep[i].nrcpts = 0;
    }
    (void)outbox_apply_rcpts(s->outbox, s->results, s->keep, s->nresults, now);
    (void)outbox_apply_rcpts(s->outbox, s->aresults, s->akeep, s->napply, now);
    sender_results_clear(s);
    sender_batch_clear(s);
}

/* True when a session may still produce an outcome: it is connecting,
 * holds a message or is about to ask for the next. */
static bool sender_busy(const struct sender *s)
{
    for (const struct sender_session *sess = s->sessions; sess != NULL; sess = sess->next)
        if (sess->state != SENDER_SESSION_IDLE && sess->state != SENDER_SESSION_ENDING)
            return true;
    return false;
}

/* Commits the pending results now, or arms the wake timer to do it within
 * SENDER_APPLY_DELAY_MS while more are coming. */
static void sender_apply_soon(struct sender *s, int64_t now)
{
    uint64_t loop_now = uv_now(s->loop);

    if (s->nresults == 0) {
        if (s->napply > 0)
            sender_apply(s, now, false); /* a failed batch, when its backoff ends */
        return;
    }
    if (s->apply_by == 0)
        s->apply_by = loop_now + SENDER_APPLY_DELAY_MS;
    if (s->nresults >= SENDER_APPLY_BATCH || loop_now >= s->apply_by || !sender_busy(s) ||
        s->napply > 0)
        sender_apply(s, now, false);
}

/* Items and their outcomes */

static void sender_item_free(struct sender_item *item)
{
    outbox_msg_free(item->m);
    free(item);
}

void sender__release(struct sender *s, struct sender_item *item)
{
    sender_result_add(s, item->m->id, OUTBOX_RELEASE, 0, NULL, NULL, 0);
    sender_item_free(item);
}

static uint64_t sender_backoff(struct sender *s, const struct outbox_msg *m)
{
    return backoff_delay(s->retry_initial_ms, s->retry_max_ms, m->attempts + 1, &s->rng);
}

/*
 * The server accepted the message for some recipients. Those it refused
 * with 5xx are dropped (logged); those it refused for now (4xx) stay:
 * the message is deferred for them alone, so that the others do not get
 * it twice. Reorders m->rcpts to put the ones kept first.
 */
void sender__delivered(struct sender *s, struct sender_session *sess, struct sender_item *item,
                       const struct smtp_client_result *res)
{
    char quoted[SENDER_QUOTE_MAX], error[OUTBOX_ERROR_MAX], refused[48];
    struct outbox_msg *m = item->m;
    size_t nkeep = 0, nrefused = 0, first = SIZE_MAX;
    uint64_t delay;

    /* ms: this attempt; queued_ms: from submission to the server's 250,
     * the latency a user waiting for a tokencode feels. */
    log_info("delivered id=%" PRIu64 " rcpts=%zu relay=%s attempt=%" PRIu32 " ms=%" PRId64
             " queued_ms=%" PRId64,
             m->id, res->naccepted, sess->relay_name, m->attempts + 1,
             sender__now(s) - item->started_ms, sender__now(s) - m->created_ms);
    s->stats.delivered++;
    for (size_t i = 0; res->rcpts != NULL && res->naccepted < m->nrcpts && i < m->nrcpts; i++) {
        int code = res->rcpts[i].code;
        char *rcpt = m->rcpts[i];

        if (code >= 200 && code < 300)
            continue;
        log_warnx("%s id=%" PRIu64 " rcpt=%s code=%d reply=%s",
                  code >= 500 ? "refused" : "rcpt deferred", m->id, rcpt, code,
                  log_quote(quoted, sizeof(quoted), res->rcpts[i].text));
        if (code >= 500) {
            nrefused++;
            continue;
        }
        if (first == SIZE_MAX)
            first = i;
        /* Positions nkeep..i-1 hold recipients not kept: swap. */
        m->rcpts[i] = m->rcpts[nkeep];
        m->rcpts[nkeep++] = rcpt;
    }
    /*
     * smtpsync_deliveries_total counts a message "delivered" once, when
     * no recipient is left to retry, and "deferred" once per deferred
     * attempt: a partial delivery is "deferred" until its last recipient
     * goes. The latency is observed then too, once per message, from
     * submission to the last 250.
     */
    if (nkeep == 0) {
        metrics_count(METRICS_DELIVERIES, outbox_priority_name(m->priority), "delivered", 1);
        metrics_observe(METRICS_DELIVERY_LATENCY, outbox_priority_name(m->priority),
                        (double)(sender__now(s) - m->created_ms) / 1000.0);
        sender_result_add(s, m->id, OUTBOX_DELIVERED, 0, NULL, NULL, 0);
        sender_item_free(item);
        return;
    }
    snprintf(refused, sizeof(refused), ", %zu refused for good", nrefused);
    /* The reply is cut to what fits: the record keeps OUTBOX_ERROR_MAX. */
    if (snprintf(error, sizeof(error), "delivered to %zu of %zu recipients%s; waiting for %zu: %s",
                 res->naccepted, m->nrcpts, nrefused > 0 ? refused : "", nkeep,
                 res->rcpts[first].text) < 0)
        error[0] = '\0';
    delay = sender_backoff(s, m);
    log_info("deferred id=%" PRIu64 " attempt=%" PRIu32 " rcpts_left=%zu next_try_in=%" PRIu64
             "s reason=%s",
             m->id, m->attempts + 1, nkeep, (delay + 999) / 1000,
             log_quote(quoted, sizeof(quoted), error));
    s->stats.deferred++;
    metrics_count(METRICS_DELIVERIES, outbox_priority_name(m->priority), "deferred", 1);
    sender__set_last_error(s, error);
    sender_result_add(s, m->id, OUTBOX_DEFER, sender__now(s) + (int64_t)delay, error, m, nkeep);
    item->m = NULL; /* the result holds it until the commit */
    sender_item_free(item);
}

/* A failed attempt (or a message that could not be attempted): deferred
 * with backoff when `temporary`, else dead. */
void sender__failed(struct sender *s, struct sender_item *item, bool temporary, const char *reason)
{
    char quoted[SENDER_QUOTE_MAX];
    const struct outbox_msg *m = item->m;
    int64_t now = sender__now(s);

    if (reason == NULL || reason[0] == '\0')
        reason = "unknown failure";
    log_quote(quoted, sizeof(quoted), reason);
    if (temporary) {
        uint64_t delay = sender_backoff(s, m);

        log_info("deferred id=%" PRIu64 " attempt=%" PRIu32 " next_try_in=%" PRIu64 "s reason=%s",
                 m->id, m->attempts + 1, (delay + 999) / 1000, quoted);
        s->stats.deferred++;
        metrics_count(METRICS_DELIVERIES, outbox_priority_name(m->priority), "deferred", 1);
        sender_result_add(s, m->id, OUTBOX_DEFER, now + (int64_t)delay, reason, NULL, 0);
    } else {
        log_warnx("dead id=%" PRIu64 " reason=%s", m->id, quoted);
        s->stats.dead++;
        metrics_count(METRICS_DELIVERIES, outbox_priority_name(m->priority), "dead", 1);
        sender_result_add(s, m->id, OUTBOX_DEAD, 0, reason, NULL, 0);
    }
    sender__set_last_error(s, reason);
    sender_item_free(item);
}

/* The ready list */

struct sender_item *sender__ready_pop(struct sender *s)
{
    struct sender_item *item = s->ready;

    if (item != NULL) {
        s->ready = item->next;
        item->next = NULL;
        s->nready--;
    }
    return item;
}

/* Keeps tokencodes ahead of reports, and each priority in taking order. */
static void sender_ready_insert(struct sender *s, struct sender_item *item)
{
    struct sender_item **at = &s->ready;

    while (*at != NULL && (*at)->m->priority <= item->m->priority)
        at = &(*at)->next;
    item->next = *at;
    *at = item;
    s->nready++;
}

/* Defers every ready message (nothing could carry them now). With
 * `settings`, they wait for usable settings: the first are remembered, to
 * be made due again as soon as there are. */
void sender__ready_defer(struct sender *s, const char *reason, bool settings)
{
    struct sender_item *item;

    while ((item = sender__ready_pop(s)) != NULL) {
        size_t i = 0;

        while (settings && i < s->nwaiting && s->waiting[i] != item->m->id)
            i++;
        if (settings && i == s->nwaiting && s->nwaiting < SENDER_WAITING_MAX)
            s->waiting[s->nwaiting++] = item->m->id;
        sender__failed(s, item, true, reason);
    }
    s->start_blocked = false;
}

/* Usable settings again: the mail deferred for the lack of them is due
 * now, not at the end of its backoff (true: some was made due). Their
 * deferrals are committed first. */
static bool sender_release_waiting(struct sender *s, int64_t now)
{
    int rc;

    if (s->nwaiting == 0 || s->cfg == NULL || !s->cfg->usable)
        return false;
    sender_apply(s, now, false);
    if (s->nresults > 0 || s->napply > 0)
        return false; /* not committed yet: next time */
    for (size_t i = 0; i < s->nwaiting; i++) {
        rc = outbox_retry(s->outbox, s->waiting[i], now);
        if (rc < 0 && rc != ERROR_NOT_FOUND)
            log_warnx("sender retry id=%" PRIu64 " error=\"%s\"", s->waiting[i], error_str(rc));
    }
    s->nwaiting = 0;
    return true;
}

/* Fills `ready` up to ready_max with due mail; nothing while outcomes wait
 * for a commit that failed (each message sent then would be sent again
 * after a restart). */
void sender__take(struct sender *s, int64_t now)
{
    struct outbox_msg *batch[SENDER_TAKE_CHUNK];
    size_t n, want;
    int rc;

    while (s->nready < s->ready_max && s->apply_failures == 0) {
        want = s->ready_max - s->nready;
        if (want > SENDER_TAKE_CHUNK)
            want = SENDER_TAKE_CHUNK;
        if (sender_results_reserve(s, s->nresults + s->nheld + want) < 0) {
            log_error("sender take error=\"out of memory\"");
            s->retry_soon = true;
            return;
        }
        n = 0;
        rc = outbox_take(s->outbox, now, batch, want, &n);
        if (rc < 0) {
            log_error("sender take error=\"%s\"", error_str(rc));
            s->retry_soon = true;
            return;
        }
        s->nheld += n;
        for (size_t i = 0; i < n; i++) {
            struct sender_item *item = calloc(1, sizeof(*item));

            if (item == NULL) {
                sender_result_add(s, batch[i]->id, OUTBOX_RELEASE, 0, NULL, NULL, 0);
                outbox_msg_free(batch[i]);
                s->retry_soon = true;
                continue;
            }
            item->m = batch[i];
            item->eight_bit = sender__has_8bit(item->m->message, item->m->message_len);
            for (size_t r = 0; r < item->m->nrcpts; r++)
                if (sender__has_8bit(item->m->rcpts[r], strlen(item->m->rcpts[r])))
                    item->rcpts_utf8 = true;
            sender_ready_insert(s, item);
        }
        if (n < want)
            return;
    }
}

/* Stop */

static void sender_on_handle_closed(uv_handle_t *h)
{
    struct sender *s = h->data;
    void (*done)(void *arg) = s->done;
    void *arg = s->done_arg;

    if (--s->closing > 0)
        return;
    if (done != NULL)
        done(arg);
    sender__cfg_unref(s->cfg);
    sender_results_clear(s);
    sender_batch_clear(s);
    free(s->results);
    free(s->keep);
    free(s->rdata);
    free(s->aresults);
    free(s->akeep);
    free(s->ardata);
    free(s->helo);
    free(s);
}

static void sender_finish(struct sender *s)
{
    if (s->closing > 0)
        return;
    s->closing = 3;
    uv_close((uv_handle_t *)&s->pump, sender_on_handle_closed);
    uv_close((uv_handle_t *)&s->wake, sender_on_handle_closed);
    uv_close((uv_handle_t *)&s->drain, sender_on_handle_closed);
}

static void sender_on_drain(uv_timer_t *t)
{
    struct sender *s = t->data;

    if (s->sessions != NULL)
        log_warnx("sender drain timeout sessions=%u: cancelling", s->nsessions);
    sender__cancel_sessions(s, true);
    sender__schedule(s);
}

/* The pump */

static void sender_on_wake(uv_timer_t *t)
{
    sender__schedule(t->data);
}

static void sender_arm(struct sender *s, int64_t now)
{
    uint64_t loop_now = uv_now(s->loop);
    int64_t next;

    if (s->retry_soon) {
        s->retry_soon = false;
        uv_timer_start(&s->wake, sender_on_wake, SENDER_RETRY_SOON_MS, 0);
        return;
    }
    if (!s->applying && (s->nresults > 0 || s->napply > 0)) {
        /* Results wait for their commit (or for the next try of a failed
         * one): come back by then at the latest. While a commit is in
         * flight, its end runs the pump. */
        uint64_t by = s->apply_failures > 0 ? s->apply_after : s->apply_by;

        uv_timer_start(&s->wake, sender_on_wake, by > loop_now ? by - loop_now : 0, 0);
        return;
    }
    if (s->nready >= s->ready_max) {
        uv_timer_stop(&s->wake); /* sessions pull more as they go */
        return;
    }
    next = outbox_next_due(s->outbox);
    if (next == INT64_MAX) {
        uv_timer_stop(&s->wake);
        return;
    }
    if (next <= now && outbox_busy(s->outbox)) {
        /* Due but not taken: what only a write can handle (expired mail),
         * which waits for the commit in flight; its end wakes us. */
        uv_timer_start(&s->wake, sender_on_wake, SENDER_BUSY_RECHECK_MS, 0);
        return;
    }
    uv_timer_start(&s->wake, sender_on_wake, next > now ? (uint64_t)(next - now) : 0, 0);
}

static void sender_pump_run(struct sender *s)
{
    struct sender_item *item;
    int64_t now;

    sender_clock_sync(s);
    now = sender__now(s);
    if (s->stopping) {
        while ((item = sender__ready_pop(s)) != NULL)
            sender__release(s, item);
        sender__cancel_sessions(s, false);
        if (s->sessions != NULL) {
            sender_apply(s, now, false);
            sender_arm(s, now);
            return;
        }
        if (s->applying)
            return; /* its end runs the pump again */
        if (!s->stop_applied) {
            /* One last try, whatever the backoff. */
            s->stop_applied = true;
            sender_apply(s, now, true);
            if (s->applying)
                return;
        }
        sender_results_abandon(s, now);
        sender_finish(s);
        return;
    }
    sender__take(s, now);
    /* Before each batch: a revision saved or replicated meanwhile. */
    if (s->reload || s->nready > 0)
        sender_load_settings(s, now);
    if (sender_release_waiting(s, now))
        sender__take(s, now);
    if (s->nready > 0 && s->cfg != NULL)
        sender__dispatch(s);
    sender_apply_soon(s, now);
    sender_arm(s, now);
}

static void sender_on_pump(uv_idle_t *h)
{
    uv_idle_stop(h);
    sender_pump_run(h->data);
}

/* Runs the pump once, on this or the next loop iteration. */
void sender__schedule(struct sender *s)
{
    if (s->closing == 0 && !uv_is_active((uv_handle_t *)&s->pump))
        uv_idle_start(&s->pump, sender_on_pump);
}

/* API */

int sender_start(const struct sender_params *p, struct sender **out)
{
    struct sender *s;

    if (p == NULL || out == NULL || p->loop == NULL || p->store == NULL || p->outbox == NULL ||
        p->instance == NULL || !settings_instance_valid(p->instance))
        return ERROR_INVALID;
    s = calloc(1, sizeof(*s));
    if (s == NULL)
        return -ENOMEM;
    if (p->helo != NULL && (s->helo = strdup(p->helo)) == NULL) {
        free(s);
        return -ENOMEM;
    }
    s->loop = p->loop;
    s->store = p->store;
    s->outbox = p->outbox;
    snprintf(s->instance, sizeof(s->instance), "%s", p->instance);
    s->max_sessions = p->max_sessions ? p->max_sessions : SENDER_MAX_SESSIONS_DEFAULT;
    s->max_per_session = p->max_per_session ? p->max_per_session : SENDER_MAX_PER_SESSION_DEFAULT;
    s->idle_ms = p->idle_ms ? p->idle_ms : SENDER_IDLE_MS_DEFAULT;
    s->retry_initial_ms =
        p->retry_initial_ms ? p->retry_initial_ms : SENDER_RETRY_INITIAL_MS_DEFAULT;
    s->retry_max_ms = p->retry_max_ms ? p->retry_max_ms : SENDER_RETRY_MAX_MS_DEFAULT;
    s->drain_ms = p->drain_ms ? p->drain_ms : SENDER_DRAIN_MS_DEFAULT;
    s->now_fn = p->now_ms;
    s->now_arg = p->now_arg;
    if (p->rng != NULL)
        s->rng = *p->rng;
    else
        s->rng = (struct backoff_rng){.next = backoff_rng_system, .arg = NULL};
    s->ready_max = 2 * (size_t)s->max_sessions;
    if (s->ready_max < SENDER_READY_MIN)
        s->ready_max = SENDER_READY_MIN;
    s->reload = true;

    /* uv_idle_init() and uv_timer_init() cannot fail. */
    uv_idle_init(s->loop, &s->pump);
    uv_timer_init(s->loop, &s->wake);
    uv_timer_init(s->loop, &s->drain);
    s->pump.data = s;
    s->wake.data = s;
    s->drain.data = s;
    sender_clock_sync(s);
    sender__schedule(s); /* mail left from before a restart */
    *out = s;
    return 0;
}

void sender_wake(struct sender *s)
{
    if (!s->stopping)
        sender__schedule(s);
}

void sender_settings_changed(struct sender *s)
{
    if (s->stopping)
        return;
    s->reload = true;
    sender__schedule(s);
}

void sender_stats(const struct sender *s, struct sender_stats *out)
{
    *out = s->stats;
    out->sessions_active = s->nsessions;
    out->settings_revision = s->cfg != NULL ? s->cfg->revision : 0;
}

void sender_stop(struct sender *s, void (*done)(void *arg), void *arg)
{
    if (s->stopping)
        return;
    s->stopping = true;
    s->done = done;
    s->done_arg = arg;
    uv_timer_stop(&s->wake);
    uv_timer_start(&s->drain, sender_on_drain, s->drain_ms, 0);
    sender__schedule(s);
}
