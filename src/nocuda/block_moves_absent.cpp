// The CUDA block moves of a build without CUDA. The api layer reports NOT_SUPPORTED before
// calling these (a CUDA pool cannot be created); they say the same if reached anyway.
#include "core/block_moves.h"
#include "core/error.h"

namespace pkv {

namespace {
[[noreturn]] void absent() { fail(PKV_ERROR_NOT_SUPPORTED, "this library was built without CUDA"); }
}  // namespace

void cuda_copy_blocks(const FlatBlockCopy &, pkv_stream) { absent(); }
void cuda_copy_cache_blocks(const CacheBlockCopy &, pkv_stream) { absent(); }
void cuda_transfer_blocks(const BlockTransfer &, pkv_stream) { absent(); }
void cuda_swap_blocks(const SwapArgs &, pkv_stream) { absent(); }

}  // namespace pkv
