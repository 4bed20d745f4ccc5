#!/usr/bin/env bash
# kiln build --target=cuda on every bundled model, no GPU needed: NVRTC compiles
# every kernel for sm_80 and sm_90 (plus PTX), and ptxas's report of each kernel
# is checked. A kernel that spills registers to local memory fails the test unless
# tests/cuda-spills.allow names its op with a reason; the same with
# --gpu-matmul=bf16 (tensor-core matmuls), whose matmul kernels' report is
# printed, and its refusal below sm_80. Then the outputs: the program and the
# library depend on nothing of this machine's (no CUDA library, NVRTC, LLVM,
# libyaml or OpenBLAS), and the library's header shows no CUDA type.
# Usage: cuda_build.sh PATH/TO/kiln SOURCE_DIR [EXTRA_LINK_FLAG]
set -u
kiln=$1
src=$2
extra=${3:-}
. "$(dirname "$0")/harness.sh"
cd "$tmp"

if "$kiln" build --target=cuda "$src/models/mlp.yaml" -o probe 2>&1 | grep -q 'without the CUDA toolkit'; then
  echo "cuda_build: SKIPPED: this kiln was built without the CUDA toolkit"
  exit 77
fi

allow="$src/tests/cuda-spills.allow"
# Each model twice: f32 matmuls, then bf16 tensor cores (--gpu-matmul=bf16); the
# bf16 program's stats are in $m-bf16.stats, its matmul kernels printed below. The
# bf16 builds keep their own kernel cache: the cache checks below expect the f32
# builds' entries alone.
f32_cache=$KILN_CACHE_DIR
for mm in f32 bf16; do
[ "$mm" = bf16 ] && export KILN_CACHE_DIR=$PWD/bf16-cache
for m in mlp digits lstm gpt; do
  out=$m
  [ "$mm" = bf16 ] && out=$m-bf16
  expect "build-$out" 0 "$kiln" build --target=cuda --gpu-matmul="$mm" "$src/models/$m.yaml" -o "$out" \
    --kernel-stats="$out.stats" --cuda-source="$out.cu"
  m=$out
  # Every kernel in the source has a report for both architectures.
  nk=$(grep -c '^extern "C" __global__' "$m.cu")
  for a in 80 90; do
    got=$(awk -v a="sm_$a" '$2 == a' "$m.stats" | wc -l)
    check "stats-$m-sm_$a ($got of $nk kernels)" [ "$got" -eq "$nk" ]
  done
  # Columns: kernel arch regs spill reload stack smem op node.
  while read -r k arch regs spill reload stack smem op node; do
    [ "$k" = kernel ] && continue
    if [ "$spill" -ne 0 ] || [ "$reload" -ne 0 ]; then
      if grep -q "^$op " "$allow" 2>/dev/null; then pass=$((pass + 1)); else
        fail=$((fail + 1)); echo "FAIL spill-$m: $k ($op $node) on $arch spills $spill bytes, reloads $reload"; fi
    fi
    check "regs-$m-$k-$arch" [ "$regs" -le 255 ]
    check "smem-$m-$k-$arch" [ "$smem" -le 49152 ]
  done <"$m.stats"
  check "no-host-deps-$m" sh -c "! ldd ./$m | grep -E 'libcuda|nvrtc|cudart|LLVM|yaml|openblas'"
  if [ "$mm" = bf16 ]; then
    check "bf16-mma-$m" grep -q 'kiln_mma_tile<[0-9]' "$m.cu"
    check "bf16-no-f32-tile-$m" sh -c "! grep -q 'kiln_mm_tile<[0-9]' $m.cu"
    # The matmul kernels' report: the kernels whose body calls kiln_mma_tile.
    awk 'NR == FNR { if (/__global__/) { k = $0; sub(/\(KilnArgs.*/, "", k); sub(/.* /, "", k) }
                     if (/kiln_mma_tile<[0-9]/) mma[k] = 1; next }
         FNR == 1 || ($1 in mma) { print "  " $0 }' "$m.cu" "$m.stats"
  fi
done
done
# The bundled models' matmuls are too small for the 128 x 128 tensor-core tile
# (64 accumulators a thread); the GPT at batch 64 takes it, and must not spill.
expect build-gpt64-bf16 0 "$kiln" build --target=cuda --gpu-matmul=bf16 --dim batch=64 "$src/models/gpt.yaml" \
  -o gpt64-bf16 --kernel-stats=gpt64-bf16.stats --cuda-source=gpt64-bf16.cu
