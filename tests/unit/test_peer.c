#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include <openssl/ssl.h>
#include <uv.h>

#include "error.h"
#include "frame.h"
#include "log.h"
#include "mtls.h"
#include "peer.h"
#include "testutil.h"
#include "tlsio.h"

/*
 * Every test runs a listener and its clients on one loop: real TCP on
 * loopback, real TLS, certificates made by tests/tools/make-pki.sh. Hostile
 * clients (no certificate, garbage, truncated frames, silence) are "raw"
 * clients below, made of a uv_tcp_t and, for TLS, a tlsio of their own.
 */

static char *pki;

static const char *pki_path(const char *name)
{
    static char path[4096];

    snprintf(path, sizeof(path), "%s/%s", pki, name);
    return path;
}

static int group_setup(void **state)
{
    char cmd[8192];

    (void)state;
    log_init("test_peer", getenv("SMTPSYNC_TEST_DEBUG") ? LOG_LEVEL_DEBUG : LOG_LEVEL_WARN,
             LOG_FORMAT_TEXT);
    if ((pki = testutil_make_pki("-a alice", "primary site-b site-c")) == NULL)
        return -1;
    snprintf(cmd, sizeof(cmd), "cd '%s' && cat ca.pem other-ca.pem > both-ca.pem", pki);
    return system(cmd) == 0 ? 0 : -1;
}

static int group_teardown(void **state)
{
    (void)state;
    testutil_rmtree(pki);
    free(pki);
    return 0;
}

static struct mtls_ctx *load(const char *ca, const char *name)
{
    char why[MTLS_WHY_MAX];
    char p_ca[4096], p_cert[4096], p_key[4096];
    struct mtls_ctx *ctx;

    snprintf(p_ca, sizeof(p_ca), "%s", pki_path(ca));
    snprintf(p_cert, sizeof(p_cert), "%s/%s.pem", pki, name);
    snprintf(p_key, sizeof(p_key), "%s/%s.key", pki, name);
    if (mtls_ctx_load(p_ca, p_cert, p_key, &ctx, why, sizeof(why)) != 0)
        fail_msg("mtls_ctx_load %s: %s", name, why);
    return ctx;
}

/* Makes `ssl_ctx` present certificate `name` instead of its own. */
static void present(SSL_CTX *ssl_ctx, const char *name)
{
    char path[4096];

    snprintf(path, sizeof(path), "%s/%s.pem", pki, name);
    assert_int_equal(SSL_CTX_use_certificate_file(ssl_ctx, path, SSL_FILETYPE_PEM), 1);
    snprintf(path, sizeof(path), "%s/%s.key", pki, name);
    assert_int_equal(SSL_CTX_use_PrivateKey_file(ssl_ctx, path, SSL_FILETYPE_PEM), 1);
}

/* ---- frames ---- */

struct hello_frame {
    Smtpsync__Frame f;
    Smtpsync__Hello h;
};

static void hello_init(struct hello_frame *hf, uint64_t id, const char *node, const uint8_t *hash,
                       size_t hashlen)
{
    smtpsync__frame__init(&hf->f);
    smtpsync__hello__init(&hf->h);
    hf->h.node = (char *)(uintptr_t)node;
    hf->h.hash.data = (uint8_t *)(uintptr_t)hash;
    hf->h.hash.len = hashlen;
    hf->f.id = id;
    hf->f.body_case = SMTPSYNC__FRAME__BODY_HELLO;
    hf->f.hello = &hf->h;
}

static void send_hello(struct peer *p, uint64_t id, const char *node)
{
    struct hello_frame hf;

    hello_init(&hf, id, node, NULL, 0);
    assert_int_equal(peer_send(p, &hf.f), 0);
}

/* ---- the test bench ---- */

#define MAX_CLIENTS 4

struct side {
    int opens, frames, closes;
    int err;
    char reason[PEER_REASON_MAX];
    char id[MTLS_ID_MAX + 1];
    char tls[16];
    time_t cert_expiry;
    uint64_t last_id;
    char last_node[64];
    size_t last_hash_len;
    bool hash_ok;
};

struct bench;

struct raw {
    struct bench *b;
    uv_tcp_t tcp;
    uv_connect_t conn;
    uv_shutdown_t sd;
    SSL_CTX *ssl_ctx; /* NULL: plain TCP */
    struct tlsio *tls;
    const void *send; /* sent once connected (plain) or after the handshake (TLS) */
    size_t send_len;
    bool close_notify; /* then a close_notify */
    bool shutdown;     /* then a TCP shutdown */
    bool stop_reading; /* after the handshake */
    bool hs_done;
    int hs_rc;
    size_t plain_got;
    bool eof, closed, active;
};

struct bench {
    uv_loop_t loop;
    uv_timer_t watchdog;
    struct mtls_ctx *sctx;
    struct peer_listener *l;
    struct peer_params sparams;
    int port;
    bool listener_closed;
    bool keep_listener; /* the test closes it itself */
    int active;         /* clients not yet closed */

    /* server side, summed over its connections */
    struct side srv;
    struct peer *srv_peer; /* the last opened */
    bool deny;
    int authorized;
    char authorized_id[MTLS_ID_MAX + 1];

    /* clients */
    struct side cli[MAX_CLIENTS];
    struct peer *cli_peer[MAX_CLIENTS];

    /* per test behaviour */
    void (*cli_open)(struct bench *b, int i, struct peer *p);
    void (*cli_frame)(struct bench *b, int i, struct peer *p, const Smtpsync__Frame *f);
    void (*cli_close)(struct bench *b, int i);
    void (*srv_open)(struct bench *b, struct peer *p);
    void (*srv_frame)(struct bench *b, struct peer *p, const Smtpsync__Frame *f);
    void (*srv_close)(struct bench *b, struct peer *p);
    int close_after; /* client closes after this many frames (0: never) */
    void *data;
    struct raw raw;
    uint64_t t0;
};

static void on_listener_closed(void *arg)
{
    struct bench *b = arg;

    b->listener_closed = true;
}

/* A client is done: when the last is, the listener closes and the loop
 * runs dry. */
static void client_done(struct bench *b)
{
    assert_true(b->active > 0);
    if (--b->active == 0 && !b->keep_listener && b->l != NULL)
        peer_listener_close(b->l, on_listener_closed, b);
}

static void record_frame(struct side *s, const Smtpsync__Frame *f)
{
    s->frames++;
    s->last_id = f->id;
    if (f->body_case == SMTPSYNC__FRAME__BODY_HELLO) {
        snprintf(s->last_node, sizeof(s->last_node), "%s", f->hello->node);
        s->last_hash_len = f->hello->hash.len;
        s->hash_ok = true;
        for (size_t i = 0; i < f->hello->hash.len; i++)
            if (f->hello->hash.data[i] != (uint8_t)(i * 7 + 3))
                s->hash_ok = false;
    }
}

