#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <time.h>
#include <unistd.h>

#include <uv.h>

#include "error.h"
#include "log.h"
#include "metrics.h"
#include "metrics_http.h"
#include "testutil.h"

#define MAX_REQUESTS 8
#define MAX_RESPONSE 65536

/* The client runs in a thread of its own with blocking sockets, so the
 * server side is exercised exactly as a scraper would, while the loop
 * thread runs libmicrohttpd. The thread only records; the test asserts
 * after uv_run() on the main thread. */
struct client {
    int port;
    int family;
    const char *requests[MAX_REQUESTS];
    size_t n;
    char *responses[MAX_REQUESTS];
    size_t lens[MAX_REQUESTS];
    int errors[MAX_REQUESTS];
    /* The idle-connection script. */
    int idle;
    int idle_result; /* 0: EOF seen after stop; else -errno */
    /* The slow-client script: an unfinished request left alone. */
    int slow;
    int slow_result; /* 0: EOF seen; else -errno */
    long slow_ms;    /* until the server closed it */
    /* The flood script: unfinished requests, all closed, then a GET. */
    int flood;        /* FLOOD_LIMIT or FLOOD_SLOWLORIS */
    int flood_result; /* of the GET: 0 or -errno */
    long flood_ms;    /* from the closes to the GET's answer */
    char *flood_resp;
    size_t flood_len;
    uv_async_t async;
};

struct server {
    uv_loop_t loop;
    struct metrics_http *h;
    int collects;
    int stopped;
    struct client *client;
};

static void collect(struct metrics_out *o, void *arg)
{
    struct server *s = arg;

    s->collects++;
    metrics_family(o, "smtpsync_test_gauge", METRICS_GAUGE, "A gauge the test writes.");
    metrics_sample(o, "smtpsync_test_gauge", (const char *const[]){"site", "b", NULL}, 7);
}

static int connect_to(int family, int port)
{
    struct sockaddr_storage ss;
    struct timeval tv = {.tv_sec = 5};
    socklen_t len;
    int fd;

    memset(&ss, 0, sizeof(ss));
    if (family == AF_INET6) {
        struct sockaddr_in6 *sin6 = (struct sockaddr_in6 *)&ss;

        sin6->sin6_family = AF_INET6;
        sin6->sin6_addr = in6addr_loopback;
        sin6->sin6_port = htons((uint16_t)port);
        len = sizeof(*sin6);
    } else {
        struct sockaddr_in *sin = (struct sockaddr_in *)&ss;

        sin->sin_family = AF_INET;
        sin->sin_addr.s_addr = htonl(INADDR_LOOPBACK);
        sin->sin_port = htons((uint16_t)port);
        len = sizeof(*sin);
    }
    fd = socket(family, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0)
        return -errno;
    setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
    setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof(tv));
    if (connect(fd, (struct sockaddr *)&ss, len) != 0) {
        int err = -errno;

        close(fd);
        return err;
    }
    return fd;
}

/* Sends `raw` and reads until the server closes; 0 or -errno. */
static int exchange(int family, int port, const char *raw, char **out, size_t *outlen)
{
    char *buf = malloc(MAX_RESPONSE + 1);
    size_t len = 0;
    ssize_t n;
    int fd, err = 0;

    *out = buf;
    *outlen = 0;
    if (buf == NULL)
        return -ENOMEM;
    buf[0] = '\0';
    fd = connect_to(family, port);
    if (fd < 0)
        return fd;
    if (send(fd, raw, strlen(raw), MSG_NOSIGNAL) != (ssize_t)strlen(raw)) {
        err = -errno;
        goto out;
    }
    while (len < MAX_RESPONSE && (n = recv(fd, buf + len, MAX_RESPONSE - len, 0)) != 0) {
        if (n < 0) {
            /* A reset after a complete answer still counts as the answer. */
            err = len > 0 && errno == ECONNRESET ? 0 : -errno;
            break;
        }
        len += (size_t)n;
    }
out:
    buf[len] = '\0';
    *outlen = len;
    close(fd);
    return err;
}

