/*
 * log: the daemons' logger. One line per event on stderr (journald under
 * systemd), `key=value` fields after a short event name:
 *
 *   2026-12-04T16:21:26.123Z info delivered id=42 relay=mx.example.com:465 ms=18
 *
 * Under systemd (JOURNAL_STREAM names stderr) a line starts with its
 * syslog priority instead of the time, "<4>warn reload: ...", so journald
 * files it at that priority (`journalctl -p warning`) and stamps it once.
 *
 * Library code returns errors; daemons and the node runtime log them
 * (STYLE.md, point 15). `log_warn` appends strerror(errno), `log_warnx`
 * does not. No secret is ever passed to a log call.
 *
 * The logger's state (level, format, the program name) is set once by
 * main() through log_init() before the loop starts and only read after;
 * it is the one process-wide setting, like stderr itself.
 */
#ifndef SMTPSYNC_LOG_H
#define SMTPSYNC_LOG_H

#include <stdbool.h>
#include <stddef.h>

enum log_level {
    LOG_LEVEL_DEBUG = 0,
    LOG_LEVEL_INFO = 1,
    LOG_LEVEL_WARN = 2,
    LOG_LEVEL_ERROR = 3,
};

enum log_format {
    LOG_FORMAT_TEXT = 0, /* time level event key=value ... */
    LOG_FORMAT_JSON = 1, /* {"time":..,"level":..,"msg":..} one object per line */
};

void log_init(const char *progname, enum log_level level, enum log_format format);
/* "debug", "info", "warn", "error" -> level; -1 if unknown. */
int log_level_parse(const char *name);

void log_debug(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
void log_info(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
void log_warn(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
void log_warnx(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
void log_error(const char *fmt, ...) __attribute__((format(printf, 1, 2)));

/* Values that may hold anything (a server's reply, a file name) are quoted
 * for a key=value line: control characters escaped, quotes and backslashes
 * escaped, result always NUL-terminated and cut with "..." if too long. */
const char *log_quote(char *buf, size_t len, const char *value);

#endif
