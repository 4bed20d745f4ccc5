#!/usr/bin/env bash
# kiln build end to end: the standalone program's commands and errors, every
# --emit kind, and the embedded-library example (examples/embed) built against a
# generated library, agreeing with the program on the same weights.
# Usage: build.sh PATH/TO/kiln SOURCE_DIR [EXTRA_LINK_FLAG]
set -u
kiln=$1
src=$2
extra=${3:-}
. "$(dirname "$0")/harness.sh"
cd "$tmp"

cut -d, -f1-5 "$src/models/mlp.csv" >x.csv
head -23 x.csv >x23.csv  # not a multiple of the batch (10): the last call is padded

expect build 0 "$kiln" build "$src/models/mlp.yaml" -o mlp
expect help 0 ./mlp --help
has help-cmds "$tmp/stdout" "infer"
expect version 0 ./mlp --version
has version-kiln "$tmp/stdout" "compiled by kiln"
expect info 0 ./mlp info
has info-params "$tmp/stdout" "parameters:  130 in 4 tensors"
has info-input "$tmp/stdout" "x            f32[10,5]"
has info-memory "$tmp/stdout" "activations"
expect infer 0 ./mlp infer --input x23.csv
[ "$(wc -l <"$tmp/stdout")" -eq 23 ] && pass=$((pass + 1)) || { fail=$((fail + 1)); echo "FAIL infer-rows: $(wc -l <"$tmp/stdout") lines"; }
cp "$tmp/stdout" seed-logits.csv
expect infer-argmax 0 ./mlp infer --input x23.csv --argmax
if awk -F, '$1 != 0 && $1 != 1 { bad = 1 } END { exit bad }' "$tmp/stdout"; then pass=$((pass + 1)); else
  fail=$((fail + 1)); echo "FAIL argmax: not class indices"; fi
expect infer-output 0 ./mlp infer --input x23.csv --output o.csv
same infer-output-file o.csv seed-logits.csv
# .npy output: [rows, outputs] f32, the same numbers as the CSV (printed to 9 digits).
expect infer-npy 0 ./mlp infer --input x23.csv --output o.npy
expect infer-npy-values 0 /usr/bin/python3 -c "
import numpy as np
a = np.load('o.npy'); b = np.loadtxt('seed-logits.csv', delimiter=',', dtype=np.float32)
assert a.shape == (23, 2) and a.dtype == np.float32, (a.shape, a.dtype)
assert np.array_equal(a, b), abs(a - b).max()"
expect infer-npy-argmax 0 ./mlp infer --input x23.csv --argmax --output c.npy
expect infer-npy-argmax-values 0 /usr/bin/python3 -c "
import numpy as np
c = np.load('c.npy'); b = np.loadtxt('seed-logits.csv', delimiter=',')
assert c.dtype == np.int32 and (c == b.argmax(axis=1)).all()"
# Row padding must not change a row's result: the first 10 rows alone agree.
head -10 x23.csv >x10.csv
expect infer-10 0 ./mlp infer --input x10.csv
head -10 seed-logits.csv >want10.csv
same infer-padding "$tmp/stdout" want10.csv
expect bench 0 ./mlp bench --runs 3 --warmup 1 --threads 1
has bench-median "$tmp/stdout" "forward: median"

# Errors: a clear message and a non-zero status.
expect no-input 2 ./mlp infer
expect missing-input 1 ./mlp infer --input nope.csv
has missing-input-msg "$tmp/stderr" "nope.csv"
printf '1,2,3\n' >narrow.csv
expect narrow 1 ./mlp infer --input narrow.csv
has narrow-msg "$tmp/stderr" "needs 5"
expect unknown-cmd 2 ./mlp frobnicate
expect bad-weights 1 ./mlp infer --weights x.csv --input x.csv
has bad-weights-msg "$tmp/stderr" "x.csv"

