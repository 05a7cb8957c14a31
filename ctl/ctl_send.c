/*
 * ctl_send: the submission verbs, send and sendmail.
 *
 * Both hand a message to the local daemon through its submission socket
 * (submit.h) and print the outbox id it was committed under. Everything
 * that can be checked here is checked before the daemon is contacted, so a
 * mistake on the command line or in the input never reaches the outbox;
 * the daemon checks again (smtp_message_normalize), as it must for any
 * client.
 */
#include <errno.h>
#include <inttypes.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "ctl.h"
#include "ctl_output.h"
#include "error.h"
#include "smtp_message.h"
#include "submit.h"
#include "syntax.h"

#define EXPIRES_MAX (366 * 24 * 3600) /* seconds: a year is longer than any retry */

const char ctl_send_usage[] =
    "usage: smtpsyncctl [global options] send --to ADDRESS [--to ADDRESS]... [--cc ADDRESS]...\n"
    "                   --subject TEXT [--priority tokencode|report]\n"
    "                   [--body-file F] [--expires SECONDS] [--json]\n"
    "\n"
    "Composes a plain-text mail and hands it to the local smtpsync daemon, which\n"
    "delivers it with this node's settings (their from_address is the From).\n"
    "The body is read from F, or from standard input; it must be UTF-8 text of\n"
    "at most 10 MiB. Prints \"queued ID\" once the daemon has stored the mail.\n"
    "\n"
    "  --to ADDRESS       a recipient (local@domain); may be repeated (at most 100\n"
    "                     recipients in all)\n"
    "  --cc ADDRESS       a recipient shown as Cc; may be repeated\n"
    "  --subject TEXT     the subject (UTF-8; may be empty, may not hold line breaks)\n"
    "  --priority P       tokencode (one-time codes: delivered first, expire soon)\n"
    "                     or report (the default)\n"
    "  --body-file F      read the body from F (a regular file or a pipe)\n"
    "  --expires SECONDS  give up delivering after SECONDS (default: the daemon's\n"
    "                     for the priority)\n"
    "  --json             print {\"id\": N}\n"
    "  --help             print this help\n"
    "\n"
    "The daemon is reached at --socket PATH (a global option), SMTPSYNC_SOCKET, or\n"
    "" CTL_SOCKET_DEFAULT ".\n";

const char ctl_sendmail_usage[] =
    "usage: smtpsyncctl [global options] sendmail [-t] [-i] [--priority tokencode|report]\n"
    "                   [--expires SECONDS] [--json] [sendmail options] [ADDRESS...]\n"
    "\n"
    "A sendmail-compatible entry for cron and scripts: reads an RFC 5322 message\n"
    "(header, blank line, body; at most 10 MiB) on standard input and hands it to\n"
    "the local smtpsync daemon. The recipients are the ADDRESS arguments and, with\n"
    "-t, every To, Cc and Bcc address of the header. Bcc and From headers are\n"
    "removed: the From is this node's from_address; Date and Message-ID are added\n"
    "when missing. Prints nothing on success (sendmail does not), or the id with\n"
    "--json.\n"
    "\n"
    "  -t                 also send to the To, Cc and Bcc addresses of the header\n"
    "  -i, -oi            a line holding only \".\" is text, not the end of input\n"
    "                     (without it, such a line ends the message, as in sendmail)\n"
    "  --priority P       tokencode or report (the default)\n"
    "  --expires SECONDS  give up delivering after SECONDS\n"
    "  --json             print {\"id\": N}\n"
    "  --help             print this help\n"
    "\n"
    "Accepted and ignored, so that existing callers work unchanged:\n"
    "  -f ADDR, -r ADDR   envelope sender: the instance's from_address is always used\n"
    "  -F NAME            full name of the sender\n"
    "  -B TYPE            body type (7BIT, 8BITMIME): the daemon decides\n"
    "  -o OPTION          sendmail options such as -oem, -odi, -odb (-oi as -i)\n"
    "  -N DSN, -R RET, -V ENVID  delivery status notification requests\n"
    "  -v                 verbose\n"
    "  -bm                deliver a message (the only mode there is)\n"
    "Addresses must be complete (local@domain): a bare user name such as \"root\" is\n"
    "refused, so set MAILTO to a full address in crontabs.\n";

