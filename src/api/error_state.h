// Thread-local last error and the guard every extern "C" entry point runs its body in:
// exceptions become a pkv_status plus "<function>: <message>"; nothing unwinds across the ABI.
#pragma once

#include <new>
#include <string>

#include "core/error.h"
#include "pagedkv.h"

namespace pkv {
namespace api {

void clear_last_error();
void set_last_error(const char *function, const std::string &message, int cuda_error = 0);

template <typename Body> pkv_status guarded(const char *function, Body &&body) noexcept {
    try {
        clear_last_error();
        body();
        return PKV_SUCCESS;
    } catch (const Error &e) {
        set_last_error(function, e.what(), e.cuda_error);
        return e.status;
    } catch (const std::bad_alloc &) {
        set_last_error(function, "out of host memory");
        return PKV_ERROR_OUT_OF_HOST_MEMORY;
    } catch (const std::exception &e) {
        set_last_error(function, std::string("internal error: ") + e.what());
        return PKV_ERROR_INTERNAL;
    } catch (...) {
        set_last_error(function, "internal error: unknown exception");
        return PKV_ERROR_INTERNAL;
    }
}

}  // namespace api
}  // namespace pkv
