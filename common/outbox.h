/*
 * outbox: the node's durable mail queue, in its own LMDB environment
 * (<data_dir>/outbox, apart from the settings store, so mail traffic never
 * grows or locks the replicated store).
 *
 * Named databases:
 *   pending  id (8 octets big-endian) -> OutboxMessage
 *   due      priority(1) | next_try_ms(8, big-endian) | id(8) -> ""
 *            the order in which pending mail is tried: tokencodes before
 *            reports, then earliest next try
 *   dead     id -> OutboxMessage with dead_reason and dead_ms
 *   meta     "next_id" -> uint64
 *
 * outbox_submit() returns only after its transaction is committed (fsync):
 * an id given back to a submitter is on disk. Results of delivery attempts
 * are applied in batches (outbox_apply): after a crash between delivery
 * and that commit the message is sent again, so delivery is at least once.
 *
 * Messages handed out by outbox_take() are "leased" in memory: a later
 * take skips them until a successful outbox_apply() gives them back. Leases
 * do not survive a restart, which is what makes a crash redeliver.
 *
 * A `struct outbox` is used by one thread, its loop's; the libuv thread
 * pool runs only the write transactions of the outbox_*_async() jobs.
 */
#ifndef SMTPSYNC_OUTBOX_H
#define SMTPSYNC_OUTBOX_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <uv.h>

#define OUTBOX_ERROR_MAX   512 /* last_error / dead_reason octets kept */
#define OUTBOX_LIST_LIMIT  10000
#define OUTBOX_ADDRESS_MAX 320 /* octets of a recipient or envelope sender */

enum outbox_priority {
    OUTBOX_TOKENCODE = 1, /* = PRIORITY_TOKENCODE in smtpsync.proto */
    OUTBOX_REPORT = 2,
};

/* "tokencode" or "report", as `send --priority`, `queue`, the logs and the
 * metrics name them; "unknown" for any other value. */
const char *outbox_priority_name(enum outbox_priority p);

struct outbox;

struct outbox_params {
    const char *dir; /* created (0700) if missing */
    size_t map_size; /* initial map size; 0: 64 MiB. Grows on demand. */
};

/* A message as submitted. */
struct outbox_new {
    enum outbox_priority priority;
    int64_t expires_ms;    /* absolute; 0: now + the default for the priority */
    const char *mail_from; /* "" or NULL: the instance's from_address at delivery */
    const char *const *rcpts;
    size_t nrcpts;
    const char *message; /* normalized (smtp_message_normalize) */
    size_t message_len;
};

/* A stored message. Owned by whoever got it; outbox_msg_free() releases. */
struct outbox_msg {
    uint64_t id;
    enum outbox_priority priority;
    int64_t created_ms, expires_ms, next_try_ms;
    uint32_t attempts;
    char *last_error; /* "" if none */
    char *mail_from;  /* "" if none */
    char **rcpts;
    size_t nrcpts;
    char *message;
    size_t message_len;
    char *dead_reason; /* dead only, else "" */
    int64_t dead_ms;
};
void outbox_msg_free(struct outbox_msg *m);

/* Default expiry per priority, relative, in milliseconds. */
struct outbox_expiry {
    int64_t tokencode_ms; /* default 10 minutes */
    int64_t report_ms;    /* default 5 days */
};

int outbox_open(const struct outbox_params *params, struct outbox **out);
void outbox_close(struct outbox *ob);
void outbox_set_expiry(struct outbox *ob, const struct outbox_expiry *e);

/*
 * Stores `n` messages in one transaction, due now. ids[i] receives each
 * message's id. Returns 0, ERROR_INVALID (no recipient, bad priority),
 * ERROR_TOO_BIG, or an LMDB / -errno error: then nothing was stored.
 * Each message needs 1..SMTP_MESSAGE_RCPT_MAX recipients, each non-empty,
 * at most OUTBOX_ADDRESS_MAX octets and without CR or LF (mail_from too,
 * which may be empty), and at most SMTP_MESSAGE_MAX octets of message.
 */
int outbox_submit(struct outbox *ob, const struct outbox_new *msgs, size_t n, int64_t now_ms,
                  uint64_t *ids);

/*
 * outbox_submit() with its transaction (and fsync) on the libuv thread
 * pool, so that the loop keeps running meanwhile. The messages are checked
 * at once: an error outbox_submit() would give for them is returned and cb
 * never runs. Else 0, and cb(rc, arg) runs on the loop once the
 * transaction is committed (rc 0: ids[] filled, on disk) or failed
 * (nothing stored). Jobs (this and outbox_apply_async) run in the order
 * given, one group at a time: those queued while a group is committing
 * are committed together next, each in a nested transaction (its own
 * error fails it alone), with one fsync. `msgs` (and what it points to) and `ids` are
 * borrowed until cb runs. outbox_close() only once every cb ran
 * (outbox_busy() false). While a job is queued or running, outbox_take()
 * does not write: expired and damaged records it meets are neither handed
 * out nor moved until the running jobs are done (then they are, on the
 * loop). The other synchronous writers work but wait for the running
 * jobs' commit.
 */
