/*
 * ctl_remote: smtpsyncctl's remote mode. One mutual-TLS connection to a
 * daemon's admin port (peer.h) on a private libuv loop, opened by the
 * first request of the run; each request is one Frame answered by one
 * AdminReply. The server must chain to the deployment CA and carry the
 * node id we expect (--server-id, else the DNS name of --server): any
 * node of the deployment may be asked, but only as itself, so a stolen
 * replica or admin certificate cannot pose as the primary and be sent a
 * password. The daemon maps our certificate to a role.
 *
 * Every failure of the transport is one line naming what to check: the
 * address (cannot connect), our certificate (refused at the handshake),
 * the daemon (no reply in time).
 */
#include <errno.h>
#include <inttypes.h>
#include <limits.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <ini.h>
#include <uv.h>

#include "ctl.h"
#include "ctl_output.h"
#include "error.h"
#include "log.h"
#include "mtls.h"
#include "peer.h"
#include "settings_pb.h"
#include "syntax.h"

/* Values read from [ctl]. */
struct ctl_conf {
    char server[PEER_ADDR_MAX + 1];
    char server_id[MTLS_ID_MAX + 1];
    char derived_id[MTLS_ID_MAX + 1]; /* the host of --server, as the default id */
    char ca[PATH_MAX];
    char cert[PATH_MAX];
    char key[PATH_MAX];
};

enum remote_phase {
    REMOTE_CONNECTING, /* until on_open */
    REMOTE_OPEN,
    REMOTE_CLOSED, /* on_close was called */
};

struct ctl_remote {
    uv_loop_t loop;
    uv_timer_t timer;
    struct mtls_ctx *ctx;
    struct peer *peer;
    enum remote_phase phase;
    bool was_open;  /* on_open was reached */
    bool timed_out; /* the current wait's timer fired */
    int close_err;
    char close_reason[PEER_REASON_MAX];
    char server_id[MTLS_ID_MAX + 1];
    uint64_t next_id;
    uint64_t want_id;            /* the request waiting for its reply */
    Smtpsync__AdminReply *reply; /* its reply, a copy of ours */
    int error_code;              /* ... or an Error frame with its id */
    char error_msg[256];
    bool unexpected; /* a frame that was neither */
};

bool ctl_remote(const struct ctl *ctl)
{
    return ctl->server != NULL;
}

/* --- [ctl] in a config file ----------------------------------------------- */

struct conf_parse {
    FILE *f;
    const char *path;
    const char *dir; /* for relative paths; "" for the current one */
    struct ctl_conf *conf;
    int lineno;
    bool seen_section;
    bool bad;
    bool seen[5];
};

static char *conf_reader(char *str, int num, void *stream)
{
    struct conf_parse *cp = stream;
    char *r = fgets(str, num, cp->f);

    if (r != NULL)
        cp->lineno++;
    return r;
}

static int conf_handler(void *user, const char *section, const char *name, const char *value)
{
    /* Files first after server: they are the keys with paths. */
    static const char *const keys[] = {"server", "ca", "cert", "key", "server_id"};
    struct conf_parse *cp = user;
    char q[96], *dst;
    size_t cap;
    int k = -1;

    if (strcmp(section, "ctl") != 0)
        return 1; /* other sections are not smtpsyncctl's: skipped */
    cp->seen_section = true;
    if (name == NULL)
        return 1;
    for (int i = 0; i < 5; i++)
        if (strcmp(name, keys[i]) == 0)
            k = i;
    if (k < 0) {
        ctl_errorf("%s:%d: unknown key '%s' in [ctl] (known: server, server_id, ca, cert, "
                   "key)",
                   cp->path, cp->lineno, ctl_quote(name, q, sizeof(q)));
        cp->bad = true;
        return 1;
    }
    if (cp->seen[k]) {
        ctl_errorf("%s:%d: key '%s' given twice in [ctl]", cp->path, cp->lineno, keys[k]);
        cp->bad = true;
        return 1;
    }
    cp->seen[k] = true;
    if (value[0] == '\0') {
        ctl_errorf("%s:%d: empty value for '%s' in [ctl]", cp->path, cp->lineno, keys[k]);
        cp->bad = true;
        return 1;
    }
    switch (k) {
    case 0:
        dst = cp->conf->server, cap = sizeof(cp->conf->server);
        break;
    case 1:
        dst = cp->conf->ca, cap = sizeof(cp->conf->ca);
        break;
    case 2:
        dst = cp->conf->cert, cap = sizeof(cp->conf->cert);
        break;
    case 4:
        dst = cp->conf->server_id, cap = sizeof(cp->conf->server_id);
        break;
    default:
        dst = cp->conf->key, cap = sizeof(cp->conf->key);
        break;
    }
    /* Files are found next to the config file, wherever it is run from. */
    int n = k > 0 && k < 4 && value[0] != '/' && cp->dir[0] != '\0'
                ? snprintf(dst, cap, "%s/%s", cp->dir, value)
                : snprintf(dst, cap, "%s", value);
    if (n < 0 || (size_t)n >= cap) {
        ctl_errorf("%s:%d: the value of '%s' is too long", cp->path, cp->lineno, keys[k]);
        dst[0] = '\0';
        cp->bad = true;
    }
    return 1;
}

