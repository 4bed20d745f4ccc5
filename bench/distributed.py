#!/usr/bin/env python3
"""Data-parallel training of the GPT (models/gpt.yaml, batch 16 per step): steps
per second on one process and on 2 MPI ranks of batch 8 each, the same 16 rows
per step, and an estimate of 8 and 64 ranks from measured costs.

usage: bench/distributed.py [--kiln build/kiln] [--steps N] [--runs N] [--markdown]

Every configuration runs --runs times for --steps steps; a run's speed is the
median of its logged per-step rates (the first step left out: it touches fresh
memory), and the table gives the median over runs. The machine has 2 cores, so
2 ranks of one thread are compared with one process of one and of two threads.

The estimate: a step on P ranks of 16 rows each costs the one-rank compute time
C (measured: one thread, batch 16) plus the ring all-reduce of the G gradient
bytes, 2 (P - 1) / P * G / B + 2 (P - 1) * a, of which the part after the last
gradient is ready is exposed. B and a are measured here between 2 ranks through
shared memory (bench/allreduce.c), and given for two networks as stated
assumptions (25 Gb/s Ethernet: 3 GB/s, 20 us; 200 Gb/s InfiniBand: 24 GB/s,
3 us). The sums start while the backward pass runs, but rank 0's measured wait
for them (which includes waiting for the other rank) is printed against the
all-reduce's time; where it is not smaller, the estimate counts the all-reduce
as fully exposed.
"""
import argparse
import os
import re
import statistics
import subprocess
import sys
import tempfile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ENV = dict(os.environ, OMPI_ALLOW_RUN_AS_ROOT="1", OMPI_ALLOW_RUN_AS_ROOT_CONFIRM="1")


def run(cmd, **kw):
    return subprocess.run(cmd, check=True, capture_output=True, text=True, env=ENV, **kw).stdout


def rate(log):
    """Median samples/s over the logged steps but the first."""
    rows = open(log).read().splitlines()[2:]
    return statistics.median(float(r.split(",")[5]) for r in rows)


def train(cmd, log, steps, extra=()):
    out = run(cmd + ["train", "--steps", str(steps), "--quiet", "--log", log, *extra])
    wait = re.search(r"rank 0 waited ([0-9.]+) s", out)
    return rate(log), float(wait.group(1)) / steps if wait else 0.0


def allreduce(tmp, floats):
    exe = os.path.join(tmp, "allreduce")
    if not os.path.exists(exe):
        run(["mpicc", "-O2", os.path.join(ROOT, "bench", "allreduce.c"), "-o", exe])
    out = run(["mpirun", "--oversubscribe", "-np", "2", exe, str(floats), "20"])
    return float(re.search(r": ([0-9.]+) us", out).group(1)) * 1e-6


def params(prog):
    text = run([prog, "info"])
    return int(re.search(r"parameters:\s+([0-9,]+)", text).group(1).replace(",", ""))


def ring(g_bytes, bw, alpha, p):
    """Seconds of a ring all-reduce of g_bytes over p ranks."""
    return 2 * (p - 1) / p * g_bytes / bw + 2 * (p - 1) * alpha


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--kiln", default=os.path.join(ROOT, "build", "kiln"))
    ap.add_argument("--steps", type=int, default=8)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--markdown", action="store_true")
    a = ap.parse_args()
    model = os.path.join(ROOT, "models", "gpt.yaml")
    with tempfile.TemporaryDirectory() as tmp:
        one = os.path.join(tmp, "gpt16")
        two = os.path.join(tmp, "gpt8")
        run([a.kiln, "build", model, "-o", one])
        run([a.kiln, "build", "--mpi", model, "--dim", "batch=8", "-o", two])
        log = os.path.join(tmp, "log.csv")
        mpirun = ["mpirun", "--oversubscribe", "-np", "2", two]
        configs = [
            ("1 process, 1 thread, batch 16", [one], ["--threads", "1"]),
            ("1 process, 2 threads, batch 16", [one], ["--threads", "2"]),
            ("2 ranks x 1 thread, batch 8 each", mpirun, []),
            ("2 ranks, sharded optimizer", mpirun, ["--shard-optimizer"]),
        ]
        res = {name: [] for name, _, _ in configs}
        waits = {name: [] for name, _, _ in configs}
        for _ in range(a.runs):  # interleaved: each round sees the same load
            for name, cmd, extra in configs:
                r, w = train(cmd, log, a.steps, extra)
                res[name].append(r)
                waits[name].append(w)
        n = params(one)
        g_bytes = 4 * n
        ar_full = allreduce(tmp, n)
        ar_one = allreduce(tmp, 1)
    base = statistics.median(res[configs[0][0]])
    print("GPT training step (batch 16 per step), median of %d runs of %d steps" % (a.runs, a.steps))
    print("| configuration | samples/s | steps/s | vs 1 thread | rank 0 waits per step |")
    print("|---|---:|---:|---:|---:|")
    for name, _, _ in configs:
        s = statistics.median(res[name])
        w = statistics.median(waits[name])
        print(f"| {name} | {s:.1f} | {s / 16:.3f} | {s / base:.2f}x | "
              f"{'%.0f ms' % (w * 1e3) if w else '-'} |")
    c = 16 / base
    bw = g_bytes / max(ar_full - ar_one, 1e-9)
    print(f"\nmeasured: compute {c * 1e3:.0f} ms per step of 16 rows (1 thread); gradient "
          f"{g_bytes / 1e6:.1f} MB ({n} parameters); all-reduce between 2 ranks here "
          f"{ar_full * 1e3:.1f} ms ({bw / 1e9:.2f} GB/s), latency {ar_one * 1e6:.1f} us")
    wait = statistics.median(waits[configs[2][0]])
    exposed = min(1.0, wait / ar_full)
    print(f"exposed: rank 0 waited {wait * 1e3:.1f} ms per step for the sums, {exposed * 100:.0f}% "
          f"of the all-reduce's time")
    print("\nestimate, 16 rows per rank: the all-reduce per step (exposed: %.0f%% of it) and "
          "the compute share of a step:" % (exposed * 100))
    print("| ranks | 25 Gb/s Ethernet (3 GB/s, 20 us) | 200 Gb/s InfiniBand (24 GB/s, 3 us) |")
    print("|---:|---:|---:|")
    for p in (2, 8, 64):
        cells = []
        for b, al in ((3e9, 20e-6), (24e9, 3e-6)):
            t = ring(g_bytes, b, al, p)
            cells.append(f"{t * 1e3:.1f} ms, {c / (c + exposed * t) * 100:.1f}%")
        print(f"| {p} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    sys.exit(main())
