// The parts of the DLPack ABI (https://dmlc.github.io/dlpack/latest/, v1.x) that the pagedkv
// extension consumes and produces, declared here so the build needs no DLPack header. The
// layouts are frozen by the DLPack specification (DLTensor, DLManagedTensor and the
// version / deleter prefix of DLManagedTensorVersioned never change within major version 1).
#ifndef PAGEDKV_PY_DLPACK_ABI_H
#define PAGEDKV_PY_DLPACK_ABI_H

#include <stddef.h>
#include <stdint.h>

extern "C" {

struct DLPackVersion {
    uint32_t major;
    uint32_t minor;
};

enum DLDeviceTypeCode : int32_t {
    kDLCPU = 1,
    kDLCUDA = 2,
    kDLCUDAHost = 3,
    kDLCUDAManaged = 13,
};

struct DLDevice {
    int32_t device_type;
    int32_t device_id;
};

enum DLDataTypeCodeValue : uint8_t {
    kDLInt = 0,
    kDLUInt = 1,
    kDLFloat = 2,
    kDLBfloat = 4,
    kDLBool = 6,
    kDLFloat8_e4m3fn = 10,
    kDLFloat8_e5m2 = 12,
};

struct DLDataType {
    uint8_t code;
    uint8_t bits;
    uint16_t lanes;
};

struct DLTensor {
    void *data;
    DLDevice device;
    int32_t ndim;
    DLDataType dtype;
    int64_t *shape;
    int64_t *strides; // elements; NULL = compact row-major (before DLPack 1.2)
    uint64_t byte_offset;
};

struct DLManagedTensor {
    DLTensor dl_tensor;
    void *manager_ctx;
    void (*deleter)(DLManagedTensor *self);
};

#define PKV_DLPACK_FLAG_READ_ONLY (1ULL << 0)

struct DLManagedTensorVersioned {
    DLPackVersion version;
    void *manager_ctx;
    void (*deleter)(DLManagedTensorVersioned *self);
    uint64_t flags;
    DLTensor dl_tensor;
};

// __dlpack_c_exchange_api__ (DLPack 1.2+): a capsule named "dlpack_exchange_api" on the type.
struct DLPackExchangeAPIHeader {
    DLPackVersion version;
    DLPackExchangeAPIHeader *prev_api;
};

struct DLPackExchangeAPI {
    DLPackExchangeAPIHeader header;
    int (*managed_tensor_allocator)(DLTensor *prototype, DLManagedTensorVersioned **out, void *error_ctx,
                                    void (*set_error)(void *error_ctx, const char *kind, const char *message));
    int (*managed_tensor_from_py_object_no_sync)(void *py_object, DLManagedTensorVersioned **out);
    int (*managed_tensor_to_py_object_no_sync)(DLManagedTensorVersioned *tensor, void **out_py_object);
    int (*dltensor_from_py_object_no_sync)(void *py_object, DLTensor *out); // may be NULL
    int (*current_work_stream)(int32_t device_type, int32_t device_id, void **out_current_stream);
};

} // extern "C"

#endif
