// XLA FFI handlers pkv_xla_write_mla_cpu / pkv_xla_write_mla_cuda: pkv_write_mla (MLA latent
// entries [kv_c | k_pe]) as an XLA custom call with the cache as an aliased result. Contract:
// include/pagedkv_xla.h.
#include "xla/ffi_common.h"

namespace pkv {
namespace xla {
namespace {

constexpr const char *kOp = "pagedkv.write_mla";

ffi::Error write_mla(pkv_device device, pkv_stream stream, ffi::AnyBuffer kv_c, ffi::AnyBuffer k_pe,
                     ffi::AnyBuffer kv_cache, ffi::AnyBuffer slot_mapping, ffi::RemainingArgs rest,
                     ffi::Result<ffi::AnyBuffer> kv_cache_out, int64_t format, int64_t layout, int64_t extras,
                     int64_t flags) {
    return guarded(kOp, [&] {
        const Extras x(rest, extras, PKV_XLA_ARG_K_SCALE);
        require(kv_cache.untyped_data() == kv_cache_out->untyped_data(),
                "result 0 (kv_cache) must alias operand 2 (input_output_aliases={2: 0}): the handler writes only "
                "the new tokens");
        const auto cd = dims_of(kv_c, 2, "kv_c", "2-D [tokens, kv_lora_rank]");
        const auto pd = dims_of(k_pe, 2, "k_pe", "2-D [tokens, rope_dim]");
        dims_of(slot_mapping, 1, "slot_mapping", "1-D [tokens] int32 or int64");
        const Attrs a{format, layout, extras, flags};
        const pkv_cache_view view = build_mla_view(a, kv_cache, cd[1] + pd[1], x, device);
        const pkv_tensor c = to_tensor(kv_c, device, "kv_c");
        const pkv_tensor p = to_tensor(k_pe, device, "k_pe");
        const pkv_tensor s = to_tensor(slot_mapping, device, "slot_mapping");
        check_status(pkv_write_mla(&view, &c, &p, &s, nullptr, stream));
    });
}

ffi::Error write_mla_cpu(ffi::AnyBuffer kv_c, ffi::AnyBuffer k_pe, ffi::AnyBuffer kv_cache, ffi::AnyBuffer slot_mapping,
                         ffi::RemainingArgs rest, ffi::Result<ffi::AnyBuffer> kv_cache_out, int64_t format,
                         int64_t layout, int64_t extras, int64_t flags) {
    return write_mla(pkv_device{PKV_DEVICE_CPU, 0}, nullptr, kv_c, k_pe, kv_cache, slot_mapping, rest, kv_cache_out,
                     format, layout, extras, flags);
}

ffi::Error write_mla_cuda(pkv_stream stream, int32_t ordinal, ffi::AnyBuffer kv_c, ffi::AnyBuffer k_pe,
                          ffi::AnyBuffer kv_cache, ffi::AnyBuffer slot_mapping, ffi::RemainingArgs rest,
                          ffi::Result<ffi::AnyBuffer> kv_cache_out, int64_t format, int64_t layout, int64_t extras,
                          int64_t flags) {
    return write_mla(pkv_device{PKV_DEVICE_CUDA, ordinal}, stream, kv_c, k_pe, kv_cache, slot_mapping, rest,
                     kv_cache_out, format, layout, extras, flags);
}

}  // namespace
}  // namespace xla
}  // namespace pkv

namespace ffi = ::xla::ffi;

XLA_FFI_DEFINE_HANDLER_SYMBOL(pkv_xla_write_mla_cpu, pkv::xla::write_mla_cpu,
                              ffi::Ffi::Bind()
                                  .Arg<ffi::AnyBuffer>()  // kv_c
                                  .Arg<ffi::AnyBuffer>()  // k_pe
                                  .Arg<ffi::AnyBuffer>()  // kv_cache
                                  .Arg<ffi::AnyBuffer>()  // slot_mapping
                                  .RemainingArgs()        // extras (scale)
                                  .Ret<ffi::AnyBuffer>()  // kv_cache (aliased)
                                  .Attr<int64_t>("format")
                                  .Attr<int64_t>("layout")
                                  .Attr<int64_t>("extras")
                                  .Attr<int64_t>("flags"));

// Enqueue only (no sync, no allocation, no host read of device data): CUDA-graph capturable.
XLA_FFI_DEFINE_HANDLER_SYMBOL(pkv_xla_write_mla_cuda, pkv::xla::write_mla_cuda,
                              ffi::Ffi::Bind()
                                  .Ctx<ffi::PlatformStream<pkv_stream>>()
                                  .Ctx<ffi::DeviceOrdinal>()
                                  .Arg<ffi::AnyBuffer>()
                                  .Arg<ffi::AnyBuffer>()
                                  .Arg<ffi::AnyBuffer>()
                                  .Arg<ffi::AnyBuffer>()
                                  .RemainingArgs()
                                  .Ret<ffi::AnyBuffer>()
                                  .Attr<int64_t>("format")
                                  .Attr<int64_t>("layout")
                                  .Attr<int64_t>("extras")
                                  .Attr<int64_t>("flags"),
                              {ffi::Traits::kCmdBufferCompatible});
