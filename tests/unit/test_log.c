#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include "log.h"
#include "testutil.h"

/* stderr goes to a file for the duration of a test. */
struct capture {
    char *dir;
    char path[4096];
    int saved;
};

static int setup(void **state)
{
    struct capture *c = calloc(1, sizeof(*c));
    int fd;

    assert_non_null(c);
    c->dir = testutil_tmpdir();
    snprintf(c->path, sizeof(c->path), "%s/stderr", c->dir);
    fd = open(c->path, O_WRONLY | O_CREAT | O_APPEND | O_TRUNC, 0600);
    assert_true(fd >= 0);
    c->saved = dup(STDERR_FILENO);
    assert_true(c->saved >= 0);
    assert_true(dup2(fd, STDERR_FILENO) >= 0);
    close(fd);
    log_init("test-prog", LOG_LEVEL_DEBUG, LOG_FORMAT_TEXT);
    *state = c;
    return 0;
}

static int teardown(void **state)
{
    struct capture *c = *state;

    dup2(c->saved, STDERR_FILENO);
    close(c->saved);
    testutil_rmtree(c->dir);
    free(c->dir);
    free(c);
    log_init("smtpsync", LOG_LEVEL_INFO, LOG_FORMAT_TEXT);
    return 0;
}

/* Everything logged so far; the caller frees. */
static char *captured(struct capture *c)
{
    return testutil_read_file(c->path, NULL);
}

/* Checks "YYYY-MM-DDTHH:MM:SS.mmmZ" at p. */
static void assert_timestamp(const char *p)
{
    static const char shape[] = "dddd-dd-ddTdd:dd:dd.dddZ";

    for (size_t i = 0; i < sizeof(shape) - 1; i++) {
        if (shape[i] == 'd')
            assert_true(p[i] >= '0' && p[i] <= '9');
        else
            assert_int_equal(p[i], shape[i]);
    }
}

static void test_log_text_line_format(void **state)
{
    struct capture *c = *state;
    char *out;

    log_info("delivered id=%d relay=%s", 42, "mx.example.com:465");
    out = captured(c);
    assert_timestamp(out);
    assert_string_equal(out + 24, " info delivered id=42 relay=mx.example.com:465\n");
    free(out);
}

static void test_log_levels_and_filter(void **state)
{
    struct capture *c = *state;
    char *out;

    log_init("test-prog", LOG_LEVEL_WARN, LOG_FORMAT_TEXT);
    log_debug("d");
    log_info("i");
    log_warnx("w");
    log_error("e");
    out = captured(c);
    assert_non_null(strstr(out, " warn w\n"));
    assert_non_null(strstr(out, " error e\n"));
    assert_null(strstr(out, " info i"));
    assert_null(strstr(out, " debug d"));
    free(out);

    assert_int_equal(log_level_parse("debug"), LOG_LEVEL_DEBUG);
    assert_int_equal(log_level_parse("info"), LOG_LEVEL_INFO);
    assert_int_equal(log_level_parse("warn"), LOG_LEVEL_WARN);
    assert_int_equal(log_level_parse("error"), LOG_LEVEL_ERROR);
    assert_int_equal(log_level_parse("INFO"), -1);
    assert_int_equal(log_level_parse("warning"), -1);
    assert_int_equal(log_level_parse(""), -1);
    assert_int_equal(log_level_parse(NULL), -1);
}

static void test_log_warn_appends_strerror(void **state)
{
    struct capture *c = *state;
    char *out, expect[256];

    errno = ENOENT;
    log_warn("cannot open %s", "/x");
    assert_int_equal(errno, ENOENT);
    errno = ENOENT;
    log_warnx("no errno here");
    out = captured(c);
    snprintf(expect, sizeof(expect), " warn cannot open /x: %s\n", strerror(ENOENT));
    assert_non_null(strstr(out, expect));
    assert_non_null(strstr(out, " warn no errno here\n"));
    free(out);
}

static void test_log_text_one_line_per_event(void **state)
{
    struct capture *c = *state;
    char *out;

    /* A caller that forgot to quote cannot forge a second line. */
    log_info("reply=%s", "250 ok\n2026-01-01T00:00:00.000Z error forged\r");
    out = captured(c);
    assert_non_null(
        strstr(out, "info reply=250 ok\\x0a2026-01-01T00:00:00.000Z error forged\\x0d\n"));
    assert_int_equal(strchr(out, '\n'), out + strlen(out) - 1);
    free(out);
}

