#!/usr/bin/env bash
# Installs the Debian packages Kiln needs to build and test, skipping any already
# present. Idempotent: a second run installs nothing. The CUDA toolkit is optional
# and never installed here; CMake finds it when it is on the machine.
set -euo pipefail

pkgs=(
  build-essential cmake pkg-config
  libyaml-dev          # model files (event API)
  llvm-16-dev          # CPU backend (LLVM C API)
  libopenblas-dev      # large matmuls
  libcmocka-dev        # unit tests
  valgrind             # the runtime is checked under it
  libjansson-dev       # safetensors headers (JSON)
  clang-16 libclang-rt-16-dev   # libFuzzer harnesses (tests/fuzz, scripts/fuzz.sh)
  python3 python3-numpy   # reference checks in tests (Debian's python3, /usr/bin)
)

missing=()
for p in "${pkgs[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done

if [ ${#missing[@]} -eq 0 ]; then
  echo "install-deps: all ${#pkgs[@]} packages present"
  exit 0
fi

echo "install-deps: installing ${missing[*]}"
SUDO=""
[ "$(id -u)" -eq 0 ] || SUDO="sudo"
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -qq
$SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}"
