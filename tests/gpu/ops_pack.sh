#!/usr/bin/env bash
# The GPU check `ops` (tests/gpu/run.sh) without a GPU: test_cpu_ops packs a few
# op cases as it packs all of them for a GPU, plus their kernels built for the
# emulator (--emu), and ops_check runs them under tests/cuda-emu as it runs the
# pack on a GPU. The cases must pass on a device that loads the sm_90 cubin, one
# that loads the sm_80 cubin and one newer than both (the PTX); a case whose
# expected value was corrupted must fail, alone; no driver and no device are
# SKIPPED (77). ops_check and the packed models must need nothing that a GPU
# machine without Kiln's build dependencies lacks.
# Usage: ops_pack.sh TEST_CPU_OPS OPS_CHECK DRIVER
set -u
test_cpu_ops=$1
ops_check=$2
driver=$3
. "$(dirname "$0")/../harness.sh"

if [ ! -f "$driver" ]; then
  echo "cuda_ops_pack: SKIPPED: the CUDA emulator was not built (it needs the CUDA toolkit and a C++ compiler)"
  exit 77
fi
# An elementwise op, a row reduction, a loss, gradients with row statistics and
# with scattered accumulation: 16 cases.
ops=gelu,softmax,cross_entropy,layernorm_dx,embedding_grad
"$test_cpu_ops" pack "$tmp/pack" --emu --only $ops >"$tmp/pack.log" 2>&1
r=$?
if [ $r -eq 77 ]; then
  echo "cuda_ops_pack: SKIPPED: $(tail -1 "$tmp/pack.log")"
  exit 77
fi
check pack-built [ $r -eq 0 ]
[ $r -eq 0 ] || tail -20 "$tmp/pack.log"
n=$(grep -c '^case ' "$tmp/pack/index")
check pack-cases [ "$n" -eq 16 ]

export KILN_CUDA_DRIVER=$driver KILN_CUDA_EMU_VERBOSE=1
# run CC IMAGE: every case passes on a device of compute capability CC, which
# loads IMAGE.
run() {
  KILN_CUDA_EMU_CC=$1 expect "pass-cc$1" 0 "$ops_check" "$tmp/pack"
  check "pass-cc$1-count" [ "$(grep -c '^PASS ' "$tmp/stdout")" -eq "$n" ]
  has "image-cc$1" "$tmp/stderr" "$2"
}
run 90 "loaded a cubin for sm_90"
run 80 "loaded a cubin for sm_80"
run 100 "JIT-compiled PTX for compute_90"
unset KILN_CUDA_EMU_VERBOSE
cp "$tmp/stdout" "$tmp/passed.txt"

# One expected value off by far more than any tolerance: the last 8 bytes of
# case 003's data are its last output element, now 1e30 (little-endian f64).
cp -r "$tmp/pack" "$tmp/bad"
printf '\xea\x8c\xa0\x39\x59\x3e\x29\x46' |
  dd of="$tmp/bad/003.bin" bs=1 seek=$(($(stat -c %s "$tmp/bad/003.bin") - 8)) conv=notrunc status=none
expect corrupted 1 "$ops_check" "$tmp/bad"
check corrupted-fails-alone [ "$(grep -c '^FAIL ' "$tmp/stdout")" -eq 1 ]
has corrupted-case "$tmp/stdout" "FAIL 003 "
has corrupted-value "$tmp/stdout" "want 1e+30"
has corrupted-summary "$tmp/stdout" "ops: $((n - 1)) passed, 1 failed"

# Selecting cases; no driver; no device.
expect select 0 "$ops_check" "$tmp/pack" 001 004
check select-count [ "$(grep -c '^PASS ' "$tmp/stdout")" -eq 2 ]
KILN_CUDA_DRIVER=$tmp/no/libcuda.so.1 expect no-driver 77 "$ops_check" "$tmp/pack"
has no-driver-msg "$tmp/stdout" "SKIPPED ops: no CUDA driver"
KILN_CUDA_EMU_DEVICES=0 expect no-device 77 "$ops_check" "$tmp/pack"
has no-device-msg "$tmp/stdout" "SKIPPED ops: no CUDA device"
expect no-pack 2 "$ops_check" "$tmp/no-such-pack"
mkdir "$tmp/v2" && echo "kiln-ops-pack 2" >"$tmp/v2/index"
expect other-version 2 "$ops_check" "$tmp/v2"

# What the GPU machine must provide: the C library's libraries and libjansson
# (which run.sh carries in lib/); the packed models need only the C library. A
# sanitized build's runner also needs the sanitizers' runtimes (and what they
# pull in); run.sh carries the normal build's.
extra_libs() {
  local ok='linux-vdso|ld-linux|^lib(c|m|dl|pthread|rt|jansson)\.so'
  ldd "$1" | grep -q libasan && ok="$ok|^lib(asan|ubsan|gcc_s|stdc\+\+)\.so"
  ldd "$1" | awk '{print $1}' | grep -vE "$ok"
}
check runner-deps [ -z "$(extra_libs "$ops_check")" ]
for so in "$tmp"/pack/[0-9][0-9][0-9].so; do
  if readelf -d "$so" | sed -n 's/.*(NEEDED).*\[\(.*\)\]/\1/p' | grep -vqE '^lib(c|m)\.so'; then
    fail=$((fail + 1)); echo "FAIL model-deps: $so needs $(readelf -d "$so" | grep NEEDED)"
  fi
done
head -3 "$tmp/passed.txt"
finish cuda_ops_pack
