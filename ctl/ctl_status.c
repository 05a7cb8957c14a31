/*
 * ctl_status: the replication verbs, status, sync and promote.
 *
 * status asks a daemon (remote mode) for its view: the node itself and, on
 * the primary, every replica; or, in local mode, reads what a store holds
 * (its revision, epoch and hash, and the replica view a primary persisted
 * there). sync and promote act on a running daemon, so they need remote
 * mode. All three print a StatusReply with the same code.
 */
#include <errno.h>
#include <inttypes.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "admin.h"
#include "ctl.h"
#include "ctl_output.h"
#include "error.h"
#include "store.h"

const char ctl_status_usage[] =
    "usage: smtpsyncctl [global options] status [--json]\n"
    "\n"
    "Where this node and, on the primary, every replica stand. Through a daemon\n"
    "(--server) the daemon answers from what it knows now, even when the primary\n"
    "is unreachable; on a store (--data-dir) it shows the store's revision, epoch\n"
    "and hash and the replica view a primary kept there.\n"
    "\n"
    "Per replica: state (in-sync, behind, syncing, unreachable, diverged, fenced,\n"
    "never-synced), applied and primary revision, lag in revisions and seconds,\n"
    "last contact, last success, last error, next push, certificate expiry and\n"
    "outbox depth. A certificate expiring within 30 days is warned about.\n"
    "\n"
    "  --json   {\"node\": {...}, \"primary\": {...} (null on a replica),\n"
    "           \"replicas\": [{\"id\", \"state\", \"applied_revision\",\n"
    "           \"primary_revision\", \"lag_revisions\", \"lag_seconds\",\n"
    "           \"last_contact\", \"last_success\", \"last_error\", \"next_push\",\n"
    "           \"cert_expiry\", \"outbox_depth\", \"address\"}], \"warnings\": [...]}\n"
    "           (times RFC 3339, absent values null)\n"
    "  --help   print this help\n";

const char ctl_sync_usage[] =
    "usage: smtpsyncctl [global options] sync [--replica ID] [--json]\n"
    "\n"
    "Has the primary push to every replica (or to replica ID) now, waits until\n"
    "the pushes end, and prints where those replicas stand. Needs --server (the\n"
    "primary) and the super-admin role.\n"
    "\n"
    "  --replica ID   only this replica\n"
    "  --json         print the status as `status --json` does\n"
    "  --help         print this help\n";

const char ctl_promote_usage[] =
    "usage: smtpsyncctl [global options] promote [--force] [--json]\n"
    "\n"
    "Makes the node reached with --server the primary, with a new epoch: the\n"
    "other replicas follow it and refuse the old primary, which learns it was\n"
    "fenced when it returns. A node known to lag behind the primary is refused\n"
    "unless --force. Needs the super-admin role. See docs/ for the runbook.\n"
    "\n"
    "  --force   promote even when this node lags behind\n"
    "  --json    print the node's status afterwards as `status --json` does\n"
    "  --help    print this help\n";

enum {
    OPT_HELP = 'h',
    OPT_JSON = 256,
    OPT_REPLICA,
    OPT_FORCE,
};

#define EXPIRY_WARN_MS (30LL * 86400 * 1000)

/* --- rendering ------------------------------------------------------------ */

static const char *role_name(Smtpsync__Role role)
{
    switch (role) {
    case SMTPSYNC__ROLE__ROLE_PRIMARY:
        return "primary";
    case SMTPSYNC__ROLE__ROLE_REPLICA:
        return "replica";
    default:
        break;
    }
    return NULL;
}

