/*
 * peer: framed mutual TLS on libuv (peer.h).
 *
 * Decisions beyond the header:
 *   - Identity is judged inside the certificate verification callback, at
 *     depth 0 once the chain is valid, so a refusal fails the handshake
 *     (the peer gets an alert, no application data is ever exchanged); it
 *     is checked again from the finished session before on_open.
 *   - Closing is a lingering close: our farewell and close_notify, a TCP
 *     shutdown once libuv has written everything, then we read (and drop)
 *     until the peer's EOF, so that our last octets are not lost to a
 *     reset when the peer still had something in flight. The handshake
 *     timeout bounds the wait.
 *   - One timer per connection serves the phase it is in: handshake (from
 *     the start), idle (while OPEN, restarted by each frame received) and
 *     linger (while CLOSING).
 */
#include "peer_internal.h"

#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <arpa/inet.h>
#include <netdb.h>
#include <openssl/crypto.h>
#include <openssl/err.h>
#include <openssl/ssl.h>
#include <openssl/x509_vfy.h>
#include <openssl/x509v3.h>

#include "error.h"
#include "frame.h"
#include "log.h"
#include "metrics.h"
#include "syntax.h"
#include "tlsio.h"

#define CONTAINER_OF(ptr, type, field) ((type *)(void *)((char *)(ptr)-offsetof(type, field)))

#define PEER_PLAIN_BUF  (16u * 1024) /* one TLS record */
#define PEER_QUEUE_XTRA (64u * 1024)

static const char *const peer_state_names[] = {
#define XX(name) #name,
    PEER_STATE_MAP(XX)
#undef XX
};

const char *peer_state_name(enum peer_state s)
{
    if ((unsigned)s >= sizeof(peer_state_names) / sizeof(peer_state_names[0]))
        return "?";
    return peer_state_names[s];
}

static void peer_set_state(struct peer *p, enum peer_state next);

/* ---- the end of a peer ---- */

static void peer_free(struct peer *p)
{
    struct peer_listener *l = p->listener;

    if (l != NULL)
        peer__listener_forget(l, p);
    if (p->ai != NULL)
        uv_freeaddrinfo(p->ai);
    tlsio_free(p->tls);
    /* The reader's buffer may hold a frame's plaintext. */
    if (p->reader.buf != NULL)
        OPENSSL_cleanse(p->reader.buf, p->reader.cap);
    frame_reader_free(&p->reader);
    free(p);
    /* Last: the listener may go with its last peer. */
    if (l != NULL)
        peer__listener_maybe_free(l);
}

/* Every handle closed and no request outstanding: on_close, then free. */
void peer__maybe_finalize(struct peer *p)
{
    if (!p->finale || p->closes > 0 || p->gai_pending)
        return;
    peer_set_state(p, PEER_CLOSED);
}

static void peer_on_handle_close(uv_handle_t *h)
{
    struct peer *p = h->data;

    p->closes--;
    if (p->finale)
        peer__maybe_finalize(p);
    else if (h == (uv_handle_t *)&p->tcp && p->state == PEER_CONNECTING)
        peer__connect_next(p); /* a failed attempt is closed: the next address */
}

void peer__tcp_close(struct peer *p)
{
    if (!p->tcp_open)
        return;
    p->tcp_open = false;
    p->connected = false;
    p->closes++;
    uv_close((uv_handle_t *)&p->tcp, peer_on_handle_close);
}

/* The finale: every handle closed, whatever is still pending cancelled. */
static void peer_close_handles(struct peer *p)
{
    if (p->finale)
        return;
    p->finale = true;
    peer__tcp_close(p);
    p->closes++;
    uv_close((uv_handle_t *)&p->timer, peer_on_handle_close);
    if (p->gai_pending)
        (void)uv_cancel((uv_req_t *)&p->gai);
    peer__maybe_finalize(p);
}

/* Replaces control characters, so that a reason stays one line. */
static void peer_sanitize(char *s)
{
    for (; *s != '\0'; s++)
        if ((unsigned char)*s < 0x20 || (unsigned char)*s == 0x7f)
            *s = '?';
}

/*
 * Decides the end of the connection: the error and its reason, logged once,
 * then CLOSING. Later failures (while closing) are not news and are dropped.
 */
