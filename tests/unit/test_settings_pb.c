#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include <stdlib.h>
#include <string.h>

#include "error.h"
#include "settings_pb.h"
#include "testutil.h"

static void fill(struct settings *s)
{
    settings_init(s);
    strcpy(s->instance, "site-b");
    strcpy(s->hostname, "mail.test");
    s->port = 465;
    strcpy(s->from_address, "am@example.com");
    s->logon_required = true;
    strcpy(s->user_id, "am-mailer");
    assert_int_equal(settings_set_password(s, "Hunter2-secret"), 0);
    s->smtps_enabled = true;
    s->trust_certificate = strdup("-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n");
    s->tls_mode = SETTINGS_TLS_STRICT;
    strcpy(s->test_address, "ops@example.com");
    s->timeouts.connect = 30;
    s->timeouts.data_term = 600;
    strcpy(s->relays[0].hostname, "backup.test");
    s->relays[0].port = 587;
    strcpy(s->relays[1].hostname, "::1");
    s->nrelays = 2;
}

/* Packs a view into a malloc'd buffer. */
static uint8_t *pack(const struct settings *s, enum settings_pb_secret mode, size_t *len)
{
    struct settings_pb v;
    uint8_t *buf;

    assert_int_equal(settings_pb_view(&v, s, mode), 0);
    *len = smtpsync__settings__get_packed_size(&v.msg);
    buf = malloc(*len + 1);
    assert_non_null(buf);
    assert_int_equal(smtpsync__settings__pack(&v.msg, buf), *len);
    return buf;
}

static void assert_same(const struct settings *a, const struct settings *b)
{
    for (int f = 0; f < SETTINGS_F_COUNT; f++)
        assert_false(settings_field_differs(a, b, (enum settings_field)f));
    assert_memory_equal(&a->timeouts, &b->timeouts, sizeof(a->timeouts));
    assert_int_equal(a->nrelays, b->nrelays);
}

static void test_settings_pb_round_trip_plain(void **state)
{
    struct settings a, b;
    struct settings_problems p = {0};
    Smtpsync__Settings *m;
    uint8_t *buf;
    size_t len;

    (void)state;
    fill(&a);
    settings_init(&b);
    buf = pack(&a, SETTINGS_PB_SECRET_PLAIN, &len);
    assert_true(testutil_memmem(buf, len, "Hunter2-secret", 14));
    m = smtpsync__settings__unpack(NULL, len, buf);
    assert_non_null(m);
    assert_int_equal(settings_pb_decode(&b, m, &p), 0);
    assert_int_equal(p.count, 0);
    assert_same(&a, &b);
    assert_string_equal(b.password, "Hunter2-secret");
    assert_string_equal(b.relays[1].hostname, "::1");
    smtpsync__settings__free_unpacked(m, NULL);
    free(buf);
    settings_clear(&a);
    settings_clear(&b);
}

static void test_settings_pb_canonical_has_no_secret(void **state)
{
    struct settings a, b;
    struct settings_problems p = {0};
    Smtpsync__Settings *m;
    uint8_t *buf, *again;
    size_t len, len2;

    (void)state;
    fill(&a);
    settings_init(&b);
    buf = pack(&a, SETTINGS_PB_SECRET_ID, &len);
    assert_false(testutil_memmem(buf, len, "Hunter2", 7));
    assert_true(testutil_memmem(buf, len, a.password_id, SETTINGS_SECRET_ID_LEN));
    /* Packing is deterministic: the chain hash depends on it. */
    again = pack(&a, SETTINGS_PB_SECRET_ID, &len2);
    assert_int_equal(len, len2);
    assert_memory_equal(buf, again, len);
    m = smtpsync__settings__unpack(NULL, len, buf);
    assert_non_null(m);
    assert_int_equal(settings_pb_decode(&b, m, &p), 0);
    assert_true(b.password_set);
    assert_null(b.password);
    assert_same(&a, &b);
    smtpsync__settings__free_unpacked(m, NULL);
    free(buf);
    free(again);
    settings_clear(&a);
    settings_clear(&b);
}

static void test_settings_pb_plain_needs_loaded_password(void **state)
{
    struct settings a;
    struct settings_pb v;

    (void)state;
    fill(&a);
    free(a.password);
    a.password = NULL;
    assert_int_equal(settings_pb_view(&v, &a, SETTINGS_PB_SECRET_PLAIN), ERROR_INVALID);
    assert_int_equal(settings_pb_view(&v, &a, SETTINGS_PB_SECRET_ID), 0);
    settings_clear(&a);
}

static void test_settings_pb_empty_record_encodes_small(void **state)
{
    struct settings a;
    size_t len;
    uint8_t *buf;

    (void)state;
    settings_init(&a);
    strcpy(a.instance, "x");
    buf = pack(&a, SETTINGS_PB_SECRET_ID, &len);
    /* Only the instance field: tag, length, one byte. */
    assert_int_equal(len, 3);
    free(buf);
    settings_clear(&a);
}

