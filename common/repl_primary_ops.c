/*
 * repl_primary_ops: what the node asks of the pusher (repl.h): a save to
 * push (push_on_commit), a sync that completes once the replicas
 * acknowledged, a Test Connection run on a replica, new settings or TLS
 * files; and the completion of those requests.
 */
#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "error.h"
#include "internal.h"
#include "log.h"
#include "repl_internal.h"

static void waiter_step(struct waiter *w, int err, const char *who, const char *message)
{
    if (err != 0) {
        size_t used = strlen(w->message);
        if (w->err == 0)
            w->err = err;
        snprintf(w->message + used, sizeof(w->message) - used, "%s%s: %s", used ? "; " : "", who,
                 message);
    }
    if (--w->pending > 0)
        return;
    w->done(w->arg, w->err, w->err != 0 ? w->message : "");
    free(w);
}

/* Completes every sync waiting on `t`. */
void repl__target_waiters_done(struct target *t, int err, const char *message)
{
    struct waiter_link *l = t->waiters, *next;

    t->waiters = NULL;
    for (; l != NULL; l = next) {
        next = l->next;
        waiter_step(l->w, err, t->id, message);
        free(l);
    }
}

void repl__target_tests_fail(struct target *t, int err, const char *message)
{
    struct test_req *q = t->tests, *next;

    t->tests = NULL;
    for (; q != NULL; q = next) {
        next = q->next;
        q->done(q->arg, err, message, NULL);
        free(q);
    }
}

void repl__on_test_result(struct target *t, uint64_t id, const Smtpsync__TestResult *r,
                          const Smtpsync__Error *e)
{
    struct test_req **pp, *q;

    for (pp = &t->tests; *pp != NULL; pp = &(*pp)->next)
        if ((*pp)->id == id)
            break;
    if ((q = *pp) == NULL) {
        log_debug("replica %s: a test result nobody waits for (id %" PRIu64 ")", t->id, id);
        return;
    }
    *pp = q->next;
    if (r != NULL) {
        /* A copy the callee owns, as protobuf-c unpacks it. */
        size_t len = smtpsync__test_result__get_packed_size(r);
        uint8_t *buf = malloc(len ? len : 1);
        Smtpsync__TestResult *copy = NULL;
        if (buf != NULL) {
            smtpsync__test_result__pack(r, buf);
            copy = smtpsync__test_result__unpack(NULL, len, buf);
            free(buf);
        }
        if (copy != NULL)
            q->done(q->arg, 0, "", copy);
        else
            q->done(q->arg, -ENOMEM, "out of memory", NULL);
    } else {
        q->done(q->arg, e->code < 0 ? e->code : ERROR_INVALID,
                e->message != NULL ? e->message : "the replica refused the test", NULL);
    }
    free(q);
}

void repl_primary_set_tuning(struct repl_primary *rp, const struct repl_tuning *tuning)
{
    rp->tuning = *tuning;
    for (struct target *t = rp->targets; t != NULL; t = t->next)
        if (t->state == T_READY)
            repl__target_arm(t);
}

void repl_primary_set_ctx(struct repl_primary *rp, struct mtls_ctx *ctx)
{
    struct mtls_ctx *old = rp->ctx;

    rp->ctx = mtls_ctx_ref(ctx);
    mtls_ctx_unref(old);
}

void repl_primary_saved(struct repl_primary *rp, uint64_t revision)
{
    struct repl_sched_params sp = repl__sched_params(rp);
    int64_t now = repl__now_ms(rp);

    if (rp->fenced || rp->stopping)
        return;
    log_debug("revision %" PRIu64 " saved: push_on_commit=%s", revision,
              sp.push_on_commit ? "yes" : "no");
    rp->in_save = true;
    for (struct target *t = rp->targets; t != NULL; t = t->next) {
        repl__mark_dirty(t); /* its lag changed */
        switch (t->state) {
        case T_READY:
            if (repl_sched_commit(&sp, &t->sched, now)) {
                if (t->known)
                    repl__target_send_delta(t);
                else
                    repl__target_send_hello(t);
            }
            break;
        case T_IDLE:
            if (repl_sched_commit(&sp, &t->sched, now))
                repl__target_arm(t);
            break;
        default:
            /* A push in flight: its Ack sees the new head and goes on. */
            break;
        }
    }
    rp->in_save = false;
    store_repl_free_delta(rp->save_delta);
    rp->save_delta = NULL;
}

