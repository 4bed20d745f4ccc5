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
# threads in index order, then in reverse (KILN_CUDA_EMU_ORDER).
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
# compare NAME CPU.csv GPU.csv: the loss column (3) of every step, within the
# tolerance; prints the largest relative difference.
compare() {
  if awk -F, -v name="$1" '
      NR == FNR { if (FNR > 1) want[$1] = $3; next }
      FNR > 1 { n++; d = $3 - want[$1]; if (d < 0) d = -d
                r = d / (1 + (want[$1] < 0 ? -want[$1] : want[$1])); if (r > max) max = r
                if (!($1 in want) || r > 1e-5) { bad++; printf "  step %s: gpu %s, cpu %s\n", $1, $3, want[$1] } }
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

model mlp ""
model digits ""
model lstm "--data $text" --dim batch=4 --dim seq=16 --dim embed=32 --dim hidden=64
model gpt "--data $text" --dim batch=2 --dim ctx=16 --dim d=32 --dim heads=2

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
