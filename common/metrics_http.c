/*
 * metrics_http: see metrics_http.h.
 *
 * libmicrohttpd runs in external-polling epoll mode: it keeps one epoll
 * descriptor for its listener and connections, which is itself readable
 * whenever any of them is ready. The loop watches that descriptor with a
 * uv_poll_t and calls MHD_run() when it fires; after every MHD_run() the
 * uv_timer_t is re-armed from MHD_get_timeout(), which covers connection
 * timeouts and work MHD has pending without a new readiness event.
 *
 * The listening socket is bound here rather than by MHD so that a failure
 * (address in use, permission) reaches the caller as -errno with a reason,
 * and so that port 0 can be read back with getsockname().
 */
#include "metrics_http.h"

#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>
#include <unistd.h>

#include <microhttpd.h>

#include "error.h"
#include "log.h"
#include "syntax.h"

/* A scraper needs one connection; a few more allow a curl by hand while
 * Prometheus scrapes. An idle or slow client is dropped after the timeout;
 * so is one whose end of stream came with the last bytes libmicrohttpd
 * read (0.9.75 misses that close under edge-triggered epoll), which
 * bounds how long such clients can hold every connection. */
#define METRICS_HTTP_CONNECTIONS 16
#define METRICS_HTTP_TIMEOUT_S   10
#define METRICS_HTTP_BACKLOG     16
/* run_mhd(): MHD_run() rounds while connections close, and the timer
 * used when connections are open but MHD names no timeout. */
#define METRICS_HTTP_RUN_ROUNDS  8
#define METRICS_HTTP_FALLBACK_MS 1000

#define CONTENT_TYPE "text/plain; version=0.0.4; charset=utf-8"

struct metrics_http {
    uv_loop_t *loop;
    struct MHD_Daemon *daemon;
    uv_poll_t poll;   /* MHD's epoll descriptor */
    uv_timer_t timer; /* MHD_get_timeout() */
    metrics_collect_cb collect;
    void *arg;
    int port;
    int pending_closes;
    void (*done)(void *arg);
    void *done_arg;
};

/* ---- address ---- */

/* The socket address of HOST (as config_addr holds it: no brackets) and
 * PORT, which must be loopback (syntax_is_loopback, the test the config
 * file makes). "localhost" is 127.0.0.1 without asking the resolver: a
 * hosts file that maps it elsewhere must not move an unauthenticated
 * endpoint off the host. */
static int loopback_address(const char *host, uint16_t port, struct sockaddr_storage *ss,
                            socklen_t *sslen, char *why, size_t whylen)
{
    struct sockaddr_in *sin = (struct sockaddr_in *)ss;
    struct sockaddr_in6 *sin6 = (struct sockaddr_in6 *)ss;

    memset(ss, 0, sizeof(*ss));
    if (host == NULL || !syntax_is_loopback(host)) {
        /* The endpoint has no authentication: nothing but this host may
         * reach it. */
        error_why(why, whylen,
                  "%.64s is not loopback: metrics are served on 127.0.0.0/8, "
                  "[::1] or localhost only (the endpoint has no authentication)",
                  host != NULL ? host : "(none)");
        return ERROR_INVALID;
    }
    if (strcasecmp(host, "localhost") == 0)
        host = "127.0.0.1";
    if (inet_pton(AF_INET, host, &sin->sin_addr) == 1) {
        sin->sin_family = AF_INET;
        sin->sin_port = htons(port);
        *sslen = sizeof(*sin);
    } else {
        /* syntax_is_loopback() said IPv4, IPv6 or localhost. */
        (void)inet_pton(AF_INET6, host, &sin6->sin6_addr);
        sin6->sin6_family = AF_INET6;
        sin6->sin6_port = htons(port);
        *sslen = sizeof(*sin6);
    }
    return 0;
}

