#!/opt/kiln-venv/bin/python3
"""One training step of Kiln against JAX/XLA on bench/train.py's models, weights and batches.

JAX comes from PyPI (CPU jaxlib wheels) into the virtual environment that
bench/install-deps.sh fills; that environment also sees Debian's NumPy and
PyTorch, so this script imports bench/train.py and bench/forward.py and shares
their cases, weights, batches and reference step. For the MLP 784-512-512-10
(Adam, batch 128), the GPT of models/gpt.yaml (AdamW, gradient clipping, the
warmed-up cosine schedule; batch 16 x 128) and the LSTM of models/lstm.yaml
(Adam, clipping; batch 32 x 64) it

  1. builds the model with `kiln build`, draws the weights and the batch from the
     same NumPy stream as bench/train.py (so both scripts use the same arrays);
  2. writes the training step the way a JAX user writes it: the model as a pure
     function of a dict of arrays named as Kiln's parameters (Kiln's [in, out]
     layout), jax.value_and_grad of the mean cross-entropy, the global-norm clip
     and Adam/AdamW (PyTorch's update rule, by hand in a few lines) in one
     jax.jit'ed function whose parameters and optimizer state are donated; the
     LSTM runs its time steps with lax.scan after one input projection;
  3. checks equivalence, before any timing: from those weights and one batch it
     takes one JAX step, one Kiln step (`PROG train --resume INIT --steps 1`,
     as bench/train.py does) and one PyTorch step in float32 and float64
     (bench/train.py's torch_step), and compares JAX with Kiln and with PyTorch:
     the loss, the gradient norm, the learning rate, both Adam moments and every
     updated weight, with bench/train.py's tolerances (listed at check_against).
     The GPT is checked at its own base rate and at 3e-2, where AdamW's decay
     is large. The script exits non-zero on a mismatch;
  4. times a step: JAX as bench/train.py times PyTorch (warm-up calls after the
     compiling one, then runs of enough steps to last about 1 ms, the median run;
     block_until_ready at the end of each run), Kiln with `PROG bench --train`,
     the two back to back in alternating order.

Threads. XLA's CPU client runs a compiled step on pools of threads sized by the
number of CPUs the process may run on when the client starts; JAX 0.4.38 has no
flag for it (--xla_cpu_multi_thread_eigen=false leaves those pools as they are),
and beside a pool of N intra-op threads a further thread at times runs (at 2
CPUs, three were running or ready to run in 10% of samples of their states).
So each thread count N runs in its own process whose CPU affinity is N CPUs,
set before JAX starts and kept: every thread of JAX, and the Kiln programs the
process starts (--threads N), run on the same N CPUs, as with `taskset`. After
timing, the script checks every thread's affinity and prints the CPU time over
the wall time of JAX's runs (at most N). XLA_FLAGS is passed through as given.

    /opt/kiln-venv/bin/python3 bench/jax_train.py [--kiln build/kiln] [--reps 5] [--only gpt] [--check-only]
"""
import argparse
import json
import math
import os
import statistics
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
KEYS = ("mlp784", "gpt", "lstm")


def cli():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--kiln", default=os.path.join(os.path.dirname(HERE), "build", "kiln"),
                    help="kiln binary")
    ap.add_argument("--reps", type=int, default=5, help="repetitions per measurement")
    ap.add_argument("--threads", default="1,2", help="thread counts, comma-separated")
    ap.add_argument("--runs-scale", type=float, default=1.0,
                    help="multiply every case's runs per repetition by this")
    ap.add_argument("--only", default="", help="run only the case with this key (mlp784, gpt, lstm)")
    ap.add_argument("--check-only", action="store_true", help="check equivalence, time nothing")
    ap.add_argument("--seed", type=int, default=1, help="bench/train.py's --seed")
    ap.add_argument("--worker", type=int, default=0, help=argparse.SUPPRESS)
    return ap.parse_args()


