/*
 * conntest: Test Connection (conntest.h). One smtp_client session with
 * verbose steps sends one short test mail; every step the client reports
 * becomes a TestStep, and a failed one gets a diagnosis (conntest_diag.c)
 * written from the failure kind, the step, the server's reply and the
 * settings (host, port, TLS mode, user, recipient). The client reports the
 * step it failed at, so nothing here guesses it (fallback_kind() is a last
 * resort for a failure reported without one).
 *
 * Nothing secret reaches the result: the client's details never hold one,
 * and it masks the password in the server's text, which a hostile server
 * could make echo what it was sent (smtp_client_redact), before handing
 * any of it out.
 */
#include "internal.h"

#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "conntest.h"
#include "error.h"
#include "smtp_client.h"
#include "smtp_message.h"
#include "syntax.h"

#define CONNTEST_TEXT_MAX 8192 /* a recorded string, before escaping */
#define CONNTEST_DIAG_MAX 2048 /* a diagnosis */
#define CONNTEST_NODE_MAX 256

struct conntest {
    uv_loop_t *loop;
    /* Never started: closing it defers `done` to the loop, so that it is
     * never called from conntest_start() or from inside a client callback. */
    uv_timer_t finish;
    conntest_done_cb done; /* NULL after a failed start: free, call nothing */
    void *arg;

    struct settings settings; /* copy; the password is wiped by settings_clear */
    char to[SETTINGS_ADDRESS_MAX + 1];
    char node[CONNTEST_NODE_MAX];
    char *helo;
    char *revision;
    uint32_t port;

    /* The test mail; msg points into the fields below. */
    struct smtp_client_msg msg;
    const char *rcpts[1];
    char from_header[SETTINGS_ADDRESS_MAX + 32];
    char *data;
    size_t data_len;
    bool msg_handed;
    bool accepted;
    bool failed; /* a failed step that is not a warning was recorded */
    bool nomem;  /* a step could not be recorded */

    char caps[CONNTEST_TEXT_MAX]; /* the last EHLO capabilities, for AUTH */
    Smtpsync__TestResult *result;
    size_t steps_cap;
};

/* --- names ---------------------------------------------------------------- */

static const char *const step_names[] = {
    [SMTPSYNC__TEST_STEP_KIND__TEST_STEP_RESOLVE] = "resolve",
    [SMTPSYNC__TEST_STEP_KIND__TEST_STEP_CONNECT] = "connect",
    [SMTPSYNC__TEST_STEP_KIND__TEST_STEP_TLS] = "tls",
    [SMTPSYNC__TEST_STEP_KIND__TEST_STEP_CERTIFICATE] = "certificate",
    [SMTPSYNC__TEST_STEP_KIND__TEST_STEP_GREETING] = "greeting",
    [SMTPSYNC__TEST_STEP_KIND__TEST_STEP_EHLO] = "ehlo",
    [SMTPSYNC__TEST_STEP_KIND__TEST_STEP_STARTTLS] = "starttls",
    [SMTPSYNC__TEST_STEP_KIND__TEST_STEP_AUTH] = "auth",
    [SMTPSYNC__TEST_STEP_KIND__TEST_STEP_MAIL] = "mail",
    [SMTPSYNC__TEST_STEP_KIND__TEST_STEP_RCPT] = "rcpt",
    [SMTPSYNC__TEST_STEP_KIND__TEST_STEP_DATA] = "data",
    [SMTPSYNC__TEST_STEP_KIND__TEST_STEP_QUIT] = "quit",
    [SMTPSYNC__TEST_STEP_KIND__TEST_STEP_SETTINGS] = "settings",
};

#define N_STEP_NAMES (sizeof(step_names) / sizeof(step_names[0]))

const char *conntest_step_name(Smtpsync__TestStepKind kind)
{
    if ((unsigned)kind < N_STEP_NAMES && step_names[kind] != NULL)
        return step_names[kind];
    return "unknown";
}