/* "127.0.0.1:9465" or "[::1]:9465" for the log line. */
static void format_address(const struct sockaddr_storage *ss, char *buf, size_t len)
{
    char ip[INET6_ADDRSTRLEN] = "?";

    if (ss->ss_family == AF_INET6) {
        const struct sockaddr_in6 *sin6 = (const struct sockaddr_in6 *)ss;

        inet_ntop(AF_INET6, &sin6->sin6_addr, ip, sizeof(ip));
        snprintf(buf, len, "[%s]:%u", ip, ntohs(sin6->sin6_port));
    } else {
        const struct sockaddr_in *sin = (const struct sockaddr_in *)ss;

        inet_ntop(AF_INET, &sin->sin_addr, ip, sizeof(ip));
        snprintf(buf, len, "%s:%u", ip, ntohs(sin->sin_port));
    }
}

/* A non-blocking listening socket on `ss`, its bound address written back
 * into `ss` (the real port after port 0). Returns the descriptor or -errno. */
static int listen_socket(struct sockaddr_storage *ss, socklen_t sslen, const char *address,
                         char *why, size_t whylen)
{
    int fd, on = 1, err;
    socklen_t len = sizeof(*ss);

    fd = socket(ss->ss_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (fd < 0) {
        err = -errno;
        error_why(why, whylen, "socket: %s", strerror(errno));
        return err;
    }
    /* SO_REUSEADDR lets a restarted daemon bind while old connections sit
     * in TIME_WAIT; Linux still refuses a second listener on the address. */
    if (setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &on, sizeof(on)) != 0)
        goto fail;
    if (ss->ss_family == AF_INET6 &&
        setsockopt(fd, IPPROTO_IPV6, IPV6_V6ONLY, &on, sizeof(on)) != 0)
        goto fail;
    if (bind(fd, (struct sockaddr *)ss, sslen) != 0)
        goto fail;
    if (listen(fd, METRICS_HTTP_BACKLOG) != 0)
        goto fail;
    if (getsockname(fd, (struct sockaddr *)ss, &len) != 0)
        goto fail;
    return fd;

fail:
    err = -errno;
    error_why(why, whylen, "cannot listen on %.80s: %s", address, strerror(errno));
    close(fd);
    return err;
}

/* ---- requests ---- */

static enum MHD_Result respond_text(struct MHD_Connection *c, unsigned status, const char *text)
{
    struct MHD_Response *r;
    enum MHD_Result ret;

    /* PERSISTENT: MHD only reads the constant text (0.9.75 has no const
     * variant of this call). */
    r = MHD_create_response_from_buffer(strlen(text), (void *)(uintptr_t)text,
                                        MHD_RESPMEM_PERSISTENT);
    if (r == NULL)
        return MHD_NO;
    if (status == MHD_HTTP_METHOD_NOT_ALLOWED &&
        MHD_add_response_header(r, MHD_HTTP_HEADER_ALLOW, "GET, HEAD") != MHD_YES) {
        MHD_destroy_response(r);
        return MHD_NO;
    }
    if (MHD_add_response_header(r, MHD_HTTP_HEADER_CONTENT_TYPE, "text/plain; charset=utf-8") !=
        MHD_YES) {
        MHD_destroy_response(r);
        return MHD_NO;
    }
    ret = MHD_queue_response(c, status, r);
    MHD_destroy_response(r);
    return ret;
}

static enum MHD_Result respond_metrics(struct metrics_http *h, struct MHD_Connection *c)
{
    struct MHD_Response *r;
    enum MHD_Result ret;
    char *body;
    size_t len;

    if (metrics_render(h->collect, h->arg, &body, &len) != 0)
        return respond_text(c, MHD_HTTP_INTERNAL_SERVER_ERROR, "metrics: out of memory\n");
    r = MHD_create_response_from_buffer(len, body, MHD_RESPMEM_MUST_FREE);
    if (r == NULL) {
        free(body);
        return MHD_NO;
    }
    if (MHD_add_response_header(r, MHD_HTTP_HEADER_CONTENT_TYPE, CONTENT_TYPE) != MHD_YES) {
        MHD_destroy_response(r);
        return MHD_NO;
    }
    ret = MHD_queue_response(c, MHD_HTTP_OK, r);
    MHD_destroy_response(r);
    return ret;
}

/* Answers on the first call, before any request body: nothing here reads
 * one, and MHD closes the connection rather than read a body it was not
 * asked to. HEAD gets GET's headers without the body (MHD drops it). */