enum {
    OPT_HELP = 'h',
    OPT_TO = 256,
    OPT_CC,
    OPT_SUBJECT,
    OPT_PRIORITY,
    OPT_BODY_FILE,
    OPT_EXPIRES,
    OPT_JSON,
};

/* What both verbs hand to the daemon. */
struct submission {
    Smtpsync__Priority priority;
    int64_t expires_ms; /* 0: the daemon's default */
    char **rcpts;       /* borrowed strings; the array is owned */
    size_t nrcpts;
    const char *message;
    size_t len;
};

static int parse_priority(const char *usage, const char *text, Smtpsync__Priority *out)
{
    char q[96];

    if (strcmp(text, "tokencode") == 0) {
        *out = SMTPSYNC__PRIORITY__PRIORITY_TOKENCODE;
        return CTL_EXIT_OK;
    }
    if (strcmp(text, "report") == 0) {
        *out = SMTPSYNC__PRIORITY__PRIORITY_REPORT;
        return CTL_EXIT_OK;
    }
    return ctl_usage_error(usage, "--priority: unknown priority '%s' (tokencode or report)",
                           ctl_quote(text, q, sizeof(q)));
}

static int parse_expires(const char *usage, const char *text, int64_t *out)
{
    uint64_t seconds;
    char q[96];

    if (ctl_parse_u64(text, 1, EXPIRES_MAX, &seconds) < 0)
        return ctl_usage_error(usage, "--expires: '%s' is not a number of seconds (1 to %d)",
                               ctl_quote(text, q, sizeof(q)), EXPIRES_MAX);
    *out = (int64_t)time(NULL) * 1000 + (int64_t)seconds * 1000;
    return CTL_EXIT_OK;
}

/* Checks an address given on the command line; prints the problem. */
static bool address_ok(const char *verb, const char *what, const char *addr)
{
    char why[160], q[300];

    if (!syntax_has_control(addr) && syntax_mailbox_valid(addr, why, sizeof(why)))
        return true;
    if (syntax_has_control(addr))
        snprintf(why, sizeof(why), "it holds a control character (a line break?)");
    else if (strchr(addr, '@') == NULL)
        snprintf(why, sizeof(why), "it has no \"@\": give a complete address, local@domain");
    ctl_errorf("%s: %s '%s' is not a valid address: %s", verb, what, ctl_quote(addr, q, sizeof(q)),
               why);
    return false;
}

/* Adds addr to s->rcpts (room for `cap`) unless it is there already. */
static void rcpt_add(struct submission *s, char *addr)
{
    for (size_t i = 0; i < s->nrcpts; i++)
        if (smtp_message_address_equal(s->rcpts[i], addr))
            return;
    s->rcpts[s->nrcpts++] = addr;
}

/*
 * Reads everything from fd, at most SMTP_MESSAGE_MAX octets; `what` names
 * the input in messages. Prints the problem; returns the exit status.
 */
static int read_all(const char *verb, int fd, const char *what, char **out, size_t *outlen)
{
    size_t cap = 64 * 1024, len = 0;
    char *buf = malloc(cap);

    if (buf == NULL)
        goto nomem;
    /* One octet past the limit is enough to know it is too much. */
    while (len <= SMTP_MESSAGE_MAX) {
        ssize_t n;

        if (len == cap) {
            char *grown;

            cap = cap * 2 < (size_t)SMTP_MESSAGE_MAX + 1 ? cap * 2 : (size_t)SMTP_MESSAGE_MAX + 1;
            if ((grown = realloc(buf, cap)) == NULL)
                goto nomem;
            buf = grown;
        }
        n = read(fd, buf + len, cap - len);
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0) {
            ctl_errorf("%s: cannot read %s: %s", verb, what, strerror(errno));
            free(buf);
            return CTL_EXIT_FAIL;
        }
        if (n == 0) {
            *out = buf;
            *outlen = len;
            return CTL_EXIT_OK;
        }
        len += (size_t)n;
    }
    ctl_errorf("%s: %s is larger than %d octets (10 MiB); nothing was sent", verb, what,
               SMTP_MESSAGE_MAX);
    free(buf);
    return CTL_EXIT_FAIL;

