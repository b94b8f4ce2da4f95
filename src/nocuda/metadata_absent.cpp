// The CUDA metadata builders of a build without CUDA. The api layer reports NOT_SUPPORTED
// before calling these; they say the same if reached anyway.
#include "core/error.h"
#include "core/metadata.h"

namespace pkv {

namespace {
[[noreturn]] void absent() { fail(PKV_ERROR_NOT_SUPPORTED, "this library was built without CUDA"); }
}  // namespace

void cuda_build_slot_mapping(const SlotMappingArgs &, pkv_stream) { absent(); }
void cuda_build_slot_mapping_csr(const CsrSlotMappingArgs &, pkv_stream) { absent(); }

}  // namespace pkv
