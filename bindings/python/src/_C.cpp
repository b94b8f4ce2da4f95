// pagedkv._C — the pybind11 layer of the pagedkv Python package.
//
// It calls only the public C API (include/pagedkv.h). Its one real job is turning Python tensor
// objects into pkv_tensor views without copying: NumPy arrays (ml_dtypes bf16 / fp8 included),
// the DLPack C exchange API (__dlpack_c_exchange_api__, PyTorch >= 2.10), the __dlpack__
// protocol (PyTorch, CuPy, JAX, ...), __cuda_array_interface__ and __array_interface__. The
// producer objects stay referenced for the duration of each call; the GIL is released while the
// library runs. Everything else (enums, handles, vLLM and torch.library glue) is Python.
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <pagedkv.h>

#include <array>
#include <cstring>
#include <deque>
#include <memory>
#include <cstdio>
#include <type_traits>
#include <string>
#include <unordered_map>
#include <vector>

#include "dlpack_abi.h"

namespace py = pybind11;

namespace {

// ------------------------------------------------------------------------------------ errors

// A failing call: becomes pagedkv.PagedKVError(status, message) in Python.
struct PkvError {
    int status;
    std::string message;
};

// Message building without iostreams: in some Python environments (python 3.12 + numpy 2.5,
// gcc 13) formatting a number through std::ostringstream inside the module crashed on a null
// locale facet; plain string appends need no locale.
inline void cat_part(std::string &s, const char *p) { s += p; }
inline void cat_part(std::string &s, const std::string &p) { s += p; }
inline void cat_part(std::string &s, char c) { s += c; }
inline void cat_part(std::string &s, bool b) { s += b ? "true" : "false"; }
template <typename T>
std::enable_if_t<std::is_integral_v<T>> cat_part(std::string &s, T v) { s += std::to_string(v); }
template <typename T>
std::enable_if_t<std::is_floating_point_v<T>> cat_part(std::string &s, T v) {
    char buf[32];
    std::snprintf(buf, sizeof buf, "%g", double(v));
    s += buf;
}

template <typename... Ts>
std::string cat(const Ts &...parts) {
    std::string s;
    (cat_part(s, parts), ...);
    return s;
}

[[noreturn]] void fail(int status, const std::string &message) { throw PkvError{status, message}; }

// Turn a pkv_status into an exception carrying the library's thread-local message. Called on
// the thread that made the call, before any other pkv_* call.
inline void check(pkv_status status) {
    if (status != PKV_SUCCESS) throw PkvError{int(status), pkv_last_error_message()};
}

// ------------------------------------------------------------------------------------ dtypes

int64_t dtype_bytes(pkv_dtype d) { return int64_t(pkv_dtype_size_bits(d) / 8); }

bool dtype_from_dlpack(DLDataType t, pkv_dtype *out) {
    if (t.lanes != 1) return false;
    switch (t.code) {
    case kDLFloat:
        if (t.bits == 32) { *out = PKV_DTYPE_F32; return true; }
        if (t.bits == 16) { *out = PKV_DTYPE_F16; return true; }
        return false;
    case kDLBfloat:
        if (t.bits == 16) { *out = PKV_DTYPE_BF16; return true; }
        return false;
    case kDLFloat8_e4m3fn:
        if (t.bits == 8) { *out = PKV_DTYPE_FP8_E4M3; return true; }
        return false;
    case kDLFloat8_e5m2:
        if (t.bits == 8) { *out = PKV_DTYPE_FP8_E5M2; return true; }
        return false;
    case kDLInt:
        if (t.bits == 8) { *out = PKV_DTYPE_INT8; return true; }
        if (t.bits == 32) { *out = PKV_DTYPE_INT32; return true; }
        if (t.bits == 64) { *out = PKV_DTYPE_INT64; return true; }
        return false;
    case kDLUInt:
        if (t.bits == 8) { *out = PKV_DTYPE_UINT8; return true; }
        return false;
    default:
        return false;
    }
}

DLDataType dtype_to_dlpack(pkv_dtype d) {
    switch (d) {
    case PKV_DTYPE_F32: return {kDLFloat, 32, 1};
    case PKV_DTYPE_F16: return {kDLFloat, 16, 1};
    case PKV_DTYPE_BF16: return {kDLBfloat, 16, 1};
    case PKV_DTYPE_FP8_E4M3: return {kDLFloat8_e4m3fn, 8, 1};
    case PKV_DTYPE_FP8_E5M2: return {kDLFloat8_e5m2, 8, 1};
    case PKV_DTYPE_INT8: return {kDLInt, 8, 1};
    case PKV_DTYPE_UINT8: return {kDLUInt, 8, 1};
    case PKV_DTYPE_INT32: return {kDLInt, 32, 1};
    case PKV_DTYPE_INT64: return {kDLInt, 64, 1};
    default: return {kDLUInt, 8, 1};
    }
}

// NumPy typestr of the dtypes NumPy itself has ("" for bf16 / fp8).
const char *dtype_typestr(pkv_dtype d) {
    switch (d) {
    case PKV_DTYPE_F32: return "<f4";
    case PKV_DTYPE_F16: return "<f2";
    case PKV_DTYPE_INT8: return "|i1";
    case PKV_DTYPE_UINT8: return "|u1";
    case PKV_DTYPE_INT32: return "<i4";
    case PKV_DTYPE_INT64: return "<i8";
    default: return "";
    }
}

// "<f4", "|u1", ... (array interface typestr) -> dtype.
bool dtype_from_typestr(const std::string &s, pkv_dtype *out) {
    if (s.size() < 3) return false;
    if (s[0] == '>' && s.substr(1) != "i1" && s.substr(1) != "u1") return false;
    const std::string k = s.substr(1);
    if (k == "f4") *out = PKV_DTYPE_F32;
    else if (k == "f2") *out = PKV_DTYPE_F16;
    else if (k == "i1") *out = PKV_DTYPE_INT8;
    else if (k == "u1") *out = PKV_DTYPE_UINT8;
    else if (k == "i4") *out = PKV_DTYPE_INT32;
    else if (k == "i8") *out = PKV_DTYPE_INT64;
    else return false;
    return true;
}

// NumPy dtypes (descr objects are cached; ml_dtypes' bfloat16 / float8_* are matched by name).
bool dtype_from_numpy(const py::dtype &dt, pkv_dtype *out, std::string *why) {
    static std::unordered_map<PyObject *, int> cache; // descr -> pkv_dtype, -1 = unsupported
    PyObject *key = dt.ptr();
    auto it = cache.find(key);
    if (it == cache.end()) {
        int code = -1;
        const bool native = py::cast<bool>(dt.attr("isnative"));
        const char kind = dt.kind();
        const auto size = dt.itemsize();
        const std::string name = py::cast<std::string>(dt.attr("name"));
        if (native) {
            if (kind == 'f' && size == 4) code = PKV_DTYPE_F32;
            else if (kind == 'f' && size == 2) code = PKV_DTYPE_F16;
            else if (kind == 'i' && size == 1) code = PKV_DTYPE_INT8;
            else if (kind == 'u' && size == 1) code = PKV_DTYPE_UINT8;
            else if (kind == 'i' && size == 4) code = PKV_DTYPE_INT32;
            else if (kind == 'i' && size == 8) code = PKV_DTYPE_INT64;
            else if (name == "bfloat16") code = PKV_DTYPE_BF16;
            else if (name == "float8_e4m3fn") code = PKV_DTYPE_FP8_E4M3;
            else if (name == "float8_e5m2") code = PKV_DTYPE_FP8_E5M2;
        }
        Py_INCREF(key); // descr objects are long-lived; keep the key valid
        it = cache.emplace(key, code).first;
    }
    if (it->second < 0) {
        *why = cat("NumPy dtype ", py::cast<std::string>(py::str(dt)), " is not supported");
        return false;
    }
    *out = pkv_dtype(it->second);
    return true;
}

// ------------------------------------------------------------------------------------ tensors

bool g_have_numpy = false; // numpy importable (checked once at module import)

// The exchange API of a type (cached per type; nullptr when the type has none).
const DLPackExchangeAPI *exchange_api(PyTypeObject *type) {
    static std::unordered_map<PyTypeObject *, const DLPackExchangeAPI *> cache;
    auto it = cache.find(type);
    if (it != cache.end()) return it->second;
    const DLPackExchangeAPI *api = nullptr;
    PyObject *cap = PyObject_GetAttrString(reinterpret_cast<PyObject *>(type), "__dlpack_c_exchange_api__");
    if (cap == nullptr) {
        PyErr_Clear();
    } else {
        if (PyCapsule_IsValid(cap, "dlpack_exchange_api")) {
            auto *p = static_cast<const DLPackExchangeAPI *>(PyCapsule_GetPointer(cap, "dlpack_exchange_api"));
            if (p != nullptr && p->header.version.major == 1 && p->current_work_stream != nullptr &&
                (p->dltensor_from_py_object_no_sync != nullptr || p->managed_tensor_from_py_object_no_sync != nullptr))
                api = p;
        }
        PyErr_Clear();
        Py_DECREF(cap); // the table itself is static in the producer library
    }
    Py_INCREF(type);
    cache.emplace(type, api);
    return api;
}

enum class Source : uint8_t { None, NumPy, Exchange, DLPack, CudaArrayInterface, ArrayInterface, Raw };

enum ArgFlags : unsigned {
    kRequired = 0,
    kOptional = 1u << 0, // None allowed
    kWritable = 1u << 1, // the call writes through it
    kAnyDtype = 1u << 2, // only the data pointer and device are used (raw memory)
};

struct ManagedDeleter {
    void operator()(DLManagedTensorVersioned *m) const {
        if (m != nullptr && m->deleter != nullptr) m->deleter(m);
    }
};

// One tensor argument of a call.
struct TensorArg {
    const char *name = "";
    py::handle obj;
    unsigned flags = 0;
    pkv_tensor t{};
    bool present = false;
    bool pending = false; // __dlpack__ still to be called (needs the stream)
    Source source = Source::None;
    const DLPackExchangeAPI *api = nullptr;
    bool has_cai_stream = false;
    uintptr_t cai_stream = 0;
    py::object keep; // capsule
    std::unique_ptr<DLManagedTensorVersioned, ManagedDeleter> managed;

