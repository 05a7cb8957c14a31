#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "error.h"
#include "smtp_message.h"
#include "testutil.h"

/* Dot-stuffs `in` fed in pieces of `step` octets (0: all at once), with the
 * terminator; returns a malloc'd NUL-terminated result. */
static char *stuff(const char *in, size_t len, size_t step)
{
    struct smtp_message_dotstuff st = {0};
    char *out = malloc(2 * len + 2 * (len + 1) + 8);
    size_t o = 0, i = 0;

    assert_non_null(out);
    if (step == 0)
        step = len > 0 ? len : 1;
    while (i < len) {
        size_t n = len - i < step ? len - i : step, w;

        w = smtp_message_dotstuff(&st, in + i, n, out + o);
        assert_true(w <= 2 * n + 2);
        o += w;
        i += n;
    }
    o += smtp_message_dotstuff_end(&st, out + o);
    out[o] = '\0';
    return out;
}

static void check_stuff(const char *in, const char *want)
{
    size_t len = strlen(in);

    /* Every way of cutting the input gives the same output. */
    for (size_t step = 0; step <= len + 1; step++) {
        char *got = stuff(in, len, step);

        assert_string_equal(got, want);
        free(got);
    }
}

static void test_smtp_message_dotstuff_leading_dot(void **state)
{
    (void)state;
    check_stuff(".hidden\r\nplain\r\n.\r\n..two\r\na.b\r\n",
                "..hidden\r\nplain\r\n..\r\n...two\r\na.b\r\n.\r\n");
}

static void test_smtp_message_dotstuff_first_octet(void **state)
{
    (void)state;
    check_stuff(".", "..\r\n.\r\n");
    check_stuff(".\r\n", "..\r\n.\r\n");
}

static void test_smtp_message_dotstuff_terminator(void **state)
{
    (void)state;
    check_stuff("", ".\r\n");
    check_stuff("x", "x\r\n.\r\n");
    check_stuff("x\r\n", "x\r\n.\r\n");
    check_stuff("x\r\n\r\n", "x\r\n\r\n.\r\n");
}

static void test_smtp_message_dotstuff_split_crlf(void **state)
{
    struct smtp_message_dotstuff st = {0};
    char out[64];
    size_t o = 0;

    (void)state;
    o += smtp_message_dotstuff(&st, "a\r", 2, out + o);
    o += smtp_message_dotstuff(&st, "\n", 1, out + o);
    o += smtp_message_dotstuff(&st, ".", 1, out + o);
    o += smtp_message_dotstuff(&st, "b\r", 2, out + o);
    o += smtp_message_dotstuff_end(&st, out + o);
    assert_int_equal(o, strlen("a\r\n..b\r\n.\r\n"));
    assert_memory_equal(out, "a\r\n..b\r\n.\r\n", o);
}

/* A bare LF or CR never reaches the server: they are what SMTP smuggling
 * end-of-data sequences ("\n.\n", "\r.\r") are made of. */
static void test_smtp_message_dotstuff_bare_line_ends(void **state)
{
    (void)state;
    check_stuff("a\n.\nb", "a\r\n..\r\nb\r\n.\r\n");
    check_stuff("a\r.\rb", "a\r\n..\r\nb\r\n.\r\n");
    check_stuff("a\r\n.\n", "a\r\n..\r\n.\r\n");
    check_stuff("a\r\r\n", "a\r\n\r\n.\r\n");
    check_stuff("a\r", "a\r\n.\r\n");
}

static void test_smtp_message_dotstuff_worst_case_size(void **state)
{
    char in[64], *got;

    (void)state;
    /* Only dots and line ends: every octet doubles, never more. */
    for (size_t i = 0; i < sizeof(in); i++)
        in[i] = (i % 3 == 2) ? '\r' : (i % 3 == 0 ? '.' : '\n');
    for (size_t step = 1; step <= sizeof(in); step++) {
        got = stuff(in, sizeof(in), step);
        free(got);
    }
    memset(in, '\r', sizeof(in));
    got = stuff(in, sizeof(in), 1);
    assert_int_equal(strlen(got), 2 * sizeof(in) + 3);
    free(got);
}

/* --- helpers ---------------------------------------------------------------- */

#define WHY_LEN 256

/* Every line of msg[len] ends with CRLF, has no bare CR/LF and is at most
 * `max` octets; every octet is 7-bit if `seven_bit`. */
static void assert_lines(const char *msg, size_t len, size_t max, bool seven_bit)
{
    size_t col = 0;

    for (size_t i = 0; i < len; i++) {
        if (seven_bit)
            assert_true((unsigned char)msg[i] < 0x80);
        if (msg[i] == '\r') {
            assert_true(i + 1 < len && msg[i + 1] == '\n');
            i++;
            col = 0;
            continue;
        }
        assert_true(msg[i] != '\n');
        col++;
        if (col > max)
            fail_msg("line longer than %zu at offset %zu", max, i);
    }
    assert_int_equal(col, 0);
}

/* The value of the first header field `name` (unfolded), malloc'd, or NULL. */
static char *header_value(const char *msg, const char *name)
{
    size_t n = strlen(name);
    const char *p = msg;
    char *v = NULL;
    size_t vlen = 0;

    while (*p != '\0' && !(p[0] == '\r' && p[1] == '\n')) {
        const char *eol = strstr(p, "\r\n");
        bool match = strncasecmp(p, name, n) == 0 && p[n] == ':';

        assert_non_null(eol);
        if (match) {
            const char *start = p + n + 1;

            for (;;) {
                v = realloc(v, vlen + (size_t)(eol - start) + 1);
                assert_non_null(v);
                memcpy(v + vlen, start, (size_t)(eol - start));
                vlen += (size_t)(eol - start);
                v[vlen] = '\0';
                if (eol[2] != ' ' && eol[2] != '\t')
                    break;
                start = eol + 2;
                eol = strstr(start, "\r\n");
                assert_non_null(eol);
            }
            return v;
        }
        p = eol + 2;
    }
    return NULL;
}

