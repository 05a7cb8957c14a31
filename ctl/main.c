/*
 * smtpsyncctl: the administrator's command-line client, on a store
 * (local mode) or through a daemon (remote mode, ctl_remote.c).
 *
 * main() hardens the process, parses the global options into a `struct
 * ctl`, and hands the rest of the command line to the verb.
 */
#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/stat.h>

#include "ctl.h"

#ifndef SMTPSYNC_VERSION
#define SMTPSYNC_VERSION "unknown"
#endif

static const char usage[] =
    "usage: smtpsyncctl [--data-dir DIR | --server HOST:PORT ...] [--json] VERB [options]\n"
    "\n"
    "Administers the SMTP settings of an smtpsync deployment: on a store directly\n"
    "(--data-dir), or through a daemon over mutual TLS (--server).\n"
    "\n"
    "global options (before the verb):\n"
    "  --data-dir DIR   work on the store in DIR (or set SMTPSYNC_DATA_DIR)\n"
    "  --key-file F     node key that seals passwords (default DIR/node.key)\n"
    "  --server HOST:PORT  talk to the daemon there (remote mode), with:\n"
    "  --server-id NODE the node id the daemon's certificate must carry (default: HOST\n"
    "                   when it is a DNS name; needed when HOST is an IP address)\n"
    "  --ca F           the deployment CA (PEM) that the daemon's certificate chains to\n"
    "  --cert F         your admin certificate (PEM); its name gives your role\n"
    "  --key F          its private key (PEM)\n"
    "  --config FILE    read server, server_id, ca, cert and key from [ctl] of FILE\n"
    "                   (or set SMTPSYNC_CONFIG); options on the command line win\n"
    "  --timeout S      remote mode: wait at most S seconds for a reply (default 60;\n"
    "                   600 for settings test and sync)\n"
    "  --socket PATH    the local daemon's submission socket (or set SMTPSYNC_SOCKET;\n"
    "                   default " CTL_SOCKET_DEFAULT ")\n"
    "  --json           machine-readable output for read verbs\n"
    "  --version        print the version\n"
    "  --help           print this help\n"
    "\n"
    "verbs:\n"
    "  settings set          change fields of an instance's draft\n"
    "  settings import-cert  attach the trusted certificate to a draft\n"
    "  settings show         print saved settings, an old revision or the drafts\n"
    "  settings save         save drafts as a new revision\n"
    "  settings discard      throw drafts away\n"
    "  settings test         Test Connection: try an instance's settings step by step\n"
    "  history               list the saved revisions\n"
    "  diff R1 R2            fields that differ between two revisions\n"
    "  rollback R            make revision R current again, as a new revision\n"
    "  status                where this node and every replica stand\n"
    "  sync [--replica ID]   push to the replicas now (remote mode only)\n"
    "  promote [--force]     make the node asked the primary (remote mode only)\n"
    "  send                  submit a mail to the local daemon\n"
    "  sendmail -t           submit an RFC 5322 message from standard input\n"
    "  queue                 list, retry or drop the local daemon's mail\n"
    "  help [VERB...]        print this help, or the help of a verb\n"
    "\n"
    "`smtpsyncctl VERB --help` describes each verb. settings, history, diff,\n"
    "rollback and status work in both modes, with the same output; sync and\n"
    "promote need --server; send, sendmail and queue talk to --socket.\n";

static const struct {
    const char *name;
    ctl_verb_fn run;
    const char *usage;
} verbs[] = {
    {"settings", ctl_settings_main, ctl_settings_usage},
    {"history", ctl_history_main, ctl_history_usage},
    {"diff", ctl_diff_main, ctl_diff_usage},
    {"rollback", ctl_rollback_main, ctl_rollback_usage},
    {"send", ctl_send_main, ctl_send_usage},
    {"sendmail", ctl_sendmail_main, ctl_sendmail_usage},
    {"queue", ctl_queue_main, ctl_queue_usage},
    {"status", ctl_status_main, ctl_status_usage},
    {"sync", ctl_sync_main, ctl_sync_usage},
    {"promote", ctl_promote_main, ctl_promote_usage},
};

/* Verbs that talk to the local daemon's submission socket only. */
static bool socket_verb(const char *name)
{
    return strcmp(name, "send") == 0 || strcmp(name, "sendmail") == 0 || strcmp(name, "queue") == 0;
}

#define N_VERBS (sizeof(verbs) / sizeof(verbs[0]))

