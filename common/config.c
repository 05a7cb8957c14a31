/*
 * config: the daemons' INI file (config.h), read with inih.
 *
 * inih splits `key = value` lines and strips inline comments; everything
 * else is done here, through inih's reader hook, which sees every raw line
 * with its number: section headers are parsed and checked here (inih is
 * handed a blank line instead, so the current section is always ours),
 * lines that are neither a header, a comment nor `key = value` are
 * reported, and leading spaces are stripped so no line is ever taken for
 * a continuation of the previous value.
 *
 * Sections and keys are the tables below: adding a key is one row, adding
 * a section one more (a labelled section such as [replica "id"] finds or
 * makes its entry through `base`).
 */
#include "config.h"

#include <arpa/inet.h>
#include <errno.h>
#include <ini.h>
#include <limits.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/un.h>

#include "error.h"

#define MS_PER_S   1000ull
#define MS_PER_DAY (86400ull * MS_PER_S)

enum config_kind {
    KIND_ID,       /* an instance id (settings_instance_valid) */
    KIND_PATH,     /* an absolute path */
    KIND_SOCKET,   /* an absolute path that fits sun_path */
    KIND_ADDR,     /* host:port */
    KIND_LOOPBACK, /* a loopback host:port, port 0 allowed; empty: off */
    KIND_UINT,     /* unsigned, [min, max] */
    KIND_DURATION, /* milliseconds, [min, max] */
    KIND_HOSTNAME, /* a DNS name (EHLO) */
    KIND_LEVEL,    /* log level */
    KIND_FORMAT,   /* log format */
    KIND_BOOL,     /* yes/no, on/off, true/false, 1/0 */
    KIND_IDS,      /* comma-separated certificate ids (struct config_ids) */
};

struct config_key {
    const char *name;
    enum config_kind kind;
    size_t offset; /* of the value within the section's base */
    size_t size;   /* strings: the array's size */
    uint64_t min, max;
    const char *def; /* default, in the file's syntax; NULL: required */
    bool live;       /* SIGHUP applies it (config_diff) */
};

struct config_section {
    const char *name;
    bool labelled; /* [name "label"] */
    const struct config_key *keys;
    size_t nkeys;
    /* Where this section's keys are stored for the given label. */
    void *(*base)(struct config *c, const char *label);
};

#define STR(sect, field)                                                                           \
    offsetof(struct config, sect.field), sizeof(((struct config *)0)->sect.field)
#define NUM(sect, field) offsetof(struct config, sect.field), 0
#define ANY              0, 0
#define RANGE(lo, hi)    (lo), (hi)

static const struct config_key node_keys[] = {
    {"id", KIND_ID, STR(node, id), ANY, NULL, false},
    {"data_dir", KIND_PATH, STR(node, data_dir), ANY, NULL, false},
    {"submit_socket", KIND_SOCKET, STR(node, submit_socket), ANY, CONFIG_SUBMIT_SOCKET_DEFAULT,
     false},
    {"listen", KIND_ADDR, NUM(node, listen), ANY, "", false},
    {"address", KIND_ADDR, NUM(node, address), ANY, "", false},
    {"metrics_listen", KIND_LOOPBACK, NUM(node, metrics_listen), ANY, "", false},
};

static const struct config_key tls_keys[] = {
    {"ca", KIND_PATH, STR(tls, ca), ANY, "", true},
    {"cert", KIND_PATH, STR(tls, cert), ANY, "", true},
    {"key", KIND_PATH, STR(tls, key), ANY, "", true},
};

static const struct config_key replication_keys[] = {
    {"interval", KIND_DURATION, NUM(replication, interval_ms), RANGE(MS_PER_S, 30 * MS_PER_DAY),
     "600", true},
    {"jitter", KIND_DURATION, NUM(replication, jitter_ms), RANGE(0, 30 * MS_PER_DAY), "600", true},
    {"push_on_commit", KIND_BOOL, NUM(replication, push_on_commit), ANY, "yes", true},
    {"history_keep", KIND_UINT, NUM(replication, history_keep), RANGE(1, 100000000), "1000", true},
    {"snapshot_concurrency", KIND_UINT, NUM(replication, snapshot_concurrency), RANGE(1, 1024), "4",
     true},
    {"primary", KIND_ID, STR(replication, primary), ANY, "", true},
};

static const struct config_key replica_keys[] = {
    {"address", KIND_ADDR, offsetof(struct config_replica, address), 0, ANY, NULL, true},
};

static const struct config_key admin_keys[] = {
    {"super_admins", KIND_IDS, NUM(admin, super_admins), ANY, "", true},
    {"operators", KIND_IDS, NUM(admin, operators), ANY, "", true},
};

static const struct config_key sender_keys[] = {
    {"max_sessions", KIND_UINT, NUM(sender, max_sessions), RANGE(1, 256), "4", true},
    {"max_per_session", KIND_UINT, NUM(sender, max_per_session), RANGE(1, 10000), "100", true},
    {"idle", KIND_DURATION, NUM(sender, idle_ms), RANGE(1, 3600 * MS_PER_S), "2", true},
    {"retry_initial", KIND_DURATION, NUM(sender, retry_initial_ms), RANGE(1, MS_PER_DAY), "30",
     true},
    {"retry_max", KIND_DURATION, NUM(sender, retry_max_ms), RANGE(1, 7 * MS_PER_DAY), "3600", true},
    {"tokencode_expiry", KIND_DURATION, NUM(sender, tokencode_expiry_ms),
     RANGE(MS_PER_S, MS_PER_DAY), "600", true},
    {"report_expiry", KIND_DURATION, NUM(sender, report_expiry_ms),
     RANGE(MS_PER_S, 30 * MS_PER_DAY), "432000", true},
    {"helo", KIND_HOSTNAME, STR(sender, helo), ANY, "", true},
};

