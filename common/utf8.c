#include "utf8.h"

size_t utf8_decode(const char *s, size_t n, uint32_t *cp)
{
    const unsigned char *u = (const unsigned char *)s;
    uint32_t v, min;
    size_t len;

    if (n == 0)
        return 0;
    if (u[0] < 0x80) {
        len = 1, v = u[0], min = 0;
    } else if (u[0] >= 0xc2 && u[0] <= 0xdf) { /* 0xc0 and 0xc1 only start overlongs */
        len = 2, v = u[0] & 0x1fu, min = 0x80;
    } else if (u[0] >= 0xe0 && u[0] <= 0xef) {
        len = 3, v = u[0] & 0x0fu, min = 0x800;
    } else if (u[0] >= 0xf0 && u[0] <= 0xf4) { /* 0xf5 and above start > U+10FFFF */
        len = 4, v = u[0] & 0x07u, min = 0x10000;
    } else {
        return 0; /* a continuation octet, or a lead that is never valid */
    }
    if (n < len)
        return 0;
    for (size_t i = 1; i < len; i++) {
        if ((u[i] & 0xc0) != 0x80)
            return 0;
        v = v << 6 | (u[i] & 0x3fu);
    }
    if (v < min || v > 0x10ffff || (v >= 0xd800 && v <= 0xdfff))
        return 0;
    if (cp != NULL)
        *cp = v;
    return len;
}

size_t utf8_char_len(const char *s, size_t n)
{
    return utf8_decode(s, n, NULL);
}

bool utf8_valid(const char *s, size_t n)
{
    for (size_t i = 0; i < n;) {
        size_t k = utf8_decode(s + i, n - i, NULL);

        if (k == 0)
            return false;
        i += k;
    }
    return true;
}