static const struct {
    const char *name;
    const char *usage;
} settings_help[] = {
    {"set", ctl_settings_set_usage},         {"import-cert", ctl_settings_import_usage},
    {"show", ctl_settings_show_usage},       {"save", ctl_settings_save_usage},
    {"discard", ctl_settings_discard_usage}, {"test", ctl_settings_test_usage},
};

/* Keeps secrets out of core dumps and away from ptrace by other users'
 * processes; failure is not fatal (the tool still works), only weaker. */
static void harden(void)
{
    struct rlimit none = {0, 0};

    (void)prctl(PR_SET_DUMPABLE, 0, 0, 0, 0);
    (void)setrlimit(RLIMIT_CORE, &none);
    /* A new store, key or draft is for this user only. */
    umask(077);
}

/* `smtpsyncctl help [VERB [SUBVERB]]`. */
static int help(int argc, char **argv)
{
    char q[96];

    if (argc < 2) {
        fputs(usage, stdout);
        return CTL_EXIT_OK;
    }
    if (strcmp(argv[1], "settings") == 0 && argc >= 3) {
        for (size_t i = 0; i < sizeof(settings_help) / sizeof(settings_help[0]); i++) {
            if (strcmp(argv[2], settings_help[i].name) == 0) {
                fputs(settings_help[i].usage, stdout);
                return CTL_EXIT_OK;
            }
        }
        return ctl_usage_error(ctl_settings_usage, "help: unknown subcommand 'settings %s'",
                               ctl_quote(argv[2], q, sizeof(q)));
    }
    for (size_t i = 0; i < N_VERBS; i++) {
        if (strcmp(argv[1], verbs[i].name) == 0) {
            fputs(verbs[i].usage, stdout);
            return CTL_EXIT_OK;
        }
    }
    return ctl_usage_error(usage, "help: unknown verb '%s'", ctl_quote(argv[1], q, sizeof(q)));
}

enum {
    OPT_HELP = 'h',
    OPT_DATA_DIR = 256,
    OPT_KEY_FILE,
    OPT_JSON,
    OPT_SERVER,
    OPT_SERVER_ID,
    OPT_SOCKET,
    OPT_VERSION,
    OPT_CA,
    OPT_CERT,
    OPT_KEY,
    OPT_CONFIG,
    OPT_TIMEOUT,
};

/* Prepares the mode of a verb: remote (a server from the command line or
 * [ctl]) or local. Prints problems; returns the exit status. */
static int choose_mode(struct ctl *ctl, const char *verb, bool data_dir_option)
{
    char q[96];

    if (socket_verb(verb)) {
        if (ctl->server_option || ctl->server_id != NULL || ctl->ca != NULL || ctl->cert != NULL ||
            ctl->key != NULL) {
            ctl_errorf("%s works with the local daemon (--socket); --server, --server-id, --ca, "
                       "--cert and --key are not used",
                       ctl_quote(verb, q, sizeof(q)));
            return CTL_EXIT_USAGE;
        }
        return CTL_EXIT_OK;
    }
    /* Before the files are looked at: the conflict is the first thing to
     * fix. A server from [ctl] gives way to --data-dir. */
    if (ctl->server_option && data_dir_option) {
        ctl_errorf("--data-dir and --server exclude each other: work on a store directly, or "
                   "through a daemon");
        return CTL_EXIT_USAGE;
    }
    if (data_dir_option && ctl->ca == NULL && ctl->cert == NULL && ctl->key == NULL &&
        ctl->server_id == NULL)
        return CTL_EXIT_OK;
    return ctl_remote_setup(ctl);
}

