/*
 * pagedkv.h compiled as strict C99 (-std=c99 -Wall -Wextra -pedantic -Werror
 * -Wstrict-prototypes), included twice, with every macro used and every function bound to a
 * pointer of its exact type (so a signature change fails this build). It then runs a few
 * calls that need no device. Exit status 0 = pass.
 */
#include <pagedkv.h>
#include <pagedkv.h> /* the include guard must make this a no-op */

#include <stdio.h>
#include <string.h>

#if !defined(PAGEDKV_H) || !defined(PKV_API)
#error "pagedkv.h must define its include guard and PKV_API"
#endif
#if defined(__CUDA_RUNTIME_H__) || defined(__DRIVER_TYPES_H__) || defined(__cuda_cuda_h__)
#error "pagedkv.h must not pull in a CUDA header"
#endif
#if !PKV_VERSION_CHECK(0, 1, 0)
#error "PKV_VERSION_CHECK(0, 1, 0) must hold for this header"
#endif
#if PKV_VERSION_CHECK(PKV_VERSION_MAJOR + 1, 0, 0)
#error "PKV_VERSION_CHECK must reject a newer major version"
#endif
#if PKV_VERSION != PKV_VERSION_MAJOR * 10000 + PKV_VERSION_MINOR * 100 + PKV_VERSION_PATCH
#error "PKV_VERSION encoding changed"
#endif
#if PKV_MAX_DIMS != 6
#error "PKV_MAX_DIMS changed"
#endif

/* Every exported function, with its exact signature. */
static uint32_t (*const f_version)(void) = pkv_version;
static const char *(*const f_version_string)(void) = pkv_version_string;
static const char *(*const f_build_info)(void) = pkv_build_info;
static const char *(*const f_status_string)(pkv_status) = pkv_status_string;
static const char *(*const f_last_error_message)(void) = pkv_last_error_message;
static int (*const f_last_cuda_error)(void) = pkv_last_cuda_error;
static size_t (*const f_dtype_size_bits)(pkv_dtype) = pkv_dtype_size_bits;
static const char *(*const f_dtype_name)(pkv_dtype) = pkv_dtype_name;
static pkv_status (*const f_cuda_device_count)(int32_t *) = pkv_cuda_device_count;
static pkv_status (*const f_alloc)(void **, pkv_device, size_t) = pkv_alloc;
static pkv_status (*const f_free)(void *, pkv_device) = pkv_free;
static pkv_status (*const f_copy)(void *, pkv_device, const void *, pkv_device, size_t,
                                  pkv_stream) = pkv_copy;
static pkv_status (*const f_stream_synchronize)(pkv_stream) = pkv_stream_synchronize;
static pkv_status (*const f_cache_view_init)(pkv_cache_view *, size_t) = pkv_cache_view_init;
static pkv_status (*const f_cache_view_check)(const pkv_cache_view *) = pkv_cache_view_check;
static pkv_status (*const f_write_kv)(const pkv_cache_view *, const pkv_tensor *,
                                      const pkv_tensor *, const pkv_tensor *, int64_t *,
                                      pkv_stream) = pkv_write_kv;
static pkv_status (*const f_gather_kv)(const pkv_tensor *, const pkv_tensor *,
                                       const pkv_cache_view *, const pkv_tensor *,
                                       const pkv_tensor *, const pkv_tensor *, int64_t *,
                                       pkv_stream) = pkv_gather_kv;