static const char *body_of(const char *msg)
{
    const char *b = strstr(msg, "\r\n\r\n");

    assert_non_null(b);
    return b + 4;
}

static int hexval(char c)
{
    return c >= '0' && c <= '9' ? c - '0' : c >= 'A' && c <= 'F' ? c - 'A' + 10 : -1;
}

static int b64val(char c)
{
    const char *t = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    const char *p = strchr(t, c);

    return c != '\0' && p != NULL ? (int)(p - t) : -1;
}

/* Decodes one encoded-word's text (Q or B) into out; returns its length. */
static size_t decode_word(char enc, const char *s, size_t n, char *out)
{
    size_t o = 0;

    if (enc == 'Q') {
        for (size_t i = 0; i < n; i++) {
            if (s[i] == '_') {
                out[o++] = ' ';
            } else if (s[i] == '=') {
                assert_true(i + 2 < n);
                assert_true(hexval(s[i + 1]) >= 0 && hexval(s[i + 2]) >= 0);
                out[o++] = (char)(hexval(s[i + 1]) * 16 + hexval(s[i + 2]));
                i += 2;
            } else {
                out[o++] = s[i];
            }
        }
        return o;
    }
    assert_int_equal(n % 4, 0);
    for (size_t i = 0; i < n; i += 4) {
        int v[4];

        for (int k = 0; k < 4; k++)
            v[k] = s[i + k] == '=' ? 0 : b64val(s[i + k]);
        assert_true(v[0] >= 0 && v[1] >= 0 && v[2] >= 0 && v[3] >= 0);
        out[o++] = (char)(v[0] << 2 | v[1] >> 4);
        if (s[i + 2] != '=')
            out[o++] = (char)((v[1] & 15) << 4 | v[2] >> 2);
        if (s[i + 3] != '=')
            out[o++] = (char)((v[2] & 3) << 6 | v[3]);
    }
    return o;
}

/* A valid UTF-8 string on its own (whole characters only). */
static bool utf8_whole(const char *s, size_t n)
{
    for (size_t i = 0; i < n;) {
        unsigned char c = (unsigned char)s[i];
        size_t k = c < 0x80 ? 1 : c >= 0xf0 ? 4 : c >= 0xe0 ? 3 : c >= 0xc2 ? 2 : 0;

        if (k == 0 || i + k > n)
            return false;
        for (size_t j = 1; j < k; j++)
            if (((unsigned char)s[i + j] & 0xc0) != 0x80)
                return false;
        i += k;
    }
    return true;
}

/* Decodes an unfolded Subject value made of encoded-words, checking each is
 * at most 75 characters and holds whole UTF-8 characters. Malloc'd. */
static char *decode_subject(const char *v)
{
    char *out = malloc(strlen(v) + 1);
    size_t o = 0;
    const char *p = v;

    assert_non_null(out);
    while (*p == ' ' || *p == '\t')
        p++;
    while (*p != '\0') {
        const char *end;
        char enc;
        size_t k;

        assert_true(strncmp(p, "=?UTF-8?", 8) == 0);
        enc = p[8];
        assert_true(enc == 'Q' || enc == 'B');
        assert_int_equal(p[9], '?');
        end = strstr(p + 10, "?=");
        assert_non_null(end);
        assert_true(end + 2 - p <= 75);
        k = decode_word(enc, p + 10, (size_t)(end - p - 10), out + o);
        assert_true(utf8_whole(out + o, k));
        o += k;
        p = end + 2;
        while (*p == ' ' || *p == '\t')
            p++;
    }
    out[o] = '\0';
    return out;
}

/* Decodes a quoted-printable body (CRLF lines). Malloc'd. */
static char *decode_qp(const char *s)
{
    size_t n = strlen(s), o = 0;
    char *out = malloc(n + 1);

    assert_non_null(out);
    for (size_t i = 0; i < n; i++) {
        if (s[i] == '=' && s[i + 1] == '\r' && s[i + 2] == '\n') {
            i += 2;
        } else if (s[i] == '=') {
            assert_true(hexval(s[i + 1]) >= 0 && hexval(s[i + 2]) >= 0);
            out[o++] = (char)(hexval(s[i + 1]) * 16 + hexval(s[i + 2]));
            i += 2;
        } else {
            /* White space never ends an encoded line. */
            if (s[i] == ' ' || s[i] == '\t')
                assert_false(s[i + 1] == '\r');
            out[o++] = s[i];
        }
    }
    out[o] = '\0';
    return out;
}

static const char *const one_to[] = {"alice@example.com"};

/* compose() with defaults: one To, fixed date and domain. */
static int compose(const char *subject, const char *body, char **out, size_t *len, char *why)
{
    struct smtp_message_compose c = {
        .to = one_to,
        .nto = 1,
        .subject = subject,
        .body = body,
        .body_len = strlen(body),
        .date = 1136214245, /* Mon, 02 Jan 2006 15:04:05 UTC */
        .msgid_domain = "host.example",
    };

    return smtp_message_compose(&c, out, len, why, WHY_LEN);
}

/* --- compose ---------------------------------------------------------------- */

