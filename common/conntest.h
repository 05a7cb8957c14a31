/*
 * conntest: Test Connection. Runs one SMTP session with an instance's
 * (draft or saved) settings, sends a short test message to the test
 * address, and records every step: resolve, TCP connect, TLS handshake
 * (protocol, cipher), certificate (subject, SAN, expiry, chain result),
 * greeting, EHLO capabilities, STARTTLS, AUTH mechanism and result,
 * MAIL/RCPT/DATA replies, QUIT, each with its time. On failure the failing
 * step carries the server's reply verbatim and a plain diagnosis ("the
 * server answered in plaintext: port 587 expects tls_mode=starttls", "the
 * certificate names mail.example.net, not mail.example.com", ...).
 *
 * The result is a Smtpsync__TestResult so the CLI, the daemons and the
 * admin API share one representation; conntest_print() and
 * conntest_json() render it for people and scripts. No secret is ever put
 * in it.
 */
#ifndef SMTPSYNC_CONNTEST_H
#define SMTPSYNC_CONNTEST_H

#include <stdio.h>

#include <uv.h>

#include "settings.h"
#include "smtpsync.pb-c.h"

struct conntest;

struct conntest_params {
    const struct settings *settings; /* copied; password loaded */
    const char *to;                  /* NULL: settings->test_address */
    const char *node;                /* where the test runs (TestResult.node) */
    const char *helo;                /* NULL: this host's name */
    /* Which settings are tried, named in the test mail's body ("draft on
     * revision 3", "revision 3"); NULL: not named. */
    const char *revision;
};

/* `result` is owned by the callee of `done` (free with
 * smtpsync__test_result__free_unpacked-compatible conntest_result_free()). */
typedef void (*conntest_done_cb)(void *arg, Smtpsync__TestResult *result);

/* Starts the test on `loop`. Returns 0 and calls `done` once, or an error
 * (-ENOMEM) and never calls it. Settings that cannot be tried (no hostname,
 * no test address) give a result with a failed first step, not an error. */
int conntest_start(uv_loop_t *loop, const struct conntest_params *params, conntest_done_cb done,
                   void *arg);

/* Runs a test to completion on a private loop (the CLI's local mode). */
int conntest_run(const struct conntest_params *params, Smtpsync__TestResult **result);

void conntest_result_free(Smtpsync__TestResult *result);

/* The name of a step kind as printed and in JSON: "resolve", "connect",
 * "tls", "certificate", ..., "settings" (TEST_STEP_SETTINGS, the check of
 * the settings before any session); "unknown" for any other value. */
const char *conntest_step_name(Smtpsync__TestStepKind kind);

/* Text in a result is printable ASCII: everything else from a server or the
 * settings is escaped as \xNN when recorded (server replies keep "\n"
 * between their lines). A failed step whose diagnosis starts with
 * CONNTEST_WARNING ("warning: ") did not stop the test: a STARTTLS
 * fallback to plaintext, or a failure after the mail was accepted. */
#define CONNTEST_WARNING "warning: "

/* One line per step: "ok   TLS handshake   3 ms  TLSv1.3 TLS_AES_256_GCM_SHA384",
 * failing steps followed by the server's reply and the diagnosis. */
void conntest_print(FILE *out, const Smtpsync__TestResult *result);

#endif
