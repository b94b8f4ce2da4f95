// XLA FFI handlers pkv_xla_gather_kv_cpu / pkv_xla_gather_kv_cuda: pkv_gather_kv as an XLA
// custom call (paged cache -> dense [N, H, D] rows, dequantized). Contract: include/pagedkv_xla.h.
#include "xla/ffi_common.h"

namespace pkv {
namespace xla {
namespace {

constexpr const char *kOp = "pagedkv.gather_kv";
constexpr uint32_t kAllowed = PKV_XLA_ARG_SEQ_STARTS | PKV_XLA_ARG_K_SCALE | PKV_XLA_ARG_V_SCALE |
                              PKV_XLA_ARG_SCALE_PLANES | PKV_XLA_ARG_ROTATION_SIGNS | PKV_XLA_ARG_OUT_INIT;

ffi::Error gather_kv(pkv_device device, pkv_stream stream, ffi::AnyBuffer key_cache, ffi::AnyBuffer value_cache,
                     ffi::AnyBuffer block_table, ffi::AnyBuffer cu_seq_lens, ffi::RemainingArgs rest,
                     ffi::Result<ffi::AnyBuffer> out_key, ffi::Result<ffi::AnyBuffer> out_value, int64_t format,
                     int64_t layout, int64_t extras, int64_t flags) {
    return guarded(kOp, [&] {
        const Extras x(rest, extras, kAllowed);
        if (x.out_key_init) {
            require(x.out_key_init->untyped_data() == out_key->untyped_data() &&
                        x.out_value_init->untyped_data() == out_value->untyped_data(),
                    "the out_key / out_value initial values must alias results 0 and 1 (input_output_aliases)");
        }
        const auto kd = dims_of(*out_key, 3, "out_key", "3-D [rows, num_heads, head_size_k]");
        const auto vd = dims_of(*out_value, 3, "out_value", "3-D [rows, num_heads, head_size_v]");
        dims_of(block_table, 2, "block_table", "2-D [batch, max_blocks] int32");
        dims_of(cu_seq_lens, 1, "cu_seq_lens", "1-D [batch + 1] int32");

        const Attrs a{format, layout, extras, flags};
        const pkv_cache_view view = build_view(a, key_cache, value_cache, kd[2], vd[2], x, device);
        const pkv_tensor ok = to_tensor(*out_key, device, "out_key");
        const pkv_tensor ov = to_tensor(*out_value, device, "out_value");
        const pkv_tensor bt = to_tensor(block_table, device, "block_table");
        const pkv_tensor cu = to_tensor(cu_seq_lens, device, "cu_seq_lens");
        pkv_tensor starts{};
        if (x.seq_starts) {
            dims_of(*x.seq_starts, 1, "seq_starts", "1-D [batch] int32");
            starts = to_tensor(*x.seq_starts, device, "seq_starts");
        }
        check_status(pkv_gather_kv(&ok, &ov, &view, &bt, &cu, x.seq_starts ? &starts : nullptr, nullptr, stream));
    });
}

ffi::Error gather_kv_cpu(ffi::AnyBuffer key_cache, ffi::AnyBuffer value_cache, ffi::AnyBuffer block_table,
                         ffi::AnyBuffer cu_seq_lens, ffi::RemainingArgs rest, ffi::Result<ffi::AnyBuffer> out_key,
                         ffi::Result<ffi::AnyBuffer> out_value, int64_t format, int64_t layout, int64_t extras,
                         int64_t flags) {
    return gather_kv(pkv_device{PKV_DEVICE_CPU, 0}, nullptr, key_cache, value_cache, block_table, cu_seq_lens, rest,
                     out_key, out_value, format, layout, extras, flags);
}

ffi::Error gather_kv_cuda(pkv_stream stream, int32_t ordinal, ffi::AnyBuffer key_cache, ffi::AnyBuffer value_cache,
                          ffi::AnyBuffer block_table, ffi::AnyBuffer cu_seq_lens, ffi::RemainingArgs rest,
                          ffi::Result<ffi::AnyBuffer> out_key, ffi::Result<ffi::AnyBuffer> out_value,
                          int64_t format, int64_t layout, int64_t extras, int64_t flags) {
    return gather_kv(pkv_device{PKV_DEVICE_CUDA, ordinal}, stream, key_cache, value_cache, block_table, cu_seq_lens,
                     rest, out_key, out_value, format, layout, extras, flags);
}

}  // namespace
}  // namespace xla
}  // namespace pkv

namespace ffi = ::xla::ffi;

XLA_FFI_DEFINE_HANDLER_SYMBOL(pkv_xla_gather_kv_cpu, pkv::xla::gather_kv_cpu,
                              ffi::Ffi::Bind()
                                  .Arg<ffi::AnyBuffer>()  // key_cache
                                  .Arg<ffi::AnyBuffer>()  // value_cache
                                  .Arg<ffi::AnyBuffer>()  // block_table
                                  .Arg<ffi::AnyBuffer>()  // cu_seq_lens
                                  .RemainingArgs()        // extras
                                  .Ret<ffi::AnyBuffer>()  // out_key
                                  .Ret<ffi::AnyBuffer>()  // out_value
                                  .Attr<int64_t>("format")
                                  .Attr<int64_t>("layout")
                                  .Attr<int64_t>("extras")
                                  .Attr<int64_t>("flags"));

// Enqueue only (no sync, no allocation, no host read of device data): CUDA-graph capturable.
XLA_FFI_DEFINE_HANDLER_SYMBOL(pkv_xla_gather_kv_cuda, pkv::xla::gather_kv_cuda,
                              ffi::Ffi::Bind()
                                  .Ctx<ffi::PlatformStream<pkv_stream>>()
                                  .Ctx<ffi::DeviceOrdinal>()
                                  .Arg<ffi::AnyBuffer>()
                                  .Arg<ffi::AnyBuffer>()
                                  .Arg<ffi::AnyBuffer>()
                                  .Arg<ffi::AnyBuffer>()
                                  .RemainingArgs()
                                  .Ret<ffi::AnyBuffer>()
                                  .Ret<ffi::AnyBuffer>()
                                  .Attr<int64_t>("format")
                                  .Attr<int64_t>("layout")
                                  .Attr<int64_t>("extras")
                                  .Attr<int64_t>("flags"),
                              {ffi::Traits::kCmdBufferCompatible});
