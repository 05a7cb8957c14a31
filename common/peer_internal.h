/*
 * peer internals: what peer.c (one connection: handshake, frames, closing)
 * and peer_listener.c (listening, accepting, reload) share. Never included
 * from outside common/ (STYLE.md, point 2).
 */
#ifndef SMTPSYNC_PEER_INTERNAL_H
#define SMTPSYNC_PEER_INTERNAL_H

#include <stdbool.h>
#include <stddef.h>
#include <time.h>

#include <uv.h>

#include "frame.h"
#include "mtls.h"
#include "peer.h"
#include "syntax.h"
#include "tlsio.h"

#define PEER_READ_BUF (64u * 1024)

/* The events of the state machine (peer_event). */
enum peer_event {
    PEER_EV_CONNECTED, /* client: TCP connected */
    PEER_EV_DATA,      /* octets from the network */
    PEER_EV_EOF,       /* the network stream ended */
    PEER_EV_IOERR,     /* a read or write failed (status) */
    PEER_EV_TIMEOUT,   /* the phase's timer fired */
    PEER_EV_SHUTDOWN,  /* our TCP shutdown completed */
};

struct peer_listener {
    uv_loop_t *loop;
    uv_tcp_t tcp;
    struct mtls_ctx *ctx;
    struct peer_params params;
    struct peer_callbacks cb;
    void *arg;
    struct peer *peers; /* accepted and not yet freed */
    size_t count;
    int port;
    bool closing;
    bool handle_closed;
    void (*on_closed)(void *arg);
    void *closed_arg;
};

struct peer {
    enum peer_state state;
    uv_loop_t *loop;
    struct peer_listener *listener; /* NULL for a client */
    struct peer *prev, *next;       /* in the listener's list */
    struct peer_params params;
    struct peer_callbacks cb;
    void *arg;
    struct tlsio *tls;
    struct frame_reader reader;

    uv_tcp_t tcp;
    uv_timer_t timer;
    uv_connect_t connect;
    uv_shutdown_t shutdown;
    uv_getaddrinfo_t gai;
    struct addrinfo *ai, *ai_cur;

    unsigned closes;       /* handle closes not yet called back */
    bool gai_pending;      /* the resolver still holds gai */
    bool tcp_open;         /* tcp initialised and not being closed */
    bool connected;        /* tcp connected: reads and writes allowed */
    bool finale;           /* the handles are being closed for good */
    bool shutdown_pending; /* our TCP shutdown not yet complete */
    bool shutdown_done;
    bool remote_eof; /* the peer's EOF (or a read error) seen */
    bool verified;   /* the verify callback accepted the leaf */
    bool handshake_done;
    bool farewell; /* send Error{id 0} when entering CLOSING */

    int err;
    char reason[PEER_REASON_MAX];
    char why[PEER_REASON_MAX]; /* a refusal decided in the verify callback */
    char address[PEER_ADDR_MAX + 1];
    char host[SYNTAX_HOSTNAME_MAX + 1];
    char port[8];
    char expected[MTLS_ID_MAX + 1];
    char id[MTLS_ID_MAX + 1];
    char remote[PEER_ADDR_MAX + 1];
    char attempts[PEER_REASON_MAX]; /* failed connect attempts, for the reason */
    int attempt_err;                /* the last attempt's error */
    unsigned nattempts;
    unsigned frames_in; /* frames received */
    time_t cert_expiry;
    char rbuf[PEER_READ_BUF];
};

/* peer.c: the connection */

/* 0, or -EINVAL when a required callback is missing. */
int peer__check_callbacks(const struct peer_callbacks *cb);
/* `in` (NULL: all defaults) with its zeros replaced by the defaults. */
void peer__fill_params(struct peer_params *out, const struct peer_params *in);
/* Accepts the pending connection of `server` as a new peer of `l`, in
 * HANDSHAKE. -ENOMEM (nothing accepted: the caller refuses it); any later
 * failure ends in the peer's on_close. */
int peer__accept(struct peer_listener *l, uv_stream_t *server);
/* A new peer with its timer and TLS session (the TCP handle is the
 * caller's); NULL when out of memory. */
struct peer *peer__new(uv_loop_t *loop, const struct peer_params *params,
                       const struct peer_callbacks *cb, void *arg, SSL_CTX *ssl_ctx, bool server,
                       const char *host);
/* The state machine's one event function. */
void peer__event(struct peer *p, enum peer_event ev, int status, const char *data, size_t len);
/* Decides the end (error, reason, logged once) and enters CLOSING. */
void peer__fail(struct peer *p, int err, bool farewell, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));
void peer__tcp_close(struct peer *p);
/* Every handle closed and no request outstanding: on_close, then free. */
void peer__maybe_finalize(struct peer *p);
void peer__on_timer(uv_timer_t *t);

/* peer_connect.c */

/* "host:port" / "[v6]:port" into host and port text; port 0 only if
 * allow_zero. 0 or -EINVAL. */
int peer__split_address(const char *address, bool allow_zero, char *host, size_t hostlen,
                        char *port, size_t portlen);
/* "ip:port" or "[ip6]:port". */
void peer__format_addr(const struct sockaddr *sa, char *buf, size_t len);
/* Tries the next resolved address (CONNECTING). */
void peer__connect_next(struct peer *p);

/* peer_listener.c */

/* Adds a new peer to its listener's list. */
void peer__listener_add(struct peer_listener *l, struct peer *p);
/* The peer, being freed, leaves its listener's list. */
void peer__listener_forget(struct peer_listener *l, struct peer *p);
/* Frees a closing listener once its handle and its last peer are gone. */
void peer__listener_maybe_free(struct peer_listener *l);

#endif
