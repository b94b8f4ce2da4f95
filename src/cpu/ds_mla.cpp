// PLACEHOLDER (being implemented this session): fp8_ds_mla entries on the CPU.
#include "core/error.h"
#include "core/ops.h"
namespace pkv {
void cpu_write_ds_mla(const MlaWriteArgs &) { fail(PKV_ERROR_NOT_SUPPORTED, "fp8_ds_mla: not built yet"); }
void cpu_gather_ds_mla(const GatherArgs &) { fail(PKV_ERROR_NOT_SUPPORTED, "fp8_ds_mla: not built yet"); }
}  // namespace pkv
