/*
 * internal: non-static helpers shared between files of common/, never
 * installed and never included from outside common/ (STYLE.md, point 2).
 *
 * settings: what settings.c (record, setters, names, display) and
 * settings_check.c (validation) share.
 *
 * store: what store.c (open, meta, records, reading), store_draft.c (drafts,
 * save), store_history.c (states, chain hash, rollback, history, diff,
 * compaction, verification) and store_repl.c (deltas, snapshots, epoch,
 * membership, the replicas database) share.
 *
 * outbox: what outbox.c (transactions, the queue's verbs) and
 * outbox_record.c (records, due keys, error texts, the lease set) share.
 *
 * smtp_client: what smtp_client.c (the state machine), smtp_client_conn.c
 * (resolving, connecting, I/O, TLS), smtp_client_auth.c (AUTH mechanisms)
 * and smtp_client_mail.c (the MAIL/RCPT/DATA transaction) share; at the
 * end of this file.
 *
 * conntest: what conntest.c (the session, recording steps, printing) and
 * conntest_diag.c (the diagnosis of a failed step) share; last.
 */
#ifndef SMTPSYNC_COMMON_INTERNAL_H
#define SMTPSYNC_COMMON_INTERNAL_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>
#include <time.h>

#include <lmdb.h>
#include <netinet/in.h>
#include <openssl/ssl.h>
#include <uv.h>

#include "dbenv.h"
#include "error.h"
#include "outbox.h"
#include "seal.h"
#include "settings_pb.h"
#include "settings.h"
#include "smtp_client.h"
#include "smtp_message.h"
#include "smtp_reply.h"
#include "store.h"
#include "tlsio.h"

/* settings.c */

#define SETTINGS__PORT_MAX  65535u
/* How much of a bad value a problem message quotes back. */
#define SETTINGS__QUOTE_MAX 64

/* Quotes (a prefix of) a value for a problem message: "value" or
 * "valu..."; buf should hold SETTINGS__QUOTE_MAX + 8 bytes. Returns buf. */
const char *settings__quote(char *buf, size_t len, const char *value);
/* The value of a TIMEOUT field; aborts for any other field. */
uint32_t settings__timeout_value(const struct settings *s, enum settings_field f);
/* "YYYY-MM-DD HH:MM UTC" of a Unix time, or "an unreadable date" if t < 0. */
void settings__format_date(long long t, char *buf, size_t len);

/* protobuf-c messages and LMDB's MDB_val hold non-const pointers although
 * packing and mdb_put/mdb_get only read through them; what we hand them
 * borrows const data through this one cast. */
#define BORROW_CONST(p) ((void *)(uintptr_t)(p))

/* The key of the one meta record, in st->meta. */
#define STORE__META_KEY "state"

/* The named databases, all opened (and created if missing, so a store made
 * before one was added gets it) in the transaction that opens the store. */
struct store {
    MDB_env *env;
    MDB_dbi settings;
    MDB_dbi drafts;
    MDB_dbi history;
    MDB_dbi snapshot;
    MDB_dbi meta;
    MDB_dbi replicas; /* a primary's view of each replica, by node id (store_repl.c) */
    struct seal_key key;
};

/* The fields of StoreMeta the store itself maintains. */
struct store_meta {
    uint64_t revision;
    uint64_t epoch;
    uint64_t base_revision;
    int64_t revision_time_ms;
    uint8_t hash[STORE_HASH_LEN];
    uint8_t base_hash[STORE_HASH_LEN];
    uint8_t base_state_hash[STORE_HASH_LEN]; /* store__state_digest(snapshot) */
    uint8_t key_check[SEAL_CHECK_LEN];       /* seal_key_check(node key) */
};

/* A whole state (instance -> packed Settings, sealed secrets included),
 * sorted by instance in LMDB's key order, rebuilt in memory for reading
 * old revisions, rollback, compaction and verification. */
struct store_state_entry {
    char instance[SETTINGS_INSTANCE_MAX + 1];
    uint8_t *data;
    size_t len;
};

struct store_state {
    struct store_state_entry *v;
    size_t n;
    size_t cap;
};