ARGS = cli()
ALLOWED = sorted(os.sched_getaffinity(0))
if ARGS.worker:
    # Before anything starts threads: JAX's CPU client sizes its pools from the
    # affinity, and every thread inherits it.
    if ARGS.worker > len(ALLOWED):
        sys.exit(f"jax_train.py: {ARGS.worker} threads asked, {len(ALLOWED)} CPUs usable")
    os.sched_setaffinity(0, ALLOWED[:ARGS.worker])
    sys.path.insert(0, HERE)
    import train as tr  # noqa: E402  (imports forward.py, torch and numpy first)
    fw = tr.fw
    import numpy as np  # noqa: E402
    import jax  # noqa: E402
    import jax.numpy as jnp  # noqa: E402


#
# The models, as functions of a dict of Kiln-named arrays (dense weights [in, out])
#
def mlp784_logits(p, x):  # x: (B, 784)
    h = jax.nn.relu(x @ p["fc1.weight"] + p["fc1.bias"])
    h = jax.nn.relu(h @ p["fc2.weight"] + p["fc2.bias"])
    return h @ p["logits.weight"] + p["logits.bias"]  # (B, 10)


def layernorm(x, w, b, eps=1e-5):
    mu = x.mean(-1, keepdims=True)
    var = jnp.square(x - mu).mean(-1, keepdims=True)
    return (x - mu) * jax.lax.rsqrt(var + eps) * w + b


# The token rows of the GPT and the LSTM are flattened to (B T, D) for the dense
# layers. Kept (B, T, D), as flax's Dense takes them, XLA 0.4.38 took 1.8x as
# long for the GPT's value_and_grad (its weight gradients contract over two axes).
def gpt_logits(p, idx, heads=4):  # idx: (B, T) int32
    B, T = idx.shape
    D = p["wte.weight"].shape[1]
    dh = D // heads
    mask = jnp.tril(jnp.ones((T, T), dtype=bool))
    x = (p["wte.weight"][idx] + p["wpe.weight"][:T]).reshape(B * T, D)
    layers = sum(1 for n in p if n.endswith(".ln1.weight"))
    for i in range(layers):
        q = f"h.{i}."
        a = layernorm(x, p[q + "ln1.weight"], p[q + "ln1.bias"])
        qkv = a @ p[q + "attn.qkv.weight"] + p[q + "attn.qkv.bias"]  # (B, T, 3D)
        qh, kh, vh = (t.reshape(B, T, heads, dh).transpose(0, 2, 1, 3)  # (B, H, T, dh)
                      for t in jnp.split(qkv, 3, axis=-1))
        att = (qh @ kh.transpose(0, 1, 3, 2)) * (1.0 / math.sqrt(dh))  # (B, H, T, T)
        att = jax.nn.softmax(jnp.where(mask, att, -jnp.inf), axis=-1)
        y = (att @ vh).transpose(0, 2, 1, 3).reshape(B * T, D)
        x = x + y @ p[q + "attn.proj.weight"] + p[q + "attn.proj.bias"]
        a = layernorm(x, p[q + "ln2.weight"], p[q + "ln2.bias"])
        h = jax.nn.gelu(a @ p[q + "fc.weight"] + p[q + "fc.bias"], approximate=True)
        x = x + h @ p[q + "proj.weight"] + p[q + "proj.bias"]
    x = layernorm(x, p["ln_f.weight"], p["ln_f.bias"])
    return x @ p["logits.weight"]  # (B T, V)


