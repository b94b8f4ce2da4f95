// CUDA runtime helpers of the handles (pool, block tables, slots): events for the block
// table's staging reuse, a blocking copy for creation-time initialization, a teardown free.
// Implemented in src/cuda/runtime.cu; src/nocuda/handles_absent.cpp in builds without CUDA.
#pragma once

#include <cstddef>

#include "pagedkv.h"

namespace pkv {

// An event (timing disabled) on `device`, which is made current for the creation and restored.
void *cuda_event_create(pkv_device device);
void cuda_event_destroy(void *event) noexcept;
void cuda_event_record(void *event, pkv_stream stream);
// Blocks the host until the work recorded before `event` is done.
void cuda_event_synchronize(void *event);
// Copies `bytes` and waits for it, with `device` current (creation-time setup only).
void cuda_copy_blocking(pkv_device device, void *dst, const void *src, size_t bytes);
// cuda_free for teardown paths: errors are dropped (they surface at the caller's next call).
void cuda_free_noexcept(void *ptr, pkv_device device) noexcept;

}  // namespace pkv
