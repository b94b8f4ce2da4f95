// PLACEHOLDER (being implemented this session): INT4 / INT2 formats on the CUDA.
#include "core/error.h"
#include "core/ops.h"
namespace pkv {
void cuda_write_rotated(const WriteArgs &, pkv_stream) { fail(PKV_ERROR_NOT_SUPPORTED, "INT4 / INT2 formats: not built yet"); }
void cuda_gather_rotated(const GatherArgs &, pkv_stream) { fail(PKV_ERROR_NOT_SUPPORTED, "INT4 / INT2 formats: not built yet"); }
}  // namespace pkv
