/*
 * smtp_client_conn: the connection of an SMTP client session: resolving,
 * connecting to each address in turn, reads and writes on libuv, TLS
 * through memory BIOs (tlsio.h) with the handshake's failures mapped to
 * what Test Connection diagnoses, and the session's one timer with the
 * timeout of each phase. Everything that happens on the connection reaches
 * the state machine (smtp_client.c) as an event or as plaintext input. See
 * smtp_client.h.
 */
#include "internal.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <arpa/inet.h>
#include <netdb.h>
#include <openssl/bio.h>
#include <openssl/crypto.h>
#include <openssl/err.h>
#include <openssl/x509.h>
#include <openssl/x509_vfy.h>

#include "log.h"
#include "metrics.h"
#include "pem.h"

#define CONTAINER_OF(ptr, type, field) ((type *)(void *)((char *)(ptr)-offsetof(type, field)))

/* ---- closing ---- */

void smtp_client__on_close(uv_handle_t *h)
{
    struct smtp_client *c = h->data;

    c->closes--;
    if (c->state == SMTP_CLIENT_CLOSING)
        smtp_client__maybe_finalize(c);
    else if (h == (uv_handle_t *)&c->tcp && c->state == SMTP_CLIENT_CONNECT)
        smtp_client__connect_next(c); /* a failed attempt is closed: try the next address */
}

void smtp_client__tcp_close(struct smtp_client *c)
{
    if (!c->tcp_open)
        return;
    c->tcp_open = false;
    c->closes++;
    uv_close((uv_handle_t *)&c->tcp, smtp_client__on_close);
}

/* ---- writing ---- */

struct write_req {
    uv_write_t req;
    struct smtp_client *c;
    uv_buf_t buf;
    bool secret;
    char data[];
};

static void on_write(uv_write_t *req, int status)
{
    struct write_req *w = CONTAINER_OF(req, struct write_req, req);
    struct smtp_client *c = w->c;

    c->inflight -= w->buf.len;
    if (w->secret)
        OPENSSL_cleanse(w->data, w->buf.len);
    free(w);
    if (status == UV_ECANCELED || c->state >= SMTP_CLIENT_CLOSING)
        return;
    if (status < 0) {
        smtp_client__finish(c, SMTP_FAIL_CLOSED, "sending to %s failed: %s", c->peer,
                            uv_strerror(status));
        return;
    }
    if (c->state == SMTP_CLIENT_BODY) {
        /* Progress: the data block timeout starts again. */
        smtp_client__arm(c, smtp_client__timeout(c, SETTINGS_F_TIMEOUT_DATA_BLOCK));
        smtp_client__body_pump(c);
    }
}

/* Writes `len` octets in clear on the socket (a copy is made). */
static int raw_write(struct smtp_client *c, const char *data, size_t len, bool secret)
{
    struct write_req *w;
    int rc;

    if (len == 0)
        return 0;
    w = malloc(sizeof(*w) + len);
    if (w == NULL) {
        smtp_client__finish(c, SMTP_FAIL_INTERNAL, "out of memory");
        return -ENOMEM;
    }
    memcpy(w->data, data, len);
    w->c = c;
    w->secret = secret;
    w->buf = uv_buf_init(w->data, (unsigned)len);
    rc = uv_write(&w->req, (uv_stream_t *)&c->tcp, &w->buf, 1, on_write);
    if (rc < 0) {
        if (secret)
            OPENSSL_cleanse(w->data, len);
        free(w);
        smtp_client__finish(c, SMTP_FAIL_CLOSED, "sending to %s failed: %s", c->peer,
                            uv_strerror(rc));
        return rc;
    }
    c->inflight += len;
    return 0;
}

