#!/usr/bin/python3
"""Forward-pass latency of Kiln against PyTorch on the same models and weights.

For every case (a model file and a batch size) this script

  1. builds the model with `kiln build --dim batch=B` and reads its parameter
     names and shapes from `kiln check --print-ir`;
  2. draws random weights with NumPy, writes them as safetensors for Kiln and
     loads the very same arrays into an idiomatic PyTorch module (nn.Linear,
     nn.LayerNorm, nn.Embedding, ...; dense weights are stored [in, out] by Kiln
     and transposed for nn.Linear), checking both sides name the same tensors;
  3. checks equivalence: runs `infer` on an .npy input with 1 and 2 threads and
     compares its CSV output with PyTorch's float32 output (and both with a
     float64 run of the same module), failing on a mismatch;
  4. times the forward pass at 1 and 2 threads, interleaving Kiln and PyTorch
     repetitions so that load from other users of the machine hits both alike.

Timing. Kiln: `PROG bench --weights W --runs R --warmup U --threads N`, which
reports the median of R runs, each run being enough back-to-back calls to last
about 1 ms. PyTorch: the same procedure in this process, in eval mode under
torch.inference_mode(). Each of those is one repetition; the table shows the
median over the repetitions and, in brackets, their min-max spread.

Threads. PyTorch gets torch.set_num_threads(N). Debian's PyTorch does its matrix
products in OpenBLAS (libblas.so.3 -> openblas-pthread), whose thread count
torch.set_num_threads does not reach, so the script also calls
openblas_set_num_threads(N) in this process; without it a "1-thread" PyTorch
run would do its GEMMs on every core. Kiln sets OpenBLAS to 1 thread and
spreads its GEMM blocks over its own pool of N threads, whose idle workers
sleep on a condition variable.

OpenMP. PyTorch's intra-op threads are libgomp's, which by default spin for a
while after each parallel region. On the small shared machine this was written
on, that made PyTorch 10-25x slower with 2 threads than with one: the spinning
workers compete for the CPUs with the threads that have work.
The script therefore sets OMP_WAIT_POLICY=PASSIVE before importing torch (so
PyTorch's workers sleep when idle, as Kiln's do) unless OMP_WAIT_POLICY is
already set; run with OMP_WAIT_POLICY=ACTIVE to see the default behaviour.
Kiln runs with the environment as it was given, and so does everything else:
OPENBLAS_CORETYPE and the like are printed, never changed.

Run it with Debian's Python (bench/install-deps.sh installs what it needs):

    /usr/bin/python3 bench/forward.py [--kiln build/kiln] [--reps 5]
"""
import argparse
import collections
import copy
import ctypes
import ctypes.util
import json
import math
import os
import platform
import re
import statistics
import subprocess
import sys
import tempfile
import time

ORIGINAL_ENV = dict(os.environ)
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # before torch loads libgomp

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


#
# Cases
#
# name, model file, batch, timed runs per repetition. The GPT at batch 16 takes
# a few hundred ms per call, hence fewer runs.
Case = collections.namedtuple("Case", "name model batch runs")
CASES = [
    Case("mlp 5-16-2", "models/mlp.yaml", 1, 30),
    Case("mlp 5-16-2", "models/mlp.yaml", 100, 30),
    Case("mlp 784-512-512-10", "bench/models/mlp784.yaml", 1, 30),
    Case("mlp 784-512-512-10", "bench/models/mlp784.yaml", 128, 30),
    Case("gpt 4x256, ctx 128", "models/gpt.yaml", 1, 20),
    Case("gpt 4x256, ctx 128", "models/gpt.yaml", 16, 7),
]


#
# PyTorch models. Module and parameter names mirror Kiln's parameter names, so
# state_dict keys and safetensors names are the same strings.
#
class MLP(nn.Sequential):
    """Linear layers with activations, named like the Kiln model's dense nodes."""

    def __init__(self, layers):
        # layers: [(name, in, out, activation module or None)]
        mods = collections.OrderedDict()
        for name, n_in, n_out, act in layers:
            mods[name] = nn.Linear(n_in, n_out)
            if act is not None:
                mods[name + "_act"] = act
        super().__init__(mods)


