/*
 * ctl_settings: the `settings` verbs (set, import-cert, show, save, discard)
 * on a local store.
 */
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include <openssl/x509.h>

#include "ctl.h"
#include "ctl_output.h"
#include "ctl_password.h"
#include "error.h"
#include "pem.h"
#include "settings.h"
#include "store.h"

const char ctl_settings_usage[] =
    "usage: smtpsyncctl [global options] settings SUBCOMMAND ...\n"
    "\n"
    "subcommands:\n"
    "  set          change fields of an instance's draft\n"
    "  import-cert  attach the trusted certificate (PEM) to an instance's draft\n"
    "  show         print saved settings, an older revision, or the drafts\n"
    "  save         save drafts as a new revision\n"
    "  discard      throw drafts away\n"
    "  test         Test Connection: try an instance's settings step by step\n"
    "\n"
    "`smtpsyncctl settings SUBCOMMAND --help` describes each.\n";

const char ctl_settings_set_usage[] =
    "usage: smtpsyncctl [global options] settings set --instance ID [field options]\n"
    "\n"
    "Changes the draft of instance ID, which starts as a copy of its saved\n"
    "settings (or empty). Every problem is reported at once; nothing is written\n"
    "unless the only problems left are fields still to be filled in.\n"
    "\n"
    "  --instance ID                 instance (node) the settings are for (required)\n"
    "  --hostname H                  mail server: DNS name or IP address\n"
    "  --port P                      1-65535, or 'default' (25, 465 strict, 587 starttls)\n"
    "  --from ADDR                   From address of every mail of the instance\n"
    "  --logon | --no-logon          whether the server requires a logon\n"
    "  --user U                      logon user id\n"
    "  --password-file F             read the password from F: line 1 the password,\n"
    "                                line 2 (optional) its confirmation, which must\n"
    "                                match. F is a regular file of mode 0600 or a\n"
    "                                pipe, e.g. --password-file <(pass show smtp)\n"
    "  --password-stdin              read the same two lines from standard input; when\n"
    "                                that is a terminal, ask as --password-prompt does\n"
    "  --password-prompt             ask on the terminal, twice, with echo off\n"
    "                                (with --logon, no password yet and none of these\n"
    "                                options, a terminal on standard input is asked)\n"
    "                                A file or stream of one line confirms itself: the\n"
    "                                confirmation guards against typing mistakes, and\n"
    "                                a file is not typed. The password is never\n"
    "                                accepted as an argument.\n"
    "  --smtps | --no-smtps          whether TLS is used (needs import-cert and --tls-mode)\n"
    "  --tls-mode strict|starttls    implicit TLS, or upgrade with STARTTLS\n"
    "  --test-address ADDR           where a test mail goes\n"
    "  --starttls-fallback on|off    fall back to plaintext if STARTTLS fails (default off)\n"
    "  --allow-plaintext-auth on|off allow AUTH without TLS (default off)\n"
    "  --timeout-connect S, --timeout-greeting S, --timeout-command S,\n"
    "  --timeout-mail S, --timeout-rcpt S, --timeout-data-init S,\n"
    "  --timeout-data-block S, --timeout-data-term S\n"
    "                                per-phase SMTP timeouts in seconds (0: default)\n"
    "  --fallback-relays LIST        comma-separated host[:port] relays ('' for none)\n"
    "  --help                        print this help\n";

const char ctl_settings_import_usage[] =
    "usage: smtpsyncctl [global options] settings import-cert --instance ID FILE\n"
    "\n"
    "Attaches the trusted certificate(s) in FILE (PEM; '-' reads standard input)\n"
    "to the draft of instance ID, replacing any imported before. The server's\n"
    "certificate must chain to it; a leaf must name the hostname.\n"
    "\n"
    "  --instance ID   instance the certificate is for (required)\n"
    "  --help          print this help\n";

const char ctl_settings_show_usage[] =
    "usage: smtpsyncctl [global options] settings show [--instance ID]... [--revision N]\n"
    "                   [--draft] [--json]\n"
    "\n"
    "Prints the saved settings of every instance (or of those named), one\n"
    "'field: value' per line. The password always shows as ********.\n"
    "\n"
    "  --instance ID   only this instance (may be repeated)\n"
    "  --revision N    as of revision N instead of now\n"
    "  --draft         the drafts instead, with what is still needed before save\n"
    "  --json          a JSON object: {\"revision\", \"draft\", \"instances\": {ID: {...}}}\n"
    "  --help          print this help\n";