static void test_smtp_message_compose_ascii(void **state)
{
    const char *to[] = {"alice@example.com", "bob@example.org"}, *cc[] = {"carol@example.net"};
    struct smtp_message_compose c = {
        .to = to,
        .nto = 2,
        .cc = cc,
        .ncc = 1,
        .subject = "Nightly report",
        .body = "line one\nline two\n",
        .body_len = 18,
        .date = 1136214245,
        .msgid_domain = "host.example",
    };
    char why[WHY_LEN], *msg, *id;
    const char *rest;
    size_t len;

    (void)state;
    assert_int_equal(smtp_message_compose(&c, &msg, &len, why, sizeof(why)), 0);
    assert_int_equal(strlen(msg), len);
    assert_lines(msg, len, 76, true);
    /* Order: Date, Message-ID, To, Cc, Subject, MIME-Version, Content-*. */
    assert_true(strncmp(msg, "Date: Mon, 02 Jan 2006 15:04:05 +0000\r\nMessage-ID: <", 52) == 0);
    id = header_value(msg, "Message-ID");
    assert_int_equal(strlen(id), strlen(" <@host.example>") + 32);
    for (size_t i = 2; i < 34; i++)
        assert_non_null(strchr("0123456789abcdef", id[i]));
    assert_string_equal(id + 34, "@host.example>");
    free(id);
    rest = strstr(msg, ">\r\nTo: ");
    assert_non_null(rest);
    assert_string_equal(rest + 3, "To: alice@example.com, bob@example.org\r\n"
                                  "Cc: carol@example.net\r\n"
                                  "Subject: Nightly report\r\n"
                                  "MIME-Version: 1.0\r\n"
                                  "Content-Type: text/plain; charset=us-ascii\r\n"
                                  "Content-Transfer-Encoding: 7bit\r\n"
                                  "\r\n"
                                  "line one\r\nline two\r\n");
    assert_null(strstr(msg, "From:"));
    free(msg);
}

static void test_smtp_message_compose_message_ids_differ(void **state)
{
    char why[WHY_LEN], *a, *b, *ia, *ib;
    size_t len;

    (void)state;
    assert_int_equal(compose("x", "y", &a, &len, why), 0);
    assert_int_equal(compose("x", "y", &b, &len, why), 0);
    ia = header_value(a, "Message-ID");
    ib = header_value(b, "Message-ID");
    assert_string_not_equal(ia, ib);
    free(ia);
    free(ib);
    free(a);
    free(b);
}

static void test_smtp_message_compose_message_id_literal(void **state)
{
    struct smtp_message_compose c = {
        .to = one_to, .nto = 1, .subject = "s", .body = "", .msgid_domain = "[IPv6:2001:db8::1]"};
    struct smtp_message_info info;
    char why[WHY_LEN], *msg, *id;
    size_t len;

    (void)state;
    assert_int_equal(smtp_message_compose(&c, &msg, &len, why, sizeof(why)), 0);
    id = header_value(msg, "Message-ID");
    assert_non_null(strstr(id, "@[IPv6:2001:db8::1]>"));
    assert_int_equal(smtp_message_parse(msg, len, &info, why, sizeof(why)), 0);
    assert_true(info.has_message_id);
    smtp_message_info_free(&info);
    free(id);
    free(msg);
}

static void test_smtp_message_compose_line_ends(void **state)
{
    char why[WHY_LEN], *msg;
    size_t len;

    (void)state;
    assert_int_equal(compose("s", "a\nb\r\nc\rd\r\r\n.e", &msg, &len, why), 0);
    assert_string_equal(body_of(msg), "a\r\nb\r\nc\r\nd\r\n\r\n.e\r\n");
    assert_lines(msg, len, 998, true);
    free(msg);
    assert_int_equal(compose("s", "", &msg, &len, why), 0);
    assert_string_equal(body_of(msg), "");
    free(msg);
}

static void test_smtp_message_compose_folds_recipients(void **state)
{
    const char *to[12];
    char addrs[12][64], why[WHY_LEN], *msg, *v;
    struct smtp_message_compose c = {
        .to = to, .nto = 12, .subject = "s", .body = "", .date = 0, .msgid_domain = "h"};
    struct smtp_message_info info;
    size_t len;

    (void)state;
    for (int i = 0; i < 12; i++) {
        snprintf(addrs[i], sizeof(addrs[i]), "recipient.number.%02d@mail.example.com", i);
        to[i] = addrs[i];
    }
    assert_int_equal(smtp_message_compose(&c, &msg, &len, why, sizeof(why)), 0);
    assert_lines(msg, len, 76, true);
    v = header_value(msg, "To");
    assert_non_null(strstr(v, "recipient.number.00@mail.example.com,"));
    free(v);
    /* The folded header reads back as the same list. */
    assert_int_equal(smtp_message_parse(msg, len, &info, why, sizeof(why)), 0);
    assert_int_equal(info.nrcpts, 12);
    for (int i = 0; i < 12; i++)
        assert_string_equal(info.rcpts[i], addrs[i]);
    smtp_message_info_free(&info);
    free(msg);
}

static void check_subject_roundtrip(const char *subject, bool encoded)
{
    char why[WHY_LEN], *msg, *v;
    size_t len;

    assert_int_equal(compose(subject, "b", &msg, &len, why), 0);
    assert_lines(msg, len, 998, true);
    assert_lines(msg, strstr(msg, "\r\nMIME-Version") + 2 - msg, 76, true);
    v = header_value(msg, "Subject");
    assert_non_null(v);
    if (encoded) {
        char *d = decode_subject(v);

        assert_string_equal(d, subject);
        free(d);
    } else {
        assert_null(strstr(v, "=?"));
        assert_string_equal(v + (subject[0] != '\0'), subject);
    }
    free(v);
    free(msg);
}

