#include "ctl_password.h"

#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <termios.h>
#include <unistd.h>

#include <openssl/crypto.h>

#include "ctl.h"
#include "error.h"
#include "settings.h"

/* Two lines of at most SETTINGS_PASSWORD_MAX bytes, their newlines, and
 * one byte more to tell "too long" from "just fits". */
#define PW_BUF_LEN (2 * (SETTINGS_PASSWORD_MAX + 1) + 1)

void ctl_password_wipe(struct ctl_password *pw)
{
    if (pw->password != NULL) {
        OPENSSL_cleanse(pw->password, strlen(pw->password));
        free(pw->password);
    }
    if (pw->confirm != NULL) {
        OPENSSL_cleanse(pw->confirm, strlen(pw->confirm));
        free(pw->confirm);
    }
    pw->password = NULL;
    pw->confirm = NULL;
}

/* Reads until EOF or until buf is full; *n is what was read. */
static int read_all(int fd, char *buf, size_t cap, size_t *n)
{
    *n = 0;
    while (*n < cap) {
        ssize_t r = read(fd, buf + *n, cap - *n);
        if (r < 0 && errno == EINTR)
            continue;
        if (r < 0)
            return -errno;
        if (r == 0)
            break;
        *n += (size_t)r;
    }
    return 0;
}

static char *dup_line(const char *start, size_t len)
{
    char *s = malloc(len + 1);

    if (s == NULL)
        return NULL;
    memcpy(s, start, len);
    s[len] = '\0';
    return s;
}

/* Splits "password[\n[confirm[\n]]]" into out. `what` names the source in
 * messages. */
static int parse_lines(const char *buf, size_t n, const char *what, struct ctl_password *out)
{
    const char *nl, *second, *end = buf + n;
    size_t len1, len2;

    if (memchr(buf, '\0', n) != NULL) {
        ctl_errorf("%s: the password contains a NUL byte", what);
        return ERROR_INVALID;
    }
    nl = memchr(buf, '\n', n);
    len1 = nl != NULL ? (size_t)(nl - buf) : n;
    if (len1 == 0) {
        ctl_errorf("%s: the password (first line) is empty", what);
        return ERROR_INVALID;
    }
    if (len1 > SETTINGS_PASSWORD_MAX) {
        ctl_errorf("%s: the password is longer than %d bytes", what, SETTINGS_PASSWORD_MAX);
        return ERROR_TOO_BIG;
    }
    out->password = dup_line(buf, len1);
    if (out->password == NULL)
        goto nomem;
    if (nl == NULL || nl + 1 == end)
        return 0;

    second = nl + 1;
    nl = memchr(second, '\n', (size_t)(end - second));
    len2 = nl != NULL ? (size_t)(nl - second) : (size_t)(end - second);
    if (nl != NULL && nl + 1 != end) {
        ctl_errorf("%s: more than two lines (expected the password, then optionally its "
                   "confirmation)",
                   what);
        goto invalid;
    }
    if (len2 > SETTINGS_PASSWORD_MAX) {
        ctl_errorf("%s: the confirmation is longer than %d bytes", what, SETTINGS_PASSWORD_MAX);
        goto invalid;
    }
    out->confirm = dup_line(second, len2);
    if (out->confirm == NULL)
        goto nomem;
    return 0;

nomem:
    ctl_password_wipe(out);
    ctl_errorf("%s: %s", what, strerror(ENOMEM));
    return -ENOMEM;
invalid:
    ctl_password_wipe(out);
    return ERROR_INVALID;
}

/* `fifo`: the source is a pipe, which reads as empty when nobody writes. */
static int read_fd(int fd, const char *what, bool fifo, struct ctl_password *out)
{
    char *buf = malloc(PW_BUF_LEN);
    size_t n = 0;
    int err;

    if (buf == NULL) {
        ctl_errorf("%s: %s", what, strerror(ENOMEM));
        return -ENOMEM;
    }
    err = read_all(fd, buf, PW_BUF_LEN, &n);
    if (err < 0) {
        ctl_errorf("cannot read %s: %s", what, error_str(err));
        goto wipe;
    }
    if (n == PW_BUF_LEN) {
        ctl_errorf("%s: too large for a password and its confirmation", what);
        err = ERROR_TOO_BIG;
        goto wipe;
    }
    if (n == 0) {
        ctl_errorf("%s: empty; expected the password on the first line%s", what,
                   fifo ? " (a pipe nothing wrote to?)" : "");
        err = ERROR_INVALID;
        goto wipe;
    }
    err = parse_lines(buf, n, what, out);
wipe:
    OPENSSL_cleanse(buf, PW_BUF_LEN);
    free(buf);
    return err;
}

