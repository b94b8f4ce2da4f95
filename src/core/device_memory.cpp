#include "core/device_memory.h"

#include <cstdlib>

#include "core/cuda_runtime.h"
#include "core/error.h"
#include "core/ops.h"

namespace pkv {

void *alloc_on(pkv_device device, size_t bytes) {
    if (bytes == 0) return nullptr;
    if (device.type != PKV_DEVICE_CPU) return cuda_alloc(device, bytes);
    const size_t rounded = (bytes + 255) / 256 * 256;  // aligned_alloc needs a multiple of the alignment
    void *p = rounded >= bytes ? std::aligned_alloc(256, rounded) : nullptr;
    if (!p) fail(PKV_ERROR_OUT_OF_HOST_MEMORY, "cannot allocate " + std::to_string(bytes) + " bytes of host memory");
    return p;
}

void free_on(void *ptr, pkv_device device) noexcept {
    if (!ptr) return;
    if (device.type == PKV_DEVICE_CPU) std::free(ptr);
    else cuda_free_noexcept(ptr, device);
}

}  // namespace pkv