class CausalSelfAttention(nn.Module):
    """nanoGPT's attention: one Linear makes q|k|v, heads split the width."""

    def __init__(self, d, heads, ctx):
        super().__init__()
        self.d, self.heads = d, heads
        self.qkv = nn.Linear(d, 3 * d)
        self.proj = nn.Linear(d, d)
        mask = torch.tril(torch.ones(ctx, ctx, dtype=torch.bool))
        self.register_buffer("mask", mask.view(1, 1, ctx, ctx), persistent=False)

    def forward(self, x):  # x: (B, T, D)
        B, T, D = x.shape
        dh = D // self.heads
        q, k, v = self.qkv(x).split(D, dim=2)
        q = q.view(B, T, self.heads, dh).transpose(1, 2)  # (B, H, T, dh)
        k = k.view(B, T, self.heads, dh).transpose(1, 2)
        v = v.view(B, T, self.heads, dh).transpose(1, 2)
        att = (q @ k.transpose(-2, -1)) * (1.0 / math.sqrt(dh))  # (B, H, T, T)
        att = att.masked_fill(~self.mask[:, :, :T, :T], float("-inf"))
        att = F.softmax(att, dim=-1)
        y = (att @ v).transpose(1, 2).contiguous().view(B, T, D)
        return self.proj(y)


class Block(nn.Module):
    """Pre-norm transformer layer, as the `layer` block of models/gpt.yaml."""

    def __init__(self, d, heads, ctx):
        super().__init__()
        self.ln1 = nn.LayerNorm(d, eps=1e-5)
        self.attn = CausalSelfAttention(d, heads, ctx)
        self.ln2 = nn.LayerNorm(d, eps=1e-5)
        self.fc = nn.Linear(d, 4 * d)
        self.act = nn.GELU(approximate="tanh")
        self.proj = nn.Linear(4 * d, d)

    def forward(self, x):
        x = x + self.attn(self.ln1(x))
        return x + self.proj(self.act(self.fc(self.ln2(x))))


class GPT(nn.Module):
    def __init__(self, vocab=96, ctx=128, d=256, heads=4, layers=4):
        super().__init__()
        self.wte = nn.Embedding(vocab, d)
        self.wpe = nn.Embedding(ctx, d)
        self.h = nn.ModuleList(Block(d, heads, ctx) for _ in range(layers))
        self.ln_f = nn.LayerNorm(d, eps=1e-5)
        self.logits = nn.Linear(d, vocab, bias=False)

    def forward(self, idx):  # idx: (B, T) int64
        pos = torch.arange(idx.shape[1], device=idx.device)
        x = self.wte(idx) + self.wpe(pos)
        for block in self.h:
            x = block(x)
        return self.logits(self.ln_f(x))


def torch_model(case):
    if case.model == "models/mlp.yaml":
        return MLP([("dense_0", 5, 16, nn.Sigmoid()), ("logits", 16, 2, None)])
    if case.model == "bench/models/mlp784.yaml":
        return MLP([("fc1", 784, 512, nn.ReLU()), ("fc2", 512, 512, nn.ReLU()),
                    ("logits", 512, 10, None)])
    return GPT()


# Tensors whose Kiln layout is the transpose of PyTorch's: nn.Linear keeps its
# weight [out, in], Kiln's dense keeps [in, out]. Embedding tables are [V, D] in both.
def is_linear_weight(module, name):
    owner = module.get_submodule(name.rsplit(".", 1)[0])
    return isinstance(owner, nn.Linear) and name.endswith(".weight")


#
# Inputs
#
def make_input(case, rng):
    if case.model == "models/gpt.yaml":
        return rng.integers(0, 96, size=(case.batch, 128), dtype=np.int32)
    features = 5 if case.model == "models/mlp.yaml" else 784
    return rng.standard_normal((case.batch, features)).astype(np.float32)


