#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <netinet/in.h>
#include <netinet/tcp.h>
#include <sys/socket.h>

#include <openssl/evp.h>
#include <openssl/hmac.h>
#include <openssl/ssl.h>
#include <uv.h>

#include "error.h"
#include "fake_smtp.h"
#include "fake_smtp_internal.h"
#include "testutil.h"
#include "tlsio.h"

/*
 * A raw client: connects, sends `send` at once (the whole session,
 * pipelined), and records everything until the server closes. With
 * `starttls`, it switches to TLS after the first 220 that follows its
 * STARTTLS and then sends `send_tls`; with `tls` it is TLS from the start.
 */
struct client {
    uv_loop_t *loop;
    uv_tcp_t tcp;
    uv_connect_t connect;
    const char *send;
    const char *send_tls;
    bool starttls;
    bool tls_from_start;
    SSL_CTX *ctx;
    struct tlsio *tls;
    bool tls_up;
    char rx[65536]; /* plaintext received (before and after TLS) */
    size_t rxlen;
    size_t rx_before_tls; /* rxlen when TLS started */
    bool eof;
    bool closed;
    int connect_status;
    uint64_t connected_at;
    uint64_t first_byte_at;
    char why[TLSIO_WHY_MAX];
    void (*on_rx)(struct client *c); /* after each plaintext read */
    void *arg;                       /* for on_rx */
    int server_nodelay;              /* check_nodelay: TCP_NODELAY of the server's side */
};

struct write_req {
    uv_write_t req;
    char data[];
};

static void write_done(uv_write_t *req, int status)
{
    (void)status;
    free(req);
}

static void raw_send(struct client *c, const void *data, size_t len)
{
    struct write_req *w = malloc(sizeof(*w) + len);
    uv_buf_t b;

    assert_non_null(w);
    memcpy(w->data, data, len);
    b = uv_buf_init(w->data, (unsigned)len);
    assert_int_equal(uv_write(&w->req, (uv_stream_t *)&c->tcp, &b, 1, write_done), 0);
}

static void tls_flush(struct client *c)
{
    char buf[65536];
    size_t n;

    while ((n = tlsio_take(c->tls, buf, sizeof(buf))) > 0)
        raw_send(c, buf, n);
}

static void client_send(struct client *c, const char *s)
{
    if (c->tls != NULL) {
        assert_int_equal(tlsio_write(c->tls, s, strlen(s)), 0);
        tls_flush(c);
    } else {
        raw_send(c, s, strlen(s));
    }
}

static void client_closed(uv_handle_t *h)
{
    struct client *c = h->data;

    c->closed = true;
}

static void client_close(struct client *c)
{
    if (!uv_is_closing((uv_handle_t *)&c->tcp))
        uv_close((uv_handle_t *)&c->tcp, client_closed);
}

static void rx_add(struct client *c, const char *p, size_t n)
{
    assert_true(c->rxlen + n < sizeof(c->rx));
    memcpy(c->rx + c->rxlen, p, n);
    c->rxlen += n;
    c->rx[c->rxlen] = '\0';
}

static void tls_start(struct client *c)
{
    c->rx_before_tls = c->rxlen;
    assert_int_equal(tlsio_new(c->ctx, false, "mail.test", &c->tls), 0);
    assert_int_equal(tlsio_handshake(c->tls), TLSIO_AGAIN);
    tls_flush(c);
}

static void tls_input(struct client *c, const char *p, size_t n)
{
    char buf[16384];
    size_t got;
    int rc;

    assert_int_equal(tlsio_feed(c->tls, p, n), 0);
    if (!c->tls_up) {
        rc = tlsio_handshake(c->tls);
        tls_flush(c);
        if (rc == TLSIO_AGAIN)
            return;
        if (rc < 0) {
            snprintf(c->why, sizeof(c->why), "%s", tlsio_why(c->tls));
            client_close(c);
            return;
        }
        c->tls_up = true;
        if (c->send_tls != NULL)
            client_send(c, c->send_tls);
    }
    while ((rc = tlsio_read(c->tls, buf, sizeof(buf), &got)) == 0)
        rx_add(c, buf, got);
    tls_flush(c);
    if (rc == TLSIO_EOF)
        c->eof = true;
}

static void client_alloc(uv_handle_t *h, size_t size, uv_buf_t *buf)
{
    (void)h;
    buf->base = malloc(size);
    buf->len = buf->base != NULL ? size : 0;
}

