#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "config.h"
#include "error.h"
#include "testutil.h"

#define MIN_NODE "[node]\nid = primary\ndata_dir = /var/lib/smtpsync\n"

/* Prints the problems, for a failing test's log. */
static void dump(const struct config_problems *p)
{
    for (size_t i = 0; i < p->count; i++)
        print_message("  problem: %s\n", p->lines[i]);
}

/* Expects exactly one problem, equal to `line`. */
static void expect_one(const char *text, const char *line)
{
    struct config_problems p;
    struct config c;

    assert_int_equal(testutil_parse_config(text, &c, &p), ERROR_INVALID);
    if (p.count != 1 || strcmp(p.lines[0], line) != 0) {
        print_message("input:\n%s\nexpected: %s\n", text, line);
        dump(&p);
        fail();
    }
    config_problems_free(&p);
    config_clear(&c);
}

static void expect_ok(const char *text, struct config *c)
{
    struct config_problems p;

    if (testutil_parse_config(text, c, &p) != 0) {
        print_message("input:\n%s\n", text);
        dump(&p);
        fail();
    }
    assert_int_equal(p.count, 0);
    config_problems_free(&p);
}

static void test_config_minimal_gets_defaults(void **state)
{
    struct config c;

    (void)state;
    expect_ok(MIN_NODE, &c);
    assert_string_equal(c.node.id, "primary");
    assert_string_equal(c.node.data_dir, "/var/lib/smtpsync");
    assert_string_equal(c.node.submit_socket, CONFIG_SUBMIT_SOCKET_DEFAULT);
    assert_string_equal(c.node.listen.text, "");
    assert_int_equal(c.node.listen.port, 0);
    assert_string_equal(c.node.metrics_listen.text, "");
    assert_string_equal(c.tls.ca, "");
    assert_string_equal(c.tls.cert, "");
    assert_string_equal(c.tls.key, "");
    assert_int_equal(c.sender.max_sessions, 4);
    assert_int_equal(c.sender.max_per_session, 100);
    assert_int_equal(c.sender.idle_ms, 2000);
    assert_int_equal(c.sender.retry_initial_ms, 30000);
    assert_int_equal(c.sender.retry_max_ms, 3600000);
    assert_int_equal(c.sender.tokencode_expiry_ms, 600000);
    assert_int_equal(c.sender.report_expiry_ms, 432000000ull);
    assert_string_equal(c.sender.helo, "");
    assert_int_equal(c.log.level, LOG_LEVEL_INFO);
    assert_int_equal(c.log.format, LOG_FORMAT_TEXT);
    config_clear(&c);
}

static void test_config_every_key(void **state)
{
    static const char text[] =
        "; smtpsync node configuration\n"
        "[node]\n"
        "id = site-b.eu_1                 ; this node's id = its certificate's SAN\n"
        "data_dir = /srv/smtpsync\n"
        "listen = 0.0.0.0:7443        ; mTLS: replication and admin\n"
        "submit_socket = /run/smtpsync/s.sock\n"
        "metrics_listen = [::1]:9465\n"
        "\n"
        "[tls]\n"
        "ca = /etc/smtpsync/ca.pem\n"
        "cert = /etc/smtpsync/node.pem\n"
        "key = /etc/smtpsync/node.key\n"
        "[sender]\n"
        "max_sessions = 256\n"
        "max_per_session = 1\n"
        "idle = 250ms\n"
        "retry_initial = 0.2\n"
        "retry_max = 2h\n"
        "tokencode_expiry = 5m\n"
        "report_expiry = 30d\n"
        "helo = mail.example.com\n"
        "[log]\n"
        "level = debug\n"
        "format = json\n";
    struct config c;

    (void)state;
    expect_ok(text, &c);
    assert_string_equal(c.node.id, "site-b.eu_1");
    assert_string_equal(c.node.data_dir, "/srv/smtpsync");
    assert_string_equal(c.node.listen.text, "0.0.0.0:7443");
    assert_string_equal(c.node.listen.host, "0.0.0.0");
    assert_int_equal(c.node.listen.port, 7443);
    assert_string_equal(c.node.submit_socket, "/run/smtpsync/s.sock");
    assert_string_equal(c.node.metrics_listen.host, "::1");
    assert_int_equal(c.node.metrics_listen.port, 9465);
    assert_string_equal(c.tls.ca, "/etc/smtpsync/ca.pem");
    assert_string_equal(c.tls.cert, "/etc/smtpsync/node.pem");
    assert_string_equal(c.tls.key, "/etc/smtpsync/node.key");
    assert_int_equal(c.sender.max_sessions, 256);
    assert_int_equal(c.sender.max_per_session, 1);
    assert_int_equal(c.sender.idle_ms, 250);
    assert_int_equal(c.sender.retry_initial_ms, 200);
    assert_int_equal(c.sender.retry_max_ms, 7200000);
    assert_int_equal(c.sender.tokencode_expiry_ms, 300000);
    assert_int_equal(c.sender.report_expiry_ms, 30ull * 86400000);
    assert_string_equal(c.sender.helo, "mail.example.com");
    assert_int_equal(c.log.level, LOG_LEVEL_DEBUG);
    assert_int_equal(c.log.format, LOG_FORMAT_JSON);
    config_clear(&c);
}