/* The client's step kinds, in the proto's terms. */
static Smtpsync__TestStepKind step_kind(enum smtp_client_step_kind k)
{
    static const Smtpsync__TestStepKind kinds[] = {
        [SMTP_STEP_RESOLVE] = SMTPSYNC__TEST_STEP_KIND__TEST_STEP_RESOLVE,
        [SMTP_STEP_CONNECT] = SMTPSYNC__TEST_STEP_KIND__TEST_STEP_CONNECT,
        [SMTP_STEP_TLS] = SMTPSYNC__TEST_STEP_KIND__TEST_STEP_TLS,
        [SMTP_STEP_CERTIFICATE] = SMTPSYNC__TEST_STEP_KIND__TEST_STEP_CERTIFICATE,
        [SMTP_STEP_GREETING] = SMTPSYNC__TEST_STEP_KIND__TEST_STEP_GREETING,
        [SMTP_STEP_EHLO] = SMTPSYNC__TEST_STEP_KIND__TEST_STEP_EHLO,
        [SMTP_STEP_STARTTLS] = SMTPSYNC__TEST_STEP_KIND__TEST_STEP_STARTTLS,
        [SMTP_STEP_AUTH] = SMTPSYNC__TEST_STEP_KIND__TEST_STEP_AUTH,
        [SMTP_STEP_MAIL] = SMTPSYNC__TEST_STEP_KIND__TEST_STEP_MAIL,
        [SMTP_STEP_RCPT] = SMTPSYNC__TEST_STEP_KIND__TEST_STEP_RCPT,
        [SMTP_STEP_DATA] = SMTPSYNC__TEST_STEP_KIND__TEST_STEP_DATA,
        [SMTP_STEP_QUIT] = SMTPSYNC__TEST_STEP_KIND__TEST_STEP_QUIT,
    };

    if ((unsigned)k < sizeof(kinds) / sizeof(kinds[0]))
        return kinds[k];
    return SMTPSYNC__TEST_STEP_KIND__TEST_STEP_UNSET;
}

/* --- text ----------------------------------------------------------------- */

/* Writes the `inlen` octets of `in` as printable ASCII: other octets as
 * \xNN, and "\n" kept only when `multiline`. At most `max` input octets are
 * taken; more is cut with "...". Returns a malloc'd string or NULL. */
static char *escape(const char *in, size_t inlen, bool multiline, size_t max)
{
    size_t n = inlen > max ? max + 1 : inlen, o = 0;
    char *out = malloc((n > max ? max : n) * 4 + 4);

    if (out == NULL)
        return NULL;
    for (size_t i = 0; i < n && i < max; i++) {
        unsigned char c = (unsigned char)in[i];
        if ((c >= 0x20 && c < 0x7f) || (c == '\n' && multiline))
            out[o++] = (char)c;
        else
            o += (size_t)snprintf(out + o, 5, "\\x%02x", c);
    }
    if (n > max) {
        memcpy(out + o, "...", 3);
        o += 3;
    }
    out[o] = '\0';
    return out;
}

/* Text from the server, the client or the settings as it is recorded:
 * escaped (the client masked the password already). NULL and "" give NULL
 * (the field keeps its default ""); sets ct->nomem when out of memory. */
static char *record_text(struct conntest *ct, const char *in, bool multiline)
{
    size_t n;
    char *out;

    if (in == NULL || in[0] == '\0')
        return NULL;
    /* Trailing line ends of a reply say nothing. */
    for (n = strlen(in); n > 0 && (in[n - 1] == '\n' || in[n - 1] == '\r'); n--)
        ;
    if (n == 0)
        return NULL;
    out = escape(in, n, multiline, CONNTEST_TEXT_MAX);
    if (out == NULL)
        ct->nomem = true;
    return out;
}

/* --- recording steps ------------------------------------------------------ */

