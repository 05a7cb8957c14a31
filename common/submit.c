/*
 * submit: the local submission socket, server (libuv) and client (blocking).
 *
 * Server. One uv_pipe_t listens on the path; each accepted connection has
 * its own frame reader (SUBMIT_FRAME_MAX), an idle timer and a list of the
 * requests handed to the callbacks and not answered yet. A client may send
 * several requests on one connection; replies carry the request's frame id
 * and may come in any order. A connection is closed, with a logged reason
 * and an Error frame to the peer, when it sends a frame that the reader
 * refuses; after SUBMIT_IDLE_MS without traffic while nothing is pending;
 * and when the peer has closed its side and every reply is written.
 *
 * Ownership. The server owns connections; a connection lists its pending
 * requests but does not own them: the callee answers each exactly once
 * with submit_reply_send() or submit_reply_admin(), which free it. When a
 * connection goes away first, its requests are detached (conn = NULL) and
 * their answers are dropped. The decoded message given to a callback is
 * valid only during the callback: copy what you keep.
 *
 * The process must ignore SIGPIPE (the daemons do, node.c): a reply
 * written to a client that went away is then an error, not a signal.
 */
#include "submit.h"

#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <stddef.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

#include "error.h"
#include "frame.h"
#include "log.h"

#define SUBMIT_IDLE_MS      60000 /* a client connection without traffic */
#define SUBMIT_STOP_MS      1000  /* flushing replies when the server stops */
#define SUBMIT_CONN_MAX     256   /* concurrent client connections */
#define SUBMIT_PIPELINE_MAX 64    /* unanswered requests per connection */
#define SUBMIT_BACKLOG      128

#define SUBMIT_CONTAINER(ptr, type, member) ((type *)((char *)(ptr)-offsetof(type, member)))

struct submit_request {
    struct submit_conn *conn; /* NULL once detached */
    struct submit_request *prev, *next;
    uint64_t frame_id;
};

struct submit_conn {
    uv_pipe_t pipe;
    uv_timer_t idle;
    uv_shutdown_t shutdown;
    struct submit_server *srv;
    struct submit_conn *prev, *next;
    struct frame_reader rd;
    struct submit_request *reqs; /* pending, not owned */
    unsigned npending;
    unsigned closes; /* handle closes still to come before the free */
    unsigned uid;
    uint64_t serial; /* for log lines */
    bool reading;    /* uv_read_start is in effect */
    bool processing; /* in conn_process: a reply given meanwhile must not recurse */
    bool eof;        /* the peer has closed its side */
    bool finishing;  /* uv_shutdown issued: flushing, then close */
    bool closing;    /* uv_close issued */
};

struct submit_server {
    uv_loop_t *loop;
    uv_pipe_t pipe;
    struct submit_server_callbacks cb;
    void *ctx;
    char path[sizeof(((struct sockaddr_un *)0)->sun_path)];
    dev_t dev;
    ino_t ino;
    struct submit_conn *conns;
    size_t nconns;
    uint64_t serial;
    bool stopping;
    bool pipe_closed;
    void (*done)(void *arg);
    void *done_arg;
};

struct submit_write {
    uv_write_t req;
    uint8_t *buf;
};

static void conn_close(struct submit_conn *c);
static void conn_process(struct submit_conn *c);

/* ---- server: teardown ---- */

static void server_maybe_done(struct submit_server *s)
{
    void (*done)(void *);
    void *arg;

    if (!s->stopping || !s->pipe_closed || s->nconns > 0)
        return;
    done = s->done;
    arg = s->done_arg;
    free(s);
    if (done != NULL)
        done(arg);
}

static void on_conn_closed(uv_handle_t *h)
{
    struct submit_conn *c = h->data;
    struct submit_server *s = c->srv;

    if (--c->closes > 0)
        return;
    if (c->prev != NULL)
        c->prev->next = c->next;
    else
        s->conns = c->next;
    if (c->next != NULL)
        c->next->prev = c->prev;
    s->nconns--;
    free(c);
    server_maybe_done(s);
}

/* Detaches the pending requests: their callees still answer them (and
 * free them), but nothing is sent. */