void peer__fail(struct peer *p, int err, bool farewell, const char *fmt, ...)
{
    char qr[PEER_REASON_MAX + 32];
    va_list ap;

    if (p->state >= PEER_CLOSING)
        return;
    p->err = err;
    va_start(ap, fmt);
    vsnprintf(p->reason, sizeof(p->reason), fmt, ap);
    va_end(ap);
    peer_sanitize(p->reason);
    p->farewell = farewell && p->state == PEER_OPEN && err != 0;
    log_quote(qr, sizeof(qr), p->reason);
    if (err == 0)
        log_info("peer closing id=%s remote=%s side=%s reason=%s", p->id[0] ? p->id : "-",
                 p->remote[0] ? p->remote : p->address, p->listener ? "server" : "client", qr);
    else if (p->state < PEER_OPEN)
        log_warnx("peer %s id=%s remote=%s side=%s state=%s err=%d reason=%s",
                  err == ERROR_TLS ? "refused" : "failed", p->id[0] ? p->id : "-",
                  p->remote[0] ? p->remote : p->address, p->listener ? "server" : "client",
                  peer_state_name(p->state), err, qr);
    else
        log_warnx("peer closing id=%s remote=%s side=%s err=%d reason=%s", p->id[0] ? p->id : "-",
                  p->remote[0] ? p->remote : p->address, p->listener ? "server" : "client", err,
                  qr);
    peer_set_state(p, PEER_CLOSING);
}

/* ---- writing ---- */

struct peer_write {
    uv_write_t req;
    struct peer *p;
    uv_buf_t buf;
    char data[];
};

static void peer_on_write(uv_write_t *req, int status)
{
    struct peer_write *w = CONTAINER_OF(req, struct peer_write, req);
    struct peer *p = w->p;

    free(w);
    if (status < 0 && status != UV_ECANCELED)
        peer__event(p, PEER_EV_IOERR, status, NULL, 0);
}

/* Hands what TLS has to send to libuv. 0, or a negative error (the caller
 * decides what it means for the connection). */
static int peer_flush(struct peer *p)
{
    size_t n;

    while (p->connected && (n = tlsio_pending(p->tls)) > 0) {
        struct peer_write *w = malloc(sizeof(*w) + n);
        int rc;

        if (w == NULL)
            return -ENOMEM;
        n = tlsio_take(p->tls, w->data, n);
        w->p = p;
        w->buf = uv_buf_init(w->data, (unsigned)n);
        rc = uv_write(&w->req, (uv_stream_t *)&p->tcp, &w->buf, 1, peer_on_write);
        if (rc < 0) {
            free(w);
            return rc;
        }
    }
    return 0;
}

/* Packs and encrypts one frame; the plaintext copy is wiped. */
static int peer_write_frame(struct peer *p, const Smtpsync__Frame *f)
{
    uint8_t *buf;
    size_t len;
    int rc;

    if ((rc = frame_pack(f, p->params.max_frame, &buf, &len)) < 0)
        return rc;
    rc = tlsio_write(p->tls, buf, len);
    OPENSSL_cleanse(buf, len);
    free(buf);
    return rc;
}

static void peer_send_farewell(struct peer *p)
{
    Smtpsync__Error e;
    Smtpsync__Frame f;

    smtpsync__error__init(&e);
    smtpsync__frame__init(&f);
    e.code = p->err;
    e.message = p->reason;
    f.id = 0;
    f.body_case = SMTPSYNC__FRAME__BODY_ERROR;
    f.error = &e;
    /* Best effort: the connection ends either way. */
    (void)peer_write_frame(p, &f);
}

int peer_send(struct peer *p, const Smtpsync__Frame *f)
{
    size_t queued, size;
    int rc;

    if (p->state != PEER_OPEN)
        return -ENOTCONN;
    if (f->body_case == SMTPSYNC__FRAME__BODY__NOT_SET)
        return ERROR_INVALID;
    size = smtpsync__frame__get_packed_size(f);
    if (size > p->params.max_frame)
        return ERROR_TOO_BIG;
    queued = peer_queued(p);
    if (queued + size + FRAME_HEADER_LEN > p->params.max_queue) {
        peer__fail(p, -ENOBUFS, false,
                   "write queue full (%zu octets waiting): the peer is not reading", queued);
        return -ENOBUFS;
    }
    rc = peer_write_frame(p, f);
    if (rc == ERROR_TLS) {
        peer__fail(p, ERROR_TLS, false, "TLS failure while sending: %s", tlsio_why(p->tls));
        return rc;
    }
    if (rc < 0)
        return rc;
    if ((rc = peer_flush(p)) < 0) {
        peer__fail(p, rc, false, "sending failed: %s",
                   rc == -ENOMEM ? "out of memory" : uv_strerror(rc));
        return rc;
    }
    return 0;
}