static void record_close(struct side *s, int err, const char *reason)
{
    s->closes++;
    s->err = err;
    snprintf(s->reason, sizeof(s->reason), "%s", reason);
    assert_non_null(reason);
    assert_null(strchr(reason, '\n'));
}

static void record_open(struct side *s, struct peer *p, const char *id)
{
    s->opens++;
    snprintf(s->id, sizeof(s->id), "%s", id);
    snprintf(s->tls, sizeof(s->tls), "%s", peer_tls_version(p));
    s->cert_expiry = peer_cert_expiry(p);
    assert_int_equal(peer_state(p), PEER_OPEN);
    assert_string_equal(peer_id(p), id);
    assert_true(peer_remote(p)[0] != '\0');
}

/* server callbacks */

static bool srv_authorize(void *arg, struct peer *p, const char *id, char *why, size_t whylen)
{
    struct bench *b = arg;

    (void)p;
    b->authorized++;
    snprintf(b->authorized_id, sizeof(b->authorized_id), "%s", id);
    if (b->deny) {
        snprintf(why, whylen, "not a member of this cluster");
        return false;
    }
    return true;
}

static void srv_on_open(void *arg, struct peer *p, const char *id)
{
    struct bench *b = arg;

    assert_false(peer_is_client(p));
    record_open(&b->srv, p, id);
    b->srv_peer = p;
    if (b->srv_open != NULL)
        b->srv_open(b, p);
}

/* By default the server echoes every frame. */
static void srv_on_frame(void *arg, struct peer *p, const Smtpsync__Frame *f)
{
    struct bench *b = arg;

    record_frame(&b->srv, f);
    if (b->srv_frame != NULL)
        b->srv_frame(b, p, f);
    else
        assert_int_equal(peer_send(p, f), 0);
}

static void srv_on_close(void *arg, struct peer *p, int err, const char *reason)
{
    struct bench *b = arg;

    record_close(&b->srv, err, reason);
    if (b->srv_peer == p)
        b->srv_peer = NULL;
    if (b->srv_close != NULL)
        b->srv_close(b, p);
}

static const struct peer_callbacks srv_cb = {
    .authorize = srv_authorize,
    .on_open = srv_on_open,
    .on_frame = srv_on_frame,
    .on_close = srv_on_close,
};

/* client callbacks: arg is the bench, the index is found by pointer */

static int cli_index(struct bench *b, struct peer *p)
{
    for (int i = 0; i < MAX_CLIENTS; i++)
        if (b->cli_peer[i] == p)
            return i;
    fail_msg("unknown client peer");
    return -1;
}

static void cli_on_open(void *arg, struct peer *p, const char *id)
{
    struct bench *b = arg;
    int i = cli_index(b, p);

    assert_true(peer_is_client(p));
    record_open(&b->cli[i], p, id);
    if (b->cli_open != NULL)
        b->cli_open(b, i, p);
}

static void cli_on_frame(void *arg, struct peer *p, const Smtpsync__Frame *f)
{
    struct bench *b = arg;
    int i = cli_index(b, p);

    record_frame(&b->cli[i], f);
    if (b->cli_frame != NULL)
        b->cli_frame(b, i, p, f);
    if (b->close_after > 0 && b->cli[i].frames == b->close_after)
        peer_close(p, 0, "done");
}

static void cli_on_close(void *arg, struct peer *p, int err, const char *reason)
{
    struct bench *b = arg;
    int i = cli_index(b, p);

    record_close(&b->cli[i], err, reason);
    b->cli_peer[i] = NULL;
    if (b->cli_close != NULL)
        b->cli_close(b, i);
    client_done(b);
}

static const struct peer_callbacks cli_cb = {
    .on_open = cli_on_open,
    .on_frame = cli_on_frame,
    .on_close = cli_on_close,
};

static void on_watchdog(uv_timer_t *t)
{
    (void)t;
    fail_msg("test timed out");
}

/* Where bench_elapsed_ms() counts from, on the loop's clock. The timeouts
 * under test are libuv timers, due once uv_now() (whole milliseconds, the
 * clock as the loop last read it) reaches the loop time they were started
 * at plus the timeout. That start is truncated to the millisecond, so a
 * timer exactly on time can fire up to 1 ms before the timeout has passed
 * on uv_hrtime() counted from just before it was started (199.8 ms of 200
 * seen under load). On the loop's own clock, refreshed here so that every
 * timer started later starts at or after t0, "not before the timeout"
 * holds exactly. */
static void bench_mark(struct bench *b)
{
    uv_update_time(&b->loop);
    b->t0 = uv_now(&b->loop);
}

static void bench_init(struct bench *b, const char *server_cert)
{
    memset(b, 0, sizeof(*b));
    assert_int_equal(uv_loop_init(&b->loop), 0);
    assert_int_equal(uv_timer_init(&b->loop, &b->watchdog), 0);
    uv_timer_start(&b->watchdog, on_watchdog, 8000, 0);
    uv_unref((uv_handle_t *)&b->watchdog);
    b->sctx = load("ca.pem", server_cert);
    bench_mark(b);
}

static void bench_listen(struct bench *b)
{
    assert_int_equal(peer_listen(&b->loop, "127.0.0.1:0", b->sctx, &b->sparams, &srv_cb, b, &b->l),
                     0);
    b->port = peer_listener_port(b->l);
    assert_true(b->port > 0);
}

/* Client i on `ctx` (a reference is kept by the peer's SSL objects only). */
static void bench_connect(struct bench *b, int i, struct mtls_ctx *ctx, const char *expected,
                          const struct peer_params *params)
{
    char addr[64];

    snprintf(addr, sizeof(addr), "127.0.0.1:%d", b->port);
    assert_int_equal(
        peer_connect(&b->loop, addr, ctx, expected, params, &cli_cb, b, &b->cli_peer[i]), 0);
    assert_int_equal(peer_state(b->cli_peer[i]), PEER_CONNECTING);
    b->active++;
}

static void bench_connect_as(struct bench *b, int i, const char *client_cert, const char *expected)
{
    struct mtls_ctx *ctx = load("ca.pem", client_cert);

    bench_connect(b, i, ctx, expected, NULL);
    mtls_ctx_unref(ctx);
}

static void bench_run(struct bench *b)
{
    uv_run(&b->loop, UV_RUN_DEFAULT);
}

static uint64_t bench_elapsed_ms(struct bench *b)
{
    uv_update_time(&b->loop);
    return uv_now(&b->loop) - b->t0;
}

static void bench_finish(struct bench *b)
{
    if (!b->listener_closed && b->l != NULL) {
        peer_listener_close(b->l, on_listener_closed, b);
        uv_run(&b->loop, UV_RUN_DEFAULT);
    }
    assert_true(b->listener_closed);
    uv_close((uv_handle_t *)&b->watchdog, NULL);
    uv_run(&b->loop, UV_RUN_DEFAULT);
    mtls_ctx_unref(b->sctx);
    assert_int_equal(uv_loop_close(&b->loop), 0);
}