/* Appends a step; its strings are recorded (escaped). */
static void step_add(struct conntest *ct, Smtpsync__TestStepKind kind, bool ok, uint64_t elapsed_us,
                     const char *detail, const char *reply, const char *diagnosis)
{
    Smtpsync__TestResult *r = ct->result;
    Smtpsync__TestStep *st;
    char *text;

    if (r->n_steps == ct->steps_cap) {
        size_t cap = ct->steps_cap == 0 ? 16 : ct->steps_cap * 2;
        Smtpsync__TestStep **steps = realloc(r->steps, cap * sizeof(*steps));
        if (steps == NULL) {
            ct->nomem = true;
            return;
        }
        r->steps = steps;
        ct->steps_cap = cap;
    }
    st = malloc(sizeof(*st));
    if (st == NULL) {
        ct->nomem = true;
        return;
    }
    smtpsync__test_step__init(st);
    st->kind = kind;
    st->ok = ok;
    st->elapsed_us = elapsed_us;
    if ((text = record_text(ct, detail, false)) != NULL)
        st->detail = text;
    if ((text = record_text(ct, reply, true)) != NULL)
        st->server_reply = text;
    if ((text = record_text(ct, diagnosis, true)) != NULL)
        st->diagnosis = text;
    r->steps[r->n_steps++] = st;
}

/* What conntest__diagnose() needs besides the failed step. */
static struct conntest__diag diag_of(const struct conntest *ct)
{
    return (struct conntest__diag){
        .settings = &ct->settings,
        .port = ct->port,
        .to = ct->to,
        .helo = ct->helo,
        .caps = ct->caps,
    };
}

/* Records a failed step with its diagnosis. A failure after the mail was
 * accepted, one the client only warns about, or one after the failure that
 * decided the result (a broken QUIT after a refused RCPT) is a warning. */
static void step_fail(struct conntest *ct, const struct conntest__diag *in, uint64_t elapsed_us,
                      bool warning)
{
    char diag[CONNTEST_DIAG_MAX];
    bool after_failure = !warning && !ct->accepted && ct->failed;
    size_t pos = 0;

    warning = warning || ct->accepted || after_failure;
    if (warning)
        conntest__appendf(diag, sizeof(diag), &pos, "%s", CONNTEST_WARNING);
    if (warning && in->kind == SMTPSYNC__TEST_STEP_KIND__TEST_STEP_STARTTLS && !ct->accepted &&
        !after_failure) {
        conntest__appendf(
            diag, sizeof(diag), &pos,
            "STARTTLS failed and starttls_fallback=on let the session go on in plaintext: "
            "mail from this node travels unencrypted; switch starttls_fallback off once the "
            "server offers STARTTLS");
    } else {
        if (after_failure)
            conntest__appendf(diag, sizeof(diag), &pos, "after the failure above, ");
        else if (warning)
            conntest__appendf(diag, sizeof(diag), &pos, "the test mail was accepted, but then ");
        conntest__diagnose(in, diag + pos, sizeof(diag) - pos);
    }
    step_add(ct, in->kind, false, elapsed_us, in->detail, in->reply, diag);
    if (!warning)
        ct->failed = true;
}

/* The first failed step of the settings check: every problem, one a line. */
static void step_settings(struct conntest *ct, const struct settings_problems *p, const char *why)
{
    char diag[CONNTEST_DIAG_MAX * 2], detail[128];
    size_t pos = 0, n = p != NULL ? p->count : 0, dropped = p != NULL ? p->dropped : 0;

    if (why != NULL)
        conntest__appendf(diag, sizeof(diag), &pos, "%s", why);
    for (size_t i = 0; i < n && i < SETTINGS_PROBLEMS_MAX; i++)
        conntest__appendf(diag, sizeof(diag), &pos, "%s%s: %s", pos > 0 ? "\n" : "",
                          p->items[i].field, p->items[i].message);
    if (dropped > 0)
        conntest__appendf(diag, sizeof(diag), &pos, "\n... and %zu more", dropped);
    if (n > 0)
        snprintf(detail, sizeof(detail), "%zu problem%s in the settings: they cannot be tried",
                 n + dropped, n + dropped == 1 ? "" : "s");
    else
        snprintf(detail, sizeof(detail), "the settings cannot be tried");
    step_add(ct, SMTPSYNC__TEST_STEP_KIND__TEST_STEP_SETTINGS, false, 0, detail, NULL, diag);
    ct->failed = true;
}

