#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include <dlfcn.h>
#include <fcntl.h>
#include <netdb.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <openssl/evp.h>
#include <openssl/ssl.h>
#include <uv.h>

#include "error.h"
#include "fake_smtp.h"
#include "log.h"
#include "settings.h"
#include "smtp_client.h"
#include "testutil.h"
#include "tlsio.h"

/*
 * Name resolution for the tests: "dual.test" is ::1 then 127.0.0.1 (the
 * fake listens on IPv4 only, so the first address is refused and the
 * client must go on to the second), "mail.test" is 127.0.0.1 (the name in
 * the test certificates), "slow.test" is 127.0.0.1 after two seconds (a
 * resolver that hangs). Everything else goes to the C library. This
 * definition takes the place of the C library's for libuv's threadpool.
 */
int getaddrinfo(const char *node, const char *service, const struct addrinfo *hints,
                struct addrinfo **res)
{
    typedef int (*gai_fn)(const char *, const char *, const struct addrinfo *, struct addrinfo **);
    gai_fn real = (gai_fn)dlsym(RTLD_NEXT, "getaddrinfo");
    struct addrinfo *v6 = NULL, *v4 = NULL;
    int rc;

    if (node == NULL || (strcmp(node, "dual.test") != 0 && strcmp(node, "mail.test") != 0 &&
                         strcmp(node, "slow.test") != 0))
        return real(node, service, hints, res);
    if (strcmp(node, "slow.test") == 0)
        sleep(2);
    rc = real("127.0.0.1", service, hints, &v4);
    if (rc != 0 || strcmp(node, "mail.test") == 0 || strcmp(node, "slow.test") == 0) {
        *res = v4;
        return rc;
    }
    rc = real("::1", service, hints, &v6);
    if (rc != 0) {
        freeaddrinfo(v4);
        return rc;
    }
    /* glibc frees a result node by node: two lists join into one. */
    for (struct addrinfo *a = v6;; a = a->ai_next) {
        if (a->ai_next == NULL) {
            a->ai_next = v4;
            break;
        }
    }
    *res = v6;
    return 0;
}

#define MAX_STEPS 64
#define MAX_DONE  8

struct step_copy {
    enum smtp_client_step_kind kind;
    bool ok, warning;
    enum smtp_fail fail;
    char detail[1024];
    char reply[1024];
};

struct done_copy {
    enum smtp_fail fail;
    int code;
    char reason[SMTP_CLIENT_REASON_MAX];
    size_t naccepted;
    bool has_rcpts;
    int rcpt_codes[4];
};

struct run {
    uv_loop_t loop;
    struct fake_smtp *fake;
    uint16_t port;
    struct settings set;
    struct smtp_client_params params;
    struct smtp_client *client;
    const struct smtp_client_msg *msgs[MAX_DONE];
    size_t nmsgs, next;
    unsigned nexts; /* on_next calls */
    struct done_copy done[MAX_DONE];
    size_t ndone;
    struct step_copy steps[MAX_STEPS];
    size_t nsteps;
    unsigned closed;
    enum smtp_fail closed_fail;
    char closed_reason[SMTP_CLIENT_REASON_MAX];
    bool cancel_on_done;
    bool cancel_on_next;
    int cancel_on_step; /* a step kind + 1, 0: none */
    /* What the fake received, kept when the session closes (the fake is
     * stopped then, and freed by the loop). */
    char *transcript;
    unsigned nconnections;
    size_t nreceived;
    char *received[MAX_DONE];
    size_t received_len[MAX_DONE];
    char *envelopes[MAX_DONE];
};

static bool on_next(void *ctx, const struct smtp_client_msg **msg)
{
    struct run *r = ctx;

    r->nexts++;
    if (r->cancel_on_next)
        smtp_client_cancel(r->client);
    if (r->next == r->nmsgs)
        return false;
    *msg = r->msgs[r->next++];
    return true;
}

static void on_done(void *ctx, const struct smtp_client_msg *msg,
                    const struct smtp_client_result *res)
{
    struct run *r = ctx;
    struct done_copy *d;

    assert_true(r->ndone < MAX_DONE);
    assert_ptr_equal(msg, r->msgs[r->ndone]);
    d = &r->done[r->ndone++];
    d->fail = res->fail;
    d->code = res->code;
    snprintf(d->reason, sizeof(d->reason), "%s", res->reason);
    d->naccepted = res->naccepted;
    d->has_rcpts = res->rcpts != NULL;
    for (size_t i = 0; res->rcpts != NULL && i < msg->nrcpts && i < 4; i++)
        d->rcpt_codes[i] = res->rcpts[i].code;
    if (r->cancel_on_done)
        smtp_client_cancel(r->client);
}

static void on_step(void *ctx, const struct smtp_client_step *step)
{
    struct run *r = ctx;
    struct step_copy *s;

    assert_true(r->nsteps < MAX_STEPS);
    s = &r->steps[r->nsteps++];
    s->kind = step->kind;
    s->ok = step->ok;
    s->warning = step->warning;
    s->fail = step->fail;
    assert_non_null(step->detail);
    snprintf(s->detail, sizeof(s->detail), "%s", step->detail);
    snprintf(s->reply, sizeof(s->reply), "%s", step->server_reply ? step->server_reply : "");
    if (r->cancel_on_step == (int)step->kind + 1)
        smtp_client_cancel(r->client);
}

static void on_closed(void *ctx, enum smtp_fail fail, const char *reason)
{
    struct run *r = ctx;

    r->closed++;
    r->closed_fail = fail;
    snprintf(r->closed_reason, sizeof(r->closed_reason), "%s", reason);
    /* Every message handed over was reported before this. */
    assert_int_equal(r->ndone, r->next);
    r->transcript = strdup(fake_smtp_transcript(r->fake));
    r->nconnections = fake_smtp_nconnections(r->fake);
    r->nreceived = fake_smtp_nmessages(r->fake);
    assert_true(r->nreceived <= MAX_DONE);
    for (size_t i = 0; i < r->nreceived; i++) {
        const char *m = fake_smtp_message(r->fake, i, &r->received_len[i]);

        r->received[i] = malloc(r->received_len[i] + 1);
        assert_non_null(r->received[i]);
        memcpy(r->received[i], m, r->received_len[i] + 1);
        r->envelopes[i] = strdup(fake_smtp_envelope(r->fake, i));
    }
    fake_smtp_stop(r->fake);
    r->fake = NULL;
}

static const struct smtp_client_callbacks callbacks = {
    .on_next = on_next,
    .on_done = on_done,
    .on_step = on_step,
    .on_closed = on_closed,
};

static const char *const one_rcpt[] = {"bob@example.com"};
static const char *const two_rcpts[] = {"bob@example.com", "carol@example.com"};

static const struct smtp_client_msg plain_msg = {
    .mail_from = "alice@example.com",
    .rcpts = one_rcpt,
    .nrcpts = 1,
    .header_prefix = "From: <alice@example.com>\r\n",
    .header_prefix_len = 27,
    .data = "Subject: hello\r\n\r\nHello Bob.\r\n",
    .data_len = 30,
};

static void load_cert(struct settings *s, const char *name)
{
    struct settings_problems problems = {0};
    size_t len;
    char *pem = testutil_read_file(testutil_cert_path(name), &len);

    assert_int_equal(settings_set_certificate(s, pem, len, &problems), 0);
    free(pem);
}

/* A fake server with `fp` (NULL: plain defaults) and settings pointing at
 * it in plain SMTP. */
static struct run *run_new(const struct fake_smtp_params *fp)
{
    struct run *r = calloc(1, sizeof(*r));
    struct fake_smtp_params dflt = {0};

    assert_non_null(r);
    assert_int_equal(uv_loop_init(&r->loop), 0);
    assert_int_equal(fake_smtp_start(&r->loop, fp != NULL ? fp : &dflt, &r->fake, &r->port), 0);
    settings_init(&r->set);
    snprintf(r->set.instance, sizeof(r->set.instance), "test");
    snprintf(r->set.hostname, sizeof(r->set.hostname), "127.0.0.1");
    r->set.port = r->port;
    snprintf(r->set.from_address, sizeof(r->set.from_address), "alice@example.com");
    /* A test that goes wrong fails in seconds, not in RFC 5321's minutes. */
    r->set.timeouts = (struct settings_timeouts){10, 10, 10, 10, 10, 10, 10, 10};
    r->params.settings = &r->set;
    r->params.helo = "client.test";
    return r;
}

static void run_tls(struct run *r, enum settings_tls_mode mode, const char *trust)
{
    r->set.smtps_enabled = true;
    r->set.tls_mode = mode;
    load_cert(&r->set, trust);
}

/* run_new() with the fake server presenting make-certs.sh's `cert` and
 * `key`, and the client in TLS `mode` trusting `trust`. */
static struct run *run_new_tls(struct fake_smtp_params *fp, const char *cert, const char *key,
                               enum settings_tls_mode mode, const char *trust)
{
    char certfile[512], keyfile[512];
    struct run *r;

    /* Copies: testutil_cert_path() reuses one buffer; the fake server
     * copies them in turn. */
    snprintf(certfile, sizeof(certfile), "%s", testutil_cert_path(cert));
    snprintf(keyfile, sizeof(keyfile), "%s", testutil_cert_path(key));
    fp->cert_file = certfile;
    fp->key_file = keyfile;
    r = run_new(fp);
    fp->cert_file = NULL;
    fp->key_file = NULL;
    run_tls(r, mode, trust);
    return r;
}

static void run_logon(struct run *r, const char *user, const char *password)
{
    r->set.logon_required = true;
    snprintf(r->set.user_id, sizeof(r->set.user_id), "%s", user);
    assert_int_equal(settings_set_password(&r->set, password), 0);
}

static void run_add(struct run *r, const struct smtp_client_msg *m)
{
    assert_true(r->nmsgs < MAX_DONE);
    r->msgs[r->nmsgs++] = m;
}

/* Starts the client and runs the loop until everything is closed. */
static void run_go(struct run *r)
{
    assert_int_equal(smtp_client_start(&r->loop, &r->params, &callbacks, r, &r->client), 0);
    assert_int_equal(uv_run(&r->loop, UV_RUN_DEFAULT), 0);
    assert_int_equal(r->closed, 1);
}

static void run_free(struct run *r)
{
    free(r->transcript);
    for (size_t i = 0; i < r->nreceived; i++) {
        free(r->received[i]);
        free(r->envelopes[i]);
    }
    settings_clear(&r->set);
    assert_int_equal(uv_loop_close(&r->loop), 0);
    free(r);
}

