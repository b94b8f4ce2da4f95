#!/usr/bin/env bash
# bindings/python/run-tests.sh — the Python tests of the project test command (step 4 of
# scripts/run-tests.sh). Everything it needs comes from PyPI into a fresh virtual environment:
#
#  1. venv          python3 -m venv in a temporary directory (never the user's environment)
#  2. test deps     pytest, numpy, ml_dtypes
#  3. package       pip install ./bindings/python (scikit-build-core + pybind11 from PyPI, build
#                   isolation). With PAGEDKV_LIBRARY set (as scripts/run-tests.sh does: the
#                   library it built with CUDA and installed) the package wraps that prebuilt
#                   library instead of compiling it again: pip still builds the extension and the
#                   wheel still carries its own copy of libpagedkv. Without it, pip builds
#                   libpagedkv from the source tree (CUDA when nvcc is found).
#  4. source wheel  pip wheel ./bindings/python with a CPU-only libpagedkv built from source,
#                   and a check of the wheel's contents (the from-source packaging path).
#  5. jax           jax (CPU) from PyPI, for pagedkv.jax (the XLA FFI targets); its tests are
#                   required to run (PAGEDKV_REQUIRE_JAX=1) when the package's libpagedkv has the
#                   XLA handlers (build_info xla_ffi=1, as scripts/run-tests.sh builds it).
#  6. torch         PyTorch from PyPI (the Linux wheel with its CUDA runtime packages: ~3 GB
#                   download; it runs on CPU here). PAGEDKV_TORCH_INDEX_URL picks another index,
#                   e.g. https://download.pytorch.org/whl/cpu (a ~200 MB CPU-only wheel).
#  7. pytest        bindings/python/tests against the installed package (NumPy and PyTorch CPU
#                   tensors; torch CUDA / CuPy tests run when a GPU is present).
#
# Gates (environment): PAGEDKV_PY_TORCH=0 skips step 6 (the torch tests are then skipped, and
# this is printed), PAGEDKV_PY_JAX=0 skips step 5 (jax tests skipped), PAGEDKV_PY_SOURCE_WHEEL=0
# skips step 4, PYTHON picks the interpreter,
# PKV_JOBS the build parallelism. Exit status non-zero on any failure.
set -uo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/../.." || exit 1
ROOT=$PWD
PY=${PYTHON:-python3}
JOBS=${PKV_JOBS:-2}
[[ -d /usr/local/cuda/bin ]] && export PATH="/usr/local/cuda/bin:$PATH"
export PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_INPUT=1 PYTHONDONTWRITEBYTECODE=1
export CMAKE_BUILD_PARALLEL_LEVEL=$JOBS

work=$(mktemp -d "${TMPDIR:-/tmp}/pagedkv-python.XXXXXX")
trap 'rm -rf "$work"' EXIT

timings=()
failed=0
stage() { # stage <name> <command...>
    local name=$1 start=$SECONDS rc
    shift
    printf '\n---- python: %s\n' "$name"
    "$@"
    rc=$?
    timings+=("$(printf '%4ss  %-6s  %s' "$((SECONDS - start))" "$([[ $rc -eq 0 ]] && echo ok || echo FAILED)" "$name")")
    [[ $rc -eq 0 ]] || failed=1
    return $rc
}
summary() {
    printf '\n---- python: summary (%ss)\n' "$SECONDS"
    printf '  %s\n' "${timings[@]}"
}

make_venv() {
    "$PY" -m venv "$work/venv" && return 0
    echo "python3 -m venv failed; installing python3-venv with apt"
    bash scripts/install-deps.sh python3-venv && rm -rf "$work/venv" && "$PY" -m venv "$work/venv"
}
stage "venv ($("$PY" --version 2>&1))" make_venv || { summary; exit 1; }
VPY=$work/venv/bin/python
pip_install() { "$VPY" -m pip install -q "$@"; }

stage "test deps: pytest numpy ml_dtypes" pip_install pytest numpy ml_dtypes || { summary; exit 1; }

package_args=()
if [[ -n ${PAGEDKV_LIBRARY:-} && -e ${PAGEDKV_LIBRARY} ]]; then
    package_args+=(--config-settings=cmake.define.PAGEDKV_LIBRARY="$PAGEDKV_LIBRARY")
    [[ -n ${PAGEDKV_INCLUDE_DIR:-} && -f ${PAGEDKV_INCLUDE_DIR}/pagedkv.h ]] &&
        package_args+=(--config-settings=cmake.define.PAGEDKV_INCLUDE_DIR="$PAGEDKV_INCLUDE_DIR")
    package_note="prebuilt $PAGEDKV_LIBRARY"