static int64_t now_ms(void)
{
    struct timespec ts;

    clock_gettime(CLOCK_REALTIME, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

/* An RFC 3339 time, or `absent` for 0. */
static const char *when(int64_t ms, char *buf, size_t len, const char *absent)
{
    return ms != 0 ? ctl_output_time(ms, buf, len) : absent;
}

static cJSON *json_time(int64_t ms)
{
    char buf[CTL_TIME_LEN];

    return ms != 0 ? cJSON_CreateString(ctl_output_time(ms, buf, sizeof(buf))) : cJSON_CreateNull();
}

static cJSON *json_u64(uint64_t v)
{
    return cJSON_CreateNumber((double)v);
}

/* The warning for a certificate (of `whose`) expiring within 30 days, or
 * expired; "" when none. */
static const char *expiry_warning(const char *whose, int64_t expiry_ms, int64_t now, char *buf,
                                  size_t len)
{
    char t[CTL_TIME_LEN];

    buf[0] = '\0';
    if (expiry_ms == 0 || expiry_ms - now > EXPIRY_WARN_MS)
        return buf;
    if (expiry_ms <= now)
        snprintf(buf, len, "the certificate of %s expired at %s", whose,
                 ctl_output_time(expiry_ms, t, sizeof(t)));
    else
        snprintf(buf, len, "the certificate of %s expires in %lld day%s, at %s", whose,
                 (long long)((expiry_ms - now) / 86400000),
                 (expiry_ms - now) / 86400000 == 1 ? "" : "s",
                 ctl_output_time(expiry_ms, t, sizeof(t)));
    return buf;
}

static cJSON *node_json(const Smtpsync__NodeStatus *n)
{
    char hash[CTL_HASH_HEX];
    cJSON *o = cJSON_CreateObject();
    const char *role = role_name(n->role);
    /* Local mode reads the store only: the outbox is the daemon's (null). */
    bool local = n->node == NULL || n->node[0] == '\0';

    if (n->hash.len == STORE_HASH_LEN)
        ctl_output_hex(n->hash.data, n->hash.len, hash);
    else
        hash[0] = '\0';
    if (o == NULL || !ctl_output_json_add(o, "id", ctl_output_json_string(n->node)) ||
        !ctl_output_json_add(o, "role",
                             role != NULL ? cJSON_CreateString(role) : cJSON_CreateNull()) ||
        !ctl_output_json_add(o, "epoch", json_u64(n->epoch)) ||
        !ctl_output_json_add(o, "revision", json_u64(n->revision)) ||
        !ctl_output_json_add(o, "hash", ctl_output_json_string(hash)) ||
        !ctl_output_json_add(o, "revision_time", json_time(n->revision_time_ms)) ||
        !ctl_output_json_add(o, "outbox_depth",
                             local ? cJSON_CreateNull() : json_u64(n->outbox_depth)) ||
        !ctl_output_json_add(o, "dead_count",
                             local ? cJSON_CreateNull() : json_u64(n->dead_count)) ||
        !ctl_output_json_add(o, "version", ctl_output_json_string(n->version)) ||
        !ctl_output_json_add(o, "cert_expiry", json_time(n->cert_expiry_ms)) ||
        !ctl_output_json_add(o, "primary",
                             n->primary != NULL && n->primary[0] != '\0'
                                 ? cJSON_CreateString(n->primary)
                                 : cJSON_CreateNull()) ||
        !ctl_output_json_add(o, "primary_revision", json_u64(n->primary_revision)) ||
        !ctl_output_json_add(o, "last_push", json_time(n->last_push_ms)) ||
        !ctl_output_json_add(o, "fenced_epoch",
                             n->fenced_epoch != 0 ? json_u64(n->fenced_epoch)
                                                  : cJSON_CreateNull())) {
        cJSON_Delete(o);
        return NULL;
    }
    return o;
}

static cJSON *replica_json(const Smtpsync__ReplicaStatus *r)
{
    cJSON *o = cJSON_CreateObject();

    if (o == NULL || !ctl_output_json_add(o, "id", ctl_output_json_string(r->id)) ||
        !ctl_output_json_add(o, "state", cJSON_CreateString(admin_replica_state_name(r->state))) ||
        !ctl_output_json_add(o, "applied_revision", json_u64(r->applied_revision)) ||
        !ctl_output_json_add(o, "primary_revision", json_u64(r->primary_revision)) ||
        !ctl_output_json_add(o, "lag_revisions", json_u64(r->lag_revisions)) ||
        !ctl_output_json_add(o, "lag_seconds",
                             r->lag_seconds >= 0 ? cJSON_CreateNumber((double)r->lag_seconds)
                                                 : cJSON_CreateNull()) ||
        !ctl_output_json_add(o, "last_contact", json_time(r->last_contact_ms)) ||
        !ctl_output_json_add(o, "last_success", json_time(r->last_success_ms)) ||
        !ctl_output_json_add(o, "last_error", ctl_output_json_string(r->last_error)) ||
        !ctl_output_json_add(o, "next_push", json_time(r->next_push_ms)) ||
        !ctl_output_json_add(o, "cert_expiry", json_time(r->cert_expiry_ms)) ||
        !ctl_output_json_add(o, "outbox_depth", json_u64(r->outbox_depth)) ||
        !ctl_output_json_add(o, "address", ctl_output_json_string(r->address))) {
        cJSON_Delete(o);
        return NULL;
    }
    return o;
}

/* True when replica `r` is to be shown (`only`: one id, or NULL for all). */
static bool shown(const Smtpsync__ReplicaStatus *r, const char *only)
{
    return only == NULL || (r->id != NULL && strcmp(r->id, only) == 0);
}

static int status_json(const Smtpsync__StatusReply *sr, const char *only)
{
    const Smtpsync__NodeStatus *n = sr->node;
    char warn[256];
    int64_t now = now_ms();
    cJSON *doc = cJSON_CreateObject(), *replicas = NULL, *warnings = NULL;
    bool ok;

    ok = doc != NULL &&
         ctl_output_json_add(doc, "node", n != NULL ? node_json(n) : cJSON_CreateNull()) &&
         ctl_output_json_add(doc, "primary",
                             n != NULL && n->role == SMTPSYNC__ROLE__ROLE_PRIMARY
                                 ? node_json(n)
                                 : cJSON_CreateNull()) &&
         ctl_output_json_add(doc, "replicas", replicas = cJSON_CreateArray()) &&
         ctl_output_json_add(doc, "warnings", warnings = cJSON_CreateArray());
    if (ok && n != NULL &&
        expiry_warning(n->node != NULL && n->node[0] != '\0' ? n->node : "this node",
                       n->cert_expiry_ms, now, warn, sizeof(warn))[0] != '\0')
        ok = cJSON_AddItemToArray(warnings, cJSON_CreateString(warn));
    for (size_t i = 0; ok && i < sr->n_replicas; i++) {
        const Smtpsync__ReplicaStatus *r = sr->replicas[i];
        cJSON *o;

        if (!shown(r, only))
            continue;
        o = replica_json(r);
        ok = o != NULL && cJSON_AddItemToArray(replicas, o);
        if (!ok)
            cJSON_Delete(o);
        if (ok && expiry_warning(r->id, r->cert_expiry_ms, now, warn, sizeof(warn))[0] != '\0')
            ok = cJSON_AddItemToArray(warnings, cJSON_CreateString(warn));
    }
    if (!ok) {
        cJSON_Delete(doc);
        doc = NULL;
    }
    return ctl_output_json_print(doc) < 0 ? CTL_EXIT_FAIL : CTL_EXIT_OK;
}

static void node_text(const Smtpsync__NodeStatus *n)
{
    char hash[CTL_HASH_HEX], t[CTL_TIME_LEN], q[96];
    const char *role = role_name(n->role);

    if (n->hash.len == STORE_HASH_LEN) {
        ctl_output_hex(n->hash.data, n->hash.len, hash);
        hash[CTL_SHORT_HASH] = '\0';
    } else {
        snprintf(hash, sizeof(hash), "-");
    }
    printf("node:        %s%s%s%s\n",
           n->node != NULL && n->node[0] != '\0' ? ctl_quote(n->node, q, sizeof(q))
                                                 : "(this store)",
           role != NULL ? " (" : "", role != NULL ? role : "", role != NULL ? ")" : "");
    /* A fenced old primary still says "primary" in its membership view:
     * this line is what tells the operator it is not one any more. */
    if (n->fenced_epoch != 0)
        printf("fenced:      FENCED by epoch %" PRIu64
               ": a newer primary exists; this node pushes nothing\n",
               n->fenced_epoch);
    printf("epoch:       %" PRIu64 "\n", n->epoch);
    /* Whom it follows; not itself (the primary, or one fenced by a newer). */
    if (n->primary != NULL && n->primary[0] != '\0' &&
        (n->node == NULL || strcmp(n->primary, n->node) != 0)) {
        printf("primary:     %s", ctl_quote(n->primary, q, sizeof(q)));
        if (n->primary_revision != 0 || n->last_push_ms != 0)
            printf(" (revision %" PRIu64 ", last heard from %s)", n->primary_revision,
                   when(n->last_push_ms, t, sizeof(t), "never"));
        fputc('\n', stdout);
    }
    printf("revision:    %" PRIu64 " (hash %s, saved %s)\n", n->revision, hash,
           when(n->revision_time_ms, t, sizeof(t), "never"));
    if (n->version != NULL && n->version[0] != '\0')
        printf("version:     %s\n", ctl_quote(n->version, q, sizeof(q)));
    if (n->cert_expiry_ms != 0)
        printf("certificate: expires %s\n", when(n->cert_expiry_ms, t, sizeof(t), "-"));
    /* "(this store)": local mode read the store, not the daemon's outbox. */
    if (n->node != NULL && n->node[0] != '\0')
        printf("outbox:      %" PRIu64 " waiting, %" PRIu64 " dead\n", n->outbox_depth,
               n->dead_count);
    else
        printf("outbox:      not read in local mode (smtpsyncctl queue asks the daemon)\n");
}

static void replica_text(const Smtpsync__ReplicaStatus *r)
{
    char id[96], lag[48], contact[CTL_TIME_LEN], success[CTL_TIME_LEN], next[CTL_TIME_LEN],
        cert[CTL_TIME_LEN];

    if (r->lag_seconds >= 0)
        snprintf(lag, sizeof(lag), "%" PRIu64 " / %" PRId64 "s", r->lag_revisions, r->lag_seconds);
    else
        snprintf(lag, sizeof(lag), "%" PRIu64 " / ?", r->lag_revisions);
    printf("%-16s %-12s %-8" PRIu64 " %-8" PRIu64 " %-12s %-20s %-20s %-20s %-20s %-7" PRIu64 " ",
           ctl_quote(r->id != NULL ? r->id : "", id, sizeof(id)),
           admin_replica_state_name(r->state), r->applied_revision, r->primary_revision, lag,
           when(r->last_contact_ms, contact, sizeof(contact), "never"),
           when(r->last_success_ms, success, sizeof(success), "never"),
           when(r->next_push_ms, next, sizeof(next), "-"),
           when(r->cert_expiry_ms, cert, sizeof(cert), "-"), r->outbox_depth);
    ctl_fputs_safe(r->last_error != NULL && r->last_error[0] != '\0' ? r->last_error : "-", stdout);
    fputc('\n', stdout);
}

static int status_text(const Smtpsync__StatusReply *sr, const char *only)
{
    char warn[256];
    int64_t now = now_ms();
    size_t n = 0;

    if (sr->node != NULL)
        node_text(sr->node);
    for (size_t i = 0; i < sr->n_replicas; i++) {
        if (!shown(sr->replicas[i], only))
            continue;
        if (n++ == 0)
            printf("\n%-16s %-12s %-8s %-8s %-12s %-20s %-20s %-20s %-20s %-7s %s\n", "REPLICA",
                   "STATE", "APPLIED", "PRIMARY", "LAG (REV/S)", "LAST CONTACT", "LAST SUCCESS",
                   "NEXT PUSH", "CERT EXPIRY", "OUTBOX", "LAST ERROR");
        replica_text(sr->replicas[i]);
    }
    if (n == 0 && sr->node != NULL && sr->node->role == SMTPSYNC__ROLE__ROLE_PRIMARY)
        printf("\nno replicas\n");
    if (sr->node != NULL &&
        expiry_warning(sr->node->node != NULL && sr->node->node[0] != '\0' ? sr->node->node
                                                                           : "this node",
                       sr->node->cert_expiry_ms, now, warn, sizeof(warn))[0] != '\0')
        printf("warning: %s\n", warn);
    for (size_t i = 0; i < sr->n_replicas; i++)
        if (shown(sr->replicas[i], only) &&
            expiry_warning(sr->replicas[i]->id, sr->replicas[i]->cert_expiry_ms, now, warn,
                           sizeof(warn))[0] != '\0')
            printf("warning: %s\n", warn);
    return CTL_EXIT_OK;
}

static int print_status(const struct ctl *ctl, const Smtpsync__StatusReply *sr, const char *only)
{
    return ctl->json ? status_json(sr, only) : status_text(sr, only);
}

/* --- status --------------------------------------------------------------- */

struct local_status {
    Smtpsync__StatusReply reply;
    Smtpsync__NodeStatus node;
    uint8_t hash[STORE_HASH_LEN];
    Smtpsync__ReplicaStatus **replicas; /* copies, freed as unpacked */
    size_t n;
};

static int collect_replica(const Smtpsync__ReplicaStatus *rs, void *arg)
{
    struct local_status *ls = arg;
    Smtpsync__ReplicaStatus **v = realloc(ls->replicas, (ls->n + 1) * sizeof(*v));
    size_t len = smtpsync__replica_status__get_packed_size(rs);
    uint8_t *buf;

    if (v == NULL)
        return -ENOMEM;
    ls->replicas = v;
    if ((buf = malloc(len + 1)) == NULL)
        return -ENOMEM;
    smtpsync__replica_status__pack(rs, buf);
    v[ls->n] = smtpsync__replica_status__unpack(NULL, len, buf);
    free(buf);
    if (v[ls->n] == NULL)
        return -ENOMEM;
    ls->n++;
    return 0;
}

/* What a store holds: its state, and the replica view a primary kept. */
static int status_local(struct ctl *ctl)
{
    struct local_status ls;
    struct store_info info;
    int rc, err;

    memset(&ls, 0, sizeof(ls));
    if ((rc = ctl_store_open_info(ctl, &info)) != CTL_EXIT_OK)
        return rc;
    smtpsync__status_reply__init(&ls.reply);
    smtpsync__node_status__init(&ls.node);
    memcpy(ls.hash, info.hash, sizeof(ls.hash));
    ls.node.epoch = info.epoch;
    ls.node.revision = info.revision;
    ls.node.hash.data = ls.hash;
    ls.node.hash.len = sizeof(ls.hash);
    ls.node.revision_time_ms = info.revision_time_ms;
    ls.reply.node = &ls.node;
    err = store_repl_status_each(ctl->store, collect_replica, &ls);
    if (err < 0 && err != ERROR_NOT_FOUND) {
        ctl_errorf("cannot read the replica status: %s", error_str(err));
        rc = CTL_EXIT_FAIL;
        goto free_replicas;
    }
    ls.reply.replicas = ls.replicas;
    ls.reply.n_replicas = ls.n;
    rc = print_status(ctl, &ls.reply, NULL);
free_replicas:
    for (size_t i = 0; i < ls.n; i++)
        smtpsync__replica_status__free_unpacked(ls.replicas[i], NULL);
    free(ls.replicas);
    return rc;
}

/* Parses the options all three verbs share; returns -1 to go on, else the
 * exit status. */
static int parse(struct ctl *ctl, int argc, char **argv, const char *usage, const char **replica,
                 bool *force)
{
    static const struct option opts[] = {
        {"json", no_argument, NULL, OPT_JSON},
        {"replica", required_argument, NULL, OPT_REPLICA},
        {"force", no_argument, NULL, OPT_FORCE},
        {"help", no_argument, NULL, OPT_HELP},
        {NULL, 0, NULL, 0},
    };
    char q[96];
    int c;

    optind = 0;
    while ((c = ctl_getopt(argc, argv, ":h", opts)) != -1) {
        switch (c) {
        case OPT_HELP:
            fputs(usage, stdout);
            return CTL_EXIT_OK;
        case OPT_JSON:
            ctl->json = true;
            break;
        case OPT_REPLICA:
            if (replica == NULL)
                return ctl_usage_error(usage, "%s: --replica is an option of sync", argv[0]);
            if (!settings_instance_valid(optarg)) {
                ctl_errorf("--replica: invalid replica id '%s' (1-%d of A-Z a-z 0-9 . _ -, "
                           "starting with a letter or digit)",
                           ctl_quote(optarg, q, sizeof(q)), SETTINGS_INSTANCE_MAX);
                return CTL_EXIT_USAGE;
            }
            *replica = optarg;
            break;
        case OPT_FORCE:
            if (force == NULL)
                return ctl_usage_error(usage, "%s: --force is an option of promote", argv[0]);
            *force = true;
            break;
        default:
            return ctl_usage(usage);
        }
    }
    if (optind < argc)
        return ctl_usage_error(usage, "%s: unexpected argument '%s'", argv[0],
                               ctl_quote(argv[optind], q, sizeof(q)));
    return -1;
}

int ctl_status_main(struct ctl *ctl, int argc, char **argv)
{
    Smtpsync__StatusQuery m;
    Smtpsync__Frame f;
    Smtpsync__AdminReply *r = NULL;
    int rc;

    if ((rc = parse(ctl, argc, argv, ctl_status_usage, NULL, NULL)) >= 0)
        return rc;
    if (!ctl_remote(ctl))
        return status_local(ctl);
    smtpsync__status_query__init(&m);
    smtpsync__frame__init(&f);
    f.body_case = SMTPSYNC__FRAME__BODY_STATUS_QUERY;
    f.status_query = &m;
    if ((rc = ctl_remote_ask(ctl, &f, 0, false, &r)) != CTL_EXIT_OK)
        return rc;
    if (r->status == NULL) {
        ctl_errorf("the daemon sent no status");
        rc = CTL_EXIT_FAIL;
    } else {
        rc = print_status(ctl, r->status, NULL);
    }
    smtpsync__admin_reply__free_unpacked(r, NULL);
    return rc;
}

/* --- sync, promote -------------------------------------------------------- */

static int needs_server(const char *verb, const char *what)
{
    ctl_errorf("%s needs --server HOST:PORT: %s", verb, what);
    return CTL_EXIT_USAGE;
}

int ctl_sync_main(struct ctl *ctl, int argc, char **argv)
{
    const char *replica = NULL;
    Smtpsync__SyncRequest m;
    Smtpsync__Frame f;
    Smtpsync__AdminReply *r = NULL;
    int rc;

    if ((rc = parse(ctl, argc, argv, ctl_sync_usage, &replica, NULL)) >= 0)
        return rc;
    if (!ctl_remote(ctl))
        return needs_server("sync", "the primary daemon pushes to its replicas");
    smtpsync__sync_request__init(&m);
    if (replica != NULL)
        m.replica = (char *)(uintptr_t)replica;
    smtpsync__frame__init(&f);
    f.body_case = SMTPSYNC__FRAME__BODY_SYNC;
    f.sync = &m;
    if ((rc = ctl_remote_ask(ctl, &f, CTL_REPLY_TIMEOUT_LONG_MS, false, &r)) != CTL_EXIT_OK)
        return rc;
    if (r->status != NULL) {
        if (ctl->json) {
            rc = status_json(r->status, replica);
        } else {
            size_t n = 0;
            for (size_t i = 0; i < r->status->n_replicas; i++) {
                const Smtpsync__ReplicaStatus *rs = r->status->replicas[i];
                char q[96];
                if (!shown(rs, replica))
                    continue;
                n++;
                printf("replica %s: %s at revision %" PRIu64 " of %" PRIu64 "%s",
                       ctl_quote(rs->id, q, sizeof(q)), admin_replica_state_name(rs->state),
                       rs->applied_revision, rs->primary_revision,
                       rs->last_error != NULL && rs->last_error[0] != '\0' ? ": " : "");
                ctl_fputs_safe(rs->last_error != NULL ? rs->last_error : "", stdout);
                fputc('\n', stdout);
            }
            if (n == 0)
                printf("no replicas to sync\n");
        }
    }
    smtpsync__admin_reply__free_unpacked(r, NULL);
    return rc;
}

int ctl_promote_main(struct ctl *ctl, int argc, char **argv)
{
    bool force = false;
    Smtpsync__PromoteRequest m;
    Smtpsync__Frame f;
    Smtpsync__AdminReply *r = NULL;
    int rc;

    if ((rc = parse(ctl, argc, argv, ctl_promote_usage, NULL, &force)) >= 0)
        return rc;
    if (!ctl_remote(ctl))
        return needs_server("promote", "the node to promote is a running daemon");
    smtpsync__promote_request__init(&m);
    m.force = force;
    smtpsync__frame__init(&f);
    f.body_case = SMTPSYNC__FRAME__BODY_PROMOTE;
    f.promote = &m;
    if ((rc = ctl_remote_ask(ctl, &f, 0, false, &r)) != CTL_EXIT_OK)
        return rc;
    if (ctl->json && r->status != NULL) {
        rc = status_json(r->status, NULL);
    } else if (r->status != NULL && r->status->node != NULL) {
        const Smtpsync__NodeStatus *n = r->status->node;
        char q[96];
        printf("promoted %s to primary: epoch %" PRIu64 ", revision %" PRIu64 "\n",
               ctl_quote(n->node != NULL ? n->node : "", q, sizeof(q)), n->epoch, n->revision);
    } else {
        printf("promoted to primary\n");
    }
    smtpsync__admin_reply__free_unpacked(r, NULL);
    return rc;
}