const char ctl_settings_save_usage[] =
    "usage: smtpsyncctl [global options] settings save [--instance ID]... [--comment TEXT]\n"
    "\n"
    "Saves drafts (all of them, or those named) as one new revision, after\n"
    "checking each fully. Prints \"saved revision N\".\n"
    "\n"
    "  --instance ID   save only this instance's draft (may be repeated)\n"
    "  --comment TEXT  why, recorded in the history\n"
    "  --json          print {\"revision\": N}\n"
    "  --help          print this help\n";

const char ctl_settings_discard_usage[] =
    "usage: smtpsyncctl [global options] settings discard [--instance ID]\n"
    "\n"
    "Throws away the draft of instance ID, or every draft.\n"
    "\n"
    "  --instance ID   only this instance's draft\n"
    "  --help          print this help\n";

/* A list of instance ids taken from the command line (pointers into argv). */
struct names {
    const char **ids;
    size_t n;
};

/* Checks an --instance value; prints the problem. */
static bool instance_ok(const char *id)
{
    char q[96];

    if (settings_instance_valid(id))
        return true;
    ctl_errorf("--instance: invalid instance id '%s' (1-%d of A-Z a-z 0-9 . _ -, starting with "
               "a letter or digit)",
               ctl_quote(id, q, sizeof(q)), SETTINGS_INSTANCE_MAX);
    return false;
}

static int names_add(struct names *names, const char *id, int argc)
{
    if (!instance_ok(id))
        return ERROR_INVALID;
    if (names->ids == NULL) {
        names->ids = calloc((size_t)argc, sizeof(*names->ids));
        if (names->ids == NULL) {
            ctl_errorf("%s", strerror(ENOMEM));
            return -ENOMEM;
        }
    }
    for (size_t i = 0; i < names->n; i++) {
        if (strcmp(names->ids[i], id) == 0)
            return 0;
    }
    names->ids[names->n++] = id;
    return 0;
}

/*
 * Loads what a change to `instance` starts from: its draft, else its saved
 * record, else an empty record. Read with STORE_UNSEAL so that a stored
 * password survives being put back as a draft.
 */
static int load_base(struct ctl *ctl, const char *instance, struct settings *s)
{
    char q[96];
    int err;

    err = store_draft_get(ctl->store, instance, STORE_UNSEAL, s);
    if (err == ERROR_NOT_FOUND)
        err = store_get(ctl->store, instance, 0, STORE_UNSEAL, s);
    if (err == ERROR_NOT_FOUND) {
        settings_clear(s);
        settings_init(s);
        snprintf(s->instance, sizeof(s->instance), "%s", instance);
        return 0;
    }
    if (err < 0)
        ctl_errorf("cannot read the settings of instance %s: %s%s",
                   ctl_quote(instance, q, sizeof(q)), error_str(err),
                   err == ERROR_TAMPERED ? " (is this the node key the store was written with? "
                                           "see --key-file)"
                                         : "");
    return err;
}

/*
 * The end of set and import-cert: validate, and store the draft unless a
 * problem other than a missing value remains. Prints "<done> <instance>";
 * the caller then prints what is still needed (ctl_output_problems). On
 * failure it prints every problem, the missing values too. Returns the
 * exit status.
 */
static int check_and_put(struct ctl *ctl, struct settings *s, const char *confirm,
                         struct settings_problems *problems, const char *done)
{
    int err;

    (void)settings_validate(s, confirm, time(NULL), problems);
    if (!settings_problems_only_incomplete(problems)) {
        /* Every problem at once: what is wrong, then what is missing. */
        ctl_output_problems(problems, false);
        ctl_output_problems(problems, true);
        ctl_errorf("nothing was written: the draft of instance %s was left as it was", s->instance);
        return CTL_EXIT_FAIL;
    }
    err = store_draft_put(ctl->store, s);
    if (err < 0) {
        ctl_errorf("cannot store the draft of instance %s: %s", s->instance, error_str(err));
        return CTL_EXIT_FAIL;
    }
    printf("%s %s\n", done, s->instance);
    return CTL_EXIT_OK;
}

/* --- settings set --------------------------------------------------------- */

/* Options of `settings set` that set one field; `value` is fixed for the
 * flag pairs (--logon / --no-logon), else the option takes the value. */
struct set_flag {
    const char *name;
    enum settings_field field;
    const char *value;
};

