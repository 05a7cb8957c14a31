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
#include <dirent.h>
#include <signal.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include "error.h"
#include "seal.h"
#include "testutil.h"

/* A string as associated data, without its NUL. */
#define AAD(str) (const uint8_t *)(str), strlen(str)

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

    assert_int_equal(seal_seal(&f->key, AAD("site-b"), (const uint8_t *)secret, strlen(secret),
                               blob, sizeof(blob), &blen),
                     0);
    assert_int_equal(blen, seal_sealed_len(strlen(secret)));
    assert_false(testutil_memmem(blob, blen, secret, strlen(secret)));
    assert_int_equal(seal_open(&f->key, AAD("site-b"), blob, blen, back, sizeof(back), &plen), 0);
    assert_int_equal(plen, strlen(secret));
    assert_memory_equal(back, secret, plen);
}

static void test_seal_fresh_nonce_each_time(void **state)
{
    struct fixture *f = *state;
    uint8_t a[64], b[64];
    size_t alen, blen;

    assert_int_equal(seal_seal(&f->key, AAD("x"), (const uint8_t *)"pw", 2, a, sizeof(a), &alen),
                     0);
    assert_int_equal(seal_seal(&f->key, AAD("x"), (const uint8_t *)"pw", 2, b, sizeof(b), &blen),
                     0);
    assert_int_equal(alen, blen);
    assert_memory_not_equal(a, b, alen);
}

static void test_seal_empty_plaintext(void **state)
{
    struct fixture *f = *state;
    uint8_t blob[SEAL_OVERHEAD], back[1];
    size_t blen, plen = 99;

    assert_int_equal(seal_seal(&f->key, AAD("x"), NULL, 0, blob, sizeof(blob), &blen), 0);
    assert_int_equal(blen, SEAL_OVERHEAD);
    assert_int_equal(seal_open(&f->key, AAD("x"), blob, blen, back, sizeof(back), &plen), 0);
    assert_int_equal(plen, 0);
}

static void test_seal_tamper_every_byte(void **state)
{
    struct fixture *f = *state;
    uint8_t blob[64], copy[64], back[64];
    size_t blen, plen;

    assert_int_equal(
        seal_seal(&f->key, AAD("primary"), (const uint8_t *)"s3cret", 6, blob, sizeof(blob), &blen),
        0);
    for (size_t i = 0; i < blen; i++) {
        memcpy(copy, blob, blen);
        copy[i] ^= 0x01;
        assert_int_equal(seal_open(&f->key, AAD("primary"), copy, blen, back, sizeof(back), &plen),
                         ERROR_TAMPERED);
    }
    /* Truncated blobs, including shorter than the overhead. */
    for (size_t n = 0; n < blen; n++)
        assert_int_equal(seal_open(&f->key, AAD("primary"), blob, n, back, sizeof(back), &plen),
                         ERROR_TAMPERED);
}

static void test_seal_bound_to_instance(void **state)
{
    struct fixture *f = *state;
    uint8_t blob[64], back[64];
    size_t blen, plen;

    assert_int_equal(
        seal_seal(&f->key, AAD("site-a"), (const uint8_t *)"pw", 2, blob, sizeof(blob), &blen), 0);
    assert_int_equal(seal_open(&f->key, AAD("site-b"), blob, blen, back, sizeof(back), &plen),
                     ERROR_TAMPERED);
}

/* The store's associated data: "smtpsync-secret-v1" NUL instance NUL id. */
static size_t store_aad(uint8_t *buf, const char *instance, uint8_t id_byte)
{
    static const char prefix[] = "smtpsync-secret-v1";
    size_t n = 0;

    memcpy(buf, prefix, sizeof(prefix)); /* with its NUL */
    n += sizeof(prefix);
    memcpy(buf + n, instance, strlen(instance) + 1);
    n += strlen(instance) + 1;
    memset(buf + n, id_byte, 16);
    return n + 16;
}

/* Same instance, another secret id: an older revision's blob put in place
 * of the current one does not open. */
static void test_seal_bound_to_secret_id(void **state)
{
    struct fixture *f = *state;
    uint8_t aad1[128], aad2[128], blob[64], back[64];
    size_t n1 = store_aad(aad1, "site-a", 0x11), n2 = store_aad(aad2, "site-a", 0x22);
    size_t blen, plen;

    assert_int_equal(
        seal_seal(&f->key, aad1, n1, (const uint8_t *)"pw", 2, blob, sizeof(blob), &blen), 0);
    assert_int_equal(seal_open(&f->key, aad1, n1, blob, blen, back, sizeof(back), &plen), 0);
    assert_int_equal(seal_open(&f->key, aad2, n2, blob, blen, back, sizeof(back), &plen),
                     ERROR_TAMPERED);
    /* The bytes after an embedded NUL count too. */
    aad1[n1 - 1] ^= 0x01;
    assert_int_equal(seal_open(&f->key, aad1, n1, blob, blen, back, sizeof(back), &plen),
                     ERROR_TAMPERED);
    assert_int_equal(seal_open(&f->key, NULL, 0, blob, blen, back, sizeof(back), &plen),
                     ERROR_TAMPERED);
}