def torch_input(x):
    return torch.from_numpy(x.astype(np.int64) if x.dtype == np.int32 else x)


#
# Weights: names from Kiln's IR, values from NumPy, files in safetensors
#
PARAM_RE = re.compile(r"^\s*%(\S+): f32\[([0-9,]*)\] = param\b")


def kiln_params(kiln, model, batch):
    """{name: shape} of every parameter, in IR order, from `kiln check --print-ir`."""
    out = run([kiln, "check", "--print-ir", model, "--dim", f"batch={batch}"])
    params = collections.OrderedDict()
    for line in out.splitlines():
        m = PARAM_RE.match(line)
        if m:
            params[m.group(1)] = tuple(int(s) for s in m.group(2).split(",") if s)
    if not params:
        sys.exit(f"forward.py: no parameters found in `kiln check --print-ir {model}`")
    return params


def random_weights(params, rng):
    """Weights of the scale a trained net has, non-trivial everywhere: matrices
    N(0, 1/fan_in), biases N(0, 0.1), layernorm gains 1 + N(0, 0.1)."""
    w = {}
    for name, shape in params.items():
        if len(shape) >= 2:
            a = rng.standard_normal(shape) / math.sqrt(shape[0])
        elif name.endswith(".weight"):
            a = 1.0 + 0.1 * rng.standard_normal(shape)
        else:
            a = 0.1 * rng.standard_normal(shape)
        w[name] = a.astype(np.float32)
    return w


def write_safetensors(path, tensors):
    """A minimal safetensors writer: 8-byte little-endian header length, the JSON
    header (padded with spaces to a multiple of 8), then the raw f32 data."""
    header, blobs, at = {}, [], 0
    for name, a in tensors.items():
        data = np.ascontiguousarray(a, dtype="<f4").tobytes()
        header[name] = {"dtype": "F32", "shape": list(a.shape), "data_offsets": [at, at + len(data)]}
        blobs.append(data)
        at += len(data)
    text = json.dumps(header, separators=(",", ":")).encode()
    text += b" " * (-len(text) % 8)
    with open(path, "wb") as f:
        f.write(len(text).to_bytes(8, "little"))
        f.write(text)
        for b in blobs:
            f.write(b)


def load_into_torch(module, weights):
    """Loads Kiln-named arrays into the module; the names must match exactly."""
    expected = set(module.state_dict().keys())
    if expected != set(weights):
        sys.exit("forward.py: parameter names differ between Kiln and PyTorch:\n"
                 f"  only in Kiln:    {sorted(set(weights) - expected)}\n"
                 f"  only in PyTorch: {sorted(expected - set(weights))}")
    state = {}
    for name, a in weights.items():
        t = torch.from_numpy(a.copy())
        state[name] = t.t().contiguous() if is_linear_weight(module, name) else t
    module.load_state_dict(state, strict=True)
    return module.eval()


#
# Equivalence
#
# Kiln against PyTorch float32: |kiln - torch| <= ATOL + RTOL * |torch|, element by
# element. Both are float32 computations of the same maths in different orders, so
# the differences are rounding: on these models ~1e-6 relative, as far from float64
# as PyTorch itself is (the check prints both). The bound leaves a factor of 20 or
# more of slack and still catches small semantic slips: on the GPT, an erf GELU
# instead of the tanh one moves outputs by 7.6e-4, layernorm eps 1e-6 instead of
# 1e-5 by 1.6e-3.
RTOL, ATOL = 1e-4, 1e-4