    pkv_tensor *ptr() { return present ? &t : nullptr; }
    bool is_cuda() const { return present && t.device.type == PKV_DEVICE_CUDA; }
};

void set_contiguous_strides(pkv_tensor &t) {
    int64_t s = 1;
    for (int d = t.ndim - 1; d >= 0; --d) {
        t.strides[d] = s;
        s *= t.shape[d];
    }
}

pkv_device device_from_dlpack(const char *fn, const TensorArg &a, DLDevice dev) {
    switch (dev.device_type) {
    case kDLCPU: return {PKV_DEVICE_CPU, 0};
    case kDLCUDA:
    case kDLCUDAManaged: return {PKV_DEVICE_CUDA, dev.device_id};
    case kDLCUDAHost: return {PKV_DEVICE_CUDA_HOST, 0};
    default:
        fail(PKV_ERROR_INVALID_ARGUMENT,
             cat(fn, ": ", a.name, " lives on DLPack device type ", dev.device_type, ", not CPU or CUDA"));
    }
}

void fill_from_dltensor(const char *fn, TensorArg &a, const DLTensor &dl, uint64_t flags) {
    if (dl.ndim < 0 || dl.ndim > PKV_MAX_DIMS)
        fail(PKV_ERROR_INVALID_ARGUMENT, cat(fn, ": ", a.name, " has ", dl.ndim, " dimensions, at most ", PKV_MAX_DIMS,
                                            " are supported"));
    pkv_dtype dtype = PKV_DTYPE_UINT8;
    if (!dtype_from_dlpack(dl.dtype, &dtype) && !(a.flags & kAnyDtype))
        fail(PKV_ERROR_INVALID_ARGUMENT, cat(fn, ": ", a.name, " has an unsupported dtype (DLPack code ",
                                            int(dl.dtype.code), ", ", int(dl.dtype.bits), " bits, ",
                                            int(dl.dtype.lanes), " lanes)"));
    if ((a.flags & kWritable) && (flags & PKV_DLPACK_FLAG_READ_ONLY))
        fail(PKV_ERROR_INVALID_ARGUMENT, cat(fn, ": ", a.name, " is read-only but the call writes into it"));
    a.t.data = static_cast<char *>(dl.data) + dl.byte_offset;
    a.t.dtype = dtype;
    a.t.device = device_from_dlpack(fn, a, dl.device);
    a.t.ndim = dl.ndim;
    for (int d = 0; d < dl.ndim; ++d) a.t.shape[d] = dl.shape[d];
    if (dl.strides != nullptr) {
        for (int d = 0; d < dl.ndim; ++d) a.t.strides[d] = dl.strides[d];
    } else {
        set_contiguous_strides(a.t);
    }
    a.present = true;
}

void fill_from_numpy(const char *fn, TensorArg &a) {
    auto arr = py::reinterpret_borrow<py::array>(a.obj);
    std::string why;
    pkv_dtype dtype = PKV_DTYPE_UINT8;
    int64_t item = 0;
    if (dtype_from_numpy(arr.dtype(), &dtype, &why)) item = dtype_bytes(dtype);
    else if (a.flags & kAnyDtype) item = int64_t(arr.itemsize());
    else fail(PKV_ERROR_INVALID_ARGUMENT, cat(fn, ": ", a.name, ": ", why));
    if (arr.ndim() > PKV_MAX_DIMS)
        fail(PKV_ERROR_INVALID_ARGUMENT,
             cat(fn, ": ", a.name, " has ", arr.ndim(), " dimensions, at most ", PKV_MAX_DIMS, " are supported"));
    if ((a.flags & kWritable) && !arr.writeable())
        fail(PKV_ERROR_INVALID_ARGUMENT, cat(fn, ": ", a.name, " is read-only but the call writes into it"));
    a.t.data = const_cast<void *>(arr.data());
    a.t.dtype = dtype;
    a.t.device = {PKV_DEVICE_CPU, 0};
    a.t.ndim = int32_t(arr.ndim());
    for (int d = 0; d < a.t.ndim; ++d) {
        a.t.shape[d] = arr.shape(d);
        const int64_t s = arr.strides(d);
        if (s % item != 0) {
            if (a.t.shape[d] > 1)
                fail(PKV_ERROR_INVALID_ARGUMENT, cat(fn, ": ", a.name, " stride ", s, " bytes of dimension ", d,
                                                    " is not a multiple of the ", item, "-byte element"));
            a.t.strides[d] = 0;
        } else {
            a.t.strides[d] = s / item;
        }
    }
    a.present = true;
}

// __cuda_array_interface__ / __array_interface__ dictionaries.
void fill_from_interface(const char *fn, TensorArg &a, const py::dict &d, bool cuda) {
    const std::string typestr = py::cast<std::string>(d["typestr"]);
    pkv_dtype dtype = PKV_DTYPE_UINT8;
    if (!dtype_from_typestr(typestr, &dtype) && !(a.flags & kAnyDtype))
        fail(PKV_ERROR_INVALID_ARGUMENT, cat(fn, ": ", a.name, " has unsupported typestr '", typestr, "'"));
    auto shape = py::cast<py::tuple>(d["shape"]);
    if (shape.size() > size_t(PKV_MAX_DIMS))
        fail(PKV_ERROR_INVALID_ARGUMENT,
             cat(fn, ": ", a.name, " has ", shape.size(), " dimensions, at most ", PKV_MAX_DIMS, " are supported"));
    py::object data = d["data"];
    if (!py::isinstance<py::tuple>(data))
        fail(PKV_ERROR_INVALID_ARGUMENT, cat(fn, ": ", a.name, ": only a (pointer, read_only) 'data' entry is supported"));
    auto data_t = py::cast<py::tuple>(data);
    const auto ptr = py::cast<uintptr_t>(data_t[0]);
    const bool read_only = py::cast<bool>(data_t[1]);
    if ((a.flags & kWritable) && read_only)
        fail(PKV_ERROR_INVALID_ARGUMENT, cat(fn, ": ", a.name, " is read-only but the call writes into it"));
    const int64_t item = dtype_bytes(dtype);
    a.t.data = reinterpret_cast<void *>(ptr);
    a.t.dtype = dtype;
    a.t.ndim = int32_t(shape.size());
    for (int i = 0; i < a.t.ndim; ++i) a.t.shape[i] = py::cast<int64_t>(shape[i]);
    py::object strides = d.contains("strides") ? py::object(d["strides"]) : py::object(py::none());
    if (strides.is_none()) {
        set_contiguous_strides(a.t);
    } else {
        auto st = py::cast<py::tuple>(strides);
        for (int i = 0; i < a.t.ndim; ++i) {
            const int64_t s = py::cast<int64_t>(st[i]);
            if (s % item != 0 && a.t.shape[i] > 1)
                fail(PKV_ERROR_INVALID_ARGUMENT, cat(fn, ": ", a.name, " stride ", s, " bytes of dimension ", i,
                                                    " is not a multiple of the ", item, "-byte element"));
            a.t.strides[i] = s / item;
        }
    }
    if (cuda) {
        int32_t id = 0;
        // The interface has no device; CuPy arrays have .device.id, others are taken to be on 0.
        if (py::hasattr(a.obj, "device")) {
            py::object dev = a.obj.attr("device");
            if (py::hasattr(dev, "id")) id = py::cast<int32_t>(dev.attr("id"));
            else if (py::hasattr(dev, "index") && !dev.attr("index").is_none()) id = py::cast<int32_t>(dev.attr("index"));
        }
        a.t.device = {PKV_DEVICE_CUDA, id};
        if (d.contains("stream") && !d["stream"].is_none()) {
            a.has_cai_stream = true;
            a.cai_stream = py::cast<uintptr_t>(d["stream"]);
        }
    } else {
        a.t.device = {PKV_DEVICE_CPU, 0};
    }
    a.present = true;
}

// First look at an argument: everything that needs no stream is converted now.
void probe(const char *fn, TensorArg &a) {
    PyObject *o = a.obj.ptr();
    if (o == nullptr || o == Py_None) {
        if (!(a.flags & kOptional)) throw py::type_error(cat(fn, ": ", a.name, " must be a tensor, got None"));
        return;
    }
    if (g_have_numpy && py::isinstance<py::array>(a.obj)) {
        a.source = Source::NumPy;
        fill_from_numpy(fn, a);
        return;
    }
    if (const DLPackExchangeAPI *api = exchange_api(Py_TYPE(o))) {
        a.source = Source::Exchange;
        a.api = api;
        if (api->dltensor_from_py_object_no_sync != nullptr) {
            DLTensor dl;
            if (api->dltensor_from_py_object_no_sync(o, &dl) != 0) throw py::error_already_set();
            fill_from_dltensor(fn, a, dl, 0);
        } else {
            DLManagedTensorVersioned *m = nullptr;
            if (api->managed_tensor_from_py_object_no_sync(o, &m) != 0) throw py::error_already_set();
            a.managed.reset(m);
            fill_from_dltensor(fn, a, m->dl_tensor, m->flags);
        }
        return;
    }
    if (PyObject_HasAttrString(o, "__dlpack__")) {
        a.source = Source::DLPack;
        a.pending = true;
        // The device decides the stream handed to __dlpack__.
        auto dev = py::cast<py::tuple>(a.obj.attr("__dlpack_device__")());
        DLDevice d{py::cast<int32_t>(dev[0]), py::cast<int32_t>(dev[1])};
        a.t.device = device_from_dlpack(fn, a, d);
        a.present = true;
        return;
    }
    if (PyObject_HasAttrString(o, "__cuda_array_interface__")) {
        a.source = Source::CudaArrayInterface;
        fill_from_interface(fn, a, py::cast<py::dict>(a.obj.attr("__cuda_array_interface__")), true);
        return;
    }
    if (PyObject_HasAttrString(o, "__array_interface__")) {
        a.source = Source::ArrayInterface;
        fill_from_interface(fn, a, py::cast<py::dict>(a.obj.attr("__array_interface__")), false);
        return;
    }
    throw py::type_error(cat(fn, ": ", a.name,
                             " must be a tensor (NumPy array, an object with __dlpack__ or "
                             "__cuda_array_interface__), got ",
                             Py_TYPE(o)->tp_name));
}

// __dlpack__ with the consumer stream (DLPack: 1 = legacy default stream; -1 = no sync).
void finish_dlpack(const char *fn, TensorArg &a, py::object stream_arg) {
    py::object meth = a.obj.attr("__dlpack__");
    py::object cap;
    try {
        cap = meth(py::arg("stream") = stream_arg, py::arg("max_version") = py::make_tuple(1, 3));
    } catch (py::error_already_set &e) {
        if (!e.matches(PyExc_TypeError)) throw;
        cap = meth(py::arg("stream") = stream_arg); // producer predating max_version
    }
    PyObject *c = cap.ptr();
    if (PyCapsule_IsValid(c, "dltensor_versioned")) {
        auto *m = static_cast<DLManagedTensorVersioned *>(PyCapsule_GetPointer(c, "dltensor_versioned"));
        if (m->version.major != 1)
            fail(PKV_ERROR_INVALID_ARGUMENT,
                 cat(fn, ": ", a.name, " is a DLPack ", m->version.major, ".x tensor; 1.x is supported"));
        fill_from_dltensor(fn, a, m->dl_tensor, m->flags);
    } else if (PyCapsule_IsValid(c, "dltensor")) {
        auto *m = static_cast<DLManagedTensor *>(PyCapsule_GetPointer(c, "dltensor"));
        fill_from_dltensor(fn, a, m->dl_tensor, 0);
    } else {
        fail(PKV_ERROR_INVALID_ARGUMENT, cat(fn, ": ", a.name, ".__dlpack__() did not return a DLPack capsule"));
    }
    // Not renamed "used_dltensor": the capsule's destructor returns the tensor to the producer
    // when `keep` is released at the end of the call.
    a.keep = std::move(cap);
    a.pending = false;
}

pkv_stream stream_from_int(uintptr_t v) { return reinterpret_cast<pkv_stream>(v); }

// stream=: an int handle, an object with __cuda_stream__ (returns (version, handle)) or with
// .cuda_stream (torch.cuda.Stream) / .ptr (cupy.cuda.Stream).
pkv_stream parse_stream(py::handle s) {
    if (PyLong_Check(s.ptr())) {
        const unsigned long long v = PyLong_AsUnsignedLongLong(s.ptr());
        if (PyErr_Occurred()) {
            PyErr_Clear();
            throw py::value_error("stream must be a non-negative integer handle");
        }
        return stream_from_int(uintptr_t(v));
    }
    if (py::hasattr(s, "__cuda_stream__")) {
        py::object r = s.attr("__cuda_stream__")();
        if (py::isinstance<py::tuple>(r)) return stream_from_int(py::cast<uintptr_t>(py::cast<py::tuple>(r)[1]));
        return stream_from_int(py::cast<uintptr_t>(r));
    }
    if (py::hasattr(s, "cuda_stream")) return stream_from_int(py::cast<uintptr_t>(s.attr("cuda_stream")));
    if (py::hasattr(s, "ptr")) return stream_from_int(py::cast<uintptr_t>(s.attr("ptr")));
    throw py::type_error(cat("stream must be an int handle or an object with __cuda_stream__ or cuda_stream, got ",
                             Py_TYPE(s.ptr())->tp_name));
}

std::string type_module(py::handle obj) {
    py::object mod = py::type::handle_of(obj).attr("__module__");
    std::string m = py::cast<std::string>(mod);
    auto dot = m.find('.');
    return dot == std::string::npos ? m : m.substr(0, dot);
}

int32_t cuda_device_count_cached() {
    static int32_t count = -1;
    if (count < 0) {
        int32_t c = 0;
        if (pkv_cuda_device_count(&c) != PKV_SUCCESS) c = 0;
        count = c;
    }
    return count;
}

// The stream a call uses when stream=None: the framework's current stream for the first CUDA
// tensor (PyTorch through the exchange API or torch.cuda.current_stream, CuPy's current
// stream), else the legacy default stream.
pkv_stream default_stream(const TensorArg &a) {
    if (a.api != nullptr) {
        void *s = nullptr;
        if (a.api->current_work_stream(kDLCUDA, a.t.device.id, &s) != 0) throw py::error_already_set();
        return static_cast<pkv_stream>(s);
    }
    const std::string mod = type_module(a.obj);
    if (mod == "torch") {
        py::object cur = py::module_::import("torch").attr("cuda").attr("current_stream")(a.t.device.id);
        return stream_from_int(py::cast<uintptr_t>(cur.attr("cuda_stream")));
    }
    if (mod == "cupy") {
        py::object cur = py::module_::import("cupy").attr("cuda").attr("get_current_stream")();
        return stream_from_int(py::cast<uintptr_t>(cur.attr("ptr")));
    }
    return nullptr;
}

// With several GPUs, make the tensors' device current for the call (the C API expects the
// caller to): torch.cuda.device / cupy.cuda.Device, when the producer is one of those.
class DeviceGuard {
public:
    DeviceGuard() = default;
    void enter(const TensorArg &a) {
        if (cuda_device_count_cached() <= 1) return;
        const std::string mod = type_module(a.obj);
        if (mod == "torch") {
            py::object torch_cuda = py::module_::import("torch").attr("cuda");
            if (py::cast<int>(torch_cuda.attr("current_device")()) == a.t.device.id) return;
            ctx_ = torch_cuda.attr("device")(a.t.device.id);
        } else if (mod == "cupy") {
            ctx_ = py::module_::import("cupy").attr("cuda").attr("Device")(a.t.device.id);
        } else {
            return;
        }
        ctx_.attr("__enter__")();
    }
    ~DeviceGuard() {
        if (ctx_) {
            try {
                ctx_.attr("__exit__")(py::none(), py::none(), py::none());
            } catch (...) {
            }
        }
    }

private:
    py::object ctx_;
};

// The tensors of one call, their conversion, the stream and the device guard.
class Call {
public:
    explicit Call(const char *fn) : fn_(fn) {}

