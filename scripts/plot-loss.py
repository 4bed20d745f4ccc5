#!/usr/bin/python3
"""Draws training logs (the CSV that `PROG train --log FILE` writes) as an SVG
loss curve: the training loss per step, smoothed over a window, and the
validation loss where the log has it, against the steps. With --corpus, also the
unigram baseline: the cross-entropy of predicting every character by its
frequency in that text (a file, or a folder read as `train` reads one).

    scripts/plot-loss.py --out docs/models-loss.svg --corpus /usr/share/common-licenses \
        gpt=gpt.csv lstm=lstm.csv

Plain Python (no plotting library): the SVG is written as text.
"""
import argparse
import collections
import csv
import math
import os
import sys

W, H = 720, 420
LEFT, RIGHT, TOP, BOTTOM = 64, 150, 36, 48
COLORS = ["#1f77b4", "#d62728", "#2ca02c", "#9467bd"]


def read_log(path):
    steps, loss, vsteps, vloss = [], [], [], []
    with open(path) as f:
        for row in csv.DictReader(f):
            steps.append(int(row["step"]))
            loss.append(float(row["loss"]))
            if row.get("val_loss"):
                vsteps.append(int(row["step"]))
                vloss.append(float(row["val_loss"]))
    if not steps:
        sys.exit("%s: no rows" % path)
    return steps, loss, vsteps, vloss


def smooth(v, k):
    out, acc = [], collections.deque()
    total = 0.0
    for x in v:
        acc.append(x)
        total += x
        if len(acc) > k:
            total -= acc.popleft()
        out.append(total / len(acc))
    return out


def corpus_bytes(path):
    if os.path.isdir(path):  # as runtime/data.c: regular files in name order, no links
        names = sorted(n for n in os.listdir(path) if not n.startswith("."))
        files = [os.path.join(path, n) for n in names]
        files = [p for p in files if os.path.isfile(p) and not os.path.islink(p)]
    else:
        files = [path]
    return b"".join(open(p, "rb").read() for p in files)


def unigram_entropy(data):
    counts = collections.Counter(data)
    n = len(data)
    return -sum(c / n * math.log(c / n) for c in counts.values())


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", required=True)
    ap.add_argument("--corpus", help="text file or folder for the unigram baseline")
    ap.add_argument("--title", default="Training loss (nats per character)")
    ap.add_argument("--smooth", type=int, default=25, help="steps averaged per point")
    ap.add_argument("logs", nargs="+", help="LABEL=LOG.csv")
    a = ap.parse_args()
    runs = []
    for spec in a.logs:
        label, _, path = spec.partition("=")
        if not path:
            sys.exit("expected LABEL=LOG.csv, got %s" % spec)
        runs.append((label, read_log(path)))
    baseline = unigram_entropy(corpus_bytes(a.corpus)) if a.corpus else None
    xmax = max(max(r[1][0]) for r in runs)
    ys = [y for _, (s, l, vs, vl) in runs for y in smooth(l, a.smooth) + vl]
    ymax = max(ys + ([baseline] if baseline else []))
    ymax = math.ceil(ymax * 1.05 * 2) / 2
    ymin = 0.0
    pw, ph = W - LEFT - RIGHT, H - TOP - BOTTOM
    X = lambda s: LEFT + pw * s / xmax
    Y = lambda v: TOP + ph * (1 - (v - ymin) / (ymax - ymin))
    out = ['<svg xmlns="http://www.w3.org/2000/svg" width="%d" height="%d" '
           'font-family="sans-serif" font-size="12">' % (W, H),
           '<rect width="100%" height="100%" fill="white"/>',
           '<text x="%d" y="20" font-size="14">%s</text>' % (LEFT, a.title)]
    for i in range(6):  # grid and labels
        v = ymin + (ymax - ymin) * i / 5
        out.append('<line x1="%d" x2="%d" y1="%.1f" y2="%.1f" stroke="#ddd"/>' % (LEFT, LEFT + pw, Y(v), Y(v)))
        out.append('<text x="%d" y="%.1f" text-anchor="end">%.1f</text>' % (LEFT - 6, Y(v) + 4, v))
        s = xmax * i / 5
        out.append('<text x="%.1f" y="%d" text-anchor="middle">%d</text>' % (X(s), TOP + ph + 16, s))
    out.append('<text x="%d" y="%d" text-anchor="middle">step</text>' % (LEFT + pw / 2, H - 10))
    out.append('<rect x="%d" y="%d" width="%d" height="%d" fill="none" stroke="#888"/>' % (LEFT, TOP, pw, ph))
    legend_y = TOP + 10
    if baseline:
        out.append('<line x1="%d" x2="%d" y1="%.1f" y2="%.1f" stroke="#666" stroke-dasharray="6 4"/>'
                   % (LEFT, LEFT + pw, Y(baseline), Y(baseline)))
        out.append('<text x="%d" y="%d" fill="#666">unigram %.2f</text>' % (LEFT + pw + 8, legend_y, baseline))
        legend_y += 18
    for k, (label, (steps, loss, vsteps, vloss)) in enumerate(runs):
        c = COLORS[k % len(COLORS)]
        pts = " ".join("%.1f,%.1f" % (X(s), Y(v)) for s, v in zip(steps, smooth(loss, a.smooth)))
        out.append('<polyline fill="none" stroke="%s" stroke-width="1.5" points="%s"/>' % (c, pts))
        for s, v in zip(vsteps, vloss):
            out.append('<circle cx="%.1f" cy="%.1f" r="3" fill="white" stroke="%s"/>' % (X(s), Y(v), c))
        final = ("val %.2f" % vloss[-1]) if vloss else ("train %.2f" % loss[-1])
        out.append('<text x="%d" y="%d" fill="%s">%s: %s</text>' % (LEFT + pw + 8, legend_y, c, label, final))
        legend_y += 18
    out.append('<text x="%d" y="%d" fill="#444">line: training</text>' % (LEFT + pw + 8, legend_y + 8))
    out.append('<text x="%d" y="%d" fill="#444">circles: validation</text>' % (LEFT + pw + 8, legend_y + 26))
    out.append("</svg>")
    tmp = a.out + ".tmp"
    with open(tmp, "w") as f:
        f.write("\n".join(out) + "\n")
    os.replace(tmp, a.out)
    if baseline:
        print("unigram baseline of %s: %.4f nats per character" % (a.corpus, baseline))


if __name__ == "__main__":
    main()
