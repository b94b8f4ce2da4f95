#!/usr/bin/env bash
# run-tests.sh — the whole test command (CI runs it through .ci/run).
#
#  1. build/       Release build, CUDA compiled when nvcc exists, with the XLA FFI handlers (their
#                  headers come from jaxlib's PyPI wheel once, kept in build/xla-ffi/:
#                  scripts/xla-ffi-headers.sh); ctest: the GoogleTest suite, header / ABI /
#                  exported-symbol checks, example and tool runs (GPU tests skip without a device).
#  2. build-asan/  CPU-only build with AddressSanitizer + UBSan; ctest.
#  3. install      build/ installed to a temporary prefix; example 01 built with its Makefile
#                  (pkg-config) and standalone with CMake (find_package) against it, and run.
#  4. bindings     bindings/python/tests (pytest) and bindings/rust (cargo test) when present;
#                  a bindings/<name>/run-tests.sh, when present, replaces the default command.
#
# The last line is "<N> passed, <M> failed"; the exit status is non-zero on any failure.
# Environment: PKV_JOBS (default 2) parallel jobs; PKV_SKIP_ASAN=1 skips step 2.
set -uo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.." || exit 1
ROOT=$PWD
JOBS=${PKV_JOBS:-2}
[[ -d /usr/local/cuda/bin ]] && export PATH="/usr/local/cuda/bin:$PATH"
# rustup's default home, for shells that did not source its profile (CI).
[[ -x ${CARGO_HOME:-$HOME/.cargo}/bin/cargo ]] && export PATH="${CARGO_HOME:-$HOME/.cargo}/bin:$PATH"

results=() # "PASS|FAIL|SKIP<TAB>name<TAB>seconds"
passed=0
failed=0

# step <name> <command...>: run one check (a command or a function of this script), record it.
step() {
    local name=$1 start=$SECONDS rc
    shift
    printf '\n==== %s\n' "$name"
    "$@"
    rc=$?
    if [[ $rc -eq 0 ]]; then
        results+=("PASS	$name	$((SECONDS - start))s")
        passed=$((passed + 1))
    else
        results+=("FAIL	$name	$((SECONDS - start))s")
        failed=$((failed + 1))
        printf '==== FAILED: %s (exit status %d)\n' "$name" "$rc"
    fi
    return $rc
}
skip() {
    results+=("SKIP	$1 ($2)	-")
    printf '\n==== skipped: %s (%s)\n' "$1" "$2"
}

# configure <build dir> <cmake args...>: Ninja for a fresh build dir, else keep its generator.
configure() {
    local dir=$1 generator=()
    shift
    if [[ ! -f $dir/CMakeCache.txt ]] && command -v ninja >/dev/null 2>&1; then
        generator=(-G Ninja)
    fi
    cmake -S "$ROOT" -B "$dir" "${generator[@]}" "$@"
}

run_ctest() { # run_ctest <build dir> [VAR=value...]
    local dir=$1
    shift
    (cd "$dir" && env "$@" ctest --output-on-failure --timeout 900 -j "$JOBS")
}

# ------------------------------------------------------------------------------- dependencies
extra_packages=()
[[ -d bindings/python/tests ]] && extra_packages+=(python3-pytest python3-numpy)
step "dependencies (apt)" bash scripts/install-deps.sh "${extra_packages[@]}"

if command -v nvcc >/dev/null 2>&1; then
    cuda_note="CUDA $(nvcc --version | sed -n 's/.*release \([0-9.]*\).*/\1/p')"
else
    cuda_note="CPU only, no nvcc"
fi

# ------------------------------------------------------------------------------- 1. main build
# The XLA FFI handlers (src/xla/) need jaxlib's header-only FFI API: fetched once into
# build/xla-ffi/ (reused on re-runs). Without them the build goes on with AUTO (and this step fails).
xla_args=(-DPKV_ENABLE_XLA=AUTO)
xla_headers() {
    local inc
    inc=$(bash scripts/xla-ffi-headers.sh build/xla-ffi) || return 1
    echo "XLA FFI headers: $inc ($(cat build/xla-ffi/SOURCE 2>/dev/null || echo installed jaxlib))"
    xla_args=(-DPKV_ENABLE_XLA=ON "-DPKV_XLA_FFI_INCLUDE_DIR=$inc")
}
step "XLA FFI headers (jaxlib wheel from PyPI, cached in build/xla-ffi)" xla_headers
build_main() {
    configure build -DCMAKE_BUILD_TYPE=Release -DPKV_ENABLE_CUDA=AUTO -DPKV_SANITIZE=OFF \
        -DPKV_BUILD_TESTS=ON -DPKV_BUILD_EXAMPLES=ON -DPKV_BUILD_TOOLS=ON "${xla_args[@]}" &&
        cmake --build build -j "$JOBS"
}
main_ok=0
step "build/: configure + build ($cuda_note)" build_main && main_ok=1
if [[ $main_ok -eq 1 ]]; then
    step "build/: ctest" run_ctest build
else
    skip "build/: ctest" "build failed"
fi

