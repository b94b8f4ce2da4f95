// The one exception type that crosses layers inside the library. src/api/ turns it into a
// pkv_status plus the thread-local message; nothing throws across the C ABI.
#pragma once

#include <stdexcept>
#include <string>

#include "pagedkv.h"

namespace pkv {

struct Error : std::runtime_error {
    pkv_status status;
    int cuda_error;  // raw cudaError_t for PKV_ERROR_CUDA, else 0
    Error(pkv_status s, const std::string &message, int cuda = 0)
        : std::runtime_error(message), status(s), cuda_error(cuda) {}
};

[[noreturn]] inline void fail(pkv_status s, const std::string &message) { throw Error(s, message); }

}  // namespace pkv
