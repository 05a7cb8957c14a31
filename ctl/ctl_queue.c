/*
 * ctl_queue: `smtpsyncctl queue`, the local daemon's outbox: list, retry,
 * drop. Everything goes through the submission socket (submit_call), so
 * the daemon, which owns the outbox, does the work.
 */
#include <assert.h>
#include <errno.h>
#include <inttypes.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "ctl.h"
#include "ctl_output.h"
#include "error.h"
#include "outbox.h"
#include "submit.h"

const char ctl_queue_usage[] =
    "usage: smtpsyncctl [global options] queue [--json]\n"
    "       smtpsyncctl [global options] queue retry ID\n"
    "       smtpsyncctl [global options] queue drop ID\n"
    "\n"
    "Lists the local daemon's mail: pending messages (id, priority, attempts,\n"
    "next try, expiry, recipients, last error) and dead ones, which will not\n"
    "be tried again (id, when, recipients, reason). Times are UTC.\n"
    "\n"
    "  retry ID   try message ID again now; a dead one goes back to the queue\n"
    "             with its attempts reset and a fresh expiry\n"
    "  drop ID    delete message ID, pending or dead, without sending it\n"
    "  --json     {\"pending\": [...], \"dead\": [...], \"truncated\": bool}\n"
    "  --help     print this help\n"
    "\n"
    "The daemon is reached on its submission socket (global --socket, or\n"
    "SMTPSYNC_SOCKET).\n";

enum {
    OPT_HELP = 'h',
    OPT_JSON = 256,
};

#define RCPTS_SHOWN 40 /* characters of the recipient list in a text row */

/* Sends one request; on success *reply is an AdminReply frame. Prints any
 * error; returns the exit status. */
static int call(const struct ctl *ctl, const char *what, Smtpsync__Frame *req,
                Smtpsync__Frame **reply)
{
    char why[512];
    int err;

    req->id = 1;
    err = submit_call(ctl_socket_path(ctl), req, 0, reply, why, sizeof(why));
    if (err == -ENOENT || err == -ECONNREFUSED || err == -EACCES || err == -EPERM ||
        err == -ENAMETOOLONG || err == -ENOTSOCK) {
        ctl_errorf("%s: cannot reach the smtpsync daemon: %s", what,
                   why[0] != '\0' ? why : error_str(err));
        return CTL_EXIT_FAIL;
    }
    if (err != 0) {
        ctl_errorf("%s: %s", what, why[0] != '\0' ? why : error_str(err));
        return CTL_EXIT_FAIL;
    }
    if ((*reply)->body_case != SMTPSYNC__FRAME__BODY_ADMIN_REPLY) {
        ctl_errorf("%s: the daemon answered with something else than an admin reply", what);
        smtpsync__frame__free_unpacked(*reply, NULL);
        *reply = NULL;
        return CTL_EXIT_FAIL;
    }
    return CTL_EXIT_OK;
}

/* The outbox's priorities are the protocol's (outbox.h). */
static_assert((int)OUTBOX_TOKENCODE == (int)SMTPSYNC__PRIORITY__PRIORITY_TOKENCODE, "priorities");
static_assert((int)OUTBOX_REPORT == (int)SMTPSYNC__PRIORITY__PRIORITY_REPORT, "priorities");

static const char *priority_name(Smtpsync__Priority p)
{
    return outbox_priority_name((enum outbox_priority)p);
}