static int failures = 0;
#define EXPECT(cond)                                                               \
    do {                                                                           \
        if (!(cond)) {                                                             \
            fprintf(stderr, "%s:%d: expected %s\n", __FILE__, __LINE__, #cond);    \
            ++failures;                                                            \
        }                                                                          \
    } while (0)

int main(void) {
    const void *table[17];
    size_t i;
    pkv_cache_view view = PKV_CACHE_VIEW_INIT;
    pkv_cache_view by_function;
    pkv_tensor tensor;
    pkv_device cpu = {PKV_DEVICE_CPU, 0};
    pkv_stream stream = NULL;
    int32_t count = -1;

    /* Function pointers must all be non-NULL (they resolve against libpagedkv). */
    table[0] = (const void *)&f_version;
    table[1] = (const void *)&f_version_string;
    table[2] = (const void *)&f_build_info;
    table[3] = (const void *)&f_status_string;
    table[4] = (const void *)&f_last_error_message;
    table[5] = (const void *)&f_last_cuda_error;
    table[6] = (const void *)&f_dtype_size_bits;
    table[7] = (const void *)&f_dtype_name;
    table[8] = (const void *)&f_cuda_device_count;
    table[9] = (const void *)&f_alloc;
    table[10] = (const void *)&f_free;
    table[11] = (const void *)&f_copy;
    table[12] = (const void *)&f_stream_synchronize;
    table[13] = (const void *)&f_cache_view_init;
    table[14] = (const void *)&f_cache_view_check;
    table[15] = (const void *)&f_write_kv;
    table[16] = (const void *)&f_gather_kv;
    for (i = 0; i < sizeof table / sizeof table[0]; ++i) EXPECT(table[i] != NULL);
    EXPECT(f_version != NULL && f_write_kv != NULL && f_gather_kv != NULL && f_alloc != NULL &&
           f_free != NULL && f_copy != NULL && f_stream_synchronize != NULL &&
           f_cache_view_check != NULL && f_last_cuda_error != NULL && f_build_info != NULL);

    /* Version macros agree with the library. */
    EXPECT(pkv_version() == PKV_VERSION);
    EXPECT(strcmp(pkv_version_string(), PKV_VERSION_STRING) == 0);
    EXPECT(strlen(PKV_ABI_VERSION) > 0);
    EXPECT(pkv_build_info() != NULL && strstr(pkv_build_info(), "version=") != NULL);

    /* The _INIT macro and the _init() function agree. */
    EXPECT(view.struct_size == sizeof(pkv_cache_view));
    EXPECT(view.format == PKV_CACHE_FORMAT_UNSET && view.device.type == PKV_DEVICE_CPU);
    EXPECT(view.k_data == NULL && view.v_data == NULL && view.k_scale == NULL);
    memset(&by_function, 0xA5, sizeof by_function);
    EXPECT(pkv_cache_view_init(&by_function, sizeof by_function) == PKV_SUCCESS);
    EXPECT(by_function.struct_size == sizeof(pkv_cache_view));
    EXPECT(by_function.flags == 0 && by_function.format == PKV_CACHE_FORMAT_UNSET);
    EXPECT(by_function.num_blocks == 0 && by_function.k_data == NULL);
    EXPECT(pkv_cache_view_init(NULL, sizeof by_function) == PKV_ERROR_INVALID_ARGUMENT);

    /* Status / dtype helpers: static strings, never NULL. */
    EXPECT(strcmp(pkv_status_string(PKV_SUCCESS), "PKV_SUCCESS") == 0);
    EXPECT(strcmp(pkv_status_string(PKV_STATUS_FORCE32), "PKV_STATUS_UNKNOWN") == 0);
    EXPECT(pkv_dtype_size_bits(PKV_DTYPE_BF16) == 16);
    EXPECT(strcmp(pkv_dtype_name(PKV_DTYPE_FP8_E4M3), "fp8_e4m3") == 0);
    EXPECT(pkv_last_error_message() != NULL);
    EXPECT(pkv_cuda_device_count(&count) == PKV_SUCCESS && count >= 0);

    /* An invalid call fails with a message and no crash. */
    memset(&tensor, 0, sizeof tensor);
    EXPECT(pkv_cache_view_check(&view) != PKV_SUCCESS);
    EXPECT(pkv_last_error_message()[0] != '\0');
    EXPECT(pkv_write_kv(NULL, &tensor, NULL, &tensor, NULL, stream) ==
           PKV_ERROR_INVALID_ARGUMENT);
    EXPECT(pkv_free(NULL, cpu) == PKV_SUCCESS);

    printf("header_c99: pagedkv %s (%s): %s\n", PKV_VERSION_STRING, pkv_build_info(),
           failures ? "FAILED" : "ok");
    return failures ? 1 : 0;
}
