/*
 * test_node_intake: the node's handling of the submission socket, with a
 * real outbox and submit server on a loop in the test thread, and clients
 * (submit_call or a raw socket) in a second thread.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include <errno.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

#include <lmdb.h>
#include <uv.h>

#include "error.h"
#include "frame.h"
#include "node_intake.h"
#include "outbox.h"
#include "submit.h"
#include "testutil.h"

#define MESSAGE "Subject: intake\r\nTo: a@example.com\r\n\r\nbody\r\n"

/* The outbox's write lock, held by a thread (test_node_intake_group_*). */
struct writer_lock {
    const char *dir;
    pthread_t thread;
    atomic_int locked; /* 1: held; -1: could not */
    atomic_int release;
};

struct fx {
    uv_loop_t loop;
    uv_async_t done;
    struct outbox *outbox;
    struct node_intake intake;
    struct submit_server *srv;
    char *dir;
    char path[100];
    int wakes, closed, stopped;
    pthread_t thread;
    void (*client)(struct fx *);
    /* Results of the client thread. */
    int rc[16];
    uint64_t ids[16];
    char errors[16][256];
    int32_t codes[16];
    size_t listed_pending, listed_dead;
    /* Group commit: the lock holding the first commit, the steps. */
    struct writer_lock lock;
    atomic_int stage;
    int ticks, held_ticks;
};

static void on_wake(void *arg)
{
    struct fx *fx = arg;

    fx->wakes++;
}

static void on_intake_closed(void *arg)
{
    struct fx *fx = arg;

    fx->closed++;
}

static void on_stopped(void *arg)
{
    struct fx *fx = arg;

    fx->stopped++;
}

static void on_done(uv_async_t *a)
{
    struct fx *fx = a->data;

    submit_server_stop(fx->srv, on_stopped, fx);
    node_intake_close(&fx->intake, on_intake_closed, fx);
    uv_close((uv_handle_t *)&fx->done, NULL);
}

static int setup(void **state)
{
    struct fx *fx = calloc(1, sizeof(*fx));
    char obdir[4200];

    assert_non_null(fx);
    fx->dir = testutil_tmpdir();
    assert_true(strlen(fx->dir) + 16 < sizeof(fx->path));
    snprintf(fx->path, sizeof(fx->path), "%s/s.sock", fx->dir);
    snprintf(obdir, sizeof(obdir), "%s/outbox", fx->dir);
    struct outbox_params op = {.dir = obdir, .map_size = 0};
    assert_int_equal(outbox_open(&op, &fx->outbox), 0);
    assert_int_equal(uv_loop_init(&fx->loop), 0);
    assert_int_equal(uv_async_init(&fx->loop, &fx->done, on_done), 0);
    fx->done.data = fx;
    node_intake_init(&fx->intake, &fx->loop, fx->outbox, on_wake, fx);
    snprintf(fx->intake.msgid_domain, sizeof(fx->intake.msgid_domain), "node.example.net");
    assert_int_equal(
        submit_server_start(&fx->loop, fx->path, &node_intake_callbacks, &fx->intake, &fx->srv), 0);
    *state = fx;
    return 0;
}

static int teardown(void **state)
{
    struct fx *fx = *state;

    assert_int_equal(uv_loop_close(&fx->loop), 0);
    outbox_close(fx->outbox);
    testutil_rmtree(fx->dir);
    free(fx->dir);
    free(fx);
    return 0;
}

static void *client_main(void *arg)
{
    struct fx *fx = arg;

    fx->client(fx);
    uv_async_send(&fx->done);
    return NULL;
}

static void run_with_client(struct fx *fx, void (*client)(struct fx *))
{
    fx->client = client;
    assert_int_equal(pthread_create(&fx->thread, NULL, client_main, fx), 0);
    assert_int_equal(uv_run(&fx->loop, UV_RUN_DEFAULT), 0);
    assert_int_equal(pthread_join(fx->thread, NULL), 0);
    assert_int_equal(fx->stopped, 1);
    assert_int_equal(fx->closed, 1);
}