/* --- the session ---------------------------------------------------------- */

/* Frees the test and what it owns but its result; the password is wiped
 * by settings_clear(). */
static void conntest_free(struct conntest *ct)
{
    settings_clear(&ct->settings);
    free(ct->data);
    free(ct->helo);
    free(ct->revision);
    free(ct);
}

static void on_finished(uv_handle_t *h)
{
    struct conntest *ct = h->data;
    conntest_done_cb done = ct->done;
    void *arg = ct->arg;
    Smtpsync__TestResult *result = ct->result;

    /* The callback comes last: it may free or reuse what `arg` points to. */
    conntest_free(ct);
    if (done != NULL)
        done(arg, result);
    else
        conntest_result_free(result);
}

/*
 * The step of a failure the client reported without one: a last resort,
 * since the client reports a failed step for every end but a cancel. The
 * failure kind decides when it names one step (a TLS kind only when the
 * session used TLS); else it is the step the session was at, the last one
 * recorded, which is never a TLS step on a plaintext session.
 */
static Smtpsync__TestStepKind fallback_kind(const struct conntest *ct, enum smtp_fail fail)
{
    const Smtpsync__TestResult *r = ct->result;
    bool tls = ct->settings.smtps_enabled;

    switch (fail) {
    case SMTP_FAIL_RESOLVE:
        return SMTPSYNC__TEST_STEP_KIND__TEST_STEP_RESOLVE;
    case SMTP_FAIL_CONNECT:
        return SMTPSYNC__TEST_STEP_KIND__TEST_STEP_CONNECT;
    case SMTP_FAIL_TLS_HANDSHAKE:
    case SMTP_FAIL_TLS_NOT_TLS:
    case SMTP_FAIL_TLS_VERSION:
        if (tls)
            return SMTPSYNC__TEST_STEP_KIND__TEST_STEP_TLS;
        break;
    case SMTP_FAIL_CERT_UNTRUSTED:
    case SMTP_FAIL_CERT_HOSTNAME:
    case SMTP_FAIL_CERT_EXPIRED:
        if (tls)
            return SMTPSYNC__TEST_STEP_KIND__TEST_STEP_CERTIFICATE;
        break;
    case SMTP_FAIL_AUTH_UNAVAILABLE:
    case SMTP_FAIL_AUTH_REFUSED:
    case SMTP_FAIL_AUTH_PLAINTEXT:
        return SMTPSYNC__TEST_STEP_KIND__TEST_STEP_AUTH;
    case SMTP_FAIL_TOO_BIG:
        return SMTPSYNC__TEST_STEP_KIND__TEST_STEP_MAIL;
    default:
        break;
    }
    if (r->n_steps == 0)
        return SMTPSYNC__TEST_STEP_KIND__TEST_STEP_RESOLVE;
    return r->steps[r->n_steps - 1]->kind;
}

/* Ends the test: the result goes to `done` from the loop. */
static void finish(struct conntest *ct)
{
    if (!ct->accepted && !ct->failed)
        step_add(ct, fallback_kind(ct, SMTP_FAIL_INTERNAL), false, 0,
                 "the session ended before the test mail was sent", NULL,
                 "smtpsync failed internally: the session ended without a result");
    ct->result->ok = ct->accepted && !ct->nomem;
    uv_close((uv_handle_t *)&ct->finish, on_finished);
}

