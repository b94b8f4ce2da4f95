#!/usr/bin/env bash
# bindings/python/gpu-tests.sh — the Python tests on a CUDA machine, offline: builds libpagedkv
# (CUDA) and the pagedkv._C extension with plain CMake (no pip, no scikit-build-core, nothing
# downloaded; <build>/python is then the importable package) and runs bindings/python/tests
# with the machine's own python3 (torch with CUDA, numpy, pybind11; ml_dtypes, CuPy and pytest
# when present). Every CUDA test (torch CUDA tensors, streams, __cuda_array_interface__, CuPy,
# opcheck and torch.compile on CUDA) runs when a device is present. With jax (+ its CUDA plugin)
# installed, the CMake build picks up jaxlib's XLA FFI headers by itself (PKV_ENABLE_XLA=AUTO),
# and the pagedkv.jax tests (tests/test_jax.py, CPU and GPU platforms) must run
# (PAGEDKV_REQUIRE_JAX=1).
#
#   bash bindings/python/gpu-tests.sh            # sm_90 (H100 / H200)
#   CUDAARCHS=80 bash bindings/python/gpu-tests.sh
#
# Environment: PAGEDKV_PY_BUILD_DIR (default build-pygpu), CUDAARCHS (default 90), PYTHON
# (default python3), PKV_JOBS (default: all cores), PAGEDKV_PY_BENCH=1 also runs
# bench/python_overhead.py --device cuda and, with jax, bench/jax_write_step.py. OUT (a folder):
# the pytest log and the benchmark tables are copied there. Without pytest installed,
# tests/gpu_smoke.py (a pytest-free subset of the CUDA checks) runs instead. Exit status non-zero
# on any failure.
set -uo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/../.." || exit 1
ROOT=$PWD
BUILD=${PAGEDKV_PY_BUILD_DIR:-build-pygpu}
ARCHS=${CUDAARCHS:-90}
PY=${PYTHON:-python3}
JOBS=${PKV_JOBS:-$(nproc 2>/dev/null || echo 4)}
[[ -d /usr/local/cuda/bin ]] && export PATH="/usr/local/cuda/bin:$PATH"
export PYTHONDONTWRITEBYTECODE=1
# jax would otherwise take 75 % of the GPU memory at its first use, under the torch tests' feet.
export XLA_PYTHON_CLIENT_PREALLOCATE=${XLA_PYTHON_CLIENT_PREALLOCATE:-false}
start=$SECONDS

echo "==== pagedkv python GPU tests: $($PY --version 2>&1), CUDA archs $ARCHS, build dir $BUILD"
PYEXE=$(command -v "$PY") || { echo "no $PY"; exit 1; }
if ! "$PY" -c 'import os, sys, sysconfig; sys.exit(not os.path.exists(os.path.join(sysconfig.get_paths()["include"], "Python.h")))'; then
    echo "gpu-tests: Python.h of $PY is missing (python3-dev): the extension cannot be built here" >&2
    exit 1
fi
pybind11_args=()
if dir=$("$PY" -m pybind11 --cmakedir 2>/dev/null) && [[ -n $dir ]]; then
    pybind11_args=(-Dpybind11_DIR="$dir")
else
    echo "note: '$PY -m pybind11' is not available; CMake searches its default paths for pybind11"
fi
generator=()
[[ ! -f $BUILD/CMakeCache.txt ]] && command -v ninja >/dev/null 2>&1 && generator=(-G Ninja)

cmake -S bindings/python -B "$BUILD" "${generator[@]}" -DCMAKE_BUILD_TYPE=Release -DPKV_ENABLE_CUDA=ON \
    -DCMAKE_CUDA_ARCHITECTURES="$ARCHS" -DPython_EXECUTABLE="$PYEXE" "${pybind11_args[@]}" || exit 1
cmake --build "$BUILD" -j "$JOBS" || exit 1
SITE=$ROOT/$BUILD/python  # the package: extension, libpagedkv.so.<abi>, Python sources
build_s=$((SECONDS - start))

PYTHONPATH=$SITE "$PY" - <<'EOF' || exit 1
import pagedkv
info = pagedkv.build_info()
print("pagedkv", pagedkv.__version__, "from", pagedkv.__file__)
print("build:", info, "| CUDA devices:", pagedkv.cuda_device_count())
try:
    import torch
    print("torch", torch.__version__, "cuda available:", torch.cuda.is_available(),
          torch.cuda.get_device_name() if torch.cuda.is_available() else "")
except ImportError:
    print("torch: not installed")
if info.get("cuda") == "none" or pagedkv.cuda_device_count() < 1:
    raise SystemExit("gpu-tests: the library has no CUDA backend or sees no device")
try:
    import jax
except ImportError:
    print("jax: not installed (pagedkv.jax tests skip)")
else:
    print("jax", jax.__version__, "devices:", jax.devices(), "| libpagedkv XLA handlers:", info.get("xla_ffi"))
    if info.get("xla_ffi") != "1":
        raise SystemExit("gpu-tests: jax is installed but libpagedkv was built without the XLA handlers "
                         "(CMake did not find jaxlib's headers)")
EOF
require_jax=0
PYTHONPATH=$SITE "$PY" -c "import jax" 2>/dev/null && require_jax=1

status=0
if "$PY" -c "import pytest" 2>/dev/null; then
    (cd "$BUILD" && PAGEDKV_REQUIRE_JAX=$require_jax PYTHONPATH=$SITE "$PY" -m pytest -q -p no:cacheprovider -rs "$ROOT/bindings/python/tests" \
        2>&1 | tee pytest-gpu.log)
    status=${PIPESTATUS[0]}
    summary=$(grep -E '[0-9]+ (passed|failed)' "$BUILD/pytest-gpu.log" | tail -1)
    cuda_cases=$(cd "$BUILD" && PYTHONPATH=$SITE "$PY" -m pytest -q -p no:cacheprovider --co \
        "$ROOT/bindings/python/tests" 2>/dev/null | grep -c -E 'cuda|cupy')
else
    echo "pytest is not installed: running the pytest-free CUDA smoke checks (tests/gpu_smoke.py)"
    PYTHONPATH=$SITE "$PY" "$ROOT/bindings/python/tests/gpu_smoke.py"
    status=$?
    summary="gpu_smoke.py exit status $status"
    cuda_cases="(smoke)"
fi

if [[ ${PAGEDKV_PY_BENCH:-0} == 1 ]]; then
    PYTHONPATH=$SITE PAGEDKV_INCLUDE_DIR=$ROOT/include "$PY" bench/python_overhead.py --device cuda \
        --markdown "$BUILD/python_overhead_cuda.md" || status=1
    if [[ $require_jax == 1 ]]; then
        PYTHONPATH=$SITE "$PY" bench/jax_write_step.py --markdown "$BUILD/jax_write_step.md" || status=1
    fi
fi
# The device machine sends back what is under $OUT: the pytest log and the benchmark tables.
if [[ -n ${OUT:-} && -d ${OUT:-} ]]; then
    cp "$BUILD"/pytest-gpu.log "$BUILD"/*.md "$OUT"/ 2>/dev/null
fi

echo
echo "==== summary"
echo "  build (CMake, CUDA $ARCHS): ${build_s}s; total $((SECONDS - start))s"
echo "  tests collected with CUDA / CuPy in their id: $cuda_cases"
echo "  pytest: $summary"
[[ $status -eq 0 ]] && echo "gpu-tests: OK" || echo "gpu-tests: FAILED"
exit "$status"
