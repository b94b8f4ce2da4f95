// pkv_status_string, pkv_last_error_message, pkv_last_cuda_error.
#include "api/error_state.h"

namespace pkv {
namespace api {

namespace {
thread_local std::string t_message;
thread_local int t_cuda_error = 0;
}  // namespace

void clear_last_error() {
    t_message.clear();
    t_cuda_error = 0;
}

void set_last_error(const char *function, const std::string &message, int cuda_error) {
    try {
        t_message = std::string(function) + ": " + message;
    } catch (...) {
        t_message.clear();  // out of memory while reporting: leave the message empty
    }
    t_cuda_error = cuda_error;
}

}  // namespace api
}  // namespace pkv

extern "C" {

PKV_API const char *pkv_status_string(pkv_status status) {
    switch (status) {
        case PKV_SUCCESS: return "PKV_SUCCESS";
        case PKV_ERROR_INVALID_ARGUMENT: return "PKV_ERROR_INVALID_ARGUMENT";
        case PKV_ERROR_INVALID_STATE: return "PKV_ERROR_INVALID_STATE";
        case PKV_ERROR_OUT_OF_HOST_MEMORY: return "PKV_ERROR_OUT_OF_HOST_MEMORY";
        case PKV_ERROR_OUT_OF_DEVICE_MEMORY: return "PKV_ERROR_OUT_OF_DEVICE_MEMORY";
        case PKV_ERROR_OUT_OF_BLOCKS: return "PKV_ERROR_OUT_OF_BLOCKS";
        case PKV_ERROR_NOT_SUPPORTED: return "PKV_ERROR_NOT_SUPPORTED";
        case PKV_ERROR_CUDA: return "PKV_ERROR_CUDA";
        case PKV_ERROR_STRUCT_SIZE: return "PKV_ERROR_STRUCT_SIZE";
        case PKV_ERROR_BUSY: return "PKV_ERROR_BUSY";
        case PKV_ERROR_INTERNAL: return "PKV_ERROR_INTERNAL";
        default: return "PKV_STATUS_UNKNOWN";
    }
}

PKV_API const char *pkv_last_error_message(void) { return pkv::api::t_message.c_str(); }

PKV_API int pkv_last_cuda_error(void) { return pkv::api::t_cuda_error; }

}  // extern "C"