static void client_read(uv_stream_t *stream, ssize_t nread, const uv_buf_t *buf)
{
    struct client *c = stream->data;

    if (nread < 0) {
        c->eof = true;
        client_close(c);
    } else if (nread > 0) {
        if (c->first_byte_at == 0)
            c->first_byte_at = uv_now(c->loop);
        if (c->tls != NULL) {
            tls_input(c, buf->base, (size_t)nread);
        } else {
            rx_add(c, buf->base, (size_t)nread);
            if (c->on_rx != NULL)
                c->on_rx(c);
            /* Our STARTTLS was the last command sent: its 220 is the last
             * reply line before TLS. */
            if (c->starttls && strstr(c->rx, "\r\n220 ") != NULL)
                tls_start(c);
        }
    }
    free(buf->base);
}

static void client_connected(uv_connect_t *req, int status)
{
    struct client *c = req->data;

    c->connect_status = status;
    if (status < 0) {
        client_close(c);
        return;
    }
    c->connected_at = uv_now(c->loop);
    assert_int_equal(uv_read_start((uv_stream_t *)&c->tcp, client_alloc, client_read), 0);
    if (c->tls_from_start)
        tls_start(c);
    else if (c->send != NULL)
        client_send(c, c->send);
}

/* Runs the client against 127.0.0.1:port until the connection is closed. */
static void client_run(uv_loop_t *loop, struct client *c, uint16_t port)
{
    struct sockaddr_in addr;

    c->loop = loop;
    assert_int_equal(uv_tcp_init(loop, &c->tcp), 0);
    c->tcp.data = c;
    c->connect.data = c;
    uv_ip4_addr("127.0.0.1", port, &addr);
    assert_int_equal(
        uv_tcp_connect(&c->connect, &c->tcp, (const struct sockaddr *)&addr, client_connected), 0);
    while (!c->closed)
        uv_run(loop, UV_RUN_ONCE);
    tlsio_free(c->tls);
    c->tls = NULL;
}

struct fixture {
    uv_loop_t loop;
    struct fake_smtp *server;
    uint16_t port;
    SSL_CTX *ctx;
};

static int setup(void **state)
{
    struct fixture *f = calloc(1, sizeof(*f));
    char why[256];
    size_t len;
    char *pem;

    assert_non_null(f);
    assert_int_equal(uv_loop_init(&f->loop), 0);
    pem = testutil_read_file(testutil_cert_path("ca.pem"), &len);
    assert_int_equal(tlsio_client_ctx(pem, len, &f->ctx, why, sizeof(why)), 0);
    free(pem);
    *state = f;
    return 0;
}

static int teardown(void **state)
{
    struct fixture *f = *state;

    fake_smtp_stop(f->server);
    uv_run(&f->loop, UV_RUN_DEFAULT);
    assert_int_equal(uv_loop_close(&f->loop), 0);
    SSL_CTX_free(f->ctx);
    free(f);
    return 0;
}

static void start(struct fixture *f, const struct fake_smtp_params *p)
{
    assert_int_equal(fake_smtp_start(&f->loop, p, &f->server, &f->port), 0);
    assert_true(f->port > 0);
}

static void tls_params(struct fake_smtp_params *p, char *cert, char *key, size_t len)
{
    snprintf(cert, len, "%s", testutil_cert_path("chain.pem"));
    snprintf(key, len, "%s", testutil_cert_path("leaf.key"));
    p->cert_file = cert;
    p->key_file = key;
}

static void test_fake_smtp_banner_and_quit(void **state)
{
    struct fixture *f = *state;
    struct fake_smtp_params p = {0};
    struct client c = {.send = "QUIT\r\n"};

    start(f, &p);
    client_run(&f->loop, &c, f->port);
    assert_true(c.eof);
    assert_string_equal(c.rx, "220 fake.test ESMTP fake_smtp\r\n221 2.0.0 Bye\r\n");
    assert_int_equal(fake_smtp_nconnections(f->server), 1);
    assert_string_equal(fake_smtp_transcript(f->server), "QUIT");
}

static void test_fake_smtp_ehlo_capabilities(void **state)
{
    struct fixture *f = *state;
    struct fake_smtp_params p = {
        .pipelining = true,
        .size_limit = 1000,
        .auth = "PLAIN LOGIN",
        .starttls = true,
    };
    char cert[4096], key[4096];
    struct client c = {.send = "EHLO client.test\r\nQUIT\r\n"};

    tls_params(&p, cert, key, sizeof(cert));
    start(f, &p);
    client_run(&f->loop, &c, f->port);
    assert_string_equal(c.rx, "220 fake.test ESMTP fake_smtp\r\n"
                              "250-fake.test\r\n"
                              "250-AUTH PLAIN LOGIN\r\n"
                              "250-PIPELINING\r\n"
                              "250-SIZE 1000\r\n"
                              "250-8BITMIME\r\n"
                              "250-STARTTLS\r\n"
                              "250 ENHANCEDSTATUSCODES\r\n"
                              "221 2.0.0 Bye\r\n");
}

