/*
 * peer: one framed mutual-TLS connection on libuv, the transport of
 * replication and of the admin API. Frames are smtpsync.Frame messages with
 * a 4-octet length (frame.h), inside TLS through memory BIOs (tlsio.h),
 * with the deployment's contexts (mtls.h).
 *
 * A connection is an explicit state machine:
 *
 *   CONNECTING -> HANDSHAKE -> OPEN -> CLOSING -> CLOSED
 *   (client:      resolve and connect; a server's connection starts at
 *                 HANDSHAKE; any state may go to CLOSING)
 *
 * Identity and refusal, at the handshake:
 *   - both sides verify the other's chain against the deployment CA;
 *   - the peer's id is its certificate's first DNS subjectAltName, else its
 *     CN (mtls_cert_id);
 *   - a client requires the server's id to be `expected_id` exactly (and,
 *     when the id is a DNS name, OpenSSL's host check too), unless it
 *     passes NULL (smtpsyncctl: any node of the deployment);
 *   - a server asks `authorize` (membership, admin roles) with the id.
 * A refusal fails the handshake, is logged with its reason and ends in
 * on_close. With TLS 1.3 a client completes its side of the handshake
 * before the server has judged its certificate: a refused client may see
 * on_open, then on_close(ERROR_TLS, "refused by the server: <alert>").
 *
 * Frames are decoded at the edge: on_frame only ever sees a whole, decoded
 * Frame with a body. The connection is closed, with a logged reason, on a
 * frame over `max_frame`, a frame that does not decode, a stream that ends
 * in the middle of a frame ("truncated frame"), TLS failures, and timeouts:
 *   - handshake: from the start (resolution and connect included, for a
 *     client) to OPEN;
 *   - idle: no complete frame received for that long while OPEN (0: none).
 *     A protocol that keeps quiet connections open longer sends something
 *     (a StatusQuery, say) more often than that.
 *
 * The farewell: before closing a connection that was OPEN for a reason
 * other than an orderly peer_close(p, 0, ...), a peer sends a Frame with
 * id 0 carrying Error{code, message: the reason}, then close_notify. A
 * receiver does not pass such a frame (Error, id 0) to on_frame: it closes
 * with that code and "closed by the peer: <message>" as the reason. So
 * applications give their own Error replies a non-zero id.
 *
 * Writing: peer_send() packs, encrypts and hands the octets to libuv at
 * once. The write queue (octets libuv has not yet given to the kernel) is
 * bounded by `max_queue`: a frame that would pass it means the peer does
 * not read; the connection is then closed (-ENOBUFS) rather than left to
 * grow. A frame larger than `max_frame` is refused (ERROR_TOO_BIG) and the
 * connection stays open.
 *
 * Ownership and lifetime: a peer owns its handles (embedded; freed after
 * the last close callback, STYLE.md 10), its TLS session and its buffers.
 * on_close is called exactly once for every peer that was created, whether
 * or not it reached on_open, and is its last callback: the peer is freed
 * when on_close returns, and the pointer must not be used after it. A
 * listener owns its accepted peers: peer_listener_close() closes them all.
 * The plaintext buffers of this module (packed frames, decrypted records,
 * the reader's buffer at the end) are wiped before being freed, as frames
 * may carry passwords in clear. Everything runs on the loop's thread;
 * nothing here is thread-safe.
 *
 * Files: peer.c (the connection: TLS, frames, closing), peer_connect.c
 * (addresses, resolving, connecting), peer_listener.c (listening,
 * accepting, reload); peer_internal.h between them.
 *
 * Callbacks may call peer_send() and peer_close() on any peer, and
 * peer_listener_close(); never uv_run() or uv_loop_close(). `authorize`
 * runs inside the TLS handshake and must only decide (it may call
 * peer_set_arg()).
 */
#ifndef SMTPSYNC_PEER_H
#define SMTPSYNC_PEER_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <time.h>

#include <uv.h>

#include "mtls.h"
#include "smtpsync.pb-c.h"

#define PEER_STATE_MAP(XX)                                                                         \
    XX(CONNECTING)                                                                                 \
    XX(HANDSHAKE)                                                                                  \
    XX(OPEN)                                                                                       \
    XX(CLOSING)                                                                                    \
    XX(CLOSED)

enum peer_state {
#define XX(name) PEER_##name,
    PEER_STATE_MAP(XX)
#undef XX
};

#define PEER_REASON_MAX                   256
#define PEER_ADDR_MAX                     (SYNTAX_HOSTNAME_MAX + 8) /* "[host]:65535" */
#define PEER_HANDSHAKE_TIMEOUT_DEFAULT_MS 10000u
#define PEER_MAX_PEERS_DEFAULT            1024u

struct peer_params {
    /* The largest frame body sent or received; 0: FRAME_MAX_DEFAULT. */
    size_t max_frame;
    /* Octets waiting for the kernel before the peer is deemed not to read;
     * 0: 2 * max_frame + 64 KiB. */
    size_t max_queue;
    /* Connect (client) and handshake, and the wait for a closing peer to
     * take our last octets; 0: PEER_HANDSHAKE_TIMEOUT_DEFAULT_MS. */
    uint64_t handshake_timeout_ms;
    /* No frame received for this long closes an OPEN connection; 0: never. */
    uint64_t idle_timeout_ms;
    /* Listener: connections at once beyond which new ones are closed at
     * accept (logged); 0: PEER_MAX_PEERS_DEFAULT. */
    unsigned max_peers;
};