/* Parses the global options and runs the verb; returns the exit status. */
static int run(struct ctl *ctl, int argc, char **argv)
{
    static const struct option opts[] = {
        {"data-dir", required_argument, NULL, OPT_DATA_DIR},
        {"key-file", required_argument, NULL, OPT_KEY_FILE},
        {"json", no_argument, NULL, OPT_JSON},
        {"server", required_argument, NULL, OPT_SERVER},
        {"server-id", required_argument, NULL, OPT_SERVER_ID},
        {"ca", required_argument, NULL, OPT_CA},
        {"cert", required_argument, NULL, OPT_CERT},
        {"key", required_argument, NULL, OPT_KEY},
        {"config", required_argument, NULL, OPT_CONFIG},
        {"timeout", required_argument, NULL, OPT_TIMEOUT},
        {"socket", required_argument, NULL, OPT_SOCKET},
        {"version", no_argument, NULL, OPT_VERSION},
        {"help", no_argument, NULL, OPT_HELP},
        {NULL, 0, NULL, 0},
    };
    const char *verb;
    bool data_dir_option = false;
    char q[96];
    int c, rc;

    /* '+': the first word that is not an option is the verb; what follows
     * belongs to it. */
    optind = 0;
    while ((c = ctl_getopt(argc, argv, "+:h", opts)) != -1) {
        switch (c) {
        case OPT_DATA_DIR:
            ctl->data_dir = optarg;
            data_dir_option = true;
            break;
        case OPT_KEY_FILE:
            ctl->key_file = optarg;
            break;
        case OPT_JSON:
            ctl->json = true;
            break;
        case OPT_SERVER:
            ctl->server = optarg;
            ctl->server_option = true;
            break;
        case OPT_SERVER_ID:
            ctl->server_id = optarg;
            break;
        case OPT_CA:
            ctl->ca = optarg;
            break;
        case OPT_CERT:
            ctl->cert = optarg;
            break;
        case OPT_KEY:
            ctl->key = optarg;
            break;
        case OPT_CONFIG:
            ctl->config = optarg;
            break;
        case OPT_TIMEOUT: {
            uint64_t secs;
            if (ctl_parse_u64(optarg, 1, 86400, &secs) < 0)
                return ctl_usage_error(usage,
                                       "--timeout: '%s' is not a number of seconds "
                                       "(1-86400)",
                                       ctl_quote(optarg, q, sizeof(q)));
            ctl->timeout_ms = secs * 1000;
            break;
        }
        case OPT_SOCKET:
            ctl->socket = optarg;
            break;
        case OPT_VERSION:
            printf("smtpsyncctl %s\n", SMTPSYNC_VERSION);
            return CTL_EXIT_OK;
        case OPT_HELP:
            fputs(usage, stdout);
            return CTL_EXIT_OK;
        default:
            return ctl_usage(usage);
        }
    }
    /* The verbs take options after their operands (`diff 1 2 --json`);
     * with POSIXLY_CORRECT set, getopt would stop at the first operand. */
    unsetenv("POSIXLY_CORRECT");
    if (optind >= argc)
        return ctl_usage_error(usage, "missing verb");
    verb = argv[optind];
    if (strcmp(verb, "help") == 0)
        return help(argc - optind, argv + optind);

    for (size_t i = 0; i < N_VERBS; i++) {
        if (strcmp(verb, verbs[i].name) != 0)
            continue;
        if ((rc = choose_mode(ctl, verb, data_dir_option)) != CTL_EXIT_OK)
            return rc;
        if (ctl_remote(ctl)) {
            ctl->data_dir = NULL; /* SMTPSYNC_DATA_DIR is for local mode */
        } else if (ctl->data_dir == NULL) {
            const char *env = getenv("SMTPSYNC_DATA_DIR");
            if (env != NULL && env[0] != '\0')
                ctl->data_dir = env;
        }
        if (ctl->data_dir != NULL && ctl->data_dir[0] == '\0') {
            ctl_errorf("--data-dir: empty directory name");
            return CTL_EXIT_USAGE;
        }
        ctl->argi = optind;
        return verbs[i].run(ctl, argc - optind, argv + optind);
    }
    return ctl_usage_error(usage, "unknown verb '%s'", ctl_quote(verb, q, sizeof(q)));
}

int main(int argc, char **argv)
{
    struct ctl ctl = {.data_dir = NULL, .store = NULL, .remote = NULL, .conf = NULL};
    int rc, err;

    harden();
    if (argc < 1)
        return CTL_EXIT_USAGE;
    rc = run(&ctl, argc, argv);
    if (ctl.store != NULL)
        store_close(ctl.store);
    ctl_remote_close(&ctl);
    ctl_remote_free_conf(&ctl);

    /* Output that did not arrive (a full disk, a closed pipe) must not
     * look like success to a script. */
    errno = 0;
    if (fflush(stdout) != 0 || ferror(stdout)) {
        err = errno;
        ctl_errorf("write error: standard output: %s",
                   err != 0 ? strerror(err) : "an earlier write failed");
        if (rc == CTL_EXIT_OK)
            rc = CTL_EXIT_FAIL;
    }
    return rc;
}
