#!/usr/bin/env bash
# Data-parallel training of CUDA programs (kiln build --mpi --target=cuda) without
# a GPU: each rank runs under the emulated driver (tests/cuda-emu) on a device of
# its own, and NCCL is the stand-in of tests/cuda-emu/nccl.c, whose all-reduce is
# MPI's, enqueued on the NCCL stream and captured into the step's CUDA graph. What
# is checked:
#   - 2 ranks at batch B/2 end with the weights of one CPU process at batch B (the
#     seed MLP with SGD, a small GPT with AdamW and clipping), with the same losses;
#   - the CUDA graph (fork to the NCCL stream, join before the gradient norm) gives
#     the same bits as launching kernel by kernel;
#   - stop and resume on 2 ranks: the checkpoint of the run that never stopped;
#   - one rank per GPU: too few devices, or two ranks on one device, is an error
#     with its reason; --shard-optimizer is refused; NCCL missing or too old;
#   - a rank whose NCCL reports an error ends the job with that error.
# Skipped (77) without mpirun, without MPI in kiln, without the CUDA toolkit in
# kiln, or without the emulator and the stand-in NCCL.
# Usage: cuda_dist.sh KILN SOURCE_DIR PYTHON DRIVER EMU_H CXX FAKE_NCCL [EXTRA_LINK_FLAG]
set -u
kiln=$1
src=$2
py=$3
driver=$4
emu=$5
cxx=$6
nccl=$7
if ! command -v mpirun >/dev/null; then echo "cuda_distributed: SKIPPED: no mpirun (install openmpi-bin)"; exit 77; fi
if [ ! -r "$(dirname "$kiln")/libkiln_mpi.a" ]; then
  echo "cuda_distributed: SKIPPED: kiln was built without MPI (install libopenmpi-dev)"; exit 77
fi
if [ ! -f "$driver" ] || [ ! -f "$nccl" ]; then
  echo "cuda_distributed: SKIPPED: the CUDA emulator or the stand-in NCCL was not built"; exit 77
fi
. "$(dirname "$0")/harness.sh"
. "$(dirname "$0")/dist_lib.sh"
cd "$tmp"
if "$kiln" build --target=cuda "$src/models/mlp.yaml" -o probe 2>&1 | grep -q 'without the CUDA toolkit'; then
  echo "cuda_distributed: SKIPPED: this kiln was built without the CUDA toolkit"
  exit 77
fi
export KILN_CUDA_DRIVER=$driver KILN_NCCL=$nccl KILN_CUDA_EMU_DEVICES=2
text=/usr/share/common-licenses/Apache-2.0

# cuda NAME MODEL ARGS...: the CUDA program with --mpi and its kernels for the emulator.
cuda() {
  local name=$1 model=$2
  shift 2
  expect "build-$name" 0 "$kiln" build --mpi --target=cuda "$src/models/$model.yaml" "$@" \
    --cuda-source="$name.cu" -o "$name"
  expect "kernels-$name" 0 "$cxx" -O1 -fPIC -shared -fvisibility=hidden -include "$emu" -x c++ \
    "$name.cu" -x none -o "$name-kernels.so" "$driver"
}

# The seed MLP with SGD: one CPU process at batch 20 against 2 GPU ranks at 10.
expect build-mlp20 0 "$kiln" build "$src/models/mlp.yaml" --dim batch=20 -o mlp20
cuda mlp10 mlp
export KILN_CUDA_EMU_KERNELS=$PWD/mlp10-kernels.so
expect mlp-one 0 ./mlp20 train --steps 50 --threads 1 --save one.st --log one.csv --quiet
expect mlp-two 0 mpi 2 ./mlp10 train --steps 50 --save two.st --log two.csv --quiet
has mlp-summary "$tmp/stdout" "2 ranks, gradients averaged by NCCL"
# As on the CPU (distributed.sh): the two runs differ only in the order of the
# batch's sums, float32 rounding of about 1e-7 per step over 50 steps.
close mlp-weights one.st two.st 1e-5
losses mlp-losses one.csv two.csv 1e-5
# The graph replays the launches and the sums in the order they were captured, the
# eager path runs them in the same order: the same bits.
KILN_CUDA_GRAPHS=0 expect mlp-eager 0 mpi 2 ./mlp10 train --steps 50 --save eager.st --quiet
same mlp-graph-bits two.st eager.st