static void test_fake_smtp_pipelined_session_undotstuffed(void **state)
{
    struct fixture *f = *state;
    struct fake_smtp_params p = {.pipelining = true};
    struct client c = {.send = "EHLO client.test\r\n"
                               "MAIL FROM:<a@x.test> BODY=8BITMIME\r\n"
                               "RCPT TO:<b@y.test>\r\n"
                               "RCPT TO:<c@z.test>\r\n"
                               "DATA\r\n"
                               "Subject: hi\r\n"
                               "\r\n"
                               "..leading dot\r\n"
                               ". \r\n"
                               "last\r\n"
                               ".\r\n"
                               "NOOP\r\n"
                               "QUIT\r\n"};
    const char *expect = "Subject: hi\r\n\r\n.leading dot\r\n \r\nlast\r\n";
    size_t len;
    const char *m;

    start(f, &p);
    client_run(&f->loop, &c, f->port);
    assert_true(c.eof);
    assert_non_null(strstr(c.rx, "250 2.1.0 Ok\r\n250 2.1.5 Ok\r\n250 2.1.5 Ok\r\n354 "));
    assert_non_null(strstr(c.rx, "250 2.0.0 Ok: queued as FAKE1\r\n250 2.0.0 Ok\r\n221 "));
    assert_int_equal(fake_smtp_nmessages(f->server), 1);
    m = fake_smtp_message(f->server, 0, &len);
    assert_int_equal(len, strlen(expect));
    assert_memory_equal(m, expect, len);
    assert_string_equal(fake_smtp_envelope(f->server, 0), "a@x.test b@y.test c@z.test");
    assert_string_equal(fake_smtp_transcript(f->server),
                        "EHLO client.test\nMAIL FROM:<a@x.test> BODY=8BITMIME\n"
                        "RCPT TO:<b@y.test>\nRCPT TO:<c@z.test>\nDATA\nNOOP\nQUIT");
}

static void test_fake_smtp_scripted_replies(void **state)
{
    struct fixture *f = *state;
    struct fake_smtp_params p = {0};
    struct client c = {.send = "HELO client.test\r\n"
                               "MAIL FROM:<>\r\n"
                               "RCPT TO:<bad@y.test>\r\n"
                               "RCPT TO:<good@y.test>\r\n"
                               "DATA\r\n"
                               "body\r\n"
                               ".\r\n"
                               "MAIL FROM:<a@x.test>\r\n"
                               "RCPT TO:<b@y.test>\r\n"
                               "DATA\r\n"
                               "second\r\n"
                               ".\r\n"
                               "QUIT\r\n"};

    start(f, &p);
    fake_smtp_script(f->server, "GREETING", "220-first\r\n220 second", 1);
    fake_smtp_script(f->server, "rcpt", "550 5.1.1 no such user", 1);
    fake_smtp_script(f->server, "DATA-END", "451 4.3.0 try later", 1);
    client_run(&f->loop, &c, f->port);
    assert_string_equal(c.rx, "220-first\r\n220 second\r\n"
                              "250 fake.test\r\n"
                              "250 2.1.0 Ok\r\n"
                              "550 5.1.1 no such user\r\n"
                              "250 2.1.5 Ok\r\n"
                              "354 End data with <CR><LF>.<CR><LF>\r\n"
                              "451 4.3.0 try later\r\n"
                              "250 2.1.0 Ok\r\n"
                              "250 2.1.5 Ok\r\n"
                              "354 End data with <CR><LF>.<CR><LF>\r\n"
                              "250 2.0.0 Ok: queued as FAKE1\r\n"
                              "221 2.0.0 Bye\r\n");
    assert_int_equal(fake_smtp_nmessages(f->server), 1);
    assert_string_equal(fake_smtp_envelope(f->server, 0), "a@x.test b@y.test");
}

