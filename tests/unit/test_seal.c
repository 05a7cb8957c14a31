#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "error.h"
#include "seal.h"
#include "testutil.h"

struct fixture {
    char *dir;
    char path[4096];
    struct seal_key key;
};

static int setup(void **state)
{
    struct fixture *f = calloc(1, sizeof(*f));

    assert_non_null(f);
    f->dir = testutil_tmpdir();
    snprintf(f->path, sizeof(f->path), "%s/node.key", f->dir);
    assert_int_equal(seal_key_load(f->path, true, &f->key), 0);
    *state = f;
    return 0;
}

static int teardown(void **state)
{
    struct fixture *f = *state;

    seal_key_wipe(&f->key);
    testutil_rmtree(f->dir);
    free(f->dir);
    free(f);
    return 0;
}

static void test_seal_key_created_0600(void **state)
{
    struct fixture *f = *state;
    struct seal_key again;
    struct stat st;

    assert_int_equal(stat(f->path, &st), 0);
    assert_int_equal(st.st_mode & 0777, 0600);
    assert_int_equal(st.st_size, SEAL_KEY_LEN);
    /* Loading again gives the same key, not a new one. */
    assert_int_equal(seal_key_load(f->path, true, &again), 0);
    assert_memory_equal(again.bytes, f->key.bytes, SEAL_KEY_LEN);
    seal_key_wipe(&again);
}

static void test_seal_key_missing_without_create(void **state)
{
    struct fixture *f = *state;
    struct seal_key k;
    char path[4200];

    snprintf(path, sizeof(path), "%s/absent.key", f->dir);
    assert_int_equal(seal_key_load(path, false, &k), -ENOENT);
}

static void write_file(const char *path, const void *data, size_t len, mode_t mode)
{
    int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC, mode);

    assert_true(fd >= 0);
    assert_int_equal(write(fd, data, len), (ssize_t)len);
    assert_int_equal(fchmod(fd, mode), 0);
    close(fd);
}

static void test_seal_key_refuses_bad_files(void **state)
{
    struct fixture *f = *state;
    uint8_t bytes[SEAL_KEY_LEN + 1] = {0};
    struct seal_key k;
    char path[4200];

    snprintf(path, sizeof(path), "%s/open.key", f->dir);
    write_file(path, bytes, SEAL_KEY_LEN, 0644);
    assert_int_equal(seal_key_load(path, true, &k), ERROR_KEYFILE);

    snprintf(path, sizeof(path), "%s/short.key", f->dir);
    write_file(path, bytes, SEAL_KEY_LEN - 1, 0600);
    assert_int_equal(seal_key_load(path, true, &k), ERROR_KEYFILE);

    snprintf(path, sizeof(path), "%s/long.key", f->dir);
    write_file(path, bytes, SEAL_KEY_LEN + 1, 0600);
    assert_int_equal(seal_key_load(path, true, &k), ERROR_KEYFILE);

    /* A symlink could point a daemon at someone else's file. */
    snprintf(path, sizeof(path), "%s/link.key", f->dir);
    assert_int_equal(symlink(f->path, path), 0);
    assert_int_equal(seal_key_load(path, true, &k), ERROR_KEYFILE);

    /* A directory is not a key. */
    snprintf(path, sizeof(path), "%s/dir.key", f->dir);
    assert_int_equal(mkdir(path, 0700), 0);
    assert_int_not_equal(seal_key_load(path, true, &k), 0);
}

static void test_seal_round_trip(void **state)
{
    struct fixture *f = *state;
    const char *secret = "correct horse battery staple";
    uint8_t blob[256], back[256];
    size_t blen, plen;

    assert_int_equal(seal_seal(&f->key, "site-b", (const uint8_t *)secret, strlen(secret), blob,
                               sizeof(blob), &blen),
                     0);
    assert_int_equal(blen, seal_sealed_len(strlen(secret)));
    assert_false(testutil_memmem(blob, blen, secret, strlen(secret)));
    assert_int_equal(seal_open(&f->key, "site-b", blob, blen, back, sizeof(back), &plen), 0);
    assert_int_equal(plen, strlen(secret));
    assert_memory_equal(back, secret, plen);
}

static void test_seal_fresh_nonce_each_time(void **state)
{
    struct fixture *f = *state;
    uint8_t a[64], b[64];
    size_t alen, blen;

    assert_int_equal(seal_seal(&f->key, "x", (const uint8_t *)"pw", 2, a, sizeof(a), &alen), 0);
    assert_int_equal(seal_seal(&f->key, "x", (const uint8_t *)"pw", 2, b, sizeof(b), &blen), 0);
    assert_int_equal(alen, blen);
    assert_memory_not_equal(a, b, alen);
}