/* ---- reading ---- */

/* An Error frame with id 0 is the peer's farewell (peer.h). */
static bool peer_is_farewell(const Smtpsync__Frame *f)
{
    return f->id == 0 && f->body_case == SMTPSYNC__FRAME__BODY_ERROR && f->error != NULL;
}

static void peer_take_farewell(struct peer *p, const Smtpsync__Frame *f)
{
    char msg[PEER_REASON_MAX];
    int err = f->error->code < 0 ? f->error->code : -ECONNRESET;

    snprintf(msg, sizeof(msg), "%s", f->error->message != NULL ? f->error->message : "");
    peer__fail(p, err, false, "closed by the peer: %s", msg[0] ? msg : error_str(err));
}

/* Hands the complete frames buffered to on_frame, while OPEN. */
static void peer_dispatch(struct peer *p)
{
    Smtpsync__Frame *f;
    int rc;

    while (p->state == PEER_OPEN) {
        rc = frame_reader_next(&p->reader, &f);
        if (rc == ERROR_EMPTY)
            return;
        if (rc < 0) {
            peer__fail(p, rc, true, "%s",
                       rc == ERROR_TOO_BIG ? "frame over the size limit" : "undecodable frame");
            return;
        }
        p->frames_in++;
        if (p->params.idle_timeout_ms > 0)
            uv_timer_again(&p->timer);
        if (peer_is_farewell(f))
            peer_take_farewell(p, f);
        else
            p->cb.on_frame(p->arg, p, f);
        frame_wipe_secrets(f);
        smtpsync__frame__free_unpacked(f, NULL);
    }
}

/* The reason a TLS alert from the other side gives: OpenSSL sends
 * "unknown ca" or "certificate expired" for a chain it refused, and
 * "handshake failure" for what a verify callback refused (ours refuses
 * what is not authorized, or not the expected id). */
static const char *peer_alert_reason(const char *why)
{
    if (strstr(why, "unknown ca") != NULL)
        return METRICS_TLS_UNKNOWN_CA;
    if (strstr(why, "certificate expired") != NULL)
        return METRICS_TLS_EXPIRED;
    if (strstr(why, "handshake failure") != NULL)
        return METRICS_TLS_NOT_AUTHORIZED;
    if (strstr(why, "protocol version") != NULL)
        return METRICS_TLS_PROTOCOL;
    return METRICS_TLS_OTHER;
}

/* The stream ended (close_notify, EOF or a TLS failure while reading). */
static void peer_stream_end(struct peer *p, int rc)
{
    size_t pending = frame_reader_pending(&p->reader);

    if (pending > 0)
        peer__fail(p, ERROR_DECODE, false,
                   "truncated frame: the stream ended %zu octets into a frame%s%s", pending,
                   rc == ERROR_TLS ? ": " : "", rc == ERROR_TLS ? tlsio_why(p->tls) : "");
    else if (rc == TLSIO_EOF)
        peer__fail(p, 0, false, "closed by the peer");
    else if (p->remote_eof)
        peer__fail(p, -ECONNRESET, false, "connection closed by the peer without close_notify");
    else if (p->listener == NULL && p->frames_in == 0 && strstr(tlsio_why(p->tls), "alert")) {
        /* TLS 1.3: the server judged our certificate after our handshake
         * completed, and refused it. */
        metrics_count(METRICS_TLS_HANDSHAKE_FAILURES, "replication",
                      peer_alert_reason(tlsio_why(p->tls)), 1);
        peer__fail(p, ERROR_TLS, false, "refused by the server: %s", tlsio_why(p->tls));
    } else
        peer__fail(p, ERROR_TLS, false, "TLS failure: %s", tlsio_why(p->tls));
}