static bool on_next(void *arg, const struct smtp_client_msg **msg)
{
    struct conntest *ct = arg;

    if (ct->msg_handed)
        return false;
    ct->msg_handed = true;
    *msg = &ct->msg;
    return true;
}

static void on_step(void *arg, const struct smtp_client_step *step)
{
    struct conntest *ct = arg;
    Smtpsync__TestStepKind kind = step_kind(step->kind);
    struct conntest__diag in = diag_of(ct);

    if (kind == SMTPSYNC__TEST_STEP_KIND__TEST_STEP_EHLO && step->ok && step->detail != NULL)
        snprintf(ct->caps, sizeof(ct->caps), "%s", step->detail);
    if (step->ok) {
        step_add(ct, kind, true, step->elapsed_us, step->detail, step->server_reply, NULL);
        return;
    }
    in.kind = kind;
    in.fail = step->fail;
    in.detail = step->detail;
    in.reply = step->server_reply;
    in.code = conntest__reply_code(step->server_reply);
    step_fail(ct, &in, step->elapsed_us, step->warning);
}

static void on_done(void *arg, const struct smtp_client_msg *msg,
                    const struct smtp_client_result *result)
{
    struct conntest *ct = arg;
    struct conntest__diag in = diag_of(ct);

    (void)msg;
    if (result->fail == SMTP_FAIL_NONE) {
        ct->accepted = true;
        return;
    }
    if (ct->failed)
        return;
    /* Not expected (the client reports a failed step first): record one
     * where the transaction got to. */
    in.kind = SMTPSYNC__TEST_STEP_KIND__TEST_STEP_DATA;
    in.fail = result->fail;
    in.detail = result->reason;
    in.code = result->code;
    if (result->rcpts == NULL) {
        in.kind = SMTPSYNC__TEST_STEP_KIND__TEST_STEP_MAIL;
    } else if (result->naccepted == 0) {
        in.kind = SMTPSYNC__TEST_STEP_KIND__TEST_STEP_RCPT;
        in.reply = result->rcpts[0].text;
    }
    step_fail(ct, &in, 0, false);
}

static void on_closed(void *arg, enum smtp_fail fail, const char *reason)
{
    struct conntest *ct = arg;
    struct conntest__diag in = diag_of(ct);

    if (fail != SMTP_FAIL_NONE && !ct->failed && !ct->accepted) {
        in.kind = fallback_kind(ct, fail);
        in.fail = fail;
        in.detail = reason;
        step_fail(ct, &in, 0, false);
    }
    finish(ct);
}

/* --- start ---------------------------------------------------------------- */

/* Every reason the settings cannot be tried, into `out`. */
static void check_settings(const struct conntest *ct, const struct conntest_params *params,
                           struct settings_problems *out)
{
    struct settings_problems all = {.count = 0, .dropped = 0};
    const struct settings *s = &ct->settings;
    char why[200];

    (void)settings_validate(s, NULL, time(NULL), &all);
    for (size_t i = 0; i < all.count && i < SETTINGS_PROBLEMS_MAX; i++) {
        /* --to stands in for the test address. */
        if (params->to != NULL && strcmp(all.items[i].field, "test_address") == 0)
            continue;
        if (out->count < SETTINGS_PROBLEMS_MAX)
            out->items[out->count++] = all.items[i];
        else
            out->dropped++;
    }
    out->dropped += all.dropped;
    if (params->to != NULL) {
        if (strlen(params->to) > SETTINGS_ADDRESS_MAX)
            settings_problem_add(out, "to", false, "is longer than %d characters",
                                 SETTINGS_ADDRESS_MAX);
        else if (!syntax_mailbox_valid(params->to, why, sizeof(why)))
            settings_problem_add(out, "to", false, "is not a valid mail address: %s", why);
    }
    if (s->logon_required && s->password_set && s->password == NULL)
        settings_problem_add(out, "password", false,
                             "could not be loaded for the test (it was not unsealed)");
}

