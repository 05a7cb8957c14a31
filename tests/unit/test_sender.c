/*
 * test_sender: the sender against a real outbox and a real store in a
 * temporary directory, delivering to the in-process scripted SMTP server
 * (fake_smtp.h) on the test's own loop.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include <arpa/inet.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <signal.h>
#include <strings.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include <uv.h>

#include "backoff.h"
#include "error.h"
#include "fake_smtp.h"
#include "log.h"
#include "metrics.h"
#include "outbox.h"
#include "sender.h"
#include "settings.h"
#include "smtp_message.h"
#include "store.h"
#include "testutil.h"

#define INSTANCE   "node-a"
#define FROM       "noreply@example.com"
#define PASSWORD   "S3cr3t-Pa55w0rd"
#define TIMEOUT_MS 10000

struct env {
    uv_loop_t loop;
    uv_timer_t tick; /* makes UV_RUN_ONCE return often */
    char *dir;
    char outbox_dir[4096];
    struct store *st;
    struct outbox *ob;
    struct sender *sender;
    bool stopped;
    int done_calls;
    struct fake_smtp *fake[2];
    uint16_t port[2];
    int64_t clock;  /* the injected clock, when a test uses it */
    int64_t clock0; /* its start: the wall clock at setup */
    unsigned max_active;
};

/* An rng that always draws the same number: backoff is exact. */
static uint32_t fixed_rng(void *arg)
{
    return *(const uint32_t *)arg;
}

static uint32_t fixed_value = 123456789;
static const struct backoff_rng test_rng = {.next = fixed_rng, .arg = &fixed_value};

static int64_t test_clock(void *arg)
{
    return ((const struct env *)arg)->clock;
}

static void on_tick(uv_timer_t *t)
{
    (void)t;
}

static int setup(void **state)
{
    struct env *e = calloc(1, sizeof(*e));
    struct store_params sp = {0};
    struct outbox_params op = {0};
    char store_dir[4096];

    assert_non_null(e);
    assert_int_equal(uv_loop_init(&e->loop), 0);
    assert_int_equal(uv_timer_init(&e->loop, &e->tick), 0);
    assert_int_equal(uv_timer_start(&e->tick, on_tick, 5, 5), 0);
    e->dir = testutil_tmpdir();
    snprintf(store_dir, sizeof(store_dir), "%s/store", e->dir);
    snprintf(e->outbox_dir, sizeof(e->outbox_dir), "%s/outbox", e->dir);
    sp.dir = store_dir;
    sp.create = true;
    assert_int_equal(store_open(&sp, &e->st), 0);
    op.dir = e->outbox_dir;
    assert_int_equal(outbox_open(&op, &e->ob), 0);
    e->clock0 = (int64_t)time(NULL) * 1000;
    e->clock = e->clock0;
    *state = e;
    return 0;
}

static void run_until(struct env *e, bool (*cond)(struct env *e))
{
    uint64_t start = uv_hrtime();

    while (!cond(e)) {
        struct sender_stats st;

        if (uv_hrtime() - start > (uint64_t)TIMEOUT_MS * 1000000)
            fail_msg("timed out waiting");
        uv_run(&e->loop, UV_RUN_ONCE);
        if (e->sender != NULL && !e->stopped) {
            sender_stats(e->sender, &st);
            if (st.sessions_active > e->max_active)
                e->max_active = st.sessions_active;
        }
    }
}

static void on_done(void *arg)
{
    ((struct env *)arg)->done_calls++;
}

static bool is_done(struct env *e)
{
    return e->done_calls > 0;
}

static void stop_sender(struct env *e)
{
    if (e->sender == NULL || e->stopped)
        return;
    e->stopped = true;
    sender_stop(e->sender, on_done, e);
    run_until(e, is_done);
    assert_int_equal(e->done_calls, 1);
    e->sender = NULL;
}

static int teardown(void **state)
{
    struct env *e = *state;

    stop_sender(e);
    for (int i = 0; i < 2; i++)
        fake_smtp_stop(e->fake[i]);
    uv_close((uv_handle_t *)&e->tick, NULL);
    assert_int_equal(uv_run(&e->loop, UV_RUN_DEFAULT), 0);
    assert_int_equal(uv_loop_close(&e->loop), 0);
    outbox_close(e->ob);
    store_close(e->st);
    testutil_rmtree(e->dir);
    free(e->dir);
    free(e);
    return 0;
}

/* Helpers */

static void start_fake(struct env *e, int i, const struct fake_smtp_params *p)
{
    struct fake_smtp_params dflt = {.pipelining = true};

    assert_int_equal(fake_smtp_start(&e->loop, p != NULL ? p : &dflt, &e->fake[i], &e->port[i]), 0);
}

/* A port on loopback where nothing listens. */
static uint16_t closed_port(void)
{
    struct sockaddr_in a = {.sin_family = AF_INET};
    socklen_t len = sizeof(a);
    int fd = socket(AF_INET, SOCK_STREAM, 0);

    assert_true(fd >= 0);
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    assert_int_equal(bind(fd, (struct sockaddr *)&a, sizeof(a)), 0);
    assert_int_equal(getsockname(fd, (struct sockaddr *)&a, &len), 0);
    close(fd);
    return ntohs(a.sin_port);
}

/* Saves a new revision of the instance's settings, pointing at 127.0.0.1:port. */
static uint64_t save_settings(struct env *e, uint16_t port, const char *relays,
                              const char *password)
{
    struct store_commit c = {.actor = "local:test"};
    struct settings_problems problems = {0};
    struct settings s;
    uint64_t rev = 0;

    settings_init(&s);
    snprintf(s.instance, sizeof(s.instance), INSTANCE);
    snprintf(s.hostname, sizeof(s.hostname), "127.0.0.1");
    s.port = port;
    snprintf(s.from_address, sizeof(s.from_address), FROM);
    snprintf(s.test_address, sizeof(s.test_address), "ops@example.com");
    if (relays != NULL)
        assert_int_equal(settings_set_field(&s, SETTINGS_F_FALLBACK_RELAYS, relays, &problems), 0);
    if (password != NULL) {
        s.logon_required = true;
        s.allow_plaintext_auth = true;
        snprintf(s.user_id, sizeof(s.user_id), "mailer");
        assert_int_equal(settings_set_password(&s, password), 0);
    }
    assert_int_equal(store_draft_put(e->st, &s), 0);
    settings_clear(&s);
    assert_int_equal(store_save(e->st, NULL, 0, &c, &problems, &rev), 0);
    assert_int_equal(problems.count, 0);
    return rev;
}

static uint64_t submit_full(struct env *e, enum outbox_priority prio, const char *mail_from,
                            const char *const *rcpts, size_t nrcpts, const char *body)
{
    char msg[4096];
    struct outbox_new m = {0};
    uint64_t id = 0;

    snprintf(msg, sizeof(msg),
             "Date: Thu, 01 Jan 2026 00:00:00 +0000\r\nMessage-ID: <%d@test>\r\n"
             "Subject: test\r\n\r\n%s\r\n",
             rand(), body);
    m.priority = prio;
    m.mail_from = mail_from;
    m.rcpts = rcpts;
    m.nrcpts = nrcpts;
    m.message = msg;
    m.message_len = strlen(msg);
    assert_int_equal(outbox_submit(e->ob, &m, 1, e->clock, &id), 0);
    return id;
}

static uint64_t submit(struct env *e, enum outbox_priority prio, const char *body)
{
    static const char *const rcpt[] = {"someone@example.net"};

    return submit_full(e, prio, NULL, rcpt, 1, body);
}