static const struct set_flag set_flags[] = {
    {"hostname", SETTINGS_F_HOSTNAME, NULL},
    {"port", SETTINGS_F_PORT, NULL},
    {"from", SETTINGS_F_FROM_ADDRESS, NULL},
    {"logon", SETTINGS_F_LOGON_REQUIRED, "on"},
    {"no-logon", SETTINGS_F_LOGON_REQUIRED, "off"},
    {"user", SETTINGS_F_USER_ID, NULL},
    {"smtps", SETTINGS_F_SMTPS_ENABLED, "on"},
    {"no-smtps", SETTINGS_F_SMTPS_ENABLED, "off"},
    {"tls-mode", SETTINGS_F_TLS_MODE, NULL},
    {"test-address", SETTINGS_F_TEST_ADDRESS, NULL},
    {"starttls-fallback", SETTINGS_F_STARTTLS_FALLBACK, NULL},
    {"allow-plaintext-auth", SETTINGS_F_ALLOW_PLAINTEXT_AUTH, NULL},
    {"timeout-connect", SETTINGS_F_TIMEOUT_CONNECT, NULL},
    {"timeout-greeting", SETTINGS_F_TIMEOUT_GREETING, NULL},
    {"timeout-command", SETTINGS_F_TIMEOUT_COMMAND, NULL},
    {"timeout-mail", SETTINGS_F_TIMEOUT_MAIL, NULL},
    {"timeout-rcpt", SETTINGS_F_TIMEOUT_RCPT, NULL},
    {"timeout-data-init", SETTINGS_F_TIMEOUT_DATA_INIT, NULL},
    {"timeout-data-block", SETTINGS_F_TIMEOUT_DATA_BLOCK, NULL},
    {"timeout-data-term", SETTINGS_F_TIMEOUT_DATA_TERM, NULL},
    {"fallback-relays", SETTINGS_F_FALLBACK_RELAYS, NULL},
};

#define N_SET_FLAGS (sizeof(set_flags) / sizeof(set_flags[0]))

enum {
    OPT_HELP = 'h',
    OPT_INSTANCE = 256,
    OPT_PASSWORD_FILE,
    OPT_PASSWORD_STDIN,
    OPT_PASSWORD_PROMPT,
    OPT_REVISION,
    OPT_DRAFT,
    OPT_JSON,
    OPT_COMMENT,
    OPT_FIELD = 512, /* OPT_FIELD + index into set_flags */
};

/* One field change in command-line order. */
struct set_change {
    enum settings_field field;
    const char *value;
};

