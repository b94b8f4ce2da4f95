// Owned memory of the handles (pool tiers, scales, block-table mirrors and staging) on a device
// kind: CPU = 256-byte aligned host memory, CUDA = cudaMalloc on device.id (the current device is
// restored), CUDA_HOST = pinned host memory.
#pragma once

#include <cstddef>

#include "pagedkv.h"

namespace pkv {

// nullptr for 0 bytes. Throws pkv::Error (OUT_OF_HOST_MEMORY / OUT_OF_DEVICE_MEMORY / CUDA).
void *alloc_on(pkv_device device, size_t bytes);
// Frees memory of alloc_on; never throws (teardown paths cannot report errors). NULL: no-op.
void free_on(void *ptr, pkv_device device) noexcept;

// Sole owner of one alloc_on allocation.
class DeviceBuffer {
public:
    DeviceBuffer() = default;
    DeviceBuffer(pkv_device device, size_t bytes) : device_(device), ptr_(alloc_on(device, bytes)) {}
    ~DeviceBuffer() { free_on(ptr_, device_); }
    DeviceBuffer(const DeviceBuffer &) = delete;
    DeviceBuffer &operator=(const DeviceBuffer &) = delete;
    DeviceBuffer(DeviceBuffer &&o) noexcept : device_(o.device_), ptr_(o.ptr_) { o.ptr_ = nullptr; }
    DeviceBuffer &operator=(DeviceBuffer &&o) noexcept {
        if (this != &o) {
            free_on(ptr_, device_);
            device_ = o.device_;
            ptr_ = o.ptr_;
            o.ptr_ = nullptr;
        }
        return *this;
    }

    char *get() const { return static_cast<char *>(ptr_); }

private:
    pkv_device device_{PKV_DEVICE_CPU, 0};
    void *ptr_ = nullptr;
};

}  // namespace pkv
