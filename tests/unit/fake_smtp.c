/*
 * fake_smtp's server side: the listener, connections and their handles,
 * writes, TLS; what is said is in fake_smtp_session.c.
 */
#include "fake_smtp.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <openssl/crypto.h>
#include <openssl/err.h>
#include <openssl/ssl.h>

#include "error.h"
#include "fake_smtp_internal.h"
#include "tlsio.h"

#define FAKE_SMTP_READ_MAX 65536

#define FAKE_CONTAINER_OF(ptr, type, field) ((type *)(void *)((char *)(ptr)-offsetof(type, field)))

struct fake_write {
    uv_write_t req;
    uv_buf_t buf;
    char data[];
};

void fake_smtp__oom(void)
{
    fprintf(stderr, "fake_smtp: out of memory\n");
    abort();
}

void fake_smtp__buf_add(struct fake_buf *b, const void *data, size_t len)
{
    if (b->len + len + 1 > b->cap) {
        size_t cap = b->cap == 0 ? 256 : b->cap;
        char *p;

        while (cap < b->len + len + 1)
            cap *= 2;
        p = realloc(b->p, cap);
        if (p == NULL)
            fake_smtp__oom();
        b->p = p;
        b->cap = cap;
    }
    if (len > 0)
        memcpy(b->p + b->len, data, len);
    b->len += len;
    b->p[b->len] = '\0';
}

void fake_smtp__buf_str(struct fake_buf *b, const char *s)
{
    fake_smtp__buf_add(b, s, strlen(s));
}

void fake_smtp__buf_reset(struct fake_buf *b)
{
    b->len = 0;
    if (b->p != NULL)
        b->p[0] = '\0';
}

void fake_smtp__buf_wipe(struct fake_buf *b)
{
    if (b->p != NULL)
        OPENSSL_cleanse(b->p, b->cap);
    free(b->p);
    *b = (struct fake_buf){0};
}

char *fake_smtp__strdup(const char *s)
{
    char *d;

    if (s == NULL)
        return NULL;
    d = strdup(s);
    if (d == NULL)
        fake_smtp__oom();
    return d;
}

void fake_smtp__free_secret(char *s)
{
    if (s != NULL) {
        OPENSSL_cleanse(s, strlen(s));
        free(s);
    }
}

/* ---- sending and closing ---- */

static void fake_conn_closed(uv_handle_t *h);

static void fake_write_done(uv_write_t *req, int status)
{
    (void)status; /* a failed write means the peer went away: the read side sees it too */
    free(FAKE_CONTAINER_OF(req, struct fake_write, req));
}

static void fake_send_raw(struct fake_conn *c, const void *data, size_t len)
{
    struct fake_write *w;

    if (c->closed || len == 0)
        return;
    w = malloc(sizeof(*w) + len);
    if (w == NULL)
        fake_smtp__oom();
    memcpy(w->data, data, len);
    w->buf = uv_buf_init(w->data, (unsigned)len);
    if (uv_write(&w->req, (uv_stream_t *)&c->tcp, &w->buf, 1, fake_write_done) < 0)
        free(w);
}

/* Sends what TLS has to send, all in one write. */
static void fake_send_tls_pending(struct fake_conn *c)
{
    size_t n = tlsio_pending(c->tls);
    char *tmp;

    if (n == 0)
        return;
    tmp = malloc(n);
    if (tmp == NULL)
        fake_smtp__oom();
    n = tlsio_take(c->tls, tmp, n);
    fake_send_raw(c, tmp, n);
    free(tmp);
}

/* Sends the replies queued this turn, encrypted once TLS is up. */
void fake_smtp__flush(struct fake_conn *c)
{
    if (c->out.len == 0)
        return;
    if (c->tls != NULL && c->tls_up) {
        if (tlsio_write(c->tls, c->out.p, c->out.len) < 0) {
            snprintf(c->s->tls_error, sizeof(c->s->tls_error), "%s", tlsio_why(c->tls));
            fake_smtp__buf_reset(&c->out);
            fake_smtp__conn_close(c);
            return;
        }
        fake_send_tls_pending(c);
    } else {
        fake_send_raw(c, c->out.p, c->out.len);
    }
    fake_smtp__buf_reset(&c->out);
}

