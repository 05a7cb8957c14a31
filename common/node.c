/*
 * node: the daemons' runtime (node.h).
 *
 * Lifecycle, one explicit state per phase:
 *   RUNNING   serving submissions, the sender delivering
 *   STOPPING  a stop signal arrived (or a fatal error): the submission
 *             server closes, the sender drains; each counts as one part
 *   CLOSING   both parts done: the node's own handles close and uv_run
 *             returns once the loop is empty
 *
 * What arrives on the submission socket is node_intake's (batched
 * submissions, queue queries and actions); replication and the admin API
 * on the mTLS port are repl_node's (repl.h), started when [tls] is
 * configured and stopped as one more part; the metrics endpoint
 * (metrics_http.h, [node] metrics_listen) is one more part, its gauges
 * node_metrics.c's, read from this node at each scrape; this file runs the
 * rest.
 */
#include "node.h"

#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <limits.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include <uv.h>

#include "error.h"
#include "log.h"
#include "metrics_http.h"
#include "mtls.h"
#include "node_metrics.h"
#include "outbox.h"
#include "repl.h"
#include "sender.h"
#include "node_intake.h"
#include "store.h"
#include "submit.h"

#ifndef SMTPSYNC_VERSION
#define SMTPSYNC_VERSION "unknown"
#endif

#define NODE_WATCH_MS   1000 /* store revision check */
#define NODE_LOCK_FILE  "daemon.lock"
#define NODE_OUTBOX_DIR "outbox"

#define NODE_STATE_MAP(XX)                                                                         \
    XX(RUNNING, "running")                                                                         \
    XX(STOPPING, "stopping")                                                                       \
    XX(CLOSING, "closing")

enum node_state {
#define XX(name, text) NODE_##name,
    NODE_STATE_MAP(XX)
#undef XX
};

static const char *const node_state_names[] = {
#define XX(name, text) text,
    NODE_STATE_MAP(XX)
#undef XX
};

struct node {
    uv_loop_t loop;
    const struct node_params *params;
    struct config cfg;
    enum node_state state;
    int exit_code;

    struct store *store;
    struct outbox *outbox;
    struct sender *sender;
    bool sender_stopping;
    bool sender_restart; /* start a new sender once the old one has stopped */
    struct submit_server *submit;
    int lock_fd;
    struct mtls_ctx *ctx;         /* [tls]; NULL without replication */
    struct repl_node *repl;       /* replication and admin API; NULL without [tls] */
    struct metrics_http *metrics; /* GET /metrics; NULL without metrics_listen */

    uv_signal_t sig_term, sig_int, sig_hup;
    uv_timer_t watch;
    struct node_intake intake; /* its check handle is one of the handles */
    bool handles_started;      /* the signals and the watch timer */
    bool intake_ready;
    unsigned parts; /* submission server, sender, replication and metrics still stopping */

    uint64_t revision; /* the store's revision last seen */
    int watch_error;   /* last store_info error logged, to log a change only */
};

static void node_stop(struct node *n, int exit_code, const char *why);
static void pick_msgid_domain(struct node *n);

const char *node_role_name(enum node_role role)
{
    return role == NODE_ROLE_PRIMARY ? "primary" : role == NODE_ROLE_REPLICA ? "replica" : "?";
}

static void node_set_state(struct node *n, enum node_state next)
{
    log_debug("node: %s -> %s", node_state_names[n->state], node_state_names[next]);
    n->state = next;
}

/* ---- sender ---- */

static int sender_begin(struct node *n)
{
    struct sender_params sp;

    memset(&sp, 0, sizeof(sp));
    sp.loop = &n->loop;
    sp.store = n->store;
    sp.outbox = n->outbox;
    sp.instance = n->cfg.node.id;
    sp.helo = n->cfg.sender.helo[0] != '\0' ? n->cfg.sender.helo : NULL;
    sp.max_sessions = n->cfg.sender.max_sessions;
    sp.max_per_session = n->cfg.sender.max_per_session;
    sp.idle_ms = n->cfg.sender.idle_ms;
    sp.retry_initial_ms = n->cfg.sender.retry_initial_ms;
    sp.retry_max_ms = n->cfg.sender.retry_max_ms;
    return sender_start(&sp, &n->sender);
}

