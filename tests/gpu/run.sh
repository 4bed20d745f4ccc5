#!/usr/bin/env bash
# Every GPU check of the CUDA target, in two halves: `prepare` runs where Kiln is
# built (no GPU needed) and leaves one folder of programs, data and CPU reference
# numbers; `check` runs on a machine with an NVIDIA GPU, needs nothing but that
# folder, this repository's tree, bash, awk and (for the PyTorch comparison) a
# python3 with torch, and writes a report. docs/gpu-checks.md explains the checks.
#
#   tests/gpu/run.sh prepare [--kiln PATH] [DIR]    (DIR: tests/gpu/prepared)
#   tests/gpu/run.sh check DIR OUTDIR
#
# check exits 0 when every check passed, 1 on a failure, 2 on bad usage, and 77
# (every check SKIPPED) where there is no GPU. KILN_GPU_CHECK_PROGRAMS=cpu runs
# check against DIR's CPU programs in place of the CUDA ones, and PyTorch on the
# CPU: a dry run of the comparison and the report where there is no GPU.
set -u
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)

MODELS="mlp digits lstm gpt"
BENCH_MODELS="mlp784_train gpt"
STEPS=20
SEED=42
# Each program run is cut off after this many seconds, so a hang costs minutes,
# not the machine's whole loan.
LIMIT=${KILN_GPU_CHECK_LIMIT:-150}

die() { echo "run.sh: $*" >&2; exit 2; }

usage() {
  cat <<'EOF'
usage: tests/gpu/run.sh prepare [--kiln PATH] [DIR]
       tests/gpu/run.sh check DIR OUTDIR

prepare  build the CPU and CUDA programs of models/{mlp,digits,lstm,gpt}.yaml and
         bench/models/mlp784_train.yaml into DIR (default tests/gpu/prepared),
         with their data, the CPU's losses of 20 training steps and its bench
         numbers, and the op pack: every case of tests/test_cpu_ops.c compiled
         for CUDA with the interpreter's results (kiln: --kiln, else $KILN, else
         build/kiln; the pack needs that build's tests/test_cpu_ops and ops_check);
         also the CUDA programs built with --gpu-matmul=bf16 (cuda-bf16/)
check    on a GPU machine: every op case against the interpreter, the CUDA
         programs' losses against the CPU's, with and without CUDA graphs, `info`,
         and Kiln against PyTorch (bench/gpu.py); then the bf16 programs' losses
         at bf16's tolerance and their training steps against PyTorch under bf16
         autocast (bench/gpu.py --autocast bf16); writes OUTDIR/report.md and the
         logs. Exit 77 where there is no GPU.
EOF
}

# The model file of a program name.
model_file() {
  case $1 in
  mlp784_train) echo "$root/bench/models/mlp784_train.yaml" ;;
  *) echo "$root/models/$1.yaml" ;;
  esac
}

# --data of a model's training run, relative to DIR.
model_data() {
  case $1 in
  mlp) echo data/mlp.csv ;;
  digits) echo data/digits.csv ;;
  lstm | gpt) echo data/licenses.txt ;;
  esac
}

# The python that has torch: $PYTHON, else the first of python3 and
# /usr/bin/python3 that imports it.
find_python() {
  local p
  for p in ${PYTHON:-} python3 /usr/bin/python3; do
    if command -v "$p" >/dev/null 2>&1 && "$p" -c 'import torch, numpy' 2>/dev/null; then
      echo "$p"
      return 0
    fi
  done
  return 1
}

# `generate`'s "... in T ms: M ms per generated token" from a stderr file: M.
gen_ms() { sed -n 's/.* ms: \([0-9.]*\) ms per generated token.*/\1/p' "$1" | tail -1; }
# `bench`'s "train step: median X us, ..." from a stdout file: X.
bench_us() { sed -n 's/^train step: median \([0-9.]*\) us.*/\1/p' "$1" | tail -1; }
# ratio A B: A / B to two places, "-" when either is missing.
ratio() { awk -v a="$1" -v b="$2" 'BEGIN { if (a > 0 && b > 0) printf "%.2f", a / b; else print "-" }'; }
# The median of numbers, one per line on stdin.
median() { sort -g | awk '{v[NR] = $1} END {if (NR) print (NR % 2 ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2)}'; }

