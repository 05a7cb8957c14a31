/*
 * frame: length-prefixed smtpsync.Frame messages (frame.h).
 *
 * The reader buffers at most one frame beyond those already complete: it
 * copies incoming octets only up to the end of the frame being read, so a
 * header is checked (0, or above the limit) as soon as its 4 octets are
 * in, before any of its body is buffered.
 */
#include "frame.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include <openssl/crypto.h>

#include "error.h"
#include "store.h"

/* A reader left holding no data gives back a buffer grown beyond this. */
#define FRAME_KEEP_CAP (64u * 1024)

static uint32_t get_be32(const uint8_t *p)
{
    return (uint32_t)p[0] << 24 | (uint32_t)p[1] << 16 | (uint32_t)p[2] << 8 | (uint32_t)p[3];
}

static void put_be32(uint8_t *p, uint32_t v)
{
    p[0] = (uint8_t)(v >> 24);
    p[1] = (uint8_t)(v >> 16);
    p[2] = (uint8_t)(v >> 8);
    p[3] = (uint8_t)v;
}

/* max 0 stands for FRAME_MAX_DEFAULT; a length must also fit the header. */
static size_t effective_max(size_t max)
{
    if (max == 0)
        max = FRAME_MAX_DEFAULT;
    return max > UINT32_MAX ? UINT32_MAX : max;
}

int frame_pack(const Smtpsync__Frame *f, size_t max, uint8_t **out, size_t *len)
{
    size_t size;
    uint8_t *buf;

    *out = NULL;
    *len = 0;
    /* The reader refuses a frame without a body; never send one. */
    if (f->body_case == SMTPSYNC__FRAME__BODY__NOT_SET)
        return ERROR_INVALID;
    size = smtpsync__frame__get_packed_size(f);
    if (size == 0 || size > effective_max(max))
        return size == 0 ? ERROR_INVALID : ERROR_TOO_BIG;
    buf = malloc(FRAME_HEADER_LEN + size);
    if (buf == NULL)
        return -ENOMEM;
    put_be32(buf, (uint32_t)size);
    if (smtpsync__frame__pack(f, buf + FRAME_HEADER_LEN) != size) {
        free(buf);
        return ERROR_INVALID;
    }
    *out = buf;
    *len = FRAME_HEADER_LEN + size;
    return 0;
}

void frame_reader_init(struct frame_reader *r, size_t max)
{
    r->buf = NULL;
    r->len = 0;
    r->cap = 0;
    r->max = effective_max(max);
}

/* Checks the length header at `p`: 0 if it can be read. */
static int check_length(const struct frame_reader *r, const uint8_t *p)
{
    uint32_t n = get_be32(p);

    if (n == 0)
        return ERROR_DECODE; /* an empty Frame has no body */
    if (n > r->max)
        return ERROR_TOO_BIG;
    return 0;
}

/*
 * Where the frame being read starts (the first one not complete yet), and
 * how many octets it still needs: the rest of its header, or of its body.
 * Returns 0 or the error of a bad header already buffered.
 */
static int incomplete_frame(const struct frame_reader *r, size_t *want)
{
    size_t off = 0;
    int err;

    for (;;) {
        size_t have = r->len - off;
        if (have < FRAME_HEADER_LEN) {
            *want = FRAME_HEADER_LEN - have;
            return 0;
        }
        if ((err = check_length(r, r->buf + off)) != 0)
            return err;
        size_t total = FRAME_HEADER_LEN + (size_t)get_be32(r->buf + off);
        if (have < total) {
            *want = total - have;
            return 0;
        }
        off += total;
    }
}