/* Reads [ctl] of `path` into ctl->conf. Prints problems; exit status. */
static int conf_load(struct ctl *ctl, const char *path, const char *origin)
{
    struct conf_parse cp = {.path = path, .lineno = 0};
    char q[256], dir[PATH_MAX];
    const char *slash;
    struct stat st;
    int fd, rc;

    ctl_quote(path, q, sizeof(q));
    cp.path = q;
    if ((ctl->conf = calloc(1, sizeof(*ctl->conf))) == NULL) {
        ctl_errorf("%s", strerror(ENOMEM));
        return CTL_EXIT_FAIL;
    }
    cp.conf = ctl->conf;
    slash = strrchr(path, '/');
    snprintf(dir, sizeof(dir), "%.*s", slash != NULL ? (int)(slash - path) : 0, path);
    if (slash == path)
        snprintf(dir, sizeof(dir), "/");
    cp.dir = dir;

    fd = ctl_open_input(path, origin, &st);
    if (fd < 0)
        return CTL_EXIT_FAIL;
    if ((cp.f = fdopen(fd, "r")) == NULL) {
        ctl_errorf("cannot read %s: %s", q, strerror(errno));
        close(fd);
        return CTL_EXIT_FAIL;
    }
    rc = ini_parse_stream(conf_reader, &cp, conf_handler, &cp);
    fclose(cp.f);
    if (rc != 0) {
        ctl_errorf("%s:%d: not a valid INI line", q, rc > 0 ? rc : cp.lineno);
        return CTL_EXIT_USAGE;
    }
    if (cp.bad)
        return CTL_EXIT_USAGE;
    if (!cp.seen_section) {
        ctl_errorf("%s: no [ctl] section (it names server, server_id, ca, cert and key)", q);
        return CTL_EXIT_USAGE;
    }
    if (ctl->conf->server_id[0] != '\0' && ctl->conf->server[0] == '\0') {
        ctl_errorf("%s: server_id in [ctl] is the id of the node at server: give server too", q);
        return CTL_EXIT_USAGE;
    }
    /* server_id belongs to the file's server: with another address from
     * the command line it would name the wrong node. */
    if (ctl->server == NULL && ctl->conf->server[0] != '\0') {
        ctl->server = ctl->conf->server;
        if (ctl->server_id == NULL && ctl->conf->server_id[0] != '\0')
            ctl->server_id = ctl->conf->server_id;
    }
    if (ctl->ca == NULL && ctl->conf->ca[0] != '\0')
        ctl->ca = ctl->conf->ca;
    if (ctl->cert == NULL && ctl->conf->cert[0] != '\0')
        ctl->cert = ctl->conf->cert;
    if (ctl->key == NULL && ctl->conf->key[0] != '\0')
        ctl->key = ctl->conf->key;
    return CTL_EXIT_OK;
}

/* A file remote mode needs: it must exist and be readable. */
static bool file_ok(const char *option, const char *path)
{
    char q[256];

    if (access(path, R_OK) == 0)
        return true;
    ctl_errorf("%s %s: %s", option, ctl_quote(path, q, sizeof(q)), strerror(errno));
    return false;
}

/*
 * Sets ctl->server_id: checks --server-id, or takes the host of --server
 * when it is a DNS name. An IP address names no node, so it needs an id.
 * Prints problems; returns the exit status.
 */
