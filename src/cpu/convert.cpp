// CPU pkv_convert: OpenMP over rows of the innermost (collapsed) dimension.
#include "core/convert.h"

namespace pkv {

void cpu_convert(const ConvertArgs &a) {
    const Fp8Divisor d = make_fp8_divisor(a.scale ? *a.scale : 1.0f);
    dispatch_elem(a.src_elem, [&](auto src_e) {
        dispatch_elem(a.dst_elem, [&](auto dst_e) {
            constexpr Elem S = decltype(src_e)::value, D = decltype(dst_e)::value;
            using SrcT = storage_t<S>;
            using DstT = storage_t<D>;
            const int last = a.ndim - 1;
            const int64_t inner = a.shape[last], rows = a.numel / inner;
            const int64_t ds = a.dst_strides[last], ss = a.src_strides[last];
            const SrcT *src = reinterpret_cast<const SrcT *>(a.src);
            DstT *dst = reinterpret_cast<DstT *>(a.dst);
#pragma omp parallel for schedule(static) if (a.numel > 65536)
            for (int64_t r = 0; r < rows; ++r) {
                int64_t o_dst, o_src;
                convert_offsets(a, r * inner, o_dst, o_src);
                for (int64_t j = 0; j < inner; ++j)
                    dst[o_dst + j * ds] = convert_element<S, D>(src[o_src + j * ss], d);
            }
        });
    });
}

}  // namespace pkv
