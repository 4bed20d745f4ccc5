#!/usr/bin/env bash
# The main job: build kiln, check every bundled model, then compile the seed MLP
# and the digits classifier to native programs, train them from scratch on their
# data, and show them working: accuracy, predictions, speed.
set -euo pipefail
cd "$(dirname "$0")/.."
cmake -S . -B build -DCMAKE_BUILD_TYPE=Release >/dev/null
cmake --build build -j "$(nproc 2>/dev/null || echo 2)"
echo "== kiln check models/*.yaml"
build/kiln check -q models/*.yaml && echo "all $(ls models/*.yaml | wc -l) models are valid"
out=build/demo
mkdir -p "$out"

echo
echo "== the seed MLP (5 features, 2 classes, 100 samples)"
build/kiln build models/mlp.yaml -o "$out/mlp"
"$out/mlp" info
"$out/mlp" train --save "$out/mlp.safetensors" --quiet
"$out/mlp" eval --weights "$out/mlp.safetensors" --data models/mlp.csv
cut -d, -f1-5 models/mlp.csv | head -5 >"$out/x.csv"
echo "predictions for the first 5 rows (labels: $(cut -d, -f6 models/mlp.csv | head -5 | paste -sd' '))"
"$out/mlp" infer --weights "$out/mlp.safetensors" --input "$out/x.csv" --argmax | paste -sd' '

echo
echo "== the digits classifier (8x8 images, 10 classes; 20% held out)"
build/kiln build models/digits.yaml -o "$out/digits"
"$out/digits" train --save "$out/digits.safetensors" --quiet
"$out/digits" eval --weights "$out/digits.safetensors"
"$out/digits" bench --train --threads 1 --runs 20

echo
echo "== the LSTM text generator (characters of /usr/share/common-licenses)"
build/kiln build models/lstm.yaml -o "$out/lstm"
# A short run (the model's default is 1000 steps; docs/models.md shows it).
"$out/lstm" train --steps 300 --save "$out/lstm.safetensors" --quiet
"$out/lstm" generate --weights "$out/lstm.safetensors" --prompt "Permission is " --tokens 200 \
  --temperature 0.7 --seed 1