#
# prepare
#
prepare() {
  local kiln=${KILN:-$root/build/kiln} dir=$here/prepared
  while [ $# -gt 0 ]; do
    case $1 in
    --kiln) [ $# -ge 2 ] || die "--kiln needs a path"; kiln=$2; shift 2 ;;
    --kiln=*) kiln=${1#--kiln=}; shift ;;
    -h | --help) usage; exit 0 ;;
    -*) die "prepare: unknown option '$1'" ;;
    *) dir=$1; shift; [ $# -eq 0 ] || die "prepare: one DIR only" ;;
    esac
  done
  [ -x "$kiln" ] || die "no kiln at '$kiln': build it (docs/building.md) or give --kiln PATH"
  kiln=$(cd "$(dirname "$kiln")" && pwd)/$(basename "$kiln")
  local tests
  tests=$(dirname "$kiln")/tests
  [ -x "$tests/test_cpu_ops" ] && [ -x "$tests/ops_check" ] ||
    die "no $tests/test_cpu_ops or ops_check: the op pack is built by the tests of kiln's build (KILN_TESTS=ON)"
  rm -rf "$dir"
  mkdir -p "$dir"/{bin,cpu,cuda,cuda-bf16,data,lib,ref,weights} || die "cannot make $dir"
  dir=$(cd "$dir" && pwd)
  local failed=0 m

  # Data: the text models read a folder (/usr/share/common-licenses), which a
  # GPU machine need not have. Its regular files, in the order Kiln reads a
  # folder (byte order of the names, links left out), make one file: the same
  # characters in the same order.
  cp "$root/models/mlp.csv" "$root/models/digits.csv" "$dir/data/" || die "cannot copy the CSV data"
  local lic=/usr/share/common-licenses f
  [ -d "$lic" ] || die "$lic is missing: the text models' data comes from there"
  (cd "$lic" && for f in $(LC_ALL=C ls); do [ -f "$f" ] && [ ! -L "$f" ] && cat "$f"; done) \
    >"$dir/data/licenses.txt"

  # Programs: every model must build for the CPU; a CUDA build that fails is
  # reported (check fails that model) and the rest goes on.
  for m in $MODELS mlp784_train; do
    if ! "$kiln" build "$(model_file $m)" -o "$dir/cpu/$m" >"$dir/cpu/$m.build.log" 2>&1; then
      echo "FAIL prepare: kiln build $m (CPU):"; head -20 "$dir/cpu/$m.build.log"; failed=1
    fi
    if "$kiln" build --target=cuda "$(model_file $m)" -o "$dir/cuda/$m" \
      >"$dir/cuda/$m.build.log" 2>&1; then
      echo "built $m: cpu/$m, cuda/$m"
    else
      echo "FAIL prepare: kiln build --target=cuda $m:"; head -20 "$dir/cuda/$m.build.log"; failed=1
      rm -f "$dir/cuda/$m"
    fi
    if "$kiln" build --target=cuda --gpu-matmul=bf16 "$(model_file $m)" -o "$dir/cuda-bf16/$m" \
      >"$dir/cuda-bf16/$m.build.log" 2>&1; then
      echo "built $m: cuda-bf16/$m"
    else
      echo "FAIL prepare: kiln build --target=cuda --gpu-matmul=bf16 $m:"; head -20 "$dir/cuda-bf16/$m.build.log"
      failed=1
      rm -f "$dir/cuda-bf16/$m"
    fi
  done
  # The op pack (check `ops`): each case of tests/test_cpu_ops.c compiled as kiln
  # build --target=cuda compiles, its inputs and the interpreter's outputs, and
  # the program that runs them. Its 20 MiB are mostly cubins, which gzip to a
  # quarter. A pack that failed half-way is left out: check then fails `ops`
  # rather than pass on the cases that happened to be written.
  cp "$tests/ops_check" "$dir/bin/" || die "cannot copy ops_check"
  local work
  work=$(mktemp -d) || die "cannot make a temporary folder"
  if "$tests/test_cpu_ops" pack "$work/ops" >"$dir/ref/ops.pack.log" 2>&1 &&
    tar -C "$work" -czf "$dir/ops.tar.gz" ops; then
    echo "built ops: $(grep -c '^case ' "$work/ops/index") op cases, $(du -sm "$work/ops" | cut -f1) MiB, ops.tar.gz"
  else
    echo "FAIL prepare: the op pack (test_cpu_ops pack):"; grep -E 'ERROR|FAIL|rror' "$dir/ref/ops.pack.log" | head -10
    rm -f "$dir/ops.tar.gz"
    failed=1
  fi
  rm -rf "$work"

  # The CUDA programs' and ops_check's shared libraries other than the C
  # library's (jansson), which the GPU machine's system need not have; check puts
  # lib/ on LD_LIBRARY_PATH.
  for m in "$dir"/cuda/* "$dir"/cuda-bf16/* "$dir"/bin/*; do
    [ -x "$m" ] && [ ! -d "$m" ] || continue
    ldd "$m" | awk '$2 == "=>" && $3 ~ /^\// {print $3}' |
      grep -vE '/(libc|libm|libdl|libpthread|librt|ld-linux[^/]*)\.so' |
      while read -r f; do cp -L "$f" "$dir/lib/"; done
  done

  # The bf16 programs travel as one archive, a quarter of their size (their
  # cubins compress well); check unpacks it.
  if (cd "$dir" && tar -czf cuda-bf16.tar.gz cuda-bf16); then
    rm -rf "$dir/cuda-bf16"
  else
    echo "FAIL prepare: cannot archive cuda-bf16/"; failed=1
  fi

  # The CPU's reference: STEPS steps of each model from the same seed, logged.
  # One thread: kernels may split reductions by thread count, and one thread is
  # the same order on any machine.
  local save
  for m in $MODELS; do
    [ -x "$dir/cpu/$m" ] || continue
    save=()
    [ $m = gpt ] && save=(--save weights/gpt.ckpt.safetensors)
    if ! (cd "$dir" && timeout "$LIMIT" "cpu/$m" train --steps $STEPS --seed $SEED \
      --data "$(model_data $m)" --log "ref/$m.csv" --threads 1 --print-every 5 \
      "${save[@]}" >"ref/$m.train.out" 2>&1); then
      echo "FAIL prepare: cpu/$m train:"; tail -5 "$dir/ref/$m.train.out"; failed=1
    fi
  done
  # The GPT's weights for `generate` (which also takes its vocabulary from them):
  # the checkpoint less its optimizer state, a third of its size.
  if [ -f "$dir/weights/gpt.ckpt.safetensors" ]; then
    strip_state "$dir/weights/gpt.ckpt.safetensors" "$dir/weights/gpt.safetensors" || failed=1
    rm -f "$dir/weights/gpt.ckpt.safetensors"
  fi

  # CPU bench numbers, for the report's context (another machine's CPU).
  local t
  t=$(nproc)
  for m in $BENCH_MODELS; do
    [ -x "$dir/cpu/$m" ] || continue
    timeout "$LIMIT" "$dir/cpu/$m" bench --train --runs 5 --warmup 2 --threads "$t" \
      >"$dir/ref/$m.bench.txt" 2>&1 || { echo "FAIL prepare: cpu/$m bench"; failed=1; }
  done
  if [ -x "$dir/cpu/gpt" ] && [ -f "$dir/weights/gpt.safetensors" ]; then
    (cd "$dir" && timeout "$LIMIT" cpu/gpt generate --weights weights/gpt.safetensors \
      --tokens 127 --temperature 0 --threads "$t" >ref/gpt.generate.txt 2>ref/gpt.generate.err) ||
      { echo "FAIL prepare: cpu/gpt generate"; cat "$dir/ref/gpt.generate.err"; failed=1; }
  fi

  {
    echo "date=$(date -u +%Y-%m-%dT%H:%M:%SZ)"
    echo "kiln=$("$kiln" version 2>/dev/null)"
    echo "commit=$(git -C "$root" describe --always --dirty 2>/dev/null || echo unknown)"
    echo "cpu=$(sed -n 's/^model name[[:space:]]*: //p' /proc/cpuinfo | head -1)"
    echo "cpu_threads=$t"
    echo "steps=$STEPS"
    echo "seed=$SEED"
    echo "models=$MODELS"
  } >"$dir/manifest"
  local size
  size=$(du -sm "$dir" | cut -f1)
  echo "prepared $dir: ${size} MiB"
  if [ "$size" -gt 50 ]; then echo "FAIL prepare: $dir is ${size} MiB, over the 50 MiB it may carry"; failed=1; fi
  return $failed
}

# strip_state IN OUT: a safetensors file without the optimizer's tensors
# (adam.*, sgd.*), metadata kept. Plain Python: no numpy needed.
strip_state() {
  local py
  py=$(command -v python3 || echo /usr/bin/python3)
  "$py" - "$1" "$2" <<'PY'
import json, sys
src, dst = sys.argv[1:]
blob = open(src, "rb").read()
n = int.from_bytes(blob[:8], "little")
head = json.loads(blob[8:8 + n])
out, parts, at = {"__metadata__": head.pop("__metadata__", {})}, [], 0
for name, e in head.items():
    if name.split(".", 1)[0] in ("adam", "sgd"):
        continue
    b, end = e["data_offsets"]
    parts.append(blob[8 + n + b:8 + n + end])
    out[name] = dict(e, data_offsets=[at, at + end - b])
    at += end - b
text = json.dumps(out, separators=(",", ":")).encode()
text += b" " * (-len(text) % 8)
with open(dst, "wb") as f:
    f.write(len(text).to_bytes(8, "little") + text + b"".join(parts))
PY
}

#
# check
#
# Tolerances of the loss comparison, relative to the CPU's loss. Both sides are
# float32 and differ only in the order they add things up (blocked GEMMs, tree
# reductions across a GPU's threads, fused kernels):
# - step 1 is the loss of the same initial weights on the same batch: a forward
#   pass only, where rounding leaves ~1e-6 (bench/train.py holds Kiln's CPU to
#   PyTorch by 1e-5 on a step); RTOL1 = 1e-5.
# - from step 2 the weights themselves differ by rounding, and each step compounds
#   it: SGD moves a weight by lr g, so a gradient's relative rounding stays
#   relative; Adam divides by sqrt(v), which turns a rounding-sized gradient (an
#   element where |g| ~ eps, attention biases whose exact gradient is 0) into a
#   full step of lr, so the losses drift apart step by step. The bound grows by
#   GROW per step: 1e-5 (SGD) or 1e-4 (Adam and AdamW), 2e-4 and 2e-3 at step 20.
#   A wrong gradient or update shows as far more within a few steps where the
#   learning rate is large; the GPT's warm-up keeps its first steps small, so its
#   step-1 forward check and the later steps together carry its test.
RTOL1=1e-5

grow_of() { case $1 in mlp) echo 1e-5 ;; *) echo 1e-4 ;; esac; }

# The bf16 programs (--gpu-matmul=bf16) against the same CPU losses. Every matmul
# operand is rounded to bf16, 8 significant bits: up to 2^-8 = 3.9e-3 of itself,
# independently per element, so a matmul's outputs move by about that over the
# square root of their terms and the loss, a mean over the batch, by less. Step 1
# (a forward pass from the same weights) is held to BF16_RTOL1 = 4e-3, bf16's own
# rounding step; each later step compounds the difference in the weights as
# above, by BF16_GROW = 1e-3 per step: 2.3e-2 at step 20. Under the emulator the
# reduced models stay within 3.2e-3 over 20 steps (tests/cuda.sh). A misplaced
# fragment or an operand not rounded where it should be changes the loss by far
# more (or not at all, which bf16-differs checks).
BF16_RTOL1=4e-3
BF16_GROW=1e-3

# compare REF GOT GROW [RTOL1]: prints "maxrel STEP FIRSTBAD" over the loss column
# and the final val_loss; FIRSTBAD is 0 when every step is within its bound, -1
# when GOT has another number of steps.
compare_losses() {
  awk -F, -v rtol1="${4:-$RTOL1}" -v grow="$3" '
    FNR == 1 { next }
    NR == FNR { ref[$1] = $3; if ($7 != "") rval = $7; nref++; next }
    {
      ngot++
      if (!($1 in ref)) { bad = -1; next }
      d = $3 - ref[$1]; if (d < 0) d = -d
      r = ref[$1] != 0 ? d / (ref[$1] < 0 ? -ref[$1] : ref[$1]) : d
      if ($3 !~ /^-?[0-9.]+([eE][-+]?[0-9]+)?$/) r = 1e30   # nan, inf or empty
      if (r > max) { max = r; at = $1 }
      if (r > rtol1 + grow * ($1 - 1) && !bad) bad = $1
      if ($7 != "") gval = $7; last = $1
    }
    END {
      if (ngot != nref) bad = -1
      if (rval != "" && gval != "") {
        d = gval - rval; if (d < 0) d = -d; r = d / rval
        if (gval !~ /^-?[0-9.]+([eE][-+]?[0-9]+)?$/) r = 1e30
        if (r > max) { max = r; at = "val" }
        if (r > rtol1 + grow * (last - 1) && !bad) bad = "val"
      }
      printf "%.3g %s %s\n", max, at == "" ? "-" : at, bad ? bad : 0
    }' "$1" "$2"
}

# check_losses TEST WHAT REF LOG GROW RTOL1 TABLE: TEST's result for LOG's losses
# against the CPU's REF (compare_losses), and the model's row appended to the
# array named TABLE (m and steps are the caller's).
check_losses() {
  local test=$1 what=$2 ref=$3 log=$4 grow=$5 rtol1=$6 max at bad
  local -n tab=$7
  read -r max at bad < <(compare_losses "$ref" "$log" "$grow" "$rtol1")
  local tol="step 1: $rtol1, then +$grow per step"
  if [ "$bad" = 0 ]; then
    result "$test" PASS "max relative difference $max (at step $at); bound $tol"
  elif [ "$bad" = -1 ]; then
    result "$test" FAIL "the $what log's steps differ from the CPU's"
  else
    result "$test" FAIL "max relative difference $max (at step $at), first beyond the bound at step $bad; bound $tol"
  fi
  tab+=("| $m | $(loss_at "$ref" 1) | $(loss_at "$log" 1) | $(loss_at "$ref" "$steps") | $(loss_at "$log" "$steps") | $max | $at | $rtol1 + $grow (s-1) |")
}

# The log without its timing column (samples_per_s): what must be bit-identical.
exact_cols() { cut -d, -f1-5,7- "$1"; }

pass=0
fail=0
results=()
# result NAME PASS|FAIL|SKIPPED DETAIL
result() {
  printf '%-7s %-24s %s\n' "$2" "$1" "$3"
  results+=("| $1 | $2 | $3 |")
  case $2 in PASS) pass=$((pass + 1)) ;; FAIL) fail=$((fail + 1)) ;; esac
}

check_names() {
  local m
  echo gpu ops
  for m in $MODELS; do echo "built-$m train-$m losses-$m graphs-off-$m info-$m"; done
  echo "bench-kiln-mlp784 bench-kiln-gpt generate-kiln-gpt bench-torch"
  for m in $MODELS; do echo "losses-bf16-$m bf16-differs-$m"; done
  echo "bench-kiln-bf16-mlp784 bench-kiln-bf16-gpt bench-torch-bf16"
}

check() {
  [ $# -eq 2 ] || { usage >&2; exit 2; }
  local dir=$1 out=$2 m swap=${KILN_GPU_CHECK_PROGRAMS:-cuda}
  [ -f "$dir/manifest" ] || die "$dir holds no prepared checks (no manifest): run 'run.sh prepare' first"
  case $swap in cuda | cpu) ;; *) die "KILN_GPU_CHECK_PROGRAMS is cuda or cpu, not '$swap'" ;; esac
  dir=$(cd "$dir" && pwd)
  mkdir -p "$out" || die "cannot make $out"
  out=$(cd "$out" && pwd)
  local steps seed
  steps=$(sed -n 's/^steps=//p' "$dir/manifest")
  seed=$(sed -n 's/^seed=//p' "$dir/manifest")

  # The GPU.
  local gpu="" driver="" cudaver=""
  if [ "$swap" = cpu ]; then
    gpu="(none: KILN_GPU_CHECK_PROGRAMS=cpu, the CPU programs stand in for the CUDA ones)"
    echo "GPU: $gpu"
  elif command -v nvidia-smi >/dev/null 2>&1 &&
    q=$(nvidia-smi --query-gpu=name,driver_version --format=csv,noheader 2>/dev/null) &&
    [ -n "$q" ]; then
    gpu=$(echo "$q" | head -1 | cut -d, -f1 | sed 's/^ *//')
    driver=$(echo "$q" | head -1 | cut -d, -f2 | sed 's/^ *//')
    cudaver=$(nvidia-smi 2>/dev/null | sed -n 's/.*CUDA Version: *\([0-9.]*\).*/\1/p' | head -1)
    echo "GPU: $gpu; driver $driver; CUDA $cudaver ($(echo "$q" | wc -l) GPU(s), the checks use device ${KILN_CUDA_DEVICE:-0})"
  else
    echo "GPU: none (no nvidia-smi, or it lists no GPU)"
    for m in $(check_names); do echo "SKIPPED $m"; done
    exit 77
  fi
  if [ "$swap" = cpu ]; then result gpu SKIPPED "$gpu"
  else result gpu PASS "$gpu${driver:+, driver $driver}${cudaver:+, CUDA $cudaver}"; fi

  export LD_LIBRARY_PATH="$dir/lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
  check_ops "$dir" "$out" "$swap"
  local prog=$swap
  local -a losstab=()
  for m in $MODELS; do
    local p="$prog/$m" grow r max at bad
    grow=$(grow_of $m)
    if [ ! -x "$dir/$p" ]; then
      result "built-$m" FAIL "$p is missing: its build failed at prepare ($dir/$p.build.log)"
      continue
    fi
    result "built-$m" PASS "$p"
    # Graphs on (the default), then off.
    local ok=1 g
    for g in 1 0; do
      (cd "$dir" && KILN_CUDA_GRAPHS=$g timeout "$LIMIT" "$p" train --steps "$steps" --seed "$seed" \
        --data "$(model_data $m)" --log "$out/$m.graphs$g.csv" --print-every 5 \
        >"$out/$m.graphs$g.out" 2>&1)
      r=$?
      if [ $r -ne 0 ]; then
        result "train-$m" FAIL "KILN_CUDA_GRAPHS=$g: exit $r: $(tail -1 "$out/$m.graphs$g.out")"
        ok=0
        break
      fi
    done
    if [ $ok = 1 ]; then
      result "train-$m" PASS "$steps steps, graphs on and off"
      check_losses "losses-$m" CUDA "$dir/ref/$m.csv" "$out/$m.graphs1.csv" "$grow" "$RTOL1" losstab
      if cmp -s <(exact_cols "$out/$m.graphs1.csv") <(exact_cols "$out/$m.graphs0.csv"); then
        result "graphs-off-$m" PASS "bit-identical loss, lr, grad_norm with KILN_CUDA_GRAPHS=0"
      else
        result "graphs-off-$m" FAIL "KILN_CUDA_GRAPHS=0 differs, first at (step,epoch,loss,lr,grad_norm,...) $(paste -d'|' <(exact_cols "$out/$m.graphs1.csv") <(exact_cols "$out/$m.graphs0.csv") | awk -F'|' '$1 != $2 { print "on " $1 ", off " $2; exit }')"
      fi
    fi
    if [ $ok = 0 ]; then
      result "losses-$m" SKIPPED "training failed"
      result "graphs-off-$m" SKIPPED "training failed"
    fi
    if (cd "$dir" && timeout "$LIMIT" "$p" info >"$out/$m.info.txt" 2>&1) &&
      grep -q "target $swap" "$out/$m.info.txt"; then
      result "info-$m" PASS "$(sed -n 's/^memory: *//p' "$out/$m.info.txt")"
    else
      result "info-$m" FAIL "$(tail -1 "$out/$m.info.txt")"
    fi
  done

  # Kiln's speed.
  local -A kus=() cpuus=()
  local runs=30 warm=10 key
  [ "$swap" = cpu ] && runs=3 warm=1
  for m in $BENCH_MODELS; do
    key=${m%_train}
    cpuus[$key]=$(bench_us "$dir/ref/$m.bench.txt")
    if [ -x "$dir/$prog/$m" ] && (cd "$dir" && timeout "$LIMIT" "$prog/$m" bench --train --runs $runs \
      --warmup $warm >"$out/$m.bench.txt" 2>&1) && kus[$key]=$(bench_us "$out/$m.bench.txt") &&
      [ -n "${kus[$key]}" ]; then
      result "bench-kiln-$key" PASS "train step median ${kus[$key]} us"
    else
      result "bench-kiln-$key" FAIL "$(tail -1 "$out/$m.bench.txt" 2>/dev/null || echo "no $prog/$m")"
    fi
  done
  local gms="" gtext=""
  if [ -x "$dir/$prog/gpt" ]; then
    local i times=()
    for i in 1 2 3; do
      if (cd "$dir" && timeout "$LIMIT" "$prog/gpt" generate --weights weights/gpt.safetensors \
        --tokens 127 --temperature 0 >"$out/gpt.generate.txt" 2>"$out/gpt.generate.err"); then
        times+=("$(gen_ms "$out/gpt.generate.err")")
      fi
    done
    gms=$(printf '%s\n' "${times[@]}" | grep . | median)
  fi
  if [ -n "$gms" ]; then
    result generate-kiln-gpt PASS "$gms ms per token (median of 3 runs of 127 tokens)"
    if cmp -s "$out/gpt.generate.txt" "$dir/ref/gpt.generate.txt"; then
      gtext="the same greedy text as the CPU's"
    else
      gtext="greedy text differs from the CPU's from character $(cmp "$out/gpt.generate.txt" \
        "$dir/ref/gpt.generate.txt" 2>/dev/null | sed -n 's/.*byte \([0-9]*\).*/\1/p') (a near-tie of two logits flips argmax; not a failure)"
    fi
    echo "        $gtext"
  else
    result generate-kiln-gpt FAIL "$(tail -1 "$out/gpt.generate.err" 2>/dev/null || echo "no $prog/gpt")"
  fi

  # PyTorch eager on the same device.
  local py tj="$out/torch.json" targs=()
  [ "$swap" = cpu ] && targs=(--device cpu --runs 3 --warmup 1 --run-ms 5 --tokens 127 --reps 1)
  if ! py=$(find_python); then
    result bench-torch FAIL "no python3 with torch and numpy (set PYTHON)"
  elif timeout 300 "$py" "$root/bench/gpu.py" "${targs[@]}" --out "$tj" >/dev/null 2>"$out/torch.err"; then
    result bench-torch PASS "$(tail -n +1 "$out/torch.err" | sed -n 's/^gpu.py: torch/torch/p')"
  else
    result bench-torch FAIL "$(tail -1 "$out/torch.err")"
  fi
  local tmlp="" tgpt="" ttok=""
  if [ -f "$tj" ]; then
    read -r tmlp tgpt ttok < <("$py" -c '
import json, sys
j = json.load(open(sys.argv[1]))
t = j["train"]
print(t["mlp784"]["median_us"], t["gpt"]["median_us"], j["generate"]["gpt"]["tokens_per_s"])' "$tj")
  fi
  local -a speed=() bf16tab=() bf16speed=()
  speed+=("| mlp 784-512-512-10, Adam, batch 128: train step, us | ${kus[mlp784]:--} | ${tmlp:+$(printf %.1f "$tmlp")} | $(ratio "${tmlp:-0}" "${kus[mlp784]:-0}") | ${cpuus[mlp784]:--} |")
  speed+=("| gpt 4x256 ctx 128, AdamW, batch 16: train step, us | ${kus[gpt]:--} | ${tgpt:+$(printf %.1f "$tgpt")} | $(ratio "${tgpt:-0}" "${kus[gpt]:-0}") | ${cpuus[gpt]:--} |")
  local ktok="" ctok
  [ -n "$gms" ] && ktok=$(awk -v m="$gms" 'BEGIN { printf "%.1f", 1000 / m }')
  ctok=$(gen_ms "$dir/ref/gpt.generate.err" 2>/dev/null)
  [ -n "$ctok" ] && ctok=$(awk -v m="$ctok" 'BEGIN { printf "%.1f", 1000 / m }')
  speed+=("| gpt generation (KV cache, greedy, 127 tokens), tokens/s | ${ktok:--} | ${ttok:+$(printf %.1f "$ttok")} | $(ratio "${ktok:-0}" "${ttok:-0}") | ${ctok:--} |")
  echo
  echo "Kiln against PyTorch eager (ratio > 1: Kiln faster):"
  printf '%s\n' "${speed[@]}" | sed 's/^| //; s/ |$//'

  check_bf16 "$dir" "$out" "$swap" "$steps" "$seed"

  report "$dir" "$out" "$gpu" "$driver" "$cudaver" "$gtext"
  echo
  echo "$pass passed, $fail failed; report: $out/report.md"
  [ "$fail" -eq 0 ]
}

# check_bf16 DIR OUT PROGRAMS STEPS SEED: the --gpu-matmul=bf16 programs: each
# model's losses against the CPU's at bf16's tolerance (BF16_RTOL1, BF16_GROW),
# and not identical to the f32 program's (the option must change the arithmetic);
# then the MLP's and GPT's training steps against PyTorch under bf16 autocast
# (bench/gpu.py --autocast bf16). With the CPU programs standing in (a dry run) the
# CPU programs run in their place and nothing can differ from f32: bf16-differs
# is SKIPPED. Sets bf16tab and bf16speed for the report.
check_bf16() {
  local dir=$1 out=$2 swap=$3 steps=$4 seed=$5 m p r max at bad
  # The programs: cuda-bf16.tar.gz unpacked outside DIR and OUTDIR (prog is then
  # an absolute path; the programs still run in DIR, for their data).
  local prog=cpu work=""
  if [ "$swap" != cpu ]; then
    work=$(mktemp -d) || die "cannot make a temporary folder"
    tar -C "$work" -xzf "$dir/cuda-bf16.tar.gz" 2>/dev/null || echo "run.sh: cannot unpack $dir/cuda-bf16.tar.gz"
    prog=$work/cuda-bf16
  fi
  for m in $MODELS; do
    p="$prog/$m"
    if [ ! -x "$p" ] && [ ! -x "$dir/$p" ]; then
      result "losses-bf16-$m" FAIL "cuda-bf16/$m is missing: its build failed at prepare (cuda-bf16/$m.build.log)"
      result "bf16-differs-$m" SKIPPED "no program"
      continue
    fi
    (cd "$dir" && timeout "$LIMIT" "$p" train --steps "$steps" --seed "$seed" --data "$(model_data $m)" \
      --log "$out/$m.bf16.csv" --print-every 5 >"$out/$m.bf16.out" 2>&1)
    r=$?
    if [ $r -ne 0 ]; then
      result "losses-bf16-$m" FAIL "$p train: exit $r: $(tail -1 "$out/$m.bf16.out")"
      result "bf16-differs-$m" SKIPPED "training failed"
      continue
    fi
    check_losses "losses-bf16-$m" bf16 "$dir/ref/$m.csv" "$out/$m.bf16.csv" "$BF16_GROW" "$BF16_RTOL1" bf16tab
    if [ "$swap" = cpu ]; then
      result "bf16-differs-$m" SKIPPED "the CPU program stands in for the bf16 one"
    elif [ ! -f "$out/$m.graphs1.csv" ]; then
      result "bf16-differs-$m" SKIPPED "no f32 run to compare with"
    elif awk -F, 'NR == FNR { f32[$1] = $3; next } FNR > 1 && f32[$1] != $3 { d = 1 } END { exit !d }' \
      "$out/$m.graphs1.csv" "$out/$m.bf16.csv"; then
      result "bf16-differs-$m" PASS "losses differ from the f32 program's"
    else
      result "bf16-differs-$m" FAIL "every loss equals the f32 program's: bf16 is not in use"
    fi
  done

  local -A kus=()
  local runs=30 warm=10 key
  [ "$swap" = cpu ] && runs=3 warm=1
  for m in $BENCH_MODELS; do
    key=${m%_train}
    if (cd "$dir" && [ -x "$prog/$m" ] && timeout "$LIMIT" "$prog/$m" bench --train --runs $runs \
      --warmup $warm >"$out/$m.bf16.bench.txt" 2>&1) && kus[$key]=$(bench_us "$out/$m.bf16.bench.txt") &&
      [ -n "${kus[$key]}" ]; then
      result "bench-kiln-bf16-$key" PASS "train step median ${kus[$key]} us"
    else
      result "bench-kiln-bf16-$key" FAIL "$(tail -1 "$out/$m.bf16.bench.txt" 2>/dev/null || echo "no $prog/$m")"
    fi
  done
  [ -n "$work" ] && rm -rf "$work"
  local py tj="$out/torch_bf16.json" targs=() tmlp="" tgpt=""
  [ "$swap" = cpu ] && targs=(--device cpu --runs 3 --warmup 1 --run-ms 5)
  if ! py=$(find_python); then
    result bench-torch-bf16 FAIL "no python3 with torch and numpy (set PYTHON)"
  elif timeout 300 "$py" "$root/bench/gpu.py" --autocast bf16 "${targs[@]}" --out "$tj" >/dev/null \
    2>"$out/torch_bf16.err"; then
    result bench-torch-bf16 PASS "$(sed -n 's/^gpu.py: torch/torch/p' "$out/torch_bf16.err")"
  else
    result bench-torch-bf16 FAIL "$(tail -1 "$out/torch_bf16.err")"
  fi
  if [ -f "$tj" ]; then
    read -r tmlp tgpt < <("$py" -c '
import json, sys
t = json.load(open(sys.argv[1]))["train"]
print(t["mlp784"]["median_us"], t["gpt"]["median_us"])' "$tj")
  fi
  bf16speed+=("| mlp 784-512-512-10, Adam, batch 128: train step, us | ${kus[mlp784]:--} | ${tmlp:+$(printf %.1f "$tmlp")} | $(ratio "${tmlp:-0}" "${kus[mlp784]:-0}") |")
  bf16speed+=("| gpt 4x256 ctx 128, AdamW, batch 16: train step, us | ${kus[gpt]:--} | ${tgpt:+$(printf %.1f "$tgpt")} | $(ratio "${tgpt:-0}" "${kus[gpt]:-0}") |")
  echo
  echo "Kiln --gpu-matmul=bf16 against PyTorch bf16 autocast (ratio > 1: Kiln faster):"
  printf '%s\n' "${bf16speed[@]}" | sed 's/^| //; s/ |$//'
}

# check_ops DIR OUT PROGRAMS: every op case of the pack against the interpreter
# (tests/gpu/ops_check.c; it prints a line per case). The pack needs the GPU: with
# the CPU programs standing in there is nothing to run it on.
check_ops() {
  local dir=$1 out=$2 r np nf worst work
  if [ "$3" = cpu ]; then
    result ops SKIPPED "the op pack runs on a GPU only"
    return
  fi
  if [ ! -x "$dir/bin/ops_check" ] || [ ! -f "$dir/ops.tar.gz" ]; then
    result ops FAIL "no op pack ($dir/ops.tar.gz): prepare failed to build it (ref/ops.pack.log)"
    return
  fi
  # Unpacked outside OUTDIR, which holds only what the report needs.
  work=$(mktemp -d) || die "cannot make a temporary folder"
  if ! tar -C "$work" -xzf "$dir/ops.tar.gz"; then
    result ops FAIL "cannot unpack $dir/ops.tar.gz"
    rm -rf "$work"
    return
  fi
  timeout "$LIMIT" "$dir/bin/ops_check" "$work/ops" >"$out/ops.txt" 2>&1
  r=$?
  rm -rf "$work"
  np=$(grep -c '^PASS ' "$out/ops.txt")
  nf=$(grep -c '^FAIL ' "$out/ops.txt")
  # The pass closest to its tolerance, to tighten the tolerances by.
  worst=$(grep '^PASS ' "$out/ops.txt" | sed -n 's/^PASS \([0-9]*\) .*(\([0-9.e+-]*\) of tolerance)$/\2 \1/p' |
    sort -g | tail -1 | awk '{print $1 " of its tolerance, case " $2}')
  case $r in
  0) result ops PASS "$np op cases within tolerance of the interpreter; the closest: ${worst:--}" ;;
  1) result ops FAIL "$nf of $((np + nf)) op cases failed; the first: $(grep -m1 '^FAIL ' "$out/ops.txt" | cut -c6-)" ;;
  124 | 137) result ops FAIL "cut off after $LIMIT s, $((np + nf)) cases run ($nf failed)" ;;
  77) result ops FAIL "ops_check found no GPU where nvidia-smi did: $(tail -1 "$out/ops.txt")" ;;
  *) result ops FAIL "exit $r: $(tail -1 "$out/ops.txt")" ;;
  esac
}