static void assert_contains(const char *hay, const char *needle)
{
    if (strstr(hay, needle) == NULL)
        fail_msg("'%s' lacks '%s'", hay, needle);
}

/* ---- raw clients ---- */

static void raw_on_close(uv_handle_t *h)
{
    struct raw *r = h->data;

    r->closed = true;
    tlsio_free(r->tls);
    r->tls = NULL;
    if (r->active) {
        r->active = false;
        client_done(r->b);
    }
}

static void raw_close(struct raw *r)
{
    if (!uv_is_closing((uv_handle_t *)&r->tcp))
        uv_close((uv_handle_t *)&r->tcp, raw_on_close);
}

static void raw_on_write(uv_write_t *req, int status)
{
    (void)status;
    free(req);
}

static void raw_write(struct raw *r, const void *data, size_t len)
{
    struct {
        uv_write_t req;
        char data[];
    } * w;
    uv_buf_t buf;

    if (len == 0)
        return;
    w = malloc(sizeof(*w) + len);
    assert_non_null(w);
    memcpy(w->data, data, len);
    buf = uv_buf_init(w->data, (unsigned)len);
    assert_int_equal(uv_write(&w->req, (uv_stream_t *)&r->tcp, &buf, 1, raw_on_write), 0);
}

static void raw_flush(struct raw *r)
{
    char buf[16384];
    size_t n;

    while ((n = tlsio_take(r->tls, buf, sizeof(buf))) > 0)
        raw_write(r, buf, n);
}

static void raw_on_shutdown(uv_shutdown_t *req, int status)
{
    (void)req;
    (void)status;
}

/* What a raw client does once it may speak. */
static void raw_speak(struct raw *r)
{
    if (r->tls != NULL) {
        if (r->send_len > 0)
            assert_int_equal(tlsio_write(r->tls, r->send, r->send_len), 0);
        if (r->close_notify)
            tlsio_shutdown(r->tls);
        raw_flush(r);
    } else {
        raw_write(r, r->send, r->send_len);
    }
    if (r->shutdown)
        assert_int_equal(uv_shutdown(&r->sd, (uv_stream_t *)&r->tcp, raw_on_shutdown), 0);
}

static void raw_alloc(uv_handle_t *h, size_t suggested, uv_buf_t *buf)
{
    static char space[65536];

    (void)h;
    (void)suggested;
    *buf = uv_buf_init(space, sizeof(space));
}

static void raw_on_read(uv_stream_t *s, ssize_t n, const uv_buf_t *buf)
{
    struct raw *r = s->data;

    if (n < 0) {
        r->eof = true;
        raw_close(r);
        return;
    }
    if (r->tls == NULL || n == 0)
        return;
    assert_int_equal(tlsio_feed(r->tls, buf->base, (size_t)n), 0);
    if (!r->hs_done) {
        r->hs_rc = tlsio_handshake(r->tls);
        raw_flush(r);
        if (r->hs_rc < 0 || r->hs_rc == TLSIO_AGAIN)
            return;
        r->hs_done = true;
        if (r->stop_reading)
            uv_read_stop(s);
        raw_speak(r);
    }
    for (;;) {
        char plain[16384];
        size_t got;
        int rc = tlsio_read(r->tls, plain, sizeof(plain), &got);

        if (rc == 0) {
            r->plain_got += got;
            continue;
        }
        raw_flush(r);
        break;
    }
}

static void raw_on_connect(uv_connect_t *req, int status)
{
    struct raw *r = req->data;

    assert_int_equal(status, 0);
    if (!r->stop_reading || r->ssl_ctx != NULL)
        assert_int_equal(uv_read_start((uv_stream_t *)&r->tcp, raw_alloc, raw_on_read), 0);
    if (r->ssl_ctx == NULL) {
        raw_speak(r);
        return;
    }
    assert_int_equal(tlsio_new(r->ssl_ctx, false, NULL, &r->tls), 0);
    r->hs_rc = tlsio_handshake(r->tls);
    assert_int_equal(r->hs_rc, TLSIO_AGAIN);
    raw_flush(r);
}

/* Starts the bench's raw client; `ssl_ctx` (NULL: plain TCP) is freed here
 * (the session keeps its own reference). */
static void raw_start(struct bench *b, SSL_CTX *ssl_ctx)
{
    struct raw *r = &b->raw;
    struct sockaddr_in sa;

    r->b = b;
    r->ssl_ctx = ssl_ctx;
    r->active = true;
    b->active++;
    assert_int_equal(uv_tcp_init(&b->loop, &r->tcp), 0);
    r->tcp.data = r;
    r->conn.data = r;
    assert_int_equal(uv_ip4_addr("127.0.0.1", b->port, &sa), 0);
    assert_int_equal(
        uv_tcp_connect(&r->conn, &r->tcp, (const struct sockaddr *)&sa, raw_on_connect), 0);
}

static void raw_free_ctx(struct raw *r)
{
    SSL_CTX_free(r->ssl_ctx);
    r->ssl_ctx = NULL;
}

/* A client SSL_CTX trusting the deployment CA, presenting `cert` (NULL:
 * none). */
static SSL_CTX *raw_ctx(const char *cert)
{
    SSL_CTX *ctx = SSL_CTX_new(TLS_client_method());

    assert_non_null(ctx);
    assert_int_equal(SSL_CTX_load_verify_locations(ctx, pki_path("ca.pem"), NULL), 1);
    SSL_CTX_set_verify(ctx, SSL_VERIFY_PEER, NULL);
    if (cert != NULL)
        present(ctx, cert);
    return ctx;
}

/* ---- tests: the good path ---- */

static void hello_then_close(struct bench *b, int i, struct peer *p)
{
    (void)b;
    send_hello(p, 1 + (uint64_t)i, "site-b");
}

static void test_peer_hello_both_ways(void **state)
{
    struct bench b;
    time_t now = time(NULL);

    (void)state;
    bench_init(&b, "primary");
    bench_listen(&b);
    b.cli_open = hello_then_close;
    b.close_after = 1;
    bench_connect_as(&b, 0, "site-b", "primary");
    bench_run(&b);

    assert_int_equal(b.authorized, 1);
    assert_string_equal(b.authorized_id, "site-b");
    assert_int_equal(b.srv.opens, 1);
    assert_string_equal(b.srv.id, "site-b");
    assert_string_equal(b.srv.tls, "TLSv1.3");
    assert_int_equal(b.srv.frames, 1);
    assert_string_equal(b.srv.last_node, "site-b");
    assert_int_equal(b.srv.last_id, 1);
    assert_int_equal(b.cli[0].opens, 1);
    assert_string_equal(b.cli[0].id, "primary");
    assert_string_equal(b.cli[0].tls, "TLSv1.3");
    assert_true(b.cli[0].cert_expiry > now + 800 * 86400);
    assert_true(b.srv.cert_expiry > now + 800 * 86400);
    assert_int_equal(b.cli[0].frames, 1);
    /* The client closed in order; the server saw its close_notify. */
    assert_int_equal(b.cli[0].closes, 1);
    assert_int_equal(b.cli[0].err, 0);
    assert_string_equal(b.cli[0].reason, "done");
    assert_int_equal(b.srv.closes, 1);
    assert_int_equal(b.srv.err, 0);
    assert_string_equal(b.srv.reason, "closed by the peer");
    bench_finish(&b);
}