static void fake_unref(struct fake_smtp *s);

static void fake_conn_free(struct fake_conn *c)
{
    struct fake_smtp *s = c->s;

    if (c->prev != NULL)
        c->prev->next = c->next;
    else
        s->conns = c->next;
    if (c->next != NULL)
        c->next->prev = c->prev;
    tlsio_free(c->tls);
    fake_smtp__buf_wipe(&c->in);
    fake_smtp__buf_wipe(&c->out);
    fake_smtp__buf_wipe(&c->envelope);
    fake_smtp__buf_wipe(&c->data);
    fake_smtp__free_secret(c->login_user);
    free(c);
    fake_unref(s);
}

static void fake_conn_closed(uv_handle_t *h)
{
    struct fake_conn *c = h->data;

    if (--c->handles == 0)
        fake_conn_free(c);
}

/* Closes at once; whatever was not written yet is lost. */
void fake_smtp__conn_close(struct fake_conn *c)
{
    if (c->closed)
        return;
    c->closed = true;
    c->ending = true;
    uv_close((uv_handle_t *)&c->tcp, fake_conn_closed);
    uv_close((uv_handle_t *)&c->timer, fake_conn_closed);
}

static void fake_shutdown_done(uv_shutdown_t *req, int status)
{
    (void)status;
    fake_smtp__conn_close(req->data);
}

/* Flushes the replies (and a close_notify), sends FIN after them, then
 * closes: the client reads every reply and then end of stream. */
void fake_smtp__conn_end(struct fake_conn *c)
{
    if (c->ending)
        return;
    fake_smtp__flush(c);
    if (c->closed)
        return;
    c->ending = true;
    if (c->tls != NULL && c->tls_up) {
        tlsio_shutdown(c->tls);
        fake_send_tls_pending(c);
    }
    uv_read_stop((uv_stream_t *)&c->tcp);
    uv_timer_stop(&c->timer);
    c->shutdown.data = c;
    if (uv_shutdown(&c->shutdown, (uv_stream_t *)&c->tcp, fake_shutdown_done) < 0)
        fake_smtp__conn_close(c);
}

/* ---- libuv ---- */

static void fake_alloc(uv_handle_t *h, size_t suggested, uv_buf_t *buf)
{
    (void)h;
    (void)suggested;
    buf->base = malloc(FAKE_SMTP_READ_MAX);
    buf->len = buf->base != NULL ? FAKE_SMTP_READ_MAX : 0;
}

/* TLS input: the handshake, then plaintext into c->in. False if the
 * connection is over. */
static bool fake_tls_input(struct fake_conn *c, const char *data, size_t len)
{
    char plain[16384];
    size_t got;
    int rc;

    if (!c->tls_up && c->s->p.tls_silent_close) {
        fake_smtp__conn_close(c);
        return false;
    }
    if (tlsio_feed(c->tls, data, len) < 0)
        fake_smtp__oom();
    if (!c->tls_up) {
        rc = tlsio_handshake(c->tls);
        fake_send_tls_pending(c);
        if (rc == TLSIO_AGAIN)
            return true;
        if (rc < 0) {
            snprintf(c->s->tls_error, sizeof(c->s->tls_error), "%s", tlsio_why(c->tls));
            fake_smtp__conn_close(c);
            return false;
        }
        c->tls_up = true;
        fake_smtp__greet(c); /* implicit TLS: the banner follows the handshake */
        if (c->closed)
            return false;
    }
    for (;;) {
        rc = tlsio_read(c->tls, plain, sizeof(plain), &got);
        fake_send_tls_pending(c);
        if (rc == TLSIO_AGAIN)
            return true;
        if (rc == TLSIO_EOF) {
            fake_smtp__process(c);
            fake_smtp__conn_end(c);
            return false;
        }
        if (rc < 0) {
            snprintf(c->s->tls_error, sizeof(c->s->tls_error), "%s", tlsio_why(c->tls));
            fake_smtp__conn_close(c);
            return false;
        }
        fake_smtp__buf_add(&c->in, plain, got);
    }
}

