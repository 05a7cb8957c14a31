/*
 * sender internals: what sender.c (settings generations, outcomes and
 * their commit, the ready list, the pump, the API) and sender_session.c
 * (the SMTP sessions: handing them messages, their outcomes, relays and
 * failover, dispatch) share. Never included from outside common/
 * (STYLE.md, point 2).
 */
#ifndef SMTPSYNC_SENDER_INTERNAL_H
#define SMTPSYNC_SENDER_INTERNAL_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <uv.h>

#include "backoff.h"
#include "outbox.h"
#include "sender.h"
#include "settings.h"
#include "smtp_client.h"

/* Messages deferred for unusable settings that are made due again at once
 * when usable settings arrive; any more wait for their backoff. */
#define SENDER_WAITING_MAX 64
#define SENDER_HEADER_MAX  (SETTINGS_ADDRESS_MAX + 16)
#define SENDER_RELAY_MAX   (SETTINGS_HOSTNAME_MAX + 16)
#define SENDER_QUOTE_MAX   (2 * SMTP_CLIENT_REASON_MAX)

/* One generation of the instance's settings. Shared by the sender (the
 * current one) and the sessions started with it; freed at the last unref. */
struct sender_cfg {
    unsigned refs;
    uint64_t revision;
    struct settings settings; /* password loaded: wiped by settings_clear() */
    bool usable;
    bool reread;                    /* could not be read: read the same revision again */
    char problem[OUTBOX_ERROR_MAX]; /* why not usable: the deferred mail's last error */
    char warning[OUTBOX_ERROR_MAX]; /* usable, but the certificate check complained */
    char from_header[SENDER_HEADER_MAX];
    size_t from_header_len;
    bool from_8bit;
    unsigned relay;       /* new sessions go to: 0 the hostname, i relays[i - 1] */
    unsigned relay_tried; /* relays given up on in a row */
};

/* A leased message, in `ready` or held by a session. */
struct sender_item {
    struct sender_item *next;
    struct outbox_msg *m;
    struct smtp_client_msg cm; /* filled when a session takes it */
    bool eight_bit;
    bool rcpts_utf8;
    int64_t started_ms;
};

/* What a session is doing, as far as the scheduler cares. */
#define SENDER_SESSION_STATE_MAP(XX)                                                               \
    XX(CONNECTING, "connecting") /* started, has not asked for a message yet */                    \
    XX(ASKING, "asking")         /* kicked or done with a message: will ask again */               \
    XX(BUSY, "busy")             /* holds a message */                                             \
    XX(IDLE, "idle")             /* was told there is none: QUITs after idle_ms */                 \
    XX(ENDING, "ending")         /* refused a kick: past idle, closing; never asks again */

enum sender_session_state {
#define XX(name, text) SENDER_SESSION_##name,
    SENDER_SESSION_STATE_MAP(XX)
#undef XX
};

struct sender_session {
    struct sender_session *prev, *next;
    struct sender *s;
    struct smtp_client *client;
    struct sender_cfg *cfg; /* a reference */
    enum sender_session_state state;
    bool asked;     /* called on_next once: connected, greeted, authenticated */
    bool cancelled; /* by us */
    unsigned nsent;
    unsigned relay;
    char relay_name[SENDER_RELAY_MAX]; /* "host:port", for logs */
    struct sender_item *current;
};

/* What a pending result keeps besides its outbox_result: the error text,
 * and for a DEFER that keeps some recipients the message whose rcpts the
 * keep list points into (owned). */
struct sender_result_data {
    char error[OUTBOX_ERROR_MAX];
    struct outbox_msg *m;
};

struct sender {
    uv_loop_t *loop;
    struct store *store;
    struct outbox *outbox;
    char instance[SETTINGS_INSTANCE_MAX + 1];
    char *helo;
    unsigned max_sessions, max_per_session;
    uint64_t idle_ms, retry_initial_ms, retry_max_ms, drain_ms;
    int64_t (*now_fn)(void *arg);
    void *now_arg;
    struct backoff_rng rng;
    int64_t clock_offset; /* wall clock minus uv_now() */

    uv_idle_t pump;
    uv_timer_t wake;
    uv_timer_t drain;
    unsigned closing; /* handles whose close callback is pending */

    struct sender_cfg *cfg; /* current generation; NULL before the first load */
    bool reload;            /* check the store before the next batch */
    bool start_blocked;     /* a session failed while others live: wait for them */
    bool retry_soon;        /* a store or outbox error: pump again shortly */
    bool stopping;
    void (*done)(void *arg);
    void *done_arg;

    struct sender_item *ready;
    size_t nready, ready_max;
    size_t nheld; /* messages taken whose result is not added yet */

    struct sender_session *sessions;
    unsigned nsessions;

    /* Pending results, three arrays in step: results[i] (its error points
     * into rdata[i].error when applied) and keep[i] for outbox_apply_rcpts(). */
    struct outbox_result *results;
    struct outbox_rcpts *keep;
    struct sender_result_data *rdata;
    size_t nresults, results_cap;
    /* The results being committed on the thread pool (outbox_apply_async),
     * or whose commit failed and waits for its next try: arrays in step as
     * above, swapped with the pending ones when a commit starts, owned
     * here, borrowed by the outbox while `applying`. */
    struct outbox_result *aresults;
    struct outbox_rcpts *akeep;
    struct sender_result_data *ardata;
    size_t napply, apply_cap;
    bool applying;           /* a commit is in flight: stopping waits for it */
    bool stop_applied;       /* stopping: the last forced commit was tried */
    uint64_t apply_by;       /* loop time by which pending results are committed */
    unsigned apply_failures; /* commits failed in a row */
    uint64_t apply_after;    /* after a failed commit: loop time of the next try */

    /* Deferred for unusable settings: made due at once when they are usable. */
    uint64_t waiting[SENDER_WAITING_MAX];
    size_t nwaiting;

    struct sender_stats stats;
};

/* sender.c */

/* Now, wall clock milliseconds (the injected clock in tests). */
int64_t sender__now(const struct sender *s);
bool sender__has_8bit(const char *p, size_t len);
void sender__set_last_error(struct sender *s, const char *error);
void sender__cfg_unref(struct sender_cfg *cfg);
/* Where relay `relay` of a generation is: 0 the hostname, i relays[i - 1]. */
void sender__relay_of(const struct sender_cfg *cfg, unsigned relay, const char **host,
                      uint32_t *port);
/* "host:port" ("[v6]:port") for logs. */
void sender__relay_name(char *buf, size_t len, const char *host, uint32_t port);
/* Outcomes of a message held; each frees the item and queues its result. */
void sender__delivered(struct sender *s, struct sender_session *sess, struct sender_item *item,
                       const struct smtp_client_result *res);
void sender__failed(struct sender *s, struct sender_item *item, bool temporary, const char *reason);
void sender__release(struct sender *s, struct sender_item *item);
struct sender_item *sender__ready_pop(struct sender *s);
/* Defers every ready message; `settings`: for want of usable settings. */
void sender__ready_defer(struct sender *s, const char *reason, bool settings);
/* Fills the ready list with due mail. */
void sender__take(struct sender *s, int64_t now);
/* Runs the pump once, on this or the next loop iteration. */
void sender__schedule(struct sender *s);

/* sender_session.c */

/* Hands the ready mail to sessions: kicks idle ones, starts new ones. */
void sender__dispatch(struct sender *s);
/* Cancels the sessions holding no message (with `busy_too`, all). */
void sender__cancel_sessions(struct sender *s, bool busy_too);

#endif