/* Every bad value of every key: the problem names the line, key and section. */
static void test_config_every_bad_value(void **state)
{
    static const struct {
        const char *section, *key, *value, *why;
    } cases[] = {
        {"node", "id", "-primary", "must be 1-64 of A-Z a-z 0-9 . _ -"},
        {"node", "id", "pri mary", "must be 1-64"},
        {"node", "id", "p/x", "must be 1-64"},
        {"node", "id", "a123456789012345678901234567890123456789012345678901234567890123456789",
         "must be 1-64"},
        {"node", "data_dir", "var/lib", "must be an absolute path"},
        {"node", "data_dir", "~/x", "must be an absolute path"},
        {"node", "submit_socket", "run/s.sock", "must be an absolute path"},
        {"node", "submit_socket",
         "/run/"
         "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa"
         "aaaaaaaaaaaaaaaaaaa.sock",
         "longer than 107 characters (the limit of a Unix socket path)"},
        {"node", "listen", "7443", "must be host:port"},
        {"node", "listen", "0.0.0.0", "must be host:port"},
        {"node", "listen", "0.0.0.0:0", "port must be 1-65535"},
        {"node", "listen", "0.0.0.0:65536", "port must be 1-65535"},
        {"node", "listen", "0.0.0.0:-1", "must be host:port"},
        {"node", "listen", ":7443", "bad host: empty"},
        {"node", "listen", "::1:7443", "an IPv6 address must be in brackets"},
        {"node", "listen", "[1.2.3.4]:7443", "is not an IPv6 address"},
        {"node", "listen", "bad_host!:7443", "bad host"},
        {"node", "metrics_listen", "localhost:x", "must be host:port"},
        {"tls", "ca", "ca.pem", "must be an absolute path"},
        {"tls", "cert", "./node.pem", "must be an absolute path"},
        {"tls", "key", "node.key", "must be an absolute path"},
        {"sender", "max_sessions", "0", "must be a whole number from 1 to 256"},
        {"sender", "max_sessions", "257", "from 1 to 256"},
        {"sender", "max_sessions", "-1", "from 1 to 256"},
        {"sender", "max_sessions", "4.5", "from 1 to 256"},
        {"sender", "max_sessions", "0x10", "from 1 to 256"},
        {"sender", "max_sessions", "99999999999999999999999", "from 1 to 256"},
        {"sender", "max_per_session", "0", "from 1 to 10000"},
        {"sender", "max_per_session", "10001", "from 1 to 10000"},
        {"sender", "idle", "0", "must be a duration from 1ms to 3600s"},
        {"sender", "idle", "2 s", "must be a duration"},
        {"sender", "idle", "2x", "must be a duration"},
        {"sender", "idle", "2h", "must be a duration from 1ms to 3600s"},
        {"sender", "retry_initial", "0.0001", "must be a duration"},
        {"sender", "retry_initial", "1.5ms", "must be a duration"},
        {"sender", "retry_initial", ".5", "must be a duration"},
        {"sender", "retry_initial", "5.", "must be a duration"},
        {"sender", "retry_initial", "2d", "must be a duration from 1ms to 86400s"},
        {"sender", "retry_max", "8d", "must be a duration from 1ms to 604800s"},
        {"sender", "tokencode_expiry", "999ms", "must be a duration from 1s to 86400s"},
        {"sender", "report_expiry", "31d", "must be a duration from 1s to 2592000s"},
        {"sender", "helo", "mail..example.com", "must be a DNS host name"},
        {"sender", "helo", "192.0.2.1", "must be a DNS host name"},
        {"log", "level", "verbose", "must be debug, info, warn or error"},
        {"log", "level", "INFO", "must be debug, info, warn or error"},
        {"log", "format", "xml", "must be text or json"},
    };
    char text[1024], line[1024], shown[64];

    (void)state;
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        struct config_problems p;
        struct config c;

        /* The bad key is on line 5 (after the required ones). */
        snprintf(text, sizeof(text), "[node]\nid = primary\ndata_dir = /d\n[%s]\n%s = %s\n",
                 cases[i].section, cases[i].key, cases[i].value);
        if (strcmp(cases[i].section, "node") == 0 && strcmp(cases[i].key, "id") == 0)
            snprintf(text, sizeof(text), "[node]\nname_is_id = 1\ndata_dir = /d\n[%s]\n%s = %s\n",
                     cases[i].section, cases[i].key, cases[i].value);
        if (strcmp(cases[i].section, "node") == 0 && strcmp(cases[i].key, "data_dir") == 0)
            snprintf(text, sizeof(text), "[node]\nid = primary\n\n[%s]\n%s = %s\n",
                     cases[i].section, cases[i].key, cases[i].value);
        assert_int_equal(testutil_parse_config(text, &c, &p), ERROR_INVALID);
        if (strlen(cases[i].value) > 48)
            snprintf(shown, sizeof(shown), "'%.45s...'", cases[i].value);
        else
            snprintf(shown, sizeof(shown), "'%s'", cases[i].value);
        snprintf(line, sizeof(line), "t.ini:5: invalid value %s for '%s' in [%s]: ", shown,
                 cases[i].key, cases[i].section);
        bool found = false;
        for (size_t j = 0; j < p.count; j++)
            if (strncmp(p.lines[j], line, strlen(line)) == 0 &&
                strstr(p.lines[j] + strlen(line), cases[i].why) != NULL)
                found = true;
        if (!found) {
            print_message("case %zu: expected \"%s...%s\"\n", i, line, cases[i].why);
            dump(&p);
            fail();
        }
        config_problems_free(&p);
    }
}