static void wake_sender(struct node *n)
{
    if (n->sender != NULL && !n->sender_stopping)
        sender_wake(n->sender);
}

static void node_part_done(struct node *n);

static void on_wake(void *arg)
{
    wake_sender(arg);
}

static void on_sender_stopped(void *arg)
{
    struct node *n = arg;
    int err;

    n->sender = NULL;
    n->sender_stopping = false;
    if (n->state == NODE_RUNNING && n->sender_restart) {
        n->sender_restart = false;
        if ((err = sender_begin(n)) != 0) {
            n->sender = NULL;
            log_error("reload: cannot restart the sender: %s", error_str(err));
            node_stop(n, NODE_EXIT_FAIL, "the sender could not restart");
            return;
        }
        log_info("reload: sender restarted max_sessions=%u max_per_session=%u",
                 n->cfg.sender.max_sessions, n->cfg.sender.max_per_session);
        wake_sender(n);
        return;
    }
    if (n->state == NODE_STOPPING)
        node_part_done(n);
}

static void sender_end(struct node *n)
{
    if (n->sender == NULL || n->sender_stopping)
        return;
    n->sender_stopping = true;
    sender_stop(n->sender, on_sender_stopped, n);
}

/* ---- settings revision watch ---- */

/* Has the store a new revision (saved here, by another process, or
 * replicated)? The sender reloads its settings, the primary pushes. */
static void check_revision(struct node *n)
{
    struct store_info info;
    int err;

    if ((err = store_info(n->store, &info)) != 0) {
        if (err != n->watch_error)
            log_warnx("cannot read the settings store: %s", error_str(err));
        n->watch_error = err;
        return;
    }
    if (n->watch_error != 0)
        log_info("settings store readable again");
    n->watch_error = 0;
    if (info.revision == n->revision)
        return;
    log_info("settings revision %" PRIu64 " (was %" PRIu64 ")", info.revision, n->revision);
    n->revision = info.revision;
    if (n->sender != NULL && !n->sender_stopping)
        sender_settings_changed(n->sender);
    if (n->repl != NULL)
        repl_node_revision_changed(n->repl, info.revision);
}

static void on_watch(uv_timer_t *t)
{
    check_revision(t->data);
}

/* ---- replication ---- */

static void repl_settings_changed(void *arg)
{
    struct node *n = arg;

    if (n->state == NODE_RUNNING)
        check_revision(n);
}

static void repl_outbox_depth(void *arg, uint64_t *pending, uint64_t *dead)
{
    struct node *n = arg;
    struct outbox_depth d;

    memset(&d, 0, sizeof(d));
    if (n->outbox != NULL)
        (void)outbox_depth(n->outbox, &d);
    *pending = d.pending[OUTBOX_TOKENCODE] + d.pending[OUTBOX_REPORT];
    *dead = d.dead;
}

/* The address other nodes reach this one at: [node] address, else listen
 * unless it is a wildcard. */
static const char *self_address(const struct config *c)
{
    if (c->node.address.port != 0)
        return c->node.address.text;
    if (c->node.listen.port != 0 && strcmp(c->node.listen.host, "0.0.0.0") != 0 &&
        strcmp(c->node.listen.host, "::") != 0)
        return c->node.listen.text;
    return "";
}

/* The config's replication keys as repl_node takes them; the members
 * array is malloc'd (free it), the strings are the config's. */
static int repl_config(const struct config *c, struct repl_node_config *rc,
                       struct repl_member_cfg **members)
{
    memset(rc, 0, sizeof(*rc));
    *members = NULL;
    if (c->nreplicas > 0) {
        if ((*members = calloc(c->nreplicas, sizeof(**members))) == NULL)
            return -ENOMEM;
        for (size_t i = 0; i < c->nreplicas; i++) {
            (*members)[i].id = c->replicas[i].id;
            (*members)[i].address = c->replicas[i].address.text;
        }
    }
    rc->tuning.interval_ms = c->replication.interval_ms;
    rc->tuning.jitter_ms = c->replication.jitter_ms;
    rc->tuning.push_on_commit = c->replication.push_on_commit;
    rc->tuning.history_keep = c->replication.history_keep;
    rc->tuning.snapshot_concurrency = c->replication.snapshot_concurrency;
    rc->primary = c->replication.primary;
    rc->address = self_address(c);
    rc->replicas = *members;
    rc->nreplicas = c->nreplicas;
    rc->super_admins = (const char *const *)c->admin.super_admins.ids;
    rc->nsuper_admins = c->admin.super_admins.n;
    rc->operators = (const char *const *)c->admin.operators.ids;
    rc->noperators = c->admin.operators.n;
    return 0;
}