static const struct step_copy *find_step(const struct run *r, enum smtp_client_step_kind kind)
{
    for (size_t i = 0; i < r->nsteps; i++)
        if (r->steps[i].kind == kind)
            return &r->steps[i];
    return NULL;
}

static void assert_contains(const char *hay, const char *needle)
{
    if (strstr(hay, needle) == NULL)
        fail_msg("\"%s\" does not contain \"%s\"", hay, needle);
}

static void assert_lacks(const char *hay, const char *needle)
{
    if (strstr(hay, needle) != NULL)
        fail_msg("\"%s\" contains \"%s\"", hay, needle);
}

/* The message as the fake received it equals prefix + data. */
static void assert_delivered(const struct run *r, size_t i, const struct smtp_client_msg *m)
{
    size_t len = r->received_len[i];
    const char *got = r->received[i];

    assert_true(i < r->nreceived);
    assert_int_equal(len, m->header_prefix_len + m->data_len);
    assert_memory_equal(got, m->header_prefix, m->header_prefix_len);
    assert_memory_equal(got + m->header_prefix_len, m->data, m->data_len);
}

static void test_smtp_client_plaintext_send(void **state)
{
    struct run *r = run_new(NULL);
    const struct step_copy *st;

    (void)state;
    run_add(r, &plain_msg);
    run_go(r);
    assert_int_equal(r->closed_fail, SMTP_FAIL_NONE);
    assert_string_equal(r->closed_reason, "");
    assert_int_equal(r->ndone, 1);
    assert_int_equal(r->done[0].fail, SMTP_FAIL_NONE);
    assert_int_equal(r->done[0].code, 250);
    assert_int_equal(r->done[0].naccepted, 1);
    assert_int_equal(r->done[0].rcpt_codes[0], 250);
    assert_int_equal(r->nreceived, 1);
    assert_delivered(r, 0, &plain_msg);
    assert_string_equal(r->envelopes[0], "alice@example.com bob@example.com");
    assert_string_equal(r->transcript, "EHLO client.test\n"
                                       "MAIL FROM:<alice@example.com>\n"
                                       "RCPT TO:<bob@example.com>\n"
                                       "DATA\n"
                                       "QUIT");
    assert_int_equal(r->nconnections, 1);
    st = find_step(r, SMTP_STEP_RESOLVE);
    assert_non_null(st);
    assert_true(st->ok);
    assert_string_equal(st->detail, "127.0.0.1");
    st = find_step(r, SMTP_STEP_CONNECT);
    assert_non_null(st);
    assert_true(st->ok);
    assert_contains(st->detail, "127.0.0.1:");
    st = find_step(r, SMTP_STEP_GREETING);
    assert_non_null(st);
    assert_contains(st->reply, "220 fake.test");
    st = find_step(r, SMTP_STEP_EHLO);
    assert_non_null(st);
    assert_contains(st->detail, "8BITMIME");
    assert_non_null(find_step(r, SMTP_STEP_QUIT));
    /* Not verbose: no MAIL/RCPT/DATA steps. */
    assert_null(find_step(r, SMTP_STEP_MAIL));
    assert_null(find_step(r, SMTP_STEP_TLS));
    run_free(r);
}

static void test_smtp_client_verbose_steps(void **state)
{
    struct run *r = run_new(NULL);
    const struct step_copy *st;

    (void)state;
    r->params.verbose_steps = true;
    run_add(r, &plain_msg);
    run_go(r);
    st = find_step(r, SMTP_STEP_MAIL);
    assert_non_null(st);
    assert_true(st->ok);
    assert_string_equal(st->detail, "MAIL FROM:<alice@example.com>");
    st = find_step(r, SMTP_STEP_RCPT);
    assert_non_null(st);
    assert_string_equal(st->detail, "RCPT TO:<bob@example.com>");
    assert_contains(st->reply, "250 2.1.5");
    st = find_step(r, SMTP_STEP_DATA);
    assert_non_null(st);
    assert_true(st->ok);
    assert_string_equal(st->detail, "57 octets");
    assert_contains(st->reply, "queued as");
    run_free(r);
}

/* Pipelined, a refused MAIL does not stop RCPT and DATA: they were in the
 * same write. Without PIPELINING the client waits for each reply. */
static void test_smtp_client_pipelining_on(void **state)
{
    struct fake_smtp_params fp = {.pipelining = true};
    struct run *r = run_new(&fp);

    (void)state;
    fake_smtp_script(r->fake, "MAIL", "550 5.7.1 sender refused", 1);
    run_add(r, &plain_msg);
    run_add(r, &plain_msg);
    run_go(r);
    assert_int_equal(r->ndone, 2);
    assert_int_equal(r->done[0].fail, SMTP_FAIL_REPLY_5XX);
    assert_int_equal(r->done[0].code, 550);
    assert_string_equal(r->done[0].reason,
                        "MAIL FROM:<alice@example.com>: 550 5.7.1 sender refused");
    assert_int_equal(r->done[1].fail, SMTP_FAIL_NONE);
    assert_string_equal(r->transcript, "EHLO client.test\n"
                                       "MAIL FROM:<alice@example.com>\n"
                                       "RCPT TO:<bob@example.com>\n"
                                       "DATA\n"
                                       "RSET\n"
                                       "MAIL FROM:<alice@example.com>\n"
                                       "RCPT TO:<bob@example.com>\n"
                                       "DATA\n"
                                       "QUIT");
    assert_int_equal(r->nreceived, 1);
    run_free(r);
}

static void test_smtp_client_pipelining_off(void **state)
{
    struct run *r = run_new(NULL);

    (void)state;
    fake_smtp_script(r->fake, "MAIL", "550 5.7.1 sender refused", 1);
    run_add(r, &plain_msg);
    run_go(r);
    assert_int_equal(r->done[0].fail, SMTP_FAIL_REPLY_5XX);
    assert_false(r->done[0].has_rcpts && r->done[0].rcpt_codes[0] != 0);
    assert_string_equal(r->transcript, "EHLO client.test\n"
                                       "MAIL FROM:<alice@example.com>\n"
                                       "QUIT");
    run_free(r);
}

/* Pipelined with two recipients, one refused: delivered to the other. */
static void test_smtp_client_pipelining_partial(void **state)
{
    struct fake_smtp_params fp = {.pipelining = true};
    struct run *r = run_new(&fp);
    struct smtp_client_msg m = plain_msg;

    (void)state;
    m.rcpts = two_rcpts;
    m.nrcpts = 2;
    fake_smtp_script(r->fake, "RCPT", "550 5.1.1 <bob@example.com>: Recipient address rejected", 1);
    run_add(r, &m);
    run_go(r);
    assert_int_equal(r->done[0].fail, SMTP_FAIL_NONE);
    assert_int_equal(r->done[0].naccepted, 1);
    assert_int_equal(r->done[0].rcpt_codes[0], 550);
    assert_int_equal(r->done[0].rcpt_codes[1], 250);
    assert_string_equal(r->envelopes[0], "alice@example.com carol@example.com");
    run_free(r);
}

/* Every recipient refused, one of them temporarily: a 4xx failure. */
static void test_smtp_client_all_rcpts_refused(void **state)
{
    struct fake_smtp_params fp = {.pipelining = true};
    struct run *r = run_new(&fp);
    struct smtp_client_msg m = plain_msg;

    (void)state;
    m.rcpts = two_rcpts;
    m.nrcpts = 2;
    fake_smtp_script(r->fake, "RCPT", "550 5.1.1 no such user", 1);
    fake_smtp_script(r->fake, "RCPT", "450 4.2.0 mailbox busy", 1);
    run_add(r, &m);
    run_go(r);
    assert_int_equal(r->done[0].fail, SMTP_FAIL_REPLY_4XX);
    assert_int_equal(r->done[0].code, 450);
    assert_string_equal(r->done[0].reason, "RCPT TO:<carol@example.com>: 450 4.2.0 mailbox busy");
    assert_int_equal(r->done[0].naccepted, 0);
    assert_int_equal(r->nreceived, 0);
    assert_contains(r->transcript, "DATA\nQUIT");
    run_free(r);
}

/* Two messages on one session: the first refused, RSET, the second sent. */
static void test_smtp_client_rset_after_failure(void **state)
{
    struct run *r = run_new(NULL);

    (void)state;
    fake_smtp_script(r->fake, "RCPT", "550 5.1.1 <bob@example.com>: Recipient address rejected", 1);
    run_add(r, &plain_msg);
    run_add(r, &plain_msg);
    run_go(r);
    assert_int_equal(r->ndone, 2);
    assert_int_equal(r->done[0].fail, SMTP_FAIL_REPLY_5XX);
    assert_int_equal(r->done[0].code, 550);
    assert_string_equal(r->done[0].reason, "RCPT TO:<bob@example.com>: 550 5.1.1 "
                                           "<bob@example.com>: Recipient address rejected");
    assert_int_equal(r->done[1].fail, SMTP_FAIL_NONE);
    assert_string_equal(r->transcript, "EHLO client.test\n"
                                       "MAIL FROM:<alice@example.com>\n"
                                       "RCPT TO:<bob@example.com>\n"
                                       "RSET\n"
                                       "MAIL FROM:<alice@example.com>\n"
                                       "RCPT TO:<bob@example.com>\n"
                                       "DATA\n"
                                       "QUIT");
    assert_int_equal(r->nconnections, 1);
    assert_int_equal(r->closed_fail, SMTP_FAIL_NONE);
    run_free(r);
}

/* Two accepted messages: no RSET between them. */
static void test_smtp_client_two_messages(void **state)
{
    struct fake_smtp_params fp = {.pipelining = true};
    struct run *r = run_new(&fp);

    (void)state;
    run_add(r, &plain_msg);
    run_add(r, &plain_msg);
    run_go(r);
    assert_int_equal(r->done[0].fail, SMTP_FAIL_NONE);
    assert_int_equal(r->done[1].fail, SMTP_FAIL_NONE);
    assert_int_equal(r->nreceived, 2);
    assert_lacks(r->transcript, "RSET");
    run_free(r);
}

static void test_smtp_client_data_end_refused(void **state)
{
    struct run *r = run_new(NULL);

    (void)state;
    fake_smtp_script(r->fake, "DATA-END", "554 5.7.1 looks like spam", 1);
    run_add(r, &plain_msg);
    run_go(r);
    assert_int_equal(r->done[0].fail, SMTP_FAIL_REPLY_5XX);
    assert_int_equal(r->done[0].code, 554);
    assert_string_equal(r->done[0].reason, "end of DATA: 554 5.7.1 looks like spam");
    run_free(r);
}

