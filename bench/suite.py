#!/usr/bin/python3
"""Every CPU benchmark of Kiln against its peer, in one run, as one table; writes
docs/performance.md and the chart docs/performance.svg.

usage: /usr/bin/python3 bench/suite.py [--kiln PATH] [--quick] [--out docs/performance.md]
                                       [--date YYYY-MM-DD] [--logs DIR] [--from-logs DIR]

It runs, as subprocesses (the scripts with this interpreter):

  kiln peak --measure   one core's f32 FMA peak, measured in this run
  bench/train.py        training steps against PyTorch (equivalence checked first)
  bench/forward.py      forward passes against PyTorch (equivalence checked first)
  bench/generate.py     GPT generation with the key/value cache against PyTorch
  onnxruntime           the MLP at batch 128 and the GPT forward pass in ONNX Runtime
                        (/opt/kiln-venv, scripts/install-deps.sh), timed by code here
  bench/jax_train.py    the MLP, GPT and LSTM training steps against JAX/XLA (same
                        venv, bench/install-deps.sh; equivalence checked first)

and reads their printed markdown tables (they have no machine-readable mode). The
figures are theirs: medians over repetitions taken back to back with the peer
(PyTorch; for JAX, Kiln's times are bench/jax_train.py's own), the ratio being the
median of the paired ratios (> 1: Kiln is faster). Kiln's GFLOP/s is
the scripts' own (the FLOP count of `kiln check`; for a training step 3 x the
forward pass), and its share of the peak is taken against threads x the one-core
peak. bench/gemm.py, memory.py and passes.py answer other questions (kernel tiles,
peak RSS, what the passes bring) and are not run here.

--quick runs 2 repetitions of about a third of the usual runs each: a check that
the suite works, not numbers to quote. --logs DIR keeps each script's full output
and the run's facts (meta.json); --from-logs DIR measures nothing and writes the
table, the page and the chart again from such a folder.
"""
import argparse
import html
import json
import math
import os
import re
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BENCH = os.path.join(ROOT, "bench")

# The rows of the table, in order: (key, label). main() says which script's table
# row each key is read from.
ROWS = [
    ("mlp784_train", "MLP 784-512-512-10 training step (Adam, batch 128)"),
    ("gpt_train", "GPT training step (AdamW + clip, batch 16 x 128)"),
    ("lstm_train", "LSTM training step (Adam + clip, batch 32 x 64)"),
    ("mlp_epoch", "seed MLP epoch (10 steps of batch 10)"),
    ("mlp_infer1", "seed MLP one-sample inference"),
    ("mlp784_infer", "MLP 784-512-512-10 inference, batch 128"),
    ("gpt_forward", "GPT forward, batch 16 x 128"),
    ("gpt_generate", "GPT generation, key/value cache (tokens/s)"),
    ("mlp784_infer_ort", "MLP 784-512-512-10 inference, batch 128, vs ONNX Runtime"),
    ("gpt_forward_ort", "GPT forward, batch 16 x 128, vs ONNX Runtime"),
    ("mlp784_train_jax", "MLP 784-512-512-10 training step, vs JAX/XLA"),
    ("gpt_train_jax", "GPT training step, vs JAX/XLA"),
    ("lstm_train_jax", "LSTM training step, vs JAX/XLA"),
]


def log(msg):
    print(msg, file=sys.stderr, flush=True)


def run_script(name, cmd, logs):
    """Runs one benchmark: its stdout (None if it failed) and its wall seconds."""
    shown = cmd[:2] + ["CODE"] + cmd[3:] if cmd[1:2] == ["-c"] else cmd
    log(f"suite: {' '.join(shown)}")
    t0 = time.perf_counter()
    p = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    dt = time.perf_counter() - t0
    if logs:
        with open(os.path.join(logs, name + ".txt"), "w") as f:
            f.write(p.stdout + "\n--- stderr ---\n" + p.stderr)
    if p.returncode != 0:
        log(f"suite: {name} FAILED ({p.returncode}) after {dt:.0f} s:\n{p.stderr[-2000:]}{p.stdout[-2000:]}")
        return None, dt
    log(f"suite: {name} done in {dt:.0f} s")
    return p.stdout, dt


