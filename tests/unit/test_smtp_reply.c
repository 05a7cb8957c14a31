#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "error.h"
#include "smtp_reply.h"
#include "testutil.h"

/* Feeds a whole string; returns the last result and how much was used. */
static int feed_str(struct smtp_reply *r, const char *s, size_t *used)
{
    return smtp_reply_feed(r, s, strlen(s), used);
}

/* Feeds `s` until a reply is complete or refused; asserts that every
 * octet was used. */
static int feed_all(struct smtp_reply *r, const char *s, size_t len)
{
    size_t off = 0;

    while (off < len) {
        size_t used;
        int rc = smtp_reply_feed(r, s + off, len - off, &used);

        off += used;
        if (rc < 0 || rc == SMTP_REPLY_DONE) {
            if (rc == SMTP_REPLY_DONE)
                assert_int_equal(off, len);
            return rc;
        }
    }
    return SMTP_REPLY_AGAIN;
}

static void expect_refused(const char *input, size_t len, const char *why_part)
{
    struct smtp_reply r;

    smtp_reply_init(&r);
    assert_int_equal(feed_all(&r, input, len), ERROR_DECODE);
    if (strstr(r.why, why_part) == NULL)
        fail_msg("why \"%s\" lacks \"%s\"", r.why, why_part);
    /* Refused for good until init. */
    {
        size_t used;
        assert_int_equal(feed_str(&r, "250 ok\r\n", &used), ERROR_DECODE);
    }
}

#define REFUSED(lit, why) expect_refused(lit, sizeof(lit) - 1, why)

static void test_smtp_reply_single_line(void **state)
{
    struct smtp_reply r;
    size_t used;

    (void)state;
    smtp_reply_init(&r);
    assert_false(smtp_reply_pending(&r));
    assert_int_equal(feed_str(&r, "250 2.0.0 Ok: queued as 1234\r\n", &used), SMTP_REPLY_DONE);
    assert_int_equal(used, 30);
    assert_int_equal(r.code, 250);
    assert_int_equal(r.nlines, 1);
    assert_string_equal(r.line, "250 2.0.0 Ok: queued as 1234");
    assert_string_equal(smtp_reply_line_text(&r), "2.0.0 Ok: queued as 1234");
    assert_string_equal(r.text, "250 2.0.0 Ok: queued as 1234");
    assert_false(smtp_reply_pending(&r));
}

static void test_smtp_reply_bare_code(void **state)
{
    struct smtp_reply r;
    size_t used;

    (void)state;
    smtp_reply_init(&r);
    assert_int_equal(feed_str(&r, "354\r\n", &used), SMTP_REPLY_DONE);
    assert_int_equal(r.code, 354);
    assert_string_equal(smtp_reply_line_text(&r), "");
}

static void test_smtp_reply_multi_line(void **state)
{
    static const char ehlo[] = "250-mail.test Hello\r\n250-PIPELINING\r\n250-SIZE 1000\r\n"
                               "250 AUTH PLAIN LOGIN\r\n";
    const char *expect[] = {"mail.test Hello", "PIPELINING", "SIZE 1000", "AUTH PLAIN LOGIN"};
    struct smtp_reply r;
    size_t off = 0, n = 0;
    char sum[256];
    int rc;

    (void)state;
    smtp_reply_init(&r);
    do {
        size_t used;

        rc = smtp_reply_feed(&r, ehlo + off, sizeof(ehlo) - 1 - off, &used);
        off += used;
        assert_true(rc == SMTP_REPLY_LINE || rc == SMTP_REPLY_DONE);
        assert_string_equal(smtp_reply_line_text(&r), expect[n]);
        n++;
        if (rc == SMTP_REPLY_LINE)
            assert_true(smtp_reply_pending(&r));
    } while (rc == SMTP_REPLY_LINE);
    assert_int_equal(n, 4);
    assert_int_equal(off, sizeof(ehlo) - 1);
    assert_int_equal(r.code, 250);
    assert_int_equal(r.nlines, 4);
    assert_string_equal(r.text, "250-mail.test Hello\n250-PIPELINING\n250-SIZE 1000\n"
                                "250 AUTH PLAIN LOGIN");
    smtp_reply_summary(&r, sum, sizeof(sum));
    assert_string_equal(sum, "250 mail.test Hello PIPELINING SIZE 1000 AUTH PLAIN LOGIN");
}

