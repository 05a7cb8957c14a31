/*
 * repl_sched: see repl_sched.h.
 */
#include "repl_sched.h"

#include <time.h>

int64_t repl_clock_now(const struct repl_clock *c)
{
    struct timespec ts;

    if (c != NULL && c->now_ms != NULL)
        return c->now_ms(c->arg);
    clock_gettime(CLOCK_REALTIME, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

/* t + d without overflow. */
static int64_t add_ms(int64_t t, uint64_t d)
{
    if (d > (uint64_t)(INT64_MAX - (t > 0 ? t : 0)))
        return INT64_MAX;
    return t + (int64_t)d;
}

void repl_sched_init(struct repl_sched *s, int64_t now_ms, int64_t last_success_ms)
{
    s->next_ms = now_ms;
    s->last_success_ms = last_success_ms;
    s->failures = 0;
}

int64_t repl_sched_after_success(const struct repl_sched_params *p, int64_t at,
                                 const struct backoff_rng *rng)
{
    return add_ms(add_ms(at, p->interval_ms), backoff_jitter(p->jitter_ms, rng));
}

uint64_t repl_sched_retry_delay(const struct repl_sched_params *p, uint32_t failures,
                                const struct backoff_rng *rng)
{
    uint64_t initial =
        p->retry_initial_ms ? p->retry_initial_ms : REPL_SCHED_RETRY_INITIAL_DEFAULT_MS;

    return backoff_delay(initial, p->interval_ms, failures ? failures : 1, rng);
}

void repl_sched_success(const struct repl_sched_params *p, struct repl_sched *s, int64_t now_ms,
                        const struct backoff_rng *rng)
{
    s->last_success_ms = now_ms;
    s->failures = 0;
    s->next_ms = repl_sched_after_success(p, now_ms, rng);
}

void repl_sched_failure(const struct repl_sched_params *p, struct repl_sched *s, int64_t now_ms,
                        const struct backoff_rng *rng)
{
    if (s->failures < UINT32_MAX)
        s->failures++;
    s->next_ms = add_ms(now_ms, repl_sched_retry_delay(p, s->failures, rng));
}

bool repl_sched_commit(const struct repl_sched_params *p, struct repl_sched *s, int64_t now_ms)
{
    if (!p->push_on_commit || s->failures > 0)
        return false;
    s->next_ms = now_ms;
    return true;
}

uint64_t repl_sched_delay(const struct repl_sched *s, int64_t now_ms)
{
    return s->next_ms > now_ms ? (uint64_t)(s->next_ms - now_ms) : 0;
}
