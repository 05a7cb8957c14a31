/*
 * peer_connect: the client side of peer.h: addresses, resolution, and
 * connecting to each resolved address in turn until one answers; the
 * connection then goes on in peer.c (HANDSHAKE).
 */
#include "peer_internal.h"

#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <arpa/inet.h>
#include <netdb.h>

#include "error.h"
#include "log.h"
#include "syntax.h"

/* Splits "host:port" / "[v6]:port"; the port may be 0 only if allow_zero. */
int peer__split_address(const char *address, bool allow_zero, char *host, size_t hostlen,
                        char *port, size_t portlen)
{
    const char *colon, *h = address, *hend;
    char *end;
    unsigned long n;

    if (address == NULL || syntax_has_control(address))
        return -EINVAL;
    colon = strrchr(address, ':');
    if (colon == NULL || colon == address)
        return -EINVAL;
    hend = colon;
    if (address[0] == '[') {
        if (colon[-1] != ']')
            return -EINVAL;
        h = address + 1;
        hend = colon - 1;
    } else if (memchr(address, ':', (size_t)(colon - address)) != NULL) {
        return -EINVAL; /* an IPv6 literal needs its brackets */
    }
    if (hend <= h || (size_t)(hend - h) >= hostlen)
        return -EINVAL;
    memcpy(host, h, (size_t)(hend - h));
    host[hend - h] = '\0';
    if (colon[1] < '0' || colon[1] > '9')
        return -EINVAL;
    errno = 0;
    n = strtoul(colon + 1, &end, 10);
    if (errno != 0 || *end != '\0' || n > 65535 || (n == 0 && !allow_zero) ||
        strlen(colon + 1) >= portlen)
        return -EINVAL;
    snprintf(port, portlen, "%lu", n);
    return 0;
}

void peer__format_addr(const struct sockaddr *sa, char *buf, size_t len)
{
    char ip[INET6_ADDRSTRLEN] = "?";

    if (sa->sa_family == AF_INET6) {
        const struct sockaddr_in6 *s6 = (const struct sockaddr_in6 *)(const void *)sa;

        uv_ip6_name(s6, ip, sizeof(ip));
        snprintf(buf, len, "[%s]:%u", ip, ntohs(s6->sin6_port));
    } else if (sa->sa_family == AF_INET) {
        const struct sockaddr_in *s4 = (const struct sockaddr_in *)(const void *)sa;

        uv_ip4_name(s4, ip, sizeof(ip));
        snprintf(buf, len, "%s:%u", ip, ntohs(s4->sin_port));
    } else {
        snprintf(buf, len, "?");
    }
}

/* ---- connecting ---- */