static void test_fake_smtp_empty_script_closes(void **state)
{
    struct fixture *f = *state;
    struct fake_smtp_params p = {0};
    struct client c = {.send =
                           "EHLO client.test\r\nMAIL FROM:<a@x.test>\r\nRCPT TO:<b@y.test>\r\n"};

    start(f, &p);
    fake_smtp_script(f->server, "MAIL", "", 1);
    client_run(&f->loop, &c, f->port);
    assert_true(c.eof);
    /* The EHLO reply went out, then the connection closed without a word
     * for MAIL, and RCPT was never handled. */
    assert_non_null(strstr(c.rx, "250 ENHANCEDSTATUSCODES\r\n"));
    assert_null(strstr(c.rx, "2.1.0"));
    assert_string_equal(fake_smtp_transcript(f->server), "EHLO client.test\nMAIL FROM:<a@x.test>");
}

static void close_client_timer(uv_timer_t *t)
{
    client_close(t->data);
    uv_close((uv_handle_t *)t, NULL);
}

static void test_fake_smtp_null_script_falls_silent(void **state)
{
    struct fixture *f = *state;
    struct fake_smtp_params p = {0};
    struct client c = {.send = "HELO client.test\r\nMAIL FROM:<a@x.test>\r\nRCPT TO:<b@y.test>\r\n"
                               "DATA\r\nbody\r\n.\r\nQUIT\r\n"};
    uv_timer_t timer;

    start(f, &p);
    fake_smtp_script(f->server, "DATA-END", NULL, 1);
    assert_int_equal(uv_timer_init(&f->loop, &timer), 0);
    timer.data = &c;
    assert_int_equal(uv_timer_start(&timer, close_client_timer, 200, 0), 0);
    client_run(&f->loop, &c, f->port);
    /* No reply to the final dot nor to QUIT, and the server kept the
     * connection open until the client gave up. */
    assert_false(c.eof);
    assert_true(strlen(c.rx) > 0);
    assert_non_null(strstr(c.rx, "354 End data with <CR><LF>.<CR><LF>\r\n"));
    assert_null(strstr(c.rx, "354 End data with <CR><LF>.<CR><LF>\r\n2"));
    assert_int_equal(fake_smtp_nmessages(f->server), 0);
    assert_null(strstr(fake_smtp_transcript(f->server), "QUIT"));
}

static void test_fake_smtp_greeting_closes(void **state)
{
    struct fixture *f = *state;
    struct fake_smtp_params p = {0};
    struct client c = {.send = "EHLO client.test\r\n"};

    start(f, &p);
    fake_smtp_script(f->server, "GREETING", "", 0);
    client_run(&f->loop, &c, f->port);
    assert_true(c.eof);
    assert_int_equal(c.rxlen, 0);
    assert_string_equal(fake_smtp_transcript(f->server), "");
}

/* A guard for clients that would wait forever: closes them after a while. */
struct guard {
    uv_timer_t timer;
    struct client *c;
    bool fired;
};

static void guard_fire(uv_timer_t *t)
{
    struct guard *g = t->data;

    g->fired = true;
    client_close(g->c);
}

static void guard_start(uv_loop_t *loop, struct guard *g, struct client *c)
{
    g->c = c;
    assert_int_equal(uv_timer_init(loop, &g->timer), 0);
    g->timer.data = g;
    assert_int_equal(uv_timer_start(&g->timer, guard_fire, 3000, 0), 0);
}

static void guard_stop(uv_loop_t *loop, struct guard *g)
{
    uv_close((uv_handle_t *)&g->timer, NULL);
    uv_run(loop, UV_RUN_NOWAIT);
}

static void close_after_line(struct client *c)
{
    if (strstr(c->rx, "\r\n") != NULL)
        client_close(c);
}

/* A greeting that is not SMTP at all (no code on its last line) is sent as
 * scripted, without waiting for the client to speak first. */
static void test_fake_smtp_greeting_without_code_is_sent(void **state)
{
    struct fixture *f = *state;
    struct fake_smtp_params p = {0};
    struct client c = {.on_rx = close_after_line};
    struct guard g = {0};

    start(f, &p);
    fake_smtp_script(f->server, "GREETING", "HTTP/1.1 400 Bad Request", 1);
    guard_start(&f->loop, &g, &c);
    client_run(&f->loop, &c, f->port);
    guard_stop(&f->loop, &g);
    assert_false(g.fired);
    assert_string_equal(c.rx, "HTTP/1.1 400 Bad Request\r\n");
}

/* What the server's side of the connection says about TCP_NODELAY, read
 * once the banner arrived. */
