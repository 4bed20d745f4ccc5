#!/usr/bin/env bash
# generate end to end, on the bundled GPT and LSTM at small dims, briefly trained
# on their corpus (so the greedy choices are clear rather than near-ties):
#   - greedy decoding with the key/value caches (LSTM: carried state) gives the
#     same text as recomputing the whole context for every token, while the text
#     fits in the context;
#   - past the context, the caches restart and generation goes on;
#   - sampling is deterministic per seed, top-k 1 is greedy, and the library's
#     NAME_generate gives the program's text;
#   - bad prompts, bad options and models that are no language model are errors.
# Usage: generate.sh PATH/TO/kiln SOURCE_DIR [EXTRA_LINK_FLAG]
set -u
kiln=$1
src=$2
extra=${3:-}
. "$(dirname "$0")/harness.sh"
cd "$tmp"

gpt_dims=(--dim batch=8 --dim ctx=32 --dim d=64 --dim heads=2)
expect gpt-build 0 "$kiln" build "$src/models/gpt.yaml" "${gpt_dims[@]}" -o gpt
expect gpt-train 0 ./gpt train --steps 60 --save gpt.safetensors --quiet
prompt="This License"
# 12 + 20 = 32 tokens: the whole text fits in the context of 32.
expect gpt-cache 0 ./gpt generate --weights gpt.safetensors --prompt "$prompt" --tokens 20 --temperature 0
cp "$tmp/stdout" gpt-cache.txt
has gpt-cache-timing "$tmp/stderr" "cached state"
expect gpt-nocache 0 ./gpt generate --weights gpt.safetensors --prompt "$prompt" --tokens 20 --temperature 0 --no-cache
same gpt-cache-vs-recompute gpt-cache.txt "$tmp/stdout"
check gpt-prompt-first grep -q "^$prompt" gpt-cache.txt
# 12 + 100 tokens: the caches fill and restart twice; every token still comes out.
expect gpt-long 0 ./gpt generate --weights gpt.safetensors --prompt "$prompt" --tokens 100 --temperature 0
check gpt-long-length test "$(head -c -1 "$tmp/stdout" | wc -c)" -eq 112
# Sampling: the same seed gives the same text; top-k 1 is greedy.
expect sample-a 0 ./gpt generate --weights gpt.safetensors --prompt "$prompt" --tokens 40 --seed 5
cp "$tmp/stdout" sample-a.txt
expect sample-b 0 ./gpt generate --weights gpt.safetensors --prompt "$prompt" --tokens 40 --seed 5
same sample-deterministic sample-a.txt "$tmp/stdout"
expect sample-c 0 ./gpt generate --weights gpt.safetensors --prompt "$prompt" --tokens 40 --seed 6
check sample-seed-matters bash -c "! cmp -s sample-a.txt '$tmp/stdout'"
expect topk1 0 ./gpt generate --weights gpt.safetensors --prompt "$prompt" --tokens 20 --top-k 1 --seed 9
same topk1-is-greedy gpt-cache.txt "$tmp/stdout"

# The library: NAME_generate with the program's weights gives the program's text.
expect gpt-lib 0 "$kiln" build "$src/models/gpt.yaml" "${gpt_dims[@]}" --emit=lib -o lib/gpt
has gpt-header lib/gpt.h "int gpt_generate(gpt_ctx *ctx, const char *prompt"
cat >gen.c <<'EOF'
#include <stdio.h>
#include "gpt.h"
int main(int argc, char **argv) {
  if (argc != 3) return 2;
  gpt_ctx *c = gpt_create(1);
  char out[64];
  gpt_sampling s = {20, 0.0, 0, 1};
  if (!c || gpt_load_weights(c, argv[1]) != 0) return 1;
  int n = gpt_generate(c, argv[2], &s, out, sizeof out);
  if (n < 0) return fprintf(stderr, "%s\n", gpt_last_error(c)), 1;
  printf("%s%s\n", argv[2], out);
  int bad = gpt_generate(c, "\x01", &s, out, sizeof out);
  fprintf(stderr, "%d %s\n", bad, gpt_last_error(c));
  if (gpt_save_weights(c, "plain.safetensors") != 0) return 1;  /* weights only, no vocabulary */
  gpt_destroy(c);
  return 0;
}
EOF
expect gpt-lib-cc 0 cc -Wall -Wextra -Werror -o gen gen.c $(PKG_CONFIG_PATH=lib pkg-config --cflags --libs gpt) $extra
expect gpt-lib-run 0 ./gen gpt.safetensors "$prompt"
same lib-vs-program gpt-cache.txt "$tmp/stdout"
has lib-bad-prompt "$tmp/stderr" "-1 the prompt's byte 0x01 at offset 0 is not in the model's vocabulary"

