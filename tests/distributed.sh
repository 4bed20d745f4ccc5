#!/usr/bin/env bash
# Data-parallel training over MPI on this machine (docs/distributed.md):
#   - 2 ranks at batch B/2 end with the weights of one process at batch B (the
#     seed MLP with SGD, a small GPT with AdamW), with the same logged losses;
#   - the sharded optimizer gives the same bits as the unsharded one;
#   - a run stopped and resumed on 2 ranks ends as the run that never stopped, to
#     the byte of its checkpoint; resuming on another number of ranks is refused;
#   - a rank killed makes the job end, and a rank that hangs makes the others stop
#     with a message after --comm-timeout, instead of waiting forever;
#   - a program built without --mpi refuses to be one of several ranks.
# Without mpirun or libkiln_mpi.a (kiln built without MPI) it is skipped (77).
# Usage: distributed.sh PATH/TO/kiln SOURCE_DIR PYTHON [EXTRA_LINK_FLAG]
set -u
kiln=$1
src=$2
py=$3
if ! command -v mpirun >/dev/null; then echo "SKIP: no mpirun (install openmpi-bin)"; exit 77; fi
if [ ! -r "$(dirname "$kiln")/libkiln_mpi.a" ]; then
  echo "SKIP: kiln was built without MPI (install libopenmpi-dev)"; exit 77
fi
. "$(dirname "$0")/harness.sh"
. "$(dirname "$0")/dist_lib.sh"
cd "$tmp"

# The seed MLP with SGD: one process at batch 20 against 2 ranks at 10.
expect build-mlp20 0 "$kiln" build "$src/models/mlp.yaml" --dim batch=20 -o mlp20
expect build-mlp10 0 "$kiln" build --mpi "$src/models/mlp.yaml" -o mlp10
expect mlp-one 0 ./mlp20 train --steps 50 --threads 1 --save one.st --log one.csv --quiet
expect mlp-two 0 mpi 2 ./mlp10 train --steps 50 --save two.st --log two.csv --quiet
has mlp-summary "$tmp/stdout" "2 ranks, rank 0 waited"
# SGD moves each weight by lr times its gradient: the two runs differ only in the
# order of the batch's sums (two half-batch means averaged, against one mean),
# float32 rounding of about 1e-7 per step over 50 steps.
close mlp-weights one.st two.st 1e-5
losses mlp-losses one.csv two.csv 1e-5
[ "$(grep -c . two.csv)" -eq 51 ] && pass=$((pass + 1)) || { fail=$((fail + 1)); echo "FAIL log rows"; }
# Plain SGD keeps no optimizer state: nothing to shard, which is an error.
mpi 2 ./mlp10 train --steps 2 --quiet --shard-optimizer >shard.out 2>&1
check "shard without state: refused (exit $?)" test $? -ne 0
has shard-sgd-msg shard.out "--shard-optimizer: model 'mlp' has no per-parameter optimizer state to shard"

# A small GPT with AdamW (every kernel kind of the transformer, gradient clipping).
dims="--dim ctx=32 --dim d=64"
expect build-gpt8 0 "$kiln" build "$src/models/gpt.yaml" $dims --dim batch=8 -o gpt8
expect build-gpt4 0 "$kiln" build --mpi "$src/models/gpt.yaml" $dims --dim batch=4 -o gpt4
expect gpt-one 0 ./gpt8 train --steps 12 --threads 1 --save g1.st --log g1.csv --quiet
expect gpt-two 0 mpi 2 ./gpt4 train --steps 12 --save g2.st --log g2.csv --quiet
# Adam divides by the gradient's running RMS, so its step is about lr (1e-3 here)
# whatever the gradient's size. Where a gradient is rounding noise (attention's
# key bias: softmax ignores a shift) the two sum orders give different noise
# and Adam moves the weight by up to lr per step either way: 1% of 12 * lr bounds
# that; every other weight agrees to within about 1e-6 (seen: the embedding
# table, whose rare rows get small gradients), most to 1e-7.
close gpt-weights g1.st g2.st 1.2e-4
losses gpt-losses g1.csv g2.csv 1e-5
expect gpt-shard 0 mpi 2 ./gpt4 train --steps 12 --save g3.st --quiet --shard-optimizer
has gpt-shard-line "$tmp/stdout" "done: 12 steps"
same gpt-shard-bits g2.st g3.st

