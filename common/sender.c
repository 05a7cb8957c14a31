/*
 * sender: see sender.h.
 *
 * Everything runs on the loop thread. The moving parts:
 *   ready     messages taken (leased) from the outbox and not yet handed to
 *             a session, tokencodes first; bounded by ready_max so a long
 *             queue is not held in memory
 *   sessions  live smtp_client sessions, at most max_sessions; each pulls
 *             from `ready` through on_next, one message at a time
 *   results   outcomes not yet committed; applied by the pump in one
 *             outbox_apply() transaction
 *   pump      the one place that applies results, takes due mail, reloads
 *             the settings and starts or kicks sessions. It runs from a
 *             uv_idle handle, so at most once per loop iteration, and batches
 *             every outcome that the iteration's I/O produced.
 *   wake      one timer at outbox_next_due()
 *   drain     sender_stop()'s deadline
 *
 * Settings come in generations (struct sender_cfg), one per store revision
 * that changed the instance's record. A session keeps the generation it was
 * started with; once a newer one is current, the session is not given
 * another message and closes.
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
/* After a store or outbox error, the pump tries again this much later. */
#define SENDER_RETRY_SOON_MS            1000
/* Validation problems quoted in a dead message's reason. */
#define SENDER_PROBLEMS_SHOWN           3
#define SENDER_HEADER_MAX               (SETTINGS_ADDRESS_MAX + 16)
#define SENDER_RELAY_MAX                (SETTINGS_HOSTNAME_MAX + 16)
#define SENDER_QUOTE_MAX                (2 * SMTP_CLIENT_REASON_MAX)

/* Recovers the item from the message a session hands back; through
 * uintptr_t because on_done gives the message back as const. */
#define container_of(ptr, type, member)                                                            \
    ((type *)(uintptr_t)((const char *)(ptr)-offsetof(type, member)))

/* One generation of the instance's settings. Shared by the sender (the
 * current one) and the sessions started with it; freed at the last unref. */
struct sender_cfg {
    unsigned refs;
    uint64_t revision;
    struct settings settings; /* password loaded: wiped by settings_clear() */
    bool usable;
    bool temporary; /* unusable for a reason that may pass: defer, don't kill */
    char problem[OUTBOX_ERROR_MAX];
    char from_header[SENDER_HEADER_MAX];
    size_t from_header_len;
    bool from_8bit;
    unsigned relay;       /* new sessions go to: 0 the hostname, i relays[i - 1] */
    unsigned relay_tried; /* relays given up on in a row */
};

/* A leased message, in `ready` or held by a session. */
struct sender_item {
    struct sender_item *next;
    struct outbox_msg *m;
    struct smtp_client_msg cm; /* filled when a session takes it */
    bool eight_bit;
    bool rcpts_utf8;
    int64_t started_ms;
};

/* What a session is doing, as far as the scheduler cares. */
#define SENDER_SESSION_STATE_MAP(XX)                                                               \
    XX(CONNECTING, "connecting") /* started, has not asked for a message yet */                    \
    XX(ASKING, "asking")         /* kicked or done with a message: will ask again */               \
    XX(BUSY, "busy")             /* holds a message */                                             \
    XX(IDLE, "idle")             /* was told there is none: QUITs after idle_ms */

enum sender_session_state {
#define XX(name, text) SENDER_SESSION_##name,
    SENDER_SESSION_STATE_MAP(XX)
#undef XX
};

struct sender_session {
    struct sender_session *prev, *next;
    struct sender *s;
    struct smtp_client *client;
    struct sender_cfg *cfg; /* a reference */
    enum sender_session_state state;
    bool asked;     /* called on_next once: connected, greeted, authenticated */
    bool cancelled; /* by us */
    unsigned nsent;
    unsigned relay;
    char relay_name[SENDER_RELAY_MAX]; /* "host:port", for logs */
    struct sender_item *current;
};