static void test_smtp_message_compose_subject_utf8(void **state)
{
    char long_subject[1024] = "", cjk[1024] = "";

    (void)state;
    check_subject_roundtrip("Gr\xc3\xbc\xc3\x9f"
                            "e aus K\xc3\xb6ln",
                            true);
    /* Long, with multi-octet characters that must not be split. */
    for (int i = 0; i < 60; i++)
        strcat(long_subject, "\xc3\xa9t\xc3\xa9 ");
    check_subject_roundtrip(long_subject, true);
    for (int i = 0; i < 80; i++)
        strcat(cjk, i % 2 ? "\xe6\x97\xa5" : "\xf0\x9f\x93\xa7");
    check_subject_roundtrip(cjk, true);
}

static void test_smtp_message_compose_subject_ascii(void **state)
{
    char long_subject[2048] = "";

    (void)state;
    check_subject_roundtrip("Nightly report", false);
    check_subject_roundtrip("", false);
    check_subject_roundtrip("  spaced  out\ttabs  ", false);
    for (int i = 0; i < 40; i++)
        strcat(long_subject, "word-number-x ");
    strcat(long_subject, "end");
    check_subject_roundtrip(long_subject, false);
    /* Text that a reader would decode is encoded instead. */
    check_subject_roundtrip("=?UTF-8?B?SGk=?=", true);
    check_subject_roundtrip("see https://reports.example.com/nightly/2024-05-01/summary?"
                            "format=text&lang=en",
                            false);
    /* A word too long for one line (a URL, say) is encoded, so it can be
     * split. */
    check_subject_roundtrip("see https://reports.example.com/nightly/2024-05-01/summary?"
                            "format=text&lang=en&tz=UTC",
                            true);
    memset(long_subject, 'x', 1500);
    long_subject[1500] = '\0';
    check_subject_roundtrip(long_subject, true);
    memset(long_subject, ' ', 1500);
    long_subject[0] = 'a';
    long_subject[1499] = 'b';
    check_subject_roundtrip(long_subject, true);
}

static void test_smtp_message_compose_body_utf8_quoted_printable(void **state)
{
    const char *body = "Caf\xc3\xa9 = coffee\nFrom here on\n.\ntrailing space \n"
                       "tab\t\n\xe6\x97\xa5\xe6\x9c\xac\n";
    char why[WHY_LEN], *msg, *d, *ct;
    size_t len;

    (void)state;
    assert_int_equal(compose("s", body, &msg, &len, why), 0);
    assert_lines(msg, len, 76, true);
    ct = header_value(msg, "Content-Type");
    assert_string_equal(ct, " text/plain; charset=utf-8");
    free(ct);
    ct = header_value(msg, "Content-Transfer-Encoding");
    assert_string_equal(ct, " quoted-printable");
    free(ct);
    /* No line of the encoded body starts "From " or is a lone dot. */
    assert_null(strstr(body_of(msg), "\r\nFrom "));
    assert_null(strstr(body_of(msg), "\r\n.\r\n"));
    d = decode_qp(body_of(msg));
    assert_string_equal(d, "Caf\xc3\xa9 = coffee\r\nFrom here on\r\n.\r\ntrailing space \r\n"
                           "tab\t\r\n\xe6\x97\xa5\xe6\x9c\xac\r\n");
    free(d);
    free(msg);
}

static void test_smtp_message_compose_long_line_quoted_printable(void **state)
{
    char *body = malloc(3001), why[WHY_LEN], *msg, *d, *ct;
    size_t len;

    (void)state;
    assert_non_null(body);
    for (int i = 0; i < 3000; i++)
        body[i] = (char)('a' + i % 26);
    body[3000] = '\0';
    assert_int_equal(compose("s", body, &msg, &len, why), 0);
    assert_lines(msg, len, 76, true);
    ct = header_value(msg, "Content-Type");
    assert_string_equal(ct, " text/plain; charset=us-ascii");
    free(ct);
    ct = header_value(msg, "Content-Transfer-Encoding");
    assert_string_equal(ct, " quoted-printable");
    free(ct);
    d = decode_qp(body_of(msg));
    assert_string_equal(d, body);
    free(d);
    free(msg);
    /* 998 octets is still a 7bit line. */
    body[998] = '\0';
    assert_int_equal(compose("s", body, &msg, &len, why), 0);
    ct = header_value(msg, "Content-Transfer-Encoding");
    assert_string_equal(ct, " 7bit");
    free(ct);
    free(msg);
    free(body);
}

static void expect_compose_invalid(const struct smtp_message_compose *c, const char *in_why)
{
    char why[WHY_LEN], *msg = (char *)1;
    size_t len = 1;

    assert_int_equal(smtp_message_compose(c, &msg, &len, why, sizeof(why)), ERROR_INVALID);
    assert_null(msg);
    assert_int_equal(len, 0);
    if (strstr(why, in_why) == NULL)
        fail_msg("reason \"%s\" lacks \"%s\"", why, in_why);
}