enum {
    FLOOD_LIMIT = 1, /* as many half requests as the server takes, held */
    FLOOD_SLOWLORIS, /* more than it takes, each trickling a byte */
};

#define FLOOD_MAX 24

static long ms_since(const struct timespec *t0)
{
    struct timespec t1;

    clock_gettime(CLOCK_MONOTONIC, &t1);
    return (t1.tv_sec - t0->tv_sec) * 1000 + (t1.tv_nsec - t0->tv_nsec) / 1000000;
}

/* Unfinished requests fill the server's connection limit (16), then all
 * close at once; a GET right after must be answered at once. */
static void flood(struct client *c)
{
    static const char partial[] = "GET /metrics HTTP/1.1\r\n";
    int fds[FLOOD_MAX], n = c->flood == FLOOD_LIMIT ? 16 : 20;
    struct timespec t0;

    for (int i = 0; i < n; i++) {
        fds[i] = connect_to(c->family, c->port);
        if (fds[i] >= 0)
            send(fds[i], partial, sizeof(partial) - 1, MSG_NOSIGNAL);
    }
    if (c->flood == FLOOD_LIMIT) {
        usleep(300 * 1000); /* all accepted: the server is at its limit */
    } else {
        for (int round = 0; round < 6; round++) {
            usleep(250 * 1000);
            for (int i = 0; i < n; i++)
                if (fds[i] >= 0)
                    send(fds[i], "X", 1, MSG_NOSIGNAL);
        }
        /* libmicrohttpd 0.9.75 misses an end of stream that arrives with
         * the last bytes it reads (edge-triggered epoll): such a client
         * is only dropped at the connection timeout. Close apart from the
         * last byte, as a client that gave up would. */
        usleep(200 * 1000);
    }
    for (int i = 0; i < n; i++)
        if (fds[i] >= 0)
            close(fds[i]);
    clock_gettime(CLOCK_MONOTONIC, &t0);
    c->flood_result = exchange(c->family, c->port,
                               "GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
                               &c->flood_resp, &c->flood_len);
    c->flood_ms = ms_since(&t0);
}

static void *client_main(void *arg)
{
    struct client *c = arg;

    for (size_t i = 0; i < c->n; i++)
        c->errors[i] = exchange(c->family, c->port, c->requests[i], &c->responses[i], &c->lens[i]);
    if (c->flood)
        flood(c);
    if (c->slow) {
        struct timespec t0, t1;
        char buf[64];
        ssize_t n;
        int fd = connect_to(c->family, c->port);
        struct timeval tv = {.tv_sec = 30};

        if (fd < 0) {
            c->slow_result = fd;
        } else {
            setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
            clock_gettime(CLOCK_MONOTONIC, &t0);
            send(fd, "GET /metrics HTTP/1.1\r\nHost:", 29, MSG_NOSIGNAL);
            n = recv(fd, buf, sizeof(buf), 0);
            clock_gettime(CLOCK_MONOTONIC, &t1);
            c->slow_ms = (t1.tv_sec - t0.tv_sec) * 1000 + (t1.tv_nsec - t0.tv_nsec) / 1000000;
            c->slow_result = n == 0 ? 0 : n < 0 ? (errno == ECONNRESET ? 0 : -errno) : -EPROTO;
            close(fd);
        }
    }
    if (c->idle) {
        char buf[64];
        ssize_t n;
        int fd = connect_to(c->family, c->port);

        if (fd < 0) {
            c->idle_result = fd;
        } else {
            /* Half a request line: the server holds an open connection. */
            send(fd, "GET /metr", 9, MSG_NOSIGNAL);
            usleep(200 * 1000);
            uv_async_send(&c->async);
            n = recv(fd, buf, sizeof(buf), 0);
            c->idle_result = n == 0 ? 0 : n < 0 ? (errno == ECONNRESET ? 0 : -errno) : -EPROTO;
            close(fd);
        }
        return NULL;
    }
    uv_async_send(&c->async);
    return NULL;
}