def check_equivalence(case, exe, wfile, module, x, workdir):
    xfile = os.path.join(workdir, "x.npy")
    np.save(xfile, x)
    with torch.inference_mode():
        ref32 = module(torch_input(x)).numpy().reshape(case.batch, -1)
        x64 = torch_input(x)
        x64 = x64.double() if x64.is_floating_point() else x64
        ref64 = copy.deepcopy(module).double()(x64).numpy().reshape(case.batch, -1)
    scale = float(np.abs(ref64).max())
    results = []
    for threads in (1, 2):
        out = run([exe, "infer", "--weights", wfile, "--input", xfile, "--threads", str(threads)])
        got = np.loadtxt(out.splitlines(), delimiter=",", dtype=np.float64, ndmin=2)
        if got.shape != ref32.shape:
            sys.exit(f"forward.py: {case.name} batch {case.batch}: kiln infer printed "
                     f"{got.shape}, PyTorch gives {ref32.shape}")
        diff = np.abs(got - ref32)
        bad = diff > ATOL + RTOL * np.abs(ref32)
        results.append((threads, float(diff.max()), float(np.abs(got - ref64).max())))
        if bad.any():
            r, c = np.argwhere(bad)[0]
            sys.exit(f"forward.py: MISMATCH {case.name} batch {case.batch}, {threads} threads: "
                     f"{int(bad.sum())} of {bad.size} outputs differ beyond "
                     f"atol={ATOL} rtol={RTOL}; first at row {r} col {c}: kiln {got[r, c]:.9g}, "
                     f"torch {ref32[r, c]:.9g}, float64 {ref64[r, c]:.9g}; max |diff| "
                     f"{diff.max():.3g}")
    torch_err = float(np.abs(ref32 - ref64).max())
    return scale, torch_err, results


#
# Timing
#
def time_torch(module, x, threads, runs, warmup):
    """One repetition, as `kiln bench` does it: warm up, pick a call count that
    lasts ~1 ms, then the mean time per call of each run: (median, min) over the
    runs, in us."""
    torch.set_num_threads(threads)
    openblas_set_threads(threads)
    xt = torch_input(x)
    with torch.inference_mode():
        for _ in range(warmup):
            module(xt)
        t0 = time.perf_counter()
        module(xt)
        one = time.perf_counter() - t0
        reps = 1 if one > 1e-3 else int(1e-3 / max(one, 1e-8)) + 1
        times = []
        for _ in range(runs):
            t0 = time.perf_counter()
            for _ in range(reps):
                module(xt)
            times.append((time.perf_counter() - t0) / reps)
    return statistics.median(times) * 1e6, min(times) * 1e6


BENCH_RE = re.compile(r"forward: median ([0-9.]+) us, min ([0-9.]+) us")


def time_kiln(exe, wfile, threads, runs, warmup):
    # PyTorch's OpenBLAS workers spin for a while after their last GEMM; let
    # them go to sleep so they do not take a CPU from Kiln.
    time.sleep(0.2)
    out = run([exe, "bench", "--weights", wfile, "--runs", str(runs), "--warmup", str(warmup),
               "--threads", str(threads)], env=ORIGINAL_ENV)
    m = BENCH_RE.search(out)
    if not m:
        sys.exit(f"forward.py: cannot read the median from `{exe} bench`:\n{out}")
    return float(m.group(1)), float(m.group(2))


_openblas = None


def openblas_set_threads(n):
    if _openblas is not None:
        _openblas.openblas_set_num_threads(n)


def load_openblas():
    """The OpenBLAS this process's PyTorch uses (Debian: libblas.so.3 is OpenBLAS)."""
    global _openblas
    for name in ("libopenblas.so.0", ctypes.util.find_library("openblas")):
        if not name:
            continue
        try:
            lib = ctypes.CDLL(name)
            lib.openblas_get_corename.restype = ctypes.c_char_p
            lib.openblas_get_config.restype = ctypes.c_char_p
            _openblas = lib
            return lib
        except (OSError, AttributeError):
            pass
    return None


#
# Plumbing
#
def run(cmd, env=ORIGINAL_ENV):
    p = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    if p.returncode != 0:
        sys.exit(f"forward.py: `{' '.join(cmd)}` failed ({p.returncode}):\n{p.stderr}{p.stdout}")
    return p.stdout


def cpu_model():
    with open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown"


def loadavg():
    with open("/proc/loadavg") as f:
        return " ".join(f.read().split()[:3])


