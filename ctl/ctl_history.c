/*
 * ctl_history: the revision verbs, history, diff and rollback, on a local
 * store or through a daemon; the rows are printed by the same code.
 */
#include <errno.h>
#include <inttypes.h>
#include <stdlib.h>
#include <string.h>

#include "ctl.h"
#include "ctl_output.h"
#include "error.h"
#include "store.h"

const char ctl_history_usage[] =
    "usage: smtpsyncctl [global options] history [--limit N] [--json]\n"
    "\n"
    "Lists the saved revisions, newest first: revision, time (UTC), epoch,\n"
    "actor, short state hash, instances changed, and the comment (\"rollback\n"
    "to R\" for a rollback).\n"
    "\n"
    "  --limit N   only the newest N revisions\n"
    "  --json      a JSON array of revision objects\n"
    "  --help      print this help\n";

const char ctl_diff_usage[] =
    "usage: smtpsyncctl [global options] diff R1 R2 [--json]\n"
    "\n"
    "Prints every field that differs between revisions R1 and R2, one\n"
    "\"instance.field: old -> new\" per line. The password shows only as\n"
    "******** (changed or not).\n"
    "\n"
    "  --json      a JSON array of {\"instance\", \"field\", \"old\", \"new\"}\n"
    "  --help      print this help\n";

const char ctl_rollback_usage[] =
    "usage: smtpsyncctl [global options] rollback R [--comment TEXT]\n"
    "\n"
    "Makes the settings of revision R current again, as a new revision.\n"
    "Drafts are left alone.\n"
    "\n"
    "  --comment TEXT  why, recorded in the history\n"
    "  --json          print {\"revision\": N, \"rollback_of\": R}\n"
    "  --help          print this help\n";

enum {
    OPT_HELP = 'h',
    OPT_LIMIT = 256,
    OPT_JSON,
    OPT_COMMENT,
};

/* --- history -------------------------------------------------------------- */

struct history_ctx {
    cJSON *rows; /* JSON mode */
    size_t shown;
};

/* "a, b (deleted)" into buf, cut with "..." when long (text mode only). */
static void join_instances(const struct store_revision *r, char *buf, size_t len)
{
    size_t used = 0;

    buf[0] = '\0';
    for (size_t i = 0; i < r->nchanges; i++) {
        char id[SETTINGS_INSTANCE_MAX * 4 + 8];
        int n =
            snprintf(buf + used, len - used, "%s%s%s", i > 0 ? ", " : "",
                     ctl_quote(r->instances[i], id, sizeof(id)), r->deleted[i] ? " (deleted)" : "");
        if (n < 0 || (size_t)n >= len - used) {
            if (len >= 4)
                memcpy(buf + len - 4, "...", 4);
            return;
        }
        used += (size_t)n;
    }
}

static int history_text(const struct store_revision *r)
{
    char when[CTL_TIME_LEN], hash[CTL_HASH_HEX], actor[STORE_ACTOR_MAX * 4 + 4], inst[512];

    ctl_output_hex(r->hash, STORE_HASH_LEN, hash);
    hash[CTL_SHORT_HASH] = '\0';
    join_instances(r, inst, sizeof(inst));
    printf("%-8" PRIu64 " %-20s %-5" PRIu64 " %-16s %-12s %-20s ", r->revision,
           ctl_output_time(r->time_ms, when, sizeof(when)), r->epoch,
           ctl_quote(r->actor, actor, sizeof(actor)), hash, inst[0] != '\0' ? inst : "-");
    if (r->rollback_of != 0)
        printf("rollback to %" PRIu64 "%s", r->rollback_of,
               r->comment != NULL && r->comment[0] != '\0' ? ": " : "");
    if (r->comment != NULL)
        ctl_fputs_safe(r->comment, stdout);
    fputc('\n', stdout);
    return 0;
}