static void on_stopped(void *arg)
{
    struct server *s = arg;

    s->stopped++;
    s->h = NULL;
}

static void on_async(uv_async_t *async)
{
    struct server *s = async->data;

    metrics_http_stop(s->h, on_stopped, s);
    uv_close((uv_handle_t *)async, NULL);
}

/* Starts the server on `host` (any free port), runs the client's script
 * in a thread, stops the server when the client says so, and checks the
 * loop is empty afterwards. */
static void run_client(struct server *s, const char *host, struct client *c)
{
    char why[256] = "";
    pthread_t t;
    int err;

    assert_int_equal(uv_loop_init(&s->loop), 0);
    err = metrics_http_start(&s->loop, host, 0, collect, s, &s->h, why, sizeof(why));
    if (err != 0)
        fail_msg("metrics_http_start(%s): %s", host, why);
    c->port = metrics_http_port(s->h);
    assert_true(c->port > 0 && c->port <= 65535);
    s->client = c;
    assert_int_equal(uv_async_init(&s->loop, &c->async, on_async), 0);
    c->async.data = s;
    assert_int_equal(pthread_create(&t, NULL, client_main, c), 0);
    assert_int_equal(uv_run(&s->loop, UV_RUN_DEFAULT), 0);
    assert_int_equal(pthread_join(t, NULL), 0);
    assert_int_equal(s->stopped, 1);
    assert_null(s->h);
    assert_int_equal(uv_loop_close(&s->loop), 0);
}

static void client_free(struct client *c)
{
    for (size_t i = 0; i < c->n; i++)
        free(c->responses[i]);
    free(c->flood_resp);
}

/* The status code of a raw response ("HTTP/1.1 200 OK"), or -1. */
static int status_of(const char *resp)
{
    int code;

    if (sscanf(resp, "HTTP/1.%*d %d", &code) != 1)
        return -1;
    return code;
}

/* The value of header `name` (case-insensitive) in a raw response, copied
 * into buf; NULL if absent. */
static const char *header_of(const char *resp, const char *name, char *buf, size_t len)
{
    const char *p = strstr(resp, "\r\n"), *end = strstr(resp, "\r\n\r\n");
    size_t nlen = strlen(name);

    while (p != NULL && p < end) {
        p += 2;
        if (strncasecmp(p, name, nlen) == 0 && p[nlen] == ':') {
            const char *v = p + nlen + 1, *e = strstr(v, "\r\n");

            while (*v == ' ')
                v++;
            snprintf(buf, len, "%.*s", (int)(e - v), v);
            return buf;
        }
        p = strstr(p, "\r\n");
    }
    return NULL;
}

static const char *body_of(const char *resp)
{
    const char *p = strstr(resp, "\r\n\r\n");

    return p != NULL ? p + 4 : "";
}

/* stderr to a file for the test, to see the log line. */
struct capture {
    char *dir;
    char path[4096];
    int saved;
};

static void capture_start(struct capture *cap)
{
    int fd;

    cap->dir = testutil_tmpdir();
    snprintf(cap->path, sizeof(cap->path), "%s/stderr", cap->dir);
    fd = open(cap->path, O_WRONLY | O_CREAT | O_TRUNC, 0600);
    assert_true(fd >= 0);
    fflush(stderr);
    cap->saved = dup(STDERR_FILENO);
    assert_true(cap->saved >= 0);
    assert_true(dup2(fd, STDERR_FILENO) >= 0);
    close(fd);
}

static char *capture_end(struct capture *cap)
{
    char *out;

    fflush(stderr);
    dup2(cap->saved, STDERR_FILENO);
    close(cap->saved);
    out = testutil_read_file(cap->path, NULL);
    testutil_rmtree(cap->dir);
    free(cap->dir);
    return out;
}