static enum MHD_Result on_request(void *cls, struct MHD_Connection *c, const char *url,
                                  const char *method, const char *version, const char *upload_data,
                                  size_t *upload_data_size, void **req_cls)
{
    struct metrics_http *h = cls;

    (void)version;
    (void)upload_data;
    (void)upload_data_size;
    (void)req_cls;
    if (strcmp(url, "/metrics") != 0)
        return respond_text(c, MHD_HTTP_NOT_FOUND, "not found: try /metrics\n");
    if (strcmp(method, MHD_HTTP_METHOD_GET) != 0 && strcmp(method, MHD_HTTP_METHOD_HEAD) != 0)
        return respond_text(c, MHD_HTTP_METHOD_NOT_ALLOWED, "method not allowed\n");
    return respond_metrics(h, c);
}

/* MHD's own complaints (a failed accept, a broken client) as one quoted
 * debug line each. */
static void on_mhd_log(void *cls, const char *fmt, va_list ap)
{
    char msg[256], quoted[300];
    size_t n;

    (void)cls;
    vsnprintf(msg, sizeof(msg), fmt, ap);
    n = strlen(msg);
    while (n > 0 && (msg[n - 1] == '\n' || msg[n - 1] == '\r'))
        msg[--n] = '\0';
    /* Debug, not warn: any local user can make MHD complain (an aborted
     * or garbage request), and would flood the log at a higher level. */
    log_debug("metrics_http error=%s", log_quote(quoted, sizeof(quoted), msg));
}

/* ---- driving MHD from the loop ---- */

static void on_timer(uv_timer_t *timer);

/* MHD_DAEMON_INFO_CURRENT_CONNECTIONS (which also reaps closed ones). */
static unsigned current_connections(struct metrics_http *h)
{
    const union MHD_DaemonInfo *info;

    info = MHD_get_daemon_info(h->daemon, MHD_DAEMON_INFO_CURRENT_CONNECTIONS);
    return info != NULL ? info->num_connections : 0;
}

/*
 * At the connection limit MHD takes its listener out of its epoll set and
 * puts it back only at the start of a later MHD_run(), once a connection
 * has gone. When the last connections close inside one MHD_run(), nothing
 * would call it again: pending connects do not make the epoll descriptor
 * readable (the listener is not in it), MHD_get_timeout() has nothing to
 * time, and the endpoint would stay deaf for good. So MHD_run() again as
 * long as a run closed connections (bounded: each round re-adds the
 * listener and accepts what waits), and keep a fallback timer while any
 * connection is open and MHD names no timeout of its own.
 */
static void run_mhd(struct metrics_http *h)
{
    MHD_UNSIGNED_LONG_LONG ms;
    unsigned before, after = 0;
    bool fell = false;

    for (int round = 0; round < METRICS_HTTP_RUN_ROUNDS; round++) {
        before = current_connections(h);
        MHD_run(h->daemon);
        after = current_connections(h);
        fell = after < before;
        if (!fell)
            break;
    }
    /* Still falling after the last round: the listener may be out. */
    if (MHD_get_timeout(h->daemon, &ms) == MHD_YES)
        uv_timer_start(&h->timer, on_timer, (uint64_t)ms, 0);
    else if (after > 0 || fell)
        uv_timer_start(&h->timer, on_timer, METRICS_HTTP_FALLBACK_MS, 0);
    else
        uv_timer_stop(&h->timer);
}

static void on_poll(uv_poll_t *poll, int status, int events)
{
    (void)status;
    (void)events;
    /* Even an error status means "look again": MHD_run() sorts it out. */
    run_mhd(poll->data);
}

static void on_timer(uv_timer_t *timer)
{
    run_mhd(timer->data);
}

static void on_close(uv_handle_t *handle)
{
    struct metrics_http *h = handle->data;
    void (*done)(void *) = h->done;
    void *done_arg = h->done_arg;

    if (--h->pending_closes > 0)
        return;
    free(h);
    if (done != NULL)
        done(done_arg);
}

/* Stops polling before MHD closes its epoll descriptor: uv_close() takes
 * the descriptor out of the loop's epoll set at once, so the loop never
 * watches a closed (or reused) number. The close callbacks free `h`. */
