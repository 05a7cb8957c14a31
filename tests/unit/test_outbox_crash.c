/*
 * Crash safety of the outbox. A child process works on the outbox until
 * the parent kills it with SIGKILL at a random moment; after every kill
 * the outbox must open, verify, and hold everything that was acknowledged:
 *
 *   submit    the child submits (alone or in batches, some messages large
 *             enough to grow the map) and writes each acknowledged id to
 *             a pipe; every acknowledged id must be pending, and ids must
 *             keep growing across rounds even after the highest ones were
 *             delivered or dropped.
 *   deliver   the child takes and applies (mostly delivered, some
 *             deferred); it reports each id it takes before applying and
 *             each id whose delivery was committed. A message not pending
 *             afterwards must have been taken (so it was sent at least
 *             once); one whose delivery was committed must be gone.
 *
 * The seed is printed; set SMTPSYNC_TEST_SEED to replay a run.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "error.h"
#include "outbox.h"
#include "testutil.h"

#define SUBMIT_ROUNDS  100
#define DELIVER_ROUNDS 50
#define KILL_MAX_MS    25
#define NOW            ((int64_t)1700000000000)
#define MAX_IDS        200000
#define KEEP           40  /* newest messages kept pending between submit rounds */
#define TOPUP          100 /* messages submitted before each delivery round */

/* A set of ids as a bitmap indexed by id (ids are small and dense here). */
struct idset {
    uint8_t *bits;
};

static void idset_init(struct idset *s)
{
    s->bits = calloc(MAX_IDS / 8, 1);
    assert_non_null(s->bits);
}

static void idset_add(struct idset *s, uint64_t id)
{
    assert_true(id > 0 && id < MAX_IDS);
    s->bits[id / 8] |= (uint8_t)(1u << (id % 8));
}

static bool idset_has(const struct idset *s, uint64_t id)
{
    return id < MAX_IDS && (s->bits[id / 8] & (1u << (id % 8))) != 0;
}

static void idset_del(struct idset *s, uint64_t id)
{
    if (id < MAX_IDS)
        s->bits[id / 8] &= (uint8_t) ~(1u << (id % 8));
}

static unsigned test_seed(void)
{
    const char *env = getenv("SMTPSYNC_TEST_SEED");
    unsigned seed =
        env != NULL ? (unsigned)strtoul(env, NULL, 10) : (unsigned)time(NULL) ^ (unsigned)getpid();

    printf("crash test seed %u (SMTPSYNC_TEST_SEED=%u to replay)\n", seed, seed);
    fflush(stdout);
    return seed;
}

/* One 9-octet record per event: a tag and an id; pipe writes of at most
 * PIPE_BUF octets are atomic, so a kill never leaves half of one. */
static void report(int fd, char tag, uint64_t id)
{
    uint8_t rec[9];

    rec[0] = (uint8_t)tag;
    memcpy(rec + 1, &id, 8);
    if (write(fd, rec, sizeof(rec)) != (ssize_t)sizeof(rec))
        _exit(20);
}

static void child_submit(const char *dir, int fd, unsigned seed)
{
    struct outbox_params p = {.dir = dir, .map_size = 64 * 1024};
    static const char *const rcpts[] = {"a@example.com", "b@example.com"};
    struct outbox_new m[8];
    struct outbox *ob;
    char *big = malloc(300000);
    uint64_t ids[8];

    if (big == NULL || outbox_open(&p, &ob) != 0)
        _exit(10);
    memset(big, 'm', 300000);
    srand(seed);
    for (;;) {
        size_t n = rand() % 3 == 0 ? 1 + (size_t)rand() % 8 : 1;
        for (size_t i = 0; i < n; i++) {
            m[i] = (struct outbox_new){
                .priority = rand() % 2 ? OUTBOX_TOKENCODE : OUTBOX_REPORT,
                .rcpts = rcpts,
                .nrcpts = 1 + (size_t)rand() % 2,
                .message = big,
                .message_len =
                    rand() % 16 == 0 ? 100000 + (size_t)rand() % 200000 : 1 + (size_t)rand() % 2000,
            };
        }
        if (outbox_submit(ob, m, n, NOW, ids) != 0)
            _exit(11);
        for (size_t i = 0; i < n; i++)
            report(fd, 'S', ids[i]);
    }
}

static void child_deliver(const char *dir, int fd, unsigned seed)
{
    struct outbox_params p = {.dir = dir, .map_size = 64 * 1024};
    struct outbox_msg *out[16];
    struct outbox_result res[16];
    struct outbox *ob;
    int64_t now = NOW;

    if (outbox_open(&p, &ob) != 0)
        _exit(10);
    srand(seed);
    for (;;) {
        size_t n, max = 1 + (size_t)rand() % 16;
        if (outbox_take(ob, now, out, max, &n) != 0)
            _exit(12);
        if (n == 0)
            _exit(0); /* all delivered: the parent submits more */
        for (size_t i = 0; i < n; i++) {
            report(fd, 'T', out[i]->id);
            res[i] = (struct outbox_result){out[i]->id,
                                            rand() % 8 == 0 ? OUTBOX_DEFER : OUTBOX_DELIVERED, now,
                                            "451 4.3.0 try again"};
            outbox_msg_free(out[i]);
        }
        if (outbox_apply(ob, res, n, now) != 0)
            _exit(13);
        for (size_t i = 0; i < n; i++)
            if (res[i].outcome == OUTBOX_DELIVERED)
                report(fd, 'D', res[i].id);
    }
}