def fmt_us(v):
    return f"{v:.3g}" if v < 10 else f"{v:,.0f}"


def spread(v):
    return f"{fmt_us(statistics.median(v))} [{fmt_us(min(v))}-{fmt_us(max(v))}]"


def compile_time(kiln, workdir, n=3):
    """Wall and CPU (user + system) seconds of each `kiln build models/gpt.yaml`,
    the linker included. CPU time is what the build costs on an idle machine."""
    wall, cpu = [], []
    for _ in range(n):
        r0 = os.times()
        t0 = time.perf_counter()
        run([kiln, "build", os.path.join(ROOT, "models/gpt.yaml"), "-o",
             os.path.join(workdir, "gpt_compile")])
        wall.append(time.perf_counter() - t0)
        r1 = os.times()
        cpu.append(r1.children_user - r0.children_user + r1.children_system - r0.children_system)
    return wall, cpu


FLOP_RE = re.compile(r"^forward: ([0-9.]+) ([KMGT]?)FLOP per pass", re.M)


def forward_mflop(kiln, model, batch):
    """Kiln's FLOP count of one forward pass, from `kiln check`'s summary. (`PROG
    info` counts the whole training step when the model has a `train` section.)"""
    m = FLOP_RE.search(run([kiln, "check", model, "--dim", f"batch={batch}"]))
    if not m:
        return float("nan")
    return float(m.group(1)) * {"": 1e-6, "K": 1e-3, "M": 1, "G": 1e3, "T": 1e6}[m.group(2)]


