// CPU metadata builders: output tokens in parallel (OpenMP), the shared per-token math.
#include "core/metadata.h"

namespace pkv {

void cpu_build_slot_mapping(const SlotMappingArgs &a) {
#pragma omp parallel for schedule(static) if (a.out.count > 4096)
    for (int64_t i = 0; i < a.out.count; ++i) a.out.store(i, slot_of_token(a, i));
}

void cpu_build_slot_mapping_csr(const CsrSlotMappingArgs &a) {
#pragma omp parallel for schedule(static) if (a.out.count > 4096)
    for (int64_t i = 0; i < a.out.count; ++i) a.out.store(i, slot_of_token(a, i));
}

}  // namespace pkv
