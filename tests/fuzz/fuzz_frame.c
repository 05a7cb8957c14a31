/*
 * fuzz_frame: a byte stream as a peer might send it on the submission
 * socket or the replication channel. The first octet picks the chunk size
 * the stream arrives in (1-256), so splits at every position are tried.
 */
#include <errno.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "error.h"
#include "frame.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    struct frame_reader r;
    Smtpsync__Frame *f;
    size_t chunk;
    int err = 0;

    if (size < 1)
        return 0;
    chunk = (size_t)data[0] + 1;
    data++;
    size--;
    frame_reader_init(&r, 64 * 1024);
    while (size > 0 && err == 0) {
        size_t n = size < chunk ? size : chunk;
        err = frame_reader_feed(&r, data, n);
        data += n;
        size -= n;
        while (err == 0 && (err = frame_reader_next(&r, &f)) == 0) {
            uint8_t *buf;
            size_t len;

            /* Whatever decodes has a body and packs again within the limit
             * it was read under. */
            if (f->body_case == SMTPSYNC__FRAME__BODY__NOT_SET)
                __builtin_trap();
            if (frame_pack(f, 64 * 1024 + 64, &buf, &len) == 0)
                free(buf);
            smtpsync__frame__free_unpacked(f, NULL);
        }
        if (err == ERROR_EMPTY)
            err = 0;
    }
    if (err != 0 && err != ERROR_DECODE && err != ERROR_TOO_BIG && err != -ENOMEM)
        __builtin_trap();
    (void)frame_reader_pending(&r);
    frame_reader_free(&r);
    return 0;
}