/* A submission frame; `rcpts` NULL-terminated. */
static void submission(Smtpsync__Frame *f, Smtpsync__SubmitRequest *s, uint64_t id,
                       const char **rcpts, const char *message)
{
    size_t n = 0;

    while (rcpts != NULL && rcpts[n] != NULL)
        n++;
    smtpsync__frame__init(f);
    smtpsync__submit_request__init(s);
    s->priority = SMTPSYNC__PRIORITY__PRIORITY_TOKENCODE;
    s->n_rcpt_to = n;
    s->rcpt_to = (char **)(uintptr_t)rcpts;
    s->message.data = (uint8_t *)(uintptr_t)message;
    s->message.len = message != NULL ? strlen(message) : 0;
    f->id = id;
    f->body_case = SMTPSYNC__FRAME__BODY_SUBMIT;
    f->submit = s;
}

/* Sends one submission with submit_call; records id or error in slot i. */
static void call_submit(struct fx *fx, int i, Smtpsync__Frame *f)
{
    Smtpsync__Frame *reply = NULL;
    char why[256];

    fx->rc[i] = submit_call(fx->path, f, 5000, &reply, why, sizeof(why));
    if (fx->rc[i] != 0) {
        snprintf(fx->errors[i], sizeof(fx->errors[i]), "%s", why);
        return;
    }
    fx->ids[i] = reply->submit_reply->id;
    snprintf(fx->errors[i], sizeof(fx->errors[i]), "%s", reply->submit_reply->error);
    smtpsync__frame__free_unpacked(reply, NULL);
}

/* ---- batching ---- */

static void client_three_in_one_write(struct fx *fx)
{
    static const char *r0[] = {"a@example.com", NULL}, *r1[] = {"b@example.com", NULL},
                      *r2[] = {"c@example.com", "d@example.com", NULL};
    const char **rcpts[3] = {r0, r1, r2};
    struct sockaddr_un sa;
    uint8_t all[4096], got[4096];
    size_t used = 0, have = 0;
    int fd = socket(AF_UNIX, SOCK_STREAM, 0);

    for (int i = 0; i < 3; i++) {
        Smtpsync__Frame f;
        Smtpsync__SubmitRequest s;
        uint8_t *buf;
        size_t len;

        submission(&f, &s, (uint64_t)i + 1, rcpts[i], MESSAGE);
        if (frame_pack(&f, 0, &buf, &len) != 0)
            return;
        memcpy(all + used, buf, len);
        used += len;
        free(buf);
    }
    memset(&sa, 0, sizeof(sa));
    sa.sun_family = AF_UNIX;
    memcpy(sa.sun_path, fx->path, strlen(fx->path) + 1);
    if (connect(fd, (struct sockaddr *)&sa, sizeof(sa)) != 0 ||
        write(fd, all, used) != (ssize_t)used)
        return;
    shutdown(fd, SHUT_WR);
    for (;;) {
        ssize_t n = read(fd, got + have, sizeof(got) - have);
        if (n <= 0)
            break;
        have += (size_t)n;
    }
    close(fd);

    struct frame_reader r;
    Smtpsync__Frame *reply;
    frame_reader_init(&r, 0);
    if (frame_reader_feed(&r, got, have) == 0) {
        while (frame_reader_next(&r, &reply) == 0) {
            if (reply->body_case == SMTPSYNC__FRAME__BODY_SUBMIT_REPLY && reply->id >= 1 &&
                reply->id <= 3)
                fx->ids[reply->id - 1] = reply->submit_reply->id;
            smtpsync__frame__free_unpacked(reply, NULL);
        }
    }
    frame_reader_free(&r);
}

struct listing {
    size_t n;
    uint64_t ids[8];
    size_t nrcpts[8];
};

static int list_cb(const struct outbox_msg *m, bool dead, void *arg)
{
    struct listing *l = arg;

    (void)dead;
    if (l->n < 8) {
        l->ids[l->n] = m->id;
        l->nrcpts[l->n] = m->nrcpts;
    }
    l->n++;
    return 0;
}

