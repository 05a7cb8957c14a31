/*
 * backoff: retry delays with exponential growth and random jitter, shared by
 * the outbox (mail retries) and replication (reconnects, scheduled pushes).
 *
 * Pure functions of their inputs: the random draw is passed in, so tests
 * check the bounds exactly with an injected generator.
 */
#ifndef SMTPSYNC_BACKOFF_H
#define SMTPSYNC_BACKOFF_H

#include <stdint.h>

/* A source of uniform random 32-bit numbers; `arg` is its state. */
struct backoff_rng {
    uint32_t (*next)(void *arg);
    void *arg;
};

/*
 * Delay before attempt `attempt` + 1 after `attempt` failures (attempt >= 1):
 * base = min(initial << (attempt - 1), max), then "equal jitter": a value
 * drawn uniformly from [base / 2, base]. Never 0 when initial > 0, never
 * above max, never overflows.
 */
uint64_t backoff_delay(uint64_t initial, uint64_t max, uint32_t attempt,
                       const struct backoff_rng *rng);

/* A value drawn uniformly from [0, bound] (inclusive); 0 when bound is 0. */
uint64_t backoff_jitter(uint64_t bound, const struct backoff_rng *rng);

/* The default generator: OpenSSL's RAND_bytes, seeded by the system. */
uint32_t backoff_rng_system(void *arg);

#endif
