#!/usr/bin/env bash
# The kiln command line as a user meets it: exit statuses, where output goes, and
# the options of `kiln check`. Usage: cli.sh PATH/TO/kiln SOURCE_DIR
set -u
kiln=$1
src=$2
. "$(dirname "$0")/harness.sh"

expect no-args 2 "$kiln"
expect help 0 "$kiln" --help
has help-lists-check "$tmp/stdout" "check"
expect version 0 "$kiln" --version
has version-text "$tmp/stdout" "kiln "
expect unknown-command 2 "$kiln" frobnicate
has unknown-command-msg "$tmp/stderr" "unknown command 'frobnicate'"
expect check-help 0 "$kiln" check --help
has check-help-dim "$tmp/stdout" "--dim NAME=VALUE"

# The seed MLP: 5*16 + 16 + 16*2 + 2 = 130 parameters.
expect mlp 0 "$kiln" check "$src/models/mlp.yaml"
has mlp-params "$tmp/stdout" "parameters: 130"
has mlp-logits "$tmp/stdout" "f32[10,2]"
expect mlp-batch1 0 "$kiln" check --dim batch=1 "$src/models/mlp.yaml"
has mlp-batch1-shape "$tmp/stdout" "f32[1,2]"
expect all-models 0 "$kiln" check -q "$src"/models/*.yaml
[ -s "$tmp/stdout" ] && { fail=$((fail + 1)); echo "FAIL quiet: printed output"; } || pass=$((pass + 1))

expect ir 0 "$kiln" check --print-ir "$src/models/mlp.yaml"
has ir-graph "$tmp/stdout" "graph mlp {"
expect dot 0 "$kiln" check --emit=dot -o "$tmp/mlp.dot" "$src/models/mlp.yaml"
has dot-digraph "$tmp/mlp.dot" 'digraph "mlp"'
expect print-after 0 "$kiln" check --print-ir-after=all "$src/models/mlp.yaml"
has print-after-text "$tmp/stdout" "; IR after shapes"

expect bad-emit 2 "$kiln" check --emit=wasm "$src/models/mlp.yaml"
expect bad-pass 2 "$kiln" check --print-ir-after=nosuch "$src/models/mlp.yaml"
has bad-pass-msg "$tmp/stderr" "no pass named 'nosuch'"
expect bad-dim-syntax 2 "$kiln" check --dim batch "$src/models/mlp.yaml"
expect bad-dim-zero 2 "$kiln" check --dim batch=0 "$src/models/mlp.yaml"
expect unknown-dim 1 "$kiln" check --dim nosuch=3 "$src/models/mlp.yaml"
has unknown-dim-msg "$tmp/stderr" "the model has no dim 'nosuch'"
expect missing-file 1 "$kiln" check "$tmp/none.yaml"
has missing-file-msg "$tmp/stderr" "none.yaml"
expect directory 1 "$kiln" check "$tmp"
expect no-model 2 "$kiln" check

printf 'kiln: 1\nname: m\ninputs: {x: {shape: [2, 3]}}\ngraph:\n  - dense: {unit: 4}\noutputs: [dense_0]\n' >"$tmp/bad.yaml"
expect bad-model 1 "$kiln" check "$tmp/bad.yaml"
has bad-model-loc "$tmp/stderr" "bad.yaml:5:13: error: unknown attribute 'unit' of 'dense'"
has bad-model-caret "$tmp/stderr" "|             ^"
has bad-model-hint "$tmp/stderr" "hint: did you mean 'units'?"
# One bad file among good ones: every file is checked, the status says one failed.
expect mixed 1 "$kiln" check -q "$src/models/mlp.yaml" "$tmp/bad.yaml"

# kiln import on the fuzz seeds (tests/fuzz/onnx, gen.py) and on the inputs the
# fuzzer found (tests/fuzz/regress/onnx): good models import and check; each bad
# one is an error naming what is wrong.
onnx=$src/tests/fuzz/onnx
bad=$src/tests/fuzz/regress/onnx
for m in mlp embed elementwise; do
  expect "import-$m" 0 "$kiln" import "$onnx/$m.onnx" -o "$tmp/$m.yaml" --dim batch=2
  expect "import-$m-check" 0 "$kiln" check -q "$tmp/$m.yaml"
done
expect import-refused 1 "$kiln" import "$onnx/refused.onnx" -o "$tmp/r.yaml"
has import-refused-msg "$tmp/stderr" "Erf (node '')"
while IFS='|' read -r file msg; do
  expect "import-$file" 1 "$kiln" import "$bad/$file" -o "$tmp/b.yaml" --dim batch=2
  has "import-$file-msg" "$tmp/stderr" "$msg"
done <<'EOF'
245b68725b77|cannot reshape 't' to the shape given
2605a195ae3c|epsilon -2682.76 is not between 0 and 1
3f263f0d506d|output 'y' is listed twice
4c9e8fe34753|node 'r' (Relu) has no output
54a585f73acb|the graph has no outputs
6db8bf0f63d1|axis -28710447624486913 is out of range for 'z' (rank 2)
805a0c7202ea|perm is not a permutation of 2 axes
d55ef4a26dbb|node 'z' (Add) has no output
EOF
# A producer name with control characters: they become '?' in the comment, and
# the model file still reads.
expect import-control-chars 0 "$kiln" import "$bad/2f6a6d8fb9ff" -o "$tmp/c.yaml" --dim batch=2
expect import-control-chars-check 0 "$kiln" check -q "$tmp/c.yaml"
has import-control-chars-comment "$tmp/c.yaml" "(made by ????batch???? , ONNX opset 13)"
finish cli