static void test_smtp_client_size_too_big(void **state)
{
    struct fake_smtp_params fp = {.size_limit = 40};
    struct run *r = run_new(&fp);

    (void)state;
    run_add(r, &plain_msg);
    run_go(r);
    assert_int_equal(r->done[0].fail, SMTP_FAIL_TOO_BIG);
    assert_false(smtp_fail_is_temporary(r->done[0].fail));
    assert_contains(r->done[0].reason, "57 octets");
    assert_contains(r->done[0].reason, "SIZE 40");
    assert_false(r->done[0].has_rcpts);
    assert_lacks(r->transcript, "MAIL");
    run_free(r);
}

static void test_smtp_client_size_param(void **state)
{
    struct fake_smtp_params fp = {.size_limit = 1000};
    struct run *r = run_new(&fp);

    (void)state;
    run_add(r, &plain_msg);
    run_go(r);
    assert_int_equal(r->done[0].fail, SMTP_FAIL_NONE);
    assert_contains(r->transcript, "MAIL FROM:<alice@example.com> SIZE=57\n");
    run_free(r);
}

static void test_smtp_client_eight_bit(void **state)
{
    struct run *r = run_new(NULL);
    struct smtp_client_msg m = plain_msg;

    (void)state;
    m.eight_bit = true;
    m.data = "Subject: caf\xc3\xa9\r\n\r\n\xc3\xa9t\xc3\xa9\r\n";
    m.data_len = strlen(m.data);
    run_add(r, &m);
    run_go(r);
    assert_int_equal(r->done[0].fail, SMTP_FAIL_NONE);
    assert_contains(r->transcript, "MAIL FROM:<alice@example.com> BODY=8BITMIME\n");
    assert_delivered(r, 0, &m);
    run_free(r);
}

/* An 8-bit message to a server without 8BITMIME: never sent, permanent. */
static void test_smtp_client_eight_bit_refused(void **state)
{
    struct run *r = run_new(NULL);
    struct smtp_client_msg m = plain_msg, u = plain_msg;

    (void)state;
    m.eight_bit = true;
    u.smtputf8 = true;
    fake_smtp_script(r->fake, "EHLO", "250-fake.test\r\n250 PIPELINING", 1);
    run_add(r, &m);
    run_add(r, &u);
    run_go(r);
    assert_int_equal(r->done[0].fail, SMTP_FAIL_REPLY_5XX);
    assert_false(smtp_fail_is_temporary(r->done[0].fail));
    assert_contains(r->done[0].reason, "8BITMIME");
    assert_int_equal(r->done[1].fail, SMTP_FAIL_REPLY_5XX);
    assert_contains(r->done[1].reason, "SMTPUTF8");
    assert_lacks(r->transcript, "MAIL");
    run_free(r);
}

static void test_smtp_client_smtputf8(void **state)
{
    struct fake_smtp_params fp = {.smtputf8 = true};
    struct run *r = run_new(&fp);
    struct smtp_client_msg m = plain_msg;
    static const char *const utf8_rcpt[] = {"j\xc3\xb6rg@example.com"};

    (void)state;
    m.smtputf8 = true;
    m.rcpts = utf8_rcpt;
    run_add(r, &m);
    run_go(r);
    assert_int_equal(r->done[0].fail, SMTP_FAIL_NONE);
    assert_contains(r->transcript, "MAIL FROM:<alice@example.com> SMTPUTF8\n");
    run_free(r);
}

/* Addresses that would end the command early are refused before MAIL. */
static void test_smtp_client_bad_address(void **state)
{
    struct run *r = run_new(NULL);
    struct smtp_client_msg m = plain_msg, n = plain_msg, l = plain_msg;
    static const char *const inject[] = {"bob@example.com>\r\nRCPT TO:<eve@example.com"};
    char longaddr[SETTINGS_ADDRESS_MAX + 2];

    (void)state;
    memset(longaddr, 'a', sizeof(longaddr) - 1);
    longaddr[sizeof(longaddr) - 1] = '\0';
    longaddr[10] = '@';
    m.rcpts = inject;
    n.nrcpts = 0;
    l.mail_from = longaddr;
    run_add(r, &m);
    run_add(r, &n);
    run_add(r, &l);
    run_add(r, &plain_msg);
    run_go(r);
    assert_int_equal(r->done[0].fail, SMTP_FAIL_SETTINGS);
    assert_contains(r->done[0].reason, "\\x0d\\x0a");
    assert_int_equal(r->done[1].fail, SMTP_FAIL_SETTINGS);
    assert_int_equal(r->done[2].fail, SMTP_FAIL_SETTINGS);
    assert_int_equal(r->done[3].fail, SMTP_FAIL_NONE);
    assert_lacks(r->transcript, "eve");
    assert_lacks(r->transcript, "RSET");
    run_free(r);
}

/* Lines starting with a dot are doubled on the wire and come out intact;
 * a message without a final CRLF gets one before the dot. */
static void test_smtp_client_dot_stuffing(void **state)
{
    struct run *r = run_new(NULL);
    struct smtp_client_msg m = plain_msg;
    static const char body[] = "Subject: dots\r\n\r\n.\r\n..\r\n.x\r\nend\r\n.";
    size_t len;
    const char *got;

    (void)state;
    m.header_prefix = ".From: <alice@example.com>\r\n";
    m.header_prefix_len = strlen(m.header_prefix);
    m.data = body;
    m.data_len = sizeof(body) - 1;
    run_add(r, &m);
    run_go(r);
    assert_int_equal(r->done[0].fail, SMTP_FAIL_NONE);
    got = r->received[0];
    len = r->received_len[0];
    assert_int_equal(len, m.header_prefix_len + m.data_len + 2);
    assert_memory_equal(got, m.header_prefix, m.header_prefix_len);
    assert_memory_equal(got + m.header_prefix_len, body, sizeof(body) - 1);
    assert_memory_equal(got + len - 3, ".\r\n", 3);
    run_free(r);
}

/* A message of several chunks, written with backpressure, arrives whole. */
static void test_smtp_client_large_message(void **state)
{
    struct fake_smtp_params fp = {.pipelining = true};
    struct run *r = run_new(&fp);
    struct smtp_client_msg m = plain_msg;
    size_t n = 3 * 1024 * 1024 + 17;
    char *body = malloc(n);

    (void)state;
    assert_non_null(body);
    for (size_t i = 0; i < n; i++)
        body[i] = (i % 80 == 78) ? '\r' : (i % 80 == 79) ? '\n' : (i % 80 == 0) ? '.' : 'a';
    m.data = body;
    m.data_len = n;
    run_add(r, &m);
    run_go(r);
    assert_int_equal(r->done[0].fail, SMTP_FAIL_NONE);
    {
        size_t len = r->received_len[0];
        const char *got = r->received[0];

        /* No final CRLF: the client adds one. */
        assert_int_equal(len, m.header_prefix_len + n + 2);
        assert_memory_equal(got + m.header_prefix_len, body, n);
    }
    free(body);
    run_free(r);
}

static void test_smtp_client_auth_plain_starttls(void **state)
{
    struct fake_smtp_params fp = {
        .starttls = true, .auth = "PLAIN LOGIN", .user = "alice", .password = "s3cret pass"};
    struct run *r;
    const struct step_copy *st;

    (void)state;
    r = run_new_tls(&fp, "leaf.pem", "leaf.key", SETTINGS_TLS_STARTTLS, "ca.pem");
    run_logon(r, "alice", "s3cret pass");
    run_add(r, &plain_msg);
    run_go(r);
    assert_int_equal(r->closed_fail, SMTP_FAIL_NONE);
    assert_int_equal(r->done[0].fail, SMTP_FAIL_NONE);
    /* base64("\0alice\0s3cret pass") */
    assert_string_equal(r->transcript, "EHLO client.test\n"
                                       "STARTTLS\n"
                                       "EHLO client.test\n"
                                       "AUTH PLAIN AGFsaWNlAHMzY3JldCBwYXNz\n"
                                       "MAIL FROM:<alice@example.com>\n"
                                       "RCPT TO:<bob@example.com>\n"
                                       "DATA\n"
                                       "QUIT");
    st = find_step(r, SMTP_STEP_STARTTLS);
    assert_non_null(st);
    assert_true(st->ok);
    st = find_step(r, SMTP_STEP_TLS);
    assert_non_null(st);
    assert_true(st->ok);
    assert_contains(st->detail, "TLSv1.");
    st = find_step(r, SMTP_STEP_CERTIFICATE);
    assert_non_null(st);
    assert_true(st->ok);
    assert_contains(st->detail, "subject=CN=mail.test issuer=CN=smtpsync test CA "
                                "san=mail.test, *.wild.test, 127.0.0.1");
    assert_contains(st->detail, " expires=20");
    assert_contains(st->detail, " chain=ok");
    st = find_step(r, SMTP_STEP_AUTH);
    assert_non_null(st);
    assert_true(st->ok);
    assert_string_equal(st->detail, "PLAIN");
    /* The second EHLO (after TLS) advertised AUTH; STARTTLS is gone. */
    for (size_t i = 0; i < r->nsteps; i++) {
        assert_lacks(r->steps[i].detail, "s3cret");
        assert_lacks(r->steps[i].detail, "AGFsaWNl");
    }
    run_free(r);
}

static void test_smtp_client_auth_login_implicit_tls(void **state)
{
    struct fake_smtp_params fp = {.implicit_tls = true,
                                  .auth = "LOGIN",
                                  .user = "alice",
                                  .password = "pw",
                                  .pipelining = true};
    struct run *r;
    const struct step_copy *st;

    (void)state;
    r = run_new_tls(&fp, "leaf.pem", "leaf.key", SETTINGS_TLS_STRICT, "ca.pem");
    run_logon(r, "alice", "pw");
    run_add(r, &plain_msg);
    run_go(r);
    assert_int_equal(r->closed_fail, SMTP_FAIL_NONE);
    assert_int_equal(r->done[0].fail, SMTP_FAIL_NONE);
    assert_string_equal(r->transcript, "EHLO client.test\n"
                                       "AUTH LOGIN\n"
                                       "YWxpY2U=\n"
                                       "cHc=\n"
                                       "MAIL FROM:<alice@example.com>\n"
                                       "RCPT TO:<bob@example.com>\n"
                                       "DATA\n"
                                       "QUIT");
    st = find_step(r, SMTP_STEP_TLS);
    assert_non_null(st);
    assert_true(r->steps[0].kind == SMTP_STEP_RESOLVE && r->steps[1].kind == SMTP_STEP_CONNECT &&
                r->steps[2].kind == SMTP_STEP_TLS && r->steps[3].kind == SMTP_STEP_CERTIFICATE &&
                r->steps[4].kind == SMTP_STEP_GREETING);
    assert_string_equal(find_step(r, SMTP_STEP_AUTH)->detail, "LOGIN");
    run_free(r);
}

