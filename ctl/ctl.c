#include "ctl.h"

#include <errno.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "error.h"

int ctl_store_open(struct ctl *ctl, bool create)
{
    char qdir[256];
    struct stat st;
    int err;

    if (ctl->store != NULL)
        return CTL_EXIT_OK;
    if (ctl->data_dir == NULL) {
        ctl_errorf("no store given: use --data-dir DIR (or set SMTPSYNC_DATA_DIR); remote mode "
                   "(--server) is not available yet");
        return CTL_EXIT_USAGE;
    }
    ctl_quote(ctl->data_dir, qdir, sizeof(qdir));
    /* Checked here rather than left to store_open() so the message says
     * what is wrong in words an operator expects. */
    if (stat(ctl->data_dir, &st) == 0) {
        if (!S_ISDIR(st.st_mode)) {
            ctl_errorf("cannot open store in %s: not a directory (--data-dir)", qdir);
            return CTL_EXIT_FAIL;
        }
    } else if (errno != ENOENT || !create) {
        err = -errno;
        if (err == -ENOENT)
            ctl_errorf("cannot open store in %s: no such directory (--data-dir; a store is "
                       "created by `settings set`)",
                       qdir);
        else
            ctl_errorf("cannot open store in %s: %s", qdir, error_str(err));
        return CTL_EXIT_FAIL;
    }

    struct store_params params = {
        .dir = ctl->data_dir,
        .key_file = ctl->key_file,
        .map_size = 0,
    };
    err = store_open(&params, &ctl->store);
    if (err < 0) {
        ctl->store = NULL;
        if (err == ERROR_KEYFILE) {
            char qkey[256];
            ctl_quote(ctl->key_file != NULL ? ctl->key_file : "<data-dir>/node.key", qkey,
                      sizeof(qkey));
            ctl_errorf("cannot open store in %s: %s (%s; it must be a regular file of mode 0600 "
                       "holding 32 bytes)",
                       qdir, error_str(err), qkey);
        } else {
            ctl_errorf("cannot open store in %s: %s", qdir, error_str(err));
        }
        return CTL_EXIT_FAIL;
    }
    return CTL_EXIT_OK;
}

/* The synopsis of a usage text: its lines up to the first empty one. The
 * whole text is for --help; after an error, the synopsis is enough. */
static void print_synopsis(const char *usage)
{
    const char *end = strstr(usage, "\n\n");
    size_t n = end != NULL ? (size_t)(end - usage) + 1 : strlen(usage);

    fwrite(usage, 1, n, stderr);
    fputs("(--help prints every option)\n", stderr);
}

static void verrorf(const char *fmt, va_list ap) __attribute__((format(printf, 1, 0)));

/* Flushes stdout first so an error lands after what was already printed. */
static void verrorf(const char *fmt, va_list ap)
{
    fflush(stdout);
    fputs(CTL_PROG ": ", stderr);
    vfprintf(stderr, fmt, ap);
    fputc('\n', stderr);
}

void ctl_errorf(const char *fmt, ...)
{
    va_list ap;

    va_start(ap, fmt);
    verrorf(fmt, ap);
    va_end(ap);
}

int ctl_usage_error(const char *usage, const char *fmt, ...)
{
    va_list ap;

    va_start(ap, fmt);
    verrorf(fmt, ap);
    va_end(ap);
    if (usage != NULL)
        print_synopsis(usage);
    return CTL_EXIT_USAGE;
}

int ctl_usage(const char *usage)
{
    fflush(stdout);
    print_synopsis(usage);
    return CTL_EXIT_USAGE;
}

/* Length of the valid UTF-8 sequence at s (1..4), or 0 if it is not one. */
static size_t utf8_len(const unsigned char *s)
{
    unsigned char c = s[0];

    if (c < 0x80)
        return 1;
    if (c >= 0xc2 && c <= 0xdf)
        return (s[1] & 0xc0) == 0x80 ? 2 : 0;
    if (c >= 0xe0 && c <= 0xef) {
        unsigned char lo = c == 0xe0 ? 0xa0 : 0x80;
        unsigned char hi = c == 0xed ? 0x9f : 0xbf;
        if (s[1] < lo || s[1] > hi || (s[2] & 0xc0) != 0x80)
            return 0;
        return 3;
    }
    if (c >= 0xf0 && c <= 0xf4) {
        unsigned char lo = c == 0xf0 ? 0x90 : 0x80;
        unsigned char hi = c == 0xf4 ? 0x8f : 0xbf;
        if (s[1] < lo || s[1] > hi || (s[2] & 0xc0) != 0x80 || (s[3] & 0xc0) != 0x80)
            return 0;
        return 4;
    }
    return 0;
}

/* Writes the printable form of the next character of s into out (NUL
 * terminated, at most 5 bytes) and returns how many input bytes it used. */