/* One octet at a time gives the same reply as all at once. */
static void test_smtp_reply_octet_by_octet(void **state)
{
    static const char in[] = "421-4.3.2 Service shutting down\r\n421 4.3.2 try later\r\n";
    struct smtp_reply r;
    int rc = SMTP_REPLY_AGAIN;
    unsigned lines = 0;

    (void)state;
    smtp_reply_init(&r);
    for (size_t i = 0; i < sizeof(in) - 1; i++) {
        size_t used;

        rc = smtp_reply_feed(&r, in + i, 1, &used);
        assert_int_equal(used, 1);
        if (rc == SMTP_REPLY_LINE)
            lines++;
        else if (i + 1 < sizeof(in) - 1)
            assert_int_equal(rc, SMTP_REPLY_AGAIN);
    }
    assert_int_equal(rc, SMTP_REPLY_DONE);
    assert_int_equal(lines, 1);
    assert_int_equal(r.code, 421);
    assert_string_equal(r.text, "421-4.3.2 Service shutting down\n421 4.3.2 try later");
}

/* Pipelined replies in one read: each DONE says how much it used. */
static void test_smtp_reply_pipelined(void **state)
{
    static const char in[] = "250 2.1.0 Ok\r\n550 5.1.1 no\r\n354 go ahead\r\n250 par";
    const int codes[] = {250, 550, 354};
    struct smtp_reply r;
    size_t off = 0, used;

    (void)state;
    smtp_reply_init(&r);
    for (size_t i = 0; i < 3; i++) {
        assert_int_equal(smtp_reply_feed(&r, in + off, sizeof(in) - 1 - off, &used),
                         SMTP_REPLY_DONE);
        assert_int_equal(r.code, codes[i]);
        assert_int_equal(r.nlines, 1);
        off += used;
    }
    assert_false(smtp_reply_pending(&r));
    assert_int_equal(smtp_reply_feed(&r, in + off, sizeof(in) - 1 - off, &used), SMTP_REPLY_AGAIN);
    assert_int_equal(used, sizeof(in) - 1 - off);
    assert_true(smtp_reply_pending(&r));
    assert_int_equal(feed_str(&r, "t\r\n", &used), SMTP_REPLY_DONE);
    assert_string_equal(r.line, "250 part");
}

/* A CR at the end of one read and its LF at the start of the next. */
static void test_smtp_reply_crlf_split(void **state)
{
    struct smtp_reply r;
    size_t used;

    (void)state;
    smtp_reply_init(&r);
    assert_int_equal(feed_str(&r, "220 ready\r", &used), SMTP_REPLY_AGAIN);
    assert_true(smtp_reply_pending(&r));
    assert_int_equal(feed_str(&r, "\n", &used), SMTP_REPLY_DONE);
    assert_int_equal(used, 1);
    assert_string_equal(r.line, "220 ready");
}

static void test_smtp_reply_line_limit(void **state)
{
    char line[SMTP_REPLY_LINE_MAX + 8];
    struct smtp_reply r;
    size_t used;

    (void)state;
    /* 512 octets with CRLF: accepted. */
    memset(line, 'a', sizeof(line));
    memcpy(line, "250 ", 4);
    memcpy(line + SMTP_REPLY_LINE_MAX - 2, "\r\n", 2);
    smtp_reply_init(&r);
    assert_int_equal(smtp_reply_feed(&r, line, SMTP_REPLY_LINE_MAX, &used), SMTP_REPLY_DONE);
    assert_int_equal(r.line_len, SMTP_REPLY_LINE_MAX - 2);
    /* 513: refused, before the CRLF arrives. */
    memset(line, 'a', sizeof(line));
    memcpy(line, "250 ", 4);
    smtp_reply_init(&r);
    assert_int_equal(smtp_reply_feed(&r, line, SMTP_REPLY_LINE_MAX - 1, &used), ERROR_DECODE);
    assert_non_null(strstr(r.why, "longer than 512"));
}

/* A line that never ends is refused after 510 octets, however it is fed. */
static void test_smtp_reply_endless_line_bounded(void **state)
{
    struct smtp_reply r;
    char chunk[100];
    size_t total = 0, used;
    int rc;

    (void)state;
    memset(chunk, 'x', sizeof(chunk));
    smtp_reply_init(&r);
    assert_int_equal(feed_str(&r, "250 ", &used), SMTP_REPLY_AGAIN);
    total = 4;
    do {
        rc = smtp_reply_feed(&r, chunk, sizeof(chunk), &used);
        total += used;
    } while (rc == SMTP_REPLY_AGAIN && total < 100000);
    assert_int_equal(rc, ERROR_DECODE);
    assert_true(total <= SMTP_REPLY_LINE_MAX);
}