    TensorArg &add(const char *name, py::handle obj, unsigned flags = kRequired) {
        args_.emplace_back();
        TensorArg &a = args_.back();
        a.name = name;
        a.obj = obj;
        a.flags = flags;
        probe(fn_, a);
        return a;
    }

    // Resolve the stream and convert the remaining (__dlpack__) tensors. `no_sync`: building a
    // view (nothing is enqueued), so the producers are asked for no stream synchronization.
    void resolve(py::handle stream_obj, bool no_sync = false) {
        const TensorArg *first_cuda = nullptr;
        for (auto &a : args_)
            if (a.is_cuda()) {
                first_cuda = &a;
                break;
            }
        if (first_cuda != nullptr) {
            if (stream_obj && !stream_obj.is_none()) stream_ = parse_stream(stream_obj);
            else if (!no_sync) stream_ = default_stream(*first_cuda);
        } else if (stream_obj && !stream_obj.is_none()) {
            stream_ = parse_stream(stream_obj); // CPU tensors: the library ignores it
        }
        for (auto &a : args_) {
            if (!a.pending) continue;
            py::object s = py::none();
            if (a.t.device.type == PKV_DEVICE_CUDA)
                s = no_sync ? py::int_(-1) : py::int_(stream_ == nullptr ? uintptr_t(1) : reinterpret_cast<uintptr_t>(stream_));
            finish_dlpack(fn_, a, s);
        }
        // __cuda_array_interface__ v3: wait (host) for the producer's stream when it differs.
        for (auto &a : args_) {
            if (!a.has_cai_stream || no_sync) continue;
            const uintptr_t ours = stream_ == nullptr ? 1 : reinterpret_cast<uintptr_t>(stream_);
            if (a.cai_stream != ours) check(pkv_stream_synchronize(a.cai_stream == 1 ? nullptr : stream_from_int(a.cai_stream)));
        }
        if (first_cuda != nullptr && !no_sync) guard_.enter(*first_cuda);
    }