static const struct config_key log_keys[] = {
    {"level", KIND_LEVEL, NUM(log, level), ANY, "info", true},
    {"format", KIND_FORMAT, NUM(log, format), ANY, "text", true},
};

static void *base_config(struct config *c, const char *label)
{
    (void)label;
    return c;
}

/* The entry of [replica "label"], made on first use; NULL when out of
 * memory. */
static void *base_replica(struct config *c, const char *label)
{
    struct config_replica *grown;

    for (size_t i = 0; i < c->nreplicas; i++)
        if (strcmp(c->replicas[i].id, label) == 0)
            return &c->replicas[i];
    if (strlen(label) >= sizeof(grown->id))
        return NULL;
    grown = realloc(c->replicas, (c->nreplicas + 1) * sizeof(*grown));
    if (grown == NULL)
        return NULL;
    c->replicas = grown;
    grown = &c->replicas[c->nreplicas++];
    memset(grown, 0, sizeof(*grown));
    memcpy(grown->id, label, strlen(label) + 1);
    return grown;
}

#define SECTION(name, keys)                                                                        \
    {                                                                                              \
        name, false, keys, sizeof(keys) / sizeof(keys[0]), base_config                             \
    }

static const struct config_section sections[] = {
    SECTION("node", node_keys),
    SECTION("tls", tls_keys),
    SECTION("replication", replication_keys),
    {"replica", true, replica_keys, sizeof(replica_keys) / sizeof(replica_keys[0]), base_replica},
    SECTION("admin", admin_keys),
    SECTION("sender", sender_keys),
    SECTION("log", log_keys),
};

#define NSECTIONS (sizeof(sections) / sizeof(sections[0]))

/* ---- problems ---- */

void config_problems_init(struct config_problems *p)
{
    p->lines = NULL;
    p->count = 0;
    p->dropped = 0;
}

void config_problems_free(struct config_problems *p)
{
    for (size_t i = 0; i < p->count; i++)
        free(p->lines[i]);
    free(p->lines);
    config_problems_init(p);
}

static void problem_add(struct config_problems *p, const char *file, int line, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));

static void problem_add(struct config_problems *p, const char *file, int line, const char *fmt, ...)
{
    char msg[512], *text, **grown;
    va_list ap;
    int n;

    if (p->count >= CONFIG_PROBLEMS_MAX) {
        p->dropped++;
        return;
    }
    va_start(ap, fmt);
    vsnprintf(msg, sizeof(msg), fmt, ap);
    va_end(ap);
    if (line > 0)
        n = asprintf(&text, "%s:%d: %s", file, line, msg);
    else
        n = asprintf(&text, "%s: %s", file, msg);
    if (n < 0) {
        p->dropped++;
        return;
    }
    grown = realloc(p->lines, (p->count + 1) * sizeof(*grown));
    if (grown == NULL) {
        free(text);
        p->dropped++;
        return;
    }
    p->lines = grown;
    p->lines[p->count++] = text;
}

/* A value quoted for a message: 'value', cut at 48 characters. Values hold
 * no control character (the reader refused such lines). */
static const char *quote(char *buf, size_t len, const char *value)
{
    if (strlen(value) > 48)
        snprintf(buf, len, "'%.45s...'", value);
    else
        snprintf(buf, len, "'%s'", value);
    return buf;
}

/* ---- values ---- */

/* Strict unsigned decimal: digits only, no overflow. */
static bool parse_u64(const char *s, size_t n, uint64_t *out)
{
    uint64_t v = 0;

    if (n == 0)
        return false;
    for (size_t i = 0; i < n; i++) {
        if (s[i] < '0' || s[i] > '9')
            return false;
        if (v > (UINT64_MAX - (uint64_t)(s[i] - '0')) / 10)
            return false;
        v = v * 10 + (uint64_t)(s[i] - '0');
    }
    *out = v;
    return true;
}

int config_parse_duration(const char *text, uint64_t *ms)
{
    static const struct {
        const char *suffix;
        uint64_t ms;
    } units[] = {{"ms", 1},
                 {"s", MS_PER_S},
                 {"m", 60 * MS_PER_S},
                 {"h", 3600 * MS_PER_S},
                 {"d", MS_PER_DAY}};
    size_t len = strlen(text), digits = 0;
    uint64_t whole, frac = 0, scale = MS_PER_S;
    const char *dot;

    while (digits < len && (text[digits] == '.' || (text[digits] >= '0' && text[digits] <= '9')))
        digits++;
    if (digits < len) {
        size_t u;
        for (u = 0; u < sizeof(units) / sizeof(units[0]); u++)
            if (strcmp(text + digits, units[u].suffix) == 0)
                break;
        if (u == sizeof(units) / sizeof(units[0]))
            return ERROR_INVALID;
        scale = units[u].ms;
    }
    dot = memchr(text, '.', digits);
    if (dot == NULL) {
        if (!parse_u64(text, digits, &whole))
            return ERROR_INVALID;
    } else {
        /* Decimals: seconds and larger units only, at most three places,
         * so every value is a whole number of milliseconds. */
        size_t nfrac = digits - (size_t)(dot - text) - 1;
        if (scale == 1 || nfrac == 0 || nfrac > 3 ||
            !parse_u64(text, (size_t)(dot - text), &whole) || !parse_u64(dot + 1, nfrac, &frac))
            return ERROR_INVALID;
        for (size_t i = nfrac; i < 3; i++)
            frac *= 10;
        /* frac is thousandths of the unit. */
        if (scale % 1000 != 0)
            return ERROR_INVALID;
        frac *= scale / 1000;
    }
    if (whole > (UINT64_MAX - frac) / scale)
        return ERROR_INVALID;
    *ms = whole * scale + frac;
    return 0;
}

