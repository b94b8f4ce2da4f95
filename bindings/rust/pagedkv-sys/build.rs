//! Finds libpagedkv and tells Cargo how to link it. No C is compiled here: the bindings are
//! pre-generated (`src/bindings.rs`), and the library is built and installed with CMake.
//!
//! Order (first match wins):
//!  1. `PAGEDKV_LIB_DIR` (the directory holding `libpagedkv.so`) and, optionally,
//!     `PAGEDKV_INCLUDE_DIR` (the directory holding `pagedkv.h`; default: `<lib dir>/../include`
//!     when it has one). When the header is found, its major.minor must match this crate's.
//!  2. The `pkg-config` program (`$PKG_CONFIG` if set): `pagedkv >= M.m.0` and `< M.(m+1).0`,
//!     where M.m is this crate's version (during 0.x the minor version is the ABI number).
//!  3. Otherwise the build fails with a message saying how to point it at the library.
//!
//! Emits `rustc-link-lib=dylib=pagedkv`, `rustc-link-search`, and the `links` metadata `lib`
//! and `include` (dependent build scripts read them as `DEP_PAGEDKV_LIB` /
//! `DEP_PAGEDKV_INCLUDE`, e.g. to add an rpath).

use std::env;
use std::path::{Path, PathBuf};
use std::process::Command;

const ENV_VARS: &[&str] = &[
    "PAGEDKV_LIB_DIR",
    "PAGEDKV_INCLUDE_DIR",
    "PKG_CONFIG",
    "PKG_CONFIG_PATH",
    "PKG_CONFIG_LIBDIR",
    "PKG_CONFIG_SYSROOT_DIR",
];

/// Where the library was found.
struct Found {
    lib_dirs: Vec<PathBuf>,
    include_dir: Option<PathBuf>,
    how: String,
}

fn main() {
    for var in ENV_VARS {
        println!("cargo:rerun-if-env-changed={var}");
    }
    println!("cargo:rerun-if-changed=build.rs");

    let major: u32 = env::var("CARGO_PKG_VERSION_MAJOR").unwrap().parse().unwrap();
    let minor: u32 = env::var("CARGO_PKG_VERSION_MINOR").unwrap().parse().unwrap();

    let found = match from_env(major, minor) {
        Some(Ok(found)) => found,
        Some(Err(message)) => fail(&message),
        None => match from_pkg_config(major, minor) {
            Ok(found) => found,
            Err(message) => fail(&message),
        },
    };

    for dir in &found.lib_dirs {
        println!("cargo:rustc-link-search=native={}", dir.display());
    }
    println!("cargo:rustc-link-lib=dylib=pagedkv");
    if let Some(dir) = found.lib_dirs.first() {
        println!("cargo:lib={}", dir.display());
        // This crate's own tests (the layout tests and the smoke test) run without
        // LD_LIBRARY_PATH. Dependents decide for themselves (DEP_PAGEDKV_LIB).
        println!("cargo:rustc-link-arg=-Wl,-rpath,{}", dir.display());
    }
    if let Some(dir) = &found.include_dir {
        println!("cargo:include={}", dir.display());
    }
    println!("cargo:found_by={}", found.how);
}

/// `PAGEDKV_LIB_DIR` (+ `PAGEDKV_INCLUDE_DIR`); None when the variable is unset or empty.
fn from_env(major: u32, minor: u32) -> Option<Result<Found, String>> {
    let lib_dir = env::var_os("PAGEDKV_LIB_DIR").filter(|v| !v.is_empty())?;
    let lib_dir = PathBuf::from(lib_dir);
    Some((|| {
        if !has_library(&lib_dir) {
            return Err(format!(
                "PAGEDKV_LIB_DIR={} holds no libpagedkv.so; point it at the `lib` directory of \
                 an install (`cmake --install build --prefix <prefix>` -> <prefix>/lib)",
                lib_dir.display()
            ));
        }
        let include_dir = match env::var_os("PAGEDKV_INCLUDE_DIR").filter(|v| !v.is_empty()) {
            Some(dir) => {
                let dir = PathBuf::from(dir);
                if !dir.join("pagedkv.h").is_file() {
                    return Err(format!("PAGEDKV_INCLUDE_DIR={} holds no pagedkv.h", dir.display()));
                }
                Some(dir)
            }
            None => lib_dir.parent().map(|prefix| prefix.join("include")).filter(|dir| dir.join("pagedkv.h").is_file()),
        };
        if let Some(dir) = &include_dir {
            check_header_version(&dir.join("pagedkv.h"), major, minor)?;
        }
        Ok(Found { lib_dirs: vec![lib_dir], include_dir, how: "PAGEDKV_LIB_DIR".into() })
    })())
}

