/*
 * test_submit: the submission socket's server (on a libuv loop in the test
 * thread) against its blocking client, or a raw socket, in a second thread.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <signal.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include <uv.h>

#include "error.h"
#include "frame.h"
#include "submit.h"
#include "testutil.h"

enum reply_mode {
    REPLY_NOW,     /* inside the callback */
    REPLY_LATER,   /* from a timer, after the callback returned */
    REPLY_NEVER,   /* held; answered after the server stopped */
    REPLY_REVERSE, /* held until 3 arrived, then answered last first */
};

struct fx {
    uv_loop_t loop;
    uv_async_t done;
    uv_timer_t later;
    struct submit_server *srv;
    char *dir;
    char path[200];
    enum reply_mode mode;
    int submits, queues, stopped;
    unsigned last_uid;
    char last_rcpt[64];
    struct submit_request *held[8];
    int nheld;
    /* The client thread. */
    pthread_t thread;
    void (*client)(struct fx *);
    int rc;
    char why[512];
    Smtpsync__Frame *reply;
    uint8_t raw[4096]; /* what a raw client read */
    size_t nraw;
    bool raw_eof;
};

/* ---- server side ---- */

static void answer_held(struct fx *fx)
{
    for (int i = fx->nheld - 1; i >= 0; i--)
        submit_reply_send(fx->held[i], 1000 + (uint64_t)i, NULL);
    fx->nheld = 0;
}

static void on_later(uv_timer_t *t)
{
    answer_held(t->data);
}

static void on_submit(void *ctx, struct submit_request *req, const Smtpsync__SubmitRequest *msg,
                      unsigned uid)
{
    struct fx *fx = ctx;

    fx->submits++;
    fx->last_uid = uid;
    snprintf(fx->last_rcpt, sizeof(fx->last_rcpt), "%s", msg->n_rcpt_to > 0 ? msg->rcpt_to[0] : "");
    switch (fx->mode) {
    case REPLY_NOW:
        if (msg->n_rcpt_to == 0)
            submit_reply_send(req, 0, "no recipient");
        else
            submit_reply_send(req, 42, NULL);
        return;
    case REPLY_LATER:
        fx->held[fx->nheld++] = req;
        uv_timer_start(&fx->later, on_later, 20, 0);
        return;
    case REPLY_NEVER:
        fx->held[fx->nheld++] = req;
        return;
    case REPLY_REVERSE:
        fx->held[fx->nheld++] = req;
        if (fx->nheld == 3)
            answer_held(fx);
        return;
    }
}

static void on_queue(void *ctx, struct submit_request *req, const Smtpsync__Frame *frame,
                     unsigned uid)
{
    struct fx *fx = ctx;
    Smtpsync__AdminReply r;
    Smtpsync__QueueReply q;
    Smtpsync__OutboxMessage m, *list[1] = {&m};
    char *rcpts[1] = {(char *)(uintptr_t) "x@example.com"};

    (void)uid;
    fx->queues++;
    smtpsync__admin_reply__init(&r);
    if (frame->body_case == SMTPSYNC__FRAME__BODY_QUEUE_ACTION) {
        r.code = ERROR_NOT_FOUND;
        r.error = (char *)(uintptr_t) "no such message";
        submit_reply_admin(req, &r);
        return;
    }
    smtpsync__queue_reply__init(&q);
    smtpsync__outbox_message__init(&m);
    m.id = 7;
    m.attempts = 2;
    m.n_rcpt_to = 1;
    m.rcpt_to = rcpts;
    q.n_pending = 1;
    q.pending = list;
    r.queue = &q;
    submit_reply_admin(req, &r);
}

static void on_stopped(void *arg)
{
    struct fx *fx = arg;

    fx->stopped++;
}

static void on_async_closed(uv_handle_t *h)
{
    (void)h;
}

/* The client thread is done: stop everything so uv_run returns. */
static void on_done(uv_async_t *a)
{
    struct fx *fx = a->data;

    if (fx->srv != NULL)
        submit_server_stop(fx->srv, on_stopped, fx);
    fx->srv = NULL;
    uv_close((uv_handle_t *)&fx->done, on_async_closed);
    uv_close((uv_handle_t *)&fx->later, on_async_closed);
}