static int server_id_setup(struct ctl *ctl)
{
    const char *colon = strrchr(ctl->server, ':');
    char host[MTLS_ID_MAX + 1], why[128], q[96];
    enum syntax_host kind = SYNTAX_HOST_BAD;

    snprintf(why, sizeof(why), "the host is longer than %d characters", MTLS_ID_MAX);
    if (colon - ctl->server <= MTLS_ID_MAX) {
        memcpy(host, ctl->server, (size_t)(colon - ctl->server));
        host[colon - ctl->server] = '\0';
        kind = syntax_host_classify(host, why, sizeof(why));
    }
    if (kind == SYNTAX_HOST_BAD) {
        ctl_errorf("--server: '%s' is not HOST:PORT: %s", ctl_quote(ctl->server, q, sizeof(q)),
                   why);
        return CTL_EXIT_USAGE;
    }
    if (ctl->server_id != NULL) {
        if (ctl->server_id[0] == '\0' || strlen(ctl->server_id) > MTLS_ID_MAX ||
            syntax_has_control(ctl->server_id)) {
            ctl_errorf("--server-id: '%s' is not a node id (1-%d characters, no control "
                       "characters)",
                       ctl_quote(ctl->server_id, q, sizeof(q)), MTLS_ID_MAX);
            return CTL_EXIT_USAGE;
        }
        return CTL_EXIT_OK;
    }
    if (kind != SYNTAX_HOST_DNS) {
        ctl_errorf("--server is an IP address: give --server-id NODE so the server's certificate "
                   "can be checked");
        return CTL_EXIT_USAGE;
    }
    if (ctl->conf == NULL && (ctl->conf = calloc(1, sizeof(*ctl->conf))) == NULL) {
        ctl_errorf("%s", strerror(ENOMEM));
        return CTL_EXIT_FAIL;
    }
    snprintf(ctl->conf->derived_id, sizeof(ctl->conf->derived_id), "%s", host);
    ctl->server_id = ctl->conf->derived_id;
    return CTL_EXIT_OK;
}

int ctl_remote_setup(struct ctl *ctl)
{
    const char *path = ctl->config, *origin = "--config";
    bool ok = true;
    char q[96];
    int rc;

    if (path == NULL) {
        const char *env = getenv("SMTPSYNC_CONFIG");
        if (env != NULL && env[0] != '\0') {
            path = env;
            origin = "SMTPSYNC_CONFIG";
        }
    }
    if (path != NULL && (rc = conf_load(ctl, path, origin)) != CTL_EXIT_OK)
        return rc;
    if (ctl->server == NULL) {
        if (ctl->ca != NULL || ctl->cert != NULL || ctl->key != NULL || ctl->server_id != NULL) {
            ctl_errorf("--ca, --cert, --key and --server-id are for remote mode: give --server "
                       "HOST:PORT too");
            return CTL_EXIT_USAGE;
        }
        return CTL_EXIT_OK;
    }
    if (ctl->server[0] == '\0' || strlen(ctl->server) > PEER_ADDR_MAX ||
        strrchr(ctl->server, ':') == NULL) {
        ctl_errorf("--server: '%s' is not HOST:PORT", ctl_quote(ctl->server, q, sizeof(q)));
        return CTL_EXIT_USAGE;
    }
    if (ctl->ca == NULL || ctl->cert == NULL || ctl->key == NULL) {
        ctl_errorf("remote mode needs --ca, --cert and --key (missing:%s%s%s), or the same keys in "
                   "[ctl] of --config FILE",
                   ctl->ca == NULL ? " --ca" : "", ctl->cert == NULL ? " --cert" : "",
                   ctl->key == NULL ? " --key" : "");
        return CTL_EXIT_USAGE;
    }
    if ((rc = server_id_setup(ctl)) != CTL_EXIT_OK)
        return rc;
    ok = file_ok("--ca", ctl->ca);
    ok = file_ok("--cert", ctl->cert) && ok;
    ok = file_ok("--key", ctl->key) && ok;
    return ok ? CTL_EXIT_OK : CTL_EXIT_FAIL;
}

void ctl_remote_free_conf(struct ctl *ctl)
{
    free(ctl->conf);
    ctl->conf = NULL;
}

/* --- the connection ------------------------------------------------------- */

static void on_open(void *arg, struct peer *p, const char *peer_id)
{
    struct ctl_remote *r = arg;

    (void)p;
    r->phase = REMOTE_OPEN;
    r->was_open = true;
    snprintf(r->server_id, sizeof(r->server_id), "%s", peer_id);
}

