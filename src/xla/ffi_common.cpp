// XLA buffers -> pkv_tensor / pkv_cache_view for the XLA FFI handlers (see ffi_common.h).
#include "xla/ffi_common.h"

#include "core/element.h"

#include <initializer_list>

namespace pkv {
namespace xla {

const char *dtype_name(ffi::DataType t) {
    switch (t) {
        case ffi::DataType::PRED: return "bool";
        case ffi::DataType::S8: return "int8";
        case ffi::DataType::S16: return "int16";
        case ffi::DataType::S32: return "int32";
        case ffi::DataType::S64: return "int64";
        case ffi::DataType::U8: return "uint8";
        case ffi::DataType::U16: return "uint16";
        case ffi::DataType::U32: return "uint32";
        case ffi::DataType::U64: return "uint64";
        case ffi::DataType::F16: return "float16";
        case ffi::DataType::F32: return "float32";
        case ffi::DataType::F64: return "float64";
        case ffi::DataType::BF16: return "bfloat16";
        case ffi::DataType::C64: return "complex64";
        case ffi::DataType::C128: return "complex128";
        case ffi::DataType::F8E5M2: return "float8_e5m2";
        case ffi::DataType::F8E4M3FN: return "float8_e4m3fn";
        case ffi::DataType::F8E4M3: return "float8_e4m3";
        case ffi::DataType::F8E4M3FNUZ: return "float8_e4m3fnuz";
        case ffi::DataType::F8E5M2FNUZ: return "float8_e5m2fnuz";
        case ffi::DataType::F8E4M3B11FNUZ: return "float8_e4m3b11fnuz";
        default: return "an unsupported element type";
    }
}

std::string describe(const ffi::AnyBuffer &b) {
    std::string s = "[";
    const auto dims = b.dimensions();
    for (size_t i = 0; i < dims.size(); ++i) {
        if (i) s += ", ";
        s += std::to_string(dims[i]);
    }
    s += "] ";
    s += dtype_name(b.element_type());
    return s;
}

pkv_dtype pkv_dtype_of(ffi::DataType t, const char *what) {
    switch (t) {
        case ffi::DataType::F32: return PKV_DTYPE_F32;
        case ffi::DataType::F16: return PKV_DTYPE_F16;
        case ffi::DataType::BF16: return PKV_DTYPE_BF16;
        case ffi::DataType::F8E4M3FN: return PKV_DTYPE_FP8_E4M3;
        case ffi::DataType::F8E5M2: return PKV_DTYPE_FP8_E5M2;
        case ffi::DataType::S8: return PKV_DTYPE_INT8;
        case ffi::DataType::U8: return PKV_DTYPE_UINT8;
        case ffi::DataType::S32: return PKV_DTYPE_INT32;
        case ffi::DataType::S64: return PKV_DTYPE_INT64;
        default: break;
    }
    require(false, what, " has dtype ", dtype_name(t), ", which pagedkv does not take");
    return PKV_DTYPE_F32;  // not reached
}

pkv_tensor to_tensor(const ffi::AnyBuffer &b, pkv_device device, const char *what) {
    const auto dims = b.dimensions();
    require(dims.size() <= PKV_MAX_DIMS, what, " has rank ", dims.size(), " (at most ", PKV_MAX_DIMS, ")");
    pkv_tensor t{};
    t.data = b.untyped_data();
    t.dtype = pkv_dtype_of(b.element_type(), what);
    t.device = device;
    t.ndim = static_cast<int32_t>(dims.size());
    int64_t stride = 1;
    for (int i = t.ndim - 1; i >= 0; --i) {
        t.shape[i] = dims[i];
        t.strides[i] = stride;
        stride *= dims[i] > 0 ? dims[i] : 1;
    }
    return t;
}

ffi::AnyBuffer::Dimensions dims_of(const ffi::AnyBuffer &b, size_t rank, const char *what, const char *shape_doc) {
    const auto dims = b.dimensions();
    require(dims.size() == rank, what, " must be ", shape_doc, ", got ", describe(b));
    return dims;
}

Extras::Extras(const ffi::RemainingArgs &args, int64_t bits, uint32_t allowed) {
    require(bits >= 0 && (static_cast<uint64_t>(bits) & ~uint64_t{allowed}) == 0, "attribute extras=", bits,
            " names operands this op does not take (allowed bits: ", allowed, ")");
    struct Slot {
        uint32_t bit;
        std::optional<ffi::AnyBuffer> *first, *second;
        const char *names;
    };
    const Slot slots[] = {
        {PKV_XLA_ARG_SEQ_STARTS, &seq_starts, nullptr, "seq_starts"},
        {PKV_XLA_ARG_K_SCALE, &k_scale, nullptr, "k_scale"},
        {PKV_XLA_ARG_V_SCALE, &v_scale, nullptr, "v_scale"},
        {PKV_XLA_ARG_SCALE_PLANES, &k_plane, &v_plane, "k_scale_plane, v_scale_plane"},
        {PKV_XLA_ARG_ROTATION_SIGNS, &k_signs, &v_signs, "k_rotation_signs, v_rotation_signs"},
        {PKV_XLA_ARG_OUT_INIT, &out_key_init, &out_value_init, "out_key, out_value initial values"},
    };
    size_t want = 0;
    for (const Slot &s : slots)
        if (bits & s.bit) want += s.second ? 2 : 1;
    require(args.size() == want, "attribute extras=", bits, " names ", want, " optional operands, got ", args.size());
    size_t next = 0;
    auto take = [&](std::optional<ffi::AnyBuffer> *dst, const char *names) {
        auto b = args.get<ffi::AnyBuffer>(next++);
        require(b.has_value(), "optional operand ", names, " is not a buffer");
        dst->emplace(*b);
    };
    for (const Slot &s : slots) {
        if (!(bits & s.bit)) continue;
        take(s.first, s.names);
        if (s.second) take(s.second, s.names);
    }
}

namespace {

// The library's name of a format attribute; nullptr when the value is not a format.
const char *format_name(int64_t f) {
    return f > PKV_CACHE_FORMAT_UNSET && f <= PKV_CACHE_FORMAT_FP8_DS_MLA ? cache_format_name(pkv_cache_format(f))
                                                                           : nullptr;
}

// The cache dtypes that may hold a format (none: not a format the write / gather targets take).
struct FormatInfo {
    ffi::DataType dtypes[3];  // INVALID = unused
};

FormatInfo format_info(int64_t f) {
    using D = ffi::DataType;
    switch (f) {
        case PKV_CACHE_FORMAT_F32: return {{D::F32, D::INVALID, D::INVALID}};
        case PKV_CACHE_FORMAT_F16: return {{D::F16, D::INVALID, D::INVALID}};
        case PKV_CACHE_FORMAT_BF16: return {{D::BF16, D::INVALID, D::INVALID}};
        case PKV_CACHE_FORMAT_FP8_E4M3: return {{D::F8E4M3FN, D::U8, D::S8}};
        case PKV_CACHE_FORMAT_FP8_E5M2: return {{D::F8E5M2, D::U8, D::S8}};
        case PKV_CACHE_FORMAT_INT8_PER_TOKEN_HEAD: return {{D::S8, D::U8, D::INVALID}};
        case PKV_CACHE_FORMAT_FP8_PER_TOKEN_HEAD: return {{D::F8E4M3FN, D::U8, D::S8}};
        case PKV_CACHE_FORMAT_INT4_PER_TOKEN_HEAD:
        case PKV_CACHE_FORMAT_INT2_PER_TOKEN_HEAD: return {{D::U8, D::S8, D::INVALID}};
        default: return {{D::INVALID, D::INVALID, D::INVALID}};
    }
}

std::string dtype_list(const FormatInfo &info) {
    std::string s;
    for (ffi::DataType d : info.dtypes) {
        if (d == ffi::DataType::INVALID) continue;
        if (!s.empty()) s += " or ";
        s += dtype_name(d);
    }
    return s;
}

// Geometry of one dense 4-D cache buffer in the given layout.
struct CacheDims {
    int64_t blocks, block_size, heads, row;  // row: stored elements per head row
};

CacheDims cache_dims(const ffi::AnyBuffer &c, int64_t layout, const char *what) {
    const auto d = dims_of(c, 4, what,
                           layout == PKV_HEAD_LAYOUT_HND ? "4-D [num_blocks, num_heads, block_size, head_row]"
                                                         : "4-D [num_blocks, block_size, num_heads, head_row]");
    if (layout == PKV_HEAD_LAYOUT_HND) return {d[0], d[2], d[1], d[3]};
    return {d[0], d[1], d[2], d[3]};
}

// Byte strides (block, slot, head) of a dense cache / scale plane with elements of `e` bytes.
void cache_strides(const CacheDims &g, int64_t layout, int64_t e, int64_t *block, int64_t *slot, int64_t *head) {
    *block = g.block_size * g.heads * g.row * e;
    if (layout == PKV_HEAD_LAYOUT_HND) {
        *head = g.block_size * g.row * e;
        *slot = g.row * e;
    } else {
        *slot = g.heads * g.row * e;
        *head = g.row * e;
    }
}

void check_row(const char *what, const ffi::AnyBuffer &c, const CacheDims &g, int64_t format, int64_t head_size) {
    const FormatInfo info = format_info(format);
    if (info.dtypes[0] == ffi::DataType::INVALID) return;  // unknown format: pkv_cache_view_check names it
    bool dtype_ok = false;
    for (ffi::DataType d : info.dtypes) dtype_ok |= d != ffi::DataType::INVALID && d == c.element_type();
    require(dtype_ok, what, " of format ", format_name(format), " must be ", dtype_list(info), ", got ",
            describe(c));
    // Head sizes the format cannot store (odd INT4, ...) are named by pkv_cache_view_check.
    const int64_t need = format_row_bytes(pkv_cache_format(format), head_size);
    const int64_t have = g.row * static_cast<int64_t>(ffi::ByteWidth(c.element_type()));
    require(have == need, what, " ", describe(c), ": its head rows hold ", have, " bytes, format ",
            format_name(format), " with head size ", head_size, " stores ", need);
}

const float *scale_pointer(const std::optional<ffi::AnyBuffer> &s, const char *what, int64_t heads, int64_t *count) {
    if (!s) return nullptr;
    require(s->element_type() == ffi::DataType::F32, what, " must be float32, got ", describe(*s));
    const auto d = s->dimensions();
    const int64_t n = static_cast<int64_t>(s->element_count());
    require(d.size() <= 1 && (n == 1 || n == heads), what, " must hold 1 (per tensor) or num_heads = ", heads,
            " (per head) float32 values, got ", describe(*s));
    if (*count == 0) *count = n;
    require(n == *count, "k_scale and v_scale must have the same length, got ", *count, " and ", n);
    return static_cast<const float *>(s->untyped_data());
}

}  // namespace

pkv_cache_view build_view(const Attrs &a, const ffi::AnyBuffer &kc, const ffi::AnyBuffer &vc, int64_t dk, int64_t dv,
                          const Extras &x, pkv_device device) {
    require(a.layout == PKV_HEAD_LAYOUT_NHD || a.layout == PKV_HEAD_LAYOUT_HND, "attribute layout=", a.layout,
            " is not 0 (NHD) or 1 (HND)");
    if (a.format == PKV_CACHE_FORMAT_FP8_DS_MLA)
        throw Failure{ffi::ErrorCode::kUnimplemented,
                      "fp8_ds_mla caches are K-only MLA caches: the write_mla target writes them"};
    require(a.flags >= 0 && a.flags <= 0xFFFFFFFF, "attribute flags=", a.flags, " is out of range");
    const bool fp8 = a.format == PKV_CACHE_FORMAT_FP8_E4M3 || a.format == PKV_CACHE_FORMAT_FP8_E5M2;
    const bool token_head =
        a.format >= PKV_CACHE_FORMAT_INT8_PER_TOKEN_HEAD && a.format <= PKV_CACHE_FORMAT_INT2_PER_TOKEN_HEAD;
    const bool rotated = a.format == PKV_CACHE_FORMAT_INT4_PER_TOKEN_HEAD;
    const char *fname = format_name(a.format);
    require(fp8 || (!x.k_scale && !x.v_scale), "k_scale / v_scale are for the fp8_e4m3 and fp8_e5m2 formats, not ",
            fname ? fname : "this format");
    require(token_head || !x.k_plane, "scale planes are for the per-token-head formats, not ",
            fname ? fname : "this format");
    require(token_head == bool(x.k_plane), "format ", fname ? fname : "", " needs k_scale_plane and v_scale_plane");
    require(rotated || !x.k_signs, "rotation signs are for the int4_per_token_head format only");

    const CacheDims gk = cache_dims(kc, a.layout, "key_cache");
    const CacheDims gv = cache_dims(vc, a.layout, "value_cache");
    require(gk.blocks == gv.blocks && gk.block_size == gv.block_size && gk.heads == gv.heads,
            "key_cache ", describe(kc), " and value_cache ", describe(vc),
            " differ in num_blocks, block_size or num_heads");
    check_row("key_cache", kc, gk, a.format, dk);
    check_row("value_cache", vc, gv, a.format, dv);

    pkv_cache_view v;
    check_status(pkv_cache_view_init(&v, sizeof v));
    v.flags = static_cast<uint32_t>(a.flags);
    v.format = static_cast<pkv_cache_format>(a.format);
    v.device = device;
    v.num_blocks = gk.blocks;
    v.block_size = gk.block_size;
    v.num_heads = gk.heads;
    v.head_size_k = dk;
    v.head_size_v = dv;
    v.k_data = kc.untyped_data();
    v.v_data = vc.untyped_data();
    cache_strides(gk, a.layout, ffi::ByteWidth(kc.element_type()), &v.k_stride_block, &v.k_stride_slot,
                  &v.k_stride_head);
    cache_strides(gv, a.layout, ffi::ByteWidth(vc.element_type()), &v.v_stride_block, &v.v_stride_slot,
                  &v.v_stride_head);

    int64_t scale_count = 0;
    v.k_scale = scale_pointer(x.k_scale, "k_scale", gk.heads, &scale_count);
    v.v_scale = scale_pointer(x.v_scale, "v_scale", gk.heads, &scale_count);
    v.scale_mode = scale_count > 1 ? PKV_SCALE_PER_HEAD : PKV_SCALE_PER_TENSOR;

    if (x.k_plane) {
        const CacheDims plane{gk.blocks, gk.block_size, gk.heads, 1};
        const char *doc = a.layout == PKV_HEAD_LAYOUT_HND ? "[num_blocks, num_heads, block_size] float32"
                                                          : "[num_blocks, block_size, num_heads] float32";
        for (const auto *p : {&*x.k_plane, &*x.v_plane}) {
            const char *what = p == &*x.k_plane ? "k_scale_plane" : "v_scale_plane";
            const auto d = dims_of(*p, 3, what, doc);
            const CacheDims got = a.layout == PKV_HEAD_LAYOUT_HND ? CacheDims{d[0], d[2], d[1], 1}
                                                                  : CacheDims{d[0], d[1], d[2], 1};
            require(p->element_type() == ffi::DataType::F32 && got.blocks == plane.blocks &&
                        got.block_size == plane.block_size && got.heads == plane.heads,
                    what, " must be ", doc, " matching the cache, got ", describe(*p));
        }
        v.k_scale_plane = static_cast<float *>(x.k_plane->untyped_data());
        v.v_scale_plane = static_cast<float *>(x.v_plane->untyped_data());
        cache_strides(plane, a.layout, 4, &v.k_scale_stride_block, &v.k_scale_stride_slot, &v.k_scale_stride_head);
        cache_strides(plane, a.layout, 4, &v.v_scale_stride_block, &v.v_scale_stride_slot, &v.v_scale_stride_head);
    }
    if (x.k_signs) {
        for (const auto *p : {&*x.k_signs, &*x.v_signs}) {
            const bool is_k = p == &*x.k_signs;
            const int64_t d = is_k ? dk : dv;
            require(p->element_type() == ffi::DataType::F32 && p->dimensions().size() == 1 &&
                        p->dimensions()[0] == d,
                    is_k ? "k_rotation_signs" : "v_rotation_signs", " must be [", d, "] float32, got ",
                    describe(*p));
        }
        v.k_rotation_signs = static_cast<const float *>(x.k_signs->untyped_data());
        v.v_rotation_signs = static_cast<const float *>(x.v_signs->untyped_data());
    }
    return v;
}

pkv_cache_view build_mla_view(const Attrs &a, const ffi::AnyBuffer &c, int64_t head_size, const Extras &x,
                              pkv_device device) {
    require(a.layout == PKV_HEAD_LAYOUT_NHD, "attribute layout=", a.layout, ": an MLA cache has one layout (0)");
    require(a.flags >= 0 && a.flags <= 0xFFFFFFFF, "attribute flags=", a.flags, " is out of range");
    const bool fp8 = a.format == PKV_CACHE_FORMAT_FP8_E4M3 || a.format == PKV_CACHE_FORMAT_FP8_E5M2;
    const char *fname = format_name(a.format);
    require(fp8 || !x.k_scale, "a scale is for the fp8_e4m3 and fp8_e5m2 formats, not ", fname ? fname : "this format");
    const auto d = dims_of(c, 3, "kv_cache", "3-D [num_blocks, block_size, entry]");
    if (a.format == PKV_CACHE_FORMAT_FP8_DS_MLA) {
        const auto t = c.element_type();
        require((t == ffi::DataType::U8 || t == ffi::DataType::S8) && d[2] == 656, "kv_cache of format fp8_ds_mla must "
                "be [num_blocks, block_size, 656] uint8 (656-byte entries), got ", describe(c));
    } else {
        const CacheDims g{d[0], d[1], 1, d[2]};
        check_row("kv_cache", c, g, a.format, head_size);
    }
    pkv_cache_view v;
    check_status(pkv_cache_view_init(&v, sizeof v));
    v.flags = static_cast<uint32_t>(a.flags);
    v.format = static_cast<pkv_cache_format>(a.format);
    v.device = device;
    v.num_blocks = d[0];
    v.block_size = d[1];
    v.num_heads = 1;
    v.head_size_k = head_size;
    v.k_data = c.untyped_data();
    const int64_t entry = d[2] * static_cast<int64_t>(ffi::ByteWidth(c.element_type()));
    v.k_stride_block = d[1] * entry;
    v.k_stride_slot = entry;
    v.k_stride_head = entry;
    int64_t scale_count = 0;
    v.k_scale = scale_pointer(x.k_scale, "scale", 1, &scale_count);
    return v;
}

void check_status(pkv_status status) {
    if (status == PKV_SUCCESS) return;
    ffi::ErrorCode code = ffi::ErrorCode::kInternal;
    switch (status) {
        case PKV_ERROR_INVALID_ARGUMENT:
        case PKV_ERROR_STRUCT_SIZE: code = ffi::ErrorCode::kInvalidArgument; break;
        case PKV_ERROR_NOT_SUPPORTED: code = ffi::ErrorCode::kUnimplemented; break;
        case PKV_ERROR_OUT_OF_HOST_MEMORY:
        case PKV_ERROR_OUT_OF_DEVICE_MEMORY: code = ffi::ErrorCode::kResourceExhausted; break;
        default: break;
    }
    throw Failure{code, std::string(pkv_last_error_message()) + " (" + pkv_status_string(status) + ")"};
}

}  // namespace xla
}  // namespace pkv
