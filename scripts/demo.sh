#!/usr/bin/env bash
# The main job: build kiln, check every bundled model (values, shapes, parameters,
# FLOPs), then compile the seed MLP to a native program and run it: its summary,
# its predictions for the first rows of its data, and its forward-pass speed.
set -euo pipefail
cd "$(dirname "$0")/.."
cmake -S . -B build -DCMAKE_BUILD_TYPE=Release >/dev/null
cmake --build build -j "$(nproc 2>/dev/null || echo 2)"
for m in models/*.yaml; do
  echo
  build/kiln check "$m"
done
out=build/demo
mkdir -p "$out"
echo
echo "== kiln build models/mlp.yaml -o $out/mlp"
build/kiln build models/mlp.yaml -o "$out/mlp"
"$out/mlp" info
cut -d, -f1-5 models/mlp.csv | head -5 >"$out/x.csv"
echo "== $out/mlp infer --input $out/x.csv --argmax   (untrained: weights from the seed)"
"$out/mlp" infer --input "$out/x.csv" --argmax
echo "== $out/mlp bench --threads 1"
"$out/mlp" bench --threads 1 --runs 20
