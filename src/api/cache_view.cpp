// pkv_cache_view_init, pkv_cache_view_check.

#include "api/error_state.h"
#include "api/struct_size.h"
#include "api/validate.h"

using namespace pkv;
using namespace pkv::api;

extern "C" {

PKV_API pkv_status pkv_cache_view_init(pkv_cache_view *view, size_t struct_size) {
    return guarded("pkv_cache_view_init", [&] {
        init_versioned(view, struct_size, "view", "pkv_cache_view");
    });
}

PKV_API pkv_status pkv_cache_view_check(const pkv_cache_view *view) {
    return guarded("pkv_cache_view_check", [&] {
        pkv_cache_view normalized;
        checked_cache(view, normalized);
    });
}

}  // extern "C"
