#include "ctl.h"

#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <limits.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "error.h"

int ctl_store_open(struct ctl *ctl, bool create)
{
    char qdir[256], keypath[PATH_MAX], qkey[256];
    struct stat st;
    int err;

    if (ctl->store != NULL)
        return CTL_EXIT_OK;
    if (ctl->data_dir == NULL) {
        ctl_errorf("no store given: use --data-dir DIR (or set SMTPSYNC_DATA_DIR), or "
                   "--server HOST:PORT to go through a daemon");
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
        .create = create,
    };
    err = store_open(&params, &ctl->store);
    if (err == 0)
        return CTL_EXIT_OK;
    ctl->store = NULL;
    if (err == ERROR_NOT_FOUND) {
        ctl_errorf("no store in %s (nothing has been saved or drafted there yet)", qdir);
    } else if (err == ERROR_KEYFILE) {
        /* Name the path store_open() used, so a typo in it shows. */
        if (ctl->key_file != NULL)
            snprintf(keypath, sizeof(keypath), "%s", ctl->key_file);
        else
            snprintf(keypath, sizeof(keypath), "%s/node.key", ctl->data_dir);
        ctl_errorf("node key %s is missing or does not match the store in %s (it must be the "
                   "key the store was made with: a regular file of mode 0600; see --key-file)",
                   ctl_quote(keypath, qkey, sizeof(qkey)), qdir);
    } else {
        ctl_errorf("cannot open store in %s: %s", qdir, error_str(err));
    }
    return CTL_EXIT_FAIL;
}

bool ctl_instance_ok(const char *id)
{
    char q[96];

    if (settings_instance_valid(id))
        return true;
    ctl_errorf("--instance: invalid instance id '%s' (1-%d of A-Z a-z 0-9 . _ -, starting with "
               "a letter or digit)",
               ctl_quote(id, q, sizeof(q)), SETTINGS_INSTANCE_MAX);
    return false;
}

int ctl_parse_revision(const char *what, const char *text, uint64_t head, const char *usage,
                       uint64_t *out)
{
    char q[96];

    if (ctl_parse_u64(text, 1, UINT64_MAX, out) < 0)
        return ctl_usage_error(usage, "%s: '%s' is not a revision number (1, 2, ...)", what,
                               ctl_quote(text, q, sizeof(q)));
    if (*out > head) {
        if (head == 0)
            ctl_errorf("%s: revision %" PRIu64 " does not exist (nothing has been saved yet)", what,
                       *out);
        else
            ctl_errorf("%s: revision %" PRIu64 " does not exist (the newest is %" PRIu64 ")", what,
                       *out, head);
        return CTL_EXIT_FAIL;
    }
    return CTL_EXIT_OK;
}

void ctl_revision_error(const char *doing, int err, uint64_t base)
{
    if (err == ERROR_COMPACTED)
        ctl_errorf("cannot %s: %s (the oldest revision still kept is %" PRIu64 ")", doing,
                   error_str(err), base + 1);
    else
        ctl_errorf("cannot %s: %s", doing, error_str(err));
}

int ctl_store_open_info(struct ctl *ctl, struct store_info *info)
{
    int err, rc;

    if ((rc = ctl_store_open(ctl, false)) != CTL_EXIT_OK)
        return rc;
    err = store_info(ctl->store, info);
    if (err < 0) {
        ctl_errorf("cannot read the store: %s", error_str(err));
        return CTL_EXIT_FAIL;
    }
    return CTL_EXIT_OK;
}

/* Why a file of this type cannot be read as input, or NULL if it can. */
static const char *input_type_problem(mode_t mode)
{
    if (S_ISREG(mode) || S_ISFIFO(mode))
        return NULL;
    if (S_ISDIR(mode))
        return "it is a directory";
    if (S_ISCHR(mode))
        return "it is a character device";
    if (S_ISBLK(mode))
        return "it is a block device";
    if (S_ISSOCK(mode))
        return "it is a socket";
    return "it is not a regular file";
}

