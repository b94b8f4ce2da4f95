#!/usr/bin/env bash
# xla-ffi-headers.sh [dir] — make the XLA FFI headers (xla/ffi/api/{c_api,api,ffi}.h, header-only,
# shipped in jaxlib) available and print their include directory, for
#   cmake -DPKV_ENABLE_XLA=ON -DPKV_XLA_FFI_INCLUDE_DIR="$(bash scripts/xla-ffi-headers.sh build/xla-ffi)"
#
# Order: <dir>/include from an earlier run (reused, nothing downloaded); else the include dir of
# a jaxlib that python3 can import; else jaxlib's wheel from PyPI (pip download --no-deps, the
# wheel for this python3; only jaxlib/include is extracted into <dir>/include, the wheel is then
# deleted). pip comes from python3 itself or from a small venv in <dir>/venv. Nothing is
# installed into the user's environment. Progress goes to stderr; stdout is the directory.
# Exit status non-zero when no headers could be had.
set -euo pipefail
dir=${1:-build/xla-ffi}
PY=${PYTHON:-python3}
mkdir -p "$dir"
dir=$(cd "$dir" && pwd)
inc=$dir/include
have_headers() { [[ -f $1/xla/ffi/api/ffi.h && -f $1/xla/ffi/api/api.h && -f $1/xla/ffi/api/c_api.h ]]; }

if have_headers "$inc"; then
    echo "$inc"
    exit 0
fi
local_inc=$("$PY" -c "import importlib.util as u, os; s = u.find_spec('jaxlib'); print(os.path.join(os.path.dirname(s.origin), 'include') if s and s.origin else '')" 2>/dev/null || true)
if [[ -n $local_inc ]] && have_headers "$local_inc"; then
    echo "xla-ffi-headers: using the installed jaxlib's headers ($local_inc)" >&2
    echo "$local_inc"
    exit 0
fi

pip=("$PY" -m pip)
if ! "${pip[@]}" --version >/dev/null 2>&1; then
    if [[ ! -x $dir/venv/bin/python ]]; then
        "$PY" -m venv "$dir/venv" >&2 || {
            bash "$(dirname "${BASH_SOURCE[0]}")/install-deps.sh" python3-venv >&2 && rm -rf "$dir/venv" &&
                "$PY" -m venv "$dir/venv" >&2
        }
    fi
    pip=("$dir/venv/bin/python" -m pip)
fi
rm -rf "$dir/wheel"
echo "xla-ffi-headers: downloading jaxlib's wheel from PyPI for its XLA FFI headers" >&2
PIP_DISABLE_PIP_VERSION_CHECK=1 "${pip[@]}" download -q --no-deps --only-binary=:all: -d "$dir/wheel" jaxlib >&2
wheel=$(ls "$dir"/wheel/jaxlib-*.whl | head -1)
"$PY" - "$wheel" "$dir" <<'EOF' >&2
import os, shutil, sys, zipfile
wheel, out = sys.argv[1], sys.argv[2]
tmp = os.path.join(out, "include.tmp")
shutil.rmtree(tmp, ignore_errors=True)
with zipfile.ZipFile(wheel) as z:
    names = [n for n in z.namelist() if n.startswith("jaxlib/include/") and not n.endswith("/")]
    for n in names:
        dst = os.path.join(tmp, n[len("jaxlib/include/"):])
        os.makedirs(os.path.dirname(dst), exist_ok=True)
        with z.open(n) as src, open(dst, "wb") as f:
            shutil.copyfileobj(src, f)
shutil.rmtree(os.path.join(out, "include"), ignore_errors=True)
os.rename(tmp, os.path.join(out, "include"))
with open(os.path.join(out, "SOURCE"), "w") as f:
    f.write(os.path.basename(wheel) + "\n")
print(f"xla-ffi-headers: {len(names)} headers from {os.path.basename(wheel)}")
EOF
rm -rf "$dir/wheel"
have_headers "$inc" || { echo "xla-ffi-headers: the wheel had no xla/ffi/api headers" >&2; exit 1; }
echo "$inc"
