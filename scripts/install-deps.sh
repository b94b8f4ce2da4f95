#!/usr/bin/env bash
# install-deps.sh [extra Debian packages...]
#
# Installs, with apt, whatever is missing of the build dependencies of pagedkv — cmake,
# ninja-build, g++, pkg-config, libgtest-dev — plus the packages named on the command line.
# A dependency counts as present when its tool / header is found, however it was installed.
# Runs `apt-get update` only when something is missing; non-interactive; needs root or
# password-less sudo then. CUDA (nvcc) is optional and never installed.
set -euo pipefail

have() { command -v "$1" >/dev/null 2>&1; }
installed() { have dpkg-query && dpkg-query -W -f='${Status}' "$1" 2>/dev/null | grep -q 'install ok installed'; }
gtest_found() {
    installed libgtest-dev || [[ -f /usr/include/gtest/gtest.h || -f /usr/local/include/gtest/gtest.h ]]
}

missing=()
have cmake || missing+=(cmake)
have ninja || missing+=(ninja-build)
have g++ || have c++ || missing+=(g++)
have pkg-config || missing+=(pkg-config)
gtest_found || missing+=(libgtest-dev)
for pkg in "$@"; do
    case $pkg in
        python3-pytest) python3 -c 'import pytest' >/dev/null 2>&1 || missing+=("$pkg") ;;
        python3-numpy) python3 -c 'import numpy' >/dev/null 2>&1 || missing+=("$pkg") ;;
        *) installed "$pkg" || missing+=("$pkg") ;;
    esac
done
[[ ${#missing[@]} -eq 0 ]] && exit 0

echo "install-deps: installing ${missing[*]}"
if ! have apt-get; then
    echo "install-deps: no apt-get here; please install: ${missing[*]}" >&2
    exit 1
fi
if [[ $(id -u) -eq 0 ]]; then
    sudo=()
elif have sudo && sudo -n true 2>/dev/null; then
    sudo=(sudo -n)
else
    echo "install-deps: missing ${missing[*]}, and no root or sudo to install them" >&2
    exit 1
fi
export DEBIAN_FRONTEND=noninteractive
"${sudo[@]}" apt-get update -qq
"${sudo[@]}" apt-get install -y -qq --no-install-recommends "${missing[@]}"
