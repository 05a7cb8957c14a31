/*
 * utf8: every boundary of RFC 3629's table, overlong forms, surrogates,
 * values above U+10FFFF, truncated sequences and bad continuations; every
 * code point round trip; and every string of one to three octets (and a
 * sample of four) checked against RFC 3629's grammar written out as a
 * second, independent decoder.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include <stdbool.h>
#include <string.h>

#include "utf8.h"

#define CP_UNTOUCHED 0xdeadbeefu

/* RFC 3629 section 4, the grammar as written:
 *   UTF8-2 = %xC2-DF UTF8-tail
 *   UTF8-3 = %xE0 %xA0-BF UTF8-tail / %xE1-EC 2( UTF8-tail ) /
 *            %xED %x80-9F UTF8-tail / %xEE-EF 2( UTF8-tail )
 *   UTF8-4 = %xF0 %x90-BF 2( UTF8-tail ) / %xF1-F3 3( UTF8-tail ) /
 *            %xF4 %x80-8F 2( UTF8-tail ) */
static bool in(unsigned char c, unsigned lo, unsigned hi)
{
    return c >= lo && c <= hi;
}

static size_t ref_len(const unsigned char *s, size_t n)
{
    unsigned lo = 0x80, hi = 0xbf;
    size_t len;

    if (n == 0)
        return 0;
    if (s[0] <= 0x7f)
        return 1;
    if (in(s[0], 0xc2, 0xdf))
        len = 2;
    else if (in(s[0], 0xe0, 0xef))
        len = 3;
    else if (in(s[0], 0xf0, 0xf4))
        len = 4;
    else
        return 0;
    if (s[0] == 0xe0)
        lo = 0xa0;
    else if (s[0] == 0xed)
        hi = 0x9f;
    else if (s[0] == 0xf0)
        lo = 0x90;
    else if (s[0] == 0xf4)
        hi = 0x8f;
    if (n < len || !in(s[1], lo, hi))
        return 0;
    for (size_t i = 2; i < len; i++)
        if (!in(s[i], 0x80, 0xbf))
            return 0;
    return len;
}

/* The shortest form of a code point; its length. */
static size_t encode(uint32_t cp, unsigned char out[4])
{
    if (cp < 0x80) {
        out[0] = (unsigned char)cp;
        return 1;
    }
    if (cp < 0x800) {
        out[0] = (unsigned char)(0xc0 | cp >> 6);
        out[1] = (unsigned char)(0x80 | (cp & 0x3f));
        return 2;
    }
    if (cp < 0x10000) {
        out[0] = (unsigned char)(0xe0 | cp >> 12);
        out[1] = (unsigned char)(0x80 | (cp >> 6 & 0x3f));
        out[2] = (unsigned char)(0x80 | (cp & 0x3f));
        return 3;
    }
    out[0] = (unsigned char)(0xf0 | cp >> 18);
    out[1] = (unsigned char)(0x80 | (cp >> 12 & 0x3f));
    out[2] = (unsigned char)(0x80 | (cp >> 6 & 0x3f));
    out[3] = (unsigned char)(0x80 | (cp & 0x3f));
    return 4;
}

struct sample {
    const char *s;
    size_t len;  /* of s */
    size_t want; /* utf8_decode()'s length; 0: refused */
    uint32_t cp; /* when accepted */
};

static void check(const struct sample *t, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        uint32_t cp = CP_UNTOUCHED;

        assert_int_equal(utf8_decode(t[i].s, t[i].len, &cp), t[i].want);
        assert_int_equal(utf8_char_len(t[i].s, t[i].len), t[i].want);
        assert_int_equal(cp, t[i].want != 0 ? t[i].cp : CP_UNTOUCHED);
        assert_int_equal(utf8_valid(t[i].s, t[i].len), t[i].want == t[i].len);
    }
}

#define S(lit) lit, sizeof(lit) - 1

/* The first and last code point of each length, and around the gaps. */
static const struct sample boundaries[] = {
    {S("\x7f"), 1, 0x7f},
    {S("\xc2\x80"), 2, 0x80},
    {S("\xdf\xbf"), 2, 0x7ff},
    {S("\xe0\xa0\x80"), 3, 0x800},
    {S("\xed\x9f\xbf"), 3, 0xd7ff},
    {S("\xee\x80\x80"), 3, 0xe000},
    {S("\xef\xbf\xbf"), 3, 0xffff},
    {S("\xf0\x90\x80\x80"), 4, 0x10000},
    {S("\xf4\x8f\xbf\xbf"), 4, 0x10ffff},
};

