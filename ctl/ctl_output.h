/*
 * ctl_output: how smtpsyncctl renders records, problems and times, as text
 * for people and as JSON (cJSON) for scripts.
 *
 * The password is never rendered: text and JSON show SETTINGS_PASSWORD_MASK
 * when one is set (JSON null when not). Text from the store or the user is
 * escaped (ctl_fputs_safe) so it cannot move the cursor or forge lines.
 * Times are RFC 3339 in UTC; absent values are JSON null.
 */
#ifndef SMTPSYNC_CTL_OUTPUT_H
#define SMTPSYNC_CTL_OUTPUT_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

#include <cJSON.h>

#include "settings.h"

#define CTL_TIME_LEN   32 /* "2024-05-01T12:00:00Z" plus room */
#define CTL_HASH_HEX   (2 * 32 + 1)
#define CTL_SHORT_HASH 12

/* RFC 3339 UTC, second precision, into buf (CTL_TIME_LEN). */
const char *ctl_output_time(int64_t time_ms, char *buf, size_t len);
const char *ctl_output_time_t(long long seconds, char *buf, size_t len);

/* Lower-case hex of `n` bytes into hex (2n+1). */
const char *ctl_output_hex(const uint8_t *bytes, size_t n, char *hex);

/*
 * Prints problems on stderr, one line each. `incomplete` selects which
 * ones: false prints "smtpsyncctl: <field>: <message>" for every problem
 * that is not `incomplete`; true prints "still needed before save:
 * <field>: <message>" for the incomplete ones. Repeated lines are printed
 * once; problems beyond the list's capacity are counted in a last line.
 * Returns how many lines it printed.
 */
size_t ctl_output_problems(const struct settings_problems *p, bool incomplete);

/* Prints every problem as "smtpsyncctl: <field>: <message>" on stderr. */
void ctl_output_problems_all(const struct settings_problems *p);

/*
 * Text form of one record: "field: value" per line in field order, then
 * (when `problems` is not NULL) one "still needed: ..." or "problem: ..."
 * line per problem.
 */
void ctl_output_settings_text(const struct settings *s, const struct settings_problems *problems,
                              FILE *f);

/* JSON object of one record (and its problems when not NULL); NULL when
 * out of memory. The caller owns the result. */
cJSON *ctl_output_settings_json(const struct settings *s, const struct settings_problems *problems);

/* Adds key -> value to obj; false if value is NULL (out of memory) or could
 * not be added. Takes ownership of value either way. */
bool ctl_output_json_add(cJSON *obj, const char *key, cJSON *value);

/* JSON string, or null for NULL / "" (the convention for absent values). */
cJSON *ctl_output_json_string(const char *s);

/* Prints the JSON document on stdout and deletes it. -ENOMEM if it could
 * not be rendered (the message is printed). */
int ctl_output_json_print(cJSON *doc);

#endif
