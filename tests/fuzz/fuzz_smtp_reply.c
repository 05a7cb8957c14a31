/*
 * fuzz_smtp_reply: what a server may send the SMTP client. The first octet
 * picks how the rest is cut into reads; the replies parsed must be the same
 * as when the input is fed in one piece, and every invariant of
 * smtp_reply.h must hold after each call.
 */
#include <stdint.h>
#include <string.h>

#include "error.h"
#include "smtp_reply.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

#define CHECK(cond)                                                                                \
    do {                                                                                           \
        if (!(cond))                                                                               \
            __builtin_trap();                                                                      \
    } while (0)

/* A digest of what the parser reported, to compare two feedings. */
struct trace {
    uint64_t hash;
    unsigned events;
};

static void mix(struct trace *t, const void *p, size_t n)
{
    const uint8_t *b = p;

    for (size_t i = 0; i < n; i++)
        t->hash = (t->hash ^ b[i]) * 1099511628211ull;
}

static void check(const struct smtp_reply *r, int rc, struct trace *t)
{
    char sum[200];

    CHECK(rc == SMTP_REPLY_AGAIN || rc == SMTP_REPLY_LINE || rc == SMTP_REPLY_DONE ||
          rc == ERROR_DECODE);
    if (rc == ERROR_DECODE) {
        CHECK(memchr(r->why, '\0', sizeof(r->why)) != NULL);
        CHECK(r->why[0] != '\0');
        mix(t, r->why, strlen(r->why));
        return;
    }
    if (rc == SMTP_REPLY_AGAIN)
        return;
    CHECK(r->code >= 200 && r->code <= 559);
    CHECK(r->nlines >= 1 && r->nlines <= SMTP_REPLY_LINES_MAX);
    CHECK(r->line_len >= 3 && r->line_len <= SMTP_REPLY_LINE_MAX - 2);
    CHECK(strlen(r->line) == r->line_len);
    CHECK(r->text_len < SMTP_REPLY_TEXT_MAX && strlen(r->text) == r->text_len);
    for (size_t i = 0; i < r->text_len; i++)
        CHECK(r->text[i] == '\n' || ((unsigned char)r->text[i] >= 0x20 && r->text[i] < 0x7f));
    smtp_reply_summary(r, sum, sizeof(sum));
    CHECK(strlen(sum) < sizeof(sum));
    for (size_t i = 0; sum[i] != '\0'; i++)
        CHECK((unsigned char)sum[i] >= 0x20 && sum[i] < 0x7f);
    CHECK(rc != SMTP_REPLY_DONE || !smtp_reply_pending(r));
    mix(t, &rc, sizeof(rc));
    mix(t, &r->code, sizeof(r->code));
    mix(t, r->line, r->line_len);
    if (rc == SMTP_REPLY_DONE)
        mix(t, r->text, r->text_len);
    t->events++;
}

/* Feeds `len` octets in reads of at most `step`; stops at the first error. */
static void run(const char *in, size_t len, size_t step, struct trace *t)
{
    struct smtp_reply r;
    size_t off = 0;

    smtp_reply_init(&r);
    while (off < len) {
        size_t n = len - off < step ? len - off : step;
        size_t used = 0;

        while (n > 0) {
            int rc = smtp_reply_feed(&r, in + off, n, &used);

            CHECK(used <= n);
            check(&r, rc, t);
            if (rc == ERROR_DECODE)
                return;
            CHECK(rc != SMTP_REPLY_AGAIN || used == n);
            CHECK(rc == SMTP_REPLY_AGAIN || used > 0);
            off += used;
            n -= used;
        }
    }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    struct trace whole = {14695981039346656037ull, 0}, cut = whole;
    char esc[64];

    if (size == 0)
        return 0;
    run((const char *)data + 1, size - 1, size, &whole);
    run((const char *)data + 1, size - 1, (size_t)data[0] % 17 + 1, &cut);
    CHECK(whole.hash == cut.hash && whole.events == cut.events);
    CHECK(smtp_reply_escape(esc, sizeof(esc), (const char *)data, size) < sizeof(esc));
    return 0;
}