static int settings_set(struct ctl *ctl, int argc, char **argv)
{
    struct option opts[N_SET_FLAGS + 6];
    struct set_change *changes = NULL;
    size_t nchanges = 0;
    const char *instance = NULL, *password_file = NULL;
    bool password_stdin = false, password_prompt = false, logon_flag = false;
    struct ctl_password pw = {NULL, NULL};
    struct settings s;
    struct settings_problems problems = {.count = 0, .dropped = 0};
    int c, rc = CTL_EXIT_FAIL;

    for (size_t i = 0; i < N_SET_FLAGS; i++)
        opts[i] = (struct option){set_flags[i].name,
                                  set_flags[i].value == NULL ? required_argument : no_argument,
                                  NULL, OPT_FIELD + (int)i};
    opts[N_SET_FLAGS] = (struct option){"instance", required_argument, NULL, OPT_INSTANCE};
    opts[N_SET_FLAGS + 1] =
        (struct option){"password-file", required_argument, NULL, OPT_PASSWORD_FILE};
    opts[N_SET_FLAGS + 2] =
        (struct option){"password-stdin", no_argument, NULL, OPT_PASSWORD_STDIN};
    opts[N_SET_FLAGS + 3] =
        (struct option){"password-prompt", no_argument, NULL, OPT_PASSWORD_PROMPT};
    opts[N_SET_FLAGS + 4] = (struct option){"help", no_argument, NULL, OPT_HELP};
    opts[N_SET_FLAGS + 5] = (struct option){NULL, 0, NULL, 0};

    changes = calloc((size_t)argc, sizeof(*changes));
    if (changes == NULL) {
        ctl_errorf("%s", strerror(ENOMEM));
        return CTL_EXIT_FAIL;
    }
    /* '-': operands come back in place (as 1), unpermuted, so a stray one
     * can be named by its position. Its text is never shown: it may be
     * the password, typed where it does not belong. */
    optind = 0;
    while ((c = ctl_getopt(argc, argv, "-:h", opts)) != -1) {
        switch (c) {
        case 1:
            rc = ctl_usage_error(ctl_settings_set_usage,
                                 "settings set: unexpected argument (#%d on the command line; "
                                 "every value belongs to an option)",
                                 ctl->argi + optind - 1);
            goto free_changes;
        case OPT_HELP:
            fputs(ctl_settings_set_usage, stdout);
            rc = CTL_EXIT_OK;
            goto free_changes;
        case OPT_INSTANCE:
            instance = optarg;
            break;
        case OPT_PASSWORD_FILE:
            password_file = optarg;
            break;
        case OPT_PASSWORD_STDIN:
            password_stdin = true;
            break;
        case OPT_PASSWORD_PROMPT:
            password_prompt = true;
            break;
        default:
            if (c >= OPT_FIELD && c < OPT_FIELD + (int)N_SET_FLAGS) {
                const struct set_flag *f = &set_flags[c - OPT_FIELD];
                changes[nchanges].field = f->field;
                changes[nchanges].value = f->value != NULL ? f->value : optarg;
                if (f->field == SETTINGS_F_LOGON_REQUIRED && strcmp(f->value, "on") == 0)
                    logon_flag = true;
                nchanges++;
                break;
            }
            rc = ctl_usage(ctl_settings_set_usage);
            goto free_changes;
        }
    }
    if (optind < argc) { /* after "--" */
        rc = ctl_usage_error(ctl_settings_set_usage,
                             "settings set: unexpected argument (#%d on the command line; "
                             "every value belongs to an option)",
                             ctl->argi + optind);
        goto free_changes;
    }
    if (instance == NULL) {
        rc = ctl_usage_error(ctl_settings_set_usage, "settings set: --instance ID is required");
        goto free_changes;
    }
    if ((password_file != NULL) + password_stdin + password_prompt > 1) {
        rc = ctl_usage_error(ctl_settings_set_usage,
                             "settings set: give only one of --password-file, --password-stdin "
                             "and --password-prompt");
        goto free_changes;
    }
    if (!instance_ok(instance)) {
        rc = CTL_EXIT_USAGE;
        goto free_changes;
    }

    /* The password is read before the store is touched, so a bad file
     * leaves no trace. */
    if (password_file != NULL && ctl_password_from_file(password_file, &pw) < 0)
        goto free_changes;
    if (password_stdin && ctl_password_from_stdin(&pw) < 0)
        goto free_changes;
    if (password_prompt) {
        int err = ctl_password_prompt(&pw);
        if (err == -ENXIO)
            ctl_errorf("--password-prompt: there is no terminal to ask on (/dev/tty); use "
                       "--password-file or --password-stdin");
        if (err < 0)
            goto free_changes;
    }

    if ((rc = ctl_store_open(ctl, true)) != CTL_EXIT_OK)
        goto wipe_password;
    rc = CTL_EXIT_FAIL;
    settings_init(&s);
    if (load_base(ctl, instance, &s) < 0)
        goto clear_settings;

    for (size_t i = 0; i < nchanges; i++)
        (void)settings_set_field(&s, changes[i].field, changes[i].value, &problems);

    /* Ask only when a logon was just requested, no password exists and a
     * person is there to answer. */
    if (pw.password == NULL && logon_flag && !s.password_set && isatty(STDIN_FILENO)) {
        int err = ctl_password_prompt(&pw);
        if (err < 0 && err != -ENXIO)
            goto clear_settings;
    }
    if (pw.password != NULL) {
        int err = settings_set_password(&s, pw.password);
        if (err < 0) {
            ctl_errorf("cannot set the password: %s", error_str(err));
            goto clear_settings;
        }
    }
    /* A source with one line has no separate confirmation: the password
     * confirms itself. */
    const char *confirm = pw.confirm != NULL ? pw.confirm : pw.password;
    rc = check_and_put(ctl, &s, confirm, &problems, "draft saved for instance");
    if (rc == CTL_EXIT_OK)
        ctl_output_problems(&problems, true);

clear_settings:
    settings_clear(&s);
wipe_password:
    ctl_password_wipe(&pw);
free_changes:
    free(changes);
    return rc;
}

/* --- settings import-cert ------------------------------------------------- */

/* Reads FILE ("-": stdin) whole, refusing more than SETTINGS_PEM_MAX bytes
 * rather than cutting it. *out is owned by the caller. */
