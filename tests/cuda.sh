#!/usr/bin/env bash
# The CUDA target end to end without a GPU: every bundled model is built for the
# CPU and for CUDA (kiln build --target=cuda), the CUDA program's kernels run under
# the emulated driver of tests/cuda-emu/ (compiled for the host from the source
# --cuda-source writes), and 20 training steps of each must log the same losses,
# step by step, and end with the same evaluation loss. Then, on the MLP: which
# image a device of each compute capability loads, and the messages of a program
# that finds no driver, no device or no image it can run.
#
# Tolerance: |gpu - cpu| <= 1e-5 * (1 + |cpu|) per logged loss. Both compute in
# f32 with the same libm, but the GPU's block reductions and tiled matmuls sum in
# another order than the CPU's loops, so losses differ by a few f32 roundings; over
# 20 steps the largest difference seen was 1.2e-7 (the test prints it per model).
# A wrong kernel moves the loss by orders of magnitude more within a few steps.
#
# The LSTM and GPT run at reduced dims, on one short text (the held-out split that
# both evaluate on is then small), so that the emulator, which runs every CUDA
# thread as a coroutine, takes seconds. Each CUDA program trains twice: blocks and
# threads in index order, then in reverse (KILN_CUDA_EMU_ORDER). Then each model
# again with --gpu-matmul=bf16 (bf16 tensor cores for matmuls, f32 accumulation).
# Usage: cuda.sh PATH/TO/kiln SOURCE_DIR DRIVER EMU_H CXX
set -u
kiln=$1
src=$2
driver=$3
emu=$4
cxx=$5
. "$(dirname "$0")/harness.sh"
cd "$tmp"

if "$kiln" build --target=cuda "$src/models/mlp.yaml" -o probe 2>&1 | grep -q 'without the CUDA toolkit'; then
  echo "cuda_models: SKIPPED: this kiln was built without the CUDA toolkit"
  exit 77
fi
if [ ! -f "$driver" ]; then
  echo "cuda_models: SKIPPED: the CUDA emulator was not built (it needs a C++ compiler)"
  exit 77
fi
export KILN_CUDA_DRIVER=$driver

text=/usr/share/common-licenses/Apache-2.0
# compare NAME CPU.csv GPU.csv [TOL]: the loss column (3) of every step, within
# TOL (1e-5) of (1 + |cpu|); prints the largest relative difference.
compare() {
  if awk -F, -v name="$1" -v tol="${4:-1e-5}" '
      NR == FNR { if (FNR > 1) want[$1] = $3; next }
      FNR > 1 { n++; d = $3 - want[$1]; if (d < 0) d = -d
                r = d / (1 + (want[$1] < 0 ? -want[$1] : want[$1])); if (r > max) max = r
                if (!($1 in want) || r > tol) { bad++; printf "  step %s: gpu %s, cpu %s\n", $1, $3, want[$1] } }
      END { printf "%s: %d steps, largest difference %.2g of (1 + |loss|)\n", name, n, max
            exit !(n == 20 && !bad) }' "$2" "$3"; then
    pass=$((pass + 1))
  else
    fail=$((fail + 1)); echo "FAIL losses-$1"
  fi
}
# eval_loss FILE: the evaluation loss of a train summary.
eval_loss() { sed -n 's/.*eval loss \([0-9.e+-]*\).*/\1/p' "$1"; }

model() {
  local m=$1 data=$2
  shift 2
  expect "build-cpu-$m" 0 "$kiln" build "$src/models/$m.yaml" "$@" -o "$m-cpu"
  expect "build-cuda-$m" 0 "$kiln" build "$src/models/$m.yaml" "$@" --target=cuda --cuda-source="$m.cu" \
    -o "$m-cuda"
  expect "kernels-$m" 0 "$cxx" -O1 -fPIC -shared -fvisibility=hidden -include "$emu" -x c++ "$m.cu" -x none \
    -o "$m-kernels.so" "$driver"
  expect "train-cpu-$m" 0 "./$m-cpu" train --steps 20 --log "$m-cpu.csv" --quiet --threads 1 $data
  cp "$tmp/stdout" "$m-cpu.out"
  SECONDS=0
  KILN_CUDA_EMU_KERNELS="$PWD/$m-kernels.so" expect "train-cuda-$m" 0 "./$m-cuda" train --steps 20 \
    --log "$m-cuda.csv" --quiet $data
  cp "$tmp/stdout" "$m-cuda.out"
  echo "$m: 20 steps under the emulator in ${SECONDS} s"
  compare "$m" "$m-cpu.csv" "$m-cuda.csv"
  # Again with blocks and threads started in reverse: no kernel may depend on the
  # order of blocks or on threads running in index order between barriers.
  KILN_CUDA_EMU_ORDER=reverse KILN_CUDA_EMU_KERNELS="$PWD/$m-kernels.so" expect "train-cuda-reverse-$m" 0 \
    "./$m-cuda" train --steps 20 --log "$m-reverse.csv" --quiet $data
  compare "$m-reverse" "$m-cpu.csv" "$m-reverse.csv"
  local a b
  a=$(eval_loss "$m-cpu.out")
  b=$(eval_loss "$m-cuda.out")
  if [ -n "$a" ]; then
    check "eval-loss-$m ($b, cpu $a)" awk -v a="$a" -v b="$b" \
      'BEGIN { d = a - b; if (d < 0) d = -d; exit !(b != "" && d <= 1e-5 * (1 + a)) }'
  fi
}