static void test_node_intake_batches_one_transaction(void **state)
{
    struct fx *fx = *state;
    struct listing l = {0};
    struct outbox_msg *taken[4];
    size_t ntaken = 0;

    run_with_client(fx, client_three_in_one_write);
    /* Read in one go, committed together: consecutive ids, one wake-up. */
    assert_int_equal(fx->ids[0], 1);
    assert_int_equal(fx->ids[1], 2);
    assert_int_equal(fx->ids[2], 3);
    assert_int_equal(fx->wakes, 1);
    assert_int_equal(outbox_each(fx->outbox, false, list_cb, &l), 0);
    assert_int_equal(l.n, 3);
    assert_int_equal(l.nrcpts[2], 2);
    /* Stored normalized: Date and a Message-ID on the node's domain added. */
    assert_int_equal(outbox_take(fx->outbox, (int64_t)time(NULL) * 1000 + 1000, taken, 4, &ntaken),
                     0);
    assert_true(ntaken >= 1);
    assert_true(strncmp(taken[0]->message, "Date: ", 6) == 0 ||
                strstr(taken[0]->message, "\r\nDate: ") != NULL);
    assert_non_null(strstr(taken[0]->message, "@node.example.net>"));
    for (size_t i = 0; i < ntaken; i++)
        outbox_msg_free(taken[i]);
}

/* ---- refusals ---- */

static const struct {
    const char *rcpts[3];
    const char *message;
    int priority;
    int64_t expires_ms;
    const char *why;
} bad[] = {
    {{NULL}, MESSAGE, 1, 0, "no recipient"},
    {{"a@", NULL}, MESSAGE, 1, 0, "recipient \"a@\""},
    {{"a@example.com", "b\r\n@example.com", NULL}, MESSAGE, 1, 0, "control character"},
    {{"a@example.com", NULL}, "", 1, 0, "empty message"},
    {{"a@example.com", NULL}, MESSAGE, 1, 1000, "expiry in the past"},
    {{"a@example.com", NULL}, MESSAGE, 7, 0, "unknown priority 7"},
    {{"a@example.com", NULL}, "no header colon here\r\n\r\nbody\r\n", 1, 0, "message refused: "},
};

#define NBAD (sizeof(bad) / sizeof(bad[0]))

static void client_bad(struct fx *fx)
{
    for (size_t i = 0; i < NBAD; i++) {
        Smtpsync__Frame f;
        Smtpsync__SubmitRequest s;
        submission(&f, &s, 1, (const char **)(uintptr_t)bad[i].rcpts, bad[i].message);
        s.priority = bad[i].priority;
        s.expires_ms = bad[i].expires_ms;
        call_submit(fx, (int)i, &f);
    }
    /* More than SMTP_MESSAGE_RCPT_MAX recipients. */
    static const char *many[102];
    for (int i = 0; i < 101; i++)
        many[i] = "m@example.com";
    Smtpsync__Frame f;
    Smtpsync__SubmitRequest s;
    submission(&f, &s, 1, many, MESSAGE);
    call_submit(fx, (int)NBAD, &f);
}

static void test_node_intake_refuses_bad_submissions(void **state)
{
    struct fx *fx = *state;
    struct listing l = {0};

    run_with_client(fx, client_bad);
    for (size_t i = 0; i <= NBAD; i++) {
        const char *why = i < NBAD ? bad[i].why : "101 recipients (at most 100)";
        assert_int_equal(fx->rc[i], 0);
        assert_int_equal(fx->ids[i], 0);
        if (strstr(fx->errors[i], why) == NULL) {
            print_message("case %zu: '%s' lacks '%s'\n", i, fx->errors[i], why);
            fail();
        }
    }
    assert_int_equal(outbox_each(fx->outbox, false, list_cb, &l), 0);
    assert_int_equal(l.n, 0);
    assert_int_equal(fx->wakes, 0);
}

/* ---- queue ---- */

#define LIST (-1) /* call_queue: a query instead of an action */

