#!/usr/bin/env python3
"""Writes models/mlp.csv, the data of models/mlp.yaml.

100 rows, no header: 5 float features, then an integer label 0 or 1. The two
classes are Gaussian clusters with unit variance whose means lie 4.5 standard
deviations apart along a random direction. The best boundary is linear and
classifies about 98.8% of such points correctly (Phi(2.25)); logistic regression
gets 99% of these 100 rows. Classes are balanced and the rows come in shuffled order.

Deterministic: the seed fixes the bytes (Python 3.6 or later, standard library
only).

usage: gen-mlp-data.py [OUT]    (default: models/mlp.csv beside this folder)
"""
import math
import os
import random
import sys

SEED = 42
ROWS = 100
FEATURES = 5
SEPARATION = 4.5  # distance between the class means, in standard deviations


def unit_vector(rng, n):
    v = [rng.gauss(0.0, 1.0) for _ in range(n)]
    norm = math.sqrt(sum(x * x for x in v))
    return [x / norm for x in v]


def rows(rng):
    """Yields (features, label) pairs."""
    centre = [rng.uniform(-1.0, 1.0) for _ in range(FEATURES)]
    direction = unit_vector(rng, FEATURES)
    labels = [i % 2 for i in range(ROWS)]
    rng.shuffle(labels)
    for label in labels:
        offset = (SEPARATION / 2) * (1 if label else -1)
        x = [c + offset * d + rng.gauss(0.0, 1.0) for c, d in zip(centre, direction)]
        yield x, label


def fmt(v):
    v = round(v, 4)
    return f"{v or 0.0:.4f}"  # -0.0 is false: never "-0.0000"


def main(argv):
    here = os.path.dirname(os.path.abspath(__file__))
    out = argv[1] if len(argv) > 1 else os.path.join(here, "..", "models", "mlp.csv")
    rng = random.Random(SEED)
    lines = [",".join(fmt(v) for v in x) + f",{label}\n" for x, label in rows(rng)]
    with open(out, "w", newline="\n") as f:
        f.writelines(lines)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
