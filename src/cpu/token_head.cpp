// PLACEHOLDER (being implemented this session): per-token-head formats on the CPU.
#include "core/error.h"
#include "core/ops.h"
namespace pkv {
void cpu_write_token_head(const WriteArgs &) { fail(PKV_ERROR_NOT_SUPPORTED, "per-token-head formats: not built yet"); }
void cpu_gather_token_head(const GatherArgs &) { fail(PKV_ERROR_NOT_SUPPORTED, "per-token-head formats: not built yet"); }
}  // namespace pkv