int repl_primary_sync(struct repl_primary *rp, const char *replica, admin_done_cb done,
                      void *done_arg, char *why, size_t whylen)
{
    struct waiter *w;
    unsigned n = 0;

    if (rp->fenced) {
        snprintf(why, whylen,
                 "this node was fenced by %s (epoch %" PRIu64 "): it is no longer "
                 "the primary",
                 rp->fenced_by, rp->fenced_epoch);
        return ERROR_FENCED;
    }
    for (struct target *t = rp->targets; t != NULL; t = t->next)
        if (t->state != T_CLOSING && (replica == NULL || strcmp(t->id, replica) == 0))
            n++;
    if (n == 0 && replica != NULL) {
        snprintf(why, whylen, "no replica '%s' in the membership", replica);
        return ERROR_NOT_FOUND;
    }
    if ((w = calloc(1, sizeof(*w))) == NULL) {
        snprintf(why, whylen, "out of memory");
        return -ENOMEM;
    }
    w->done = done;
    w->arg = done_arg;
    w->pending = n + 1; /* held until every target is started */
    for (struct target *t = rp->targets; t != NULL; t = t->next) {
        struct waiter_link *l;
        if (t->state == T_CLOSING || (replica != NULL && strcmp(t->id, replica) != 0))
            continue;
        if ((l = malloc(sizeof(*l))) == NULL) {
            waiter_step(w, -ENOMEM, t->id, "out of memory");
            continue;
        }
        l->w = w;
        l->next = t->waiters;
        t->waiters = l;
        log_info("replica %s: sync requested", t->id);
        switch (t->state) {
        case T_READY:
            repl__target_send_hello(t);
            break;
        case T_IDLE:
            if (t->address[0] == '\0')
                repl__target_waiters_done(t, ERROR_NOT_FOUND, t->last_error);
            else
                repl__target_connect(t);
            break;
        default:
            break; /* a push is under way: it ends in sync or in failure */
        }
    }
    waiter_step(w, 0, "", "");
    return 0;
}

int repl_primary_run_test(struct repl_primary *rp, const char *replica,
                          const Smtpsync__RunTest *req, admin_test_cb done, void *done_arg,
                          char *why, size_t whylen)
{
    struct target *t = repl__target_find(rp, replica);
    struct test_req *q;
    Smtpsync__Frame f;
    int rc;

    if (t == NULL) {
        snprintf(why, whylen, "no replica '%s' in the membership", replica);
        return ERROR_NOT_FOUND;
    }
    if (t->peer == NULL || t->state == T_CONNECTING || t->state == T_FENCED) {
        snprintf(why, whylen, "replica %s is not connected%s%s", t->id,
                 t->last_error[0] ? ": " : "", t->last_error);
        return -ENOTCONN;
    }
    if ((q = calloc(1, sizeof(*q))) == NULL) {
        snprintf(why, whylen, "out of memory");
        return -ENOMEM;
    }
    smtpsync__frame__init(&f);
    f.id = ++rp->next_id;
    f.body_case = SMTPSYNC__FRAME__BODY_RUN_TEST;
    f.run_test = BORROW_CONST(req);
    if ((rc = repl__target_send(t, &f)) != 0) {
        free(q);
        snprintf(why, whylen, "cannot send the test to %s: %s", t->id, error_str(rc));
        return rc;
    }
    q->id = f.id;
    q->done = done;
    q->arg = done_arg;
    q->next = t->tests;
    t->tests = q;
    return 0;
}

bool repl_primary_fenced(const struct repl_primary *rp, uint64_t *epoch)
{
    if (epoch != NULL)
        *epoch = rp->fenced_epoch;
    return rp->fenced;
}
