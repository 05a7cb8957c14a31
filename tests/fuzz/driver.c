/*
 * driver: runs a fuzz target over files named on the command line, so each
 * target's corpus is replayed by CTest (under ASan+UBSan) without libFuzzer.
 * Built with -fsanitize=fuzzer instead, the target links libFuzzer's main.
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int main(int argc, char **argv)
{
    int n = 0;

    for (int i = 1; i < argc; i++) {
        FILE *f = fopen(argv[i], "rb");
        uint8_t *buf = NULL;
        size_t cap = 0, len = 0, r;

        if (f == NULL) {
            perror(argv[i]);
            return 1;
        }
        do {
            if (len == cap) {
                uint8_t *grown = realloc(buf, cap = cap * 2 + 4096);
                if (grown == NULL) {
                    free(buf);
                    fclose(f);
                    return 1;
                }
                buf = grown;
            }
            r = fread(buf + len, 1, cap - len, f);
            len += r;
        } while (r > 0);
        fclose(f);
        LLVMFuzzerTestOneInput(buf, len);
        free(buf);
        n++;
    }
    printf("%d passed, 0 failed\n", n);
    return 0;
}