static struct sender_params params(struct env *e, bool injected_clock)
{
    struct sender_params p = {0};

    p.loop = &e->loop;
    p.store = e->st;
    p.outbox = e->ob;
    p.instance = INSTANCE;
    p.helo = "sender.test";
    p.idle_ms = 100;
    p.retry_initial_ms = 1000;
    p.retry_max_ms = 60000;
    p.drain_ms = 2000;
    p.rng = &test_rng;
    if (injected_clock) {
        p.now_ms = test_clock;
        p.now_arg = e;
    }
    return p;
}

static void start_sender(struct env *e, const struct sender_params *p)
{
    assert_int_equal(sender_start(p, &e->sender), 0);
}

static uint64_t npending(struct env *e)
{
    struct outbox_depth d;

    assert_int_equal(outbox_depth(e->ob, &d), 0);
    return d.pending[OUTBOX_TOKENCODE] + d.pending[OUTBOX_REPORT];
}

static uint64_t ndead(struct env *e)
{
    struct outbox_depth d;

    assert_int_equal(outbox_depth(e->ob, &d), 0);
    return d.dead;
}

static bool all_sent(struct env *e)
{
    return npending(e) == 0;
}

static bool one_dead(struct env *e)
{
    return ndead(e) == 1;
}

/* The first message listed, pending or dead, copied out. */
struct seen {
    bool found;
    uint32_t attempts;
    int64_t next_try_ms;
    char last_error[OUTBOX_ERROR_MAX];
    char dead_reason[OUTBOX_ERROR_MAX];
};

static int seen_cb(const struct outbox_msg *m, bool dead, void *arg)
{
    struct seen *s = arg;

    (void)dead;
    s->found = true;
    s->attempts = m->attempts;
    s->next_try_ms = m->next_try_ms;
    snprintf(s->last_error, sizeof(s->last_error), "%s", m->last_error);
    snprintf(s->dead_reason, sizeof(s->dead_reason), "%s", m->dead_reason);
    return 1;
}

static struct seen first(struct env *e, bool dead)
{
    struct seen s = {0};

    outbox_each(e->ob, dead, seen_cb, &s);
    return s;
}

static bool one_attempt(struct env *e)
{
    struct seen s = first(e, false);

    return s.found && s.attempts == 1;
}

static int count_tried_cb(const struct outbox_msg *m, bool dead, void *arg)
{
    (void)dead;
    if (m->attempts > 0)
        (*(size_t *)arg)++;
    return 0;
}

/* Pending messages tried at least once. */
static size_t ntried(struct env *e)
{
    size_t n = 0;

    assert_int_equal(outbox_each(e->ob, false, count_tried_cb, &n), 0);
    return n;
}

static bool two_deferred(struct env *e)
{
    return ntried(e) == 2;
}

static bool one_of_each(struct env *e)
{
    return ntried(e) == 1 && npending(e) == 1 && ndead(e) == 1;
}

static struct sender_stats stats(struct env *e)
{
    struct sender_stats st;

    sender_stats(e->sender, &st);
    return st;
}

static bool has(const char *hay, const char *needle)
{
    return hay != NULL && strstr(hay, needle) != NULL;
}

/* The value of the sample `name` in GET /metrics, or -1 if absent. */
static double metric(const char *name)
{
    char *body = NULL, *p;
    size_t len = 0, n = strlen(name);
    double v = -1;

    assert_int_equal(metrics_render(NULL, NULL, &body, &len), 0);
    for (p = body; p != NULL && *p != '\0'; p = strchr(p, '\n'), p = p != NULL ? p + 1 : NULL)
        if (strncmp(p, name, n) == 0 && p[n] == ' ') {
            v = strtod(p + n + 1, NULL);
            break;
        }
    free(body);
    return v;
}

/* A server that answers until DATA and then never again: a message stays
 * in flight until sender_stop()'s drain_ms runs out. */
struct stall {
    uv_tcp_t listener;
    uv_tcp_t conn;
    bool accepted;
    bool in_data;
    uint16_t port;
    char line[1024];
    size_t len;
};

static void stall_alloc(uv_handle_t *h, size_t suggested, uv_buf_t *buf)
{
    static char space[4096];

    (void)h;
    (void)suggested;
    *buf = uv_buf_init(space, sizeof(space));
}

static void stall_say(struct stall *st, const char *text)
{
    uv_buf_t b = uv_buf_init((char *)(uintptr_t)text, (unsigned)strlen(text));

    assert_int_equal(uv_try_write((uv_stream_t *)&st->conn, &b, 1), (int)strlen(text));
}

static void stall_line(struct stall *st)
{
    if (st->in_data)
        return;
    if (strncasecmp(st->line, "DATA", 4) == 0) {
        st->in_data = true;
        stall_say(st, "354 go ahead\r\n");
    } else if (strncasecmp(st->line, "QUIT", 4) == 0) {
        stall_say(st, "221 bye\r\n");
    } else {
        stall_say(st, "250 ok\r\n");
    }
}

static void stall_read(uv_stream_t *stream, ssize_t nread, const uv_buf_t *buf)
{
    struct stall *st = stream->data;

    if (nread < 0) {
        uv_read_stop(stream);
        return;
    }
    for (ssize_t i = 0; i < nread; i++) {
        if (st->len < sizeof(st->line) - 1)
            st->line[st->len++] = buf->base[i];
        if (buf->base[i] == '\n') {
            st->line[st->len] = '\0';
            stall_line(st);
            st->len = 0;
        }
    }
}

static void stall_connection(uv_stream_t *server, int status)
{
    struct stall *st = server->data;

    assert_int_equal(status, 0);
    assert_false(st->accepted);
    assert_int_equal(uv_tcp_init(server->loop, &st->conn), 0);
    st->conn.data = st;
    assert_int_equal(uv_accept(server, (uv_stream_t *)&st->conn), 0);
    st->accepted = true;
    stall_say(st, "220 stall ESMTP\r\n");
    assert_int_equal(uv_read_start((uv_stream_t *)&st->conn, stall_alloc, stall_read), 0);
}

static void stall_start(struct env *e, struct stall *st)
{
    struct sockaddr_in a;
    struct sockaddr_storage ss;
    int len = sizeof(ss);

    memset(st, 0, sizeof(*st));
    assert_int_equal(uv_tcp_init(&e->loop, &st->listener), 0);
    st->listener.data = st;
    uv_ip4_addr("127.0.0.1", 0, &a);
    assert_int_equal(uv_tcp_bind(&st->listener, (const struct sockaddr *)&a, 0), 0);
    assert_int_equal(uv_listen((uv_stream_t *)&st->listener, 4, stall_connection), 0);
    assert_int_equal(uv_tcp_getsockname(&st->listener, (struct sockaddr *)&ss, &len), 0);
    st->port = ntohs(((struct sockaddr_in *)&ss)->sin_port);
}

static void stall_stop(struct stall *st)
{
    uv_close((uv_handle_t *)&st->listener, NULL);
    if (st->accepted)
        uv_close((uv_handle_t *)&st->conn, NULL);
}

/* Tests */