nomem:
    free(buf);
    ctl_errorf("%s: %s", verb, strerror(ENOMEM));
    return CTL_EXIT_FAIL;
}

/*
 * Reads a message from standard input as sendmail does without -i: a line
 * holding only "." (LF or CRLF ended) ends it, and is not part of it; what
 * follows is left unread. Same limits and messages as read_all().
 */
static int read_until_dot(const char *verb, char **out, size_t *outlen)
{
    size_t cap = 64 * 1024, len = 0, line = 0; /* line: where the current line starts */
    char *buf = malloc(cap);
    int c;

    if (buf == NULL)
        goto nomem;
    while ((c = getc(stdin)) != EOF) {
        if (len == SMTP_MESSAGE_MAX) {
            ctl_errorf("%s: the message is larger than %d octets (10 MiB); nothing was sent", verb,
                       SMTP_MESSAGE_MAX);
            free(buf);
            return CTL_EXIT_FAIL;
        }
        if (len == cap) {
            char *grown = realloc(buf, cap *= 2);

            if (grown == NULL)
                goto nomem;
            buf = grown;
        }
        buf[len++] = (char)c;
        if (c != '\n')
            continue;
        if ((len - line == 2 && buf[line] == '.') ||
            (len - line == 3 && buf[line] == '.' && buf[line + 1] == '\r')) {
            len = line;
            break;
        }
        line = len;
    }
    if (ferror(stdin)) {
        ctl_errorf("%s: cannot read standard input: %s", verb, strerror(errno));
        free(buf);
        return CTL_EXIT_FAIL;
    }
    *out = buf;
    *outlen = len;
    return CTL_EXIT_OK;

nomem:
    free(buf);
    ctl_errorf("%s: %s", verb, strerror(ENOMEM));
    return CTL_EXIT_FAIL;
}

/* The right side of Message-IDs made here: this host's name when it is
 * usable as one, else "localhost" (the daemon's own name does not matter:
 * only uniqueness, which the random left side gives). */
static void local_domain(char *buf, size_t len)
{
    char why[160];

    if (gethostname(buf, len) != 0 || memchr(buf, '\0', len) == NULL ||
        syntax_host_classify(buf, why, sizeof(why)) != SYNTAX_HOST_DNS)
        snprintf(buf, len, "localhost");
}

/* Hands the submission to the daemon and prints the outcome; returns the
 * exit status. */
static int submit(const struct ctl *ctl, const char *verb, const struct submission *s, bool quiet)
{
    Smtpsync__SubmitRequest req = SMTPSYNC__SUBMIT_REQUEST__INIT;
    Smtpsync__Frame frame = SMTPSYNC__FRAME__INIT, *reply = NULL;
    const char *path = ctl_socket_path(ctl);
    char why[512], q[600];
    int err, rc = CTL_EXIT_FAIL;

    req.priority = s->priority;
    req.n_rcpt_to = s->nrcpts;
    req.rcpt_to = s->rcpts;
    /* protobuf-c borrows the octets; it never writes through this pointer. */
    req.message.data = (uint8_t *)(uintptr_t)s->message;
    req.message.len = s->len;
    req.expires_ms = s->expires_ms;
    frame.id = 1;
    frame.body_case = SMTPSYNC__FRAME__BODY_SUBMIT;
    frame.submit = &req;

    err = submit_call(path, &frame, 0, &reply, why, sizeof(why));
    if (err == -ENOENT || err == -ECONNREFUSED || err == -EACCES || err == -EPERM ||
        err == -ENAMETOOLONG || err == -ENOTSOCK) {
        ctl_errorf("%s: cannot reach the smtpsync daemon: %s; nothing was sent", verb,
                   why[0] != '\0' ? why : error_str(err));
        return CTL_EXIT_FAIL;
    }
    if (err == -ETIMEDOUT || err == -ECONNRESET || err == ERROR_DECODE) {
        /* The request went out: the daemon may have stored it. */
        ctl_errorf("%s: %s; the mail may or may not be queued (see `smtpsyncctl queue`)", verb,
                   why[0] != '\0' ? why : error_str(err));
        return CTL_EXIT_FAIL;
    }
    if (err != 0) {
        ctl_errorf("%s: %s; nothing was sent", verb, why[0] != '\0' ? why : error_str(err));
        return CTL_EXIT_FAIL;
    }
    if (reply->body_case != SMTPSYNC__FRAME__BODY_SUBMIT_REPLY) {
        ctl_errorf("%s: the daemon answered with something other than a submission reply", verb);
    } else if (reply->submit_reply->id == 0) {
        const char *e = reply->submit_reply->error;

        ctl_errorf("%s: the daemon refused the mail: %s", verb,
                   ctl_quote(e != NULL && e[0] != '\0' ? e : "no reason given", q, sizeof(q)));
    } else if (ctl->json) {
        cJSON *doc = cJSON_CreateObject();

        if (doc != NULL &&
            ctl_output_json_add(doc, "id", cJSON_CreateNumber((double)reply->submit_reply->id)))
            rc = ctl_output_json_print(doc) < 0 ? CTL_EXIT_FAIL : CTL_EXIT_OK;
        else
            cJSON_Delete(doc);
        if (rc != CTL_EXIT_OK)
            ctl_errorf("%s: queued as %" PRIu64 ", but the reply could not be printed", verb,
                       reply->submit_reply->id);
    } else {
        if (!quiet)
            printf("queued %" PRIu64 "\n", reply->submit_reply->id);
        rc = CTL_EXIT_OK;
    }
    smtpsync__frame__free_unpacked(reply, NULL);
    return rc;
}