    pkv_stream stream() const { return stream_; }
    const char *fn() const { return fn_; }

private:
    const char *fn_;
    std::deque<TensorArg> args_; // references to elements stay valid as arguments are added
    pkv_stream stream_ = nullptr;
    DeviceGuard guard_;
};

// Data pointer of a 1-element tensor (scale, counter) after checking its dtype.
template <typename T>
T *scalar_ptr(const char *fn, TensorArg &a, pkv_dtype want, const char *what) {
    if (!a.present) return nullptr;
    if (a.t.dtype != want)
        fail(PKV_ERROR_INVALID_ARGUMENT, cat(fn, ": ", a.name, " must be ", pkv_dtype_name(want), " (", what, "), got ",
                                            pkv_dtype_name(a.t.dtype)));
    int64_t n = 1;
    for (int d = 0; d < a.t.ndim; ++d) n *= a.t.shape[d];
    if (n < 1) fail(PKV_ERROR_INVALID_ARGUMENT, cat(fn, ": ", a.name, " is empty"));
    return static_cast<T *>(a.t.data);
}

py::dict tensor_dict(const pkv_tensor &t) {
    py::dict d;
    d["data"] = reinterpret_cast<uintptr_t>(t.data);
    d["dtype"] = int(t.dtype);
    d["device"] = py::make_tuple(int(t.device.type), t.device.id);
    py::list shape, strides;
    for (int i = 0; i < t.ndim; ++i) {
        shape.append(t.shape[i]);
        strides.append(t.strides[i]);
    }
    d["shape"] = py::tuple(shape);
    d["strides"] = py::tuple(strides);
    return d;
}

// ------------------------------------------------------------------------------------ cache view

struct CacheView {
    pkv_cache_view v = PKV_CACHE_VIEW_INIT;
    py::list keepalive; // the objects the view's pointers point into
};

enum ViewKind : int { kViewBSHD = 0, kViewLegacy5D = 1, kViewMLA = 2 };

bool is_plain_format(int f) { return f >= PKV_CACHE_FORMAT_F32 && f <= PKV_CACHE_FORMAT_FP8_E5M2; }
int64_t plain_format_bits(int f) {
    switch (f) {
    case PKV_CACHE_FORMAT_F32: return 32;
    case PKV_CACHE_FORMAT_F16:
    case PKV_CACHE_FORMAT_BF16: return 16;
    default: return 8;
    }
}
// Bytes of one stored head row of `head_size` elements (codes only).
int64_t row_code_bytes(int f, int64_t head_size) {
    switch (f) {
    case PKV_CACHE_FORMAT_INT4_PER_TOKEN_HEAD: return head_size / 2;
    case PKV_CACHE_FORMAT_INT2_PER_TOKEN_HEAD: return head_size / 4;
    case PKV_CACHE_FORMAT_FP8_DS_MLA: return 656;
    case PKV_CACHE_FORMAT_INT8_PER_TOKEN_HEAD:
    case PKV_CACHE_FORMAT_FP8_PER_TOKEN_HEAD: return head_size;
    default: return head_size * plain_format_bits(f) / 8;
    }
}
// Head size from the bytes of a stored row (inline scales: 4 bytes of scale after the codes).
int64_t head_size_from_row(const char *fn, int f, int64_t row_bytes, bool inline_scales, const char *which) {
    if (f == PKV_CACHE_FORMAT_FP8_DS_MLA) return 576;
    int64_t code_bytes = row_bytes - (inline_scales ? 4 : 0);
    if (code_bytes <= 0) fail(PKV_ERROR_INVALID_ARGUMENT, cat(fn, ": ", which, " rows of ", row_bytes, " bytes are too short"));
    if (is_plain_format(f)) {
        const int64_t e = plain_format_bits(f) / 8;
        if (code_bytes % e != 0)
            fail(PKV_ERROR_INVALID_ARGUMENT, cat(fn, ": ", which, " rows of ", row_bytes,
                                                " bytes are not a whole number of elements of the format"));
        return code_bytes / e;
    }
    switch (f) {
    case PKV_CACHE_FORMAT_INT4_PER_TOKEN_HEAD: return code_bytes * 2;
    case PKV_CACHE_FORMAT_INT2_PER_TOKEN_HEAD: return code_bytes * 4;
    default: return code_bytes;
    }
}

struct SideGeometry {
    int64_t num_blocks, block_size, num_heads, row_elems;
    int64_t stride_block, stride_slot, stride_head; // bytes
    int64_t chunk = 0, stride_chunk = 0, head_size_from_chunks = 0;
};

SideGeometry side_geometry(const char *fn, TensorArg &a, int kind, const std::array<int, 4> &perm) {
    const pkv_tensor &t = a.t;
    const int64_t e = dtype_bytes(t.dtype);
    SideGeometry g{};
    if (kind == kViewBSHD) {
        if (t.ndim != 4)
            fail(PKV_ERROR_INVALID_ARGUMENT,
                 cat(fn, ": ", a.name, " must be 4-D [num_blocks, block_size, num_heads, head_size] (any strides), got ",
                     t.ndim, "-D"));
        const int b = perm[0], s = perm[1], h = perm[2], d = perm[3];
        if (d != 3) fail(PKV_ERROR_INVALID_ARGUMENT, cat(fn, ": the head dimension must be the last one"));
        g.num_blocks = t.shape[b];
        g.block_size = t.shape[s];
        g.num_heads = t.shape[h];
        g.row_elems = t.shape[d];
        if (g.row_elems > 1 && t.strides[d] != 1)
            fail(PKV_ERROR_INVALID_ARGUMENT, cat(fn, ": ", a.name, " must have a contiguous last dimension (stride ",
                                                t.strides[d], ")"));
        g.stride_block = t.strides[b] * e;
        g.stride_slot = t.strides[s] * e;
        g.stride_head = t.strides[h] * e;
        if (g.num_heads <= 1) g.stride_head = g.row_elems * e;
        if (g.block_size <= 1 && g.stride_slot == 0) g.stride_slot = g.num_heads * g.row_elems * e;
    } else if (kind == kViewMLA) {
        if (t.ndim != 3)
            fail(PKV_ERROR_INVALID_ARGUMENT,
                 cat(fn, ": ", a.name, " must be 3-D [num_blocks, block_size, entry], got ", t.ndim, "-D"));
        g.num_blocks = t.shape[0];
        g.block_size = t.shape[1];
        g.num_heads = 1;
        g.row_elems = t.shape[2];
        if (g.row_elems > 1 && t.strides[2] != 1)
            fail(PKV_ERROR_INVALID_ARGUMENT, cat(fn, ": ", a.name, " must have a contiguous last dimension"));
        g.stride_block = t.strides[0] * e;
        g.stride_slot = t.strides[1] * e;
        g.stride_head = g.row_elems * e;
    } else { // legacy 5-D: key [NB, H, D/x, BS, x] or value [NB, H, D, BS]
        if (t.ndim == 5) {
            if (t.shape[4] > 1 && t.strides[4] != 1)
                fail(PKV_ERROR_INVALID_ARGUMENT, cat(fn, ": ", a.name, " [NB, H, D/x, BS, x] must have x contiguous"));
            g.num_blocks = t.shape[0];
            g.num_heads = t.shape[1];
            g.block_size = t.shape[3];
            g.chunk = t.shape[4];
            g.row_elems = t.shape[2] * t.shape[4];
            g.stride_block = t.strides[0] * e;
            g.stride_head = t.strides[1] * e;
            g.stride_chunk = t.strides[2] * e;
            g.stride_slot = t.strides[3] * e;
        } else if (t.ndim == 4) {
            g.num_blocks = t.shape[0];
            g.num_heads = t.shape[1];
            g.row_elems = t.shape[2];
            g.block_size = t.shape[3];
            g.chunk = 1;
            g.stride_block = t.strides[0] * e;
            g.stride_head = t.strides[1] * e;
            g.stride_chunk = t.strides[2] * e;
            g.stride_slot = t.strides[3] * e;
        } else {
            fail(PKV_ERROR_INVALID_ARGUMENT, cat(fn, ": ", a.name,
                                                " must be the 5-D key cache [NB, H, D/x, BS, x] or the 4-D value "
                                                "cache [NB, H, D, BS], got ",
                                                t.ndim, "-D"));
        }
    }
    return g;
}

void require_same_device(const char *fn, const TensorArg &a, pkv_device dev) {
    if (a.present && (a.t.device.type != dev.type || a.t.device.id != dev.id))
        fail(PKV_ERROR_INVALID_ARGUMENT, cat(fn, ": ", a.name, " is on another device than the cache"));
}

float *float_vector_ptr(const char *fn, TensorArg &a, int64_t n, const char *what) {
    if (!a.present) return nullptr;
    if (a.t.dtype != PKV_DTYPE_F32)
        fail(PKV_ERROR_INVALID_ARGUMENT, cat(fn, ": ", a.name, " must be float32 (", what, "), got ", pkv_dtype_name(a.t.dtype)));
    int64_t numel = 1;
    for (int d = 0; d < a.t.ndim; ++d) numel *= a.t.shape[d];
    if (numel != n)
        fail(PKV_ERROR_INVALID_ARGUMENT, cat(fn, ": ", a.name, " must have ", n, " elements (", what, "), got ", numel));
    if (n > 1) {
        int64_t expect = 1;
        for (int d = a.t.ndim - 1; d >= 0; --d) {
            if (a.t.shape[d] > 1 && a.t.strides[d] != expect)
                fail(PKV_ERROR_INVALID_ARGUMENT, cat(fn, ": ", a.name, " must be contiguous"));
            expect *= a.t.shape[d];
        }
    }
    return static_cast<float *>(a.t.data);
}

// Scale plane tensor [NB, BS, H] (the cache's first three dimensions, in the cache's order).
void set_scale_plane(const char *fn, TensorArg &a, const std::array<int, 4> &perm, const SideGeometry &g, float **plane,
                     int64_t *sb, int64_t *ss, int64_t *sh) {
    if (!a.present) return;
    if (a.t.dtype != PKV_DTYPE_F32)
        fail(PKV_ERROR_INVALID_ARGUMENT, cat(fn, ": ", a.name, " must be float32, got ", pkv_dtype_name(a.t.dtype)));
    if (a.t.ndim != 3)
        fail(PKV_ERROR_INVALID_ARGUMENT,
             cat(fn, ": ", a.name, " must be 3-D (the cache's block, slot and head dimensions), got ", a.t.ndim, "-D"));
    const int b = perm[0], s = perm[1], h = perm[2];
    if (a.t.shape[b] != g.num_blocks || a.t.shape[s] != g.block_size || a.t.shape[h] != g.num_heads)
        fail(PKV_ERROR_INVALID_ARGUMENT, cat(fn, ": ", a.name, " shape does not match the cache's blocks, slots and heads"));
    *plane = static_cast<float *>(a.t.data);
    *sb = a.t.strides[b] * 4;
    *ss = a.t.strides[s] * 4;
    *sh = a.t.strides[h] * 4;
}

// format 0: the plain format of key_cache's dtype. inline_scales_arg -1: per-token-head rows
// carry their scale inline when a row is 4 bytes longer than the codes of head_size_k.
// The tensors a cache view is built from (added to a Call; absent ones are not `present`).
struct ViewTensors {
    TensorArg *k, *v, *ks, *vs, *kp, *vp, *ksg, *vsg;
};

// How to read the tensors: the cache format, the tensor kind and dimension order, scales, sizes.
struct ViewSpec {
    int format = 0;
    int kind = 0;
    std::array<int, 4> perm{0, 1, 2, 3};
    int scale_mode = -1;
    int64_t head_size_k = 0, head_size_v = 0;
    int inline_scales = 0;
    uint32_t flags = 0;
};

ViewTensors add_view_tensors(Call &call, py::handle k_cache, py::handle v_cache, py::handle k_scale, py::handle v_scale,
                             py::handle k_scale_plane, py::handle v_scale_plane, py::handle k_signs, py::handle v_signs) {
    ViewTensors t{};
    t.k = &call.add("key_cache", k_cache, kWritable);
    t.v = &call.add("value_cache", v_cache, kWritable | kOptional);
    t.ks = &call.add("k_scale", k_scale, kOptional);
    t.vs = &call.add("v_scale", v_scale, kOptional);
    t.kp = &call.add("k_scale_plane", k_scale_plane, kOptional | kWritable);
    t.vp = &call.add("v_scale_plane", v_scale_plane, kOptional | kWritable);
    t.ksg = &call.add("k_rotation_signs", k_signs, kOptional);
    t.vsg = &call.add("v_rotation_signs", v_signs, kOptional);
    return t;
}

// Fill `cv` from converted tensors (Call::resolve done).
void fill_view(const char *fn, pkv_cache_view &cv, const ViewTensors &vt, const ViewSpec &spec) {
    TensorArg &k = *vt.k, &v = *vt.v, &ks = *vt.ks, &vs = *vt.vs, &kp = *vt.kp, &vp = *vt.vp, &ksg = *vt.ksg,
              &vsg = *vt.vsg;
    int format = spec.format;
    const int kind = spec.kind;
    const std::array<int, 4> &perm = spec.perm;
    const int scale_mode = spec.scale_mode;
    const int64_t head_size_k = spec.head_size_k, head_size_v = spec.head_size_v;
    const int inline_scales_arg = spec.inline_scales;
    const uint32_t flags = spec.flags;

    if (format == PKV_CACHE_FORMAT_UNSET) {
        switch (k.t.dtype) {
        case PKV_DTYPE_F32: format = PKV_CACHE_FORMAT_F32; break;
        case PKV_DTYPE_F16: format = PKV_CACHE_FORMAT_F16; break;
        case PKV_DTYPE_BF16: format = PKV_CACHE_FORMAT_BF16; break;
        case PKV_DTYPE_FP8_E4M3: format = PKV_CACHE_FORMAT_FP8_E4M3; break;
        case PKV_DTYPE_FP8_E5M2: format = PKV_CACHE_FORMAT_FP8_E5M2; break;
        default:
            fail(PKV_ERROR_INVALID_ARGUMENT, cat(fn, ": a ", pkv_dtype_name(k.t.dtype),
                                                " cache has no implied format (name one: a uint8 cache holds fp8 or "
                                                "packed codes)"));
        }
    }
    bool inline_scales = inline_scales_arg > 0;
    if (inline_scales_arg < 0) {
        inline_scales = false;
        if (format >= PKV_CACHE_FORMAT_INT8_PER_TOKEN_HEAD && format <= PKV_CACHE_FORMAT_INT2_PER_TOKEN_HEAD &&
            head_size_k > 0 && k.present && k.t.ndim >= 1)
            inline_scales = k.t.shape[k.t.ndim - 1] * dtype_bytes(k.t.dtype) == row_code_bytes(format, head_size_k) + 4;
    }

    cv.format = pkv_cache_format(format);
    cv.flags = flags;
    cv.device = k.t.device;
    for (TensorArg *a : {&v, &ks, &vs, &kp, &vp, &ksg, &vsg}) require_same_device(fn, *a, cv.device);

    const SideGeometry gk = side_geometry(fn, k, kind, perm);
    cv.num_blocks = gk.num_blocks;
    cv.block_size = gk.block_size;
    cv.num_heads = gk.num_heads;
    cv.k_data = k.t.data;
    cv.k_stride_block = gk.stride_block;
    cv.k_stride_slot = gk.stride_slot;
    cv.k_stride_head = gk.stride_head;
    const int64_t ek = dtype_bytes(k.t.dtype);
    if (is_plain_format(format) && ek * 8 != plain_format_bits(format))
        fail(PKV_ERROR_INVALID_ARGUMENT, cat(fn, ": key_cache dtype ", pkv_dtype_name(k.t.dtype), " does not hold ",
                                            plain_format_bits(format), "-bit elements of the cache format"));
    if (!is_plain_format(format) && ek != 1 && format != PKV_CACHE_FORMAT_FP8_DS_MLA)
        fail(PKV_ERROR_INVALID_ARGUMENT, cat(fn, ": a packed cache format needs a uint8 (or int8 / fp8) key_cache, got ",
                                            pkv_dtype_name(k.t.dtype)));
    cv.head_size_k = head_size_k > 0 ? head_size_k
                                     : head_size_from_row(fn, format, gk.row_elems * ek, inline_scales, "key_cache");
    if (kind == kViewLegacy5D) {
        cv.k_chunk_size = gk.chunk;
        cv.k_stride_chunk = gk.stride_chunk;
    }

    SideGeometry gv{};
    if (v.present) {
        gv = side_geometry(fn, v, kind, perm);
        if (gv.num_blocks != gk.num_blocks || gv.block_size != gk.block_size || gv.num_heads != gk.num_heads)
            fail(PKV_ERROR_INVALID_ARGUMENT,
                 cat(fn, ": value_cache has ", gv.num_blocks, " blocks x ", gv.block_size, " slots x ", gv.num_heads,
                     " heads, key_cache ", gk.num_blocks, " x ", gk.block_size, " x ", gk.num_heads));
        const int64_t ev = dtype_bytes(v.t.dtype);
        if (ev != ek) fail(PKV_ERROR_INVALID_ARGUMENT, cat(fn, ": value_cache and key_cache have different element sizes"));
        cv.v_data = v.t.data;
        cv.v_stride_block = gv.stride_block;
        cv.v_stride_slot = gv.stride_slot;
        cv.v_stride_head = gv.stride_head;
        cv.head_size_v = head_size_v > 0 ? head_size_v
                                         : head_size_from_row(fn, format, gv.row_elems * ev, inline_scales, "value_cache");
        if (kind == kViewLegacy5D) {
            cv.v_chunk_size = gv.chunk;
            cv.v_stride_chunk = gv.stride_chunk;
        }
    }

    // FP8 scales: 1 value = per tensor, num_heads values = per head.
    if (ks.present || vs.present) {
        auto count = [&](TensorArg &a) {
            int64_t n = 1;
            for (int d = 0; d < a.t.ndim; ++d) n *= a.t.shape[d];
            return n;
        };
        const int64_t n = ks.present ? count(ks) : count(vs);
        int mode = scale_mode;
        if (mode < 0) mode = (n > 1) ? PKV_SCALE_PER_HEAD : PKV_SCALE_PER_TENSOR;
        const int64_t want = mode == PKV_SCALE_PER_HEAD ? cv.num_heads : 1;
        cv.scale_mode = pkv_scale_mode(mode);
        cv.k_scale = float_vector_ptr(fn, ks, want, want == 1 ? "one per-tensor scale" : "one scale per KV head");
        cv.v_scale = float_vector_ptr(fn, vs, want, want == 1 ? "one per-tensor scale" : "one scale per KV head");
    }

    // Per-token-head scale planes: separate tensors, or inline after each head row's codes.
    if (inline_scales) {
        if (kp.present || vp.present)
            fail(PKV_ERROR_INVALID_ARGUMENT, cat(fn, ": inline scales and scale plane tensors are exclusive"));
        cv.k_scale_plane = reinterpret_cast<float *>(static_cast<char *>(cv.k_data) + row_code_bytes(format, cv.head_size_k));
        cv.k_scale_stride_block = cv.k_stride_block;
        cv.k_scale_stride_slot = cv.k_stride_slot;
        cv.k_scale_stride_head = cv.k_stride_head;
        if (v.present) {
            cv.v_scale_plane = reinterpret_cast<float *>(static_cast<char *>(cv.v_data) +
                                                         row_code_bytes(format, cv.head_size_v ? cv.head_size_v : cv.head_size_k));
            cv.v_scale_stride_block = cv.v_stride_block;
            cv.v_scale_stride_slot = cv.v_stride_slot;
            cv.v_scale_stride_head = cv.v_stride_head;
        }
    } else {
        set_scale_plane(fn, kp, perm, gk, &cv.k_scale_plane, &cv.k_scale_stride_block, &cv.k_scale_stride_slot,
                        &cv.k_scale_stride_head);
        if (v.present)
            set_scale_plane(fn, vp, perm, gv, &cv.v_scale_plane, &cv.v_scale_stride_block, &cv.v_scale_stride_slot,
                            &cv.v_scale_stride_head);
    }
    cv.k_rotation_signs = float_vector_ptr(fn, ksg, cv.head_size_k, "one sign per element");
    cv.v_rotation_signs = float_vector_ptr(fn, vsg, cv.head_size_v ? cv.head_size_v : cv.head_size_k, "one sign per element");
}

ViewSpec make_spec(int format, int kind, std::array<int, 4> perm, int scale_mode, int64_t head_size_k,
                   int64_t head_size_v, int inline_scales, uint32_t flags) {
    ViewSpec s;
    s.format = format;
    s.kind = kind;
    s.perm = perm;
    s.scale_mode = scale_mode;
    s.head_size_k = head_size_k;
    s.head_size_v = head_size_v;
    s.inline_scales = inline_scales;
    s.flags = flags;
    return s;
}

// A CacheView over tensors, which it keeps referenced.
CacheView view_from_tensors(py::object k_cache, py::object v_cache, int format, int kind, std::array<int, 4> perm,
                            py::object k_scale, py::object v_scale, int scale_mode, int64_t head_size_k,
                            int64_t head_size_v, py::object k_scale_plane, py::object v_scale_plane, int inline_scales,
                            py::object k_signs, py::object v_signs, uint32_t flags) {
    const char *fn = "pagedkv.CacheView.from_tensors";
    Call call(fn);
    ViewTensors vt = add_view_tensors(call, k_cache, v_cache, k_scale, v_scale, k_scale_plane, v_scale_plane, k_signs,
                                      v_signs);
    call.resolve(py::none(), /*no_sync=*/true);
    CacheView out;
    fill_view(fn, out.v, vt, make_spec(format, kind, perm, scale_mode, head_size_k, head_size_v, inline_scales, flags));
    for (py::handle o : {k_cache, v_cache, k_scale, v_scale, k_scale_plane, v_scale_plane, k_signs, v_signs})
        if (!o.is_none()) out.keepalive.append(o);
    return out;
}

// ------------------------------------------------------------------------------------ ops

void write_kv(CacheView &cache, py::object key, py::object value, py::object slot_mapping, py::object counter,
              py::object stream) {
    Call call("pagedkv.write_kv");
    TensorArg &k = call.add("key", key);
    TensorArg &v = call.add("value", value, kOptional);
    TensorArg &s = call.add("slot_mapping", slot_mapping);
    TensorArg &c = call.add("out_of_range_count", counter, kOptional | kWritable);
    call.resolve(stream);
    int64_t *cnt = scalar_ptr<int64_t>(call.fn(), c, PKV_DTYPE_INT64, "a counter");
    pkv_status st;
    {
        py::gil_scoped_release nogil;
        st = pkv_write_kv(&cache.v, &k.t, v.ptr(), &s.t, cnt, call.stream());
    }
    check(st);
}

void write_mla(CacheView &cache, py::object kv_c, py::object k_pe, py::object slot_mapping, py::object counter,
               py::object stream) {
    Call call("pagedkv.write_mla");
    TensorArg &a = call.add("kv_c", kv_c);
    TensorArg &b = call.add("k_pe", k_pe);
    TensorArg &s = call.add("slot_mapping", slot_mapping);
    TensorArg &c = call.add("out_of_range_count", counter, kOptional | kWritable);
    call.resolve(stream);
    int64_t *cnt = scalar_ptr<int64_t>(call.fn(), c, PKV_DTYPE_INT64, "a counter");
    pkv_status st;
    {
        py::gil_scoped_release nogil;
        st = pkv_write_mla(&cache.v, &a.t, &b.t, &s.t, cnt, call.stream());
    }
    check(st);
}

// A 2-D [N, E] output of a one-head cache is taken as [N, 1, E].
void unsqueeze_rows(pkv_tensor &t) {
    if (t.ndim != 2) return;
    t.shape[2] = t.shape[1];
    t.strides[2] = t.strides[1];
    t.shape[1] = 1;
    t.strides[1] = t.shape[2] * t.strides[2];
    t.ndim = 3;
}

void gather_kv(py::object out_key, py::object out_value, CacheView &cache, py::object block_table,
               py::object cu_seq_lens, py::object seq_starts, py::object counter, py::object stream) {
    Call call("pagedkv.gather_kv");
    TensorArg &ok = call.add("out_key", out_key, kWritable);
    TensorArg &ov = call.add("out_value", out_value, kWritable | kOptional);
    TensorArg &bt = call.add("block_table", block_table);
    TensorArg &cu = call.add("cu_seq_lens", cu_seq_lens);
    TensorArg &ss = call.add("seq_starts", seq_starts, kOptional);
    TensorArg &c = call.add("out_of_range_count", counter, kOptional | kWritable);
    call.resolve(stream);
    if (cache.v.num_heads == 1) {
        unsqueeze_rows(ok.t);
        if (ov.present) unsqueeze_rows(ov.t);
    }
    int64_t *cnt = scalar_ptr<int64_t>(call.fn(), c, PKV_DTYPE_INT64, "a counter");
    pkv_status st;
    {
        py::gil_scoped_release nogil;
        st = pkv_gather_kv(&ok.t, ov.ptr(), &cache.v, &bt.t, &cu.t, ss.ptr(), cnt, call.stream());
    }
    check(st);
}

void copy_blocks(py::sequence caches, py::object pairs, py::object stream) {
    Call call("pagedkv.copy_blocks");
    const size_t n = caches.size();
    if (n > size_t(INT32_MAX)) fail(PKV_ERROR_INVALID_ARGUMENT, "pagedkv.copy_blocks: too many caches");
    std::vector<py::object> objs;
    std::vector<std::string> names;
    objs.reserve(n);
    names.reserve(n);
    for (size_t i = 0; i < n; ++i) {
        objs.push_back(caches[i]);
        names.push_back(cat("caches[", i, "]"));
    }
    std::vector<TensorArg *> args(n);
    for (size_t i = 0; i < n; ++i) args[i] = &call.add(names[i].c_str(), objs[i], kWritable);
    TensorArg &p = call.add("pairs", pairs);
    call.resolve(stream);
    std::vector<pkv_tensor> tensors(n);
    for (size_t i = 0; i < n; ++i) tensors[i] = args[i]->t;
    pkv_status st;
    {
        py::gil_scoped_release nogil;
        st = pkv_copy_blocks(tensors.data(), int32_t(n), &p.t, call.stream());
    }
    check(st);
}

void convert(py::object dst, py::object src, py::object scale, py::object stream, int dst_dtype, int src_dtype,
             int uint8_as) {
    Call call("pagedkv.convert");
    TensorArg &d = call.add("dst", dst, kWritable);
    TensorArg &s = call.add("src", src);
    TensorArg &sc = call.add("scale", scale, kOptional);
    call.resolve(stream);
    if (uint8_as >= 0) {
        if (d.t.dtype == PKV_DTYPE_UINT8) d.t.dtype = pkv_dtype(uint8_as);
        if (s.t.dtype == PKV_DTYPE_UINT8) s.t.dtype = pkv_dtype(uint8_as);
    }
    if (dst_dtype >= 0) d.t.dtype = pkv_dtype(dst_dtype);
    if (src_dtype >= 0) s.t.dtype = pkv_dtype(src_dtype);
    const float *scale_ptr = scalar_ptr<const float>(call.fn(), sc, PKV_DTYPE_F32, "one scale");
    pkv_status st;
    {
        py::gil_scoped_release nogil;
        st = pkv_convert(&d.t, &s.t, scale_ptr, call.stream());
    }
    check(st);
}

// vLLM swap_blocks: one pkv_copy per (src, dst) pair of a host [n, 2] mapping, byte offsets
// id * block_bytes. Every id is checked against dimension 0 before anything is copied.
void swap_blocks(py::object src, py::object dst, int64_t block_bytes, py::object mapping, py::object stream) {
    Call call("pagedkv.swap_blocks");
    TensorArg &s = call.add("src", src);
    TensorArg &d = call.add("dst", dst, kWritable);
    TensorArg &m = call.add("block_mapping", mapping);
    call.resolve(stream);
    const char *fn = call.fn();
    if (m.t.device.type == PKV_DEVICE_CUDA)
        fail(PKV_ERROR_INVALID_ARGUMENT, cat(fn, ": block_mapping must be in host memory (as in vLLM)"));
    if (m.t.ndim != 2 || m.t.shape[1] != 2)
        fail(PKV_ERROR_INVALID_ARGUMENT, cat(fn, ": block_mapping must be [n, 2] (src, dst)"));
    if (m.t.dtype != PKV_DTYPE_INT64 && m.t.dtype != PKV_DTYPE_INT32)
        fail(PKV_ERROR_INVALID_ARGUMENT, cat(fn, ": block_mapping must be int64 (or int32), got ", pkv_dtype_name(m.t.dtype)));
    if (block_bytes <= 0) fail(PKV_ERROR_INVALID_ARGUMENT, cat(fn, ": block_size_in_bytes must be > 0"));
    if (s.t.ndim < 1 || d.t.ndim < 1) fail(PKV_ERROR_INVALID_ARGUMENT, cat(fn, ": src and dst must have a block dimension"));
    const int64_t n = m.t.shape[0];
    auto id_at = [&](int64_t i, int j) -> int64_t {
        const int64_t off = i * m.t.strides[0] + j * m.t.strides[1];
        return m.t.dtype == PKV_DTYPE_INT64 ? static_cast<const int64_t *>(m.t.data)[off]
                                            : static_cast<const int32_t *>(m.t.data)[off];
    };
    const int64_t es = dtype_bytes(s.t.dtype), ed = dtype_bytes(d.t.dtype);
    for (int64_t i = 0; i < n; ++i) {
        const int64_t a = id_at(i, 0), b = id_at(i, 1);
        if (a < 0 || a >= s.t.shape[0] || b < 0 || b >= d.t.shape[0])
            fail(PKV_ERROR_INVALID_ARGUMENT, cat(fn, ": pair ", i, " (", a, ", ", b, ") is outside src's ", s.t.shape[0],
                                                " or dst's ", d.t.shape[0], " blocks"));
        if (a * block_bytes + block_bytes > (s.t.shape[0] - 1) * s.t.strides[0] * es + s.t.strides[0] * es ||
            b * block_bytes + block_bytes > (d.t.shape[0] - 1) * d.t.strides[0] * ed + d.t.strides[0] * ed)
            fail(PKV_ERROR_INVALID_ARGUMENT, cat(fn, ": pair ", i, " with ", block_bytes,
                                                " bytes a block runs past the end of src or dst"));
    }
    auto *sp = static_cast<const char *>(s.t.data);
    auto *dp = static_cast<char *>(d.t.data);
    const pkv_stream st_ = call.stream();
    pkv_status st = PKV_SUCCESS;
    {
        py::gil_scoped_release nogil;
        for (int64_t i = 0; i < n && st == PKV_SUCCESS; ++i)
            st = pkv_copy(dp + id_at(i, 1) * block_bytes, d.t.device, sp + id_at(i, 0) * block_bytes, s.t.device,
                          size_t(block_bytes), st_);
    }
    check(st);
}

void build_slot_mapping(py::object out, py::object block_table, py::object seq_lens, py::object query_start_loc,
                        int64_t block_size, py::object stream) {
    Call call("pagedkv.build_slot_mapping");
    TensorArg &o = call.add("out", out, kWritable);
    TensorArg &bt = call.add("block_table", block_table);
    TensorArg &sl = call.add("seq_lens", seq_lens);
    TensorArg &q = call.add("query_start_loc", query_start_loc);
    call.resolve(stream);
    pkv_status st;
    {
        py::gil_scoped_release nogil;
        st = pkv_build_slot_mapping(&o.t, &bt.t, &sl.t, &q.t, block_size, call.stream());
    }
    check(st);
}

void build_slot_mapping_csr(py::object out, py::object indptr, py::object indices, py::object last_page_len,
                            py::object append_indptr, int64_t page_size, py::object stream) {
    Call call("pagedkv.build_slot_mapping_csr");
    TensorArg &o = call.add("out", out, kWritable);
    TensorArg &a = call.add("indptr", indptr);
    TensorArg &b = call.add("indices", indices);
    TensorArg &c = call.add("last_page_len", last_page_len);
    TensorArg &d = call.add("append_indptr", append_indptr);
    call.resolve(stream);
    pkv_status st;
    {
        py::gil_scoped_release nogil;
        st = pkv_build_slot_mapping_csr(&o.t, &a.t, &b.t, &c.t, &d.t, page_size, call.stream());
    }
    check(st);
}

py::dict describe(py::object obj, py::object stream) {
    Call call("pagedkv.describe");
    TensorArg &a = call.add("tensor", obj);
    call.resolve(stream, /*no_sync=*/true);
    py::dict d = tensor_dict(a.t);
    const char *src = "";
    switch (a.source) {
    case Source::NumPy: src = "numpy"; break;
    case Source::Exchange: src = "dlpack_c_exchange_api"; break;
    case Source::DLPack: src = "dlpack"; break;
    case Source::CudaArrayInterface: src = "cuda_array_interface"; break;
    case Source::ArrayInterface: src = "array_interface"; break;
    default: src = "?"; break;
    }
    d["source"] = src;
    return d;
}

uintptr_t resolve_stream(py::object like, py::object stream) {
    Call call("pagedkv.resolve_stream");
    if (!like.is_none()) call.add("tensor", like);
    call.resolve(stream);
    return reinterpret_cast<uintptr_t>(call.stream());
}

// ------------------------------------------------------------------------------------ fused
// One call that builds the view of raw cache tensors and runs the op (the vLLM drop-ins: the
// view changes with every call's tensors, so it is not kept).

const std::array<int, 4> kNHD{0, 1, 2, 3};

void write_cache(py::object key, py::object value, py::object k_cache, py::object v_cache, py::object slot_mapping,
                 int format, int kind, py::object k_scale, py::object v_scale, int64_t head_size_k, int64_t head_size_v,
                 int inline_scales, uint32_t flags, py::object stream) {
    const bool mla = kind == kViewMLA;
    const char *fn = mla ? "pagedkv.write_mla" : "pagedkv.write_kv";
    Call call(fn);
    py::none none;
    ViewTensors vt = add_view_tensors(call, k_cache, v_cache, k_scale, v_scale, none, none, none, none);
    TensorArg &k = call.add(mla ? "kv_c" : "key", key);
    TensorArg &v = call.add(mla ? "k_pe" : "value", value, mla ? kRequired : kOptional);
    TensorArg &s = call.add("slot_mapping", slot_mapping);
    call.resolve(stream);
    pkv_cache_view cv = PKV_CACHE_VIEW_INIT;
    fill_view(fn, cv, vt, make_spec(format, kind, kNHD, -1, head_size_k, head_size_v, inline_scales, flags));
    pkv_status st;
    {
        py::gil_scoped_release nogil;
        st = mla ? pkv_write_mla(&cv, &k.t, &v.t, &s.t, nullptr, call.stream())
                 : pkv_write_kv(&cv, &k.t, v.ptr(), &s.t, nullptr, call.stream());
    }
    check(st);
}

void gather_cache(py::object out_key, py::object out_value, py::object k_cache, py::object v_cache,
                  py::object block_table, py::object cu_seq_lens, py::object seq_starts, int format, int kind,
                  py::object k_scale, py::object v_scale, int64_t head_size_k, int64_t head_size_v, int inline_scales,
                  uint32_t flags, py::object stream) {
    const char *fn = "pagedkv.gather_kv";
    Call call(fn);
    py::none none;
    ViewTensors vt = add_view_tensors(call, k_cache, v_cache, k_scale, v_scale, none, none, none, none);
    TensorArg &ok = call.add("out_key", out_key, kWritable);
    TensorArg &ov = call.add("out_value", out_value, kWritable | kOptional);
    TensorArg &bt = call.add("block_table", block_table);
    TensorArg &cu = call.add("cu_seq_lens", cu_seq_lens);
    TensorArg &ss = call.add("seq_starts", seq_starts, kOptional);
    call.resolve(stream);
    pkv_cache_view cv = PKV_CACHE_VIEW_INIT;
    fill_view(fn, cv, vt, make_spec(format, kind, kNHD, -1, head_size_k, head_size_v, inline_scales, flags));
    if (cv.num_heads == 1) {
        unsqueeze_rows(ok.t);
        if (ov.present) unsqueeze_rows(ov.t);
    }
    pkv_status st;
    {
        py::gil_scoped_release nogil;
        st = pkv_gather_kv(&ok.t, ov.ptr(), &cv, &bt.t, &cu.t, ss.ptr(), nullptr, call.stream());
    }
    check(st);
}

// ------------------------------------------------------------------------------------ TensorView
// A strided view of memory the library owns (a block table's device mirror), exported through
// DLPack and the (CUDA) array interface. `owner` keeps the memory's handle referenced.

struct TensorView {
    pkv_tensor t{};
    py::object owner;
};

struct ExportHolder {
    DLManagedTensorVersioned versioned{};
    DLManagedTensor legacy{};
    int64_t shape[PKV_MAX_DIMS]{};
    int64_t strides[PKV_MAX_DIMS]{};
    PyObject *owner = nullptr;
};

void release_holder(ExportHolder *h) {
    if (h == nullptr) return;
    if (h->owner != nullptr) {
        PyGILState_STATE g = PyGILState_Ensure();
        Py_DECREF(h->owner);
        PyGILState_Release(g);
    }
    delete h;
}
void versioned_deleter(DLManagedTensorVersioned *self) { release_holder(static_cast<ExportHolder *>(self->manager_ctx)); }
void legacy_deleter(DLManagedTensor *self) { release_holder(static_cast<ExportHolder *>(self->manager_ctx)); }

void capsule_destructor_versioned(PyObject *cap) {
    if (PyCapsule_IsValid(cap, "dltensor_versioned")) {
        auto *m = static_cast<DLManagedTensorVersioned *>(PyCapsule_GetPointer(cap, "dltensor_versioned"));
        if (m != nullptr && m->deleter != nullptr) m->deleter(m);
    }
}
void capsule_destructor_legacy(PyObject *cap) {
    if (PyCapsule_IsValid(cap, "dltensor")) {
        auto *m = static_cast<DLManagedTensor *>(PyCapsule_GetPointer(cap, "dltensor"));
        if (m != nullptr && m->deleter != nullptr) m->deleter(m);
    }
}

DLDevice dl_device(pkv_device d) {
    switch (d.type) {
    case PKV_DEVICE_CUDA: return {kDLCUDA, d.id};
    case PKV_DEVICE_CUDA_HOST: return {kDLCUDAHost, 0};
    default: return {kDLCPU, 0};
    }
}

py::object tensor_view_dlpack(TensorView &self, py::object stream, py::object max_version, py::object dl_device_arg,
                              py::object copy) {
    (void)stream;
    if (!copy.is_none() && py::cast<bool>(copy))
        throw py::buffer_error("pagedkv.TensorView.__dlpack__: copy=True is not supported (the view never copies)");
    const DLDevice dev = dl_device(self.t.device);
    if (!dl_device_arg.is_none()) {
        auto want = py::cast<py::tuple>(dl_device_arg);
        if (py::cast<int32_t>(want[0]) != dev.device_type || py::cast<int32_t>(want[1]) != dev.device_id)
            throw py::buffer_error("pagedkv.TensorView.__dlpack__: cannot export to another device");
    }
    const bool versioned = !max_version.is_none() && py::cast<int>(py::cast<py::tuple>(max_version)[0]) >= 1;
    auto *h = new ExportHolder();
    for (int d = 0; d < self.t.ndim; ++d) {
        h->shape[d] = self.t.shape[d];
        h->strides[d] = self.t.strides[d];
    }
    DLTensor dl{};
    dl.data = self.t.data;
    dl.device = dev;
    dl.ndim = self.t.ndim;
    dl.dtype = dtype_to_dlpack(self.t.dtype);
    dl.shape = h->shape;
    dl.strides = h->strides;
    dl.byte_offset = 0;
    h->owner = self.owner.ptr();
    Py_XINCREF(h->owner);
    if (versioned) {
        h->versioned.version = {1, 1};
        h->versioned.manager_ctx = h;
        h->versioned.deleter = versioned_deleter;
        h->versioned.flags = 0;
        h->versioned.dl_tensor = dl;
        PyObject *cap = PyCapsule_New(&h->versioned, "dltensor_versioned", capsule_destructor_versioned);
        if (cap == nullptr) {
            release_holder(h);
            throw py::error_already_set();
        }
        return py::reinterpret_steal<py::object>(cap);
    }
    h->legacy.dl_tensor = dl;
    h->legacy.manager_ctx = h;
    h->legacy.deleter = legacy_deleter;
    PyObject *cap = PyCapsule_New(&h->legacy, "dltensor", capsule_destructor_legacy);
    if (cap == nullptr) {
        release_holder(h);
        throw py::error_already_set();
    }
    return py::reinterpret_steal<py::object>(cap);
}

py::dict tensor_view_interface(const TensorView &self, bool cuda) {
    const char *ts = dtype_typestr(self.t.dtype);
    if (*ts == '\0')
        throw py::attribute_error(cat("dtype ", pkv_dtype_name(self.t.dtype), " has no array-interface typestr"));
    if (cuda != (self.t.device.type == PKV_DEVICE_CUDA))
        throw py::attribute_error(cuda ? "not a CUDA tensor" : "not a host tensor");
    py::dict d;
    py::list shape, strides;
    const int64_t e = dtype_bytes(self.t.dtype);
    for (int i = 0; i < self.t.ndim; ++i) {
        shape.append(self.t.shape[i]);
        strides.append(self.t.strides[i] * e);
    }
    d["shape"] = py::tuple(shape);
    d["typestr"] = ts;
    d["data"] = py::make_tuple(reinterpret_cast<uintptr_t>(self.t.data), false);
    d["strides"] = py::tuple(strides);
    d["version"] = 3;
    if (cuda) d["stream"] = py::none();
    return d;
}

TensorView make_view(const pkv_tensor &t, py::object owner) {
    TensorView v;
    v.t = t;
    v.owner = std::move(owner);
    return v;
}

// ------------------------------------------------------------------------------------ handles
// Handles travel as integers (the pointer); the Python classes own them.

template <typename T>
T *as_handle(uintptr_t h, const char *what) {
    if (h == 0) fail(PKV_ERROR_INVALID_STATE, cat("the ", what, " is closed"));
    return reinterpret_cast<T *>(h);
}

pkv_stream opt_stream(py::object s) { return (s.is_none()) ? nullptr : parse_stream(s); }

uintptr_t pool_create(int device_type, int device_id, int64_t block_size, const std::vector<py::tuple> &layers,
                      int64_t num_blocks, uint64_t memory_bytes, int64_t num_host_blocks) {
    std::vector<pkv_layer_spec> specs(layers.size());
    for (size_t i = 0; i < layers.size(); ++i) {
        const py::tuple &l = layers[i];
        if (l.size() != 7) throw py::value_error("layer spec tuples have 7 fields");
        pkv_layer_spec s = PKV_LAYER_SPEC_INIT;
        s.flags = py::cast<uint32_t>(l[0]);
        s.format = pkv_cache_format(py::cast<int>(l[1]));
        s.layout = pkv_head_layout(py::cast<int>(l[2]));
        s.scale_mode = pkv_scale_mode(py::cast<int>(l[3]));
        s.num_heads = py::cast<int64_t>(l[4]);
        s.head_size_k = py::cast<int64_t>(l[5]);
        s.head_size_v = py::cast<int64_t>(l[6]);
        specs[i] = s;
    }
    pkv_pool_params p = PKV_POOL_PARAMS_INIT;
    p.device = {pkv_device_type(device_type), device_id};
    p.block_size = block_size;
    p.num_layers = int64_t(specs.size());
    p.layers = specs.data();
    p.num_blocks = num_blocks;
    p.memory_bytes = size_t(memory_bytes);
    p.num_host_blocks = num_host_blocks;
    pkv_pool *pool = nullptr;
    pkv_status st;
    {
        py::gil_scoped_release nogil;
        st = pkv_pool_create(&pool, &p);
    }
    check(st);
    return reinterpret_cast<uintptr_t>(pool);
}

py::array_t<int32_t> ids_array(py::handle ids) {
    auto a = py::array_t<int32_t, py::array::c_style | py::array::forcecast>::ensure(ids);
    if (!a) throw py::error_already_set();
    return a;
}

py::dict mirror_dict(const pkv_batch_mirror &m, py::object owner) {
    py::dict d;
    d["block_table"] = make_view(m.block_table, owner);
    d["slot_mapping"] = make_view(m.slot_mapping, owner);
    d["seq_lens"] = make_view(m.seq_lens, owner);
    d["query_start_loc"] = make_view(m.query_start_loc, owner);
    d["batch"] = m.batch;
    d["num_tokens"] = m.num_tokens;
    return d;
}

void register_exception_translator() {
    py::register_exception_translator([](std::exception_ptr p) {
        try {
            if (p) std::rethrow_exception(p);
        } catch (const PkvError &e) {
            static PyObject *cls = nullptr; // leaked on purpose (lives until exit)
            if (cls == nullptr) {
                py::object c = py::module_::import("pagedkv._errors").attr("PagedKVError");
                cls = c.release().ptr();
            }
            py::tuple args = py::make_tuple(e.status, e.message);
            PyErr_SetObject(cls, args.ptr());
        }
    });
}

} // namespace

