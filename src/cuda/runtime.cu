// Device count, memory and stream helpers of the public API.
#include "core/ops.h"
#include "cuda/cuda_check.cuh"

namespace pkv {

bool cuda_available_in_build() { return true; }

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

}  // namespace pkv