/* Forks a child that runs `fn`, kills it after a random delay (or lets
 * it finish if `may_finish`) and calls `on` for every event it reported. */
static void run_child(const char *dir, unsigned seed, bool may_finish,
                      void (*fn)(const char *, int, unsigned),
                      void (*on)(char tag, uint64_t id, void *arg), void *arg)
{
    uint8_t rec[9];
    int fds[2], status;
    pid_t pid;
    ssize_t r;

    assert_int_equal(pipe(fds), 0);
    pid = fork();
    assert_true(pid >= 0);
    if (pid == 0) {
        close(fds[0]);
        fn(dir, fds[1], seed);
        _exit(0);
    }
    close(fds[1]);
    usleep((useconds_t)(rand() % (KILL_MAX_MS + 1)) * 1000);
    /* A child that fills the pipe blocks until the kill: acknowledgements
     * stop, which is fine. */
    assert_int_equal(kill(pid, SIGKILL), 0);
    assert_int_equal(waitpid(pid, &status, 0), pid);
    if (WIFEXITED(status) && !(may_finish && WEXITSTATUS(status) == 0))
        fail_msg("child exited with %d", WEXITSTATUS(status));
    while ((r = read(fds[0], rec, sizeof(rec))) == (ssize_t)sizeof(rec)) {
        uint64_t id;
        memcpy(&id, rec + 1, 8);
        on((char)rec[0], id, arg);
    }
    assert_int_equal(r, 0);
    close(fds[0]);
}

struct submit_state {
    struct idset acked;
    uint64_t max_seen; /* the highest id ever acknowledged or found */
    uint64_t round_first, round_last;
    size_t round_acks;
};

static void on_submit(char tag, uint64_t id, void *arg)
{
    struct submit_state *s = arg;

    assert_int_equal(tag, 'S');
    /* Strictly increasing, also across rounds. */
    assert_true(id > s->max_seen);
    assert_true(s->round_acks == 0 || id > s->round_last);
    s->max_seen = id;
    s->round_last = id;
    s->round_acks++;
    idset_add(&s->acked, id);
}

struct pending_check {
    struct idset found;
    uint64_t max;
    size_t n;
};

static int collect_pending(const struct outbox_msg *m, bool dead, void *arg)
{
    struct pending_check *c = arg;

    assert_false(dead);
    assert_true(m->nrcpts >= 1);
    idset_add(&c->found, m->id);
    if (m->id > c->max)
        c->max = m->id;
    c->n++;
    return 0;
}

static void check_pending(struct outbox *ob, struct pending_check *c)
{
    struct outbox_depth d;

    idset_init(&c->found);
    c->max = 0;
    c->n = 0;
    assert_int_equal(outbox_verify(ob), 0);
    assert_int_equal(outbox_each(ob, false, collect_pending, c), 0);
    assert_int_equal(outbox_depth(ob, &d), 0);
    assert_int_equal(d.pending[OUTBOX_TOKENCODE] + d.pending[OUTBOX_REPORT], c->n);
    assert_int_equal(d.dead, 0);
}

