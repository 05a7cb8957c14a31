/*
 * fuzz_settings_set: text values for every field, as they come from the
 * command line: the first byte picks the field, the rest is the value.
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "settings.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    struct settings_problems problems;
    struct settings s;
    char *value, buf[1024];
    enum settings_field f;

    if (size < 1)
        return 0;
    f = (enum settings_field)(data[0] % SETTINGS_F_COUNT);
    value = malloc(size);
    if (value == NULL)
        return 0;
    memcpy(value, data + 1, size - 1);
    value[size - 1] = '\0';

    settings_init(&s);
    memset(&problems, 0, sizeof(problems));
    if (settings_set_field(&s, f, value, &problems) == 0) {
        /* What was accepted never carries a line break into the record. */
        if (settings_field_format(&s, f, buf, sizeof(buf)) == 0 && strpbrk(buf, "\r\n"))
            __builtin_trap();
    }
    (void)settings_set_certificate(&s, value, strlen(value), &problems);
    (void)settings_validate(&s, NULL, 1700000000, &problems);
    settings_clear(&s);
    free(value);
    return 0;
}