static int history_json(const struct store_revision *r, cJSON *rows)
{
    char when[CTL_TIME_LEN], hash[CTL_HASH_HEX];
    cJSON *row = cJSON_CreateObject(), *instances, *changes;
    bool ok;

    if (row == NULL || !cJSON_AddItemToArray(rows, row)) {
        cJSON_Delete(row);
        return -ENOMEM;
    }
    ctl_output_hex(r->hash, STORE_HASH_LEN, hash);
    ok = ctl_output_json_add(row, "revision", cJSON_CreateNumber((double)r->revision)) &&
         ctl_output_json_add(row, "time",
                             cJSON_CreateString(ctl_output_time(r->time_ms, when, sizeof(when)))) &&
         ctl_output_json_add(row, "time_ms", cJSON_CreateNumber((double)r->time_ms)) &&
         ctl_output_json_add(row, "epoch", cJSON_CreateNumber((double)r->epoch)) &&
         ctl_output_json_add(row, "actor", ctl_output_json_string(r->actor)) &&
         ctl_output_json_add(row, "comment", ctl_output_json_string(r->comment)) &&
         ctl_output_json_add(row, "rollback_of",
                             r->rollback_of != 0 ? cJSON_CreateNumber((double)r->rollback_of)
                                                 : cJSON_CreateNull()) &&
         ctl_output_json_add(row, "hash", cJSON_CreateString(hash));
    hash[CTL_SHORT_HASH] = '\0';
    ok = ok && ctl_output_json_add(row, "short_hash", cJSON_CreateString(hash));
    instances = ok ? cJSON_CreateArray() : NULL;
    ok = ok && ctl_output_json_add(row, "instances", instances);
    changes = ok ? cJSON_CreateArray() : NULL;
    ok = ok && ctl_output_json_add(row, "changes", changes);
    for (size_t i = 0; ok && i < r->nchanges; i++) {
        cJSON *change = cJSON_CreateObject();
        cJSON *id = cJSON_CreateString(r->instances[i]);
        if (id == NULL || !cJSON_AddItemToArray(instances, id)) {
            cJSON_Delete(id);
            cJSON_Delete(change);
            return -ENOMEM;
        }
        if (change == NULL || !cJSON_AddItemToArray(changes, change)) {
            cJSON_Delete(change);
            return -ENOMEM;
        }
        ok = ctl_output_json_add(change, "instance", cJSON_CreateString(r->instances[i])) &&
             ctl_output_json_add(change, "deleted", cJSON_CreateBool(r->deleted[i]));
    }
    return ok ? 0 : -ENOMEM;
}

static int history_row(const struct store_revision *r, void *arg)
{
    struct history_ctx *hc = arg;

    hc->shown++;
    if (hc->rows != NULL)
        return history_json(r, hc->rows);
    if (hc->shown == 1)
        printf("%-8s %-20s %-5s %-16s %-12s %-20s %s\n", "REVISION", "TIME (UTC)", "EPOCH", "ACTOR",
               "HASH", "INSTANCES", "COMMENT");
    return history_text(r);
}

/* The rows of a reply, shown as local rows are. */
static int history_remote(struct ctl *ctl, uint64_t limit, struct history_ctx *hc)
{
    Smtpsync__HistoryQuery m;
    Smtpsync__Frame f;
    Smtpsync__AdminReply *r = NULL;
    int rc, err = 0;

    smtpsync__history_query__init(&m);
    m.limit = limit > UINT32_MAX ? UINT32_MAX : (uint32_t)limit;
    smtpsync__frame__init(&f);
    f.body_case = SMTPSYNC__FRAME__BODY_HISTORY_QUERY;
    f.history_query = &m;
    if ((rc = ctl_remote_ask(ctl, &f, 0, false, &r)) != CTL_EXIT_OK)
        return rc;
    for (size_t i = 0; i < r->n_history && err == 0; i++) {
        const Smtpsync__Revision *h = r->history[i];
        const char **ids = calloc(h->n_changes + 1, sizeof(*ids));
        bool *deleted = calloc(h->n_changes + 1, sizeof(*deleted));
        struct store_revision sr = {
            .revision = h->revision,
            .epoch = h->epoch,
            .rollback_of = h->rollback_of,
            .time_ms = h->time_ms,
            .actor = h->actor,
            .comment = h->comment,
            .nchanges = h->n_changes,
            .instances = ids,
            .deleted = deleted,
        };

        if (ids == NULL || deleted == NULL) {
            err = -ENOMEM;
        } else {
            for (size_t k = 0; k < h->n_changes; k++) {
                ids[k] = h->changes[k]->instance;
                deleted[k] = h->changes[k]->kind == SMTPSYNC__CHANGE_KIND__CHANGE_KIND_DELETE;
            }
            if (h->hash.len == STORE_HASH_LEN)
                memcpy(sr.hash, h->hash.data, STORE_HASH_LEN);
            err = history_row(&sr, hc);
        }
        free(ids);
        free(deleted);
    }
    smtpsync__admin_reply__free_unpacked(r, NULL);
    if (err < 0) {
        ctl_errorf("cannot list the history: %s", error_str(err));
        return CTL_EXIT_FAIL;
    }
    return CTL_EXIT_OK;
}

