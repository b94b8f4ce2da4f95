// PLACEHOLDER (being implemented this session): per-token-head formats on the CUDA.
#include "core/error.h"
#include "core/ops.h"
namespace pkv {
void cuda_write_token_head(const WriteArgs &, pkv_stream) { fail(PKV_ERROR_NOT_SUPPORTED, "per-token-head formats: not built yet"); }
void cuda_gather_token_head(const GatherArgs &, pkv_stream) { fail(PKV_ERROR_NOT_SUPPORTED, "per-token-head formats: not built yet"); }
}  // namespace pkv