static int read_pem(const char *path, char **out, size_t *len)
{
    char q[256];
    size_t cap = SETTINGS_PEM_MAX + 1, n = 0;
    bool is_stdin = strcmp(path, "-") == 0, fifo = false;
    struct stat st;
    char *buf;
    int fd, err = 0;

    ctl_quote(is_stdin ? "standard input" : path, q, sizeof(q));
    fd = is_stdin ? STDIN_FILENO : ctl_open_input(path, q, &st);
    if (fd < 0)
        return fd;
    if (!is_stdin)
        fifo = S_ISFIFO(st.st_mode);
    buf = malloc(cap + 1);
    if (buf == NULL) {
        err = -ENOMEM;
        ctl_errorf("cannot read %s: %s", q, error_str(err));
        goto close_fd;
    }
    while (n < cap) {
        ssize_t r = read(fd, buf + n, cap - n);
        if (r < 0 && errno == EINTR)
            continue;
        if (r < 0) {
            err = -errno;
            ctl_errorf("cannot read %s: %s", q, error_str(err));
            goto free_buf;
        }
        if (r == 0)
            break;
        n += (size_t)r;
    }
    if (n > SETTINGS_PEM_MAX) {
        ctl_errorf("%s: larger than %d bytes; a certificate bundle must be smaller", q,
                   SETTINGS_PEM_MAX);
        err = ERROR_TOO_BIG;
        goto free_buf;
    }
    if (n == 0) {
        ctl_errorf("%s: empty; expected PEM certificates (-----BEGIN CERTIFICATE-----)%s", q,
                   fifo ? " (a pipe nothing wrote to?)" : "");
        err = ERROR_INVALID;
        goto free_buf;
    }
    if (memchr(buf, '\0', n) != NULL) {
        ctl_errorf("%s: contains NUL bytes; expected PEM text", q);
        err = ERROR_INVALID;
        goto free_buf;
    }
    buf[n] = '\0';
    *out = buf;
    *len = n;
    buf = NULL;
free_buf:
    free(buf);
close_fd:
    if (!is_stdin)
        close(fd);
    return err;
}

/* Lists the certificates just imported, one per line. */
static void print_cert_summary(const struct settings *s)
{
    char line[2048], subject[512], when[CTL_TIME_LEN], why[256];
    STACK_OF(X509) *certs = NULL;

    if (settings_field_format(s, SETTINGS_F_TRUST_CERTIFICATE, line, sizeof(line)) >= 0) {
        fputs("  ", stdout);
        ctl_fputs_safe(line, stdout);
        fputc('\n', stdout);
    }
    if (pem_read_certs(s->trust_certificate, strlen(s->trust_certificate), &certs, why,
                       sizeof(why)) < 0)
        return;
    for (int i = 0; i < sk_X509_num(certs); i++) {
        X509 *x = sk_X509_value(certs, i);
        pem_subject(x, subject, sizeof(subject));
        fprintf(stdout, "  certificate %d: ", i + 1);
        ctl_fputs_safe(subject, stdout);
        fprintf(stdout, ", expires %s\n", ctl_output_time_t(pem_not_after(x), when, sizeof(when)));
    }
    sk_X509_pop_free(certs, X509_free);
}

static int settings_import_cert(struct ctl *ctl, int argc, char **argv)
{
    static const struct option opts[] = {
        {"instance", required_argument, NULL, OPT_INSTANCE},
        {"help", no_argument, NULL, OPT_HELP},
        {NULL, 0, NULL, 0},
    };
    const char *instance = NULL;
    struct settings s;
    struct settings_problems problems = {.count = 0, .dropped = 0};
    char *pem = NULL;
    size_t len = 0;
    int c, err, rc = CTL_EXIT_FAIL;

    optind = 0;
    /* "-" alone is the file name for standard input, not an option. */
    while ((c = ctl_getopt(argc, argv, ":h", opts)) != -1) {
        switch (c) {
        case OPT_HELP:
            fputs(ctl_settings_import_usage, stdout);
            return CTL_EXIT_OK;
        case OPT_INSTANCE:
            instance = optarg;
            break;
        default:
            return ctl_usage(ctl_settings_import_usage);
        }
    }
    if (instance == NULL)
        return ctl_usage_error(ctl_settings_import_usage,
                               "settings import-cert: --instance ID is required");
    if (argc - optind != 1)
        return ctl_usage_error(ctl_settings_import_usage,
                               "settings import-cert: give exactly one FILE ('-' for standard "
                               "input)");
    if (!instance_ok(instance))
        return CTL_EXIT_USAGE;
    if (read_pem(argv[optind], &pem, &len) < 0)
        return CTL_EXIT_FAIL;
    if ((rc = ctl_store_open(ctl, true)) != CTL_EXIT_OK)
        goto free_pem;
    rc = CTL_EXIT_FAIL;

    settings_init(&s);
    if (load_base(ctl, instance, &s) < 0)
        goto clear_settings;
    err = settings_set_certificate(&s, pem, len, &problems);
    if (err < 0 && err != ERROR_INVALID) {
        ctl_errorf("cannot attach the certificate: %s", error_str(err));
        goto clear_settings;
    }
    rc =
        check_and_put(ctl, &s, NULL, &problems, "certificate imported into the draft for instance");
    if (rc == CTL_EXIT_OK) {
        print_cert_summary(&s);
        ctl_output_problems(&problems, true);
    }

clear_settings:
    settings_clear(&s);
free_pem:
    free(pem);
    return rc;
}