/* Builds the test mail. 0, or ERROR_INVALID with why, or -ENOMEM. */
static int compose(struct conntest *ct, char *why, size_t whylen)
{
    const struct settings *s = &ct->settings;
    char subject[CONNTEST_NODE_MAX + 64], body[2048], date[64];
    const char *domain = strrchr(s->from_address, '@');
    time_t now = time(NULL);
    struct tm tm;
    size_t pos = 0;
    int err;

    if (gmtime_r(&now, &tm) == NULL || strftime(date, sizeof(date), "%Y-%m-%dT%H:%M:%SZ", &tm) == 0)
        snprintf(date, sizeof(date), "@%lld", (long long)now);
    snprintf(subject, sizeof(subject), "smtpsync Test Connection from %s", ct->node);
    conntest__appendf(body, sizeof(body), &pos,
                      "This is a test mail from smtpsync Test Connection.\n"
                      "\n"
                      "instance: %s\n",
                      s->instance);
    if (ct->revision != NULL)
        conntest__appendf(body, sizeof(body), &pos, "settings: %s\n", ct->revision);
    conntest__appendf(body, sizeof(body), &pos,
                      "node:     %s\n"
                      "server:   %s:%" PRIu32 " (%s)\n"
                      "sent:     %s\n"
                      "\n"
                      "If it arrived, these settings deliver mail from this node.\n",
                      ct->node, s->hostname, ct->port,
                      !s->smtps_enabled                    ? "no TLS"
                      : s->tls_mode == SETTINGS_TLS_STRICT ? "implicit TLS"
                                                           : "STARTTLS",
                      date);

    err = smtp_message_from_header(s->from_address, ct->from_header, sizeof(ct->from_header));
    if (err < 0) {
        snprintf(why, whylen, "from_address: cannot be used as the From header");
        return err;
    }
    ct->rcpts[0] = ct->to;
    struct smtp_message_compose c = {
        .to = ct->rcpts,
        .nto = 1,
        .cc = NULL,
        .ncc = 0,
        .subject = subject,
        .body = body,
        .body_len = strlen(body),
        .date = now,
        .msgid_domain = domain != NULL && domain[1] != '\0' ? domain + 1 : s->hostname,
    };
    err = smtp_message_compose(&c, &ct->data, &ct->data_len, why, whylen);
    if (err < 0)
        return err;
    ct->msg = (struct smtp_client_msg){
        .mail_from = s->from_address,
        .rcpts = ct->rcpts,
        .nrcpts = 1,
        .header_prefix = ct->from_header,
        .header_prefix_len = strlen(ct->from_header),
        .data = ct->data,
        .data_len = ct->data_len,
        .eight_bit = false,
        .smtputf8 = false,
    };
    return 0;
}