/* Decrypts what was fed and dispatches the frames, while OPEN. */
static void peer_pump(struct peer *p)
{
    uint8_t plain[PEER_PLAIN_BUF];
    size_t got, used = 0;
    int rc;

    while (p->state == PEER_OPEN) {
        rc = tlsio_read(p->tls, plain, sizeof(plain), &got);
        if (rc == 0) {
            used = got > used ? got : used;
            rc = frame_reader_feed(&p->reader, plain, got);
            if (rc < 0) {
                peer__fail(p, rc, true, "%s",
                           rc == ERROR_TOO_BIG ? "frame over the size limit of the connection"
                           : rc == -ENOMEM     ? "out of memory"
                                               : "undecodable frame");
                break;
            }
            peer_dispatch(p);
            continue;
        }
        if (rc == TLSIO_AGAIN)
            break;
        peer_stream_end(p, rc);
        break;
    }
    OPENSSL_cleanse(plain, used);
    /* Reading may have produced something to send (a key update). */
    if (p->state == PEER_OPEN && (rc = peer_flush(p)) < 0)
        peer__fail(p, rc, false, "sending failed: %s", uv_strerror(rc));
}

/* ---- the handshake ---- */

static void peer_set_why(struct peer *p, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));

static void peer_set_why(struct peer *p, const char *fmt, ...)
{
    va_list ap;

    va_start(ap, fmt);
    vsnprintf(p->why, sizeof(p->why), fmt, ap);
    va_end(ap);
}

/*
 * A client certificate that does not verify (another CA, expired) has no
 * id to log: say who it claims to be, its subject and DNS names, quoted
 * since nothing of it can be trusted.
 */
static void peer_log_presented(const struct peer *p, X509_STORE_CTX *x)
{
    X509 *leaf = X509_STORE_CTX_get0_cert(x);
    GENERAL_NAMES *names =
        leaf != NULL ? X509_get_ext_d2i(leaf, NID_subject_alt_name, NULL, NULL) : NULL;
    char subject[256] = "", san[256] = "", qsubject[300], qsan[300];
    size_t used = 0;

    if (leaf != NULL &&
        X509_NAME_oneline(X509_get_subject_name(leaf), subject, (int)sizeof(subject)) == NULL)
        subject[0] = '\0';
    for (int i = 0; names != NULL && i < sk_GENERAL_NAME_num(names); i++) {
        const GENERAL_NAME *g = sk_GENERAL_NAME_value(names, i);
        const unsigned char *d;
        int n;

        if (g->type != GEN_DNS)
            continue;
        d = ASN1_STRING_get0_data(g->d.dNSName);
        n = ASN1_STRING_length(g->d.dNSName);
        for (int k = -1; k < n && used + 1 < sizeof(san); k++) {
            if (k < 0 && used == 0)
                continue; /* no separator before the first name */
            san[used++] = k < 0 ? ',' : (d[k] != '\0' ? (char)d[k] : '?');
        }
        san[used] = '\0';
    }
    GENERAL_NAMES_free(names);
    log_warnx("peer refused certificate remote=%s side=server subject=%s san=%s error=\"%s\"",
              p->remote[0] ? p->remote : p->address, log_quote(qsubject, sizeof(qsubject), subject),
              log_quote(qsan, sizeof(qsan), san),
              X509_verify_cert_error_string(X509_STORE_CTX_get_error(x)));
}

/*
 * The verification callback of every session: at depth 0, once OpenSSL
 * found the chain valid, the certificate's id must be the expected one
 * (client) or be authorized (server). Anything refused here fails the
 * handshake; the reason is kept in p->why.
 */
