/*
 * smtp_client: one SMTP session on libuv, an explicit state machine
 * (STYLE.md, point 12), OpenSSL through memory BIOs (tlsio.h), no blocking
 * call and no thread.
 *
 *   resolve (uv_getaddrinfo) -> connect, each address in turn, IPv6 and
 *   IPv4 -> implicit TLS when tls_mode=strict -> greeting -> EHLO (HELO if
 *   EHLO is refused with 5xx) -> STARTTLS, handshake, fresh EHLO when
 *   tls_mode=starttls -> AUTH -> ready
 *   ready: ask for a message (on_next) -> MAIL/RCPT/DATA (pipelined when
 *   PIPELINING is offered) -> on_done -> ask again; RSET after a failed
 *   transaction; QUIT when there is nothing more (after idle_ms).
 *
 * Security rules, always on:
 *   - TLS 1.2 minimum; the peer certificate must chain to the instance's
 *     trust_certificate bundle (a self-signed leaf or an intermediate may be
 *     the anchor: X509_V_FLAG_PARTIAL_CHAIN); SNI and the hostname check use
 *     the configured hostname (an IP literal is checked as an IP).
 *   - STARTTLS fails closed: not offered, refused or a failed handshake end
 *     the attempt (SMTP_FAIL_STARTTLS), unless settings.starttls_fallback is
 *     on and no AUTH would then go in clear; each fallback is reported
 *     through on_step with ok=false and `warning` set, for the caller to log.
 *   - Octets received after the 220 to STARTTLS and before the handshake
 *     abort the session (SMTP_FAIL_PROTOCOL, the STARTTLS injection class);
 *     capabilities learned before TLS are forgotten.
 *   - AUTH (PLAIN, LOGIN, CRAM-MD5, from what the server offers, strongest
 *     first) only over TLS unless allow_plaintext_auth is on.
 *   - Replies: lines over 512 octets, more than SMTP_CLIENT_REPLY_LINES_MAX
 *     lines, inconsistent codes or garbage end the session with a reason.
 *   - Per-phase timeouts from settings.timeouts (0: RFC 5321 §4.5.3.2
 *     defaults; connect 30 s). Resolving the name counts against the
 *     connect timeout; the reply to QUIT is awaited SMTP_CLIENT_QUIT_MS at
 *     most (the mail is sent by then: nothing is lost by not waiting).
 *   - Nothing secret leaves the client: the password, its base64 (AUTH
 *     LOGIN) and the AUTH PLAIN blob are masked (SETTINGS_PASSWORD_MASK) in
 *     every reason, step detail, server reply and recipient text it hands
 *     out, as a hostile server may echo what it was sent; debug logs name
 *     AUTH lines by a fixed label and do not quote the AUTH exchange's
 *     replies.
 *
 * Failures and callbacks: every end of a session but a clean QUIT or a
 * cancel is reported first through on_step, as a failed step of the phase
 * it happened in (RESOLVE ... QUIT), then a message held gets on_done, then
 * on_closed. So Test Connection always knows where a session broke.
 *
 * Ownership: the client allocates itself in smtp_client_start() and frees
 * itself after on_closed returns, the last callback it makes. It copies the
 * settings it is given. A message handed over by on_next is borrowed until
 * on_done is called for it, exactly once.
 */
#ifndef SMTPSYNC_SMTP_CLIENT_H
#define SMTPSYNC_SMTP_CLIENT_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <uv.h>

#include "settings.h"

#define SMTP_CLIENT_LINE_MAX        512  /* reply line, CRLF included (RFC 5321 §4.5.3.1.5) */
#define SMTP_CLIENT_REPLY_LINES_MAX 100  /* lines in one multi-line reply */
#define SMTP_CLIENT_REPLY_TEXT_MAX  1024 /* reply text kept for reports */
#define SMTP_CLIENT_REASON_MAX      1024
#define SMTP_CLIENT_QUIT_MS         10000 /* wait for the reply to QUIT */

struct smtp_client;

/* Why a session or a message failed; also what Test Connection diagnoses. */
#define SMTP_FAIL_MAP(XX)                                                                          \
    XX(NONE, "none")                                                                               \
    XX(RESOLVE, "host name did not resolve")                                                       \
    XX(CONNECT, "TCP connection failed")                                                           \
    XX(TIMEOUT, "server did not answer in time")                                                   \
    XX(CLOSED, "server closed the connection")                                                     \
    XX(TLS_HANDSHAKE, "TLS handshake failed")                                                      \
    XX(TLS_NOT_TLS, "server did not speak TLS (wrong port for the TLS mode?)")                     \
    XX(TLS_VERSION, "server offers no TLS version at or above 1.2")                                \
    XX(CERT_UNTRUSTED, "certificate not signed by the imported certificate")                       \
    XX(CERT_HOSTNAME, "host name not in the certificate")                                          \
    XX(CERT_EXPIRED, "certificate expired or not yet valid")                                       \
    XX(STARTTLS, "STARTTLS not offered or refused")                                                \
    XX(AUTH_UNAVAILABLE, "no usable AUTH mechanism")                                               \
    XX(AUTH_REFUSED, "authentication refused")                                                     \
    XX(AUTH_PLAINTEXT, "AUTH would be sent in clear")                                              \
    XX(PROTOCOL, "SMTP protocol violation by the server")                                          \
    XX(REPLY_4XX, "temporary failure reported by the server")                                      \
    XX(REPLY_5XX, "permanent failure reported by the server")                                      \
    XX(TOO_BIG, "message larger than the server accepts")                                          \
    XX(SETTINGS, "settings unusable")                                                              \
    XX(CANCELLED, "cancelled")                                                                     \
    XX(INTERNAL, "internal error")