static void test_outbox_crash_kill_during_submit(void **state)
{
    struct outbox_params p = {0};
    struct submit_state s = {0};
    char *dir = testutil_tmpdir();
    unsigned seed = test_seed();
    struct outbox_result *res = calloc(OUTBOX_LIST_LIMIT, sizeof(*res));
    struct outbox_msg **out = calloc(OUTBOX_LIST_LIMIT, sizeof(*out));
    size_t total_acks = 0, rounds_with_acks = 0;

    (void)state;
    assert_non_null(res);
    assert_non_null(out);
    srand(seed);
    p.dir = dir;
    idset_init(&s.acked);
    for (int round = 0; round < SUBMIT_ROUNDS; round++) {
        struct pending_check c;
        struct outbox *ob;
        size_t n;

        s.round_acks = 0;
        run_child(dir, seed + (unsigned)round, false, child_submit, on_submit, &s);
        total_acks += s.round_acks;
        rounds_with_acks += s.round_acks > 0;

        assert_int_equal(outbox_open(&p, &ob), 0);
        check_pending(ob, &c);
        for (uint64_t id = 1; id < MAX_IDS; id++)
            if (idset_has(&s.acked, id) && !idset_has(&c.found, id))
                fail_msg("round %d: acknowledged id %llu is missing", round,
                         (unsigned long long)id);
        /* Committed but not acknowledged before the kill: still an id
         * that must never be given again. */
        if (c.max > s.max_seen)
            s.max_seen = c.max;
        /* Remove the highest id (dropped) and all but the last few
         * (delivered, which also keeps the outbox small): the next child
         * must still go above them. */
        if (c.max != 0) {
            assert_int_equal(outbox_drop(ob, c.max), 0);
            idset_del(&s.acked, c.max);
        }
        assert_int_equal(outbox_take(ob, NOW, out, OUTBOX_LIST_LIMIT, &n), 0);
        for (size_t i = 0; i < n; i++) {
            bool keep = out[i]->id + KEEP > c.max;
            res[i] = (struct outbox_result){out[i]->id, keep ? OUTBOX_RELEASE : OUTBOX_DELIVERED, 0,
                                            NULL};
            if (!keep)
                idset_del(&s.acked, out[i]->id);
            outbox_msg_free(out[i]);
        }
        assert_int_equal(outbox_apply(ob, res, n, NOW), 0);
        assert_int_equal(outbox_verify(ob), 0);
        outbox_close(ob);
        free(c.found.bits);
    }
    printf("submit crash test: %d rounds, %zu acknowledged, %zu rounds with acks, last id %llu\n",
           SUBMIT_ROUNDS, total_acks, rounds_with_acks, (unsigned long long)s.max_seen);
    /* Kills landed while submissions were going on. */
    assert_true(rounds_with_acks > SUBMIT_ROUNDS / 4);
    free(res);
    free(out);
    free(s.acked.bits);
    testutil_rmtree(dir);
    free(dir);
}

struct deliver_state {
    struct idset taken, delivered;
    size_t ntaken, ndelivered;
};

static void on_deliver(char tag, uint64_t id, void *arg)
{
    struct deliver_state *s = arg;

    if (tag == 'T') {
        idset_add(&s->taken, id);
        s->ntaken++;
    } else {
        assert_int_equal(tag, 'D');
        assert_true(idset_has(&s->taken, id));
        idset_add(&s->delivered, id);
        s->ndelivered++;
    }
}

static void test_outbox_crash_kill_during_delivery(void **state)
{
    struct outbox_params p = {0};
    struct deliver_state s = {0};
    struct idset submitted;
    char *dir = testutil_tmpdir();
    unsigned seed = test_seed();
    static const char *const rcpts[] = {"a@example.com"};
    uint64_t ids[TOPUP];
    size_t total_delivered = 0;

    (void)state;
    srand(seed);
    p.dir = dir;
    idset_init(&submitted);
    for (int round = 0; round < DELIVER_ROUNDS; round++) {
        struct pending_check c;
        struct outbox_new m[TOPUP];
        struct outbox *ob;

        /* Top up the queue: acknowledged submissions. */
        assert_int_equal(outbox_open(&p, &ob), 0);
        for (int i = 0; i < TOPUP; i++)
            m[i] = (struct outbox_new){
                .priority = i % 3 == 0 ? OUTBOX_TOKENCODE : OUTBOX_REPORT,
                .rcpts = rcpts,
                .nrcpts = 1,
                .message = "Subject: x\r\n\r\nbody\r\n",
                .message_len = 20,
            };
        assert_int_equal(outbox_submit(ob, m, TOPUP, NOW, ids), 0);
        for (int i = 0; i < TOPUP; i++)
            idset_add(&submitted, ids[i]);
        outbox_close(ob);

        idset_init(&s.taken);
        idset_init(&s.delivered);
        s.ntaken = s.ndelivered = 0;
        run_child(dir, seed + (unsigned)round, true, child_deliver, on_deliver, &s);
        total_delivered += s.ndelivered;

        assert_int_equal(outbox_open(&p, &ob), 0);
        check_pending(ob, &c);
        for (uint64_t id = 1; id < MAX_IDS; id++) {
            bool pending = idset_has(&c.found, id);
            if (pending && !idset_has(&submitted, id))
                fail_msg("round %d: id %llu pending, never submitted", round,
                         (unsigned long long)id);
            if (!idset_has(&submitted, id))
                continue;
            /* A committed delivery is gone; anything gone was sent. */
            if (idset_has(&s.delivered, id) && pending)
                fail_msg("round %d: id %llu delivered yet pending", round, (unsigned long long)id);
            if (!pending && !idset_has(&s.taken, id))
                fail_msg("round %d: id %llu lost without being sent", round,
                         (unsigned long long)id);
            if (!pending)
                idset_del(&submitted, id);
        }
        outbox_close(ob);
        free(c.found.bits);
        free(s.taken.bits);
        free(s.delivered.bits);
    }
    printf("delivery crash test: %d rounds, %zu deliveries committed\n", DELIVER_ROUNDS,
           total_delivered);
    assert_true(total_delivered > 0);
    free(submitted.bits);
    testutil_rmtree(dir);
    free(dir);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_outbox_crash_kill_during_submit),
        cmocka_unit_test(test_outbox_crash_kill_during_delivery),
    };

    return cmocka_run_group_tests(tests, NULL, NULL);
}