def number(cell):
    """The leading figure of a table cell: '3,008 [2,370-3,330]' -> 3008.0."""
    m = re.match(r"\s*([0-9][0-9,]*\.?[0-9]*(?:e[-+]?[0-9]+)?)", cell)
    return float(m.group(1).replace(",", "")) if m else float("nan")


def tables(text):
    """The markdown tables of a script's output: [(title, [{column: cell}])], the
    title being the last non-blank line before the header."""
    out, lines, i, title = [], text.splitlines(), 0, ""
    while i < len(lines):
        line = lines[i].strip()
        if line.startswith("|") and i + 1 < len(lines) and lines[i + 1].strip().startswith("|---"):
            head = [c.strip() for c in line.strip("|").split("|")]
            rows, i = [], i + 2
            while i < len(lines) and lines[i].strip().startswith("|"):
                cells = [c.strip() for c in lines[i].strip().strip("|").split("|")]
                rows.append(dict(zip(head, cells)))
                i += 1
            out.append((title, rows))
            continue
        if line:
            title = line
        i += 1
    return out


def threads_of(title):
    m = re.match(r"(\d+) thread", title)
    return int(m.group(1)) if m else None


def pytorch_rows(text, picks):
    """Rows of train.py's or forward.py's tables: picks maps a key to (model name
    substring, batch); returns {(key, threads): row dict}."""
    found = {}
    for title, rows in tables(text or ""):
        t = threads_of(title)
        if t is None:
            continue
        need = ("model", "batch", "Kiln us", "PyTorch us", "PyTorch/Kiln", "best/best")
        if rows and not all(c in rows[0] for c in need):
            log(f"suite: a table under '{title}' lacks one of the columns {need}; skipped")
            continue
        for row in rows:
            for key, (name, batch) in picks.items():
                if name in row.get("model", "") and row.get("batch") == str(batch):
                    found[(key, t)] = dict(
                        kiln=number(row["Kiln us"]) * 1e-6, peer=number(row["PyTorch us"]) * 1e-6,
                        ratio=number(row["PyTorch/Kiln"]), bestratio=number(row["best/best"]),
                        gflops=number(row.get("Kiln GFLOP/s", "-")))
    return found


def generate_rows(text):
    found = {}
    for _, rows in tables(text or ""):
        for row in rows:
            if row.get("model") == "gpt" and "Kiln cached" in row:
                k, p = number(row["Kiln cached"]), number(row["PyTorch cached"])
                found[("gpt_generate", int(row["threads"]))] = dict(
                    kiln=1e3 / k, peer=1e3 / p, ratio=p / k, bestratio=float("nan"),
                    gflops=float("nan"), tokens_per_s=True, tokens=int(row["tokens"]))
    return found


# ONNX Runtime, timed here: bench/ has no script for it. The PyTorch modules of
# bench/forward.py (same architecture; PyTorch's own initialization, on which the
# time does not depend) are exported with torch.onnx.export and run by
# onnxruntime's CPU provider, intra-op threads 1 and 2, spinning off (as PyTorch
# gets OMP_WAIT_POLICY=PASSIVE and Kiln's pool sleeps). Timed as `kiln bench`
# times: per repetition, --runs runs of enough calls to last about 1 ms, the median.
ORT_CODE = r"""
import json, os, statistics, sys, time
sys.path.insert(0, sys.argv[1])
import forward as fw
import numpy as np, torch, onnxruntime as ort
work, reps, scale = sys.argv[2], int(sys.argv[3]), float(sys.argv[4])
rng = np.random.default_rng(1)
out = {"version": ort.__version__, "rows": []}
for case in fw.CASES:
    if (case.model, case.batch) not in (("bench/models/mlp784.yaml", 128), ("models/gpt.yaml", 16)):
        continue
    module = fw.torch_model(case).eval()
    x = fw.make_input(case, rng)
    x = x.astype(np.int64) if x.dtype == np.int32 else x
    path = os.path.join(work, "m%d.onnx" % case.batch)
    with torch.no_grad():
        torch.onnx.export(module, (torch.from_numpy(x),), path, input_names=["x"],
                          output_names=["y"], opset_version=14)
    runs = max(3, int(round(case.runs * scale)))
    for t in (1, 2):
        so = ort.SessionOptions()
        so.intra_op_num_threads, so.inter_op_num_threads = t, 1
        so.add_session_config_entry("session.intra_op.allow_spinning", "0")
        s = ort.InferenceSession(path, so, providers=["CPUExecutionProvider"])
        f = lambda: s.run(None, {"x": x})
        for _ in range(5):
            f()
        t0 = time.perf_counter(); f(); one = time.perf_counter() - t0
        n = max(1, int(1e-3 / max(one, 1e-9)))
        meds = []
        for _ in range(reps):
            per = []
            for _ in range(runs):
                t0 = time.perf_counter()
                for _ in range(n):
                    f()
                per.append((time.perf_counter() - t0) / n)
            meds.append(statistics.median(per))
        out["rows"].append(dict(batch=case.batch, model=case.model, threads=t,
                                us=statistics.median(meds) * 1e6, best=min(meds) * 1e6))
print(json.dumps(out))
"""
ORT_PY = "/opt/kiln-venv/bin/python3"