static void format_duration(uint64_t ms, char *buf, size_t len)
{
    if (ms % MS_PER_S == 0)
        snprintf(buf, len, "%llus", (unsigned long long)(ms / MS_PER_S));
    else
        snprintf(buf, len, "%llums", (unsigned long long)ms);
}

/* host:port or [v6]:port into `a`; false with `why`. */
/* host:port; port 0 ("any free port") only if `allow_zero`. */
static bool parse_addr(const char *text, bool allow_zero, struct config_addr *a, char *why,
                       size_t whylen)
{
    char host[CONFIG_ADDR_MAX + 1], hwhy[160];
    const char *colon;
    uint64_t port;
    size_t hlen;

    if (strlen(text) > CONFIG_ADDR_MAX) {
        snprintf(why, whylen, "too long");
        return false;
    }
    colon = strrchr(text, ':');
    if (colon == NULL || !parse_u64(colon + 1, strlen(colon + 1), &port)) {
        snprintf(why, whylen, "must be host:port (IPv6 in brackets: [::1]:7443)");
        return false;
    }
    if (port < (allow_zero ? 0u : 1u) || port > 65535) {
        snprintf(why, whylen, "port must be %d-65535", allow_zero ? 0 : 1);
        return false;
    }
    hlen = (size_t)(colon - text);
    if (hlen >= 2 && text[0] == '[' && text[hlen - 1] == ']') {
        memcpy(host, text + 1, hlen - 2);
        host[hlen - 2] = '\0';
        if (syntax_host_classify(host, hwhy, sizeof(hwhy)) != SYNTAX_HOST_IPV6) {
            snprintf(why, whylen, "[%.64s] is not an IPv6 address", host);
            return false;
        }
    } else {
        memcpy(host, text, hlen);
        host[hlen] = '\0';
        if (strchr(host, ':') != NULL) {
            snprintf(why, whylen, "an IPv6 address must be in brackets: [%.64s]:%llu", host,
                     (unsigned long long)port);
            return false;
        }
        if (host[0] == '\0' || syntax_host_classify(host, hwhy, sizeof(hwhy)) == SYNTAX_HOST_BAD) {
            snprintf(why, whylen, "bad host: %s", host[0] == '\0' ? "empty" : hwhy);
            return false;
        }
    }
    if (strlen(host) >= sizeof(a->host)) {
        snprintf(why, whylen, "host name too long");
        return false;
    }
    memcpy(a->text, text, strlen(text) + 1);
    memcpy(a->host, host, strlen(host) + 1);
    a->port = (uint16_t)port;
    return true;
}

/* ---- id lists ---- */

static void ids_free(struct config_ids *l)
{
    for (size_t i = 0; i < l->n; i++)
        free(l->ids[i]);
    free(l->ids);
    l->ids = NULL;
    l->n = 0;
}

bool config_ids_has(const struct config_ids *l, const char *id)
{
    for (size_t i = 0; i < l->n; i++)
        if (strcmp(l->ids[i], id) == 0)
            return true;
    return false;
}

static int ids_add(struct config_ids *l, const char *id, size_t n)
{
    char **grown, *copy;

    if ((copy = strndup(id, n)) == NULL)
        return -ENOMEM;
    if ((grown = realloc(l->ids, (l->n + 1) * sizeof(*grown))) == NULL) {
        free(copy);
        return -ENOMEM;
    }
    l->ids = grown;
    l->ids[l->n++] = copy;
    return 0;
}

/* A certificate id as mtls_cert_id() gives it: printable ASCII without
 * blanks; and none of the list's or the file's separators. */
static bool admin_id_ok(const char *s, size_t n)
{
    if (n == 0 || n > CONFIG_ADMIN_ID_MAX)
        return false;
    for (size_t i = 0; i < n; i++)
        if (s[i] <= 0x20 || s[i] >= 0x7f || s[i] == ',' || s[i] == ';' || s[i] == '#' ||
            s[i] == '"')
            return false;
    return true;
}

/* "a, b,c" into `l` (replacing it). */
static bool parse_ids(const char *text, struct config_ids *l, char *why, size_t whylen)
{
    struct config_ids fresh = {NULL, 0};
    const char *p = text;

    while (*p != '\0') {
        const char *start, *end, *comma = strchr(p, ',');
        size_t n;

        end = comma != NULL ? comma : p + strlen(p);
        start = p;
        while (start < end && (*start == ' ' || *start == '\t'))
            start++;
        while (end > start && (end[-1] == ' ' || end[-1] == '\t'))
            end--;
        n = (size_t)(end - start);
        if (n == 0) {
            snprintf(why, whylen, "an empty id in the list (ids are separated by commas)");
            goto bad;
        }
        if (!admin_id_ok(start, n)) {
            snprintf(why, whylen,
                     "'%.*s' is not a certificate id (1-%d printable characters, no blanks)",
                     (int)(n > 64 ? 64 : n), start, CONFIG_ADMIN_ID_MAX);
            goto bad;
        }
        for (size_t i = 0; i < fresh.n; i++)
            if (strlen(fresh.ids[i]) == n && memcmp(fresh.ids[i], start, n) == 0) {
                snprintf(why, whylen, "'%.*s' is listed twice", (int)(n > 64 ? 64 : n), start);
                goto bad;
            }
        if (ids_add(&fresh, start, n) != 0) {
            snprintf(why, whylen, "out of memory");
            goto bad;
        }
        if (comma == NULL)
            break;
        p = comma + 1;
        if (*p == '\0') {
            snprintf(why, whylen, "an empty id in the list (ids are separated by commas)");
            goto bad;
        }
    }
    ids_free(l);
    *l = fresh;
    return true;
bad:
    ids_free(&fresh);
    return false;
}