int ctl_history_main(struct ctl *ctl, int argc, char **argv)
{
    static const struct option opts[] = {
        {"limit", required_argument, NULL, OPT_LIMIT},
        {"json", no_argument, NULL, OPT_JSON},
        {"help", no_argument, NULL, OPT_HELP},
        {NULL, 0, NULL, 0},
    };
    struct history_ctx hc = {NULL, 0};
    struct store_info info;
    uint64_t limit = 0;
    char q[96];
    int c, err, rc;

    optind = 0;
    while ((c = ctl_getopt(argc, argv, ":h", opts)) != -1) {
        switch (c) {
        case OPT_HELP:
            fputs(ctl_history_usage, stdout);
            return CTL_EXIT_OK;
        case OPT_LIMIT:
            if (ctl_parse_u64(optarg, 1, SIZE_MAX, &limit) < 0)
                return ctl_usage_error(ctl_history_usage,
                                       "--limit: '%s' is not a count (1, 2, ...)",
                                       ctl_quote(optarg, q, sizeof(q)));
            break;
        case OPT_JSON:
            ctl->json = true;
            break;
        default:
            return ctl_usage(ctl_history_usage);
        }
    }
    if (optind < argc)
        return ctl_usage_error(ctl_history_usage, "history: unexpected argument '%s'",
                               ctl_quote(argv[optind], q, sizeof(q)));
    if (!ctl_remote(ctl) && (rc = ctl_store_open_info(ctl, &info)) != CTL_EXIT_OK)
        return rc;

    if (ctl->json && (hc.rows = cJSON_CreateArray()) == NULL) {
        ctl_errorf("cannot list the history: %s", error_str(-ENOMEM));
        return CTL_EXIT_FAIL;
    }
    if (ctl_remote(ctl)) {
        if ((rc = history_remote(ctl, limit, &hc)) != CTL_EXIT_OK) {
            cJSON_Delete(hc.rows);
            return rc;
        }
        err = 0;
    } else {
        err = store_history(ctl->store, (size_t)limit, history_row, &hc);
    }
    if (err < 0) {
        cJSON_Delete(hc.rows);
        ctl_errorf("cannot list the history: %s", error_str(err));
        return CTL_EXIT_FAIL;
    }
    if (hc.rows != NULL)
        return ctl_output_json_print(hc.rows) < 0 ? CTL_EXIT_FAIL : CTL_EXIT_OK;
    if (hc.shown == 0)
        puts("no revisions yet");
    return CTL_EXIT_OK;
}

/* --- diff ----------------------------------------------------------------- */

struct diff_ctx {
    cJSON *rows; /* JSON mode */
    size_t shown;
};

static int diff_row(const struct store_diff *d, void *arg)
{
    struct diff_ctx *dc = arg;

    dc->shown++;
    if (dc->rows != NULL) {
        cJSON *row = cJSON_CreateObject();
        if (row == NULL || !cJSON_AddItemToArray(dc->rows, row)) {
            cJSON_Delete(row);
            return -ENOMEM;
        }
        if (!ctl_output_json_add(row, "instance", cJSON_CreateString(d->instance)) ||
            !ctl_output_json_add(row, "field", cJSON_CreateString(d->field)) ||
            !ctl_output_json_add(row, "old", ctl_output_json_string(d->old_value)) ||
            !ctl_output_json_add(row, "new", ctl_output_json_string(d->new_value)))
            return -ENOMEM;
        return 0;
    }
    ctl_fputs_safe(d->instance, stdout);
    fputc('.', stdout);
    ctl_fputs_safe(d->field, stdout);
    fputs(": ", stdout);
    ctl_fputs_safe(d->old_value[0] != '\0' ? d->old_value : "(not set)", stdout);
    fputs(" -> ", stdout);
    ctl_fputs_safe(d->new_value[0] != '\0' ? d->new_value : "(not set)", stdout);
    fputc('\n', stdout);
    return 0;
}