static size_t escape_next(const char *s, char out[8])
{
    const unsigned char *u = (const unsigned char *)s;
    size_t n = utf8_len(u);

    if (n == 0 || u[0] < 0x20 || u[0] == 0x7f) {
        snprintf(out, 8, "\\x%02x", u[0]);
        return 1;
    }
    memcpy(out, s, n);
    out[n] = '\0';
    return n;
}

bool ctl_text_clean(const char *text)
{
    const unsigned char *u = (const unsigned char *)text;

    while (*u != '\0') {
        size_t n = utf8_len(u);
        if (n == 0 || *u < 0x20 || *u == 0x7f)
            return false;
        u += n;
    }
    return true;
}

bool ctl_comment_ok(const char *comment)
{
    char q[96];

    if (strlen(comment) > STORE_COMMENT_MAX) {
        ctl_errorf("--comment: longer than %d bytes", STORE_COMMENT_MAX);
        return false;
    }
    if (!ctl_text_clean(comment)) {
        ctl_errorf("--comment: contains control characters or is not UTF-8: '%s'",
                   ctl_quote(comment, q, sizeof(q)));
        return false;
    }
    return true;
}

const char *ctl_quote(const char *text, char *buf, size_t len)
{
    size_t used = 0;
    char piece[8];

    if (len == 0)
        return buf;
    buf[0] = '\0';
    if (text == NULL)
        return buf;
    while (*text != '\0') {
        size_t in = escape_next(text, piece);
        size_t plen = strlen(piece);
        /* Keep room for "..." and the NUL. */
        if (used + plen + 4 > len) {
            /* The loop keeps used + 4 <= len, so the dots always fit. */
            if (used + 4 <= len)
                memcpy(buf + used, "...", 4);
            return buf;
        }
        memcpy(buf + used, piece, plen + 1);
        used += plen;
        text += in;
    }
    return buf;
}

void ctl_fputs_safe(const char *text, FILE *f)
{
    char piece[8];

    while (text != NULL && *text != '\0') {
        text += escape_next(text, piece);
        fputs(piece, f);
    }
}

int ctl_parse_u64(const char *text, uint64_t min, uint64_t max, uint64_t *out)
{
    char *end;
    unsigned long long v;

    /* strtoull() alone would take " 12", "+12", "-1" (as a huge number)
     * and "0x1f"; a revision or a count is plain digits. */
    if (text == NULL || text[0] < '0' || text[0] > '9')
        return ERROR_INVALID;
    errno = 0;
    v = strtoull(text, &end, 10);
    if (errno != 0 || *end != '\0')
        return ERROR_INVALID;
    if (v < min || v > max)
        return ERROR_INVALID;
    *out = v;
    return 0;
}

/* The "--name" part of an option word, without any "=value": a value
 * may be a secret and is never echoed. */
static const char *option_word(const char *arg, char *buf, size_t len)
{
    char tmp[128];
    size_t n = strcspn(arg, "=");

    if (n >= sizeof(tmp))
        n = sizeof(tmp) - 1;
    memcpy(tmp, arg, n);
    tmp[n] = '\0';
    return ctl_quote(tmp, buf, len);
}

int ctl_getopt(int argc, char **argv, const char *optstring, const struct option *longopts)
{
    char word[160];
    int idx = -1;
    int c;

    opterr = 0;
    c = getopt_long(argc, argv, optstring, longopts, &idx);
    if (c == -1)
        return c;
    if (c == '?' || c == ':') {
        const char *text = optind > 0 && optind <= argc ? argv[optind - 1] : "";
        bool is_long = strncmp(text, "--", 2) == 0;
        if (c == '?' && optopt >= '0' && optopt <= '9' && !is_long)
            ctl_errorf("unknown option '-%c' (numbers here are positive: 1, 2, ...)", optopt);
        else if (c == '?' && optopt != 0 && !is_long)
            ctl_errorf("unknown option '-%c'", optopt);
        else if (c == '?' && optopt != 0 && strchr(text, '=') != NULL)
            ctl_errorf("option '%s' takes no value", option_word(text, word, sizeof(word)));
        else if (c == '?')
            ctl_errorf("unknown option '%s'", option_word(text, word, sizeof(word)));
        else if (optopt != 0 && !is_long)
            ctl_errorf("option '-%c' needs a value", optopt);
        else
            ctl_errorf("option '%s' needs a value", option_word(text, word, sizeof(word)));
        return '?';
    }
    if (idx < 0)
        return c; /* a short option */

    /* Find the word that named the option: the one before its value when
     * the value was a separate argument. */
    const struct option *o = &longopts[idx];
    int at = optind - 1;
    if (o->has_arg == required_argument && optarg != NULL && at >= 1 && optarg == argv[at])
        at--;
    const char *text = argv[at];
    size_t n = strcspn(text + 2, "=");
    if (strncmp(text, "--", 2) != 0 || strlen(o->name) != n || strncmp(text + 2, o->name, n) != 0) {
        ctl_errorf("unknown option '%s' (options are not abbreviated; did you mean '--%s'?)",
                   option_word(text, word, sizeof(word)), o->name);
        return '?';
    }
    return c;
}