/* --- send --------------------------------------------------------------------- */

/* The body: --body-file F, or standard input. */
static int read_body(const char *path, char **body, size_t *len)
{
    struct stat st;
    char q[300], what[340];
    int fd, rc;

    if (path == NULL) {
        if (isatty(STDIN_FILENO))
            fprintf(stderr, "%s: reading the body from the terminal; end it with Ctrl-D\n",
                    CTL_PROG);
        return read_all("send", STDIN_FILENO, "the body on standard input", body, len);
    }
    snprintf(what, sizeof(what), "the body file '%s'", ctl_quote(path, q, sizeof(q)));
    fd = ctl_open_input(path, what, &st);
    if (fd < 0)
        return CTL_EXIT_FAIL;
    rc = read_all("send", fd, what, body, len);
    close(fd);
    return rc;
}

int ctl_send_main(struct ctl *ctl, int argc, char **argv)
{
    static const struct option opts[] = {
        {"to", required_argument, NULL, OPT_TO},
        {"cc", required_argument, NULL, OPT_CC},
        {"subject", required_argument, NULL, OPT_SUBJECT},
        {"priority", required_argument, NULL, OPT_PRIORITY},
        {"body-file", required_argument, NULL, OPT_BODY_FILE},
        {"expires", required_argument, NULL, OPT_EXPIRES},
        {"json", no_argument, NULL, OPT_JSON},
        {"help", no_argument, NULL, OPT_HELP},
        {NULL, 0, NULL, 0},
    };
    struct submission s = {.priority = SMTPSYNC__PRIORITY__PRIORITY_REPORT};
    struct smtp_message_compose mc = {0};
    const char **to = NULL, **cc = NULL, *subject = NULL, *body_file = NULL;
    char *body = NULL, *msg = NULL, why[512], q[300], domain[256];
    size_t nto = 0, ncc = 0, body_len = 0, msg_len = 0;
    bool ok = true;
    int c, err, rc = CTL_EXIT_USAGE;

    to = calloc((size_t)argc, sizeof(*to));
    cc = calloc((size_t)argc, sizeof(*cc));
    s.rcpts = calloc((size_t)argc, sizeof(*s.rcpts));
    if (to == NULL || cc == NULL || s.rcpts == NULL) {
        ctl_errorf("send: %s", strerror(ENOMEM));
        rc = CTL_EXIT_FAIL;
        goto out;
    }
    optind = 0;
    while ((c = ctl_getopt(argc, argv, ":h", opts)) != -1) {
        switch (c) {
        case OPT_HELP:
            fputs(ctl_send_usage, stdout);
            rc = CTL_EXIT_OK;
            goto out;
        case OPT_TO:
            to[nto++] = optarg;
            break;
        case OPT_CC:
            cc[ncc++] = optarg;
            break;
        case OPT_SUBJECT:
            subject = optarg;
            break;
        case OPT_PRIORITY:
            if (parse_priority(ctl_send_usage, optarg, &s.priority) != CTL_EXIT_OK)
                goto out;
            break;
        case OPT_BODY_FILE:
            body_file = optarg;
            break;
        case OPT_EXPIRES:
            if (parse_expires(ctl_send_usage, optarg, &s.expires_ms) != CTL_EXIT_OK)
                goto out;
            break;
        case OPT_JSON:
            ctl->json = true;
            break;
        default:
            rc = ctl_usage(ctl_send_usage);
            goto out;
        }
    }
    if (optind < argc) {
        rc = ctl_usage_error(ctl_send_usage,
                             "send: unexpected argument '%s' (recipients go after --to)",
                             ctl_quote(argv[optind], q, sizeof(q)));
        goto out;
    }
    if (nto == 0) {
        rc = ctl_usage_error(ctl_send_usage, "send: --to is required");
        goto out;
    }
    if (subject == NULL) {
        rc = ctl_usage_error(ctl_send_usage, "send: --subject is required (it may be empty)");
        goto out;
    }

    /* Every problem of the values at once, before the body is read. */
    rc = CTL_EXIT_FAIL;
    for (size_t i = 0; i < nto; i++)
        ok = address_ok("send", "--to", to[i]) && ok;
    for (size_t i = 0; i < ncc; i++)
        ok = address_ok("send", "--cc", cc[i]) && ok;
    if (strpbrk(subject, "\r\n") != NULL) {
        ctl_errorf("send: --subject holds a line break; a subject is one line");
        ok = false;
    } else {
        for (const char *p = subject; *p != '\0'; p++) {
            if (((unsigned char)*p < 0x20 && *p != '\t') || *p == 0x7f) {
                ctl_errorf("send: --subject holds a control character");
                ok = false;
                break;
            }
        }
    }
    for (size_t i = 0; i < nto; i++)
        rcpt_add(&s, (char *)(uintptr_t)to[i]);
    for (size_t i = 0; i < ncc; i++)
        rcpt_add(&s, (char *)(uintptr_t)cc[i]);
    if (s.nrcpts > SMTP_MESSAGE_RCPT_MAX) {
        ctl_errorf("send: %zu recipients; at most %d", s.nrcpts, SMTP_MESSAGE_RCPT_MAX);
        ok = false;
    }
    if (!ok)
        goto out;

    if ((rc = read_body(body_file, &body, &body_len)) != CTL_EXIT_OK)
        goto out;
    local_domain(domain, sizeof(domain));
    mc.to = to;
    mc.nto = nto;
    mc.cc = cc;
    mc.ncc = ncc;
    mc.subject = subject;
    mc.body = body;
    mc.body_len = body_len;
    mc.date = time(NULL);
    mc.msgid_domain = domain;
    err = smtp_message_compose(&mc, &msg, &msg_len, why, sizeof(why));
    if (err != 0) {
        ctl_errorf("send: %s; nothing was sent", why[0] != '\0' ? why : error_str(err));
        rc = CTL_EXIT_FAIL;
        goto out;
    }
    s.message = msg;
    s.len = msg_len;
    rc = submit(ctl, "send", &s, false);

out:
    free(msg);
    free(body);
    free(s.rcpts);
    free(cc);
    free(to);
    return rc;
}

