#!/usr/bin/env bash
# run-main.sh — the main job: build pagedkv into build/ (reusing it) and run the demo:
# a write + gather round trip of 1000 tokens for every cache format, on the GPU when one is
# present, else on the CPU.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

[[ -d /usr/local/cuda/bin ]] && export PATH="/usr/local/cuda/bin:$PATH"
bash scripts/install-deps.sh

generator=()
if [[ ! -f build/CMakeCache.txt ]] && command -v ninja >/dev/null 2>&1; then
    generator=(-G Ninja)
fi
cmake -S . -B build "${generator[@]}" -DCMAKE_BUILD_TYPE=Release
cmake --build build --target pagedkv_cli -j "${PKV_JOBS:-2}"

exec build/tools/pagedkv/pagedkv demo "$@"
