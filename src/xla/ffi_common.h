// Shared pieces of the XLA FFI handlers: XLA buffers -> pkv_tensor / pkv_cache_view, the
// optional operands ("extras"), and the error boundary (pkv_status / C++ exception -> ffi::Error).
// Only compiled when the XLA FFI headers are available (PKV_ENABLE_XLA).
#pragma once

#include <cstdint>
#include <optional>
#include <string_view>
#include <type_traits>
#include <string>
#include <utility>

#include "pagedkv.h"
#include "pagedkv_xla.h"
#include "xla/ffi/api/ffi.h"

namespace pkv {
namespace xla {

namespace ffi = ::xla::ffi;

// Thrown by the checks below; caught at the handler boundary (guarded) and returned as an
// ffi::Error "<op>: <message>".
struct Failure {
    ffi::ErrorCode code;
    std::string message;
};

inline std::string to_text(const std::string &s) { return s; }
inline std::string to_text(const char *s) { return s ? s : "(null)"; }
inline std::string to_text(std::string_view s) { return std::string(s); }
template <typename T, typename = std::enable_if_t<std::is_arithmetic_v<T>>> std::string to_text(T v) {
    return std::to_string(v);
}
template <typename... Parts> std::string concat(Parts &&...parts) {
    std::string s;
    (s.append(to_text(std::forward<Parts>(parts))), ...);
    return s;
}

template <typename... Parts> void require(bool ok, Parts &&...parts) {
    if (!ok) throw Failure{ffi::ErrorCode::kInvalidArgument, concat(std::forward<Parts>(parts)...)};
}

// jnp-style name of an XLA element type ("bfloat16", "float8_e4m3fn", "int32").
const char *dtype_name(ffi::DataType t);
// "[2, 16, 8, 128] bfloat16"
std::string describe(const ffi::AnyBuffer &b);

// pkv_dtype of an XLA element type; throws naming `what` for one pagedkv has no dtype for.
pkv_dtype pkv_dtype_of(ffi::DataType t, const char *what);

// A dense row-major pkv_tensor over an XLA buffer (rank <= PKV_MAX_DIMS).
pkv_tensor to_tensor(const ffi::AnyBuffer &b, pkv_device device, const char *what);

// Require a rank and return the dimensions.
ffi::AnyBuffer::Dimensions dims_of(const ffi::AnyBuffer &b, size_t rank, const char *what, const char *shape_doc);

// Attributes shared by both handlers.
struct Attrs {
    int64_t format;
    int64_t layout;
    int64_t extras;
    int64_t flags;
};

// The optional operands named by Attrs::extras, in bit order, from the handler's remaining args.
struct Extras {
    std::optional<ffi::AnyBuffer> seq_starts;
    std::optional<ffi::AnyBuffer> k_scale, v_scale;
    std::optional<ffi::AnyBuffer> k_plane, v_plane;
    std::optional<ffi::AnyBuffer> k_signs, v_signs;
    std::optional<ffi::AnyBuffer> out_key_init, out_value_init;

    // allowed: the PKV_XLA_ARG_* bits this op accepts.
    Extras(const ffi::RemainingArgs &args, int64_t bits, uint32_t allowed);
};

// The cache view over the K / V cache buffers (and extras) of one call. head_size_k / _v come
// from the dense side (key / value, or the gather outputs). The buffers must stay alive.
pkv_cache_view build_view(const Attrs &attrs, const ffi::AnyBuffer &key_cache, const ffi::AnyBuffer &value_cache,
                          int64_t head_size_k, int64_t head_size_v, const Extras &extras, pkv_device device);

// The K-only one-head view of an MLA latent cache [NB, BS, entry] (entry = R + P elements of
// the format, or the 656 bytes of fp8_ds_mla) for head size R + P; k_scale from the extras.
pkv_cache_view build_mla_view(const Attrs &attrs, const ffi::AnyBuffer &cache, int64_t head_size, const Extras &extras,
                              pkv_device device);

// pkv_status of a C API call -> Success, or the error with pkv_last_error_message().
void check_status(pkv_status status);

// Run a handler body: Failure / std::exception / anything -> ffi::Error "<op>: <message>".
template <typename Body> ffi::Error guarded(const char *op, Body &&body) noexcept {
    try {
        body();
        return ffi::Error::Success();
    } catch (const Failure &f) {
        try {
            return ffi::Error(f.code, std::string(op) + ": " + f.message);
        } catch (...) {
            return ffi::Error(f.code, std::string());
        }
    } catch (const std::exception &e) {
        try {
            return ffi::Error::Internal(std::string(op) + ": internal error: " + e.what());
        } catch (...) {
            return ffi::Error::Internal(std::string());
        }
    } catch (...) {
        return ffi::Error::Internal(std::string());
    }
}

}  // namespace xla
}  // namespace pkv