static void test_config_unknown_key(void **state)
{
    (void)state;
    expect_one(MIN_NODE "[sender]\nmax_session = 4\n",
               "t.ini:5: unknown key 'max_session' in [sender]");
    /* Keys are case-sensitive, like every name of the design. */
    expect_one(MIN_NODE "[log]\nLevel = info\n", "t.ini:5: unknown key 'Level' in [log]");
    expect_one("[node]\nid = primary\ndata_dir = /d\npassword = x\n",
               "t.ini:4: unknown key 'password' in [node]");
}

static void test_config_unknown_sections(void **state)
{
    /* An unknown section is an error, reported once on the header, with
     * nothing reported for its keys. */
    static const char *const headers[] = {
        "[replications]", "[replicas \"site-b\"]", "[admins]", "[ctl]", "[nodes]", "[metrics]",
    };
    char text[512], line[128];

    (void)state;
    for (size_t i = 0; i < sizeof(headers) / sizeof(headers[0]); i++) {
        snprintf(text, sizeof(text), MIN_NODE "%s\ninterval = 600\naddress = 10.0.0.2:7443\n",
                 headers[i]);
        snprintf(line, sizeof(line), "t.ini:4: unknown section %s", headers[i]);
        expect_one(text, line);
    }
    expect_one(MIN_NODE "[node \"x\"]\nid = y\n", "t.ini:4: section [node] takes no name");
    expect_one(MIN_NODE "[admin \"x\"]\noperators = y\n", "t.ini:4: section [admin] takes no name");
    expect_one(MIN_NODE "[replica]\naddress = 10.0.0.2:7443\n",
               "t.ini:4: section [replica] needs a name: [replica \"name\"]");
}

static void test_config_syntax_errors(void **state)
{
    (void)state;
    expect_one(MIN_NODE "[sender\nmax_sessions = 4\n",
               "t.ini:4: section header without a closing ']'");
    expect_one(MIN_NODE "[sender] extra\n", "t.ini:4: text after the section header");
    expect_one(MIN_NODE "[Sender]\n", "t.ini:4: malformed section header [Sender] (expected "
                                      "[name] or [name \"label\"])");
    expect_one(MIN_NODE "[replica site-b]\n", "t.ini:4: malformed section header [replica "
                                              "site-b] (expected [name] or [name \"label\"])");
    expect_one(MIN_NODE "[sender]\nmax_sessions 4\n",
               "t.ini:5: expected 'key = value' or '[section]'");
    expect_one(MIN_NODE "max_sessions: 4\n", "t.ini:4: expected 'key = value' or '[section]'");
    expect_one(MIN_NODE "= 4\n", "t.ini:4: expected 'key = value' or '[section]'");
    expect_one("id = primary\n" MIN_NODE, "t.ini:1: key 'id' outside any section");
    expect_one(MIN_NODE "[sender]\nhelo =\n", "t.ini:5: empty value for 'helo' in [sender]");
    expect_one(MIN_NODE "[sender]\nhelo = a\x01z\n", "t.ini:5: control character in the line");
    /* Section header with a comment after it is fine. */
    expect_one(MIN_NODE "[sender] ; the sender\nbogus = 1\n",
               "t.ini:5: unknown key 'bogus' in [sender]");
}

static void test_config_long_line(void **state)
{
    char text[1024], path[400];

    (void)state;
    memset(path, 'a', sizeof(path) - 1);
    path[0] = '/';
    path[sizeof(path) - 1] = '\0';
    snprintf(text, sizeof(text), "[node]\nid = primary\ndata_dir = /d\n[tls]\nca = %s\n", path);
    expect_one(text, "t.ini:5: line longer than 196 characters");
    /* A long line is one problem, not several fragments. */
    snprintf(text, sizeof(text),
             "[node]\nid = primary\ndata_dir = /d\n; %s\n[tls]\nca = %.180s\ncert = /c\nkey = /k\n",
             path, path);
    struct config c;
    expect_ok(text, &c);
    assert_int_equal(strlen(c.tls.ca), 180);
}

static void test_config_indented_line_is_not_a_continuation(void **state)
{
    struct config c;

    (void)state;
    expect_ok("[node]\n  id = primary\n\tdata_dir = /d\n    ; comment\n", &c);
    assert_string_equal(c.node.id, "primary");
    assert_string_equal(c.node.data_dir, "/d");
}

static void test_config_duplicate_key(void **state)
{
    (void)state;
    expect_one(MIN_NODE "id = other\n",
               "t.ini:4: duplicate key 'id' in [node] (first set on line 2)");
    /* A section may be opened again; its keys still count once. */
    expect_one("[node]\nid = primary\n[sender]\nidle = 1\n[node]\ndata_dir = /d\n[sender]\nidle = "
               "2\n",
               "t.ini:8: duplicate key 'idle' in [sender] (first set on line 4)");
}