struct peer;
struct peer_listener;

/*
 * What a peer tells its owner. `arg` is the listener's (for accepted peers)
 * or peer_connect()'s, until peer_set_arg() changes it for that peer.
 */
struct peer_callbacks {
    /* Server side: may the certificate id `peer_id` (CA-verified) connect?
     * true accepts; false refuses with a one-line reason in `why`. NULL
     * accepts every certificate the CA verified. Unused by clients. */
    bool (*authorize)(void *arg, struct peer *p, const char *peer_id, char *why, size_t whylen);
    /* The handshake completed and the peer is who it must be. */
    void (*on_open)(void *arg, struct peer *p, const char *peer_id);
    /* One decoded frame, borrowed for the duration of the call. */
    void (*on_frame)(void *arg, struct peer *p, const Smtpsync__Frame *f);
    /* The end, always called, last. `err` is 0 for an orderly close (either
     * side's peer_close(p, 0, ...), the peer's close_notify, the listener
     * closing), else negative: ERROR_TLS (handshake, certificate,
     * refusal), ERROR_TOO_BIG, ERROR_DECODE (undecodable or truncated
     * frame), -ETIMEDOUT, -ENOBUFS (not reading), -ECONNRESET (closed
     * without close_notify), a libuv error, or the code of the peer's
     * farewell. `reason` is one line. */
    void (*on_close)(void *arg, struct peer *p, int err, const char *reason);
};

/*
 * Listens on `address` ("host:port", "[v6]:port"; host an IP literal or a
 * name resolved now; port 0 picks a free one, see peer_listener_port()).
 * Takes a reference on `ctx` (see peer_listener_set_ctx()). `params` and
 * `cb` are copied; NULL params means every default. on_open, on_frame and
 * on_close are required.
 * @return 0, -EINVAL (bad address or callbacks), a libuv error (e.g.
 *         UV_EADDRINUSE), -ENOMEM. No callback is called on failure.
 */
int peer_listen(uv_loop_t *loop, const char *address, struct mtls_ctx *ctx,
                const struct peer_params *params, const struct peer_callbacks *cb, void *arg,
                struct peer_listener **out);

/* The bound port. */
int peer_listener_port(const struct peer_listener *l);

/* Connections of this listener not yet closed. */
size_t peer_listener_count(const struct peer_listener *l);

/* A reload: connections accepted from now on use `ctx` (a reference is
 * taken, the old one's dropped); those already accepted keep theirs. */
void peer_listener_set_ctx(struct peer_listener *l, struct mtls_ctx *ctx);

/*
 * Stops listening and closes every connection of the listener (orderly,
 * err 0, "listener closed"); each gets its on_close. Then `on_closed` (may
 * be NULL) is called with `arg` and the listener is freed.
 */
void peer_listener_close(struct peer_listener *l, void (*on_closed)(void *arg), void *arg);

/*
 * Connects to `address` ("host:port", "[v6]:port"; a name is resolved and
 * its addresses tried in turn) with the client context of `ctx`, requiring
 * the server's certificate id to be `expected_id` (NULL accepts any
 * certificate the CA verified: for smtpsyncctl, which learns the id in
 * on_open). On success *out is the new peer in CONNECTING; every outcome,
 * a failure to connect included, ends in on_close. `params` and `cb` are
 * copied; `ctx` need not outlive the call (the session holds its SSL_CTX).
 * @return 0, -EINVAL (bad address, empty or too long expected_id, missing
 *         callbacks), -ENOMEM, a libuv error. No callback is called on
 *         failure.
 */
int peer_connect(uv_loop_t *loop, const char *address, struct mtls_ctx *ctx,
                 const char *expected_id, const struct peer_params *params,
                 const struct peer_callbacks *cb, void *arg, struct peer **out);

/*
 * Queues one frame (packed, encrypted, handed to libuv at once).
 * @return 0; -ENOTCONN unless OPEN (the frame is dropped); ERROR_TOO_BIG
 *         when it exceeds max_frame (the connection stays open);
 *         ERROR_INVALID for a frame without a body; -ENOBUFS when the write
 *         queue would pass max_queue (the connection is being closed);
 *         ERROR_TLS or a libuv error (also closing); -ENOMEM.
 */
int peer_send(struct peer *p, const Smtpsync__Frame *f);

/*
 * Closes the connection: `err` 0 for an orderly close, else an error of the
 * convention with `reason` telling why (sent in the farewell, logged). What
 * was queued is still sent (within the handshake timeout). on_close follows,
 * from the loop, never from within this call. Does nothing when already
 * closing.
 */
void peer_close(struct peer *p, int err, const char *reason);

void peer_set_arg(struct peer *p, void *arg);
void *peer_arg(const struct peer *p);

enum peer_state peer_state(const struct peer *p);
const char *peer_state_name(enum peer_state s);

/* The verified id of the peer ("" before it is known). */
const char *peer_id(const struct peer *p);
/* The remote address, "ip:port" or "[ip6]:port" ("" before connected). */
const char *peer_remote(const struct peer *p);
/* The peer certificate's notAfter (Unix time), -1 before the handshake. */
time_t peer_cert_expiry(const struct peer *p);
/* "TLSv1.3", "TLSv1.2"; "" before the handshake. */
const char *peer_tls_version(const struct peer *p);
/* Octets waiting in the write queue. */
size_t peer_queued(const struct peer *p);
/* True for a connection made by peer_connect(). */
bool peer_is_client(const struct peer *p);

#endif
