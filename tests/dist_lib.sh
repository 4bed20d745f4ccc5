# What the tests of data-parallel training share (distributed.sh, cuda_dist.sh):
# Open MPI's settings for this machine, `mpi N PROG...`, and the comparisons of two
# runs. Sourced after harness.sh; close needs $py (Python with NumPy).
# mpirun refuses root without these; CI runs as root.
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
# Containers may forbid the cross-process reads of shared-memory transport; copies
# always work.
export OMPI_MCA_btl_vader_single_copy_mechanism=none
# Open MPI keeps allocations until exit that LeakSanitizer would report as ours.
export ASAN_OPTIONS=${ASAN_OPTIONS:-}:detect_leaks=0
mpi() { timeout 120 mpirun --oversubscribe -np "$@"; }

# close NAME A B TOL: every tensor of safetensors files A and B within TOL.
close() {
  if "$py" - "$2" "$3" "$4" <<'EOF'; then pass=$((pass + 1)); else fail=$((fail + 1)); echo "FAIL $1"; fi
import json, struct, sys
import numpy as np
def load(path):
    with open(path, "rb") as f:
        n = struct.unpack("<Q", f.read(8))[0]
        h = json.loads(f.read(n))
        data = f.read()
    return {k: np.frombuffer(data[v["data_offsets"][0]:v["data_offsets"][1]], "<f4")
            for k, v in h.items() if k != "__metadata__"}
a, b, tol = load(sys.argv[1]), load(sys.argv[2]), float(sys.argv[3])
assert a.keys() == b.keys(), (sorted(a), sorted(b))
worst = max(a, key=lambda k: np.abs(a[k] - b[k]).max())
d = float(np.abs(a[worst] - b[worst]).max())
print(f"  {sys.argv[1]} vs {sys.argv[2]}: largest difference {d:.3g} ({worst}), tolerance {tol:g}")
sys.exit(0 if d <= tol else 1)
EOF
}
# The logged losses (column 3) of two runs agree to rel relative.
losses() {
  if paste -d, <(cut -d, -f3 "$2") <(cut -d, -f3 "$3") | awk -F, -v r="$4" \
      'NR > 1 { d = $1 - $2; if (d < 0) d = -d; if (d > r * ($1 < 0 ? -$1 : $1)) bad = 1 }
       END { exit bad }'; then pass=$((pass + 1)); else fail=$((fail + 1)); echo "FAIL $1"; fi
}
