/*
 * node_main: the command line of both daemons (node.h, node_main()).
 *
 * Exit status: 0 after a clean stop, 1 when the node could not start or
 * failed while running, 2 for a bad command line or configuration (every
 * problem of the file printed, one per line, "PROG: FILE:LINE: message").
 *
 * --check-config (like `nginx -t`) reads the file as a start would and
 * makes the checks of node_check_start(), then exits: 0 with one line on
 * stdout, 2 with every problem on stderr. It opens no store, binds no
 * socket and takes no lock, so it is safe beside the running daemon; the
 * systemd units run it before each reload.
 */
#include <getopt.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "config.h"
#include "log.h"
#include "mtls.h"
#include "node.h"

#ifndef SMTPSYNC_VERSION
#define SMTPSYNC_VERSION "unknown"
#endif

#define USAGE_TEXT                                                                                 \
    "usage: %s --config FILE [--log-level LEVEL] [--log-format text|json]\n"                       \
    "       [--check-config]\n"                                                                    \
    "\n"                                                                                           \
    "The smtpsync %s daemon: delivers this node's mail with its own settings,\n"                   \
    "serves the local submission socket and, with [tls], replication and the\n"                    \
    "admin API on [node] listen (mutual TLS).\n"                                                   \
    "\n"                                                                                           \
    "  --config FILE        the INI configuration file (required)\n"                               \
    "  --log-level LEVEL    debug, info, warn or error (overrides [log] level)\n"                  \
    "  --log-format FORMAT  text or json (overrides [log] format)\n"                               \
    "  --check-config       check the configuration and the [tls] files as a start\n"              \
    "                       would, then exit: 0 if it is fine, 2 with every problem;\n"            \
    "                       safe beside the running daemon (no store, socket or lock)\n"           \
    "  --version            print the version\n"                                                   \
    "  --help               print this help\n"                                                     \
    "\n"                                                                                           \
    "Signals: SIGTERM or SIGINT stop it: the SMTP sessions under way get 10 s to\n"                \
    "finish, then are cancelled, and unsent mail stays in the outbox for the\n"                    \
    "next start. SIGHUP re-reads the configuration and the TLS files.\n"

static int usage_error(const char *prog, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));

static int usage_error(const char *prog, const char *fmt, ...)
{
    va_list ap;

    fprintf(stderr, "%s: ", prog);
    va_start(ap, fmt);
    vfprintf(stderr, fmt, ap);
    va_end(ap);
    fprintf(stderr,
            "\nusage: %s --config FILE [--log-level LEVEL] [--log-format text|json]\n"
            "       [--check-config]\n"
            "(--help prints every option)\n",
            prog);
    return NODE_EXIT_USAGE;
}

enum {
    OPT_CONFIG = 256,
    OPT_LOG_LEVEL,
    OPT_LOG_FORMAT,
    OPT_CHECK_CONFIG,
    OPT_VERSION,
    OPT_HELP,
};

static const struct option opts[] = {
    {"config", required_argument, NULL, OPT_CONFIG},
    {"log-level", required_argument, NULL, OPT_LOG_LEVEL},
    {"log-format", required_argument, NULL, OPT_LOG_FORMAT},
    {"check-config", no_argument, NULL, OPT_CHECK_CONFIG},
    {"version", no_argument, NULL, OPT_VERSION},
    {"help", no_argument, NULL, OPT_HELP},
    {NULL, 0, NULL, 0},
};

/* getopt_long accepts abbreviations (--conf); only full names are ours, so
 * a later option can never be shadowed by a prefix. */
static const char *abbreviated(int argc, char **argv)
{
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        size_t n;
        bool found = false;

        if (strcmp(a, "--") == 0)
            break;
        if (strncmp(a, "--", 2) != 0)
            continue;
        n = strcspn(a + 2, "=");
        for (const struct option *o = opts; o->name != NULL; o++)
            if (strlen(o->name) == n && strncmp(o->name, a + 2, n) == 0)
                found = true;
        if (!found)
            return a;
    }
    return NULL;
}

struct check_out {
    const char *prog;
    const char *path;
    unsigned warnings;
};

/* --check-config prints a problem as a config problem, with the file. */
static void print_problem(bool error, const char *message, void *arg)
{
    struct check_out *o = arg;

    if (!error)
        o->warnings++;
    fprintf(stderr, "%s: %s: %s%s\n", o->prog, o->path, error ? "" : "warning: ", message);
}

