#!/usr/bin/env bash
# The main job: build kiln and check every bundled model, printing each summary
# (values and shapes, parameter count, FLOPs of one forward pass).
set -euo pipefail
cd "$(dirname "$0")/.."
cmake -S . -B build -DCMAKE_BUILD_TYPE=Release >/dev/null
cmake --build build -j "$(nproc 2>/dev/null || echo 2)"
for m in models/*.yaml; do
  echo
  build/kiln check "$m"
done
