#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include <stdlib.h>
#include <string.h>

#include "error.h"
#include "frame.h"

/* A packed frame with a submission body: rcpt and a small message. */
static uint8_t *packed_submit(uint64_t id, const char *rcpt, size_t *len)
{
    Smtpsync__Frame f;
    Smtpsync__SubmitRequest s;
    char *rcpts[1] = {(char *)(uintptr_t)rcpt};
    uint8_t *buf;

    smtpsync__frame__init(&f);
    smtpsync__submit_request__init(&s);
    s.priority = SMTPSYNC__PRIORITY__PRIORITY_TOKENCODE;
    s.n_rcpt_to = 1;
    s.rcpt_to = rcpts;
    s.message.data = (uint8_t *)(uintptr_t) "Subject: hi\r\n\r\nbody\r\n";
    s.message.len = strlen((const char *)s.message.data);
    f.id = id;
    f.body_case = SMTPSYNC__FRAME__BODY_SUBMIT;
    f.submit = &s;
    assert_int_equal(frame_pack(&f, 0, &buf, len), 0);
    return buf;
}

static void be32(uint8_t *p, uint32_t v)
{
    p[0] = (uint8_t)(v >> 24);
    p[1] = (uint8_t)(v >> 16);
    p[2] = (uint8_t)(v >> 8);
    p[3] = (uint8_t)v;
}

static void expect_submit(Smtpsync__Frame *f, uint64_t id, const char *rcpt)
{
    assert_non_null(f);
    assert_int_equal(f->id, id);
    assert_int_equal(f->body_case, SMTPSYNC__FRAME__BODY_SUBMIT);
    assert_int_equal(f->submit->n_rcpt_to, 1);
    assert_string_equal(f->submit->rcpt_to[0], rcpt);
    smtpsync__frame__free_unpacked(f, NULL);
}

static void test_frame_roundtrip(void **state)
{
    struct frame_reader r;
    Smtpsync__Frame *f;
    size_t len;
    uint8_t *buf = packed_submit(7, "a@example.com", &len);

    (void)state;
    /* The header is the body's length, big-endian. */
    assert_int_equal(
        ((uint32_t)buf[0] << 24 | (uint32_t)buf[1] << 16 | (uint32_t)buf[2] << 8 | buf[3]),
        len - FRAME_HEADER_LEN);
    frame_reader_init(&r, 1024);
    assert_int_equal(frame_reader_feed(&r, buf, len), 0);
    assert_int_equal(frame_reader_next(&r, &f), 0);
    expect_submit(f, 7, "a@example.com");
    assert_int_equal(frame_reader_next(&r, &f), ERROR_EMPTY);
    assert_null(f);
    assert_int_equal(frame_reader_pending(&r), 0);
    frame_reader_free(&r);
    free(buf);
}

static void test_frame_split_byte_by_byte(void **state)
{
    struct frame_reader r;
    Smtpsync__Frame *f;
    size_t len;
    uint8_t *buf = packed_submit(9, "b@example.com", &len);

    (void)state;
    frame_reader_init(&r, 1024);
    for (size_t i = 0; i + 1 < len; i++) {
        assert_int_equal(frame_reader_feed(&r, buf + i, 1), 0);
        assert_int_equal(frame_reader_next(&r, &f), ERROR_EMPTY);
        assert_int_equal(frame_reader_pending(&r), i + 1);
    }
    assert_int_equal(frame_reader_feed(&r, buf + len - 1, 1), 0);
    assert_int_equal(frame_reader_next(&r, &f), 0);
    expect_submit(f, 9, "b@example.com");
    assert_int_equal(frame_reader_pending(&r), 0);
    frame_reader_free(&r);
    free(buf);
}

static void test_frame_two_in_one_feed(void **state)
{
    struct frame_reader r;
    Smtpsync__Frame *f;
    size_t l1, l2;
    uint8_t *a = packed_submit(1, "one@example.com", &l1);
    uint8_t *b = packed_submit(2, "two@example.com", &l2);
    uint8_t *both = malloc(l1 + l2 + 3);

    (void)state;
    assert_non_null(both);
    memcpy(both, a, l1);
    memcpy(both + l1, b, l2);
    /* And the first octets of a third frame's header. */
    memcpy(both + l1 + l2, b, 3);
    frame_reader_init(&r, 1024);
    assert_int_equal(frame_reader_feed(&r, both, l1 + l2 + 3), 0);
    assert_int_equal(frame_reader_next(&r, &f), 0);
    expect_submit(f, 1, "one@example.com");
    assert_int_equal(frame_reader_next(&r, &f), 0);
    expect_submit(f, 2, "two@example.com");
    assert_int_equal(frame_reader_next(&r, &f), ERROR_EMPTY);
    assert_int_equal(frame_reader_pending(&r), 3);
    frame_reader_free(&r);
    free(both);
    free(a);
    free(b);
}

