#include "error.h"

#include <lmdb.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>

const char *error_str(int err)
{
    if (err == 0)
        return "success";
    /* Not of the convention: most likely an errno or LMDB's positive
     * system error passed on unconverted, which must not read as success. */
    if (err > 0)
        return "unexpected positive status (not an error code)";
    switch (err) {
#define XX(name, code, text)                                                                       \
    case ERROR_##name:                                                                             \
        return text;
        ERROR_MAP(XX)
#undef XX
    default:
        break;
    }
    if (err <= ERROR_BASE && err >= ERROR_LAST)
        return "unknown smtpsync error";
    if (err >= MDB_KEYEXIST && err <= MDB_LAST_ERRCODE)
        return mdb_strerror(err);
    return strerror(-err);
}

void error_why(char *why, size_t whylen, const char *fmt, ...)
{
    va_list ap;

    if (why == NULL || whylen == 0)
        return;
    va_start(ap, fmt);
    vsnprintf(why, whylen, fmt, ap);
    va_end(ap);
}