check bf16-tile128-used grep -q 'kiln_mma_tile<128, 128,' gpt64-bf16.cu
check bf16-gpt64-no-spills awk 'NR > 1 && ($4 != 0 || $5 != 0) { bad = 1; print "  spills: " $0 } END { exit bad }' \
  gpt64-bf16.stats
export KILN_CACHE_DIR=$f32_cache
# The bf16 mma needs sm_80: an older architecture is refused with the reason.
expect bf16-sm75 1 "$kiln" build --target=cuda --gpu-matmul=bf16 --gpu-arch=sm_75,sm_90 "$src/models/mlp.yaml" \
  -o bad
has bf16-sm75-msg "$tmp/stderr" "--gpu-matmul=bf16 needs sm_80 or newer (bf16 tensor cores), but --gpu-arch has sm_75"
check bf16-sm75-no-output [ ! -e bad ]
# The prelude's tensor-core functions are inline PTX for sm_80: f32 kernels, which
# never call them, still build for sm_75.
expect f32-sm75 0 "$kiln" build --target=cuda --gpu-arch=sm_75 "$src/models/mlp.yaml" -o mlp75
expect bf16-bad-value 2 "$kiln" build --target=cuda --gpu-matmul=fp16 "$src/models/mlp.yaml" -o bad
has bf16-bad-value-msg "$tmp/stderr" "--gpu-matmul expects f32 or bf16, got 'fp16'"
expect bf16-cuda-only 2 "$kiln" build --gpu-matmul=bf16 "$src/models/mlp.yaml" -o bad
has bf16-cuda-only-msg "$tmp/stderr" "go with --target=cuda"