/* --- settings show -------------------------------------------------------- */

struct show_ctx {
    struct ctl *ctl;
    bool draft;
    cJSON *instances; /* JSON mode: the "instances" object */
    size_t shown;
};

static int show_one(const struct settings *s, void *arg)
{
    struct show_ctx *sc = arg;
    struct settings_problems problems = {.count = 0, .dropped = 0};
    const struct settings_problems *p = NULL;

    /* A draft shows what stands between it and a save. */
    if (sc->draft) {
        (void)settings_validate(s, NULL, time(NULL), &problems);
        p = &problems;
    }
    if (sc->instances != NULL) {
        cJSON *obj = ctl_output_settings_json(s, p);
        if (obj == NULL || !cJSON_AddItemToObject(sc->instances, s->instance, obj)) {
            cJSON_Delete(obj);
            return -ENOMEM;
        }
    } else {
        if (sc->shown > 0)
            fputc('\n', stdout);
        ctl_output_settings_text(s, p, stdout);
    }
    sc->shown++;
    return 0;
}

static int settings_show(struct ctl *ctl, int argc, char **argv)
{
    static const struct option opts[] = {
        {"instance", required_argument, NULL, OPT_INSTANCE},
        {"revision", required_argument, NULL, OPT_REVISION},
        {"draft", no_argument, NULL, OPT_DRAFT},
        {"json", no_argument, NULL, OPT_JSON},
        {"help", no_argument, NULL, OPT_HELP},
        {NULL, 0, NULL, 0},
    };
    struct names names = {NULL, 0};
    struct show_ctx sc = {ctl, false, NULL, 0};
    const char *revision_arg = NULL;
    uint64_t revision = 0;
    struct store_info info;
    cJSON *doc = NULL;
    char q[96];
    int c, err, rc = CTL_EXIT_FAIL;

    optind = 0;
    while ((c = ctl_getopt(argc, argv, ":h", opts)) != -1) {
        switch (c) {
        case OPT_HELP:
            fputs(ctl_settings_show_usage, stdout);
            rc = CTL_EXIT_OK;
            goto free_names;
        case OPT_INSTANCE:
            if (names_add(&names, optarg, argc) < 0) {
                rc = CTL_EXIT_USAGE;
                goto free_names;
            }
            break;
        case OPT_REVISION:
            revision_arg = optarg;
            break;
        case OPT_DRAFT:
            sc.draft = true;
            break;
        case OPT_JSON:
            ctl->json = true;
            break;
        default:
            rc = ctl_usage(ctl_settings_show_usage);
            goto free_names;
        }
    }
    if (optind < argc) {
        rc = ctl_usage_error(ctl_settings_show_usage, "settings show: unexpected argument '%s'",
                             ctl_quote(argv[optind], q, sizeof(q)));
        goto free_names;
    }
    if (revision_arg != NULL && sc.draft) {
        rc = ctl_usage_error(ctl_settings_show_usage,
                             "settings show: --draft and --revision exclude each other");
        goto free_names;
    }
    if (revision_arg != NULL &&
        (rc = ctl_parse_revision("--revision", revision_arg, UINT64_MAX, ctl_settings_show_usage,
                                 &revision)) != CTL_EXIT_OK)
        goto free_names;
    if ((rc = ctl_store_open_info(ctl, &info)) != CTL_EXIT_OK)
        goto free_names;
    if (revision_arg != NULL &&
        (rc = ctl_parse_revision("--revision", revision_arg, info.revision, ctl_settings_show_usage,
                                 &revision)) != CTL_EXIT_OK)
        goto free_names;
    rc = CTL_EXIT_FAIL;

    if (ctl->json) {
        doc = cJSON_CreateObject();
        sc.instances = cJSON_CreateObject();
        if (doc == NULL || sc.instances == NULL ||
            !cJSON_AddItemToObject(doc, "instances", sc.instances)) {
            cJSON_Delete(sc.instances);
            err = -ENOMEM;
            goto render_error;
        }
    }

    if (names.n > 0) {
        for (size_t i = 0; i < names.n; i++) {
            struct settings s;
            settings_init(&s);
            err = sc.draft ? store_draft_get(ctl->store, names.ids[i], 0, &s)
                           : store_get(ctl->store, names.ids[i], revision, 0, &s);
            if (err == 0)
                err = show_one(&s, &sc);
            settings_clear(&s);
            if (err == ERROR_NOT_FOUND) {
                ctl_quote(names.ids[i], q, sizeof(q));
                if (sc.draft)
                    ctl_errorf("instance %s has no draft", q);
                else if (revision != 0)
                    ctl_errorf("instance %s has no settings at revision %" PRIu64, q, revision);
                else
                    ctl_errorf("instance %s has no saved settings", q);
                goto free_doc;
            }
            if (err < 0)
                goto render_error;
        }
    } else {
        err = sc.draft ? store_draft_each(ctl->store, 0, show_one, &sc)
                       : store_each(ctl->store, revision, 0, show_one, &sc);
        if (err < 0)
            goto render_error;
    }

    if (doc != NULL) {
        uint64_t shown_rev = revision != 0 ? revision : info.revision;
        if (!cJSON_AddItemToObject(doc, "revision",
                                   sc.draft || shown_rev == 0
                                       ? cJSON_CreateNull()
                                       : cJSON_CreateNumber((double)shown_rev)) ||
            !cJSON_AddBoolToObject(doc, "draft", sc.draft)) {
            err = -ENOMEM;
            goto render_error;
        }
        rc = ctl_output_json_print(doc) < 0 ? CTL_EXIT_FAIL : CTL_EXIT_OK;
        doc = NULL;
        goto free_names;
    }
    if (sc.shown == 0)
        puts(sc.draft        ? "no drafts"
             : revision != 0 ? "no settings at that revision"
                             : "no settings saved yet");
    rc = CTL_EXIT_OK;
    goto free_doc;

render_error:
    ctl_revision_error("show the settings", err, info.base_revision);
free_doc:
    cJSON_Delete(doc);
free_names:
    free(names.ids);
    return rc;
}