def ort_rows(text, forward_results):
    """The ONNX Runtime rows against Kiln's times from bench/forward.py's run."""
    found, version = {}, "?"
    for line in (text or "").splitlines():
        if line.startswith("{"):
            d = json.loads(line)
            version = d["version"]
            for r in d["rows"]:
                key = "mlp784_infer" if r["batch"] == 128 else "gpt_forward"
                k = forward_results.get((key, r["threads"]))
                if not k:
                    continue
                peer = r["us"] * 1e-6
                found[(key + "_ort", r["threads"])] = dict(
                    kiln=k["kiln"], peer=peer, ratio=peer / k["kiln"], bestratio=float("nan"),
                    gflops=k["gflops"], peer_name="ONNX Runtime")
    return found, version


def jax_rows(text):
    """bench/jax_train.py's tables: JAX against Kiln, both timed by that script."""
    found, picks = {}, {"mlp784_train_jax": "784-512-512-10", "gpt_train_jax": "gpt",
                        "lstm_train_jax": "lstm"}
    for title, rows in tables(text or ""):
        t = threads_of(title)
        if t is None:
            continue
        for row in rows:
            for key, name in picks.items():
                if name in row.get("model", "") and "JAX us" in row:
                    found[(key, t)] = dict(
                        kiln=number(row["Kiln us"]) * 1e-6, peer=number(row["JAX us"]) * 1e-6,
                        ratio=number(row["JAX/Kiln"]), bestratio=number(row["best/best"]),
                        gflops=number(row.get("Kiln GFLOP/s", "-")), peer_name="JAX")
    return found


def has_jax():
    """Whether the venv's Python can find JAX (without the seconds of importing it)."""
    return os.access(ORT_PY, os.X_OK) and subprocess.run(
        [ORT_PY, "-c", "import importlib.util, sys; sys.exit(not importlib.util.find_spec('jax'))"],
        capture_output=True).returncode == 0


def run_peak(kiln, logs):
    """`kiln peak --measure`'s output: measured now, not the cached figure."""
    p = subprocess.run([kiln, "peak", "--measure"], capture_output=True, text=True)
    if logs:
        with open(os.path.join(logs, "peak.txt"), "w") as f:
            f.write(p.stdout + "\n--- stderr ---\n" + p.stderr)
    if p.returncode != 0:
        log(f"suite: kiln peak --measure failed:\n{p.stderr}{p.stdout}")
    return p.stdout


def parse_peak(text):
    m = re.search(r"compute:\s+([0-9.]+) GFLOP/s per core \(f32 FMA, ([^)]*)\)", text or "")
    return (float(m.group(1)), m.group(2)) if m else (float("nan"), "?")


def machine():
    model, flags = "unknown", set()
    with open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name") and model == "unknown":
                model = line.split(":", 1)[1].strip()
            if line.startswith("flags") and not flags:
                flags = set(line.split(":", 1)[1].split())
    isa = []
    for fl in ("avx2", "fma", "avx512f", "avx512bw", "avx512vl", "avx512_bf16", "amx_tile"):
        isa.append(f"{fl} {'yes' if fl in flags else 'no'}")
    torch_v = subprocess.run([sys.executable, "-c", "import torch; print(torch.__version__)"],
                             capture_output=True, text=True).stdout.strip() or "not importable"
    return dict(cpu=model, isa=", ".join(isa), ncpu=os.cpu_count(),
                coretype=os.environ.get("OPENBLAS_CORETYPE", "unset"),
                omp=os.environ.get("OMP_WAIT_POLICY", "unset"), torch=torch_v,
                load=open("/proc/loadavg").read().split()[:3])