static void fake_read(uv_stream_t *stream, ssize_t nread, const uv_buf_t *buf)
{
    struct fake_conn *c = stream->data;

    if (nread < 0) {
        fake_smtp__conn_close(c);
    } else if (nread > 0 && !c->ending) {
        if (c->tls != NULL) {
            if (fake_tls_input(c, buf->base, (size_t)nread))
                fake_smtp__process(c);
        } else {
            fake_smtp__buf_add(&c->in, buf->base, (size_t)nread);
            fake_smtp__process(c);
        }
    }
    free(buf->base);
}

static void fake_delay_done(uv_timer_t *t)
{
    struct fake_conn *c = t->data;

    c->delay_done = true;
    fake_smtp__greet(c);
}

static void fake_connection(uv_stream_t *server, int status)
{
    struct fake_smtp *s = server->data;
    struct fake_conn *c;

    if (status < 0 || s->stopping)
        return;
    c = calloc(1, sizeof(*c));
    if (c == NULL)
        fake_smtp__oom();
    c->s = s;
    c->state = FAKE_COMMAND;
    uv_tcp_init(s->loop, &c->tcp);
    uv_timer_init(s->loop, &c->timer);
    c->tcp.data = c;
    c->timer.data = c;
    c->handles = 2;
    c->next = s->conns;
    if (s->conns != NULL)
        s->conns->prev = c;
    s->conns = c;
    s->refs++;
    if (uv_accept(server, (uv_stream_t *)&c->tcp) < 0) {
        fake_smtp__conn_close(c);
        return;
    }
    /* Replies are small and answered one by one: without this, Nagle holds
     * a reply back until the client's delayed ACK (~40 ms after a TLS
     * handshake). */
    (void)uv_tcp_nodelay(&c->tcp, 1);
    s->nconnections++;
    if (s->p.implicit_tls && tlsio_new(s->ctx, true, NULL, &c->tls) < 0) {
        fake_smtp__conn_close(c);
        return;
    }
    if (uv_read_start((uv_stream_t *)&c->tcp, fake_alloc, fake_read) < 0 ||
        uv_timer_start(&c->timer, fake_delay_done, s->p.greeting_delay_ms, 0) < 0)
        fake_smtp__conn_close(c);
}

/* ---- the server ---- */

static void fake_free(struct fake_smtp *s)
{
    struct fake_script *sc, *next;

    for (sc = s->scripts; sc != NULL; sc = next) {
        next = sc->next;
        free(sc->reply);
        free(sc);
    }
    for (size_t i = 0; i < s->nmsgs; i++) {
        free(s->msgs[i].data);
        free(s->msgs[i].envelope);
    }
    free(s->msgs);
    fake_smtp__buf_wipe(&s->transcript);
    SSL_CTX_free(s->ctx);
    free((char *)(uintptr_t)s->p.cert_file);
    free((char *)(uintptr_t)s->p.key_file);
    free((char *)(uintptr_t)s->p.auth);
    free((char *)(uintptr_t)s->p.user);
    fake_smtp__free_secret((char *)(uintptr_t)s->p.password);
    free(s);
}

static void fake_unref(struct fake_smtp *s)
{
    if (--s->refs == 0)
        fake_free(s);
}

static void fake_listener_closed(uv_handle_t *h)
{
    fake_unref(h->data);
}

static int fake_server_ctx(struct fake_smtp *s)
{
    SSL_CTX *ctx = SSL_CTX_new(TLS_server_method());

    if (ctx == NULL)
        return -ENOMEM;
    if (s->p.tls_max_version != 0) {
        /* An outdated server needs OpenSSL's oldest algorithms too. */
        SSL_CTX_set_security_level(ctx, 0);
        if (SSL_CTX_set_cipher_list(ctx, "DEFAULT:@SECLEVEL=0") != 1 ||
            SSL_CTX_set_min_proto_version(ctx, 0) != 1 ||
            SSL_CTX_set_max_proto_version(ctx, s->p.tls_max_version) != 1)
            goto fail;
    }
    if (SSL_CTX_use_certificate_chain_file(ctx, s->p.cert_file) != 1 ||
        SSL_CTX_use_PrivateKey_file(ctx, s->p.key_file, SSL_FILETYPE_PEM) != 1 ||
        SSL_CTX_check_private_key(ctx) != 1)
        goto fail;
    s->ctx = ctx;
    return 0;

fail:
    snprintf(s->tls_error, sizeof(s->tls_error), "%s",
             ERR_reason_error_string(ERR_peek_error()) != NULL
                 ? ERR_reason_error_string(ERR_peek_error())
                 : "cannot load the certificate or key");
    ERR_clear_error();
    SSL_CTX_free(ctx);
    return ERROR_TLS;
}

