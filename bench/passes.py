#!/usr/bin/env python3
"""What the graph passes bring, per bundled model: kernel count, planned activation
memory against the naive sum (every intermediate in its own buffer), and the
inference and training step times, with the graph passes off (--graph-level=0:
no clean-up, no schedule, no fusion; memory planning still packs) and on (-O2, the
default). LLVM optimizes at -O3 both times, so the difference is the passes'.

usage: bench/passes.py [--kiln build/kiln] [--runs N] [--threads N] [--markdown]

Times are medians of --runs runs (kiln's own `bench`, which repeats calls to
last at least a millisecond each), one thread by default: on this shared machine
one-thread figures are the stable ones.
"""
import argparse
import os
import re
import statistics
import subprocess
import sys
import tempfile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MODELS = ["mlp", "digits", "lstm", "gpt"]


def run(cmd):
    return subprocess.run(cmd, check=True, capture_output=True, text=True).stdout


def info(prog):
    text = run([prog, "info"])
    kernels = int(re.search(r"(\d+) kernels", text).group(1))
    mem = re.search(r"activations (.+?) planned \(every intermediate apart: (.+?)\)", text)
    return kernels, mem.group(1), mem.group(2)


def bench(prog, runs, threads, train):
    cmd = [prog, "bench", "--runs", str(runs), "--warmup", "1", "--threads", str(threads)]
    if train:
        cmd.append("--train")
    text = run(cmd)
    us = float(re.search(r"median ([0-9.]+) us", text).group(1))
    return us


def paired(tmp, name, pairs, threads):
    """The ratio -O0 / -O2 of one training step, measured back to back `pairs`
    times, the order alternating: on a shared machine a pair sees the same load,
    so the ratios spread far less than the times."""
    progs = [os.path.join(tmp, f"{name}-O{level}") for level in (0, 2)]
    ratios = []
    for i in range(pairs):
        order = (0, 1) if i % 2 == 0 else (1, 0)
        t = {}
        for k in order:
            t[k] = bench(progs[k], 1, threads, True)
        ratios.append(t[0] / t[1])
    return ratios


def fmt_time(us):
    return f"{us / 1000:.3f} ms" if us >= 1000 else f"{us:.2f} us"


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--kiln", default=os.path.join(ROOT, "build", "kiln"))
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--pairs", type=int, default=9,
                    help="paired -O0/-O2 training steps of the GPT, alternating")
    args = ap.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for name in MODELS:
            model = os.path.join(ROOT, "models", name + ".yaml")
            row = {"model": name}
            for level in (0, 2):
                prog = os.path.join(tmp, f"{name}-O{level}")
                run([args.kiln, "build", model, "-o", prog, f"--graph-level={level}"])
                k, planned, naive = info(prog)
                row[level] = {
                    "kernels": k, "planned": planned, "naive": naive,
                    "infer": bench(prog, args.runs, args.threads, False),
                    "train": bench(prog, max(2, args.runs // 2), args.threads, True),
                }
            if name == "gpt" and args.pairs > 0:
                row["pairs"] = paired(tmp, name, args.pairs, args.threads)
            rows.append(row)
            print(f"measured {name}", file=sys.stderr)
    print(f"threads {args.threads}, medians of {args.runs} runs (training: "
          f"{max(2, args.runs // 2)}); OPENBLAS_CORETYPE={os.environ.get('OPENBLAS_CORETYPE', '(unset)')}")
    print()
    print("| model | graph passes | kernels | activations planned | naive sum | forward | train step |")
    print("|---|---|---|---|---|---|---|")
    for row in rows:
        for level in (0, 2):
            r = row[level]
            print(f"| {row['model']} | {'-O2' if level else 'off'} | {r['kernels']} | {r['planned']} "
                  f"| {r['naive']} | {fmt_time(r['infer'])} | {fmt_time(r['train'])} |")
    print()
    for row in rows:
        f = row[0]["infer"] / row[2]["infer"]
        t = row[0]["train"] / row[2]["train"]
        print(f"{row['model']}: passes make the forward {f:.2f}x and the train step {t:.2f}x as fast")
        if "pairs" in row:
            r = sorted(row["pairs"])
            wins = sum(x > 1 for x in r)
            print(f"{row['model']}: {len(r)} paired train steps, -O0 time over -O2 time: median "
                  f"{statistics.median(r):.3f}x (range {r[0]:.3f} to {r[-1]:.3f}); -O2 faster in "
                  f"{wins} of {len(r)}")


if __name__ == "__main__":
    main()