static const struct submit_server_callbacks callbacks = {on_submit, on_queue};

static int setup(void **state)
{
    struct fx *fx = calloc(1, sizeof(*fx));

    assert_non_null(fx);
    fx->dir = testutil_tmpdir();
    snprintf(fx->path, sizeof(fx->path), "%s/submit.sock", fx->dir);
    assert_int_equal(uv_loop_init(&fx->loop), 0);
    assert_int_equal(uv_async_init(&fx->loop, &fx->done, on_done), 0);
    assert_int_equal(uv_timer_init(&fx->loop, &fx->later), 0);
    fx->done.data = fx;
    fx->later.data = fx;
    *state = fx;
    return 0;
}

static int teardown(void **state)
{
    struct fx *fx = *state;

    assert_int_equal(uv_loop_close(&fx->loop), 0);
    if (fx->reply != NULL)
        smtpsync__frame__free_unpacked(fx->reply, NULL);
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

/* Starts the server, runs `client` in a thread until it is done, stops. */
static void run_with_client(struct fx *fx, void (*client)(struct fx *))
{
    if (fx->srv == NULL)
        assert_int_equal(submit_server_start(&fx->loop, fx->path, &callbacks, fx, &fx->srv), 0);
    fx->client = client;
    assert_int_equal(pthread_create(&fx->thread, NULL, client_main, fx), 0);
    assert_int_equal(uv_run(&fx->loop, UV_RUN_DEFAULT), 0);
    assert_int_equal(pthread_join(fx->thread, NULL), 0);
    assert_int_equal(fx->stopped, 1);
    /* Stopping removed the socket file. */
    assert_int_equal(access(fx->path, F_OK), -1);
}

/* ---- client side ---- */

static void submit_frame(Smtpsync__Frame *f, Smtpsync__SubmitRequest *s, uint64_t id,
                         const char *rcpt)
{
    static char *rcpts[4];

    smtpsync__frame__init(f);
    smtpsync__submit_request__init(s);
    rcpts[id % 4] = (char *)(uintptr_t)rcpt;
    s->priority = SMTPSYNC__PRIORITY__PRIORITY_TOKENCODE;
    s->n_rcpt_to = rcpt != NULL ? 1 : 0;
    s->rcpt_to = &rcpts[id % 4];
    s->message.data = (uint8_t *)(uintptr_t) "Subject: t\r\n\r\nx\r\n";
    s->message.len = 17;
    f->id = id;
    f->body_case = SMTPSYNC__FRAME__BODY_SUBMIT;
    f->submit = s;
}

static void client_submit(struct fx *fx)
{
    Smtpsync__Frame f;
    Smtpsync__SubmitRequest s;

    submit_frame(&f, &s, 5, "a@example.com");
    fx->rc = submit_call(fx->path, &f, 5000, &fx->reply, fx->why, sizeof(fx->why));
}

static void client_submit_short(struct fx *fx)
{
    Smtpsync__Frame f;
    Smtpsync__SubmitRequest s;

    submit_frame(&f, &s, 6, "b@example.com");
    fx->rc = submit_call(fx->path, &f, 300, &fx->reply, fx->why, sizeof(fx->why));
}

static void test_submit_roundtrip(void **state)
{
    struct fx *fx = *state;
    struct stat st;

    assert_int_equal(submit_server_start(&fx->loop, fx->path, &callbacks, fx, &fx->srv), 0);
    /* Who may submit is decided by the file mode. */
    assert_int_equal(stat(fx->path, &st), 0);
    assert_true(S_ISSOCK(st.st_mode));
    assert_int_equal(st.st_mode & 07777, 0660);
    run_with_client(fx, client_submit);
    assert_int_equal(fx->rc, 0);
    assert_int_equal(fx->submits, 1);
    assert_int_equal(fx->last_uid, getuid());
    assert_string_equal(fx->last_rcpt, "a@example.com");
    assert_int_equal(fx->reply->id, 5);
    assert_int_equal(fx->reply->body_case, SMTPSYNC__FRAME__BODY_SUBMIT_REPLY);
    assert_int_equal(fx->reply->submit_reply->id, 42);
    assert_string_equal(fx->reply->submit_reply->error, "");
}

static void test_submit_reply_later(void **state)
{
    struct fx *fx = *state;

    fx->mode = REPLY_LATER;
    run_with_client(fx, client_submit);
    assert_int_equal(fx->rc, 0);
    assert_int_equal(fx->submits, 1);
    assert_int_equal(fx->reply->submit_reply->id, 1000);
}

static void client_refused(struct fx *fx)
{
    Smtpsync__Frame f;
    Smtpsync__SubmitRequest s;

    submit_frame(&f, &s, 9, NULL);
    fx->rc = submit_call(fx->path, &f, 5000, &fx->reply, fx->why, sizeof(fx->why));
}

static void test_submit_error_reply(void **state)
{
    struct fx *fx = *state;

    run_with_client(fx, client_refused);
    assert_int_equal(fx->rc, 0);
    assert_int_equal(fx->reply->submit_reply->id, 0);
    assert_string_equal(fx->reply->submit_reply->error, "no recipient");
}

static void client_queue(struct fx *fx)
{
    Smtpsync__Frame f;
    Smtpsync__QueueQuery q;

    smtpsync__frame__init(&f);
    smtpsync__queue_query__init(&q);
    f.id = 77;
    f.body_case = SMTPSYNC__FRAME__BODY_QUEUE_QUERY;
    f.queue_query = &q;
    fx->rc = submit_call(fx->path, &f, 5000, &fx->reply, fx->why, sizeof(fx->why));
}

static void test_submit_queue_query(void **state)
{
    struct fx *fx = *state;

    run_with_client(fx, client_queue);
    assert_int_equal(fx->rc, 0);
    assert_int_equal(fx->queues, 1);
    assert_int_equal(fx->reply->id, 77);
    assert_int_equal(fx->reply->body_case, SMTPSYNC__FRAME__BODY_ADMIN_REPLY);
    assert_non_null(fx->reply->admin_reply->queue);
    assert_int_equal(fx->reply->admin_reply->queue->n_pending, 1);
    assert_int_equal(fx->reply->admin_reply->queue->pending[0]->id, 7);
    assert_string_equal(fx->reply->admin_reply->queue->pending[0]->rcpt_to[0], "x@example.com");
}

static void client_unsupported(struct fx *fx)
{
    Smtpsync__Frame f;
    Smtpsync__StatusQuery q;

    smtpsync__frame__init(&f);
    smtpsync__status_query__init(&q);
    f.id = 3;
    f.body_case = SMTPSYNC__FRAME__BODY_STATUS_QUERY;
    f.status_query = &q;
    fx->rc = submit_call(fx->path, &f, 5000, &fx->reply, fx->why, sizeof(fx->why));
    /* The connection stays usable after a refused request: a new call works. */
    if (fx->rc == ERROR_INVALID) {
        client_submit(fx);
    }
}

static void test_submit_unsupported_request(void **state)
{
    struct fx *fx = *state;

    run_with_client(fx, client_unsupported);
    assert_int_equal(fx->rc, 0);
    assert_int_equal(fx->submits, 1);
    assert_int_equal(fx->queues, 0);
}

static void test_submit_timeout_then_stop(void **state)
{
    struct fx *fx = *state;

    fx->mode = REPLY_NEVER;
    run_with_client(fx, client_submit_short);
    assert_int_equal(fx->rc, -ETIMEDOUT);
    assert_non_null(strstr(fx->why, "no reply from the daemon within 300 ms"));
    assert_null(fx->reply);
    /* The callee still owns the request and answers it: nothing is sent,
     * and it is freed (LeakSanitizer checks). */
    assert_int_equal(fx->nheld, 1);
    answer_held(fx);
}

/* The server stops while a request is pending: the client gets an error. */
static void client_wait_for_stop(struct fx *fx)
{
    client_submit(fx);
}

static void on_stop_timer(uv_timer_t *t)
{
    struct fx *fx = t->data;

    submit_server_stop(fx->srv, on_stopped, fx);
    fx->srv = NULL;
}

static void test_submit_stop_answers_pending(void **state)
{
    struct fx *fx = *state;

    fx->mode = REPLY_NEVER;
    assert_int_equal(submit_server_start(&fx->loop, fx->path, &callbacks, fx, &fx->srv), 0);
    fx->later.data = fx;
    uv_timer_start(&fx->later, on_stop_timer, 200, 0);
    run_with_client(fx, client_wait_for_stop);
    assert_int_equal(fx->rc, ERROR_CONFLICT);
    assert_non_null(strstr(fx->why, "the daemon is stopping"));
    answer_held(fx);
}

/* ---- raw clients ---- */

static void sun_of(const char *path, struct sockaddr_un *sa)
{
    memset(sa, 0, sizeof(*sa));
    sa->sun_family = AF_UNIX;
    assert_true(strlen(path) < sizeof(sa->sun_path));
    memcpy(sa->sun_path, path, strlen(path) + 1);
}

static int raw_connect(const char *path)
{
    struct sockaddr_un sa;
    int fd = socket(AF_UNIX, SOCK_STREAM, 0);

    sun_of(path, &sa);
    if (fd < 0 || connect(fd, (struct sockaddr *)&sa, sizeof(sa)) != 0)
        return -1;
    return fd;
}

/* Reads until EOF (or 5 s). */
static void raw_read_all(struct fx *fx, int fd)
{
    struct timeval tv = {5, 0};

    setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
    for (;;) {
        ssize_t n = read(fd, fx->raw + fx->nraw, sizeof(fx->raw) - fx->nraw);
        if (n <= 0) {
            fx->raw_eof = n == 0;
            return;
        }
        fx->nraw += (size_t)n;
    }
}

/* Decodes the frames a raw client read; returns how many. */
static size_t raw_frames(struct fx *fx, Smtpsync__Frame **out, size_t max)
{
    struct frame_reader r;
    size_t n = 0;

    frame_reader_init(&r, 0);
    assert_int_equal(frame_reader_feed(&r, fx->raw, fx->nraw), 0);
    while (n < max && frame_reader_next(&r, &out[n]) == 0)
        n++;
    assert_int_equal(frame_reader_pending(&r), 0);
    frame_reader_free(&r);
    return n;
}

static void client_zero_length(struct fx *fx)
{
    static const uint8_t zero[4] = {0, 0, 0, 0};
    int fd = raw_connect(fx->path);

    if (fd < 0 || write(fd, zero, sizeof(zero)) != 4)
        return;
    raw_read_all(fx, fd);
    close(fd);
}

static void test_submit_bad_frame_closes_with_error(void **state)
{
    struct fx *fx = *state;
    Smtpsync__Frame *f[2];

    run_with_client(fx, client_zero_length);
    assert_true(fx->raw_eof);
    assert_int_equal(raw_frames(fx, f, 2), 1);
    assert_int_equal(f[0]->body_case, SMTPSYNC__FRAME__BODY_ERROR);
    assert_int_equal(f[0]->error->code, ERROR_DECODE);
    assert_non_null(strstr(f[0]->error->message, "bad frame"));
    smtpsync__frame__free_unpacked(f[0], NULL);
    assert_int_equal(fx->submits, 0);
}

static void client_oversized(struct fx *fx)
{
    uint8_t hdr[64] = {0};
    int fd = raw_connect(fx->path);
    uint32_t n = SUBMIT_FRAME_MAX + 1;

    hdr[0] = (uint8_t)(n >> 24);
    hdr[1] = (uint8_t)(n >> 16);
    hdr[2] = (uint8_t)(n >> 8);
    hdr[3] = (uint8_t)n;
    if (fd < 0 || write(fd, hdr, sizeof(hdr)) != sizeof(hdr))
        return;
    raw_read_all(fx, fd);
    close(fd);
}

static void test_submit_oversized_frame_refused(void **state)
{
    struct fx *fx = *state;
    Smtpsync__Frame *f[2];

    run_with_client(fx, client_oversized);
    assert_true(fx->raw_eof);
    assert_int_equal(raw_frames(fx, f, 2), 1);
    assert_int_equal(f[0]->error->code, ERROR_TOO_BIG);
    smtpsync__frame__free_unpacked(f[0], NULL);
}

static void client_truncated(struct fx *fx)
{
    Smtpsync__Frame f;
    Smtpsync__SubmitRequest s;
    uint8_t *buf;
    size_t len;
    int fd = raw_connect(fx->path);

    submit_frame(&f, &s, 1, "t@example.com");
    if (fd < 0 || frame_pack(&f, 0, &buf, &len) != 0)
        return;
    if (write(fd, buf, len - 4) == (ssize_t)(len - 4))
        shutdown(fd, SHUT_WR);
    raw_read_all(fx, fd);
    free(buf);
    close(fd);
}

static void test_submit_truncated_frame_dropped(void **state)
{
    struct fx *fx = *state;

    run_with_client(fx, client_truncated);
    assert_true(fx->raw_eof);
    assert_int_equal(fx->nraw, 0);
    assert_int_equal(fx->submits, 0);
}

static void client_pipelined(struct fx *fx)
{
    uint8_t all[1024];
    size_t used = 0;
    int fd = raw_connect(fx->path);
    static const char *const rcpt[] = {"p0@example.com", "p1@example.com", "p2@example.com"};

    for (uint64_t i = 0; i < 3; i++) {
        Smtpsync__Frame f;
        Smtpsync__SubmitRequest s;
        uint8_t *buf;
        size_t len;

        submit_frame(&f, &s, 10 + i, rcpt[i]);
        if (frame_pack(&f, 0, &buf, &len) != 0)
            return;
        memcpy(all + used, buf, len);
        used += len;
        free(buf);
    }
    /* All three in one write, then our side closed: replies still come. */
    if (fd < 0 || write(fd, all, used) != (ssize_t)used)
        return;
    shutdown(fd, SHUT_WR);
    raw_read_all(fx, fd);
    close(fd);
}

static void test_submit_pipelined_replies_by_id(void **state)
{
    struct fx *fx = *state;
    Smtpsync__Frame *f[4];

    fx->mode = REPLY_REVERSE;
    run_with_client(fx, client_pipelined);
    assert_int_equal(fx->submits, 3);
    assert_true(fx->raw_eof);
    assert_int_equal(raw_frames(fx, f, 4), 3);
    /* Answered last first: each reply carries its request's frame id. */
    assert_int_equal(f[0]->id, 12);
    assert_int_equal(f[0]->submit_reply->id, 1002);
    assert_int_equal(f[1]->id, 11);
    assert_int_equal(f[1]->submit_reply->id, 1001);
    assert_int_equal(f[2]->id, 10);
    assert_int_equal(f[2]->submit_reply->id, 1000);
    for (int i = 0; i < 3; i++)
        smtpsync__frame__free_unpacked(f[i], NULL);
}

static void client_vanishes(struct fx *fx)
{
    Smtpsync__Frame f;
    Smtpsync__SubmitRequest s;
    uint8_t *buf;
    size_t len;
    int fd = raw_connect(fx->path);

    submit_frame(&f, &s, 1, "gone@example.com");
    if (fd < 0 || frame_pack(&f, 0, &buf, &len) != 0)
        return;
    if (write(fd, buf, len) == (ssize_t)len)
        usleep(100 * 1000); /* the server reads it before we go */
    free(buf);
    close(fd);
}

static void test_submit_client_gone_before_reply(void **state)
{
    struct fx *fx = *state;

    fx->mode = REPLY_NEVER;
    run_with_client(fx, client_vanishes);
    assert_int_equal(fx->submits, 1);
    /* Answering a request whose client left sends nothing and frees it. */
    answer_held(fx);
}

/* ---- start-up ---- */

static void test_submit_second_server_refused(void **state)
{
    struct fx *fx = *state;
    struct submit_server *other = (struct submit_server *)fx;

    assert_int_equal(submit_server_start(&fx->loop, fx->path, &callbacks, fx, &fx->srv), 0);
    assert_int_equal(submit_server_start(&fx->loop, fx->path, &callbacks, fx, &other), -EADDRINUSE);
    assert_null(other);
    run_with_client(fx, client_submit);
    /* The first server kept its socket. */
    assert_int_equal(fx->rc, 0);
}

static void test_submit_stale_socket_replaced(void **state)
{
    struct fx *fx = *state;
    struct sockaddr_un sa;
    int fd = socket(AF_UNIX, SOCK_STREAM, 0);

    /* A socket file left by a daemon that died: nothing listens. */
    sun_of(fx->path, &sa);
    assert_int_equal(bind(fd, (struct sockaddr *)&sa, sizeof(sa)), 0);
    close(fd);
    run_with_client(fx, client_submit);
    assert_int_equal(fx->rc, 0);
}

static void test_submit_non_socket_path_refused(void **state)
{
    struct fx *fx = *state;
    struct submit_server *s;
    struct stat st;
    int fd = open(fx->path, O_WRONLY | O_CREAT, 0600);

    assert_true(fd >= 0);
    assert_int_equal(write(fd, "keep", 4), 4);
    close(fd);
    assert_int_equal(submit_server_start(&fx->loop, fx->path, &callbacks, fx, &s), -EEXIST);
    assert_int_equal(stat(fx->path, &st), 0);
    assert_int_equal(st.st_size, 4);
    /* A path too long for a Unix socket. */
    char longpath[300];
    memset(longpath, 'a', sizeof(longpath) - 1);
    longpath[0] = '/';
    longpath[sizeof(longpath) - 1] = '\0';
    assert_int_equal(submit_server_start(&fx->loop, longpath, &callbacks, fx, &s), -ENAMETOOLONG);
    /* A directory that does not exist. */
    snprintf(longpath, sizeof(longpath), "%s/none/s.sock", fx->dir);
    assert_int_equal(submit_server_start(&fx->loop, longpath, &callbacks, fx, &s), -ENOENT);
    uv_close((uv_handle_t *)&fx->done, on_async_closed);
    uv_close((uv_handle_t *)&fx->later, on_async_closed);
    assert_int_equal(uv_run(&fx->loop, UV_RUN_DEFAULT), 0);
}

static void test_submit_call_without_daemon(void **state)
{
    struct fx *fx = *state;
    Smtpsync__Frame f, *reply = (Smtpsync__Frame *)fx;
    Smtpsync__SubmitRequest s;
    struct sockaddr_un sa;
    char why[512];
    int fd;

    submit_frame(&f, &s, 1, "a@example.com");
    assert_int_equal(submit_call(fx->path, &f, 1000, &reply, why, sizeof(why)), -ENOENT);
    assert_null(reply);
    assert_non_null(strstr(why, "does not exist"));
    assert_non_null(strstr(why, fx->path));

    fd = socket(AF_UNIX, SOCK_STREAM, 0);
    sun_of(fx->path, &sa);
    assert_int_equal(bind(fd, (struct sockaddr *)&sa, sizeof(sa)), 0);
    close(fd);
    assert_int_equal(submit_call(fx->path, &f, 1000, &reply, why, sizeof(why)), -ECONNREFUSED);
    assert_non_null(strstr(why, "no daemon is listening"));
    uv_close((uv_handle_t *)&fx->done, on_async_closed);
    uv_close((uv_handle_t *)&fx->later, on_async_closed);
    assert_int_equal(uv_run(&fx->loop, UV_RUN_DEFAULT), 0);
}

int main(void)
{
#define T(name) cmocka_unit_test_setup_teardown(name, setup, teardown)
    const struct CMUnitTest tests[] = {
        T(test_submit_roundtrip),
        T(test_submit_reply_later),
        T(test_submit_error_reply),
        T(test_submit_queue_query),
        T(test_submit_unsupported_request),
        T(test_submit_timeout_then_stop),
        T(test_submit_stop_answers_pending),
        T(test_submit_bad_frame_closes_with_error),
        T(test_submit_oversized_frame_refused),
        T(test_submit_truncated_frame_dropped),
        T(test_submit_pipelined_replies_by_id),
        T(test_submit_client_gone_before_reply),
        T(test_submit_second_server_refused),
        T(test_submit_stale_socket_replaced),
        T(test_submit_non_socket_path_refused),
        T(test_submit_call_without_daemon),
    };
#undef T

    /* As in the daemons (node.c): a peer that went away is an error
     * return, not a signal. */
    signal(SIGPIPE, SIG_IGN);
    return cmocka_run_group_tests(tests, NULL, NULL);
}
