/*
 * testutil: helpers shared by the cmocka unit tests.
 *
 * Include after <setjmp.h>, <stdarg.h>, <stddef.h> and <cmocka.h>.
 */
#ifndef SMTPSYNC_TESTUTIL_H
#define SMTPSYNC_TESTUTIL_H

#include <stddef.h>

/* A fresh private temporary directory (mkdtemp under $TMPDIR or /tmp);
 * returns a malloc'd path. Fails the test on error. */
char *testutil_tmpdir(void);

/* Removes a directory tree (the test's own temporary directory). */
void testutil_rmtree(const char *path);

/* Path of a file made by tests/tools/make-certs.sh, in a static buffer that
 * the next call overwrites ($SMTPSYNC_TEST_CERTS/<name>). */
const char *testutil_cert_path(const char *name);

/* Reads a whole file into a NUL-terminated malloc'd buffer; *len if not
 * NULL. Fails the test on error. */
char *testutil_read_file(const char *path, size_t *len);

/* A fresh temporary directory holding the deployment PKI that
 * tests/tools/make-pki.sh makes: `make-pki.sh OPTIONS DIR NODES` (e.g.
 * "-a alice", "primary site-b"; $SMTPSYNC_MAKE_PKI overrides the script's
 * path). Returns the malloc'd directory, or NULL (directory removed) when
 * the script failed. */
char *testutil_make_pki(const char *options, const char *nodes);

struct mtls_ctx;
/* mtls_ctx_load() of <pki>/ca.pem and <pki>/<name>.pem/.key; fails the test
 * on error. */
struct mtls_ctx *testutil_mtls_ctx(const char *pki, const char *name);

struct config;
struct config_problems;
/* config_load_file() of `text` as the file "t.ini", with `p` initialized
 * first; returns its result. */
int testutil_parse_config(const char *text, struct config *c, struct config_problems *p);

/* True if needle[nlen] occurs in hay[hlen] (binary-safe). */
int testutil_memmem(const void *hay, size_t hlen, const void *needle, size_t nlen);

#endif