int node_check_start(const struct config *c, struct mtls_ctx **ctx, node_check_report report,
                     void *arg)
{
    char why[MTLS_WHY_MAX], msg[MTLS_WHY_MAX + 2 * MTLS_ID_MAX + 128];
    int err;

    *ctx = NULL;
    if (c->tls.ca[0] == '\0')
        return 0;
    if ((err = mtls_ctx_load(c->tls.ca, c->tls.cert, c->tls.key, ctx, why, sizeof(why))) != 0) {
        *ctx = NULL;
        snprintf(msg, sizeof(msg), "cannot load the [tls] files: %s",
                 err == -ENOMEM ? error_str(err) : why);
        report(true, msg, arg);
        return err;
    }
    if (strcmp(mtls_ctx_id(*ctx), c->node.id) != 0) {
        snprintf(msg, sizeof(msg),
                 "the certificate's id is '%s', not this node's id '%s': other nodes will not "
                 "know it by its id",
                 mtls_ctx_id(*ctx), c->node.id);
        report(false, msg, arg);
    }
    return 0;
}

/* The daemon's problems go to its log. */
static void log_problem(bool error, const char *message, void *arg)
{
    (void)arg;
    if (error)
        log_error("%s", message);
    else
        log_warnx("%s", message);
}

static int repl_begin(struct node *n)
{
    struct repl_node_params rp;
    struct repl_member_cfg *members;
    int err;

    if (n->cfg.tls.ca[0] == '\0') {
        log_info("no [tls]: replication and the admin API are off");
        return 0;
    }
    if ((err = node_check_start(&n->cfg, &n->ctx, log_problem, NULL)) != 0)
        return err;
    memset(&rp, 0, sizeof(rp));
    if ((err = repl_config(&n->cfg, &rp.config, &members)) != 0)
        return err;
    rp.loop = &n->loop;
    rp.store = n->store;
    rp.ctx = n->ctx;
    rp.node_id = n->cfg.node.id;
    rp.primary_daemon = n->params->role == NODE_ROLE_PRIMARY;
    rp.listen = n->cfg.node.listen.text;
    rp.helo = n->cfg.sender.helo[0] != '\0' ? n->cfg.sender.helo : NULL;
    rp.settings_changed = repl_settings_changed;
    rp.outbox_depth = repl_outbox_depth;
    rp.arg = n;
    err = repl_node_start(&rp, &n->repl);
    free(members);
    if (err != 0) {
        n->repl = NULL;
        log_error("cannot start replication: %s", error_str(err));
        return err;
    }
    if (n->cfg.node.listen.port != 0)
        log_info("listening for replication and admins on %s (port %d)", n->cfg.node.listen.text,
                 repl_node_port(n->repl));
    return 0;
}

static void repl_reload(struct node *n, bool tls_changed)
{
    struct repl_node_config rc;
    struct repl_member_cfg *members;
    struct mtls_ctx *ctx = NULL;

    if (n->repl == NULL)
        return;
    if (tls_changed) {
        if (node_check_start(&n->cfg, &ctx, log_problem, NULL) != 0 || ctx == NULL) {
            log_error("reload: keeping the TLS files loaded before");
            ctx = NULL;
        } else {
            log_info("reload: TLS files reloaded (certificate id '%s')", mtls_ctx_id(ctx));
        }
    }
    if (repl_config(&n->cfg, &rc, &members) != 0 || repl_node_reconfigure(n->repl, &rc, ctx) != 0)
        log_error("reload: out of memory: replication keeps its old configuration");
    free(members);
    if (ctx != NULL) {
        if (n->ctx != NULL)
            mtls_ctx_unref(n->ctx);
        n->ctx = ctx;
    }
}

static void on_repl_stopped(void *arg)
{
    struct node *n = arg;

    n->repl = NULL;
    node_part_done(n);
}

/* ---- metrics ---- */