# Weights: the library saves, the program loads, both compute the same logits.
expect lib 0 "$kiln" build "$src/models/mlp.yaml" --emit=lib -o out/mlp
[ -f out/libmlp.a ] && [ -f out/mlp.h ] && [ -f out/mlp.pc ] && pass=$((pass + 1)) || { fail=$((fail + 1)); echo "FAIL lib files"; }
expect example-cc 0 cc -Wall -Wextra -Werror -o classify "$src/examples/embed/main.c" \
  $(PKG_CONFIG_PATH=out pkg-config --cflags --libs mlp) $extra
expect example-run 0 ./classify -s w.safetensors x23.csv
cut -d, -f1-2 "$tmp/stdout" >example-logits.csv
same example-vs-program example-logits.csv seed-logits.csv
expect load 0 ./mlp infer --weights w.safetensors --input x23.csv
same weights-round-trip "$tmp/stdout" seed-logits.csv
# A truncated weights file names what is wrong and where.
head -c 300 w.safetensors >short.safetensors
expect truncated 1 ./mlp infer --weights short.safetensors --input x.csv
has truncated-msg "$tmp/stderr" "short.safetensors"
# Another model's weights: every mismatching tensor is listed.
cat >other.yaml <<'YAML'
kiln: 1
name: other
inputs: {x: {shape: [10, 5]}}
graph:
  - dense: {units: 3, name: dense_0}
outputs: [dense_0]
YAML
expect other-lib 0 "$kiln" build other.yaml --emit=lib -o other/other
cat >save_other.c <<'C'
#include "other.h"
int main(int argc, char **argv) {
  other_ctx *c = other_create(1);
  int rc = argc == 2 && c && other_save_weights(c, argv[1]) == 0 ? 0 : 1;
  other_destroy(c);
  return rc;
}
C
expect other-cc 0 cc -o save_other save_other.c $(PKG_CONFIG_PATH=other pkg-config --cflags --libs other) $extra
expect other-save 0 ./save_other other.safetensors
expect wrong-model 1 ./mlp infer --weights other.safetensors --input x.csv
has wrong-shape "$tmp/stderr" "'dense_0.weight' is f32[5,3], the model has f32[5,16]"
has wrong-missing "$tmp/stderr" "missing 'logits.weight'"

# Other outputs and targets.
expect emit-obj 0 "$kiln" build "$src/models/mlp.yaml" --emit=obj -o m.o
has obj-elf m.o "ELF"
expect emit-asm 0 "$kiln" build "$src/models/mlp.yaml" --emit=asm -o m.s
has asm-forward m.s "kiln_forward"
expect emit-llvm 0 "$kiln" build "$src/models/mlp.yaml" --emit=llvm -o m.ll
has llvm-desc m.ll "@kiln_model_mlp"
expect cpu-v3 0 "$kiln" build "$src/models/mlp.yaml" --cpu=x86-64-v3 -o mlp-v3
expect cpu-v3-run 0 ./mlp-v3 infer --input x23.csv
same cpu-v3-same "$tmp/stdout" seed-logits.csv
expect bad-cpu 1 "$kiln" build "$src/models/mlp.yaml" --cpu=nosuchcpu -o bad
has bad-cpu-msg "$tmp/stderr" "unknown CPU 'nosuchcpu'"
expect bad-target 2 "$kiln" build "$src/models/mlp.yaml" --target=tpu
expect bad-model 1 "$kiln" build "$src/tests/bad/dense-no-units.yaml" -o bad
[ -e bad ] && { fail=$((fail + 1)); echo "FAIL bad-model left an output"; } || pass=$((pass + 1))
expect batch1 0 "$kiln" build "$src/models/mlp.yaml" --dim batch=1 -o mlp1
expect batch1-run 0 ./mlp1 infer --input x23.csv
# One row at a time gives the same logits as ten (to the last printed digit).
same batch1-same "$tmp/stdout" seed-logits.csv

finish build
