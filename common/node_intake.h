/*
 * node_intake: what arrives on a node's submission socket, handled for the
 * node runtime (node.c): submissions into the outbox, batched, and `queue`
 * queries and actions on it.
 *
 *   submit        envelope checked (priority, 1..SMTP_MESSAGE_RCPT_MAX
 *                 mailboxes, size, expiry not past), message normalized
 *                 (smtp_message_normalize) or refused at once with the
 *                 reason; accepted ones are committed together after the
 *                 poll phase (uv_check) in one outbox transaction and
 *                 answered with their ids; an unset priority is a report
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
    struct outbox *outbox;
    void (*wake)(void *arg);
    void *wake_arg;
    bool accepting; /* false once stopping: requests are refused */
    /* Right side of the Message-IDs added at normalization; the owner
     * sets it (default "localhost.localdomain"). */
    char msgid_domain[SYNTAX_HOSTNAME_MAX + 1];
    struct node_intake_submission *batch;
    size_t nbatch, batch_cap;
    void (*closed)(void *arg);
    void *closed_arg;
};

/* The submit server's callbacks; their ctx is the intake. */
extern const struct submit_server_callbacks node_intake_callbacks;

void node_intake_init(struct node_intake *in, uv_loop_t *loop, struct outbox *outbox,
                      void (*wake)(void *arg), void *wake_arg);
/* Commits and answers what is queued now. */
void node_intake_flush(struct node_intake *in);
/* Flushes, then refuses every later request ("the daemon is stopping"). */
void node_intake_stop(struct node_intake *in);
/* Answers anything left with an error, frees the batch and closes the
 * handle; `closed` runs from the handle's close callback. */
void node_intake_close(struct node_intake *in, void (*closed)(void *arg), void *arg);

#endif
