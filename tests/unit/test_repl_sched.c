/*
 * repl_sched: the push schedule with an injected clock and generator:
 * jitter bounds, backoff doubling capped at the interval, the immediate
 * push after a save, and what a failing replica keeps.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include <stdbool.h>
#include <string.h>
#include <time.h>

#include "repl_sched.h"

static uint32_t rng_zero(void *arg)
{
    (void)arg;
    return 0;
}

/* xorshift32: reproducible, uniform enough for bounds and coverage. */
static uint32_t rng_xorshift(void *arg)
{
    uint32_t *s = arg;

    *s ^= *s << 13;
    *s ^= *s >> 17;
    *s ^= *s << 5;
    return *s;
}

/* The test's clock: a value the test moves. */
static int64_t fake_now(void *arg)
{
    return *(const int64_t *)arg;
}

static const struct repl_sched_params defaults = {
    .interval_ms = 600000,
    .jitter_ms = 600000,
    .retry_initial_ms = 1000,
    .push_on_commit = true,
};

static void test_repl_sched_clock_is_injectable(void **state)
{
    int64_t t = 1234567;
    struct repl_clock fake = {fake_now, &t};
    int64_t wall = (int64_t)time(NULL) * 1000, now;

    (void)state;
    assert_int_equal(repl_clock_now(&fake), 1234567);
    t += 250;
    assert_int_equal(repl_clock_now(&fake), 1234817);
    /* The default is the wall clock in milliseconds. */
    now = repl_clock_now(NULL);
    assert_true(now >= wall - 2000 && now <= wall + 2000);
    struct repl_clock none = {NULL, NULL};
    now = repl_clock_now(&none);
    assert_true(now >= wall - 2000 && now <= wall + 2000);
}

static void test_repl_sched_jitter_within_bounds(void **state)
{
    uint32_t seed = 0x12345678u;
    struct backoff_rng rng = {rng_xorshift, &seed};
    struct backoff_rng zero = {rng_zero, NULL};
    struct repl_sched_params p = defaults;
    bool low = false, high = false;

    (void)state;
    /* The 10-20 minutes operators know: every draw in [interval, interval + jitter]. */
    for (int i = 0; i < 20000; i++) {
        int64_t next = repl_sched_after_success(&p, 1000000, &rng);
        assert_true(next >= 1000000 + 600000);
        assert_true(next <= 1000000 + 600000 + 600000);
    }
    /* Both ends are reachable (a small jitter makes them likely). */
    p.jitter_ms = 3;
    for (int i = 0; i < 2000; i++) {
        int64_t next = repl_sched_after_success(&p, 0, &rng);
        assert_true(next >= 600000 && next <= 600003);
        low |= next == 600000;
        high |= next == 600003;
    }
    assert_true(low);
    assert_true(high);
    /* No jitter: exactly the interval. A zero draw: exactly the interval. */
    p.jitter_ms = 0;
    assert_int_equal(repl_sched_after_success(&p, 5, &rng), 600005);
    p.jitter_ms = 600000;
    assert_int_equal(repl_sched_after_success(&p, 5, &zero), 600005);
    /* Huge values saturate instead of wrapping. */
    p.interval_ms = UINT64_MAX / 2;
    p.jitter_ms = UINT64_MAX / 2;
    assert_true(repl_sched_after_success(&p, INT64_MAX - 10, &rng) == INT64_MAX);
}

static void test_repl_sched_success_schedules_next(void **state)
{
    int64_t t = 10000000;
    struct repl_clock clock = {fake_now, &t};
    uint32_t seed = 99;
    struct backoff_rng rng = {rng_xorshift, &seed};
    struct repl_sched s;

    (void)state;
    repl_sched_init(&s, repl_clock_now(&clock), 0);
    /* A replica seen for the first time is due at once. */
    assert_int_equal(repl_sched_delay(&s, repl_clock_now(&clock)), 0);
    assert_int_equal(s.last_success_ms, 0);
    repl_sched_success(&defaults, &s, repl_clock_now(&clock), &rng);
    assert_int_equal(s.last_success_ms, t);
    assert_int_equal(s.failures, 0);
    assert_true(s.next_ms >= t + 600000 && s.next_ms <= t + 1200000);
    /* Time passes on the injected clock: the delay shrinks, then is 0. */
    uint64_t d0 = repl_sched_delay(&s, repl_clock_now(&clock));
    t += 300000;
    assert_int_equal(repl_sched_delay(&s, repl_clock_now(&clock)), d0 - 300000);
    t = s.next_ms + 1;
    assert_int_equal(repl_sched_delay(&s, repl_clock_now(&clock)), 0);
}

