/*
 * log: one line per event on stderr, written with one write(2) so lines
 * from concurrent processes (or a thread-pool callback) never interleave.
 *
 * Text:  2026-12-04T16:21:26.123Z info <message>
 * JSON:  {"time":"2026-12-04T16:21:26.123Z","level":"info","prog":"...","msg":"..."}
 *
 * The message is formatted by the caller, who quotes untrusted values with
 * log_quote(); as a second line of defence the text form escapes any
 * control character left in the message, so one event is always one line.
 */
#include "log.h"

#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "utf8.h"

/* A line is cut beyond this many octets (with "..."): a log line is for
 * people, and one write(2) of this size to a pipe is atomic (PIPE_BUF is
 * 4096 on Linux; journald reads lines of any length). */
#define LOG_LINE_MAX 4096
#define LOG_MSG_MAX  2048

/* The one process-wide logger setting (log.h). */
static struct {
    char prog[64];
    enum log_level level;
    enum log_format format;
    bool journal; /* stderr is journald's stream: priority prefix, no time */
} log_state = {"smtpsync", LOG_LEVEL_INFO, LOG_FORMAT_TEXT, false};

static const char *const level_names[] = {"debug", "info", "warn", "error"};
/* syslog priorities (sd-daemon(3) "<N>" prefixes) of the levels. */
static const char *const level_prefixes[] = {"<7>", "<6>", "<4>", "<3>"};

/* systemd sets JOURNAL_STREAM to "DEV:INODE" of the stream it connected to
 * stderr; a match means lines reach journald, which reads a "<N>" prefix as
 * the line's priority and stamps the time itself. A mismatch (stderr
 * redirected by a child's shell) means they don't. */
static bool stderr_is_journal(void)
{
    const char *js = getenv("JOURNAL_STREAM");
    unsigned long long dev, ino;
    struct stat st;
    int used = 0;

    if (js == NULL || sscanf(js, "%llu:%llu%n", &dev, &ino, &used) != 2 || js[used] != '\0')
        return false;
    if (fstat(STDERR_FILENO, &st) != 0)
        return false;
    return (unsigned long long)st.st_dev == dev && (unsigned long long)st.st_ino == ino;
}

void log_init(const char *progname, enum log_level level, enum log_format format)
{
    if (progname != NULL)
        snprintf(log_state.prog, sizeof(log_state.prog), "%s", progname);
    if (level >= LOG_LEVEL_DEBUG && level <= LOG_LEVEL_ERROR)
        log_state.level = level;
    log_state.format = format == LOG_FORMAT_JSON ? LOG_FORMAT_JSON : LOG_FORMAT_TEXT;
    log_state.journal = stderr_is_journal();
}

int log_level_parse(const char *name)
{
    if (name == NULL)
        return -1;
    for (int i = 0; i < (int)(sizeof(level_names) / sizeof(level_names[0])); i++)
        if (strcmp(name, level_names[i]) == 0)
            return i;
    return -1;
}

/* A bounded output buffer; appends past the end are dropped and `cut` set. */
struct line {
    char buf[LOG_LINE_MAX];
    size_t len;
    bool cut;
};

/* All or nothing, so an escape or a UTF-8 sequence is never split; once
 * something did not fit, nothing more is added. Room is kept for the end
 * of the line ("..." or "\"}", and the newline). */
static void put(struct line *l, const char *s, size_t n)
{
    if (l->cut || n > sizeof(l->buf) - 5 - l->len) {
        l->cut = true;
        return;
    }
    memcpy(l->buf + l->len, s, n);
    l->len += n;
}

static void puts_(struct line *l, const char *s)
{
    put(l, s, strlen(s));
}

/* The message as a JSON string body: quotes, backslashes and controls
 * escaped, invalid UTF-8 replaced by U+FFFD, so the line always parses. */
static void put_json_string(struct line *l, const char *s)
{
    const unsigned char *p = (const unsigned char *)s;
    size_t n = strlen(s);
    char esc[8];

    while (n > 0) {
        size_t k = utf8_char_len((const char *)p, n);
        if (k == 0) {
            puts_(l, "\\ufffd");
            k = 1;
        } else if (*p == '"') {
            puts_(l, "\\\"");
        } else if (*p == '\\') {
            puts_(l, "\\\\");
        } else if (*p == '\n') {
            puts_(l, "\\n");
        } else if (*p == '\r') {
            puts_(l, "\\r");
        } else if (*p == '\t') {
            puts_(l, "\\t");
        } else if (*p < 0x20 || *p == 0x7f) {
            snprintf(esc, sizeof(esc), "\\u%04x", *p);
            puts_(l, esc);
        } else {
            put(l, (const char *)p, k);
        }
        p += k;
        n -= k;
    }
}

/* The message in the text form: printable as is, any control character
 * left by the caller escaped as \xNN so it cannot start a forged line. */
static void put_text(struct line *l, const char *s)
{
    char esc[8];

    for (const unsigned char *p = (const unsigned char *)s; *p != '\0'; p++) {
        if (*p < 0x20 || *p == 0x7f) {
            snprintf(esc, sizeof(esc), "\\x%02x", *p);
            puts_(l, esc);
        } else {
            put(l, (const char *)p, 1);
        }
    }
}

/* "2026-12-04T16:21:26.123Z" */
static void format_time(char *buf, size_t len)
{
    struct timespec ts;
    struct tm tm;
    size_t n;

    if (clock_gettime(CLOCK_REALTIME, &ts) != 0 || gmtime_r(&ts.tv_sec, &tm) == NULL) {
        snprintf(buf, len, "-");
        return;
    }
    /* strftime, then the milliseconds: a year past 9999 cannot overflow
     * the buffer, it only drops the fraction. */
    n = strftime(buf, len, "%Y-%m-%dT%H:%M:%S", &tm);
    if (n == 0) {
        snprintf(buf, len, "-");
        return;
    }
    snprintf(buf + n, len - n, ".%03dZ", (int)(ts.tv_nsec / 1000000 % 1000));
}