/* In clear, allowed: CRAM-MD5 is preferred, the password never sent. */
static void test_smtp_client_auth_cram_md5_plaintext_allowed(void **state)
{
    struct fake_smtp_params fp = {
        .auth = "PLAIN LOGIN CRAM-MD5", .user = "alice", .password = "tanstaaf"};
    struct run *r = run_new(&fp);

    (void)state;
    run_logon(r, "alice", "tanstaaf");
    r->set.allow_plaintext_auth = true;
    run_add(r, &plain_msg);
    run_go(r);
    assert_int_equal(r->done[0].fail, SMTP_FAIL_NONE);
    assert_contains(r->transcript, "AUTH CRAM-MD5\n");
    assert_string_equal(find_step(r, SMTP_STEP_AUTH)->detail, "CRAM-MD5");
    run_free(r);
}

/* In clear without allow_plaintext_auth: no AUTH is ever sent. */
static void test_smtp_client_auth_plaintext_refused(void **state)
{
    struct fake_smtp_params fp = {.auth = "PLAIN LOGIN", .user = "alice", .password = "pw"};
    struct run *r = run_new(&fp);
    const struct step_copy *st;

    (void)state;
    run_logon(r, "alice", "pw");
    run_add(r, &plain_msg);
    run_go(r);
    assert_int_equal(r->closed_fail, SMTP_FAIL_AUTH_PLAINTEXT);
    assert_contains(r->closed_reason, "allow_plaintext_auth");
    assert_int_equal(r->ndone, 0);
    assert_int_equal(r->nexts, 0);
    assert_lacks(r->transcript, "AUTH");
    st = find_step(r, SMTP_STEP_AUTH);
    assert_non_null(st);
    assert_false(st->ok);
    assert_int_equal(st->fail, SMTP_FAIL_AUTH_PLAINTEXT);
    run_free(r);
}

static void test_smtp_client_auth_refused(void **state)
{
    struct fake_smtp_params fp = {.auth = "PLAIN", .user = "alice", .password = "right"};
    struct run *r = run_new(&fp);

    (void)state;
    run_logon(r, "alice", "wrong-password");
    r->set.allow_plaintext_auth = true;
    run_add(r, &plain_msg);
    run_go(r);
    assert_int_equal(r->closed_fail, SMTP_FAIL_AUTH_REFUSED);
    assert_string_equal(r->closed_reason, "AUTH PLAIN: 535 5.7.8 Error: authentication failed");
    assert_int_equal(r->ndone, 0);
    assert_lacks(r->closed_reason, "wrong-password");
    assert_false(find_step(r, SMTP_STEP_AUTH)->ok);
    run_free(r);
}

static void test_smtp_client_auth_unavailable(void **state)
{
    struct run *r = run_new(NULL);

    (void)state;
    run_logon(r, "alice", "pw");
    r->set.allow_plaintext_auth = true;
    run_go(r);
    assert_int_equal(r->closed_fail, SMTP_FAIL_AUTH_UNAVAILABLE);
    assert_lacks(r->transcript, "AUTH");
    run_free(r);
}

static void starttls_missing(bool fallback, bool logon)
{
    struct run *r = run_new(NULL);
    const struct step_copy *st;

    run_tls(r, SETTINGS_TLS_STARTTLS, "ca.pem");
    r->set.starttls_fallback = fallback;
    if (logon) {
        run_logon(r, "alice", "pw");
        r->set.allow_plaintext_auth = true;
    }
    run_add(r, &plain_msg);
    run_go(r);
    st = find_step(r, SMTP_STEP_STARTTLS);
    assert_non_null(st);
    assert_false(st->ok);
    assert_int_equal(st->fail, SMTP_FAIL_STARTTLS);
    if (fallback && !logon) {
        assert_true(st->warning);
        assert_contains(st->detail, "starttls_fallback");
        assert_int_equal(r->done[0].fail, SMTP_FAIL_NONE);
        assert_int_equal(r->closed_fail, SMTP_FAIL_NONE);
    } else {
        assert_false(st->warning);
        assert_int_equal(r->closed_fail, SMTP_FAIL_STARTTLS);
        assert_contains(r->closed_reason, "does not offer STARTTLS");
        assert_int_equal(r->ndone, 0);
        assert_lacks(r->transcript, "MAIL");
        assert_lacks(r->transcript, "AUTH");
        if (fallback)
            assert_contains(r->closed_reason, "in clear");
    }
    run_free(r);
}

static void test_smtp_client_starttls_not_offered_fails_closed(void **state)
{
    (void)state;
    starttls_missing(false, false);
}

static void test_smtp_client_starttls_fallback(void **state)
{
    (void)state;
    starttls_missing(true, false);
}

static void test_smtp_client_starttls_fallback_never_with_auth(void **state)
{
    (void)state;
    starttls_missing(true, true);
}

static void test_smtp_client_starttls_refused(void **state)
{
    struct fake_smtp_params fp = {.starttls = true};
    struct run *r;

    (void)state;
    r = run_new_tls(&fp, "leaf.pem", "leaf.key", SETTINGS_TLS_STARTTLS, "ca.pem");
    fake_smtp_script(r->fake, "STARTTLS", "454 4.7.0 TLS not available due to local problem", 1);
    run_add(r, &plain_msg);
    run_go(r);
    assert_int_equal(r->closed_fail, SMTP_FAIL_STARTTLS);
    assert_contains(r->closed_reason, "454 4.7.0 TLS not available");
    assert_lacks(r->transcript, "MAIL");
    run_free(r);
}

/* Octets after the 220 to STARTTLS, in the same read: the session ends. */
static void test_smtp_client_starttls_injection(void **state)
{
    struct fake_smtp_params fp = {.starttls = true};
    struct run *r;

    (void)state;
    r = run_new_tls(&fp, "leaf.pem", "leaf.key", SETTINGS_TLS_STARTTLS, "ca.pem");
    fake_smtp_script(r->fake, "STARTTLS", "220 ready\r\n250 injected\r\n", 1);
    run_add(r, &plain_msg);
    run_go(r);
    assert_int_equal(r->closed_fail, SMTP_FAIL_PROTOCOL);
    assert_contains(r->closed_reason, "STARTTLS injection");
    assert_null(find_step(r, SMTP_STEP_TLS));
    assert_string_equal(r->transcript, "EHLO client.test\nSTARTTLS");
    run_free(r);
}

/* Implicit TLS: name and trust checks. */
static struct run *tls_run(const char *cert, const char *key, const char *trust, const char *host)
{
    struct fake_smtp_params fp = {.implicit_tls = true};
    struct run *r;

    r = run_new_tls(&fp, cert, key, SETTINGS_TLS_STRICT, trust);
    r->params.host = host;
    run_add(r, &plain_msg);
    run_go(r);
    return r;
}

static void test_smtp_client_implicit_tls_ok(void **state)
{
    struct run *r = tls_run("leaf.pem", "leaf.key", "ca.pem", "mail.test");

    (void)state;
    assert_int_equal(r->closed_fail, SMTP_FAIL_NONE);
    assert_int_equal(r->done[0].fail, SMTP_FAIL_NONE);
    assert_contains(find_step(r, SMTP_STEP_TLS)->detail, "TLSv1.3 TLS_");
    run_free(r);
}

static void test_smtp_client_implicit_tls_self_signed_anchor(void **state)
{
    struct run *r = tls_run("selfsigned.pem", "selfsigned.key", "selfsigned.pem", "mail.test");

    (void)state;
    assert_int_equal(r->closed_fail, SMTP_FAIL_NONE);
    run_free(r);
}

static void test_smtp_client_cert_hostname(void **state)
{
    struct run *r = tls_run("leaf.pem", "leaf.key", "ca.pem", "localhost");
    const struct step_copy *st;

    (void)state;
    assert_int_equal(r->closed_fail, SMTP_FAIL_CERT_HOSTNAME);
    assert_int_equal(r->ndone, 0);
    st = find_step(r, SMTP_STEP_CERTIFICATE);
    assert_non_null(st);
    assert_false(st->ok);
    assert_int_equal(st->fail, SMTP_FAIL_CERT_HOSTNAME);
    assert_contains(st->detail, "subject=CN=mail.test");
    assert_contains(st->detail, "chain=");
    assert_lacks(st->detail, "chain=ok");
    run_free(r);
}

static void test_smtp_client_cert_untrusted(void **state)
{
    struct run *r = tls_run("leaf.pem", "leaf.key", "other-ca.pem", "mail.test");

    (void)state;
    assert_int_equal(r->closed_fail, SMTP_FAIL_CERT_UNTRUSTED);
    assert_false(find_step(r, SMTP_STEP_CERTIFICATE)->ok);
    /* The issuer names the CA to import. */
    assert_contains(find_step(r, SMTP_STEP_CERTIFICATE)->detail,
                    "subject=CN=mail.test issuer=CN=smtpsync test CA san=");
    assert_string_equal(r->transcript, "");
    run_free(r);
}

static void test_smtp_client_cert_expired(void **state)
{
    struct run *r = tls_run("expired.pem", "expired.key", "ca.pem", "mail.test");

    (void)state;
    assert_int_equal(r->closed_fail, SMTP_FAIL_CERT_EXPIRED);
    assert_contains(find_step(r, SMTP_STEP_CERTIFICATE)->detail, "expires=2020-02-01T");
    run_free(r);
}

/* Implicit TLS against a server speaking SMTP in clear. */
static void test_smtp_client_tls_not_tls(void **state)
{
    struct run *r = run_new(NULL);

    (void)state;
    run_tls(r, SETTINGS_TLS_STRICT, "ca.pem");
    run_add(r, &plain_msg);
    run_go(r);
    assert_int_equal(r->closed_fail, SMTP_FAIL_TLS_NOT_TLS);
    assert_contains(r->closed_reason, "220 fake.test");
    assert_false(find_step(r, SMTP_STEP_TLS)->ok);
    /* The plaintext line is the step's server reply. */
    assert_string_equal(find_step(r, SMTP_STEP_TLS)->reply, "220 fake.test ESMTP fake_smtp");
    run_free(r);
}

static void test_smtp_client_tls_version(void **state)
{
    struct fake_smtp_params fp = {.implicit_tls = true, .tls_max_version = TLS1_1_VERSION};
    struct run *r;

    (void)state;
    r = run_new_tls(&fp, "leaf.pem", "leaf.key", SETTINGS_TLS_STRICT, "ca.pem");
    run_go(r);
    assert_int_equal(r->closed_fail, SMTP_FAIL_TLS_VERSION);
    /* The step carries OpenSSL's reason. */
    assert_int_equal(r->steps[r->nsteps - 1].kind, SMTP_STEP_TLS);
    assert_int_equal(r->steps[r->nsteps - 1].fail, SMTP_FAIL_TLS_VERSION);
    assert_contains(r->steps[r->nsteps - 1].detail, "protocol version");
    run_free(r);
}