/* Sends what TLS has to send. */
static int tls_flush(struct smtp_client *c)
{
    while (tlsio_pending(c->tls) > 0) {
        size_t n = tlsio_pending(c->tls);
        struct write_req *w = malloc(sizeof(*w) + n);
        int rc;

        if (w == NULL) {
            smtp_client__finish(c, SMTP_FAIL_INTERNAL, "out of memory");
            return -ENOMEM;
        }
        n = tlsio_take(c->tls, w->data, n);
        if (n == 0) {
            free(w);
            smtp_client__finish(c, SMTP_FAIL_INTERNAL, "TLS output lost");
            return ERROR_TLS;
        }
        w->c = c;
        w->secret = false;
        w->buf = uv_buf_init(w->data, (unsigned)n);
        rc = uv_write(&w->req, (uv_stream_t *)&c->tcp, &w->buf, 1, on_write);
        if (rc < 0) {
            free(w);
            smtp_client__finish(c, SMTP_FAIL_CLOSED, "sending to %s failed: %s", c->peer,
                                uv_strerror(rc));
            return rc;
        }
        c->inflight += n;
    }
    return 0;
}

int smtp_client__send(struct smtp_client *c, const char *data, size_t len, bool secret)
{
    if (c->state >= SMTP_CLIENT_CLOSING)
        return -ECANCELED;
    /* What fails from now on is the new command's, not the last reply's. */
    c->in_reply = false;
    if (!c->tls_on)
        return raw_write(c, data, len, secret);
    if (tlsio_write(c->tls, data, len) < 0) {
        smtp_client__finish(c, SMTP_FAIL_TLS_HANDSHAKE, "TLS failure while sending to %s: %s",
                            c->peer, tlsio_why(c->tls));
        return ERROR_TLS;
    }
    return tls_flush(c);
}

/* What the debug log says for a secret command: a fixed label, as nothing
 * of the line (its length included) is anybody's business. */
static const char *secret_label(const struct smtp_client *c)
{
    switch (c->auth_mech) {
    case SMTP_CLIENT_AUTH_PLAIN:
        return "AUTH PLAIN [credentials not logged]";
    case SMTP_CLIENT_AUTH_LOGIN:
        return c->auth_stage <= 1 ? "(AUTH LOGIN user, not logged)"
                                  : "(AUTH LOGIN password, not logged)";
    case SMTP_CLIENT_AUTH_CRAM_MD5:
        return "(CRAM-MD5 response, not logged)";
    default:
        return "(secret, not logged)";
    }
}

int smtp_client__command(struct smtp_client *c, bool secret, const char *fmt, ...)
{
    char cmd[SMTP_CLIENT__COMMAND_MAX];
    va_list ap;
    int n, rc;

    va_start(ap, fmt);
    n = vsnprintf(cmd, sizeof(cmd) - 2, fmt, ap);
    va_end(ap);
    if (n < 0 || (size_t)n >= sizeof(cmd) - 2) {
        OPENSSL_cleanse(cmd, sizeof(cmd));
        smtp_client__finish(c, SMTP_FAIL_INTERNAL, "command too long");
        return ERROR_TOO_BIG;
    }
    if (secret)
        log_debug("smtp %s >>> %s", c->peer, secret_label(c));
    else
        log_debug("smtp %s >>> %s", c->peer, cmd); /* the logger escapes */
    memcpy(cmd + n, "\r\n", 2);
    rc = smtp_client__send(c, cmd, (size_t)n + 2, secret);
    OPENSSL_cleanse(cmd, sizeof(cmd));
    return rc;
}

/* ---- the timer ---- */

/* RFC 5321 §4.5.3.2, in seconds; connect is ours. */
#define DEFAULT_CONNECT    30
#define DEFAULT_GREETING   300
#define DEFAULT_COMMAND    300
#define DEFAULT_MAIL       300
#define DEFAULT_RCPT       300
#define DEFAULT_DATA_INIT  120
#define DEFAULT_DATA_BLOCK 180
#define DEFAULT_DATA_TERM  600

