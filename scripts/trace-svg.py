#!/usr/bin/env python3
"""Renders a Kiln profile trace (--profile-out, Chrome trace event JSON) as an SVG
timeline: one lane per thread, steps on top of their kernels, kernels coloured by
their ops. Standard library only.

usage: trace-svg.py TRACE.json OUT.svg [--steps N] [--width PX]
"""
import argparse
import colorsys
import html
import json
import zlib

LANE, STEP_H, GAP, LEFT, TOP = 26, 14, 10, 80, 30


def colour(ops):
    """A stable colour per op list, so the same kernel kind looks alike everywhere."""
    h = (zlib.crc32(ops.encode()) % 360) / 360.0
    r, g, b = colorsys.hls_to_rgb(h, 0.6, 0.55)
    return "#%02x%02x%02x" % (int(r * 255), int(g * 255), int(b * 255))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("trace")
    ap.add_argument("out")
    ap.add_argument("--steps", type=int, default=1, help="steps to draw, from the first")
    ap.add_argument("--width", type=int, default=1200)
    a = ap.parse_args()
    ev = [e for e in json.load(open(a.trace))["traceEvents"] if e.get("ph") == "X"]
    steps = sorted((e for e in ev if e["cat"] == "step"), key=lambda e: e["ts"])[: a.steps]
    t0, t1 = steps[0]["ts"], steps[-1]["ts"] + steps[-1]["dur"]
    shown = [e for e in ev if e["ts"] < t1 and e["ts"] + e["dur"] > t0]
    tids = sorted({e["tid"] for e in shown})
    scale = (a.width - LEFT - 10) / (t1 - t0)
    height = TOP + len(tids) * (STEP_H + LANE + GAP) + 40
    out = ['<svg xmlns="http://www.w3.org/2000/svg" width="%d" height="%d" '
           'font-family="sans-serif" font-size="11">' % (a.width, height),
           '<rect width="100%" height="100%" fill="white"/>',
           '<text x="%d" y="18" font-size="13">%s: %d step(s), %.1f ms</text>'
           % (LEFT, html.escape(a.trace.split("/")[-1]), len(steps), (t1 - t0) / 1e3)]
    for i, tid in enumerate(tids):
        y = TOP + i * (STEP_H + LANE + GAP)
        out.append('<text x="4" y="%d">thread %d</text>' % (y + STEP_H + LANE // 2 + 4, tid))
        for e in shown:
            if e["tid"] != tid:
                continue
            x = LEFT + (max(e["ts"], t0) - t0) * scale
            w = max((min(e["ts"] + e["dur"], t1) - max(e["ts"], t0)) * scale, 0.5)
            if e["cat"] == "step":
                out.append('<rect x="%.2f" y="%d" width="%.2f" height="%d" fill="#888"/>'
                           % (x, y, w, STEP_H))
                out.append('<text x="%.2f" y="%d" fill="white">%s</text>'
                           % (x + 3, y + 11, html.escape(e["name"])))
                continue
            ops = e["name"].split(" ", 1)[-1]
            out.append('<rect x="%.2f" y="%d" width="%.2f" height="%d" fill="%s" stroke="white" '
                       'stroke-width="0.3"><title>%s (%.1f us)</title></rect>'
                       % (x, y + STEP_H, w, LANE, colour(ops), html.escape(e["name"]), e["dur"]))
            if w > 60:
                out.append('<text x="%.2f" y="%d">%s</text>'
                           % (x + 2, y + STEP_H + LANE // 2 + 4, html.escape(e["name"][: int(w / 6)])))
    # A time axis in milliseconds.
    y = height - 20
    span = (t1 - t0) / 1e3
    tick = 10 ** max(0, len(str(int(span))) - 1)
    k = 0
    while k * tick <= span:
        x = LEFT + k * tick * 1e3 * scale
        out.append('<line x1="%.1f" y1="%d" x2="%.1f" y2="%d" stroke="#444"/>' % (x, y - 4, x, y))
        out.append('<text x="%.1f" y="%d" text-anchor="middle">%g ms</text>' % (x, y + 12, k * tick))
        k += 1
    out.append("</svg>")
    open(a.out, "w").write("\n".join(out) + "\n")


if __name__ == "__main__":
    main()
