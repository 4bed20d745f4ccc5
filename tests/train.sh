#!/usr/bin/env bash
# `NAME train` and `NAME eval` end to end on the seed MLP: it trains to 95%
# accuracy (and the digits classifier to 95% on held-out data); 20 steps in one
# run equal 10 + checkpoint + a new process + 10, to the byte of the checkpoint
# and the logged losses, after --stop-after and after
# SIGINT; a second trainer on the same checkpoint is refused; SIGKILL at many
# points of checkpoint writing leaves the old or the new checkpoint whole; bad
# data stops with its file and line. The library's train_step trains too, and
# its state file continues to the same step.
# Usage: train.sh PATH/TO/kiln SOURCE_DIR [EXTRA_LINK_FLAG]
set -u
kiln=$1
src=$2
extra=${3:-}
. "$(dirname "$0")/harness.sh"
cd "$tmp"

# The log without samples_per_s (a timing).
values() { cut -d, -f1-5,7- "$1"; }

expect build 0 "$kiln" build "$src/models/mlp.yaml" -o mlp
expect info 0 ./mlp info
has info-training "$tmp/stdout" "training:    sgd, lr 0.5"

# Trains to at least 95% on its own data (the model file's 200 epochs).
expect train 0 ./mlp train --save mlp.safetensors --log log.csv --threads 1
has train-start "$tmp/stdout" "training mlp on $src/models/mlp.csv: 100 samples"
has train-summary "$tmp/stdout" "done: 2000 steps"
[ "$(wc -l <log.csv)" -eq 2001 ] && pass=$((pass + 1)) || { fail=$((fail + 1)); echo "FAIL log rows"; }
expect eval 0 ./mlp eval --weights mlp.safetensors --data "$src/models/mlp.csv"
has eval-loss "$tmp/stdout" "loss "
acc=$(awk '/^accuracy/ { print $2 }' "$tmp/stdout")
check "accuracy $acc >= 0.95" awk -v a="$acc" 'BEGIN { exit !(a >= 0.95) }'
# The digits classifier reaches at least 95% on its held-out 20% (val_split).
expect digits-build 0 "$kiln" build "$src/models/digits.yaml" -o digits
expect digits-train 0 ./digits train --save digits.safetensors --quiet
expect digits-eval 0 ./digits eval --weights digits.safetensors
has digits-held-out "$tmp/stdout" "the held-out validation split"
acc=$(awk '/^accuracy/ { print $2 }' "$tmp/stdout")
check "digits accuracy $acc >= 0.95" awk -v a="$acc" 'BEGIN { exit !(a >= 0.95) }'
# infer agrees: argmax against the labels.
cut -d, -f1-5 "$src/models/mlp.csv" >x.csv
cut -d, -f6 "$src/models/mlp.csv" >y.csv
expect infer 0 ./mlp infer --weights mlp.safetensors --input x.csv --argmax
right=$(paste -d, "$tmp/stdout" y.csv | awk -F, '$1 == $2' | wc -l)
check "infer right $right/100" [ "$right" -ge 95 ]

# Resume equals uninterrupted, to the byte.
expect a 0 ./mlp train --steps 20 --save a.st --log a.csv --threads 1 --quiet
expect b1 0 ./mlp train --steps 20 --stop-after 10 --save b.st --log b.csv --threads 1 --quiet
has b1-msg "$tmp/stdout" "stopped after 10 steps, at step 10 of 20"
expect b2 0 ./mlp train --steps 20 --resume b.st --log b.csv --threads 1 --quiet
same resume-checkpoint a.st b.st
values a.csv >a.v
values b.csv >b.v
same resume-log a.v b.v
# The checkpoint is a weights file too.
expect ckpt-as-weights 0 ./mlp eval --weights b.st --data "$src/models/mlp.csv"

# SIGINT: the step finishes, the checkpoint is written, the exit status is 130.
./mlp train --steps 100000000 --save i.st --log i.csv --threads 1 --quiet >/dev/null 2>int.err &
pid=$!
sleep 0.5
kill -INT $pid
wait $pid
status=$?
check "sigint status $status" [ "$status" -eq 130 ]
has sigint-msg int.err "checkpoint written to i.st (continue with --resume i.st)"
# Continued for 7 steps, it equals a run stopped at the same step (the same total
# length, so that any schedule gives the same rates).
n=$(sed -n 's/.*interrupted after step \([0-9]*\) .*/\1/p' int.err)
m=$((n + 7))
expect i-resume 0 ./mlp train --steps 100000000 --stop-after 7 --resume i.st --log i.csv --threads 1 --quiet
expect i-straight 0 ./mlp train --steps 100000000 --stop-after $m --save j.st --log j.csv --threads 1 --quiet
same sigint-checkpoint i.st j.st
values i.csv >i.v
values j.csv >j.v
same sigint-log i.v j.v

# One trainer per checkpoint.
./mlp train --steps 100000000 --save l.st --threads 1 --quiet >/dev/null 2>&1 &
pid=$!
sleep 0.3
expect locked 1 ./mlp train --steps 10 --save l.st
has locked-msg "$tmp/stderr" "l.st is in use by another trainer"
kill -INT $pid
wait $pid

