/*
 * Crash safety of the store: a child process saves revision after revision
 * (and compacts, in some rounds) until the parent kills it with SIGKILL at
 * a random moment. After every kill the store must open, verify, and hold
 * only whole revisions: each record's password was saved together with its
 * hostname, so they must still belong together.
 *
 * The seed is printed; set SMTPSYNC_TEST_SEED to replay a run.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "error.h"
#include "settings.h"
#include "store.h"
#include "testutil.h"

#define ROUNDS        150
#define INSTANCES     3
#define KILL_MAX_MS   30
#define CHILD_SAVES   100000
#define COMPACT_EVERY 4 /* every 4th round compacts after each save */

/* One record of round `round`, save `i`: hostname and password carry the
 * same tag, so a torn record would show. */
static int child_put(struct store *st, int round, int i, int k)
{
    struct settings s;
    char pw[64];
    int rc;

    settings_init(&s);
    snprintf(s.instance, sizeof(s.instance), "site-%d", k);
    snprintf(s.hostname, sizeof(s.hostname), "r%d-i%d-k%d.example.com", round, i, k);
    s.port = 1000 + (uint32_t)((round * 31 + i) % 60000);
    snprintf(s.from_address, sizeof(s.from_address), "noreply@example.com");
    snprintf(s.test_address, sizeof(s.test_address), "ops@example.com");
    s.logon_required = true;
    s.allow_plaintext_auth = true; /* no SMTPS in these records */
    snprintf(s.user_id, sizeof(s.user_id), "mailer");
    snprintf(pw, sizeof(pw), "pw/r%d-i%d-k%d", round, i, k);
    rc = settings_set_password(&s, pw);
    if (rc == 0)
        rc = store_draft_put(st, &s);
    settings_clear(&s);
    return rc;
}

static void child_run(const char *dir, int round, bool compact)
{
    struct store_params p = {.dir = dir, .map_size = 64 * 1024, .create = true};
    struct store_commit c = {.actor = "local:crash", .comment = "crash test"};
    struct store *st;
    int rc;

    rc = store_open(&p, &st);
    if (rc != 0)
        _exit(10);
    for (int i = 0; i < CHILD_SAVES; i++) {
        /* Two or three instances change per revision. */
        int n = 2 + i % 2;
        for (int k = 0; k < n; k++)
            if (child_put(st, round, i, (i + k) % INSTANCES) != 0)
                _exit(11);
        rc = store_save(st, NULL, 0, &c, NULL, NULL);
        if (rc != 0)
            _exit(12);
        if (compact && store_compact(st, 2, NULL) != 0)
            _exit(13);
    }
    store_close(st);
    _exit(0);
}

/* Checks one record after a crash: it decodes, unseals, and its password
 * belongs to its hostname. */
static int check_record(const struct settings *s, void *arg)
{
    char want[80];
    const char *dot = strchr(s->hostname, '.');

    (*(int *)arg)++;
    assert_non_null(s->password);
    assert_non_null(dot);
    snprintf(want, sizeof(want), "pw/%.*s", (int)(dot - s->hostname), s->hostname);
    assert_string_equal(s->password, want);
    return 0;
}

static void test_store_crash_kill_during_save(void **state)
{
    const char *env = getenv("SMTPSYNC_TEST_SEED");
    unsigned seed =
        env != NULL ? (unsigned)strtoul(env, NULL, 10) : (unsigned)time(NULL) ^ (unsigned)getpid();
    struct store_params p = {0};
    struct store_info info, last = {0};
    char *dir = testutil_tmpdir();
    int compactions = 0, grew = 0;

    (void)state;
    printf("crash test seed %u (SMTPSYNC_TEST_SEED=%u to replay)\n", seed, seed);
    fflush(stdout);
    srand(seed);
    p.dir = dir;

    for (int round = 0; round < ROUNDS; round++) {
        bool compact = round % COMPACT_EVERY == COMPACT_EVERY - 1;
        struct store *st;
        int status, rc, n = 0;
        pid_t pid;

        pid = fork();
        assert_true(pid >= 0);
        if (pid == 0)
            child_run(dir, round, compact);
        usleep((useconds_t)(rand() % (KILL_MAX_MS + 1)) * 1000);
        assert_int_equal(kill(pid, SIGKILL), 0);
        assert_int_equal(waitpid(pid, &status, 0), pid);
        /* The child only ever stops by our signal; an exit is a failure. */
        if (WIFEXITED(status))
            fail_msg("round %d: child exited with %d", round, WEXITSTATUS(status));

        /* Without create: a store the first child did not finish making
         * (killed before its first transaction committed) does not exist
         * yet, and nothing had been saved. */
        rc = store_open(&p, &st);
        if (rc == ERROR_NOT_FOUND) {
            assert_int_equal(last.revision, 0);
            continue;
        }
        assert_int_equal(rc, 0);
        assert_int_equal(store_verify(st), 0);
        assert_int_equal(store_info(st, &info), 0);
        assert_true(info.revision >= last.revision);
        assert_true(info.base_revision >= last.base_revision);
        assert_true(info.base_revision <= info.revision);
        if (info.revision == last.revision)
            assert_memory_equal(info.hash, last.hash, STORE_HASH_LEN);
        assert_int_equal(store_each(st, 0, STORE_UNSEAL, check_record, &n), 0);
        assert_int_equal((size_t)n, info.ninstances);
        if (info.revision > 0)
            assert_true(n >= 2);
        compactions += info.base_revision > last.base_revision;
        grew += info.revision > last.revision;
        last = info;
        store_close(st);
    }
    printf("crash test: %d rounds, revision %llu, %d rounds saved, %d compacted\n", ROUNDS,
           (unsigned long long)last.revision, grew, compactions);
    /* Kills landed while saves (and compactions) were in progress. */
    assert_true(grew > ROUNDS / 4);
    assert_true(compactions > 0);
    testutil_rmtree(dir);
    free(dir);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_store_crash_kill_during_save),
    };

    return cmocka_run_group_tests(tests, NULL, NULL);
}