int conntest_start(uv_loop_t *loop, const struct conntest_params *params, conntest_done_cb done,
                   void *arg)
{
    struct settings_problems problems = {.count = 0, .dropped = 0};
    struct smtp_client *client;
    struct conntest *ct;
    char why[512], *text;
    int err = -ENOMEM;

    ct = calloc(1, sizeof(*ct));
    if (ct == NULL)
        return -ENOMEM;
    ct->loop = loop;
    ct->done = done;
    ct->arg = arg;
    settings_init(&ct->settings);
    if (settings_copy(&ct->settings, params->settings) < 0)
        goto free_ct;
    ct->port = settings_port(&ct->settings);
    snprintf(ct->to, sizeof(ct->to), "%s",
             params->to != NULL ? params->to : ct->settings.test_address);
    if (params->node != NULL && params->node[0] != '\0')
        snprintf(ct->node, sizeof(ct->node), "%s", params->node);
    else if (gethostname(ct->node, sizeof(ct->node)) < 0 || ct->node[0] == '\0')
        snprintf(ct->node, sizeof(ct->node), "localhost");
    ct->node[sizeof(ct->node) - 1] = '\0';
    if ((params->helo != NULL && (ct->helo = strdup(params->helo)) == NULL) ||
        (params->revision != NULL && (ct->revision = strdup(params->revision)) == NULL))
        goto free_ct;
    if ((ct->result = malloc(sizeof(*ct->result))) == NULL)
        goto free_ct;
    smtpsync__test_result__init(ct->result);
    /* Empty strings keep the default that __init set. */
    if ((text = record_text(ct, ct->settings.instance, false)) != NULL)
        ct->result->instance = text;
    if ((text = record_text(ct, ct->node, false)) != NULL)
        ct->result->node = text;
    if (ct->nomem)
        goto free_ct;
    (void)uv_timer_init(loop, &ct->finish);
    ct->finish.data = ct;

    check_settings(ct, params, &problems);
    if (problems.count > 0) {
        step_settings(ct, &problems, NULL);
        finish(ct);
        return 0;
    }
    why[0] = '\0';
    err = compose(ct, why, sizeof(why));
    if (err == -ENOMEM)
        goto close_timer;
    if (err < 0) {
        step_settings(ct, NULL, why);
        finish(ct);
        return 0;
    }

    struct smtp_client_params cp = {
        .settings = &ct->settings,
        .host = NULL,
        .port = 0,
        .helo = ct->helo,
        .idle_ms = 0,
        .verbose_steps = true,
    };
    static const struct smtp_client_callbacks cb = {
        .on_next = on_next,
        .on_done = on_done,
        .on_step = on_step,
        .on_closed = on_closed,
    };
    err = smtp_client_start(loop, &cp, &cb, ct, &client);
    if (err == -ENOMEM)
        goto close_timer;
    if (err < 0) {
        snprintf(why, sizeof(why), "the SMTP client refused the settings: %s%s", error_str(err),
                 err == ERROR_TLS ? " (the imported certificate cannot be used as a trust anchor)"
                                  : "");
        step_settings(ct, NULL, why);
        finish(ct);
    }
    return 0;

close_timer:
    /* The handle is in the loop now: it is freed from there, and `done`
     * is never called. */
    ct->done = NULL;
    uv_close((uv_handle_t *)&ct->finish, on_finished);
    return -ENOMEM;
free_ct:
    conntest_result_free(ct->result);
    conntest_free(ct);
    return err;
}

/* --- running and printing ------------------------------------------------- */

struct run_ctx {
    Smtpsync__TestResult *result;
    unsigned calls;
};

static void run_done(void *arg, Smtpsync__TestResult *result)
{
    struct run_ctx *rc = arg;

    rc->result = result;
    rc->calls++;
}

static void close_any(uv_handle_t *h, void *arg)
{
    (void)arg;
    if (!uv_is_closing(h))
        uv_close(h, NULL);
}

int conntest_run(const struct conntest_params *params, Smtpsync__TestResult **result)
{
    struct run_ctx rc = {NULL, 0};
    uv_loop_t loop;
    int err;

    *result = NULL;
    err = uv_loop_init(&loop);
    if (err < 0)
        return err;
    err = conntest_start(&loop, params, run_done, &rc);
    /* After a failed start too: it may leave a handle to close. */
    (void)uv_run(&loop, UV_RUN_DEFAULT);
    if (uv_loop_close(&loop) == UV_EBUSY) {
        /* Not expected: every handle closes with its session. */
        uv_walk(&loop, close_any, NULL);
        (void)uv_run(&loop, UV_RUN_DEFAULT);
        (void)uv_loop_close(&loop);
    }
    if (err < 0)
        return err;
    if (rc.calls != 1 || rc.result == NULL) {
        conntest_result_free(rc.result);
        return -EIO;
    }
    *result = rc.result;
    return 0;
}

