#!/usr/bin/env bash
# The kiln command line as a user meets it: exit statuses, where output goes, and
# the options of `kiln check`. Usage: cli.sh PATH/TO/kiln SOURCE_DIR
set -u
kiln=$1
src=$2
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
pass=0
fail=0

# expect NAME STATUS COMMAND...: runs COMMAND, keeps stdout/stderr in $tmp/out, $tmp/err.
expect() {
  local name=$1 want=$2
  shift 2
  "$@" >"$tmp/out" 2>"$tmp/err"
  local got=$?
  if [ "$got" -eq "$want" ]; then pass=$((pass + 1)); else
    fail=$((fail + 1)); echo "FAIL $name: exit $got, expected $want"; cat "$tmp/err"; fi
}
# has NAME FILE TEXT: FILE contains TEXT.
has() {
  if grep -qF -- "$3" "$2"; then pass=$((pass + 1)); else
    fail=$((fail + 1)); echo "FAIL $1: '$3' not in $2:"; head -20 "$2"; fi
}

expect no-args 2 "$kiln"
expect help 0 "$kiln" --help
has help-lists-check "$tmp/out" "check"
expect version 0 "$kiln" --version
has version-text "$tmp/out" "kiln "
expect unknown-command 2 "$kiln" frobnicate
has unknown-command-msg "$tmp/err" "unknown command 'frobnicate'"
expect check-help 0 "$kiln" check --help
has check-help-dim "$tmp/out" "--dim NAME=VALUE"

# The seed MLP: 5*16 + 16 + 16*2 + 2 = 130 parameters.
expect mlp 0 "$kiln" check "$src/models/mlp.yaml"
has mlp-params "$tmp/out" "parameters: 130"
has mlp-logits "$tmp/out" "f32[10,2]"
expect mlp-batch1 0 "$kiln" check --dim batch=1 "$src/models/mlp.yaml"
has mlp-batch1-shape "$tmp/out" "f32[1,2]"
expect all-models 0 "$kiln" check -q "$src"/models/*.yaml
[ -s "$tmp/out" ] && { fail=$((fail + 1)); echo "FAIL quiet: printed output"; } || pass=$((pass + 1))

expect ir 0 "$kiln" check --print-ir "$src/models/mlp.yaml"
has ir-graph "$tmp/out" "graph mlp {"
expect dot 0 "$kiln" check --emit=dot -o "$tmp/mlp.dot" "$src/models/mlp.yaml"
has dot-digraph "$tmp/mlp.dot" 'digraph "mlp"'
expect print-after 0 "$kiln" check --print-ir-after=all "$src/models/mlp.yaml"
has print-after-text "$tmp/out" "; IR after shapes"

expect bad-emit 2 "$kiln" check --emit=wasm "$src/models/mlp.yaml"
expect bad-pass 2 "$kiln" check --print-ir-after=nosuch "$src/models/mlp.yaml"
has bad-pass-msg "$tmp/err" "no pass named 'nosuch'"
expect bad-dim-syntax 2 "$kiln" check --dim batch "$src/models/mlp.yaml"
expect bad-dim-zero 2 "$kiln" check --dim batch=0 "$src/models/mlp.yaml"
expect unknown-dim 1 "$kiln" check --dim nosuch=3 "$src/models/mlp.yaml"
has unknown-dim-msg "$tmp/err" "the model has no dim 'nosuch'"
expect missing-file 1 "$kiln" check "$tmp/none.yaml"
has missing-file-msg "$tmp/err" "none.yaml"
expect directory 1 "$kiln" check "$tmp"
expect no-model 2 "$kiln" check

printf 'kiln: 1\nname: m\ninputs: {x: {shape: [2, 3]}}\ngraph:\n  - dense: {unit: 4}\noutputs: [dense_0]\n' >"$tmp/bad.yaml"
expect bad-model 1 "$kiln" check "$tmp/bad.yaml"
has bad-model-loc "$tmp/err" "bad.yaml:5:13: error: unknown attribute 'unit' of 'dense'"
has bad-model-caret "$tmp/err" "|             ^"
has bad-model-hint "$tmp/err" "hint: did you mean 'units'?"
# One bad file among good ones: every file is checked, the status says one failed.
expect mixed 1 "$kiln" check -q "$src/models/mlp.yaml" "$tmp/bad.yaml"

echo "cli: $pass passed, $fail failed"
[ "$fail" -eq 0 ]
