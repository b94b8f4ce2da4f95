// The CUDA backend of a build without CUDA. The api layer reports NOT_SUPPORTED before calling
// these; they say the same if reached anyway.
#include "core/convert.h"
#include "core/error.h"
#include "core/ops.h"

namespace pkv {

namespace {
[[noreturn]] void absent() { fail(PKV_ERROR_NOT_SUPPORTED, "this library was built without CUDA"); }
}  // namespace

bool cuda_available_in_build() { return false; }
void cuda_write_kv(const WriteArgs &, pkv_stream) { absent(); }
void cuda_gather_kv(const GatherArgs &, pkv_stream) { absent(); }
void cuda_write_token_head(const WriteArgs &, pkv_stream) { absent(); }
void cuda_gather_token_head(const GatherArgs &, pkv_stream) { absent(); }
void cuda_write_rotated(const WriteArgs &, pkv_stream) { absent(); }
void cuda_gather_rotated(const GatherArgs &, pkv_stream) { absent(); }
void cuda_write_ds_mla(const MlaWriteArgs &, pkv_stream) { absent(); }
void cuda_gather_ds_mla(const GatherArgs &, pkv_stream) { absent(); }
void cuda_convert(const ConvertArgs &, pkv_stream) { absent(); }
int32_t cuda_device_count() { return 0; }
void *cuda_alloc(pkv_device, size_t) { absent(); }
void cuda_free(void *, pkv_device) { absent(); }
void cuda_copy(void *, const void *, size_t, pkv_stream) { absent(); }
void cuda_stream_synchronize(pkv_stream) {}

}  // namespace pkv
