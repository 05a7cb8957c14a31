/*
 * seal: secrets at rest, AES-256-GCM under a per-node key.
 *
 * The node key is 32 random bytes in a file of mode 0600, created on first
 * use. A sealed blob is
 *     version (1 byte, 0x01) | nonce (12) | ciphertext | tag (16)
 * and is bound to the associated data the caller gives, so a blob moved to
 * a record with other associated data, or altered in any bit, fails to
 * open with ERROR_TAMPERED. The store binds each password to its instance
 * and its secret id (store.c, secret_aad). Keys and plaintexts are wiped
 * with OPENSSL_cleanse.
 */
#ifndef SMTPSYNC_SEAL_H
#define SMTPSYNC_SEAL_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define SEAL_KEY_LEN   32
#define SEAL_NONCE_LEN 12
#define SEAL_TAG_LEN   16
#define SEAL_OVERHEAD  (1 + SEAL_NONCE_LEN + SEAL_TAG_LEN)

struct seal_key {
    uint8_t bytes[SEAL_KEY_LEN];
};

/*
 * Loads the key from `path`. If the file does not exist and `create` is true,
 * creates it atomically: fresh random bytes are written and fsynced to a
 * temporary file (O_EXCL, mode 0600) in the same directory, which is then
 * linked to `path` and the directory fsynced, so no reader ever sees a
 * partial key. If another process created `path` first, its key is loaded.
 * A key file readable or writable by group or others, of the wrong size, a
 * symbolic link or not a regular file (a FIFO does not block) is refused
 * with ERROR_KEYFILE. A missing file without `create` is -ENOENT.
 */
int seal_key_load(const char *path, bool create, struct seal_key *key);
void seal_key_wipe(struct seal_key *key);

#define SEAL_CHECK_LEN 16

/* A check value of the key: HMAC-SHA256(key, "smtpsync key check v1")
 * truncated to SEAL_CHECK_LEN bytes. It tells whether a key is the one a
 * store was made with, and reveals nothing about the key. ERROR_CRYPTO. */
int seal_key_check(const struct seal_key *key, uint8_t out[SEAL_CHECK_LEN]);

static inline size_t seal_sealed_len(size_t plain_len)
{
    return plain_len + SEAL_OVERHEAD;
}

/* Seals plain[len] into out (cap >= seal_sealed_len(len)), bound to the
 * associated data aad[aadlen] (aad may be NULL when aadlen is 0); *out_len
 * set. -ENOSPC, -EOVERFLOW, ERROR_CRYPTO. */
int seal_seal(const struct seal_key *key, const uint8_t *aad, size_t aadlen, const uint8_t *plain,
              size_t len, uint8_t *out, size_t cap, size_t *out_len);

/* Opens a blob into out (cap >= len - SEAL_OVERHEAD); it opens only with the
 * associated data it was sealed with. *out_len set. ERROR_TAMPERED on any
 * mismatch (also for a truncated or unknown-version blob), -ENOSPC,
 * ERROR_CRYPTO. On failure out holds nothing useful. */
int seal_open(const struct seal_key *key, const uint8_t *aad, size_t aadlen, const uint8_t *blob,
              size_t len, uint8_t *out, size_t cap, size_t *out_len);

#endif