/* A hostile or corrupt message must not overflow a field nor half-decode. */
static void test_settings_pb_refuses_oversized_fields(void **state)
{
    Smtpsync__Settings m;
    Smtpsync__Secret sec;
    Smtpsync__Relay relay;
    Smtpsync__Relay *relays[SETTINGS_RELAYS_MAX + 1];
    struct settings_problems p = {0};
    struct settings out;
    char *longhost = malloc(5000), *hugepem = malloc(SETTINGS_PEM_MAX + 2);
    uint8_t badid[3] = {1, 2, 3};

    (void)state;
    smtpsync__settings__init(&m);
    smtpsync__secret__init(&sec);
    smtpsync__relay__init(&relay);
    memset(longhost, 'a', 4999);
    longhost[4999] = '\0';
    memset(hugepem, 'P', SETTINGS_PEM_MAX + 1);
    hugepem[SETTINGS_PEM_MAX + 1] = '\0';
    m.instance = "site-b";
    m.hostname = longhost;
    m.from_address = longhost;
    m.trust_certificate = hugepem;
    m.tls_mode = (Smtpsync__TlsMode)42;
    sec.id.data = badid;
    sec.id.len = sizeof(badid);
    m.password = &sec;
    relay.hostname = "r.test";
    for (int i = 0; i <= SETTINGS_RELAYS_MAX; i++)
        relays[i] = &relay;
    m.fallback_relays = relays;
    m.n_fallback_relays = SETTINGS_RELAYS_MAX + 1;

    settings_init(&out);
    assert_int_equal(settings_pb_decode(&out, &m, &p), ERROR_DECODE);
    assert_int_equal(p.count, 6);
    const char *want[] = {"hostname",        "from_address", "tls_mode",
                          "fallback_relays", "password",     "trust_certificate"};
    for (size_t i = 0; i < 6; i++) {
        int found = 0;
        for (size_t j = 0; j < p.count; j++)
            found |= strcmp(p.items[j].field, want[i]) == 0;
        if (!found)
            fail_msg("no problem for %s", want[i]);
    }
    /* Nothing half-decoded is left behind. */
    assert_string_equal(out.instance, "");
    assert_null(out.trust_certificate);
    assert_false(out.password_set);
    settings_clear(&out);
    free(longhost);
    free(hugepem);
}

static void test_settings_pb_refuses_nul_in_password(void **state)
{
    Smtpsync__Settings m;
    Smtpsync__Secret sec;
    struct settings_problems p = {0};
    struct settings out;
    uint8_t id[SETTINGS_SECRET_ID_LEN] = {7};
    uint8_t pw[4] = {'a', 0, 'b', 'c'};

    (void)state;
    smtpsync__settings__init(&m);
    smtpsync__secret__init(&sec);
    m.instance = "x";
    sec.id.data = id;
    sec.id.len = sizeof(id);
    sec.plaintext.data = pw;
    sec.plaintext.len = sizeof(pw);
    m.password = &sec;
    settings_init(&out);
    assert_int_equal(settings_pb_decode(&out, &m, &p), ERROR_DECODE);
    assert_string_equal(p.items[0].field, "password");
    assert_null(out.password);
    settings_clear(&out);
}

static bool has_field(const struct settings_problems *p, const char *field)
{
    for (size_t i = 0; i < p->count; i++)
        if (strcmp(p->items[i].field, field) == 0)
            return true;
    return false;
}

/* What the setters refuse, decoding refuses too: control characters in
 * every string, a bad instance id, out-of-range ports and timeouts. */
static void test_settings_pb_refuses_what_setters_refuse(void **state)
{
    Smtpsync__Settings m;
    Smtpsync__Timeouts t;
    Smtpsync__Relay r1, r2, *relays[2] = {&r1, &r2};
    struct settings_problems p = {0};
    struct settings out;
    static const char *const want[] = {
        "instance",        "hostname",          "port",
        "from_address",    "user_id",           "test_address",
        "timeout_connect", "timeout_data_term", "fallback_relays",
    };

    (void)state;
    smtpsync__settings__init(&m);
    smtpsync__timeouts__init(&t);
    smtpsync__relay__init(&r1);
    smtpsync__relay__init(&r2);
    m.instance = "-not-an-id";
    m.hostname = "mail.test\r\nRCPT TO:<x@y>";
    m.port = 70000;
    m.from_address = "a@b.test\n";
    m.user_id = "user\tname";
    m.test_address = "\x1b[31mops@example.com";
    t.connect = SETTINGS_TIMEOUT_MAX + 1;
    t.data_term = 0xffffffffu;
    t.greeting = SETTINGS_TIMEOUT_MAX; /* at the limit: fine */
    m.timeouts = &t;
    r1.hostname = "relay.test\n";
    r2.hostname = "relay2.test";
    r2.port = 65536;
    m.fallback_relays = relays;
    m.n_fallback_relays = 2;

    settings_init(&out);
    assert_int_equal(settings_pb_decode(&out, &m, &p), ERROR_DECODE);
    for (size_t i = 0; i < sizeof(want) / sizeof(want[0]); i++)
        if (!has_field(&p, want[i]))
            fail_msg("no problem for %s", want[i]);
    /* Each relay is reported, the port one by its entry number. */
    {
        int relay_problems = 0;
        for (size_t i = 0; i < p.count; i++)
            relay_problems += strcmp(p.items[i].field, "fallback_relays") == 0;
        assert_int_equal(relay_problems, 2);
    }
    assert_false(has_field(&p, "timeout_greeting"));
    assert_string_equal(out.instance, "");
    assert_int_equal(out.nrelays, 0);

    /* A record must name its instance. */
    smtpsync__settings__init(&m);
    memset(&p, 0, sizeof(p));
    assert_int_equal(settings_pb_decode(&out, &m, &p), ERROR_DECODE);
    assert_int_equal(p.count, 1);
    assert_string_equal(p.items[0].field, "instance");
    settings_clear(&out);
}