uint64_t smtp_client__timeout(const struct smtp_client *c, enum settings_field f)
{
    uint32_t s = settings__timeout_value(&c->settings, f);

    if (s == 0) {
        switch (f) {
        case SETTINGS_F_TIMEOUT_CONNECT:
            s = DEFAULT_CONNECT;
            break;
        case SETTINGS_F_TIMEOUT_GREETING:
            s = DEFAULT_GREETING;
            break;
        case SETTINGS_F_TIMEOUT_MAIL:
            s = DEFAULT_MAIL;
            break;
        case SETTINGS_F_TIMEOUT_RCPT:
            s = DEFAULT_RCPT;
            break;
        case SETTINGS_F_TIMEOUT_DATA_INIT:
            s = DEFAULT_DATA_INIT;
            break;
        case SETTINGS_F_TIMEOUT_DATA_BLOCK:
            s = DEFAULT_DATA_BLOCK;
            break;
        case SETTINGS_F_TIMEOUT_DATA_TERM:
            s = DEFAULT_DATA_TERM;
            break;
        default:
            s = DEFAULT_COMMAND;
            break;
        }
    }
    return (uint64_t)s * 1000;
}

static void on_timer(uv_timer_t *t)
{
    smtp_client__event(t->data, SMTP_CLIENT_EV_TIMEOUT);
}

void smtp_client__arm(struct smtp_client *c, uint64_t ms)
{
    c->timer_ms = ms;
    uv_timer_start(&c->timer, on_timer, ms, 0);
}

/* ---- resolving and connecting ---- */

static void format_peer(const struct sockaddr *sa, char *buf, size_t len)
{
    char ip[INET6_ADDRSTRLEN];

    if (sa->sa_family == AF_INET6) {
        const struct sockaddr_in6 *s6 = (const struct sockaddr_in6 *)(const void *)sa;

        uv_ip6_name(s6, ip, sizeof(ip));
        snprintf(buf, len, "[%s]:%u", ip, ntohs(s6->sin6_port));
    } else {
        const struct sockaddr_in *s4 = (const struct sockaddr_in *)(const void *)sa;

        uv_ip4_name(s4, ip, sizeof(ip));
        snprintf(buf, len, "%s:%u", ip, ntohs(s4->sin_port));
    }
}

void smtp_client__attempt_failed(struct smtp_client *c, const char *why, bool timed_out)
{
    size_t n = strlen(c->attempts);

    snprintf(c->attempts + n, sizeof(c->attempts) - n, "%s%s: %s", n > 0 ? "; " : "", c->peer, why);
    if (!timed_out)
        c->attempt_timed_out = false;
}

static void on_alloc(uv_handle_t *h, size_t suggested, uv_buf_t *buf);
static void on_read(uv_stream_t *s, ssize_t nread, const uv_buf_t *buf);

static void on_connect(uv_connect_t *req, int status)
{
    struct smtp_client *c = req->data;

    /* Cancelled: the handle was closed (timeout or the end); on_close
     * goes on from there. */
    if (status == UV_ECANCELED || c->state != SMTP_CLIENT_CONNECT)
        return;
    if (status < 0) {
        smtp_client__attempt_failed(c, uv_strerror(status), false);
        smtp_client__tcp_close(c);
        return;
    }
    (void)uv_tcp_nodelay(&c->tcp, 1); /* commands are small and answered one by one */
    status = uv_read_start((uv_stream_t *)&c->tcp, on_alloc, on_read);
    if (status < 0) {
        smtp_client__finish(c, SMTP_FAIL_CONNECT, "cannot read from %s: %s", c->peer,
                            uv_strerror(status));
        return;
    }
    smtp_client__event(c, SMTP_CLIENT_EV_CONNECTED);
}

