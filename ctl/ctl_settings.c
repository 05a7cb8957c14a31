/*
 * ctl_settings: the `settings` verbs show, save and discard, and the
 * dispatch of every `settings` subcommand (set and import-cert are in
 * ctl_settings_edit.c, test in ctl_test.c). On a local store or through a
 * daemon (remote mode): each verb parses its options once, then either
 * works on the store or sends one request, and prints the outcome with the
 * same code either way.
 */
#include <errno.h>
#include <inttypes.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "admin.h"
#include "ctl.h"
#include "ctl_output.h"
#include "error.h"
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
    "                   [--apply-to-replicas]\n"
    "\n"
    "Saves drafts (all of them, or those named) as one new revision, after\n"
    "checking each fully. Prints \"saved revision N\".\n"
    "\n"
    "  --instance ID        save only this instance's draft (may be repeated)\n"
    "  --comment TEXT       why, recorded in the history\n"
    "  --apply-to-replicas  also copy the primary instance's settings (its draft, else\n"
    "                       its saved ones; password and certificate included) to\n"
    "                       every replica instance of the membership, in the same\n"
    "                       revision\n"
    "  --json               print {\"revision\": N}\n"
    "  --help               print this help\n";

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

static int names_add(struct names *names, const char *id, int argc)
{
    if (!ctl_instance_ok(id))
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

enum {
    OPT_HELP = 'h',
    OPT_INSTANCE = 256,
    OPT_REVISION,
    OPT_DRAFT,
    OPT_JSON,
    OPT_COMMENT,
    OPT_APPLY,
};

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

/* The end of show: the JSON document (taken) or the text for nothing
 * shown. `revision` was asked for (0: now), `shown_rev` is what was shown. */
static int show_finish(struct show_ctx *sc, cJSON *doc, uint64_t revision, uint64_t shown_rev)
{
    if (doc != NULL) {
        if (!cJSON_AddItemToObject(doc, "revision",
                                   sc->draft || shown_rev == 0
                                       ? cJSON_CreateNull()
                                       : cJSON_CreateNumber((double)shown_rev)) ||
            !cJSON_AddBoolToObject(doc, "draft", sc->draft)) {
            cJSON_Delete(doc);
            ctl_errorf("cannot show the settings: %s", error_str(-ENOMEM));
            return CTL_EXIT_FAIL;
        }
        return ctl_output_json_print(doc) < 0 ? CTL_EXIT_FAIL : CTL_EXIT_OK;
    }
    if (sc->shown == 0)
        puts(sc->draft       ? "no drafts"
             : revision != 0 ? "no settings at that revision"
                             : "no settings saved yet");
    return CTL_EXIT_OK;
}

/* The JSON document of show, with its "instances" object in sc; NULL when
 * out of memory (printed). */
static cJSON *show_doc(struct show_ctx *sc)
{
    cJSON *doc = cJSON_CreateObject();

    sc->instances = cJSON_CreateObject();
    if (doc == NULL || sc->instances == NULL ||
        !cJSON_AddItemToObject(doc, "instances", sc->instances)) {
        cJSON_Delete(sc->instances);
        cJSON_Delete(doc);
        sc->instances = NULL;
        ctl_errorf("cannot show the settings: %s", error_str(-ENOMEM));
        return NULL;
    }
    return doc;
}

/* settings show through a daemon: one request per instance named (or one
 * for all), each record printed as local mode prints it. */
static int show_remote(struct ctl *ctl, const struct names *names, struct show_ctx *sc,
                       uint64_t revision)
{
    size_t n = names->n > 0 ? names->n : 1;
    uint64_t shown_rev = 0;
    cJSON *doc = NULL;
    int rc = CTL_EXIT_FAIL;

    if (ctl->json && (doc = show_doc(sc)) == NULL)
        return CTL_EXIT_FAIL;
    for (size_t i = 0; i < n; i++) {
        Smtpsync__SettingsShow m;
        Smtpsync__Frame f;
        Smtpsync__AdminReply *r = NULL;

        smtpsync__settings_show__init(&m);
        if (names->n > 0)
            m.instance = (char *)(uintptr_t)names->ids[i];
        m.revision = revision;
        m.draft = sc->draft;
        smtpsync__frame__init(&f);
        f.body_case = SMTPSYNC__FRAME__BODY_SETTINGS_SHOW;
        f.settings_show = &m;
        if (ctl_remote_ask(ctl, &f, 0, false, &r) != CTL_EXIT_OK)
            goto free_doc;
        shown_rev = r->revision;
        for (size_t k = 0; k < r->n_settings; k++) {
            struct settings s;
            int err;

            settings_init(&s);
            err = ctl_remote_settings(r->settings[k], &s);
            if (err == 0 && (err = show_one(&s, sc)) < 0)
                ctl_errorf("cannot show the settings: %s", error_str(err));
            settings_clear(&s);
            if (err < 0) {
                smtpsync__admin_reply__free_unpacked(r, NULL);
                goto free_doc;
            }
        }
        smtpsync__admin_reply__free_unpacked(r, NULL);
    }
    rc = show_finish(sc, doc, revision, shown_rev);
    doc = NULL;
free_doc:
    cJSON_Delete(doc);
    return rc;
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
    if (ctl_remote(ctl)) {
        rc = show_remote(ctl, &names, &sc, revision);
        goto free_names;
    }
    if ((rc = ctl_store_open_info(ctl, &info)) != CTL_EXIT_OK)
        goto free_names;
    if (revision_arg != NULL &&
        (rc = ctl_parse_revision("--revision", revision_arg, info.revision, ctl_settings_show_usage,
                                 &revision)) != CTL_EXIT_OK)
        goto free_names;
    rc = CTL_EXIT_FAIL;

    if (ctl->json && (doc = show_doc(&sc)) == NULL)
        goto free_names;

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

    rc = show_finish(&sc, doc, revision, revision != 0 ? revision : info.revision);
    doc = NULL;
    goto free_names;

render_error:
    ctl_revision_error("show the settings", err, info.base_revision);
free_doc:
    cJSON_Delete(doc);
free_names:
    free(names.ids);
    return rc;
}

/* --- settings save -------------------------------------------------------- */

/* Prints "saved revision N" or its JSON. */
static int print_saved(struct ctl *ctl, uint64_t revision)
{
    if (ctl->json) {
        cJSON *doc = cJSON_CreateObject();
        if (doc == NULL || cJSON_AddNumberToObject(doc, "revision", (double)revision) == NULL) {
            cJSON_Delete(doc);
            doc = NULL;
        }
        return ctl_output_json_print(doc) < 0 ? CTL_EXIT_FAIL : CTL_EXIT_OK;
    }
    printf("saved revision %" PRIu64 "\n", revision);
    return CTL_EXIT_OK;
}

/* The hooks of a local run of the admin module: this store is edited as
 * the primary's, whose id the membership names. */
static bool local_is_primary(void *arg)
{
    (void)arg;
    return true;
}

static void local_reply(void *arg, const Smtpsync__AdminReply *reply)
{
    Smtpsync__AdminReply **out = arg;
    size_t len = smtpsync__admin_reply__get_packed_size(reply);
    uint8_t *buf = malloc(len + 1);

    if (buf == NULL)
        return;
    smtpsync__admin_reply__pack(reply, buf);
    *out = smtpsync__admin_reply__unpack(NULL, len, buf);
    free(buf);
}

/*
 * settings save --apply-to-replicas on a local store: the admin module
 * does it (as the daemon would), with the primary's id from the
 * membership. *out as for a remote call.
 */
static int save_local_apply(struct ctl *ctl, Smtpsync__Frame *f, Smtpsync__AdminReply **out)
{
    char actor[STORE_ACTOR_MAX + 1], primary[SETTINGS_INSTANCE_MAX + 1] = "";
    Smtpsync__Membership *mb = NULL;
    int err;

    *out = NULL;
    err = store_repl_membership(ctl->store, &mb);
    if (err < 0) {
        ctl_errorf("cannot read the membership: %s", error_str(err));
        return CTL_EXIT_FAIL;
    }
    for (size_t i = 0; i < mb->n_members; i++)
        if (mb->members[i]->role == SMTPSYNC__ROLE__ROLE_PRIMARY)
            snprintf(primary, sizeof(primary), "%s", mb->members[i]->node);
    smtpsync__membership__free_unpacked(mb, NULL);
    if (primary[0] == '\0') {
        ctl_errorf("--apply-to-replicas: this store's membership names no primary (it is "
                   "written by smtpsync-primary; or use --server)");
        return CTL_EXIT_FAIL;
    }
    struct admin_hooks hooks = {.arg = NULL, .node_id = primary, .is_primary = local_is_primary};
    store_local_actor(actor, sizeof(actor));
    admin_handle(ctl->store, &hooks, ADMIN_ROLE_SUPER_ADMIN, actor, f, local_reply, out);
    if (*out == NULL) {
        ctl_errorf("cannot save: %s", error_str(-ENOMEM));
        return CTL_EXIT_FAIL;
    }
    return CTL_EXIT_OK;
}

/* settings save through a daemon, or --apply-to-replicas locally. */
static int save_admin(struct ctl *ctl, const struct names *names, const char *comment, bool apply)
{
    Smtpsync__SettingsSave m;
    Smtpsync__Frame f;
    Smtpsync__AdminReply *r = NULL;
    int rc;

    smtpsync__settings_save__init(&m);
    m.instances = (char **)(uintptr_t)names->ids;
    m.n_instances = names->n;
    m.comment = (char *)(uintptr_t)(comment != NULL ? comment : "");
    m.apply_to_replicas = apply;
    smtpsync__frame__init(&f);
    f.body_case = SMTPSYNC__FRAME__BODY_SETTINGS_SAVE;
    f.settings_save = &m;
    if (ctl_remote(ctl)) {
        rc = ctl_remote_ask(ctl, &f, 0, true, &r);
    } else {
        rc = save_local_apply(ctl, &f, &r);
        if (rc == CTL_EXIT_OK && r->code != 0) {
            rc = ctl_remote_fail(r, true);
            smtpsync__admin_reply__free_unpacked(r, NULL);
            r = NULL;
        }
    }
    if (rc != CTL_EXIT_OK)
        return rc;
    rc = print_saved(ctl, r->revision);
    smtpsync__admin_reply__free_unpacked(r, NULL);
    return rc;
}

static int settings_save(struct ctl *ctl, int argc, char **argv)
{
    static const struct option opts[] = {
        {"instance", required_argument, NULL, OPT_INSTANCE},
        {"comment", required_argument, NULL, OPT_COMMENT},
        {"apply-to-replicas", no_argument, NULL, OPT_APPLY},
        {"json", no_argument, NULL, OPT_JSON},
        {"help", no_argument, NULL, OPT_HELP},
        {NULL, 0, NULL, 0},
    };
    struct names names = {NULL, 0};
    struct settings_problems problems = {.count = 0, .dropped = 0};
    const char *comment = NULL;
    char actor[STORE_ACTOR_MAX + 1], q[96];
    uint64_t revision = 0;
    bool missing = false, apply = false;
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
        case OPT_APPLY:
            apply = true;
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
    if (ctl_remote(ctl) || apply) {
        if (!ctl_remote(ctl) && (rc = ctl_store_open(ctl, false)) != CTL_EXIT_OK)
            goto free_names;
        rc = save_admin(ctl, &names, comment, apply);
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
    rc = print_saved(ctl, revision);

free_names:
    free(names.ids);
    return rc;
}

/* --- settings discard ----------------------------------------------------- */

static void print_discarded(const char *instance, size_t n)
{
    if (instance != NULL)
        printf("discarded the draft of instance %s\n", instance);
    else
        printf("discarded %zu draft%s\n", n, n == 1 ? "" : "s");
}

/* The reply lists the drafts discarded. */
static int discard_remote(struct ctl *ctl, const char *instance)
{
    Smtpsync__SettingsDiscard m;
    Smtpsync__Frame f;
    Smtpsync__AdminReply *r = NULL;
    char *ids[1];
    int rc;

    smtpsync__settings_discard__init(&m);
    if (instance != NULL) {
        ids[0] = (char *)(uintptr_t)instance;
        m.instances = ids;
        m.n_instances = 1;
    }
    smtpsync__frame__init(&f);
    f.body_case = SMTPSYNC__FRAME__BODY_SETTINGS_DISCARD;
    f.settings_discard = &m;
    if ((rc = ctl_remote_ask(ctl, &f, 0, false, &r)) != CTL_EXIT_OK)
        return rc;
    print_discarded(instance, r->n_settings);
    smtpsync__admin_reply__free_unpacked(r, NULL);
    return CTL_EXIT_OK;
}

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
    if (instance != NULL && !ctl_instance_ok(instance))
        return CTL_EXIT_USAGE;
    if (ctl_remote(ctl))
        return discard_remote(ctl, instance);
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
    print_discarded(instance, info.ndrafts);
    return CTL_EXIT_OK;
}

/* --- dispatch ------------------------------------------------------------- */

static const struct {
    const char *name;
    ctl_verb_fn run;
} settings_verbs[] = {
    {"set", ctl_settings_set},     {"import-cert", ctl_settings_import_cert},
    {"show", settings_show},       {"save", settings_save},
    {"discard", settings_discard}, {"test", ctl_settings_test},
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
