// pkv_default_rotation_signs.
#include "api/error_state.h"
#include "api/validate.h"
#include "core/rotation.h"

using namespace pkv;
using namespace pkv::api;

extern "C" {

PKV_API pkv_status pkv_default_rotation_signs(float *out, int64_t n) {
    return guarded("pkv_default_rotation_signs", [&] {
        require(n >= 0, PKV_ERROR_INVALID_ARGUMENT, "n must be >= 0, got ", n);
        require(n == 0 || out != nullptr, PKV_ERROR_INVALID_ARGUMENT, "out is NULL");
        for (int64_t i = 0; i < n; ++i) out[i] = default_rotation_sign(i);
    });
}

}  // extern "C"