static void test_metrics_http_get_head_404_405(void **state)
{
    struct server s = {0};
    struct client c = {.family = AF_INET};
    struct capture cap;
    char hdr[256], expect[128], *log;
    long content_length;

    (void)state;
    metrics_reset();
    metrics_count(METRICS_DELIVERIES, "normal", "delivered", 3);
    c.requests[c.n++] = "GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n";
    c.requests[c.n++] = "HEAD /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n";
    c.requests[c.n++] = "GET /other HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n";
    c.requests[c.n++] = "POST /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n"
                        "Content-Length: 5\r\n\r\nhello";
    c.requests[c.n++] = "DELETE /metrics HTTP/1.0\r\n\r\n";
    c.requests[c.n++] = "GET /metrics?x=1 HTTP/1.0\r\n\r\n";
    capture_start(&cap);
    run_client(&s, "127.0.0.1", &c);
    log = capture_end(&cap);

    snprintf(expect, sizeof(expect), "metrics: listening on http://127.0.0.1:%d/metrics\n", c.port);
    if (strstr(log, expect) == NULL)
        fail_msg("no \"%s\" in the log:\n%s", expect, log);
    free(log);

    for (size_t i = 0; i < c.n; i++)
        if (c.errors[i] != 0)
            fail_msg("request %zu: %s", i, strerror(-c.errors[i]));

    /* GET */
    assert_int_equal(status_of(c.responses[0]), 200);
    assert_non_null(header_of(c.responses[0], "Content-Type", hdr, sizeof(hdr)));
    assert_string_equal(hdr, "text/plain; version=0.0.4; charset=utf-8");
    assert_non_null(strstr(body_of(c.responses[0]), "\nsmtpsync_test_gauge{site=\"b\"} 7\n"));
    assert_non_null(strstr(body_of(c.responses[0]),
                           "\nsmtpsync_deliveries_total{priority=\"normal\",result=\"delivered\"} "
                           "3\n"));
    assert_true(strncmp(body_of(c.responses[0]), "# HELP smtpsync_test_gauge ", 27) == 0);
    assert_non_null(header_of(c.responses[0], "Content-Length", hdr, sizeof(hdr)));
    content_length = strtol(hdr, NULL, 10);
    assert_int_equal(content_length, strlen(body_of(c.responses[0])));

    /* HEAD: the same headers, no body. */
    assert_int_equal(status_of(c.responses[1]), 200);
    assert_non_null(header_of(c.responses[1], "Content-Type", hdr, sizeof(hdr)));
    assert_string_equal(hdr, "text/plain; version=0.0.4; charset=utf-8");
    assert_non_null(header_of(c.responses[1], "Content-Length", hdr, sizeof(hdr)));
    assert_int_equal(strtol(hdr, NULL, 10), content_length);
    assert_string_equal(body_of(c.responses[1]), "");

    /* Other path, other methods. */
    assert_int_equal(status_of(c.responses[2]), 404);
    assert_null(strstr(c.responses[2], "smtpsync_"));
    assert_int_equal(status_of(c.responses[3]), 405);
    assert_non_null(header_of(c.responses[3], "Allow", hdr, sizeof(hdr)));
    assert_string_equal(hdr, "GET, HEAD");
    assert_null(strstr(c.responses[3], "smtpsync_"));
    assert_int_equal(status_of(c.responses[4]), 405);
    /* A query string does not change the answer. */
    assert_int_equal(status_of(c.responses[5]), 200);

    /* The collector ran for GET, HEAD and the GET with a query only. */
    assert_int_equal(s.collects, 3);
    client_free(&c);
    metrics_reset();
}