static inline int64_t store__now_ms(void)
{
    struct timespec ts;

    clock_gettime(CLOCK_REALTIME, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

/* Keys: dbenv_key_str() for instances and meta; dbenv_key_u64() for
 * history, whose big-endian keys put LMDB's byte order in revision order. */

/* An instance key read back from LMDB must be a valid id. */
static inline int store__key_instance(const MDB_val *k, char out[SETTINGS_INSTANCE_MAX + 1])
{
    if (k->mv_size == 0 || k->mv_size > SETTINGS_INSTANCE_MAX ||
        memchr(k->mv_data, '\0', k->mv_size) != NULL)
        return ERROR_CORRUPT;
    memcpy(out, k->mv_data, k->mv_size);
    out[k->mv_size] = '\0';
    return 0;
}

/* store.c */

/* Actor required; actor and comment within their limits and free of
 * control characters. ERROR_INVALID, ERROR_TOO_BIG. */
int store__check_commit(const struct store_commit *c);
/* Transactions are dbenv_txn_read() and dbenv_write() on st->env, whose
 * results are of error.h's convention; what mdb_* calls return is not, and
 * goes through dbenv_error() before it leaves a store_* function. */

/* Packs `s` as it is stored, its password (which must be loaded when set)
 * sealed under the node key and bound to instance and secret id; *out is
 * malloc'd. ERROR_INVALID, -ENOMEM, ERROR_CRYPTO. */
int store__record_pack(struct store *st, const struct settings *s, uint8_t **out, size_t *out_len);
/* Seals `plain`, a password of `instance` with secret id `id`, under the
 * node key and bound to both, as store__record_pack() stores it;
 * out->data is malloc'd. -ENOMEM, ERROR_CRYPTO. */
int store__secret_seal(struct store *st, const char *instance,
                       const uint8_t id[SETTINGS_SECRET_ID_LEN], const char *plain,
                       ProtobufCBinaryData *out);
/* NULL if data is not a Settings message; free with
 * smtpsync__settings__free_unpacked(m, NULL). */
Smtpsync__Settings *store__record_unpack(const void *data, size_t len);
/* Decodes an unpacked stored record into out (cleared first), as
 * store__record_decode(); when it refuses the record (ERROR_CORRUPT,
 * ERROR_TAMPERED) and `problems` is not NULL, a problem names the field. */
int store__record_decode_msg(struct store *st, const Smtpsync__Settings *m, const char *instance,
                             unsigned flags, struct settings *out,
                             struct settings_problems *problems);
/* Decodes a stored record into out (cleared first); `instance`, if not
 * NULL, must be its id. STORE_UNSEAL opens the password. ERROR_CORRUPT,
 * ERROR_TAMPERED, -ENOMEM. */
int store__record_decode(struct store *st, const void *data, size_t len, const char *instance,
                         unsigned flags, struct settings *out);
bool store__record_differs(const struct settings *a, const struct settings *b);

int store__meta_read(struct store *st, MDB_txn *txn, struct store_meta *out);
int store__meta_write(struct store *st, MDB_txn *txn, struct store_meta *meta);

/* Decodes every record of a state, then calls cb for each in order: a
 * decode failure is returned before any callback runs. */
int store__state_each(struct store *st, const struct store_state *s, unsigned flags,
                      store_each_cb cb, void *arg);

/* store_history.c */

void store__state_free(struct store_state *s);
/* The chain hash of revision r: out = SHA-256(prev || canonical(r)), where
 * canonical(r) is r packed without its hash and with every Secret reduced
 * to its id, so it is the same on every node. -ENOMEM, ERROR_CRYPTO. */
int store__chain_hash(const uint8_t prev[STORE_HASH_LEN], const Smtpsync__Revision *r,
                      uint8_t out[STORE_HASH_LEN]);
/* SHA-256 of a state in canonical form: the packed Snapshot message holding
 * only `records`, in the state's (instance) order, each Secret reduced to
 * its id, so the digest is the same on every node. ERROR_CORRUPT if a
 * record does not unpack. */
int store__state_digest(const struct store_state *s, uint8_t out[STORE_HASH_LEN]);
/* Index of `instance`, or where it would go; *found tells which. */
size_t store__state_find(const struct store_state *s, const char *instance, bool *found);
/* Adds every entry of an instance -> record database to `out`. */
int store__state_load(MDB_txn *txn, MDB_dbi dbi, struct store_state *out);
/* The state at `revision`. ERROR_COMPACTED below the base, ERROR_INVALID
 * beyond the head, ERROR_CORRUPT if the snapshot does not match meta's
 * base_state_hash or history cannot be replayed. */
int store__state_at(struct store *st, MDB_txn *txn, const struct store_meta *meta,
                    uint64_t revision, struct store_state *out);
/* Appends revision meta->revision + 1 made of `changes` inside `txn`:
 * history row with its chain hash, current records, meta (updated). */
int store__revision_commit(struct store *st, MDB_txn *txn, struct store_meta *meta,
                           const struct store_commit *commit, Smtpsync__Change **changes, size_t n,
                           uint64_t rollback_of, uint64_t *rev_out);

/* outbox.c, outbox_record.c */

/* A due key: priority(1) | next_try_ms(8, big-endian) | id(8). */
#define OUTBOX__DUE_KEY_LEN 17

/* The leases of outbox.h: an open-addressing set of ids (linear probing,
 * deletion by backward shift, so no tombstones); 0 is never an id and
 * marks a free slot. At most half full. `slot` is malloc'd; its owner
 * frees it. */
struct outbox_leases {
    uint64_t *slot;
    size_t cap; /* a power of two, or 0 */
    size_t n;
};

bool outbox__lease_has(const struct outbox_leases *ls, uint64_t id);
/* Only after outbox__lease_reserve() made room: it cannot fail then. */
void outbox__lease_insert(struct outbox_leases *ls, uint64_t id);
/* Makes room for `more` ids, so that the inserts that follow cannot fail.
 * 0 or -ENOMEM. */
int outbox__lease_reserve(struct outbox_leases *ls, size_t more);
void outbox__lease_remove(struct outbox_leases *ls, uint64_t id);

/* A due key, decoded. */
struct outbox_due {
    int priority;
    int64_t next_try_ms;
    uint64_t id;
};

/* The due key of a message, in buf (which it borrows). */
MDB_val outbox__due_key(int priority, int64_t next_try_ms, uint64_t id,
                        uint8_t buf[OUTBOX__DUE_KEY_LEN]);
/* False for a key that is not in the one encoding outbox__due_key() makes. */
bool outbox__due_parse(const MDB_val *k, struct outbox_due *out);
bool outbox__priority_valid(int p);
/* Copies an error text as it is kept: at most OUTBOX_ERROR_MAX octets, cut
 * on a character boundary, not UTF-8 as '?', control characters as spaces;
 * NULL is "". */
void outbox__error_copy(char out[OUTBOX_ERROR_MAX + 1], const char *in);
/* At most OUTBOX_ADDRESS_MAX octets, no CR or LF, and not empty (NULL
 * included) unless may_be_empty. */
bool outbox__address_valid(const char *a, bool may_be_empty);

/* Decodes a record stored under `id` (in `dead` when `dead`). Returns 0,
 * -ENOMEM, or ERROR_CORRUPT with *why saying what is wrong. Free *out with
 * outbox__record_free(). */
int outbox__record_unpack(const MDB_val *val, uint64_t id, bool dead, Smtpsync__OutboxMessage **out,
                          const char **why);
void outbox__record_free(Smtpsync__OutboxMessage *m);
/* Packs m into dbi under its id; flags are mdb_put()'s. Returns mdb_put()'s
 * value, not converted. */
int outbox__record_put(MDB_txn *txn, MDB_dbi dbi, const Smtpsync__OutboxMessage *m, unsigned flags);
/* A stored record as handed to callers (outbox_msg_free() releases it), the
 * message only when `body`. 0 or -ENOMEM. */
int outbox__msg_from_record(const Smtpsync__OutboxMessage *r, bool body, struct outbox_msg **out);

/* smtp_message */

/*
 * What smtp_message.c (compose, Date and Message-ID, From header,
 * dot-stuffing) and smtp_message_parse.c (header scanner, address lists,
 * parse, normalize) share.
 */

/* A growable text buffer, zero-initialised to start; p is malloc'd and
 * belongs to whoever holds the struct, who frees it with free(). Adding
 * fails with -ENOMEM and leaves what is there. */
struct smtp_message__buf {
    char *p;
    size_t len, cap;
};

int smtp_message__buf_add(struct smtp_message__buf *b, const void *data, size_t n);
/* Ends the text with a NUL that its length does not count. */
int smtp_message__buf_terminate(struct smtp_message__buf *b);

/* Copies untrusted text into a reason: printable ASCII only, at most 64
 * characters, so a reason can be logged or printed as it is. Returns out. */
const char *smtp_message__safe_text(const char *s, size_t n, char *out, size_t outlen);
/* True if s[n] is a dot-atom-text: atext (ASCII) runs separated by dots. */
bool smtp_message__dot_atom(const char *s, size_t n);

/* Appends "Date: Mon, 02 Jan 2006 15:04:05 +0000\r\n", without the locale;
 * ERROR_INVALID with `why` for a date that has no such form. */
int smtp_message__add_date(struct smtp_message__buf *b, time_t t, char *why, size_t whylen);
/* Appends "Message-ID: <32 hex digits@domain>\r\n"; the domain is a
 * dot-atom (a host name) or an address literal such as [192.0.2.1] or
 * [IPv6:2001:db8::1]. ERROR_INVALID for another domain, ERROR_CRYPTO
 * without random octets, both with `why`. */
int smtp_message__add_message_id(struct smtp_message__buf *b, const char *domain, char *why,
                                 size_t whylen);

/* smtp_client.c, smtp_client_conn.c, smtp_client_auth.c, smtp_client_mail.c */

/*
 * The session's states (STYLE.md, point 12): smtp_client__set_state()
 * logs every change and runs the entry action of the new state.
 */
#define SMTP_CLIENT_STATE_MAP(XX)                                                                  \
    XX(INIT)         /* not started */                                                             \
    XX(RESOLVE)      /* uv_getaddrinfo() running */                                                \
    XX(CONNECT)      /* connecting to c->ai_cur, or closing a failed attempt */                    \
    XX(TLS)          /* implicit TLS handshake */                                                  \
    XX(GREETING)     /* waiting for the banner */                                                  \
    XX(EHLO)         /* EHLO sent */                                                               \
    XX(HELO)         /* HELO sent after EHLO was refused */                                        \
    XX(STARTTLS)     /* STARTTLS sent */                                                           \
    XX(STARTTLS_TLS) /* handshake after the 220 to STARTTLS */                                     \
    XX(AUTH)         /* an AUTH exchange, c->auth_mech at c->auth_stage */                         \
    XX(READY)        /* asking on_next() for a message */                                          \
    XX(IDLE)         /* no message: waiting idle_ms for smtp_client_kick() */                      \
    XX(RSET)         /* RSET sent after a failed transaction */                                    \
    XX(MAIL)         /* waiting for the reply to MAIL */                                           \
    XX(RCPT)         /* waiting for the reply to RCPT c->rcpt_next */                              \
    XX(DATA)         /* waiting for the reply to DATA */                                           \
    XX(BODY)         /* writing the message */                                                     \
    XX(DOT)          /* waiting for the reply to the final dot */                                  \
    XX(QUIT)         /* QUIT sent */                                                               \
    XX(CLOSING)      /* handles closing; on_closed() when the last one is */                       \
    XX(CLOSED)       /* on_closed() called: the client is being freed */

enum smtp_client_state {
#define XX(name) SMTP_CLIENT_##name,
    SMTP_CLIENT_STATE_MAP(XX)
#undef XX
};

/* AUTH mechanisms, as a bit set of what the server offers. */
enum {
    SMTP_CLIENT_AUTH_PLAIN = 1u << 0,
    SMTP_CLIENT_AUTH_LOGIN = 1u << 1,
    SMTP_CLIENT_AUTH_CRAM_MD5 = 1u << 2,
};

/* What an EHLO reply advertised. Forgotten after STARTTLS. */
struct smtp_client_caps {
    bool pipelining;
    bool starttls;
    bool eight_bit;
    bool smtputf8;
    bool size;                             /* SIZE offered */
    uint64_t size_max;                     /* its limit; 0: none given */
    unsigned auth;                         /* SMTP_CLIENT_AUTH_* */
    char text[SMTP_CLIENT_REPLY_TEXT_MAX]; /* "PIPELINING, SIZE 1000, ..." for the step */
};

#define SMTP_CLIENT__COMMAND_MAX 2048 /* AUTH PLAIN of the longest user and password fits */
#define SMTP_CLIENT__READ_MAX    (64 * 1024)
#define SMTP_CLIENT__BODY_CHUNK  (16 * 1024)  /* message octets dot-stuffed per write */
#define SMTP_CLIENT__INFLIGHT    (256 * 1024) /* octets written but not yet sent */

struct smtp_client {
    uv_loop_t *loop;
    enum smtp_client_state state;
    struct smtp_client_callbacks cb;
    void *ctx;

    /* The copied parameters. */
    struct settings settings;
    char host[SETTINGS_HOSTNAME_MAX + 1]; /* bare: an IPv6 literal without [ ] */
    char helo[SETTINGS_HOSTNAME_MAX + 3];
    uint32_t port;
    uint64_t idle_ms;
    bool verbose_steps;
    bool implicit_tls;  /* smtps_enabled, tls_mode=strict */
    bool want_starttls; /* smtps_enabled, tls_mode=starttls */

    /* Handles and requests, embedded (STYLE.md, point 10). */
    uv_getaddrinfo_t gai;
    uv_connect_t connect;
    uv_tcp_t tcp;
    uv_timer_t timer;
    uint64_t timer_ms; /* what it was armed with, for a reason */
    bool gai_pending;
    bool tcp_open; /* tcp initialised and not yet closed */
    int closes;    /* uv_close() callbacks still to come */
    struct addrinfo *ai, *ai_cur;
    char peer[INET6_ADDRSTRLEN + 16];      /* "[::1]:25" of the current attempt */
    char attempts[SMTP_CLIENT_REASON_MAX]; /* failed attempts, for the reason */
    bool attempt_timed_out;                /* every attempt so far timed out */

    /* TLS: ssl_ctx from start; tls once a handshake starts. */
    SSL_CTX *ssl_ctx;
    struct tlsio *tls;
    bool tls_on;   /* handshake complete */
    size_t tls_rx; /* octets received since the handshake started */

    /* Replies. */
    struct smtp_reply reply;
    size_t rx_left; /* octets after the reply being handled, in the same read */
    struct smtp_client_caps caps;

    /* AUTH. */
    unsigned auth_mech;
    int auth_stage;

    /* The transaction. */
    const struct smtp_client_msg *msg;
    struct smtp_client_rcpt_result *rcpts;
    size_t rcpt_next; /* next RCPT reply expected (or command to send) */
    size_t naccepted;
    bool pipelined; /* the commands of this transaction went in one write */
    bool mail_ok;   /* 2xx to MAIL */
    bool need_rset; /* the last transaction failed on the server */
    bool discard;   /* a 354 nobody wanted: the dot ends an empty DATA */
    int fail_code;  /* the reply that failed the transaction so far, 0 if none */
    char fail_reason[SMTP_CLIENT_REASON_MAX];
    struct smtp_client_result result;
    size_t body_off; /* octets of header_prefix + data dot-stuffed so far */
    struct smtp_message_dotstuff dotstuff;
    bool body_done;  /* the terminator is written */
    size_t inflight; /* octets in uv_write() requests not yet complete */

    /* Steps and the end. */
    uint64_t step_start; /* uv_hrtime() */
    bool step_failed;    /* a failed step was reported in this state: finish() adds none */
    bool in_reply;       /* handling c->reply: a failure now quotes it */
    enum smtp_fail fail;
    char reason[SMTP_CLIENT_REASON_MAX];

    char rbuf[SMTP_CLIENT__READ_MAX];               /* network reads */
    char plain[SMTP_CLIENT__READ_MAX];              /* decrypted input */
    char scratch[2 * SMTP_CLIENT__BODY_CHUNK + 16]; /* dot-stuffed output before TLS */
};

/* What reaches the state machine from the connection and the API; one
 * function, smtp_client__event(), handles them all. */
enum smtp_client_event {
    SMTP_CLIENT_EV_CONNECTED, /* TCP connection established */
    SMTP_CLIENT_EV_TLS_UP,    /* handshake complete, certificate verified */
    SMTP_CLIENT_EV_REPLY,     /* a whole reply is in c->reply */
    SMTP_CLIENT_EV_EOF,       /* the server closed the connection */
    SMTP_CLIENT_EV_TIMEOUT,   /* the timer of the current phase fired */
    SMTP_CLIENT_EV_KICK,      /* smtp_client_kick() */
    SMTP_CLIENT_EV_CANCEL,    /* smtp_client_cancel() */
};

const char *smtp_client__state_name(enum smtp_client_state s);
void smtp_client__event(struct smtp_client *c, enum smtp_client_event ev);
/* Plaintext octets from the server (decrypted once TLS is on): replies are
 * parsed and handed to the state machine one by one. */
void smtp_client__input(struct smtp_client *c, const char *data, size_t len);
/* After the last close or request: on_closed, then free (if ending). */
void smtp_client__maybe_finalize(struct smtp_client *c);
void smtp_client__set_state(struct smtp_client *c, enum smtp_client_state s);
/* Arms the session's one timer for the current phase. */
void smtp_client__arm(struct smtp_client *c, uint64_t ms);
/* The timeout of a phase in ms: the setting, or RFC 5321's default. */
uint64_t smtp_client__timeout(const struct smtp_client *c, enum settings_field f);

/* Ends the session (no-op once ending): a held message gets on_done with
 * the same failure, then the handles close and on_closed follows. */
void smtp_client__finish(struct smtp_client *c, enum smtp_fail fail, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
/* Sends octets (through TLS once on); on failure ends the session and
 * returns its error. `secret` octets are wiped from the buffers after. */
int smtp_client__send(struct smtp_client *c, const char *data, size_t len, bool secret);
/* Formats one command, adds CRLF, logs it (not its arguments when
 * secret) and sends it. */
int smtp_client__command(struct smtp_client *c, bool secret, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
/* Reports a step through on_step, with the time since the last one. */
void smtp_client__step(struct smtp_client *c, enum smtp_client_step_kind kind, bool ok,
                       enum smtp_fail fail, const char *detail, const char *reply);
/* "4xx" -> SMTP_FAIL_REPLY_4XX, "5xx" -> SMTP_FAIL_REPLY_5XX. */
enum smtp_fail smtp_client__fail_of(int code);
/* The current reply as a reason: "<what>: 550 5.1.1 ...". */
void smtp_client__reason(const struct smtp_client *c, char *buf, size_t len, const char *what);
/* What the current reply answers, for a reason: "EHLO", "RCPT TO:<x>"... */
void smtp_client__what(const struct smtp_client *c, char *buf, size_t len);
/* An address, escaped, for a reason or a log line. */
const char *smtp_client__quote(char *buf, size_t len, const char *s);

/* smtp_client_conn.c */

/* Starts uv_getaddrinfo() for c->host and c->port. */
int smtp_client__resolve(struct smtp_client *c);
/* Connects to the next address (from the first on); when none is left,
 * ends the session with every attempt's failure. */
void smtp_client__connect_next(struct smtp_client *c);
/* Records a failed attempt for the CONNECT step and the reason. */
void smtp_client__attempt_failed(struct smtp_client *c, const char *why, bool timed_out);
/* Closes the TCP handle if open; smtp_client__on_close() follows. */
void smtp_client__tcp_close(struct smtp_client *c);
void smtp_client__on_close(uv_handle_t *h);
/* Starts a TLS handshake on the connection (states TLS, STARTTLS_TLS). */
void smtp_client__tls_start(struct smtp_client *c);
/* The server closed the connection during a handshake: ends the session
 * with what OpenSSL makes of it (an alert, a truncated record). */
void smtp_client__tls_eof(struct smtp_client *c);

/* smtp_client_auth.c */

/* The mechanism to use from what is offered, or 0. */
unsigned smtp_client__auth_choose(unsigned offered, bool tls);
const char *smtp_client__auth_name(unsigned mech);
/* Sends the first AUTH command of c->auth_mech. */
void smtp_client__auth_start(struct smtp_client *c);
/* A reply in the AUTH state: the next step, or the end of AUTH. */
void smtp_client__auth_reply(struct smtp_client *c);

/* smtp_client_mail.c */

/* Starts the transaction of c->msg: false if it was refused before
 * anything was sent (on_done was called, c->msg is NULL again). */
bool smtp_client__mail_start(struct smtp_client *c);
/* The entry action of MAIL, RCPT, DATA, BODY and DOT. */
void smtp_client__mail_enter(struct smtp_client *c);
/* A reply in the MAIL, RCPT, DATA, BODY or DOT state. */
void smtp_client__mail_reply(struct smtp_client *c);
/* Writes more of the message while little is in flight (state BODY). */
void smtp_client__body_pump(struct smtp_client *c);
/* Ends the transaction: on_done with c->result, then clears it. */
void smtp_client__mail_done(struct smtp_client *c);

/* conntest.c, conntest_diag.c */

/* What a diagnosis is written from: the failed step and the test. */
struct conntest__diag {
    const struct settings *settings; /* the settings tried */
    uint32_t port;                   /* the port connected to */
    const char *to;                  /* the test recipient */
    const char *helo;                /* the EHLO name given, NULL: this host's name */
    const char *caps;                /* the last EHLO capabilities, "" if none */
    Smtpsync__TestStepKind kind;
    enum smtp_fail fail;
    const char *detail; /* may be NULL */
    const char *reply;  /* may be NULL */
    int code;           /* the reply code, 0 if none */
};

/* Appends `fmt` to buf[len] at *pos; output that does not fit is cut. */
void conntest__appendf(char *buf, size_t len, size_t *pos, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));
/* The reply code at the start of a server reply, or 0. */
int conntest__reply_code(const char *reply);
/* Writes a plain-language diagnosis of a failed step into b (cut to len). */
void conntest__diagnose(const struct conntest__diag *in, char *b, size_t len);

#endif