fn has_library(dir: &Path) -> bool {
    let Ok(entries) = dir.read_dir() else { return false };
    entries.flatten().any(|entry| {
        let name = entry.file_name();
        let name = name.to_string_lossy();
        name == "libpagedkv.so"
            || name.starts_with("libpagedkv.so.")
            || name == "libpagedkv.dylib"
            || name == "pagedkv.lib"
    })
}

/// The header's PKV_VERSION_MAJOR / MINOR must equal this crate's major.minor.
fn check_header_version(header: &Path, major: u32, minor: u32) -> Result<(), String> {
    println!("cargo:rerun-if-changed={}", header.display());
    let text = std::fs::read_to_string(header).map_err(|e| format!("cannot read {}: {e}", header.display()))?;
    let define = |name: &str| -> Option<u32> {
        text.lines().find_map(|line| {
            let mut words = line.split_whitespace();
            (words.next() == Some("#define") && words.next() == Some(name))
                .then(|| words.next()?.parse().ok())
                .flatten()
        })
    };
    match (define("PKV_VERSION_MAJOR"), define("PKV_VERSION_MINOR")) {
        (Some(h_major), Some(h_minor)) if (h_major, h_minor) == (major, minor) => Ok(()),
        (Some(h_major), Some(h_minor)) => Err(format!(
            "{} is version {h_major}.{h_minor}, but pagedkv-sys {major}.{minor} was generated \
             from a {major}.{minor} header (the ABI is major.minor during 0.x)",
            header.display()
        )),
        _ => Err(format!("{} has no PKV_VERSION_MAJOR / PKV_VERSION_MINOR", header.display())),
    }
}

/// `pkg-config --libs --cflags pagedkv` with the version range of this crate.
fn from_pkg_config(major: u32, minor: u32) -> Result<Found, String> {
    let program = env::var("PKG_CONFIG").ok().filter(|p| !p.is_empty());
    let program = program.as_deref().unwrap_or("pkg-config");
    let range = [format!("pagedkv >= {major}.{minor}.0"), format!("pagedkv < {major}.{}.0", minor + 1)];
    let run = |args: &[&str]| -> Result<String, String> {
        let output =
            Command::new(program).args(args).output().map_err(|e| format!("could not run `{program}`: {e}"))?;
        if output.status.success() {
            Ok(String::from_utf8_lossy(&output.stdout).trim().to_string())
        } else {
            let stderr = String::from_utf8_lossy(&output.stderr);
            Err(format!("`{program} {}` failed: {}", args.join(" "), stderr.trim()))
        }
    };

    let mut args = vec!["--print-errors", "--libs"];
    args.extend(range.iter().map(String::as_str));
    let libs = run(&args)?;
    let mut lib_dirs = Vec::new();
    for word in libs.split_whitespace() {
        if let Some(dir) = word.strip_prefix("-L") {
            if !lib_dirs.iter().any(|d: &PathBuf| d.as_path() == Path::new(dir)) {
                lib_dirs.push(PathBuf::from(dir));
            }
        } else if word.starts_with("-l") {
            // -lpagedkv; emitted as rustc-link-lib by main().
        } else {
            println!("cargo:warning=pagedkv-sys: ignoring `{word}` from `{program} --libs`");
        }
    }
    let libdir = run(&["--variable=libdir", "pagedkv"])?;
    if lib_dirs.is_empty() && !libdir.is_empty() {
        lib_dirs.push(PathBuf::from(libdir));
    }
    let includedir = run(&["--variable=includedir", "pagedkv"])?;
    let include_dir = Some(PathBuf::from(includedir)).filter(|d| d.join("pagedkv.h").is_file());
    Ok(Found { lib_dirs, include_dir, how: "pkg-config".into() })
}

fn fail(reason: &str) -> ! {
    eprintln!(
        "\nerror: pagedkv-sys cannot find libpagedkv: {reason}\n\n\
         Build and install the library, then point the build at it in one of two ways:\n\
         \x20 cmake -S . -B build && cmake --build build && cmake --install build --prefix <prefix>\n\
         \x20 1. PAGEDKV_LIB_DIR=<prefix>/lib PAGEDKV_INCLUDE_DIR=<prefix>/include cargo build\n\
         \x20 2. PKG_CONFIG_PATH=<prefix>/lib/pkgconfig cargo build   (needs the pkg-config program)\n\
         At run time the dynamic loader must find libpagedkv.so too (LD_LIBRARY_PATH=<prefix>/lib,\n\
         or an rpath from DEP_PAGEDKV_LIB in your build script).\n"
    );
    std::process::exit(1);
}