static void test_utf8_ascii(void **state)
{
    char c;
    uint32_t cp = CP_UNTOUCHED;

    (void)state;
    for (unsigned i = 0; i < 0x80; i++) {
        c = (char)i;
        assert_int_equal(utf8_decode(&c, 1, &cp), 1);
        assert_int_equal(cp, i); /* NUL included */
    }
    cp = CP_UNTOUCHED;
    assert_int_equal(utf8_decode("A", 0, &cp), 0);
    assert_int_equal(cp, CP_UNTOUCHED);
    assert_true(utf8_valid("", 0));
    assert_true(utf8_valid("a\0b", 3));
}

static void test_utf8_boundaries(void **state)
{
    (void)state;
    check(boundaries, sizeof(boundaries) / sizeof(boundaries[0]));
}

static void test_utf8_overlong_refused(void **state)
{
    static const struct sample t[] = {
        {S("\xc0\x80"), 0, 0},         /* NUL */
        {S("\xc0\xaf"), 0, 0},         /* '/' */
        {S("\xc1\xbf"), 0, 0},         /* U+007F */
        {S("\xe0\x80\x80"), 0, 0},     /* NUL */
        {S("\xe0\x9f\xbf"), 0, 0},     /* U+07FF */
        {S("\xf0\x80\x80\x80"), 0, 0}, /* NUL */
        {S("\xf0\x8f\xbf\xbf"), 0, 0}, /* U+FFFF */
    };

    (void)state;
    check(t, sizeof(t) / sizeof(t[0]));
}

static void test_utf8_surrogates_refused(void **state)
{
    static const struct sample t[] = {
        {S("\xed\xa0\x80"), 0, 0}, /* U+D800 */
        {S("\xed\xaf\xbf"), 0, 0}, /* U+DBFF */
        {S("\xed\xb0\x80"), 0, 0}, /* U+DC00 */
        {S("\xed\xbf\xbf"), 0, 0}, /* U+DFFF */
        /* A pair written as CESU-8 is two surrogates, not U+10000. */
        {S("\xed\xa0\x80\xed\xb0\x80"), 0, 0},
    };

    (void)state;
    check(t, sizeof(t) / sizeof(t[0]));
}

static void test_utf8_above_max_refused(void **state)
{
    static const struct sample t[] = {
        {S("\xf4\x90\x80\x80"), 0, 0}, /* U+110000 */
        {S("\xf4\xbf\xbf\xbf"), 0, 0},
        {S("\xf5\x80\x80\x80"), 0, 0},
        {S("\xf7\xbf\xbf\xbf"), 0, 0},     /* U+1FFFFF */
        {S("\xf8\x88\x80\x80\x80"), 0, 0}, /* five octets */
        {S("\xfc\x84\x80\x80\x80\x80"), 0, 0},
        {S("\xfe"), 0, 0},
        {S("\xff"), 0, 0},
    };

    (void)state;
    check(t, sizeof(t) / sizeof(t[0]));
}

static void test_utf8_truncated_refused(void **state)
{
    char buf[8];

    (void)state;
    for (size_t i = 0; i < sizeof(boundaries) / sizeof(boundaries[0]); i++) {
        const struct sample *b = &boundaries[i];

        for (size_t k = 1; k < b->len; k++) {
            uint32_t cp = CP_UNTOUCHED;

            /* Cut by the end of the input... */
            assert_int_equal(utf8_decode(b->s, k, &cp), 0);
            assert_int_equal(cp, CP_UNTOUCHED);
            assert_false(utf8_valid(b->s, k));
            /* ...or followed by what cannot continue it. */
            memcpy(buf, b->s, k);
            memset(buf + k, 'A', b->len - k);
            assert_int_equal(utf8_char_len(buf, b->len), 0);
            memset(buf + k, '\0', b->len - k);
            assert_int_equal(utf8_char_len(buf, b->len), 0);
            memset(buf + k, '\xc2', b->len - k);
            assert_int_equal(utf8_char_len(buf, b->len), 0);
        }
    }
}