/* What the node is now: a promoted replica daemon is the primary. */
static enum node_role current_role(const struct node *n)
{
    if (n->repl == NULL)
        return n->params->role;
    return repl_node_is_primary(n->repl) ? NODE_ROLE_PRIMARY : NODE_ROLE_REPLICA;
}

/* The state gauges, read from the node as it is at the scrape. */
static void collect(struct metrics_out *o, void *arg)
{
    struct node *n = arg;
    struct node_metrics_source src = {
        .node_id = n->cfg.node.id,
        .role = node_role_name(current_role(n)),
        .version = SMTPSYNC_VERSION,
        .store = n->store,
        .outbox = n->outbox,
        .sender = n->sender,
        .ctx = n->ctx,
        .repl = n->repl,
    };

    node_metrics_write(o, &src);
}

static int start_metrics(struct node *n)
{
    const struct config_addr *a = &n->cfg.node.metrics_listen;
    char why[256];
    int err;

    if (a->text[0] == '\0')
        return 0;
    err = metrics_http_start(&n->loop, a->host, a->port, collect, n, &n->metrics, why, sizeof(why));
    if (err != 0) {
        n->metrics = NULL;
        log_error("cannot serve metrics on %s: %s", a->text, why[0] != '\0' ? why : error_str(err));
        return err;
    }
    return 0; /* metrics_http logs "metrics: listening on http://...". */
}

static void on_metrics_stopped(void *arg)
{
    struct node *n = arg;

    n->metrics = NULL;
    node_part_done(n);
}

/* ---- reload ---- */

struct reload {
    bool log, expiry, sender, repl, tls, restart_needed;
    size_t changes;
};

static void on_change(const char *section, const char *key, const char *old_value,
                      const char *new_value, bool live, void *arg)
{
    struct reload *r = arg;
    char qo[300], qn[300];

    r->changes++;
    log_quote(qo, sizeof(qo), old_value);
    log_quote(qn, sizeof(qn), new_value);
    if (!live) {
        r->restart_needed = true;
        log_warnx("reload: [%s] %s changed from %s to %s: restart needed for it to take effect",
                  section, key, qo, qn);
        return;
    }
    log_info("reload: [%s] %s %s -> %s", section, key, qo, qn);
    if (strcmp(section, "log") == 0)
        r->log = true;
    else if (strcmp(section, "tls") == 0)
        r->tls = r->repl = true;
    else if (strcmp(section, "replication") == 0 || strcmp(section, "admin") == 0 ||
             strncmp(section, "replica ", 8) == 0)
        r->repl = true;
    else if (strcmp(key, "tokencode_expiry") == 0 || strcmp(key, "report_expiry") == 0)
        r->expiry = true;
    else
        r->sender = true;
}

static void apply_log(const struct node *n)
{
    const struct node_params *p = n->params;

    log_init(p->progname, p->log_level >= 0 ? (enum log_level)p->log_level : n->cfg.log.level,
             p->log_format >= 0 ? (enum log_format)p->log_format : n->cfg.log.format);
}

static void apply_expiry(const struct node *n)
{
    struct outbox_expiry e = {
        .tokencode_ms = (int64_t)n->cfg.sender.tokencode_expiry_ms,
        .report_ms = (int64_t)n->cfg.sender.report_expiry_ms,
    };

    outbox_set_expiry(n->outbox, &e);
}