static void test_metrics_http_malformed_then_ok(void **state)
{
    struct server s = {0}, sd = {0};
    struct client c = {.family = AF_INET}, d = {.family = AF_INET};
    struct capture cap;
    char *long_url, *log;
    size_t long_len = 100000;
    int st;

    (void)state;
    long_url = malloc(long_len + 64);
    assert_non_null(long_url);
    memcpy(long_url, "GET /", 5);
    memset(long_url + 5, 'a', long_len);
    snprintf(long_url + 5 + long_len, 59, " HTTP/1.1\r\nHost: x\r\n\r\n");

    c.requests[c.n++] = "GARBAGE\r\n\r\n";
    c.requests[c.n++] = "GET /metrics HTTP/9.9\r\nHost: x\r\n\r\n";
    c.requests[c.n++] = "GET /metrics HTTP/1.1\r\nHost: x\r\nBad header line\r\n\r\n";
    c.requests[c.n++] = "\x01\x02\x03\xff\r\n\r\n";
    c.requests[c.n++] = long_url;
    c.requests[c.n++] = "GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n";
    capture_start(&cap);
    run_client(&s, "127.0.0.1", &c);
    log = capture_end(&cap);
    /* What MHD says about them is logged at debug only: any local user
     * can send garbage, and must not flood the log. */
    if (strstr(log, "metrics_http error=") != NULL)
        fail_msg("MHD's complaints logged above debug:\n%s", log);
    free(log);

    /* Each bad request is refused (4xx/5xx) or the connection closed;
     * none gets metrics. */
    for (size_t i = 0; i + 1 < c.n; i++) {
        st = c.lens[i] > 0 ? status_of(c.responses[i]) : 0;
        if (c.lens[i] > 0 && (st < 400 || st > 599))
            fail_msg("malformed request %zu answered: %.200s", i, c.responses[i]);
        assert_null(strstr(c.responses[i], "smtpsync_test_gauge"));
    }
    /* And the server still answers afterwards. */
    assert_int_equal(c.errors[c.n - 1], 0);
    assert_int_equal(status_of(c.responses[c.n - 1]), 200);
    assert_non_null(strstr(c.responses[c.n - 1], "smtpsync_test_gauge{site=\"b\"} 7"));
    client_free(&c);

    /* At debug they are there, one quoted line each. */
    log_init("test_metrics_http", LOG_LEVEL_DEBUG, LOG_FORMAT_TEXT);
    d.requests[d.n++] = "GARBAGE\r\n\r\n";
    d.requests[d.n++] = "GET /metrics HTTP/9.9\r\nHost: x\r\n\r\n";
    d.requests[d.n++] = "GET /metrics HTTP/1.1\r\nHost: x\r\nBad header line\r\n\r\n";
    d.requests[d.n++] = long_url;
    capture_start(&cap);
    run_client(&sd, "127.0.0.1", &d);
    log = capture_end(&cap);
    log_init("test_metrics_http", LOG_LEVEL_INFO, LOG_FORMAT_TEXT);
    if (strstr(log, "debug metrics_http error=\"") == NULL)
        fail_msg("no MHD complaint at debug:\n%s", log);
    free(log);
    client_free(&d);
    free(long_url);
}

static void test_metrics_http_ipv6_and_localhost(void **state)
{
    struct server s6 = {0}, sl = {0};
    struct client c6 = {.family = AF_INET6}, cl = {.family = AF_INET};
    int fd;

    (void)state;
    fd = socket(AF_INET6, SOCK_STREAM, 0);
    if (fd < 0) {
        skip();
        return;
    }
    close(fd);
    c6.requests[c6.n++] = "GET /metrics HTTP/1.0\r\n\r\n";
    run_client(&s6, "::1", &c6);
    assert_int_equal(c6.errors[0], 0);
    assert_int_equal(status_of(c6.responses[0]), 200);
    client_free(&c6);

    cl.requests[cl.n++] = "GET /metrics HTTP/1.0\r\n\r\n";
    run_client(&sl, "localhost", &cl);
    assert_int_equal(cl.errors[0], 0);
    assert_int_equal(status_of(cl.responses[0]), 200);
    client_free(&cl);
}