# SIGKILL while checkpoints are written (one per step): every time, the file left
# behind is a whole checkpoint, and training resumes from it.
expect k0 0 ./mlp train --steps 5 --save k.st --threads 1 --quiet
for i in $(seq 1 30); do
  ./mlp train --steps 100000000 --resume k.st --checkpoint-every 1 --threads 1 --quiet >/dev/null 2>&1 &
  pid=$!
  sleep "0.0$((RANDOM % 9 + 1))"
  kill -KILL $pid
  wait $pid 2>/dev/null
  if ! ./mlp eval --weights k.st --data "$src/models/mlp.csv" >/dev/null 2>kill.err; then
    fail=$((fail + 1)); echo "FAIL kill $i: torn checkpoint"; cat kill.err; break
  fi
done
pass=$((pass + 1))
expect k-resume 0 ./mlp train --steps 100000000 --stop-after 3 --resume k.st --threads 1 --quiet

# The library: 100 epochs of train_step on a caller's batches, then its state
# file loads into a new context that takes the next step exactly as the first.
expect lib 0 "$kiln" build "$src/models/mlp.yaml" --emit=lib -o out/mlp
cat >libtrain.c <<'C'
#include <stdio.h>
#include "mlp.h"
int main(int argc, char **argv) {
  static float x[100][5], lg[20];
  static int32_t y[100];
  FILE *f = argc == 3 ? fopen(argv[1], "r") : NULL;
  for (int i = 0; f && i < 100; i++) {
    float l;
    if (fscanf(f, "%f,%f,%f,%f,%f,%f", &x[i][0], &x[i][1], &x[i][2], &x[i][3], &x[i][4], &l) != 6)
      return 1;
    y[i] = (int32_t)l;
  }
  mlp_ctx *c = mlp_create(1), *d = mlp_create(1);
  float loss, l1, l2;
  for (int s = 0; s < 1000; s++)
    if (mlp_train_step(c, x[s % 10 * 10], y + s % 10 * 10, &loss) != 0) return 2;
  if (mlp_save_state(c, argv[2]) != 0 || mlp_load_state(d, argv[2]) != 0) return 3;
  int right = 0;
  for (int b = 0; b < 10; b++) {
    mlp_forward(c, x[b * 10], lg);
    for (int r = 0; r < 10; r++) right += (lg[2 * r + 1] > lg[2 * r]) == y[b * 10 + r];
  }
  mlp_train_step(c, x[0], y, &l1);
  mlp_train_step(d, x[0], y, &l2);
  printf("right %d resumed %s\n", right, l1 == l2 ? "same" : "differs");
  mlp_destroy(c);
  mlp_destroy(d);
  fclose(f);
  return 0;
}
C
expect lib-cc 0 cc -Wall -Wextra -Werror -o libtrain libtrain.c \
  $(PKG_CONFIG_PATH=out pkg-config --cflags --libs mlp) $extra
expect lib-train 0 ./libtrain "$src/models/mlp.csv" lib.st
has lib-resumed "$tmp/stdout" "resumed same"
right=$(sed -n 's/right \([0-9]*\).*/\1/p' "$tmp/stdout")
check "library right $right/100" [ "${right:-0}" -ge 95 ]
expect lib-state-as-weights 0 ./mlp eval --weights lib.st --data "$src/models/mlp.csv"

# Data given on the command line, and bad data.
head -50 "$src/models/mlp.csv" >half.csv
expect data 0 ./mlp train --epochs 1 --data half.csv
has data-start "$tmp/stdout" "training mlp on half.csv: 50 samples"
printf '1,2,3,4,5,0\n1,2,3,4,5\n' >ragged.csv
expect ragged 1 ./mlp train --data ragged.csv
has ragged-msg "$tmp/stderr" "ragged.csv:2: row has 5 columns, expected 6"
printf '1,2,3,4,5,0\n1,nan,3,4,5,1\n' >nan.csv
expect nan 1 ./mlp train --data nan.csv
has nan-msg "$tmp/stderr" "nan.csv:2:3: expected a number, got 'nan' (NaN is not allowed in data)"
printf '1,2,3,4,5,0\n1,2,3,4,5,2\n' >label.csv
expect label 1 ./mlp train --data label.csv
has label-msg "$tmp/stderr" "label.csv:2: column 5: 2 is outside [0, 2) of input 'label'"
expect bad-steps 2 ./mlp train --steps 0
expect both 2 ./mlp train --steps 3 --epochs 2
expect no-save 1 ./mlp train --checkpoint-every 5
has no-save-msg "$tmp/stderr" "--checkpoint-every needs --save FILE"
expect resume-weights 1 ./mlp train --resume "$src/models/mlp.yaml"

# The runtime is valgrind-clean on a training run (reads, writes, leaks), in the
# normal build; the sanitizer build checks the same under ASan instead.
if [ -z "$extra" ]; then
  expect valgrind-train 0 valgrind --error-exitcode=9 --leak-check=full -q \
    ./mlp train --epochs 2 --threads 2 --save vg.safetensors --quiet
  expect valgrind-infer 0 valgrind --error-exitcode=9 --leak-check=full -q \
    ./mlp infer --weights vg.safetensors --input x.csv
fi

finish train