def build_type(kiln):
    """', RelWithDebInfo' from the CMake cache beside the binary, if there is one."""
    try:
        with open(os.path.join(os.path.dirname(kiln), "CMakeCache.txt")) as f:
            m = re.search(r"^CMAKE_BUILD_TYPE:\w+=(\S+)", f.read(), re.M)
        return ", " + m.group(1) if m else ""
    except OSError:
        return ""


def fmt_time(s):
    if not s == s:
        return "-"
    if s < 1e-3:
        return f"{s * 1e6:.3g} µs"
    if s < 1:
        return f"{s * 1e3:.3g} ms"
    return f"{s:.3g} s"


def fmt(v, spec="{:.2f}"):
    return "-" if v is None or v != v else spec.format(v)


def cells(key, t, r, peak_gflops):
    if r is None:
        return None
    if r.get("tokens_per_s"):
        kiln, peer = f"{r['kiln']:,.0f} tok/s", f"{r['peer']:,.0f} tok/s"
    else:
        kiln, peer = fmt_time(r["kiln"]), fmt_time(r["peer"])
    if r.get("peer_name"):
        peer += " (" + r["peer_name"] + ")"
    share = r["gflops"] / (t * peak_gflops) if peak_gflops == peak_gflops else float("nan")
    return [kiln, peer, fmt(r["ratio"]) + "x", fmt(r["bestratio"]) + ("x" if r["bestratio"] == r["bestratio"] else ""),
            str(t), fmt(r["gflops"], "{:.3g}"), fmt(share * 100, "{:.0f}%")]


HEAD = ("| benchmark | Kiln | peer | peer/Kiln | best/best | threads | Kiln GFLOP/s "
        "| share of peak |\n|---|---|---|---|---|---|---|---|")


def table(results, peak_gflops):
    lines = [HEAD]
    for key, label in ROWS:
        for t in (1, 2):
            c = cells(key, t, results.get((key, t)), peak_gflops)
            lines.append(f"| {label} | " + (" | ".join(c) if c else "not measured | | | | " + str(t) + " | |") + " |")
    return "\n".join(lines)