static void test_sender_delivers_with_from_header(void **state)
{
    static const char *const rcpts[] = {"a@example.net", "b@example.net"};
    struct env *e = *state;
    struct sender_params p = params(e, false);
    char header[256], expect[4096];
    const char *got;
    size_t len;
    uint64_t rev;

    start_fake(e, 0, NULL);
    rev = save_settings(e, e->port[0], NULL, NULL);
    submit_full(e, OUTBOX_REPORT, NULL, rcpts, 2, "the body");
    start_sender(e, &p);
    run_until(e, all_sent);

    assert_int_equal(fake_smtp_nmessages(e->fake[0]), 1);
    assert_int_equal(smtp_message_from_header(FROM, header, sizeof(header)), 0);
    got = fake_smtp_message(e->fake[0], 0, &len);
    assert_true(len > strlen(header));
    assert_memory_equal(got, header, strlen(header));
    assert_true(has(got, "Subject: test\r\n"));
    assert_true(has(got, "\r\n\r\nthe body\r\n"));
    snprintf(expect, sizeof(expect), "%s a@example.net b@example.net", FROM);
    assert_string_equal(fake_smtp_envelope(e->fake[0], 0), expect);
    assert_int_equal(ndead(e), 0);

    /* A submitter's own envelope sender is kept; the From header is not. */
    submit_full(e, OUTBOX_REPORT, "bounces@example.org", rcpts, 1, "second");
    sender_wake(e->sender);
    run_until(e, all_sent);
    assert_int_equal(fake_smtp_nmessages(e->fake[0]), 2);
    assert_string_equal(fake_smtp_envelope(e->fake[0], 1), "bounces@example.org a@example.net");
    got = fake_smtp_message(e->fake[0], 1, &len);
    assert_memory_equal(got, header, strlen(header));

    assert_int_equal(stats(e).delivered, 2);
    assert_int_equal(stats(e).deferred, 0);
    assert_int_equal(stats(e).dead, 0);
    assert_int_equal(stats(e).settings_revision, rev);
    assert_string_equal(stats(e).last_error, "");
}

static void test_sender_delivers_over_implicit_tls(void **state)
{
    struct env *e = *state;
    struct sender_params p = params(e, false);
    struct fake_smtp_params fp = {.pipelining = true, .implicit_tls = true};
    struct store_commit c = {.actor = "local:test"};
    struct settings_problems problems = {0};
    struct settings st;
    char cert_file[4096], key_file[4096];
    size_t len = 0;
    char *ca;

    snprintf(cert_file, sizeof(cert_file), "%s", testutil_cert_path("leaf.pem"));
    snprintf(key_file, sizeof(key_file), "%s", testutil_cert_path("leaf.key"));
    fp.cert_file = cert_file;
    fp.key_file = key_file;
    start_fake(e, 0, &fp);

    ca = testutil_read_file(testutil_cert_path("ca.pem"), &len);
    settings_init(&st);
    snprintf(st.instance, sizeof(st.instance), INSTANCE);
    snprintf(st.hostname, sizeof(st.hostname), "127.0.0.1");
    st.port = e->port[0];
    snprintf(st.from_address, sizeof(st.from_address), FROM);
    snprintf(st.test_address, sizeof(st.test_address), "ops@example.com");
    st.smtps_enabled = true;
    st.tls_mode = SETTINGS_TLS_STRICT;
    assert_int_equal(settings_set_certificate(&st, ca, len, &problems), 0);
    free(ca);
    assert_int_equal(store_draft_put(e->st, &st), 0);
    settings_clear(&st);
    assert_int_equal(store_save(e->st, NULL, 0, &c, &problems, NULL), 0);

    submit(e, OUTBOX_TOKENCODE, "over TLS");
    start_sender(e, &p);
    run_until(e, all_sent);
    assert_int_equal(fake_smtp_nmessages(e->fake[0]), 1);
    assert_true(has(fake_smtp_message(e->fake[0], 0, NULL), "over TLS"));
    assert_int_equal(stats(e).delivered, 1);
}

static void test_sender_one_session_for_one_message(void **state)
{
    struct env *e = *state;
    struct sender_params p = params(e, false);

    start_fake(e, 0, NULL);
    save_settings(e, e->port[0], NULL, NULL);
    submit(e, OUTBOX_REPORT, "only one");
    p.max_sessions = 4;
    start_sender(e, &p);
    run_until(e, all_sent);
    assert_int_equal(fake_smtp_nconnections(e->fake[0]), 1);
    assert_int_equal(stats(e).sessions_opened, 1);
}

static void test_sender_tokencode_before_earlier_report(void **state)
{
    struct env *e = *state;
    struct sender_params p = params(e, false);
    const char *m0, *m1;

    start_fake(e, 0, NULL);
    save_settings(e, e->port[0], NULL, NULL);
    submit(e, OUTBOX_REPORT, "a report");
    submit(e, OUTBOX_REPORT, "another report");
    submit(e, OUTBOX_TOKENCODE, "tokencode 123456");
    p.max_sessions = 1;
    start_sender(e, &p);
    run_until(e, all_sent);
    assert_int_equal(fake_smtp_nmessages(e->fake[0]), 3);
    m0 = fake_smtp_message(e->fake[0], 0, NULL);
    m1 = fake_smtp_message(e->fake[0], 1, NULL);
    assert_true(has(m0, "tokencode 123456"));
    assert_true(has(m1, "a report"));
    assert_true(has(fake_smtp_message(e->fake[0], 2, NULL), "another report"));
}

static void test_sender_defers_4xx_then_delivers(void **state)
{
    struct env *e = *state;
    struct sender_params p = params(e, true);
    uint64_t delay = backoff_delay(1000, 60000, 1, &test_rng);
    struct seen s;

    start_fake(e, 0, NULL);
    save_settings(e, e->port[0], NULL, NULL);
    fake_smtp_script(e->fake[0], "MAIL", "451 4.3.0 try again later", 1);
    submit(e, OUTBOX_REPORT, "retry me");
    start_sender(e, &p);
    run_until(e, one_attempt);

    s = first(e, false);
    assert_int_equal(s.attempts, 1);
    assert_true(delay >= 500 && delay <= 1000);
    assert_int_equal(s.next_try_ms, e->clock0 + (int64_t)delay);
    assert_true(has(s.last_error, "451 4.3.0 try again later"));
    assert_int_equal(fake_smtp_nmessages(e->fake[0]), 0);
    assert_int_equal(stats(e).deferred, 1);
    assert_true(has(stats(e).last_error, "451 4.3.0"));

    /* Not due yet: a wake changes nothing. */
    sender_wake(e->sender);
    for (int i = 0; i < 5; i++)
        uv_run(&e->loop, UV_RUN_ONCE);
    assert_int_equal(npending(e), 1);

    e->clock += (int64_t)delay;
    sender_wake(e->sender);
    run_until(e, all_sent);
    assert_int_equal(fake_smtp_nmessages(e->fake[0]), 1);
    assert_int_equal(stats(e).delivered, 1);
    assert_int_equal(ndead(e), 0);
}

static void test_sender_backoff_grows_per_attempt(void **state)
{
    struct env *e = *state;
    struct sender_params p = params(e, true);
    uint64_t d1 = backoff_delay(1000, 60000, 1, &test_rng);
    uint64_t d2 = backoff_delay(1000, 60000, 2, &test_rng);
    struct seen s;

    start_fake(e, 0, NULL);
    save_settings(e, e->port[0], NULL, NULL);
    fake_smtp_script(e->fake[0], "RCPT", "452 4.2.2 mailbox full", 0);
    submit(e, OUTBOX_TOKENCODE, "code 1");
    start_sender(e, &p);
    run_until(e, one_attempt);
    e->clock += (int64_t)d1;
    sender_wake(e->sender);
    for (;;) {
        s = first(e, false);
        if (s.attempts == 2)
            break;
        uv_run(&e->loop, UV_RUN_ONCE);
    }
    assert_int_equal(s.next_try_ms, e->clock0 + (int64_t)d1 + (int64_t)d2);
    assert_true(d2 >= 1000 && d2 <= 2000);
    assert_true(has(s.last_error, "452 4.2.2 mailbox full"));
}

