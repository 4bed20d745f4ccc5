#!/usr/bin/env bash
# Profiling end to end: --profile on infer, bench and train, the CSV table's FLOP
# and byte counts against counts made here from the shapes, the Chrome trace's
# format with one kernel event per launch, `peak` and its cache, `kiln profile`,
# and the library's profile_begin/profile_end.
# Usage: profile.sh PATH/TO/kiln SOURCE_DIR [EXTRA_LINK_FLAG]
set -u
kiln=$1
src=$2
extra=${3:-}
. "$(dirname "$0")/harness.sh"
cd "$tmp"
export XDG_CACHE_HOME="$tmp/cache"
py=/usr/bin/python3

# Two kernels of known shapes: a matmul (an output, so nothing fuses into it) and
# an elementwise chain mul+exp fused into one kernel.
cat >prof.yaml <<'YAML'
kiln: 1
name: prof
dims: {batch: 8}
inputs:
  x: {shape: [batch, 32]}
  y: {shape: [batch, 32]}
params:
  w: {shape: [32, 64], init: xavier}
graph:
  - matmul: {in: [x, w], name: mm}
  - mul: {in: [x, y], name: prod}
  - exp: {name: e}
outputs: [mm, e]
YAML
$py -c "
import numpy as np
np.savetxt('x.csv', np.random.rand(23, 32), delimiter=',')
np.savetxt('y.csv', np.random.rand(23, 32), delimiter=',')"
expect build 0 "$kiln" build prof.yaml -o prof

# peak measures, caches, and is then read back.
expect peak 0 ./prof peak
has peak-compute "$tmp/stdout" "GFLOP/s per core"
check peak-cache test -s cache/kiln/peak.json
expect peak-json 0 $py -c "
import json; p = json.load(open('cache/kiln/peak.json'))
assert p['gflops_core'] > 0 and p['gbs'] > 0 and p['gbs_core'] > 0, p"

# 23 rows in batches of 8: 3 forward calls, 2 kernels each.
expect infer 0 ./prof infer --input x=x.csv --input y=y.csv --threads 1 --profile \
  --profile-csv t.csv --profile-out t.json
has table-head "$tmp/stderr" "profile of prof: 3 forward"
has table-mm "$tmp/stderr" "mm matmul prof.yaml:10:5"
has table-e "$tmp/stderr" "e mul+exp prof.yaml:12:5"
expect counts 0 $py - <<'PY'
import csv
rows = {r['kernel']: r for r in csv.DictReader(open('t.csv'))}
B, K, N = 8, 32, 64
# matmul: a multiply and an add per inner step of each output element; it reads
# x and w and writes [B, N].
mm = rows['mm']
assert int(mm['flops']) == 2 * B * K * N, mm
assert int(mm['bytes']) == 4 * (B * K + K * N + B * N), mm
# mul then exp: one FLOP each per element; reads x and y, writes e.
e = rows['e']
assert e['ops'] == 'mul+exp', e
assert int(e['flops']) == 2 * B * K, e
assert int(e['bytes']) == 4 * 3 * B * K, e
assert int(mm['calls']) == 3 and int(e['calls']) == 3, rows
for r in rows.values():
    assert r['bound'] in ('flop', 'mem') and float(r['peak_pct']) > 0, r
PY
# The trace: Chrome's JSON object format, one "kernel" event per launch (2 kernels
# x 3 forward calls), each inside a step on the same thread.
cat >trace_check.py <<'PY'
import json, sys
path, kernels, steps, kind = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
t = json.load(open(path))
ev = t['traceEvents']
for e in ev:
    assert e['ph'] in ('X', 'M') and 'pid' in e and 'tid' in e and 'name' in e, e
    if e['ph'] == 'X':
        assert e['dur'] >= 0 and e['ts'] >= 0 and e['cat'] in ('step', 'kernel', 'chunk'), e
st = [e for e in ev if e.get('cat') == 'step']
ke = [e for e in ev if e.get('cat') == 'kernel']
assert len(st) == steps and all(e['name'] == kind for e in st), (len(st), steps)
assert len(ke) == kernels * steps, (len(ke), kernels, steps)
for k in ke:
    assert any(s['tid'] == k['tid'] and s['ts'] <= k['ts'] and
               k['ts'] + k['dur'] <= s['ts'] + s['dur'] + 1e-3 for s in st), k
assert t['otherData']['dropped_events'] == 0
PY
expect trace 0 $py trace_check.py t.json 2 3 forward