def goals(results, peak_gflops, m):
    """One line per performance goal, with what was measured and met / not met."""
    out = []

    def r(key, t=1):
        return results.get((key, t))

    def share(key, t=1):
        x = r(key, t)
        return x["gflops"] / (t * peak_gflops) if x and peak_gflops == peak_gflops else float("nan")

    def verdict(ok):
        return "not measured" if ok is None else ("**met**" if ok else "**not met**")

    for key in ("mlp784_train", "gpt_train"):
        x, x2 = r(key), r(key, 2)
        s = share(key)
        out.append((f"{dict(ROWS)[key]}: ≥ 80% of one core's FMA peak, 1 thread",
                    f"{fmt(s * 100, '{:.0f}%')} ({fmt(x and x['gflops'], '{:.3g}')} of {peak_gflops:.3g} GFLOP/s)",
                    verdict(None if s != s else s >= 0.80)))
        sp = x["kiln"] / x2["kiln"] if x and x2 else float("nan")
        out.append((f"{dict(ROWS)[key]}: 2 threads ≥ 1.6x 1 thread (second core idle)",
                    f"{fmt(sp)}x (on a shared machine: the second core was not known to be idle)",
                    verdict(None if sp != sp else sp >= 1.6)))
        # PyTorch's own share of the peak, from its time and the same FLOPs: 2.5
        # times its speed needs 2.5 times that share, which may exceed the peak.
        need = ""
        if x and s == s:
            torch_share = s / x["ratio"]
            need = (f"; PyTorch ran at {torch_share * 100:.0f}% of the peak, so 2.5x would take "
                    f"{2.5 * torch_share * 100:.0f}%")
        out.append((f"{dict(ROWS)[key]}: ≥ 2.5x PyTorch as the environment gives it, 1 thread",
                    f"{fmt(x and x['ratio'])}x{need}", verdict(None if not x else x["ratio"] >= 2.5)))
    x, y = r("mlp784_train"), r("gpt_train")
    if m["coretype"] == "unset" and x and y:
        # With OPENBLAS_CORETYPE unset OpenBLAS runs its kernels for this CPU: the
        # PyTorch measured is PyTorch at its best BLAS setting.
        out.append(("Training steps: ahead of PyTorch at its best BLAS setting, 1 thread",
                    f"MLP {fmt(x['ratio'])}x, GPT {fmt(y['ratio'])}x (`OPENBLAS_CORETYPE` unset: "
                    "OpenBLAS's own kernels for this CPU)",
                    verdict(x["ratio"] > 1 and y["ratio"] > 1)))
    else:
        out.append(("Training steps: ahead of PyTorch at its best BLAS setting",
                    f"PyTorch ran with OPENBLAS_CORETYPE={m['coretype']} only", verdict(None)))
    x, y = r("mlp784_train_jax"), r("gpt_train_jax")
    if x and y:
        out.append(("Training steps (matmul-dominated: MLP, GPT): ahead of JAX/XLA, 1 thread",
                    f"MLP {fmt(x['ratio'])}x, GPT {fmt(y['ratio'])}x (JAX {m['jax_version']})",
                    verdict(x["ratio"] > 1 and y["ratio"] > 1)))
    else:
        out.append(("Training steps (matmul-dominated: MLP, GPT): ahead of JAX/XLA, 1 thread",
                    "not measured" if m.get("jax_version") else "JAX is not installed here",
                    verdict(None)))
    for key in ("mlp784_infer", "gpt_forward"):
        x, s = r(key), share(key)
        out.append((f"{dict(ROWS)[key]}: ≥ 85% of the FMA peak, 1 thread",
                    f"{fmt(s * 100, '{:.0f}%')}", verdict(None if s != s else s >= 0.85)))
        out.append((f"{dict(ROWS)[key]}: ahead of PyTorch, 1 thread", f"{fmt(x and x['ratio'])}x",
                    verdict(None if not x else x["ratio"] > 1.0)))
    for key in ("mlp784_infer_ort", "gpt_forward_ort"):
        x = r(key)
        out.append((f"{dict(ROWS)[key]}: ahead of ONNX Runtime, 1 thread",
                    f"{fmt(x and x['ratio'])}x", verdict(None if not x else x["ratio"] > 1.0)))
    for key, goal in (("mlp_epoch", 30), ("mlp_infer1", 30), ("gpt_generate", 2), ("lstm_train", 1.5)):
        x = r(key)
        out.append((f"{dict(ROWS)[key]}: ≥ {goal}x PyTorch, 1 thread", f"{fmt(x and x['ratio'])}x",
                    verdict(None if not x else x["ratio"] >= goal)))
    return "| goal | measured | |\n|---|---|---|\n" + "\n".join(
        f"| {g} | {m} | {v} |" for g, m, v in out)