static void test_config_missing_required(void **state)
{
    struct config_problems p;
    struct config c;

    (void)state;
    expect_one("[node]\nid = primary\n", "t.ini: missing required key 'data_dir' in [node]");
    expect_one("[node]\ndata_dir = /d\n", "t.ini: missing required key 'id' in [node]");
    assert_int_equal(testutil_parse_config("", &c, &p), ERROR_INVALID);
    assert_int_equal(p.count, 2);
    assert_string_equal(p.lines[0], "t.ini: missing required key 'id' in [node]");
    assert_string_equal(p.lines[1], "t.ini: missing required key 'data_dir' in [node]");
    config_problems_free(&p);
}

static void test_config_collects_every_problem(void **state)
{
    static const char text[] = "[node]\n"             /* 1 */
                               "id = -bad\n"          /* 2 */
                               "colour = blue\n"      /* 3 */
                               "[sender]\n"           /* 4 */
                               "max_sessions = 999\n" /* 5 */
                               "idle = forever\n"     /* 6 */
                               "max_sessions = 2\n"   /* 7 */
                               "[replications]\n"     /* 8 */
                               "interval = 600\n"     /* 9 */
                               "[log]\n"              /* 10 */
                               "format = yaml\n"      /* 11 */
                               "garbage\n";           /* 12 */
    static const char *const expect[] = {
        "t.ini:2: invalid value '-bad' for 'id' in [node]: ",
        "t.ini:3: unknown key 'colour' in [node]",
        "t.ini:5: invalid value '999' for 'max_sessions' in [sender]: ",
        "t.ini:6: invalid value 'forever' for 'idle' in [sender]: ",
        "t.ini:7: duplicate key 'max_sessions' in [sender] (first set on line 5)",
        "t.ini:8: unknown section [replications]",
        "t.ini:11: invalid value 'yaml' for 'format' in [log]: ",
        "t.ini:12: expected 'key = value' or '[section]'",
        "t.ini: missing required key 'data_dir' in [node]",
    };
    struct config_problems p;
    struct config c;

    (void)state;
    assert_int_equal(testutil_parse_config(text, &c, &p), ERROR_INVALID);
    if (p.count != sizeof(expect) / sizeof(expect[0]))
        dump(&p);
    assert_int_equal(p.count, sizeof(expect) / sizeof(expect[0]));
    for (size_t i = 0; i < p.count; i++)
        assert_true(strncmp(p.lines[i], expect[i], strlen(expect[i])) == 0);
    config_problems_free(&p);
}

static void test_config_line_numbers_crlf_bom_comments(void **state)
{
    (void)state;
    expect_one("\xef\xbb\xbf; comment\r\n"
               "# another\r\n"
               "\r\n"
               "[node]\r\n"
               "id = primary ; inline comment\r\n"
               "data_dir = /d\r\n"
               "\r\n"
               "[sender]\r\n"
               "idle = 1 ; x\r\n"
               "nope = 1\r\n",
               "t.ini:10: unknown key 'nope' in [sender]");
    /* The inline comment is not part of the value. */
    struct config c;
    expect_ok("[node]\nid = primary ; the id\ndata_dir = /d # not a comment?\n", &c);
    assert_string_equal(c.node.id, "primary");
    /* '#' after a value is text (inih's rule): the path keeps it. */
    assert_string_equal(c.node.data_dir, "/d # not a comment?");
}

static void test_config_retry_max_below_initial(void **state)
{
    (void)state;
    expect_one(MIN_NODE "[sender]\nretry_initial = 60\nretry_max = 30\n",
               "t.ini:6: retry_max (30s) is shorter than retry_initial (60s) in [sender]");
    expect_one(MIN_NODE "[sender]\nretry_initial = 2h\n",
               "t.ini:5: retry_max (3600s) is shorter than retry_initial (7200s) in [sender]");
}

static void test_config_parse_duration(void **state)
{
    static const struct {
        const char *text;
        uint64_t ms;
    } good[] = {
        {"0", 0},        {"2", 2000},     {"0.2", 200},      {"0.25", 250},         {"1.5", 1500},
        {"0.001", 1},    {"250ms", 250},  {"30s", 30000},    {"1.5s", 1500},        {"10m", 600000},
        {"0.5m", 30000}, {"1h", 3600000}, {"5d", 432000000}, {"432000", 432000000},
    };
    static const char *const bad[] = {
        "",
        "s",
        "ms",
        "-1",
        "+1",
        "1.",
        ".1",
        "1.2345",
        "1..2",
        "1e3",
        "1 s",
        " 1",
        "1s ",
        "1.5ms",
        "1S",
        "1sec",
        "0x10",
        "99999999999999999999",
        "18446744073709551615s",
    };
    uint64_t ms;

    (void)state;
    for (size_t i = 0; i < sizeof(good) / sizeof(good[0]); i++) {
        ms = 12345;
        assert_int_equal(config_parse_duration(good[i].text, &ms), 0);
        assert_int_equal(ms, good[i].ms);
    }
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        if (config_parse_duration(bad[i], &ms) != ERROR_INVALID) {
            print_message("accepted: '%s'\n", bad[i]);
            fail();
        }
    }
}