typedef void (*outbox_async_cb)(int rc, void *arg);
int outbox_submit_async(struct outbox *ob, uv_loop_t *loop, const struct outbox_new *msgs, size_t n,
                        int64_t now_ms, uint64_t *ids, outbox_async_cb cb, void *arg);
/* True while an outbox_*_async() job is queued or running (callbacks
 * included). */
bool outbox_busy(const struct outbox *ob);

/*
 * Hands out up to `max` due messages (next_try_ms <= now_ms), not leased,
 * tokencodes first, and leases them. Messages whose expiry has passed are
 * not handed out: they are moved to dead ("expired after N attempts: last
 * error") in the same call, and so are records that fail to decode ("corrupt
 * record (...)", their bytes kept as the message, no recipients), so that
 * one damaged record cannot stop the queue. *n receives the count; out[]
 * entries are owned by the caller. Returns 0 or an error.
 */
int outbox_take(struct outbox *ob, int64_t now_ms, struct outbox_msg **out, size_t max, size_t *n);

/* The earliest next_try_ms among pending, unleased messages; INT64_MAX when
 * none; 0 on an error (due at once: the take that follows reports it). */
int64_t outbox_next_due(struct outbox *ob);

enum outbox_outcome {
    OUTBOX_DELIVERED, /* remove */
    OUTBOX_DEFER,     /* attempts + 1, next_try_ms and last_error set */
    OUTBOX_DEAD,      /* attempts + 1, move to dead with the reason */
    OUTBOX_RELEASE,   /* give the lease back unchanged (session cancelled before trying) */
};

struct outbox_result {
    uint64_t id;
    enum outbox_outcome outcome;
    int64_t next_try_ms; /* DEFER */
    const char *error;   /* DEFER: last error; DEAD: reason */
};

/*
 * Applies results in one transaction and ends their leases. An unknown id
 * is skipped (dropped meanwhile by an operator). Errors are kept to
 * OUTBOX_ERROR_MAX octets, cut on a UTF-8 boundary, control characters as
 * spaces. Returns 0, ERROR_INVALID (an unknown outcome), or an LMDB /
 * -errno error (a full disk): then nothing is applied and every lease
 * stays, so that the messages are not handed out again while their
 * outcome waits; the caller applies the results again later. A batch of
 * RELEASE results only writes nothing and cannot fail that way.
 */
int outbox_apply(struct outbox *ob, const struct outbox_result *results, size_t n, int64_t now_ms);

/* The recipients a DEFER result keeps: those the server neither accepted
 * nor refused for good, when it accepted others (the message went to them
 * and must not go to them again). */
struct outbox_rcpts {
    const char *const *rcpts;
    size_t nrcpts; /* 0: the message keeps every recipient */
};

/* outbox_apply() where, when `rcpts` is not NULL, rcpts[i] narrows the
 * recipients of the DEFER result results[i] to those of its recipients it
 * names (in their stored order), in the same transaction. A list that
 * names none of them changes nothing. ERROR_INVALID for a list given with
 * another outcome or holding a NULL. */
int outbox_apply_rcpts(struct outbox *ob, const struct outbox_result *results,
                       const struct outbox_rcpts *rcpts, size_t n, int64_t now_ms);

/* outbox_apply_rcpts() on the thread pool, as outbox_submit_async(): the
 * checks at once (ERROR_INVALID, no callback), the transaction in a job of
 * the same queue, the leases ended on the loop once it is committed, then
 * cb(rc, arg); on failure the leases stay (as outbox_apply). `results`,
 * `rcpts` (may be NULL) and what they point to are borrowed until cb. */
int outbox_apply_async(struct outbox *ob, uv_loop_t *loop, const struct outbox_result *results,
                       const struct outbox_rcpts *rcpts, size_t n, int64_t now_ms,
                       outbox_async_cb cb, void *arg);

/* Operator actions. retry: a dead message back to pending (attempts reset,
 * expiry renewed from now) or a pending one due now; drop: removes from
 * either. ERROR_NOT_FOUND when the id is in neither. */
int outbox_retry(struct outbox *ob, uint64_t id, int64_t now_ms);
int outbox_drop(struct outbox *ob, uint64_t id);

/* Lists messages (without their bodies: message is NULL) in id order, the
 * first OUTBOX_LIST_LIMIT of them. cb runs outside any transaction (it may
 * use the outbox); a non-zero return stops the walk and is returned. A
 * record that fails to decode: ERROR_CORRUPT, before any callback. */
typedef int (*outbox_each_cb)(const struct outbox_msg *m, bool dead, void *arg);
int outbox_each(struct outbox *ob, bool dead, outbox_each_cb cb, void *arg);

/* Checks that every record decodes, every pending message has exactly its
 * due key and no other key exists, no id is both pending and dead, and
 * next_id is above every id. 0 or ERROR_CORRUPT; reads the whole outbox. */
int outbox_verify(struct outbox *ob);

struct outbox_depth {
    uint64_t pending[3]; /* by priority; [0] unused */
    uint64_t dead;
};
int outbox_depth(struct outbox *ob, struct outbox_depth *out);

#endif