static void test_utf8_bad_continuation_refused(void **state)
{
    char buf[2];

    (void)state;
    for (unsigned c = 0x80; c <= 0xbf; c++) {
        buf[0] = (char)c; /* a continuation octet alone */
        assert_int_equal(utf8_char_len(buf, 1), 0);
        assert_int_equal(utf8_char_len(buf, 2), 0);
    }
    buf[0] = '\xc2';
    for (unsigned c = 0; c < 0x100; c++) {
        buf[1] = (char)c;
        assert_int_equal(utf8_char_len(buf, 2), c >= 0x80 && c <= 0xbf ? 2 : 0);
    }
}

static void test_utf8_every_code_point_round_trips(void **state)
{
    unsigned char b[4];

    (void)state;
    for (uint32_t cp = 0; cp <= 0x10ffff; cp++) {
        size_t len = encode(cp, b);
        uint32_t got = CP_UNTOUCHED;
        bool surrogate = cp >= 0xd800 && cp <= 0xdfff;

        assert_int_equal(utf8_decode((const char *)b, len, &got), surrogate ? 0 : len);
        assert_int_equal(got, surrogate ? CP_UNTOUCHED : cp);
    }
}

/* Every string of one, two and three octets, and four-octet strings with
 * every lead from 0xf0 and every second octet (the third and fourth from
 * the values either side of each range edge), against the grammar. */
static void test_utf8_matches_rfc3629(void **state)
{
    static const unsigned char edge[] = {0x00, 0x41, 0x7f, 0x80, 0x8f, 0x90,
                                         0x9f, 0xa0, 0xbf, 0xc0, 0xf4, 0xff};
    unsigned char b[4];

    (void)state;
    for (uint32_t v = 0; v < 1u << 24; v++) {
        b[0] = (unsigned char)(v >> 16);
        b[1] = (unsigned char)(v >> 8);
        b[2] = (unsigned char)v;
        for (size_t n = 1; n <= 3; n++) {
            /* Shorter strings are the prefixes: test each once. */
            if (n < 3 && (v & ((1u << (8 * (3 - n))) - 1)) != 0)
                continue;
            if (utf8_char_len((const char *)b, n) != ref_len(b, n))
                fail_msg("%zu octets %02x %02x %02x", n, b[0], b[1], b[2]);
        }
    }
    for (unsigned lead = 0xf0; lead <= 0xff; lead++)
        for (unsigned second = 0; second < 0x100; second++)
            for (size_t i = 0; i < sizeof(edge); i++)
                for (size_t j = 0; j < sizeof(edge); j++) {
                    b[0] = (unsigned char)lead;
                    b[1] = (unsigned char)second;
                    b[2] = edge[i];
                    b[3] = edge[j];
                    if (utf8_char_len((const char *)b, 4) != ref_len(b, 4))
                        fail_msg("%02x %02x %02x %02x", b[0], b[1], b[2], b[3]);
                }
}

static void test_utf8_valid_strings(void **state)
{
    (void)state;
    assert_true(utf8_valid(S("plain ASCII")));
    assert_true(utf8_valid(S("na\xc3\xafve \xe2\x82\xac \xf0\x9f\x93\xa7")));
    /* One bad character anywhere refuses the whole string. */
    assert_false(utf8_valid(S("\xffok")));
    assert_false(utf8_valid(S("ok\xc3\x28ok")));
    assert_false(utf8_valid(S("ok\xe2\x82")));       /* cut at the end */
    assert_false(utf8_valid(S("\xe2\x82\xac\x80"))); /* a stray continuation */
    /* Only the first n octets are looked at. */
    assert_true(utf8_valid("ok\xff", 2));
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_utf8_ascii),
        cmocka_unit_test(test_utf8_boundaries),
        cmocka_unit_test(test_utf8_overlong_refused),
        cmocka_unit_test(test_utf8_surrogates_refused),
        cmocka_unit_test(test_utf8_above_max_refused),
        cmocka_unit_test(test_utf8_truncated_refused),
        cmocka_unit_test(test_utf8_bad_continuation_refused),
        cmocka_unit_test(test_utf8_every_code_point_round_trips),
        cmocka_unit_test(test_utf8_matches_rfc3629),
        cmocka_unit_test(test_utf8_valid_strings),
    };

    return cmocka_run_group_tests(tests, NULL, NULL);
}
