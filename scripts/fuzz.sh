#!/usr/bin/env bash
# Builds the libFuzzer harnesses (tests/fuzz/) with clang and runs each for a
# bounded time, one after another, seeded from the bundled models, tests/bad,
# tests/badbin and tests/fuzz/onnx. Findings land in BUILD/crashes/; a finding,
# once fixed, becomes a regression input under tests/fuzz/regress/HARNESS/, which
# every run replays first.
#
# Usage: scripts/fuzz.sh [-t SECONDS] [-b BUILD] [-s] [HARNESS...]
#   -t SECONDS  fuzzing time per harness (default 600)
#   -b BUILD    build and work folder (default build-fuzz)
#   -s          smoke test: fresh corpora, short runs (as CTest runs it)
#   HARNESS     yaml safetensors npy data checkpoint onnx (default: all)
# The compiler is clang-16 (else clang; KILN_FUZZ_CC overrides). Exits 77 (a skip
# to CTest) when no clang with libFuzzer is found, 1 on a finding.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
secs=600 build=build-fuzz smoke=0
while getopts "t:b:s" o; do
  case $o in
  t) secs=$OPTARG ;;
  b) build=$OPTARG ;;
  s) smoke=1 ;;
  *) sed -n '2,15p' "$0" >&2; exit 2 ;;
  esac
done
shift $((OPTIND - 1))
harnesses=("$@")
all=(yaml safetensors npy data checkpoint onnx)
[ ${#harnesses[@]} -gt 0 ] || harnesses=("${all[@]}")
for h in "${harnesses[@]}"; do
  [[ " ${all[*]} " == *" $h "* ]] || { echo "fuzz.sh: no harness '$h' (${all[*]})" >&2; exit 2; }
done
build=$(mkdir -p "$build" && cd "$build" && pwd)

cc=${KILN_FUZZ_CC:-$(command -v clang-16 || command -v clang || true)}
if [ -z "$cc" ] || ! echo 'int LLVMFuzzerTestOneInput(const char *d, unsigned long n) { return 0; }' |
    "$cc" -x c -fsanitize=fuzzer - -o "$build/probe" 2>/dev/null; then
  echo "SKIPPED: no clang with libFuzzer (-fsanitize=fuzzer); scripts/install-deps.sh installs clang-16" >&2
  exit 77
fi

opt=-O1
[ $smoke = 0 ] || opt=-O0  # quicker to build, for a second of fuzzing
cmake -S "$root/tests/fuzz" -B "$build" -DCMAKE_C_COMPILER="$cc" -DCMAKE_BUILD_TYPE= \
  -DKILN_FUZZ_OPT=$opt >/dev/null
cmake --build "$build" -j "$(nproc 2>/dev/null || echo 2)" --target "${harnesses[@]/#/fuzz_}" >/dev/null

# Seeds: the files each reader is meant to see, good and bad. The data harness
# takes a leading byte that picks the reader (fuzz_data.c): 0 CSV, 1 CSV fed to a
# model, 2 text, 3 tokens.
seed() {
  local h=$1 dir=$build/seeds/$1
  rm -rf "$dir" && mkdir -p "$dir"
  case $h in
  yaml) cp "$root"/models/*.yaml "$root"/tests/bad/*.yaml "$dir"/ ;;
  safetensors | checkpoint) cp "$root"/tests/badbin/*.safetensors "$dir"/ ;;
  npy) cp "$root"/tests/badbin/*.npy "$dir"/ ;;
  onnx) cp "$root"/tests/fuzz/onnx/*.onnx "$dir"/ ;;
  data)
    local f i=0
    for f in "$root"/models/*.csv "$root"/tests/badbin/*.csv; do
      { printf '\000'; head -c 4096 "$f"; } >"$dir/$i" && i=$((i + 1))
      { printf '\001'; head -c 4096 "$f"; } >"$dir/$i" && i=$((i + 1))
    done
    for f in "$root"/tests/badbin/*.txt; do
      { printf '\002'; cat "$f"; } >"$dir/$i" && i=$((i + 1))
      { printf '\006'; cat "$f"; } >"$dir/$i" && i=$((i + 1))
    done
    for f in "$root"/tests/badbin/*.bin; do { printf '\003'; cat "$f"; } >"$dir/$i" && i=$((i + 1)); done
    ;;
  esac
}

# -malloc_limit_mb: a single allocation over 256 MiB is a finding (inputs are at
# most a few KiB); -timeout: an input taking 10 s is a hang.
status=0
for h in "${harnesses[@]}"; do
  seed "$h"
  corpus=$build/corpus/$h
  [ $smoke = 0 ] || rm -rf "$corpus"
  mkdir -p "$corpus" "$build/crashes" "$build/logs"
  dirs=("$corpus" "$build/seeds/$h")
  [ -d "$root/tests/fuzz/regress/$h" ] && dirs+=("$root/tests/fuzz/regress/$h")
  log=$build/logs/$h.log
  echo "== fuzz_$h: ${secs}s"
  rc=0
  ASAN_OPTIONS=${ASAN_OPTIONS:-}:detect_leaks=1 "$build/fuzz_$h" -max_total_time="$secs" \
    -timeout=10 -rss_limit_mb=2048 -malloc_limit_mb=256 -print_final_stats=1 \
    -artifact_prefix="$build/crashes/$h-" "${dirs[@]}" >"$log" 2>&1 || rc=$?
  execs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log")
  cov=$(grep -o 'cov: [0-9]* ft: [0-9]*' "$log" | tail -1)
  units=$(find "$corpus" -type f | wc -l)
  echo "   executions ${execs:-?}, $cov, corpus $units files, exit $rc"
  if [ $rc != 0 ]; then
    status=1
    grep -E 'ERROR|SUMMARY|Test unit written|deadly signal|timeout' "$log" | head -20 >&2
  fi
done
exit $status