static void conn_detach_requests(struct submit_conn *c)
{
    struct submit_request *r, *next;

    for (r = c->reqs; r != NULL; r = next) {
        next = r->next;
        r->conn = NULL;
        r->prev = r->next = NULL;
    }
    c->reqs = NULL;
    c->npending = 0;
}

/* Closes at once; pending writes are cancelled. */
static void conn_close(struct submit_conn *c)
{
    if (c->closing)
        return;
    c->closing = true;
    conn_detach_requests(c);
    frame_reader_free(&c->rd);
    c->closes = 2;
    uv_close((uv_handle_t *)&c->pipe, on_conn_closed);
    uv_close((uv_handle_t *)&c->idle, on_conn_closed);
}

static void on_conn_shutdown(uv_shutdown_t *req, int status)
{
    struct submit_conn *c = req->data;

    (void)status;
    conn_close(c);
}

/* Closes after the replies already queued are written. */
static void conn_finish(struct submit_conn *c)
{
    if (c->closing || c->finishing)
        return;
    c->finishing = true;
    if (c->reading) {
        uv_read_stop((uv_stream_t *)&c->pipe);
        c->reading = false;
    }
    c->shutdown.data = c;
    if (uv_shutdown(&c->shutdown, (uv_stream_t *)&c->pipe, on_conn_shutdown) != 0)
        conn_close(c);
}

/* ---- server: writing ---- */

static void on_write(uv_write_t *req, int status)
{
    struct submit_write *w = SUBMIT_CONTAINER(req, struct submit_write, req);
    struct submit_conn *c = req->handle->data;

    if (status < 0 && status != UV_ECANCELED && !c->closing) {
        log_debug("submit: conn=%llu write failed: %s", (unsigned long long)c->serial,
                  uv_strerror(status));
        conn_close(c);
    }
    free(w->buf);
    free(w);
}

/* Queues one frame for the peer; false if it could not (the connection is
 * then closed). */
static bool conn_send(struct submit_conn *c, const Smtpsync__Frame *f)
{
    struct submit_write *w;
    uint8_t *buf;
    size_t len;
    uv_buf_t b;
    int err;

    if (c->closing || c->finishing)
        return false;
    if ((err = frame_pack(f, SUBMIT_FRAME_MAX, &buf, &len)) != 0) {
        log_warnx("submit: conn=%llu cannot encode a reply: %s", (unsigned long long)c->serial,
                  error_str(err));
        return false;
    }
    if ((w = malloc(sizeof(*w))) == NULL) {
        free(buf);
        conn_close(c);
        return false;
    }
    w->buf = buf;
    b = uv_buf_init((char *)buf, (unsigned)len);
    if ((err = uv_write(&w->req, (uv_stream_t *)&c->pipe, &b, 1, on_write)) != 0) {
        free(buf);
        free(w);
        conn_close(c);
        return false;
    }
    return true;
}

static void conn_send_error(struct submit_conn *c, uint64_t id, int code, const char *message)
{
    Smtpsync__Frame f;
    Smtpsync__Error e;

    smtpsync__frame__init(&f);
    smtpsync__error__init(&e);
    e.code = code;
    e.message = (char *)(uintptr_t)message;
    f.id = id;
    f.body_case = SMTPSYNC__FRAME__BODY_ERROR;
    f.error = &e;
    conn_send(c, &f);
}

/* Refuses the peer's stream: an Error frame, a log line, then close. */
static void conn_refuse(struct submit_conn *c, int err, const char *what)
{
    char msg[160];

    snprintf(msg, sizeof(msg), "%s: %s", what, error_str(err));
    log_warnx("submit: closing connection conn=%llu uid=%u: %s", (unsigned long long)c->serial,
              c->uid, msg);
    conn_send_error(c, 0, err, msg);
    conn_finish(c);
}

/* ---- server: requests ---- */

static void request_unlink(struct submit_request *r)
{
    struct submit_conn *c = r->conn;

    if (c == NULL)
        return;
    if (r->prev != NULL)
        r->prev->next = r->next;
    else
        c->reqs = r->next;
    if (r->next != NULL)
        r->next->prev = r->prev;
    c->npending--;
    r->conn = NULL;
}

