/* fuzz_pem: certificate bundles as an operator might import them. */
#include <stdint.h>
#include <string.h>

#include <openssl/x509.h>

#include "pem.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    STACK_OF(X509) *certs = NULL;
    char why[256], buf[512];

    if (pem_read_certs((const char *)data, size, &certs, why, sizeof(why)) != 0) {
        /* The reason is always a terminated string. */
        if (memchr(why, '\0', sizeof(why)) == NULL)
            __builtin_trap();
        return 0;
    }
    for (int i = 0; i < sk_X509_num(certs); i++) {
        X509 *c = sk_X509_value(certs, i);

        pem_subject(c, buf, sizeof(buf));
        buf[0] = '\0';
        pem_names(c, buf, sizeof(buf));
        (void)pem_not_after(c);
        (void)pem_not_before(c);
        (void)pem_is_leaf(c);
        (void)pem_matches_host(c, "mail.test", SYNTAX_HOST_DNS);
        (void)pem_matches_host(c, "127.0.0.1", SYNTAX_HOST_IPV4);
    }
    sk_X509_pop_free(certs, X509_free);
    return 0;
}