else
    package_note="libpagedkv from source, $(command -v nvcc >/dev/null && echo CUDA || echo CPU only)"
fi
stage "pip install ./bindings/python ($package_note)" \
    pip_install "${package_args[@]}" ./bindings/python || { summary; exit 1; }

check_wheel() {
    "$VPY" -m pip wheel -q --no-deps -w "$work/wheel" \
        --config-settings=cmake.define.PKV_ENABLE_CUDA=OFF ./bindings/python &&
        "$VPY" - "$work"/wheel/pagedkv-*.whl <<'EOF'
import sys, zipfile
wheel = zipfile.ZipFile(sys.argv[1])
names = wheel.namelist()
need = ["pagedkv/__init__.py", "pagedkv/vllm.py", "pagedkv/torch.py", "pagedkv/jax.py", "pagedkv/py.typed", "pagedkv/_C.pyi",
        "pagedkv/libpagedkv.so.0.1"]
missing = [n for n in need if n not in names]
ext = [n for n in names if n.startswith("pagedkv/_C.") and n.endswith(".so")]
extra = [n for n in names if n.startswith(("include/", "lib/", "share/"))]
print(sys.argv[1].rsplit("/", 1)[-1], f"{len(names)} files; extension: {ext}")
if missing or not ext or extra:
    sys.exit(f"wheel contents wrong: missing {missing}, extension {ext}, stray {extra}")
if b"cuda=none" not in wheel.read("pagedkv/libpagedkv.so.0.1"):  # built here, CPU-only, not a prebuilt copy
    sys.exit("the wheel's libpagedkv is not the CPU-only build from source")
print("libpagedkv.so.0.1 in the wheel: built from source, CPU only")
EOF
}
if [[ ${PAGEDKV_PY_SOURCE_WHEEL:-1} != 0 ]]; then
    stage "pip wheel from source (CPU-only libpagedkv) + contents" check_wheel
fi

jax_note="jax tests skipped (PAGEDKV_PY_JAX=0)"
require_jax=0
if [[ ${PAGEDKV_PY_JAX:-1} != 0 ]]; then
    jax_check() { pip_install jax && "$VPY" -c "import jax; print('jax', jax.__version__, jax.devices())"; }
    if stage "jax (CPU) from PyPI" jax_check; then
        xla=$(cd "$work" && "$VPY" -c "import pagedkv; print(pagedkv.build_info().get('xla_ffi', '0'))")
        if [[ $xla == 1 ]]; then
            jax_note="jax installed, XLA handlers in libpagedkv"
            require_jax=1
        else
            jax_note="jax installed, libpagedkv WITHOUT XLA handlers (jax tests skip)"
        fi
    else
        jax_note="jax install FAILED"
    fi
fi

torch_note="torch tests skipped (PAGEDKV_PY_TORCH=0)"
if [[ ${PAGEDKV_PY_TORCH:-1} != 0 ]]; then
    torch_args=(torch)
    [[ -n ${PAGEDKV_TORCH_INDEX_URL:-} ]] && torch_args+=(--index-url "$PAGEDKV_TORCH_INDEX_URL")
    torch_check() { pip_install "${torch_args[@]}" && "$VPY" -c "import torch; print('torch', torch.__version__)"; }
    if stage "torch from ${PAGEDKV_TORCH_INDEX_URL:-PyPI}" torch_check; then
        torch_note="torch installed"
    else
        torch_note="torch install FAILED"
    fi
fi

run_pytest() {
    # From the temporary directory, so `import pagedkv` is the installed package, not the source.
    (cd "$work" && PAGEDKV_REQUIRE_JAX=$require_jax "$VPY" -m pytest -q -p no:cacheprovider -rs "$ROOT/bindings/python/tests" \
        2>&1 | tee "$work/pytest.log")
    local rc=${PIPESTATUS[0]}
    return "$rc"
}
stage "pytest bindings/python/tests ($torch_note; $jax_note)" run_pytest
summary
if [[ $failed -ne 0 ]]; then
    echo "python tests: FAILED"
    exit 1
fi
echo "python tests: $(grep -E '[0-9]+ passed' "$work/pytest.log" | tail -1)"