def lstm_logits(p, idx):  # idx: (B, T) int32
    w_hh = p["rnn.l0.weight_hh"]  # (H, 4H), gates i f g o
    H = w_hh.shape[0]
    B, T = idx.shape
    x = p["emb.weight"][idx.T.reshape(-1)]  # (T B, E), time-major
    xw = (x @ p["rnn.l0.weight_ih"] + p["rnn.l0.bias"]).reshape(T, B, 4 * H)  # all steps at once

    def cell(carry, xt):
        h, c = carry
        i, f, g, o = jnp.split(xt + h @ w_hh, 4, axis=-1)
        c = jax.nn.sigmoid(f) * c + jax.nn.sigmoid(i) * jnp.tanh(g)
        h = jax.nn.sigmoid(o) * jnp.tanh(c)
        return (h, c), h

    zero = jnp.zeros((B, H), x.dtype)
    _, hs = jax.lax.scan(cell, (zero, zero), xw)  # (T, B, H)
    hs = hs.transpose(1, 0, 2).reshape(B * T, H)  # the rows of the targets, (B T, H)
    return hs @ p["logits.weight"] + p["logits.bias"]  # (B T, V)


LOGITS = {"mlp784": mlp784_logits, "gpt": gpt_logits, "lstm": lstm_logits}


def gpt_schedule(s):
    """bench/train.py's gpt_lr_lambda on a traced step count s (float32)."""
    w, n = tr.GPT_WARMUP, tr.GPT_STEPS
    cosine = 0.5 * (1 + jnp.cos(math.pi * jnp.clip((s - w) / (n - w), 0.0, 1.0)))
    return jnp.where(s < w, (s + 1) / w, cosine)


_STEPS = {}


def make_step(case):
    """The jitted training step: (params, m, v, step, base_lr, x, y) -> (params,
    m, v, step + 1, loss, grad norm, lr). PyTorch's Adam/AdamW, clip_grad_norm_
    and LambdaLR, written out."""
    o = tr.OPTIM[case.key]
    logits_fn = LOGITS[case.key]

    def loss_fn(p, x, y):
        logits = logits_fn(p, x)
        logp = jax.nn.log_softmax(logits.reshape(-1, logits.shape[-1]))
        return -jnp.take_along_axis(logp, y.reshape(-1, 1), axis=1).mean()

    def step(p, m, v, t, base_lr, x, y):
        loss, g = jax.value_and_grad(loss_fn)(p, x, y)
        norm = jnp.sqrt(sum(jnp.sum(jnp.square(a)) for a in g.values()))
        if o["clip"]:
            scale = jnp.minimum(1.0, o["clip"] / (norm + 1e-6))
            g = {k: a * scale for k, a in g.items()}
        lr = base_lr * (gpt_schedule(t.astype(jnp.float32)) if o["sched"] else 1.0)
        n = (t + 1).astype(jnp.float32)
        step_size = lr / (1 - tr.BETA1 ** n)
        sqrt_bc2 = jnp.sqrt(1 - tr.BETA2 ** n)
        p2, m2, v2 = {}, {}, {}
        for k in p:
            w = p[k] * (1 - lr * o["wd"]) if o["kind"] == "adamw" else p[k]
            m2[k] = tr.BETA1 * m[k] + (1 - tr.BETA1) * g[k]
            v2[k] = tr.BETA2 * v[k] + (1 - tr.BETA2) * jnp.square(g[k])
            p2[k] = w - step_size * m2[k] / (jnp.sqrt(v2[k]) / sqrt_bc2 + tr.EPS)
        return p2, m2, v2, t + 1, loss, norm, lr

    return _STEPS.setdefault(case.key, jax.jit(step, donate_argnums=(0, 1, 2)))


def init_state(weights):
    """Device arrays of fresh copies (donated buffers must not be NumPy's)."""
    p = {k: jnp.asarray(np.array(w, dtype=np.float32)) for k, w in weights.items()}
    z = {k: jnp.zeros(w.shape, jnp.float32) for k, w in weights.items()}
    z2 = {k: jnp.zeros(w.shape, jnp.float32) for k, w in weights.items()}
    return p, z, z2, jnp.int32(0)