/* --- settings save -------------------------------------------------------- */

static int settings_save(struct ctl *ctl, int argc, char **argv)
{
    static const struct option opts[] = {
        {"instance", required_argument, NULL, OPT_INSTANCE},
        {"comment", required_argument, NULL, OPT_COMMENT},
        {"json", no_argument, NULL, OPT_JSON},
        {"help", no_argument, NULL, OPT_HELP},
        {NULL, 0, NULL, 0},
    };
    struct names names = {NULL, 0};
    struct settings_problems problems = {.count = 0, .dropped = 0};
    const char *comment = NULL;
    char actor[STORE_ACTOR_MAX + 1], q[96];
    uint64_t revision = 0;
    bool missing = false;
    int c, err, rc = CTL_EXIT_FAIL;

    optind = 0;
    while ((c = ctl_getopt(argc, argv, ":h", opts)) != -1) {
        switch (c) {
        case OPT_HELP:
            fputs(ctl_settings_save_usage, stdout);
            rc = CTL_EXIT_OK;
            goto free_names;
        case OPT_INSTANCE:
            if (names_add(&names, optarg, argc) < 0) {
                rc = CTL_EXIT_USAGE;
                goto free_names;
            }
            break;
        case OPT_COMMENT:
            comment = optarg;
            break;
        case OPT_JSON:
            ctl->json = true;
            break;
        default:
            rc = ctl_usage(ctl_settings_save_usage);
            goto free_names;
        }
    }
    if (optind < argc) {
        rc = ctl_usage_error(ctl_settings_save_usage, "settings save: unexpected argument '%s'",
                             ctl_quote(argv[optind], q, sizeof(q)));
        goto free_names;
    }
    if (comment != NULL && !ctl_comment_ok(comment)) {
        rc = CTL_EXIT_USAGE;
        goto free_names;
    }
    if ((rc = ctl_store_open(ctl, false)) != CTL_EXIT_OK)
        goto free_names;
    rc = CTL_EXIT_FAIL;

    /* Name every instance without a draft, not just the first. */
    for (size_t i = 0; i < names.n; i++) {
        struct settings s;
        settings_init(&s);
        err = store_draft_get(ctl->store, names.ids[i], 0, &s);
        settings_clear(&s);
        if (err == ERROR_NOT_FOUND) {
            ctl_errorf("instance %s has no draft to save", ctl_quote(names.ids[i], q, sizeof(q)));
            missing = true;
        } else if (err < 0) {
            ctl_errorf("cannot read the draft of instance %s: %s",
                       ctl_quote(names.ids[i], q, sizeof(q)), error_str(err));
            goto free_names;
        }
    }
    if (missing)
        goto free_names;

    store_local_actor(actor, sizeof(actor));
    struct store_commit commit = {.actor = actor, .comment = comment, .time_ms = 0};
    err = store_save(ctl->store, names.ids, names.n, &commit, &problems, &revision);
    if (err == ERROR_INVALID && problems.count > 0) {
        ctl_output_problems_all(&problems);
        ctl_errorf("nothing was saved: fix the problems above with `settings set` or "
                   "`settings import-cert`");
        goto free_names;
    }
    if (err == ERROR_EMPTY) {
        ctl_errorf("nothing to save: there is no draft (make one with `settings set`)");
        goto free_names;
    }
    if (err < 0) {
        ctl_errorf("cannot save: %s", error_str(err));
        goto free_names;
    }
    if (ctl->json) {
        cJSON *doc = cJSON_CreateObject();
        if (doc == NULL || cJSON_AddNumberToObject(doc, "revision", (double)revision) == NULL) {
            cJSON_Delete(doc);
            doc = NULL;
        }
        if (ctl_output_json_print(doc) < 0)
            goto free_names;
    } else {
        printf("saved revision %" PRIu64 "\n", revision);
    }
    rc = CTL_EXIT_OK;

free_names:
    free(names.ids);
    return rc;
}