static void test_metrics_http_refuses_bad_addresses(void **state)
{
    /* What the config file hands over: a host without brackets. Syntax
     * errors never get here (config_load refuses them, unit_node_metrics
     * checks both agree); anything that is not loopback, whatever its
     * form, is refused here too. */
    static const char *const not_loopback[] = {
        "10.1.2.3",    "0.0.0.0",    "::",     "192.168.1.1", "2001:db8::1", "::ffff:127.0.0.1",
        "example.com", "128.0.0.1",  "",       "[::1]",       "localhost.",  "127.0.0.1:9465",
        "127.1",       "0177.0.0.1", "::1%lo",
    };
    struct metrics_http *h = (struct metrics_http *)&h;
    uv_loop_t loop;
    char why[256];
    int err;

    (void)state;
    assert_int_equal(uv_loop_init(&loop), 0);
    for (size_t i = 0; i < sizeof(not_loopback) / sizeof(not_loopback[0]); i++) {
        why[0] = '\0';
        err = metrics_http_start(&loop, not_loopback[i], 9465, collect, NULL, &h, why, sizeof(why));
        assert_int_equal(err, ERROR_INVALID);
        assert_null(h);
        if (strstr(why, "not loopback") == NULL)
            fail_msg("%s: why=\"%s\"", not_loopback[i], why);
    }
    why[0] = '\0';
    assert_int_equal(metrics_http_start(&loop, NULL, 0, collect, NULL, &h, why, sizeof(why)),
                     ERROR_INVALID);
    assert_null(h);
    assert_non_null(strstr(why, "not loopback"));
    /* Nothing was left on the loop. */
    assert_int_equal(uv_run(&loop, UV_RUN_NOWAIT), 0);
    assert_int_equal(uv_loop_close(&loop), 0);
}

static void test_metrics_http_address_in_use(void **state)
{
    struct sockaddr_in sin = {.sin_family = AF_INET};
    struct metrics_http *h = NULL;
    socklen_t len = sizeof(sin);
    char address[64], why[256] = "";
    uint16_t port;
    uv_loop_t loop;
    int fd, err;

    (void)state;
    sin.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    fd = socket(AF_INET, SOCK_STREAM, 0);
    assert_true(fd >= 0);
    assert_int_equal(bind(fd, (struct sockaddr *)&sin, sizeof(sin)), 0);
    assert_int_equal(listen(fd, 1), 0);
    assert_int_equal(getsockname(fd, (struct sockaddr *)&sin, &len), 0);
    port = ntohs(sin.sin_port);
    snprintf(address, sizeof(address), "127.0.0.1:%u", port);

    assert_int_equal(uv_loop_init(&loop), 0);
    err = metrics_http_start(&loop, "127.0.0.1", port, collect, NULL, &h, why, sizeof(why));
    assert_int_equal(err, -EADDRINUSE);
    assert_null(h);
    assert_non_null(strstr(why, address));
    assert_non_null(strstr(why, strerror(EADDRINUSE)));
    assert_int_equal(uv_run(&loop, UV_RUN_NOWAIT), 0);
    assert_int_equal(uv_loop_close(&loop), 0);
    close(fd);
}

static void test_metrics_http_stop_with_idle_connection(void **state)
{
    struct server s = {0};
    struct client c = {.family = AF_INET, .idle = 1, .idle_result = -1};

    (void)state;
    run_client(&s, "127.0.0.1", &c);
    /* The server closed the half-open request when it stopped. */
    assert_int_equal(c.idle_result, 0);
}

/* A client that never finishes its request is dropped after the
 * connection timeout (10 s): the uv_timer_t armed from MHD_get_timeout()
 * is what runs MHD then, as nothing is readable. */