static void admin_hello(struct bench *b, int i, struct peer *p)
{
    (void)b;
    (void)i;
    send_hello(p, 9, "alice");
}

static void test_peer_admin_certificate_is_a_client(void **state)
{
    struct bench b;

    (void)state;
    bench_init(&b, "primary");
    bench_listen(&b);
    b.cli_open = admin_hello;
    b.close_after = 1;
    /* Like smtpsyncctl: any server the CA vouches for; its id comes with
     * on_open. */
    bench_connect_as(&b, 0, "alice", NULL);
    bench_run(&b);
    assert_string_equal(b.cli[0].id, "primary");
    assert_string_equal(b.authorized_id, "alice");
    assert_int_equal(b.srv.opens, 1);
    assert_int_equal(b.cli[0].frames, 1);
    assert_int_equal(b.cli[0].err, 0);
    bench_finish(&b);
}

#define BURST 100

static void burst(struct bench *b, int i, struct peer *p)
{
    (void)b;
    (void)i;
    /* All in one loop turn: they share writes and reads. */
    for (uint64_t id = 1; id <= BURST; id++)
        send_hello(p, id, "site-b");
}

static void srv_count_in_order(struct bench *b, struct peer *p, const Smtpsync__Frame *f)
{
    assert_int_equal(f->id, (uint64_t)b->srv.frames);
    if (b->srv.frames == BURST)
        peer_close(p, 0, "got them all");
}

static void test_peer_many_frames_in_one_write(void **state)
{
    struct bench b;

    (void)state;
    bench_init(&b, "primary");
    bench_listen(&b);
    b.cli_open = burst;
    b.srv_frame = srv_count_in_order;
    bench_connect_as(&b, 0, "site-b", "primary");
    bench_run(&b);
    assert_int_equal(b.srv.frames, BURST);
    assert_int_equal(b.srv.err, 0);
    assert_string_equal(b.srv.reason, "got them all");
    /* The server's orderly close reaches the client as close_notify. */
    assert_int_equal(b.cli[0].err, 0);
    assert_string_equal(b.cli[0].reason, "closed by the peer");
    bench_finish(&b);
}

#define BIG (1024 * 1024)

static void send_big(struct bench *b, int i, struct peer *p)
{
    uint8_t *hash = malloc(BIG);
    struct hello_frame hf;

    (void)b;
    (void)i;
    assert_non_null(hash);
    for (size_t k = 0; k < BIG; k++)
        hash[k] = (uint8_t)(k * 7 + 3);
    hello_init(&hf, 5, "big", hash, BIG);
    assert_int_equal(peer_send(p, &hf.f), 0);
    free(hash);
}

static void test_peer_one_mebibyte_frame_both_ways(void **state)
{
    struct bench b;

    (void)state;
    bench_init(&b, "primary");
    bench_listen(&b);
    b.cli_open = send_big;
    b.close_after = 1;
    bench_connect_as(&b, 0, "site-b", "primary");
    bench_run(&b);
    assert_int_equal(b.srv.frames, 1);
    assert_int_equal(b.srv.last_hash_len, BIG);
    assert_true(b.srv.hash_ok);
    assert_int_equal(b.cli[0].frames, 1);
    assert_int_equal(b.cli[0].last_hash_len, BIG);
    assert_true(b.cli[0].hash_ok);
    assert_int_equal(b.cli[0].err, 0);
    bench_finish(&b);
}

static void tls12_hello(struct bench *b, int i, struct peer *p)
{
    (void)b;
    (void)i;
    assert_string_equal(peer_tls_version(p), "TLSv1.2");
    send_hello(p, 1, "site-b");
}

static void test_peer_tls12_client_accepted(void **state)
{
    struct bench b;
    struct mtls_ctx *c;

    (void)state;
    bench_init(&b, "primary");
    bench_listen(&b);
    c = load("ca.pem", "site-b");
    assert_int_equal(SSL_CTX_set_max_proto_version(mtls_ctx_client(c), TLS1_2_VERSION), 1);
    b.cli_open = tls12_hello;
    b.close_after = 1;
    bench_connect(&b, 0, c, "primary", NULL);
    mtls_ctx_unref(c);
    bench_run(&b);
    assert_string_equal(b.srv.tls, "TLSv1.2");
    assert_string_equal(b.srv.id, "site-b");
    assert_int_equal(b.cli[0].frames, 1);
    assert_int_equal(b.cli[0].err, 0);
    bench_finish(&b);
}

/* ---- refusals at the handshake ---- */

static void deny_run(bool tls12)
{
    char logpath[4096], *log;
    struct bench b;
    struct mtls_ctx *c;
    int saved, fd;

    /* The refusal must be logged: stderr goes to a file for the run. */
    snprintf(logpath, sizeof(logpath), "%s", pki_path("deny.log"));
    fd = open(logpath, O_WRONLY | O_CREAT | O_TRUNC, 0600);
    assert_true(fd >= 0);
    saved = dup(2);
    dup2(fd, 2);
    close(fd);

    bench_init(&b, "primary");
    bench_listen(&b);
    b.deny = true;
    c = load("ca.pem", "site-c");
    if (tls12)
        assert_int_equal(SSL_CTX_set_max_proto_version(mtls_ctx_client(c), TLS1_2_VERSION), 1);
    bench_connect(&b, 0, c, "primary", NULL);
    mtls_ctx_unref(c);
    bench_run(&b);

    dup2(saved, 2);
    close(saved);
    log = testutil_read_file(logpath, NULL);
    assert_contains(log, "peer refused");
    assert_contains(log, "not a member of this cluster");
    free(log);

    assert_int_equal(b.authorized, 1);
    assert_string_equal(b.authorized_id, "site-c");
    assert_int_equal(b.srv.opens, 0);
    assert_int_equal(b.srv.closes, 1);
    assert_int_equal(b.srv.err, ERROR_TLS);
    assert_contains(b.srv.reason, "'site-c' refused: not a member of this cluster");
    assert_int_equal(b.cli[0].closes, 1);
    assert_int_equal(b.cli[0].frames, 0);
    assert_int_equal(b.cli[0].err, ERROR_TLS);
    if (tls12) {
        /* The server's Finished never came: no open. */
        assert_int_equal(b.cli[0].opens, 0);
        assert_contains(b.cli[0].reason, "TLS handshake failed");
    } else {
        /* TLS 1.3: the client's side of the handshake completes before the
         * server judges its certificate; the alert comes after. */
        assert_contains(b.cli[0].reason, "refused by the server");
    }
    assert_contains(b.cli[0].reason, "alert");
    bench_finish(&b);
}