static int diff_finish(struct diff_ctx *dc, uint64_t from, uint64_t to)
{
    if (dc->rows != NULL)
        return ctl_output_json_print(dc->rows) < 0 ? CTL_EXIT_FAIL : CTL_EXIT_OK;
    if (dc->shown == 0)
        printf("no differences between revision %" PRIu64 " and %" PRIu64 "\n", from, to);
    return CTL_EXIT_OK;
}

static int diff_remote(struct ctl *ctl, uint64_t from, uint64_t to, struct diff_ctx *dc)
{
    Smtpsync__DiffQuery m;
    Smtpsync__Frame f;
    Smtpsync__AdminReply *r = NULL;
    int rc, err = 0;

    smtpsync__diff_query__init(&m);
    m.from_revision = from;
    m.to_revision = to;
    smtpsync__frame__init(&f);
    f.body_case = SMTPSYNC__FRAME__BODY_DIFF_QUERY;
    f.diff_query = &m;
    if ((rc = ctl_remote_ask(ctl, &f, 0, false, &r)) != CTL_EXIT_OK)
        return rc;
    if (ctl->json && (dc->rows = cJSON_CreateArray()) == NULL)
        err = -ENOMEM;
    for (size_t i = 0; r->diff != NULL && i < r->diff->n_diffs && err == 0; i++) {
        const Smtpsync__FieldDiff *d = r->diff->diffs[i];
        struct store_diff sd = {d->instance, d->field, d->old_value, d->new_value};
        err = diff_row(&sd, dc);
    }
    smtpsync__admin_reply__free_unpacked(r, NULL);
    if (err < 0) {
        cJSON_Delete(dc->rows);
        ctl_errorf("cannot compare revisions: %s", error_str(err));
        return CTL_EXIT_FAIL;
    }
    return diff_finish(dc, from, to);
}

int ctl_diff_main(struct ctl *ctl, int argc, char **argv)
{
    static const struct option opts[] = {
        {"json", no_argument, NULL, OPT_JSON},
        {"help", no_argument, NULL, OPT_HELP},
        {NULL, 0, NULL, 0},
    };
    struct diff_ctx dc = {NULL, 0};
    struct store_info info;
    uint64_t from, to;
    int c, err, rc;

    optind = 0;
    while ((c = ctl_getopt(argc, argv, ":h", opts)) != -1) {
        switch (c) {
        case OPT_HELP:
            fputs(ctl_diff_usage, stdout);
            return CTL_EXIT_OK;
        case OPT_JSON:
            ctl->json = true;
            break;
        default:
            return ctl_usage(ctl_diff_usage);
        }
    }
    if (argc - optind != 2)
        return ctl_usage_error(ctl_diff_usage, "diff: give two revisions, R1 and R2");
    /* Syntax first, so a malformed number is a usage error even when the
     * store cannot be opened. */
    if (ctl_parse_u64(argv[optind], 1, UINT64_MAX, &from) < 0)
        return ctl_parse_revision("R1", argv[optind], UINT64_MAX, ctl_diff_usage, &from);
    if (ctl_parse_u64(argv[optind + 1], 1, UINT64_MAX, &to) < 0)
        return ctl_parse_revision("R2", argv[optind + 1], UINT64_MAX, ctl_diff_usage, &to);
    if (ctl_remote(ctl))
        return diff_remote(ctl, from, to, &dc);
    if ((rc = ctl_store_open_info(ctl, &info)) != CTL_EXIT_OK)
        return rc;
    if ((rc = ctl_parse_revision("R1", argv[optind], info.revision, ctl_diff_usage, &from)) != 0 ||
        (rc = ctl_parse_revision("R2", argv[optind + 1], info.revision, ctl_diff_usage, &to)) != 0)
        return rc;

    if (ctl->json && (dc.rows = cJSON_CreateArray()) == NULL) {
        ctl_errorf("cannot compare revisions: %s", error_str(-ENOMEM));
        return CTL_EXIT_FAIL;
    }
    err = store_diff(ctl->store, from, to, diff_row, &dc);
    if (err < 0) {
        cJSON_Delete(dc.rows);
        ctl_revision_error("compare revisions", err, info.base_revision);
        return CTL_EXIT_FAIL;
    }
    return diff_finish(&dc, from, to);
}