static int64_t now_ms(void)
{
    struct timespec ts;

    clock_gettime(CLOCK_REALTIME, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

/* ---- JSON ---- */

static cJSON *time_or_null(int64_t ms)
{
    char buf[CTL_TIME_LEN];

    if (ms == 0)
        return cJSON_CreateNull();
    return cJSON_CreateString(ctl_output_time(ms, buf, sizeof(buf)));
}

static cJSON *message_json(const Smtpsync__OutboxMessage *m, bool dead)
{
    cJSON *o = cJSON_CreateObject(), *rcpts = NULL;
    bool ok;

    ok = o != NULL && ctl_output_json_add(o, "id", cJSON_CreateNumber((double)m->id)) &&
         ctl_output_json_add(o, "priority", cJSON_CreateString(priority_name(m->priority))) &&
         ctl_output_json_add(o, "attempts", cJSON_CreateNumber((double)m->attempts)) &&
         ctl_output_json_add(o, "created", time_or_null(m->created_ms)) &&
         ctl_output_json_add(o, "expires", time_or_null(m->expires_ms));
    if (ok && !dead)
        ok = ctl_output_json_add(o, "next_try", time_or_null(m->next_try_ms)) &&
             ctl_output_json_add(o, "last_error", ctl_output_json_string(m->last_error));
    if (ok && dead)
        ok = ctl_output_json_add(o, "dead_since", time_or_null(m->dead_ms)) &&
             ctl_output_json_add(o, "reason", ctl_output_json_string(m->dead_reason)) &&
             ctl_output_json_add(o, "last_error", ctl_output_json_string(m->last_error));
    ok = ok && ctl_output_json_add(o, "recipients", rcpts = cJSON_CreateArray());
    for (size_t i = 0; ok && i < m->n_rcpt_to; i++) {
        cJSON *r = cJSON_CreateString(m->rcpt_to[i]);
        if (r == NULL || !cJSON_AddItemToArray(rcpts, r)) {
            cJSON_Delete(r);
            ok = false;
        }
    }
    if (!ok) {
        cJSON_Delete(o);
        return NULL;
    }
    return o;
}

static int list_json(const Smtpsync__QueueReply *q, bool truncated)
{
    cJSON *doc = cJSON_CreateObject(), *pending = NULL, *dead = NULL;
    bool ok;

    ok = doc != NULL && ctl_output_json_add(doc, "pending", pending = cJSON_CreateArray()) &&
         ctl_output_json_add(doc, "dead", dead = cJSON_CreateArray()) &&
         ctl_output_json_add(doc, "truncated", cJSON_CreateBool(truncated));
    for (size_t i = 0; ok && q != NULL && i < q->n_pending; i++) {
        cJSON *m = message_json(q->pending[i], false);
        ok = m != NULL && cJSON_AddItemToArray(pending, m);
        if (!ok)
            cJSON_Delete(m);
    }
    for (size_t i = 0; ok && q != NULL && i < q->n_dead; i++) {
        cJSON *m = message_json(q->dead[i], true);
        ok = m != NULL && cJSON_AddItemToArray(dead, m);
        if (!ok)
            cJSON_Delete(m);
    }
    if (!ok) {
        cJSON_Delete(doc);
        ctl_errorf("queue: %s", error_str(-ENOMEM));
        return CTL_EXIT_FAIL;
    }
    return ctl_output_json_print(doc) < 0 ? CTL_EXIT_FAIL : CTL_EXIT_OK;
}

/* ---- text ---- */

/* "a@x, b@y" cut to RCPTS_SHOWN characters with "...", escaped. */
static const char *join_rcpts(const Smtpsync__OutboxMessage *m, char *buf, size_t len)
{
    char joined[RCPTS_SHOWN * 4 + 8];
    size_t used = 0;

    joined[0] = '\0';
    for (size_t i = 0; i < m->n_rcpt_to && used < RCPTS_SHOWN + 1; i++) {
        int n = snprintf(joined + used, sizeof(joined) - used, "%s%s", i > 0 ? ", " : "",
                         m->rcpt_to[i]);
        if (n < 0 || (size_t)n >= sizeof(joined) - used) {
            used = sizeof(joined) - 1;
            break;
        }
        used += (size_t)n;
    }
    if (used > RCPTS_SHOWN)
        memcpy(joined + RCPTS_SHOWN - 3, "...", 4);
    return ctl_quote(joined[0] != '\0' ? joined : "-", buf, len);
}

static const char *time_text(int64_t ms, char *buf, size_t len)
{
    if (ms == 0)
        return "-";
    return ctl_output_time(ms, buf, len);
}

static void list_text(const Smtpsync__QueueReply *q, bool truncated)
{
    char t1[CTL_TIME_LEN], t2[CTL_TIME_LEN], r[RCPTS_SHOWN * 4 + 8];
    size_t np = q != NULL ? q->n_pending : 0, nd = q != NULL ? q->n_dead : 0;
    int64_t now = now_ms();

    if (np == 0) {
        puts("no mail pending");
    } else {
        printf("PENDING (%zu)\n", np);
        printf("%-10s %-9s %-8s %-20s %-20s %-40s %s\n", "ID", "PRIORITY", "ATTEMPTS", "NEXT TRY",
               "EXPIRES", "RECIPIENTS", "LAST ERROR");
        for (size_t i = 0; i < np; i++) {
            const Smtpsync__OutboxMessage *m = q->pending[i];
            printf("%-10" PRIu64 " %-9s %-8" PRIu32 " %-20s %-20s %-40s ", m->id,
                   priority_name(m->priority), m->attempts,
                   m->next_try_ms <= now ? "due now" : time_text(m->next_try_ms, t1, sizeof(t1)),
                   time_text(m->expires_ms, t2, sizeof(t2)), join_rcpts(m, r, sizeof(r)));
            ctl_fputs_safe(m->last_error != NULL && m->last_error[0] != '\0' ? m->last_error : "-",
                           stdout);
            fputc('\n', stdout);
        }
    }
    if (nd == 0) {
        puts("no dead mail");
    } else {
        printf("DEAD (%zu)\n", nd);
        printf("%-10s %-9s %-8s %-20s %-40s %s\n", "ID", "PRIORITY", "ATTEMPTS", "DEAD SINCE",
               "RECIPIENTS", "REASON");
        for (size_t i = 0; i < nd; i++) {
            const Smtpsync__OutboxMessage *m = q->dead[i];
            printf("%-10" PRIu64 " %-9s %-8" PRIu32 " %-20s %-40s ", m->id,
                   priority_name(m->priority), m->attempts, time_text(m->dead_ms, t1, sizeof(t1)),
                   join_rcpts(m, r, sizeof(r)));
            ctl_fputs_safe(
                m->dead_reason != NULL && m->dead_reason[0] != '\0' ? m->dead_reason : "-", stdout);
            fputc('\n', stdout);
        }
    }
    if (truncated)
        puts("(the list is incomplete: the queue holds more than the daemon lists at once)");
}

/* ---- verbs ---- */

static int queue_list(struct ctl *ctl)
{
    Smtpsync__Frame req, *reply = NULL;
    Smtpsync__QueueQuery qq;
    const Smtpsync__AdminReply *a;
    bool truncated;
    char q[600];
    int rc;

    smtpsync__frame__init(&req);
    smtpsync__queue_query__init(&qq);
    req.body_case = SMTPSYNC__FRAME__BODY_QUEUE_QUERY;
    req.queue_query = &qq;
    if ((rc = call(ctl, "queue", &req, &reply)) != CTL_EXIT_OK)
        return rc;
    a = reply->admin_reply;
    if (a->code != 0) {
        ctl_errorf(
            "queue: the daemon could not list its queue: %s",
            ctl_quote(a->error != NULL && a->error[0] != '\0' ? a->error : error_str(a->code), q,
                      sizeof(q)));
        smtpsync__frame__free_unpacked(reply, NULL);
        return CTL_EXIT_FAIL;
    }
    /* Code 0 with a note: the listing is valid but incomplete. */
    truncated = a->error != NULL && a->error[0] != '\0';
    if (ctl->json) {
        rc = list_json(a->queue, truncated);
    } else {
        list_text(a->queue, truncated);
        rc = CTL_EXIT_OK;
    }
    smtpsync__frame__free_unpacked(reply, NULL);
    return rc;
}

static int queue_act(struct ctl *ctl, Smtpsync__QueueAction__Action action, const char *verb,
                     uint64_t id)
{
    Smtpsync__Frame req, *reply = NULL;
    Smtpsync__QueueAction qa;
    const Smtpsync__AdminReply *a;
    char what[32], q[600];
    int rc;

    snprintf(what, sizeof(what), "queue %s", verb);
    smtpsync__frame__init(&req);
    smtpsync__queue_action__init(&qa);
    qa.action = action;
    qa.id = id;
    req.body_case = SMTPSYNC__FRAME__BODY_QUEUE_ACTION;
    req.queue_action = &qa;
    if ((rc = call(ctl, what, &req, &reply)) != CTL_EXIT_OK)
        return rc;
    a = reply->admin_reply;
    if (a->code != 0) {
        ctl_errorf(
            "%s: %s", what,
            ctl_quote(a->error != NULL && a->error[0] != '\0' ? a->error : error_str(a->code), q,
                      sizeof(q)));
        smtpsync__frame__free_unpacked(reply, NULL);
        return CTL_EXIT_FAIL;
    }
    smtpsync__frame__free_unpacked(reply, NULL);
    if (ctl->json) {
        cJSON *doc = cJSON_CreateObject();
        if (doc == NULL || !ctl_output_json_add(doc, "id", cJSON_CreateNumber((double)id)) ||
            !ctl_output_json_add(doc, "action", cJSON_CreateString(verb))) {
            cJSON_Delete(doc);
            doc = NULL;
        }
        return ctl_output_json_print(doc) < 0 ? CTL_EXIT_FAIL : CTL_EXIT_OK;
    }
    if (action == SMTPSYNC__QUEUE_ACTION__ACTION__ACTION_RETRY)
        printf("message %" PRIu64 " will be tried again now\n", id);
    else
        printf("message %" PRIu64 " dropped\n", id);
    return CTL_EXIT_OK;
}

int ctl_queue_main(struct ctl *ctl, int argc, char **argv)
{
    static const struct option opts[] = {
        {"json", no_argument, NULL, OPT_JSON},
        {"help", no_argument, NULL, OPT_HELP},
        {NULL, 0, NULL, 0},
    };
    Smtpsync__QueueAction__Action action;
    const char *verb;
    uint64_t id;
    char q[96];
    int c;

    optind = 0;
    while ((c = ctl_getopt(argc, argv, ":h", opts)) != -1) {
        switch (c) {
        case OPT_HELP:
            fputs(ctl_queue_usage, stdout);
            return CTL_EXIT_OK;
        case OPT_JSON:
            ctl->json = true;
            break;
        default:
            return ctl_usage(ctl_queue_usage);
        }
    }
    if (optind == argc)
        return queue_list(ctl);

    verb = argv[optind];
    if (strcmp(verb, "retry") == 0)
        action = SMTPSYNC__QUEUE_ACTION__ACTION__ACTION_RETRY;
    else if (strcmp(verb, "drop") == 0)
        action = SMTPSYNC__QUEUE_ACTION__ACTION__ACTION_DROP;
    else
        return ctl_usage_error(ctl_queue_usage, "queue: unknown action '%s' (retry or drop)",
                               ctl_quote(verb, q, sizeof(q)));
    if (argc - optind != 2)
        return ctl_usage_error(ctl_queue_usage, "queue %s: give one message ID", verb);
    if (ctl_parse_u64(argv[optind + 1], 1, UINT64_MAX, &id) < 0)
        return ctl_usage_error(ctl_queue_usage,
                               "queue %s: '%s' is not a message id (1, 2, ...; see `smtpsyncctl "
                               "queue`)",
                               verb, ctl_quote(argv[optind + 1], q, sizeof(q)));
    return queue_act(ctl, action, verb, id);
}