# model_bf16 NAME DATA [BUILD OPTIONS]: after model, the same with
# --gpu-matmul=bf16, against the same CPU losses at BF16_TOL, and not identical to
# the f32 CUDA program's losses (the option must change the arithmetic).
model_bf16() {
  local m=$1 data=$2
  shift 2
  expect "build-cuda-bf16-$m" 0 "$kiln" build "$src/models/$m.yaml" "$@" --target=cuda --gpu-matmul=bf16 \
    --cuda-source="$m-bf16.cu" -o "$m-bf16"
  check "kernels-bf16-$m-mma" grep -q kiln_mma_tile "$m-bf16.cu"
  expect "kernels-bf16-$m" 0 "$cxx" -O1 -fPIC -shared -fvisibility=hidden -include "$emu" -x c++ "$m-bf16.cu" \
    -x none -o "$m-bf16-kernels.so" "$driver"
  SECONDS=0
  KILN_CUDA_EMU_KERNELS="$PWD/$m-bf16-kernels.so" expect "train-cuda-bf16-$m" 0 "./$m-bf16" train --steps 20 \
    --log "$m-bf16.csv" --quiet $data
  echo "$m-bf16: 20 steps under the emulator in ${SECONDS} s"
  compare "$m-bf16" "$m-cpu.csv" "$m-bf16.csv" "$BF16_TOL"
  KILN_CUDA_EMU_ORDER=reverse KILN_CUDA_EMU_KERNELS="$PWD/$m-bf16-kernels.so" \
    expect "train-cuda-bf16-reverse-$m" 0 "./$m-bf16" train --steps 20 --log "$m-bf16-reverse.csv" --quiet $data
  compare "$m-bf16-reverse" "$m-cpu.csv" "$m-bf16-reverse.csv" "$BF16_TOL"
  check "bf16-$m-differs-from-f32" awk -F, 'NR == FNR { f32[$1] = $3; next } FNR > 1 && f32[$1] != $3 { d = 1 }
                                           END { exit !d }' "$m-cuda.csv" "$m-bf16.csv"
}

model mlp ""
model digits ""
model lstm "--data $text" --dim batch=4 --dim seq=16 --dim embed=32 --dim hidden=64
model gpt "--data $text" --dim batch=2 --dim ctx=16 --dim d=32 --dim heads=2

# --gpu-matmul=bf16. Tolerance: matmul operands are rounded to bf16, 8 significant
# bits (a relative error up to 2^-8 = 3.9e-3 each, independent from element to
# element, so a sum of products moves by about 2^-8 / sqrt(terms) of its
# magnitude); the loss averages many such outputs and 20 steps of training
# compound them. The largest differences seen were 3.2e-3 of (1 + |loss|) (digits;
# 1.1e-4 to 5.9e-4 for the others); BF16_TOL is 1e-2, while a matmul computed
# wrong moves the loss by more within a step (a fragment register swapped in
# kiln_mma_tile: 2.3e-2 at step 1 of the MLP, 0.1 to 0.27 from step 4). Some
# logged loss must also differ from the f32 program's, or the option changed
# nothing. The bf16 programs train in reverse order too.
BF16_TOL=1e-2
model_bf16 mlp ""
model_bf16 digits ""
model_bf16 lstm "--data $text" --dim batch=4 --dim seq=16 --dim embed=32 --dim hidden=64
model_bf16 gpt "--data $text" --dim batch=2 --dim ctx=16 --dim d=32 --dim heads=2

# --emit=cuda writes the source the program was built from.
expect emit-cuda 0 "$kiln" build "$src/models/mlp.yaml" --target=cuda --emit=cuda -o emitted.cu
same emit-cuda-source mlp.cu emitted.cu

# Image selection: cubins for sm_80 and sm_90 and PTX for compute_90 (the default
# --gpu-arch). 8.6 runs the sm_80 cubin, 9.0 its own, 10.0 JIT-compiles the PTX,
# and 7.5 has nothing to run.
export KILN_CUDA_EMU_KERNELS=$PWD/mlp-kernels.so
for c in "86:loaded a cubin for sm_80" "90:loaded a cubin for sm_90" "100:JIT-compiled PTX for compute_90"; do
  KILN_CUDA_EMU_CC=${c%%:*} KILN_CUDA_EMU_VERBOSE=1 expect "image-cc${c%%:*}" 0 ./mlp-cuda train --steps 2 --quiet
  has "image-cc${c%%:*}-log" "$tmp/stderr" "kiln-cuda-emu: ${c#*:}"
  check "image-cc${c%%:*}-only" [ "$(grep -c 'kiln-cuda-emu: \(loaded\|JIT\)' "$tmp/stderr")" -eq 1 ]
done
KILN_CUDA_EMU_CC=75 expect image-cc75 1 ./mlp-cuda train --steps 2 --quiet
has image-cc75-msg "$tmp/stderr" "compute capability 7.5"
has image-cc75-hint "$tmp/stderr" "--gpu-arch=sm_75"

# No driver, no device.
KILN_CUDA_DRIVER=/nonexistent expect no-driver 1 ./mlp-cuda train --steps 2 --quiet
has no-driver-msg "$tmp/stderr" "needs the CUDA driver: /nonexistent: cannot open shared object file"
KILN_CUDA_EMU_DEVICES=0 expect no-device 1 ./mlp-cuda train --steps 2 --quiet
has no-device-msg "$tmp/stderr" "no CUDA-capable device is detected"

finish cuda_models