def print_table(title, rows, t, reps):
    print(title)
    print("| model | batch | runs x reps | Kiln us | PyTorch us | PyTorch/Kiln | Kiln best "
          "| PyTorch best | best/best | Kiln GFLOP/s |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for case, runs, mflop, k, p in rows:
        km, pm = [m for m, _ in k[t]], [m for m, _ in p[t]]
        kb, pb = min(b for _, b in k[t]), min(b for _, b in p[t])
        paired = statistics.median(pt / kt for pt, kt in zip(pm, km))
        gflops = f"{mflop / statistics.median(km) * 1e3:.3g}" if mflop > 0 else "-"
        print(f"| {case.name} | {case.batch} | {runs} x {reps} | {spread(km)} | {spread(pm)} "
              f"| {paired:.2f} | {fmt_us(kb)} | {fmt_us(pb)} | {pb / kb:.2f} | {gflops} |")
    print()


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--kiln", default=os.path.join(ROOT, "build", "kiln"), help="kiln binary")
    ap.add_argument("--reps", type=int, default=5, help="repetitions per measurement")
    ap.add_argument("--warmup", type=int, default=5, help="warm-up calls per repetition")
    ap.add_argument("--threads", default="1,2", help="thread counts, comma-separated")
    ap.add_argument("--runs-scale", type=float, default=1.0,
                    help="multiply every case's runs per repetition by this")
    ap.add_argument("--only", default="", help="run only cases whose model path contains this")
    ap.add_argument("--check-only", action="store_true", help="check equivalence, time nothing")
    ap.add_argument("--seed", type=int, default=1)
    args = ap.parse_args()
    threads = [int(t) for t in args.threads.split(",")]
    if not os.access(args.kiln, os.X_OK):
        sys.exit(f"forward.py: no kiln at {args.kiln}; build it (see README.md) or pass --kiln")

    ob = load_openblas()
    version = run([args.kiln, "version"]).strip()
    print(f"machine: {os.cpu_count()} CPUs ({len(os.sched_getaffinity(0))} usable), {cpu_model()}; "
          f"load average {loadavg()}")
    env = " ".join(f"{v}={ORIGINAL_ENV.get(v, '(unset)')}" for v in
                   ("OPENBLAS_CORETYPE", "OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "OMP_WAIT_POLICY"))
    print(f"environment (as given, used for Kiln): {env}")
    print(f"PyTorch process: OMP_WAIT_POLICY={os.environ['OMP_WAIT_POLICY']}; threads set per "
          f"measurement with torch.set_num_threads(N) and openblas_set_num_threads(N)")
    if ob is not None:
        print(f"openblas: {ob.openblas_get_config().decode()}, core {ob.openblas_get_corename().decode()}")
    else:
        print("openblas: not found in this process; PyTorch's BLAS threads are not controlled")
    print(f"kiln: {version} ({args.kiln}); torch {torch.__version__}, numpy {np.__version__}, "
          f"python {platform.python_version()}")
    print(f"equivalence: |kiln - torch| <= {ATOL} + {RTOL}*|torch| elementwise, float32 outputs, "
          f"kiln infer at 1 and 2 threads")
    print(f"timing: {args.reps} repetitions per measurement, Kiln's and PyTorch's taken back to "
          f"back in alternating order; a repetition = {args.warmup} warm-up calls, then R runs "
          f"(R per row below) of ~1 ms worth of calls each, reduced to their median")
    print()

    cases = [c for c in CASES if args.only in c.model]
    rng = np.random.default_rng(args.seed)
    rows = []
    with tempfile.TemporaryDirectory(prefix="kiln-bench-") as work:
        for case in cases:
            tag = f"{case.name}, batch {case.batch}"
            model = os.path.join(ROOT, case.model)
            exe = os.path.join(work, f"m{len(rows)}")
            run([args.kiln, "build", model, "-o", exe, "--dim", f"batch={case.batch}"])
            params = kiln_params(args.kiln, model, case.batch)
            weights = random_weights(params, rng)
            wfile = os.path.join(work, f"w{len(rows)}.safetensors")
            write_safetensors(wfile, weights)
            module = load_into_torch(torch_model(case), weights)
            x = make_input(case, rng)
            scale, terr, res = check_equivalence(case, exe, wfile, module, x, work)
            errs = ", ".join(f"{t} thr: max|kiln-torch| {d:.2g}, max|kiln-f64| {e:.2g}"
                             for t, d, e in res)
            print(f"ok  {tag}: outputs up to {scale:.3g}; {errs}; max|torch-f64| {terr:.2g}",
                  flush=True)
            if args.check_only:
                continue
            runs = max(3, int(round(case.runs * args.runs_scale)))
            mflop = forward_mflop(args.kiln, model, case.batch)
            k = {t: [] for t in threads}
            p = {t: [] for t in threads}
            for rep in range(args.reps):
                for t in threads:  # alternate which of the pair goes first
                    if rep % 2 == 0:
                        k[t].append(time_kiln(exe, wfile, t, runs, args.warmup))
                    p[t].append(time_torch(module, x, t, runs, args.warmup))
                    if rep % 2 == 1:
                        k[t].append(time_kiln(exe, wfile, t, runs, args.warmup))
            rows.append((case, runs, mflop, k, p))

        if args.check_only:
            return
        print()
        print("Kiln us, PyTorch us: median of the repetitions' medians [their min-max], us per "
              "forward call. PyTorch/Kiln: median over repetitions of the ratio of the two "
              "measurements taken back to back (> 1: Kiln faster). Kiln best, PyTorch best: the "
              "fastest single run of all repetitions, the least disturbed by other load; "
              "best/best: their ratio. Kiln GFLOP/s: Kiln's forward FLOP count (`kiln check`) "
              "over its median time.")
        print()
        for t in threads:
            title = f"{t} thread{'s' if t > 1 else ''}"
            if t == 1:
                title += " (the stable numbers)"
            else:
                title += " (depends on what else runs on this machine)"
            print_table(title, rows, t, args.reps)
        print(f"load average at the end: {loadavg()}")
        wall, cpu = compile_time(args.kiln, work)
        print(f"compile time, kiln build models/gpt.yaml (batch 16), {len(wall)} builds: median "
              f"{statistics.median(wall):.2f} s wall ({', '.join(f'{t:.2f}' for t in wall)}), "
              f"{statistics.median(cpu):.2f} s CPU; goal < 2 s")


if __name__ == "__main__":
    main()