static void test_sender_dead_on_5xx(void **state)
{
    struct env *e = *state;
    struct sender_params p = params(e, false);
    struct seen s;

    start_fake(e, 0, NULL);
    save_settings(e, e->port[0], NULL, NULL);
    fake_smtp_script(e->fake[0], "RCPT", "550 5.1.1 <someone@example.net>: user unknown", 1);
    submit(e, OUTBOX_REPORT, "to nobody");
    start_sender(e, &p);
    run_until(e, one_dead);
    s = first(e, true);
    assert_true(has(s.dead_reason, "550 5.1.1 <someone@example.net>: user unknown"));
    assert_int_equal(npending(e), 0);
    assert_int_equal(fake_smtp_nmessages(e->fake[0]), 0);
    assert_int_equal(stats(e).dead, 1);
    assert_int_equal(stats(e).delivered, 0);
}

static void test_sender_dead_on_5xx_after_data(void **state)
{
    struct env *e = *state;
    struct sender_params p = params(e, false);

    start_fake(e, 0, NULL);
    save_settings(e, e->port[0], NULL, NULL);
    fake_smtp_script(e->fake[0], "DATA-END", "554 5.7.1 rejected as spam", 1);
    submit(e, OUTBOX_REPORT, "spammy");
    submit(e, OUTBOX_REPORT, "fine");
    p.max_sessions = 1;
    start_sender(e, &p);
    run_until(e, all_sent);
    assert_int_equal(ndead(e), 1);
    assert_true(has(first(e, true).dead_reason, "554 5.7.1 rejected as spam"));
    /* The session went on with the next message. */
    assert_int_equal(fake_smtp_nmessages(e->fake[0]), 1);
    assert_true(has(fake_smtp_message(e->fake[0], 0, NULL), "fine"));
    assert_int_equal(fake_smtp_nconnections(e->fake[0]), 1);
}

static void test_sender_defers_when_connection_refused(void **state)
{
    struct env *e = *state;
    struct sender_params p = params(e, true);
    struct seen s;

    save_settings(e, closed_port(), NULL, NULL);
    submit(e, OUTBOX_REPORT, "nowhere to go");
    submit(e, OUTBOX_TOKENCODE, "nor this");
    start_sender(e, &p);
    run_until(e, two_deferred);
    s = first(e, false);
    assert_int_equal(s.attempts, 1);
    assert_true(s.last_error[0] != '\0');
    assert_int_equal(s.next_try_ms, e->clock0 + (int64_t)backoff_delay(1000, 60000, 1, &test_rng));
    assert_int_equal(ndead(e), 0);
    assert_int_equal(stats(e).deferred, 2);
    assert_true(stats(e).sessions_failed >= 1);
    assert_int_equal(stats(e).delivered, 0);
}

static void test_sender_defers_when_server_drops(void **state)
{
    struct env *e = *state;
    struct sender_params p = params(e, true);

    start_fake(e, 0, NULL);
    save_settings(e, e->port[0], NULL, NULL);
    fake_smtp_script(e->fake[0], "DATA-END", "", 1); /* close instead of answering */
    submit(e, OUTBOX_REPORT, "cut off");
    start_sender(e, &p);
    run_until(e, one_attempt);
    assert_int_equal(ndead(e), 0);
    assert_int_equal(stats(e).deferred, 1);
    e->clock += 1000;
    sender_wake(e->sender);
    run_until(e, all_sent);
    assert_int_equal(fake_smtp_nmessages(e->fake[0]), 1);
}

static bool session_up(struct env *e)
{
    return fake_smtp_nconnections(e->fake[0]) >= 1;
}

/* stderr into a file at `level`, for tests that read the log. */
struct capture {
    char path[4200];
    int saved;
};

static void capture_start(struct env *e, struct capture *cap, enum log_level level)
{
    int fd;

    snprintf(cap->path, sizeof(cap->path), "%s/stderr.log", e->dir);
    fflush(stderr);
    cap->saved = dup(STDERR_FILENO);
    fd = open(cap->path, O_WRONLY | O_CREAT | O_TRUNC, 0600);
    assert_true(cap->saved >= 0 && fd >= 0);
    dup2(fd, STDERR_FILENO);
    close(fd);
    log_init("test_sender", level, LOG_FORMAT_TEXT);
}

static char *capture_end(struct capture *cap)
{
    fflush(stderr);
    dup2(cap->saved, STDERR_FILENO);
    close(cap->saved);
    log_init("test_sender", LOG_LEVEL_INFO, LOG_FORMAT_TEXT);
    return testutil_read_file(cap->path, NULL);
}

static size_t count_of(const char *hay, const char *needle)
{
    size_t n = 0;

    for (const char *p = hay; (p = strstr(p, needle)) != NULL; p += strlen(needle))
        n++;
    return n;
}

static bool one_deferred(struct env *e)
{
    return ntried(e) == 1;
}

/* A new node has no settings yet (a replica before its first revision):
 * mail waits, deferred, never dead; the warning is logged once; and it is
 * sent as soon as settings are saved, not at the end of its backoff. */
static void test_sender_defers_without_settings(void **state)
{
    struct env *e = *state;
    struct sender_params p = params(e, true);
    struct capture cap;
    struct seen s;
    char *log;

    start_fake(e, 0, NULL);
    submit(e, OUTBOX_TOKENCODE, "no settings yet");
    capture_start(e, &cap, LOG_LEVEL_INFO);
    start_sender(e, &p);
    run_until(e, one_deferred);
    s = first(e, false);
    assert_int_equal(s.attempts, 1);
    assert_true(has(s.last_error, "no settings for instance " INSTANCE));
    assert_true(s.next_try_ms > e->clock);
    assert_int_equal(ndead(e), 0);
    /* More mail, deferred the same way: still one warning. */
    submit(e, OUTBOX_REPORT, "no settings either");
    sender_wake(e->sender);
    run_until(e, two_deferred);
    assert_int_equal(ndead(e), 0);
    assert_int_equal(stats(e).sessions_opened, 0);
    assert_int_equal(stats(e).dead, 0);
    assert_int_equal(stats(e).deferred, 2);
    log = capture_end(&cap);
    assert_int_equal(count_of(log, "unusable reason="), 1);
    assert_true(has(log, "no settings for instance " INSTANCE));
    free(log);

    /* Settings arrive; the clock has not moved: both go out at once. */
    save_settings(e, e->port[0], NULL, NULL);
    sender_settings_changed(e->sender);
    run_until(e, all_sent);
    assert_int_equal(fake_smtp_nmessages(e->fake[0]), 2);
    assert_true(has(fake_smtp_message(e->fake[0], 0, NULL), "no settings yet"));
    assert_int_equal(ndead(e), 0);
}

/* Saved while the trust certificate is valid, then used from a "now" after
 * it has expired: the sender does not judge the certificate by the clock
 * of its last reading; the TLS handshake does, and here it succeeds. */
