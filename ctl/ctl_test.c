/*
 * ctl_test: `settings test`, Test Connection. In local mode the settings of
 * an instance (its draft, else its saved record) are read from the local
 * store with the password unsealed and tried from this machine by
 * conntest. In remote mode the daemon has the instance's own node run the
 * test (admin.h) and sends back the result. Either way the steps are
 * printed by the same code, for people or as JSON.
 */
#include <errno.h>
#include <inttypes.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "conntest.h"
#include "ctl.h"
#include "ctl_output.h"
#include "error.h"
#include "settings.h"
#include "store.h"
#include "syntax.h"

const char ctl_settings_test_usage[] =
    "usage: smtpsyncctl [global options] settings test --instance ID [--to ADDR] [--saved]\n"
    "                   [--json]\n"
    "\n"
    "Test Connection: tries the settings of instance ID from this machine and\n"
    "sends a short test mail. Uses the draft, or the saved settings when there\n"
    "is no draft (or with --saved). Prints every step (resolve, connect, TLS\n"
    "handshake, certificate, greeting, EHLO, STARTTLS, AUTH, MAIL, RCPT, DATA,\n"
    "QUIT) with its time; a failed step is followed by the server's reply and a\n"
    "diagnosis. Exit status 0 when the server accepted the test mail, 1 when a\n"
    "step failed.\n"
    "\n"
    "  --instance ID   instance whose settings are tried (required)\n"
    "  --to ADDR       send the test mail to ADDR instead of the test_address\n"
    "  --saved         try the saved settings even if there is a draft\n"
    "  --json          print {\"instance\", \"node\", \"ok\", \"steps\": [{\"step\", \"ok\",\n"
    "                  \"elapsed_ms\", \"detail\", \"server_reply\", \"diagnosis\"}]}\n"
    "  --help          print this help\n";

enum {
    OPT_HELP = 'h',
    OPT_INSTANCE = 256,
    OPT_TO,
    OPT_SAVED,
    OPT_JSON,
};

/* The TestResult as JSON (the shape in the usage text); NULL when out of
 * memory. */
static cJSON *result_json(const Smtpsync__TestResult *r)
{
    cJSON *doc = cJSON_CreateObject(), *steps = NULL;

    /* ctl_output_json_add() owns what it is given, added or not. */
    if (doc == NULL || !ctl_output_json_add(doc, "instance", ctl_output_json_string(r->instance)) ||
        !ctl_output_json_add(doc, "node", ctl_output_json_string(r->node)) ||
        !ctl_output_json_add(doc, "ok", cJSON_CreateBool(r->ok)) ||
        !ctl_output_json_add(doc, "steps", steps = cJSON_CreateArray()))
        goto fail;
    for (size_t i = 0; i < r->n_steps; i++) {
        const Smtpsync__TestStep *st = r->steps[i];
        cJSON *o = cJSON_CreateObject();

        if (o == NULL || !cJSON_AddItemToArray(steps, o)) {
            cJSON_Delete(o);
            goto fail;
        }
        if (!ctl_output_json_add(o, "step", cJSON_CreateString(conntest_step_name(st->kind))) ||
            !ctl_output_json_add(o, "ok", cJSON_CreateBool(st->ok)) ||
            !ctl_output_json_add(o, "elapsed_ms",
                                 cJSON_CreateNumber((double)st->elapsed_us / 1000.0)) ||
            !ctl_output_json_add(o, "detail", ctl_output_json_string(st->detail)) ||
            !ctl_output_json_add(o, "server_reply", ctl_output_json_string(st->server_reply)) ||
            !ctl_output_json_add(o, "diagnosis", ctl_output_json_string(st->diagnosis)))
            goto fail;
    }
    return doc;

fail:
    cJSON_Delete(doc);
    return NULL;
}

/*
 * Reads the settings to try, password unsealed: the draft unless --saved,
 * else the saved record. *what names them for the output. Prints any
 * error; returns the exit status.
 */
static int load(struct ctl *ctl, const char *instance, bool saved, const struct store_info *info,
                struct settings *s, char *what, size_t whatlen)
{
    char q[96];
    int err = ERROR_NOT_FOUND;

    ctl_quote(instance, q, sizeof(q));
    if (!saved) {
        err = store_draft_get(ctl->store, instance, STORE_UNSEAL, s);
        if (err == 0 && info->revision == 0)
            snprintf(what, whatlen, "draft, nothing saved yet");
        else if (err == 0)
            snprintf(what, whatlen, "draft on revision %" PRIu64, info->revision);
    }
    if (err == ERROR_NOT_FOUND) {
        err = store_get(ctl->store, instance, 0, STORE_UNSEAL, s);
        if (err == 0)
            snprintf(what, whatlen, "revision %" PRIu64, info->revision);
    }
    if (err == 0)
        return CTL_EXIT_OK;
    if (err == ERROR_NOT_FOUND)
        ctl_errorf(saved ? "instance %s has no saved settings"
                         : "instance %s has no settings: neither a draft nor saved ones",
                   q);
    else
        ctl_errorf("cannot read the settings of instance %s: %s%s", q, error_str(err),
                   err == ERROR_TAMPERED ? " (is this the node key the store was written with? "
                                           "see --key-file)"
                                         : "");
    return CTL_EXIT_FAIL;
}

/* The steps, for people or as JSON; the exit status of the test. */
static int print_result(struct ctl *ctl, const Smtpsync__TestResult *result)
{
    if (ctl->json) {
        if (ctl_output_json_print(result_json(result)) < 0)
            return CTL_EXIT_FAIL;
    } else {
        conntest_print(stdout, result);
    }
    return result->ok ? CTL_EXIT_OK : CTL_EXIT_FAIL;
}

