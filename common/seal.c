#include "seal.h"

#include <errno.h>
#include <fcntl.h>
#include <libgen.h>
#include <limits.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <openssl/crypto.h>
#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/rand.h>

#include "error.h"

#define SEAL_VERSION 0x01

static int read_full(int fd, uint8_t *buf, size_t len)
{
    size_t off = 0;

    while (off < len) {
        ssize_t n = read(fd, buf + off, len - off);
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0)
            return -errno;
        if (n == 0)
            return ERROR_KEYFILE; /* shorter than a key */
        off += (size_t)n;
    }
    return 0;
}

static int write_full(int fd, const uint8_t *buf, size_t len)
{
    size_t off = 0;

    while (off < len) {
        ssize_t n = write(fd, buf + off, len - off);
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0)
            return -errno;
        off += (size_t)n;
    }
    return 0;
}

/* fsync the directory holding `path`, so a new key file survives a crash. */
static int sync_parent(const char *path)
{
    char copy[PATH_MAX];
    int fd, rc = 0;

    if (strlen(path) >= sizeof(copy))
        return -ENAMETOOLONG;
    strcpy(copy, path);
    fd = open(dirname(copy), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (fd < 0)
        return -errno;
    if (fsync(fd) != 0)
        rc = -errno;
    close(fd);
    return rc;
}

/*
 * Creates the key file atomically: the key is written and fsynced to a
 * temporary file of mode 0600 (mkostemp: O_EXCL) in the same directory,
 * which link() then gives its name. link() never replaces an existing file,
 * so when two processes race, one wins and the other gets -EEXIST and loads
 * the winner's key; nobody ever reads a partial key under `path`.
 */
static int key_create(const char *path, struct seal_key *key)
{
    char tmp[PATH_MAX];
    int fd, rc;

    if ((size_t)snprintf(tmp, sizeof(tmp), "%s.XXXXXX", path) >= sizeof(tmp))
        return -ENAMETOOLONG;
    if (RAND_bytes(key->bytes, SEAL_KEY_LEN) != 1)
        return ERROR_CRYPTO;
    fd = mkostemp(tmp, O_CLOEXEC);
    if (fd < 0) {
        rc = -errno;
        goto wipe_key;
    }
    rc = write_full(fd, key->bytes, SEAL_KEY_LEN);
    if (rc == 0 && fsync(fd) != 0)
        rc = -errno;
    close(fd);
    if (rc == 0 && link(tmp, path) != 0)
        rc = -errno;
    unlink(tmp);
    if (rc != 0)
        goto wipe_key;
    /* The key is in place now, complete; others may already use it, so it
     * stays even if the directory cannot be synced. */
    return sync_parent(path);
wipe_key:
    seal_key_wipe(key);
    return rc;
}

/* O_NONBLOCK: opening a FIFO planted at the key path must not hang; the
 * S_ISREG check below then refuses it. Reads of a regular file ignore it. */
#define KEY_OPEN_FLAGS (O_RDONLY | O_CLOEXEC | O_NOFOLLOW | O_NONBLOCK)

int seal_key_load(const char *path, bool create, struct seal_key *key)
{
    struct stat st;
    int fd, rc;

    memset(key, 0, sizeof(*key));
    fd = open(path, KEY_OPEN_FLAGS);
    if (fd < 0 && errno == ENOENT && create) {
        rc = key_create(path, key);
        /* Another process may have created it first; then load theirs. */
        if (rc != -EEXIST)
            return rc;
        fd = open(path, KEY_OPEN_FLAGS);
    }
    if (fd < 0)
        return errno == ELOOP ? ERROR_KEYFILE : -errno;
    if (fstat(fd, &st) != 0) {
        rc = -errno;
        goto close_fd;
    }
    /* Like ssh with its private keys: a key others can read is not secret. */
    if (!S_ISREG(st.st_mode) || (st.st_mode & 077) != 0 || st.st_size != SEAL_KEY_LEN) {
        rc = ERROR_KEYFILE;
        goto close_fd;
    }
    rc = read_full(fd, key->bytes, SEAL_KEY_LEN);
    if (rc != 0)
        seal_key_wipe(key);
close_fd:
    close(fd);
    return rc;
}

void seal_key_wipe(struct seal_key *key)
{
    OPENSSL_cleanse(key->bytes, sizeof(key->bytes));
}

#define SEAL_CHECK_LABEL "smtpsync key check v1"

int seal_key_check(const struct seal_key *key, uint8_t out[SEAL_CHECK_LEN])
{
    uint8_t mac[EVP_MAX_MD_SIZE];
    size_t maclen = 0;
    int rc = 0;

    if (EVP_Q_mac(NULL, "HMAC", NULL, "SHA256", NULL, key->bytes, SEAL_KEY_LEN,
                  (const uint8_t *)SEAL_CHECK_LABEL, strlen(SEAL_CHECK_LABEL), mac, sizeof(mac),
                  &maclen) == NULL ||
        maclen < SEAL_CHECK_LEN) {
        ERR_clear_error();
        rc = ERROR_CRYPTO;
    } else {
        memcpy(out, mac, SEAL_CHECK_LEN);
    }
    OPENSSL_cleanse(mac, sizeof(mac));
    return rc;
}

/*
 * One AES-256-GCM pass. `enc` selects direction; for decryption `tag` is
 * checked and a mismatch yields ERROR_TAMPERED.
 */
static int gcm(const struct seal_key *key, int enc, const uint8_t *nonce, const uint8_t *aad,
               size_t aadlen, const uint8_t *in, size_t len, uint8_t *out, uint8_t *tag)
{
    EVP_CIPHER_CTX *ctx;
    int n, rc = ERROR_CRYPTO;

    if (len > INT_MAX || aadlen > INT_MAX)
        return -EOVERFLOW;
    ctx = EVP_CIPHER_CTX_new();
    if (ctx == NULL)
        return -ENOMEM;
    if (EVP_CipherInit_ex(ctx, EVP_aes_256_gcm(), NULL, NULL, NULL, enc) != 1 ||
        EVP_CIPHER_CTX_ctrl(ctx, EVP_CTRL_GCM_SET_IVLEN, SEAL_NONCE_LEN, NULL) != 1 ||
        EVP_CipherInit_ex(ctx, NULL, NULL, key->bytes, nonce, enc) != 1)
        goto free_ctx;
    if (aadlen > 0 && EVP_CipherUpdate(ctx, NULL, &n, aad, (int)aadlen) != 1)
        goto free_ctx;
    if (len > 0 && EVP_CipherUpdate(ctx, out, &n, in, (int)len) != 1)
        goto free_ctx;
    if (!enc && EVP_CIPHER_CTX_ctrl(ctx, EVP_CTRL_GCM_SET_TAG, SEAL_TAG_LEN, tag) != 1)
        goto free_ctx;
    if (EVP_CipherFinal_ex(ctx, out + len, &n) != 1) {
        rc = enc ? ERROR_CRYPTO : ERROR_TAMPERED;
        goto free_ctx;
    }
    if (enc && EVP_CIPHER_CTX_ctrl(ctx, EVP_CTRL_GCM_GET_TAG, SEAL_TAG_LEN, tag) != 1)
        goto free_ctx;
    rc = 0;
free_ctx:
    EVP_CIPHER_CTX_free(ctx);
    return rc;
}

int seal_seal(const struct seal_key *key, const uint8_t *aad, size_t aadlen, const uint8_t *plain,
              size_t len, uint8_t *out, size_t cap, size_t *out_len)
{
    uint8_t *nonce = out + 1, *ct = out + 1 + SEAL_NONCE_LEN;
    int rc;

    if (cap < seal_sealed_len(len))
        return -ENOSPC;
    out[0] = SEAL_VERSION;
    /* Random 96-bit nonces: safe far beyond the number of secrets a node
     * ever seals under one key (NIST SP 800-38D, 2^32 invocations). */
    if (RAND_bytes(nonce, SEAL_NONCE_LEN) != 1)
        return ERROR_CRYPTO;
    rc = gcm(key, 1, nonce, aad, aadlen, plain, len, ct, ct + len);
    if (rc != 0) {
        OPENSSL_cleanse(out, cap);
        return rc;
    }
    *out_len = seal_sealed_len(len);
    return 0;
}

int seal_open(const struct seal_key *key, const uint8_t *aad, size_t aadlen, const uint8_t *blob,
              size_t len, uint8_t *out, size_t cap, size_t *out_len)
{
    uint8_t tag[SEAL_TAG_LEN];
    size_t plen;
    int rc;

    if (len < SEAL_OVERHEAD || blob[0] != SEAL_VERSION)
        return ERROR_TAMPERED;
    plen = len - SEAL_OVERHEAD;
    if (cap < plen)
        return -ENOSPC;
    memcpy(tag, blob + len - SEAL_TAG_LEN, SEAL_TAG_LEN);
    rc = gcm(key, 0, blob + 1, aad, aadlen, blob + 1 + SEAL_NONCE_LEN, plen, out, tag);
    if (rc != 0) {
        /* Never hand back unauthenticated plaintext. */
        OPENSSL_cleanse(out, plen);
        return rc;
    }
    *out_len = plen;
    return 0;
}