/* A server that drops the connection at the ClientHello, without an alert
 * (an outdated server on Python's asyncio does): the step says so, with
 * OpenSSL's reason, rather than just "connection closed". */
static void test_smtp_client_tls_closed_silently(void **state)
{
    struct fake_smtp_params fp = {.implicit_tls = true, .tls_silent_close = true};
    const struct step_copy *st;
    struct run *r;

    (void)state;
    r = run_new_tls(&fp, "leaf.pem", "leaf.key", SETTINGS_TLS_STRICT, "ca.pem");
    run_add(r, &plain_msg);
    run_go(r);
    assert_int_equal(r->closed_fail, SMTP_FAIL_TLS_HANDSHAKE);
    st = &r->steps[r->nsteps - 1];
    assert_int_equal(st->kind, SMTP_STEP_TLS);
    assert_false(st->ok);
    assert_int_equal(st->fail, SMTP_FAIL_TLS_HANDSHAKE);
    assert_contains(st->detail,
                    "the server closed the connection without answering the handshake (");
    assert_contains(st->detail, "eof");
    assert_int_equal(r->nexts, 0);
    run_free(r);
}

static void test_smtp_client_421_mid_session(void **state)
{
    struct run *r = run_new(NULL);

    (void)state;
    fake_smtp_script(r->fake, "RCPT", "421 4.7.0 fake.test closing connection", 1);
    run_add(r, &plain_msg);
    run_add(r, &plain_msg);
    run_go(r);
    assert_int_equal(r->ndone, 1);
    assert_int_equal(r->done[0].fail, SMTP_FAIL_REPLY_4XX);
    assert_int_equal(r->done[0].code, 421);
    assert_string_equal(r->done[0].reason,
                        "RCPT TO:<bob@example.com>: 421 4.7.0 fake.test closing connection");
    assert_int_equal(r->closed_fail, SMTP_FAIL_REPLY_4XX);
    assert_string_equal(r->closed_reason, r->done[0].reason);
    assert_lacks(r->transcript, "QUIT");
    run_free(r);
}

/* Pipelined, each reply is matched to its command: a refused MAIL fails
 * the MAIL step, and the RCPT refusals that follow it for want of a
 * sender are not reported as the recipients' failures. */
static void test_smtp_client_pipelined_replies_matched(void **state)
{
    struct fake_smtp_params fp = {.pipelining = true};
    struct run *r = run_new(&fp);
    const struct step_copy *st;

    (void)state;
    r->params.verbose_steps = true;
    fake_smtp_script(r->fake, "MAIL", "550 5.7.1 sender refused", 1);
    run_add(r, &plain_msg);
    run_go(r);
    assert_int_equal(r->done[0].fail, SMTP_FAIL_REPLY_5XX);
    assert_int_equal(r->done[0].code, 550);
    st = find_step(r, SMTP_STEP_MAIL);
    assert_non_null(st);
    assert_false(st->ok);
    assert_string_equal(st->reply, "550 5.7.1 sender refused");
    assert_null(find_step(r, SMTP_STEP_RCPT));
    assert_null(find_step(r, SMTP_STEP_DATA));
    /* The RCPT reply (503, no sender) is matched to its recipient. */
    assert_true(r->done[0].has_rcpts);
    assert_int_equal(r->done[0].rcpt_codes[0], 503);
    assert_contains(r->transcript, "RCPT TO:<bob@example.com>\nDATA\nQUIT");
    run_free(r);
}

/* A 421 to a pipelined MAIL ends the session at the MAIL step, with the
 * reply; no RCPT reply came, so no recipient has a result. */
static void test_smtp_client_421_pipelined_mail(void **state)
{
    struct fake_smtp_params fp = {.pipelining = true};
    struct run *r = run_new(&fp);
    const struct step_copy *st;

    (void)state;
    fake_smtp_script(r->fake, "MAIL", "421 4.3.2 fake.test shutting down", 1);
    fake_smtp_script(r->fake, "RCPT", "", 1);
    run_add(r, &plain_msg);
    run_go(r);
    assert_int_equal(r->done[0].fail, SMTP_FAIL_REPLY_4XX);
    assert_int_equal(r->done[0].code, 421);
    assert_string_equal(r->done[0].reason,
                        "MAIL FROM:<alice@example.com>: 421 4.3.2 fake.test shutting down");
    assert_false(r->done[0].has_rcpts);
    st = &r->steps[r->nsteps - 1];
    assert_int_equal(st->kind, SMTP_STEP_MAIL);
    assert_false(st->ok);
    assert_int_equal(st->fail, SMTP_FAIL_REPLY_4XX);
    assert_string_equal(st->reply, "421 4.3.2 fake.test shutting down");
    assert_string_equal(st->detail, r->done[0].reason);
    run_free(r);
}

/* One way for a session to fail, and the step it must be reported at. */
struct phase_case {
    const char *name;
    const char *verb, *reply; /* a script, if verb; reply NULL: silence */
    const char *verb2, *reply2;
    bool pipelining;
    bool starttls; /* tls_mode=starttls against a server offering it */
    bool logon;    /* AUTH PLAIN, allowed in clear */
    bool two;      /* two messages: RSET before the second */
    enum smtp_client_step_kind step;
    enum smtp_fail fail;
    const char *quoted; /* in the step's server reply; NULL: no reply */
};

static void phase_case_run(const struct phase_case *pc)
{
    struct fake_smtp_params fp = {.pipelining = pc->pipelining, .starttls = pc->starttls};
    const struct step_copy *last;
    size_t nfailed = 0;
    struct run *r;

    if (pc->logon) {
        fp.auth = "PLAIN";
        fp.user = "alice";
        fp.password = "pw";
    }
    r = pc->starttls ? run_new_tls(&fp, "leaf.pem", "leaf.key", SETTINGS_TLS_STARTTLS, "ca.pem")
                     : run_new(&fp);
    r->params.verbose_steps = true;
    r->set.timeouts.mail = 1;
    if (pc->logon) {
        run_logon(r, "alice", "pw");
        r->set.allow_plaintext_auth = true;
    }
    if (pc->verb != NULL)
        fake_smtp_script(r->fake, pc->verb, pc->reply, 1);
    if (pc->verb2 != NULL)
        fake_smtp_script(r->fake, pc->verb2, pc->reply2, 1);
    run_add(r, &plain_msg);
    if (pc->two)
        run_add(r, &plain_msg);
    run_go(r);
    if (r->closed_fail != pc->fail)
        fail_msg("%s: the session ended with %s, not %s (%s)", pc->name,
                 smtp_fail_str(r->closed_fail), smtp_fail_str(pc->fail), r->closed_reason);
    assert_true(r->nsteps > 0);
    last = &r->steps[r->nsteps - 1];
    if (last->ok || last->warning || last->kind != pc->step || last->fail != pc->fail)
        fail_msg("%s: the last step is kind %d ok=%d fail=%s, not a failed step of kind %d "
                 "(detail: %s)",
                 pc->name, (int)last->kind, last->ok, smtp_fail_str(last->fail), (int)pc->step,
                 last->detail);
    assert_string_equal(last->detail, r->closed_reason);
    if (pc->quoted == NULL && last->reply[0] != '\0')
        fail_msg("%s: a reply is quoted: %s", pc->name, last->reply);
    if (pc->quoted != NULL && strstr(last->reply, pc->quoted) == NULL)
        fail_msg("%s: \"%s\" is not in the quoted reply \"%s\"", pc->name, pc->quoted, last->reply);
    /* The end is reported once. */
    for (size_t i = 0; i < r->nsteps; i++)
        if (!r->steps[i].ok && !r->steps[i].warning && r->steps[i].fail == r->closed_fail)
            nfailed++;
    if (nfailed != 1)
        fail_msg("%s: %zu failed steps report the end", pc->name, nfailed);
    run_free(r);
}

/* Every way a session ends in failure is reported as a failed step of the
 * phase it was in, quoting the reply involved, malformed or not. */