/* Tries the next address; on_close() of a failed attempt calls it again. */
void smtp_client__connect_next(struct smtp_client *c)
{
    int rc;

    c->ai_cur = c->ai_cur == NULL ? c->ai : c->ai_cur->ai_next;
    for (; c->ai_cur != NULL; c->ai_cur = c->ai_cur->ai_next) {
        format_peer(c->ai_cur->ai_addr, c->peer, sizeof(c->peer));
        rc = uv_tcp_init(c->loop, &c->tcp);
        if (rc < 0) {
            smtp_client__attempt_failed(c, uv_strerror(rc), false);
            continue;
        }
        c->tcp.data = c;
        c->tcp_open = true;
        c->connect.data = c;
        rc = uv_tcp_connect(&c->connect, &c->tcp, c->ai_cur->ai_addr, on_connect);
        if (rc < 0) {
            smtp_client__attempt_failed(c, uv_strerror(rc), false);
            smtp_client__tcp_close(c);
            return;
        }
        smtp_client__arm(c, smtp_client__timeout(c, SETTINGS_F_TIMEOUT_CONNECT));
        return;
    }
    smtp_client__step(c, SMTP_STEP_CONNECT, false,
                      c->attempt_timed_out ? SMTP_FAIL_TIMEOUT : SMTP_FAIL_CONNECT, c->attempts,
                      NULL);
    smtp_client__finish(c, c->attempt_timed_out ? SMTP_FAIL_TIMEOUT : SMTP_FAIL_CONNECT,
                        "cannot connect to %s port %u: %s", c->host, c->port, c->attempts);
}

static void on_resolved(uv_getaddrinfo_t *req, int status, struct addrinfo *res)
{
    struct smtp_client *c = req->data;
    char list[SMTP_CLIENT_REASON_MAX] = "";
    size_t n = 0;

    c->gai_pending = false;
    c->ai = res;
    if (c->state == SMTP_CLIENT_CLOSING) {
        smtp_client__maybe_finalize(c);
        return;
    }
    if (status < 0 || res == NULL) {
        const char *why = status < 0 ? uv_strerror(status) : "no address";

        smtp_client__step(c, SMTP_STEP_RESOLVE, false, SMTP_FAIL_RESOLVE, why, NULL);
        smtp_client__finish(c, SMTP_FAIL_RESOLVE, "cannot resolve %s: %s", c->host, why);
        return;
    }
    for (const struct addrinfo *a = res; a != NULL && n + 1 < sizeof(list); a = a->ai_next) {
        char ip[INET6_ADDRSTRLEN] = "?";

        if (a->ai_family == AF_INET6)
            uv_ip6_name((const struct sockaddr_in6 *)(const void *)a->ai_addr, ip, sizeof(ip));
        else if (a->ai_family == AF_INET)
            uv_ip4_name((const struct sockaddr_in *)(const void *)a->ai_addr, ip, sizeof(ip));
        n += (size_t)snprintf(list + n, sizeof(list) - n, "%s%s", n > 0 ? ", " : "", ip);
    }
    smtp_client__step(c, SMTP_STEP_RESOLVE, true, SMTP_FAIL_NONE, list, NULL);
    smtp_client__set_state(c, SMTP_CLIENT_CONNECT);
}

int smtp_client__resolve(struct smtp_client *c)
{
    struct addrinfo hints = {
        .ai_family = AF_UNSPEC, .ai_socktype = SOCK_STREAM, .ai_flags = AI_NUMERICSERV};
    char port[16];
    int rc;

    snprintf(port, sizeof(port), "%u", c->port);
    c->gai.data = c;
    rc = uv_getaddrinfo(c->loop, &c->gai, on_resolved, c->host, port, &hints);
    if (rc == 0)
        c->gai_pending = true;
    return rc;
}

/* ---- TLS ---- */

/* Maps a verification result to what Test Connection diagnoses. */
static enum smtp_fail cert_fail(long verify)
{
    switch (verify) {
    case X509_V_ERR_HOSTNAME_MISMATCH:
    case X509_V_ERR_IP_ADDRESS_MISMATCH:
    case X509_V_ERR_EMAIL_MISMATCH:
        return SMTP_FAIL_CERT_HOSTNAME;
    case X509_V_ERR_CERT_HAS_EXPIRED:
    case X509_V_ERR_CERT_NOT_YET_VALID:
    case X509_V_ERR_ERROR_IN_CERT_NOT_BEFORE_FIELD:
    case X509_V_ERR_ERROR_IN_CERT_NOT_AFTER_FIELD:
        return SMTP_FAIL_CERT_EXPIRED;
    default:
        return SMTP_FAIL_CERT_UNTRUSTED;
    }
}

