/*
 * seal: secrets at rest, AES-256-GCM under a per-node key.
 *
 * The node key is 32 random bytes in a file of mode 0600, created on first
 * use. A sealed blob is
 *     version (1 byte, 0x01) | nonce (12) | ciphertext | tag (16)
 * and is bound to its associated data (the instance id), so a blob moved to
 * another instance's record, or altered in any bit, fails to open with
 * ERROR_TAMPERED. Keys and plaintexts are wiped with OPENSSL_cleanse.
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
 * creates it (O_EXCL, mode 0600) with fresh random bytes and fsyncs it and
 * its directory. A key file readable or writable by group or others, of the
 * wrong size, or not a regular file is refused with ERROR_KEYFILE.
 */
int seal_key_load(const char *path, bool create, struct seal_key *key);
void seal_key_wipe(struct seal_key *key);

static inline size_t seal_sealed_len(size_t plain_len)
{
    return plain_len + SEAL_OVERHEAD;
}

/* Seals plain[len] into out (cap >= seal_sealed_len(len)); *out_len set.
 * -ENOSPC, ERROR_CRYPTO. */
int seal_seal(const struct seal_key *key, const char *aad, const uint8_t *plain, size_t len,
              uint8_t *out, size_t cap, size_t *out_len);

/* Opens a blob into out (cap >= len - SEAL_OVERHEAD); *out_len set.
 * ERROR_TAMPERED on any mismatch (also for a truncated or unknown-version
 * blob), -ENOSPC, ERROR_CRYPTO. On failure out holds nothing useful. */
int seal_open(const struct seal_key *key, const char *aad, const uint8_t *blob, size_t len,
              uint8_t *out, size_t cap, size_t *out_len);

#endif