#
# Equivalence
#
def check_against(case, who, lr, w0s, j, ref):
    """JAX's step (j) against a reference step (ref: Kiln's or PyTorch's), with
    bench/train.py's tolerances, float32 against float32:
      loss, grad norm: |jax - ref| <= 1e-5 |ref|   (LOSS_RTOL)
      first moment m = (1 - beta1) g: max |diff| <= 1e-4 max |m_ref| per tensor
      second moment v: max |diff| <= 2e-4 max |v_ref| per tensor   (GRAD_RTOL)
      new weights: |diff| <= 2 ulp(max(|w0|, lr)) + 1e-3 lr, and where Adam's
        first step amplifies a gradient difference (|g| ~ eps, gradients that are
        rounding noise) by what the two checked gradients imply:
        2 lr |gj/(|gj| + eps) - gr/(|gr| + eps)|; such elements are counted.
    Returns (failures, summary)."""
    fails = []
    if abs(j["loss"] - ref["loss"]) > tr.LOSS_RTOL * abs(ref["loss"]):
        fails.append(f"loss: jax {j['loss']:.9g}, {who} {ref['loss']:.9g}")
    if tr.OPTIM[case.key]["clip"] and abs(j["norm"] - ref["norm"]) > tr.LOSS_RTOL * ref["norm"]:
        fails.append(f"gradient norm: jax {j['norm']:.9g}, {who} {ref['norm']:.9g}")
    if ref.get("lr") is not None and abs(j["lr"] - ref["lr"]) > 1e-6 * ref["lr"]:
        fails.append(f"learning rate: jax {j['lr']:.9g}, {who} {ref['lr']:.9g}")
    m_err = v_err = w_err = 0.0
    noise = total = 0
    for name, w0 in w0s.items():
        w0 = w0.astype(np.float64)
        for what, a, b, rtol in (("first moment", j["m"][name], ref["m"][name], tr.GRAD_RTOL),
                                 ("second moment", j["v"][name], ref["v"][name], 2 * tr.GRAD_RTOL)):
            scale = max(np.abs(b).max(), 1e-30)
            e = np.abs(a - b).max() / scale
            if what == "first moment":
                m_err = max(m_err, e)
            else:
                v_err = max(v_err, e)
            if e > rtol and np.abs(b).max() > 0:
                i = np.unravel_index(np.argmax(np.abs(a - b)), b.shape)
                fails.append(f"{name}: {what} at {tuple(int(k) for k in i)}: jax {a[i]:.9g}, "
                             f"{who} {b[i]:.9g} ({e:.3g} of its largest value > {rtol:g})")
        diff = np.abs(j["w"][name] - ref["w"][name])
        tol = 2 * tr.ulp(np.maximum(np.abs(w0), lr)) + tr.W_LRFRAC * lr
        gj, gr = j["m"][name] / (1 - tr.BETA1), ref["m"][name] / (1 - tr.BETA1)
        implied = lr * np.abs(gj / (np.abs(gj) + tr.EPS) - gr / (np.abs(gr) + tr.EPS))
        out = diff > tol + 2 * implied
        noise += int(((diff > tol) & ~out).sum())
        total += diff.size
        w_err = max(w_err, float(diff.max() / lr))
        if out.any():
            i = tuple(int(k) for k in np.argwhere(out)[0])
            fails.append(f"{name}: {int(out.sum())} of {out.size} new weights differ beyond 2 ulp + "
                         f"{tr.W_LRFRAC} lr; first at {i}: jax {j['w'][name][i]:.9g}, "
                         f"{who} {ref['w'][name][i]:.9g}, w0 {w0[i]:.9g}")
    noise_s = (f"; {noise} of {total} beyond 2 ulp + {tr.W_LRFRAC} lr, each as its gradients' "
               f"difference implies at |g| ~ eps" if noise else "")
    return fails, (f"vs {who}: |dloss| {abs(j['loss'] - ref['loss']):.2g}, m {m_err:.2g} and "
                   f"v {v_err:.2g} of max, new weights max {w_err:.2g} lr{noise_s}")


