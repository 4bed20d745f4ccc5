#!/usr/bin/env python3
"""What the graph passes bring, per bundled model: kernel count, planned activation
memory against the naive sum (every intermediate in its own buffer), and the
inference and training step times, with the graph passes off (--graph-level=0:
no clean-up, no schedule, no fusion; memory planning still packs) and on (-O2, the
default). LLVM optimizes at -O3 both times, so the difference is the passes'.

usage: bench/passes.py [--kiln build/kiln] [--runs N] [--threads N] [--pairs N]
                       [--against OTHER_KILN]

Times are medians of --runs runs (kiln's own `bench`, which repeats calls to
last at least a millisecond each), one thread by default: on this shared machine
one-thread figures are the stable ones.

--pairs N times N alternating pairs of one GPT training step at -O0 and at -O2
and prints the ratios of their wall times and of their processes' CPU times
(user + system, startup and one warm-up step included): when other work shares
the cores, a process that waits for a core does not accumulate CPU time, so the
CPU-time ratios spread far less. --against OTHER_KILN pairs this kiln's -O2 step
with OTHER_KILN's the same way (a build before a change against one after it).
"""
import argparse
import math
import os
import resource
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


def cpu_seconds():
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


def paired(progs, pairs, threads):
    """Ratios progs[0] / progs[1] of one training step, measured back to back
    `pairs` times, the order alternating: on a shared machine a pair sees the same
    load, so the ratios spread far less than the times. Returns the wall-time
    ratios and the CPU-time ratios."""
    wall, cpu = [], []
    for i in range(pairs):
        order = (0, 1) if i % 2 == 0 else (1, 0)
        t, c = {}, {}
        for k in order:
            before = cpu_seconds()
            t[k] = bench(progs[k], 1, threads, True)
            c[k] = cpu_seconds() - before
        wall.append(t[0] / t[1])
        cpu.append(c[0] / c[1])
    return wall, cpu


def summary(r):
    """Median, range, geometric mean and the standard error of the mean log."""
    r = sorted(r)
    logs = [math.log(x) for x in r]
    se = statistics.stdev(logs) / math.sqrt(len(r)) if len(r) > 1 else float("nan")
    return (f"median {statistics.median(r):.3f}x (range {r[0]:.3f} to {r[-1]:.3f}), geometric "
            f"mean {math.exp(statistics.mean(logs)):.3f}x (standard error of its log {se:.3f}); "
            f"faster in {sum(x > 1 for x in r)} of {len(r)}")


def fmt_time(us):
    return f"{us / 1000:.3f} ms" if us >= 1000 else f"{us:.2f} us"


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--kiln", default=os.path.join(ROOT, "build", "kiln"))
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--pairs", type=int, default=9,
                    help="paired -O0/-O2 training steps of the GPT, alternating")
    ap.add_argument("--against", help="another kiln: pair its GPT -O2 step with this one's")
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
                progs = [os.path.join(tmp, f"{name}-O{level}") for level in (0, 2)]
                row["pairs"] = paired(progs, args.pairs, args.threads)
                if args.against:
                    other = os.path.join(tmp, f"{name}-other-O2")
                    run([args.against, "build", model, "-o", other])
                    row["against"] = paired([other, progs[1]], args.pairs, args.threads)
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
        for key, what in (("pairs", "-O0 over -O2"), ("against", "--against's -O2 over this -O2")):
            if key in row:
                wall, cpu = row[key]
                print(f"{row['model']}: {len(wall)} paired train steps, {what}, wall time: "
                      f"{summary(wall)}")
                print(f"{row['model']}: {len(cpu)} paired train steps, {what}, CPU time: "
                      f"{summary(cpu)}")


if __name__ == "__main__":
    main()