static void check_nodelay(struct client *c)
{
    struct fixture *f = c->arg;
    socklen_t len = sizeof(c->server_nodelay);
    uv_os_fd_t fd;

    if (strstr(c->rx, "\r\n") == NULL)
        return;
    assert_non_null(f->server->conns);
    assert_int_equal(uv_fileno((uv_handle_t *)&f->server->conns->tcp, &fd), 0);
    assert_int_equal(getsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &c->server_nodelay, &len), 0);
    client_close(c);
}

/* Replies go out at once: no ~40 ms Nagle stall after a TLS handshake. */
static void test_fake_smtp_nodelay(void **state)
{
    struct fixture *f = *state;
    struct fake_smtp_params p = {0};
    struct client c = {.on_rx = check_nodelay, .arg = f};

    start(f, &p);
    client_run(&f->loop, &c, f->port);
    assert_true(c.rxlen > 0);
    assert_int_equal(c.server_nodelay, 1);
}

/* tls_silent_close: the connection drops at the ClientHello, nothing sent. */
static void test_fake_smtp_tls_silent_close(void **state)
{
    struct fixture *f = *state;
    struct fake_smtp_params p = {.implicit_tls = true, .tls_silent_close = true};
    char cert[4096], key[4096];
    struct client c = {.tls_from_start = true, .ctx = f->ctx, .send_tls = "QUIT\r\n"};

    tls_params(&p, cert, key, sizeof(cert));
    start(f, &p);
    client_run(&f->loop, &c, f->port);
    assert_true(c.eof);
    assert_false(c.tls_up);
    assert_int_equal(c.rxlen, 0);
    assert_int_equal(fake_smtp_nconnections(f->server), 1);
}

static void test_fake_smtp_sequence_errors(void **state)
{
    struct fixture *f = *state;
    struct fake_smtp_params p = {0};
    struct client c = {.send = "MAIL FROM:<a@x.test>\r\n"
                               "EHLO client.test\r\n"
                               "RCPT TO:<b@y.test>\r\n"
                               "DATA\r\n"
                               "MAIL FROM:a@x.test\r\n"
                               "VRFY root\r\n"
                               "AUTH PLAIN\r\n"
                               "QUIT\r\n"};

    start(f, &p);
    client_run(&f->loop, &c, f->port);
    assert_non_null(strstr(c.rx, "220 fake.test ESMTP fake_smtp\r\n503 5.5.1 Error: send HELO"));
    assert_non_null(strstr(c.rx, "250 ENHANCEDSTATUSCODES\r\n"
                                 "503 5.5.1 Error: need MAIL command\r\n"
                                 "503 5.5.1 Error: need RCPT command\r\n"
                                 "501 5.5.4 Syntax: MAIL FROM:<address>\r\n"
                                 "502 5.5.2 Error: command not recognized\r\n"
                                 "503 5.5.1 Error: authentication not enabled\r\n"
                                 "221 2.0.0 Bye\r\n"));
    assert_int_equal(fake_smtp_nmessages(f->server), 0);
}

static void test_fake_smtp_size_limit(void **state)
{
    struct fixture *f = *state;
    struct fake_smtp_params p = {.size_limit = 10};
    struct client c = {.send = "EHLO client.test\r\n"
                               "MAIL FROM:<a@x.test> SIZE=11\r\n"
                               "MAIL FROM:<a@x.test> SIZE=5\r\n"
                               "RCPT TO:<b@y.test>\r\n"
                               "DATA\r\n"
                               "0123456789\r\n"
                               ".\r\n"
                               "QUIT\r\n"};

    start(f, &p);
    client_run(&f->loop, &c, f->port);
    assert_non_null(strstr(c.rx, "250 ENHANCEDSTATUSCODES\r\n552 5.3.4 "));
    assert_non_null(strstr(c.rx, "354 End data with <CR><LF>.<CR><LF>\r\n552 5.3.4 "));
    assert_int_equal(fake_smtp_nmessages(f->server), 0);
}

