#include "ctl_output.h"

#include <assert.h>
#include <errno.h>
#include <string.h>
#include <time.h>

#include "ctl.h"

/* ctl_output_settings_json() names every field; a new field must be added
 * there too. */
static_assert(SETTINGS_F_COUNT == 22, "update ctl_output_settings_json for the new field");

const char *ctl_output_time_t(long long seconds, char *buf, size_t len)
{
    time_t t = (time_t)seconds;
    struct tm tm;

    if (gmtime_r(&t, &tm) == NULL || strftime(buf, len, "%Y-%m-%dT%H:%M:%SZ", &tm) == 0)
        snprintf(buf, len, "@%lld", seconds);
    return buf;
}

const char *ctl_output_time(int64_t time_ms, char *buf, size_t len)
{
    long long seconds = time_ms / 1000;

    /* Round toward minus infinity so a time before 1970 stays ordered. */
    if (time_ms < 0 && time_ms % 1000 != 0)
        seconds--;
    return ctl_output_time_t(seconds, buf, len);
}

const char *ctl_output_hex(const uint8_t *bytes, size_t n, char *hex)
{
    static const char digits[] = "0123456789abcdef";

    for (size_t i = 0; i < n; i++) {
        hex[2 * i] = digits[bytes[i] >> 4];
        hex[2 * i + 1] = digits[bytes[i] & 0xf];
    }
    hex[2 * n] = '\0';
    return hex;
}

static bool problem_seen(const struct settings_problems *p, size_t upto)
{
    const struct settings_problem *q = &p->items[upto];

    for (size_t i = 0; i < upto; i++) {
        const struct settings_problem *r = &p->items[i];
        if (r->incomplete == q->incomplete && strcmp(r->field, q->field) == 0 &&
            strcmp(r->message, q->message) == 0)
            return true;
    }
    return false;
}

static void problem_line(const char *prefix, const struct settings_problem *q)
{
    fputs(prefix, stderr);
    ctl_fputs_safe(q->field, stderr);
    fputs(": ", stderr);
    ctl_fputs_safe(q->message, stderr);
    fputc('\n', stderr);
}

size_t ctl_output_problems(const struct settings_problems *p, bool incomplete)
{
    size_t printed = 0;

    fflush(stdout);
    for (size_t i = 0; i < p->count && i < SETTINGS_PROBLEMS_MAX; i++) {
        const struct settings_problem *q = &p->items[i];
        if (q->incomplete != incomplete || problem_seen(p, i))
            continue;
        problem_line(incomplete ? "still needed before save: " : CTL_PROG ": ", q);
        printed++;
    }
    if (!incomplete && p->dropped > 0) {
        ctl_errorf("... and %zu more problems", p->dropped);
        printed++;
    }
    return printed;
}

void ctl_output_problems_all(const struct settings_problems *p)
{
    fflush(stdout);
    for (size_t i = 0; i < p->count && i < SETTINGS_PROBLEMS_MAX; i++) {
        if (!problem_seen(p, i))
            problem_line(CTL_PROG ": ", &p->items[i]);
    }
    if (p->dropped > 0)
        ctl_errorf("... and %zu more problems", p->dropped);
}

void ctl_output_settings_text(const struct settings *s, const struct settings_problems *problems,
                              FILE *f)
{
    /* The certificate summary is the longest display form; the relays list
     * is bounded by SETTINGS_RELAYS_MAX names. */
    char value[2048];

    for (int i = 0; i < SETTINGS_F_COUNT; i++) {
        enum settings_field field = (enum settings_field)i;
        int err = settings_field_format(s, field, value, sizeof(value));
        fprintf(f, "%s: ", settings_field_name(field));
        if (err < 0 && err != -ENOSPC)
            fputs("(unreadable)", f);
        else if (value[0] == '\0')
            fputs("(not set)", f);
        else
            ctl_fputs_safe(value, f);
        fputc('\n', f);
    }
    if (problems == NULL)
        return;
    for (size_t i = 0; i < problems->count && i < SETTINGS_PROBLEMS_MAX; i++) {
        const struct settings_problem *q = &problems->items[i];
        fputs(q->incomplete ? "still needed: " : "problem: ", f);
        ctl_fputs_safe(q->field, f);
        fputs(": ", f);
        ctl_fputs_safe(q->message, f);
        fputc('\n', f);
    }
}

cJSON *ctl_output_json_string(const char *s)
{
    if (s == NULL || s[0] == '\0')
        return cJSON_CreateNull();
    return cJSON_CreateString(s);
}

bool ctl_output_json_add(cJSON *obj, const char *key, cJSON *value)
{
    if (value == NULL)
        return false;
    if (!cJSON_AddItemToObject(obj, key, value)) {
        cJSON_Delete(value);
        return false;
    }
    return true;
}

static cJSON *number_or_null(uint32_t v)
{
    return v == 0 ? cJSON_CreateNull() : cJSON_CreateNumber((double)v);
}