static void test_sender_expired_trust_cert_left_to_handshake(void **state)
{
    struct env *e = *state;
    struct sender_params p;
    struct fake_smtp_params fp = {.pipelining = true, .implicit_tls = true};
    struct settings_problems problems = {0};
    struct store_commit c = {.actor = "local:test"};
    char cert_file[4096], key_file[4096];
    struct capture cap;
    struct settings st;
    size_t len = 0;
    uint64_t rev = 0;
    char *ca, *log;

    snprintf(cert_file, sizeof(cert_file), "%s", testutil_cert_path("leaf.pem"));
    snprintf(key_file, sizeof(key_file), "%s", testutil_cert_path("leaf.key"));
    fp.cert_file = cert_file;
    fp.key_file = key_file;
    start_fake(e, 0, &fp);
    ca = testutil_read_file(testutil_cert_path("ca.pem"), &len);
    settings_init(&st);
    snprintf(st.instance, sizeof(st.instance), INSTANCE);
    snprintf(st.hostname, sizeof(st.hostname), "127.0.0.1");
    st.port = e->port[0];
    snprintf(st.from_address, sizeof(st.from_address), FROM);
    snprintf(st.test_address, sizeof(st.test_address), "ops@example.com");
    st.smtps_enabled = true;
    st.tls_mode = SETTINGS_TLS_STRICT;
    assert_int_equal(settings_set_certificate(&st, ca, len, &problems), 0);
    free(ca);
    assert_int_equal(store_draft_put(e->st, &st), 0);
    settings_clear(&st);
    assert_int_equal(store_save(e->st, NULL, 0, &c, &problems, &rev), 0);

    e->clock = (int64_t)4102444800000; /* 2100-01-01: the certificate has expired */
    p = params(e, true);
    submit(e, OUTBOX_REPORT, "sent all the same");
    capture_start(e, &cap, LOG_LEVEL_INFO);
    start_sender(e, &p);
    run_until(e, all_sent);
    log = capture_end(&cap);
    assert_int_equal(ndead(e), 0);
    assert_int_equal(fake_smtp_nmessages(e->fake[0]), 1);
    assert_int_equal(stats(e).settings_revision, rev);
    /* The operator is told, once. */
    assert_int_equal(count_of(log, "warning=\"settings: trust_certificate:"), 1);
    free(log);
}

/* Some recipients accepted, one refused for now (4xx), one for good (5xx):
 * delivered to the first, the second kept (and retried alone), the third
 * dropped. */
static void test_sender_partial_4xx_keeps_the_rest(void **state)
{
    static const char *const rcpts[] = {"ok@example.net", "later@example.net", "gone@example.net"};
    struct env *e = *state;
    struct sender_params p = params(e, true);
    uint64_t delay = backoff_delay(1000, 60000, 1, &test_rng);
    struct outbox_msg *left = NULL;
    struct seen s;

    start_fake(e, 0, NULL);
    save_settings(e, e->port[0], NULL, NULL);
    fake_smtp_script(e->fake[0], "RCPT", "250 2.1.5 ok", 1);
    fake_smtp_script(e->fake[0], "RCPT", "451 4.2.0 greylisted, try later", 1);
    fake_smtp_script(e->fake[0], "RCPT", "550 5.1.1 no such user", 1);
    metrics_reset();
    submit_full(e, OUTBOX_REPORT, NULL, rcpts, 3, "partly");
    start_sender(e, &p);
    run_until(e, one_attempt);
    /* A partial delivery is "deferred" until its last recipient goes; no
     * latency is observed yet. */
    assert_true(metric("smtpsync_deliveries_total{priority=\"report\",result=\"delivered\"}") < 0);
    assert_true(metric("smtpsync_deliveries_total{priority=\"report\",result=\"deferred\"}") == 1);
    assert_true(metric("smtpsync_delivery_latency_seconds_count{priority=\"report\"}") < 0);
    assert_int_equal(fake_smtp_nmessages(e->fake[0]), 1);
    assert_string_equal(fake_smtp_envelope(e->fake[0], 0), FROM " ok@example.net");
    s = first(e, false);
    assert_int_equal(s.attempts, 1);
    assert_int_equal(s.next_try_ms, e->clock0 + (int64_t)delay);
    assert_true(has(s.last_error, "delivered to 1 of 3 recipients, 1 refused for good"));
    assert_true(has(s.last_error, "451 4.2.0 greylisted"));
    assert_int_equal(ndead(e), 0);
    assert_int_equal(stats(e).delivered, 1);
    assert_int_equal(stats(e).deferred, 1);
    {
        struct outbox_params op = {.dir = e->outbox_dir};
        struct outbox *ob2;
        size_t n = 0;

        /* What is stored: the one recipient left. */
        assert_int_equal(outbox_open(&op, &ob2), 0);
        assert_int_equal(outbox_take(ob2, e->clock + delay, &left, 1, &n), 0);
        assert_int_equal(n, 1);
        assert_int_equal(left->nrcpts, 1);
        assert_string_equal(left->rcpts[0], "later@example.net");
        outbox_msg_free(left);
        outbox_close(ob2);
    }

    e->clock += (int64_t)delay;
    sender_wake(e->sender);
    run_until(e, all_sent);
    assert_int_equal(fake_smtp_nmessages(e->fake[0]), 2);
    assert_string_equal(fake_smtp_envelope(e->fake[0], 1), FROM " later@example.net");
    assert_int_equal(ndead(e), 0);
    /* Then once "delivered", one latency for the message. */
    assert_true(metric("smtpsync_deliveries_total{priority=\"report\",result=\"delivered\"}") == 1);
    assert_true(metric("smtpsync_deliveries_total{priority=\"report\",result=\"deferred\"}") == 1);
    assert_true(metric("smtpsync_delivery_latency_seconds_count{priority=\"report\"}") == 1);
    metrics_reset();
}

/* A refusal of the session before the first message (554 greeting, 550 to
 * both EHLO and HELO) is the relay's, not the mail's: deferred, never dead. */
static void test_sender_session_refused_defers(void **state)
{
    struct env *e = *state;
    struct sender_params p = params(e, false);

    start_fake(e, 0, NULL);
    save_settings(e, e->port[0], NULL, NULL);
    fake_smtp_script(e->fake[0], "GREETING", "554 5.7.1 no service for you", 1);
    fake_smtp_script(e->fake[0], "EHLO", "550 5.7.1 go away", 0);
    fake_smtp_script(e->fake[0], "HELO", "550 5.7.1 go away", 0);
    submit(e, OUTBOX_REPORT, "one");
    submit(e, OUTBOX_TOKENCODE, "two");
    p.max_sessions = 1;
    start_sender(e, &p);
    run_until(e, two_deferred);
    assert_int_equal(ndead(e), 0);
    assert_true(has(first(e, false).last_error, "554 5.7.1 no service"));
    /* Tried again: now EHLO and HELO are refused; deferred again. */
    for (;;) {
        struct seen s = first(e, false);

        if (s.attempts >= 2 && has(s.last_error, "550 5.7.1 go away"))
            break;
        uv_run(&e->loop, UV_RUN_ONCE);
    }
    assert_int_equal(ndead(e), 0);
    assert_int_equal(fake_smtp_nmessages(e->fake[0]), 0);
    assert_int_equal(stats(e).dead, 0);
}

/* A session past idle_ms QUITs; a server that never answers QUIT must not
 * keep new mail waiting: the kick is refused, another session takes it. */
static bool two_messages(struct env *e)
{
    return fake_smtp_nmessages(e->fake[0]) == 2;
}

