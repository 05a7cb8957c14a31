/*
 * backoff: exact bounds of the delays with injected generators (always
 * 0, always UINT32_MAX, seeded pseudo-random), caps, extreme inputs.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include <stdbool.h>
#include <string.h>

#include "backoff.h"

static uint32_t rng_zero(void *arg)
{
    if (arg != NULL)
        (*(unsigned *)arg)++;
    return 0;
}

static uint32_t rng_ones(void *arg)
{
    (void)arg;
    return UINT32_MAX;
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

/* min(initial << (attempt - 1), max), computed without shifting past 63
 * bits: initial << k exceeds max exactly when initial > max >> k. */
static uint64_t expected_base(uint64_t initial, uint64_t max, uint32_t attempt)
{
    uint32_t k = attempt - 1;

    if (initial > max)
        return max;
    if (k >= 64 || initial > max >> k)
        return max;
    return initial << k;
}

/* The bounds every delay must keep: [base / 2, base], never 0 for a
 * positive base, never above max. */
static void assert_in_bounds(uint64_t d, uint64_t initial, uint64_t max, uint32_t attempt)
{
    uint64_t base = expected_base(initial, max, attempt);

    assert_true(d <= base);
    assert_true(d >= base / 2);
    assert_true(d <= max);
    if (base > 0)
        assert_true(d > 0);
}

/* {initial, max}: ordinary ones, tiny ones, a max that is no power of two
 * times initial, and ones where doubling would run out of 64 bits. */
static const uint64_t caps[][2] = {
    {1000, 3600000},
    {30000, 3600000},
    {1, 1},
    {1, 2},
    {3, 1000},
    {7, UINT64_MAX},
    {UINT64_MAX / 3, UINT64_MAX - 1},
    {UINT64_MAX, UINT64_MAX},
    {(uint64_t)1 << 63, UINT64_MAX},
};

static void test_backoff_delay_rng_zero(void **state)
{
    unsigned calls = 0;
    struct backoff_rng rng = {rng_zero, &calls};

    (void)state;
    for (size_t c = 0; c < sizeof(caps) / sizeof(caps[0]); c++) {
        for (uint32_t a = 1; a <= 70; a++) {
            uint64_t base = expected_base(caps[c][0], caps[c][1], a);
            uint64_t d = backoff_delay(caps[c][0], caps[c][1], a, &rng);
            assert_in_bounds(d, caps[c][0], caps[c][1], a);
            /* No jitter: the lower end, the upper half of base rounded up. */
            assert_int_equal(d, base - base / 2);
        }
    }
    assert_true(calls > 0);
}

static void test_backoff_delay_rng_ones(void **state)
{
    struct backoff_rng rng = {rng_ones, NULL};

    (void)state;
    for (size_t c = 0; c < sizeof(caps) / sizeof(caps[0]); c++)
        for (uint32_t a = 1; a <= 70; a++)
            assert_in_bounds(backoff_delay(caps[c][0], caps[c][1], a, &rng), caps[c][0], caps[c][1],
                             a);
    /* All ones is the largest draw: the jitter is UINT64_MAX mod (bound + 1). */
    assert_int_equal(backoff_delay(1000, 3600000, 1, &rng), 500 + UINT64_MAX % 501);
    assert_int_equal(backoff_delay(UINT64_MAX, UINT64_MAX, 1, &rng), UINT64_MAX);
}

static void test_backoff_delay_rng_random(void **state)
{
    uint32_t seed = 0x2545f491;
    struct backoff_rng rng = {rng_xorshift, &seed};
    bool seen[5] = {false};

    (void)state;
    for (int round = 0; round < 50; round++)
        for (size_t c = 0; c < sizeof(caps) / sizeof(caps[0]); c++)
            for (uint32_t a = 1; a <= 70; a++)
                assert_in_bounds(backoff_delay(caps[c][0], caps[c][1], a, &rng), caps[c][0],
                                 caps[c][1], a);
    /* base 4: every value of [2, 4] comes up, nothing else. */
    for (int i = 0; i < 3000; i++) {
        uint64_t d = backoff_delay(1, 100, 3, &rng);
        assert_true(d >= 2 && d <= 4);
        seen[d] = true;
    }
    assert_true(seen[2] && seen[3] && seen[4]);
}