static void call_queue(struct fx *fx, int i, int action, uint64_t id)
{
    Smtpsync__Frame f, *reply = NULL;
    Smtpsync__QueueQuery q;
    Smtpsync__QueueAction a;
    char why[256];

    smtpsync__frame__init(&f);
    f.id = 9;
    if (action == LIST) {
        smtpsync__queue_query__init(&q);
        f.body_case = SMTPSYNC__FRAME__BODY_QUEUE_QUERY;
        f.queue_query = &q;
    } else {
        smtpsync__queue_action__init(&a);
        a.action = action;
        a.id = id;
        f.body_case = SMTPSYNC__FRAME__BODY_QUEUE_ACTION;
        f.queue_action = &a;
    }
    fx->rc[i] = submit_call(fx->path, &f, 5000, &reply, why, sizeof(why));
    if (fx->rc[i] != 0) {
        snprintf(fx->errors[i], sizeof(fx->errors[i]), "%s", why);
        return;
    }
    fx->codes[i] = reply->admin_reply->code;
    snprintf(fx->errors[i], sizeof(fx->errors[i]), "%s", reply->admin_reply->error);
    if (action == LIST && reply->admin_reply->queue != NULL) {
        fx->listed_pending = reply->admin_reply->queue->n_pending;
        fx->listed_dead = reply->admin_reply->queue->n_dead;
        if (fx->listed_pending > 0)
            fx->ids[i] = reply->admin_reply->queue->pending[0]->id;
    }
    smtpsync__frame__free_unpacked(reply, NULL);
}

static void client_queue(struct fx *fx)
{
    static const char *r[] = {"q@example.com", NULL};
    Smtpsync__Frame f;
    Smtpsync__SubmitRequest s;

    submission(&f, &s, 1, r, MESSAGE);
    call_submit(fx, 0, &f);
    call_queue(fx, 1, LIST, 0);
    call_queue(fx, 2, SMTPSYNC__QUEUE_ACTION__ACTION__ACTION_RETRY, 99); /* unknown id */
    call_queue(fx, 3, SMTPSYNC__QUEUE_ACTION__ACTION__ACTION_RETRY, fx->ids[0]);
    call_queue(fx, 4, SMTPSYNC__QUEUE_ACTION__ACTION__ACTION_DROP, fx->ids[0]);
    call_queue(fx, 5, SMTPSYNC__QUEUE_ACTION__ACTION__ACTION_DROP, fx->ids[0]);
    call_queue(fx, 6, SMTPSYNC__QUEUE_ACTION__ACTION__ACTION_UNSET, 1);
    call_queue(fx, 7, LIST, 0);
}

static void test_node_intake_queue_list_retry_drop(void **state)
{
    struct fx *fx = *state;

    run_with_client(fx, client_queue);
    assert_int_equal(fx->ids[0], 1);
    assert_int_equal(fx->rc[1], 0);
    assert_int_equal(fx->codes[1], 0);
    assert_int_equal(fx->ids[1], 1);
    assert_int_equal(fx->codes[2], ERROR_NOT_FOUND);
    assert_string_equal(fx->errors[2], "no message 99 in the queue (pending or dead)");
    assert_int_equal(fx->codes[3], 0);
    assert_int_equal(fx->codes[4], 0);
    assert_int_equal(fx->codes[5], ERROR_NOT_FOUND);
    assert_int_equal(fx->codes[6], ERROR_INVALID);
    assert_int_equal(fx->codes[7], 0);
    assert_int_equal(fx->listed_pending, 0);
    assert_int_equal(fx->listed_dead, 0);
    /* The submission and the retry woke the sender. */
    assert_int_equal(fx->wakes, 2);
}

/* ---- stopping ---- */

static void on_stop_now(uv_timer_t *t)
{
    struct fx *fx = t->data;

    node_intake_stop(&fx->intake);
    uv_close((uv_handle_t *)t, NULL);
}

static void client_after_stop(struct fx *fx)
{
    static const char *r[] = {"late@example.com", NULL};
    Smtpsync__Frame f;
    Smtpsync__SubmitRequest s;

    usleep(100 * 1000);
    submission(&f, &s, 1, r, MESSAGE);
    call_submit(fx, 0, &f);
    call_queue(fx, 1, LIST, 0);
}

static void test_node_intake_refuses_once_stopped(void **state)
{
    struct fx *fx = *state;
    uv_timer_t t;

    uv_timer_init(&fx->loop, &t);
    t.data = fx;
    uv_timer_start(&t, on_stop_now, 10, 0);
    run_with_client(fx, client_after_stop);
    assert_int_equal(fx->ids[0], 0);
    assert_string_equal(fx->errors[0], "the daemon is stopping");
    assert_int_equal(fx->codes[1], ERROR_CONFLICT);
}

/* ---- group commit ---- */

/* Holds the outbox's LMDB write lock from a thread of its own, as a slow
 * disk holds a commit, until `release` is set. */