static void test_config_load_missing_file(void **state)
{
    struct config_problems p;
    struct config c;
    char *dir = testutil_tmpdir(), path[4200], expect[4300];

    (void)state;
    snprintf(path, sizeof(path), "%s/none.ini", dir);
    config_problems_init(&p);
    assert_int_equal(config_load(path, &c, &p), -ENOENT);
    assert_int_equal(p.count, 1);
    snprintf(expect, sizeof(expect), "%s: cannot read: %s", path, strerror(ENOENT));
    assert_string_equal(p.lines[0], expect);
    config_problems_free(&p);

    /* From a real file, problems name its path. */
    snprintf(path, sizeof(path), "%s/node.ini", dir);
    FILE *f = fopen(path, "w");
    assert_non_null(f);
    fputs(MIN_NODE "[sender]\nmax_sessions = 0\n", f);
    fclose(f);
    assert_int_equal(config_load(path, &c, &p), ERROR_INVALID);
    assert_int_equal(p.count, 1);
    snprintf(expect, sizeof(expect),
             "%s:5: invalid value '0' for 'max_sessions' in [sender]: ", path);
    assert_true(strncmp(p.lines[0], expect, strlen(expect)) == 0);
    config_problems_free(&p);
    testutil_rmtree(dir);
    free(dir);
}

struct change {
    char line[256];
    bool live;
};

struct changes {
    struct change items[16];
    size_t n;
};

static void on_change(const char *section, const char *key, const char *old_value,
                      const char *new_value, bool live, void *arg)
{
    struct changes *cs = arg;

    assert_true(cs->n < 16);
    snprintf(cs->items[cs->n].line, sizeof(cs->items[cs->n].line), "[%s] %s: %s -> %s", section,
             key, old_value, new_value);
    cs->items[cs->n++].live = live;
}

static void test_config_diff_and_format(void **state)
{
    struct config a, b;
    struct changes cs = {.n = 0};
    char buf[64];

    (void)state;
    expect_ok(MIN_NODE, &a);
    expect_ok("[node]\nid = primary\ndata_dir = /other\n[sender]\nmax_sessions = 8\nretry_initial "
              "= 0.5\n[log]\nlevel = debug\n",
              &b);
    config_diff(&a, &a, on_change, &cs);
    assert_int_equal(cs.n, 0);
    config_diff(&a, &b, on_change, &cs);
    assert_int_equal(cs.n, 4);
    assert_string_equal(cs.items[0].line, "[node] data_dir: /var/lib/smtpsync -> /other");
    assert_false(cs.items[0].live);
    assert_string_equal(cs.items[1].line, "[sender] max_sessions: 4 -> 8");
    assert_true(cs.items[1].live);
    assert_string_equal(cs.items[2].line, "[sender] retry_initial: 30s -> 500ms");
    assert_true(cs.items[2].live);
    assert_string_equal(cs.items[3].line, "[log] level: info -> debug");
    assert_true(cs.items[3].live);

    assert_int_equal(config_format(&b, "sender", "idle", buf, sizeof(buf)), 0);
    assert_string_equal(buf, "2s");
    assert_int_equal(config_format(&b, "node", "submit_socket", buf, sizeof(buf)), 0);
    assert_string_equal(buf, CONFIG_SUBMIT_SOCKET_DEFAULT);
    assert_int_equal(config_format(&b, "log", "format", buf, sizeof(buf)), 0);
    assert_string_equal(buf, "text");
    assert_int_equal(config_format(&b, "sender", "nope", buf, sizeof(buf)), ERROR_NOT_FOUND);
    assert_int_equal(config_format(&b, "replication", "interval", buf, sizeof(buf)), 0);
    assert_string_equal(buf, "600s");
    assert_int_equal(config_format(&b, "replica", "address", buf, sizeof(buf)), ERROR_NOT_FOUND);
    assert_int_equal(config_format(&b, "nope", "address", buf, sizeof(buf)), ERROR_NOT_FOUND);
    config_clear(&a);
    config_clear(&b);
}

static void test_config_problems_capped(void **state)
{
    struct config_problems p;
    struct config c;
    size_t len = 0, cap = 64 * (CONFIG_PROBLEMS_MAX + 50);
    char *text = malloc(cap);

    (void)state;
    assert_non_null(text);
    len += (size_t)snprintf(text, cap, "%s", MIN_NODE);
    for (int i = 0; i < CONFIG_PROBLEMS_MAX + 20; i++)
        len += (size_t)snprintf(text + len, cap - len, "bogus%d = 1\n", i);
    assert_int_equal(testutil_parse_config(text, &c, &p), ERROR_INVALID);
    assert_int_equal(p.count, CONFIG_PROBLEMS_MAX);
    assert_int_equal(p.dropped, 20);
    config_problems_free(&p);
    free(text);
}

#define TLS_KEYS "[tls]\nca = /etc/ca.pem\ncert = /etc/n.pem\nkey = /etc/n.key\n"