static void test_sender_new_mail_while_session_quits(void **state)
{
    struct env *e = *state;
    struct sender_params p = params(e, false);
    uint64_t t0;

    start_fake(e, 0, NULL);
    save_settings(e, e->port[0], NULL, NULL);
    fake_smtp_script(e->fake[0], "QUIT", NULL, 0); /* never answered */
    submit(e, OUTBOX_REPORT, "first");
    p.idle_ms = 50;
    p.max_sessions = 1;
    start_sender(e, &p);
    run_until(e, all_sent);
    /* Past idle_ms: QUIT is on its way, unanswered. */
    t0 = uv_hrtime();
    while (uv_hrtime() - t0 < 300ull * 1000000)
        uv_run(&e->loop, UV_RUN_ONCE);
    assert_true(has(fake_smtp_transcript(e->fake[0]), "QUIT"));
    submit(e, OUTBOX_REPORT, "second");
    t0 = uv_hrtime();
    sender_wake(e->sender);
    run_until(e, two_messages);
    /* Not after the QUIT wait (10 s): the ending session was not counted
     * on, its slot was given to a new one. */
    assert_true(uv_hrtime() - t0 < 3000ull * 1000000);
    assert_int_equal(fake_smtp_nconnections(e->fake[0]), 2);
    run_until(e, all_sent);
}

/* Expired while waiting for a session: dead, never sent. */
static void test_sender_expired_before_session(void **state)
{
    struct env *e = *state;
    struct fake_smtp_params fp = {.pipelining = true, .greeting_delay_ms = 300};
    struct sender_params p = params(e, true);
    struct seen s;

    start_fake(e, 0, &fp);
    save_settings(e, e->port[0], NULL, NULL);
    submit(e, OUTBOX_TOKENCODE, "too late");
    start_sender(e, &p);
    run_until(e, session_up);
    e->clock += 11 * 60 * 1000; /* past the tokencode's 10 minutes */
    run_until(e, one_dead);
    s = first(e, true);
    assert_string_equal(s.dead_reason, "expired before any attempt");
    assert_int_equal(fake_smtp_nmessages(e->fake[0]), 0);
    assert_true(!has(fake_smtp_transcript(e->fake[0]), "MAIL"));
}

static void test_sender_reuses_one_connection(void **state)
{
    struct env *e = *state;
    struct sender_params p = params(e, false);
    char body[32];

    start_fake(e, 0, NULL);
    save_settings(e, e->port[0], NULL, NULL);
    for (int i = 0; i < 20; i++) {
        snprintf(body, sizeof(body), "message %02d", i);
        submit(e, OUTBOX_REPORT, body);
    }
    p.max_sessions = 1;
    start_sender(e, &p);
    run_until(e, all_sent);
    assert_int_equal(fake_smtp_nmessages(e->fake[0]), 20);
    assert_int_equal(fake_smtp_nconnections(e->fake[0]), 1);
    for (int i = 0; i < 20; i++) {
        snprintf(body, sizeof(body), "message %02d", i);
        assert_true(has(fake_smtp_message(e->fake[0], (size_t)i, NULL), body));
    }
    assert_int_equal(stats(e).delivered, 20);
    assert_int_equal(stats(e).sessions_opened, 1);
}

static bool idle_for_a_while(struct env *e)
{
    /* An idle session kicked by new mail reuses the connection. */
    return fake_smtp_nmessages(e->fake[0]) == 1;
}

static void test_sender_kicks_idle_session(void **state)
{
    struct env *e = *state;
    struct sender_params p = params(e, false);

    start_fake(e, 0, NULL);
    save_settings(e, e->port[0], NULL, NULL);
    submit(e, OUTBOX_REPORT, "first");
    p.idle_ms = 5000;
    start_sender(e, &p);
    run_until(e, idle_for_a_while);
    run_until(e, all_sent);
    submit(e, OUTBOX_REPORT, "second");
    sender_wake(e->sender);
    run_until(e, all_sent);
    assert_int_equal(fake_smtp_nmessages(e->fake[0]), 2);
    assert_int_equal(fake_smtp_nconnections(e->fake[0]), 1);
}

static void test_sender_bounds_sessions(void **state)
{
    struct env *e = *state;
    struct fake_smtp_params fp = {.pipelining = true, .greeting_delay_ms = 30};
    struct sender_params p = params(e, false);

    start_fake(e, 0, &fp);
    save_settings(e, e->port[0], NULL, NULL);
    for (int i = 0; i < 12; i++)
        submit(e, i % 3 ? OUTBOX_REPORT : OUTBOX_TOKENCODE, "bulk");
    p.max_sessions = 2;
    p.max_per_session = 3;
    start_sender(e, &p);
    run_until(e, all_sent);
    assert_int_equal(fake_smtp_nmessages(e->fake[0]), 12);
    assert_true(e->max_active <= 2);
    assert_true(e->max_active >= 1);
    /* 12 messages, 3 per session: at least 4 sessions, never more than 2 at once. */
    assert_true(fake_smtp_nconnections(e->fake[0]) >= 4);
    assert_int_equal(stats(e).delivered, 12);
}

static void test_sender_follows_new_settings(void **state)
{
    struct env *e = *state;
    struct sender_params p = params(e, false);
    uint64_t rev2, rev3;

    start_fake(e, 0, NULL);
    start_fake(e, 1, NULL);
    save_settings(e, e->port[0], NULL, NULL);
    submit(e, OUTBOX_REPORT, "to the first server");
    p.idle_ms = 5000; /* the first session stays open meanwhile */
    start_sender(e, &p);
    run_until(e, all_sent);
    assert_int_equal(fake_smtp_nmessages(e->fake[0]), 1);

    /* A new revision, noticed by the check before the next batch. */
    rev2 = save_settings(e, e->port[1], NULL, NULL);
    submit(e, OUTBOX_REPORT, "to the second server");
    sender_wake(e->sender);
    run_until(e, all_sent);
    assert_int_equal(fake_smtp_nmessages(e->fake[0]), 1);
    assert_int_equal(fake_smtp_nmessages(e->fake[1]), 1);
    assert_true(has(fake_smtp_message(e->fake[1], 0, NULL), "to the second server"));
    assert_int_equal(stats(e).settings_revision, rev2);

    /* Back, announced through sender_settings_changed(). */
    rev3 = save_settings(e, e->port[0], NULL, NULL);
    sender_settings_changed(e->sender);
    submit(e, OUTBOX_REPORT, "to the first server again");
    sender_wake(e->sender);
    run_until(e, all_sent);
    assert_int_equal(fake_smtp_nmessages(e->fake[0]), 2);
    assert_int_equal(fake_smtp_nmessages(e->fake[1]), 1);
    assert_int_equal(stats(e).settings_revision, rev3);
    /* The first connection was not reused under the new settings. */
    assert_int_equal(fake_smtp_nconnections(e->fake[0]), 2);
}

static void test_sender_fails_over_to_relay(void **state)
{
    struct env *e = *state;
    struct sender_params p = params(e, false);
    char relays[64];

    start_fake(e, 0, NULL);
    snprintf(relays, sizeof(relays), "127.0.0.1:%u", (unsigned)e->port[0]);
    save_settings(e, closed_port(), relays, NULL);
    submit(e, OUTBOX_REPORT, "via the relay");
    start_sender(e, &p);
    run_until(e, all_sent);
    assert_int_equal(fake_smtp_nmessages(e->fake[0]), 1);
    assert_int_equal(ndead(e), 0);
    assert_int_equal(stats(e).delivered, 1);
    assert_int_equal(stats(e).deferred, 0);
    assert_int_equal(stats(e).sessions_failed, 1);
}

