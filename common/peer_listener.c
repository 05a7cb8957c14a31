/*
 * peer_listener: the listening side of peer.h: one TCP listener whose
 * accepted connections are peers (peer.c) in its list, so that closing
 * it closes them, and a TLS context swapped on reload.
 *
 * A connection beyond max_peers, or one that cannot be given memory, is
 * accepted and closed at once (logged): libuv stops watching a listener
 * whose pending connection is left unaccepted.
 */
#include "peer_internal.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <arpa/inet.h>
#include <netdb.h>

#include "error.h"
#include "log.h"

void peer__listener_maybe_free(struct peer_listener *l)
{
    if (!l->closing || !l->handle_closed || l->count > 0)
        return;
    if (l->on_closed != NULL)
        l->on_closed(l->closed_arg);
    mtls_ctx_unref(l->ctx);
    free(l);
}

void peer__listener_add(struct peer_listener *l, struct peer *p)
{
    p->prev = NULL;
    p->next = l->peers;
    if (l->peers != NULL)
        l->peers->prev = p;
    l->peers = p;
    l->count++;
}

void peer__listener_forget(struct peer_listener *l, struct peer *p)
{
    if (p->prev != NULL)
        p->prev->next = p->next;
    else
        l->peers = p->next;
    if (p->next != NULL)
        p->next->prev = p->prev;
    l->count--;
}

static void peer_on_refused_close(uv_handle_t *h)
{
    free(h);
}

/* Takes the pending connection and closes it at once: libuv stops watching
 * a listener whose connection is left unaccepted. */
static void peer_listener_refuse(struct peer_listener *l, uv_stream_t *server, const char *why)
{
    uv_tcp_t *t = malloc(sizeof(*t));

    log_warnx("peer listener port=%d: connection refused at accept: %s", l->port, why);
    if (t == NULL || uv_tcp_init(l->loop, t) < 0) {
        free(t);
        return;
    }
    (void)uv_accept(server, (uv_stream_t *)t);
    uv_close((uv_handle_t *)t, peer_on_refused_close);
}

static void peer_on_connection(uv_stream_t *server, int status)
{
    struct peer_listener *l = server->data;

    if (status < 0) {
        log_warnx("peer listener port=%d: accept failed: %s", l->port, uv_strerror(status));
        return;
    }
    if (l->closing)
        peer_listener_refuse(l, server, "the listener is closing");
    else if (l->count >= l->params.max_peers)
        peer_listener_refuse(l, server, "too many connections");
    else if (peer__accept(l, server) < 0)
        peer_listener_refuse(l, server, "out of memory");
}

static void peer_on_listener_abandoned(uv_handle_t *h)
{
    free(h->data);
}

int peer_listen(uv_loop_t *loop, const char *address, struct mtls_ctx *ctx,
                const struct peer_params *params, const struct peer_callbacks *cb, void *arg,
                struct peer_listener **out)
{
    struct peer_listener *l;
    struct addrinfo hints;
    uv_getaddrinfo_t gai;
    struct sockaddr_storage ss;
    int sslen = sizeof(ss);
    char host[SYNTAX_HOSTNAME_MAX + 1];
    char port[8];
    int rc;

    *out = NULL;
    if (peer__check_callbacks(cb) < 0 || address == NULL)
        return -EINVAL;
    if ((rc = peer__split_address(address, true, host, sizeof(host), port, sizeof(port))) < 0)
        return rc;
    l = calloc(1, sizeof(*l));
    if (l == NULL)
        return -ENOMEM;
    l->loop = loop;
    peer__fill_params(&l->params, params);
    l->cb = *cb;
    l->arg = arg;

    memset(&hints, 0, sizeof(hints));
    hints.ai_family = AF_UNSPEC;
    hints.ai_socktype = SOCK_STREAM;
    hints.ai_flags = AI_PASSIVE | AI_NUMERICSERV;
    /* Synchronous: a daemon resolves its own listen address once, at start. */
    if ((rc = uv_getaddrinfo(loop, &gai, NULL, host, port, &hints)) < 0) {
        free(l);
        return rc;
    }
    if ((rc = uv_tcp_init(loop, &l->tcp)) < 0) {
        uv_freeaddrinfo(gai.addrinfo);
        free(l);
        return rc;
    }
    l->tcp.data = l;
    rc = uv_tcp_bind(&l->tcp, gai.addrinfo->ai_addr, 0);
    uv_freeaddrinfo(gai.addrinfo);
    if (rc == 0)
        rc = uv_listen((uv_stream_t *)&l->tcp, 128, peer_on_connection);
    if (rc == 0)
        rc = uv_tcp_getsockname(&l->tcp, (struct sockaddr *)&ss, &sslen);
    if (rc < 0) {
        uv_close((uv_handle_t *)&l->tcp, peer_on_listener_abandoned);
        return rc;
    }
    l->port =
        ntohs(ss.ss_family == AF_INET6 ? ((const struct sockaddr_in6 *)(const void *)&ss)->sin6_port
                                       : ((const struct sockaddr_in *)(const void *)&ss)->sin_port);
    l->ctx = mtls_ctx_ref(ctx);
    log_info("peer listening address=%s port=%d id=%s", address, l->port, mtls_ctx_id(ctx));
    *out = l;
    return 0;
}

int peer_listener_port(const struct peer_listener *l)
{
    return l->port;
}

size_t peer_listener_count(const struct peer_listener *l)
{
    return l->count;
}

void peer_listener_set_ctx(struct peer_listener *l, struct mtls_ctx *ctx)
{
    struct mtls_ctx *old = l->ctx;

    l->ctx = mtls_ctx_ref(ctx);
    mtls_ctx_unref(old);
    log_info("peer listener port=%d: new TLS context id=%s", l->port, mtls_ctx_id(ctx));
}

static void peer_on_listener_close(uv_handle_t *h)
{
    struct peer_listener *l = h->data;

    l->handle_closed = true;
    peer__listener_maybe_free(l);
}

void peer_listener_close(struct peer_listener *l, void (*on_closed)(void *arg), void *arg)
{
    if (l->closing)
        return;
    l->closing = true;
    l->on_closed = on_closed;
    l->closed_arg = arg;
    uv_close((uv_handle_t *)&l->tcp, peer_on_listener_close);
    /* peer_close never frees at once: the list stays walkable. */
    for (struct peer *p = l->peers; p != NULL; p = p->next)
        peer_close(p, 0, "listener closed");
}
