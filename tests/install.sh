#!/usr/bin/env bash
# Installation end to end: `cmake --install` into a DESTDIR, then, from there
# alone, `kiln build` of a bundled model (the runtime found beside the installed
# binary), `pkg-config kiln`, and a separate CMake project that finds Kiln with
# find_package and links a model library compiled by kiln_add_model.
# Usage: install.sh BUILD_DIR SOURCE_DIR [LINK_FLAG]   (LINK_FLAG: sanitizer builds)
set -uo pipefail
build=$1
src=$2
link_flag=${3:-}
. "$src/tests/harness.sh"

root=$tmp/root
expect "cmake --install with DESTDIR" 0 env DESTDIR="$root" cmake --install "$build" --prefix /opt/kiln
prefix=$root/opt/kiln
kiln=$prefix/bin/kiln
check "the compiler is installed" test -x "$kiln"
check "the man page is installed" test -f "$prefix/share/man/man1/kiln.1"
check "bash completion is installed" test -f "$prefix/share/bash-completion/completions/kiln"
check "the runtime is installed" test -f "$prefix/lib/kiln/libkiln_runtime.a"
check "the bundled models are installed" test -f "$prefix/share/kiln/models/mlp.yaml"

# The build tree must not be what the installed kiln uses: hide it.
unset KILN_RUNTIME_DIR
expect "installed kiln builds a bundled model" 0 "$kiln" build "$prefix/share/kiln/models/mlp.yaml" -o "$tmp/mlp"
expect "the program runs" 0 "$tmp/mlp" --version
has "the program says which model and which kiln" "$tmp/stdout" "mlp (model) compiled by kiln"
# With MPI in the build, --mpi links the installed libkiln_mpi.a.
if [ -r "$build/libkiln_mpi.a" ]; then
  expect "installed kiln builds with --mpi" 0 "$kiln" build --mpi "$prefix/share/kiln/models/mlp.yaml" -o "$tmp/mlp-mpi"
  check "the --mpi program links MPI" grep -q libmpi <(ldd "$tmp/mlp-mpi")
fi
expect "kiln reports where the runtime is missing" 1 env KILN_RUNTIME_DIR="$tmp/none" "$kiln" build "$prefix/share/kiln/models/mlp.yaml" -o "$tmp/x"
has "the message names the folder" "$tmp/stderr" "$tmp/none/libkiln_runtime.a"

# pkg-config: the runtime, relocated with the tree (kiln.pc finds its prefix).
expect "pkg-config kiln" 0 env PKG_CONFIG_PATH="$prefix/lib/pkgconfig" pkg-config --cflags --libs kiln
has "pkg-config gives the installed include folder" "$tmp/stdout" "-I$prefix/lib/pkgconfig/../../include/kiln"

# A separate CMake project: find_package(Kiln) and kiln_add_model.
mkdir -p "$tmp/app"
cp "$src/models/mlp.yaml" "$src/models/mlp.csv" "$tmp/app/"
cat >"$tmp/app/CMakeLists.txt" <<'CMAKE'
cmake_minimum_required(VERSION 3.20)
project(app C)
find_package(Kiln 0.1 REQUIRED)
kiln_add_model(mlp ${CMAKE_CURRENT_SOURCE_DIR}/mlp.yaml OPTIONS --dim batch=1)
add_executable(app main.c)
target_link_libraries(app PRIVATE mlp)
CMAKE
cat >"$tmp/app/main.c" <<'C'
#include <stdio.h>
#include "mlp.h"
int main(void) {
  mlp_ctx *c = mlp_create(1);
  float x[MLP_X_SIZE] = {0.5f, -1, 2, 0, 1}, y[MLP_LOGITS_SIZE];
  if (!c || mlp_forward(c, x, y) != 0) return 1;
  printf("logits %d\n", MLP_LOGITS_SIZE);
  mlp_destroy(c);
  return 0;
}
C
expect "find_package(Kiln) configures" 0 cmake -S "$tmp/app" -B "$tmp/app/build" -DCMAKE_PREFIX_PATH="$prefix" \
  -DCMAKE_EXE_LINKER_FLAGS="$link_flag"
expect "the project builds its model and links it" 0 cmake --build "$tmp/app/build"
expect "the program runs" 0 "$tmp/app/build/app"
has "it computed the model's outputs" "$tmp/stdout" "logits 2"
finish install