static void ids_format(const struct config_ids *l, char *buf, size_t len)
{
    size_t used = 0;

    buf[0] = '\0';
    for (size_t i = 0; i < l->n && used < len; i++) {
        int w = snprintf(buf + used, len - used, "%s%s", i > 0 ? ", " : "", l->ids[i]);
        if (w < 0)
            break;
        used += (size_t)w;
    }
}

/*
 * Stores `value` into the key at `base`. Returns false with the reason (to
 * follow "invalid value for KEY in [SECTION]: ") in `why`.
 */
static bool key_set(const struct config_key *k, void *base, const char *value, char *why,
                    size_t whylen)
{
    char *field = (char *)base + k->offset;
    uint64_t n;
    int level;

    switch (k->kind) {
    case KIND_ID:
        if (value[0] == '\0' && k->def != NULL && k->def[0] == '\0')
            break; /* an optional id's default: not configured */
        if (!settings_instance_valid(value)) {
            snprintf(why, whylen,
                     "must be 1-%d of A-Z a-z 0-9 . _ -, starting with a letter or "
                     "digit",
                     SETTINGS_INSTANCE_MAX);
            return false;
        }
        break;
    case KIND_PATH:
    case KIND_SOCKET:
        if (value[0] == '\0' && k->def != NULL && k->def[0] == '\0')
            break; /* an optional path's default: not configured */
        if (value[0] != '/') {
            snprintf(why, whylen, "must be an absolute path");
            return false;
        }
        if (strlen(value) >= k->size) {
            snprintf(why, whylen, "longer than %zu characters%s", k->size - 1,
                     k->kind == KIND_SOCKET ? " (the limit of a Unix socket path)" : "");
            return false;
        }
        break;
    case KIND_ADDR:
        if (value[0] == '\0') {
            memset(field, 0, sizeof(struct config_addr));
            return true;
        }
        return parse_addr(value, false, (struct config_addr *)(void *)field, why, whylen);
    case KIND_LOOPBACK: {
        struct config_addr *a = (struct config_addr *)(void *)field;
        if (value[0] == '\0') {
            memset(a, 0, sizeof(*a));
            return true;
        }
        if (!parse_addr(value, true, a, why, whylen))
            return false;
        if (!syntax_is_loopback(a->host)) {
            /* The endpoint has no authentication: nothing but this host
             * may reach it. */
            snprintf(why, whylen,
                     "metrics are served on loopback only (127.0.0.0/8, [::1] or localhost): "
                     "the endpoint has no authentication");
            memset(a, 0, sizeof(*a));
            return false;
        }
        return true;
    }
    case KIND_UINT:
        if (!parse_u64(value, strlen(value), &n) || n < k->min || n > k->max) {
            snprintf(why, whylen, "must be a whole number from %llu to %llu",
                     (unsigned long long)k->min, (unsigned long long)k->max);
            return false;
        }
        *(unsigned *)(void *)field = (unsigned)n;
        return true;
    case KIND_DURATION: {
        char lo[32], hi[32];
        if (config_parse_duration(value, &n) != 0 || n < k->min || n > k->max) {
            format_duration(k->min, lo, sizeof(lo));
            format_duration(k->max, hi, sizeof(hi));
            snprintf(why, whylen,
                     "must be a duration from %s to %s (seconds, e.g. 30 or 0.5, or with a unit: "
                     "250ms, 30s, 10m, 1h, 5d)",
                     lo, hi);
            return false;
        }
        *(uint64_t *)(void *)field = n;
        return true;
    }
    case KIND_HOSTNAME: {
        char hwhy[160];
        if (value[0] == '\0')
            break; /* the default: this host's name */
        if (strlen(value) >= k->size ||
            syntax_host_classify(value, hwhy, sizeof(hwhy)) != SYNTAX_HOST_DNS) {
            snprintf(why, whylen, "must be a DNS host name");
            return false;
        }
        break;
    }
    case KIND_LEVEL:
        if ((level = log_level_parse(value)) < 0) {
            snprintf(why, whylen, "must be debug, info, warn or error");
            return false;
        }
        *(enum log_level *)(void *)field = (enum log_level)level;
        return true;
    case KIND_FORMAT:
        if (strcmp(value, "text") != 0 && strcmp(value, "json") != 0) {
            snprintf(why, whylen, "must be text or json");
            return false;
        }
        *(enum log_format *)(void *)field =
            strcmp(value, "json") == 0 ? LOG_FORMAT_JSON : LOG_FORMAT_TEXT;
        return true;
    case KIND_BOOL:
        if (strcmp(value, "yes") == 0 || strcmp(value, "on") == 0 || strcmp(value, "true") == 0 ||
            strcmp(value, "1") == 0)
            *(bool *)(void *)field = true;
        else if (strcmp(value, "no") == 0 || strcmp(value, "off") == 0 ||
                 strcmp(value, "false") == 0 || strcmp(value, "0") == 0)
            *(bool *)(void *)field = false;
        else {
            snprintf(why, whylen, "must be yes or no (on/off, true/false, 1/0)");
            return false;
        }
        return true;
    case KIND_IDS:
        if (value[0] == '\0') {
            ids_free((struct config_ids *)(void *)field);
            return true;
        }
        return parse_ids(value, (struct config_ids *)(void *)field, why, whylen);
    }
    /* The string kinds, checked above. */
    if (strlen(value) >= k->size) {
        snprintf(why, whylen, "longer than %zu characters", k->size - 1);
        return false;
    }
    memcpy(field, value, strlen(value) + 1);
    return true;
}