int ctl_open_input(const char *path, const char *what, struct stat *st)
{
    const char *why;
    int fd, flags, err;

    /* A device is refused before it is opened: opening some (a tape, a
     * modem line) has effects of its own. fstat below is what counts. */
    if (stat(path, st) == 0 && (why = input_type_problem(st->st_mode)) != NULL) {
        ctl_errorf("cannot read %s: %s; expected a regular file or a pipe", what, why);
        return ERROR_INVALID;
    }
    fd = open(path, O_RDONLY | O_CLOEXEC | O_NOCTTY | O_NONBLOCK);
    if (fd < 0) {
        err = -errno;
        ctl_errorf("cannot open %s: %s", what, error_str(err));
        return err;
    }
    if (fstat(fd, st) < 0) {
        err = -errno;
        ctl_errorf("cannot open %s: %s", what, error_str(err));
        goto close_fd;
    }
    if ((why = input_type_problem(st->st_mode)) != NULL) {
        ctl_errorf("cannot read %s: %s; expected a regular file or a pipe", what, why);
        err = ERROR_INVALID;
        goto close_fd;
    }
    flags = fcntl(fd, F_GETFL);
    if (flags < 0 || fcntl(fd, F_SETFL, flags & ~O_NONBLOCK) < 0) {
        err = -errno;
        ctl_errorf("cannot read %s: %s", what, error_str(err));
        goto close_fd;
    }
    return fd;

close_fd:
    close(fd);
    return err;
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

/* The code point of the valid n-byte UTF-8 sequence at s. */
static unsigned long utf8_decode(const unsigned char *s, size_t n)
{
    static const unsigned char lead_mask[] = {0, 0x7f, 0x1f, 0x0f, 0x07};
    unsigned long cp = s[0] & lead_mask[n];

    for (size_t i = 1; i < n; i++)
        cp = (cp << 6) | (s[i] & 0x3f);
    return cp;
}

/* Characters that are valid UTF-8 but must not reach a terminal raw: C1
 * controls, which some terminals obey like escape sequences, and the
 * invisible bidirectional controls and line separators, which can make a
 * line read differently from what it holds (CVE-2021-42574). */
static bool utf8_unsafe(unsigned long cp)
{
    return (cp >= 0x80 && cp <= 0x9f) || cp == 0x61c || cp == 0x200e || cp == 0x200f ||
           (cp >= 0x2028 && cp <= 0x202e) || (cp >= 0x2066 && cp <= 0x2069);
}

/* Writes the printable form of the next character of s into out (NUL
 * terminated, at most 7 bytes) and returns how many input bytes it used. */
static size_t escape_next(const char *s, char out[8])
{
    const unsigned char *u = (const unsigned char *)s;
    size_t n = utf8_len(u);

    if (n == 0 || u[0] < 0x20 || u[0] == 0x7f) {
        snprintf(out, 8, "\\x%02x", u[0]);
        return 1;
    }
    if (n > 1) {
        unsigned long cp = utf8_decode(u, n);
        if (utf8_unsafe(cp)) {
            snprintf(out, 8, "\\u%04lx", cp);
            return n;
        }
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
        if (n == 0 || *u < 0x20 || *u == 0x7f || (n > 1 && utf8_unsafe(utf8_decode(u, n))))
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
        ctl_errorf("--comment: contains control or invisible formatting characters, or is not "
                   "UTF-8: '%s'",
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

/*
 * Whether the option getopt_long() just refused was a long one. glibc sets
 * optopt to 0 for an unknown long option, and to the option's value for a
 * known one given a value it does not take or missing the one it needs;
 * for a short option optopt is the letter. A value above a char, or the
 * word before optind naming an option of that value, means long. The word
 * alone cannot tell: inside a cluster (`-Zh`) optind has not moved and the
 * word before it is the previous argument.
 */
static bool refused_long(int argc, char **argv, const struct option *longopts)
{
    const char *text;
    size_t n;

    if (optopt == 0 || optopt > UCHAR_MAX)
        return true;
    if (optind < 1 || optind > argc)
        return false;
    text = argv[optind - 1];
    if (strncmp(text, "--", 2) != 0)
        return false;
    n = strcspn(text + 2, "=");
    for (const struct option *o = longopts; o->name != NULL; o++) {
        if (o->val == optopt && n > 0 && strncmp(o->name, text + 2, n) == 0)
            return true;
    }
    return false;
}

/* The option `text` ("--name" or "--name=value") names in full with value
 * `val`, or NULL. */
static const struct option *full_name(const char *text, int val, const struct option *longopts)
{
    size_t n;

    if (strncmp(text, "--", 2) != 0)
        return NULL;
    n = strcspn(text + 2, "=");
    for (const struct option *o = longopts; o->name != NULL; o++) {
        if (o->val == val && strlen(o->name) == n && strncmp(o->name, text + 2, n) == 0)
            return o;
    }
    return NULL;
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
        if (!refused_long(argc, argv, longopts)) {
            /* glibc stores the letter as a (signed) char. */
            unsigned char letter = (unsigned char)optopt;
            char shown[8];
            if (letter > ' ' && letter < 0x7f)
                snprintf(shown, sizeof(shown), "-%c", letter);
            else
                snprintf(shown, sizeof(shown), "-\\x%02x", letter);
            if (c == ':')
                ctl_errorf("option '%s' needs a value", shown);
            else if (letter >= '0' && letter <= '9')
                ctl_errorf("unknown option '%s' (numbers here are positive: 1, 2, ...)", shown);
            else
                ctl_errorf("unknown option '%s'", shown);
            return '?';
        }
        const char *text = optind > 0 && optind <= argc ? argv[optind - 1] : "";
        if (optopt != 0 && full_name(text, optopt, longopts) == NULL) {
            /* A known option, abbreviated: refused as below, and its value
             * is not the problem. */
            for (const struct option *o = longopts; o->name != NULL; o++) {
                if (o->val == optopt) {
                    ctl_errorf("unknown option '%s' (options are not abbreviated; did you mean "
                               "'--%s'?)",
                               option_word(text, word, sizeof(word)), o->name);
                    return '?';
                }
            }
        }
        if (c == '?' && optopt != 0 && strchr(text, '=') != NULL)
            ctl_errorf("option '%s' takes no value", option_word(text, word, sizeof(word)));
        else if (c == '?')
            ctl_errorf("unknown option '%s'", option_word(text, word, sizeof(word)));
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

const char *ctl_socket_path(const struct ctl *ctl)
{
    const char *env;

    if (ctl->socket != NULL)
        return ctl->socket;
    env = getenv("SMTPSYNC_SOCKET");
    if (env != NULL && env[0] != '\0')
        return env;
    return CTL_SOCKET_DEFAULT;
}