/* A certificate's issuer as pem_subject() writes a subject: RFC 2253
 * order, ", " between parts, control and 8-bit octets escaped. */
static void cert_issuer(X509 *cert, char *buf, size_t len)
{
    unsigned long flags = (XN_FLAG_RFC2253 & ~XN_FLAG_SEP_MASK) | XN_FLAG_SEP_CPLUS_SPC;
    BIO *bio = BIO_new(BIO_s_mem());
    char *data;
    long n;

    snprintf(buf, len, "(no issuer)");
    if (bio == NULL)
        return;
    if (X509_NAME_print_ex(bio, X509_get_issuer_name(cert), 0, flags) >= 0 &&
        (n = BIO_get_mem_data(bio, &data)) > 0)
        snprintf(buf, len, "%.*s", (int)(n > 4096 ? 4096 : n), data);
    BIO_free(bio);
    ERR_clear_error();
}

/* "subject=... issuer=... san=... expires=... chain=ok" for the
 * CERTIFICATE step. */
static void cert_detail(struct smtp_client *c, long verify, char *buf, size_t len)
{
    SSL *ssl = tlsio_ssl(c->tls);
    X509 *leaf = SSL_get0_peer_certificate(ssl);
    const char *chain = verify == X509_V_OK ? "ok" : X509_verify_cert_error_string(verify);
    char subject[256] = "", issuer[256] = "", names[256] = "", expires[32] = "?";

    /* A client that refused the chain keeps it, but not the leaf. */
    if (leaf == NULL) {
        STACK_OF(X509) *sk = SSL_get_peer_cert_chain(ssl);

        if (sk != NULL && sk_X509_num(sk) > 0)
            leaf = sk_X509_value(sk, 0);
    }
    if (leaf == NULL) {
        snprintf(buf, len, "no certificate chain=%s", chain);
        return;
    }
    pem_subject(leaf, subject, sizeof(subject));
    cert_issuer(leaf, issuer, sizeof(issuer));
    pem_names(leaf, names, sizeof(names));
    {
        long long t = pem_not_after(leaf);
        time_t tt = (time_t)t;
        struct tm tm;

        if (t >= 0 && gmtime_r(&tt, &tm) != NULL)
            strftime(expires, sizeof(expires), "%Y-%m-%dT%H:%M:%SZ", &tm);
    }
    snprintf(buf, len, "subject=%s issuer=%s san=%s expires=%s chain=%s", subject, issuer,
             names[0] != '\0' ? names : "none", expires, chain);
}

/* A reply line where a TLS record was expected: the server speaks SMTP in
 * clear (implicit TLS against a STARTTLS or plain port). */
static bool looks_like_reply(const char *p, size_t len)
{
    return len >= 4 && p[0] >= '2' && p[0] <= '5' && p[1] >= '0' && p[1] <= '9' && p[2] >= '0' &&
           p[2] <= '9' && (p[3] == ' ' || p[3] == '-');
}

/* The handshake failed: the step and the end, from OpenSSL's reason
 * (tlsio_why) and the verification result. `eof`: the server closed the
 * connection, which OpenSSL then reported. */