static void test_config_replication_defaults_and_keys(void **state)
{
    struct config c;

    (void)state;
    expect_ok(MIN_NODE, &c);
    assert_int_equal(c.replication.interval_ms, 600000);
    assert_int_equal(c.replication.jitter_ms, 600000);
    assert_true(c.replication.push_on_commit);
    assert_int_equal(c.replication.history_keep, 1000);
    assert_int_equal(c.replication.snapshot_concurrency, 4);
    assert_string_equal(c.replication.primary, "");
    assert_int_equal(c.nreplicas, 0);
    assert_int_equal(c.admin.super_admins.n, 0);
    assert_int_equal(c.admin.operators.n, 0);
    assert_string_equal(c.node.address.text, "");
    config_clear(&c);

    expect_ok(MIN_NODE "address = 10.0.0.1:7443\n[replication]\ninterval = 10m\njitter = 0\n"
                       "push_on_commit = no\nhistory_keep = 5\nsnapshot_concurrency = 16\n"
                       "primary = site-a\n",
              &c);
    assert_string_equal(c.node.address.host, "10.0.0.1");
    assert_int_equal(c.replication.interval_ms, 600000);
    assert_int_equal(c.replication.jitter_ms, 0);
    assert_false(c.replication.push_on_commit);
    assert_int_equal(c.replication.history_keep, 5);
    assert_int_equal(c.replication.snapshot_concurrency, 16);
    assert_string_equal(c.replication.primary, "site-a");
    config_clear(&c);

    /* Every spelling of a boolean. */
    static const char *const yes[] = {"yes", "on", "true", "1"}, *const no[] = {"no", "off",
                                                                                "false", "0"};
    char text[256];
    for (size_t i = 0; i < 4; i++) {
        snprintf(text, sizeof(text), MIN_NODE "[replication]\npush_on_commit = %s\n", yes[i]);
        expect_ok(text, &c);
        assert_true(c.replication.push_on_commit);
        config_clear(&c);
        snprintf(text, sizeof(text), MIN_NODE "[replication]\npush_on_commit = %s\n", no[i]);
        expect_ok(text, &c);
        assert_false(c.replication.push_on_commit);
        config_clear(&c);
    }
}

static void test_config_replication_bad_values(void **state)
{
    (void)state;
    expect_one(MIN_NODE "[replication]\ninterval = 0\n",
               "t.ini:5: invalid value '0' for 'interval' in [replication]: must be a duration "
               "from 1s to 2592000s (seconds, e.g. 30 or 0.5, or with a unit: 250ms, 30s, 10m, "
               "1h, 5d)");
    expect_one(MIN_NODE "[replication]\njitter = 31d\n",
               "t.ini:5: invalid value '31d' for 'jitter' in [replication]: must be a duration "
               "from 0s to 2592000s (seconds, e.g. 30 or 0.5, or with a unit: 250ms, 30s, 10m, "
               "1h, 5d)");
    expect_one(MIN_NODE "[replication]\npush_on_commit = maybe\n",
               "t.ini:5: invalid value 'maybe' for 'push_on_commit' in [replication]: must be "
               "yes or no (on/off, true/false, 1/0)");
    expect_one(MIN_NODE "[replication]\npush_on_commit = YES\n",
               "t.ini:5: invalid value 'YES' for 'push_on_commit' in [replication]: must be "
               "yes or no (on/off, true/false, 1/0)");
    expect_one(MIN_NODE "[replication]\nhistory_keep = 0\n",
               "t.ini:5: invalid value '0' for 'history_keep' in [replication]: must be a whole "
               "number from 1 to 100000000");
    expect_one(MIN_NODE "[replication]\nsnapshot_concurrency = 1025\n",
               "t.ini:5: invalid value '1025' for 'snapshot_concurrency' in [replication]: must "
               "be a whole number from 1 to 1024");
    expect_one(MIN_NODE "[replication]\nprimary = a b\n",
               "t.ini:5: invalid value 'a b' for 'primary' in [replication]: must be 1-64 of A-Z "
               "a-z 0-9 . _ -, starting with a letter or digit");
    expect_one(MIN_NODE "[replication]\nprimary =\n",
               "t.ini:5: empty value for 'primary' in [replication]");
    expect_one(MIN_NODE "address = *:7443\n",
               "t.ini:4: invalid value '*:7443' for 'address' in [node]: bad host: "
               "\"*\" is not allowed (only letters, digits, hyphens, dots)");
}