static void test_peer_authorize_deny_closes_with_reason(void **state)
{
    (void)state;
    deny_run(false);
    deny_run(true);
}

static void srv_refuse_first_frame(struct bench *b, struct peer *p, const Smtpsync__Frame *f)
{
    (void)b;
    (void)f;
    peer_close(p, ERROR_CONFLICT, "epoch 3 is older than 5");
}

static void test_peer_close_with_error_tells_the_peer(void **state)
{
    struct bench b;

    (void)state;
    bench_init(&b, "primary");
    bench_listen(&b);
    b.cli_open = hello_then_close;
    b.srv_frame = srv_refuse_first_frame;
    bench_connect_as(&b, 0, "site-b", "primary");
    bench_run(&b);
    assert_int_equal(b.srv.err, ERROR_CONFLICT);
    assert_string_equal(b.srv.reason, "epoch 3 is older than 5");
    /* The farewell is not a frame for the application. */
    assert_int_equal(b.cli[0].frames, 0);
    assert_int_equal(b.cli[0].err, ERROR_CONFLICT);
    assert_string_equal(b.cli[0].reason, "closed by the peer: epoch 3 is older than 5");
    bench_finish(&b);
}

static void test_peer_client_of_other_ca_refused(void **state)
{
    struct bench b;
    struct mtls_ctx *c;

    (void)state;
    bench_init(&b, "primary");
    bench_listen(&b);
    /* It trusts the deployment CA too, so only the server can refuse it. */
    c = load("both-ca.pem", "foreign");
    bench_connect(&b, 0, c, "primary", NULL);
    mtls_ctx_unref(c);
    bench_run(&b);
    assert_int_equal(b.authorized, 0);
    assert_int_equal(b.srv.opens, 0);
    assert_int_equal(b.srv.err, ERROR_TLS);
    assert_contains(b.srv.reason, "TLS handshake failed");
    assert_true(strstr(b.srv.reason, "self-signed certificate in certificate chain") != NULL ||
                strstr(b.srv.reason, "unable to get local issuer certificate") != NULL);
    assert_true(b.cli[0].err < 0);
    bench_finish(&b);
}

static void test_peer_expired_certificates_refused(void **state)
{
    struct bench b;
    struct mtls_ctx *c;

    (void)state;
    /* An expired client. */
    bench_init(&b, "primary");
    bench_listen(&b);
    c = load("ca.pem", "site-b");
    present(mtls_ctx_client(c), "expired");
    bench_connect(&b, 0, c, "primary", NULL);
    mtls_ctx_unref(c);
    bench_run(&b);
    assert_int_equal(b.srv.opens, 0);
    assert_int_equal(b.srv.err, ERROR_TLS);
    assert_contains(b.srv.reason, "certificate has expired");
    assert_true(b.cli[0].err < 0);
    bench_finish(&b);

    /* An expired server. */
    bench_init(&b, "primary");
    present(mtls_ctx_server(b.sctx), "expired");
    bench_listen(&b);
    bench_connect_as(&b, 0, "site-b", "primary");
    bench_run(&b);
    assert_int_equal(b.cli[0].opens, 0);
    assert_int_equal(b.cli[0].err, ERROR_TLS);
    assert_contains(b.cli[0].reason, "certificate has expired");
    assert_int_equal(b.srv.opens, 0);
    assert_int_equal(b.srv.closes, 1);
    bench_finish(&b);
}

static void test_peer_server_without_expected_id_refused(void **state)
{
    struct bench b;

    (void)state;
    bench_init(&b, "site-c");
    bench_listen(&b);
    bench_connect_as(&b, 0, "site-b", "primary");
    bench_run(&b);
    assert_int_equal(b.cli[0].opens, 0);
    assert_int_equal(b.cli[0].err, ERROR_TLS);
    assert_contains(b.cli[0].reason, "the server's certificate is for 'site-c', not 'primary'");
    /* The server never opened: the client refused before its Finished. */
    assert_int_equal(b.srv.opens, 0);
    assert_int_equal(b.srv.closes, 1);
    assert_true(b.srv.err < 0);
    bench_finish(&b);
}

static void test_peer_no_client_certificate_refused(void **state)
{
    struct bench b;

    (void)state;
    bench_init(&b, "primary");
    bench_listen(&b);
    raw_start(&b, raw_ctx(NULL));
    bench_run(&b);
    raw_free_ctx(&b.raw);
    assert_int_equal(b.authorized, 0);
    assert_int_equal(b.srv.opens, 0);
    assert_int_equal(b.srv.err, ERROR_TLS);
    assert_contains(b.srv.reason, "peer did not return a certificate");
    assert_true(b.raw.eof);
    assert_int_equal(b.raw.plain_got, 0);
    bench_finish(&b);
}

static void test_peer_tls11_client_refused(void **state)
{
    struct bench b;
    struct mtls_ctx *c;
    SSL_CTX *sc;

    (void)state;
    bench_init(&b, "primary");
    bench_listen(&b);
    c = load("ca.pem", "site-b");
    sc = mtls_ctx_client(c);
    /* OpenSSL 3 refuses TLS 1.1's algorithms above security level 0. */
    SSL_CTX_set_security_level(sc, 0);
    assert_int_equal(SSL_CTX_set_cipher_list(sc, "DEFAULT:@SECLEVEL=0"), 1);
    assert_int_equal(SSL_CTX_set_min_proto_version(sc, TLS1_VERSION), 1);
    assert_int_equal(SSL_CTX_set_max_proto_version(sc, TLS1_1_VERSION), 1);
    bench_connect(&b, 0, c, "primary", NULL);
    mtls_ctx_unref(c);
    bench_run(&b);
    assert_int_equal(b.srv.opens, 0);
    assert_int_equal(b.srv.err, ERROR_TLS);
    assert_contains(b.srv.reason, "unsupported protocol");
    assert_int_equal(b.cli[0].opens, 0);
    assert_int_equal(b.cli[0].err, ERROR_TLS);
    bench_finish(&b);
}

/* ---- hostile frames and streams ---- */

static void send_too_big(struct bench *b, int i, struct peer *p)
{
    static uint8_t hash[100 * 1024];
    struct hello_frame hf;

    (void)b;
    (void)i;
    hello_init(&hf, 3, "big", hash, sizeof(hash));
    assert_int_equal(peer_send(p, &hf.f), 0);
}

static void second_client(struct bench *b, int i)
{
    if (i == 0) {
        b->cli_open = hello_then_close;
        b->close_after = 1;
        bench_connect_as(b, 1, "site-c", "primary");
    }
}

