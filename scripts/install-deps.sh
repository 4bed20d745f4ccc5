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
  libopenmpi-dev openmpi-bin   # data-parallel training (kiln build --mpi) and its tests
  procps               # pgrep: tests/distributed.sh finds the rank processes
  valgrind             # the runtime is checked under it
  libjansson-dev       # safetensors headers (JSON)
  clang-16 libclang-rt-16-dev   # libFuzzer harnesses (tests/fuzz, scripts/fuzz.sh)
  python3 python3-numpy   # reference checks in tests (Debian's python3, /usr/bin)
  libprotobuf-c-dev protobuf-c-compiler libonnx-dev   # kiln import: protobuf-c + onnx.proto
  python3-torch python3-onnx python3-venv   # ONNX export and weights tests
)

. "$(dirname "$0")/apt-install.sh"
apt_install install-deps "${pkgs[@]}"

# ONNX Runtime, the reference of tests/onnx_check.py, is on PyPI only: it goes into
# a virtual environment that sees Debian's torch, onnx and numpy. Pinned, so pip
# never replaces that numpy. Without it the test reports itself skipped.
venv=${KILN_ONNX_VENV:-/opt/kiln-venv}
ort=onnxruntime==1.32.0
if "$venv/bin/python3" -c "import onnxruntime" 2>/dev/null; then
  echo "install-deps: $ort present in $venv"
else
  echo "install-deps: installing $ort into $venv"
  $SUDO /usr/bin/python3 -m venv --system-site-packages "$venv" &&
    $SUDO "$venv/bin/pip" install -q --disable-pip-version-check "$ort" ||
    echo "install-deps: warning: no $ort; tests/onnx_check.py will be skipped" >&2
fi