static void test_log_json_line(void **state)
{
    struct capture *c = *state;
    char *out;

    log_init("smtpsync-primary", LOG_LEVEL_INFO, LOG_FORMAT_JSON);
    log_warnx("say \"hi\" \\ tab\there\nnext \x01 \xc3\xa9 \xff end");
    out = captured(c);
    assert_true(strncmp(out, "{\"time\":\"", 9) == 0);
    assert_timestamp(out + 9);
    assert_string_equal(
        out + 9 + 24,
        "\",\"level\":\"warn\",\"prog\":\"smtpsync-primary\",\"msg\":\"say \\\"hi\\\" "
        "\\\\ tab\\there\\nnext \\u0001 \xc3\xa9 \\ufffd end\"}\n");
    free(out);
}

static void test_log_long_message_is_cut(void **state)
{
    struct capture *c = *state;
    char *big = malloc(20000), *out, *nl;

    assert_non_null(big);
    memset(big, 'x', 19999);
    big[19999] = '\0';
    log_info("%s", big);
    log_init("p", LOG_LEVEL_INFO, LOG_FORMAT_JSON);
    /* Escapes near the cut must not be split. */
    memset(big, '"', 19999);
    log_info("%s", big);
    out = captured(c);
    nl = strchr(out, '\n');
    assert_non_null(nl);
    assert_true(nl - out < 4096);
    assert_true(strncmp(nl - 3, "...", 3) == 0);
    assert_true(strlen(nl + 1) < 4096);
    assert_string_equal(out + strlen(out) - 3, "\"}\n");
    assert_true(strncmp(out + strlen(out) - 5, "\\\"", 2) == 0);
    free(out);
    free(big);
}

static void test_log_concurrent_writers_whole_lines(void **state)
{
    struct capture *c = *state;
    char *out, *line, *save = NULL;
    size_t lines = 0;

    for (int w = 0; w < 4; w++) {
        pid_t pid = fork();
        assert_true(pid >= 0);
        if (pid == 0) {
            char pad[1500];
            memset(pad, 'a' + w, sizeof(pad) - 1);
            pad[sizeof(pad) - 1] = '\0';
            for (int i = 0; i < 200; i++)
                log_info("writer=%d i=%d pad=%s end", w, i, pad);
            _exit(0);
        }
    }
    for (int w = 0; w < 4; w++) {
        int status;
        assert_true(wait(&status) > 0);
        assert_true(WIFEXITED(status) && WEXITSTATUS(status) == 0);
    }
    out = captured(c);
    for (line = strtok_r(out, "\n", &save); line != NULL; line = strtok_r(NULL, "\n", &save)) {
        char *pad = strstr(line, "pad=");
        assert_timestamp(line);
        assert_non_null(pad);
        /* One writer's line, whole: its own letter throughout, then "end". */
        assert_int_equal(strspn(pad + 4, (char[]){pad[4], 0}), 1499);
        assert_string_equal(pad + 4 + 1499, " end");
        lines++;
    }
    assert_int_equal(lines, 800);
    free(out);
}

static void test_log_quote_plain_and_escapes(void **state)
{
    char buf[128];

    (void)state;
    assert_string_equal(log_quote(buf, sizeof(buf), "550 5.1.1 no such user"),
                        "\"550 5.1.1 no such user\"");
    assert_string_equal(log_quote(buf, sizeof(buf), ""), "\"\"");
    assert_string_equal(log_quote(buf, sizeof(buf), NULL), "\"\"");
    assert_string_equal(log_quote(buf, sizeof(buf), "a\"b\\c"), "\"a\\\"b\\\\c\"");
    assert_string_equal(log_quote(buf, sizeof(buf), "l1\r\nl2\tx\x1b[2J\x7f"),
                        "\"l1\\r\\nl2\\tx\\x1b[2J\\x7f\"");
    /* Non-ASCII is escaped too: a log line stays plain ASCII. */
    assert_string_equal(log_quote(buf, sizeof(buf), "caf\xc3\xa9 \xe2\x80\xae"),
                        "\"caf\\xc3\\xa9 \\xe2\\x80\\xae\"");
}

