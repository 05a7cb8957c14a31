/*
 * fuzz_smtp_message: messages as `sendmail -t` and the submission socket get
 * them, and subjects and bodies as `send` gets them.
 *
 * The input goes through parse, normalize and dot-stuffing (cut where its
 * first octet says); the first octet also gives the length of a subject for
 * compose, the rest being the body. Beyond "no crash", it checks what the
 * outbox and the SMTP client rely on: normalized and composed messages have
 * CRLF lines of at most 998 octets, no From or Bcc header, parse again and
 * normalize to themselves; dot-stuffed output has no bare CR or LF and no
 * line that starts with a single dot.
 */
#include <stdbool.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "smtp_message.h"
#include "syntax.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

#define CHECK(cond)                                                                                \
    do {                                                                                           \
        if (!(cond))                                                                               \
            __builtin_trap();                                                                      \
    } while (0)

static void check_why(const char *why, size_t len)
{
    CHECK(memchr(why, '\0', len) != NULL);
    for (const char *p = why; *p != '\0'; p++)
        CHECK(*p >= 0x20 && *p < 0x7f);
}

/* CRLF lines of at most `max` octets, the last one ended too. */
static void check_lines(const char *m, size_t len, size_t max)
{
    size_t col = 0;

    for (size_t i = 0; i < len; i++) {
        if (m[i] == '\r') {
            CHECK(i + 1 < len && m[i + 1] == '\n');
            i++;
            col = 0;
            continue;
        }
        CHECK(m[i] != '\n');
        CHECK(++col <= max);
    }
    CHECK(col == 0);
}

/* A stored message: parses, has Date and Message-ID, no From or Bcc in
 * its header, and normalizes to itself. */
static void check_stored(const char *m, size_t len)
{
    struct smtp_message_info info;
    char why[256], *again;
    size_t againlen;

    check_lines(m, len, SMTP_MESSAGE_LINE_MAX);
    CHECK(m[len] == '\0');
    CHECK(smtp_message_parse(m, len, &info, why, sizeof(why)) == 0);
    CHECK(info.has_date && info.has_message_id && !info.has_from);
    for (size_t i = 0; i < info.nrcpts; i++)
        CHECK(syntax_mailbox_valid(info.rcpts[i], why, sizeof(why)));
    for (size_t i = 0; i < info.header_len; i++)
        if (i == 0 || m[i - 1] == '\n')
            CHECK(strncasecmp(m + i, "Bcc:", 4) != 0 && strncasecmp(m + i, "From:", 5) != 0);
    smtp_message_info_free(&info);
    CHECK(smtp_message_normalize(m, len, 0, "fuzz.example", &again, &againlen, why, sizeof(why)) ==
          0);
    CHECK(againlen == len && memcmp(again, m, len) == 0);
    free(again);
}

static void fuzz_parse(const char *msg, size_t size)
{
    struct smtp_message_info info;
    char why[256];

    if (smtp_message_parse(msg, size, &info, why, sizeof(why)) != 0) {
        check_why(why, sizeof(why));
        return;
    }
    CHECK(info.nrcpts <= SMTP_MESSAGE_RCPT_MAX && info.header_len <= size);
    for (size_t i = 0; i < info.nrcpts; i++) {
        CHECK(syntax_mailbox_valid(info.rcpts[i], why, sizeof(why)));
        for (size_t j = 0; j < i; j++)
            CHECK(!smtp_message_address_equal(info.rcpts[i], info.rcpts[j]));
    }
    smtp_message_info_free(&info);
}

static void fuzz_normalize(const char *msg, size_t size)
{
    char why[256], *out;
    size_t outlen;

    if (smtp_message_normalize(msg, size, 1136214245, "fuzz.example", &out, &outlen, why,
                               sizeof(why)) != 0) {
        check_why(why, sizeof(why));
        return;
    }
    check_stored(out, outlen);
    free(out);
}

static void fuzz_dotstuff(const char *msg, size_t size, size_t step)
{
    struct smtp_message_dotstuff st = {0};
    char *out = malloc(2 * size + 2 * (size / step + 1) + 8);
    size_t o = 0;

    if (out == NULL)
        return;
    for (size_t i = 0; i < size; i += step) {
        size_t n = size - i < step ? size - i : step, w;

        w = smtp_message_dotstuff(&st, msg + i, n, out + o);
        CHECK(w <= 2 * n + 2);
        o += w;
    }
    o += smtp_message_dotstuff_end(&st, out + o);
    check_lines(out, o, SIZE_MAX);
    CHECK(o >= 3 && memcmp(out + o - 3, ".\r\n", 3) == 0);
    for (size_t i = 0; i + 3 < o; i++)
        if ((i == 0 || out[i - 1] == '\n') && out[i] == '.')
            CHECK(out[i + 1] == '.');
    free(out);
}

static void fuzz_compose(const char *data, size_t size)
{
    static const char *const to[] = {"to@example.com"};
    static const char *const cc[] = {"cc@example.org"};
    struct smtp_message_compose c = {
        .to = to, .nto = 1, .cc = cc, .ncc = 1, .date = 0, .msgid_domain = "fuzz.example"};
    size_t sublen = size > 0 ? (unsigned char)data[0] : 0;
    char *subject, why[256], *out;
    size_t outlen;

    if (size == 0 || sublen > size - 1)
        return;
    subject = malloc(sublen + 1);
    if (subject == NULL)
        return;
    memcpy(subject, data + 1, sublen);
    subject[sublen] = '\0';
    c.subject = subject;
    c.body = data + 1 + sublen;
    c.body_len = size - 1 - sublen;
    if (smtp_message_compose(&c, &out, &outlen, why, sizeof(why)) != 0) {
        check_why(why, sizeof(why));
        free(subject);
        return;
    }
    for (size_t i = 0; i < outlen; i++)
        CHECK((unsigned char)out[i] < 0x80);
    check_lines(out, outlen, SMTP_MESSAGE_LINE_MAX);
    /* The header is folded for 78-column readers. */
    check_lines(out, (size_t)(strstr(out, "\r\n\r\n") + 2 - out), 76);
    check_stored(out, outlen);
    free(out);
    free(subject);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    const char *msg = (const char *)data;

    fuzz_parse(msg, size);
    fuzz_normalize(msg, size);
    fuzz_dotstuff(msg, size, size > 0 ? (size_t)data[0] % 7 + 1 : 1);
    fuzz_compose(msg, size);
    return 0;
}
