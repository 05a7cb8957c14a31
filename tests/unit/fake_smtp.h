/*
 * fake_smtp: a scripted SMTP server inside a test's own libuv loop, for
 * unit tests of the SMTP client, the sender and Test Connection. It speaks
 * enough ESMTP for the client (EHLO, STARTTLS, AUTH PLAIN/LOGIN, MAIL, RCPT,
 * DATA, RSET, QUIT, PIPELINING) and records what it received, so tests can
 * assert on the exact octets. Real-MTA interop is tested against Postfix in
 * tests/integration; this is for the exact, repeatable cases.
 *
 * Replies are scripted per verb: fake_smtp_script() makes the next `count`
 * commands with that verb get `reply` (one or more CRLF-separated lines,
 * sent as given) instead of the default 250/354/235 reply. "GREETING" is
 * the verb of the banner, "DATA-END" that of the reply after the final dot.
 * A reply of "" means: close the connection instead of answering; NULL
 * means: never answer nor read again (for timeouts), until the client
 * closes.
 */
#ifndef SMTPSYNC_FAKE_SMTP_H
#define SMTPSYNC_FAKE_SMTP_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <uv.h>

struct fake_smtp;

struct fake_smtp_params {
    bool implicit_tls;     /* TLS from the first octet */
    bool starttls;         /* offer STARTTLS */
    const char *cert_file; /* server certificate (PEM) for either TLS mode */
    const char *key_file;
    bool pipelining;             /* advertise PIPELINING (default capabilities otherwise) */
    const char *auth;            /* "PLAIN LOGIN", or NULL: no AUTH offered */
    const char *user, *password; /* credentials AUTH accepts */
    uint64_t size_limit;         /* advertise SIZE n when > 0 */
    uint64_t greeting_delay_ms;  /* wait before the banner */
    int tls_max_version;         /* e.g. TLS1_1_VERSION for an outdated server (security
                                    level 0 then); 0: OpenSSL's default */
    bool smtputf8;               /* advertise SMTPUTF8 */
    bool tls_silent_close;       /* drop the connection at the first TLS octet from the client,
                                    without an alert (as an outdated server on Python's asyncio
                                    does: the client cannot tell why) */
};

/* Listens on 127.0.0.1, port chosen by the kernel (*port). The strings of
 * `p` are copied. ERROR_TLS when the certificate or key cannot be loaded;
 * a libuv error after the listener was made leaves it closing on the loop,
 * which the test runs to free it. */
int fake_smtp_start(uv_loop_t *loop, const struct fake_smtp_params *p, struct fake_smtp **out,
                    uint16_t *port);
/* Closes the listener and every connection; frees on the loop's next turn
 * (the test runs the loop until it is closed). */
void fake_smtp_stop(struct fake_smtp *s);

/* Verbs match case-insensitively; scripts of one verb are used in the
 * order given; a count of 0 means every such command from now on. A reply
 * missing its final CRLF gets one; one whose last line has no code is sent
 * all the same (garbage, for the client's tests), greeting included. A
 * scripted reply takes effect as the default would when its (last line's)
 * code is 2xx or 3xx: a 354 to DATA reads a message, a 2xx to DATA-END
 * records it, a 235 to AUTH authenticates, a 334 to AUTH continues it; a
 * reply to STARTTLS whose first line is 220 starts TLS, every line of it
 * going out in one write before the handshake (the injection case).
 * "AUTH-RESULT" is the verb of the reply that ends an AUTH exchange. The
 * server calls itself fake.test; MAIL needs EHLO/HELO first, as Postfix
 * does. */
void fake_smtp_script(struct fake_smtp *s, const char *verb, const char *reply, unsigned count);

/* What was received. Messages are the DATA octets after un-dot-stuffing,
 * without the final ".\r\n". */
size_t fake_smtp_nmessages(const struct fake_smtp *s);
const char *fake_smtp_message(const struct fake_smtp *s, size_t i, size_t *len);
/* "from rcpt1 rcpt2", the paths without <>: "a@x b@y", " b@y" for MAIL FROM:<>. */
const char *fake_smtp_envelope(const struct fake_smtp *s, size_t i);
unsigned fake_smtp_nconnections(const struct fake_smtp *s);
/* Every command line received, CRLF removed, joined by "\n" (AUTH
 * arguments included, so tests can check what went over the wire). */
const char *fake_smtp_transcript(const struct fake_smtp *s);
/* tlsio_why() of the last server-side TLS failure, "" if none. */
const char *fake_smtp_tls_error(const struct fake_smtp *s);

#endif