// ------------------------------------------------------------------------------------ module

PYBIND11_MODULE(_C, m) {
    m.doc() = "pagedkv._C: the pybind11 layer over libpagedkv's C API (internal; use the pagedkv package)";
    register_exception_translator();
    try {
        py::module_::import("numpy");
        g_have_numpy = true;
    } catch (py::error_already_set &) {
        PyErr_Clear();
        g_have_numpy = false;
    }

    m.attr("HEADER_VERSION") = PKV_VERSION_STRING;
    m.attr("HEADER_VERSION_NUMBER") = PKV_VERSION;
    m.attr("MAX_DIMS") = PKV_MAX_DIMS;
    m.attr("CACHE_VIEW_ROTATED_DOMAIN") = PKV_CACHE_VIEW_ROTATED_DOMAIN;
    m.attr("CACHE_VIEW_ROPE_F16") = PKV_CACHE_VIEW_ROPE_F16;
    m.attr("LAYER_K_ONLY") = PKV_LAYER_K_ONLY;
    m.attr("SIZEOF_CACHE_VIEW") = sizeof(pkv_cache_view);
    m.attr("SIZEOF_TENSOR") = sizeof(pkv_tensor);

    m.def("version", [] { return pkv_version(); });
    m.def("version_string", [] { return std::string(pkv_version_string()); });
    m.def("build_info", [] { return std::string(pkv_build_info()); });
    m.def("status_string", [](int s) { return std::string(pkv_status_string(pkv_status(s))); });
    m.def("last_error_message", [] { return std::string(pkv_last_error_message()); });
    m.def("dtype_name", [](int d) { return std::string(pkv_dtype_name(pkv_dtype(d))); });
    m.def("dtype_size_bits", [](int d) { return pkv_dtype_size_bits(pkv_dtype(d)); });
    m.def("cuda_device_count", [] {
        int32_t n = 0;
        check(pkv_cuda_device_count(&n));
        return n;
    });
    m.def("stream_synchronize", [](py::object s) {
        pkv_stream st = opt_stream(s);
        pkv_status r;
        {
            py::gil_scoped_release nogil;
            r = pkv_stream_synchronize(st);
        }
        check(r);
    });
    m.def("default_rotation_signs", [](int64_t n) {
        if (n < 0) fail(PKV_ERROR_INVALID_ARGUMENT, "pagedkv.default_rotation_signs: n must be >= 0");
        py::array_t<float> out(n);
        check(pkv_default_rotation_signs(out.mutable_data(), n));
        return out;
    });
    m.def("copy_bytes",
          [](uintptr_t dst, int dst_type, int dst_id, uintptr_t src, int src_type, int src_id, uint64_t nbytes,
             py::object stream) {
              pkv_stream s = opt_stream(stream);
              pkv_status r;
              {
                  py::gil_scoped_release nogil;
                  r = pkv_copy(reinterpret_cast<void *>(dst), {pkv_device_type(dst_type), dst_id},
                               reinterpret_cast<const void *>(src), {pkv_device_type(src_type), src_id}, size_t(nbytes), s);
              }
              check(r);
          });

    // Tensor conversion (for tests and tools).
    m.def("describe", &describe, py::arg("tensor"), py::arg("stream") = py::none());
    m.def("resolve_stream", &resolve_stream, py::arg("like") = py::none(), py::arg("stream") = py::none());

    // CacheView
    py::class_<CacheView>(m, "CacheView", "A pkv_cache_view: the declarative description of one layer's paged cache.")
        .def(py::init<>())
        .def_property("format", [](const CacheView &c) { return int(c.v.format); },
                      [](CacheView &c, int f) { c.v.format = pkv_cache_format(f); })
        .def_property("flags", [](const CacheView &c) { return c.v.flags; }, [](CacheView &c, uint32_t f) { c.v.flags = f; })
        .def_property("device", [](const CacheView &c) { return py::make_tuple(int(c.v.device.type), c.v.device.id); },
                      [](CacheView &c, py::tuple d) {
                          c.v.device = {pkv_device_type(py::cast<int>(d[0])), py::cast<int32_t>(d[1])};
                      })
#define PKV_FIELD(name)                                                                                                \
    def_property(#name, [](const CacheView &c) { return c.v.name; }, [](CacheView &c, decltype(pkv_cache_view::name) x) { c.v.name = x; })
        .PKV_FIELD(num_blocks)
        .PKV_FIELD(block_size)
        .PKV_FIELD(num_heads)
        .PKV_FIELD(head_size_k)
        .PKV_FIELD(head_size_v)
        .PKV_FIELD(k_stride_block)
        .PKV_FIELD(k_stride_slot)
        .PKV_FIELD(k_stride_head)
        .PKV_FIELD(v_stride_block)
        .PKV_FIELD(v_stride_slot)
        .PKV_FIELD(v_stride_head)
        .PKV_FIELD(k_chunk_size)
        .PKV_FIELD(v_chunk_size)
        .PKV_FIELD(k_stride_chunk)
        .PKV_FIELD(v_stride_chunk)
        .PKV_FIELD(k_scale_stride_block)
        .PKV_FIELD(k_scale_stride_slot)
        .PKV_FIELD(k_scale_stride_head)
        .PKV_FIELD(v_scale_stride_block)
        .PKV_FIELD(v_scale_stride_slot)
        .PKV_FIELD(v_scale_stride_head)
#undef PKV_FIELD
#define PKV_PTR_FIELD(name, type)                                                                                      \
    def_property(#name, [](const CacheView &c) { return reinterpret_cast<uintptr_t>(c.v.name); },                     \
                 [](CacheView &c, uintptr_t p) { c.v.name = reinterpret_cast<type>(p); })
        .PKV_PTR_FIELD(k_data, void *)
        .PKV_PTR_FIELD(v_data, void *)
        .PKV_PTR_FIELD(k_scale, const float *)
        .PKV_PTR_FIELD(v_scale, const float *)
        .PKV_PTR_FIELD(k_scale_plane, float *)
        .PKV_PTR_FIELD(v_scale_plane, float *)
        .PKV_PTR_FIELD(k_rotation_signs, const float *)
        .PKV_PTR_FIELD(v_rotation_signs, const float *)
#undef PKV_PTR_FIELD
        .def_property("scale_mode", [](const CacheView &c) { return int(c.v.scale_mode); },
                      [](CacheView &c, int s) { c.v.scale_mode = pkv_scale_mode(s); })
        .def_readwrite("keepalive", &CacheView::keepalive)
        .def("check", [](const CacheView &c) { check(pkv_cache_view_check(&c.v)); });

    m.def("view_from_tensors", &view_from_tensors, py::arg("k_cache"), py::arg("v_cache"), py::arg("format"),
          py::arg("kind"), py::arg("perm"), py::arg("k_scale"), py::arg("v_scale"), py::arg("scale_mode"),
          py::arg("head_size_k"), py::arg("head_size_v"), py::arg("k_scale_plane"), py::arg("v_scale_plane"),
          py::arg("inline_scales"), py::arg("k_rotation_signs"), py::arg("v_rotation_signs"), py::arg("flags"));

    // ops
    m.def("write_cache", &write_cache, py::arg("key"), py::arg("value"), py::arg("k_cache"), py::arg("v_cache"),
          py::arg("slot_mapping"), py::arg("format"), py::arg("kind"), py::arg("k_scale"), py::arg("v_scale"),
          py::arg("head_size_k"), py::arg("head_size_v"), py::arg("inline_scales"), py::arg("flags"),
          py::arg("stream") = py::none());
    m.def("gather_cache", &gather_cache, py::arg("out_key"), py::arg("out_value"), py::arg("k_cache"),
          py::arg("v_cache"), py::arg("block_table"), py::arg("cu_seq_lens"), py::arg("seq_starts"), py::arg("format"),
          py::arg("kind"), py::arg("k_scale"), py::arg("v_scale"), py::arg("head_size_k"), py::arg("head_size_v"),
          py::arg("inline_scales"), py::arg("flags"), py::arg("stream") = py::none());
    m.def("write_kv", &write_kv, py::arg("cache"), py::arg("key"), py::arg("value"), py::arg("slot_mapping"),
          py::arg("out_of_range_count") = py::none(), py::arg("stream") = py::none());
    m.def("write_mla", &write_mla, py::arg("cache"), py::arg("kv_c"), py::arg("k_pe"), py::arg("slot_mapping"),
          py::arg("out_of_range_count") = py::none(), py::arg("stream") = py::none());
    m.def("gather_kv", &gather_kv, py::arg("out_key"), py::arg("out_value"), py::arg("cache"), py::arg("block_table"),
          py::arg("cu_seq_lens"), py::arg("seq_starts") = py::none(), py::arg("out_of_range_count") = py::none(),
          py::arg("stream") = py::none());
    m.def("copy_blocks", &copy_blocks, py::arg("caches"), py::arg("pairs"), py::arg("stream") = py::none());
    m.def("convert", &convert, py::arg("dst"), py::arg("src"), py::arg("scale") = py::none(),
          py::arg("stream") = py::none(), py::arg("dst_dtype") = -1, py::arg("src_dtype") = -1, py::arg("uint8_as") = -1);
    m.def("swap_blocks", &swap_blocks, py::arg("src"), py::arg("dst"), py::arg("block_size_in_bytes"),
          py::arg("block_mapping"), py::arg("stream") = py::none());
    m.def("build_slot_mapping", &build_slot_mapping, py::arg("out"), py::arg("block_table"), py::arg("seq_lens"),
          py::arg("query_start_loc"), py::arg("block_size"), py::arg("stream") = py::none());
    m.def("build_slot_mapping_csr", &build_slot_mapping_csr, py::arg("out"), py::arg("indptr"), py::arg("indices"),
          py::arg("last_page_len"), py::arg("append_indptr"), py::arg("page_size"), py::arg("stream") = py::none());

    // TensorView
    py::class_<TensorView>(m, "TensorView", "A strided view of library-owned memory (DLPack / array-interface producer).")
        .def("__dlpack__", &tensor_view_dlpack, py::arg("stream") = py::none(), py::arg("max_version") = py::none(),
             py::arg("dl_device") = py::none(), py::arg("copy") = py::none())
        .def("__dlpack_device__",
             [](const TensorView &v) {
                 DLDevice d = dl_device(v.t.device);
                 return py::make_tuple(d.device_type, d.device_id);
             })
        .def_property_readonly("__cuda_array_interface__", [](const TensorView &v) { return tensor_view_interface(v, true); })
        .def_property_readonly("__array_interface__", [](const TensorView &v) { return tensor_view_interface(v, false); })
        .def_property_readonly("data_ptr", [](const TensorView &v) { return reinterpret_cast<uintptr_t>(v.t.data); })
        .def_property_readonly("dtype", [](const TensorView &v) { return int(v.t.dtype); })
        .def_property_readonly("device", [](const TensorView &v) { return py::make_tuple(int(v.t.device.type), v.t.device.id); })
        .def_property_readonly("shape", [](const TensorView &v) {
            py::list l;
            for (int i = 0; i < v.t.ndim; ++i) l.append(v.t.shape[i]);
            return py::tuple(l);
        })
        .def_property_readonly("strides", [](const TensorView &v) {
            py::list l;
            for (int i = 0; i < v.t.ndim; ++i) l.append(v.t.strides[i]);
            return py::tuple(l);
        });

    // pool
    m.def("pool_create", &pool_create);
    m.def("pool_destroy", [](uintptr_t h) { check(pkv_pool_destroy(reinterpret_cast<pkv_pool *>(h))); });
    m.def("pool_layer_view", [](uintptr_t h, int64_t layer, int tier, py::object owner) {
        CacheView c;
        check(pkv_pool_layer_view(&c.v, as_handle<pkv_pool>(h, "Pool"), layer, pkv_tier(tier)));
        c.keepalive.append(owner);
        return c;
    });
    m.def("pool_stats", [](uintptr_t h) {
        pkv_pool_stats s{};
        s.struct_size = sizeof(s);
        check(pkv_pool_get_stats(&s, as_handle<pkv_pool>(h, "Pool")));
        py::dict d;
        d["block_size"] = s.block_size;
        d["num_layers"] = s.num_layers;
        d["total_blocks"] = s.total_blocks;
        d["free_blocks"] = s.free_blocks;
        d["total_host_blocks"] = s.total_host_blocks;
        d["free_host_blocks"] = s.free_host_blocks;
        d["bytes_per_block"] = s.bytes_per_block;
        return d;
    });
    m.def("pool_bytes_per_token", [](uintptr_t h, int64_t layer) {
        int64_t out = 0;
        check(pkv_pool_bytes_per_token(&out, as_handle<pkv_pool>(h, "Pool"), layer));
        return out;
    });
    m.def("pool_set_scales", [](uintptr_t h, int64_t layer, py::object k, py::object v, py::object stream) {
        py::array_t<float, py::array::c_style | py::array::forcecast> ka, va;
        if (!k.is_none()) ka = py::array_t<float, py::array::c_style | py::array::forcecast>::ensure(k);
        if (!v.is_none()) va = py::array_t<float, py::array::c_style | py::array::forcecast>::ensure(v);
        check(pkv_pool_set_scales(as_handle<pkv_pool>(h, "Pool"), layer, k.is_none() ? nullptr : ka.data(),
                                  v.is_none() ? nullptr : va.data(), opt_stream(stream)));
    });
    m.def("pool_alloc_blocks", [](uintptr_t h, int tier, int64_t n) {
        if (n < 0) fail(PKV_ERROR_INVALID_ARGUMENT, "pagedkv.Pool.alloc_blocks: n must be >= 0");
        py::array_t<int32_t> out(n);
        check(pkv_pool_alloc_blocks(out.mutable_data(), as_handle<pkv_pool>(h, "Pool"), pkv_tier(tier), n));
        return out;
    });
    m.def("pool_retain_blocks", [](uintptr_t h, int tier, py::object ids) {
        auto a = ids_array(ids);
        check(pkv_pool_retain_blocks(as_handle<pkv_pool>(h, "Pool"), pkv_tier(tier), a.data(), a.size()));
    });
    m.def("pool_release_blocks", [](uintptr_t h, int tier, py::object ids) {
        auto a = ids_array(ids);
        check(pkv_pool_release_blocks(as_handle<pkv_pool>(h, "Pool"), pkv_tier(tier), a.data(), a.size()));
    });
    m.def("pool_block_refcount", [](uintptr_t h, int tier, int32_t id) {
        int32_t out = 0;
        check(pkv_pool_block_refcount(&out, as_handle<pkv_pool>(h, "Pool"), pkv_tier(tier), id));
        return out;
    });
    m.def("pool_copy_blocks", [](uintptr_t h, py::object pairs, py::object stream) {
        Call call("pagedkv.Pool.copy_blocks");
        TensorArg &p = call.add("pairs", pairs);
        call.resolve(stream);
        pkv_pool *pool = as_handle<pkv_pool>(h, "Pool");
        pkv_status st;
        {
            py::gil_scoped_release nogil;
            st = pkv_pool_copy_blocks(pool, &p.t, call.stream());
        }
        check(st);
    });
    m.def("pool_swap_blocks", [](uintptr_t h, int src_tier, py::object src_ids, int dst_tier, py::object dst_ids,
                                 py::object stream) {
        auto a = ids_array(src_ids), b = ids_array(dst_ids);
        if (a.size() != b.size())
            fail(PKV_ERROR_INVALID_ARGUMENT, "pagedkv.Pool.swap_blocks: src_ids and dst_ids differ in length");
        pkv_pool *pool = as_handle<pkv_pool>(h, "Pool");
        pkv_stream s = opt_stream(stream);
        pkv_status st;
        {
            py::gil_scoped_release nogil;
            st = pkv_pool_swap_blocks(pool, pkv_tier(src_tier), a.data(), pkv_tier(dst_tier), b.data(), a.size(), s);
        }
        check(st);
    });
    m.def("pool_gather_blocks", [](py::object buffer, int order, uintptr_t h, py::object ids, py::object stream) {
        Call call("pagedkv.Pool.gather_blocks");
        TensorArg &b = call.add("buffer", buffer, kWritable);
        TensorArg &i = call.add("block_ids", ids);
        call.resolve(stream);
        pkv_pool *pool = as_handle<pkv_pool>(h, "Pool");
        pkv_status st;
        {
            py::gil_scoped_release nogil;
            st = pkv_pool_gather_blocks(b.t.data, b.t.device, pkv_block_order(order), pool, &i.t, call.stream());
        }
        check(st);
    });
    m.def("pool_scatter_blocks", [](uintptr_t h, py::object ids, py::object buffer, int order, py::object stream) {
        Call call("pagedkv.Pool.scatter_blocks");
        TensorArg &i = call.add("block_ids", ids);
        TensorArg &b = call.add("buffer", buffer);
        call.resolve(stream);
        pkv_pool *pool = as_handle<pkv_pool>(h, "Pool");
        pkv_status st;
        {
            py::gil_scoped_release nogil;
            st = pkv_pool_scatter_blocks(pool, &i.t, b.t.data, b.t.device, pkv_block_order(order), call.stream());
        }
        check(st);
    });

    // block tables
    m.def("block_table_create", [](uintptr_t pool, int64_t max_batch, int64_t max_blocks, int64_t max_tokens) {
        pkv_block_table_params p = PKV_BLOCK_TABLE_PARAMS_INIT;
        p.max_batch = max_batch;
        p.max_blocks = max_blocks;
        p.max_tokens = max_tokens;
        pkv_block_table *t = nullptr;
        check(pkv_block_table_create(&t, as_handle<pkv_pool>(pool, "Pool"), &p));
        return reinterpret_cast<uintptr_t>(t);
    });
    m.def("block_table_destroy", [](uintptr_t h) {
        pkv_status st;
        {
            py::gil_scoped_release nogil;
            st = pkv_block_table_destroy(reinterpret_cast<pkv_block_table *>(h));
        }
        check(st);
    });
    m.def("block_table_add", [](uintptr_t h, uint64_t r) { check(pkv_block_table_add(as_handle<pkv_block_table>(h, "BlockTable"), r)); });
    m.def("block_table_append", [](uintptr_t h, uint64_t r, int64_t n, py::object stream) {
        if (n < 0) fail(PKV_ERROR_INVALID_ARGUMENT, "pagedkv.BlockTable.append: n must be >= 0");
        py::array_t<int64_t> out(n);
        check(pkv_block_table_append(out.mutable_data(), as_handle<pkv_block_table>(h, "BlockTable"), r, n, opt_stream(stream)));
        return out;
    });
    m.def("block_table_fork", [](uintptr_t h, uint64_t p, uint64_t c) {
        check(pkv_block_table_fork(as_handle<pkv_block_table>(h, "BlockTable"), p, c));
    });
    m.def("block_table_truncate", [](uintptr_t h, uint64_t r, int64_t n) {
        check(pkv_block_table_truncate(as_handle<pkv_block_table>(h, "BlockTable"), r, n));
    });
    m.def("block_table_remove", [](uintptr_t h, uint64_t r) { check(pkv_block_table_remove(as_handle<pkv_block_table>(h, "BlockTable"), r)); });
    m.def("block_table_num_tokens", [](uintptr_t h, uint64_t r) {
        int64_t n = 0;
        check(pkv_block_table_num_tokens(&n, as_handle<pkv_block_table>(h, "BlockTable"), r));
        return n;
    });
    m.def("block_table_blocks", [](uintptr_t h, uint64_t r) {
        auto *t = as_handle<pkv_block_table>(h, "BlockTable");
        int64_t count = 0;
        check(pkv_block_table_blocks(nullptr, 0, &count, t, r));
        py::array_t<int32_t> out(count);
        int64_t again = 0;
        check(pkv_block_table_blocks(out.mutable_data(), count, &again, t, r));
        return out;
    });
    m.def("block_table_upload", [](uintptr_t h, py::object requests, py::object new_tokens, py::object stream) {
        auto r = py::array_t<uint64_t, py::array::c_style | py::array::forcecast>::ensure(requests);
        auto n = py::array_t<int64_t, py::array::c_style | py::array::forcecast>::ensure(new_tokens);
        if (!r || !n) throw py::error_already_set();
        if (r.size() != n.size())
            fail(PKV_ERROR_INVALID_ARGUMENT, "pagedkv.BlockTable.upload: requests and new_tokens differ in length");
        auto *t = as_handle<pkv_block_table>(h, "BlockTable");
        pkv_stream s = opt_stream(stream);
        pkv_status st;
        {
            py::gil_scoped_release nogil;
            st = pkv_block_table_upload(t, r.data(), n.data(), r.size(), s);
        }
        check(st);
    });
    m.def("block_table_mirror", [](uintptr_t h, py::object owner) {
        pkv_batch_mirror mirror{};
        mirror.struct_size = sizeof(mirror);
        check(pkv_block_table_mirror(&mirror, as_handle<pkv_block_table>(h, "BlockTable")));
        return mirror_dict(mirror, owner);
    });

    // slots
    m.def("slots_create", [](uintptr_t pool, int32_t max_requests) {
        pkv_slots *s = nullptr;
        check(pkv_slots_create(&s, as_handle<pkv_pool>(pool, "Pool"), max_requests));
        return reinterpret_cast<uintptr_t>(s);
    });
    m.def("slots_destroy", [](uintptr_t h) { check(pkv_slots_destroy(reinterpret_cast<pkv_slots *>(h))); });
    m.def("slots_register_region", [](uintptr_t h, uintptr_t base, int64_t bytes_per_slot, int64_t slot_stride, uint32_t fill) {
        check(pkv_slots_register_region(as_handle<pkv_slots>(h, "Slots"), reinterpret_cast<void *>(base), bytes_per_slot,
                                        slot_stride, fill));
    });
    m.def("slots_acquire", [](uintptr_t h, py::object stream) {
        int32_t slot = -1;
        check(pkv_slots_acquire(&slot, as_handle<pkv_slots>(h, "Slots"), opt_stream(stream)));
        return slot;
    });
    m.def("slots_release", [](uintptr_t h, int32_t slot) { check(pkv_slots_release(as_handle<pkv_slots>(h, "Slots"), slot)); });
    m.def("tensor_data_ptr", [](py::object obj) {
        Call call("pagedkv.tensor_data_ptr");
        TensorArg &a = call.add("tensor", obj, kAnyDtype);
        call.resolve(py::none(), true);
        return py::make_tuple(reinterpret_cast<uintptr_t>(a.t.data), int(a.t.device.type), a.t.device.id);
    });
}