static void key_format(const struct config_key *k, const void *base, char *buf, size_t len)
{
    const char *field = (const char *)base + k->offset;
    static const char *const levels[] = {"debug", "info", "warn", "error"};

    switch (k->kind) {
    case KIND_ID:
    case KIND_PATH:
    case KIND_SOCKET:
    case KIND_HOSTNAME:
        snprintf(buf, len, "%s", field);
        return;
    case KIND_ADDR:
    case KIND_LOOPBACK:
        snprintf(buf, len, "%s", ((const struct config_addr *)(const void *)field)->text);
        return;
    case KIND_UINT:
        snprintf(buf, len, "%u", *(const unsigned *)(const void *)field);
        return;
    case KIND_DURATION:
        format_duration(*(const uint64_t *)(const void *)field, buf, len);
        return;
    case KIND_LEVEL: {
        enum log_level l = *(const enum log_level *)(const void *)field;
        snprintf(buf, len, "%s", l <= LOG_LEVEL_ERROR ? levels[l] : "?");
        return;
    }
    case KIND_FORMAT:
        snprintf(buf, len, "%s",
                 *(const enum log_format *)(const void *)field == LOG_FORMAT_JSON ? "json"
                                                                                  : "text");
        return;
    case KIND_BOOL:
        snprintf(buf, len, "%s", *(const bool *)(const void *)field ? "yes" : "no");
        return;
    case KIND_IDS:
        ids_format((const struct config_ids *)(const void *)field, buf, len);
        return;
    }
    abort();
}

/* ---- parsing ---- */

/* A key that was set, for duplicates and cross-checks. */
struct seen {
    const struct config_section *section;
    char label[CONFIG_LINE_MAX + 1];
    const struct config_key *key;
    int line;
};

struct parse {
    FILE *f;
    const char *name;
    struct config *c;
    struct config_problems *p;
    char *line; /* getline's buffer */
    size_t cap;
    int lineno;
    int read_error; /* errno of a failed read */
    /* The section the next keys belong to: NULL before any header, or when
     * the header was bad or unknown (already reported); in_bad tells the
     * two apart. */
    const struct config_section *section;
    char label[CONFIG_LINE_MAX + 1];
    bool in_bad;
    struct seen *seen;
    size_t nseen;
};

static const struct config_section *section_lookup(const char *name, size_t n)
{
    for (size_t i = 0; i < NSECTIONS; i++)
        if (strlen(sections[i].name) == n && memcmp(sections[i].name, name, n) == 0)
            return &sections[i];
    return NULL;
}

/* "[node]" or "[replica "site-b"]" into ps->section / label. */
static void parse_header(struct parse *ps, const char *line)
{
    const char *p = line + 1, *name = p, *end;
    char shown[CONFIG_LINE_MAX + 8];
    size_t nlen;

    ps->section = NULL;
    ps->label[0] = '\0';
    ps->in_bad = true;
    end = strchr(line, ']');
    if (end == NULL) {
        problem_add(ps->p, ps->name, ps->lineno, "section header without a closing ']'");
        return;
    }
    /* After the header, only a comment. */
    for (const char *q = end + 1; *q != '\0'; q++) {
        if (*q == ';' || *q == '#')
            break;
        if (*q != ' ' && *q != '\t') {
            problem_add(ps->p, ps->name, ps->lineno, "text after the section header");
            return;
        }
    }
    snprintf(shown, sizeof(shown), "%.*s", (int)(end - line + 1), line);
    while (p < end && ((*p >= 'a' && *p <= 'z') || *p == '_'))
        p++;
    nlen = (size_t)(p - name);
    if (p < end) {
        /* A label: blanks, then "text" up to the ']'. */
        const char *q = p, *l0, *l1;
        while (q < end && (*q == ' ' || *q == '\t'))
            q++;
        l0 = q + 1;
        l1 = end - 1;
        if (nlen == 0 || q == p || q >= end || *q != '"' || l1 < l0 || *l1 != '"' ||
            memchr(l0, '"', (size_t)(l1 - l0)) != NULL || l1 == l0) {
            problem_add(ps->p, ps->name, ps->lineno,
                        "malformed section header %s (expected [name] or [name \"label\"])", shown);
            return;
        }
        memcpy(ps->label, l0, (size_t)(l1 - l0));
        ps->label[l1 - l0] = '\0';
    }
    ps->section = section_lookup(name, nlen);
    if (ps->section == NULL) {
        problem_add(ps->p, ps->name, ps->lineno, "unknown section %s", shown);
        return;
    }
    if (ps->section->labelled != (ps->label[0] != '\0')) {
        problem_add(ps->p, ps->name, ps->lineno,
                    ps->section->labelled ? "section [%s] needs a name: [%s \"name\"]"
                                          : "section [%s] takes no name",
                    ps->section->name, ps->section->name);
        ps->section = NULL;
        return;
    }
    if (ps->section->labelled) {
        struct config_replica *r;
        char q[64];

        /* The only labelled section names a node: its label is an id. */
        if (!settings_instance_valid(ps->label)) {
            problem_add(ps->p, ps->name, ps->lineno,
                        "invalid replica id %s in %s: must be 1-%d of A-Z a-z 0-9 . _ -, "
                        "starting with a letter or digit",
                        quote(q, sizeof(q), ps->label), shown, SETTINGS_INSTANCE_MAX);
            ps->section = NULL;
            return;
        }
        if ((r = ps->section->base(ps->c, ps->label)) == NULL) {
            problem_add(ps->p, ps->name, ps->lineno, "out of memory");
            ps->section = NULL;
            return;
        }
        if (r->line == 0)
            r->line = ps->lineno;
    }
    ps->in_bad = false;
}

