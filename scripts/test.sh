#!/usr/bin/env bash
# Builds Kiln twice — a normal build and an AddressSanitizer/UndefinedBehavior-
# Sanitizer build — and runs the whole test suite (cmocka under CTest) on each.
# Usage: scripts/test.sh [BUILD_DIR_PREFIX]   (default: build)
set -euo pipefail
cd "$(dirname "$0")/.."
prefix=${1:-build}
jobs=$(nproc 2>/dev/null || echo 2)

run_suite() {
  local dir=$1
  shift
  echo "== $dir: configure and build"
  cmake -S . -B "$dir" -DKILN_WERROR=ON "$@" >/dev/null
  cmake --build "$dir" -j "$jobs"
  echo "== $dir: tests"
  ctest --test-dir "$dir" --output-on-failure -j "$jobs"
}

run_suite "$prefix" -DCMAKE_BUILD_TYPE=RelWithDebInfo
# Leaks are errors too; the front end frees everything it allocates.
ASAN_OPTIONS=detect_leaks=1:abort_on_error=1 UBSAN_OPTIONS=print_stacktrace=1 \
  run_suite "$prefix-asan" -DCMAKE_BUILD_TYPE=Debug -DKILN_SANITIZE=ON
echo "== all test suites passed"