static void test_fake_smtp_auth_plain(void **state)
{
    struct fixture *f = *state;
    struct fake_smtp_params p = {.auth = "PLAIN LOGIN", .user = "user", .password = "secret"};
    /* "\0user\0secret", "\0user\0wrong" */
    struct client c = {.send = "EHLO client.test\r\n"
                               "AUTH PLAIN AHVzZXIAd3Jvbmc=\r\n"
                               "AUTH PLAIN\r\n"
                               "AHVzZXIAc2VjcmV0\r\n"
                               "AUTH PLAIN AHVzZXIAc2VjcmV0\r\n"
                               "QUIT\r\n"};

    start(f, &p);
    client_run(&f->loop, &c, f->port);
    assert_non_null(strstr(c.rx, "250-AUTH PLAIN LOGIN\r\n"));
    assert_non_null(strstr(c.rx, "250 ENHANCEDSTATUSCODES\r\n"
                                 "535 5.7.8 Error: authentication failed\r\n"
                                 "334 \r\n"
                                 "235 2.7.0 Authentication successful\r\n"
                                 "503 5.5.1 Error: already authenticated\r\n"
                                 "221 2.0.0 Bye\r\n"));
    assert_non_null(strstr(fake_smtp_transcript(f->server), "\nAUTH PLAIN\nAHVzZXIAc2VjcmV0\n"));
}

static void test_fake_smtp_auth_login(void **state)
{
    struct fixture *f = *state;
    struct fake_smtp_params p = {.auth = "LOGIN", .user = "user", .password = "secret"};
    struct client c = {.send = "EHLO client.test\r\n"
                               "AUTH PLAIN AHVzZXIAc2VjcmV0\r\n"
                               "AUTH LOGIN\r\n"
                               "*\r\n"
                               "AUTH LOGIN dXNlcg==\r\n"
                               "c2VjcmV0\r\n"
                               "QUIT\r\n"};

    start(f, &p);
    client_run(&f->loop, &c, f->port);
    assert_non_null(strstr(c.rx, "250 ENHANCEDSTATUSCODES\r\n"
                                 "504 5.5.4 Unsupported authentication mechanism\r\n"
                                 "334 VXNlcm5hbWU6\r\n"
                                 "501 5.7.0 Authentication aborted\r\n"
                                 "334 UGFzc3dvcmQ6\r\n"
                                 "235 2.7.0 Authentication successful\r\n"
                                 "221 2.0.0 Bye\r\n"));
}

/* Answers the CRAM-MD5 challenge as user/secret (RFC 2195). */
static void cram_answer(struct client *c)
{
    const char *ch = strstr(c->rx, "\r\n334 ");
    unsigned char challenge[256], mac[EVP_MAX_MD_SIZE], answer[128], line[256];
    unsigned maclen;
    const char *end;
    int n, len;

    if (ch == NULL || (end = strstr(ch + 6, "\r\n")) == NULL || c->on_rx == NULL)
        return;
    c->on_rx = NULL;
    n = EVP_DecodeBlock(challenge, (const unsigned char *)ch + 6, (int)(end - ch - 6));
    assert_true(n > 0);
    while (n > 0 && challenge[n - 1] == '\0') /* EVP_DecodeBlock counts padding */
        n--;
    assert_non_null(HMAC(EVP_md5(), "secret", 6, challenge, (size_t)n, mac, &maclen));
    len = snprintf((char *)answer, sizeof(answer), "user ");
    for (unsigned i = 0; i < maclen; i++)
        len += snprintf((char *)answer + len, sizeof(answer) - (size_t)len, "%02x", mac[i]);
    n = EVP_EncodeBlock(line, answer, len);
    memcpy(line + n, "\r\nQUIT\r\n", 9);
    line[n + 8] = '\0';
    client_send(c, (const char *)line);
}

static void test_fake_smtp_auth_cram_md5(void **state)
{
    struct fixture *f = *state;
    struct fake_smtp_params p = {.auth = "CRAM-MD5", .user = "user", .password = "secret"};
    struct client c = {.send = "EHLO client.test\r\nAUTH CRAM-MD5\r\n", .on_rx = cram_answer};

    start(f, &p);
    client_run(&f->loop, &c, f->port);
    assert_non_null(strstr(c.rx, "\r\n235 2.7.0 Authentication successful\r\n221 "));
}

static void test_fake_smtp_greeting_delay(void **state)
{
    struct fixture *f = *state;
    struct fake_smtp_params p = {.greeting_delay_ms = 150};
    struct client c = {.send = "QUIT\r\n"};

    start(f, &p);
    client_run(&f->loop, &c, f->port);
    assert_true(c.first_byte_at - c.connected_at >= 140);
    /* QUIT, sent before the banner, is answered after it. */
    assert_string_equal(c.rx, "220 fake.test ESMTP fake_smtp\r\n221 2.0.0 Bye\r\n");
}