def svg(results, path):
    """Horizontal bars of peer/Kiln per benchmark on a log axis, one bar per
    thread count, growing from the line at 1.0 (right: Kiln faster)."""
    items = [(label, t, results[(key, t)]["ratio"]) for key, label in ROWS for t in (1, 2)
             if (key, t) in results and results[(key, t)]["ratio"] == results[(key, t)]["ratio"]]
    lo = min([0.1] + [v for _, _, v in items])
    hi = max([10.0] + [v for _, _, v in items])
    lo, hi = 10 ** math.floor(math.log10(lo)), 10 ** math.ceil(math.log10(hi))
    left, width, bar, gap, top = 400, 430, 11, 8, 40
    height = top + len(ROWS) * (2 * bar + gap) + 50

    def x(v):
        return left + width * (math.log10(v) - math.log10(lo)) / (math.log10(hi) - math.log10(lo))

    s = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{left + width + 60}" height="{height}" '
         'font-family="sans-serif" font-size="12">',
         '<rect width="100%" height="100%" fill="white"/>',
         f'<text x="{left}" y="20" font-weight="bold">peer time / Kiln time, log scale '
         '(right of 1: Kiln faster)</text>']
    d = lo
    while d <= hi * 1.0001:
        s.append(f'<line x1="{x(d):.1f}" y1="{top - 6}" x2="{x(d):.1f}" y2="{height - 40}" '
                 'stroke="#ddd"/>')
        s.append(f'<text x="{x(d):.1f}" y="{height - 25}" text-anchor="middle">{d:g}</text>')
        d *= 10
    for i, (key, label) in enumerate(ROWS):
        y0 = top + i * (2 * bar + gap)
        s.append(f'<text x="{left - 8}" y="{y0 + bar + 4}" text-anchor="end">'
                 f'{html.escape(label)}</text>')
        for t, color in ((1, "#3a6ea5"), (2, "#9dbbe0")):
            r = results.get((key, t))
            y = y0 + (t - 1) * bar
            if not r or r["ratio"] != r["ratio"]:
                continue
            a, b = sorted((x(1.0), x(r["ratio"])))
            s.append(f'<rect x="{a:.1f}" y="{y}" width="{max(b - a, 1):.1f}" height="{bar - 1}" '
                     f'fill="{color}"><title>{html.escape(label)}, {t} thread(s): '
                     f'{r["ratio"]:.2f}x</title></rect>')
            tx, anchor = (b + 4, "start") if r["ratio"] >= 1 else (a - 4, "end")
            s.append(f'<text x="{tx:.1f}" y="{y + bar - 2}" font-size="10" '
                     f'text-anchor="{anchor}">{r["ratio"]:.2f}</text>')
    s.append(f'<line x1="{x(1.0):.1f}" y1="{top - 6}" x2="{x(1.0):.1f}" y2="{height - 40}" '
             'stroke="black" stroke-width="1.5"/>')
    s.append(f'<rect x="{left}" y="{height - 15}" width="10" height="10" fill="#3a6ea5"/>'
             f'<text x="{left + 14}" y="{height - 6}">1 thread</text>'
             f'<rect x="{left + 90}" y="{height - 15}" width="10" height="10" fill="#9dbbe0"/>'
             f'<text x="{left + 104}" y="{height - 6}">2 threads</text>')
    s.append("</svg>\n")
    with open(path, "w") as f:
        f.write("\n".join(s))


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--kiln", default=os.path.join(ROOT, "build", "kiln"))
    ap.add_argument("--quick", action="store_true", help="fewer repetitions: checks the suite runs")
    ap.add_argument("--out", default=os.path.join(ROOT, "docs", "performance.md"))
    ap.add_argument("--date", default=time.strftime("%Y-%m-%d"))
    ap.add_argument("--logs", help="keep every script's full output in this folder")
    ap.add_argument("--from-logs", metavar="DIR",
                    help="measure nothing: rebuild the table and documents from a run's --logs")
    a = ap.parse_args()
    kiln = os.path.abspath(a.kiln)
    if not a.from_logs and not os.access(kiln, os.X_OK):
        sys.exit(f"suite.py: no kiln at {kiln}; build it (see README.md) or pass --kiln")
    if a.logs:
        os.makedirs(a.logs, exist_ok=True)
    py = sys.executable
    reps = ["--reps", "2", "--runs-scale", "0.3"] if a.quick else []
    parsers = {
        "train": lambda out: pytorch_rows(out, {"mlp784_train": ("784-512-512-10", 128),
                                                "gpt_train": ("gpt", 16),
                                                "lstm_train": ("lstm", 32),
                                                "mlp_epoch": ("5-16-2", 10)}),
        "forward": lambda out: pytorch_rows(out, {"mlp_infer1": ("5-16-2", 1),
                                                  "mlp784_infer": ("784-512-512-10", 128),
                                                  "gpt_forward": ("gpt", 16)}),
        "generate": generate_rows,
    }
    results, status, outs = {}, {}, {}
    if a.from_logs:
        with open(os.path.join(a.from_logs, "meta.json")) as f:
            meta = json.load(f)
        m, status, elapsed, a.quick = meta["machine"], meta["status"], meta["elapsed"], meta["quick"]
        kiln, version, commit = meta["kiln"], meta["version"], meta["commit"]
        for name in list(parsers) + ["onnxruntime", "jax", "peak"]:
            path = os.path.join(a.from_logs, name + ".txt")
            if os.path.exists(path):
                outs[name] = open(path).read().split("\n--- stderr ---\n")[0]
        pk, isa = parse_peak(outs.get("peak", ""))
    else:
        t_start = time.perf_counter()
        m = machine()
        outs["peak"] = run_peak(kiln, a.logs)
        pk, isa = parse_peak(outs["peak"])
        log(f"suite: peak {pk} GFLOP/s per core ({isa})")
        for name, script, extra in (("train", "train.py", reps), ("forward", "forward.py", reps),
                                    ("generate", "generate.py",
                                     ["--only", "gpt", "--reps", "2" if a.quick else "5"])):
            out, dt = run_script(name, [py, os.path.join(BENCH, script), "--kiln", kiln] + extra,
                                 a.logs)
            outs[name] = out
            status[name] = [out is not None, dt]
        if os.access(ORT_PY, os.X_OK):
            with tempfile.TemporaryDirectory(prefix="kiln-suite-ort-") as work:
                out, dt = run_script("onnxruntime", [ORT_PY, "-c", ORT_CODE, BENCH, work,
                                                     "2" if a.quick else "5",
                                                     "0.3" if a.quick else "1"], a.logs)
            outs["onnxruntime"] = out
            status["onnxruntime"] = [out is not None, dt]
        if has_jax():
            out, dt = run_script("jax", [ORT_PY, os.path.join(BENCH, "jax_train.py"), "--kiln", kiln]
                                 + reps, a.logs)
            outs["jax"] = out
            status["jax"] = [out is not None, dt]
        m["load_end"] = open("/proc/loadavg").read().split()[:3]
        elapsed = time.perf_counter() - t_start
        version = subprocess.run([kiln, "version"], capture_output=True, text=True).stdout.strip()
        commit = subprocess.run(["git", "-C", ROOT, "rev-parse", "--short", "HEAD"],
                                capture_output=True, text=True).stdout.strip() or "?"
        if a.logs:
            with open(os.path.join(a.logs, "meta.json"), "w") as f:
                json.dump(dict(machine=m, status=status, elapsed=elapsed, quick=a.quick,
                               kiln=kiln, version=version, commit=commit), f, indent=1)
    for name, parse in parsers.items():
        found = parse(outs.get(name)) if outs.get(name) else {}
        results.update(found)
        if name in status:
            status[name] = status[name][:2] + [len(found)]
    m["ort"] = "not installed (" + ORT_PY + ": see scripts/install-deps.sh)"
    if "onnxruntime" in status:
        found, v = ort_rows(outs.get("onnxruntime"), results)
        m["ort"] = (f"{v} (PyPI, CPU provider): bench/forward.py's PyTorch modules exported with "
                    "`torch.onnx.export`, opset 14, intra-op spinning off")
        results.update(found)
        status["onnxruntime"] = status["onnxruntime"][:2] + [len(found)]
    m["jax"] = "not installed (" + ORT_PY + ": see bench/install-deps.sh)"
    m["jax_version"] = None
    if "jax" in status:
        found = jax_rows(outs.get("jax"))
        v = re.search(r"^jax (\S+), jaxlib (\S+)", outs.get("jax") or "", re.M)
        m["jax_version"] = v.group(1) if v else "?"
        m["jax"] = (f"{m['jax_version']} (PyPI, jaxlib {v.group(2) if v else '?'}, CPU): "
                    "[bench/jax_train.py](../bench/jax_train.py), the whole step in one `jax.jit`; "
                    "N threads: a process whose CPU affinity is N CPUs (as `taskset`), Kiln's "
                    "runs in it too, timed back to back with JAX's")
        results.update(found)
        status["jax"] = status["jax"][:2] + [len(found)]

    tab = table(results, pk)
    print(f"\nFMA peak, one core: {pk:.1f} GFLOP/s ({isa}); {m['cpu']}; "
          f"OPENBLAS_CORETYPE={m['coretype']}; torch {m['torch']}\n")
    print(tab)
    print()
    for name, (ok, dt, n) in status.items():
        print(f"{name}: {'ok' if ok else 'FAILED'}, {dt:.0f} s, {n} rows read")
    print(f"suite: {elapsed / 60:.1f} min")

    out_dir = os.path.dirname(os.path.abspath(a.out))
    svg_path = os.path.join(out_dir, "performance.svg")
    svg(results, svg_path)
    quick = ("\n> **Quick run** (`--quick`: 2 repetitions of about a third of the usual runs). "
             "The figures show the shape of the results; run without `--quick` for the ones "
             "to quote.\n" if a.quick else "")
    failed = [n for n, (ok, _, _) in status.items() if not ok]
    isa_note = ""
    if "avx512f no" in m["isa"]:
        isa_note = ("\nThe goals' reference figures were taken on an AVX-512 machine whose environment set "
                    "`OPENBLAS_CORETYPE=Haswell`. This one has AVX2 and no AVX-512, so its peak is "
                    "half as many FLOPs per cycle, and with `OPENBLAS_CORETYPE` "
                    + ("unset OpenBLAS picks its own kernels for the CPU: PyTorch \"as the environment "
                       "gives it\" is here also PyTorch at its best BLAS setting.\n"
                       if m["coretype"] == "unset" else f"set to {m['coretype']}.\n"))
    doc = f"""# Performance: Kiln against its peers on the CPU

Measured {a.date}, by one command:

```sh
/usr/bin/python3 bench/suite.py{' --quick' if a.quick else ''}   # --kiln PATH, --out FILE, --logs DIR
```

It measures this machine's FMA peak (`kiln peak --measure`), runs
[bench/train.py](../bench/train.py), [bench/forward.py](../bench/forward.py) and
[bench/generate.py](../bench/generate.py) (the first two check that Kiln and PyTorch
compute the same thing before timing them), times ONNX Runtime on the batched
forward passes, runs [bench/jax_train.py](../bench/jax_train.py) (JAX/XLA on the
training steps, checked against Kiln and PyTorch first), and gathers the results
into the table below. It took
{elapsed / 60:.1f} minutes. How each script measures is in its docstring and in
[benchmarks.md](benchmarks.md).
{quick}
## Machine

| | |
|---|---|
| CPU | {m['cpu']}, {m['ncpu']} CPUs (shared: load average {' '.join(m['load'])} at the start, {' '.join(m['load_end'])} at the end) |
| instruction sets (`/proc/cpuinfo`) | {m['isa']} |
| FMA peak, one core, measured in this run | **{pk:.1f} GFLOP/s** (`kiln peak`: {isa}) |
| `OPENBLAS_CORETYPE` | {m['coretype']} |
| ONNX Runtime | {m['ort']} |
| JAX | {m['jax']} |
| PyTorch | {m['torch']} (Debian's python3-torch; its GEMMs are OpenBLAS's); `OMP_WAIT_POLICY=PASSIVE` for it unless set (it was {m['omp']}) |
| Kiln | {version}, commit {commit} (with the working tree's changes, if any), `{os.path.relpath(kiln, ROOT) if kiln.startswith(ROOT) else kiln}`{build_type(kiln)} |
{isa_note}
## Results

peer/Kiln is the peer's time over Kiln's (above 1: Kiln is faster). For the PyTorch
rows of training and inference it is the median of the ratios of measurements taken
back to back; for generation, the ratio of the two medians of 5 decodes (127 tokens
from a one-character prompt, the whole loop timed), taken one side after the other;
for ONNX Runtime, its median over Kiln's median from bench/forward.py's run, a
minute or two earlier; for JAX, the median of the paired ratios of JAX's and
Kiln's step times, both taken by bench/jax_train.py, whose Kiln runs share JAX's
CPU affinity. best/best is the ratio of each side's fastest run, the least
disturbed by other load. The seed MLP's epoch is 10 of Kiln's `bench --train` steps
(bench/train.py's log also times Kiln's own `train` loop). Kiln GFLOP/s is the
scripts' (forward FLOPs of `kiln check`, times 3 for a training step); its share of
the peak is taken against threads x the one-core peak. The two-thread rows depend on
what else ran on the machine's other core.

{tab}

![peer/Kiln per benchmark](performance.svg)

## Performance goals against this run

{goals(results, pk, m)}

Profiles for the goals not met are not part of this suite; [benchmarks.md](benchmarks.md)
has the `perf` breakdowns of the GPT, the MLPs and the LSTM.
"""
    if failed:
        doc += f"\n**Failed in this run:** {', '.join(failed)} (see the suite's standard error).\n"
    with open(a.out, "w") as f:
        f.write(doc)
    log(f"suite: wrote {a.out} and {svg_path}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
