/*
 * error: the one error convention of smtpsync.
 *
 * Every function that can fail returns int: 0 on success, a negative value on
 * failure. A negative value is one of:
 *   - -errno (-ENOMEM, -EACCES, ...), from the C library or libuv;
 *   - an LMDB code (MDB_KEYEXIST .. MDB_LAST_ERRCODE, -30799 .. -30780),
 *     passed through unchanged so mdb_strerror() can still explain it;
 *   - a project code below, in the reserved range ERROR_BASE .. ERROR_LAST.
 * OpenSSL and protobuf-c failures are converted at the module boundary into
 * ERROR_CRYPTO, ERROR_TLS or ERROR_DECODE. error_str() turns any of these
 * into text.
 */
#ifndef SMTPSYNC_ERROR_H
#define SMTPSYNC_ERROR_H

#include <stddef.h>

#define ERROR_MAP(XX)                                                                              \
    XX(INVALID, -20001, "invalid input")                                                           \
    XX(NOT_FOUND, -20002, "not found")                                                             \
    XX(CORRUPT, -20003, "stored data failed an integrity check")                                   \
    XX(TAMPERED, -20004, "sealed secret failed authentication")                                    \
    XX(CRYPTO, -20005, "cryptographic operation failed")                                           \
    XX(DECODE, -20006, "malformed message")                                                        \
    XX(TOO_BIG, -20007, "value exceeds its size limit")                                            \
    XX(EMPTY, -20008, "nothing to do")                                                             \
    XX(CONFLICT, -20009, "conflicting state")                                                      \
    XX(COMPACTED, -20010, "revision no longer in history (compacted)")                             \
    XX(KEYFILE, -20011, "node key file is unusable")                                               \
    XX(TLS, -20012, "TLS failure")                                                                 \
    XX(FENCED, -20013, "refused: the sender's epoch is older (a newer primary exists)")            \
    XX(DIVERGED, -20014, "history diverged: the chain hash does not match")                        \
    XX(FORBIDDEN, -20015, "not allowed for this role")                                             \
    XX(NOT_PRIMARY, -20016, "this node is not the primary")

enum {
    ERROR_BASE = -20000,
#define XX(name, code, text) ERROR_##name = (code),
    ERROR_MAP(XX)
#undef XX
        ERROR_LAST = -20099,
};

/* Text for any error value of the convention above; never NULL. */
const char *error_str(int err);

/* Writes a one-line reason into a caller's `why` buffer (printf-style);
 * does nothing when why is NULL or whylen is 0. Every module that explains
 * its failures through a `why, whylen` pair uses it. */
void error_why(char *why, size_t whylen, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

#endif