/* After a reply: close if the peer is gone and nothing is left, or resume
 * reading if the pipeline limit had stopped it. */
static void conn_after_reply(struct submit_conn *c)
{
    if (c->closing || c->finishing)
        return;
    if (c->eof) {
        if (c->npending == 0)
            conn_finish(c);
        return;
    }
    if (!c->reading && c->npending < SUBMIT_PIPELINE_MAX)
        conn_process(c);
}

void submit_reply_send(struct submit_request *req, uint64_t id, const char *error)
{
    Smtpsync__Frame f;
    Smtpsync__SubmitReply r;
    struct submit_conn *c = req->conn;

    if (c != NULL) {
        smtpsync__frame__init(&f);
        smtpsync__submit_reply__init(&r);
        request_unlink(req);
        r.id = error == NULL ? id : 0;
        r.error = (char *)(uintptr_t)(error != NULL ? error : id == 0 ? "not accepted" : "");
        f.id = req->frame_id;
        f.body_case = SMTPSYNC__FRAME__BODY_SUBMIT_REPLY;
        f.submit_reply = &r;
        conn_send(c, &f);
        conn_after_reply(c);
    }
    free(req);
}

void submit_reply_admin(struct submit_request *req, const Smtpsync__AdminReply *reply)
{
    Smtpsync__Frame f;
    Smtpsync__AdminReply too_big;
    struct submit_conn *c = req->conn;

    if (c != NULL) {
        smtpsync__frame__init(&f);
        smtpsync__admin_reply__init(&too_big);
        request_unlink(req);
        f.id = req->frame_id;
        f.body_case = SMTPSYNC__FRAME__BODY_ADMIN_REPLY;
        f.admin_reply = (Smtpsync__AdminReply *)(uintptr_t)reply;
        /* A reply over the frame limit becomes an error the client can
         * show, instead of a closed connection. */
        if (smtpsync__frame__get_packed_size(&f) > SUBMIT_FRAME_MAX) {
            too_big.code = ERROR_TOO_BIG;
            too_big.error = (char *)(uintptr_t) "the reply is too large for the submission socket";
            f.admin_reply = &too_big;
        }
        conn_send(c, &f);
        conn_after_reply(c);
    }
    free(req);
}

static struct submit_request *request_new(struct submit_conn *c, uint64_t frame_id)
{
    struct submit_request *r = calloc(1, sizeof(*r));

    if (r == NULL)
        return NULL;
    r->conn = c;
    r->frame_id = frame_id;
    r->next = c->reqs;
    if (c->reqs != NULL)
        c->reqs->prev = r;
    c->reqs = r;
    c->npending++;
    return r;
}

/* Hands one decoded frame to its callback. */
static void conn_dispatch(struct submit_conn *c, const Smtpsync__Frame *f)
{
    struct submit_server *s = c->srv;
    struct submit_request *r;

    switch (f->body_case) {
    case SMTPSYNC__FRAME__BODY_SUBMIT:
    case SMTPSYNC__FRAME__BODY_QUEUE_QUERY:
    case SMTPSYNC__FRAME__BODY_QUEUE_ACTION:
        break;
    default:
        conn_send_error(c, f->id, ERROR_INVALID,
                        "this request is not served on the submission socket");
        return;
    }
    if ((f->body_case == SMTPSYNC__FRAME__BODY_SUBMIT && s->cb.on_submit == NULL) ||
        (f->body_case != SMTPSYNC__FRAME__BODY_SUBMIT && s->cb.on_queue == NULL)) {
        conn_send_error(c, f->id, ERROR_INVALID, "this daemon does not serve that request");
        return;
    }
    if ((r = request_new(c, f->id)) == NULL) {
        conn_send_error(c, f->id, -ENOMEM, error_str(-ENOMEM));
        return;
    }
    if (f->body_case == SMTPSYNC__FRAME__BODY_SUBMIT)
        s->cb.on_submit(s->ctx, r, f->submit, c->uid);
    else
        s->cb.on_queue(s->ctx, r, f, c->uid);
}