static void test_smtp_message_compose_refuses_bad_input(void **state)
{
    const char *bad_to[] = {"alice@example.com\r\nBcc: eve@evil.example"};
    const char *not_mailbox[] = {"alice"};
    const char *many[SMTP_MESSAGE_RCPT_MAX + 1];
    struct smtp_message_compose c = {
        .to = one_to, .nto = 1, .subject = "s", .body = "b", .body_len = 1, .msgid_domain = "h"};
    struct smtp_message_compose t;

    (void)state;
    t = c, t.subject = "Hello\r\nBcc: eve@evil.example";
    expect_compose_invalid(&t, "line break");
    t = c, t.subject = "Hello\nthere";
    expect_compose_invalid(&t, "line break");
    t = c, t.subject = "bell\a";
    expect_compose_invalid(&t, "control character");
    t = c, t.subject = "caf\xe9";
    expect_compose_invalid(&t, "UTF-8");
    t = c, t.subject = "\xed\xa0\x80"; /* a surrogate */
    expect_compose_invalid(&t, "UTF-8");
    t = c, t.to = bad_to;
    expect_compose_invalid(&t, "control character");
    t = c, t.to = not_mailbox;
    expect_compose_invalid(&t, "To address \"alice\" is not valid");
    t = c, t.cc = not_mailbox, t.ncc = 1;
    expect_compose_invalid(&t, "Cc address");
    t = c, t.nto = 0;
    expect_compose_invalid(&t, "no recipient");
    for (size_t i = 0; i < SMTP_MESSAGE_RCPT_MAX + 1; i++)
        many[i] = "x@example.com";
    t = c, t.to = many, t.nto = SMTP_MESSAGE_RCPT_MAX + 1;
    expect_compose_invalid(&t, "more than 100");
    t = c, t.body = "a\0b", t.body_len = 3;
    expect_compose_invalid(&t, "NUL");
    t = c, t.body = "\xff\xfe", t.body_len = 2;
    expect_compose_invalid(&t, "UTF-8");
    t = c, t.msgid_domain = "bad domain>";
    expect_compose_invalid(&t, "Message-ID");
    t = c, t.msgid_domain = "";
    expect_compose_invalid(&t, "Message-ID");
    t = c, t.msgid_domain = "[a]b]";
    expect_compose_invalid(&t, "Message-ID");
}

static void test_smtp_message_compose_too_big(void **state)
{
    struct smtp_message_compose c = {
        .to = one_to, .nto = 1, .subject = "s", .body_len = SMTP_MESSAGE_MAX, .msgid_domain = "h"};
    char why[WHY_LEN], *msg, *body = malloc(SMTP_MESSAGE_MAX + 1);
    size_t len;

    (void)state;
    assert_non_null(body);
    memset(body, 'a', SMTP_MESSAGE_MAX + 1);
    c.body = body;
    /* Within the limit on its own, but not with the header. */
    assert_int_equal(smtp_message_compose(&c, &msg, &len, why, sizeof(why)), ERROR_TOO_BIG);
    c.body_len = SMTP_MESSAGE_MAX + 1;
    assert_int_equal(smtp_message_compose(&c, &msg, &len, why, sizeof(why)), ERROR_TOO_BIG);
    free(body);
}

/* --- parse ------------------------------------------------------------------ */

static void expect_rcpts(const char *msg, const char *const *want, size_t n)
{
    struct smtp_message_info info;
    char why[WHY_LEN];
    int rc = smtp_message_parse(msg, strlen(msg), &info, why, sizeof(why));

    if (rc != 0)
        fail_msg("parse failed: %s", why);
    assert_int_equal(info.nrcpts, n);
    for (size_t i = 0; i < n; i++)
        assert_string_equal(info.rcpts[i], want[i]);
    smtp_message_info_free(&info);
}

static void test_smtp_message_parse_address_forms(void **state)
{
    const char *want[] = {
        "a@example.com", "b@example.com", "c.d@example.com", "e@example.com", "\"f g\"@example.com",
        "h@[192.0.2.1]", "i@example.com", "j@example.com",   "k@example.com", "quoted@example.com"};

    (void)state;
    expect_rcpts("To: a@example.com, Bee <b@example.com>\r\n"
                 "Cc: \"Doe, John (the \\\"boss\\\")\" <c.d@example.com> (comment (nested))\r\n"
                 "Bcc: e@example.com (Eve), \"f g\"@example.com, h@[192.0.2.1]\r\n"
                 "To: Team: i@example.com, Jay <j@example.com>;, John Q. Public "
                 "<k@example.com>\r\n"
                 "Cc: \"quoted\"@example.com\r\n"
                 "\r\n"
                 "body\r\n",
                 want, 10);
}

static void test_smtp_message_parse_folded_and_lf(void **state)
{
    const char *want[] = {"a@example.com", "b@example.com", "c@example.com"};

    (void)state;
    expect_rcpts("Subject: a\n folded\n\tsubject\nTo: a@example.com,\n  b@example.com\n"
                 "Cc:\n c@example.com\n\nbody\n",
                 want, 3);
    expect_rcpts("To: a@example.com,\r\n b@example.com\r\nCc: (a\r\n comment) c@example.com\r\n",
                 want, 3);
}

static void test_smtp_message_parse_groups_and_empty(void **state)
{
    const char *want[] = {"a@example.com"};

    (void)state;
    expect_rcpts("To: undisclosed-recipients:;\r\n\r\nbody\r\n", NULL, 0);
    expect_rcpts("To: undisclosed-recipients: ;\r\nCc:\r\nBcc: a@example.com\r\n\r\n", want, 1);
    expect_rcpts("To: , a@example.com,,\r\n\r\n", want, 1);
    expect_rcpts("\r\nTo: b@example.com\r\n", NULL, 0); /* that is the body */
    expect_rcpts("", NULL, 0);
}

static void test_smtp_message_parse_duplicates(void **state)
{
    const char *want[] = {"Joe@Example.com", "joe@example.com"};
    char msg[8192] = "To: ";

    (void)state;
    expect_rcpts("To: Joe@Example.com, Joe@EXAMPLE.COM\r\nCc: <Joe@example.com>\r\n"
                 "Bcc: joe@example.com\r\n\r\n",
                 want, 2);
    /* Duplicates do not count against the limit. */
    for (int i = 0; i < 300; i++)
        strcat(msg, "same@example.com,\r\n ");
    strcat(msg, "same@Example.Com\r\n\r\n");
    want[0] = "same@example.com";
    expect_rcpts(msg, want, 1);
}