static void write_all(const char *buf, size_t len)
{
    while (len > 0) {
        ssize_t n = write(STDERR_FILENO, buf, len);
        if (n < 0) {
            if (errno == EINTR)
                continue;
            return; /* Nowhere left to report it. */
        }
        buf += n;
        len -= (size_t)n;
    }
}

static void vlog(enum log_level level, int errnum, const char *fmt, va_list ap)
    __attribute__((format(printf, 3, 0)));

static void vlog(enum log_level level, int errnum, const char *fmt, va_list ap)
{
    char msg[LOG_MSG_MAX], when[40];
    struct line l;
    int n;

    if (level < log_state.level)
        return;
    n = vsnprintf(msg, sizeof(msg), fmt, ap);
    if (n < 0) {
        snprintf(msg, sizeof(msg), "(unprintable log message)");
    } else if ((size_t)n >= sizeof(msg)) {
        memcpy(msg + sizeof(msg) - 4, "...", 4);
    }
    if (errnum != 0) {
        size_t used = strlen(msg);
        snprintf(msg + used, sizeof(msg) - used, ": %s", strerror(errnum));
    }
    format_time(when, sizeof(when));

    l.len = 0;
    l.cut = false;
    if (log_state.journal)
        puts_(&l, level_prefixes[level]);
    if (log_state.format == LOG_FORMAT_JSON) {
        puts_(&l, "{\"time\":\"");
        puts_(&l, when);
        puts_(&l, "\",\"level\":\"");
        puts_(&l, level_names[level]);
        puts_(&l, "\",\"prog\":\"");
        put_json_string(&l, log_state.prog);
        puts_(&l, "\",\"msg\":\"");
        put_json_string(&l, msg);
        memcpy(l.buf + l.len, "\"}", 2);
        l.len += 2;
    } else {
        if (!log_state.journal) {
            puts_(&l, when);
            puts_(&l, " ");
        }
        puts_(&l, level_names[level]);
        puts_(&l, " ");
        put_text(&l, msg);
        if (l.cut) {
            memcpy(l.buf + l.len, "...", 3);
            l.len += 3;
        }
    }
    l.buf[l.len++] = '\n';
    write_all(l.buf, l.len);
}

void log_debug(const char *fmt, ...)
{
    va_list ap;

    va_start(ap, fmt);
    vlog(LOG_LEVEL_DEBUG, 0, fmt, ap);
    va_end(ap);
}

void log_info(const char *fmt, ...)
{
    va_list ap;

    va_start(ap, fmt);
    vlog(LOG_LEVEL_INFO, 0, fmt, ap);
    va_end(ap);
}

void log_warn(const char *fmt, ...)
{
    int saved = errno;
    va_list ap;

    va_start(ap, fmt);
    vlog(LOG_LEVEL_WARN, saved, fmt, ap);
    va_end(ap);
    errno = saved;
}

void log_warnx(const char *fmt, ...)
{
    va_list ap;

    va_start(ap, fmt);
    vlog(LOG_LEVEL_WARN, 0, fmt, ap);
    va_end(ap);
}

void log_error(const char *fmt, ...)
{
    va_list ap;

    va_start(ap, fmt);
    vlog(LOG_LEVEL_ERROR, 0, fmt, ap);
    va_end(ap);
}

/* The escaped form of one octet of a quoted value into esc (4 octets);
 * returns its length. */
static size_t quote_one(unsigned char c, char *esc)
{
    static const char hex[] = "0123456789abcdef";

    if (c == '"' || c == '\\') {
        esc[0] = '\\';
        esc[1] = (char)c;
        return 2;
    }
    if (c == '\n' || c == '\r' || c == '\t') {
        esc[0] = '\\';
        esc[1] = c == '\n' ? 'n' : c == '\r' ? 'r' : 't';
        return 2;
    }
    if (c < 0x20 || c >= 0x7f) {
        /* Controls, DEL and every non-ASCII octet: a log line stays plain
         * ASCII, so no terminal can be steered by it. */
        esc[0] = '\\';
        esc[1] = 'x';
        esc[2] = hex[c >> 4];
        esc[3] = hex[c & 0xf];
        return 4;
    }
    esc[0] = (char)c;
    return 1;
}

const char *log_quote(char *buf, size_t len, const char *value)
{
    const unsigned char *p;
    size_t used = 0, total = 2, limit;
    char esc[4];

    if (buf == NULL || len == 0)
        return "";
    if (len < 6) { /* too small for even `"..."` */
        buf[0] = '\0';
        return buf;
    }
    if (value == NULL)
        value = "";
    for (p = (const unsigned char *)value; *p != '\0' && total < len; p++)
        total += quote_one(*p, esc);
    /* Everything fits with its quotes and NUL, or the value is cut where
     * "..." and the closing quote still fit. */
    limit = total < len ? len - 2 : len - 5;
    buf[used++] = '"';
    for (p = (const unsigned char *)value; *p != '\0'; p++) {
        size_t n = quote_one(*p, esc);
        if (used + n > limit) {
            memcpy(buf + used, "...", 3);
            used += 3;
            break;
        }
        memcpy(buf + used, esc, n);
        used += n;
    }
    buf[used++] = '"';
    buf[used] = '\0';
    return buf;
}