static void shut(struct metrics_http *h, void (*done)(void *arg), void *arg)
{
    h->done = done;
    h->done_arg = arg;
    h->pending_closes = 2;
    uv_close((uv_handle_t *)&h->poll, on_close);
    uv_close((uv_handle_t *)&h->timer, on_close);
    MHD_stop_daemon(h->daemon);
    h->daemon = NULL;
}

int metrics_http_start(uv_loop_t *loop, const char *host, uint16_t port, metrics_collect_cb collect,
                       void *arg, struct metrics_http **out, char *why, size_t whylen)
{
    const union MHD_DaemonInfo *info;
    struct sockaddr_storage ss;
    struct metrics_http *h;
    char where[INET6_ADDRSTRLEN + 16];
    socklen_t sslen;
    int err, fd;

    *out = NULL;
    err = loopback_address(host, port, &ss, &sslen, why, whylen);
    if (err != 0)
        return err;
    format_address(&ss, where, sizeof(where));
    h = calloc(1, sizeof(*h));
    if (h == NULL) {
        error_why(why, whylen, "out of memory");
        return -ENOMEM;
    }
    h->loop = loop;
    h->collect = collect;
    h->arg = arg;

    fd = listen_socket(&ss, sslen, where, why, whylen);
    if (fd < 0) {
        err = fd;
        goto free_h;
    }
    h->port = ntohs(ss.ss_family == AF_INET6 ? ((struct sockaddr_in6 *)&ss)->sin6_port
                                             : ((struct sockaddr_in *)&ss)->sin_port);

    /* The external logger comes first so no startup message escapes to
     * MHD's default stderr printer. */
    h->daemon = MHD_start_daemon(
        MHD_USE_EPOLL | MHD_USE_ERROR_LOG, 0, NULL, NULL, on_request, h, MHD_OPTION_EXTERNAL_LOGGER,
        on_mhd_log, h, MHD_OPTION_LISTEN_SOCKET, fd, MHD_OPTION_CONNECTION_LIMIT,
        (unsigned int)METRICS_HTTP_CONNECTIONS, MHD_OPTION_CONNECTION_TIMEOUT,
        (unsigned int)METRICS_HTTP_TIMEOUT_S, MHD_OPTION_END);
    if (h->daemon == NULL) {
        /* MHD leaves a socket it was given to the caller when it fails. */
        err = -EIO;
        error_why(why, whylen, "libmicrohttpd failed to start on %s", where);
        close(fd);
        goto free_h;
    }
    info = MHD_get_daemon_info(h->daemon, MHD_DAEMON_INFO_EPOLL_FD);
    if (info == NULL) {
        err = -EIO;
        error_why(why, whylen, "libmicrohttpd has no epoll descriptor");
        goto stop_daemon;
    }
    err = uv_poll_init(loop, &h->poll, info->epoll_fd);
    if (err != 0) {
        error_why(why, whylen, "cannot watch libmicrohttpd: %s", uv_strerror(err));
        goto stop_daemon;
    }
    uv_timer_init(loop, &h->timer);
    h->poll.data = h;
    h->timer.data = h;
    err = uv_poll_start(&h->poll, UV_READABLE, on_poll);
    if (err != 0) {
        error_why(why, whylen, "cannot watch libmicrohttpd: %s", uv_strerror(err));
        /* The handles are initialised: `h` can only go in their close
         * callbacks, and no `done` is called (a failed start calls
         * nothing). */
        shut(h, NULL, NULL);
        return err;
    }
    run_mhd(h);

    format_address(&ss, where, sizeof(where)); /* the real port, after port 0 */
    log_info("metrics: listening on http://%s/metrics", where);
    *out = h;
    return 0;

stop_daemon:
    MHD_stop_daemon(h->daemon);
free_h:
    free(h);
    return err;
}

int metrics_http_port(const struct metrics_http *h)
{
    return h->port;
}

/* Not from inside the collector: MHD_stop_daemon() must not run under the
 * MHD_run() that called it. */
void metrics_http_stop(struct metrics_http *h, void (*done)(void *arg), void *arg)
{
    shut(h, done, arg);
}