/* Is `line` (left-trimmed) `key = value` with a plain key? */
static bool key_line_ok(const char *line)
{
    const char *eq = strchr(line, '=');

    if (eq == NULL || eq == line)
        return false;
    for (const char *q = line; q < eq; q++) {
        if (*q == ' ' || *q == '\t') {
            /* Only blanks between the key and '='. */
            for (; q < eq; q++)
                if (*q != ' ' && *q != '\t')
                    return false;
            return true;
        }
        if (!((*q >= 'a' && *q <= 'z') || (*q >= 'A' && *q <= 'Z') || (*q >= '0' && *q <= '9') ||
              *q == '_' || *q == '-' || *q == '.'))
            return false;
    }
    return true;
}

/*
 * inih's reader: one raw line per call, numbered here. What inih gets is
 * either the key line (left-trimmed) or a blank line.
 */
static char *reader(char *str, int num, void *stream)
{
    static const unsigned char bom[] = {0xef, 0xbb, 0xbf};
    struct parse *ps = stream;
    ssize_t n;
    char *s;
    size_t len;

    errno = 0;
    n = getline(&ps->line, &ps->cap, ps->f);
    if (n < 0) {
        if (ferror(ps->f))
            ps->read_error = errno != 0 ? errno : EIO;
        return NULL;
    }
    ps->lineno++;
    s = ps->line;
    len = (size_t)n;
    if (len > 0 && s[len - 1] == '\n')
        s[--len] = '\0';
    if (len > 0 && s[len - 1] == '\r')
        s[--len] = '\0';
    if (ps->lineno == 1 && len >= 3 && memcmp(s, bom, 3) == 0) {
        s += 3;
        len -= 3;
    }
    str[0] = '\n';
    str[1] = '\0';
    for (size_t i = 0; i < len; i++) {
        if (((unsigned char)s[i] < 0x20 && s[i] != '\t') || s[i] == 0x7f) {
            problem_add(ps->p, ps->name, ps->lineno, "control character in the line");
            return str;
        }
    }
    while (*s == ' ' || *s == '\t') {
        s++;
        len--;
    }
    if (len == 0 || *s == ';' || *s == '#')
        return str;
    if (*s == '[') {
        parse_header(ps, s);
        return str;
    }
    if (len > CONFIG_LINE_MAX || len + 2 > (size_t)num) {
        problem_add(ps->p, ps->name, ps->lineno, "line longer than %d characters", CONFIG_LINE_MAX);
        return str;
    }
    if (!key_line_ok(s)) {
        problem_add(ps->p, ps->name, ps->lineno, "expected 'key = value' or '[section]'");
        return str;
    }
    memcpy(str, s, len);
    str[len] = '\n';
    str[len + 1] = '\0';
    return str;
}

static const struct config_key *key_lookup(const struct config_section *s, const char *name)
{
    for (size_t i = 0; i < s->nkeys; i++)
        if (strcmp(s->keys[i].name, name) == 0)
            return &s->keys[i];
    return NULL;
}

static const struct seen *seen_find(const struct parse *ps, const struct config_section *s,
                                    const char *label, const struct config_key *k)
{
    for (size_t i = 0; i < ps->nseen; i++)
        if (ps->seen[i].section == s && ps->seen[i].key == k &&
            strcmp(ps->seen[i].label, label) == 0)
            return &ps->seen[i];
    return NULL;
}

/* "[node]" or "[replica "x"]" for messages. */
static const char *section_shown(const struct config_section *s, const char *label, char *buf,
                                 size_t len)
{
    if (label[0] != '\0')
        snprintf(buf, len, "[%s \"%s\"]", s->name, label);
    else
        snprintf(buf, len, "[%s]", s->name);
    return buf;
}

static int handler(void *user, const char *section, const char *name, const char *value)
{
    struct parse *ps = user;
    const struct config_section *s = ps->section;
    const struct config_key *k;
    const struct seen *prev;
    char where[CONFIG_LINE_MAX + 8], q[64], why[256];
    struct seen *grown;
    void *base;

    (void)section; /* ours is ps->section: inih never sees a header */
    if (s == NULL) {
        if (!ps->in_bad)
            problem_add(ps->p, ps->name, ps->lineno, "key '%s' outside any section", name);
        return 1;
    }
    section_shown(s, ps->label, where, sizeof(where));
    if ((k = key_lookup(s, name)) == NULL) {
        problem_add(ps->p, ps->name, ps->lineno, "unknown key '%s' in %s", name, where);
        return 1;
    }
    if ((prev = seen_find(ps, s, ps->label, k)) != NULL) {
        problem_add(ps->p, ps->name, ps->lineno, "duplicate key '%s' in %s (first set on line %d)",
                    name, where, prev->line);
        return 1;
    }
    grown = realloc(ps->seen, (ps->nseen + 1) * sizeof(*grown));
    if (grown == NULL)
        return 0;
    ps->seen = grown;
    grown = &ps->seen[ps->nseen++];
    grown->section = s;
    grown->key = k;
    grown->line = ps->lineno;
    memcpy(grown->label, ps->label, sizeof(grown->label));

    /* An empty metrics_listen turns the endpoint off, as leaving it out. */
    if (value[0] == '\0' && k->kind != KIND_LOOPBACK) {
        problem_add(ps->p, ps->name, ps->lineno, "empty value for '%s' in %s", name, where);
        return 1;
    }
    if ((base = s->base(ps->c, ps->label)) == NULL)
        return 0;
    if (!key_set(k, base, value, why, sizeof(why)))
        problem_add(ps->p, ps->name, ps->lineno, "invalid value %s for '%s' in %s: %s",
                    quote(q, sizeof(q), value), name, where, why);
    return 1;
}