static void on_frame(void *arg, struct peer *p, const Smtpsync__Frame *f)
{
    struct ctl_remote *r = arg;
    uint8_t *buf;
    size_t len;

    (void)p;
    if (f->id != r->want_id || r->reply != NULL || r->error_code != 0) {
        r->unexpected = true;
        return;
    }
    if (f->body_case == SMTPSYNC__FRAME__BODY_ERROR) {
        r->error_code = f->error->code < 0 ? f->error->code : ERROR_INVALID;
        snprintf(r->error_msg, sizeof(r->error_msg), "%s",
                 f->error->message != NULL ? f->error->message : "");
        return;
    }
    if (f->body_case != SMTPSYNC__FRAME__BODY_ADMIN_REPLY) {
        r->unexpected = true;
        return;
    }
    /* The frame is borrowed: keep a copy. */
    len = smtpsync__admin_reply__get_packed_size(f->admin_reply);
    if ((buf = malloc(len + 1)) == NULL) {
        r->error_code = -ENOMEM;
        snprintf(r->error_msg, sizeof(r->error_msg), "%s", strerror(ENOMEM));
        return;
    }
    smtpsync__admin_reply__pack(f->admin_reply, buf);
    r->reply = smtpsync__admin_reply__unpack(NULL, len, buf);
    free(buf);
    if (r->reply == NULL) {
        r->error_code = -ENOMEM;
        snprintf(r->error_msg, sizeof(r->error_msg), "%s", strerror(ENOMEM));
    }
}

static void on_close(void *arg, struct peer *p, int err, const char *reason)
{
    struct ctl_remote *r = arg;

    (void)p;
    r->phase = REMOTE_CLOSED;
    r->peer = NULL;
    r->close_err = err;
    snprintf(r->close_reason, sizeof(r->close_reason), "%s", reason != NULL ? reason : "");
}

static void on_timer(uv_timer_t *t)
{
    struct ctl_remote *r = t->data;

    r->timed_out = true;
}

/* Prints why the connection ended before the reply came. */
static void print_close(const struct ctl *ctl, const struct ctl_remote *r)
{
    char q[96], why[PEER_REASON_MAX + 8];
    const char *other;

    ctl_quote(ctl->server, q, sizeof(q));
    ctl_quote(r->close_reason, why, sizeof(why));
    other = strstr(why, "the server's certificate is for");
    if (r->close_err == ERROR_TLS && other != NULL)
        ctl_errorf("%s is not the node expected: %s (--server-id, or the DNS name in --server, "
                   "must name the node at that address)",
                   q, other);
    else if (r->close_err == ERROR_TLS && strstr(r->close_reason, "refused by the server") != NULL)
        ctl_errorf("%s refused the TLS connection: your certificate is not accepted there (%s)", q,
                   why);
    else if (r->close_err == ERROR_TLS)
        ctl_errorf("TLS with %s failed: %s (are --ca, --cert and --key those of this "
                   "deployment?)",
                   q, why);
    else if (!r->was_open && r->close_err == -ETIMEDOUT)
        ctl_errorf("cannot connect to %s: timed out (%s)", q, why);
    else if (!r->was_open && strncmp(why, "cannot connect", 14) == 0)
        ctl_errorf("%s", why);
    else if (!r->was_open)
        ctl_errorf("cannot connect to %s: %s", q, why);
    else
        ctl_errorf("the connection to %s was closed before the reply: %s", q,
                   why[0] != '\0' ? why : "closed by the server");
}

/* Runs the loop until `done` or the timer (timeout_ms) fires. */
static void wait_for(struct ctl_remote *r, bool (*done)(const struct ctl_remote *),
                     uint64_t timeout_ms)
{
    r->timed_out = false;
    uv_timer_start(&r->timer, on_timer, timeout_ms, 0);
    while (!done(r) && !r->timed_out)
        uv_run(&r->loop, UV_RUN_ONCE);
    uv_timer_stop(&r->timer);
}

static bool opened(const struct ctl_remote *r)
{
    return r->phase != REMOTE_CONNECTING;
}

static bool answered(const struct ctl_remote *r)
{
    return r->phase == REMOTE_CLOSED || r->reply != NULL || r->error_code != 0 || r->unexpected;
}