static void test_metrics_http_slow_client_times_out(void **state)
{
    struct server s = {0};
    struct client c = {.family = AF_INET, .slow = 1, .slow_result = -1};

    (void)state;
    c.requests[c.n++] = "GET /metrics HTTP/1.0\r\n\r\n";
    run_client(&s, "127.0.0.1", &c);
    assert_int_equal(c.slow_result, 0);
    if (c.slow_ms < 9000 || c.slow_ms > 15000)
        fail_msg("slow client closed after %ld ms, expected about 10 s", c.slow_ms);
    assert_int_equal(status_of(c.responses[0]), 200);
    client_free(&c);
}

/* libmicrohttpd takes its listener out of its epoll set at the connection
 * limit and puts it back only in a later MHD_run(): when every connection
 * closed inside one run, nothing ran MHD again and /metrics stayed deaf
 * for good. A GET after the flood is answered at once (well under the
 * 1 s fallback timer, let alone the 5 s the client waits). */
static void test_metrics_http_answers_after_limit_flood(void **state)
{
    struct server s = {0};
    struct client c = {.family = AF_INET, .flood = FLOOD_LIMIT, .flood_result = -1};

    (void)state;
    run_client(&s, "127.0.0.1", &c);
    if (c.flood_result != 0)
        fail_msg("GET after the flood: %s", strerror(-c.flood_result));
    assert_int_equal(status_of(c.flood_resp), 200);
    assert_non_null(strstr(c.flood_resp, "smtpsync_test_gauge{site=\"b\"} 7"));
    if (c.flood_ms > 1000)
        fail_msg("GET after the flood answered after %ld ms", c.flood_ms);
    client_free(&c);
}

/* Slow clients (more than the limit, each trickling a header byte) hold
 * the server; once they are gone a GET is answered at once. */
static void test_metrics_http_answers_after_slowloris(void **state)
{
    struct server s = {0};
    struct client c = {.family = AF_INET, .flood = FLOOD_SLOWLORIS, .flood_result = -1};

    (void)state;
    run_client(&s, "127.0.0.1", &c);
    if (c.flood_result != 0)
        fail_msg("GET after the slow clients: %s", strerror(-c.flood_result));
    assert_int_equal(status_of(c.flood_resp), 200);
    if (c.flood_ms > 1000)
        fail_msg("GET after the slow clients answered after %ld ms", c.flood_ms);
    client_free(&c);
}

/* Stopping right after starting, before the loop ran at all. */
static void test_metrics_http_stop_at_once(void **state)
{
    struct server s = {0};
    char why[256] = "";

    (void)state;
    assert_int_equal(uv_loop_init(&s.loop), 0);
    assert_int_equal(
        metrics_http_start(&s.loop, "127.0.0.1", 0, collect, &s, &s.h, why, sizeof(why)), 0);
    metrics_http_stop(s.h, on_stopped, &s);
    assert_int_equal(s.stopped, 0); /* not before the handles are closed */
    assert_int_equal(uv_run(&s.loop, UV_RUN_DEFAULT), 0);
    assert_int_equal(s.stopped, 1);
    assert_int_equal(uv_loop_close(&s.loop), 0);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_metrics_http_get_head_404_405),
        cmocka_unit_test(test_metrics_http_malformed_then_ok),
        cmocka_unit_test(test_metrics_http_ipv6_and_localhost),
        cmocka_unit_test(test_metrics_http_refuses_bad_addresses),
        cmocka_unit_test(test_metrics_http_address_in_use),
        cmocka_unit_test(test_metrics_http_stop_with_idle_connection),
        cmocka_unit_test(test_metrics_http_stop_at_once),
        cmocka_unit_test(test_metrics_http_answers_after_limit_flood),
        cmocka_unit_test(test_metrics_http_answers_after_slowloris),
        cmocka_unit_test(test_metrics_http_slow_client_times_out),
    };

    log_init("test_metrics_http", LOG_LEVEL_INFO, LOG_FORMAT_TEXT);
    return cmocka_run_group_tests(tests, NULL, NULL);
}