static void test_smtp_message_parse_rcpt_limit(void **state)
{
    char msg[8192] = "To: ", addr[64], why[WHY_LEN];
    struct smtp_message_info info;

    (void)state;
    for (int i = 0; i < SMTP_MESSAGE_RCPT_MAX; i++) {
        snprintf(addr, sizeof(addr), "%su%d@example.com", i % 5 == 4 ? ",\r\n " : i ? ", " : "", i);
        strcat(msg, addr);
    }
    strcat(msg, "\r\n");
    assert_int_equal(smtp_message_parse(msg, strlen(msg), &info, why, sizeof(why)), 0);
    assert_int_equal(info.nrcpts, SMTP_MESSAGE_RCPT_MAX);
    smtp_message_info_free(&info);
    strcat(msg, "Bcc: one.more@example.com\r\n");
    assert_int_equal(smtp_message_parse(msg, strlen(msg), &info, why, sizeof(why)), ERROR_INVALID);
    assert_string_equal(why, "Bcc: more than 100 recipients");
}

static void test_smtp_message_parse_info(void **state)
{
    const char *msg = "From: me@example.com\nDate: Mon, 2 Jan 2006 15:04:05 +0000\n"
                      "Message-ID: <x@y>\nResent-To: r@example.com\n\nb\xc3\xa9\n";
    struct smtp_message_info info;
    char why[WHY_LEN];

    (void)state;
    assert_int_equal(smtp_message_parse(msg, strlen(msg), &info, why, sizeof(why)), 0);
    assert_true(info.has_from && info.has_date && info.has_message_id && info.eight_bit);
    assert_int_equal(info.nrcpts, 0); /* Resent-* are not read */
    assert_int_equal(info.header_len, strstr(msg, "\n\n") + 2 - msg);
    smtp_message_info_free(&info);
    msg = "To: a@example.com\r\n";
    assert_int_equal(smtp_message_parse(msg, strlen(msg), &info, why, sizeof(why)), 0);
    assert_false(info.has_from || info.has_date || info.has_message_id || info.eight_bit);
    assert_int_equal(info.header_len, strlen(msg));
    smtp_message_info_free(&info);
}

static void expect_parse_invalid(const char *msg, size_t len, const char *want_why)
{
    struct smtp_message_info info;
    char why[WHY_LEN];

    if (smtp_message_parse(msg, len, &info, why, sizeof(why)) != ERROR_INVALID)
        fail_msg("accepted: %s", msg);
    assert_null(info.rcpts);
    if (strstr(why, want_why) == NULL)
        fail_msg("reason \"%s\" lacks \"%s\"", why, want_why);
}

#define PARSE_INVALID(msg, want) expect_parse_invalid(msg, sizeof(msg) - 1, want)

static void test_smtp_message_parse_refuses_bad_lines(void **state)
{
    char long_line[1100];

    (void)state;
    PARSE_INVALID("Hello world\r\n\r\n", "line 1 is not a header field");
    PARSE_INVALID("To: a@example.com\r\nbody without blank line\r\n", "line 2");
    PARSE_INVALID("Bcc : a@example.com\r\n", "white space");
    PARSE_INVALID("To\t: a@example.com\r\n", "white space");
    PARSE_INVALID(": a@example.com\r\n", "without a name");
    PARSE_INVALID("Sub\xc3\xa9ject: x\r\n", "not allowed in a header name");
    PARSE_INVALID(" To: a@example.com\r\n", "continues no header field");
    PARSE_INVALID("Subject: x\r\n \t \r\nBcc: a@example.com\r\n", "only white space");
    PARSE_INVALID("Subject: x\ry\r\n", "carriage return");
    PARSE_INVALID("Subject: x\r", "carriage return");
    PARSE_INVALID("Subject: x\0y\r\n", "NUL");
    PARSE_INVALID("Subject: bell\a\r\n", "Subject: the header holds a control character");
    PARSE_INVALID("Subject: x\r\n y\x1b\r\n", "Subject: the header holds a control character");
    PARSE_INVALID("Date: a\r\nDate: b\r\n", "Date: the header appears more than once");
    PARSE_INVALID("Subject: a\r\nsubject: b\r\n", "Subject: the header appears more than once");
    PARSE_INVALID("Message-ID: <a@b>\r\nMessage-ID: <c@d>\r\n", "Message-ID: the header appears");
    PARSE_INVALID("Message-ID: no-brackets@b\r\n", "Message-ID: it is not");
    PARSE_INVALID("Message-ID: <a b@c>\r\n", "Message-ID: it is not");
    PARSE_INVALID("Message-ID: <ab>\r\n", "Message-ID: it is not");
    memset(long_line, 'x', sizeof(long_line));
    memcpy(long_line, "X-Long: ", 8);
    long_line[999] = '\n';
    expect_parse_invalid(long_line, 1000, "longer than 998");
    /* 998 octets and a CRLF are fine. */
    {
        struct smtp_message_info info;
        char why[WHY_LEN];

        long_line[998] = '\r';
        long_line[999] = '\n';
        assert_int_equal(smtp_message_parse(long_line, 1000, &info, why, sizeof(why)), 0);
        smtp_message_info_free(&info);
    }
}