static int peer_verify_cb(int ok, X509_STORE_CTX *x)
{
    SSL *ssl = X509_STORE_CTX_get_ex_data(x, SSL_get_ex_data_X509_STORE_CTX_idx());
    struct peer *p = ssl != NULL ? SSL_get_app_data(ssl) : NULL;
    char id[MTLS_ID_MAX + 1];
    char why[PEER_REASON_MAX];

    if (p != NULL && !ok && p->listener != NULL)
        peer_log_presented(p, x); /* once: returning 0 ends the verification */
    if (p == NULL || X509_STORE_CTX_get_error_depth(x) != 0)
        return ok;
    if (!ok) {
        /* OpenSSL's own host check came first: say whose certificate it is. */
        if (p->listener == NULL && X509_STORE_CTX_get_error(x) == X509_V_ERR_HOSTNAME_MISMATCH &&
            mtls_cert_id(X509_STORE_CTX_get_current_cert(x), id, sizeof(id), why, sizeof(why)) ==
                0) {
            peer_set_why(p, "the server's certificate is for '%s', not '%s'", id, p->expected);
            peer_sanitize(p->why);
        }
        return 0;
    }
    if (p->verified)
        return 1;
    if (mtls_cert_id(X509_STORE_CTX_get_current_cert(x), id, sizeof(id), why, sizeof(why)) < 0) {
        peer_set_why(p, "no usable id in the certificate: %s", why);
        goto refuse;
    }
    if (p->listener == NULL) {
        if (p->expected[0] != '\0' && strcmp(id, p->expected) != 0) {
            peer_set_why(p, "the server's certificate is for '%s', not '%s'", id, p->expected);
            goto refuse;
        }
    } else if (p->cb.authorize != NULL) {
        why[0] = '\0';
        if (!p->cb.authorize(p->arg, p, id, why, sizeof(why))) {
            peer_set_why(p, "'%s' refused: %s", id, why[0] ? why : "not authorized");
            snprintf(p->id, sizeof(p->id), "%s", id);
            goto refuse;
        }
    }
    snprintf(p->id, sizeof(p->id), "%s", id);
    p->verified = true;
    return 1;

refuse:
    peer_sanitize(p->why);
    X509_STORE_CTX_set_error(x, X509_V_ERR_APPLICATION_VERIFICATION);
    return 0;
}

/* The handshake completed: the same judgement from the session itself. */
static int peer_check_session(struct peer *p)
{
    SSL *ssl = tlsio_ssl(p->tls);
    char id[MTLS_ID_MAX + 1];
    char why[PEER_REASON_MAX];
    X509 *cert;

    if (mtls_peer_id(ssl, id, sizeof(id), why, sizeof(why)) < 0) {
        peer__fail(p, ERROR_TLS, false, "peer certificate refused: %s", why);
        return ERROR_TLS;
    }
    if (!p->verified || strcmp(id, p->id) != 0) {
        peer__fail(p, ERROR_TLS, false, "peer certificate for '%s' was not checked", id);
        return ERROR_TLS;
    }
    if (p->listener == NULL && p->expected[0] != '\0' && strcmp(id, p->expected) != 0) {
        peer__fail(p, ERROR_TLS, false, "the server's certificate is for '%s', not '%s'", id,
                   p->expected);
        return ERROR_TLS;
    }
    cert = SSL_get0_peer_certificate(ssl);
    p->cert_expiry = cert != NULL ? mtls_cert_expiry(cert) : -1;
    return 0;
}

/* Why a handshake failed, for smtpsync_tls_handshake_failures_total: a
 * certificate refused by our verify callback is not authorized (server:
 * not a member or admin) or not the expected id (client); one OpenSSL
 * refused has its verify result; an alert from the other side says why it
 * refused ours; the rest is the protocol's. */
static const char *peer_tls_reason(struct peer *p)
{
    long vr = SSL_get_verify_result(tlsio_ssl(p->tls));

    if (vr == X509_V_ERR_APPLICATION_VERIFICATION)
        return p->listener != NULL ? METRICS_TLS_NOT_AUTHORIZED : METRICS_TLS_HOSTNAME_MISMATCH;
    if (vr != X509_V_OK)
        return metrics_tls_reason(vr);
    if (strstr(tlsio_why(p->tls), "alert") != NULL)
        return peer_alert_reason(tlsio_why(p->tls));
    return METRICS_TLS_PROTOCOL;
}

