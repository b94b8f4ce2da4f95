/*
 * pagedkv_xla.h compiled as strict C (-std=c11 -pedantic -Werror), included twice and together
 * with XLA's own xla/ffi/api/c_api.h: each handler must bind to a pointer of XLA's handler type
 * (XLA_FFI_Handler), so a signature drift fails this build, and linking checks that the library
 * exports every handler. Built only when libpagedkv has the XLA FFI handlers. Exit status 0 = pass.
 */
#include <pagedkv_xla.h>
#include <pagedkv_xla.h> /* the include guard must make this a no-op */

#include "xla/ffi/api/c_api.h"

#include <stdio.h>
#include <string.h>

#if !defined(PAGEDKV_XLA_H) || !defined(PAGEDKV_H)
#error "pagedkv_xla.h must define its include guard and include pagedkv.h"
#endif

int main(void) {
    XLA_FFI_Handler *handlers[] = {pkv_xla_write_kv_cpu,  pkv_xla_write_kv_cuda,  pkv_xla_write_mla_cpu,
                                   pkv_xla_write_mla_cuda, pkv_xla_gather_kv_cpu, pkv_xla_gather_kv_cuda};
    unsigned bits[] = {PKV_XLA_ARG_SEQ_STARTS, PKV_XLA_ARG_K_SCALE, PKV_XLA_ARG_V_SCALE, PKV_XLA_ARG_SCALE_PLANES,
                       PKV_XLA_ARG_ROTATION_SIGNS, PKV_XLA_ARG_OUT_INIT};
    unsigned seen = 0;
    size_t i;
    for (i = 0; i < sizeof handlers / sizeof handlers[0]; ++i) {
        if (handlers[i] == NULL) {
            printf("FAIL: handler %u is NULL\n", (unsigned)i);
            return 1;
        }
    }
    for (i = 0; i < sizeof bits / sizeof bits[0]; ++i) { /* pinned, distinct single bits */
        if (bits[i] != (1u << i) || (seen & bits[i])) {
            printf("FAIL: PKV_XLA_ARG bit %u changed\n", (unsigned)i);
            return 1;
        }
        seen |= bits[i];
    }
    if (strstr(pkv_build_info(), "xla_ffi=1") == NULL) {
        printf("FAIL: pkv_build_info() does not say xla_ffi=1: %s\n", pkv_build_info());
        return 1;
    }
    printf("pagedkv_xla.h: 6 handlers bound to XLA_FFI_Handler, %s\n", pkv_build_info());
    return 0;
}