static void on_alloc(uv_handle_t *h, size_t suggested, uv_buf_t *buf)
{
    (void)h;
    buf->base = malloc(suggested);
    buf->len = buf->base != NULL ? suggested : 0;
}

static void on_read(uv_stream_t *stream, ssize_t nread, const uv_buf_t *buf);

/* Dispatches the complete frames buffered, as long as the pipeline has
 * room, and reads more when it has. */
static void conn_process(struct submit_conn *c)
{
    Smtpsync__Frame *f;
    int err;

    if (c->processing)
        return;
    c->processing = true;
    while (!c->closing && !c->finishing && c->npending < SUBMIT_PIPELINE_MAX) {
        err = frame_reader_next(&c->rd, &f);
        if (err == ERROR_EMPTY)
            break;
        if (err != 0) {
            c->processing = false;
            conn_refuse(c, err, "bad frame");
            return;
        }
        conn_dispatch(c, f);
        smtpsync__frame__free_unpacked(f, NULL);
    }
    c->processing = false;
    if (c->closing || c->finishing || c->eof)
        return;
    if (c->npending >= SUBMIT_PIPELINE_MAX) {
        if (c->reading) {
            uv_read_stop((uv_stream_t *)&c->pipe);
            c->reading = false;
        }
    } else if (!c->reading) {
        if (uv_read_start((uv_stream_t *)&c->pipe, on_alloc, on_read) == 0)
            c->reading = true;
        else
            conn_close(c);
    }
}

static void on_read(uv_stream_t *stream, ssize_t nread, const uv_buf_t *buf)
{
    struct submit_conn *c = stream->data;
    int err;

    if (nread > 0) {
        uv_timer_again(&c->idle);
        err = frame_reader_feed(&c->rd, buf->base, (size_t)nread);
        free(buf->base);
        if (err != 0) {
            conn_refuse(c, err, "bad frame");
            return;
        }
        conn_process(c);
        return;
    }
    free(buf->base);
    if (nread == 0)
        return;
    uv_read_stop(stream);
    c->reading = false;
    if (nread != UV_EOF) {
        log_debug("submit: conn=%llu read failed: %s", (unsigned long long)c->serial,
                  uv_strerror((int)nread));
        conn_close(c);
        return;
    }
    c->eof = true;
    if (frame_reader_pending(&c->rd) > 0) {
        log_warnx("submit: closing connection conn=%llu uid=%u: truncated frame (%zu octets "
                  "before the end)",
                  (unsigned long long)c->serial, c->uid, frame_reader_pending(&c->rd));
        conn_close(c);
        return;
    }
    if (c->npending == 0)
        conn_finish(c);
}

static void on_idle(uv_timer_t *t)
{
    struct submit_conn *c = t->data;

    if (c->finishing) {
        log_warnx("submit: closing connection conn=%llu uid=%u: the peer does not read its reply",
                  (unsigned long long)c->serial, c->uid);
        conn_close(c);
        return;
    }
    /* A request being committed is not idleness. */
    if (c->npending > 0)
        return;
    log_info("submit: closing idle connection conn=%llu uid=%u", (unsigned long long)c->serial,
             c->uid);
    conn_close(c);
}

static unsigned peer_uid(uv_pipe_t *p)
{
    struct ucred cred;
    socklen_t len = sizeof(cred);
    uv_os_fd_t fd;

    if (uv_fileno((uv_handle_t *)p, &fd) != 0 ||
        getsockopt(fd, SOL_SOCKET, SO_PEERCRED, &cred, &len) != 0)
        return (unsigned)-1;
    return (unsigned)cred.uid;
}