/* What a start would check beyond config_load(); the store, the sockets
 * and the lock are left alone. */
static int check_config(const char *prog, const char *path, const struct config *cfg)
{
    struct check_out out = {.prog = prog, .path = path};
    struct mtls_ctx *ctx;
    char expiry[32] = "an unknown date", warned[64] = "";
    struct tm tm;
    time_t t;

    if (node_check_start(cfg, &ctx, print_problem, &out) != 0)
        return NODE_EXIT_USAGE;
    if (out.warnings > 0)
        snprintf(warned, sizeof(warned), "; %u warning%s above", out.warnings,
                 out.warnings == 1 ? "" : "s");
    if (ctx == NULL) {
        printf("%s: configuration ok (node '%s'; no [tls]: replication and the admin API off%s)\n",
               path, cfg->node.id, warned);
        return NODE_EXIT_OK;
    }
    t = mtls_ctx_expiry(ctx);
    if (t >= 0 && gmtime_r(&t, &tm) != NULL)
        strftime(expiry, sizeof(expiry), "%Y-%m-%dT%H:%M:%SZ", &tm);
    printf("%s: configuration ok (node '%s'; tls certificate '%s' expires %s%s)\n", path,
           cfg->node.id, mtls_ctx_id(ctx), expiry, warned);
    mtls_ctx_unref(ctx);
    return NODE_EXIT_OK;
}

int node_main(enum node_role role, int argc, char **argv)
{
    const char *prog = role == NODE_ROLE_PRIMARY ? "smtpsync-primary" : "smtpsync-replica";
    const char *config_path = NULL, *bad;
    int log_level = -1, log_format = -1, c, rc;
    bool check_only = false;
    struct config_problems problems;
    struct config cfg;

    log_init(prog, LOG_LEVEL_INFO, LOG_FORMAT_TEXT);
    if ((bad = abbreviated(argc, argv)) != NULL)
        return usage_error(prog, "unknown option '%s'", bad);
    opterr = 0;
    optind = 1;
    while ((c = getopt_long(argc, argv, ":", opts, NULL)) != -1) {
        switch (c) {
        case OPT_CONFIG:
            config_path = optarg;
            break;
        case OPT_LOG_LEVEL:
            if ((log_level = log_level_parse(optarg)) < 0)
                return usage_error(prog, "--log-level: '%s' is not debug, info, warn or error",
                                   optarg);
            break;
        case OPT_LOG_FORMAT:
            if (strcmp(optarg, "text") == 0)
                log_format = LOG_FORMAT_TEXT;
            else if (strcmp(optarg, "json") == 0)
                log_format = LOG_FORMAT_JSON;
            else
                return usage_error(prog, "--log-format: '%s' is not text or json", optarg);
            break;
        case OPT_CHECK_CONFIG:
            check_only = true;
            break;
        case OPT_VERSION:
            printf("%s %s\n", prog, SMTPSYNC_VERSION);
            return NODE_EXIT_OK;
        case OPT_HELP:
            printf(USAGE_TEXT, prog, node_role_name(role));
            return NODE_EXIT_OK;
        case ':':
            return usage_error(prog, "option '%s' needs a value", argv[optind - 1]);
        default:
            return usage_error(prog, "unknown option '%s'", argv[optind - 1]);
        }
    }
    if (optind < argc)
        return usage_error(prog, "unexpected argument '%s'", argv[optind]);
    if (config_path == NULL)
        return usage_error(prog, "%s", "--config FILE is required");

    config_problems_init(&problems);
    if (config_load(config_path, &cfg, &problems) != 0) {
        for (size_t i = 0; i < problems.count; i++)
            fprintf(stderr, "%s: %s\n", prog, problems.lines[i]);
        if (problems.dropped > 0)
            fprintf(stderr, "%s: %s: ... and %zu more problems\n", prog, config_path,
                    problems.dropped);
        config_problems_free(&problems);
        config_clear(&cfg);
        return NODE_EXIT_USAGE;
    }
    config_problems_free(&problems);
    if (check_only) {
        rc = check_config(prog, config_path, &cfg);
        config_clear(&cfg);
        return rc;
    }

    struct node_params params = {
        .role = role,
        .progname = prog,
        .config_path = config_path,
        .cfg = &cfg,
        .log_level = log_level,
        .log_format = log_format,
    };
    rc = node_run(&params);
    config_clear(&cfg);
    return rc;
}