static void test_smtp_client_failed_step_every_phase(void **state)
{
    char long_line[700], many[150 * 14 + 16];
    size_t n = 0;

    (void)state;
    memset(long_line, 'x', sizeof(long_line) - 1);
    memcpy(long_line, "220 \x01", 5);
    long_line[sizeof(long_line) - 1] = '\0';
    for (int i = 0; i < 150; i++)
        n += (size_t)sprintf(many + n, "250-LINE%03d\r\n", i);
    sprintf(many + n, "250 END");

    const struct phase_case cases[] = {
        {"greeting too long", "GREETING", long_line, .step = SMTP_STEP_GREETING,
         .fail = SMTP_FAIL_PROTOCOL, .quoted = "220 \\x01xxxx"},
        {"greeting not SMTP", "GREETING", "HTTP/1.1 400 Bad Request", .step = SMTP_STEP_GREETING,
         .fail = SMTP_FAIL_PROTOCOL, .quoted = "HTTP/1.1 400"},
        {"greeting closed", "GREETING", "", .step = SMTP_STEP_GREETING, .fail = SMTP_FAIL_CLOSED},
        {"greeting 554", "GREETING", "554 5.7.1 go away", .step = SMTP_STEP_GREETING,
         .fail = SMTP_FAIL_REPLY_5XX, .quoted = "554 5.7.1 go away"},
        {"two replies to the greeting", "GREETING", "220 fake.test\r\n250 early",
         .step = SMTP_STEP_GREETING, .fail = SMTP_FAIL_PROTOCOL, .quoted = "220 fake.test"},
        {"EHLO too many lines", "EHLO", many, .step = SMTP_STEP_EHLO, .fail = SMTP_FAIL_PROTOCOL,
         .quoted = "250-LINE000\n250-LINE001"},
        {"EHLO code changes", "EHLO", "250-fake.test\r\n251 x", .step = SMTP_STEP_EHLO,
         .fail = SMTP_FAIL_PROTOCOL, .quoted = "250-fake.test\n251 x"},
        {"EHLO closed", "EHLO", "", .step = SMTP_STEP_EHLO, .fail = SMTP_FAIL_CLOSED},
        {"EHLO 421", "EHLO", "421 4.3.2 bye", .step = SMTP_STEP_EHLO, .fail = SMTP_FAIL_REPLY_4XX,
         .quoted = "421 4.3.2 bye"},
        {"STARTTLS 421", "STARTTLS", "421 4.3.2 bye", .starttls = true, .step = SMTP_STEP_STARTTLS,
         .fail = SMTP_FAIL_REPLY_4XX, .quoted = "421 4.3.2 bye"},
        {"STARTTLS closed", "STARTTLS", "", .starttls = true, .step = SMTP_STEP_STARTTLS,
         .fail = SMTP_FAIL_CLOSED},
        {"STARTTLS garbage", "STARTTLS", "2x0 what", .starttls = true, .step = SMTP_STEP_STARTTLS,
         .fail = SMTP_FAIL_PROTOCOL, .quoted = "2x0 what"},
        {"AUTH 421", "AUTH", "421 4.3.2 bye", .logon = true, .step = SMTP_STEP_AUTH,
         .fail = SMTP_FAIL_REPLY_4XX, .quoted = "421 4.3.2 bye"},
        {"AUTH closed", "AUTH", "", .logon = true, .step = SMTP_STEP_AUTH,
         .fail = SMTP_FAIL_CLOSED},
        {"MAIL 421 pipelined", "MAIL", "421 4.3.2 shutting down", .pipelining = true,
         .step = SMTP_STEP_MAIL, .fail = SMTP_FAIL_REPLY_4XX, .quoted = "421 4.3.2 shutting down"},
        {"MAIL 421", "MAIL", "421 4.3.2 shutting down", .step = SMTP_STEP_MAIL,
         .fail = SMTP_FAIL_REPLY_4XX, .quoted = "421 4.3.2"},
        {"MAIL closed pipelined", "MAIL", "", .pipelining = true, .step = SMTP_STEP_MAIL,
         .fail = SMTP_FAIL_CLOSED},
        {"MAIL unanswered", "MAIL", NULL, .step = SMTP_STEP_MAIL, .fail = SMTP_FAIL_TIMEOUT},
        {"RCPT 421", "RCPT", "421 4.3.2 bye", .step = SMTP_STEP_RCPT, .fail = SMTP_FAIL_REPLY_4XX,
         .quoted = "421 4.3.2 bye"},
        {"RCPT 421 pipelined", "RCPT", "421 4.3.2 bye", .pipelining = true, .step = SMTP_STEP_RCPT,
         .fail = SMTP_FAIL_REPLY_4XX, .quoted = "421 4.3.2 bye"},
        {"RCPT closed", "RCPT", "", .step = SMTP_STEP_RCPT, .fail = SMTP_FAIL_CLOSED},
        {"DATA 421", "DATA", "421 4.3.2 bye", .step = SMTP_STEP_DATA, .fail = SMTP_FAIL_REPLY_4XX,
         .quoted = "421 4.3.2 bye"},
        {"DATA closed", "DATA", "", .step = SMTP_STEP_DATA, .fail = SMTP_FAIL_CLOSED},
        {"two replies to DATA", "DATA", "354 go\r\n554 5.0.0 no", .step = SMTP_STEP_DATA,
         .fail = SMTP_FAIL_PROTOCOL, .quoted = "354 go"},
        {"end of DATA closed", "DATA-END", "", .step = SMTP_STEP_DATA, .fail = SMTP_FAIL_CLOSED},
        {"end of DATA too short", "DATA-END", "2", .step = SMTP_STEP_DATA,
         .fail = SMTP_FAIL_PROTOCOL, .quoted = "2"},
        {"QUIT garbage", "QUIT", "22", .step = SMTP_STEP_QUIT, .fail = SMTP_FAIL_PROTOCOL,
         .quoted = "22"},
        {"RSET 421", "MAIL", "550 5.7.1 no", "RSET", "421 4.3.2 bye", .two = true,
         .step = SMTP_STEP_MAIL, .fail = SMTP_FAIL_REPLY_4XX, .quoted = "421 4.3.2 bye"},
    };

    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++)
        phase_case_run(&cases[i]);
}

static void test_smtp_client_421_greeting(void **state)
{
    struct run *r = run_new(NULL);

    (void)state;
    fake_smtp_script(r->fake, "GREETING", "421 4.3.2 too busy", 1);
    run_go(r);
    assert_int_equal(r->closed_fail, SMTP_FAIL_REPLY_4XX);
    assert_string_equal(r->closed_reason, "greeting: 421 4.3.2 too busy");
    assert_int_equal(r->nexts, 0);
    run_free(r);
}

static void test_smtp_client_oversized_line(void **state)
{
    struct run *r = run_new(NULL);
    char line[700];

    (void)state;
    memset(line, 'x', sizeof(line));
    memcpy(line, "250 ", 4);
    line[sizeof(line) - 1] = '\0';
    fake_smtp_script(r->fake, "EHLO", line, 1);
    run_add(r, &plain_msg);
    run_go(r);
    assert_int_equal(r->closed_fail, SMTP_FAIL_PROTOCOL);
    assert_contains(r->closed_reason, "longer than 512");
    assert_int_equal(r->nexts, 0);
    run_free(r);
}

static void test_smtp_client_too_many_lines(void **state)
{
    struct run *r = run_new(NULL);
    char *reply = malloc(150 * 14 + 16);
    size_t n = 0;

    (void)state;
    assert_non_null(reply);
    for (int i = 0; i < 150; i++)
        n += (size_t)sprintf(reply + n, "250-LINE%03d\r\n", i);
    sprintf(reply + n, "250 END");
    fake_smtp_script(r->fake, "EHLO", reply, 1);
    free(reply);
    run_add(r, &plain_msg);
    run_go(r);
    assert_int_equal(r->closed_fail, SMTP_FAIL_PROTOCOL);
    assert_contains(r->closed_reason, "more than 100 lines");
    run_free(r);
}

static void test_smtp_client_garbage_greeting(void **state)
{
    struct run *r = run_new(NULL);

    (void)state;
    /* The fake sends a scripted greeting when its last line has a code. */
    fake_smtp_script(r->fake, "GREETING", "HTTP/1.1 400 Bad Request\r\n220 x", 1);
    run_go(r);
    assert_int_equal(r->closed_fail, SMTP_FAIL_PROTOCOL);
    assert_contains(r->closed_reason, "HTTP/1.1");
    run_free(r);
}

/* A reply nobody asked for, in the same read as the one expected. */
static void test_smtp_client_unsolicited_reply(void **state)
{
    struct run *r = run_new(NULL);

    (void)state;
    fake_smtp_script(r->fake, "GREETING", "220 fake.test\r\n250 early", 1);
    run_add(r, &plain_msg);
    run_go(r);
    assert_int_equal(r->closed_fail, SMTP_FAIL_PROTOCOL);
    assert_contains(r->closed_reason, "more than one reply to greeting");
    assert_string_equal(r->transcript, "");
    run_free(r);
}

static void test_smtp_client_greeting_timeout(void **state)
{
    struct fake_smtp_params fp = {.greeting_delay_ms = 5000};
    struct run *r = run_new(&fp);
    uint64_t start;

    (void)state;
    r->set.timeouts.greeting = 1;
    run_add(r, &plain_msg);
    start = uv_hrtime();
    run_go(r);
    assert_int_equal(r->closed_fail, SMTP_FAIL_TIMEOUT);
    assert_contains(r->closed_reason, "no greeting");
    assert_true(uv_hrtime() - start < 4000000000ull);
    assert_int_equal(find_step(r, SMTP_STEP_GREETING)->fail, SMTP_FAIL_TIMEOUT);
    run_free(r);
}

static void test_smtp_client_closed_after_data(void **state)
{
    struct run *r = run_new(NULL);

    (void)state;
    fake_smtp_script(r->fake, "DATA-END", "", 1);
    run_add(r, &plain_msg);
    run_go(r);
    assert_int_equal(r->done[0].fail, SMTP_FAIL_CLOSED);
    assert_true(smtp_fail_is_temporary(r->done[0].fail));
    assert_contains(r->done[0].reason, "delivery unknown");
    assert_int_equal(r->closed_fail, SMTP_FAIL_CLOSED);
    run_free(r);
}

static void test_smtp_client_ehlo_refused_helo(void **state)
{
    struct run *r = run_new(NULL);

    (void)state;
    fake_smtp_script(r->fake, "EHLO", "502 5.5.2 Error: command not recognized", 1);
    run_add(r, &plain_msg);
    run_go(r);
    assert_int_equal(r->done[0].fail, SMTP_FAIL_NONE);
    assert_string_equal(r->transcript, "EHLO client.test\n"
                                       "HELO client.test\n"
                                       "MAIL FROM:<alice@example.com>\n"
                                       "RCPT TO:<bob@example.com>\n"
                                       "DATA\n"
                                       "QUIT");
    assert_contains(find_step(r, SMTP_STEP_EHLO)->detail, "HELO");
    run_free(r);
}

/* "dual.test" is ::1 then 127.0.0.1; the fake listens on IPv4 only. */
static void test_smtp_client_every_address_tried(void **state)
{
    struct run *r = run_new(NULL);
    const struct step_copy *st;
    char want[64];

    (void)state;
    r->params.host = "dual.test";
    run_add(r, &plain_msg);
    run_go(r);
    assert_int_equal(r->done[0].fail, SMTP_FAIL_NONE);
    assert_string_equal(find_step(r, SMTP_STEP_RESOLVE)->detail, "::1, 127.0.0.1");
    st = find_step(r, SMTP_STEP_CONNECT);
    assert_true(st->ok);
    snprintf(want, sizeof(want), "127.0.0.1:%u (after [::1]:%u: ", r->port, r->port);
    assert_contains(st->detail, want);
    run_free(r);
}

static void test_smtp_client_connect_refused(void **state)
{
    struct run *r = run_new(NULL);

    (void)state;
    r->params.host = "::1";
    run_add(r, &plain_msg);
    run_go(r);
    assert_int_equal(r->closed_fail, SMTP_FAIL_CONNECT);
    assert_contains(r->closed_reason, "[::1]:");
    assert_false(find_step(r, SMTP_STEP_CONNECT)->ok);
    assert_int_equal(r->nexts, 0);
    run_free(r);
}

static void test_smtp_client_resolve_fails(void **state)
{
    struct run *r = run_new(NULL);

    (void)state;
    r->params.host = "no-such-host.invalid";
    run_go(r);
    assert_int_equal(r->closed_fail, SMTP_FAIL_RESOLVE);
    assert_false(find_step(r, SMTP_STEP_RESOLVE)->ok);
    run_free(r);
}

/* Idle: no message, then one after a kick, then QUIT after idle_ms. */
struct kick {
    uv_timer_t timer;
    struct run *r;
};

