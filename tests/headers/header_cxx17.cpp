// pagedkv.h compiled as C++17 (-Wall -Wextra -pedantic -Werror), included twice: the header
// must be usable from C++ unchanged (extern "C", no C-only constructs). Exit status 0 = pass.
#include <pagedkv.h>
#include <pagedkv.h>  // the include guard must make this a no-op

#include <cstdio>
#include <cstring>
#include <type_traits>

static_assert(PKV_VERSION_CHECK(0, 1, 0), "header older than 0.1.0");
static_assert(PKV_VERSION ==
                  PKV_VERSION_MAJOR * 10000 + PKV_VERSION_MINOR * 100 + PKV_VERSION_PATCH,
              "PKV_VERSION encoding changed");

// Public structs are plain C data that C++ can copy and zero-initialise.
static_assert(std::is_standard_layout<pkv_tensor>::value, "pkv_tensor layout");
static_assert(std::is_trivially_copyable<pkv_tensor>::value, "pkv_tensor copy");
static_assert(std::is_standard_layout<pkv_device>::value, "pkv_device layout");
static_assert(std::is_standard_layout<pkv_cache_view>::value, "pkv_cache_view layout");
static_assert(std::is_trivially_copyable<pkv_cache_view>::value, "pkv_cache_view copy");
// Enums are 32-bit (FORCE32) on every compiler.
static_assert(sizeof(pkv_status) == 4 && sizeof(pkv_dtype) == 4, "enum size");
static_assert(sizeof(pkv_device_type) == 4 && sizeof(pkv_cache_format) == 4, "enum size");
static_assert(sizeof(pkv_scale_mode) == 4, "enum size");
// The stream type is a pointer, exactly as cudaStream_t.
static_assert(std::is_pointer<pkv_stream>::value, "pkv_stream is a pointer");

// Signatures (C linkage functions taking the declared parameter types).
static_assert(std::is_same<decltype(&pkv_write_kv),
                           pkv_status (*)(const pkv_cache_view *, const pkv_tensor *,
                                          const pkv_tensor *, const pkv_tensor *, int64_t *,
                                          pkv_stream)>::value,
              "pkv_write_kv signature");
static_assert(std::is_same<decltype(&pkv_gather_kv),
                           pkv_status (*)(const pkv_tensor *, const pkv_tensor *,
                                          const pkv_cache_view *, const pkv_tensor *,
                                          const pkv_tensor *, const pkv_tensor *, int64_t *,
                                          pkv_stream)>::value,
              "pkv_gather_kv signature");

int main() {
    int failures = 0;
    auto expect = [&](bool ok, const char *what) {
        if (!ok) {
            std::fprintf(stderr, "header_cxx17: expected %s\n", what);
            ++failures;
        }
    };
    pkv_cache_view view = PKV_CACHE_VIEW_INIT;
    pkv_cache_view zeroed{};
    expect(view.struct_size == sizeof(pkv_cache_view), "PKV_CACHE_VIEW_INIT sets struct_size");
    expect(pkv_cache_view_init(&zeroed, sizeof zeroed) == PKV_SUCCESS, "pkv_cache_view_init");
    expect(zeroed.struct_size == view.struct_size, "init function agrees with the macro");
    expect(pkv_version() == PKV_VERSION, "pkv_version() == PKV_VERSION");
    expect(std::strcmp(pkv_version_string(), PKV_VERSION_STRING) == 0, "version string");
    expect(std::strcmp(pkv_status_string(PKV_ERROR_OUT_OF_BLOCKS), "PKV_ERROR_OUT_OF_BLOCKS") == 0,
           "status string");
    pkv_device cpu{PKV_DEVICE_CPU, 0};
    expect(pkv_free(nullptr, cpu) == PKV_SUCCESS, "pkv_free(NULL) is a no-op");
    std::printf("header_cxx17: pagedkv %s, ABI %s: %s\n", PKV_VERSION_STRING, PKV_ABI_VERSION,
                failures ? "FAILED" : "ok");
    return failures ? 1 : 0;
}