static void test_backoff_delay_grows_to_max(void **state)
{
    struct backoff_rng rng = {rng_zero, NULL};
    uint64_t prev = 0;

    (void)state;
    /* Doubling: the lower ends go 500, 1000, 2000, ... up to max / 2. */
    for (uint32_t a = 1; a <= 70; a++) {
        uint64_t d = backoff_delay(1000, 3600000, a, &rng);
        assert_true(d >= prev);
        prev = d;
    }
    assert_int_equal(backoff_delay(1000, 3600000, 1, &rng), 500);
    assert_int_equal(backoff_delay(1000, 3600000, 2, &rng), 1000);
    assert_int_equal(backoff_delay(1000, 3600000, 12, &rng), 1024000);
    assert_int_equal(backoff_delay(1000, 3600000, 13, &rng), 1800000);
    assert_int_equal(prev, 1800000);
    assert_int_equal(backoff_delay(1000, 3600000, UINT32_MAX, &rng), 1800000);
}

static void test_backoff_delay_initial_above_max(void **state)
{
    uint32_t seed = 12345;
    struct backoff_rng rng = {rng_xorshift, &seed};

    (void)state;
    for (uint32_t a = 1; a <= 70; a++) {
        uint64_t d = backoff_delay(10000, 500, a, &rng);
        assert_true(d >= 250 && d <= 500);
    }
}

static void test_backoff_delay_small_values(void **state)
{
    unsigned calls = 0;
    struct backoff_rng rng = {rng_zero, &calls};

    (void)state;
    /* Nothing to wait, nothing drawn. */
    assert_int_equal(backoff_delay(0, 1000, 1, &rng), 0);
    assert_int_equal(backoff_delay(0, 1000, 70, &rng), 0);
    assert_int_equal(backoff_delay(1000, 0, 5, &rng), 0);
    /* Never 0 when initial > 0. */
    assert_int_equal(backoff_delay(1, 1, 1, &rng), 1);
    assert_int_equal(backoff_delay(1, 1000, 1, &rng), 1);
    assert_int_equal(calls, 0);
    assert_int_equal(backoff_delay(1, 1000, 2, &rng), 1);
}

static void test_backoff_jitter_bounds(void **state)
{
    uint32_t seed = 99;
    struct backoff_rng rnd = {rng_xorshift, &seed}, zero = {rng_zero, NULL},
                       ones = {rng_ones, NULL};
    bool seen[11] = {false};

    (void)state;
    assert_int_equal(backoff_jitter(0, &rnd), 0);
    assert_int_equal(backoff_jitter(0, &ones), 0);
    assert_int_equal(backoff_jitter(UINT64_MAX, &zero), 0);
    assert_int_equal(backoff_jitter(UINT64_MAX, &ones), UINT64_MAX);
    assert_int_equal(backoff_jitter(10, &zero), 0);
    assert_true(backoff_jitter(10, &ones) <= 10);
    assert_true(backoff_jitter(UINT64_MAX - 1, &ones) <= UINT64_MAX - 1);
    /* Inclusive of both ends. */
    for (int i = 0; i < 5000; i++) {
        uint64_t j = backoff_jitter(10, &rnd);
        assert_true(j <= 10);
        seen[j] = true;
    }
    for (int i = 0; i <= 10; i++)
        assert_true(seen[i]);
    /* Wider than 32 bits: the high half is drawn too. */
    {
        bool high = false;
        for (int i = 0; i < 100 && !high; i++)
            high = backoff_jitter(UINT64_MAX / 2, &rnd) > UINT32_MAX;
        assert_true(high);
    }
}

static void test_backoff_rng_system(void **state)
{
    struct backoff_rng rng = {backoff_rng_system, NULL};
    uint32_t first = backoff_rng_system(NULL);
    bool differs = false;

    (void)state;
    for (int i = 0; i < 64 && !differs; i++)
        differs = backoff_rng_system(NULL) != first;
    assert_true(differs);
    for (uint32_t a = 1; a <= 70; a++)
        assert_in_bounds(backoff_delay(30000, 3600000, a, &rng), 30000, 3600000, a);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_backoff_delay_rng_zero),
        cmocka_unit_test(test_backoff_delay_rng_ones),
        cmocka_unit_test(test_backoff_delay_rng_random),
        cmocka_unit_test(test_backoff_delay_grows_to_max),
        cmocka_unit_test(test_backoff_delay_initial_above_max),
        cmocka_unit_test(test_backoff_delay_small_values),
        cmocka_unit_test(test_backoff_jitter_bounds),
        cmocka_unit_test(test_backoff_rng_system),
    };

    return cmocka_run_group_tests(tests, NULL, NULL);
}
