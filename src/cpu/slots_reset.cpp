// CPU reset of one request slot's state regions.
#include <algorithm>

#include "core/slots.h"

namespace pkv {

void cpu_slots_reset(const SlotsResetArgs &a) {
    for (int32_t i = 0; i < a.count; ++i) std::fill_n(a.dst[i], a.words[i], a.fill[i]);
}

}  // namespace pkv
