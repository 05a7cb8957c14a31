/*
 * node_intake: what arrives on a node's submission socket, handled for the
 * node runtime (node.c): submissions into the outbox, batched, and `queue`
 * queries and actions on it.
 *
 *   submit        envelope checked (priority, 1..SMTP_MESSAGE_RCPT_MAX
 *                 mailboxes, size, expiry not past), message normalized
 *                 (smtp_message_normalize) or refused at once with the
 *                 reason; accepted ones are committed together after the
 *                 poll phase (uv_check) in one outbox transaction, on the
 *                 libuv thread pool (outbox_submit_async), and answered
 *                 with their ids once it is on disk. While that commit
 *                 runs, what arrives waits, to be committed together by
 *                 the next one (group commit, one in flight); an unset
 *                 priority is a report
 *   queue_query   pending and dead messages, without bodies
 *   queue_action  retry or drop by id; ERROR_NOT_FOUND for an unknown id
 *
 * Every submission and queue action is logged with the submitter's uid.
 * The `wake` callback runs after mail was committed or set for retry, so
 * the sender looks at the outbox at once.
 *
 * Ownership: the intake is embedded in its owner, borrows the outbox, and
 * owns its uv_check handle (closed by node_intake_close()).
 */
#ifndef SMTPSYNC_NODE_INTAKE_H
#define SMTPSYNC_NODE_INTAKE_H

#include <stdbool.h>
#include <stddef.h>

#include <uv.h>

#include "outbox.h"
#include "submit.h"
#include "syntax.h"

struct node_intake_submission;

struct node_intake {
    uv_check_t check; /* commits the batch after the poll phase */
    uv_loop_t *loop;
    struct outbox *outbox;
    void (*wake)(void *arg);
    void *wake_arg;
    bool accepting; /* false once stopping: requests are refused */
    /* Right side of the Message-IDs added at normalization; the owner
     * sets it (default "localhost.localdomain"). */
    char msgid_domain[SYNTAX_HOSTNAME_MAX + 1];
    struct node_intake_submission *batch;
    size_t nbatch, batch_cap;
    /* The batch being committed (swapped with `batch` when it starts):
     * its submissions, their outbox view and ids, borrowed by the outbox
     * until on_committed(). */
    struct node_intake_submission *flight;
    size_t nflight, flight_cap;
    struct outbox_new *flight_msgs;
    uint64_t *flight_ids;
    bool committing;
    bool closing;      /* node_intake_close() ran: `closed` waits for the commit */
    bool check_closed; /* the handle's close callback ran */
    void (*closed)(void *arg);
    void *closed_arg;
};

/* The submit server's callbacks; their ctx is the intake. */
extern const struct submit_server_callbacks node_intake_callbacks;

void node_intake_init(struct node_intake *in, uv_loop_t *loop, struct outbox *outbox,
                      void (*wake)(void *arg), void *wake_arg);
/* Starts committing what is queued now (answered when on disk); while a
 * commit runs, what is queued goes with the next one. */
void node_intake_flush(struct node_intake *in);
/* Flushes, then refuses every later request ("the daemon is stopping");
 * what was queued before is still committed and answered. */
void node_intake_stop(struct node_intake *in);
/* Answers what is queued and not yet committing with an error, and closes
 * the handle; a commit in flight completes (its submitters get their ids)
 * before `closed` runs, so the loop must run until then. */
void node_intake_close(struct node_intake *in, void (*closed)(void *arg), void *arg);

#endif
