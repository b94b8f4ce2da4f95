// Dimension collapsing of pkv_convert (host-side).
#include "core/convert.h"

namespace pkv {

void collapse_dims(ConvertArgs &a) {
    int n = 0;
    for (int d = 0; d < a.ndim; ++d) {
        if (a.shape[d] == 1) continue;
        // Merge into the previous kept dim when that one steps exactly over this one in both.
        if (n > 0 && a.dst_strides[n - 1] == a.shape[d] * a.dst_strides[d] &&
            a.src_strides[n - 1] == a.shape[d] * a.src_strides[d]) {
            a.shape[n - 1] *= a.shape[d];
            a.dst_strides[n - 1] = a.dst_strides[d];
            a.src_strides[n - 1] = a.src_strides[d];
            continue;
        }
        a.shape[n] = a.shape[d];
        a.dst_strides[n] = a.dst_strides[d];
        a.src_strides[n] = a.src_strides[d];
        ++n;
    }
    if (n == 0) {  // a single element
        a.shape[0] = 1;
        a.dst_strides[0] = a.src_strides[0] = 1;
        n = 1;
    }
    a.ndim = n;
}

}  // namespace pkv