static void reload(struct node *n)
{
    struct config fresh;
    struct config_problems p;
    struct reload r;

    log_info("reload: reading %s", n->params->config_path);
    config_problems_init(&p);
    if (config_load(n->params->config_path, &fresh, &p) != 0) {
        for (size_t i = 0; i < p.count; i++)
            log_error("reload: %s", p.lines[i]);
        if (p.dropped > 0)
            log_error("reload: ... and %zu more problems", p.dropped);
        log_error("reload: configuration unchanged");
        config_problems_free(&p);
        config_clear(&fresh);
        return;
    }
    config_problems_free(&p);
    memset(&r, 0, sizeof(r));
    config_diff(&n->cfg, &fresh, on_change, &r);
    if (n->repl == NULL && (r.tls || r.repl)) {
        r.restart_needed = true;
        log_warnx("reload: replication is off (no [tls] at start): restart for [tls], "
                  "[replication], [replica] and [admin] to take effect");
    } else if (fresh.tls.ca[0] == '\0') {
        r.tls = false;
        log_warnx("reload: [tls] removed: keeping the TLS files loaded before until a restart");
    } else if (n->repl != NULL) {
        /* A renewed certificate keeps its file name: the files are read
         * again at every SIGHUP. */
        r.tls = r.repl = true;
    }
    /* Live sections are taken; [node] stays as it started. */
    fresh.node = n->cfg.node;
    if (n->repl == NULL || (fresh.tls.ca[0] == '\0' && n->cfg.tls.ca[0] != '\0'))
        memcpy(&fresh.tls, &n->cfg.tls, sizeof(fresh.tls));
    config_clear(&n->cfg);
    n->cfg = fresh; /* fresh's lists now belong to n->cfg */
    if (r.repl)
        repl_reload(n, r.tls);
    if (r.log)
        apply_log(n);
    pick_msgid_domain(n);
    if (r.expiry)
        apply_expiry(n);
    if (r.sender && n->sender != NULL) {
        /* sender.h has no setter for its limits: a new sender takes them;
         * the sessions of the old one finish first. */
        n->sender_restart = true;
        sender_end(n);
    }
    if (r.changes == 0)
        log_info("reload: no change");
}

/* ---- signals and stopping ---- */

/* The last handles close; uv_run returns once they have. */
static void node_close_handles(struct node *n)
{
    uv_handle_t *hs[] = {
        (uv_handle_t *)&n->sig_term,
        (uv_handle_t *)&n->sig_int,
        (uv_handle_t *)&n->sig_hup,
        (uv_handle_t *)&n->watch,
    };

    node_set_state(n, NODE_CLOSING);
    if (n->handles_started)
        for (size_t i = 0; i < sizeof(hs) / sizeof(hs[0]); i++)
            uv_close(hs[i], NULL);
    n->handles_started = false;
    if (n->intake_ready)
        node_intake_close(&n->intake, NULL, NULL);
    n->intake_ready = false;
}

static void node_part_done(struct node *n)
{
    if (--n->parts == 0)
        node_close_handles(n);
}

static void on_submit_stopped(void *arg)
{
    struct node *n = arg;

    n->submit = NULL;
    node_part_done(n);
}

static void node_stop(struct node *n, int exit_code, const char *why)
{
    if (exit_code != NODE_EXIT_OK)
        n->exit_code = exit_code;
    if (n->state != NODE_RUNNING) {
        log_info("stop requested again (%s): already stopping", why);
        return;
    }
    log_info("stopping: %s", why);
    node_set_state(n, NODE_STOPPING);
    /* What was read is committed and answered before the socket closes. */
    if (n->handles_started)
        uv_timer_stop(&n->watch);
    if (n->intake_ready)
        node_intake_stop(&n->intake);
    n->parts = 1; /* held while the parts are started, so none can finish us early */
    if (n->submit != NULL) {
        n->parts++;
        submit_server_stop(n->submit, on_submit_stopped, n);
    }
    if (n->sender != NULL || n->sender_stopping) {
        n->parts++;
        n->sender_restart = false;
        sender_end(n);
    }
    if (n->repl != NULL) {
        n->parts++;
        repl_node_stop(n->repl, on_repl_stopped, n);
    }
    if (n->metrics != NULL) {
        n->parts++;
        metrics_http_stop(n->metrics, on_metrics_stopped, n);
    }
    node_part_done(n);
}

static void on_signal(uv_signal_t *h, int signum)
{
    struct node *n = h->data;

    if (signum == SIGHUP) {
        if (n->state == NODE_RUNNING)
            reload(n);
        return;
    }
    node_stop(n, NODE_EXIT_OK, signum == SIGTERM ? "SIGTERM" : "SIGINT");
}

/* ---- start ---- */

/* Keeps passwords out of core dumps and away from other users' ptrace;
 * new files are the daemon's alone (the socket is chmod'ed to 0660). */
static void harden(void)
{
    struct rlimit none = {0, 0};

    (void)prctl(PR_SET_DUMPABLE, 0, 0, 0, 0);
    (void)setrlimit(RLIMIT_CORE, &none);
    umask(077);
    signal(SIGPIPE, SIG_IGN);
}

/* The right side of Message-IDs the daemon adds: the HELO name, else this
 * host's name when it is a usable DNS name. */