/* Advances the handshake with what was fed; OPEN when it completes. */
static void peer_handshake(struct peer *p)
{
    int rc = tlsio_handshake(p->tls);
    int frc;

    if (rc == TLSIO_AGAIN || rc == 0) {
        if ((frc = peer_flush(p)) < 0) {
            peer__fail(p, frc, false, "sending failed: %s", uv_strerror(frc));
            return;
        }
    }
    if (rc == TLSIO_AGAIN) {
        if (p->remote_eof) {
            metrics_count(METRICS_TLS_HANDSHAKE_FAILURES, "replication", METRICS_TLS_PROTOCOL, 1);
            peer__fail(p, ERROR_TLS, false, "TLS handshake failed: the peer closed the connection");
        }
        return;
    }
    if (rc < 0) {
        const char *why = p->why[0] ? p->why : tlsio_why(p->tls);

        metrics_count(METRICS_TLS_HANDSHAKE_FAILURES, "replication", peer_tls_reason(p), 1);
        peer__fail(p, ERROR_TLS, false, "TLS handshake failed: %s",
                   why[0] ? why : "unknown reason");
        return;
    }
    p->handshake_done = true;
    if (peer_check_session(p) < 0)
        return;
    peer_set_state(p, PEER_OPEN);
}

/* ---- the timer ---- */

void peer__on_timer(uv_timer_t *t)
{
    peer__event(t->data, PEER_EV_TIMEOUT, 0, NULL, 0);
}

/* ---- reads ---- */

static void peer_on_alloc(uv_handle_t *h, size_t suggested, uv_buf_t *buf)
{
    struct peer *p = h->data;

    (void)suggested;
    *buf = uv_buf_init(p->rbuf, sizeof(p->rbuf));
}

static void peer_on_read(uv_stream_t *s, ssize_t n, const uv_buf_t *buf)
{
    struct peer *p = s->data;

    (void)buf;
    if (n > 0)
        peer__event(p, PEER_EV_DATA, 0, p->rbuf, (size_t)n);
    else if (n == UV_EOF)
        peer__event(p, PEER_EV_EOF, 0, NULL, 0);
    else if (n < 0)
        peer__event(p, PEER_EV_IOERR, (int)n, NULL, 0);
}

static void peer_on_shutdown(uv_shutdown_t *req, int status)
{
    struct peer *p = req->data;

    p->shutdown_pending = false;
    if (status == UV_ECANCELED)
        return;
    peer__event(p, PEER_EV_SHUTDOWN, status, NULL, 0);
}

/* ---- the state machine ---- */

/* Entry into CLOSING: farewell, close_notify, flush, TCP shutdown, linger. */
static void peer_enter_closing(struct peer *p)
{
    uv_timer_stop(&p->timer);
    if (!p->connected) {
        peer_close_handles(p);
        return;
    }
    if (p->farewell)
        peer_send_farewell(p);
    if (p->handshake_done)
        tlsio_shutdown(p->tls);
    /* Handshake alerts are sent too: the peer learns why. */
    if (peer_flush(p) < 0) {
        peer_close_handles(p);
        return;
    }
    p->shutdown.data = p;
    if (uv_shutdown(&p->shutdown, (uv_stream_t *)&p->tcp, peer_on_shutdown) < 0) {
        peer_close_handles(p);
        return;
    }
    p->shutdown_pending = true;
    uv_timer_start(&p->timer, peer__on_timer, p->params.handshake_timeout_ms, 0);
}

static void peer_set_state(struct peer *p, enum peer_state next)
{
    enum peer_state old = p->state;

    log_debug("peer %s %s: %s -> %s", p->listener ? "server" : "client",
              p->remote[0] ? p->remote : p->address, peer_state_name(old), peer_state_name(next));
    p->state = next;
    switch (next) {
    case PEER_CONNECTING:
        break;
    case PEER_HANDSHAKE: {
        int rc = uv_read_start((uv_stream_t *)&p->tcp, peer_on_alloc, peer_on_read);

        if (rc < 0) {
            peer__fail(p, rc, false, "cannot read: %s", uv_strerror(rc));
            return;
        }
        /* The client speaks first; the server waits for its hello. */
        if (p->listener == NULL)
            peer_handshake(p);
        break;
    }
    case PEER_OPEN:
        uv_timer_stop(&p->timer);
        if (p->params.idle_timeout_ms > 0)
            uv_timer_start(&p->timer, peer__on_timer, p->params.idle_timeout_ms,
                           p->params.idle_timeout_ms);
        log_info("peer open id=%s remote=%s side=%s tls=%s cipher=%s", p->id, p->remote,
                 p->listener ? "server" : "client", SSL_get_version(tlsio_ssl(p->tls)),
                 SSL_get_cipher_name(tlsio_ssl(p->tls)));
        p->cb.on_open(p->arg, p, p->id);
        /* What came with the end of the handshake (or after it). */
        peer_pump(p);
        break;
    case PEER_CLOSING:
        peer_enter_closing(p);
        break;
    case PEER_CLOSED:
        p->cb.on_close(p->arg, p, p->err, p->reason);
        peer_free(p);
        break;
    }
}