/* --- sendmail ----------------------------------------------------------------- */

int ctl_sendmail_main(struct ctl *ctl, int argc, char **argv)
{
    static const struct option opts[] = {
        {"priority", required_argument, NULL, OPT_PRIORITY},
        {"expires", required_argument, NULL, OPT_EXPIRES},
        {"json", no_argument, NULL, OPT_JSON},
        {"help", no_argument, NULL, OPT_HELP},
        {NULL, 0, NULL, 0},
    };
    struct submission s = {.priority = SMTPSYNC__PRIORITY__PRIORITY_REPORT};
    struct smtp_message_info info = {0};
    bool extract = false, dots_end = true, parsed = false, ok = true;
    char *msg = NULL, *normalized = NULL, why[512], q[300];
    size_t msg_len = 0, normalized_len;
    int c, err, rc = CTL_EXIT_USAGE;

    optind = 0;
    while ((c = ctl_getopt(argc, argv, ":htif:r:F:B:o:N:R:V:vb:", opts)) != -1) {
        switch (c) {
        case OPT_HELP:
            fputs(ctl_sendmail_usage, stdout);
            return CTL_EXIT_OK;
        case 't':
            extract = true;
            break;
        case 'i':
            dots_end = false;
            break;
        case 'o':
            if (strcmp(optarg, "i") == 0)
                dots_end = false;
            break;
        case 'b':
            if (strcmp(optarg, "m") != 0)
                return ctl_usage_error(ctl_sendmail_usage,
                                       "sendmail: -b%s is not supported (only -bm, "
                                       "deliver a message)",
                                       ctl_quote(optarg, q, sizeof(q)));
            break;
        case 'f':
        case 'r':
            if (isatty(STDERR_FILENO))
                fprintf(stderr,
                        "%s: note: -%c is ignored; mail is sent from the instance's "
                        "from_address\n",
                        CTL_PROG, c);
            break;
        case 'F':
        case 'B':
        case 'N':
        case 'R':
        case 'V':
        case 'v':
            break;
        case OPT_PRIORITY:
            if (parse_priority(ctl_sendmail_usage, optarg, &s.priority) != CTL_EXIT_OK)
                return CTL_EXIT_USAGE;
            break;
        case OPT_EXPIRES:
            if (parse_expires(ctl_sendmail_usage, optarg, &s.expires_ms) != CTL_EXIT_OK)
                return CTL_EXIT_USAGE;
            break;
        case OPT_JSON:
            ctl->json = true;
            break;
        default:
            return ctl_usage(ctl_sendmail_usage);
        }
    }
    if (!extract && optind == argc)
        return ctl_usage_error(ctl_sendmail_usage,
                               "sendmail: no recipient: give addresses, or -t to read them "
                               "from the header");
    rc = CTL_EXIT_FAIL;
    for (int i = optind; i < argc; i++)
        ok = address_ok("sendmail", "recipient", argv[i]) && ok;
    if (!ok)
        return rc;

    if (dots_end)
        rc = read_until_dot("sendmail", &msg, &msg_len);
    else
        rc = read_all("sendmail", STDIN_FILENO, "the message", &msg, &msg_len);
    if (rc != CTL_EXIT_OK)
        return rc;
    rc = CTL_EXIT_FAIL;
    if (msg_len == 0) {
        ctl_errorf("sendmail: the message on standard input is empty; nothing was sent");
        goto out;
    }
    err = smtp_message_parse(msg, msg_len, &info, why, sizeof(why));
    if (err != 0) {
        ctl_errorf("sendmail: the message is not valid: %s; nothing was sent",
                   why[0] != '\0' ? why : error_str(err));
        goto out;
    }
    parsed = true;
    /* The daemon's own check, run here first so that the mistake shows
     * where the message was written. */
    err = smtp_message_normalize(msg, msg_len, time(NULL), "localhost", &normalized,
                                 &normalized_len, why, sizeof(why));
    if (err != 0) {
        ctl_errorf("sendmail: the message is not valid: %s; nothing was sent",
                   why[0] != '\0' ? why : error_str(err));
        goto out;
    }
    free(normalized);

    s.rcpts = calloc((size_t)argc + (extract ? info.nrcpts : 0) + 1, sizeof(*s.rcpts));
    if (s.rcpts == NULL) {
        ctl_errorf("sendmail: %s", strerror(ENOMEM));
        goto out;
    }
    for (int i = optind; i < argc; i++)
        rcpt_add(&s, argv[i]);
    for (size_t i = 0; extract && i < info.nrcpts; i++)
        rcpt_add(&s, info.rcpts[i]);
    if (s.nrcpts == 0) {
        ctl_errorf("sendmail: the header names no recipient (To, Cc or Bcc); nothing was sent");
        goto out;
    }
    if (s.nrcpts > SMTP_MESSAGE_RCPT_MAX) {
        ctl_errorf("sendmail: %zu recipients; at most %d; nothing was sent", s.nrcpts,
                   SMTP_MESSAGE_RCPT_MAX);
        goto out;
    }
    s.message = msg;
    s.len = msg_len;
    rc = submit(ctl, "sendmail", &s, true);

out:
    if (parsed)
        smtp_message_info_free(&info);
    free(s.rcpts);
    free(msg);
    return rc;
}