static void kick_now(uv_timer_t *t)
{
    struct kick *k = (struct kick *)(void *)t;

    run_add(k->r, &plain_msg);
    assert_true(smtp_client_kick(k->r->client));
    uv_close((uv_handle_t *)t, NULL);
}

static void test_smtp_client_idle_kick(void **state)
{
    struct run *r = run_new(NULL);
    struct kick k = {.r = r};

    (void)state;
    r->params.idle_ms = 300;
    uv_timer_init(&r->loop, &k.timer);
    uv_timer_start(&k.timer, kick_now, 100, 0);
    run_go(r);
    assert_int_equal(r->ndone, 1);
    assert_int_equal(r->done[0].fail, SMTP_FAIL_NONE);
    assert_int_equal(r->closed_fail, SMTP_FAIL_NONE);
    assert_int_equal(r->nexts, 3); /* none, the kicked one, none */
    run_free(r);
}

static void test_smtp_client_cancel_from_on_done(void **state)
{
    struct run *r = run_new(NULL);

    (void)state;
    r->cancel_on_done = true;
    run_add(r, &plain_msg);
    run_add(r, &plain_msg);
    run_go(r);
    assert_int_equal(r->ndone, 1);
    assert_int_equal(r->done[0].fail, SMTP_FAIL_NONE);
    assert_int_equal(r->closed_fail, SMTP_FAIL_CANCELLED);
    run_free(r);
}

/* Cancelled from on_step: nothing more is sent, no step follows. */
static void test_smtp_client_cancel_from_on_step(void **state)
{
    struct run *r = run_new(NULL);

    (void)state;
    r->cancel_on_step = SMTP_STEP_EHLO + 1;
    run_add(r, &plain_msg);
    run_go(r);
    assert_int_equal(r->closed_fail, SMTP_FAIL_CANCELLED);
    assert_int_equal(r->steps[r->nsteps - 1].kind, SMTP_STEP_EHLO);
    assert_int_equal(r->nexts, 0);
    assert_string_equal(r->transcript, "EHLO client.test");
    run_free(r);
}

/* Cancelled from on_next, which hands a message over all the same: the
 * message comes back with on_done (CANCELLED) before on_closed. */
static void test_smtp_client_cancel_from_on_next(void **state)
{
    struct run *r = run_new(NULL);

    (void)state;
    r->cancel_on_next = true;
    run_add(r, &plain_msg);
    run_go(r);
    assert_int_equal(r->ndone, 1);
    assert_int_equal(r->done[0].fail, SMTP_FAIL_CANCELLED);
    assert_int_equal(r->closed_fail, SMTP_FAIL_CANCELLED);
    assert_lacks(r->transcript, "MAIL");
    run_free(r);
}

/* Cancelled while connecting: on_closed all the same, nothing leaks. */
static void test_smtp_client_cancel_early(void **state)
{
    struct run *r = run_new(NULL);

    (void)state;
    assert_int_equal(smtp_client_start(&r->loop, &r->params, &callbacks, r, &r->client), 0);
    smtp_client_cancel(r->client);
    assert_int_equal(uv_run(&r->loop, UV_RUN_DEFAULT), 0);
    assert_int_equal(r->closed, 1);
    assert_int_equal(r->closed_fail, SMTP_FAIL_CANCELLED);
    run_free(r);
}

static void test_smtp_client_start_invalid(void **state)
{
    struct run *r = run_new(NULL);
    struct smtp_client *c = NULL;

    (void)state;
    r->set.smtps_enabled = true; /* no tls_mode, no certificate */
    assert_int_equal(smtp_client_start(&r->loop, &r->params, &callbacks, r, &c), ERROR_INVALID);
    r->set.smtps_enabled = false;
    r->set.logon_required = true; /* no password */
    assert_int_equal(smtp_client_start(&r->loop, &r->params, &callbacks, r, &c), ERROR_INVALID);
    {
        char longpw[SETTINGS_PASSWORD_MAX + 2];

        memset(longpw, 'p', sizeof(longpw) - 1);
        longpw[sizeof(longpw) - 1] = '\0';
        run_logon(r, "alice", longpw); /* one octet over the limit */
        assert_int_equal(smtp_client_start(&r->loop, &r->params, &callbacks, r, &c), ERROR_INVALID);
        assert_int_equal(settings_set_password(&r->set, NULL), 0);
    }
    r->set.logon_required = false;
    r->params.host = "bad host";
    assert_int_equal(smtp_client_start(&r->loop, &r->params, &callbacks, r, &c), ERROR_INVALID);
    r->params.host = NULL;
    r->params.helo = "a\r\nRSET";
    assert_int_equal(smtp_client_start(&r->loop, &r->params, &callbacks, r, &c), ERROR_INVALID);
    r->params.helo = NULL;
    run_tls(r, SETTINGS_TLS_STRICT, "garbage.pem");
    assert_int_equal(smtp_client_start(&r->loop, &r->params, &callbacks, r, &c), ERROR_TLS);
    assert_null(c);
    fake_smtp_stop(r->fake);
    r->fake = NULL;
    assert_int_equal(uv_run(&r->loop, UV_RUN_DEFAULT), 0);
    assert_int_equal(r->closed, 0);
    assert_int_equal(r->nsteps, 0);
    run_free(r);
}

static void test_smtp_client_fail_table(void **state)
{
    static const enum smtp_fail permanent[] = {SMTP_FAIL_REPLY_5XX, SMTP_FAIL_TOO_BIG,
                                               SMTP_FAIL_SETTINGS};

    (void)state;
    for (int f = SMTP_FAIL_RESOLVE; f < SMTP_FAIL_COUNT; f++) {
        bool perm = false;

        for (size_t i = 0; i < sizeof(permanent) / sizeof(permanent[0]); i++)
            perm = perm || permanent[i] == (enum smtp_fail)f;
        assert_int_equal(smtp_fail_is_temporary((enum smtp_fail)f), !perm);
        assert_true(strlen(smtp_fail_str((enum smtp_fail)f)) > 0);
    }
    assert_string_equal(smtp_fail_str(SMTP_FAIL_CERT_HOSTNAME), "host name not in the certificate");
    assert_string_equal(smtp_fail_str(SMTP_FAIL_COUNT), "unknown failure");
}

/* Past idle_ms the session QUITs: a kick then is refused (false), on_next
 * is not called again, and a server that never answers QUIT does not hold
 * the session beyond the (short) QUIT wait. */
struct late_kick {
    uv_timer_t timer;
    struct run *r;
    unsigned nexts_before;
    int kicked; /* 1: true, 0: false, -1: not yet */
};

static void kick_late(uv_timer_t *t)
{
    struct late_kick *k = (struct late_kick *)(void *)t;

    k->nexts_before = k->r->nexts;
    run_add(k->r, &plain_msg);
    k->kicked = smtp_client_kick(k->r->client);
    uv_close((uv_handle_t *)t, NULL);
}

static void test_smtp_client_kick_refused_after_idle(void **state)
{
    struct run *r = run_new(NULL);
    struct late_kick k = {.r = r, .kicked = -1};
    uint64_t t0;

    (void)state;
    fake_smtp_script(r->fake, "QUIT", NULL, 1);
    r->set.timeouts.command = 1;
    r->params.idle_ms = 50;
    uv_timer_init(&r->loop, &k.timer);
    uv_timer_start(&k.timer, kick_late, 300, 0);
    t0 = uv_hrtime();
    run_go(r);
    assert_int_equal(k.kicked, 0);
    assert_int_equal(r->nexts, k.nexts_before);
    assert_int_equal(r->nexts, 1);
    assert_int_equal(r->ndone, 0);
    assert_contains(r->transcript, "QUIT");
    assert_int_equal(r->closed_fail, SMTP_FAIL_NONE);
    assert_true(uv_hrtime() - t0 < 3000ull * 1000000);
    run_free(r);
}

/* A resolver that hangs is bounded by the connect timeout. */
static void test_smtp_client_resolve_timeout(void **state)
{
    struct run *r = run_new(NULL);
    const struct step_copy *st;

    (void)state;
    r->params.host = "slow.test";
    r->set.timeouts.connect = 1;
    run_add(r, &plain_msg);
    run_go(r);
    assert_int_equal(r->closed_fail, SMTP_FAIL_TIMEOUT);
    assert_contains(r->closed_reason, "cannot resolve slow.test");
    st = find_step(r, SMTP_STEP_RESOLVE);
    assert_non_null(st);
    assert_false(st->ok);
    assert_int_equal(st->fail, SMTP_FAIL_TIMEOUT);
    assert_null(find_step(r, SMTP_STEP_CONNECT));
    assert_int_equal(r->nexts, 0);
    run_free(r);
}

static void test_smtp_client_no_renegotiation(void **state)
{
    size_t len = 0;
    char *pem = testutil_read_file(testutil_cert_path("ca.pem"), &len);
    SSL_CTX *ctx = NULL;
    char why[256];

    (void)state;
    assert_int_equal(tlsio_client_ctx(pem, len, &ctx, why, sizeof(why)), 0);
    assert_true((SSL_CTX_get_options(ctx) & SSL_OP_NO_RENEGOTIATION) != 0);
    SSL_CTX_free(ctx);
    free(pem);
}

/* stderr into a file, at debug level, for the secrets tests. */
struct capture {
    char path[64];
    int saved;
};

static void capture_start(struct capture *cap)
{
    int fd;

    snprintf(cap->path, sizeof(cap->path), "/tmp/test_smtp_client.%d.log", (int)getpid());
    fflush(stderr);
    cap->saved = dup(STDERR_FILENO);
    fd = open(cap->path, O_WRONLY | O_CREAT | O_TRUNC, 0600);
    assert_true(cap->saved >= 0 && fd >= 0);
    assert_true(dup2(fd, STDERR_FILENO) >= 0);
    close(fd);
    log_init("test_smtp_client", LOG_LEVEL_DEBUG, LOG_FORMAT_TEXT);
}

/* Returns what was logged (free it). */
static char *capture_end(struct capture *cap)
{
    char *text;

    fflush(stderr);
    dup2(cap->saved, STDERR_FILENO);
    close(cap->saved);
    log_init("test_smtp_client",
             getenv("SMTPSYNC_TEST_DEBUG") != NULL ? LOG_LEVEL_DEBUG : LOG_LEVEL_INFO,
             LOG_FORMAT_TEXT);
    text = testutil_read_file(cap->path, NULL);
    assert_non_null(text);
    unlink(cap->path);
    return text;
}

static void b64_of(char *out, const char *in, size_t len)
{
    EVP_EncodeBlock((unsigned char *)out, (const unsigned char *)in, (int)len);
}