/* --- rollback ------------------------------------------------------------- */

static int print_rolled_back(struct ctl *ctl, uint64_t target, uint64_t revision)
{
    if (ctl->json) {
        cJSON *doc = cJSON_CreateObject();
        if (doc != NULL && (cJSON_AddNumberToObject(doc, "revision", (double)revision) == NULL ||
                            cJSON_AddNumberToObject(doc, "rollback_of", (double)target) == NULL)) {
            cJSON_Delete(doc);
            doc = NULL;
        }
        return ctl_output_json_print(doc) < 0 ? CTL_EXIT_FAIL : CTL_EXIT_OK;
    }
    printf("rolled back to %" PRIu64 " as revision %" PRIu64 "\n", target, revision);
    return CTL_EXIT_OK;
}

static int rollback_remote(struct ctl *ctl, uint64_t target, const char *comment,
                           uint64_t *revision)
{
    Smtpsync__RollbackRequest m;
    Smtpsync__Frame f;
    Smtpsync__AdminReply *r = NULL;
    int rc;

    smtpsync__rollback_request__init(&m);
    m.revision = target;
    if (comment != NULL)
        m.comment = (char *)(uintptr_t)comment;
    smtpsync__frame__init(&f);
    f.body_case = SMTPSYNC__FRAME__BODY_ROLLBACK;
    f.rollback = &m;
    if ((rc = ctl_remote_ask(ctl, &f, 0, false, &r)) != CTL_EXIT_OK)
        return rc;
    *revision = r->revision;
    smtpsync__admin_reply__free_unpacked(r, NULL);
    return CTL_EXIT_OK;
}

int ctl_rollback_main(struct ctl *ctl, int argc, char **argv)
{
    static const struct option opts[] = {
        {"comment", required_argument, NULL, OPT_COMMENT},
        {"json", no_argument, NULL, OPT_JSON},
        {"help", no_argument, NULL, OPT_HELP},
        {NULL, 0, NULL, 0},
    };
    const char *comment = NULL;
    char actor[STORE_ACTOR_MAX + 1];
    struct store_info info;
    uint64_t target, revision = 0;
    int c, err, rc;

    optind = 0;
    while ((c = ctl_getopt(argc, argv, ":h", opts)) != -1) {
        switch (c) {
        case OPT_HELP:
            fputs(ctl_rollback_usage, stdout);
            return CTL_EXIT_OK;
        case OPT_COMMENT:
            comment = optarg;
            break;
        case OPT_JSON:
            ctl->json = true;
            break;
        default:
            return ctl_usage(ctl_rollback_usage);
        }
    }
    if (argc - optind != 1)
        return ctl_usage_error(ctl_rollback_usage, "rollback: give one revision R");
    if (ctl_parse_u64(argv[optind], 1, UINT64_MAX, &target) < 0)
        return ctl_parse_revision("R", argv[optind], UINT64_MAX, ctl_rollback_usage, &target);
    if (comment != NULL && !ctl_comment_ok(comment))
        return CTL_EXIT_USAGE;
    if (ctl_remote(ctl)) {
        if ((rc = rollback_remote(ctl, target, comment, &revision)) != CTL_EXIT_OK)
            return rc;
        return print_rolled_back(ctl, target, revision);
    }
    if ((rc = ctl_store_open_info(ctl, &info)) != CTL_EXIT_OK)
        return rc;
    if ((rc = ctl_parse_revision("R", argv[optind], info.revision, ctl_rollback_usage, &target)) !=
        0)
        return rc;

    store_local_actor(actor, sizeof(actor));
    struct store_commit commit = {.actor = actor, .comment = comment, .time_ms = 0};
    err = store_rollback(ctl->store, target, &commit, &revision);
    if (err == ERROR_EMPTY) {
        ctl_errorf("nothing to roll back: the settings are already those of revision %" PRIu64,
                   target);
        return CTL_EXIT_FAIL;
    }
    if (err < 0) {
        ctl_revision_error("roll back", err, info.base_revision);
        return CTL_EXIT_FAIL;
    }
    return print_rolled_back(ctl, target, revision);
}