def check_case(case, exe, weights, x, y, data_args, init, work, base_lr, threads):
    o = dict(tr.OPTIM[case.key])
    lr_args = []
    if base_lr is not None:
        o["lr"] = base_lr
        lr_args = ["--lr", repr(base_lr)]
    lr_step = o["lr"] * (o["sched"](0) if o["sched"] else 1.0)
    step = make_step(case)
    p, m, v, t = init_state(weights)
    p, m, v, t, loss, norm, lr = step(p, m, v, t, jnp.float32(o["lr"]), jnp.asarray(x), jnp.asarray(y))
    f64 = lambda d: {k: np.asarray(a, dtype=np.float64) for k, a in d.items()}  # noqa: E731
    j = dict(loss=float(loss), norm=float(norm), lr=float(lr), w=f64(p), m=f64(m), v=f64(v))
    # Kiln, from the same init checkpoint, at this process's thread count.
    after = os.path.join(work, f"after-jax{threads}.safetensors")
    log = os.path.join(work, f"log-jax{threads}.csv")
    for f in (after, log):
        if os.path.exists(f):
            os.unlink(f)
    tr.run([exe, "train", "--resume", init, "--steps", "1", "--save", after, "--log", log,
            "--threads", str(threads), "--quiet"] + data_args + lr_args)
    k, _ = tr.read_safetensors(after)
    k_loss, k_lr, k_norm = tr.read_log(log)
    kiln = dict(loss=k_loss, norm=k_norm, lr=k_lr, w={n: k[n].astype(np.float64) for n in weights},
                m={n: k[f"adam.m.{n}"].astype(np.float64) for n in weights},
                v={n: k[f"adam.v.{n}"].astype(np.float64) for n in weights})
    # PyTorch, one thread, float32 and float64 (bench/train.py's reference step).
    tr.torch.set_num_threads(1)
    fw.openblas_set_threads(1)
    t_loss, t_norm, t_new, _, t_state = tr.torch_step(case, weights, x, y, tr.torch.float32, o["lr"])
    d_loss, d_norm, d_new, d_grad, _ = tr.torch_step(case, weights, x, y, tr.torch.float64, o["lr"])
    torch_ref = dict(loss=t_loss, norm=t_norm, lr=lr_step, w=t_new,
                     m={n: s[0] for n, s in t_state.items()}, v={n: s[1] for n, s in t_state.items()})
    fails, lines = [], []
    for who, ref in (("kiln", kiln), ("torch", torch_ref)):
        f, s = check_against(case, who, lr_step, weights, j, ref)
        fails += [f"vs {who}: {e}" for e in f]
        lines.append(s)
    # Distance from float64, for scale.
    g64 = max(float(np.abs(j["m"][n] - (1 - tr.BETA1) * d_grad[n]).max() /
                    max((1 - tr.BETA1) * np.abs(d_grad[n]).max(), 1e-30)) for n in weights)
    norm_s = (f"; grad norm jax {j['norm']:.7g} / kiln {k_norm:.7g} / torch {t_norm:.7g} / "
              f"float64 {d_norm:.7g}" if o["clip"] else "")
    rate = f"base lr {base_lr:g} (--lr), " if base_lr is not None else ""
    print(f"{'ok ' if not fails else 'BAD'} {case.name}, {threads} thr, {rate}lr of the step "
          f"{lr_step:.3g}: loss jax {j['loss']:.7g} / kiln {k_loss:.7g} / torch {t_loss:.7g} / "
          f"float64 {d_loss:.7g}{norm_s}")
    for s in lines:
        print(f"    {s}")
    print(f"    JAX gradients (first moment) vs float64: {g64:.2g} of max", flush=True)
    if fails:
        sys.exit(f"jax_train.py: MISMATCH {case.name}, {threads} threads:\n  " +
                 "\n  ".join(fails[:12]) + (f"\n  ... {len(fails) - 12} more" if len(fails) > 12 else ""))


#
# Timing
#
def tids():
    """The ids of this process's threads."""
    return [int(t) for t in os.listdir("/proc/self/task")]