struct sender {
    uv_loop_t *loop;
    struct store *store;
    struct outbox *outbox;
    char instance[SETTINGS_INSTANCE_MAX + 1];
    char *helo;
    unsigned max_sessions, max_per_session;
    uint64_t idle_ms, retry_initial_ms, retry_max_ms, drain_ms;
    int64_t (*now_fn)(void *arg);
    void *now_arg;
    struct backoff_rng rng;
    int64_t clock_offset; /* wall clock minus uv_now() */

    uv_idle_t pump;
    uv_timer_t wake;
    uv_timer_t drain;
    unsigned closing; /* handles whose close callback is pending */

    struct sender_cfg *cfg; /* current generation; NULL before the first load */
    bool reload;            /* check the store before the next batch */
    bool start_blocked;     /* a session failed while others live: wait for them */
    bool retry_soon;        /* a store or outbox error: pump again shortly */
    bool stopping;
    void (*done)(void *arg);
    void *done_arg;

    struct sender_item *ready;
    size_t nready, ready_max;

    struct sender_session *sessions;
    unsigned nsessions;

    /* Pending results; errors[i] is results[i].error's storage. */
    struct outbox_result *results;
    char (*errors)[OUTBOX_ERROR_MAX];
    size_t nresults, results_cap;

    struct sender_stats stats;
};

static void sender_schedule(struct sender *s);

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

static int64_t sender_now(const struct sender *s)
{
    if (s->now_fn != NULL)
        return s->now_fn(s->now_arg);
    return (int64_t)uv_now(s->loop) + s->clock_offset;
}

/* Helpers */

static bool sender_has_8bit(const char *p, size_t len)
{
    for (size_t i = 0; i < len; i++)
        if ((unsigned char)p[i] >= 0x80)
            return true;
    return false;
}

static void sender_set_last_error(struct sender *s, const char *error)
{
    snprintf(s->stats.last_error, sizeof(s->stats.last_error), "%s", error);
}

/* Settings generations */

static void sender_cfg_unref(struct sender_cfg *cfg)
{
    if (cfg == NULL || --cfg->refs > 0)
        return;
    settings_clear(&cfg->settings);
    free(cfg);
}

/* "invalid settings: field: message; field: message (and N more)" */
static void sender_cfg_problems(struct sender_cfg *cfg, const struct settings_problems *p)
{
    size_t off, shown = p->count < SENDER_PROBLEMS_SHOWN ? p->count : SENDER_PROBLEMS_SHOWN;
    size_t more = p->count - shown + p->dropped;
    int n;

    n = snprintf(cfg->problem, sizeof(cfg->problem), "invalid settings:");
    off = n > 0 ? (size_t)n : 0;
    for (size_t i = 0; i < shown && off < sizeof(cfg->problem); i++) {
        n = snprintf(cfg->problem + off, sizeof(cfg->problem) - off, "%s %s: %s", i ? ";" : "",
                     p->items[i].field, p->items[i].message);
        off += n > 0 ? (size_t)n : 0;
    }
    if (more > 0 && off < sizeof(cfg->problem))
        snprintf(cfg->problem + off, sizeof(cfg->problem) - off, " (and %zu more)", more);
}

/* Reads and checks the instance's record as of `revision` (the current one).
 * Returns NULL only when out of memory. */
static struct sender_cfg *sender_cfg_load(struct sender *s, uint64_t revision, int64_t now)
{
    struct settings_problems *problems;
    struct sender_cfg *cfg;
    int rc;