static void test_sender_partial_refusal_delivers(void **state)
{
    static const char *const rcpts[] = {"gone@example.net", "here@example.net"};
    struct env *e = *state;
    struct sender_params p = params(e, false);

    start_fake(e, 0, NULL);
    save_settings(e, e->port[0], NULL, NULL);
    fake_smtp_script(e->fake[0], "RCPT", "550 5.1.1 no such user", 1);
    submit_full(e, OUTBOX_REPORT, NULL, rcpts, 2, "half");
    start_sender(e, &p);
    run_until(e, all_sent);
    assert_int_equal(ndead(e), 0);
    assert_int_equal(fake_smtp_nmessages(e->fake[0]), 1);
    assert_string_equal(fake_smtp_envelope(e->fake[0], 0), FROM " here@example.net");
    assert_int_equal(stats(e).delivered, 1);
}

static void test_sender_marks_8bit(void **state)
{
    struct env *e = *state;
    struct sender_params p = params(e, false);

    start_fake(e, 0, NULL);
    save_settings(e, e->port[0], NULL, NULL);
    submit(e, OUTBOX_REPORT, "caf\xc3\xa9");
    start_sender(e, &p);
    run_until(e, all_sent);
    assert_int_equal(fake_smtp_nmessages(e->fake[0]), 1);
    assert_true(has(fake_smtp_transcript(e->fake[0]), "BODY=8BITMIME"));
}

static void test_sender_stop_releases_leases(void **state)
{
    struct env *e = *state;
    struct fake_smtp_params fp = {.greeting_delay_ms = 60000}; /* never greets in time */
    struct sender_params p = params(e, false);
    struct outbox_params op = {.dir = e->outbox_dir};
    struct outbox_msg *taken[8];
    size_t n = 0;
    uint64_t t0;

    start_fake(e, 0, &fp);
    save_settings(e, e->port[0], NULL, NULL);
    for (int i = 0; i < 3; i++)
        submit(e, OUTBOX_REPORT, "pending at stop");
    start_sender(e, &p);
    run_until(e, session_up);
    /* Leased by the sender: another take sees nothing. */
    assert_int_equal(outbox_take(e->ob, e->clock + 1000, taken, 8, &n), 0);
    assert_int_equal(n, 0);

    t0 = uv_hrtime();
    stop_sender(e);
    /* Nothing was in the middle of a message: no wait for drain_ms. */
    assert_true(uv_hrtime() - t0 < 1500 * 1000000ull);
    assert_int_equal(npending(e), 3);
    assert_int_equal(first(e, false).attempts, 0);
    /* Released in this process, too. */
    assert_int_equal(outbox_take(e->ob, e->clock + 1000, taken, 8, &n), 0);
    assert_int_equal(n, 3);
    for (size_t i = 0; i < n; i++)
        outbox_msg_free(taken[i]);

    outbox_close(e->ob);
    e->ob = NULL;
    assert_int_equal(outbox_open(&op, &e->ob), 0);
    assert_int_equal(npending(e), 3);
    assert_int_equal(first(e, false).attempts, 0);
    assert_int_equal(fake_smtp_nmessages(e->fake[0]), 0);
}

static struct stall *stall_of_test;

static bool in_data(struct env *e)
{
    (void)e;
    return stall_of_test->in_data;
}

static void test_sender_stop_cancels_after_drain(void **state)
{
    struct env *e = *state;
    struct sender_params p = params(e, false);
    struct stall st;
    uint64_t t0, ms;

    stall_start(e, &st);
    stall_of_test = &st;
    save_settings(e, st.port, NULL, NULL);
    submit(e, OUTBOX_REPORT, "in flight at stop");
    submit(e, OUTBOX_REPORT, "never started");
    p.max_sessions = 1;
    p.drain_ms = 300;
    start_sender(e, &p);
    run_until(e, in_data);

    t0 = uv_hrtime();
    stop_sender(e);
    ms = (uv_hrtime() - t0) / 1000000;
    /* It waited for the message in flight, then cut it off. */
    assert_true(ms >= 250);
    assert_true(ms < 2000);
    /* Neither counts as an attempt: both are pending as they were. */
    assert_int_equal(npending(e), 2);
    assert_int_equal(ntried(e), 0);
    assert_int_equal(ndead(e), 0);
    stall_stop(&st);
}

static void test_sender_stop_without_mail(void **state)
{
    struct env *e = *state;
    struct sender_params p = params(e, false);

    start_sender(e, &p);
    uv_run(&e->loop, UV_RUN_ONCE);
    stop_sender(e);
    assert_int_equal(e->done_calls, 1);
}

static void test_sender_rejects_bad_params(void **state)
{
    struct env *e = *state;
    struct sender_params p = params(e, false);
    struct sender *s = NULL;

    p.instance = "bad instance";
    assert_int_equal(sender_start(&p, &s), ERROR_INVALID);
    p.instance = NULL;
    assert_int_equal(sender_start(&p, &s), ERROR_INVALID);
    p = params(e, false);
    p.outbox = NULL;
    assert_int_equal(sender_start(&p, &s), ERROR_INVALID);
    assert_null(s);
}

/* Log lines for each outcome, and never the password. */
static void test_sender_logs_outcomes_without_password(void **state)
{
    struct env *e = *state;
    /* No PIPELINING: each scripted reply meets the command it is meant for. */
    struct fake_smtp_params fp = {.auth = "PLAIN LOGIN", .user = "mailer", .password = PASSWORD};
    struct sender_params p = params(e, false);
    char path[4200];
    int fd, saved;
    char *log;

    snprintf(path, sizeof(path), "%s/stderr.log", e->dir);
    start_fake(e, 0, &fp);
    save_settings(e, e->port[0], NULL, PASSWORD);
    fake_smtp_script(e->fake[0], "RCPT", "550 5.1.1 unknown", 1);
    fake_smtp_script(e->fake[0], "MAIL", "451 4.7.1 later", 1);
    submit(e, OUTBOX_REPORT, "dead one");
    submit(e, OUTBOX_REPORT, "deferred one");
    submit(e, OUTBOX_REPORT, "delivered one");
    p.max_sessions = 1;

    fflush(stderr);
    saved = dup(STDERR_FILENO);
    fd = open(path, O_WRONLY | O_CREAT | O_TRUNC, 0600);
    assert_true(saved >= 0 && fd >= 0);
    dup2(fd, STDERR_FILENO);
    close(fd);
    log_init("test_sender", LOG_LEVEL_DEBUG, LOG_FORMAT_TEXT);

    start_sender(e, &p);
    run_until(e, one_of_each);
    stop_sender(e);

    fflush(stderr);
    dup2(saved, STDERR_FILENO);
    close(saved);
    log_init("test_sender", LOG_LEVEL_INFO, LOG_FORMAT_TEXT);

    assert_true(has(fake_smtp_transcript(e->fake[0]), "AUTH"));
    log = testutil_read_file(path, NULL);
    assert_true(has(log, "delivered id="));
    assert_true(has(log, " rcpts=1 relay=127.0.0.1:"));
    assert_true(has(log, "deferred id="));
    assert_true(has(log, "next_try_in="));
    assert_true(has(log, "reason=\"") && has(log, "451 4.7.1 later"));
    assert_true(has(log, "dead id="));
    assert_true(has(log, "550 5.1.1 unknown"));
    assert_false(has(log, PASSWORD));

    free(log);
}

