// XLA FFI handlers pkv_xla_write_kv_cpu / pkv_xla_write_kv_cuda: pkv_write_kv as an XLA custom
// call with the caches (and per-token-head scale planes) as aliased results. Contract:
// include/pagedkv_xla.h.
#include "xla/ffi_common.h"

namespace pkv {
namespace xla {
namespace {

constexpr const char *kOp = "pagedkv.write_kv";
constexpr uint32_t kAllowed = PKV_XLA_ARG_K_SCALE | PKV_XLA_ARG_V_SCALE | PKV_XLA_ARG_SCALE_PLANES |
                              PKV_XLA_ARG_ROTATION_SIGNS;

void require_alias(const ffi::AnyBuffer &in, const ffi::AnyBuffer &out, const char *what, int operand, int result) {
    require(in.untyped_data() == out.untyped_data(), "result ", result, " (", what, ") must alias operand ", operand,
            " (input_output_aliases={", operand, ": ", result, "}): the handler writes only the new tokens");
}

ffi::Error write_kv(pkv_device device, pkv_stream stream, ffi::AnyBuffer key, ffi::AnyBuffer value,
                    ffi::AnyBuffer key_cache, ffi::AnyBuffer value_cache, ffi::AnyBuffer slot_mapping,
                    ffi::RemainingArgs rest, ffi::Result<ffi::AnyBuffer> key_cache_out,
                    ffi::Result<ffi::AnyBuffer> value_cache_out, ffi::RemainingRets rest_out, int64_t format,
                    int64_t layout, int64_t extras, int64_t flags) {
    return guarded(kOp, [&] {
        const Extras x(rest, extras, kAllowed);
        const size_t planes = x.k_plane ? 2 : 0;
        require(rest_out.size() == planes, "expected ", 2 + planes, " results (key_cache, value_cache",
                planes ? ", k_scale_plane, v_scale_plane" : "", "), got ", 2 + rest_out.size());
        require_alias(key_cache, *key_cache_out, "key_cache", 2, 0);
        require_alias(value_cache, *value_cache_out, "value_cache", 3, 1);
        if (planes) {
            // The planes are the first two of the extras (scales are refused for these formats).
            const int first = 5 + (x.k_scale ? 1 : 0) + (x.v_scale ? 1 : 0);
            for (size_t i = 0; i < 2; ++i) {
                auto out = rest_out.get<ffi::AnyBuffer>(i);
                require(out.has_value(), "result ", 2 + i, " is not a buffer");
                require_alias(i == 0 ? *x.k_plane : *x.v_plane, **out, i == 0 ? "k_scale_plane" : "v_scale_plane",
                              first + static_cast<int>(i), 2 + static_cast<int>(i));
            }
        }
        const auto kd = dims_of(key, 3, "key", "3-D [tokens, num_heads, head_size_k]");
        const auto vd = dims_of(value, 3, "value", "3-D [tokens, num_heads, head_size_v]");
        dims_of(slot_mapping, 1, "slot_mapping", "1-D [tokens] int32 or int64");

        const Attrs a{format, layout, extras, flags};
        const pkv_cache_view view = build_view(a, key_cache, value_cache, kd[2], vd[2], x, device);
        const pkv_tensor k = to_tensor(key, device, "key");
        const pkv_tensor v = to_tensor(value, device, "value");
        const pkv_tensor s = to_tensor(slot_mapping, device, "slot_mapping");
        check_status(pkv_write_kv(&view, &k, &v, &s, nullptr, stream));
    });
}

ffi::Error write_kv_cpu(ffi::AnyBuffer key, ffi::AnyBuffer value, ffi::AnyBuffer key_cache,
                        ffi::AnyBuffer value_cache, ffi::AnyBuffer slot_mapping, ffi::RemainingArgs rest,
                        ffi::Result<ffi::AnyBuffer> key_cache_out, ffi::Result<ffi::AnyBuffer> value_cache_out,
                        ffi::RemainingRets rest_out, int64_t format, int64_t layout, int64_t extras,
                        int64_t flags) {
    return write_kv(pkv_device{PKV_DEVICE_CPU, 0}, nullptr, key, value, key_cache, value_cache, slot_mapping, rest,
                    key_cache_out, value_cache_out, rest_out, format, layout, extras, flags);
}

ffi::Error write_kv_cuda(pkv_stream stream, int32_t ordinal, ffi::AnyBuffer key, ffi::AnyBuffer value,
                         ffi::AnyBuffer key_cache, ffi::AnyBuffer value_cache, ffi::AnyBuffer slot_mapping,
                         ffi::RemainingArgs rest, ffi::Result<ffi::AnyBuffer> key_cache_out,
                         ffi::Result<ffi::AnyBuffer> value_cache_out, ffi::RemainingRets rest_out, int64_t format,
                         int64_t layout, int64_t extras, int64_t flags) {
    return write_kv(pkv_device{PKV_DEVICE_CUDA, ordinal}, stream, key, value, key_cache, value_cache, slot_mapping,
                    rest, key_cache_out, value_cache_out, rest_out, format, layout, extras, flags);
}

}  // namespace
}  // namespace xla
}  // namespace pkv

namespace ffi = ::xla::ffi;

XLA_FFI_DEFINE_HANDLER_SYMBOL(pkv_xla_write_kv_cpu, pkv::xla::write_kv_cpu,
                              ffi::Ffi::Bind()
                                  .Arg<ffi::AnyBuffer>()  // key
                                  .Arg<ffi::AnyBuffer>()  // value
                                  .Arg<ffi::AnyBuffer>()  // key_cache
                                  .Arg<ffi::AnyBuffer>()  // value_cache
                                  .Arg<ffi::AnyBuffer>()  // slot_mapping
                                  .RemainingArgs()        // extras
                                  .Ret<ffi::AnyBuffer>()  // key_cache (aliased)
                                  .Ret<ffi::AnyBuffer>()  // value_cache (aliased)
                                  .RemainingRets()        // scale planes (aliased)
                                  .Attr<int64_t>("format")
                                  .Attr<int64_t>("layout")
                                  .Attr<int64_t>("extras")
                                  .Attr<int64_t>("flags"));

// The enqueue path never synchronizes, allocates or reads device memory on the host, and
// launches the same work for the same shapes and attributes: safe to capture in a CUDA graph.
XLA_FFI_DEFINE_HANDLER_SYMBOL(pkv_xla_write_kv_cuda, pkv::xla::write_kv_cuda,
                              ffi::Ffi::Bind()
                                  .Ctx<ffi::PlatformStream<pkv_stream>>()
                                  .Ctx<ffi::DeviceOrdinal>()
                                  .Arg<ffi::AnyBuffer>()
                                  .Arg<ffi::AnyBuffer>()
                                  .Arg<ffi::AnyBuffer>()
                                  .Arg<ffi::AnyBuffer>()
                                  .Arg<ffi::AnyBuffer>()
                                  .RemainingArgs()
                                  .Ret<ffi::AnyBuffer>()
                                  .Ret<ffi::AnyBuffer>()
                                  .RemainingRets()
                                  .Attr<int64_t>("format")
                                  .Attr<int64_t>("layout")
                                  .Attr<int64_t>("extras")
                                  .Attr<int64_t>("flags"),
                              {ffi::Traits::kCmdBufferCompatible});