static void tls_failed(struct smtp_client *c, bool eof)
{
    SSL *ssl = tlsio_ssl(c->tls);
    long verify = SSL_get_verify_result(ssl);
    const char *why = tlsio_why(c->tls);
    char detail[SMTP_CLIENT_REASON_MAX];

    metrics_count(METRICS_TLS_HANDSHAKE_FAILURES, "smtp",
                  verify != X509_V_OK ? metrics_tls_reason(verify) : METRICS_TLS_PROTOCOL, 1);
    if (verify != X509_V_OK) {
        enum smtp_fail f = cert_fail(verify);

        cert_detail(c, verify, detail, sizeof(detail));
        smtp_client__step(c, SMTP_STEP_CERTIFICATE, false, f, detail, NULL);
        smtp_client__finish(c, f, "certificate of %s refused: %s", c->host,
                            X509_verify_cert_error_string(verify));
        return;
    }
    if (strstr(why, "wrong version number") != NULL ||
        strstr(why, "packet length too long") != NULL || strstr(why, "http request") != NULL) {
        smtp_client__step(c, SMTP_STEP_TLS, false, SMTP_FAIL_TLS_NOT_TLS, why, NULL);
        smtp_client__finish(c, SMTP_FAIL_TLS_NOT_TLS, "%s port %u does not speak TLS (%s)", c->host,
                            c->port, why);
        return;
    }
    if (strstr(why, "protocol version") != NULL || strstr(why, "unsupported protocol") != NULL ||
        strstr(why, "no protocols available") != NULL) {
        smtp_client__step(c, SMTP_STEP_TLS, false, SMTP_FAIL_TLS_VERSION, why, NULL);
        smtp_client__finish(c, SMTP_FAIL_TLS_VERSION,
                            "%s offers no TLS version at or above 1.2 (%s)", c->host, why);
        return;
    }
    if (!eof)
        snprintf(detail, sizeof(detail), "%s", why[0] != '\0' ? why : "unknown reason");
    else if (c->tls_rx == 0)
        snprintf(detail, sizeof(detail),
                 "the server closed the connection without answering the handshake (%s)",
                 why[0] != '\0' ? why : "no reason given");
    else
        snprintf(detail, sizeof(detail),
                 "the server closed the connection after %zu octets of the handshake (%s)",
                 c->tls_rx, why[0] != '\0' ? why : "no reason given");
    smtp_client__step(c, SMTP_STEP_TLS, false, SMTP_FAIL_TLS_HANDSHAKE, detail, NULL);
    smtp_client__finish(c, SMTP_FAIL_TLS_HANDSHAKE, "TLS handshake with %s failed: %s", c->host,
                        detail);
}

/* The handshake is complete: report it, then go on to SMTP. */
static void tls_done(struct smtp_client *c)
{
    SSL *ssl = tlsio_ssl(c->tls);
    char detail[SMTP_CLIENT_REASON_MAX];

    c->tls_on = true;
    snprintf(detail, sizeof(detail), "%s %s", SSL_get_version(ssl), SSL_get_cipher_name(ssl));
    smtp_client__step(c, SMTP_STEP_TLS, true, SMTP_FAIL_NONE, detail, NULL);
    if (c->state >= SMTP_CLIENT_CLOSING)
        return;
    cert_detail(c, SSL_get_verify_result(ssl), detail, sizeof(detail));
    smtp_client__step(c, SMTP_STEP_CERTIFICATE, true, SMTP_FAIL_NONE, detail, NULL);
    if (c->state >= SMTP_CLIENT_CLOSING)
        return;
    smtp_client__event(c, SMTP_CLIENT_EV_TLS_UP);
}

/* Advances the handshake with what was fed. */
static void tls_drive(struct smtp_client *c)
{
    int rc = tlsio_handshake(c->tls);

    if (rc < 0) {
        tls_failed(c, false);
        return;
    }
    if (tls_flush(c) < 0)
        return;
    if (rc == 0)
        tls_done(c);
}

void smtp_client__tls_eof(struct smtp_client *c)
{
    /* Every octet received was handed to OpenSSL already: told that no
     * more come, it says what it makes of them (a truncated record, or
     * nothing at all). */
    tlsio_feed_eof(c->tls);
    if (tlsio_handshake(c->tls) < 0) {
        tls_failed(c, true);
        return;
    }
    metrics_count(METRICS_TLS_HANDSHAKE_FAILURES, "smtp", METRICS_TLS_PROTOCOL, 1);
    smtp_client__step(c, SMTP_STEP_TLS, false, SMTP_FAIL_TLS_HANDSHAKE,
                      "the server closed the connection during the handshake", NULL);
    smtp_client__finish(c, SMTP_FAIL_TLS_HANDSHAKE,
                        "%s closed the connection during the TLS handshake", c->host);
}

