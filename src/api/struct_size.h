// The struct_size rules of docs/api-stability.md for the handles' params (read) and result
// (write) structs. Each throws pkv::Error with a message naming the argument.
#pragma once

#include <cstddef>
#include <cstring>

#include "api/validate.h"

namespace pkv {
namespace api {

// struct_size of a caller's struct: not 0, not smaller than the first version of the struct.
inline size_t checked_struct_size(size_t size, const char *name, size_t first_version) {
    require(size != 0, PKV_ERROR_STRUCT_SIZE, name, "->struct_size is 0 (initialize it with its _INIT macro or *_init())");
    require(size >= first_version, PKV_ERROR_STRUCT_SIZE, name, "->struct_size ", size,
            " is smaller than the first version of the struct (", first_version, ")");
    return size;
}

// Reads a params struct: an older caller's missing fields are 0 (the defaults); a newer caller's
// unknown tail must be zero.
template <typename T> T read_versioned(const T *in, const char *name, size_t first_version = sizeof(T)) {
    const size_t size = checked_struct_size(in->struct_size, name, first_version);
    const unsigned char *raw = reinterpret_cast<const unsigned char *>(in);
    for (size_t i = sizeof(T); i < size; ++i)
        require(raw[i] == 0, PKV_ERROR_STRUCT_SIZE, name, ": unknown field at byte offset ", i,
                " is set (struct_size ", size, " is newer than this library)");
    T out;
    std::memset(&out, 0, sizeof(T));
    std::memcpy(&out, in, size < sizeof(T) ? size : sizeof(T));
    return out;
}

// Writes a result struct into the caller's struct_size bytes: the fields the caller's struct
// has, a newer caller's unknown tail zeroed; struct_size itself is left as the caller set it.
template <typename T> void write_versioned(T *out, const T &value, const char *name, size_t first_version = sizeof(T)) {
    const size_t size = checked_struct_size(out->struct_size, name, first_version);
    unsigned char *raw = reinterpret_cast<unsigned char *>(out);
    const size_t known = size < sizeof(T) ? size : sizeof(T);
    std::memcpy(raw + sizeof(size_t), reinterpret_cast<const unsigned char *>(&value) + sizeof(size_t),
                known - sizeof(size_t));
    if (size > sizeof(T)) std::memset(raw + sizeof(T), 0, size - sizeof(T));
}

// The body of every *_init function: zero the caller's struct_size bytes and set struct_size.
template <typename T> void init_versioned(T *p, size_t struct_size, const char *name, const char *type) {
    require(p != nullptr, PKV_ERROR_INVALID_ARGUMENT, name, " is NULL");
    require(struct_size >= sizeof(T), PKV_ERROR_STRUCT_SIZE, "struct_size ", struct_size, " is smaller than ", type,
            " (", sizeof(T), ")");
    std::memset(p, 0, struct_size);
    p->struct_size = struct_size;
}

}  // namespace api
}  // namespace pkv