/* --- settings discard ----------------------------------------------------- */

static int settings_discard(struct ctl *ctl, int argc, char **argv)
{
    static const struct option opts[] = {
        {"instance", required_argument, NULL, OPT_INSTANCE},
        {"help", no_argument, NULL, OPT_HELP},
        {NULL, 0, NULL, 0},
    };
    const char *instance = NULL;
    struct store_info info;
    char q[96];
    int c, err, rc;

    optind = 0;
    while ((c = ctl_getopt(argc, argv, ":h", opts)) != -1) {
        switch (c) {
        case OPT_HELP:
            fputs(ctl_settings_discard_usage, stdout);
            return CTL_EXIT_OK;
        case OPT_INSTANCE:
            instance = optarg;
            break;
        default:
            return ctl_usage(ctl_settings_discard_usage);
        }
    }
    if (optind < argc)
        return ctl_usage_error(ctl_settings_discard_usage,
                               "settings discard: unexpected argument '%s'",
                               ctl_quote(argv[optind], q, sizeof(q)));
    if (instance != NULL && !instance_ok(instance))
        return CTL_EXIT_USAGE;
    if ((rc = ctl_store_open_info(ctl, &info)) != CTL_EXIT_OK)
        return rc;
    err = store_draft_discard(ctl->store, instance);
    if (err == ERROR_NOT_FOUND) {
        if (instance != NULL)
            ctl_errorf("instance %s has no draft", ctl_quote(instance, q, sizeof(q)));
        else
            ctl_errorf("there are no drafts to discard");
        return CTL_EXIT_FAIL;
    }
    if (err < 0) {
        ctl_errorf("cannot discard: %s", error_str(err));
        return CTL_EXIT_FAIL;
    }
    if (instance != NULL)
        printf("discarded the draft of instance %s\n", instance);
    else
        printf("discarded %zu draft%s\n", info.ndrafts, info.ndrafts == 1 ? "" : "s");
    return CTL_EXIT_OK;
}

/* --- dispatch ------------------------------------------------------------- */

static const struct {
    const char *name;
    ctl_verb_fn run;
} settings_verbs[] = {
    {"set", settings_set},   {"import-cert", settings_import_cert}, {"show", settings_show},
    {"save", settings_save}, {"discard", settings_discard},         {"test", ctl_settings_test},
};

int ctl_settings_main(struct ctl *ctl, int argc, char **argv)
{
    char q[96];

    if (argc < 2)
        return ctl_usage_error(ctl_settings_usage, "settings: missing subcommand");
    if (strcmp(argv[1], "--help") == 0 || strcmp(argv[1], "-h") == 0 ||
        strcmp(argv[1], "help") == 0) {
        fputs(ctl_settings_usage, stdout);
        return CTL_EXIT_OK;
    }
    for (size_t i = 0; i < sizeof(settings_verbs) / sizeof(settings_verbs[0]); i++) {
        if (strcmp(argv[1], settings_verbs[i].name) == 0) {
            ctl->argi++;
            return settings_verbs[i].run(ctl, argc - 1, argv + 1);
        }
    }
    return ctl_usage_error(ctl_settings_usage, "settings: unknown subcommand '%s'",
                           ctl_quote(argv[1], q, sizeof(q)));
}
