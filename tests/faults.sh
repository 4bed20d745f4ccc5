#!/usr/bin/env bash
# Fault injection (tests/faults.c, by LD_PRELOAD) on the trainer's writes and on
# allocation:
# - a checkpoint write that meets ENOSPC, EDQUOT, a torn write, EIO on fsync or
#   close, a failed rename, or a read-only file system fails the run with a
#   message naming the file and the cause; the previous checkpoint is intact, byte
#   for byte, no temporary is left, and training resumes from it;
# - writes cut into 7-byte pieces still give the same checkpoint;
# - the training log on a full disk (/dev/full) stops the run with its name;
# - the Nth allocation failing, over a range of N, in `kiln check` (with and
#   without autodiff) and in a training run: exit status 1 and an error message,
#   or success with the same output; never a crash.
# KILN_FAULTS_FULL=1 tries every N instead of a sample.
# Usage: faults.sh PATH/TO/kiln SOURCE_DIR PATH/TO/libkiln_faults.so
set -u
kiln=$1
src=$2
shim=$3
. "$(dirname "$0")/harness.sh"
cd "$tmp"
# A sanitized program loads its sanitizer runtime itself; the shim goes first.
export ASAN_OPTIONS=${ASAN_OPTIONS:-}:verify_asan_link_order=0

faulty() { KILN_FAULTS=$1 LD_PRELOAD=$shim "${@:2}"; }

expect build 0 "$kiln" build "$src/models/mlp.yaml" -o mlp
expect first 0 ./mlp train --steps 5 --save c.st --threads 1 --quiet
cp c.st c.orig
# What the resumed run writes when nothing fails.
cp c.st ok.st
expect resume-ok 0 ./mlp train --steps 10 --resume ok.st --threads 1 --quiet

while read -r fault cause; do
  faulty "$fault" ./mlp train --steps 10 --resume c.st --threads 1 --quiet >out 2>err
  rc=$?
  check "$fault: exit $rc, expected 1" [ $rc -eq 1 ]
  has "$fault-names-file" err "c.st"
  has "$fault-cause" err "$cause"
  has "$fault-unchanged" err "c.st is unchanged"
  same "$fault-intact" c.orig c.st
  check "$fault: no temporary left" [ -z "$(ls | grep '\.tmp\.')" ]
done <<'LIST'
write=ENOSPC No space left on device
write=EDQUOT Disk quota exceeded
write=torn No space left on device
fsync=EIO Input/output error
close=EIO Input/output error
rename=EIO Input/output error
rename=EXDEV Invalid cross-device link
open=EROFS Read-only file system
open=EACCES Permission denied
LIST
# The checkpoint left behind still resumes, to the same bytes as an undisturbed run.
expect resume-after-faults 0 ./mlp train --steps 10 --resume c.st --threads 1 --quiet
same resume-after-faults-bytes ok.st c.st

# Short writes: the writer loops until all is written.
cp c.orig s.st
expect short 0 faulty write=short ./mlp train --steps 10 --resume s.st --threads 1 --quiet
same short-bytes ok.st s.st

# A real read-only folder, where permissions bind (not for root).
if [ "$(id -u)" -ne 0 ]; then
  mkdir ro && cp c.orig ro/c.st && chmod a-w ro
  expect ro-dir 1 ./mlp train --steps 10 --resume ro/c.st --threads 1 --quiet
  has ro-dir-msg "$tmp/stderr" "Permission denied"
  chmod u+w ro
  same ro-dir-intact c.orig ro/c.st
fi

# The log on a full disk (/dev/full: stdio writes do not pass through the shim).
expect log-full 1 ./mlp train --steps 5 --save l.st --log /dev/full --threads 1 --quiet
has log-full-msg "$tmp/stderr" "cannot write /dev/full: No space left on device"

# Allocation failure: the Nth allocation counted fails, for N over the whole run
# (every step-th N; all with KILN_FAULTS_FULL=1). Without leak checking: a
# sanitizer's exit-time leak scan allocates too, and its own failures are not
# Kiln's.
export ASAN_OPTIONS=$ASAN_OPTIONS:detect_leaks=0
sweep() {
  local name=$1 from=$2 ref=$3
  shift 3
  local total
  total=$(faulty "malloc=0,from=$from" "$@" 2>&1 >/dev/null | sed -n 's/^kiln_faults: \([0-9]*\) allocations$/\1/p')
  check "$name: allocations counted" [ "${total:-0}" -gt 10 ]
  local step=$(((${total:-0} + 39) / 40))
  [ "${KILN_FAULTS_FULL:-0}" = 1 ] && step=1
  local n bad=0 tried=0
  for ((n = 1; n <= ${total:-0}; n += step)); do
    rm -f m.st
    faulty "malloc=$n,from=$from" "$@" >mo 2>me
    local rc=$?
    tried=$((tried + 1))
    if [ $rc -eq 1 ] && grep -qE 'error|out of memory' me; then continue; fi
    if [ $rc -eq 0 ] && cmp -s "$ref" "${out_file:-mo}"; then continue; fi
    bad=$((bad + 1))
    echo "FAIL $name: allocation $n of $total failing: exit $rc"; head -5 me
  done
  check "$name: $tried of $total allocations failed, each an error or the same result" [ $bad -eq 0 ]
}
"$kiln" check "$src/models/gpt.yaml" >check.ref 2>/dev/null
sweep check-oom .yaml check.ref "$kiln" check "$src/models/gpt.yaml"
"$kiln" check --train "$src/models/gpt.yaml" >train.ref 2>/dev/null
sweep check-train-oom .yaml train.ref "$kiln" check --train "$src/models/gpt.yaml"
./mlp train --steps 5 --save ref.st --threads 1 --quiet >/dev/null
out_file=m.st sweep train-oom "" ref.st ./mlp train --steps 5 --save m.st --threads 1 --quiet

finish faults