    cfg = calloc(1, sizeof(*cfg));
    if (cfg == NULL)
        return NULL;
    cfg->refs = 1;
    cfg->revision = revision;
    settings_init(&cfg->settings);
    rc = store_get(s->store, s->instance, 0, STORE_UNSEAL, &cfg->settings);
    if (rc == ERROR_NOT_FOUND) {
        snprintf(cfg->problem, sizeof(cfg->problem),
                 "invalid settings: no settings for instance %s", s->instance);
        return cfg;
    }
    if (rc < 0) {
        /* An LMDB error or a password that does not open: keep the mail. */
        cfg->temporary = true;
        snprintf(cfg->problem, sizeof(cfg->problem), "cannot read settings: %s", error_str(rc));
        return cfg;
    }
    problems = calloc(1, sizeof(*problems));
    if (problems == NULL) {
        sender_cfg_unref(cfg);
        return NULL;
    }
    if (settings_validate(&cfg->settings, NULL, (time_t)(now / 1000), problems) < 0) {
        sender_cfg_problems(cfg, problems);
    } else if (smtp_message_from_header(cfg->settings.from_address, cfg->from_header,
                                        sizeof(cfg->from_header)) < 0) {
        snprintf(cfg->problem, sizeof(cfg->problem),
                 "invalid settings: from_address: not usable in a From header");
    } else {
        cfg->usable = true;
        cfg->from_header_len = strlen(cfg->from_header);
        cfg->from_8bit = sender_has_8bit(cfg->from_header, cfg->from_header_len);
    }
    free(problems);
    return cfg;
}

/* Same record and same verdict: a revision that changed other instances
 * only must not disturb open sessions. */
static bool sender_cfg_same(const struct sender_cfg *a, const struct sender_cfg *b)
{
    if (a->usable != b->usable || a->temporary != b->temporary ||
        strcmp(a->problem, b->problem) != 0)
        return false;
    for (int f = 0; f < SETTINGS_F_COUNT; f++)
        if (settings_field_differs(&a->settings, &b->settings, (enum settings_field)f))
            return false;
    return true;
}