static void test_seal_empty_plaintext(void **state)
{
    struct fixture *f = *state;
    uint8_t blob[SEAL_OVERHEAD], back[1];
    size_t blen, plen = 99;

    assert_int_equal(seal_seal(&f->key, "x", NULL, 0, blob, sizeof(blob), &blen), 0);
    assert_int_equal(blen, SEAL_OVERHEAD);
    assert_int_equal(seal_open(&f->key, "x", blob, blen, back, sizeof(back), &plen), 0);
    assert_int_equal(plen, 0);
}

static void test_seal_tamper_every_byte(void **state)
{
    struct fixture *f = *state;
    uint8_t blob[64], copy[64], back[64];
    size_t blen, plen;

    assert_int_equal(
        seal_seal(&f->key, "primary", (const uint8_t *)"s3cret", 6, blob, sizeof(blob), &blen), 0);
    for (size_t i = 0; i < blen; i++) {
        memcpy(copy, blob, blen);
        copy[i] ^= 0x01;
        assert_int_equal(seal_open(&f->key, "primary", copy, blen, back, sizeof(back), &plen),
                         ERROR_TAMPERED);
    }
    /* Truncated blobs, including shorter than the overhead. */
    for (size_t n = 0; n < blen; n++)
        assert_int_equal(seal_open(&f->key, "primary", blob, n, back, sizeof(back), &plen),
                         ERROR_TAMPERED);
}

static void test_seal_bound_to_instance(void **state)
{
    struct fixture *f = *state;
    uint8_t blob[64], back[64];
    size_t blen, plen;

    assert_int_equal(
        seal_seal(&f->key, "site-a", (const uint8_t *)"pw", 2, blob, sizeof(blob), &blen), 0);
    assert_int_equal(seal_open(&f->key, "site-b", blob, blen, back, sizeof(back), &plen),
                     ERROR_TAMPERED);
}

static void test_seal_other_key_refused(void **state)
{
    struct fixture *f = *state;
    struct seal_key other;
    uint8_t blob[64], back[64];
    size_t blen, plen;
    char path[4200];

    snprintf(path, sizeof(path), "%s/other.key", f->dir);
    assert_int_equal(seal_key_load(path, true, &other), 0);
    assert_memory_not_equal(other.bytes, f->key.bytes, SEAL_KEY_LEN);
    assert_int_equal(seal_seal(&f->key, "x", (const uint8_t *)"pw", 2, blob, sizeof(blob), &blen),
                     0);
    assert_int_equal(seal_open(&other, "x", blob, blen, back, sizeof(back), &plen), ERROR_TAMPERED);
    seal_key_wipe(&other);
}

static void test_seal_buffer_too_small(void **state)
{
    struct fixture *f = *state;
    uint8_t blob[64], back[2];
    size_t blen, plen;

    assert_int_equal(
        seal_seal(&f->key, "x", (const uint8_t *)"pw", 2, blob, SEAL_OVERHEAD + 1, &blen), -ENOSPC);
    assert_int_equal(seal_seal(&f->key, "x", (const uint8_t *)"pwd", 3, blob, sizeof(blob), &blen),
                     0);
    assert_int_equal(seal_open(&f->key, "x", blob, blen, back, sizeof(back), &plen), -ENOSPC);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_seal_key_created_0600, setup, teardown),
        cmocka_unit_test_setup_teardown(test_seal_key_missing_without_create, setup, teardown),
        cmocka_unit_test_setup_teardown(test_seal_key_refuses_bad_files, setup, teardown),
        cmocka_unit_test_setup_teardown(test_seal_round_trip, setup, teardown),
        cmocka_unit_test_setup_teardown(test_seal_fresh_nonce_each_time, setup, teardown),
        cmocka_unit_test_setup_teardown(test_seal_empty_plaintext, setup, teardown),
        cmocka_unit_test_setup_teardown(test_seal_tamper_every_byte, setup, teardown),
        cmocka_unit_test_setup_teardown(test_seal_bound_to_instance, setup, teardown),
        cmocka_unit_test_setup_teardown(test_seal_other_key_refused, setup, teardown),
        cmocka_unit_test_setup_teardown(test_seal_buffer_too_small, setup, teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