static void test_repl_sched_backoff_doubles_capped_at_interval(void **state)
{
    struct backoff_rng zero = {rng_zero, NULL};
    uint32_t seed = 7;
    struct backoff_rng rng = {rng_xorshift, &seed};
    struct repl_sched_params p = defaults;
    struct repl_sched s;
    int64_t now = 50000;
    uint64_t prev = 0;

    (void)state;
    p.interval_ms = 60000;
    /* The lowest draw of "equal jitter" is half the base: it doubles from
     * retry_initial / 2 and stops at interval / 2. */
    for (uint32_t n = 1; n <= 40; n++) {
        uint64_t d = repl_sched_retry_delay(&p, n, &zero);
        uint64_t base = n <= 7 ? 1000ull << (n - 1) : 60000;
        if (base > 60000)
            base = 60000;
        assert_int_equal(d, base - base / 2);
        if (n > 1 && base < 60000)
            assert_int_equal(d, prev * 2);
        prev = d;
    }
    /* Every draw: within [base / 2, base], never above the interval. */
    for (uint32_t n = 1; n <= 64; n++)
        for (int i = 0; i < 200; i++) {
            uint64_t d = repl_sched_retry_delay(&p, n, &rng);
            uint64_t base = n <= 7 ? 1000ull << (n - 1) : 60000;
            if (base > 60000)
                base = 60000;
            assert_true(d >= base / 2 && d <= base);
            assert_true(d <= p.interval_ms);
        }
    /* Through the schedule: failures count up and push the next try out. */
    repl_sched_init(&s, now, 0);
    for (uint32_t n = 1; n <= 10; n++) {
        repl_sched_failure(&p, &s, now, &zero);
        assert_int_equal(s.failures, n);
        assert_int_equal(s.next_ms, now + (int64_t)repl_sched_retry_delay(&p, n, &zero));
        assert_true(s.next_ms - now <= (int64_t)p.interval_ms);
    }
    /* A success resets the count. */
    repl_sched_success(&p, &s, now, &zero);
    assert_int_equal(s.failures, 0);
    assert_int_equal(s.next_ms, now + 60000);
    /* retry_initial 0 is the default (1 s); an initial above the interval
     * is capped at it. */
    p.retry_initial_ms = 0;
    assert_int_equal(repl_sched_retry_delay(&p, 1, &zero), 500);
    p.retry_initial_ms = 120000;
    assert_int_equal(repl_sched_retry_delay(&p, 1, &zero), 30000);
    assert_true(repl_sched_retry_delay(&p, 1, &rng) <= 60000);
}

static void test_repl_sched_push_on_commit(void **state)
{
    int64_t t = 777000;
    struct repl_clock clock = {fake_now, &t};
    struct backoff_rng zero = {rng_zero, NULL};
    struct repl_sched_params p = defaults;
    struct repl_sched s;

    (void)state;
    repl_sched_init(&s, t, 0);
    repl_sched_success(&p, &s, repl_clock_now(&clock), &zero);
    assert_int_equal(repl_sched_delay(&s, repl_clock_now(&clock)), 600000);
    /* A save makes the push due at once. */
    t += 1000;
    assert_true(repl_sched_commit(&p, &s, repl_clock_now(&clock)));
    assert_int_equal(s.next_ms, t);
    assert_int_equal(repl_sched_delay(&s, repl_clock_now(&clock)), 0);
    /* Without push_on_commit a save waits for the schedule. */
    p.push_on_commit = false;
    repl_sched_success(&p, &s, repl_clock_now(&clock), &zero);
    assert_false(repl_sched_commit(&p, &s, repl_clock_now(&clock)));
    assert_int_equal(repl_sched_delay(&s, repl_clock_now(&clock)), 600000);
    /* A failing replica keeps its backoff. */
    p.push_on_commit = true;
    repl_sched_failure(&p, &s, repl_clock_now(&clock), &zero);
    repl_sched_failure(&p, &s, repl_clock_now(&clock), &zero);
    assert_false(repl_sched_commit(&p, &s, repl_clock_now(&clock)));
    assert_int_equal(repl_sched_delay(&s, repl_clock_now(&clock)), 1000);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_repl_sched_clock_is_injectable),
        cmocka_unit_test(test_repl_sched_jitter_within_bounds),
        cmocka_unit_test(test_repl_sched_success_schedules_next),
        cmocka_unit_test(test_repl_sched_backoff_doubles_capped_at_interval),
        cmocka_unit_test(test_repl_sched_push_on_commit),
    };

    return cmocka_run_group_tests(tests, NULL, NULL);
}