enum smtp_fail {
#define XX(name, text) SMTP_FAIL_##name,
    SMTP_FAIL_MAP(XX)
#undef XX
        SMTP_FAIL_COUNT
};

const char *smtp_fail_str(enum smtp_fail f);
/* True when a message failing this way may succeed later (retry it). */
bool smtp_fail_is_temporary(enum smtp_fail f);

/* One message to send. The client reads it, never changes it. */
struct smtp_client_msg {
    const char *mail_from;    /* envelope sender, bare address */
    const char *const *rcpts; /* bare addresses */
    size_t nrcpts;
    const char *header_prefix; /* sent before `data`, e.g. the From line */
    size_t header_prefix_len;
    const char *data; /* the message, CRLF lines, not dot-stuffed */
    size_t data_len;
    bool eight_bit; /* needs 8BITMIME */
    bool smtputf8;  /* an address is not ASCII: needs SMTPUTF8 */
};

struct smtp_client_rcpt_result {
    int code; /* the server's reply code, 0 if not sent */
    char text[SMTP_CLIENT_REPLY_TEXT_MAX];
};

struct smtp_client_result {
    enum smtp_fail fail;                 /* NONE: accepted by the server after DATA */
    int code;                            /* the deciding reply code, 0 if none */
    char reason[SMTP_CLIENT_REASON_MAX]; /* "RCPT TO <x>: 550 5.1.1 ..." */
    size_t naccepted;                    /* recipients the server accepted */
    /* Per recipient, in msg->rcpts order; NULL when the session failed
     * before RCPT. Valid only during on_done. */
    const struct smtp_client_rcpt_result *rcpts;
};

/* A step of the session, for Test Connection and for debug logs. */
enum smtp_client_step_kind {
    SMTP_STEP_RESOLVE,
    SMTP_STEP_CONNECT,
    SMTP_STEP_TLS,
    SMTP_STEP_CERTIFICATE,
    SMTP_STEP_GREETING,
    SMTP_STEP_EHLO,
    SMTP_STEP_STARTTLS,
    SMTP_STEP_AUTH,
    SMTP_STEP_MAIL,
    SMTP_STEP_RCPT,
    SMTP_STEP_DATA,
    SMTP_STEP_QUIT,
};

struct smtp_client_step {
    enum smtp_client_step_kind kind;
    bool ok;
    bool warning;             /* ok, but the operator should know (plaintext fallback) */
    enum smtp_fail fail;      /* when !ok */
    uint64_t elapsed_us;      /* time spent in this step */
    const char *detail;       /* "192.0.2.1:465", "TLSv1.3 TLS_AES_256_GCM_SHA384",
                                 "subject=... san=... expires=... chain=ok", capabilities,
                                 "PLAIN"... never a secret */
    const char *server_reply; /* verbatim reply lines joined by "\n", or NULL */
};

struct smtp_client_callbacks {
    /* Ready for a message: set *msg and return true, or return false when
     * there is none now (the client waits idle_ms for smtp_client_kick()
     * and then sends QUIT, after which it never asks again). May be called
     * many times per session, and from inside smtp_client_kick(). */
    bool (*on_next)(void *ctx, const struct smtp_client_msg **msg);
    /* The transaction for `msg` ended, accepted or not. */
    void (*on_done)(void *ctx, const struct smtp_client_msg *msg,
                    const struct smtp_client_result *result);
    /* Optional: each step as it completes (or fails). */
    void (*on_step)(void *ctx, const struct smtp_client_step *step);
    /* The session is over: fail is NONE after a clean QUIT, else why it
     * ended, with the same kind of reason as a message result. A message
     * held at that moment got on_done before this. Last callback. */
    void (*on_closed)(void *ctx, enum smtp_fail fail, const char *reason);
};

struct smtp_client_params {
    const struct settings *settings; /* copied, password included */
    const char *host;                /* relay to use; NULL: settings->hostname */
    uint32_t port;                   /* 0: settings_port(settings) */
    const char *helo;                /* EHLO argument; NULL: this host's name */
    uint64_t idle_ms;                /* keep an idle session open this long; 0: QUIT at once */
    bool verbose_steps;              /* report MAIL/RCPT/DATA steps too (Test Connection) */
};

/*
 * Starts a session. Returns 0 and later calls back, or a negative error
 * (ERROR_INVALID for unusable settings, ERROR_TLS when the trust bundle
 * cannot be loaded, -ENOMEM) and never calls back.
 */
int smtp_client_start(uv_loop_t *loop, const struct smtp_client_params *params,
                      const struct smtp_client_callbacks *cb, void *ctx, struct smtp_client **out);

/* New mail: when the session is idle (on_next returned false and idle_ms
 * has not run out), calls on_next again at once, from inside this call,
 * and returns true. Returns false and does nothing in any other state: the
 * session is busy (it asks by itself when done), still connecting (it asks
 * once ready), or past idle and ending (it never asks again; start another
 * session for the mail). */
bool smtp_client_kick(struct smtp_client *c);

/* Masks, in the string `text` (room for `size` octets), every form in
 * which the password of `s` may come back from a server: as it is, as
 * escaped in a reply, its base64 (AUTH LOGIN) and the AUTH PLAIN blob.
 * The client applies it to everything it hands out; whoever quotes a
 * server's text from elsewhere may use it too. */
void smtp_client_redact(const struct settings *s, char *text, size_t size);

/* Ends the session now: a held message gets on_done with SMTP_FAIL_CANCELLED,
 * then on_closed. Safe to call from any callback except on_closed. */
void smtp_client_cancel(struct smtp_client *c);

#endif