static void test_frame_truncated_is_pending(void **state)
{
    struct frame_reader r;
    Smtpsync__Frame *f;
    size_t len;
    uint8_t *buf = packed_submit(3, "c@example.com", &len);

    (void)state;
    frame_reader_init(&r, 1024);
    assert_int_equal(frame_reader_feed(&r, buf, len - 5), 0);
    assert_int_equal(frame_reader_next(&r, &f), ERROR_EMPTY);
    /* The peer closing now leaves an incomplete frame: the caller sees it. */
    assert_int_equal(frame_reader_pending(&r), len - 5);
    frame_reader_free(&r);
    free(buf);
}

static void test_frame_zero_length_refused(void **state)
{
    struct frame_reader r;
    Smtpsync__Frame *f;
    uint8_t zero[4] = {0, 0, 0, 0};

    (void)state;
    frame_reader_init(&r, 1024);
    assert_int_equal(frame_reader_feed(&r, zero, 4), ERROR_DECODE);
    assert_int_equal(frame_reader_next(&r, &f), ERROR_DECODE);
    assert_null(f);
    frame_reader_free(&r);
}

static void test_frame_oversized_refused_before_buffering(void **state)
{
    struct frame_reader r;
    uint8_t *big = calloc(1, 64 * 1024);

    (void)state;
    assert_non_null(big);
    be32(big, 1025);
    frame_reader_init(&r, 1024);
    /* The header and 64 KiB of body in one feed: refused, and the body is
     * not taken in. */
    assert_int_equal(frame_reader_feed(&r, big, 64 * 1024), ERROR_TOO_BIG);
    assert_true(frame_reader_pending(&r) <= FRAME_HEADER_LEN);
    assert_true(r.cap <= 4096);
    frame_reader_free(&r);

    /* The largest length the header can say. */
    be32(big, UINT32_MAX);
    frame_reader_init(&r, 0);
    assert_int_equal(frame_reader_feed(&r, big, 2), 0);
    assert_int_equal(frame_reader_feed(&r, big + 2, 2), ERROR_TOO_BIG);
    frame_reader_free(&r);
    free(big);
}

static void test_frame_exactly_max_accepted(void **state)
{
    struct frame_reader r;
    Smtpsync__Frame *f;
    size_t len;
    uint8_t *buf = packed_submit(4, "d@example.com", &len);

    (void)state;
    frame_reader_init(&r, len - FRAME_HEADER_LEN);
    assert_int_equal(frame_reader_feed(&r, buf, len), 0);
    assert_int_equal(frame_reader_next(&r, &f), 0);
    expect_submit(f, 4, "d@example.com");
    frame_reader_free(&r);

    frame_reader_init(&r, len - FRAME_HEADER_LEN - 1);
    assert_int_equal(frame_reader_feed(&r, buf, len), ERROR_TOO_BIG);
    frame_reader_free(&r);
    free(buf);
}

static void test_frame_trailing_garbage_inside_length(void **state)
{
    struct frame_reader r;
    Smtpsync__Frame *f;
    size_t len;
    uint8_t *buf = packed_submit(5, "e@example.com", &len);
    uint8_t *bad = malloc(len + 2);

    (void)state;
    assert_non_null(bad);
    memcpy(bad, buf, len);
    /* Two octets that are no protobuf field, counted in the length. */
    bad[len] = 0xff;
    bad[len + 1] = 0xff;
    be32(bad, (uint32_t)(len - FRAME_HEADER_LEN + 2));
    frame_reader_init(&r, 1024);
    assert_int_equal(frame_reader_feed(&r, bad, len + 2), 0);
    assert_int_equal(frame_reader_next(&r, &f), ERROR_DECODE);
    assert_null(f);
    /* The stream stays refused. */
    assert_int_equal(frame_reader_next(&r, &f), ERROR_DECODE);
    frame_reader_free(&r);
    free(bad);
    free(buf);
}

static void test_frame_without_body_refused(void **state)
{
    struct frame_reader r;
    Smtpsync__Frame *f;
    /* A Frame with only id = 5 (field 1, varint): it decodes, but has no body. */
    uint8_t idonly[6] = {0, 0, 0, 2, 0x08, 0x05};

    (void)state;
    frame_reader_init(&r, 1024);
    assert_int_equal(frame_reader_feed(&r, idonly, sizeof(idonly)), 0);
    assert_int_equal(frame_reader_next(&r, &f), ERROR_DECODE);
    assert_null(f);
    frame_reader_free(&r);
}