# Each rank needs a GPU of its own.
KILN_CUDA_EMU_DEVICES=1 expect one-device 1 mpi 2 ./mlp10 train --steps 2 --quiet
has one-device-msg "$tmp/stderr" "rank 1 of 2: this rank is process 2 on its machine, which has 1 CUDA device: start one rank per GPU"
KILN_CUDA_DEVICE=0 expect same-device 1 mpi 2 ./mlp10 train --steps 2 --quiet
has same-device-nccl "$tmp/stderr" "Duplicate GPU detected"
has same-device-msg "$tmp/stderr" "ncclCommInitRank failed: invalid usage"
expect shard 1 mpi 2 ./mlp10 train --steps 2 --quiet --shard-optimizer
has shard-msg "$tmp/stderr" "--shard-optimizer is for CPU programs: model 'mlp' is built for CUDA"
KILN_NCCL=/nonexistent/libnccl.so.2 expect no-nccl 1 mpi 2 ./mlp10 train --steps 2 --quiet
has no-nccl-msg "$tmp/stderr" "training a CUDA program on several ranks needs NCCL"
KILN_FAKE_NCCL_VERSION=20903 expect old-nccl 1 mpi 2 ./mlp10 train --steps 2 --quiet
has old-nccl-msg "$tmp/stderr" "is NCCL 2.9.3; averaging gradients needs NCCL 2.10 or newer"
# NCCL reports a failed peer through the communicator, after the step was
# enqueued: the rank that sees it stops the job and says why.
KILN_FAKE_NCCL_ERROR_RANK=1 expect nccl-error 1 mpi 2 ./mlp10 train --steps 5 --quiet
has nccl-error-msg "$tmp/stderr" "rank 1 of 2: ncclAllReduce failed: remote process exited or there was a network error"
# The real NCCL, where the toolkit has it: every entry point nccl.c looks up
# resolves, its version passes, and rank 0's id reaches every rank; joining them
# (ncclCommInitRank) then fails on the emulated devices with NCCL's own message.
if [ -n "${REAL_NCCL:-}" ] && [ -f "$REAL_NCCL" ]; then
  KILN_NCCL=$REAL_NCCL expect real-nccl 1 mpi 2 ./mlp10 train --steps 2 --quiet
  has real-nccl-msg "$tmp/stderr" "ncclCommInitRank failed: "
else
  echo "note: no libnccl.so.2 in the CUDA toolkit: the real NCCL's entry points are not checked"
fi
# One process needs neither MPI nor NCCL.
KILN_NCCL=/nonexistent/libnccl.so.2 expect alone 0 ./mlp10 train --steps 2 --quiet

# A small GPT with AdamW and gradient clipping: the clip reads the averaged
# gradients, so it must come after the join.
dim() { echo "--dim ctx=16 --dim d=32 --dim heads=2 --dim batch=$1"; }
expect build-gpt4one 0 "$kiln" build "$src/models/gpt.yaml" $(dim 4) -o gpt4one
cuda gpt2 gpt $(dim 2)
export KILN_CUDA_EMU_KERNELS=$PWD/gpt2-kernels.so
expect gpt-one 0 ./gpt4one train --steps 12 --threads 1 --data "$text" --save g1.st --log g1.csv --quiet
expect gpt-two 0 mpi 2 ./gpt2 train --steps 12 --data "$text" --save g2.st --log g2.csv --quiet
# The tolerance of distributed.sh, for the same reason: Adam turns the rounding
# noise of a gradient that should be zero (attention's key bias) into steps of up
# to lr; every other weight agrees to about 1e-6.
close gpt-weights g1.st g2.st 1.2e-4
losses gpt-losses g1.csv g2.csv 1e-5
# Stop after 5 steps, resume to 12: the uninterrupted run's checkpoint, to the byte.
expect gpt-stop 0 mpi 2 ./gpt2 train --steps 12 --stop-after 5 --data "$text" --save r2.st --quiet
has gpt-stop-line "$tmp/stdout" "stopped after 5 steps"
expect gpt-resume 0 mpi 2 ./gpt2 train --resume r2.st --data "$text" --quiet
same gpt-resume-bits g2.st r2.st
finish cuda_distributed