static void pick_msgid_domain(struct node *n)
{
    char host[HOST_NAME_MAX + 1], why[128];

    if (n->cfg.sender.helo[0] != '\0') {
        snprintf(n->intake.msgid_domain, sizeof(n->intake.msgid_domain), "%s", n->cfg.sender.helo);
        return;
    }
    if (gethostname(host, sizeof(host)) == 0) {
        host[sizeof(host) - 1] = '\0';
        if (syntax_host_classify(host, why, sizeof(why)) == SYNTAX_HOST_DNS) {
            snprintf(n->intake.msgid_domain, sizeof(n->intake.msgid_domain), "%s", host);
            return;
        }
    }
    snprintf(n->intake.msgid_domain, sizeof(n->intake.msgid_domain), "localhost.localdomain");
}

/* One daemon per data directory: two would both drain the outbox, whose
 * leases live in memory. The lock goes with the process. */
static int lock_data_dir(struct node *n)
{
    char path[CONFIG_PATH_MAX + 32], q[300];

    snprintf(path, sizeof(path), "%s/%s", n->cfg.node.data_dir, NODE_LOCK_FILE);
    n->lock_fd = open(path, O_RDWR | O_CREAT | O_CLOEXEC | O_NOFOLLOW, 0600);
    if (n->lock_fd < 0) {
        log_error("cannot open the lock file %s: %s", log_quote(q, sizeof(q), path),
                  strerror(errno));
        return -1;
    }
    if (flock(n->lock_fd, LOCK_EX | LOCK_NB) != 0) {
        log_error("another daemon is using the data directory %s (%s is locked)",
                  log_quote(q, sizeof(q), n->cfg.node.data_dir), NODE_LOCK_FILE);
        close(n->lock_fd);
        n->lock_fd = -1;
        return -1;
    }
    return 0;
}

static int open_data(struct node *n)
{
    char dir[CONFIG_PATH_MAX + 16], q[300];
    struct store_params sp = {
        .dir = n->cfg.node.data_dir, .key_file = NULL, .map_size = 0, .create = true};
    struct outbox_params op = {.dir = dir, .map_size = 0};
    struct store_info info;
    int err;

    log_quote(q, sizeof(q), n->cfg.node.data_dir);
    if ((err = store_open(&sp, &n->store)) != 0) {
        n->store = NULL;
        if (err == ERROR_KEYFILE)
            log_error("cannot open the settings store in %s: the node key %s/node.key is missing "
                      "or is not this store's",
                      q, n->cfg.node.data_dir);
        else
            log_error("cannot open the settings store in %s: %s", q, error_str(err));
        return err;
    }
    if (lock_data_dir(n) != 0)
        return ERROR_CONFLICT;
    if ((err = store_info(n->store, &info)) != 0) {
        log_error("cannot read the settings store in %s: %s", q, error_str(err));
        return err;
    }
    n->revision = info.revision;
    snprintf(dir, sizeof(dir), "%s/%s", n->cfg.node.data_dir, NODE_OUTBOX_DIR);
    if ((err = outbox_open(&op, &n->outbox)) != 0) {
        n->outbox = NULL;
        log_error("cannot open the outbox in %s/%s: %s", q, NODE_OUTBOX_DIR, error_str(err));
        return err;
    }
    apply_expiry(n);
    return 0;
}

static int start_submit(struct node *n)
{
    char q[300];
    int err;

    log_quote(q, sizeof(q), n->cfg.node.submit_socket);
    err = submit_server_start(&n->loop, n->cfg.node.submit_socket, &node_intake_callbacks,
                              &n->intake, &n->submit);
    if (err == 0)
        return 0;
    n->submit = NULL;
    if (err == -EADDRINUSE)
        log_error("the submission socket %s is in use: another daemon is listening on it", q);
    else if (err == -EEXIST)
        log_error("the submission socket path %s exists and is not a socket; not replacing it", q);
    else
        log_error("cannot listen on the submission socket %s: %s", q, error_str(err));
    return err;
}

