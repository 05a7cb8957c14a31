/*
 * ctl_settings_edit: the verbs that edit a draft, `settings set` and
 * `settings import-cert`, on a local store or through a daemon. The draft
 * is checked and stored by the same code in both modes (admin.h,
 * admin_draft_check_put); the lines printed are the same too.
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

#include "admin.h"
#include "ctl.h"
#include "ctl_output.h"
#include "ctl_password.h"
#include "error.h"
#include "pem.h"
#include "settings.h"
#include "settings_pb.h"
#include "store.h"

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

/*
 * Loads what a change to `instance` starts from: its draft, else its saved
 * record, else an empty record. Read with STORE_UNSEAL so that a stored
 * password survives being put back as a draft.
 */
static int load_base(struct ctl *ctl, const char *instance, struct settings *s)
{
    char q[96];
    int err = admin_draft_base(ctl->store, instance, s);

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
    int err = admin_draft_check_put(ctl->store, s, confirm, problems);

    if (err == ERROR_INVALID && !settings_problems_only_incomplete(problems)) {
        /* Every problem at once: what is wrong, then what is missing. */
        ctl_output_problems(problems, false);
        ctl_output_problems(problems, true);
        ctl_errorf("nothing was written: the draft of instance %s was left as it was", s->instance);
        return CTL_EXIT_FAIL;
    }
    if (err < 0) {
        ctl_errorf("cannot store the draft of instance %s: %s", s->instance, error_str(err));
        return CTL_EXIT_FAIL;
    }
    printf("%s %s\n", done, s->instance);
    return CTL_EXIT_OK;
}

/* --- remote mode ---------------------------------------------------------- */

/* Does instance ID have a password, in its draft or else its saved
 * settings? (For the prompt of `settings set --logon`.) */
static bool remote_has_password(struct ctl *ctl, const char *instance)
{
    bool draft = true, found = false, set = false;

    for (int i = 0; i < 2 && !found; i++, draft = false) {
        Smtpsync__SettingsShow m;
        Smtpsync__Frame f;
        Smtpsync__AdminReply *r = NULL;

        smtpsync__settings_show__init(&m);
        m.instance = (char *)(uintptr_t)instance;
        m.draft = draft;
        smtpsync__frame__init(&f);
        f.body_case = SMTPSYNC__FRAME__BODY_SETTINGS_SHOW;
        f.settings_show = &m;
        if (ctl_remote_call(ctl, &f, 0, &r) != CTL_EXIT_OK)
            return false;
        if (r->code == 0 && r->n_settings == 1) {
            found = true;
            set = r->settings[0]->password != NULL;
        }
        smtpsync__admin_reply__free_unpacked(r, NULL);
    }
    return set;
}

/* One field change in command-line order. */
struct set_change {
    enum settings_field field;
    const char *value;
};

/*
 * settings set through a daemon: the values are parsed here, with the
 * same checks as in local mode, and travel as a patch (the fields named
 * and their values); the password in the clear inside mutual TLS, never
 * in argv. The daemon builds the draft as local mode does.
 */
