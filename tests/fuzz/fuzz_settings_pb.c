/*
 * fuzz_settings_pb: a Settings message as it may arrive from a store file or,
 * later, a peer: unpack, decode within limits, validate, format every field,
 * and encode again.
 */
#include <stdint.h>
#include <string.h>
#include <time.h>

#include "settings_pb.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    struct settings_problems problems;
    struct settings s, copy;
    struct settings_pb view;
    Smtpsync__Settings *m;
    char buf[1024];

    m = smtpsync__settings__unpack(NULL, size, data);
    if (m == NULL)
        return 0;
    settings_init(&s);
    settings_init(&copy);
    memset(&problems, 0, sizeof(problems));
    if (settings_pb_decode(&s, m, &problems) == 0) {
        (void)settings_validate(&s, s.password, 1700000000, &problems);
        for (int f = 0; f < SETTINGS_F_COUNT; f++) {
            (void)settings_field_format(&s, (enum settings_field)f, buf, sizeof(buf));
            if (memchr(buf, '\0', sizeof(buf)) == NULL)
                __builtin_trap();
        }
        if (settings_copy(&copy, &s) == 0) {
            for (int f = 0; f < SETTINGS_F_COUNT; f++)
                if (settings_field_differs(&s, &copy, (enum settings_field)f))
                    __builtin_trap();
        }
        if (settings_pb_view(&view, &s, SETTINGS_PB_SECRET_PLAIN) == 0)
            (void)smtpsync__settings__get_packed_size(&view.msg);
    }
    settings_clear(&s);
    settings_clear(&copy);
    smtpsync__settings__free_unpacked(m, NULL);
    return 0;
}