void conntest_result_free(Smtpsync__TestResult *result)
{
    if (result != NULL)
        smtpsync__test_result__free_unpacked(result, NULL);
}

/* Prints text with anything but printable ASCII escaped (a result may come
 * from another node); lines after the first are indented by `indent`. */
static void put_text(FILE *out, const char *text, int indent)
{
    for (const unsigned char *p = (const unsigned char *)text; *p != '\0'; p++) {
        if (*p == '\n')
            fprintf(out, "\n%*s", indent, "");
        else if (*p >= 0x20 && *p < 0x7f)
            fputc(*p, out);
        else
            fprintf(out, "\\x%02x", *p);
    }
}

static bool step_is_warning(const Smtpsync__TestStep *st)
{
    return !st->ok && st->diagnosis != NULL &&
           strncmp(st->diagnosis, CONNTEST_WARNING, strlen(CONNTEST_WARNING)) == 0;
}

static void put_time(FILE *out, uint64_t us)
{
    char buf[32];

    if (us < 10ull * 1000 * 1000)
        snprintf(buf, sizeof(buf), "%.1f ms", (double)us / 1000.0);
    else
        snprintf(buf, sizeof(buf), "%.1f s", (double)us / 1e6);
    fprintf(out, "%10s", buf);
}

#define PRINT_INDENT 8  /* where the lines under a step start */
#define PRINT_DETAIL 32 /* where a step's detail starts */

void conntest_print(FILE *out, const Smtpsync__TestResult *result)
{
    const Smtpsync__TestStep *failed = NULL;
    uint64_t total = 0;
    size_t warnings = 0;

    for (size_t i = 0; i < result->n_steps; i++) {
        const Smtpsync__TestStep *st = result->steps[i];
        bool warning = step_is_warning(st);
        const char *detail = st->detail;

        total += st->elapsed_us;
        fprintf(out, "  %-5s %-12s",
                st->ok    ? "ok"
                : warning ? "WARN"
                          : "FAIL",
                conntest_step_name(st->kind));
        put_time(out, st->elapsed_us);
        if (detail != NULL && detail[0] != '\0') {
            fputs("  ", out);
            put_text(out, detail, PRINT_DETAIL);
        }
        /* An ok step shows the server's answer too: the last line of the
         * reply (the EHLO reply is what its detail lists). */
        if (st->ok && st->server_reply != NULL && st->server_reply[0] != '\0' &&
            st->kind != SMTPSYNC__TEST_STEP_KIND__TEST_STEP_EHLO) {
            const char *last = strrchr(st->server_reply, '\n');
            fputs(detail != NULL && detail[0] != '\0' ? " -> " : "  ", out);
            put_text(out, last != NULL ? last + 1 : st->server_reply, PRINT_DETAIL);
        }
        fputc('\n', out);
        if (st->ok)
            continue;
        if (warning)
            warnings++;
        else
            failed = st;
        if (st->server_reply != NULL && st->server_reply[0] != '\0') {
            fprintf(out, "%*sserver reply: ", PRINT_INDENT, "");
            put_text(out, st->server_reply, PRINT_INDENT + 14);
            fputc('\n', out);
        }
        if (st->diagnosis != NULL && st->diagnosis[0] != '\0') {
            fprintf(out, "%*sdiagnosis: ", PRINT_INDENT, "");
            put_text(out, st->diagnosis, PRINT_INDENT + 11);
            fputc('\n', out);
        }
    }
    if (result->ok) {
        fprintf(out, "  result: ok, the test mail was accepted (%.1f ms", (double)total / 1000.0);
        if (warnings > 0)
            fprintf(out, ", %zu warning%s", warnings, warnings == 1 ? "" : "s");
        fputs(")\n", out);
    } else {
        fprintf(out, "  result: FAILED at %s\n",
                failed != NULL ? conntest_step_name(failed->kind) : "an unknown step");
    }
}
