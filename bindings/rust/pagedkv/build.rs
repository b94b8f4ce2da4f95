//! Adds an rpath to libpagedkv's directory (`DEP_PAGEDKV_LIB`, from pagedkv-sys) for this
//! crate's own tests, examples and benches, so that `cargo test` / `cargo run --example` run
//! without LD_LIBRARY_PATH. It does not reach crates that depend on this one: a program
//! sets its own rpath the same way, or relies on the loader's search path.
fn main() {
    println!("cargo:rerun-if-env-changed=DEP_PAGEDKV_LIB");
    if let Ok(dir) = std::env::var("DEP_PAGEDKV_LIB") {
        println!("cargo:rustc-link-arg=-Wl,-rpath,{dir}");
    }
}
