// PLACEHOLDER (being implemented this session): INT4 / INT2 formats on the CPU.
#include "core/error.h"
#include "core/ops.h"
namespace pkv {
void cpu_write_rotated(const WriteArgs &) { fail(PKV_ERROR_NOT_SUPPORTED, "INT4 / INT2 formats: not built yet"); }
void cpu_gather_rotated(const GatherArgs &) { fail(PKV_ERROR_NOT_SUPPORTED, "INT4 / INT2 formats: not built yet"); }
}  // namespace pkv
