/*
 * repl_sched: when the primary pushes to each replica (DESIGN.md,
 * "Replication protocol", schedule). Pure arithmetic on times passed in,
 * with the random draw injected, so tests check every bound exactly.
 *
 *   - after a success at t:   next = t + interval + jitter draw in [0, jitter]
 *   - after failure n (1..):  next = t + backoff_delay(retry_initial,
 *                             interval, n): doubling with equal jitter,
 *                             never above the interval
 *   - after a save:           next = now when push_on_commit is on and the
 *                             replica is not failing (a replica in backoff
 *                             keeps its backoff: a burst of saves must not
 *                             hammer a node that is down)
 *
 * Times are Unix milliseconds (wall clock, so they can be persisted and
 * shown); struct repl_clock makes "now" injectable.
 */
#ifndef SMTPSYNC_REPL_SCHED_H
#define SMTPSYNC_REPL_SCHED_H

#include <stdbool.h>
#include <stdint.h>

#include "backoff.h"

#define REPL_SCHED_RETRY_INITIAL_DEFAULT_MS 1000u

/* A wall clock in Unix milliseconds; now_ms NULL means the system's. */
struct repl_clock {
    int64_t (*now_ms)(void *arg);
    void *arg;
};

int64_t repl_clock_now(const struct repl_clock *c);

struct repl_sched_params {
    uint64_t interval_ms;      /* scheduled push period; > 0 */
    uint64_t jitter_ms;        /* random 0..jitter added to each period */
    uint64_t retry_initial_ms; /* first retry after a failure; 0: 1 s */
    bool push_on_commit;
};

/* One replica's schedule. */
struct repl_sched {
    int64_t next_ms;         /* the next push is due then */
    int64_t last_success_ms; /* 0: never */
    uint32_t failures;       /* consecutive failures since the last success */
};

/* A replica seen for the first time (or after a restart): due at once, so
 * the persistent connection is opened and the replica's state learned. */
void repl_sched_init(struct repl_sched *s, int64_t now_ms, int64_t last_success_ms);

/* The next scheduled push after a success at `at`:
 * at + interval + a draw in [0, jitter]. */
int64_t repl_sched_after_success(const struct repl_sched_params *p, int64_t at,
                                 const struct backoff_rng *rng);

/* The delay before retry number `failures` (>= 1): backoff_delay() from
 * retry_initial, doubling, capped at the interval. */
uint64_t repl_sched_retry_delay(const struct repl_sched_params *p, uint32_t failures,
                                const struct backoff_rng *rng);

/* A push (or the state check that found nothing to push) succeeded. */
void repl_sched_success(const struct repl_sched_params *p, struct repl_sched *s, int64_t now_ms,
                        const struct backoff_rng *rng);

/* A connection or a push failed. */
void repl_sched_failure(const struct repl_sched_params *p, struct repl_sched *s, int64_t now_ms,
                        const struct backoff_rng *rng);

/* A revision was saved. Returns true when the push is now due (see the
 * header comment). */
bool repl_sched_commit(const struct repl_sched_params *p, struct repl_sched *s, int64_t now_ms);

/* Milliseconds until the next push; 0 when it is due. */
uint64_t repl_sched_delay(const struct repl_sched *s, int64_t now_ms);

#endif