static void test_peer_oversized_frame_closes_and_listener_goes_on(void **state)
{
    struct bench b;
    struct peer_params cp = {.max_frame = 1024 * 1024};

    (void)state;
    bench_init(&b, "primary");
    b.sparams.max_frame = 64 * 1024;
    bench_listen(&b);
    b.cli_open = send_too_big;
    b.cli_close = second_client;
    {
        struct mtls_ctx *c = load("ca.pem", "site-b");

        bench_connect(&b, 0, c, "primary", &cp);
        mtls_ctx_unref(c);
    }
    bench_run(&b);
    /* The first client was cut off, with the farewell telling why. */
    assert_int_equal(b.cli[0].err, ERROR_TOO_BIG);
    assert_contains(b.cli[0].reason, "closed by the peer: frame over the size limit");
    assert_int_equal(b.cli[0].frames, 0);
    /* The second one was served. */
    assert_int_equal(b.cli[1].opens, 1);
    assert_int_equal(b.cli[1].frames, 1);
    assert_int_equal(b.cli[1].err, 0);
    assert_int_equal(b.srv.opens, 2);
    assert_int_equal(b.srv.closes, 2);
    bench_finish(&b);
}

static void test_peer_send_refusals_keep_the_connection(void **state)
{
    struct bench b;
    struct peer *p;
    static uint8_t hash[70 * 1024];
    struct hello_frame hf;
    Smtpsync__Frame empty;

    (void)state;
    bench_init(&b, "primary");
    bench_listen(&b);
    b.cli_open = hello_then_close;
    b.close_after = 1;
    {
        struct peer_params cp = {.max_frame = 64 * 1024};
        struct mtls_ctx *c = load("ca.pem", "site-b");

        bench_connect(&b, 0, c, "primary", &cp);
        mtls_ctx_unref(c);
    }
    p = b.cli_peer[0];
    /* Not open yet. */
    hello_init(&hf, 1, "x", NULL, 0);
    assert_int_equal(peer_send(p, &hf.f), -ENOTCONN);
    /* Run until open (the hello is then on its way), then try refusals. */
    while (b.cli[0].opens == 0)
        uv_run(&b.loop, UV_RUN_ONCE);
    hello_init(&hf, 2, "x", hash, sizeof(hash));
    assert_int_equal(peer_send(p, &hf.f), ERROR_TOO_BIG);
    smtpsync__frame__init(&empty);
    assert_int_equal(peer_send(p, &empty), ERROR_INVALID);
    assert_int_equal(peer_state(p), PEER_OPEN);
    bench_run(&b);
    assert_int_equal(b.srv.frames, 1);
    assert_int_equal(b.cli[0].frames, 1);
    assert_int_equal(b.cli[0].err, 0);
    bench_finish(&b);
}

static void test_peer_garbage_to_listener_closed(void **state)
{
    static const char garbage[] = "GET / HTTP/1.0\r\nHost: primary\r\n\r\n";
    struct bench b;

    (void)state;
    bench_init(&b, "primary");
    bench_listen(&b);
    b.raw.send = garbage;
    b.raw.send_len = sizeof(garbage) - 1;
    raw_start(&b, NULL);
    bench_run(&b);
    assert_int_equal(b.srv.opens, 0);
    assert_int_equal(b.srv.closes, 1);
    assert_int_equal(b.srv.err, ERROR_TLS);
    assert_contains(b.srv.reason, "TLS handshake failed");
    assert_true(b.raw.eof);
    bench_finish(&b);
}

/* A frame header announcing 100 octets, and 10 of them. */
static const uint8_t truncated[] = {0,   0,   0,   100, 0x52, 0x08, 'x',
                                    'x', 'x', 'x', 'x', 'x',  'x',  'x'};

static void truncated_run(bool close_notify)
{
    struct bench b;

    bench_init(&b, "primary");
    bench_listen(&b);
    b.raw.send = truncated;
    b.raw.send_len = sizeof(truncated);
    b.raw.close_notify = close_notify;
    b.raw.shutdown = true;
    raw_start(&b, raw_ctx("site-b"));
    bench_run(&b);
    raw_free_ctx(&b.raw);
    assert_int_equal(b.srv.opens, 1);
    assert_int_equal(b.srv.frames, 0);
    assert_int_equal(b.srv.err, ERROR_DECODE);
    assert_contains(b.srv.reason, "truncated frame");
    assert_contains(b.srv.reason, "14 octets");
    bench_finish(&b);
}

static void test_peer_truncated_frame_then_eof_closed(void **state)
{
    (void)state;
    truncated_run(true);  /* with close_notify */
    truncated_run(false); /* TCP end only */
}

static void undecodable_run(const uint8_t *bytes, size_t len)
{
    struct bench b;

    bench_init(&b, "primary");
    bench_listen(&b);
    b.raw.send = bytes;
    b.raw.send_len = len;
    raw_start(&b, raw_ctx("site-b"));
    bench_run(&b);
    raw_free_ctx(&b.raw);
    assert_int_equal(b.srv.opens, 1);
    assert_int_equal(b.srv.frames, 0);
    assert_int_equal(b.srv.err, ERROR_DECODE);
    assert_contains(b.srv.reason, "undecodable frame");
    /* The farewell reached the raw client before the end. */
    assert_true(b.raw.plain_got > 0);
    assert_true(b.raw.eof);
    bench_finish(&b);
}

static void test_peer_undecodable_frame_closed(void **state)
{
    /* A length of 5 and 5 octets that are no protobuf. */
    static const uint8_t bad[] = {0, 0, 0, 5, 0xff, 0xff, 0xff, 0xff, 0xff};
    struct hello_frame hf;
    uint8_t *packed, *trailing;
    size_t len;

    (void)state;
    undecodable_run(bad, sizeof(bad));
    /* A good frame with trailing garbage inside its length. */
    hello_init(&hf, 1, "site-b", NULL, 0);
    assert_int_equal(frame_pack(&hf.f, 0, &packed, &len), 0);
    trailing = malloc(len + 3);
    assert_non_null(trailing);
    memcpy(trailing, packed, len);
    memset(trailing + len, 0xff, 3);
    trailing[3] = (uint8_t)(trailing[3] + 3);
    undecodable_run(trailing, len + 3);
    free(trailing);
    free(packed);
}

static void test_peer_zero_length_frame_closed(void **state)
{
    static const uint8_t zero[] = {0, 0, 0, 0};
    struct bench b;

    (void)state;
    bench_init(&b, "primary");
    bench_listen(&b);
    b.raw.send = zero;
    b.raw.send_len = sizeof(zero);
    raw_start(&b, raw_ctx("site-b"));
    bench_run(&b);
    raw_free_ctx(&b.raw);
    assert_int_equal(b.srv.err, ERROR_DECODE);
    bench_finish(&b);
}

/* ---- timeouts ---- */

static void test_peer_handshake_timeout(void **state)
{
    struct bench b;

    (void)state;
    bench_init(&b, "primary");
    b.sparams.handshake_timeout_ms = 200;
    bench_listen(&b);
    raw_start(&b, NULL); /* connects and says nothing */
    bench_run(&b);
    assert_int_equal(b.srv.opens, 0);
    assert_int_equal(b.srv.err, -ETIMEDOUT);
    assert_contains(b.srv.reason, "handshake timed out after 200 ms");
    assert_true(bench_elapsed_ms(&b) >= 200);
    assert_true(b.raw.eof);
    bench_finish(&b);
}