void peer__event(struct peer *p, enum peer_event ev, int status, const char *data, size_t len)
{
    int rc;

    switch (ev) {
    case PEER_EV_CONNECTED:
        p->connected = true;
        uv_tcp_nodelay(&p->tcp, 1);
        (void)uv_tcp_keepalive(&p->tcp, 1, 60);
        peer_set_state(p, PEER_HANDSHAKE);
        break;
    case PEER_EV_DATA:
        if (p->state >= PEER_CLOSING)
            break; /* lingering: dropped */
        if ((rc = tlsio_feed(p->tls, data, len)) < 0) {
            peer__fail(p, rc, false, "out of memory");
            break;
        }
        if (p->state == PEER_HANDSHAKE)
            peer_handshake(p);
        else if (p->state == PEER_OPEN)
            peer_pump(p);
        break;
    case PEER_EV_EOF:
        p->remote_eof = true;
        if (p->state >= PEER_CLOSING) {
            if (p->shutdown_done)
                peer_close_handles(p);
            break;
        }
        tlsio_feed_eof(p->tls);
        if (p->state == PEER_HANDSHAKE) {
            peer_handshake(p);
        } else if (p->state == PEER_OPEN) {
            peer_pump(p);
            /* A pump that saw the end closes; one that did not (impossible
             * after EOF) must not leave the connection half open. */
            if (p->state == PEER_OPEN)
                peer_stream_end(p, ERROR_TLS);
        }
        break;
    case PEER_EV_IOERR:
        p->remote_eof = true;
        if (p->state >= PEER_CLOSING) {
            peer_close_handles(p);
            break;
        }
        if (status == UV_ECONNRESET && p->state == PEER_OPEN &&
            frame_reader_pending(&p->reader) == 0)
            peer__fail(p, -ECONNRESET, false, "connection reset by the peer");
        else
            peer__fail(p, status, false, "%s: %s",
                       frame_reader_pending(&p->reader) > 0 ? "truncated frame: connection lost"
                                                            : "connection lost",
                       uv_strerror(status));
        /* Nothing more can be written. */
        peer_close_handles(p);
        break;
    case PEER_EV_TIMEOUT:
        switch (p->state) {
        case PEER_CONNECTING:
            peer__fail(p, -ETIMEDOUT, false, "connecting to %s timed out%s%s", p->address,
                       p->attempts[0] ? ": " : "", p->attempts);
            break;
        case PEER_HANDSHAKE:
            metrics_count(METRICS_TLS_HANDSHAKE_FAILURES, "replication", METRICS_TLS_TIMEOUT, 1);
            peer__fail(p, -ETIMEDOUT, false, "handshake timed out after %llu ms",
                       (unsigned long long)p->params.handshake_timeout_ms);
            break;
        case PEER_OPEN:
            peer__fail(p, -ETIMEDOUT, true, "idle timeout: no frame for %llu ms",
                       (unsigned long long)p->params.idle_timeout_ms);
            break;
        case PEER_CLOSING:
            peer_close_handles(p); /* the peer did not finish in time */
            break;
        case PEER_CLOSED:
            abort();
        }
        break;
    case PEER_EV_SHUTDOWN:
        p->shutdown_done = true;
        if (status < 0 || p->remote_eof)
            peer_close_handles(p);
        break;
    default:
        abort();
    }
}

/* ---- creating peers ---- */

int peer__check_callbacks(const struct peer_callbacks *cb)
{
    return cb != NULL && cb->on_open != NULL && cb->on_frame != NULL && cb->on_close != NULL
               ? 0
               : -EINVAL;
}