static void test_log_quote_cut(void **state)
{
    char buf[16];

    (void)state;
    /* Exactly fits: 14 characters, quotes and NUL. */
    assert_string_equal(log_quote(buf, sizeof(buf), "0123456789abc"), "\"0123456789abc\"");
    assert_string_equal(log_quote(buf, sizeof(buf), "0123456789abcd"), "\"0123456789...\"");
    assert_int_equal(strlen(buf), 15);
    /* An escape is never split by the cut. */
    assert_string_equal(log_quote(buf, sizeof(buf), "0123456789\n\n\n"), "\"0123456789...\"");
    assert_string_equal(log_quote(buf, sizeof(buf), "012345678\x01xyz"), "\"012345678...\"");
    assert_string_equal(log_quote(buf, 6, "abcdef"), "\"...\"");
    assert_string_equal(log_quote(buf, 3, "abcdef"), "");
    assert_string_equal(log_quote(buf, 0, "abcdef"), "");
}

/* JOURNAL_STREAM naming stderr: journald's priority prefix, no time. */
static void test_log_journal_priority_prefix(void **state)
{
    struct capture *c = *state;
    struct stat st;
    char js[64], *out;

    assert_int_equal(fstat(STDERR_FILENO, &st), 0);
    snprintf(js, sizeof(js), "%llu:%llu", (unsigned long long)st.st_dev,
             (unsigned long long)st.st_ino);
    assert_int_equal(setenv("JOURNAL_STREAM", js, 1), 0);
    log_init("test-prog", LOG_LEVEL_DEBUG, LOG_FORMAT_TEXT);
    log_debug("d x=1");
    log_info("i x=2");
    log_warnx("w x=3");
    log_error("e x=4");
    log_init("test-prog", LOG_LEVEL_INFO, LOG_FORMAT_JSON);
    log_warnx("j");
    /* Another stream (the daemon's stderr redirected): plain lines. */
    snprintf(js, sizeof(js), "%llu:%llu", (unsigned long long)st.st_dev,
             (unsigned long long)st.st_ino + 1);
    assert_int_equal(setenv("JOURNAL_STREAM", js, 1), 0);
    log_init("test-prog", LOG_LEVEL_INFO, LOG_FORMAT_TEXT);
    log_info("plain");
    assert_int_equal(setenv("JOURNAL_STREAM", "junk", 1), 0);
    log_init("test-prog", LOG_LEVEL_INFO, LOG_FORMAT_TEXT);
    log_info("junk");
    assert_int_equal(unsetenv("JOURNAL_STREAM"), 0);

    out = captured(c);
    assert_non_null(strstr(out, "<7>debug d x=1\n<6>info i x=2\n<4>warn w x=3\n<3>error e x=4\n"
                                "<4>{\"time\":\""));
    assert_non_null(strstr(out, "\"level\":\"warn\",\"prog\":\"test-prog\",\"msg\":\"j\"}\n"));
    /* The last two lines start with the time again. */
    assert_non_null(strstr(out, " info plain\n"));
    assert_null(strstr(out, ">info plain"));
    assert_non_null(strstr(out, " info junk\n"));
    free(out);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_log_text_line_format, setup, teardown),
        cmocka_unit_test_setup_teardown(test_log_levels_and_filter, setup, teardown),
        cmocka_unit_test_setup_teardown(test_log_warn_appends_strerror, setup, teardown),
        cmocka_unit_test_setup_teardown(test_log_text_one_line_per_event, setup, teardown),
        cmocka_unit_test_setup_teardown(test_log_json_line, setup, teardown),
        cmocka_unit_test_setup_teardown(test_log_long_message_is_cut, setup, teardown),
        cmocka_unit_test_setup_teardown(test_log_concurrent_writers_whole_lines, setup, teardown),
        cmocka_unit_test_setup_teardown(test_log_journal_priority_prefix, setup, teardown),
        cmocka_unit_test(test_log_quote_plain_and_escapes),
        cmocka_unit_test(test_log_quote_cut),
    };

    return cmocka_run_group_tests(tests, NULL, NULL);
}