# ------------------------------------------------------------------------------- 2. sanitizers
# LeakSanitizer cannot run under ptrace and in some sandboxes: keep it on wherever it works.
lsan_works() {
    local dir rc=1
    dir=$(mktemp -d)
    printf 'int main(void) { return 0; }\n' >"$dir/probe.c"
    if cc -fsanitize=address -o "$dir/probe" "$dir/probe.c" >/dev/null 2>&1; then
        ASAN_OPTIONS=detect_leaks=1 "$dir/probe" >/dev/null 2>&1 && rc=0
    fi
    rm -rf "$dir"
    return $rc
}
build_asan() {
    configure build-asan -DCMAKE_BUILD_TYPE=RelWithDebInfo -DPKV_ENABLE_CUDA=OFF -DPKV_SANITIZE=ON -DPKV_ENABLE_XLA=OFF \
        -DPKV_BUILD_BENCH=OFF -DPKV_BUILD_TESTS=ON -DPKV_BUILD_EXAMPLES=ON -DPKV_BUILD_TOOLS=ON &&
        cmake --build build-asan -j "$JOBS"
}
if [[ ${PKV_SKIP_ASAN:-0} == 1 ]]; then
    skip "build-asan/: ASan + UBSan" "PKV_SKIP_ASAN=1"
elif step "build-asan/: configure + build (CPU only, ASan + UBSan)" build_asan; then
    detect_leaks=0
    lsan_works && detect_leaks=1
    step "build-asan/: ctest (detect_leaks=$detect_leaks)" run_ctest build-asan \
        "ASAN_OPTIONS=detect_leaks=$detect_leaks:abort_on_error=1:detect_stack_use_after_return=1:strict_string_checks=1" \
        "UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1"
else
    skip "build-asan/: ctest" "build failed"
fi

# ------------------------------------------------------------------------------- 3. install
work=$(mktemp -d "${TMPDIR:-/tmp}/pagedkv-tests.XXXXXX")
trap 'rm -rf "$work"' EXIT
prefix=$work/prefix

install_prefix() {
    cmake --install build --prefix "$prefix" &&
        test -f "$prefix/include/pagedkv.h" &&
        "$prefix/bin/pagedkv" info # runs through its RPATH, no LD_LIBRARY_PATH
}
pc_dir() {
    local pc
    pc=$(find "$prefix" -name pagedkv.pc -print -quit 2>/dev/null)
    [[ -n $pc ]] && dirname "$pc"
}
lib_dir() { PKG_CONFIG_PATH=$(pc_dir) pkg-config --variable=libdir pagedkv; }

example_make() {
    local dir=$work/example-make pc libdir
    pc=$(pc_dir) && libdir=$(lib_dir) || return 1
    mkdir -p "$dir" && cp examples/01_write_gather/main.c examples/01_write_gather/Makefile "$dir/" &&
        PKG_CONFIG_PATH=$pc make -C "$dir" &&
        LD_LIBRARY_PATH=$libdir "$dir/01_write_gather" &&
        LD_LIBRARY_PATH=$libdir "$dir/01_write_gather" --cpu --fp8
}
example_cmake() {
    local dir=$work/example-cmake libdir generator=()
    libdir=$(lib_dir) || return 1
    command -v ninja >/dev/null 2>&1 && generator=(-G Ninja)
    cmake -S examples/01_write_gather -B "$dir" "${generator[@]}" -DCMAKE_PREFIX_PATH="$prefix" &&
        cmake --build "$dir" &&
        LD_LIBRARY_PATH=$libdir "$dir/01_write_gather" --fp8
}
if [[ $main_ok -eq 1 ]] && step "install to a temporary prefix" install_prefix; then
    step "example 01 via Makefile + pkg-config" example_make
    step "example 01 via standalone CMake + find_package(pagedkv)" example_cmake
else
    skip "install + examples" "build/ or its install failed"
fi

# ------------------------------------------------------------------------------- 4. bindings
# Each binding may ship its own runner; it gets the build and the install prefix in the env.
export PAGEDKV_BUILD_DIR=$ROOT/build PAGEDKV_PREFIX=$prefix
binding_env=()
set_binding_env() {
    local libdir pc
    libdir=$(lib_dir 2>/dev/null) || libdir=$ROOT/build
    pc=$(pc_dir) || pc=
    binding_env=("PAGEDKV_LIBRARY=$libdir/libpagedkv.so" "PAGEDKV_LIB_DIR=$libdir"
                 "PAGEDKV_INCLUDE_DIR=$prefix/include" "PKG_CONFIG_PATH=$pc"
                 "LD_LIBRARY_PATH=$libdir${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}")
}
python_tests() {
    set_binding_env
    if [[ -f bindings/python/run-tests.sh ]]; then
        env "${binding_env[@]}" bash bindings/python/run-tests.sh
    else
        env "${binding_env[@]}" PYTHONPATH="$ROOT/bindings/python${PYTHONPATH:+:$PYTHONPATH}" \
            python3 -m pytest -q bindings/python/tests
    fi
}
rust_tests() {
    set_binding_env
    if [[ -f bindings/rust/run-tests.sh ]]; then
        env "${binding_env[@]}" bash bindings/rust/run-tests.sh
    else
        env "${binding_env[@]}" cargo test --manifest-path bindings/rust/Cargo.toml
    fi
}
if [[ -d bindings/python/tests ]]; then
    if [[ $main_ok -eq 1 ]]; then step "python bindings: pytest" python_tests
    else skip "python bindings" "build/ failed"; fi
fi
if [[ -d bindings/rust ]]; then
    if ! command -v cargo >/dev/null 2>&1; then
        skip "rust bindings" "cargo not found"
    elif [[ $main_ok -eq 1 ]]; then
        step "rust bindings: cargo test" rust_tests
    else
        skip "rust bindings" "build/ failed"
    fi
fi

# ------------------------------------------------------------------------------- summary
printf '\n==== summary\n'
for r in "${results[@]}"; do
    IFS=$'\t' read -r status name secs <<<"$r"
    printf '  %-4s  %-62s %s\n' "$status" "$name" "$secs"
done
echo "all checks:"
echo "$passed passed, $failed failed"
[[ $failed -eq 0 ]]