/*
 * The test through a daemon. The reply holds the draft tried, when it was
 * a draft, and the revision it was on, so the header names them as in
 * local mode; the node in it is where the test ran.
 */
static int test_remote(struct ctl *ctl, const char *instance, const char *to, bool saved)
{
    Smtpsync__SettingsTestRequest m;
    Smtpsync__Frame f;
    Smtpsync__AdminReply *r = NULL;
    char what[96], q[96];
    int rc;

    smtpsync__settings_test_request__init(&m);
    m.instance = (char *)(uintptr_t)instance;
    if (to != NULL)
        m.to = (char *)(uintptr_t)to;
    m.saved = saved;
    smtpsync__frame__init(&f);
    f.body_case = SMTPSYNC__FRAME__BODY_SETTINGS_TEST;
    f.settings_test = &m;
    if ((rc = ctl_remote_ask(ctl, &f, CTL_REPLY_TIMEOUT_LONG_MS, false, &r)) != CTL_EXIT_OK)
        return rc;
    if (r->test == NULL) {
        ctl_errorf("the daemon sent no test result");
        rc = CTL_EXIT_FAIL;
        goto free_reply;
    }
    if (r->n_settings > 0 && r->revision == 0)
        snprintf(what, sizeof(what), "draft, nothing saved yet");
    else if (r->n_settings > 0)
        snprintf(what, sizeof(what), "draft on revision %" PRIu64, r->revision);
    else
        snprintf(what, sizeof(what), "revision %" PRIu64, r->revision);
    if (!ctl->json)
        printf("Test Connection: instance %s (%s) from %s\n", instance, what,
               ctl_quote(r->test->node != NULL ? r->test->node : "?", q, sizeof(q)));
    rc = print_result(ctl, r->test);
free_reply:
    smtpsync__admin_reply__free_unpacked(r, NULL);
    return rc;
}

int ctl_settings_test(struct ctl *ctl, int argc, char **argv)
{
    static const struct option opts[] = {
        {"instance", required_argument, NULL, OPT_INSTANCE},
        {"to", required_argument, NULL, OPT_TO},
        {"saved", no_argument, NULL, OPT_SAVED},
        {"json", no_argument, NULL, OPT_JSON},
        {"help", no_argument, NULL, OPT_HELP},
        {NULL, 0, NULL, 0},
    };
    const char *instance = NULL, *to = NULL;
    bool saved = false;
    struct store_info info;
    struct settings s;
    Smtpsync__TestResult *result = NULL;
    char q[96], why[200], what[96], node[256];
    int c, err, rc;

    optind = 0;
    while ((c = ctl_getopt(argc, argv, ":h", opts)) != -1) {
        switch (c) {
        case OPT_HELP:
            fputs(ctl_settings_test_usage, stdout);
            return CTL_EXIT_OK;
        case OPT_INSTANCE:
            instance = optarg;
            break;
        case OPT_TO:
            to = optarg;
            break;
        case OPT_SAVED:
            saved = true;
            break;
        case OPT_JSON:
            ctl->json = true;
            break;
        default:
            return ctl_usage(ctl_settings_test_usage);
        }
    }
    if (optind < argc)
        return ctl_usage_error(ctl_settings_test_usage, "settings test: unexpected argument '%s'",
                               ctl_quote(argv[optind], q, sizeof(q)));
    if (instance == NULL)
        return ctl_usage_error(ctl_settings_test_usage, "settings test: --instance ID is required");
    if (!settings_instance_valid(instance)) {
        ctl_errorf("--instance: invalid instance id '%s' (1-%d of A-Z a-z 0-9 . _ -, starting "
                   "with a letter or digit)",
                   ctl_quote(instance, q, sizeof(q)), SETTINGS_INSTANCE_MAX);
        return CTL_EXIT_USAGE;
    }
    if (to != NULL &&
        (strlen(to) > SETTINGS_ADDRESS_MAX || !syntax_mailbox_valid(to, why, sizeof(why)))) {
        if (strlen(to) > SETTINGS_ADDRESS_MAX)
            snprintf(why, sizeof(why), "longer than %d characters", SETTINGS_ADDRESS_MAX);
        return ctl_usage_error(ctl_settings_test_usage,
                               "settings test: --to '%s' is not a valid mail address: %s",
                               ctl_quote(to, q, sizeof(q)), why);
    }

    if (ctl_remote(ctl))
        return test_remote(ctl, instance, to, saved);
    if ((rc = ctl_store_open_info(ctl, &info)) != CTL_EXIT_OK)
        return rc;
    settings_init(&s);
    if ((rc = load(ctl, instance, saved, &info, &s, what, sizeof(what))) != CTL_EXIT_OK)
        goto clear_settings;
    rc = CTL_EXIT_FAIL;

    if (gethostname(node, sizeof(node)) < 0 || node[0] == '\0')
        snprintf(node, sizeof(node), "localhost");
    node[sizeof(node) - 1] = '\0';
    if (!ctl->json) {
        printf("Test Connection: instance %s (%s) from %s\n", instance, what,
               ctl_quote(node, q, sizeof(q)));
        fflush(stdout);
    }
    /* A server that closes while a command is written must fail the step,
     * not kill the process. */
    (void)signal(SIGPIPE, SIG_IGN);

    struct conntest_params params = {
        .settings = &s,
        .to = to,
        .node = node,
        .helo = NULL,
        .revision = what,
    };
    err = conntest_run(&params, &result);
    if (err < 0) {
        ctl_errorf("cannot run the test: %s", error_str(err));
        goto clear_settings;
    }
    rc = print_result(ctl, result);
    conntest_result_free(result);
clear_settings:
    settings_clear(&s);
    return rc;
}
