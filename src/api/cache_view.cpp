// pkv_cache_view_init, pkv_cache_view_check.
#include <cstring>

#include "api/error_state.h"
#include "api/validate.h"

using namespace pkv;
using namespace pkv::api;

extern "C" {

PKV_API pkv_status pkv_cache_view_init(pkv_cache_view *view, size_t struct_size) {
    return guarded("pkv_cache_view_init", [&] {
        require(view != nullptr, PKV_ERROR_INVALID_ARGUMENT, "view is NULL");
        require(struct_size >= sizeof(pkv_cache_view), PKV_ERROR_STRUCT_SIZE, "struct_size ", struct_size,
                " is smaller than pkv_cache_view (", sizeof(pkv_cache_view), ")");
        std::memset(view, 0, struct_size);
        view->struct_size = struct_size;
    });
}

PKV_API pkv_status pkv_cache_view_check(const pkv_cache_view *view) {
    return guarded("pkv_cache_view_check", [&] {
        pkv_cache_view normalized;
        checked_cache(view, normalized);
    });
}

}  // extern "C"
