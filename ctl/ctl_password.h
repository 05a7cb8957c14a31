/*
 * ctl_password: reading the SMTP logon password without it ever being a
 * command-line argument (it would be visible in /proc/<pid>/cmdline and in
 * shell history).
 *
 * Three sources: a file (--password-file), standard input
 * (--password-stdin), or a prompt on the controlling terminal with echo
 * off, asked twice (--password-prompt, and standard input when it is a
 * terminal: what is typed there must never show). A file or stream holds
 * the password on its first line and, optionally, the confirmation on its
 * second; one trailing newline per line is stripped. Without a second line
 * the password confirms itself: the confirmation guards against typing
 * mistakes, and a file is not typed at the prompt. Reads use read(2) into
 * buffers this module owns, so no stdio buffer keeps a copy; every buffer
 * is wiped with OPENSSL_cleanse.
 *
 * Errors are printed here (never with the password in them); the functions
 * return 0 or a negative error.
 */
#ifndef SMTPSYNC_CTL_PASSWORD_H
#define SMTPSYNC_CTL_PASSWORD_H

struct ctl_password {
    char *password; /* owned, NUL-terminated; NULL until read */
    char *confirm;  /* owned; NULL when the source gave no confirmation */
};

/* Reads from `path`, a regular file or a pipe (ctl_open_input). One that
 * group or others may read or write is refused, as ssh refuses such a key.
 * Messages never show the path: it may be a password given by mistake. */
int ctl_password_from_file(const char *path, struct ctl_password *out);

/* Reads from standard input; prompts (ctl_password_prompt) instead when it
 * is a terminal. */
int ctl_password_from_stdin(struct ctl_password *out);

/* Asks twice on /dev/tty ("Password: ", "Confirm password: ") with echo
 * off, restoring the terminal afterwards. -ENXIO, without a message, if
 * there is no terminal; other errors are printed. */
int ctl_password_prompt(struct ctl_password *out);

/* Wipes and frees both strings; safe on a zeroed struct. */
void ctl_password_wipe(struct ctl_password *pw);

#endif