/* Neither the password, its base64 nor the AUTH PLAIN blob, in any form. */
static void assert_no_secret(const char *text, const char *user, const char *password)
{
    char blob[256], b64[512];
    size_t ulen = strlen(user), plen = strlen(password);

    assert_lacks(text, password);
    b64_of(b64, password, plen);
    assert_lacks(text, b64);
    blob[0] = '\0';
    memcpy(blob + 1, user, ulen);
    blob[1 + ulen] = '\0';
    memcpy(blob + 2 + ulen, password, plen);
    b64_of(b64, blob, 2 + ulen + plen);
    assert_lacks(text, b64);
}

/* The debug log names AUTH lines by a label and quotes no reply of the
 * exchange, whatever the mechanism. */
static void test_smtp_client_debug_log_hides_credentials(void **state)
{
    static const char *const mechs[] = {"PLAIN", "LOGIN", "CRAM-MD5"};
    static const char *const labels[] = {"AUTH PLAIN [credentials not logged]",
                                         "(AUTH LOGIN password, not logged)",
                                         "(CRAM-MD5 response, not logged)"};
    const char *password = "Very-Secret-pw 42";

    (void)state;
    for (size_t i = 0; i < 3; i++) {
        struct fake_smtp_params fp = {.auth = mechs[i], .user = "alice", .password = password};
        struct run *r = run_new(&fp);
        struct capture cap;
        const char *resp;
        char line[256];
        char *log;

        run_logon(r, "alice", password);
        r->set.allow_plaintext_auth = true;
        run_add(r, &plain_msg);
        capture_start(&cap);
        run_go(r);
        log = capture_end(&cap);
        assert_int_equal(r->done[0].fail, SMTP_FAIL_NONE);
        assert_contains(log, labels[i]);
        assert_contains(log, "[AUTH exchange not logged]");
        assert_no_secret(log, "alice", password);
        /* The line sent after the challenge (the CRAM-MD5 response, the
         * LOGIN user) is not in the log either. */
        resp = strstr(r->transcript, "\n");
        resp = resp != NULL ? strstr(resp + 1, "\n") : NULL;
        if (resp != NULL && i > 0) {
            size_t n = strcspn(resp + 1, "\n");

            snprintf(line, sizeof(line), ">>> %.*s", (int)n, resp + 1);
            assert_lacks(log, line);
        }
        free(log);
        run_free(r);
    }
}

/* A server echoing the credentials: masked in every reason, reply and
 * recipient text the client hands out, and in the log. */
static void test_smtp_client_echoed_password_masked(void **state)
{
    const char *password = "Echo-Me-Not 7";
    struct fake_smtp_params fp = {.auth = "LOGIN", .user = "alice", .password = "other"};
    char reply[512], b64[128];
    struct capture cap;
    struct run *r;
    char *log;

    (void)state;
    b64_of(b64, password, strlen(password));
    snprintf(reply, sizeof(reply), "535-5.7.8 you sent %s\r\n535 5.7.8 that is %s in base64\r\n",
             password, b64);
    r = run_new(&fp);
    fake_smtp_script(r->fake, "AUTH-RESULT", reply, 1);
    run_logon(r, "alice", password);
    r->set.allow_plaintext_auth = true;
    capture_start(&cap);
    run_go(r);
    log = capture_end(&cap);
    assert_int_equal(r->closed_fail, SMTP_FAIL_AUTH_REFUSED);
    assert_contains(r->closed_reason, "you sent " SETTINGS_PASSWORD_MASK);
    assert_contains(r->closed_reason, "that is " SETTINGS_PASSWORD_MASK " in base64");
    assert_no_secret(r->closed_reason, "alice", password);
    for (size_t i = 0; i < r->nsteps; i++) {
        assert_no_secret(r->steps[i].detail, "alice", password);
        assert_no_secret(r->steps[i].reply, "alice", password);
    }
    assert_no_secret(log, "alice", password);
    free(log);
    run_free(r);

    /* After AUTH: a RCPT refusal that quotes the password. */
    fp = (struct fake_smtp_params){.auth = "PLAIN", .user = "alice", .password = password};
    r = run_new(&fp);
    snprintf(reply, sizeof(reply), "550 5.1.1 no user, but thanks for %s", password);
    fake_smtp_script(r->fake, "RCPT", reply, 1);
    run_logon(r, "alice", password);
    r->set.allow_plaintext_auth = true;
    run_add(r, &plain_msg);
    capture_start(&cap);
    run_go(r);
    log = capture_end(&cap);
    assert_int_equal(r->done[0].fail, SMTP_FAIL_REPLY_5XX);
    assert_contains(r->done[0].reason, "thanks for " SETTINGS_PASSWORD_MASK);
    assert_no_secret(r->done[0].reason, "alice", password);
    assert_no_secret(log, "alice", password);
    free(log);
    run_free(r);
}

static void test_smtp_client_redact_forms(void **state)
{
    struct settings s;
    char text[64], small[12];

    (void)state;
    settings_init(&s);
    snprintf(s.user_id, sizeof(s.user_id), "u");
    assert_int_equal(settings_set_password(&s, "p\\w"), 0);
    /* Plain, escaped as a reply shows it, several times, and cut to fit. */
    snprintf(text, sizeof(text), "a p\\w b p\\\\w c");
    smtp_client_redact(&s, text, sizeof(text));
    assert_string_equal(text, "a " SETTINGS_PASSWORD_MASK " b " SETTINGS_PASSWORD_MASK " c");
    snprintf(small, sizeof(small), "xx p\\w yy");
    smtp_client_redact(&s, small, sizeof(small));
    assert_string_equal(small, "xx ********");
    /* No password: nothing changes. */
    assert_int_equal(settings_set_password(&s, NULL), 0);
    snprintf(text, sizeof(text), "a p\\w b");
    smtp_client_redact(&s, text, sizeof(text));
    assert_string_equal(text, "a p\\w b");
    settings_clear(&s);
}

static int group_setup(void **state)
{
    (void)state;
    if (getenv("SMTPSYNC_TEST_DEBUG") != NULL)
        log_init("test_smtp_client", LOG_LEVEL_DEBUG, LOG_FORMAT_TEXT);
    return 0;
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_smtp_client_plaintext_send),
        cmocka_unit_test(test_smtp_client_verbose_steps),
        cmocka_unit_test(test_smtp_client_pipelining_on),
        cmocka_unit_test(test_smtp_client_pipelining_off),
        cmocka_unit_test(test_smtp_client_pipelining_partial),
        cmocka_unit_test(test_smtp_client_all_rcpts_refused),
        cmocka_unit_test(test_smtp_client_rset_after_failure),
        cmocka_unit_test(test_smtp_client_two_messages),
        cmocka_unit_test(test_smtp_client_data_end_refused),
        cmocka_unit_test(test_smtp_client_size_too_big),
        cmocka_unit_test(test_smtp_client_size_param),
        cmocka_unit_test(test_smtp_client_eight_bit),
        cmocka_unit_test(test_smtp_client_eight_bit_refused),
        cmocka_unit_test(test_smtp_client_smtputf8),
        cmocka_unit_test(test_smtp_client_bad_address),
        cmocka_unit_test(test_smtp_client_dot_stuffing),
        cmocka_unit_test(test_smtp_client_large_message),
        cmocka_unit_test(test_smtp_client_auth_plain_starttls),
        cmocka_unit_test(test_smtp_client_auth_login_implicit_tls),
        cmocka_unit_test(test_smtp_client_auth_cram_md5_plaintext_allowed),
        cmocka_unit_test(test_smtp_client_auth_plaintext_refused),
        cmocka_unit_test(test_smtp_client_auth_refused),
        cmocka_unit_test(test_smtp_client_auth_unavailable),
        cmocka_unit_test(test_smtp_client_starttls_not_offered_fails_closed),
        cmocka_unit_test(test_smtp_client_starttls_fallback),
        cmocka_unit_test(test_smtp_client_starttls_fallback_never_with_auth),
        cmocka_unit_test(test_smtp_client_starttls_refused),
        cmocka_unit_test(test_smtp_client_starttls_injection),
        cmocka_unit_test(test_smtp_client_implicit_tls_ok),
        cmocka_unit_test(test_smtp_client_implicit_tls_self_signed_anchor),
        cmocka_unit_test(test_smtp_client_cert_hostname),
        cmocka_unit_test(test_smtp_client_cert_untrusted),
        cmocka_unit_test(test_smtp_client_cert_expired),
        cmocka_unit_test(test_smtp_client_tls_not_tls),
        cmocka_unit_test(test_smtp_client_tls_version),
        cmocka_unit_test(test_smtp_client_tls_closed_silently),
        cmocka_unit_test(test_smtp_client_421_mid_session),
        cmocka_unit_test(test_smtp_client_pipelined_replies_matched),
        cmocka_unit_test(test_smtp_client_421_pipelined_mail),
        cmocka_unit_test(test_smtp_client_failed_step_every_phase),
        cmocka_unit_test(test_smtp_client_421_greeting),
        cmocka_unit_test(test_smtp_client_oversized_line),
        cmocka_unit_test(test_smtp_client_too_many_lines),
        cmocka_unit_test(test_smtp_client_garbage_greeting),
        cmocka_unit_test(test_smtp_client_unsolicited_reply),
        cmocka_unit_test(test_smtp_client_greeting_timeout),
        cmocka_unit_test(test_smtp_client_closed_after_data),
        cmocka_unit_test(test_smtp_client_ehlo_refused_helo),
        cmocka_unit_test(test_smtp_client_every_address_tried),
        cmocka_unit_test(test_smtp_client_connect_refused),
        cmocka_unit_test(test_smtp_client_resolve_fails),
        cmocka_unit_test(test_smtp_client_idle_kick),
        cmocka_unit_test(test_smtp_client_cancel_from_on_done),
        cmocka_unit_test(test_smtp_client_cancel_from_on_step),
        cmocka_unit_test(test_smtp_client_cancel_from_on_next),
        cmocka_unit_test(test_smtp_client_cancel_early),
        cmocka_unit_test(test_smtp_client_start_invalid),
        cmocka_unit_test(test_smtp_client_fail_table),
        cmocka_unit_test(test_smtp_client_kick_refused_after_idle),
        cmocka_unit_test(test_smtp_client_resolve_timeout),
        cmocka_unit_test(test_smtp_client_no_renegotiation),
        cmocka_unit_test(test_smtp_client_debug_log_hides_credentials),
        cmocka_unit_test(test_smtp_client_echoed_password_masked),
        cmocka_unit_test(test_smtp_client_redact_forms),
    };

    return cmocka_run_group_tests(tests, group_setup, NULL);
}
