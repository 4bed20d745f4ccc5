#!/usr/bin/env bash
# Installs what bench/forward.py needs on Debian 12, skipping anything already
# present: Debian's PyTorch (1.13, CPU only) and NumPy for /usr/bin/python3.
# Idempotent: a second run installs nothing. Benches are not part of CI, so these
# packages stay out of scripts/install-deps.sh.
set -euo pipefail

pkgs=(
  python3 python3-numpy
  python3-torch        # the PyTorch reference (Debian's CPU build, 1.13)
  linux-perf           # optional: perf stat for docs/benchmarks.md
)

missing=()
for p in "${pkgs[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done

if [ ${#missing[@]} -eq 0 ]; then
  echo "bench/install-deps: all ${#pkgs[@]} packages present"
  exit 0
fi

echo "bench/install-deps: installing ${missing[*]}"
SUDO=""
[ "$(id -u)" -eq 0 ] || SUDO="sudo"
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -qq
$SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}"