static void test_smtp_message_parse_refuses_bad_addresses(void **state)
{
    (void)state;
    PARSE_INVALID("To: bob\r\n", "To: \"bob\" is not an address");
    PARSE_INVALID("Cc: Bob Smith bob@example.com\r\n", "Cc: an address has white space");
    PARSE_INVALID("To: a@example.com b@example.com\r\n", "separated by commas");
    PARSE_INVALID("To: \"unterminated@example.com\r\n", "To: a quoted string is not closed");
    PARSE_INVALID("To: a@example.com (open\r\n", "comment is not closed");
    PARSE_INVALID("To: a@example.com (\\\r\n", "comment is not closed");
    PARSE_INVALID("To: team: a@example.com\r\n", "group is not closed");
    PARSE_INVALID("To: outer: inner: a@example.com;;\r\n", "group inside a group");
    PARSE_INVALID("To: : a@example.com;\r\n", "group has no name");
    PARSE_INVALID("To: <@relay.example:a@example.com>\r\n", "source routes");
    PARSE_INVALID("To: <>\r\n", "empty address");
    PARSE_INVALID("To: <a@example.com\r\n", "not closed with \">\"");
    PARSE_INVALID("To: <a>\r\n", "has no \"@\"");
    PARSE_INVALID("To: Bob <>\r\n", "empty address");
    PARSE_INVALID("To: @example.com\r\n", "nothing before \"@\"");
    PARSE_INVALID("To: a@\r\n", "nothing after \"@\"");
    PARSE_INVALID("To: a@b@example.com\r\n", "separated by commas");
    PARSE_INVALID("To: a@-bad-.example\r\n", "To: \"a@-bad-.example\" is not a valid address");
    PARSE_INVALID("To: a..b@example.com\r\n", "is not a valid address");
    PARSE_INVALID("To: a@[1.2.3]\r\n", "is not a valid address");
    PARSE_INVALID("To: a@[1.2 .3.4]\r\n", "domain literal");
    PARSE_INVALID("To: a@[1.2.3.4\r\n", "domain literal is not closed");
    PARSE_INVALID("To: j\xc3\xb6rg@example.com\r\n", "is not a valid address");
    PARSE_INVALID("To: a@example.com)\r\n", "unexpected \")\"");
    PARSE_INVALID("Bcc: a@example.com\\\r\n", "Bcc: unexpected");
    PARSE_INVALID("To: ;\r\n", "To: expected an address");
}

static void test_smtp_message_parse_why_is_printable(void **state)
{
    struct smtp_message_info info;
    char why[WHY_LEN];
    const char msg[] = "To: \xe2\x80\xae\x1b[31mevil@-x\r\n";

    (void)state;
    assert_int_equal(smtp_message_parse(msg, sizeof(msg) - 1, &info, why, sizeof(why)),
                     ERROR_INVALID);
    for (const char *p = why; *p != '\0'; p++)
        assert_true(*p >= 0x20 && *p < 0x7f);
}

/* --- normalize -------------------------------------------------------------- */

static char *normalize_ok(const char *msg, size_t *len)
{
    char why[WHY_LEN], *out;
    int rc = smtp_message_normalize(msg, strlen(msg), 1136214245, "host.example", &out, len, why,
                                    sizeof(why));

    if (rc != 0)
        fail_msg("normalize failed: %s", why);
    assert_lines(out, *len, 998, false);
    return out;
}

static void test_smtp_message_normalize_removes_from_and_bcc(void **state)
{
    size_t len;
    char *out;

    (void)state;
    out = normalize_ok("Date: Mon, 2 Jan 2006 15:04:05 +0000\n"
                       "Message-ID: <a@b>\n"
                       "From: Someone <forged@example.com>\n"
                       "To: a@example.com\n"
                       "Bcc: hidden@example.com,\n"
                       "  also.hidden@example.com\n"
                       "Subject: hi\n"
                       "BCC: more.hidden@example.com\n"
                       "Resent-Bcc: resent.hidden@example.com\n"
                       "from:\n"
                       "\tforged.again@example.com\n"
                       "X-Keep: yes\n"
                       "\n"
                       "Bcc: in the body stays\n"
                       "From the body too\n",
                       &len);
    assert_string_equal(out, "Date: Mon, 2 Jan 2006 15:04:05 +0000\r\n"
                             "Message-ID: <a@b>\r\n"
                             "To: a@example.com\r\n"
                             "Subject: hi\r\n"
                             "X-Keep: yes\r\n"
                             "\r\n"
                             "Bcc: in the body stays\r\n"
                             "From the body too\r\n");
    free(out);
}

static void test_smtp_message_normalize_adds_date_and_message_id(void **state)
{
    size_t len, len2;
    char *out, *again, *id;

    (void)state;
    out = normalize_ok("To: a@example.com\r\nSubject: x\r\n\r\nbody", &len);
    assert_true(strncmp(out, "Date: Mon, 02 Jan 2006 15:04:05 +0000\r\nMessage-ID: <", 52) == 0);
    id = header_value(out, "Message-ID");
    assert_non_null(strstr(id, "@host.example>"));
    free(id);
    assert_non_null(strstr(out, ">\r\nTo: a@example.com\r\nSubject: x\r\n\r\nbody\r\n"));
    /* Normalizing again changes nothing. */
    again = normalize_ok(out, &len2);
    assert_int_equal(len2, len);
    assert_memory_equal(again, out, len);
    free(again);
    free(out);
    /* A header without a body gets its blank line. */
    out = normalize_ok("To: a@example.com", &len);
    assert_non_null(strstr(out, "\r\nTo: a@example.com\r\n\r\n"));
    assert_int_equal(len, (size_t)(strstr(out, "\r\n\r\n") + 4 - out));
    free(out);
}

static void test_smtp_message_normalize_keeps_8bit_and_dots(void **state)
{
    size_t len;
    char *out;

    (void)state;
    out = normalize_ok("Date: x\nMessage-ID: <a@b>\nSubject: caf\xc3\xa9\n\n.\n..\n\xff\n", &len);
    assert_string_equal(out, "Date: x\r\nMessage-ID: <a@b>\r\nSubject: caf\xc3\xa9\r\n\r\n"
                             ".\r\n..\r\n\xff\r\n");
    free(out);
}

static void expect_normalize_error(const char *msg, size_t len, int want, const char *want_why)
{
    char why[WHY_LEN], *out = (char *)1;
    size_t outlen = 1;

    assert_int_equal(smtp_message_normalize(msg, len, 0, "h", &out, &outlen, why, sizeof(why)),
                     want);
    assert_null(out);
    assert_int_equal(outlen, 0);
    if (strstr(why, want_why) == NULL)
        fail_msg("reason \"%s\" lacks \"%s\"", why, want_why);
}