# Stop after 5 steps on 2 ranks, resume to 12: the checkpoint of the run that
# never stopped, to the byte; sharded too (its state gathered to rank 0).
expect gpt-stop 0 mpi 2 ./gpt4 train --steps 12 --stop-after 5 --save r2.st --quiet
has gpt-stop-line "$tmp/stdout" "stopped after 5 steps"
expect gpt-resume 0 mpi 2 ./gpt4 train --resume r2.st --quiet
same gpt-resume-bits g2.st r2.st
expect shard-stop 0 mpi 2 ./gpt4 train --steps 12 --stop-after 7 --save r3.st --quiet --shard-optimizer
expect shard-resume 0 mpi 2 ./gpt4 train --resume r3.st --quiet --shard-optimizer
same shard-resume-bits g2.st r3.st
expect resume-other-ranks 1 ./gpt4 train --resume r2.st --steps 14 --quiet
has resume-other-ranks-msg "$tmp/stderr" "r2.st was written by a run on 2 ranks, this one has 1"

# The rank process of rank $1 among those running $2.
rank_pid() {
  local p
  for p in $(pgrep -f "$2 train"); do
    tr '\0' '\n' <"/proc/$p/environ" 2>/dev/null | grep -qx "OMPI_COMM_WORLD_RANK=$1" && echo "$p"
  done
}
# wait_rank RANK PROG: its pid once steps are logged to run.csv (at most 60 s).
wait_rank() {
  local i
  for i in $(seq 600); do
    [ -f run.csv ] && [ "$(grep -c . run.csv)" -ge 3 ] && { rank_pid "$1" "$2"; return; }
    sleep 0.1
  done
}

# A rank killed: mpirun ends the job and says which rank died.
mpi 2 ./gpt4 train --steps 100000 --quiet --log run.csv >run.out 2>&1 &
job=$!
pid=$(wait_rank 1 ./gpt4)
[ -n "$pid" ] && kill -9 "$pid"
start=$(date +%s)
wait "$job"
rc=$?
check "killed rank: job ends (exit $rc, $(($(date +%s) - start)) s)" test "$rc" -ne 0 -a "$rc" -ne 124
has killed-rank-msg run.out "rank 1"

# A rank that hangs (stopped): rank 0 gives up after --comm-timeout and names why;
# the abort ends the stopped rank too.
rm -f run.csv
mpi 2 ./gpt4 train --steps 100000 --quiet --comm-timeout 3 --log run.csv >run.out 2>&1 &
job=$!
pid=$(wait_rank 1 ./gpt4)
[ -n "$pid" ] && kill -STOP "$pid"
wait "$job"
rc=$?
check "hung rank: job ends (exit $rc)" test "$rc" -ne 0 -a "$rc" -ne 124
has hung-rank-msg run.out "rank 0 of 2: MPI_Iallreduce: no answer from the other ranks for 3 s"
check "hung rank: no process left" test -z "$(pgrep -f './gpt4 train')"

# Without --mpi, a program started as one of several ranks refuses to train.
expect no-mpi 1 mpi 2 ./gpt8 train --steps 1 --quiet
has no-mpi-msg "$tmp/stderr" "this program was built without MPI, so each would train alone"
expect info-ranks 2 mpi 2 ./gpt4 info
has info-ranks-msg "$tmp/stderr" "only train runs on several ranks"
expect lib-mpi 2 "$kiln" build --mpi --emit=lib "$src/models/mlp.yaml" -o lib/mlp
has lib-mpi-msg "$tmp/stderr" "--mpi links a program"
finish distributed