static void test_fake_smtp_starttls(void **state)
{
    struct fixture *f = *state;
    struct fake_smtp_params p = {.starttls = true};
    char cert[4096], key[4096];
    struct client c = {
        .send = "EHLO client.test\r\nSTARTTLS\r\n",
        .starttls = true,
        .ctx = f->ctx,
        .send_tls = "EHLO client.test\r\nMAIL FROM:<a@x.test>\r\nRCPT TO:<b@y.test>\r\n"
                    "DATA\r\nover tls\r\n.\r\nQUIT\r\n",
    };

    tls_params(&p, cert, key, sizeof(cert));
    start(f, &p);
    client_run(&f->loop, &c, f->port);
    assert_true(c.tls_up);
    assert_string_equal(c.why, "");
    assert_true(c.eof);
    /* Before TLS: STARTTLS offered; after: not any more. */
    assert_non_null(strstr(c.rx, "250-STARTTLS\r\n"));
    assert_true(c.rx_before_tls > 0);
    assert_string_equal(c.rx + c.rx_before_tls - strlen("220 2.0.0 Ready to start TLS\r\n"),
                        "220 2.0.0 Ready to start TLS\r\n"
                        "250-fake.test\r\n250-8BITMIME\r\n250 ENHANCEDSTATUSCODES\r\n"
                        "250 2.1.0 Ok\r\n250 2.1.5 Ok\r\n354 End data with <CR><LF>.<CR><LF>\r\n"
                        "250 2.0.0 Ok: queued as FAKE1\r\n221 2.0.0 Bye\r\n");
    assert_int_equal(fake_smtp_nmessages(f->server), 1);
    assert_string_equal(fake_smtp_message(f->server, 0, NULL), "over tls\r\n");
}

static void test_fake_smtp_starttls_injection_in_one_write(void **state)
{
    struct fixture *f = *state;
    struct fake_smtp_params p = {.starttls = true};
    char cert[4096], key[4096];
    struct client c = {
        .send = "EHLO client.test\r\nSTARTTLS\r\n",
        .starttls = true,
        .ctx = f->ctx,
        .send_tls = "QUIT\r\n",
    };
    const char *tail = "220 go ahead\r\n250 injected\r\n";

    tls_params(&p, cert, key, sizeof(cert));
    start(f, &p);
    fake_smtp_script(f->server, "STARTTLS", "220 go ahead\r\n250 injected", 1);
    client_run(&f->loop, &c, f->port);
    /* The injected line arrived with the 220, before any TLS octet. */
    assert_true(c.rx_before_tls >= strlen(tail));
    assert_memory_equal(c.rx + c.rx_before_tls - strlen(tail), tail, strlen(tail));
    assert_true(c.tls_up);
    assert_string_equal(c.rx + c.rx_before_tls, "221 2.0.0 Bye\r\n");
}

static void test_fake_smtp_starttls_refused_by_script(void **state)
{
    struct fixture *f = *state;
    struct fake_smtp_params p = {.starttls = true};
    char cert[4096], key[4096];
    struct client c = {.send = "EHLO client.test\r\nSTARTTLS\r\nQUIT\r\n"};

    tls_params(&p, cert, key, sizeof(cert));
    start(f, &p);
    fake_smtp_script(f->server, "STARTTLS", "454 4.7.0 TLS not available", 1);
    client_run(&f->loop, &c, f->port);
    assert_non_null(strstr(c.rx, "\r\n454 4.7.0 TLS not available\r\n221 2.0.0 Bye\r\n"));
}

static void test_fake_smtp_implicit_tls(void **state)
{
    struct fixture *f = *state;
    struct fake_smtp_params p = {.implicit_tls = true, .greeting_delay_ms = 20};
    char cert[4096], key[4096];
    struct client c = {
        .tls_from_start = true,
        .ctx = f->ctx,
        .send_tls = "EHLO client.test\r\nQUIT\r\n",
    };

    tls_params(&p, cert, key, sizeof(cert));
    start(f, &p);
    client_run(&f->loop, &c, f->port);
    assert_true(c.tls_up);
    assert_true(c.eof);
    assert_non_null(strstr(c.rx, "220 fake.test ESMTP fake_smtp\r\n250-fake.test\r\n"));
    assert_null(strstr(c.rx, "STARTTLS"));
    assert_non_null(strstr(c.rx, "221 2.0.0 Bye\r\n"));
}

static void test_fake_smtp_plaintext_on_implicit_tls_port(void **state)
{
    struct fixture *f = *state;
    struct fake_smtp_params p = {.implicit_tls = true};
    char cert[4096], key[4096];
    struct client c = {.send = "EHLO client.test\r\n"};

    tls_params(&p, cert, key, sizeof(cert));
    start(f, &p);
    client_run(&f->loop, &c, f->port);
    assert_true(c.eof);
    assert_null(strstr(c.rx, "220 "));
    assert_string_not_equal(fake_smtp_tls_error(f->server), "");
}

