#!/usr/bin/env bash
# Installs what the benches need on Debian 12, skipping anything already present:
# Debian's PyTorch (1.13, CPU only) and NumPy for /usr/bin/python3, and JAX from
# PyPI for bench/jax_train.py.
# Idempotent: a second run installs nothing. Benches are not part of CI, so these
# packages stay out of scripts/install-deps.sh.
set -euo pipefail

pkgs=(
  python3 python3-numpy
  python3-torch        # the PyTorch reference (Debian's CPU build, 1.13)
  linux-perf           # optional: perf stat for docs/benchmarks.md
)

. "$(dirname "$0")/../scripts/apt-install.sh"
apt_install bench/install-deps "${pkgs[@]}"

# JAX, the other peer of bench/train.py's training steps (bench/jax_train.py), is on
# PyPI only: CPU jaxlib wheels, into the virtual environment of ONNX Runtime
# (scripts/install-deps.sh makes it; it sees Debian's numpy and torch). Pinned:
# 0.4.38 is the last JAX that accepts Debian 12's numpy 1.24; a newer one makes
# pip put numpy 2 into the environment, ahead of the numpy that Debian's torch
# 1.13 and onnx were built against. numpy is named at the version Debian's
# python3 has, so that pip keeps it (and picks ml_dtypes and scipy to match).
venv=${KILN_ONNX_VENV:-/opt/kiln-venv}
jax=(jax==0.4.38 jaxlib==0.4.38)
if "$venv/bin/python3" -c "import jax" 2>/dev/null; then
  echo "bench/install-deps: $("$venv/bin/python3" -c 'import jax; print("jax", jax.__version__)') present in $venv"
else
  np=$(/usr/bin/python3 -c "import numpy; print(numpy.__version__)")
  echo "bench/install-deps: installing ${jax[*]} into $venv (numpy kept at $np)"
  { [ -x "$venv/bin/python3" ] || $SUDO /usr/bin/python3 -m venv --system-site-packages "$venv"; } &&
    $SUDO "$venv/bin/pip" install -q --disable-pip-version-check "${jax[@]}" "numpy==$np" ||
    echo "bench/install-deps: warning: no JAX; bench/suite.py will mark it not installed" >&2
fi