/* The line where [section] key was set, else 0. */
static int seen_line(const struct parse *ps, const char *section, const char *key)
{
    const struct config_section *s = section_lookup(section, strlen(section));
    const struct seen *seen;

    if (s == NULL)
        return 0;
    seen = seen_find(ps, s, "", key_lookup(s, key));
    return seen != NULL ? seen->line : 0;
}

/* [tls] is all or nothing, and needed to listen or to push. */
static void check_tls(struct parse *ps)
{
    const struct config *c = ps->c;
    const char *const keys[] = {"ca", "cert", "key"};
    const char *const values[] = {c->tls.ca, c->tls.cert, c->tls.key};
    const char *needed_by = NULL;

    if (c->node.listen.port != 0)
        needed_by = "[node] listen";
    else if (c->nreplicas > 0)
        needed_by = "the [replica] sections";
    else if (c->tls.ca[0] != '\0' || c->tls.cert[0] != '\0' || c->tls.key[0] != '\0')
        needed_by = "the other [tls] keys";
    if (needed_by == NULL)
        return;
    for (size_t i = 0; i < 3; i++)
        if (values[i][0] == '\0')
            problem_add(ps->p, ps->name, 0, "missing required key '%s' in [tls] (needed by %s)",
                        keys[i], needed_by);
}

/* Admin certificates and nodes are told apart by id: an id is one or the
 * other, and holds one role. */
static void check_admin(struct parse *ps)
{
    const struct config *c = ps->c;
    const struct config_ids *lists[] = {&c->admin.super_admins, &c->admin.operators};
    const char *const keys[] = {"super_admins", "operators"};

    for (size_t l = 0; l < 2; l++) {
        int line = seen_line(ps, "admin", keys[l]);
        for (size_t i = 0; i < lists[l]->n; i++) {
            const char *id = lists[l]->ids[i];
            const char *what = NULL;
            if (strcmp(id, c->node.id) == 0)
                what = "this node's id ([node] id)";
            else if (config_replica_find(c, id) != NULL)
                what = "a replica's id ([replica])";
            else if (strcmp(id, c->replication.primary) == 0)
                what = "the primary's id ([replication] primary)";
            if (what != NULL)
                problem_add(ps->p, ps->name, line,
                            "'%.64s' in [admin] %s is %s: an admin certificate needs an id of "
                            "its own",
                            id, keys[l], what);
            if (l == 1 && config_ids_has(&c->admin.super_admins, id))
                problem_add(ps->p, ps->name, line,
                            "'%.64s' is both in super_admins and in operators in [admin]", id);
        }
    }
}

/* Checks between keys and required keys, after the whole file. */
static void check_whole(struct parse *ps)
{
    struct config *c = ps->c;
    const struct seen *sm, *si;
    char a[32], b[32];

    for (size_t i = 0; i < NSECTIONS; i++) {
        const struct config_section *s = &sections[i];
        if (s->labelled)
            continue;
        for (size_t j = 0; j < s->nkeys; j++)
            if (s->keys[j].def == NULL && seen_find(ps, s, "", &s->keys[j]) == NULL)
                problem_add(ps->p, ps->name, 0, "missing required key '%s' in [%s]",
                            s->keys[j].name, s->name);
    }
    if (c->sender.retry_max_ms < c->sender.retry_initial_ms) {
        const struct config_section *s = section_lookup("sender", 6);
        sm = seen_find(ps, s, "", key_lookup(s, "retry_max"));
        si = seen_find(ps, s, "", key_lookup(s, "retry_initial"));
        format_duration(c->sender.retry_max_ms, a, sizeof(a));
        format_duration(c->sender.retry_initial_ms, b, sizeof(b));
        problem_add(ps->p, ps->name,
                    sm != NULL   ? sm->line
                    : si != NULL ? si->line
                                 : 0,
                    "retry_max (%s) is shorter than retry_initial (%s) in [sender]", a, b);
    }
    for (size_t i = 0; i < c->nreplicas; i++) {
        const struct config_replica *r = &c->replicas[i];
        const struct config_section *rs = section_lookup("replica", 7);
        if (seen_find(ps, rs, r->id, key_lookup(rs, "address")) == NULL)
            problem_add(ps->p, ps->name, r->line,
                        "missing required key 'address' in [replica \"%s\"]", r->id);
        if (strcmp(r->id, c->node.id) == 0)
            problem_add(ps->p, ps->name, r->line,
                        "[replica \"%s\"] is this node ([node] id): a node does not replicate "
                        "to itself",
                        r->id);
    }
    check_tls(ps);
    check_admin(ps);
}