static void test_config_replica_sections(void **state)
{
    struct config c;

    (void)state;
    expect_ok(MIN_NODE "listen = 0.0.0.0:7443\n" TLS_KEYS "[replica \"site-b\"]\n"
                       "address = 10.0.0.2:7443\n[replica \"site-c\"] ; the second\n"
                       "address = [2001:db8::3]:7443\n[replica \"site-d\"]\n"
                       "address = site-d.example.net:7443\n",
              &c);
    assert_int_equal(c.nreplicas, 3);
    assert_string_equal(c.replicas[0].id, "site-b");
    assert_string_equal(c.replicas[0].address.text, "10.0.0.2:7443");
    assert_int_equal(c.replicas[0].address.port, 7443);
    assert_int_equal(c.replicas[0].line, 9);
    assert_string_equal(c.replicas[1].id, "site-c");
    assert_string_equal(c.replicas[1].address.host, "2001:db8::3");
    assert_string_equal(c.replicas[2].address.host, "site-d.example.net");
    assert_non_null(config_replica_find(&c, "site-c"));
    assert_null(config_replica_find(&c, "site-x"));
    config_clear(&c);

    expect_one(MIN_NODE TLS_KEYS "[replica \"site-b\"]\n",
               "t.ini:8: missing required key 'address' in [replica \"site-b\"]");
    expect_one(MIN_NODE TLS_KEYS "[replica \"site-b\"]\naddress = 10.0.0.2\n",
               "t.ini:9: invalid value '10.0.0.2' for 'address' in [replica \"site-b\"]: must "
               "be host:port (IPv6 in brackets: [::1]:7443)");
    expect_one(MIN_NODE TLS_KEYS "[replica \"site-b\"]\naddress = 10.0.0.2:1\naddress = "
                                 "10.0.0.2:2\n",
               "t.ini:10: duplicate key 'address' in [replica \"site-b\"] (first set on line 9)");
    expect_one(MIN_NODE TLS_KEYS "[replica \"site-b\"]\naddress = 10.0.0.2:1\n[replica "
                                 "\"site-b\"]\naddress = 10.0.0.2:2\n",
               "t.ini:11: duplicate key 'address' in [replica \"site-b\"] (first set on line 9)");
    expect_one(MIN_NODE TLS_KEYS "[replica \"site-b\"]\nport = 1\naddress = 10.0.0.2:1\n",
               "t.ini:9: unknown key 'port' in [replica \"site-b\"]");
    expect_one(MIN_NODE TLS_KEYS "[replica \"-b\"]\naddress = 10.0.0.2:1\n",
               "t.ini:8: invalid replica id '-b' in [replica \"-b\"]: must be 1-64 of A-Z a-z "
               "0-9 . _ -, starting with a letter or digit");
    expect_one(MIN_NODE TLS_KEYS "[replica \"primary\"]\naddress = 10.0.0.2:1\n",
               "t.ini:8: [replica \"primary\"] is this node ([node] id): a node does not "
               "replicate to itself");
    /* The pusher needs [tls]. */
    expect_ok(MIN_NODE, &c);
    config_clear(&c);
    struct config_problems p;
    assert_int_equal(
        testutil_parse_config(MIN_NODE "[replica \"site-b\"]\naddress = 10.0.0.2:7443\n", &c, &p),
        ERROR_INVALID);
    assert_int_equal(p.count, 3);
    assert_string_equal(p.lines[0],
                        "t.ini: missing required key 'ca' in [tls] (needed by the [replica] "
                        "sections)");
    assert_string_equal(p.lines[2],
                        "t.ini: missing required key 'key' in [tls] (needed by the [replica] "
                        "sections)");
    config_problems_free(&p);
    config_clear(&c);
}

static void test_config_tls_needed_together(void **state)
{
    struct config_problems p;
    struct config c;

    (void)state;
    expect_one(MIN_NODE "listen = 0.0.0.0:7443\n[tls]\nca = /ca\ncert = /c\n",
               "t.ini: missing required key 'key' in [tls] (needed by [node] listen)");
    expect_one(MIN_NODE "[tls]\ncert = /c\nkey = /k\n",
               "t.ini: missing required key 'ca' in [tls] (needed by the other [tls] keys)");
    assert_int_equal(testutil_parse_config(MIN_NODE "listen = 127.0.0.1:7443\n", &c, &p),
                     ERROR_INVALID);
    assert_int_equal(p.count, 3);
    config_problems_free(&p);
    config_clear(&c);
    expect_ok(MIN_NODE "listen = 127.0.0.1:7443\n" TLS_KEYS, &c);
    config_clear(&c);
}

static void test_config_admin_lists(void **state)
{
    struct config c;

    (void)state;
    expect_ok(MIN_NODE "[admin]\nsuper_admins = alice, ops-bot,carol@example.com\n"
                       "operators =monitor\n",
              &c);
    assert_int_equal(c.admin.super_admins.n, 3);
    assert_string_equal(c.admin.super_admins.ids[0], "alice");
    assert_string_equal(c.admin.super_admins.ids[1], "ops-bot");
    assert_string_equal(c.admin.super_admins.ids[2], "carol@example.com");
    assert_int_equal(c.admin.operators.n, 1);
    assert_string_equal(c.admin.operators.ids[0], "monitor");
    assert_true(config_ids_has(&c.admin.super_admins, "ops-bot"));
    assert_false(config_ids_has(&c.admin.super_admins, "monitor"));
    config_clear(&c);

    expect_one(MIN_NODE "[admin]\nsuper_admins = alice,\n",
               "t.ini:5: invalid value 'alice,' for 'super_admins' in [admin]: an empty id in "
               "the list (ids are separated by commas)");
    expect_one(MIN_NODE "[admin]\nsuper_admins = alice,,bob\n",
               "t.ini:5: invalid value 'alice,,bob' for 'super_admins' in [admin]: an empty id "
               "in the list (ids are separated by commas)");
    expect_one(MIN_NODE "[admin]\noperators = a b\n",
               "t.ini:5: invalid value 'a b' for 'operators' in [admin]: 'a b' is not a "
               "certificate id (1-253 printable characters, no blanks)");
    expect_one(MIN_NODE "[admin]\noperators = x, y, x\n",
               "t.ini:5: invalid value 'x, y, x' for 'operators' in [admin]: 'x' is listed "
               "twice");
    expect_one(MIN_NODE "[admin]\nsuper_admins = alice\noperators = bob, alice\n",
               "t.ini:6: 'alice' is both in super_admins and in operators in [admin]");
    expect_one(MIN_NODE "[admin]\nsuper_admins = primary\n",
               "t.ini:5: 'primary' in [admin] super_admins is this node's id ([node] id): an "
               "admin certificate needs an id of its own");
    expect_one(MIN_NODE TLS_KEYS "[replica \"site-b\"]\naddress = 10.0.0.2:7443\n[admin]\n"
                                 "operators = site-b\n",
               "t.ini:11: 'site-b' in [admin] operators is a replica's id ([replica]): an admin "
               "certificate needs an id of its own");
    expect_one(MIN_NODE "[replication]\nprimary = boss\n[admin]\nsuper_admins = boss\n",
               "t.ini:7: 'boss' in [admin] super_admins is the primary's id ([replication] "
               "primary): an admin certificate needs an id of its own");
}

