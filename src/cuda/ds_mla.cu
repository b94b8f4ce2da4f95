// PLACEHOLDER (being implemented this session): fp8_ds_mla entries on the CUDA.
#include "core/error.h"
#include "core/ops.h"
namespace pkv {
void cuda_write_ds_mla(const MlaWriteArgs &, pkv_stream) { fail(PKV_ERROR_NOT_SUPPORTED, "fp8_ds_mla: not built yet"); }
void cuda_gather_ds_mla(const GatherArgs &, pkv_stream) { fail(PKV_ERROR_NOT_SUPPORTED, "fp8_ds_mla: not built yet"); }
}  // namespace pkv
