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

/* True if needle[nlen] occurs in hay[hlen] (binary-safe). */
int testutil_memmem(const void *hay, size_t hlen, const void *needle, size_t nlen);

#endif