# Two threads: worker chunks get their own track; launches are still one event each.
expect infer-2 0 ./prof infer --input x=x.csv --input y=y.csv --threads 2 --profile-out t2.json \
  --peak-gflops 10 --peak-gbs 10
has peaks-given "$tmp/stderr" "10.0 GFLOP/s per core (given)"
expect trace-2 0 $py trace_check.py t2.json 2 3 forward
expect bad-peak 2 ./prof bench --profile --peak-gbs -1
has bad-peak-msg "$tmp/stderr" "--peak-gbs takes a positive number"

# bench profiles its timed runs only.
expect bench 0 ./prof bench --runs 2 --warmup 1 --threads 1 --profile
has bench-table "$tmp/stderr" "GFLOP/s"

# train: every optimizer step is a train_step with the same kernels.
expect build-mlp 0 "$kiln" build "$src/models/mlp.yaml" -o mlp
expect train 0 ./mlp train --steps 4 --quiet --threads 1 --profile-out tr.json --profile-csv tr.csv
expect train-trace 0 $py - <<'PY'
import json, csv
ev = json.load(open('tr.json'))['traceEvents']
st = sorted([e for e in ev if e.get('cat') == 'step' and e['name'] == 'train_step'], key=lambda e: e['ts'])
assert len(st) == 4, len(st)
per = [sum(1 for k in ev if k.get('cat') == 'kernel' and s['ts'] <= k['ts'] <= s['ts'] + s['dur'])
       for s in st]
assert len(set(per)) == 1 and per[0] > 0, per
rows = {r['kernel']: r for r in csv.DictReader(open('tr.csv'))}
assert int(rows['optimizer']['calls']) == 4, rows
# mlp.yaml does not clip, so nothing reads the gradient norm and it is not computed.
assert 'grad_norm' not in rows, rows
PY
# A model that clips computes it every step.
sed 's/seed: 42}/seed: 42, clip_grad_norm: 1.0}/' "$src/models/mlp.yaml" > mlpclip.yaml
expect clip-edit 0 grep -q 'clip_grad_norm: 1.0}' mlpclip.yaml
cp "$src/models/mlp.csv" .
expect build-mlpclip 0 "$kiln" build mlpclip.yaml -o mlpclip
expect train-clip 0 ./mlpclip train --steps 3 --quiet --threads 1 --profile-csv trc.csv --log trc.log
expect train-clip-rows 0 $py - <<'PY'
import csv
rows = {r['kernel']: r for r in csv.DictReader(open('trc.csv'))}
assert int(rows['grad_norm']['calls']) == 3, rows
log = list(csv.DictReader(open('trc.log')))
assert len(log) == 3 and all(float(r['grad_norm']) > 0 for r in log), log
PY

# kiln profile: build and run the default workload in one command.
expect kiln-profile 0 "$kiln" profile prof.yaml --steps 2 --threads 1
has kiln-profile-table "$tmp/stderr" "mm matmul prof.yaml:10:5"
expect kiln-profile-train 0 "$kiln" profile "$src/models/mlp.yaml" --steps 2 --threads 1
has kiln-profile-train-table "$tmp/stderr" "train_step"

# The library: profile_begin/profile_end around a forward call.
expect lib 0 "$kiln" build prof.yaml --emit=lib -o lib/prof
has lib-header lib/prof.h "int prof_profile_begin(prof_ctx *ctx, const char *csv, const char *trace);"
cat >use.c <<'C'
#include <stdio.h>
#include "prof.h"
int main(void) {
  static float x[PROF_X_SIZE], y[PROF_Y_SIZE], mm[PROF_MM_SIZE], e[PROF_E_SIZE];
  prof_ctx *c = prof_create(1);
  if (!c || prof_profile_begin(c, "lib.csv", NULL) != 0) return 1;
  for (int i = 0; i < 5; i++)
    if (prof_forward(c, x, y, mm, e) != 0) return 1;
  if (prof_profile_end(c) != 0) return fprintf(stderr, "%s\n", prof_last_error(c)), 1;
  prof_destroy(c);
  return 0;
}
C
expect lib-cc 0 cc -Wall -Wextra -Werror -o use use.c -Ilib $(PKG_CONFIG_PATH=lib pkg-config --cflags --libs prof) $extra
expect lib-run 0 ./use
expect lib-csv 0 $py -c "
import csv; rows = list(csv.DictReader(open('lib.csv')))
assert sorted(r['kernel'] for r in rows) == ['e', 'mm'] and all(r['calls'] == '5' for r in rows), rows"

finish profile
