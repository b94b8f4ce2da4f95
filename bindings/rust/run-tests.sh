#!/usr/bin/env bash
# bindings/rust/run-tests.sh — the Rust part of the test command (scripts/run-tests.sh step 4
# runs it with PAGEDKV_LIB_DIR, PAGEDKV_INCLUDE_DIR, PKG_CONFIG_PATH and LD_LIBRARY_PATH set
# for the library installed to a temporary prefix).
#
#  1. dependencies   Debian's bindgen and the libclang it loads (scripts/install-deps.sh)
#  2. bindings       scripts/gen-rust-bindings.sh --check: src/bindings.rs regenerated from
#                    include/pagedkv.h must equal the checked-in file
#  3. cargo fmt      --check (when rustfmt is installed)
#  4. cargo test     unit tests, integration tests (which run both examples), doc tests;
#                    linked through PAGEDKV_LIB_DIR
#  5. linking        pagedkv-sys found through pkg-config alone (and its tests run), and the
#                    build failing with its how-to-fix message when neither way finds it
#
# Without cargo the whole script is skipped (exit 0). Offline: neither crate has
# dependencies. PKV_JOBS (default 2) parallel jobs.
set -uo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")" || exit 1
RUST_DIR=$PWD
ROOT=$(cd ../.. && pwd)
JOBS=${PKV_JOBS:-2}

[[ -d $HOME/.cargo/bin ]] && PATH="$PATH:$HOME/.cargo/bin"
if ! command -v cargo >/dev/null 2>&1; then
    echo "rust bindings: skipped (cargo not found)"
    exit 0
fi
export CARGO_NET_OFFLINE=true

# Without the variables of scripts/run-tests.sh, derive what can be derived.
if [[ -n ${PAGEDKV_LIB_DIR:-} && -z ${PKG_CONFIG_PATH:-} && -d $PAGEDKV_LIB_DIR/pkgconfig ]]; then
    export PKG_CONFIG_PATH=$PAGEDKV_LIB_DIR/pkgconfig
fi

results=()
failed=0
step() { # step <name> <command...>
    local name=$1 start=$SECONDS rc
    shift
    printf '\n---- rust: %s\n' "$name"
    "$@"
    rc=$?
    if [[ $rc -eq 0 ]]; then
        results+=("PASS  $name ($((SECONDS - start))s)")
    else
        results+=("FAIL  $name ($((SECONDS - start))s)")
        failed=$((failed + 1))
    fi
    return $rc
}

# ------------------------------------------------------------------------------ 1 + 2
# bindgen loads libclang at run time; it needs libclang1-N and the clang headers of
# libclang-common-N-dev (N = the version Debian's libclang-dev points to; 14 on bookworm).
deps() {
    local ver
    ver=$(apt-cache depends libclang-dev 2>/dev/null | sed -n 's/.*Depends: libclang-\([0-9][0-9]*\)-dev.*/\1/p' | head -n 1)
    ver=${ver:-14}
    bash "$ROOT/scripts/install-deps.sh" bindgen "libclang1-$ver" "libclang-common-$ver-dev"
}
step "dependencies (bindgen, libclang)" deps
step "bindings.rs is generated from include/pagedkv.h" bash "$ROOT/scripts/gen-rust-bindings.sh" --check

# ------------------------------------------------------------------------------ 3
if cargo fmt --version >/dev/null 2>&1; then
    step "cargo fmt --check" cargo fmt --all --check
fi

# ------------------------------------------------------------------------------ 4
step "cargo test (unit, integration + examples, doc)" cargo test --offline --workspace -j "$JOBS"

# ------------------------------------------------------------------------------ 5
# A separate target directory, so that these builds do not invalidate the main one.
link_target=$RUST_DIR/target/link-check
no_env=(env -u PAGEDKV_LIB_DIR -u PAGEDKV_INCLUDE_DIR CARGO_TARGET_DIR="$link_target")

link_pkg_config() {
    if [[ -z ${PKG_CONFIG_PATH:-} ]] && ! pkg-config --exists pagedkv 2>/dev/null; then
        echo "PKG_CONFIG_PATH is not set and pkg-config does not know pagedkv" >&2
        return 1
    fi
    "${no_env[@]}" cargo test --offline -p pagedkv-sys -j "$JOBS" || return 1
    grep -qs 'found_by=pkg-config' "$link_target"/debug/build/pagedkv-sys-*/output || {
        echo "the build script did not report pkg-config" >&2
        return 1
    }
}
# expect_failure <needle...> -- <env assignments...>: the build fails and says how to fix it.
expect_failure() {
    local log needles=()
    while [[ $1 != -- ]]; do needles+=("$1"); shift; done
    shift
    log=$("${no_env[@]}" "$@" cargo build --offline -p pagedkv-sys -j "$JOBS" 2>&1) && {
        echo "the build succeeded without a way to find libpagedkv" >&2
        return 1
    }
    for needle in "${needles[@]}"; do
        grep -qF -- "$needle" <<<"$log" || {
            printf '%s\n' "$log" | tail -n 20
            echo "the failure message lacks: $needle" >&2
            return 1
        }
    done
    printf '%s\n' "$log" | grep -A 2 'cannot find libpagedkv' | head -n 3
}
empty_pc_dir=$(mktemp -d)
trap 'rm -rf "$empty_pc_dir"' EXIT
step "pagedkv-sys links through pkg-config alone" link_pkg_config
step "pagedkv-sys: no pkg-config program -> how-to-fix message" \
    expect_failure "could not run" "PAGEDKV_LIB_DIR=<prefix>/lib" "PKG_CONFIG_PATH=<prefix>/lib/pkgconfig" -- \
    PKG_CONFIG=/nonexistent/pkg-config
step "pagedkv-sys: pkg-config without pagedkv -> how-to-fix message" \
    expect_failure "failed:" "PAGEDKV_LIB_DIR=<prefix>/lib" -- \
    PKG_CONFIG_PATH= PKG_CONFIG_LIBDIR="$empty_pc_dir"
step "pagedkv-sys: PAGEDKV_LIB_DIR without the library -> message" \
    expect_failure "holds no libpagedkv.so" -- PAGEDKV_LIB_DIR="$empty_pc_dir"

printf '\n---- rust: summary\n'
printf '  %s\n' "${results[@]}"
[[ $failed -eq 0 ]]