/* Connects (once per run). Prints failures; returns the exit status. */
static int remote_open(struct ctl *ctl)
{
    static const struct peer_callbacks cb = {NULL, on_open, on_frame, on_close};
    struct peer_params params = {0};
    struct ctl_remote *r;
    char why[512], qwhy[512], q[96];
    int err;

    if (ctl->remote != NULL)
        return ctl->remote->phase == REMOTE_OPEN ? CTL_EXIT_OK : CTL_EXIT_FAIL;
    /* The daemon's log lines are not ours to print: the failure is told
     * once, below, in the CLI's words. */
    log_init(CTL_PROG, LOG_LEVEL_ERROR, LOG_FORMAT_TEXT);
    /* A server that goes away while we write must fail the request, not
     * kill the process. */
    (void)signal(SIGPIPE, SIG_IGN);

    if ((r = calloc(1, sizeof(*r))) == NULL) {
        ctl_errorf("%s", strerror(ENOMEM));
        return CTL_EXIT_FAIL;
    }
    ctl->remote = r;
    r->phase = REMOTE_CLOSED;
    if ((err = uv_loop_init(&r->loop)) < 0) {
        ctl_errorf("cannot start: %s", uv_strerror(err));
        free(r);
        ctl->remote = NULL;
        return CTL_EXIT_FAIL;
    }
    uv_timer_init(&r->loop, &r->timer);
    r->timer.data = r;
    r->next_id = 1;

    why[0] = '\0';
    err = mtls_ctx_load(ctl->ca, ctl->cert, ctl->key, &r->ctx, why, sizeof(why));
    if (err < 0) {
        ctl_errorf("cannot use --ca, --cert and --key: %s",
                   why[0] != '\0' ? ctl_quote(why, qwhy, sizeof(qwhy)) : error_str(err));
        return CTL_EXIT_FAIL;
    }
    /* --timeout bounds the connection too, when it is the shorter. */
    params.handshake_timeout_ms = PEER_HANDSHAKE_TIMEOUT_DEFAULT_MS;
    if (ctl->timeout_ms != 0 && ctl->timeout_ms < params.handshake_timeout_ms)
        params.handshake_timeout_ms = ctl->timeout_ms;
    r->phase = REMOTE_CONNECTING;
    /* Never NULL here (ctl_remote_setup): the server proves who it is. */
    err = peer_connect(&r->loop, ctl->server, r->ctx, ctl->server_id, &params, &cb, r, &r->peer);
    if (err < 0) {
        r->phase = REMOTE_CLOSED;
        ctl_errorf("cannot connect to %s: %s", ctl_quote(ctl->server, q, sizeof(q)),
                   err == -EINVAL ? "not a valid HOST:PORT" : error_str(err));
        return CTL_EXIT_FAIL;
    }
    /* The peer's own handshake timer bounds this wait; ours is a backstop. */
    wait_for(r, opened, params.handshake_timeout_ms + 5000);
    if (r->phase == REMOTE_OPEN)
        return CTL_EXIT_OK;
    if (r->phase == REMOTE_CONNECTING) {
        ctl_errorf("cannot connect to %s: timed out", ctl_quote(ctl->server, q, sizeof(q)));
        return CTL_EXIT_FAIL;
    }
    print_close(ctl, r);
    return CTL_EXIT_FAIL;
}

int ctl_remote_call(struct ctl *ctl, Smtpsync__Frame *req, uint64_t timeout_ms,
                    Smtpsync__AdminReply **out)
{
    struct ctl_remote *r;
    char q[96];
    int rc, err;

    *out = NULL;
    if ((rc = remote_open(ctl)) != CTL_EXIT_OK)
        return rc;
    r = ctl->remote;
    if (ctl->timeout_ms != 0)
        timeout_ms = ctl->timeout_ms;
    else if (timeout_ms == 0)
        timeout_ms = CTL_REPLY_TIMEOUT_MS;
    ctl_quote(ctl->server, q, sizeof(q));

    req->id = r->next_id++;
    r->want_id = req->id;
    r->error_code = 0;
    r->unexpected = false;
    err = peer_send(r->peer, req);
    if (err == ERROR_TOO_BIG) {
        ctl_errorf("the request is too large to send");
        return CTL_EXIT_FAIL;
    }
    if (err < 0 && r->phase != REMOTE_CLOSED) {
        ctl_errorf("cannot send to %s: %s", q, error_str(err));
        return CTL_EXIT_FAIL;
    }
    wait_for(r, answered, timeout_ms);
    if (r->reply != NULL) {
        *out = r->reply;
        r->reply = NULL;
        return CTL_EXIT_OK;
    }
    if (r->error_code != 0) {
        ctl_errorf("%s refused the request: %s", q,
                   r->error_msg[0] != '\0' ? r->error_msg : error_str(r->error_code));
        return CTL_EXIT_FAIL;
    }
    if (r->unexpected) {
        ctl_errorf("%s answered with something other than a reply to this request", q);
        return CTL_EXIT_FAIL;
    }
    if (r->phase == REMOTE_CLOSED) {
        print_close(ctl, r);
        return CTL_EXIT_FAIL;
    }
    ctl_errorf("no reply from %s within %" PRIu64 " s (see --timeout)", q,
               (timeout_ms + 999) / 1000);
    return CTL_EXIT_FAIL;
}