struct ticker {
    struct bench *b;
    int sent;
    uv_timer_t timer;
};

/* Sends three frames 100 ms apart, then nothing. */
static void on_tick(uv_timer_t *t)
{
    struct ticker *k = t->data;

    if (k->b->cli_peer[0] == NULL || ++k->sent > 3) {
        uv_close((uv_handle_t *)t, NULL);
        return;
    }
    send_hello(k->b->cli_peer[0], (uint64_t)k->sent, "site-b");
}

static void start_ticks(struct bench *b, int i, struct peer *p)
{
    struct ticker *k = b->data;

    (void)i;
    (void)p;
    k->b = b;
    assert_int_equal(uv_timer_init(&b->loop, &k->timer), 0);
    k->timer.data = k;
    uv_timer_start(&k->timer, on_tick, 100, 100);
}

static void test_peer_idle_timeout(void **state)
{
    struct bench b;
    struct ticker tick;

    (void)state;
    bench_init(&b, "primary");
    b.sparams.idle_timeout_ms = 400;
    bench_listen(&b);
    memset(&tick, 0, sizeof(tick));
    b.data = &tick;
    b.cli_open = start_ticks;
    bench_connect_as(&b, 0, "site-b", "primary");
    bench_run(&b);
    /* Three frames 100 ms apart kept it open; silence then closed it. */
    assert_int_equal(b.srv.frames, 3);
    assert_int_equal(b.cli[0].frames, 3);
    assert_int_equal(b.srv.err, -ETIMEDOUT);
    assert_contains(b.srv.reason, "idle timeout");
    assert_int_equal(b.cli[0].err, -ETIMEDOUT);
    assert_contains(b.cli[0].reason, "closed by the peer: idle timeout");
    assert_true(bench_elapsed_ms(&b) >= 700);
    bench_finish(&b);
}

static void mute_on_connection(uv_stream_t *s, int status)
{
    /* Never accepts: the client's handshake must time out. */
    (void)s;
    (void)status;
}

static void test_peer_connect_refused_and_timeout(void **state)
{
    struct bench b;
    struct mtls_ctx *c;
    struct peer_params fast = {.handshake_timeout_ms = 200};

    (void)state;
    bench_init(&b, "primary");
    bench_listen(&b);
    b.keep_listener = true;
    peer_listener_close(b.l, on_listener_closed, &b); /* nothing listens on the port now */
    uv_run(&b.loop, UV_RUN_DEFAULT);
    assert_true(b.listener_closed);
    bench_connect_as(&b, 0, "site-b", "primary");
    bench_run(&b);
    assert_int_equal(b.cli[0].opens, 0);
    assert_int_equal(b.cli[0].closes, 1);
    assert_int_equal(b.cli[0].err, -ECONNREFUSED);
    assert_contains(b.cli[0].reason, "cannot connect to 127.0.0.1:");
    assert_contains(b.cli[0].reason, ": connection refused");

    /* A raw listener that accepts and never speaks: the handshake times out. */
    {
        uv_tcp_t mute;
        struct sockaddr_in sa;
        struct sockaddr_storage ss;
        int len = sizeof(ss);
        char addr[64];

        assert_int_equal(uv_tcp_init(&b.loop, &mute), 0);
        uv_ip4_addr("127.0.0.1", 0, &sa);
        assert_int_equal(uv_tcp_bind(&mute, (const struct sockaddr *)&sa, 0), 0);
        assert_int_equal(uv_listen((uv_stream_t *)&mute, 4, mute_on_connection), 0);
        uv_tcp_getsockname(&mute, (struct sockaddr *)&ss, &len);
        snprintf(addr, sizeof(addr), "127.0.0.1:%d",
                 ntohs(((struct sockaddr_in *)(void *)&ss)->sin_port));
        c = load("ca.pem", "site-b");
        /* Called outside the loop, peer_connect() starts its timer on the
         * loop's last reading of the clock (before load() above): read it
         * now, so that the timer starts at t0. */
        bench_mark(&b);
        assert_int_equal(
            peer_connect(&b.loop, addr, c, "primary", &fast, &cli_cb, &b, &b.cli_peer[1]), 0);
        mtls_ctx_unref(c);
        b.active++;
        while (b.cli[1].closes == 0)
            uv_run(&b.loop, UV_RUN_ONCE);
        uv_close((uv_handle_t *)&mute, NULL);
        bench_run(&b);
    }
    assert_int_equal(b.cli[1].err, -ETIMEDOUT);
    assert_contains(b.cli[1].reason, "handshake timed out");
    assert_true(bench_elapsed_ms(&b) >= 200);
    bench_finish(&b);
}

/* ---- writing to a peer that does not read ---- */

static void flood(struct bench *b, struct peer *p)
{
    static uint8_t hash[60 * 1024];
    struct hello_frame hf;
    int rc = 0;

    (void)b;
    hello_init(&hf, 1, "flood", hash, sizeof(hash));
    for (int n = 0; n < 2000 && rc == 0; n++)
        rc = peer_send(p, &hf.f);
    assert_int_equal(rc, -ENOBUFS);
    assert_int_equal(peer_state(p), PEER_CLOSING);
}

static void close_raw(struct bench *b, struct peer *p)
{
    (void)p;
    raw_close(&b->raw);
}

static void test_peer_write_queue_bounded(void **state)
{
    struct bench b;

    (void)state;
    bench_init(&b, "primary");
    b.sparams.max_queue = 256 * 1024;
    b.sparams.handshake_timeout_ms = 300; /* also the wait for a closing peer */
    bench_listen(&b);
    b.srv_open = flood;
    b.srv_close = close_raw;
    b.raw.stop_reading = true;
    raw_start(&b, raw_ctx("site-b"));
    bench_run(&b);
    raw_free_ctx(&b.raw);
    assert_int_equal(b.srv.opens, 1);
    assert_int_equal(b.srv.err, -ENOBUFS);
    assert_contains(b.srv.reason, "the peer is not reading");
    bench_finish(&b);
}

/* ---- reload and closing ---- */

static void reload_frame(struct bench *b, int i, struct peer *p, const Smtpsync__Frame *f)
{
    struct mtls_ctx *renewed;

    (void)f;
    if (i == 1) {
        peer_close(p, 0, "done");
        return;
    }
    if (b->cli[0].frames == 1) {
        /* SIGHUP: the renewed certificate for new connections only. */
        renewed = load("ca.pem", "renewed");
        peer_listener_set_ctx(b->l, renewed);
        mtls_ctx_unref(renewed);
        b->cli_open = hello_then_close;
        bench_connect_as(b, 1, "site-c", "primary");
        /* The open connection keeps working. */
        send_hello(p, 2, "site-b");
    } else if (b->cli[0].frames == 2) {
        peer_close(p, 0, "done");
    }
}