static void test_smtp_reply_lines_limit(void **state)
{
    struct smtp_reply r;
    size_t used;
    int rc = 0;

    (void)state;
    smtp_reply_init(&r);
    for (int i = 0; i < SMTP_REPLY_LINES_MAX - 1; i++)
        assert_int_equal(feed_str(&r, "250-more\r\n", &used), SMTP_REPLY_LINE);
    /* Line 100 may end the reply... */
    assert_int_equal(feed_str(&r, "250 last\r\n", &used), SMTP_REPLY_DONE);
    assert_int_equal(r.nlines, SMTP_REPLY_LINES_MAX);
    assert_int_equal(r.text_len, strlen(r.text));
    /* ...but there is no line 101. */
    smtp_reply_init(&r);
    for (int i = 0; i < SMTP_REPLY_LINES_MAX && rc != ERROR_DECODE; i++)
        rc = feed_str(&r, "250-more\r\n", &used);
    assert_int_equal(rc, SMTP_REPLY_LINE);
    assert_int_equal(feed_str(&r, "250-more\r\n", &used), ERROR_DECODE);
    assert_non_null(strstr(r.why, "more than 100 lines"));
}

static void test_smtp_reply_malformed(void **state)
{
    (void)state;
    REFUSED("250 ok\n", "bare LF");
    REFUSED("\n", "bare LF");
    REFUSED("250 ok\rX", "bare CR");
    REFUSED("250 o\0k\r\n", "NUL");
    REFUSED("\0", "NUL");
    REFUSED("25\r\n", "too short");
    REFUSED("\r\n", "too short");
    REFUSED("2500 ok\r\n", "' ' or '-'");
    REFUSED("250_ok\r\n", "' ' or '-'");
    REFUSED("250\tok\r\n", "' ' or '-'");
    REFUSED("150 ok\r\n", "valid code");
    REFUSED("650 ok\r\n", "valid code");
    REFUSED("099 ok\r\n", "valid code");
    REFUSED("260 ok\r\n", "valid code");
    REFUSED("25x ok\r\n", "valid code");
    REFUSED(" 250 ok\r\n", "valid code");
    REFUSED("+OK POP3 ready\r\n", "valid code");
    REFUSED("HTTP/1.1 400 Bad Request\r\n", "\"HTTP/1.1 400 Bad\"");
    REFUSED("HTTP\r\n", "\"HTTP\"");
    REFUSED("\x16\x03\x01\x02\x00\x01", "NUL");
    REFUSED("\x16\x03\x01\x02\x01\x01\x01\x01\x01\x01\x01\x01\x01\x01\x01\x01\x01", "\\x16\\x03");
    REFUSED("250-first\r\n251 second\r\n", "changed from 250 to 251");
    REFUSED("250-first\r\n550 second\r\n", "changed");
    REFUSED("250-first\r\ngarbage\r\n", "valid code");
    REFUSED("250-first\r\n\r\n", "too short");
}

/* A refusal quotes the offending start of the line, escaped. */
static void test_smtp_reply_reason_escaped(void **state)
{
    struct smtp_reply r;

    (void)state;
    smtp_reply_init(&r);
    assert_int_equal(feed_all(&r, "\x1b[31mX\r\n", 8), ERROR_DECODE);
    assert_null(strchr(r.why, '\x1b'));
    assert_non_null(strstr(r.why, "\\x1b[31mX"));
}

/* Control characters and 8-bit octets in the text are accepted, and
 * escaped in `text` and in the summary. */
static void test_smtp_reply_text_escaped(void **state)
{
    static const char in[] = "550 bad \x1b[2J\\ \xc3\xa9\x7f\r\n";
    struct smtp_reply r;
    char sum[128];

    (void)state;
    smtp_reply_init(&r);
    assert_int_equal(feed_all(&r, in, sizeof(in) - 1), SMTP_REPLY_DONE);
    assert_string_equal(r.text, "550 bad \\x1b[2J\\\\ \\xc3\\xa9\\x7f");
    smtp_reply_summary(&r, sum, sizeof(sum));
    assert_string_equal(sum, "550 bad \\x1b[2J\\\\ \\xc3\\xa9\\x7f");
    /* The raw line keeps the octets, for parsing. */
    assert_non_null(strchr(r.line, '\x1b'));
}

static void test_smtp_reply_summary_cut(void **state)
{
    struct smtp_reply r;
    char sum[16];

    (void)state;
    smtp_reply_init(&r);
    assert_int_equal(feed_all(&r, "550 \x01\x02\x03\x04\x05\r\n", 11), SMTP_REPLY_DONE);
    smtp_reply_summary(&r, sum, sizeof(sum));
    /* "550 \x01\x02" fits in 12 octets; the cut never halves an escape. */
    assert_string_equal(sum, "550 \\x01\\x02...");
    smtp_reply_summary(&r, sum, 1);
    assert_string_equal(sum, "");
    smtp_reply_summary(&r, sum, 4);
    assert_string_equal(sum, "...");
}

