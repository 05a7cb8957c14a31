/*
 * submit: the local submission socket (Unix domain, mode 0660) through
 * which `smtpsyncctl send`, `sendmail -t` and `queue` reach the node's
 * daemon. Frames (frame.h) carry, per request, one of:
 *   submit        -> submit_reply (the outbox id once committed, or an error)
 *   queue_query   -> admin_reply.queue (pending and dead, without bodies)
 *   queue_action  -> admin_reply (code, error)
 * Who may submit is decided by the socket's file mode and group; the
 * server also logs the peer's uid (SO_PEERCRED) with each submission.
 *
 * Server side (daemons): one libuv pipe server; every request is decoded
 * at the edge and handed to the callbacks below, which answer through
 * submit_reply_send() / submit_reply_admin(), possibly later (the outbox
 * commit is batched).
 *
 * Client side (smtpsyncctl): blocking calls with a timeout; they live here
 * so the CLI and the tests share one implementation of the protocol.
 */
#ifndef SMTPSYNC_SUBMIT_H
#define SMTPSYNC_SUBMIT_H

#include <stddef.h>
#include <stdint.h>

#include <uv.h>

#include "smtpsync.pb-c.h"

#define SUBMIT_FRAME_MAX  (11u * 1024 * 1024) /* a maximal message plus its envelope */
#define SUBMIT_TIMEOUT_MS 30000

/* ---- server ---- */

struct submit_server;
struct submit_request; /* one request awaiting its reply */

struct submit_server_callbacks {
    /* A submission; answer with submit_reply_send(). `uid` is the peer's. */
    void (*on_submit)(void *ctx, struct submit_request *req, const Smtpsync__SubmitRequest *msg,
                      unsigned uid);
    /* A queue query or action; answer with submit_reply_admin(). */
    void (*on_queue)(void *ctx, struct submit_request *req, const Smtpsync__Frame *frame,
                     unsigned uid);
};

/* Binds `path` (an existing socket file is replaced only if nothing
 * listens on it), chmod 0660. Returns 0 or a negative error. */
int submit_server_start(uv_loop_t *loop, const char *path, const struct submit_server_callbacks *cb,
                        void *ctx, struct submit_server **out);
/* Stops listening, closes client connections; pending requests are
 * answered with an error. `done` runs once everything is closed. */
void submit_server_stop(struct submit_server *s, void (*done)(void *arg), void *arg);

/* Answers a submission: id > 0 on success, else `error` (one line). The
 * request is freed; if its client went away meanwhile nothing is sent. */
void submit_reply_send(struct submit_request *req, uint64_t id, const char *error);
void submit_reply_admin(struct submit_request *req, const Smtpsync__AdminReply *reply);

/* ---- client ---- */

/* Connects, sends one request frame, waits for its reply (timeout_ms, 0:
 * SUBMIT_TIMEOUT_MS). The reply is freed with
 * smtpsync__frame__free_unpacked(). Errors: -ENOENT / -ECONNREFUSED (no
 * daemon), -ETIMEDOUT, ERROR_DECODE; `why` says which in a sentence. */
int submit_call(const char *path, const Smtpsync__Frame *request, unsigned timeout_ms,
                Smtpsync__Frame **reply, char *why, size_t whylen);

#endif
