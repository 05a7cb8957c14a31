#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include <ftw.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "testutil.h"

#include "config.h"
#include "mtls.h"

char *testutil_tmpdir(void)
{
    const char *base = getenv("TMPDIR");
    char *path;

    if (base == NULL || *base == '\0')
        base = "/tmp";
    assert_true(asprintf(&path, "%s/smtpsync-test-XXXXXX", base) > 0);
    assert_non_null(mkdtemp(path));
    return path;
}

static int rm_one(const char *path, const struct stat *sb, int flag, struct FTW *ftw)
{
    (void)sb;
    (void)flag;
    (void)ftw;
    return remove(path);
}

void testutil_rmtree(const char *path)
{
    if (path != NULL)
        nftw(path, rm_one, 16, FTW_DEPTH | FTW_PHYS);
}

const char *testutil_cert_path(const char *name)
{
    static char buf[4096];
    const char *dir = getenv("SMTPSYNC_TEST_CERTS");

    assert_non_null(dir);
    assert_true((size_t)snprintf(buf, sizeof(buf), "%s/%s", dir, name) < sizeof(buf));
    return buf;
}

char *testutil_read_file(const char *path, size_t *len)
{
    FILE *f = fopen(path, "rb");
    char *buf = NULL;
    size_t cap = 0, n = 0, r;

    if (f == NULL)
        fail_msg("cannot open %s", path);
    do {
        if (n + 4096 + 1 > cap) {
            cap = (cap + 4096 + 1) * 2;
            buf = realloc(buf, cap);
            assert_non_null(buf);
        }
        r = fread(buf + n, 1, 4096, f);
        n += r;
    } while (r > 0);
    fclose(f);
    buf[n] = '\0';
    if (len != NULL)
        *len = n;
    return buf;
}

int testutil_memmem(const void *hay, size_t hlen, const void *needle, size_t nlen)
{
    return memmem(hay, hlen, needle, nlen) != NULL;
}

/* tests/tools/make-pki.sh, found beside this file. */
static const char *make_pki_script(void)
{
    static char path[4096];
    const char *env = getenv("SMTPSYNC_MAKE_PKI");
    const char *slash;

    if (env != NULL && env[0] != '\0')
        return env;
    slash = strrchr(__FILE__, '/');
    snprintf(path, sizeof(path), "%.*s/../tools/make-pki.sh",
             slash != NULL ? (int)(slash - __FILE__) : 1, slash != NULL ? __FILE__ : ".");
    return path;
}

char *testutil_make_pki(const char *options, const char *nodes)
{
    char cmd[8192];
    char *dir = testutil_tmpdir();

    snprintf(cmd, sizeof(cmd), "bash '%s' %s '%s' %s >/dev/null", make_pki_script(), options, dir,
             nodes);
    if (system(cmd) != 0) {
        testutil_rmtree(dir);
        free(dir);
        return NULL;
    }
    return dir;
}

struct mtls_ctx *testutil_mtls_ctx(const char *pki, const char *name)
{
    char ca[4200], cert[4200], key[4200], why[MTLS_WHY_MAX];
    struct mtls_ctx *ctx;

    snprintf(ca, sizeof(ca), "%s/ca.pem", pki);
    snprintf(cert, sizeof(cert), "%s/%s.pem", pki, name);
    snprintf(key, sizeof(key), "%s/%s.key", pki, name);
    if (mtls_ctx_load(ca, cert, key, &ctx, why, sizeof(why)) != 0)
        fail_msg("mtls_ctx_load %s: %s", name, why);
    return ctx;
}

int testutil_parse_config(const char *text, struct config *c, struct config_problems *p)
{
    FILE *f = fmemopen((void *)(uintptr_t)text, strlen(text), "r");
    int rc;

    assert_non_null(f);
    config_problems_init(p);
    rc = config_load_file(f, "t.ini", c, p);
    fclose(f);
    return rc;
}
