//! Raw FFI bindings to `libpagedkv`, the paged KV cache library of LLM inference engines.
//!
//! Everything here is generated from `include/pagedkv.h` by `scripts/gen-rust-bindings.sh`
//! (Debian's `bindgen` 0.60 CLI) and checked in: building this crate needs neither bindgen nor
//! libclang, only the installed library. The header is the reference manual; the doc comments
//! of the items below are its comments.
//!
//! Mapping of the C API:
//! - functions `pkv_*`, structs `pkv_*` (`#[repr(C)]`, with layout tests), opaque handles
//!   `pkv_pool`, `pkv_block_table`, `pkv_slots`;
//! - C enums as `#[repr(transparent)]` newtypes over `u32` with associated constants
//!   (`pkv_status::PKV_SUCCESS`, `pkv_dtype::PKV_DTYPE_BF16`), so a value unknown to this
//!   version of the bindings is still a valid value;
//! - `pkv_stream` is `*mut CUstream_st`, the same type as `cudaStream_t`; null is the legacy
//!   default stream;
//! - macros `PKV_*` as constants (`PKV_VERSION`, `PKV_MAX_DIMS`, `PKV_LAYER_K_ONLY`, ...).
//!
//! The `*_INIT` macros of the header have no bindgen equivalent: use the `pkv_*_init`
//! functions, or zero the struct and set `struct_size` to its `size_of`.
//!
//! Linking: see `build.rs` (`PAGEDKV_LIB_DIR` / `PAGEDKV_INCLUDE_DIR`, else `pkg-config`). The
//! `links = "pagedkv"` metadata gives dependent build scripts `DEP_PAGEDKV_LIB` and
//! `DEP_PAGEDKV_INCLUDE`.
//!
//! The safe API is the `pagedkv` crate.

#![allow(non_camel_case_types, non_snake_case, non_upper_case_globals)]
#![allow(clippy::all)]
#![allow(rustdoc::broken_intra_doc_links, rustdoc::bare_urls, rustdoc::invalid_html_tags)]

include!("bindings.rs");

#[cfg(test)]
mod tests {
    use super::*;
    use std::ffi::CStr;

    #[test]
    fn links_and_reports_its_version() {
        // SAFETY: no arguments; pkv_version_string returns static, NUL-terminated text.
        let (version, text) = unsafe { (pkv_version(), CStr::from_ptr(pkv_version_string())) };
        assert_eq!(version / 100, PKV_VERSION / 100, "library {text:?} vs header");
        let expected = std::str::from_utf8(&PKV_VERSION_STRING[..PKV_VERSION_STRING.len() - 1]);
        assert_eq!(text.to_str().ok(), expected.ok());
    }

    #[test]
    fn status_and_last_error() {
        // SAFETY: a NULL view is rejected with INVALID_ARGUMENT; the message is static text
        // of this thread, read before any other pkv call.
        unsafe {
            let status = pkv_cache_view_check(core::ptr::null());
            assert_eq!(status, pkv_status::PKV_ERROR_INVALID_ARGUMENT);
            let message = CStr::from_ptr(pkv_last_error_message()).to_string_lossy();
            assert!(!message.is_empty());
            let name = CStr::from_ptr(pkv_status_string(status));
            assert_eq!(name.to_bytes(), b"PKV_ERROR_INVALID_ARGUMENT");
        }
    }

    #[test]
    fn init_functions_set_struct_size() {
        // SAFETY: zero is a valid value of every field (integers, null pointers, enum 0).
        let mut view: pkv_cache_view = unsafe { core::mem::zeroed() };
        // SAFETY: view is a valid, writable pkv_cache_view of the size passed.
        let status = unsafe { pkv_cache_view_init(&mut view, core::mem::size_of::<pkv_cache_view>()) };
        assert_eq!(status, pkv_status::PKV_SUCCESS);
        assert_eq!(view.struct_size, core::mem::size_of::<pkv_cache_view>());
    }
}