void config_init(struct config *c)
{
    char why[256];

    memset(c, 0, sizeof(*c));
    for (size_t i = 0; i < NSECTIONS; i++) {
        if (sections[i].labelled)
            continue;
        for (size_t j = 0; j < sections[i].nkeys; j++) {
            const struct config_key *k = &sections[i].keys[j];
            /* The defaults are in the table, in the file's syntax: they
             * must parse, or the table is wrong. */
            if (k->def != NULL && !key_set(k, c, k->def, why, sizeof(why)))
                abort();
        }
    }
}

void config_clear(struct config *c)
{
    ids_free(&c->admin.super_admins);
    ids_free(&c->admin.operators);
    free(c->replicas);
    memset(c, 0, sizeof(*c));
}

static int ids_copy(struct config_ids *dst, const struct config_ids *src)
{
    dst->ids = NULL;
    dst->n = 0;
    for (size_t i = 0; i < src->n; i++)
        if (ids_add(dst, src->ids[i], strlen(src->ids[i])) != 0)
            return -ENOMEM;
    return 0;
}

int config_copy(struct config *dst, const struct config *src)
{
    *dst = *src;
    dst->replicas = NULL;
    dst->admin.super_admins.ids = dst->admin.operators.ids = NULL;
    dst->admin.super_admins.n = dst->admin.operators.n = 0;
    if (src->nreplicas > 0) {
        dst->replicas = malloc(src->nreplicas * sizeof(*dst->replicas));
        if (dst->replicas == NULL)
            goto nomem;
        memcpy(dst->replicas, src->replicas, src->nreplicas * sizeof(*dst->replicas));
    }
    if (ids_copy(&dst->admin.super_admins, &src->admin.super_admins) != 0 ||
        ids_copy(&dst->admin.operators, &src->admin.operators) != 0)
        goto nomem;
    return 0;
nomem:
    config_clear(dst);
    return -ENOMEM;
}

const struct config_replica *config_replica_find(const struct config *c, const char *id)
{
    for (size_t i = 0; i < c->nreplicas; i++)
        if (strcmp(c->replicas[i].id, id) == 0)
            return &c->replicas[i];
    return NULL;
}

int config_load_file(FILE *f, const char *name, struct config *c, struct config_problems *p)
{
    struct parse ps;
    size_t before = p->count + p->dropped;
    int rc, err = 0;

    config_init(c);
    memset(&ps, 0, sizeof(ps));
    ps.f = f;
    ps.name = name;
    ps.c = c;
    ps.p = p;
    rc = ini_parse_stream(reader, &ps, handler, &ps);
    if (ps.read_error != 0) {
        err = -ps.read_error;
        problem_add(p, name, 0, "cannot read: %s", strerror(ps.read_error));
    } else if (rc < 0) {
        err = -ENOMEM;
        problem_add(p, name, 0, "cannot read: %s", strerror(ENOMEM));
    } else {
        /* rc > 0 would be a line the handler refused: only when out of memory. */
        if (rc > 0)
            problem_add(p, name, rc, "out of memory");
        check_whole(&ps);
    }
    free(ps.line);
    free(ps.seen);
    if (err != 0)
        return err;
    return p->count + p->dropped > before ? ERROR_INVALID : 0;
}

int config_load(const char *path, struct config *c, struct config_problems *p)
{
    FILE *f;
    int rc;

    if ((f = fopen(path, "re")) == NULL) {
        int err = errno;
        config_init(c);
        problem_add(p, path, 0, "cannot read: %s", strerror(err));
        return -err;
    }
    rc = config_load_file(f, path, c, p);
    fclose(f);
    return rc;
}

/* [replica] sections that appear, go or move. */
static void diff_replicas(const struct config *old, const struct config *new, config_change_cb cb,
                          void *arg)
{
    char section[SETTINGS_INSTANCE_MAX + 16];

    for (size_t i = 0; i < old->nreplicas; i++) {
        const struct config_replica *o = &old->replicas[i];
        const struct config_replica *n = config_replica_find(new, o->id);
        snprintf(section, sizeof(section), "replica \"%s\"", o->id);
        if (n == NULL)
            cb(section, "address", o->address.text, "", true, arg);
        else if (strcmp(n->address.text, o->address.text) != 0)
            cb(section, "address", o->address.text, n->address.text, true, arg);
    }
    for (size_t i = 0; i < new->nreplicas; i++) {
        const struct config_replica *n = &new->replicas[i];
        snprintf(section, sizeof(section), "replica \"%s\"", n->id);
        if (config_replica_find(old, n->id) == NULL)
            cb(section, "address", "", n->address.text, true, arg);
    }
}

void config_diff(const struct config *old, const struct config *new, config_change_cb cb, void *arg)
{
    /* Big enough for a path or a line's worth of ids (CONFIG_LINE_MAX). */
    char a[CONFIG_PATH_MAX + 16], b[CONFIG_PATH_MAX + 16];

    for (size_t i = 0; i < NSECTIONS; i++) {
        const struct config_section *s = &sections[i];
        if (s->labelled)
            continue;
        for (size_t j = 0; j < s->nkeys; j++) {
            key_format(&s->keys[j], old, a, sizeof(a));
            key_format(&s->keys[j], new, b, sizeof(b));
            if (strcmp(a, b) != 0)
                cb(s->name, s->keys[j].name, a, b, s->keys[j].live, arg);
        }
    }
    diff_replicas(old, new, cb, arg);
}

int config_format(const struct config *c, const char *section, const char *key, char *buf,
                  size_t len)
{
    const struct config_section *s = section_lookup(section, strlen(section));
    const struct config_key *k;

    if (s == NULL || s->labelled || (k = key_lookup(s, key)) == NULL)
        return ERROR_NOT_FOUND;
    key_format(k, c, buf, len);
    return 0;
}
