/*
 * backoff: see backoff.h.
 */
#include "backoff.h"

#include <openssl/rand.h>

/* Uniform in [0, bound] without modulo bias for small bounds; for bounds
 * wider than 32 bits two draws are combined. */
uint64_t backoff_jitter(uint64_t bound, const struct backoff_rng *rng)
{
    uint64_t r;

    if (bound == 0)
        return 0;
    r = (uint64_t)rng->next(rng->arg) << 32 | rng->next(rng->arg);
    if (bound == UINT64_MAX)
        return r;
    return r % (bound + 1);
}

uint64_t backoff_delay(uint64_t initial, uint64_t max, uint32_t attempt,
                       const struct backoff_rng *rng)
{
    uint64_t base = initial;
    uint32_t i;

    if (initial > max)
        base = max;
    for (i = 1; i < attempt && base < max; i++)
        base = base > max / 2 ? max : base * 2;
    if (base <= 1)
        return base;
    return base - base / 2 + backoff_jitter(base / 2, rng);
}

uint32_t backoff_rng_system(void *arg)
{
    uint32_t v = 0;

    (void)arg;
    /* RAND_bytes fails only without any entropy source; a fixed value then
     * still gives a bounded delay, just without spread. */
    if (RAND_bytes((unsigned char *)&v, sizeof(v)) != 1)
        return 0x9e3779b9u;
    return v;
}