/* A view is built only of a record it can represent faithfully. */
static void test_settings_pb_view_refuses_unrepresentable(void **state)
{
    struct settings a;
    struct settings_pb v;

    (void)state;
    fill(&a);
    assert_int_equal(settings_pb_view(&v, &a, SETTINGS_PB_SECRET_ID), 0);

    a.nrelays = SETTINGS_RELAYS_MAX + 1;
    assert_int_equal(settings_pb_view(&v, &a, SETTINGS_PB_SECRET_ID), ERROR_INVALID);
    a.nrelays = 2;

    a.tls_mode = (enum settings_tls_mode)7;
    assert_int_equal(settings_pb_view(&v, &a, SETTINGS_PB_SECRET_ID), ERROR_INVALID);
    a.tls_mode = SETTINGS_TLS_STRICT;

    /* Unterminated fixed strings: protobuf-c would read past the array. */
    memset(a.hostname, 'h', sizeof(a.hostname));
    assert_int_equal(settings_pb_view(&v, &a, SETTINGS_PB_SECRET_ID), ERROR_INVALID);
    strcpy(a.hostname, "mail.test");
    memset(a.instance, 'i', sizeof(a.instance));
    assert_int_equal(settings_pb_view(&v, &a, SETTINGS_PB_SECRET_ID), ERROR_INVALID);
    strcpy(a.instance, "site-b");
    memset(a.user_id, 'u', sizeof(a.user_id));
    assert_int_equal(settings_pb_view(&v, &a, SETTINGS_PB_SECRET_ID), ERROR_INVALID);
    strcpy(a.user_id, "am-mailer");
    memset(a.from_address, 'f', sizeof(a.from_address));
    assert_int_equal(settings_pb_view(&v, &a, SETTINGS_PB_SECRET_ID), ERROR_INVALID);
    strcpy(a.from_address, "am@example.com");
    memset(a.test_address, 't', sizeof(a.test_address));
    assert_int_equal(settings_pb_view(&v, &a, SETTINGS_PB_SECRET_ID), ERROR_INVALID);
    strcpy(a.test_address, "ops@example.com");
    memset(a.relays[1].hostname, 'r', sizeof(a.relays[1].hostname));
    assert_int_equal(settings_pb_view(&v, &a, SETTINGS_PB_SECRET_ID), ERROR_INVALID);
    /* Relays beyond nrelays are not part of the record. */
    a.nrelays = 1;
    memset(a.relays[2].hostname, 'r', sizeof(a.relays[2].hostname));
    assert_int_equal(settings_pb_view(&v, &a, SETTINGS_PB_SECRET_ID), 0);
    settings_clear(&a);
}

/* Truncated and garbage bytes never decode into a record. */
static void test_settings_pb_garbage_bytes(void **state)
{
    struct settings a;
    uint8_t *buf;
    size_t len;

    (void)state;
    fill(&a);
    buf = pack(&a, SETTINGS_PB_SECRET_PLAIN, &len);
    for (size_t n = 1; n < len; n += 7) {
        Smtpsync__Settings *m = smtpsync__settings__unpack(NULL, n, buf);
        /* protobuf-c may accept a prefix that ends on a field boundary;
         * then the record must still decode within limits. */
        if (m != NULL) {
            struct settings b;
            struct settings_problems p = {0};
            settings_init(&b);
            int rc = settings_pb_decode(&b, m, &p);
            assert_true(rc == 0 || rc == ERROR_DECODE);
            settings_clear(&b);
            smtpsync__settings__free_unpacked(m, NULL);
        }
    }
    memset(buf, 0xff, len);
    assert_null(smtpsync__settings__unpack(NULL, len, buf));
    free(buf);
    settings_clear(&a);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_settings_pb_round_trip_plain),
        cmocka_unit_test(test_settings_pb_canonical_has_no_secret),
        cmocka_unit_test(test_settings_pb_plain_needs_loaded_password),
        cmocka_unit_test(test_settings_pb_empty_record_encodes_small),
        cmocka_unit_test(test_settings_pb_refuses_oversized_fields),
        cmocka_unit_test(test_settings_pb_refuses_nul_in_password),
        cmocka_unit_test(test_settings_pb_refuses_what_setters_refuse),
        cmocka_unit_test(test_settings_pb_view_refuses_unrepresentable),
        cmocka_unit_test(test_settings_pb_garbage_bytes),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