static int set_remote(struct ctl *ctl, const char *instance, const struct set_change *changes,
                      size_t nchanges, struct ctl_password *pw, bool logon_flag)
{
    struct settings_problems problems = {.count = 0, .dropped = 0};
    const char **fields = NULL;
    struct settings patch;
    struct settings_pb v;
    Smtpsync__Secret secret;
    Smtpsync__SettingsSet m;
    Smtpsync__Frame f;
    Smtpsync__AdminReply *r = NULL;
    size_t nfields = 0;
    int rc = CTL_EXIT_FAIL;

    settings_init(&patch);
    snprintf(patch.instance, sizeof(patch.instance), "%s", instance);
    for (size_t i = 0; i < nchanges; i++)
        (void)settings_set_field(&patch, changes[i].field, changes[i].value, &problems);
    if (problems.count > 0 || problems.dropped > 0) {
        ctl_output_problems(&problems, false);
        ctl_output_problems(&problems, true);
        ctl_errorf("nothing was written: the draft of instance %s was left as it was", instance);
        goto clear_patch;
    }
    /* Ask only when a logon was just requested, no password exists and a
     * person is there to answer. */
    if (pw->password == NULL && logon_flag && isatty(STDIN_FILENO) &&
        !remote_has_password(ctl, instance)) {
        int err = ctl_password_prompt(pw);
        if (err < 0 && err != -ENXIO)
            goto clear_patch;
    }
    if ((fields = calloc(nchanges + 1, sizeof(*fields))) == NULL) {
        ctl_errorf("%s", strerror(ENOMEM));
        goto clear_patch;
    }
    for (size_t i = 0; i < nchanges; i++)
        fields[nfields++] = settings_field_name(changes[i].field);
    if (settings_pb_view(&v, &patch, SETTINGS_PB_SECRET_ID) < 0) {
        ctl_errorf("cannot encode the request");
        goto free_fields;
    }
    smtpsync__settings_set__init(&m);
    if (pw->password != NULL) {
        /* A source with one line has no separate confirmation: the
         * password confirms itself. */
        smtpsync__secret__init(&secret);
        secret.plaintext.data = (uint8_t *)pw->password;
        secret.plaintext.len = strlen(pw->password);
        v.msg.password = &secret;
        fields[nfields++] = settings_field_name(SETTINGS_F_PASSWORD);
        m.password_confirm = pw->confirm != NULL ? pw->confirm : pw->password;
    }
    m.settings = &v.msg;
    m.fields = (char **)(uintptr_t)fields;
    m.n_fields = nfields;
    smtpsync__frame__init(&f);
    f.body_case = SMTPSYNC__FRAME__BODY_SETTINGS_SET;
    f.settings_set = &m;
    if ((rc = ctl_remote_ask(ctl, &f, 0, false, &r)) != CTL_EXIT_OK)
        goto free_fields;
    printf("draft saved for instance %s\n", instance);
    ctl_remote_problems(r, &problems);
    ctl_output_problems(&problems, true);
    smtpsync__admin_reply__free_unpacked(r, NULL);

free_fields:
    free(fields);
clear_patch:
    settings_clear(&patch);
    return rc;
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
    OPT_FIELD = 512, /* OPT_FIELD + index into set_flags */
};

int ctl_settings_set(struct ctl *ctl, int argc, char **argv)
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
    if (!ctl_instance_ok(instance)) {
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

    if (ctl_remote(ctl)) {
        rc = set_remote(ctl, instance, changes, nchanges, &pw, logon_flag);
        goto wipe_password;
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

static int import_remote(struct ctl *ctl, const char *instance, char *pem)
{
    struct settings_problems problems;
    Smtpsync__ImportCert m;
    Smtpsync__Frame f;
    Smtpsync__AdminReply *r = NULL;
    struct settings s;
    int rc;

    smtpsync__import_cert__init(&m);
    m.instance = (char *)(uintptr_t)instance;
    m.pem = pem;
    smtpsync__frame__init(&f);
    f.body_case = SMTPSYNC__FRAME__BODY_IMPORT_CERT;
    f.import_cert = &m;
    if ((rc = ctl_remote_ask(ctl, &f, 0, false, &r)) != CTL_EXIT_OK)
        return rc;
    printf("certificate imported into the draft for instance %s\n", instance);
    settings_init(&s);
    if (r->n_settings == 1 && ctl_remote_settings(r->settings[0], &s) == 0 &&
        s.trust_certificate != NULL)
        print_cert_summary(&s);
    settings_clear(&s);
    ctl_remote_problems(r, &problems);
    ctl_output_problems(&problems, true);
    smtpsync__admin_reply__free_unpacked(r, NULL);
    return CTL_EXIT_OK;
}

int ctl_settings_import_cert(struct ctl *ctl, int argc, char **argv)
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
    if (!ctl_instance_ok(instance))
        return CTL_EXIT_USAGE;
    if (read_pem(argv[optind], &pem, &len) < 0)
        return CTL_EXIT_FAIL;
    if (ctl_remote(ctl)) {
        rc = import_remote(ctl, instance, pem);
        goto free_pem;
    }
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
