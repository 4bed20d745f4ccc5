#!/usr/bin/env bash
# kiln build --target=cuda on every bundled model, no GPU needed: NVRTC compiles
# every kernel for sm_80 and sm_90 (plus PTX), and ptxas's report of each kernel
# is checked. A kernel that spills registers to local memory fails the test unless
# tests/cuda-spills.allow names its op with a reason. Then the outputs: the program
# and the library depend on nothing of this machine's (no CUDA library, NVRTC,
# LLVM, libyaml or OpenBLAS), and the library's header shows no CUDA type.
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
for m in mlp digits lstm gpt; do
  expect "build-$m" 0 "$kiln" build --target=cuda "$src/models/$m.yaml" -o "$m" --kernel-stats="$m.stats" \
    --cuda-source="$m.cu"
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
done

# Compile errors name their place: a valid model's kernels compile, so a stand-in
# NVRTC (tests/fake-nvrtc, $FAKE_NVRTC) fails every compile with an error at the
# first kernel's line, or at a line of templates/reduce.cuh.
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