#define NORMALIZE_ERROR(msg, want, why) expect_normalize_error(msg, sizeof(msg) - 1, want, why)

static void test_smtp_message_normalize_refuses(void **state)
{
    char *big = malloc(SMTP_MESSAGE_MAX + 2);
    size_t n;

    (void)state;
    assert_non_null(big);
    NORMALIZE_ERROR("To: a@example.com\r\n\r\nbare\rcr\r\n", ERROR_INVALID,
                    "line 3 has a carriage return");
    NORMALIZE_ERROR("To: a@example.com\r\n\r\nnul\0\r\n", ERROR_INVALID, "line 3 has a NUL");
    NORMALIZE_ERROR("To: a@example.com\n\nnul\0", ERROR_INVALID, "line 3 has a NUL");
    NORMALIZE_ERROR("To: a@example.com\r\n\r\nlast\r", ERROR_INVALID, "line 3 has a carriage");
    expect_normalize_error("Bcc: x\r\n", 8, ERROR_INVALID, "Bcc: \"x\" is not an address");
    /* A body line over 998 octets. */
    n = (size_t)sprintf(big, "To: a@example.com\n\n");
    memset(big + n, 'x', 999);
    big[n + 999] = '\n';
    expect_normalize_error(big, n + 1000, ERROR_TOO_BIG, "line 3 is longer than 998");
    /* Over the size limit, and within it only before LF became CRLF. */
    memset(big, '\n', SMTP_MESSAGE_MAX + 1);
    expect_normalize_error(big, SMTP_MESSAGE_MAX + 1, ERROR_TOO_BIG, "larger than");
    expect_normalize_error(big, SMTP_MESSAGE_MAX, ERROR_TOO_BIG, "once its lines end with CRLF");
    free(big);
}

/* --- From header and addresses ---------------------------------------------- */

static void test_smtp_message_from_header(void **state)
{
    char buf[300];

    (void)state;
    assert_int_equal(smtp_message_from_header("noreply@example.com", buf, sizeof(buf)), 0);
    assert_string_equal(buf, "From: <noreply@example.com>\r\n");
    assert_int_equal(smtp_message_from_header("a@example.com\r\nBcc: x@y", buf, sizeof(buf)),
                     ERROR_INVALID);
    assert_int_equal(smtp_message_from_header("not an address", buf, sizeof(buf)), ERROR_INVALID);
    assert_int_equal(smtp_message_from_header("", buf, sizeof(buf)), ERROR_INVALID);
    assert_int_not_equal(smtp_message_from_header("noreply@example.com", buf, 10), 0);
}

static void test_smtp_message_address_equal(void **state)
{
    (void)state;
    assert_true(smtp_message_address_equal("a@Example.COM", "a@example.com"));
    assert_false(smtp_message_address_equal("A@example.com", "a@example.com"));
    assert_true(smtp_message_address_equal("\"x@y\"@Z.example", "\"x@y\"@z.example"));
    assert_false(smtp_message_address_equal("ab@c.example", "a@bc.example"));
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_smtp_message_dotstuff_leading_dot),
        cmocka_unit_test(test_smtp_message_dotstuff_first_octet),
        cmocka_unit_test(test_smtp_message_dotstuff_terminator),
        cmocka_unit_test(test_smtp_message_dotstuff_split_crlf),
        cmocka_unit_test(test_smtp_message_dotstuff_bare_line_ends),
        cmocka_unit_test(test_smtp_message_dotstuff_worst_case_size),
        cmocka_unit_test(test_smtp_message_compose_ascii),
        cmocka_unit_test(test_smtp_message_compose_message_ids_differ),
        cmocka_unit_test(test_smtp_message_compose_message_id_literal),
        cmocka_unit_test(test_smtp_message_compose_line_ends),
        cmocka_unit_test(test_smtp_message_compose_folds_recipients),
        cmocka_unit_test(test_smtp_message_compose_subject_utf8),
        cmocka_unit_test(test_smtp_message_compose_subject_ascii),
        cmocka_unit_test(test_smtp_message_compose_body_utf8_quoted_printable),
        cmocka_unit_test(test_smtp_message_compose_long_line_quoted_printable),
        cmocka_unit_test(test_smtp_message_compose_refuses_bad_input),
        cmocka_unit_test(test_smtp_message_compose_too_big),
        cmocka_unit_test(test_smtp_message_parse_address_forms),
        cmocka_unit_test(test_smtp_message_parse_folded_and_lf),
        cmocka_unit_test(test_smtp_message_parse_groups_and_empty),
        cmocka_unit_test(test_smtp_message_parse_duplicates),
        cmocka_unit_test(test_smtp_message_parse_rcpt_limit),
        cmocka_unit_test(test_smtp_message_parse_info),
        cmocka_unit_test(test_smtp_message_parse_refuses_bad_lines),
        cmocka_unit_test(test_smtp_message_parse_refuses_bad_addresses),
        cmocka_unit_test(test_smtp_message_parse_why_is_printable),
        cmocka_unit_test(test_smtp_message_normalize_removes_from_and_bcc),
        cmocka_unit_test(test_smtp_message_normalize_adds_date_and_message_id),
        cmocka_unit_test(test_smtp_message_normalize_keeps_8bit_and_dots),
        cmocka_unit_test(test_smtp_message_normalize_refuses),
        cmocka_unit_test(test_smtp_message_from_header),
        cmocka_unit_test(test_smtp_message_address_equal),
    };

    return cmocka_run_group_tests(tests, NULL, NULL);
}