static void test_smtp_reply_summary_empty_lines(void **state)
{
    struct smtp_reply r;
    char sum[64];

    (void)state;
    smtp_reply_init(&r);
    assert_int_equal(feed_all(&r, "421-\r\n421-x\r\n421\r\n", 18), SMTP_REPLY_DONE);
    smtp_reply_summary(&r, sum, sizeof(sum));
    assert_string_equal(sum, "421 x");
}

/* Long replies: `text` is cut with "..." and stays terminated. */
static void test_smtp_reply_text_cut(void **state)
{
    char line[SMTP_REPLY_LINE_MAX];
    struct smtp_reply r;
    size_t used;

    (void)state;
    memset(line, '\x01', sizeof(line));
    memcpy(line, "250-", 4);
    memcpy(line + 300, "\r\n", 2);
    smtp_reply_init(&r);
    assert_int_equal(smtp_reply_feed(&r, line, 302, &used), SMTP_REPLY_LINE);
    assert_int_equal(r.text_len, strlen(r.text));
    assert_true(r.text_len < SMTP_REPLY_TEXT_MAX);
    assert_string_equal(r.text + r.text_len - 3, "...");
    line[3] = ' ';
    assert_int_equal(smtp_reply_feed(&r, line, 302, &used), SMTP_REPLY_DONE);
    assert_int_equal(r.nlines, 2);
    assert_string_equal(r.text + r.text_len - 3, "...");
    assert_int_equal(r.text_len, strlen(r.text));
}

static void test_smtp_reply_escape(void **state)
{
    char buf[16];

    (void)state;
    assert_int_equal(smtp_reply_escape(buf, sizeof(buf), "a\r\nb", 4), 10);
    assert_string_equal(buf, "a\\x0d\\x0ab");
    assert_int_equal(smtp_reply_escape(buf, 8, "abcdefghij", 10), 7);
    assert_string_equal(buf, "abcd...");
    assert_int_equal(smtp_reply_escape(buf, 9, "a\x01\x02\x03", 4), 8);
    assert_string_equal(buf, "a\\x01...");
    assert_int_equal(smtp_reply_escape(buf, 0, "a", 1), 0);
    assert_int_equal(smtp_reply_escape(buf, 1, "a", 1), 0);
    assert_string_equal(buf, "");
}

/* A reply that completes resets the next one: fields are per reply. */
static void test_smtp_reply_next_reply_resets(void **state)
{
    struct smtp_reply r;
    size_t used;

    (void)state;
    smtp_reply_init(&r);
    assert_int_equal(feed_str(&r, "250-a\r\n250 b\r\n", &used), SMTP_REPLY_LINE);
    assert_int_equal(feed_str(&r, "250 b\r\n", &used), SMTP_REPLY_DONE);
    assert_int_equal(r.nlines, 2);
    assert_int_equal(feed_str(&r, "554 no\r\n", &used), SMTP_REPLY_DONE);
    assert_int_equal(r.code, 554);
    assert_int_equal(r.nlines, 1);
    assert_string_equal(r.text, "554 no");
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_smtp_reply_single_line),
        cmocka_unit_test(test_smtp_reply_bare_code),
        cmocka_unit_test(test_smtp_reply_multi_line),
        cmocka_unit_test(test_smtp_reply_octet_by_octet),
        cmocka_unit_test(test_smtp_reply_pipelined),
        cmocka_unit_test(test_smtp_reply_crlf_split),
        cmocka_unit_test(test_smtp_reply_line_limit),
        cmocka_unit_test(test_smtp_reply_endless_line_bounded),
        cmocka_unit_test(test_smtp_reply_lines_limit),
        cmocka_unit_test(test_smtp_reply_malformed),
        cmocka_unit_test(test_smtp_reply_reason_escaped),
        cmocka_unit_test(test_smtp_reply_text_escaped),
        cmocka_unit_test(test_smtp_reply_summary_cut),
        cmocka_unit_test(test_smtp_reply_summary_empty_lines),
        cmocka_unit_test(test_smtp_reply_text_cut),
        cmocka_unit_test(test_smtp_reply_escape),
        cmocka_unit_test(test_smtp_reply_next_reply_resets),
    };

    return cmocka_run_group_tests(tests, NULL, NULL);
}