/* The outbox cannot record outcomes (the disk is full: RLIMIT_FSIZE at
 * the file's size, and a 200 kB message whose removal needs new pages). */
struct disk_full {
    struct rlimit saved;
    void (*old)(int);
};

static uint64_t submit_big(struct env *e)
{
    static const char *const rcpt[] = {"big@example.net"};
    static char msg[200000];
    struct outbox_new m = {0};
    uint64_t id = 0;

    memset(msg, 'x', sizeof(msg) - 3);
    memcpy(msg, "Subject: big\r\n\r\n", 16);
    memcpy(msg + sizeof(msg) - 3, "\r\n", 3);
    m.priority = OUTBOX_REPORT;
    m.rcpts = rcpt;
    m.nrcpts = 1;
    m.message = msg;
    m.message_len = sizeof(msg) - 1;
    assert_int_equal(outbox_submit(e->ob, &m, 1, e->clock, &id), 0);
    return id;
}

static void disk_full_start(struct env *e, struct disk_full *d)
{
    char path[4200];
    struct rlimit full;
    struct stat st;

    snprintf(path, sizeof(path), "%s/data.mdb", e->outbox_dir);
    assert_int_equal(stat(path, &st), 0);
    d->old = signal(SIGXFSZ, SIG_IGN);
    assert_int_equal(getrlimit(RLIMIT_FSIZE, &d->saved), 0);
    full = d->saved;
    full.rlim_cur = (rlim_t)st.st_size;
    assert_int_equal(setrlimit(RLIMIT_FSIZE, &full), 0);
}

static void disk_full_end(struct disk_full *d)
{
    assert_int_equal(setrlimit(RLIMIT_FSIZE, &d->saved), 0);
    signal(SIGXFSZ, d->old);
}

static bool one_message(struct env *e)
{
    return fake_smtp_nmessages(e->fake[0]) >= 1;
}

static void run_for(struct env *e, uint64_t ms)
{
    uint64_t t0 = uv_hrtime();

    while (uv_hrtime() - t0 < ms * 1000000)
        uv_run(&e->loop, UV_RUN_ONCE);
}

/* Delivered, but the outcome cannot be committed: the message is not
 * taken and sent again meanwhile (it stays leased), and the outcome is
 * committed once the disk has room. */
static void test_sender_unrecorded_outcome_not_resent(void **state)
{
    struct env *e = *state;
    struct sender_params p = params(e, false);
    struct outbox_msg *taken[2];
    struct disk_full d;
    size_t n = 9;

    start_fake(e, 0, NULL);
    save_settings(e, e->port[0], NULL, NULL);
    submit_big(e);
    disk_full_start(e, &d);
    start_sender(e, &p);
    run_until(e, one_message);
    run_for(e, 2500);
    assert_int_equal(fake_smtp_nmessages(e->fake[0]), 1);
    assert_int_equal(npending(e), 1);
    assert_true(has(stats(e).last_error, "cannot record delivery outcomes"));
    assert_int_equal(outbox_take(e->ob, e->clock + 60000, taken, 2, &n), 0);
    assert_int_equal(n, 0);
    disk_full_end(&d);
    run_until(e, all_sent);
    assert_int_equal(fake_smtp_nmessages(e->fake[0]), 1);
    assert_int_equal(ndead(e), 0);
}

/* Stopped while the outcome still cannot be committed: the lease is given
 * back, so the message is tried again (as after a crash). */
static void test_sender_stop_gives_back_unrecorded(void **state)
{
    struct env *e = *state;
    struct sender_params p = params(e, false);
    struct outbox_msg *taken[2];
    struct disk_full d;
    size_t n = 0;

    start_fake(e, 0, NULL);
    save_settings(e, e->port[0], NULL, NULL);
    submit_big(e);
    disk_full_start(e, &d);
    start_sender(e, &p);
    run_until(e, one_message);
    run_for(e, 200);
    stop_sender(e);
    disk_full_end(&d);
    assert_int_equal(npending(e), 1);
    assert_int_equal(outbox_take(e->ob, e->clock + 60000, taken, 2, &n), 0);
    assert_int_equal(n, 1);
    assert_int_equal(taken[0]->attempts, 0);
    outbox_msg_free(taken[0]);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_sender_delivers_with_from_header, setup, teardown),
        cmocka_unit_test_setup_teardown(test_sender_delivers_over_implicit_tls, setup, teardown),
        cmocka_unit_test_setup_teardown(test_sender_one_session_for_one_message, setup, teardown),
        cmocka_unit_test_setup_teardown(test_sender_tokencode_before_earlier_report, setup,
                                        teardown),
        cmocka_unit_test_setup_teardown(test_sender_defers_4xx_then_delivers, setup, teardown),
        cmocka_unit_test_setup_teardown(test_sender_backoff_grows_per_attempt, setup, teardown),
        cmocka_unit_test_setup_teardown(test_sender_dead_on_5xx, setup, teardown),
        cmocka_unit_test_setup_teardown(test_sender_dead_on_5xx_after_data, setup, teardown),
        cmocka_unit_test_setup_teardown(test_sender_defers_when_connection_refused, setup,
                                        teardown),
        cmocka_unit_test_setup_teardown(test_sender_defers_when_server_drops, setup, teardown),
        cmocka_unit_test_setup_teardown(test_sender_defers_without_settings, setup, teardown),
        cmocka_unit_test_setup_teardown(test_sender_expired_trust_cert_left_to_handshake, setup,
                                        teardown),
        cmocka_unit_test_setup_teardown(test_sender_partial_4xx_keeps_the_rest, setup, teardown),
        cmocka_unit_test_setup_teardown(test_sender_session_refused_defers, setup, teardown),
        cmocka_unit_test_setup_teardown(test_sender_new_mail_while_session_quits, setup, teardown),
        cmocka_unit_test_setup_teardown(test_sender_expired_before_session, setup, teardown),
        cmocka_unit_test_setup_teardown(test_sender_unrecorded_outcome_not_resent, setup, teardown),
        cmocka_unit_test_setup_teardown(test_sender_stop_gives_back_unrecorded, setup, teardown),
        cmocka_unit_test_setup_teardown(test_sender_reuses_one_connection, setup, teardown),
        cmocka_unit_test_setup_teardown(test_sender_kicks_idle_session, setup, teardown),
        cmocka_unit_test_setup_teardown(test_sender_bounds_sessions, setup, teardown),
        cmocka_unit_test_setup_teardown(test_sender_follows_new_settings, setup, teardown),
        cmocka_unit_test_setup_teardown(test_sender_fails_over_to_relay, setup, teardown),
        cmocka_unit_test_setup_teardown(test_sender_partial_refusal_delivers, setup, teardown),
        cmocka_unit_test_setup_teardown(test_sender_marks_8bit, setup, teardown),
        cmocka_unit_test_setup_teardown(test_sender_stop_releases_leases, setup, teardown),
        cmocka_unit_test_setup_teardown(test_sender_stop_cancels_after_drain, setup, teardown),
        cmocka_unit_test_setup_teardown(test_sender_stop_without_mail, setup, teardown),
        cmocka_unit_test_setup_teardown(test_sender_rejects_bad_params, setup, teardown),
        cmocka_unit_test_setup_teardown(test_sender_logs_outcomes_without_password, setup,
                                        teardown),
    };

    return cmocka_run_group_tests(tests, NULL, NULL);
}