static void test_seal_key_check_value(void **state)
{
    struct fixture *f = *state;
    /* openssl dgst -sha256 -mac HMAC -macopt hexkey:000102...1f of
     * "smtpsync key check v1", first 16 bytes. */
    static const uint8_t want[SEAL_CHECK_LEN] = {0x1c, 0xb2, 0xa0, 0x27, 0x68, 0xd6, 0x03, 0x75,
                                                 0x52, 0xa8, 0xdc, 0xa9, 0xb5, 0xa1, 0x40, 0x75};
    struct seal_key k;
    uint8_t a[SEAL_CHECK_LEN], b[SEAL_CHECK_LEN];

    for (size_t i = 0; i < SEAL_KEY_LEN; i++)
        k.bytes[i] = (uint8_t)i;
    assert_int_equal(seal_key_check(&k, a), 0);
    assert_memory_equal(a, want, SEAL_CHECK_LEN);
    assert_int_equal(seal_key_check(&f->key, b), 0);
    assert_memory_not_equal(a, b, SEAL_CHECK_LEN);
    assert_false(testutil_memmem(f->key.bytes, SEAL_KEY_LEN, b, 8));
    seal_key_wipe(&k);
}

/* A FIFO at the key path would block a plain open() until a writer came. */
static void test_seal_key_fifo_refused(void **state)
{
    struct fixture *f = *state;
    struct seal_key k;
    char path[4200];

    snprintf(path, sizeof(path), "%s/fifo.key", f->dir);
    assert_int_equal(mkfifo(path, 0600), 0);
    alarm(10); /* a hang fails the test instead of stalling the suite */
    assert_int_equal(seal_key_load(path, true, &k), ERROR_KEYFILE);
    assert_int_equal(seal_key_load(path, false, &k), ERROR_KEYFILE);
    alarm(0);
}

/* Creation leaves the key and nothing else: no temporary file behind. */
static void test_seal_key_create_leaves_no_temporary(void **state)
{
    struct fixture *f = *state;
    struct dirent *e;
    int entries = 0;
    DIR *d = opendir(f->dir);

    assert_non_null(d);
    while ((e = readdir(d)) != NULL) {
        if (strcmp(e->d_name, ".") == 0 || strcmp(e->d_name, "..") == 0)
            continue;
        assert_string_equal(e->d_name, "node.key");
        entries++;
    }
    closedir(d);
    assert_int_equal(entries, 1);
}

#define RACERS 8
#define RACES  20

/* Processes racing to create the same key all end up with one key: none
 * reads a file another is still writing. */
static void test_seal_key_create_race(void **state)
{
    struct fixture *f = *state;

    for (int race = 0; race < RACES; race++) {
        struct seal_key first, got;
        char path[4200];
        int fds[RACERS][2];
        pid_t pids[RACERS];

        snprintf(path, sizeof(path), "%s/race-%d.key", f->dir, race);
        for (int i = 0; i < RACERS; i++) {
            assert_int_equal(pipe(fds[i]), 0);
            pids[i] = fork();
            assert_true(pids[i] >= 0);
            if (pids[i] == 0) {
                struct seal_key k;
                int rc = seal_key_load(path, true, &k);

                if (rc != 0)
                    memset(k.bytes, 0, sizeof(k.bytes));
                _exit(write(fds[i][1], k.bytes, SEAL_KEY_LEN) == SEAL_KEY_LEN && rc == 0 ? 0 : 1);
            }
            close(fds[i][1]);
        }
        for (int i = 0; i < RACERS; i++) {
            int status;

            assert_int_equal(read(fds[i][0], got.bytes, SEAL_KEY_LEN), SEAL_KEY_LEN);
            close(fds[i][0]);
            assert_int_equal(waitpid(pids[i], &status, 0), pids[i]);
            assert_true(WIFEXITED(status));
            assert_int_equal(WEXITSTATUS(status), 0);
            if (i == 0)
                first = got;
            else
                assert_memory_equal(got.bytes, first.bytes, SEAL_KEY_LEN);
        }
        assert_int_equal(seal_key_load(path, false, &got), 0);
        assert_memory_equal(got.bytes, first.bytes, SEAL_KEY_LEN);
        seal_key_wipe(&got);
        seal_key_wipe(&first);
    }
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
    assert_int_equal(
        seal_seal(&f->key, AAD("x"), (const uint8_t *)"pw", 2, blob, sizeof(blob), &blen), 0);
    assert_int_equal(seal_open(&other, AAD("x"), blob, blen, back, sizeof(back), &plen),
                     ERROR_TAMPERED);
    seal_key_wipe(&other);
}

static void test_seal_buffer_too_small(void **state)
{
    struct fixture *f = *state;
    uint8_t blob[64], back[2];
    size_t blen, plen;

    assert_int_equal(
        seal_seal(&f->key, AAD("x"), (const uint8_t *)"pw", 2, blob, SEAL_OVERHEAD + 1, &blen),
        -ENOSPC);
    assert_int_equal(
        seal_seal(&f->key, AAD("x"), (const uint8_t *)"pwd", 3, blob, sizeof(blob), &blen), 0);
    assert_int_equal(seal_open(&f->key, AAD("x"), blob, blen, back, sizeof(back), &plen), -ENOSPC);
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
        cmocka_unit_test_setup_teardown(test_seal_bound_to_secret_id, setup, teardown),
        cmocka_unit_test_setup_teardown(test_seal_other_key_refused, setup, teardown),
        cmocka_unit_test_setup_teardown(test_seal_key_check_value, setup, teardown),
        cmocka_unit_test_setup_teardown(test_seal_key_fifo_refused, setup, teardown),
        cmocka_unit_test_setup_teardown(test_seal_key_create_leaves_no_temporary, setup, teardown),
        cmocka_unit_test_setup_teardown(test_seal_key_create_race, setup, teardown),
        cmocka_unit_test_setup_teardown(test_seal_buffer_too_small, setup, teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