static void peer_append(char *buf, size_t len, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

/* Appends to a NUL-terminated buf[len], cutting what does not fit. */
static void peer_append(char *buf, size_t len, const char *fmt, ...)
{
    size_t n = strlen(buf);
    va_list ap;

    va_start(ap, fmt);
    vsnprintf(buf + n, len - n, fmt, ap);
    va_end(ap);
}

static void peer_attempt_failed(struct peer *p, int status)
{
    p->attempt_err = status;
    p->nattempts++;
    peer_append(p->attempts, sizeof(p->attempts), "%s%s: %s", p->attempts[0] ? "; " : "", p->remote,
                uv_strerror(status));
}

static void peer_on_connect(uv_connect_t *req, int status)
{
    struct peer *p = req->data;

    /* Cancelled: the handle was closed; the close callback goes on. */
    if (status == UV_ECANCELED || p->state != PEER_CONNECTING)
        return;
    if (status < 0) {
        peer_attempt_failed(p, status);
        peer__tcp_close(p);
        return;
    }
    peer__event(p, PEER_EV_CONNECTED, 0, NULL, 0);
}

/* Tries the next address; the close callback of a failed attempt calls it
 * again. */
void peer__connect_next(struct peer *p)
{
    int rc;

    p->ai_cur = p->ai_cur == NULL ? p->ai : p->ai_cur->ai_next;
    for (; p->ai_cur != NULL; p->ai_cur = p->ai_cur->ai_next) {
        peer__format_addr(p->ai_cur->ai_addr, p->remote, sizeof(p->remote));
        if ((rc = uv_tcp_init(p->loop, &p->tcp)) < 0) {
            peer_attempt_failed(p, rc);
            continue;
        }
        p->tcp.data = p;
        p->tcp_open = true;
        p->connect.data = p;
        rc = uv_tcp_connect(&p->connect, &p->tcp, p->ai_cur->ai_addr, peer_on_connect);
        if (rc < 0) {
            peer_attempt_failed(p, rc);
            peer__tcp_close(p);
        }
        return;
    }
    if (p->nattempts == 1)
        peer__fail(p, p->attempt_err, false, "cannot connect to %s: %s", p->address,
                   uv_strerror(p->attempt_err));
    else
        peer__fail(p, p->nattempts > 0 ? p->attempt_err : -EHOSTUNREACH, false,
                   "cannot connect to %s: %s", p->address,
                   p->nattempts > 0 ? p->attempts : "no address to try");
}

static void peer_on_resolved(uv_getaddrinfo_t *req, int status, struct addrinfo *res)
{
    struct peer *p = req->data;

    p->gai_pending = false;
    p->ai = res;
    if (p->state != PEER_CONNECTING) {
        peer__maybe_finalize(p);
        return;
    }
    if (status < 0 || res == NULL) {
        peer__fail(p, status < 0 ? status : -EHOSTUNREACH, false, "cannot resolve %s: %s", p->host,
                   status < 0 ? uv_strerror(status) : "no address");
        return;
    }
    peer__connect_next(p);
}

/* The end of a peer that was never handed out: freed without on_close. */
static void peer_on_abandoned(uv_handle_t *h)
{
    struct peer *p = h->data;

    tlsio_free(p->tls);
    frame_reader_free(&p->reader);
    free(p);
}

int peer_connect(uv_loop_t *loop, const char *address, struct mtls_ctx *ctx,
                 const char *expected_id, const struct peer_params *params,
                 const struct peer_callbacks *cb, void *arg, struct peer **out)
{
    struct addrinfo hints;
    struct peer_params prm;
    char host[SYNTAX_HOSTNAME_MAX + 1];
    char port[8];
    char why[64];
    struct peer *p;
    int rc;

    *out = NULL;
    if (peer__check_callbacks(cb) < 0 || address == NULL || strlen(address) > PEER_ADDR_MAX ||
        (expected_id != NULL && (expected_id[0] == '\0' || strlen(expected_id) > MTLS_ID_MAX)))
        return -EINVAL;
    if ((rc = peer__split_address(address, false, host, sizeof(host), port, sizeof(port))) < 0)
        return rc;
    peer__fill_params(&prm, params);
    /* OpenSSL's host check (and SNI) when the id is a DNS name; the id
     * itself is compared in the verify callback in every case. */
    p = peer__new(loop, &prm, cb, arg, mtls_ctx_client(ctx), false,
                  expected_id != NULL &&
                          syntax_host_classify(expected_id, why, sizeof(why)) == SYNTAX_HOST_DNS
                      ? expected_id
                      : NULL);
    if (p == NULL)
        return -ENOMEM;
    snprintf(p->address, sizeof(p->address), "%s", address);
    snprintf(p->host, sizeof(p->host), "%s", host);
    snprintf(p->port, sizeof(p->port), "%s", port);
    snprintf(p->expected, sizeof(p->expected), "%s", expected_id != NULL ? expected_id : "");

    memset(&hints, 0, sizeof(hints));
    hints.ai_family = AF_UNSPEC;
    hints.ai_socktype = SOCK_STREAM;
    hints.ai_flags = AI_NUMERICSERV;
    p->gai.data = p;
    rc = uv_getaddrinfo(loop, &p->gai, peer_on_resolved, p->host, p->port, &hints);
    if (rc < 0) {
        /* The timer is the only handle: close it, then free without a
         * callback (a failing function never calls back). */
        uv_close((uv_handle_t *)&p->timer, peer_on_abandoned);
        return rc;
    }
    p->gai_pending = true;
    /* Called outside a callback (at start), the loop's clock may be old:
     * the timeout counts from now. */
    uv_update_time(loop);
    uv_timer_start(&p->timer, peer__on_timer, p->params.handshake_timeout_ms, 0);
    log_debug("peer client %s: connecting, expecting id=%s", p->address,
              p->expected[0] ? p->expected : "(any)");
    *out = p;
    return 0;
}