static bool add_problems(cJSON *obj, const struct settings_problems *p)
{
    cJSON *arr = cJSON_CreateArray();

    if (!ctl_output_json_add(obj, "problems", arr))
        return false;
    for (size_t i = 0; i < p->count && i < SETTINGS_PROBLEMS_MAX; i++) {
        const struct settings_problem *q = &p->items[i];
        cJSON *item = cJSON_CreateObject();
        if (item == NULL || !cJSON_AddItemToArray(arr, item)) {
            cJSON_Delete(item);
            return false;
        }
        if (!ctl_output_json_add(item, "field", cJSON_CreateString(q->field)) ||
            !ctl_output_json_add(item, "message", cJSON_CreateString(q->message)) ||
            !ctl_output_json_add(item, "incomplete", cJSON_CreateBool(q->incomplete)))
            return false;
    }
    return true;
}

cJSON *ctl_output_settings_json(const struct settings *s, const struct settings_problems *problems)
{
    char summary[2048];
    cJSON *obj = cJSON_CreateObject();
    cJSON *relays;
    bool ok;

    if (obj == NULL)
        return NULL;
    const char *tls =
        s->tls_mode == SETTINGS_TLS_UNSET ? NULL : settings_tls_mode_name(s->tls_mode);
    if (s->trust_certificate == NULL ||
        settings_field_format(s, SETTINGS_F_TRUST_CERTIFICATE, summary, sizeof(summary)) < 0)
        summary[0] = '\0';

    ok = ctl_output_json_add(obj, "instance", cJSON_CreateString(s->instance)) &&
         ctl_output_json_add(obj, "hostname", ctl_output_json_string(s->hostname)) &&
         ctl_output_json_add(obj, "port", number_or_null(s->port)) &&
         ctl_output_json_add(obj, "effective_port", cJSON_CreateNumber((double)settings_port(s))) &&
         ctl_output_json_add(obj, "from_address", ctl_output_json_string(s->from_address)) &&
         ctl_output_json_add(obj, "logon_required", cJSON_CreateBool(s->logon_required)) &&
         ctl_output_json_add(obj, "user_id", ctl_output_json_string(s->user_id)) &&
         /* Only ever the mask: the value is not even looked at. */
         ctl_output_json_add(
             obj, "password",
             ctl_output_json_string(s->password_set ? SETTINGS_PASSWORD_MASK : NULL)) &&
         ctl_output_json_add(obj, "smtps_enabled", cJSON_CreateBool(s->smtps_enabled)) &&
         ctl_output_json_add(obj, "trust_certificate", ctl_output_json_string(summary)) &&
         ctl_output_json_add(obj, "trust_certificate_pem",
                             ctl_output_json_string(s->trust_certificate)) &&
         ctl_output_json_add(obj, "tls_mode", ctl_output_json_string(tls)) &&
         ctl_output_json_add(obj, "test_address", ctl_output_json_string(s->test_address)) &&
         ctl_output_json_add(obj, "starttls_fallback", cJSON_CreateBool(s->starttls_fallback)) &&
         ctl_output_json_add(obj, "allow_plaintext_auth",
                             cJSON_CreateBool(s->allow_plaintext_auth)) &&
         ctl_output_json_add(obj, "timeout_connect", number_or_null(s->timeouts.connect)) &&
         ctl_output_json_add(obj, "timeout_greeting", number_or_null(s->timeouts.greeting)) &&
         ctl_output_json_add(obj, "timeout_command", number_or_null(s->timeouts.command)) &&
         ctl_output_json_add(obj, "timeout_mail", number_or_null(s->timeouts.mail)) &&
         ctl_output_json_add(obj, "timeout_rcpt", number_or_null(s->timeouts.rcpt)) &&
         ctl_output_json_add(obj, "timeout_data_init", number_or_null(s->timeouts.data_init)) &&
         ctl_output_json_add(obj, "timeout_data_block", number_or_null(s->timeouts.data_block)) &&
         ctl_output_json_add(obj, "timeout_data_term", number_or_null(s->timeouts.data_term));
    relays = ok ? cJSON_CreateArray() : NULL;
    ok = ok && ctl_output_json_add(obj, "fallback_relays", relays);
    for (size_t i = 0; ok && i < s->nrelays && i < SETTINGS_RELAYS_MAX; i++) {
        cJSON *relay = cJSON_CreateObject();
        if (relay == NULL || !cJSON_AddItemToArray(relays, relay)) {
            cJSON_Delete(relay);
            ok = false;
            break;
        }
        ok = ctl_output_json_add(relay, "hostname", cJSON_CreateString(s->relays[i].hostname)) &&
             ctl_output_json_add(relay, "port", number_or_null(s->relays[i].port));
    }
    if (ok && problems != NULL)
        ok = add_problems(obj, problems);
    if (!ok) {
        cJSON_Delete(obj);
        return NULL;
    }
    return obj;
}

int ctl_output_json_print(cJSON *doc)
{
    char *text = doc != NULL ? cJSON_Print(doc) : NULL;

    cJSON_Delete(doc);
    if (text == NULL) {
        ctl_errorf("cannot render JSON: %s", strerror(ENOMEM));
        return -ENOMEM;
    }
    fputs(text, stdout);
    fputc('\n', stdout);
    cJSON_free(text);
    return 0;
}
