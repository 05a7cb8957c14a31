/*
 * node_intake: what arrives on the node's submission socket (node_intake.h).
 *
 * Submissions are batched: on_submit() checks the envelope and normalizes
 * the message at once (so a bad one is refused at once), then queues it;
 * a uv_check handle, which runs right after the poll phase in which the
 * requests were read, commits the whole batch in one outbox transaction
 * (one fsync) on the libuv thread pool (outbox_submit_async), and every
 * request is answered with its id once that is on disk. One commit is in
 * flight at a time: what is read meanwhile makes the next batch, which
 * starts as soon as the commit before it ends (group commit), so the loop
 * keeps reading while the disk works.
 */
#include "node_intake.h"

#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "error.h"
#include "log.h"
#include "smtp_message.h"
#include "syntax.h"

#define NODE_LIST_BUDGET (8u * 1024 * 1024) /* queue listing, below SUBMIT_FRAME_MAX */

/* One accepted submission waiting for the batch commit; owns its copies. */
struct node_intake_submission {
    struct submit_request *req;
    unsigned uid;
    enum outbox_priority priority;
    int64_t expires_ms;
    char **rcpts;
    size_t nrcpts;
    char *message;
    size_t message_len;
};

static int64_t wall_ms(void)
{
    struct timespec ts;

    clock_gettime(CLOCK_REALTIME, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

/* ---- submissions ---- */

static void submission_free(struct node_intake_submission *s)
{
    for (size_t i = 0; i < s->nrcpts; i++)
        free(s->rcpts[i]);
    free(s->rcpts);
    free(s->message);
    memset(s, 0, sizeof(*s));
}

static void refuse(struct submit_request *req, unsigned uid, const char *why)
{
    char q[300];

    log_warnx("submission refused uid=%u reason=%s", uid, log_quote(q, sizeof(q), why));
    submit_reply_send(req, 0, why);
}

/* Checks the envelope; false with `why`. */
static bool envelope_ok(const Smtpsync__SubmitRequest *m, int64_t now, char *why, size_t whylen)
{
    char awhy[160], q[96];

    if (m->priority != SMTPSYNC__PRIORITY__PRIORITY_UNSET &&
        m->priority != SMTPSYNC__PRIORITY__PRIORITY_TOKENCODE &&
        m->priority != SMTPSYNC__PRIORITY__PRIORITY_REPORT) {
        snprintf(why, whylen, "unknown priority %d", (int)m->priority);
        return false;
    }
    if (m->n_rcpt_to == 0) {
        snprintf(why, whylen, "no recipient");
        return false;
    }
    if (m->n_rcpt_to > SMTP_MESSAGE_RCPT_MAX) {
        snprintf(why, whylen, "%zu recipients (at most %d)", m->n_rcpt_to, SMTP_MESSAGE_RCPT_MAX);
        return false;
    }
    for (size_t i = 0; i < m->n_rcpt_to; i++) {
        const char *a = m->rcpt_to[i];
        if (syntax_has_control(a) || !syntax_mailbox_valid(a, awhy, sizeof(awhy))) {
            snprintf(why, whylen, "recipient %s: %s", log_quote(q, sizeof(q), a),
                     syntax_has_control(a) ? "control character" : awhy);
            return false;
        }
    }
    if (m->message.len == 0 || m->message.data == NULL) {
        snprintf(why, whylen, "empty message");
        return false;
    }
    if (m->message.len > SMTP_MESSAGE_MAX) {
        snprintf(why, whylen, "message of %zu octets (at most %d)", m->message.len,
                 SMTP_MESSAGE_MAX);
        return false;
    }
    if (m->expires_ms != 0 && m->expires_ms <= now) {
        snprintf(why, whylen, "expiry in the past");
        return false;
    }
    return true;
}

static void on_batch_check(uv_check_t *h);

static void on_submit(void *ctx, struct submit_request *req, const Smtpsync__SubmitRequest *msg,
                      unsigned uid)
{
    struct node_intake *n = ctx;
    struct node_intake_submission s;
    char why[512];
    int err;

    if (!n->accepting) {
        submit_reply_send(req, 0, "the daemon is stopping");
        return;
    }
    if (!envelope_ok(msg, wall_ms(), why, sizeof(why))) {
        refuse(req, uid, why);
        return;
    }
    memset(&s, 0, sizeof(s));
    s.req = req;
    s.uid = uid;
    s.priority =
        msg->priority == SMTPSYNC__PRIORITY__PRIORITY_TOKENCODE ? OUTBOX_TOKENCODE : OUTBOX_REPORT;
    s.expires_ms = msg->expires_ms;
    why[0] = '\0';
    err = smtp_message_normalize((const char *)msg->message.data, msg->message.len, time(NULL),
                                 n->msgid_domain, &s.message, &s.message_len, why, sizeof(why));
    if (err != 0) {
        char text[600];
        snprintf(text, sizeof(text), "message refused: %s", why[0] != '\0' ? why : error_str(err));
        refuse(req, uid, text);
        return;
    }
    if ((s.rcpts = calloc(msg->n_rcpt_to, sizeof(*s.rcpts))) == NULL)
        goto nomem;
    for (size_t i = 0; i < msg->n_rcpt_to; i++) {
        if ((s.rcpts[i] = strdup(msg->rcpt_to[i])) == NULL)
            goto nomem;
        s.nrcpts++;
    }
    if (n->nbatch == n->batch_cap) {
        size_t cap = n->batch_cap > 0 ? n->batch_cap * 2 : 16;
        struct node_intake_submission *grown = realloc(n->batch, cap * sizeof(*grown));
        if (grown == NULL)
            goto nomem;
        n->batch = grown;
        n->batch_cap = cap;
    }
    n->batch[n->nbatch++] = s;
    if (!uv_is_active((uv_handle_t *)&n->check))
        uv_check_start(&n->check, on_batch_check);
    return;

nomem:
    submission_free(&s);
    refuse(req, uid, error_str(-ENOMEM));
}

static void answer(struct node_intake_submission *s, uint64_t id, int err)
{
    if (err == 0) {
        log_info("submission accepted id=%" PRIu64 " uid=%u rcpts=%zu size=%zu priority=%s", id,
                 s->uid, s->nrcpts, s->message_len, outbox_priority_name(s->priority));
        submit_reply_send(s->req, id, NULL);
    } else {
        char why[200];
        snprintf(why, sizeof(why), "not queued: %s", error_str(err));
        log_error("submission failed uid=%u: %s", s->uid, error_str(err));
        submit_reply_send(s->req, 0, why);
    }
    s->req = NULL;
    submission_free(s);
}

static void intake_release(struct node_intake *n)
{
    free(n->batch);
    free(n->flight);
    free(n->flight_msgs);
    free(n->flight_ids);
    n->batch = n->flight = NULL;
    n->flight_msgs = NULL;
    n->flight_ids = NULL;
    n->batch_cap = n->flight_cap = 0;
}

/* Answers the batch in flight (its ids when err is 0; none without the
 * id array, which only an allocation failure leaves) and forgets it. */
static void flight_answer(struct node_intake *n, int err)
{
    for (size_t i = 0; i < n->nflight; i++)
        answer(&n->flight[i], n->flight_ids != NULL ? n->flight_ids[i] : 0, err);
    n->nflight = 0;
    free(n->flight_msgs);
    free(n->flight_ids);
    n->flight_msgs = NULL;
    n->flight_ids = NULL;
}

static void on_committed(int err, void *arg)
{
    struct node_intake *n = arg;

    n->committing = false;
    flight_answer(n, err);
    if (n->wake != NULL)
        n->wake(n->wake_arg);
    /* What arrived during the commit goes now, together (after a stop
     * too: it was read before). */
    node_intake_flush(n);
    if (n->closing && !n->committing && n->check_closed) {
        intake_release(n);
        if (n->closed != NULL)
            n->closed(n->closed_arg);
    }
}

void node_intake_flush(struct node_intake *n)
{
    struct node_intake_submission *t;
    size_t cap;
    int err;

    if (n->committing || n->nbatch == 0)
        return;
    /* The batch becomes the flight; the flight's old array the batch. */
    t = n->flight;
    cap = n->flight_cap;
    n->flight = n->batch;
    n->flight_cap = n->batch_cap;
    n->nflight = n->nbatch;
    n->batch = t;
    n->batch_cap = cap;
    n->nbatch = 0;
    n->flight_msgs = calloc(n->nflight, sizeof(*n->flight_msgs));
    n->flight_ids = calloc(n->nflight, sizeof(*n->flight_ids));
    if (n->flight_msgs == NULL || n->flight_ids == NULL) {
        err = -ENOMEM;
        goto answer_now;
    }
    for (size_t i = 0; i < n->nflight; i++) {
        const struct node_intake_submission *s = &n->flight[i];
        struct outbox_new *m = &n->flight_msgs[i];
        m->priority = s->priority;
        m->expires_ms = s->expires_ms;
        m->mail_from = NULL;
        m->rcpts = (const char *const *)s->rcpts;
        m->nrcpts = s->nrcpts;
        m->message = s->message;
        m->message_len = s->message_len;
    }
    err = outbox_submit_async(n->outbox, n->loop, n->flight_msgs, n->nflight, wall_ms(),
                              n->flight_ids, on_committed, n);
    if (err == 0) {
        n->committing = true;
        return;
    }
    if (n->nflight > 1 && (err == ERROR_INVALID || err == ERROR_TOO_BIG)) {
        /* One message the outbox refuses must not sink the others: one by
         * one, synchronously. Rare: envelope_ok() checks what it checks. */
        log_debug("outbox refused a batch of %zu: %s; committing one by one", n->nflight,
                  error_str(err));
        for (size_t i = 0; i < n->nflight; i++) {
            err = outbox_submit(n->outbox, &n->flight_msgs[i], 1, wall_ms(), &n->flight_ids[i]);
            answer(&n->flight[i], n->flight_ids[i], err);
        }
        n->nflight = 0;
        err = 0;
    }
answer_now:
    flight_answer(n, err);
    if (n->wake != NULL)
        n->wake(n->wake_arg);
}

static void on_batch_check(uv_check_t *h)
{
    struct node_intake *n = h->data;

    uv_check_stop(h);
    node_intake_flush(n);
}

/* ---- queue ---- */

struct queue_list {
    Smtpsync__OutboxMessage **items;
    size_t n, cap;
    size_t bytes; /* estimate of the packed size so far */
    bool truncated;
};

static void outbox_message_free(Smtpsync__OutboxMessage *m)
{
    if (m == NULL)
        return;
    for (size_t i = 0; i < m->n_rcpt_to; i++)
        free(m->rcpt_to[i]);
    free(m->rcpt_to);
    if (m->last_error != protobuf_c_empty_string)
        free(m->last_error);
    if (m->dead_reason != protobuf_c_empty_string)
        free(m->dead_reason);
    free(m);
}

static void queue_list_free(struct queue_list *l)
{
    for (size_t i = 0; i < l->n; i++)
        outbox_message_free(l->items[i]);
    free(l->items);
    memset(l, 0, sizeof(*l));
}

#define QUEUE_STOP 1 /* outbox_each callback: budget used up */

static int queue_add(const struct outbox_msg *om, bool dead, void *arg)
{
    struct queue_list *l = arg;
    Smtpsync__OutboxMessage *m;
    size_t bytes = 64 + strlen(om->last_error != NULL ? om->last_error : "") +
                   strlen(om->dead_reason != NULL ? om->dead_reason : "");

    (void)dead;
    for (size_t i = 0; i < om->nrcpts; i++)
        bytes += strlen(om->rcpts[i]) + 2;
    if (l->bytes + bytes > NODE_LIST_BUDGET) {
        l->truncated = true;
        return QUEUE_STOP;
    }
    if (l->n == l->cap) {
        size_t cap = l->cap > 0 ? l->cap * 2 : 32;
        Smtpsync__OutboxMessage **grown = realloc(l->items, cap * sizeof(*grown));
        if (grown == NULL)
            return -ENOMEM;
        l->items = grown;
        l->cap = cap;
    }
    if ((m = malloc(sizeof(*m))) == NULL)
        return -ENOMEM;
    smtpsync__outbox_message__init(m);
    l->items[l->n++] = m;
    m->id = om->id;
    m->priority = om->priority == OUTBOX_TOKENCODE ? SMTPSYNC__PRIORITY__PRIORITY_TOKENCODE
                                                   : SMTPSYNC__PRIORITY__PRIORITY_REPORT;
    m->created_ms = om->created_ms;
    m->expires_ms = om->expires_ms;
    m->attempts = om->attempts;
    m->next_try_ms = om->next_try_ms;
    m->dead_ms = om->dead_ms;
    if (om->last_error != NULL && om->last_error[0] != '\0' &&
        (m->last_error = strdup(om->last_error)) == NULL)
        return -ENOMEM;
    if (om->dead_reason != NULL && om->dead_reason[0] != '\0' &&
        (m->dead_reason = strdup(om->dead_reason)) == NULL)
        return -ENOMEM;
    if (om->nrcpts > 0) {
        if ((m->rcpt_to = calloc(om->nrcpts, sizeof(char *))) == NULL)
            return -ENOMEM;
        for (size_t i = 0; i < om->nrcpts; i++) {
            if ((m->rcpt_to[i] = strdup(om->rcpts[i])) == NULL)
                return -ENOMEM;
            m->n_rcpt_to++;
        }
    }
    l->bytes += bytes;
    return 0;
}

static void admin_error(struct submit_request *req, int code, const char *text)
{
    Smtpsync__AdminReply r;

    smtpsync__admin_reply__init(&r);
    r.code = code;
    r.error = (char *)(uintptr_t)text;
    submit_reply_admin(req, &r);
}

static void queue_query(struct node_intake *n, struct submit_request *req, unsigned uid)
{
    struct queue_list pending, dead;
    Smtpsync__AdminReply r;
    Smtpsync__QueueReply q;
    char note[128];
    int err;

    memset(&pending, 0, sizeof(pending));
    memset(&dead, 0, sizeof(dead));
    err = outbox_each(n->outbox, false, queue_add, &pending);
    if (err == 0 || err == QUEUE_STOP)
        err = outbox_each(n->outbox, true, queue_add, &dead);
    /* outbox_each lists at most OUTBOX_LIST_LIMIT: there may be more. */
    pending.truncated |= pending.n >= OUTBOX_LIST_LIMIT;
    dead.truncated |= dead.n >= OUTBOX_LIST_LIMIT;
    if (err != 0 && err != QUEUE_STOP) {
        log_error("queue: cannot list the outbox (uid=%u): %s", uid, error_str(err));
        admin_error(req, err, error_str(err));
        goto out;
    }
    log_debug("queue listed uid=%u pending=%zu dead=%zu", uid, pending.n, dead.n);
    smtpsync__admin_reply__init(&r);
    smtpsync__queue_reply__init(&q);
    q.pending = pending.items;
    q.n_pending = pending.n;
    q.dead = dead.items;
    q.n_dead = dead.n;
    r.queue = &q;
    if (pending.truncated || dead.truncated) {
        /* code 0 with a note: the listing is valid, only incomplete. */
        snprintf(note, sizeof(note), "listing truncated after %zu pending and %zu dead messages",
                 pending.n, dead.n);
        r.error = note;
    }
    submit_reply_admin(req, &r);
out:
    queue_list_free(&pending);
    queue_list_free(&dead);
}

static void queue_action(struct node_intake *n, struct submit_request *req,
                         const Smtpsync__QueueAction *a, unsigned uid)
{
    const char *verb;
    char text[160];
    int err;

    switch (a->action) {
    case SMTPSYNC__QUEUE_ACTION__ACTION__ACTION_RETRY:
        verb = "retry";
        err = a->id != 0 ? outbox_retry(n->outbox, a->id, wall_ms()) : ERROR_NOT_FOUND;
        break;
    case SMTPSYNC__QUEUE_ACTION__ACTION__ACTION_DROP:
        verb = "drop";
        err = a->id != 0 ? outbox_drop(n->outbox, a->id) : ERROR_NOT_FOUND;
        break;
    default:
        admin_error(req, ERROR_INVALID, "unknown queue action");
        return;
    }
    if (err == ERROR_NOT_FOUND) {
        snprintf(text, sizeof(text), "no message %" PRIu64 " in the queue (pending or dead)",
                 a->id);
        admin_error(req, err, text);
        return;
    }
    if (err != 0) {
        log_error("queue %s id=%" PRIu64 " uid=%u failed: %s", verb, a->id, uid, error_str(err));
        admin_error(req, err, error_str(err));
        return;
    }
    log_info("queue %s id=%" PRIu64 " uid=%u", verb, a->id, uid);
    admin_error(req, 0, "");
    if (a->action == SMTPSYNC__QUEUE_ACTION__ACTION__ACTION_RETRY && n->wake != NULL)
        n->wake(n->wake_arg);
}

static void on_queue(void *ctx, struct submit_request *req, const Smtpsync__Frame *frame,
                     unsigned uid)
{
    struct node_intake *n = ctx;

    if (!n->accepting) {
        admin_error(req, ERROR_CONFLICT, "the daemon is stopping");
        return;
    }
    /* A retry or drop sees the submissions of this iteration. */
    node_intake_flush(n);
    if (frame->body_case == SMTPSYNC__FRAME__BODY_QUEUE_QUERY)
        queue_query(n, req, uid);
    else
        queue_action(n, req, frame->queue_action, uid);
}

/* ---- the module's surface ---- */

const struct submit_server_callbacks node_intake_callbacks = {on_submit, on_queue};

void node_intake_init(struct node_intake *in, uv_loop_t *loop, struct outbox *outbox,
                      void (*wake)(void *arg), void *wake_arg)
{
    memset(in, 0, sizeof(*in));
    uv_check_init(loop, &in->check);
    in->loop = loop;
    in->check.data = in;
    in->outbox = outbox;
    in->wake = wake;
    in->wake_arg = wake_arg;
    in->accepting = true;
    snprintf(in->msgid_domain, sizeof(in->msgid_domain), "localhost.localdomain");
}

void node_intake_stop(struct node_intake *in)
{
    uv_check_stop(&in->check);
    node_intake_flush(in);
    in->accepting = false;
}

static void on_check_closed(uv_handle_t *h)
{
    struct node_intake *in = h->data;

    in->check_closed = true;
    if (in->committing)
        return; /* on_committed() finishes */
    intake_release(in);
    if (in->closed != NULL)
        in->closed(in->closed_arg);
}

void node_intake_close(struct node_intake *in, void (*closed)(void *arg), void *arg)
{
    /* Anything still queued is refused, its requests answered; unless a
     * commit is in flight: then it goes with the next one, as in a stop. */
    if (!in->committing) {
        for (size_t i = 0; i < in->nbatch; i++)
            answer(&in->batch[i], 0, ERROR_CONFLICT);
        in->nbatch = 0;
    }
    in->accepting = false;
    in->closing = true;
    in->closed = closed;
    in->closed_arg = arg;
    uv_close((uv_handle_t *)&in->check, on_check_closed);
}