def stepper(step, state, base_lr, x, y):
    """(call, sync): one step, advancing state, a one-element list holding
    (params, m, v, step); and waiting for it."""
    def call():
        p, m, v, t = state[0]
        p, m, v, t, _, _, _ = step(p, m, v, t, base_lr, x, y)
        state[0] = (p, m, v, t)

    def sync():
        jax.block_until_ready(state[0])

    return call, sync


def time_jax(call, sync, case):
    """(median us, min us) per step, as bench/train.py times PyTorch."""
    return tr.time_calls(call, case, sync)


def worker(args):
    threads = args.worker
    jax.block_until_ready(jnp.ones(8) * 2)  # the CPU client and its pool start here
    print(f"worker: {threads} thread(s), devices {jax.devices()}, {len(tids())} threads "
          f"in the process", flush=True)
    results = []
    with tempfile.TemporaryDirectory(prefix="kiln-jax-bench-") as work:
        for case in tr.CASES:
            if case.key not in KEYS or (args.only and args.only != case.key):
                continue
            # bench/train.py's stream for this case: the same weights and batches.
            rng = np.random.default_rng([args.seed, [c.key for c in tr.CASES].index(case.key)])
            cwork = os.path.join(work, case.key)
            os.makedirs(cwork)
            model = os.path.join(tr.ROOT, case.model)
            exe = os.path.join(cwork, case.key)
            tr.run([args.kiln, "build", model, "-o", exe, "--dim", f"batch={case.batch}"])
            params = fw.kiln_params(args.kiln, model, case.batch)
            weights = fw.random_weights(params, rng)
            wfile = os.path.join(cwork, "w.safetensors")
            fw.write_safetensors(wfile, weights)
            x, y, data_args = tr.make_batch(case, rng, cwork)
            tensors, meta = tr.init_checkpoint(case, exe, weights, data_args, cwork)
            init = os.path.join(cwork, "init.safetensors")
            tr.write_checkpoint(init, tensors, meta)
            for base_lr in case.check_lrs:
                check_case(case, exe, weights, x, y, data_args, init, cwork, base_lr, threads)
            if args.check_only:
                continue
            case = case._replace(runs=max(3, int(round(case.runs * args.runs_scale))))
            mflop = fw.forward_mflop(args.kiln, model, case.batch)
            # The timed batch: drawn as bench/train.py's torch_timed_fn draws it.
            if case.key == "mlp784":
                tx = rng.standard_normal((case.batch, 784)).astype(np.float32)
                ty = rng.integers(0, 10, size=case.batch).astype(np.int32)
            else:
                tx = rng.integers(0, 96, size=(case.batch, tr.SEQ[case.key])).astype(np.int32)
                ty = rng.integers(0, 96, size=(case.batch, tr.SEQ[case.key])).astype(np.int32)
            tx, ty = jnp.asarray(tx), jnp.asarray(ty)
            call, sync = stepper(make_step(case), [init_state(weights)],
                                 jnp.float32(tr.OPTIM[case.key]["lr"]), tx, ty)
            k, j, cpu, wall = [], [], 0.0, 0.0
            for r in range(args.reps):
                if r % 2 == 0:
                    k.append(tr.time_kiln(exe, wfile, threads, case))
                c0, w0 = time.process_time(), time.perf_counter()
                j.append(time_jax(call, sync, case))
                cpu, wall = cpu + time.process_time() - c0, wall + time.perf_counter() - w0
                if r % 2 == 1:
                    k.append(tr.time_kiln(exe, wfile, threads, case))
            cpus = set()
            for tid in tids():
                try:
                    cpus |= os.sched_getaffinity(tid)
                except OSError:  # a thread that has just ended
                    pass
            print(f"timed {case.name}, {threads} thr: {len(tids())} threads in the process, all on "
                  f"CPUs {sorted(cpus)}; JAX's CPU time / wall time {cpu / wall:.2f}", flush=True)
            if len(cpus) > threads:
                sys.exit(f"jax_train.py: threads of this process may run on CPUs {sorted(cpus)}, "
                         f"more than {threads}")
            results.append(dict(key=case.key, name=case.name, batch=case.batch, runs=case.runs,
                                mflop=mflop, kiln=k, jax=j))
    print("RESULT " + json.dumps(dict(threads=threads, version=jax.__version__, rows=results)))