static void test_frame_unknown_field_ignored(void **state)
{
    struct frame_reader r;
    Smtpsync__Frame *f;
    size_t len;
    uint8_t *buf = packed_submit(6, "f@example.com", &len);
    uint8_t *more = malloc(len + 3);

    (void)state;
    assert_non_null(more);
    memcpy(more, buf, len);
    /* Field 1000, varint 1: a newer peer's field; readers skip it. */
    more[len] = 0xc0;
    more[len + 1] = 0x3e;
    more[len + 2] = 0x01;
    be32(more, (uint32_t)(len - FRAME_HEADER_LEN + 3));
    frame_reader_init(&r, 1024);
    assert_int_equal(frame_reader_feed(&r, more, len + 3), 0);
    assert_int_equal(frame_reader_next(&r, &f), 0);
    expect_submit(f, 6, "f@example.com");
    frame_reader_free(&r);
    free(more);
    free(buf);
}

static void test_frame_pack_limits(void **state)
{
    Smtpsync__Frame f;
    Smtpsync__SubmitReply rep;
    uint8_t *buf = (uint8_t *)&f;
    size_t len = 1;

    (void)state;
    smtpsync__frame__init(&f);
    f.id = 1;
    /* No body: never sent. */
    assert_int_equal(frame_pack(&f, 0, &buf, &len), ERROR_INVALID);
    assert_null(buf);
    assert_int_equal(len, 0);

    smtpsync__submit_reply__init(&rep);
    rep.error = (char *)(uintptr_t) "a reason long enough to pass a small limit";
    f.body_case = SMTPSYNC__FRAME__BODY_SUBMIT_REPLY;
    f.submit_reply = &rep;
    assert_int_equal(frame_pack(&f, 8, &buf, &len), ERROR_TOO_BIG);
    assert_null(buf);
    assert_int_equal(frame_pack(&f, 0, &buf, &len), 0);
    assert_int_equal(len, FRAME_HEADER_LEN + smtpsync__frame__get_packed_size(&f));
    free(buf);
}

static void test_frame_random_body_refused(void **state)
{
    struct frame_reader r;
    Smtpsync__Frame *f;
    uint8_t junk[4 + 16] = {0, 0, 0, 16};

    (void)state;
    for (int round = 0; round < 200; round++) {
        srand((unsigned)round);
        for (size_t i = 4; i < sizeof(junk); i++)
            junk[i] = (uint8_t)rand();
        frame_reader_init(&r, 1024);
        assert_int_equal(frame_reader_feed(&r, junk, sizeof(junk)), 0);
        int err = frame_reader_next(&r, &f);
        /* Either refused, or a frame with a body: never a body-less one. */
        if (err == 0) {
            assert_int_not_equal(f->body_case, SMTPSYNC__FRAME__BODY__NOT_SET);
            smtpsync__frame__free_unpacked(f, NULL);
        } else {
            assert_int_equal(err, ERROR_DECODE);
        }
        frame_reader_free(&r);
    }
}

/* Unpacks `f` through a reader, as peer_dispatch does. */
static Smtpsync__Frame *through_reader(const Smtpsync__Frame *f)
{
    struct frame_reader r;
    Smtpsync__Frame *out = NULL;
    uint8_t *buf;
    size_t len;

    assert_int_equal(frame_pack(f, 0, &buf, &len), 0);
    frame_reader_init(&r, 0);
    assert_int_equal(frame_reader_feed(&r, buf, len), 0);
    assert_int_equal(frame_reader_next(&r, &out), 0);
    assert_int_equal(frame_reader_pending(&r), 0);
    frame_reader_free(&r);
    free(buf);
    return out;
}

static void assert_zeroed(const void *p, size_t n)
{
    const uint8_t *b = p;

    assert_true(n > 0);
    for (size_t i = 0; i < n; i++)
        assert_int_equal(b[i], 0);
}

#define WIPE_PW "hunter2-secret"