int ctl_password_from_file(const char *path, struct ctl_password *out)
{
    /* Not the path: `--password-file hunter2` must not print hunter2. */
    const char *what = "password file (given with --password-file)";
    struct stat st;
    int fd, err;

    fd = ctl_open_input(path, what, &st);
    if (fd < 0)
        return fd;
    if ((st.st_mode & 077) != 0) {
        ctl_errorf("%s is accessible by group or others (mode %04o); run chmod 600 on it", what,
                   (unsigned)(st.st_mode & 07777));
        err = -EPERM;
        goto close_fd;
    }
    err = read_fd(fd, what, S_ISFIFO(st.st_mode), out);
close_fd:
    close(fd);
    return err;
}

int ctl_password_from_stdin(struct ctl_password *out)
{
    struct stat st;
    bool fifo;
    int err;

    /* Read as a stream, a password typed on the terminal would show. */
    if (isatty(STDIN_FILENO)) {
        err = ctl_password_prompt(out);
        if (err == -ENXIO)
            ctl_errorf("--password-stdin: standard input is a terminal, but /dev/tty cannot be "
                       "opened to ask with echo off; pipe the password in instead");
        return err;
    }
    fifo = fstat(STDIN_FILENO, &st) == 0 && S_ISFIFO(st.st_mode);
    return read_fd(STDIN_FILENO, "standard input (--password-stdin)", fifo, out);
}

/* One line from the terminal, without its newline, into a new string. */
static int prompt_line(int tty, const char *prompt, char **out)
{
    char buf[SETTINGS_PASSWORD_MAX + 1];
    size_t n = 0;
    int err = 0;

    *out = NULL;
    if (write(tty, prompt, strlen(prompt)) < 0)
        return -errno;
    for (;;) {
        char c;
        ssize_t r = read(tty, &c, 1);
        if (r < 0 && errno == EINTR)
            continue;
        if (r < 0) {
            err = -errno;
            break;
        }
        if (r == 0 || c == '\n')
            break;
        if (n >= SETTINGS_PASSWORD_MAX) {
            err = ERROR_TOO_BIG;
            continue; /* drain the rest of the line */
        }
        buf[n++] = c;
    }
    (void)!write(tty, "\n", 1);
    if (err == 0) {
        buf[n] = '\0';
        *out = dup_line(buf, n);
        if (*out == NULL)
            err = -ENOMEM;
    }
    OPENSSL_cleanse(buf, sizeof(buf));
    return err;
}

int ctl_password_prompt(struct ctl_password *out)
{
    struct termios saved, quiet;
    sigset_t block, old_mask;
    int tty, err;

    tty = open("/dev/tty", O_RDWR | O_CLOEXEC | O_NOCTTY);
    if (tty < 0)
        return -ENXIO;
    if (tcgetattr(tty, &saved) < 0) {
        err = -ENXIO;
        goto close_tty;
    }
    quiet = saved;
    quiet.c_lflag &= ~(tcflag_t)(ECHO | ECHOE | ECHOK | ECHONL);
    quiet.c_lflag |= ICANON;
    /* Signals that would end or stop the process wait until echo is back
     * on: a Ctrl-C at the prompt takes effect after Enter, and never leaves
     * the terminal silent. */
    sigemptyset(&block);
    sigaddset(&block, SIGINT);
    sigaddset(&block, SIGQUIT);
    sigaddset(&block, SIGTSTP);
    sigaddset(&block, SIGTERM);
    sigaddset(&block, SIGHUP);
    sigprocmask(SIG_BLOCK, &block, &old_mask);
    if (tcsetattr(tty, TCSAFLUSH, &quiet) < 0) {
        err = -errno;
        sigprocmask(SIG_SETMASK, &old_mask, NULL);
        ctl_errorf("cannot turn off echo on the terminal: %s", error_str(err));
        goto close_tty;
    }
    err = prompt_line(tty, "Password: ", &out->password);
    if (err == 0 && out->password[0] != '\0')
        err = prompt_line(tty, "Confirm password: ", &out->confirm);
    tcsetattr(tty, TCSAFLUSH, &saved);
    if (err == 0 && out->password[0] == '\0') {
        ctl_errorf("the password is empty");
        err = ERROR_INVALID;
    } else if (err == ERROR_TOO_BIG) {
        ctl_errorf("the password is longer than %d bytes", SETTINGS_PASSWORD_MAX);
    } else if (err < 0) {
        ctl_errorf("cannot read the password from the terminal: %s", error_str(err));
    }
    if (err < 0)
        ctl_password_wipe(out);
    /* A signal that came meanwhile is delivered now, with the terminal
     * restored. If it ends the process, no core is written (main.c). */
    sigprocmask(SIG_SETMASK, &old_mask, NULL);
close_tty:
    close(tty);
    return err;
}