int ctl_remote_ask(struct ctl *ctl, Smtpsync__Frame *req, uint64_t timeout_ms, bool problems_all,
                   Smtpsync__AdminReply **out)
{
    int rc = ctl_remote_call(ctl, req, timeout_ms, out);

    if (rc == CTL_EXIT_OK && (*out)->code != 0) {
        rc = ctl_remote_fail(*out, problems_all);
        smtpsync__admin_reply__free_unpacked(*out, NULL);
        *out = NULL;
    }
    return rc;
}

static void on_timer_closed(uv_handle_t *h)
{
    (void)h;
}

void ctl_remote_close(struct ctl *ctl)
{
    struct ctl_remote *r = ctl->remote;

    if (r == NULL)
        return;
    /* Orderly: what is queued is still sent, within the peer's handshake
     * timeout, so this ends. */
    if (r->peer != NULL && r->phase != REMOTE_CLOSED)
        peer_close(r->peer, 0, "done");
    uv_close((uv_handle_t *)&r->timer, on_timer_closed);
    uv_run(&r->loop, UV_RUN_DEFAULT);
    (void)uv_loop_close(&r->loop);
    if (r->reply != NULL)
        smtpsync__admin_reply__free_unpacked(r->reply, NULL);
    if (r->ctx != NULL)
        mtls_ctx_unref(r->ctx);
    free(r);
    ctl->remote = NULL;
}

/* --- replies -------------------------------------------------------------- */

void ctl_remote_problems(const Smtpsync__AdminReply *r, struct settings_problems *p)
{
    p->count = 0;
    p->dropped = 0;
    for (size_t i = 0; i < r->n_problems; i++) {
        const Smtpsync__Problem *m = r->problems[i];
        if (p->count >= SETTINGS_PROBLEMS_MAX) {
            p->dropped++;
            continue;
        }
        struct settings_problem *q = &p->items[p->count++];
        snprintf(q->field, sizeof(q->field), "%s", m->field != NULL ? m->field : "");
        snprintf(q->message, sizeof(q->message), "%s", m->message != NULL ? m->message : "");
        q->incomplete = m->incomplete;
    }
}

int ctl_remote_fail(const Smtpsync__AdminReply *r, bool all)
{
    struct settings_problems p;

    ctl_remote_problems(r, &p);
    if (all) {
        ctl_output_problems_all(&p);
    } else {
        /* What is wrong, then what is missing. */
        ctl_output_problems(&p, false);
        ctl_output_problems(&p, true);
    }
    if (r->error != NULL && r->error[0] != '\0')
        ctl_errorf("%s", r->error);
    else
        ctl_errorf("the request failed: %s", error_str(r->code));
    if (r->needs_role != NULL && r->needs_role[0] != '\0') {
        char q[64];
        ctl_errorf("ask for a certificate with the %s role, or have one mapped to it in [admin] "
                   "of the daemon's config",
                   ctl_quote(r->needs_role, q, sizeof(q)));
    }
    return CTL_EXIT_FAIL;
}

int ctl_remote_settings(const Smtpsync__Settings *m, struct settings *s)
{
    struct settings_problems p = {.count = 0, .dropped = 0};
    int err = settings_pb_decode(s, m, &p);

    if (err < 0)
        ctl_errorf("the server sent a record that does not decode: %s%s%s",
                   p.count > 0 ? p.items[0].field : error_str(err), p.count > 0 ? " " : "",
                   p.count > 0 ? p.items[0].message : "");
    return err;
}