#
# The driver: one worker process per thread count, then the tables
#
def print_table(title, rows, reps):
    print(title)
    print("| model | batch | runs x reps | Kiln us | JAX us | JAX/Kiln | Kiln best | JAX best "
          "| best/best | Kiln GFLOP/s |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        km, jm = [m for m, _ in r["kiln"]], [m for m, _ in r["jax"]]
        kb, jb = min(b for _, b in r["kiln"]), min(b for _, b in r["jax"])
        paired = statistics.median(a / b for a, b in zip(jm, km))
        gflops = f"{3 * r['mflop'] / statistics.median(km) * 1e3:.3g}" if r["mflop"] > 0 else "-"
        print(f"| {r['name']} | {r['batch']} | {r['runs']} x {reps} | {fw_spread(km)} | "
              f"{fw_spread(jm)} | {paired:.2f} | {fmt_us(kb)} | {fmt_us(jb)} | {jb / kb:.2f} | "
              f"{gflops} |")
    print()


def fmt_us(v):  # bench/forward.py's, without importing torch into the driver
    return f"{v:.3g}" if v < 10 else f"{v:,.0f}"


def fw_spread(v):
    return f"{fmt_us(statistics.median(v))} [{fmt_us(min(v))}-{fmt_us(max(v))}]"


def driver(args):
    if not os.access(args.kiln, os.X_OK):
        sys.exit(f"jax_train.py: no kiln at {args.kiln}; build it (see README.md) or pass --kiln")
    from importlib.metadata import version
    try:
        jv = version("jax")
    except Exception:
        sys.exit(f"jax_train.py: no JAX in {sys.executable}'s environment; see bench/install-deps.sh")
    with open("/proc/loadavg") as f:
        load = " ".join(f.read().split()[:3])
    print(f"machine: {os.cpu_count()} CPUs ({len(ALLOWED)} usable); load average {load}")
    print(f"jax {jv}, jaxlib {version('jaxlib')} (PyPI, CPU); XLA_FLAGS="
          f"{os.environ.get('XLA_FLAGS', '(unset)')}; kiln {os.path.abspath(args.kiln)}")
    print()
    by_threads = {}
    for t in [int(s) for s in args.threads.split(",")]:
        cmd = [sys.executable, os.path.abspath(__file__), "--worker", str(t), "--kiln", args.kiln,
               "--reps", str(args.reps), "--runs-scale", str(args.runs_scale), "--seed",
               str(args.seed)] + (["--only", args.only] if args.only else []) + \
              (["--check-only"] if args.check_only else [])
        p = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True)
        for line in p.stdout:
            if line.startswith("RESULT "):
                by_threads[t] = json.loads(line[7:])
            else:
                print(line, end="", flush=True)
        if p.wait() != 0:
            sys.exit(f"jax_train.py: the {t}-thread worker failed ({p.returncode})")
    if args.check_only:
        return
    print()
    print("Kiln us, JAX us: median of the repetitions' medians [their min-max], us per step. "
          "JAX/Kiln: median over repetitions of the ratio of the two measurements taken back to "
          "back (> 1: Kiln faster). best: the fastest run of all repetitions. Kiln GFLOP/s: 3 x "
          "the forward FLOPs of `kiln check` per step over Kiln's median time.")
    print()
    for t, res in by_threads.items():
        title = f"{t} thread{'s' if t > 1 else ''}"
        title += " (the stable numbers)" if t == 1 else " (depends on what else runs on this machine)"
        print_table(title, res["rows"], args.reps)
    with open("/proc/loadavg") as f:
        print(f"load average at the end: {' '.join(f.read().split()[:3])}")


if __name__ == "__main__":
    if ARGS.worker:
        worker(ARGS)
    else:
        driver(ARGS)
