/*
 * sender_session: the sender's SMTP sessions (see sender.h, and sender.c
 * for the moving parts): each pulls ready messages through on_next, one at
 * a time, and reports their outcomes; a session that fails before its
 * first message moves new ones to the next relay or defers the mail; the
 * dispatch kicks idle sessions and starts new ones, up to max_sessions.
 *
 * What a session is doing, as far as the scheduler cares, is an explicit
 * state (SENDER_SESSION_STATE_MAP), changed only by
 * sender_session_set_state(), which logs it.
 */
#include "sender_internal.h"

#include <errno.h>
#include <inttypes.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "error.h"
#include "log.h"
#include "smtp_client.h"

/* Recovers the item from the message a session hands back; through
 * uintptr_t because on_done gives the message back as const. */
#define container_of(ptr, type, member)                                                            \
    ((type *)(uintptr_t)((const char *)(ptr)-offsetof(type, member)))

/* May the session be given another message? */
static bool sender_session_open(const struct sender_session *sess)
{
    const struct sender *s = sess->s;

    return !s->stopping && !sess->cancelled && sess->cfg == s->cfg &&
           sess->nsent < s->max_per_session && sess->state != SENDER_SESSION_ENDING;
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

/* The next ready message that has not expired meanwhile (one that has is
 * dead, as outbox_take() would have made it). */
static struct sender_item *sender_next_item(struct sender *s)
{
    struct sender_item *item;
    char reason[OUTBOX_ERROR_MAX];
    int64_t now = sender__now(s);

    for (;;) {
        if (s->nready == 0)
            sender__take(s, now);
        item = sender__ready_pop(s);
        if (item == NULL || now < item->m->expires_ms)
            return item;
        if (item->m->attempts == 0)
            snprintf(reason, sizeof(reason), "expired before any attempt");
        else
            snprintf(reason, sizeof(reason), "expired after %" PRIu32 " attempt%s: %s",
                     item->m->attempts, item->m->attempts == 1 ? "" : "s", item->m->last_error);
        sender__failed(s, item, false, reason);
    }
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
    item = sender_next_item(s);
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
    item->cm.smtputf8 = item->rcpts_utf8 || sender__has_8bit(from, strlen(from));
    item->started_ms = sender__now(s);
    sess->current = item;
    sess->nsent++;
    sender_session_set_state(sess, SENDER_SESSION_BUSY);
    *msg = &item->cm;
    return true;

idle:
    sender_session_set_state(sess, SENDER_SESSION_IDLE);
    /* A finished session holds a slot that waiting mail (or a stop) may
     * want; outcomes of expired mail wait for their commit. */
    if ((!sender_session_open(sess) && (s->nready > 0 || s->stopping)) || s->nresults > 0)
        sender__schedule(s);
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
        sender__delivered(s, sess, item, res);
    else if (res->fail == SMTP_FAIL_CANCELLED && s->stopping)
        sender__release(s, item); /* cut off by sender_stop(): not the message's fault */
    else
        sender__failed(s, item,
                       res->fail == SMTP_FAIL_CANCELLED || smtp_fail_is_temporary(res->fail),
                       res->reason);
    sender__schedule(s);
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
 * live, or defer the waiting mail: whatever the failure (a 5xx greeting or
 * EHLO included), it is the relay's, not the mail's. */
static void sender_session_failed_early(struct sender *s, struct sender_session *sess,
                                        const char *reason)
{
    struct sender_cfg *cfg = sess->cfg;
    char relay[SENDER_RELAY_MAX];
    const char *host;
    uint32_t port;

    if (s->stopping || cfg != s->cfg || sess->relay != cfg->relay)
        return; /* a retired generation, or a relay already given up on */
    if (cfg->relay_tried < cfg->settings.nrelays) {
        cfg->relay_tried++;
        cfg->relay = (cfg->relay + 1) % (unsigned)(cfg->settings.nrelays + 1);
        sender__relay_of(cfg, cfg->relay, &host, &port);
        sender__relay_name(relay, sizeof(relay), host, port);
        log_warnx("relay failover from=%s to=%s", sess->relay_name, relay);
        return;
    }
    if (sender_pullers(s) > 0) {
        s->start_blocked = true;
        return;
    }
    cfg->relay = 0;
    cfg->relay_tried = 0;
    sender__ready_defer(s, reason, false);
}

static void sender_on_closed(void *ctx, enum smtp_fail fail, const char *reason)
{
    struct sender_session *sess = ctx;
    struct sender *s = sess->s;
    char quoted[SENDER_QUOTE_MAX];

    sender_session_unlink(s, sess);
    if (sess->current != NULL) {
        /* The client promises on_done first; never lose a lease if not. */
        sender__failed(s, sess->current, true, reason);
        sess->current = NULL;
    }
    if (fail != SMTP_FAIL_NONE && !(fail == SMTP_FAIL_CANCELLED && sess->cancelled)) {
        if (reason == NULL || reason[0] == '\0')
            reason = smtp_fail_str(fail);
        s->stats.sessions_failed++;
        sender__set_last_error(s, reason);
        log_warnx("session failed relay=%s sent=%u reason=%s", sess->relay_name, sess->nsent,
                  log_quote(quoted, sizeof(quoted), reason));
        if (!sess->asked)
            sender_session_failed_early(s, sess, reason);
    }
    if (s->nsessions == 0)
        s->start_blocked = false;
    sender__cfg_unref(sess->cfg);
    free(sess);
    sender__schedule(s);
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
    sender__relay_of(s->cfg, sess->relay, &host, &port);
    sender__relay_name(sess->relay_name, sizeof(sess->relay_name), host, port);
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
void sender__cancel_sessions(struct sender *s, bool busy_too)
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

/* Cancels up to `n` idle or ending sessions that will not be given mail
 * again, so their slots go to sessions that will. */
static void sender_cancel_finished(struct sender *s, size_t n)
{
    struct sender_session *sess;

    while (n-- > 0) {
        for (sess = s->sessions; sess != NULL; sess = sess->next)
            if (!sess->cancelled &&
                (sess->state == SENDER_SESSION_IDLE || sess->state == SENDER_SESSION_ENDING) &&
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
void sender__dispatch(struct sender *s)
{
    struct sender_session *sess;
    size_t need;
    int rc;

    if (!s->cfg->usable) {
        sender__ready_defer(s, s->cfg->problem, true);
        return;
    }
    while (s->nready > sender_claims(s)) {
        for (sess = s->sessions; sess != NULL; sess = sess->next)
            if (sess->state == SENDER_SESSION_IDLE && sender_session_open(sess))
                break;
        if (sess == NULL)
            break;
        /* A kick asks for a message at once; refused, the session is past
         * idle and QUITting: it will not ask again, so it claims nothing. */
        sender_session_set_state(sess, SENDER_SESSION_ASKING);
        if (!smtp_client_kick(sess->client))
            sender_session_set_state(sess, SENDER_SESSION_ENDING);
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
                sender__ready_defer(s, reason, settings);
            return;
        }
        need--;
    }
    if (need > 0)
        sender_cancel_finished(s, need);
}
