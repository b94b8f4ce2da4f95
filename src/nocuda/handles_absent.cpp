// The handles' CUDA helpers in a build without CUDA. The api layer refuses CUDA pools before
// these can be reached; they report NOT_SUPPORTED if reached anyway.
#include "core/cuda_runtime.h"
#include "core/error.h"
#include "core/slots.h"

namespace pkv {

namespace {
[[noreturn]] void absent() { fail(PKV_ERROR_NOT_SUPPORTED, "this library was built without CUDA"); }
}  // namespace

void *cuda_event_create(pkv_device) { absent(); }
void cuda_event_destroy(void *) noexcept {}
void cuda_event_record(void *, pkv_stream) { absent(); }
void cuda_event_synchronize(void *) { absent(); }
void cuda_copy_blocking(pkv_device, void *, const void *, size_t) { absent(); }
void cuda_free_noexcept(void *, pkv_device) noexcept {}
void cuda_slots_reset(const SlotsResetArgs &, pkv_stream) { absent(); }

}  // namespace pkv
