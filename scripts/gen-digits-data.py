#!/usr/bin/env python3
"""Writes models/digits.csv, the data of models/digits.yaml.

The rows come from the copy of the UCI optical handwritten digits set that
scikit-learn bundles (Debian package python3-sklearn): 1797 images of 8x8
pixels with integer values 0..16. Each output row, without a header, is the 64
pixel values in row-major order and then the digit 0..9, exactly as in the
bundled gzipped CSV; the script checks that shape as it copies.

Standard library only: it reads the file, it does not import scikit-learn.

usage: gen-digits-data.py [OUT [SOURCE]]
  OUT     default: models/digits.csv beside this folder
  SOURCE  default: found with `dpkg -L python3-sklearn`
"""
import gzip
import os
import subprocess
import sys

PIXELS = 64
ROWS = 1797
DEFAULT_SOURCE = "/usr/lib/python3/dist-packages/sklearn/datasets/data/digits.csv.gz"


def find_source():
    try:
        listing = subprocess.run(["dpkg", "-L", "python3-sklearn"], capture_output=True,
                                 text=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError):
        listing = ""
    for path in listing.splitlines():
        if path.endswith("/datasets/data/digits.csv.gz"):
            return path
    if os.path.exists(DEFAULT_SOURCE):
        return DEFAULT_SOURCE
    sys.exit("gen-digits-data: digits.csv.gz not found; install the Debian package "
             "python3-sklearn or pass its path")


def check_row(fields, lineno):
    """Returns the row as ints, or exits naming the line that is not 64 pixels + label."""
    if len(fields) != PIXELS + 1:
        sys.exit(f"gen-digits-data: line {lineno}: {len(fields)} fields, expected {PIXELS + 1}")
    try:
        values = [int(float(f)) for f in fields]
    except ValueError:
        sys.exit(f"gen-digits-data: line {lineno}: not a number")
    if any(not 0 <= v <= 16 for v in values[:PIXELS]) or not 0 <= values[PIXELS] <= 9:
        sys.exit(f"gen-digits-data: line {lineno}: value out of range")
    return values


def main(argv):
    here = os.path.dirname(os.path.abspath(__file__))
    out = argv[1] if len(argv) > 1 else os.path.join(here, "..", "models", "digits.csv")
    source = argv[2] if len(argv) > 2 else find_source()
    with gzip.open(source, "rt", encoding="ascii") as f:
        rows = [check_row(line.strip().split(","), i + 1) for i, line in enumerate(f) if line.strip()]
    if len(rows) != ROWS:
        sys.exit(f"gen-digits-data: {source}: {len(rows)} rows, expected {ROWS}")
    with open(out, "w", newline="\n") as f:
        f.writelines(",".join(map(str, r)) + "\n" for r in rows)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
