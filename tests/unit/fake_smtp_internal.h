/*
 * fake_smtp internals shared by fake_smtp.c (listener, connections, I/O,
 * TLS) and fake_smtp_session.c (the SMTP dialogue); tests include
 * fake_smtp.h only.
 */
#ifndef SMTPSYNC_FAKE_SMTP_INTERNAL_H
#define SMTPSYNC_FAKE_SMTP_INTERNAL_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <openssl/ssl.h>
#include <uv.h>

#include "fake_smtp.h"
#include "tlsio.h"

#define FAKE_SMTP_NAME     "fake.test"
#define FAKE_SMTP_VERB_MAX 16

/* A growable byte buffer, always NUL-terminated once used. Test code: an
 * allocation failure aborts rather than threading -ENOMEM everywhere. */
struct fake_buf {
    char *p;
    size_t len;
    size_t cap;
};

struct fake_script {
    struct fake_script *next;
    char verb[FAKE_SMTP_VERB_MAX + 1];
    char *reply;
    unsigned count; /* uses left */
    bool forever;
};

struct fake_message {
    char *data;
    size_t len;
    char *envelope;
};

/* What the next line of a connection is. */
#define FAKE_STATE_MAP(XX)                                                                         \
    XX(COMMAND)                                                                                    \
    XX(DATA)                                                                                       \
    XX(AUTH_PLAIN)                                                                                 \
    XX(AUTH_LOGIN_USER)                                                                            \
    XX(AUTH_LOGIN_PASS)                                                                            \
    XX(AUTH_CRAM)

enum fake_state {
#define XX(name) FAKE_##name,
    FAKE_STATE_MAP(XX)
#undef XX
};

struct fake_conn {
    struct fake_smtp *s;
    struct fake_conn *next;
    struct fake_conn *prev;
    uv_tcp_t tcp;
    uv_timer_t timer; /* greeting delay */
    uv_shutdown_t shutdown;
    int handles; /* open handles; the connection is freed at zero */
    bool ending; /* no more input is handled; replies are flushed */
    bool closed; /* uv_close() called */
    bool delay_done;
    bool greeted;
    struct tlsio *tls; /* non-NULL from implicit TLS or STARTTLS on */
    bool tls_up;       /* handshake complete */
    enum fake_state state;
    bool helo;
    bool authed;
    bool mail;
    unsigned nrcpt;
    struct fake_buf envelope; /* "from rcpt1 rcpt2" */
    struct fake_buf data;
    struct fake_buf in; /* plaintext received, from in_off on not yet handled */
    size_t in_off;
    struct fake_buf out; /* replies of this turn, not yet sent */
    char *login_user;
    char challenge[128];
};

struct fake_smtp {
    uv_loop_t *loop;
    uv_tcp_t listener;
    struct fake_smtp_params p; /* strings owned (copies) */
    SSL_CTX *ctx;
    struct fake_script *scripts;
    struct fake_message *msgs;
    size_t nmsgs;
    size_t capmsgs;
    struct fake_buf transcript;
    char tls_error[TLSIO_WHY_MAX];
    unsigned nconnections;
    unsigned serial;
    struct fake_conn *conns;
    int refs; /* listener + live connections; freed at zero once stopped */
    bool stopping;
};

/* fake_smtp.c */

/* Test code: an allocation failure aborts rather than threading -ENOMEM
 * through every reply. */
void fake_smtp__oom(void) __attribute__((noreturn));
void fake_smtp__buf_add(struct fake_buf *b, const void *data, size_t len);
void fake_smtp__buf_str(struct fake_buf *b, const char *s);
void fake_smtp__buf_reset(struct fake_buf *b);
/* Cleanses (buffers may hold credentials) and frees. */
void fake_smtp__buf_wipe(struct fake_buf *b);
char *fake_smtp__strdup(const char *s); /* NULL stays NULL */
void fake_smtp__free_secret(char *s);
/* Sends the replies queued in c->out, encrypted once TLS is up. */
void fake_smtp__flush(struct fake_conn *c);
/* Flushes, sends FIN after the replies and closes. */
void fake_smtp__conn_end(struct fake_conn *c);
/* Closes at once. */
void fake_smtp__conn_close(struct fake_conn *c);

/* fake_smtp_session.c */

/* Sends the banner once the greeting delay is over and TLS (if implicit)
 * is up, then handles the commands that came early. */
void fake_smtp__greet(struct fake_conn *c);
/* Handles every complete line of c->in, then flushes the replies. */
void fake_smtp__process(struct fake_conn *c);

#endif