static int reserve(struct frame_reader *r, size_t need)
{
    size_t cap;
    uint8_t *grown;

    if (need <= r->cap)
        return 0;
    cap = r->cap > 0 ? r->cap : 4096;
    while (cap < need)
        cap = cap > SIZE_MAX / 2 ? need : cap * 2;
    /* Not realloc(): the old block may hold a password, and realloc would
     * free it unwiped. */
    grown = malloc(cap);
    if (grown == NULL)
        return -ENOMEM;
    if (r->buf != NULL) {
        memcpy(grown, r->buf, r->len);
        OPENSSL_cleanse(r->buf, r->cap);
        free(r->buf);
    }
    r->buf = grown;
    r->cap = cap;
    return 0;
}

int frame_reader_feed(struct frame_reader *r, const void *data, size_t n)
{
    const uint8_t *p = data;
    size_t want, take;
    int err;

    while (n > 0) {
        if ((err = incomplete_frame(r, &want)) != 0)
            return err;
        take = n < want ? n : want;
        if ((err = reserve(r, r->len + take)) != 0)
            return err;
        memcpy(r->buf + r->len, p, take);
        r->len += take;
        p += take;
        n -= take;
    }
    /* A header completed by the last octets is checked now, not later. */
    return incomplete_frame(r, &want);
}

int frame_reader_next(struct frame_reader *r, Smtpsync__Frame **out)
{
    Smtpsync__Frame *f;
    size_t body, total;
    int err;

    *out = NULL;
    if (r->len < FRAME_HEADER_LEN)
        return ERROR_EMPTY;
    if ((err = check_length(r, r->buf)) != 0)
        return err;
    body = get_be32(r->buf);
    total = FRAME_HEADER_LEN + body;
    if (r->len < total)
        return ERROR_EMPTY;

    f = smtpsync__frame__unpack(NULL, body, r->buf + FRAME_HEADER_LEN);
    if (f == NULL)
        return ERROR_DECODE;
    if (f->body_case == SMTPSYNC__FRAME__BODY__NOT_SET) {
        smtpsync__frame__free_unpacked(f, NULL);
        return ERROR_DECODE;
    }
    memmove(r->buf, r->buf + total, r->len - total);
    /* The octets past the new end are a copy of a frame that may carry a
     * password. */
    OPENSSL_cleanse(r->buf + (r->len - total), total);
    r->len -= total;
    if (r->len == 0 && r->cap > FRAME_KEEP_CAP) {
        OPENSSL_cleanse(r->buf, r->cap);
        free(r->buf);
        r->buf = NULL;
        r->cap = 0;
    }
    *out = f;
    return 0;
}

size_t frame_reader_pending(const struct frame_reader *r)
{
    return r->len;
}

void frame_reader_free(struct frame_reader *r)
{
    if (r->buf != NULL)
        OPENSSL_cleanse(r->buf, r->cap);
    free(r->buf);
    r->buf = NULL;
    r->len = 0;
    r->cap = 0;
}

static void frame_wipe_settings(Smtpsync__Settings *m)
{
    if (m != NULL && m->password != NULL && m->password->plaintext.data != NULL)
        OPENSSL_cleanse(m->password->plaintext.data, m->password->plaintext.len);
}

static void frame_wipe_string(char *s)
{
    if (s != NULL)
        OPENSSL_cleanse(s, strlen(s));
}

void frame_wipe_secrets(Smtpsync__Frame *f)
{
    if (f == NULL)
        return;
    switch (f->body_case) {
    case SMTPSYNC__FRAME__BODY_DELTA:
        store_repl_wipe_delta(f->delta);
        break;
    case SMTPSYNC__FRAME__BODY_SNAPSHOT:
        store_repl_wipe_snapshot(f->snapshot);
        break;
    case SMTPSYNC__FRAME__BODY_SETTINGS_SET:
        if (f->settings_set != NULL) {
            frame_wipe_settings(f->settings_set->settings);
            frame_wipe_string(f->settings_set->password_confirm);
        }
        break;
    case SMTPSYNC__FRAME__BODY_RUN_TEST:
        if (f->run_test != NULL)
            frame_wipe_settings(f->run_test->settings);
        break;
    default:
        break;
    }
}
