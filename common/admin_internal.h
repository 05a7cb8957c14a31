/*
 * admin_internal: what the files of the admin module share (admin.c: the
 * dispatch, roles and the node's verbs; admin_settings.c: the settings and
 * revision verbs; admin_draft.c: draft editing shared with smtpsyncctl's
 * local mode). Not for use outside the module.
 */
#ifndef SMTPSYNC_ADMIN_INTERNAL_H
#define SMTPSYNC_ADMIN_INTERNAL_H

#include <stdbool.h>
#include <stdint.h>

#include "admin.h"

/* protobuf-c's default for an unset string: never freed by free_unpacked. */
#define ADMIN_EMPTY ((char *)(uintptr_t)protobuf_c_empty_string)

/* One request being answered. For an asynchronous verb the handler copies
 * it into its own pending struct: the caller's copy lives only during
 * admin_handle(). */
struct admin_req {
    struct store *st;
    const struct admin_hooks *h;
    enum admin_role role;
    const char *actor;
    admin_reply_cb reply;
    void *arg;
};

/*
 * A reply under construction. Every part of `r` is malloc'd (strings,
 * bytes, sub-messages, arrays), so that smtpsync__admin_reply__free_unpacked
 * (r, NULL) releases it. An allocation failure sets `nomem`; admin__send()
 * then answers -ENOMEM instead.
 */
struct admin_out {
    Smtpsync__AdminReply *r;
    bool nomem;
};

/* Starts a reply (code 0). false when out of memory (o->nomem set). */
bool admin__out_init(struct admin_out *o);
/* Sets the code and the one-line error text. */
void admin__out_error(struct admin_out *o, int code, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
/* Appends every problem of `p` (with only_incomplete: only those). */
void admin__out_problems(struct admin_out *o, const struct settings_problems *p,
                         bool only_incomplete);
/* Appends `s` to reply.settings with its password masked (admin.h). */
void admin__out_settings(struct admin_out *o, const struct settings *s);
/* Hands the reply to the caller's callback, then frees it. */
void admin__send(struct admin_out *o, admin_reply_cb reply, void *arg);

/* Checks that `rev` (named `what`: "R1", "--revision") is 1..head; else
 * the error of smtpsyncctl's local mode and false. */
bool admin__revision_ok(struct admin_out *o, const char *what, uint64_t rev, uint64_t head);

/* The error of a store call about revisions, as local mode prints it. */
void admin__revision_error(struct admin_out *o, const char *doing, int err, uint64_t base);

/* Settings and revision verbs (admin_settings.c); each answers through
 * admin__send() before it returns. */
void admin__settings_set(const struct admin_req *rq, const Smtpsync__SettingsSet *m);
void admin__import_cert(const struct admin_req *rq, const Smtpsync__ImportCert *m);
void admin__settings_show(const struct admin_req *rq, const Smtpsync__SettingsShow *m);
void admin__settings_save(const struct admin_req *rq, const Smtpsync__SettingsSave *m);
void admin__settings_discard(const struct admin_req *rq, const Smtpsync__SettingsDiscard *m);
void admin__history(const struct admin_req *rq, const Smtpsync__HistoryQuery *m);
void admin__diff(const struct admin_req *rq, const Smtpsync__DiffQuery *m);
void admin__rollback(const struct admin_req *rq, const Smtpsync__RollbackRequest *m);

#endif