static void sender_relay_of(const struct sender_cfg *cfg, unsigned relay, const char **host,
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

static void sender_relay_name(char *buf, size_t len, const char *host, uint32_t port)
{
    snprintf(buf, len, strchr(host, ':') != NULL ? "[%s]:%" PRIu32 : "%s:%" PRIu32, host, port);
}

/* Makes the store's current revision the one in use, if it changed. */
static void sender_load_settings(struct sender *s, int64_t now)
{
    char quoted[SENDER_QUOTE_MAX];
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
    if (s->cfg != NULL && s->cfg->revision == info.revision && !s->cfg->temporary)
        return;
    cfg = sender_cfg_load(s, info.revision, now);
    if (cfg == NULL) {
        log_error("sender settings instance=%s error=\"out of memory\"", s->instance);
        s->retry_soon = true;
        return;
    }
    if (s->cfg != NULL && sender_cfg_same(s->cfg, cfg)) {
        s->cfg->revision = info.revision;
        s->stats.settings_revision = info.revision;
        sender_cfg_unref(cfg);
        return;
    }
    if (cfg->usable) {
        char relay[SENDER_RELAY_MAX];
        const char *host;
        uint32_t port;

        sender_relay_of(cfg, 0, &host, &port);
        sender_relay_name(relay, sizeof(relay), host, port);
        log_info("sender settings instance=%s revision=%" PRIu64 " relay=%s", s->instance,
                 info.revision, relay);
    } else {
        log_warnx("sender settings instance=%s revision=%" PRIu64 " unusable reason=%s",
                  s->instance, info.revision, log_quote(quoted, sizeof(quoted), cfg->problem));
    }
    if (cfg->temporary)
        s->retry_soon = true;
    sender_cfg_unref(s->cfg);
    s->cfg = cfg;
    s->stats.settings_revision = info.revision;
}

/* Results */

static void sender_result_add(struct sender *s, uint64_t id, enum outbox_outcome outcome,
                              int64_t next_try_ms, const char *error)
{
    struct outbox_result *r;

    if (s->nresults == s->results_cap) {
        size_t cap = s->results_cap ? 2 * s->results_cap : 16;
        struct outbox_result *nr = realloc(s->results, cap * sizeof(*nr));
        char(*ne)[OUTBOX_ERROR_MAX];

        if (nr == NULL) {
            log_error("sender result id=%" PRIu64 " error=\"out of memory\"", id);
            return; /* the lease stays until restart: the message is sent again then */
        }
        s->results = nr;
        ne = realloc(s->errors, cap * sizeof(*ne));
        if (ne == NULL) {
            log_error("sender result id=%" PRIu64 " error=\"out of memory\"", id);
            return;
        }
        s->errors = ne;
        s->results_cap = cap;
    }
    r = &s->results[s->nresults];
    r->id = id;
    r->outcome = outcome;
    r->next_try_ms = next_try_ms;
    r->error = NULL;
    snprintf(s->errors[s->nresults], OUTBOX_ERROR_MAX, "%s", error != NULL ? error : "");
    s->nresults++;
}

/* Commits every pending result in one transaction. */
static void sender_apply(struct sender *s, int64_t now)
{
    int rc;

    if (s->nresults == 0)
        return;
    for (size_t i = 0; i < s->nresults; i++)
        s->results[i].error = s->errors[i];
    rc = outbox_apply(s->outbox, s->results, s->nresults, now);
    if (rc < 0) {
        log_error("sender apply results=%zu error=\"%s\"", s->nresults, error_str(rc));
        s->retry_soon = true;
        return;
    }
    s->nresults = 0;
}

/* Items and their outcomes */

static void sender_item_free(struct sender_item *item)
{
    outbox_msg_free(item->m);
    free(item);
}

static void sender_release(struct sender *s, struct sender_item *item)
{
    sender_result_add(s, item->m->id, OUTBOX_RELEASE, 0, NULL);
    sender_item_free(item);
}

static void sender_delivered(struct sender *s, struct sender_session *sess,
                             struct sender_item *item, const struct smtp_client_result *res)
{
    char quoted[SENDER_QUOTE_MAX];
    const struct outbox_msg *m = item->m;

    /* ms: this attempt; queued_ms: from submission to the server's 250,
     * the latency a user waiting for a tokencode feels. */
    log_info("delivered id=%" PRIu64 " rcpts=%zu relay=%s attempt=%" PRIu32 " ms=%" PRId64
             " queued_ms=%" PRId64,
             m->id, res->naccepted, sess->relay_name, m->attempts + 1,
             sender_now(s) - item->started_ms, sender_now(s) - m->created_ms);
    if (res->naccepted < m->nrcpts && res->rcpts != NULL) {
        for (size_t i = 0; i < m->nrcpts; i++) {
            if (res->rcpts[i].code >= 200 && res->rcpts[i].code < 300)
                continue;
            log_warnx("refused id=%" PRIu64 " rcpt=%s code=%d reply=%s", m->id, m->rcpts[i],
                      res->rcpts[i].code, log_quote(quoted, sizeof(quoted), res->rcpts[i].text));
        }
    }
    s->stats.delivered++;
    sender_result_add(s, m->id, OUTBOX_DELIVERED, 0, NULL);
    sender_item_free(item);
}

/* A failed attempt (or a message that could not be attempted): deferred
 * with backoff when `temporary`, else dead. */
static void sender_failed(struct sender *s, struct sender_item *item, bool temporary,
                          const char *reason)
{
    char quoted[SENDER_QUOTE_MAX];
    const struct outbox_msg *m = item->m;
    int64_t now = sender_now(s);

    if (reason == NULL || reason[0] == '\0')
        reason = "unknown failure";
    log_quote(quoted, sizeof(quoted), reason);
    if (temporary) {
        uint64_t delay =
            backoff_delay(s->retry_initial_ms, s->retry_max_ms, m->attempts + 1, &s->rng);

        log_info("deferred id=%" PRIu64 " attempt=%" PRIu32 " next_try_in=%" PRIu64 "s reason=%s",
                 m->id, m->attempts + 1, (delay + 999) / 1000, quoted);
        s->stats.deferred++;
        sender_result_add(s, m->id, OUTBOX_DEFER, now + (int64_t)delay, reason);
    } else {
        log_warnx("dead id=%" PRIu64 " reason=%s", m->id, quoted);
        s->stats.dead++;
        sender_result_add(s, m->id, OUTBOX_DEAD, 0, reason);
    }
    sender_set_last_error(s, reason);
    sender_item_free(item);
}

/* The ready list */

static struct sender_item *sender_ready_pop(struct sender *s)
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

static void sender_ready_fail(struct sender *s, bool temporary, const char *reason)
{
    struct sender_item *item;

    while ((item = sender_ready_pop(s)) != NULL)
        sender_failed(s, item, temporary, reason);
    s->start_blocked = false;
}

/* Fills `ready` up to ready_max with due mail. */
static void sender_take(struct sender *s, int64_t now)
{
    struct outbox_msg *batch[SENDER_TAKE_CHUNK];
    size_t n, want;
    int rc;

    while (s->nready < s->ready_max) {
        want = s->ready_max - s->nready;
        if (want > SENDER_TAKE_CHUNK)
            want = SENDER_TAKE_CHUNK;
        n = 0;
        rc = outbox_take(s->outbox, now, batch, want, &n);
        if (rc < 0) {
            log_error("sender take error=\"%s\"", error_str(rc));
            s->retry_soon = true;
            return;
        }
        for (size_t i = 0; i < n; i++) {
            struct sender_item *item = calloc(1, sizeof(*item));

            if (item == NULL) {
                sender_result_add(s, batch[i]->id, OUTBOX_RELEASE, 0, NULL);
                outbox_msg_free(batch[i]);
                s->retry_soon = true;
                continue;
            }
            item->m = batch[i];
            item->eight_bit = sender_has_8bit(item->m->message, item->m->message_len);
            for (size_t r = 0; r < item->m->nrcpts; r++)
                if (sender_has_8bit(item->m->rcpts[r], strlen(item->m->rcpts[r])))
                    item->rcpts_utf8 = true;
            sender_ready_insert(s, item);
        }
        if (n < want)
            return;
    }
}

/* Sessions */

/* May the session be given another message? */
static bool sender_session_open(const struct sender_session *sess)
{
    const struct sender *s = sess->s;

    return !s->stopping && !sess->cancelled && sess->cfg == s->cfg &&
           sess->nsent < s->max_per_session;
}

/* Sessions that will or may still pull from `ready`. */
static unsigned sender_pullers(const struct sender *s)
{
    unsigned n = 0;

    for (const struct sender_session *sess = s->sessions; sess != NULL; sess = sess->next)
        n += sender_session_open(sess);
    return n;
}

/* Sessions that are about to ask for a message. */
static size_t sender_claims(const struct sender *s)
{
    size_t n = 0;

    for (const struct sender_session *sess = s->sessions; sess != NULL; sess = sess->next)
        if (sender_session_open(sess) &&
            (sess->state == SENDER_SESSION_CONNECTING || sess->state == SENDER_SESSION_ASKING))
            n++;
    return n;
}

static const char *const sender_session_state_names[] = {
#define XX(name, text) text,
    SENDER_SESSION_STATE_MAP(XX)
#undef XX
};

static void sender_session_set_state(struct sender_session *sess, enum sender_session_state st)
{
    log_debug("sender session relay=%s: %s -> %s", sess->relay_name,
              sender_session_state_names[sess->state], sender_session_state_names[st]);
    sess->state = st;
}

static void sender_session_unlink(struct sender *s, struct sender_session *sess)
{
    if (sess->prev != NULL)
        sess->prev->next = sess->next;
    else
        s->sessions = sess->next;
    if (sess->next != NULL)
        sess->next->prev = sess->prev;
    s->nsessions--;
}

static bool sender_on_next(void *ctx, const struct smtp_client_msg **msg)
{
    struct sender_session *sess = ctx;
    struct sender *s = sess->s;
    struct sender_cfg *cfg = sess->cfg;
    struct sender_item *item;
    const char *from;

    if (!sess->asked) {
        /* Connected and ready: the relay works, others may start. */
        sess->asked = true;
        cfg->relay_tried = 0;
        s->start_blocked = false;
    }
    if (!sender_session_open(sess))
        goto idle;
    if (s->nready == 0)
        sender_take(s, sender_now(s));
    item = sender_ready_pop(s);
    if (item == NULL)
        goto idle;

    from = item->m->mail_from[0] != '\0' ? item->m->mail_from : cfg->settings.from_address;
    item->cm.mail_from = from;
    item->cm.rcpts = (const char *const *)item->m->rcpts;
    item->cm.nrcpts = item->m->nrcpts;
    item->cm.header_prefix = cfg->from_header;
    item->cm.header_prefix_len = cfg->from_header_len;
    item->cm.data = item->m->message;
    item->cm.data_len = item->m->message_len;
    item->cm.eight_bit = item->eight_bit || cfg->from_8bit;
    item->cm.smtputf8 = item->rcpts_utf8 || sender_has_8bit(from, strlen(from));
    item->started_ms = sender_now(s);
    sess->current = item;
    sess->nsent++;
    sender_session_set_state(sess, SENDER_SESSION_BUSY);
    *msg = &item->cm;
    return true;

idle:
    sender_session_set_state(sess, SENDER_SESSION_IDLE);
    /* A finished session holds a slot that waiting mail (or a stop) may want. */
    if (!sender_session_open(sess) && (s->nready > 0 || s->stopping))
        sender_schedule(s);
    return false;
}

static void sender_on_done(void *ctx, const struct smtp_client_msg *msg,
                           const struct smtp_client_result *res)
{
    struct sender_session *sess = ctx;
    struct sender *s = sess->s;
    struct sender_item *item = container_of(msg, struct sender_item, cm);

    sess->current = NULL;
    sender_session_set_state(sess, SENDER_SESSION_ASKING);
    if (res->fail == SMTP_FAIL_NONE)
        sender_delivered(s, sess, item, res);
    else if (res->fail == SMTP_FAIL_CANCELLED && s->stopping)
        sender_release(s, item); /* cut off by sender_stop(): not the message's fault */
    else
        sender_failed(s, item,
                      res->fail == SMTP_FAIL_CANCELLED || smtp_fail_is_temporary(res->fail),
                      res->reason);
    sender_schedule(s);
}

static void sender_on_step(void *ctx, const struct smtp_client_step *step)
{
    struct sender_session *sess = ctx;
    char quoted[SENDER_QUOTE_MAX];

    if (step->warning)
        log_warnx("smtp warning relay=%s detail=%s", sess->relay_name,
                  log_quote(quoted, sizeof(quoted), step->detail != NULL ? step->detail : ""));
}

/* A session ended before it could ask for a message: nothing it would have
 * carried was tried. Try the next relay, or wait for the sessions still
 * live, or give the waiting mail the failure. */
static void sender_session_failed_early(struct sender *s, struct sender_session *sess,
                                        enum smtp_fail fail, const char *reason)
{
    struct sender_cfg *cfg = sess->cfg;
    char relay[SENDER_RELAY_MAX];
    const char *host;
    uint32_t port;

    if (s->stopping || cfg != s->cfg || sess->relay != cfg->relay)
        return; /* a retired generation, or a relay already given up on */
    /* Any failure before the first message is the relay's, not the mail's:
     * even a 554 greeting is worth the next relay. */
    if (cfg->relay_tried < cfg->settings.nrelays) {
        cfg->relay_tried++;
        cfg->relay = (cfg->relay + 1) % (unsigned)(cfg->settings.nrelays + 1);
        sender_relay_of(cfg, cfg->relay, &host, &port);
        sender_relay_name(relay, sizeof(relay), host, port);
        log_warnx("relay failover from=%s to=%s", sess->relay_name, relay);
        return;
    }
    if (sender_pullers(s) > 0) {
        s->start_blocked = true;
        return;
    }
    cfg->relay = 0;
    cfg->relay_tried = 0;
    sender_ready_fail(s, smtp_fail_is_temporary(fail), reason);
}

static void sender_on_closed(void *ctx, enum smtp_fail fail, const char *reason)
{
    struct sender_session *sess = ctx;
    struct sender *s = sess->s;
    char quoted[SENDER_QUOTE_MAX];

    sender_session_unlink(s, sess);
    if (sess->current != NULL) {
        /* The client promises on_done first; never lose a lease if not. */
        sender_failed(s, sess->current, true, reason);
        sess->current = NULL;
    }
    if (fail != SMTP_FAIL_NONE && !(fail == SMTP_FAIL_CANCELLED && sess->cancelled)) {
        if (reason == NULL || reason[0] == '\0')
            reason = smtp_fail_str(fail);
        s->stats.sessions_failed++;
        sender_set_last_error(s, reason);
        log_warnx("session failed relay=%s sent=%u reason=%s", sess->relay_name, sess->nsent,
                  log_quote(quoted, sizeof(quoted), reason));
        if (!sess->asked)
            sender_session_failed_early(s, sess, fail, reason);
    }
    if (s->nsessions == 0)
        s->start_blocked = false;
    sender_cfg_unref(sess->cfg);
    free(sess);
    sender_schedule(s);
}

static const struct smtp_client_callbacks sender_callbacks = {
    .on_next = sender_on_next,
    .on_done = sender_on_done,
    .on_step = sender_on_step,
    .on_closed = sender_on_closed,
};

static int sender_session_start(struct sender *s)
{
    struct smtp_client_params params = {0};
    struct sender_session *sess;
    const char *host;
    uint32_t port;
    int rc;

    sess = calloc(1, sizeof(*sess));
    if (sess == NULL)
        return -ENOMEM;
    sess->s = s;
    sess->cfg = s->cfg;
    sess->relay = s->cfg->relay;
    sender_relay_of(s->cfg, sess->relay, &host, &port);
    sender_relay_name(sess->relay_name, sizeof(sess->relay_name), host, port);
    params.settings = &s->cfg->settings;
    params.host = host;
    params.port = port;
    params.helo = s->helo;
    params.idle_ms = s->idle_ms;
    rc = smtp_client_start(s->loop, &params, &sender_callbacks, sess, &sess->client);
    if (rc < 0) {
        free(sess);
        return rc;
    }
    s->cfg->refs++;
    sess->state = SENDER_SESSION_CONNECTING;
    sess->next = s->sessions;
    if (s->sessions != NULL)
        s->sessions->prev = sess;
    s->sessions = sess;
    s->nsessions++;
    s->stats.sessions_opened++;
    return 0;
}

/* Cancels the sessions that hold no message (and, with `busy_too`, those
 * that do). smtp_client_cancel() may call back at once and free the
 * session, so the list is walked again after each cancel. */
static void sender_cancel_sessions(struct sender *s, bool busy_too)
{
    struct sender_session *sess;

    for (;;) {
        for (sess = s->sessions; sess != NULL; sess = sess->next)
            if (!sess->cancelled && (busy_too || sess->state != SENDER_SESSION_BUSY))
                break;
        if (sess == NULL)
            return;
        sess->cancelled = true;
        smtp_client_cancel(sess->client);
    }
}

/* Cancels up to `n` idle sessions that will not be given mail again, so
 * their slots go to sessions that will. */
static void sender_cancel_finished(struct sender *s, size_t n)
{
    struct sender_session *sess;

    while (n-- > 0) {
        for (sess = s->sessions; sess != NULL; sess = sess->next)
            if (!sess->cancelled && sess->state == SENDER_SESSION_IDLE &&
                !sender_session_open(sess))
                break;
        if (sess == NULL)
            return;
        sess->cancelled = true;
        smtp_client_cancel(sess->client);
    }
}

/* Hands the ready mail to sessions: idle ones are kicked first, then new
 * ones are started, one per message not yet claimed, up to max_sessions. */
static void sender_dispatch(struct sender *s)
{
    struct sender_session *sess;
    size_t need;
    int rc;

    if (!s->cfg->usable) {
        sender_ready_fail(s, s->cfg->temporary, s->cfg->problem);
        return;
    }
    while (s->nready > sender_claims(s)) {
        for (sess = s->sessions; sess != NULL; sess = sess->next)
            if (sess->state == SENDER_SESSION_IDLE && sender_session_open(sess))
                break;
        if (sess == NULL)
            break;
        sender_session_set_state(sess, SENDER_SESSION_ASKING);
        smtp_client_kick(sess->client);
    }
    if (s->start_blocked && sender_pullers(s) == 0)
        s->start_blocked = false;
    if (s->start_blocked || s->nready <= sender_claims(s))
        return;
    need = s->nready - sender_claims(s);
    while (need > 0 && s->nsessions < s->max_sessions) {
        rc = sender_session_start(s);
        if (rc < 0) {
            char reason[OUTBOX_ERROR_MAX];
            bool settings = rc == ERROR_INVALID || rc == ERROR_TLS;

            snprintf(reason, sizeof(reason), "%s: %s",
                     settings ? "invalid settings" : "cannot start an SMTP session", error_str(rc));
            s->stats.sessions_failed++;
            if (sender_pullers(s) == 0)
                sender_ready_fail(s, !settings, reason);
            return;
        }
        need--;
    }
    if (need > 0)
        sender_cancel_finished(s, need);
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
    sender_cfg_unref(s->cfg);
    free(s->results);
    free(s->errors);
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
    sender_cancel_sessions(s, true);
    sender_schedule(s);
}

/* The pump */

static void sender_on_wake(uv_timer_t *t)
{
    sender_schedule(t->data);
}

static void sender_arm(struct sender *s, int64_t now)
{
    int64_t next;

    if (s->retry_soon) {
        s->retry_soon = false;
        uv_timer_start(&s->wake, sender_on_wake, SENDER_RETRY_SOON_MS, 0);
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
    uv_timer_start(&s->wake, sender_on_wake, next > now ? (uint64_t)(next - now) : 0, 0);
}

static void sender_pump_run(struct sender *s)
{
    struct sender_item *item;
    int64_t now;

    sender_clock_sync(s);
    now = sender_now(s);
    if (s->stopping) {
        while ((item = sender_ready_pop(s)) != NULL)
            sender_release(s, item);
        sender_cancel_sessions(s, false);
        sender_apply(s, now);
        if (s->sessions == NULL)
            sender_finish(s);
        return;
    }
    sender_take(s, now);
    /* Before each batch: a revision saved or replicated meanwhile. */
    if (s->reload || s->nready > 0)
        sender_load_settings(s, now);
    if (s->nready > 0 && s->cfg != NULL)
        sender_dispatch(s);
    sender_apply(s, now);
    sender_arm(s, now);
}

static void sender_on_pump(uv_idle_t *h)
{
    uv_idle_stop(h);
    sender_pump_run(h->data);
}

/* Runs the pump once, on this or the next loop iteration. */
static void sender_schedule(struct sender *s)
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
    sender_schedule(s); /* mail left from before a restart */
    *out = s;
    return 0;
}

void sender_wake(struct sender *s)
{
    if (!s->stopping)
        sender_schedule(s);
}

void sender_settings_changed(struct sender *s)
{
    if (s->stopping)
        return;
    s->reload = true;
    sender_schedule(s);
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
    sender_schedule(s);
}