void smtp_client__tls_start(struct smtp_client *c)
{
    int rc = tlsio_new(c->ssl_ctx, false, c->host, &c->tls);

    if (rc < 0) {
        smtp_client__finish(c, SMTP_FAIL_INTERNAL, "cannot start TLS: %s", error_str(rc));
        return;
    }
    c->tls_rx = 0;
    smtp_client__arm(c, smtp_client__timeout(c, c->state == SMTP_CLIENT_TLS
                                                    ? SETTINGS_F_TIMEOUT_GREETING
                                                    : SETTINGS_F_TIMEOUT_COMMAND));
    tls_drive(c);
}

/* Decrypts what TLS holds and handles it as SMTP input. */
static void tls_read_all(struct smtp_client *c)
{
    while (c->state < SMTP_CLIENT_CLOSING) {
        size_t got = 0;
        int rc = tlsio_read(c->tls, c->plain, sizeof(c->plain), &got);

        if (rc == TLSIO_AGAIN)
            break;
        if (rc == TLSIO_EOF) {
            smtp_client__event(c, SMTP_CLIENT_EV_EOF);
            return;
        }
        if (rc < 0) {
            smtp_client__finish(c, SMTP_FAIL_TLS_HANDSHAKE, "TLS failure reading from %s: %s",
                                c->host, tlsio_why(c->tls));
            return;
        }
        smtp_client__input(c, c->plain, got);
    }
    if (c->state < SMTP_CLIENT_CLOSING)
        tls_flush(c);
}

/* ---- reading ---- */

static void on_alloc(uv_handle_t *h, size_t suggested, uv_buf_t *buf)
{
    struct smtp_client *c = h->data;

    (void)suggested;
    *buf = uv_buf_init(c->rbuf, sizeof(c->rbuf));
}

static void on_read(uv_stream_t *s, ssize_t nread, const uv_buf_t *buf)
{
    struct smtp_client *c = s->data;
    bool handshaking;

    if (c->state >= SMTP_CLIENT_CLOSING || nread == 0)
        return;
    if (nread < 0) {
        if (nread != UV_EOF) {
            smtp_client__finish(c, SMTP_FAIL_CLOSED, "connection to %s lost: %s", c->peer,
                                uv_strerror((int)nread));
            return;
        }
        smtp_client__event(c, SMTP_CLIENT_EV_EOF);
        return;
    }
    if (c->tls == NULL) {
        smtp_client__input(c, buf->base, (size_t)nread);
        return;
    }
    handshaking = !c->tls_on;
    if (handshaking && c->tls_rx == 0 && looks_like_reply(buf->base, (size_t)nread)) {
        size_t n = 0;
        char q[80];

        /* Its first line (60 octets at most), as the step's server reply. */
        while (n < (size_t)nread && n < 60 && buf->base[n] != '\r' && buf->base[n] != '\n')
            n++;
        smtp_reply_escape(q, sizeof(q), buf->base, n);
        smtp_client__step(c, SMTP_STEP_TLS, false, SMTP_FAIL_TLS_NOT_TLS,
                          "the server answered in plaintext", q);
        if (c->state == SMTP_CLIENT_STARTTLS_TLS)
            smtp_client__finish(c, SMTP_FAIL_TLS_NOT_TLS,
                                "%s answered in plaintext after its 220 to STARTTLS (\"%s\")",
                                c->host, q);
        else
            smtp_client__finish(c, SMTP_FAIL_TLS_NOT_TLS,
                                "%s port %u answered in plaintext to the TLS handshake (\"%s\"): "
                                "is this a STARTTLS or plain SMTP port?",
                                c->host, c->port, q);
        return;
    }
    c->tls_rx += (size_t)nread;
    if (tlsio_feed(c->tls, buf->base, (size_t)nread) < 0) {
        smtp_client__finish(c, SMTP_FAIL_INTERNAL, "out of memory");
        return;
    }
    if (handshaking) {
        tls_drive(c);
        if (!c->tls_on)
            return;
    }
    /* Application data may have come with the end of the handshake. */
    tls_read_all(c);
}
