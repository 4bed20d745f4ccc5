#!/usr/bin/env bash
# Trains the bundled text generators (models/lstm.yaml, models/gpt.yaml) from
# scratch with their defaults, logging the loss, then draws the loss curves
# (docs/models-loss.svg) and generates a sample from each: what docs/models.md
# shows. Usage: scripts/train-text-models.sh [OUT_DIR] (default build/text-models).
set -euo pipefail
cd "$(dirname "$0")/.."
out=${1:-build/text-models}
kiln=${KILN:-build/kiln}
mkdir -p "$out"
for m in lstm gpt; do
  "$kiln" build "models/$m.yaml" -o "$out/$m"
  echo "== $m: training"
  /usr/bin/time -f "$m: %e s wall, %M KiB peak resident" \
    "$out/$m" train --log "$out/$m.csv" --eval-every 50 --print-every 100 \
    --save "$out/$m.safetensors"
done
/usr/bin/python3 scripts/plot-loss.py --out docs/models-loss.svg \
  --corpus /usr/share/common-licenses lstm="$out/lstm.csv" gpt="$out/gpt.csv"
for m in lstm gpt; do
  echo "== $m: samples"
  "$out/$m" generate --weights "$out/$m.safetensors" --prompt "This License " --tokens 300 \
    --temperature 0.8 --top-k 20 --seed 7
  "$out/$m" generate --weights "$out/$m.safetensors" --prompt "This License " --tokens 200 \
    --temperature 0
done
