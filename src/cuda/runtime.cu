// Device count, memory and stream helpers of the public API.
#include <atomic>
#include <cstdlib>

#include "core/cuda_runtime.h"
#include "core/ops.h"
#include "cuda/cuda_check.cuh"

namespace pkv {

bool cuda_available_in_build() { return true; }

// Attribute A of the current device, queried once per device (0 when it cannot be queried).
template <cudaDeviceAttr A> int current_device_attribute() {
    constexpr int kMaxDevices = 64;
    static std::atomic<int> value[kMaxDevices];  // 0 = not yet queried
    int device = 0;
    if (cudaGetDevice(&device) != cudaSuccess || device < 0 || device >= kMaxDevices) {
        (void)cudaGetLastError();
        return 0;
    }
    int v = value[device].load(std::memory_order_relaxed);
    if (v == 0) {
        if (cudaDeviceGetAttribute(&v, A, device) != cudaSuccess) {
            (void)cudaGetLastError();
            return 0;
        }
        value[device].store(v, std::memory_order_relaxed);
    }
    return v;
}

bool pdl_enabled() {
    static const bool disabled = [] {
        const char *e = std::getenv("PKV_DISABLE_PDL");
        return e && *e && *e != '0';
    }();
    return !disabled && current_device_attribute<cudaDevAttrComputeCapabilityMajor>() >= 9;
}

int multiprocessor_count() { return current_device_attribute<cudaDevAttrMultiProcessorCount>(); }

int32_t cuda_device_count() {
    int n = 0;
    if (cudaGetDeviceCount(&n) != cudaSuccess) {
        (void)cudaGetLastError();  // no driver / no device: report zero devices
        return 0;
    }
    return n;
}

void *cuda_alloc(pkv_device device, size_t bytes) {
    void *p = nullptr;
    if (device.type == PKV_DEVICE_CUDA_HOST) {
        cuda_check(cudaMallocHost(&p, bytes), "cudaMallocHost");
        return p;
    }
    int previous = 0;
    cuda_check(cudaGetDevice(&previous), "cudaGetDevice");
    cuda_check(cudaSetDevice(device.id), "cudaSetDevice");
    const cudaError_t e = cudaMalloc(&p, bytes);
    cudaSetDevice(previous);
    cuda_check(e, "cudaMalloc");
    return p;
}

void cuda_free(void *ptr, pkv_device device) {
    if (device.type == PKV_DEVICE_CUDA_HOST) cuda_check(cudaFreeHost(ptr), "cudaFreeHost");
    else cuda_check(cudaFree(ptr), "cudaFree");
}

void cuda_copy(void *dst, const void *src, size_t bytes, pkv_stream stream) {
    cuda_check(cudaMemcpyAsync(dst, src, bytes, cudaMemcpyDefault, reinterpret_cast<cudaStream_t>(stream)),
               "cudaMemcpyAsync");
}

void cuda_stream_synchronize(pkv_stream stream) {
    const cudaError_t e = cudaStreamSynchronize(reinterpret_cast<cudaStream_t>(stream));
    if (stream == nullptr && (e == cudaErrorNoDevice || e == cudaErrorInsufficientDriver)) {
        (void)cudaGetLastError();  // nothing can have been enqueued: no device to wait for
        return;
    }
    cuda_check(e, "cudaStreamSynchronize");
}

// ---- handles (core/cuda_runtime.h)

namespace {
// Makes `device` current for its lifetime (creation-time calls only, never on enqueue paths).
struct CurrentDevice {
    int previous = 0;
    explicit CurrentDevice(int device) {
        cuda_check(cudaGetDevice(&previous), "cudaGetDevice");
        cuda_check(cudaSetDevice(device), "cudaSetDevice");
    }
    ~CurrentDevice() { cudaSetDevice(previous); }
};
}  // namespace

void *cuda_event_create(pkv_device device) {
    CurrentDevice current(device.id);
    cudaEvent_t e = nullptr;
    cuda_check(cudaEventCreateWithFlags(&e, cudaEventDisableTiming), "cudaEventCreateWithFlags");
    return e;
}

void cuda_event_destroy(void *event) noexcept {
    if (event) (void)cudaEventDestroy(static_cast<cudaEvent_t>(event));
}

void cuda_event_record(void *event, pkv_stream stream) {
    cuda_check(cudaEventRecord(static_cast<cudaEvent_t>(event), reinterpret_cast<cudaStream_t>(stream)),
               "cudaEventRecord");
}

void cuda_event_synchronize(void *event) {
    cuda_check(cudaEventSynchronize(static_cast<cudaEvent_t>(event)), "cudaEventSynchronize");
}

void cuda_copy_blocking(pkv_device device, void *dst, const void *src, size_t bytes) {
    CurrentDevice current(device.id);
    cuda_check(cudaMemcpy(dst, src, bytes, cudaMemcpyDefault), "cudaMemcpy");
}

void cuda_free_noexcept(void *ptr, pkv_device device) noexcept {
    if (device.type == PKV_DEVICE_CUDA_HOST) (void)cudaFreeHost(ptr);
    else (void)cudaFree(ptr);
}

}  // namespace pkv