static void on_connection(uv_stream_t *server, int status)
{
    struct submit_server *s = server->data;
    struct submit_conn *c;

    if (status < 0) {
        log_warnx("submit: accept failed: %s", uv_strerror(status));
        return;
    }
    if ((c = calloc(1, sizeof(*c))) == NULL) {
        log_warnx("submit: accept failed: %s", error_str(-ENOMEM));
        return;
    }
    c->srv = s;
    c->serial = ++s->serial;
    frame_reader_init(&c->rd, SUBMIT_FRAME_MAX);
    uv_pipe_init(s->loop, &c->pipe, 0);
    uv_timer_init(s->loop, &c->idle);
    c->pipe.data = c;
    c->idle.data = c;
    c->next = s->conns;
    if (s->conns != NULL)
        s->conns->prev = c;
    s->conns = c;
    s->nconns++;

    if (uv_accept(server, (uv_stream_t *)&c->pipe) != 0) {
        conn_close(c);
        return;
    }
    c->uid = peer_uid(&c->pipe);
    if (s->nconns > SUBMIT_CONN_MAX) {
        log_warnx("submit: refusing connection uid=%u: %u connections open", c->uid,
                  SUBMIT_CONN_MAX);
        conn_close(c);
        return;
    }
    log_debug("submit: connection conn=%llu uid=%u", (unsigned long long)c->serial, c->uid);
    uv_timer_start(&c->idle, on_idle, SUBMIT_IDLE_MS, SUBMIT_IDLE_MS);
    conn_process(c);
}

/* ---- server: start and stop ---- */

/* Is something accepting connections on `path`? 0: no (a stale socket
 * file, removed), -EADDRINUSE: yes, another negative error: unknown. */
static int clear_stale(const char *path)
{
    struct sockaddr_un sa;
    struct stat st;
    int fd, err;

    if (lstat(path, &st) != 0)
        return errno == ENOENT ? 0 : -errno;
    /* Only ever remove a socket: a mistyped path must not delete a file. */
    if (!S_ISSOCK(st.st_mode))
        return -EEXIST;
    memset(&sa, 0, sizeof(sa));
    sa.sun_family = AF_UNIX;
    memcpy(sa.sun_path, path, strlen(path) + 1);
    if ((fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0)) < 0)
        return -errno;
    if (connect(fd, (struct sockaddr *)&sa, sizeof(sa)) == 0) {
        close(fd);
        return -EADDRINUSE;
    }
    err = errno;
    close(fd);
    if (err != ECONNREFUSED)
        return -err;
    if (unlink(path) != 0 && errno != ENOENT)
        return -errno;
    log_info("submit: removed stale socket %s", path);
    return 0;
}

/* socket, bind, chmod 0660 and listen, before libuv sees the descriptor,
 * so every failure here is synchronous and leaves nothing behind. */
static int listen_socket(const char *path, struct stat *bound)
{
    struct sockaddr_un sa;
    int fd, err;

    memset(&sa, 0, sizeof(sa));
    sa.sun_family = AF_UNIX;
    memcpy(sa.sun_path, path, strlen(path) + 1);
    if ((fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0)) < 0)
        return -errno;
    if (bind(fd, (struct sockaddr *)&sa, sizeof(sa)) != 0) {
        err = -errno;
        goto close_fd;
    }
    /* Who may submit is decided by the file's mode and group (submit.h). */
    if (chmod(path, 0660) != 0 || lstat(path, bound) != 0 || listen(fd, SUBMIT_BACKLOG) != 0) {
        err = -errno;
        goto unlink_path;
    }
    return fd;

unlink_path:
    unlink(path);
close_fd:
    close(fd);
    return err;
}

static void on_server_closed(uv_handle_t *h)
{
    struct submit_server *s = h->data;

    s->pipe_closed = true;
    server_maybe_done(s);
}

int submit_server_start(uv_loop_t *loop, const char *path, const struct submit_server_callbacks *cb,
                        void *ctx, struct submit_server **out)
{
    struct submit_server *s;
    struct stat bound;
    int fd, err;

    *out = NULL;
    if (path == NULL || path[0] == '\0')
        return ERROR_INVALID;
    if ((s = calloc(1, sizeof(*s))) == NULL)
        return -ENOMEM;
    if (strlen(path) >= sizeof(s->path)) {
        free(s);
        return -ENAMETOOLONG;
    }
    memcpy(s->path, path, strlen(path) + 1);
    s->loop = loop;
    s->cb = *cb;
    s->ctx = ctx;

    if ((err = clear_stale(path)) != 0 || (fd = err = listen_socket(path, &bound)) < 0) {
        free(s);
        return err;
    }
    s->dev = bound.st_dev;
    s->ino = bound.st_ino;
    uv_pipe_init(loop, &s->pipe, 0);
    s->pipe.data = s;
    if ((err = uv_pipe_open(&s->pipe, fd)) != 0)
        close(fd); /* not the handle's yet */
    else
        err = uv_listen((uv_stream_t *)&s->pipe, SUBMIT_BACKLOG, on_connection);
    if (err != 0) {
        unlink(path);
        /* The handle is released by the loop; `s` goes with it. */
        s->stopping = true;
        uv_close((uv_handle_t *)&s->pipe, on_server_closed);
        return err;
    }
    *out = s;
    return 0;
}

