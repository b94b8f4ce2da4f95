#include "core/slots.h"

namespace pkv {

SlotsResetArgs slots_reset_args(const std::vector<SlotRegion> &regions, int32_t slot) {
    SlotsResetArgs a;
    for (const SlotRegion &r : regions) {
        a.dst[a.count] = reinterpret_cast<uint32_t *>(r.base + int64_t(slot) * r.slot_stride);
        a.words[a.count] = r.words;
        a.fill[a.count] = r.fill;
        if (r.words > a.max_words) a.max_words = r.words;
        ++a.count;
    }
    return a;
}

}  // namespace pkv