static void test_config_copy_is_deep(void **state)
{
    struct config a, b;

    (void)state;
    expect_ok(MIN_NODE TLS_KEYS "[replica \"site-b\"]\naddress = 10.0.0.2:7443\n[admin]\n"
                                "super_admins = alice, bob\noperators = carol\n",
              &a);
    assert_int_equal(config_copy(&b, &a), 0);
    config_clear(&a);
    /* The copy stands alone (ASan would see a use after free). */
    assert_int_equal(b.nreplicas, 1);
    assert_string_equal(b.replicas[0].id, "site-b");
    assert_string_equal(b.admin.super_admins.ids[1], "bob");
    assert_string_equal(b.admin.operators.ids[0], "carol");
    assert_string_equal(b.tls.key, "/etc/n.key");
    config_clear(&b);
    /* Clearing twice is harmless. */
    config_clear(&b);
}

static void test_config_diff_replication_is_live(void **state)
{
    struct config a, b;
    struct changes cs = {.n = 0};

    (void)state;
    expect_ok(MIN_NODE TLS_KEYS "[replica \"site-b\"]\naddress = 10.0.0.2:7443\n"
                                "[replica \"site-c\"]\naddress = 10.0.0.3:7443\n",
              &a);
    expect_ok(MIN_NODE "[tls]\nca = /etc/ca2.pem\ncert = /etc/n.pem\nkey = /etc/n.key\n"
                       "[replication]\njitter = 0\n[admin]\noperators = mon\n"
                       "[replica \"site-c\"]\naddress = 10.0.0.33:7443\n"
                       "[replica \"site-d\"]\naddress = 10.0.0.4:7443\n",
              &b);
    config_diff(&a, &b, on_change, &cs);
    assert_int_equal(cs.n, 6);
    assert_string_equal(cs.items[0].line, "[tls] ca: /etc/ca.pem -> /etc/ca2.pem");
    assert_string_equal(cs.items[1].line, "[replication] jitter: 600s -> 0s");
    assert_string_equal(cs.items[2].line, "[admin] operators:  -> mon");
    assert_string_equal(cs.items[3].line, "[replica \"site-b\"] address: 10.0.0.2:7443 -> ");
    assert_string_equal(cs.items[4].line,
                        "[replica \"site-c\"] address: 10.0.0.3:7443 -> 10.0.0.33:7443");
    assert_string_equal(cs.items[5].line, "[replica \"site-d\"] address:  -> 10.0.0.4:7443");
    for (size_t i = 0; i < cs.n; i++)
        assert_true(cs.items[i].live);
    config_clear(&a);
    config_clear(&b);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_config_minimal_gets_defaults),
        cmocka_unit_test(test_config_every_key),
        cmocka_unit_test(test_config_every_bad_value),
        cmocka_unit_test(test_config_unknown_key),
        cmocka_unit_test(test_config_unknown_sections),
        cmocka_unit_test(test_config_syntax_errors),
        cmocka_unit_test(test_config_long_line),
        cmocka_unit_test(test_config_indented_line_is_not_a_continuation),
        cmocka_unit_test(test_config_duplicate_key),
        cmocka_unit_test(test_config_missing_required),
        cmocka_unit_test(test_config_collects_every_problem),
        cmocka_unit_test(test_config_line_numbers_crlf_bom_comments),
        cmocka_unit_test(test_config_retry_max_below_initial),
        cmocka_unit_test(test_config_parse_duration),
        cmocka_unit_test(test_config_load_missing_file),
        cmocka_unit_test(test_config_diff_and_format),
        cmocka_unit_test(test_config_problems_capped),
        cmocka_unit_test(test_config_replication_defaults_and_keys),
        cmocka_unit_test(test_config_replication_bad_values),
        cmocka_unit_test(test_config_replica_sections),
        cmocka_unit_test(test_config_tls_needed_together),
        cmocka_unit_test(test_config_admin_lists),
        cmocka_unit_test(test_config_copy_is_deep),
        cmocka_unit_test(test_config_diff_replication_is_live),
    };

    return cmocka_run_group_tests(tests, NULL, NULL);
}