static void test_peer_reload_keeps_open_connections(void **state)
{
    struct bench b;
    time_t now = time(NULL);

    (void)state;
    bench_init(&b, "primary");
    bench_listen(&b);
    b.cli_open = hello_then_close;
    b.cli_frame = reload_frame;
    bench_connect_as(&b, 0, "site-b", "primary");
    bench_run(&b);
    assert_int_equal(b.cli[0].frames, 2);
    assert_int_equal(b.cli[0].err, 0);
    assert_int_equal(b.cli[1].frames, 1);
    assert_int_equal(b.cli[1].err, 0);
    /* primary.pem runs 825 days, renewed.pem 400. */
    assert_true(b.cli[0].cert_expiry > now + 800 * 86400);
    assert_true(b.cli[1].cert_expiry < now + 401 * 86400);
    assert_true(b.cli[1].cert_expiry > now + 399 * 86400);
    bench_finish(&b);
}

static void close_listener_on_open(struct bench *b, struct peer *p)
{
    (void)p;
    assert_int_equal(peer_listener_count(b->l), 1);
    peer_listener_close(b->l, on_listener_closed, b);
}

static void test_peer_listener_close_closes_its_peers(void **state)
{
    struct bench b;

    (void)state;
    bench_init(&b, "primary");
    bench_listen(&b);
    b.keep_listener = true;
    b.srv_open = close_listener_on_open;
    bench_connect_as(&b, 0, "site-b", "primary");
    bench_run(&b);
    assert_true(b.listener_closed);
    assert_int_equal(b.srv.closes, 1);
    assert_int_equal(b.srv.err, 0);
    assert_string_equal(b.srv.reason, "listener closed");
    assert_int_equal(b.cli[0].closes, 1);
    assert_int_equal(b.cli[0].err, 0);
    assert_string_equal(b.cli[0].reason, "closed by the peer");
    bench_finish(&b);
}

static void test_peer_bad_arguments(void **state)
{
    struct bench b;
    struct peer_listener *l = (struct peer_listener *)(void *)&b;
    struct peer *p = (struct peer *)(void *)&b;
    struct peer_callbacks none = {0};

    (void)state;
    bench_init(&b, "primary");
    assert_int_equal(peer_listen(&b.loop, "nonsense", b.sctx, NULL, &srv_cb, &b, &l), -EINVAL);
    assert_null(l);
    assert_int_equal(peer_listen(&b.loop, "::1:80", b.sctx, NULL, &srv_cb, &b, &l), -EINVAL);
    assert_int_equal(peer_listen(&b.loop, "[::1:80", b.sctx, NULL, &srv_cb, &b, &l), -EINVAL);
    assert_int_equal(peer_listen(&b.loop, "127.0.0.1:70000", b.sctx, NULL, &srv_cb, &b, &l),
                     -EINVAL);
    assert_int_equal(peer_listen(&b.loop, "127.0.0.1:0", b.sctx, NULL, &none, &b, &l), -EINVAL);
    assert_int_equal(peer_connect(&b.loop, "127.0.0.1:0", b.sctx, "x", NULL, &cli_cb, &b, &p),
                     -EINVAL);
    assert_null(p);
    assert_int_equal(peer_connect(&b.loop, "127.0.0.1:1", b.sctx, "", NULL, &cli_cb, &b, &p),
                     -EINVAL);
    assert_int_equal(peer_connect(&b.loop, "127.0.0.1", b.sctx, "x", NULL, &cli_cb, &b, &p),
                     -EINVAL);
    b.listener_closed = true;
    bench_finish(&b);
}

static void on_flag(void *arg)
{
    *(bool *)arg = true;
}

static void test_peer_listen_ipv6_and_names(void **state)
{
    struct bench b;
    struct peer_listener *l;

    (void)state;
    bench_init(&b, "primary");
    /* A name is resolved at once; "localhost" is always there. */
    assert_int_equal(peer_listen(&b.loop, "localhost:0", b.sctx, NULL, &srv_cb, &b, &b.l), 0);
    b.port = peer_listener_port(b.l);
    b.cli_open = hello_then_close;
    b.close_after = 1;
    {
        char addr[64];
        struct mtls_ctx *c = load("ca.pem", "site-b");

        snprintf(addr, sizeof(addr), "localhost:%d", b.port);
        assert_int_equal(
            peer_connect(&b.loop, addr, c, "primary", NULL, &cli_cb, &b, &b.cli_peer[0]), 0);
        b.active++;
        mtls_ctx_unref(c);
    }
    bench_run(&b);
    assert_int_equal(b.cli[0].frames, 1);
    /* IPv6 loopback, when the host has it. */
    if (peer_listen(&b.loop, "[::1]:0", b.sctx, NULL, &srv_cb, &b, &l) == 0) {
        bool closed = false;

        peer_listener_close(l, on_flag, &closed);
        uv_run(&b.loop, UV_RUN_DEFAULT);
        assert_true(closed);
    }
    bench_finish(&b);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_peer_hello_both_ways),
        cmocka_unit_test(test_peer_admin_certificate_is_a_client),
        cmocka_unit_test(test_peer_many_frames_in_one_write),
        cmocka_unit_test(test_peer_one_mebibyte_frame_both_ways),
        cmocka_unit_test(test_peer_tls12_client_accepted),
        cmocka_unit_test(test_peer_authorize_deny_closes_with_reason),
        cmocka_unit_test(test_peer_close_with_error_tells_the_peer),
        cmocka_unit_test(test_peer_client_of_other_ca_refused),
        cmocka_unit_test(test_peer_expired_certificates_refused),
        cmocka_unit_test(test_peer_server_without_expected_id_refused),
        cmocka_unit_test(test_peer_no_client_certificate_refused),
        cmocka_unit_test(test_peer_tls11_client_refused),
        cmocka_unit_test(test_peer_oversized_frame_closes_and_listener_goes_on),
        cmocka_unit_test(test_peer_send_refusals_keep_the_connection),
        cmocka_unit_test(test_peer_garbage_to_listener_closed),
        cmocka_unit_test(test_peer_truncated_frame_then_eof_closed),
        cmocka_unit_test(test_peer_undecodable_frame_closed),
        cmocka_unit_test(test_peer_zero_length_frame_closed),
        cmocka_unit_test(test_peer_handshake_timeout),
        cmocka_unit_test(test_peer_idle_timeout),
        cmocka_unit_test(test_peer_connect_refused_and_timeout),
        cmocka_unit_test(test_peer_write_queue_bounded),
        cmocka_unit_test(test_peer_reload_keeps_open_connections),
        cmocka_unit_test(test_peer_listener_close_closes_its_peers),
        cmocka_unit_test(test_peer_bad_arguments),
        cmocka_unit_test(test_peer_listen_ipv6_and_names),
    };

    return cmocka_run_group_tests(tests, group_setup, group_teardown);
}