void submit_server_stop(struct submit_server *s, void (*done)(void *arg), void *arg)
{
    struct submit_conn *c, *next;
    struct stat st;

    if (s->stopping)
        return;
    s->stopping = true;
    s->done = done;
    s->done_arg = arg;
    /* Remove the socket file only if it is still ours. */
    if (lstat(s->path, &st) == 0 && st.st_dev == s->dev && st.st_ino == s->ino)
        unlink(s->path);
    uv_close((uv_handle_t *)&s->pipe, on_server_closed);
    for (c = s->conns; c != NULL; c = next) {
        struct submit_request *r;

        next = c->next;
        if (c->closing)
            continue;
        for (r = c->reqs; r != NULL; r = r->next)
            conn_send_error(c, r->frame_id, ERROR_CONFLICT, "the daemon is stopping");
        conn_detach_requests(c);
        /* The replies get a short time to be read, then the close is hard. */
        uv_timer_start(&c->idle, on_idle, SUBMIT_STOP_MS, SUBMIT_STOP_MS);
        conn_finish(c);
    }
}

/* ---- client ---- */

static int64_t mono_ms(void)
{
    struct timespec ts;

    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

/* Waits for `events` on fd until the deadline: 0, -ETIMEDOUT or -errno. */
static int wait_fd(int fd, short events, int64_t deadline)
{
    struct pollfd p = {.fd = fd, .events = events, .revents = 0};

    for (;;) {
        int64_t left = deadline - mono_ms();
        int n;

        if (left <= 0)
            return -ETIMEDOUT;
        n = poll(&p, 1, left > INT32_MAX ? INT32_MAX : (int)left);
        if (n > 0)
            return 0;
        if (n == 0)
            return -ETIMEDOUT;
        if (errno != EINTR)
            return -errno;
    }
}

static int client_connect(const char *path, char *why, size_t whylen)
{
    struct sockaddr_un sa;
    char q[160];
    int fd, err;

    log_quote(q, sizeof(q), path);
    if (strlen(path) >= sizeof(sa.sun_path)) {
        snprintf(why, whylen, "the socket path %s is too long", q);
        return -ENAMETOOLONG;
    }
    memset(&sa, 0, sizeof(sa));
    sa.sun_family = AF_UNIX;
    memcpy(sa.sun_path, path, strlen(path) + 1);
    if ((fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0)) < 0) {
        err = -errno;
        snprintf(why, whylen, "cannot make a socket: %s", strerror(-err));
        return err;
    }
    if (connect(fd, (struct sockaddr *)&sa, sizeof(sa)) == 0)
        return fd;
    err = -errno;
    close(fd);
    switch (err) {
    case -ENOENT:
        snprintf(why, whylen,
                 "no daemon: the submission socket %s does not exist (is smtpsync-primary or "
                 "smtpsync-replica running? see --socket)",
                 q);
        break;
    case -ECONNREFUSED:
        snprintf(why, whylen, "no daemon is listening on the submission socket %s", q);
        break;
    case -EACCES:
    case -EPERM:
        snprintf(why, whylen,
                 "permission denied on the submission socket %s (it is open to the daemon's "
                 "user and group)",
                 q);
        break;
    default:
        snprintf(why, whylen, "cannot connect to the submission socket %s: %s", q, strerror(-err));
        break;
    }
    return err;
}