void peer__fill_params(struct peer_params *out, const struct peer_params *in)
{
    if (in != NULL)
        *out = *in;
    else
        memset(out, 0, sizeof(*out));
    if (out->max_frame == 0 || out->max_frame > FRAME_MAX_DEFAULT * 16ull)
        out->max_frame = out->max_frame == 0 ? FRAME_MAX_DEFAULT : FRAME_MAX_DEFAULT * 16ull;
    if (out->max_queue == 0)
        out->max_queue = 2 * out->max_frame + PEER_QUEUE_XTRA;
    if (out->handshake_timeout_ms == 0)
        out->handshake_timeout_ms = PEER_HANDSHAKE_TIMEOUT_DEFAULT_MS;
    if (out->max_peers == 0)
        out->max_peers = PEER_MAX_PEERS_DEFAULT;
}

/* A peer with its timer; the TCP handle is the caller's. */
struct peer *peer__new(uv_loop_t *loop, const struct peer_params *params,
                       const struct peer_callbacks *cb, void *arg, SSL_CTX *ssl_ctx, bool server,
                       const char *host)
{
    struct peer *p = calloc(1, sizeof(*p));
    SSL *ssl;

    if (p == NULL)
        return NULL;
    p->loop = loop;
    p->params = *params;
    p->cb = *cb;
    p->arg = arg;
    p->cert_expiry = -1;
    frame_reader_init(&p->reader, p->params.max_frame);
    if (tlsio_new(ssl_ctx, server, host, &p->tls) < 0) {
        free(p);
        return NULL;
    }
    ssl = tlsio_ssl(p->tls);
    SSL_set_app_data(ssl, p);
    SSL_set_verify(ssl,
                   server ? SSL_VERIFY_PEER | SSL_VERIFY_FAIL_IF_NO_PEER_CERT : SSL_VERIFY_PEER,
                   peer_verify_cb);
    uv_timer_init(loop, &p->timer);
    p->timer.data = p;
    p->tcp.data = p;
    return p;
}

int peer__accept(struct peer_listener *l, uv_stream_t *server)
{
    struct sockaddr_storage ss;
    int sslen = sizeof(ss);
    struct peer *p;
    int rc;

    p = peer__new(l->loop, &l->params, &l->cb, l->arg, mtls_ctx_server(l->ctx), true, NULL);
    if (p == NULL)
        return -ENOMEM;
    p->listener = l;
    peer__listener_add(l, p);
    if ((rc = uv_tcp_init(l->loop, &p->tcp)) < 0) {
        peer__fail(p, rc, false, "cannot accept: %s", uv_strerror(rc));
        return 0;
    }
    p->tcp_open = true;
    if ((rc = uv_accept(server, (uv_stream_t *)&p->tcp)) < 0) {
        peer__fail(p, rc, false, "cannot accept: %s", uv_strerror(rc));
        return 0;
    }
    if (uv_tcp_getpeername(&p->tcp, (struct sockaddr *)&ss, &sslen) == 0)
        peer__format_addr((const struct sockaddr *)&ss, p->remote, sizeof(p->remote));
    snprintf(p->address, sizeof(p->address), "%s", p->remote);
    uv_timer_start(&p->timer, peer__on_timer, p->params.handshake_timeout_ms, 0);
    peer__event(p, PEER_EV_CONNECTED, 0, NULL, 0);
    return 0;
}

/* ---- accessors ---- */

void peer_close(struct peer *p, int err, const char *reason)
{
    peer__fail(p, err, true, "%s", reason != NULL ? reason : "closed");
}

void peer_set_arg(struct peer *p, void *arg)
{
    p->arg = arg;
}

void *peer_arg(const struct peer *p)
{
    return p->arg;
}

enum peer_state peer_state(const struct peer *p)
{
    return p->state;
}

const char *peer_id(const struct peer *p)
{
    return p->id;
}

const char *peer_remote(const struct peer *p)
{
    return p->remote;
}

time_t peer_cert_expiry(const struct peer *p)
{
    return p->cert_expiry;
}

const char *peer_tls_version(const struct peer *p)
{
    return p->handshake_done ? SSL_get_version(tlsio_ssl(p->tls)) : "";
}

size_t peer_queued(const struct peer *p)
{
    return p->connected ? uv_stream_get_write_queue_size((const uv_stream_t *)&p->tcp) : 0;
}

bool peer_is_client(const struct peer *p)
{
    return p->listener == NULL;
}