static void *writer_lock_main(void *arg)
{
    struct writer_lock *w = arg;
    MDB_env *env = NULL;
    MDB_txn *txn;

    if (mdb_env_create(&env) != 0 || mdb_env_set_maxdbs(env, 8) != 0 ||
        mdb_env_open(env, w->dir, MDB_NOTLS, 0600) != 0 || mdb_txn_begin(env, NULL, 0, &txn) != 0) {
        atomic_store(&w->locked, -1);
        mdb_env_close(env);
        return NULL;
    }
    atomic_store(&w->locked, 1);
    while (atomic_load(&w->release) == 0)
        usleep(500);
    mdb_txn_abort(txn);
    mdb_env_close(env);
    return NULL;
}

static void writer_lock_take(struct writer_lock *w, const char *dir)
{
    w->dir = dir;
    assert_int_equal(pthread_create(&w->thread, NULL, writer_lock_main, w), 0);
    while (atomic_load(&w->locked) == 0)
        usleep(200);
    assert_int_equal(atomic_load(&w->locked), 1);
}

static void writer_lock_release(struct writer_lock *w)
{
    atomic_store(&w->release, 1);
    assert_int_equal(pthread_join(w->thread, NULL), 0);
}

/* On the loop: once the first submission's commit is in flight, lets the
 * client send three more; once those are read and queued behind it,
 * lets the commit go. */
static void on_group_tick(uv_timer_t *t)
{
    struct fx *fx = t->data;

    if (atomic_load(&fx->stage) == 0 && fx->intake.committing && fx->intake.nflight == 1)
        atomic_store(&fx->stage, 1);
    if (atomic_load(&fx->stage) == 1 && fx->intake.nbatch == 3) {
        atomic_store(&fx->stage, 2);
        fx->held_ticks = fx->ticks;
        writer_lock_release(&fx->lock);
        uv_close((uv_handle_t *)t, NULL);
    }
    fx->ticks++;
}

static void *client_first(void *arg)
{
    static const char *r[] = {"first@example.com", NULL};
    struct fx *fx = arg;
    Smtpsync__Frame f;
    Smtpsync__SubmitRequest s;

    submission(&f, &s, 9, r, MESSAGE);
    call_submit(fx, 4, &f);
    return NULL;
}

static void client_group(struct fx *fx)
{
    pthread_t first;

    if (pthread_create(&first, NULL, client_first, fx) != 0)
        return;
    while (atomic_load(&fx->stage) < 1)
        usleep(200);
    client_three_in_one_write(fx);
    pthread_join(first, NULL);
}

/* Submissions read while a commit is in flight (the loop keeps reading)
 * wait, and go together in the next commit: two commits for four. */
static void test_node_intake_group_commit_while_in_flight(void **state)
{
    struct fx *fx = *state;
    char obdir[4200];
    uv_timer_t t;

    snprintf(obdir, sizeof(obdir), "%s/outbox", fx->dir);
    writer_lock_take(&fx->lock, obdir);
    uv_timer_init(&fx->loop, &t);
    t.data = fx;
    uv_timer_start(&t, on_group_tick, 1, 1);
    run_with_client(fx, client_group);
    assert_int_equal(atomic_load(&fx->stage), 2);
    assert_true(fx->held_ticks >= 1);
    assert_int_equal(fx->rc[4], 0);
    assert_int_equal(fx->ids[4], 1);
    assert_int_equal(fx->ids[0], 2);
    assert_int_equal(fx->ids[1], 3);
    assert_int_equal(fx->ids[2], 4);
    /* One wake-up per commit. */
    assert_int_equal(fx->wakes, 2);
    assert_int_equal(outbox_verify(fx->outbox), 0);
}

int main(void)
{
#define T(name) cmocka_unit_test_setup_teardown(name, setup, teardown)
    const struct CMUnitTest tests[] = {
        T(test_node_intake_batches_one_transaction),
        T(test_node_intake_refuses_bad_submissions),
        T(test_node_intake_queue_list_retry_drop),
        T(test_node_intake_refuses_once_stopped),
        T(test_node_intake_group_commit_while_in_flight),
    };
#undef T

    signal(SIGPIPE, SIG_IGN);
    return cmocka_run_group_tests(tests, NULL, NULL);
}
