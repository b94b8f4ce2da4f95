// pkv_cuda_device_count, pkv_alloc, pkv_free, pkv_copy, pkv_stream_synchronize.
#include <cstdlib>
#include <cstring>

#include "api/error_state.h"
#include "api/validate.h"
#include "core/ops.h"

using namespace pkv;
using namespace pkv::api;

namespace {

void check_device(const char *name, pkv_device d) {
    require((is_host_device(d) || d.type == PKV_DEVICE_CUDA) && d.id >= 0, PKV_ERROR_INVALID_ARGUMENT, name,
            " is invalid (", device_string(d), ")");
    require(d.type == PKV_DEVICE_CPU || cuda_available_in_build(), PKV_ERROR_NOT_SUPPORTED, name, " is ",
            device_string(d), " but this library was built without CUDA");
}

}  // namespace

extern "C" {

PKV_API pkv_status pkv_cuda_device_count(int32_t *count) {
    return guarded("pkv_cuda_device_count", [&] {
        require(count != nullptr, PKV_ERROR_INVALID_ARGUMENT, "count is NULL");
        *count = cuda_available_in_build() ? cuda_device_count() : 0;
    });
}

PKV_API pkv_status pkv_alloc(void **out, pkv_device device, size_t bytes) {
    return guarded("pkv_alloc", [&] {
        require(out != nullptr, PKV_ERROR_INVALID_ARGUMENT, "out is NULL");
        *out = nullptr;
        check_device("device", device);
        if (bytes == 0) return;
        if (device.type == PKV_DEVICE_CPU) {
            const size_t rounded = (bytes + 255) / 256 * 256;
            require(rounded >= bytes, PKV_ERROR_OUT_OF_HOST_MEMORY, "cannot allocate ", bytes, " bytes");
            *out = std::aligned_alloc(256, rounded);
            require(*out != nullptr, PKV_ERROR_OUT_OF_HOST_MEMORY, "cannot allocate ", bytes, " bytes");
        } else {
            *out = cuda_alloc(device, bytes);
        }
    });
}

PKV_API pkv_status pkv_free(void *ptr, pkv_device device) {
    return guarded("pkv_free", [&] {
        if (ptr == nullptr) return;
        check_device("device", device);
        if (device.type == PKV_DEVICE_CPU) std::free(ptr);
        else cuda_free(ptr, device);
    });
}

PKV_API pkv_status pkv_copy(void *dst, pkv_device dst_device, const void *src, pkv_device src_device,
                            size_t bytes, pkv_stream stream) {
    return guarded("pkv_copy", [&] {
        check_device("dst_device", dst_device);
        check_device("src_device", src_device);
        if (bytes == 0) return;
        require(dst != nullptr && src != nullptr, PKV_ERROR_INVALID_ARGUMENT, "dst or src is NULL");
        if (dst_device.type == PKV_DEVICE_CPU && src_device.type == PKV_DEVICE_CPU) std::memcpy(dst, src, bytes);
        else cuda_copy(dst, src, bytes, stream);
    });
}

PKV_API pkv_status pkv_stream_synchronize(pkv_stream stream) {
    return guarded("pkv_stream_synchronize", [&] {
        if (cuda_available_in_build()) cuda_stream_synchronize(stream);
    });
}

}  // extern "C"
