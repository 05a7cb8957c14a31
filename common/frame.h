/*
 * frame: the one place where smtpsync frames are encoded and decoded
 * (STYLE.md, point 13). A frame is a 4-octet big-endian length followed by
 * that many octets of a packed smtpsync.Frame. Used on the local submission
 * socket and, by replication, inside mutual TLS.
 *
 * The reader refuses, with a reason, and never hands on:
 *   - a length above its limit (ERROR_TOO_BIG), before buffering it;
 *   - a length of 0, a body that does not unpack as a Frame, or a Frame with
 *     no body set (ERROR_DECODE): an empty Frame carries nothing.
 * Truncation is seen by the caller: frame_reader_pending() is non-zero when
 * the peer closes in the middle of a frame.
 */
#ifndef SMTPSYNC_FRAME_H
#define SMTPSYNC_FRAME_H

#include <stddef.h>
#include <stdint.h>

#include "smtpsync.pb-c.h"

#define FRAME_HEADER_LEN  4
#define FRAME_MAX_DEFAULT (16u * 1024 * 1024)

/* Packs `f` with its length header into a malloc()ed buffer the caller
 * frees. Returns 0, ERROR_TOO_BIG (over `max`) or -ENOMEM. */
int frame_pack(const Smtpsync__Frame *f, size_t max, uint8_t **out, size_t *len);

struct frame_reader {
    uint8_t *buf;
    size_t len, cap;
    size_t max;
};

void frame_reader_init(struct frame_reader *r, size_t max);
/* Buffers received octets. -ENOMEM, or ERROR_TOO_BIG when the header of the
 * frame being read announces more than `max`. */
int frame_reader_feed(struct frame_reader *r, const void *data, size_t n);
/* The next complete frame: 0 and *out (free with
 * smtpsync__frame__free_unpacked(*out, NULL)), ERROR_EMPTY when none is
 * complete yet, or ERROR_DECODE / ERROR_TOO_BIG (the stream is then
 * unusable: close it). */
int frame_reader_next(struct frame_reader *r, Smtpsync__Frame **out);
/* Octets of an incomplete frame still buffered. */
size_t frame_reader_pending(const struct frame_reader *r);
void frame_reader_free(struct frame_reader *r);

/* Wipes (OPENSSL_cleanse) every plaintext password `f` carries: those of a
 * Delta or Snapshot, of a SettingsSet (settings and password_confirm) and
 * of a RunTest. Call it before smtpsync__frame__free_unpacked() on a frame
 * that was received or built with secrets; `f` stays valid (and NULL is
 * ignored). */
void frame_wipe_secrets(Smtpsync__Frame *f);

#endif