static int client_send(int fd, const uint8_t *buf, size_t len, int64_t deadline)
{
    while (len > 0) {
        ssize_t n = send(fd, buf, len, MSG_NOSIGNAL | MSG_DONTWAIT);
        if (n >= 0) {
            buf += n;
            len -= (size_t)n;
            continue;
        }
        if (errno == EINTR)
            continue;
        if (errno != EAGAIN && errno != EWOULDBLOCK)
            return -errno;
        int err = wait_fd(fd, POLLOUT, deadline);
        if (err != 0)
            return err;
    }
    return 0;
}

/* Reads frames until the reply to `id` (or an Error frame for the
 * connection, id 0) arrives. */
static int client_receive(int fd, uint64_t id, int64_t deadline, Smtpsync__Frame **reply)
{
    struct frame_reader rd;
    uint8_t buf[65536];
    Smtpsync__Frame *f;
    int err;

    frame_reader_init(&rd, SUBMIT_FRAME_MAX);
    for (;;) {
        while ((err = frame_reader_next(&rd, &f)) == 0) {
            if (f->id == id || (f->id == 0 && f->body_case == SMTPSYNC__FRAME__BODY_ERROR)) {
                *reply = f;
                goto out;
            }
            smtpsync__frame__free_unpacked(f, NULL); /* not ours */
        }
        if (err != ERROR_EMPTY)
            goto out;
        if ((err = wait_fd(fd, POLLIN, deadline)) != 0)
            goto out;
        ssize_t n = recv(fd, buf, sizeof(buf), MSG_DONTWAIT);
        if (n < 0) {
            if (errno == EINTR || errno == EAGAIN || errno == EWOULDBLOCK)
                continue;
            err = -errno;
            goto out;
        }
        if (n == 0) {
            err = -ECONNRESET;
            goto out;
        }
        if ((err = frame_reader_feed(&rd, buf, (size_t)n)) != 0)
            goto out;
    }
out:
    frame_reader_free(&rd);
    return err;
}

int submit_call(const char *path, const Smtpsync__Frame *request, unsigned timeout_ms,
                Smtpsync__Frame **reply, char *why, size_t whylen)
{
    int64_t deadline = mono_ms() + (timeout_ms != 0 ? timeout_ms : SUBMIT_TIMEOUT_MS);
    Smtpsync__Frame *f = NULL;
    uint8_t *buf;
    size_t len;
    int fd, err;

    *reply = NULL;
    if (whylen > 0)
        why[0] = '\0';
    if ((err = frame_pack(request, SUBMIT_FRAME_MAX, &buf, &len)) != 0) {
        snprintf(why, whylen, "cannot encode the request: %s", error_str(err));
        return err;
    }
    if ((fd = client_connect(path, why, whylen)) < 0) {
        free(buf);
        return fd;
    }
    err = client_send(fd, buf, len, deadline);
    free(buf);
    if (err == 0)
        err = client_receive(fd, request->id, deadline, &f);
    close(fd);

    if (err == -ETIMEDOUT) {
        snprintf(why, whylen, "no reply from the daemon within %u ms",
                 timeout_ms != 0 ? timeout_ms : SUBMIT_TIMEOUT_MS);
    } else if (err == -ECONNRESET || err == -EPIPE) {
        snprintf(why, whylen, "the daemon closed the connection without replying");
        err = -ECONNRESET;
    } else if (err == ERROR_DECODE || err == ERROR_TOO_BIG) {
        snprintf(why, whylen, "the daemon's reply is malformed: %s", error_str(err));
        err = ERROR_DECODE;
    } else if (err != 0) {
        snprintf(why, whylen, "talking to the daemon failed: %s", error_str(err));
    } else if (f->body_case == SMTPSYNC__FRAME__BODY_ERROR) {
        /* The daemon refused the request as a whole. */
        char q[256];
        log_quote(q, sizeof(q), f->error->message);
        snprintf(why, whylen, "the daemon refused the request: %s", q);
        err = f->error->code < 0 ? f->error->code : ERROR_INVALID;
        smtpsync__frame__free_unpacked(f, NULL);
        return err;
    }
    if (err != 0)
        return err;
    *reply = f;
    return 0;
}