# The LSTM carries h and c: the same text as recomputing the window (seq 24).
lstm_dims=(--dim batch=8 --dim seq=24 --dim embed=32 --dim hidden=48)
expect lstm-build 0 "$kiln" build "$src/models/lstm.yaml" "${lstm_dims[@]}" -o lstm
expect lstm-train 0 ./lstm train --steps 60 --save lstm.safetensors --quiet
expect lstm-cache 0 ./lstm generate --weights lstm.safetensors --prompt "the " --tokens 20 --temperature 0
cp "$tmp/stdout" lstm-cache.txt
expect lstm-nocache 0 ./lstm generate --weights lstm.safetensors --prompt "the " --tokens 20 --temperature 0 --no-cache
same lstm-cache-vs-recompute lstm-cache.txt "$tmp/stdout"
# Beyond seq the state simply carries on (no context limit).
expect lstm-long 0 ./lstm generate --weights lstm.safetensors --prompt "the " --tokens 100
check lstm-long-length test "$(head -c -1 "$tmp/stdout" | wc -c)" -eq 104

# Errors.
expect bad-char 1 ./gpt generate --weights gpt.safetensors --prompt "caf$(printf '\xc3\xa9')"
has bad-char-msg "$tmp/stderr" "the prompt's byte 0xc3 at offset 3 is not in the model's vocabulary"
expect empty-prompt 1 ./gpt generate --weights gpt.safetensors --prompt ""
has empty-prompt-msg "$tmp/stderr" "--prompt is empty"
expect bad-temp 2 ./gpt generate --temperature -1
has bad-temp-msg "$tmp/stderr" "--temperature takes a number >= 0"
expect bad-tokens 2 ./gpt generate --tokens many
expect bad-arg 2 ./gpt generate extra
expect help 0 ./gpt generate --help
has help-text "$tmp/stdout" "--no-cache"
expect mlp-build 0 "$kiln" build "$src/models/mlp.yaml" -o mlp
expect not-lm 1 ./mlp generate --prompt x
has not-lm-msg "$tmp/stderr" "cannot generate text: it is not a language model"
# Without weights the vocabulary comes from the model's training text; a model
# trained on token files has none to give.
sed 's|text: /usr/share/common-licenses|tokens: ids.bin|' "$src/models/gpt.yaml" >tok.yaml
expect tok-build 0 "$kiln" build tok.yaml "${gpt_dims[@]}" -o tok
expect tok-generate 1 ./tok generate --prompt x
has tok-generate-msg "$tmp/stderr" "no vocabulary: no weights were given and the model names no training text"
expect tok-weights 1 ./tok generate --weights plain.safetensors --prompt x
has tok-weights-msg "$tmp/stderr" "no vocabulary: the weights file holds none"
# A non-causal attention cannot decode: the model builds, without generation.
sed 's/causal: true/causal: false/' "$src/models/gpt.yaml" >bidi.yaml
expect bidi-build 0 "$kiln" build bidi.yaml "${gpt_dims[@]}" -o bidi
has bidi-warning "$tmp/stderr" "is built without text generation: "
has bidi-why "$tmp/stderr" "cannot decode one token at a time"
expect bidi-generate 1 ./bidi generate --prompt x
has bidi-generate-msg "$tmp/stderr" "cannot generate text: it is not a language model"

finish generate