int fake_smtp_start(uv_loop_t *loop, const struct fake_smtp_params *p, struct fake_smtp **out,
                    uint16_t *port)
{
    struct fake_smtp *s;
    struct sockaddr_storage ss;
    struct sockaddr_in addr;
    int namelen = sizeof(ss);
    int rc;

    *out = NULL;
    s = calloc(1, sizeof(*s));
    if (s == NULL)
        return -ENOMEM;
    s->loop = loop;
    s->p = *p;
    s->p.cert_file = fake_smtp__strdup(p->cert_file);
    s->p.key_file = fake_smtp__strdup(p->key_file);
    s->p.auth = fake_smtp__strdup(p->auth);
    s->p.user = fake_smtp__strdup(p->user);
    s->p.password = fake_smtp__strdup(p->password);
    if (p->cert_file != NULL && (rc = fake_server_ctx(s)) < 0) {
        fake_free(s);
        return rc;
    }
    if ((p->implicit_tls || p->starttls) && s->ctx == NULL) {
        fake_free(s);
        return ERROR_TLS;
    }
    rc = uv_tcp_init(loop, &s->listener);
    if (rc < 0) {
        fake_free(s);
        return rc;
    }
    s->listener.data = s;
    s->refs = 1;
    uv_ip4_addr("127.0.0.1", 0, &addr);
    if ((rc = uv_tcp_bind(&s->listener, (const struct sockaddr *)&addr, 0)) < 0 ||
        (rc = uv_listen((uv_stream_t *)&s->listener, 64, fake_connection)) < 0 ||
        (rc = uv_tcp_getsockname(&s->listener, (struct sockaddr *)&ss, &namelen)) < 0) {
        s->stopping = true;
        uv_close((uv_handle_t *)&s->listener, fake_listener_closed);
        return rc;
    }
    *port = ntohs(((struct sockaddr_in *)&ss)->sin_port);
    *out = s;
    return 0;
}

void fake_smtp_stop(struct fake_smtp *s)
{
    if (s == NULL || s->stopping)
        return;
    s->stopping = true;
    for (struct fake_conn *c = s->conns; c != NULL; c = c->next)
        fake_smtp__conn_close(c);
    uv_close((uv_handle_t *)&s->listener, fake_listener_closed);
}

void fake_smtp_script(struct fake_smtp *s, const char *verb, const char *reply, unsigned count)
{
    struct fake_script *sc = calloc(1, sizeof(*sc)), **tail;

    if (sc == NULL)
        fake_smtp__oom();
    snprintf(sc->verb, sizeof(sc->verb), "%s", verb);
    sc->reply = fake_smtp__strdup(reply); /* NULL stays NULL: silence */
    sc->count = count;
    sc->forever = count == 0;
    for (tail = &s->scripts; *tail != NULL; tail = &(*tail)->next)
        ;
    *tail = sc;
}

size_t fake_smtp_nmessages(const struct fake_smtp *s)
{
    return s->nmsgs;
}

const char *fake_smtp_message(const struct fake_smtp *s, size_t i, size_t *len)
{
    if (i >= s->nmsgs)
        return NULL;
    if (len != NULL)
        *len = s->msgs[i].len;
    return s->msgs[i].data;
}

const char *fake_smtp_envelope(const struct fake_smtp *s, size_t i)
{
    return i < s->nmsgs ? s->msgs[i].envelope : NULL;
}

unsigned fake_smtp_nconnections(const struct fake_smtp *s)
{
    return s->nconnections;
}

const char *fake_smtp_transcript(const struct fake_smtp *s)
{
    return s->transcript.p != NULL ? s->transcript.p : "";
}

const char *fake_smtp_tls_error(const struct fake_smtp *s)
{
    return s->tls_error;
}