static void start_handles(struct node *n)
{
    uv_signal_init(&n->loop, &n->sig_term);
    uv_signal_init(&n->loop, &n->sig_int);
    uv_signal_init(&n->loop, &n->sig_hup);
    uv_timer_init(&n->loop, &n->watch);
    n->sig_term.data = n->sig_int.data = n->sig_hup.data = n;
    n->watch.data = n;
    n->handles_started = true;
    uv_signal_start(&n->sig_term, on_signal, SIGTERM);
    uv_signal_start(&n->sig_int, on_signal, SIGINT);
    uv_signal_start(&n->sig_hup, on_signal, SIGHUP);
    uv_timer_start(&n->watch, on_watch, NODE_WATCH_MS, NODE_WATCH_MS);
}

static void log_started(struct node *n)
{
    struct outbox_depth d;
    char qs[300], qd[300];

    memset(&d, 0, sizeof(d));
    (void)outbox_depth(n->outbox, &d);
    log_info("started role=%s node=%s version=%s pid=%ld socket=%s data_dir=%s "
             "revision=%" PRIu64 " pending=%" PRIu64 " dead=%" PRIu64,
             node_role_name(n->params->role), n->cfg.node.id, SMTPSYNC_VERSION, (long)getpid(),
             log_quote(qs, sizeof(qs), n->cfg.node.submit_socket),
             log_quote(qd, sizeof(qd), n->cfg.node.data_dir), n->revision,
             d.pending[OUTBOX_TOKENCODE] + d.pending[OUTBOX_REPORT], d.dead);
}

/* Closes whatever a failed start left on the loop. */
static void walk_close(uv_handle_t *h, void *arg)
{
    (void)arg;
    if (!uv_is_closing(h))
        uv_close(h, NULL);
}

int node_run(const struct node_params *params)
{
    struct node *n;
    int err, rc;

    harden();
    if ((n = calloc(1, sizeof(*n))) == NULL) {
        log_error("cannot start: %s", error_str(-ENOMEM));
        return NODE_EXIT_FAIL;
    }
    n->params = params;
    if (config_copy(&n->cfg, params->cfg) != 0) {
        log_error("cannot start: %s", error_str(-ENOMEM));
        free(n);
        return NODE_EXIT_FAIL;
    }
    n->lock_fd = -1;
    n->state = NODE_RUNNING;
    n->exit_code = NODE_EXIT_OK;
    apply_log(n);
    if ((err = uv_loop_init(&n->loop)) != 0) {
        log_error("cannot start the event loop: %s", uv_strerror(err));
        free(n);
        return NODE_EXIT_FAIL;
    }

    rc = NODE_EXIT_FAIL;
    if (open_data(n) != 0)
        goto close_data;
    node_intake_init(&n->intake, &n->loop, n->outbox, on_wake, n);
    n->intake_ready = true;
    pick_msgid_domain(n);
    if ((err = sender_begin(n)) != 0) {
        n->sender = NULL;
        log_error("cannot start the sender: %s", error_str(err));
        goto close_data;
    }
    if (start_submit(n) != 0) {
        /* The sender stops (nothing is delivering yet); then the loop ends. */
        node_stop(n, NODE_EXIT_FAIL, "no submission socket");
        uv_run(&n->loop, UV_RUN_DEFAULT);
        goto close_data;
    }
    if (repl_begin(n) != 0) {
        node_stop(n, NODE_EXIT_FAIL, "replication could not start");
        uv_run(&n->loop, UV_RUN_DEFAULT);
        goto close_data;
    }
    if (start_metrics(n) != 0) {
        node_stop(n, NODE_EXIT_FAIL, "no metrics endpoint");
        uv_run(&n->loop, UV_RUN_DEFAULT);
        goto close_data;
    }
    start_handles(n);
    log_started(n);
    wake_sender(n);

    uv_run(&n->loop, UV_RUN_DEFAULT);
    rc = n->exit_code;
    log_info("stopped%s", rc == NODE_EXIT_OK ? "" : " after a failure");

close_data:
    if (n->intake_ready)
        node_intake_close(&n->intake, NULL, NULL);
    uv_walk(&n->loop, walk_close, NULL);
    uv_run(&n->loop, UV_RUN_DEFAULT);
    if (uv_loop_close(&n->loop) != 0)
        log_warnx("the event loop still had handles at exit");
    if (n->outbox != NULL)
        outbox_close(n->outbox);
    if (n->store != NULL)
        store_close(n->store);
    if (n->lock_fd >= 0)
        close(n->lock_fd);
    mtls_ctx_unref(n->ctx);
    config_clear(&n->cfg);
    free(n);
    return rc;
}