static void test_fake_smtp_bad_key_refused(void **state)
{
    struct fixture *f = *state;
    struct fake_smtp_params p = {.implicit_tls = true};
    char cert[4096];

    snprintf(cert, sizeof(cert), "%s", testutil_cert_path("chain.pem"));
    p.cert_file = cert;
    p.key_file = testutil_cert_path("selfsigned.key");
    assert_int_equal(fake_smtp_start(&f->loop, &p, &f->server, &f->port), ERROR_TLS);
    assert_null(f->server);
}

static void test_fake_smtp_stop_with_open_connection(void **state)
{
    struct fixture *f = *state;
    struct fake_smtp_params p = {0};
    struct client c = {.send = "EHLO client.test\r\n"};

    start(f, &p);
    fake_smtp_script(f->server, "EHLO", "250 ok", 1);
    /* Stop the server while the client is connected and silent. */
    c.loop = &f->loop;
    {
        struct sockaddr_in addr;

        assert_int_equal(uv_tcp_init(&f->loop, &c.tcp), 0);
        c.tcp.data = &c;
        c.connect.data = &c;
        uv_ip4_addr("127.0.0.1", f->port, &addr);
        assert_int_equal(
            uv_tcp_connect(&c.connect, &c.tcp, (const struct sockaddr *)&addr, client_connected),
            0);
    }
    while (strstr(c.rx, "250 ok\r\n") == NULL)
        uv_run(&f->loop, UV_RUN_ONCE);
    assert_int_equal(fake_smtp_nconnections(f->server), 1);
    fake_smtp_stop(f->server);
    f->server = NULL;
    while (!c.closed)
        uv_run(&f->loop, UV_RUN_ONCE);
    assert_true(c.eof);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_fake_smtp_banner_and_quit, setup, teardown),
        cmocka_unit_test_setup_teardown(test_fake_smtp_ehlo_capabilities, setup, teardown),
        cmocka_unit_test_setup_teardown(test_fake_smtp_pipelined_session_undotstuffed, setup,
                                        teardown),
        cmocka_unit_test_setup_teardown(test_fake_smtp_scripted_replies, setup, teardown),
        cmocka_unit_test_setup_teardown(test_fake_smtp_empty_script_closes, setup, teardown),
        cmocka_unit_test_setup_teardown(test_fake_smtp_greeting_closes, setup, teardown),
        cmocka_unit_test_setup_teardown(test_fake_smtp_null_script_falls_silent, setup, teardown),
        cmocka_unit_test_setup_teardown(test_fake_smtp_greeting_without_code_is_sent, setup,
                                        teardown),
        cmocka_unit_test_setup_teardown(test_fake_smtp_nodelay, setup, teardown),
        cmocka_unit_test_setup_teardown(test_fake_smtp_tls_silent_close, setup, teardown),
        cmocka_unit_test_setup_teardown(test_fake_smtp_sequence_errors, setup, teardown),
        cmocka_unit_test_setup_teardown(test_fake_smtp_size_limit, setup, teardown),
        cmocka_unit_test_setup_teardown(test_fake_smtp_auth_plain, setup, teardown),
        cmocka_unit_test_setup_teardown(test_fake_smtp_auth_login, setup, teardown),
        cmocka_unit_test_setup_teardown(test_fake_smtp_auth_cram_md5, setup, teardown),
        cmocka_unit_test_setup_teardown(test_fake_smtp_greeting_delay, setup, teardown),
        cmocka_unit_test_setup_teardown(test_fake_smtp_starttls, setup, teardown),
        cmocka_unit_test_setup_teardown(test_fake_smtp_starttls_injection_in_one_write, setup,
                                        teardown),
        cmocka_unit_test_setup_teardown(test_fake_smtp_starttls_refused_by_script, setup, teardown),
        cmocka_unit_test_setup_teardown(test_fake_smtp_implicit_tls, setup, teardown),
        cmocka_unit_test_setup_teardown(test_fake_smtp_plaintext_on_implicit_tls_port, setup,
                                        teardown),
        cmocka_unit_test_setup_teardown(test_fake_smtp_bad_key_refused, setup, teardown),
        cmocka_unit_test_setup_teardown(test_fake_smtp_stop_with_open_connection, setup, teardown),
    };

    return cmocka_run_group_tests(tests, NULL, NULL);
}