static void test_frame_wipe_secrets_zeroes_passwords(void **state)
{
    Smtpsync__Frame f, *got;
    Smtpsync__Settings set;
    Smtpsync__Secret sec;
    Smtpsync__SettingsSet ss;
    Smtpsync__RunTest rt;
    Smtpsync__Snapshot snap;
    Smtpsync__Delta delta;
    Smtpsync__Revision rev;
    Smtpsync__Change ch;
    Smtpsync__Settings *records[1] = {&set};
    Smtpsync__Revision *revs[1] = {&rev};
    Smtpsync__Change *chs[1] = {&ch};
    char confirm[] = WIPE_PW;

    (void)state;
    smtpsync__settings__init(&set);
    smtpsync__secret__init(&sec);
    sec.plaintext.data = (uint8_t *)(uintptr_t)WIPE_PW;
    sec.plaintext.len = strlen(WIPE_PW);
    set.password = &sec;

    /* SettingsSet: the password and its confirmation. */
    smtpsync__frame__init(&f);
    smtpsync__settings_set__init(&ss);
    ss.settings = &set;
    ss.password_confirm = confirm;
    f.body_case = SMTPSYNC__FRAME__BODY_SETTINGS_SET;
    f.settings_set = &ss;
    got = through_reader(&f);
    assert_memory_equal(got->settings_set->settings->password->plaintext.data, WIPE_PW,
                        strlen(WIPE_PW));
    frame_wipe_secrets(got);
    assert_zeroed(got->settings_set->settings->password->plaintext.data, strlen(WIPE_PW));
    assert_zeroed(got->settings_set->password_confirm, strlen(WIPE_PW));
    smtpsync__frame__free_unpacked(got, NULL);

    /* RunTest. */
    smtpsync__frame__init(&f);
    smtpsync__run_test__init(&rt);
    rt.settings = &set;
    f.body_case = SMTPSYNC__FRAME__BODY_RUN_TEST;
    f.run_test = &rt;
    got = through_reader(&f);
    frame_wipe_secrets(got);
    assert_zeroed(got->run_test->settings->password->plaintext.data, strlen(WIPE_PW));
    smtpsync__frame__free_unpacked(got, NULL);

    /* Snapshot. */
    smtpsync__frame__init(&f);
    smtpsync__snapshot__init(&snap);
    snap.n_records = 1;
    snap.records = records;
    f.body_case = SMTPSYNC__FRAME__BODY_SNAPSHOT;
    f.snapshot = &snap;
    got = through_reader(&f);
    frame_wipe_secrets(got);
    assert_zeroed(got->snapshot->records[0]->password->plaintext.data, strlen(WIPE_PW));
    smtpsync__frame__free_unpacked(got, NULL);

    /* Delta. */
    smtpsync__frame__init(&f);
    smtpsync__delta__init(&delta);
    smtpsync__revision__init(&rev);
    smtpsync__change__init(&ch);
    ch.settings = &set;
    rev.n_changes = 1;
    rev.changes = chs;
    delta.n_revisions = 1;
    delta.revisions = revs;
    f.body_case = SMTPSYNC__FRAME__BODY_DELTA;
    f.delta = &delta;
    got = through_reader(&f);
    frame_wipe_secrets(got);
    assert_zeroed(got->delta->revisions[0]->changes[0]->settings->password->plaintext.data,
                  strlen(WIPE_PW));
    smtpsync__frame__free_unpacked(got, NULL);

    frame_wipe_secrets(NULL);
}

/* The reader's buffer keeps no copy of a frame it has handed on. */
static void test_frame_reader_wipes_consumed_frame(void **state)
{
    Smtpsync__Frame f, *got;
    Smtpsync__Settings set;
    Smtpsync__Secret sec;
    Smtpsync__RunTest rt;
    struct frame_reader r;
    uint8_t *buf;
    size_t len;

    (void)state;
    smtpsync__settings__init(&set);
    smtpsync__secret__init(&sec);
    sec.plaintext.data = (uint8_t *)(uintptr_t)WIPE_PW;
    sec.plaintext.len = strlen(WIPE_PW);
    set.password = &sec;
    smtpsync__frame__init(&f);
    smtpsync__run_test__init(&rt);
    rt.settings = &set;
    f.body_case = SMTPSYNC__FRAME__BODY_RUN_TEST;
    f.run_test = &rt;
    assert_int_equal(frame_pack(&f, 0, &buf, &len), 0);

    frame_reader_init(&r, 0);
    assert_int_equal(frame_reader_feed(&r, buf, len), 0);
    assert_int_equal(frame_reader_next(&r, &got), 0);
    assert_int_equal(frame_reader_pending(&r), 0);
    assert_non_null(r.buf);
    assert_zeroed(r.buf, len);
    frame_wipe_secrets(got);
    smtpsync__frame__free_unpacked(got, NULL);
    frame_reader_free(&r);
    free(buf);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_frame_roundtrip),
        cmocka_unit_test(test_frame_split_byte_by_byte),
        cmocka_unit_test(test_frame_two_in_one_feed),
        cmocka_unit_test(test_frame_truncated_is_pending),
        cmocka_unit_test(test_frame_zero_length_refused),
        cmocka_unit_test(test_frame_oversized_refused_before_buffering),
        cmocka_unit_test(test_frame_exactly_max_accepted),
        cmocka_unit_test(test_frame_trailing_garbage_inside_length),
        cmocka_unit_test(test_frame_without_body_refused),
        cmocka_unit_test(test_frame_unknown_field_ignored),
        cmocka_unit_test(test_frame_pack_limits),
        cmocka_unit_test(test_frame_random_body_refused),
        cmocka_unit_test(test_frame_wipe_secrets_zeroes_passwords),
        cmocka_unit_test(test_frame_reader_wipes_consumed_frame),
    };

    return cmocka_run_group_tests(tests, NULL, NULL);
}