# The loss of step S in a log.
loss_at() { awk -F, -v s="$2" '$1 == s { print $3 }' "$1"; }

report() {
  local dir=$1 out=$2 gpu=$3 driver=$4 cudaver=$5 gtext=$6
  {
    echo "# Kiln CUDA checks, $(date -u '+%Y-%m-%d %H:%M UTC')"
    echo
    echo "- GPU: $gpu${driver:+; driver $driver}${cudaver:+; CUDA $cudaver}"
    echo "- host: $(uname -srm); $(sed -n 's/^model name[[:space:]]*: //p' /proc/cpuinfo | head -1)"
    echo "- prepared: $(sed -n 's/^date=//p' "$dir/manifest") by $(sed -n 's/^kiln=//p' "$dir/manifest") at $(sed -n 's/^commit=//p' "$dir/manifest") on $(sed -n 's/^cpu=//p' "$dir/manifest")"
    [ -f "$out/torch.json" ] && echo "- PyTorch: $(sed -n 's/^ *"\(torch\|cuda\|tf32_matmul\|capability\)": *\(.*\),$/\1 \2/p' "$out/torch.json" | tr -d '"' | paste -sd, - | sed 's/,/, /g')"
    echo "- result: $pass passed, $fail failed"
    echo
    echo "| check | result | detail |"
    echo "|---|---|---|"
    printf '%s\n' "${results[@]}"
    echo
    if [ -f "$out/ops.txt" ]; then
      echo "## Op cases, CUDA against the reference interpreter"
      echo
      echo "Every case of tests/test_cpu_ops.c on this GPU: $(grep -c '^PASS ' "$out/ops.txt") passed,"
      echo "$(grep -c '^FAIL ' "$out/ops.txt") failed (ops.txt has a line per case). An element passes within"
      echo "SCALE (1 + |want|) of the interpreter's value, SCALE being the test's own tolerance"
      echo "for the case (docs/gpu-checks.md)."
      if grep -q '^FAIL ' "$out/ops.txt"; then
        echo
        echo '```'
        grep '^FAIL ' "$out/ops.txt" | head -40
        echo '```'
      fi
      echo
    fi
    echo "## Losses, CUDA against CPU ($(sed -n 's/^steps=//p' "$dir/manifest") steps, seed $(sed -n 's/^seed=//p' "$dir/manifest"))"
    echo
    echo "Relative to the CPU's loss; the bound at step s is the last column."
    echo "Both are float32 and differ in summation order; under Adam the"
    echo "difference grows with the steps (docs/gpu-checks.md)."
    echo
    echo "| model | CPU step 1 | CUDA step 1 | CPU last | CUDA last | max rel. diff | at step | bound |"
    echo "|---|---|---|---|---|---|---|---|"
    printf '%s\n' "${losstab[@]}"
    echo
    echo "## Speed"
    echo
    echo "Kiln: \`PROG bench --train\` (median), \`PROG generate --tokens 127 --temperature 0\`"
    echo "(median of 3). PyTorch eager: bench/gpu.py on the same device (torch.json)."
    echo "Ratio: PyTorch's time over Kiln's (tokens/s: Kiln's over PyTorch's); above 1,"
    echo "Kiln is faster. The last column is the preparing machine's CPU, for scale."
    echo
    echo "| measure | Kiln | PyTorch | ratio | Kiln CPU (prepare) |"
    echo "|---|---|---|---|---|"
    printf '%s\n' "${speed[@]}"
    echo
    [ -n "$gtext" ] && echo "Generation: $gtext." && echo
    echo "## bf16 matmuls (--gpu-matmul=bf16)"
    echo
    echo "The same models built with \`--gpu-matmul=bf16\` (matmuls on bf16 tensor cores,"
    echo "f32 accumulation, f32 weights) against the same CPU losses, relative to the"
    echo "CPU's loss; the bound at step s is the last column (docs/gpu-checks.md)."
    echo
    echo "| model | CPU step 1 | bf16 step 1 | CPU last | bf16 last | max rel. diff | at step | bound |"
    echo "|---|---|---|---|---|---|---|---|"
    printf '%s\n' "${bf16tab[@]}"
    echo
    echo "Training steps against PyTorch eager under \`torch.autocast(dtype=torch.bfloat16)\`"
    echo "(bench/gpu.py --autocast bf16, torch_bf16.json)."
    echo
    echo "| measure | Kiln bf16 | PyTorch autocast bf16 | ratio |"
    echo "|---|---|---|---|"
    printf '%s\n' "${bf16speed[@]}"
    echo
    echo "Logs: MODEL.graphs1.csv and MODEL.graphs0.csv (train --log, graphs on and off),"
    echo "MODEL.bf16.csv (the bf16 program), ops.txt, *.out, *.info.txt, *.bench.txt,"
    echo "gpt.generate.*, torch.json, torch.err, torch_bf16.json and torch_bf16.err."
  } >"$out/report.md"
}

case ${1:-} in
prepare) shift; prepare "$@"; exit $? ;;
check) shift; check "$@"; exit $? ;;
-h | --help | help) usage ;;
*) usage >&2; exit 2 ;;
esac