# The kernel cache (KILN_CACHE_DIR, harness.sh: this test's own), here a fresh
# folder that holds only the MLP's f32 entries (the builds above also left the
# bf16 MLP's, whose source names the same file): the first build fills it, the
# same build again takes every architecture from it and gives the same program,
# byte for byte.
export KILN_CACHE_DIR=$PWD/cache-mlp
cache=$KILN_CACHE_DIR/nvrtc
expect cache-fill 0 "$kiln" build --target=cuda "$src/models/mlp.yaml" -o mlp1 --time-passes
has cache-fill-line "$tmp/stderr" "0 of 2 architectures from the kernel cache $cache"
check cache-fill-entries [ "$(find "$cache" -name '*.nvc' | wc -l)" -eq 2 ]
expect cache-hit 0 "$kiln" build --target=cuda "$src/models/mlp.yaml" -o mlp2 --kernel-stats=mlp2.stats --time-passes
has cache-hit-line "$tmp/stderr" "2 of 2 architectures from the kernel cache $cache"
same cache-same-program mlp mlp2
same cache-same-stats mlp.stats mlp2.stats
# A damaged entry is a miss: recompiled, rewritten, the same program.
entry=$(grep -l "mlp.cu" "$cache"/*.nvc | head -1)
printf 'XXXX' | dd of="$entry" bs=1 seek=2000 conv=notrunc status=none
expect cache-damaged 0 "$kiln" build --target=cuda "$src/models/mlp.yaml" -o mlp3 --time-passes
has cache-damaged-line "$tmp/stderr" "1 of 2 architectures from the kernel cache"
same cache-damaged-program mlp mlp3
truncate -s 100 "$entry"
expect cache-truncated 0 "$kiln" build --target=cuda "$src/models/mlp.yaml" -o mlp3 --time-passes
has cache-truncated-line "$tmp/stderr" "1 of 2 architectures from the kernel cache"
# Nothing of the folder kiln runs in reaches the cubins, not even a file named as
# the kernel source.
mkdir elsewhere
echo 'not the kernels' >elsewhere/mlp.cu
(cd elsewhere && KILN_CACHE=0 "$kiln" build --target=cuda "$src/models/mlp.yaml" -o ../mlp4)
same cache-any-folder mlp mlp4
# Off, and a folder that cannot be made: NVRTC compiles, the build succeeds.
KILN_CACHE=0 expect cache-off 0 "$kiln" build --target=cuda "$src/models/mlp.yaml" -o mlp3 --time-passes
has cache-off-line "$tmp/stderr" "0 of 2 architectures from the kernel cache (off)"
KILN_CACHE_DIR=/proc/kiln-cache expect cache-unwritable 0 "$kiln" build --target=cuda "$src/models/mlp.yaml" -o mlp3
same cache-unwritable-program mlp mlp3
# Past KILN_CACHE_MAX_MB the least recently used entries go: an old 2 MiB entry
# makes way for the new ones.
mkdir -p small/nvrtc
head -c 2097152 /dev/zero >small/nvrtc/0000000000000000.nvc
touch -d '2 days ago' small/nvrtc/0000000000000000.nvc
KILN_CACHE_DIR=$PWD/small KILN_CACHE_MAX_MB=1 expect cache-trim 0 "$kiln" build --target=cuda "$src/models/mlp.yaml" -o mlp3
check cache-trim-old [ ! -e small/nvrtc/0000000000000000.nvc ]
check cache-trim-new [ "$(find small/nvrtc -name '*.nvc' | wc -l)" -eq 2 ]
KILN_CACHE_MAX_MB=lots expect cache-max-bad 1 "$kiln" build --target=cuda "$src/models/mlp.yaml" -o bad
has cache-max-bad-msg "$tmp/stderr" "KILN_CACHE_MAX_MB=lots: expected a size in MiB, 1 or more"

# Compile errors name their place: a valid model's kernels compile, so a stand-in
# NVRTC (tests/fake-nvrtc, $FAKE_NVRTC) fails every compile with an error at the
# first kernel's line, or at a line of templates/reduce.cuh. The cache holds the
# real NVRTC's kernels of the same source by now: the stand-in's version differs,
# so none of them may stand in for its compile.
if [ -n "${FAKE_NVRTC:-}" ]; then
  KILN_NVRTC=$FAKE_NVRTC expect compile-error 1 "$kiln" build --target=cuda "$src/models/mlp.yaml" -o bad
  has compile-error-kernel "$tmp/stderr" "mlp.cu("
  has compile-error-node "$tmp/stderr" "(kernel kiln_k0 of sigmoid 'dense_0' at $src/models/mlp.yaml:11:5)"
  has compile-error-source "$tmp/stderr" '    extern "C" __global__ void __launch_bounds__'
  FAKE_NVRTC_AT=template KILN_NVRTC=$FAKE_NVRTC expect compile-error-tmpl 1 \
    "$kiln" build --target=cuda "$src/models/mlp.yaml" -o bad
  has compile-error-template "$tmp/stderr" "(templates/reduce.cuh:4)"
  check compile-error-no-output [ ! -e bad ]
else
  echo "cuda_build: the compile-error checks need FAKE_NVRTC (run through CTest)"
  fail=$((fail + 1))
fi
KILN_NVRTC=/nonexistent/libnvrtc.so expect no-nvrtc 1 "$kiln" build --target=cuda "$src/models/mlp.yaml" -o bad
has no-nvrtc-msg "$tmp/stderr" "--target=cuda needs NVRTC from the CUDA toolkit: /nonexistent/libnvrtc.so"
expect bad-arch 1 "$kiln" build --target=cuda --gpu-arch=sm_8x "$src/models/mlp.yaml" -o bad
has bad-arch-msg "$tmp/stderr" "'sm_8x' is not an architecture like sm_80"
expect cuda-only-flag 2 "$kiln" build --gpu-arch=sm_80 "$src/models/mlp.yaml" -o bad
has cuda-only-flag-msg "$tmp/stderr" "go with --target=cuda"
expect emit-cuda 0 "$kiln" build --target=cuda --emit=cuda "$src/models/mlp.yaml" -o only.cu
same emit-cuda-same only.cu mlp.cu

# The library: same header API as the CPU's, no CUDA types in it.
expect lib 0 "$kiln" build --target=cuda --emit=lib "$src/models/mlp.yaml" -o lib/mlp
check lib-header-plain sh -c "! grep -E 'CU[a-z]+|cuda' lib/mlp.h"
check lib-pc-no-blas sh -c "! grep -q openblas lib/mlp.pc"
cat >use.c <<'C'
#include "mlp.h"
int main(void) { mlp_ctx *c = mlp_create(1); return c ? 0 : 1; }
C
# shellcheck disable=SC2086  # the flags split on purpose
expect lib-links 0 cc -o use use.c -Ilib $(PKG_CONFIG_PATH=lib pkg-config --libs mlp) $extra
finish cuda_build
