#!/usr/bin/python3
"""One training step of Kiln against PyTorch on the same models, weights and batch.

A training step is forward, loss, backward and the optimizer update. For every
case (a model file, its optimizer and a batch size) this script

  1. builds the model with `kiln build` and draws random weights for it with
     NumPy, as bench/forward.py does (same names, same scales, same safetensors
     writer); PyTorch gets the same arrays in the same idiomatic modules;
  2. checks equivalence, before any timing: from those weights and one batch,
     Kiln takes one step (`PROG train --resume INIT --steps 1 --save AFTER`, INIT
     a checkpoint this script writes: the weights, zero optimizer state, step 0,
     and the metadata of a checkpoint Kiln itself wrote on the same data; the
     data is exactly one batch, so shuffling can only reorder rows within it) at
     1 and at 2 threads, and PyTorch takes one step with the optimizer the model
     file names (torch.optim.SGD / Adam / AdamW, the same hyper-parameters,
     clip_grad_norm_, the same learning-rate schedule). Compared: the loss, the
     learning rate and the gradient norm (Kiln's --log), the gradients (SGD: from
     the weight change; Adam: Kiln's first moment, (1 - beta1) g, against
     PyTorch's exp_avg), the second moment, Kiln's update against Adam's rule on
     its own state, and every updated weight against PyTorch's. A float64 copy of
     the PyTorch step shows how far each side is from exact arithmetic. The
     script stops on a mismatch;
  3. times a step at 1 and 2 threads: Kiln with `PROG bench --train`, PyTorch
     with an idiomatic loop (zero_grad, forward, cross_entropy, backward,
     [clip_grad_norm_], step, [scheduler.step]) timed the same way, Kiln's and
     PyTorch's repetitions back to back in alternating order.

The seed MLP's row is a whole epoch: 10 steps of batch 10 over its 100 samples.
Kiln: 10 x the step time of `PROG bench --train` (and, as a check, the epoch time
of its own `train` loop, shuffling and batch copies included). PyTorch: a Python
loop over a shuffled epoch of models/mlp.csv, 10 optimizer steps.

Threads and timing follow bench/forward.py (whose helpers this imports): PyTorch
gets torch.set_num_threads(N) and openblas_set_num_threads(N), and runs with
OMP_WAIT_POLICY=PASSIVE unless the variable is set; Kiln runs with the
environment as given and --threads N.

    /usr/bin/python3 bench/train.py [--kiln build/kiln] [--reps 5] [--only gpt] [--check-only]
"""
import argparse
import collections
import json
import math
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import forward as fw  # noqa: E402  (sets OMP_WAIT_POLICY before torch is imported)

import numpy as np  # noqa: E402
import torch  # noqa: E402
import torch.nn as nn  # noqa: E402
import torch.nn.functional as F  # noqa: E402

ROOT = fw.ROOT


def run(cmd):
    """Runs a command in the environment this script was given; its stdout."""
    p = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                       env=fw.ORIGINAL_ENV)
    if p.returncode != 0:
        sys.exit(f"train.py: `{' '.join(cmd)}` failed ({p.returncode}):\n{p.stderr}{p.stdout}")
    return p.stdout


#
# Cases. steps: optimizer steps per timed unit (the seed MLP's epoch is 10).
# runs and warmup: per repetition, as in `PROG bench --runs R --warmup U`.
# check_lrs: base learning rates the equivalence check runs at; None is the
# model's own. The GPT's first step takes 1/100 of its rate (warmup), 3e-6, at
# which AdamW's decay (lr wd w) is ~2 ulp of w and invisible; a second check at
# base rate 3e-2 (--lr; step rate 3e-4) makes the decay and the update large.
#
Case = collections.namedtuple("Case", "key name model batch steps runs warmup check_lrs")
CASES = [
    Case("mlp", "mlp 5-16-2, SGD (epoch: 10 steps)", "models/mlp.yaml", 10, 10, 30, 5, (None,)),
    Case("mlp784", "mlp 784-512-512-10, Adam", "bench/models/mlp784_train.yaml", 128, 1, 20, 3,
         (None,)),
    Case("gpt", "gpt 4x256 ctx 128, AdamW + clip", "models/gpt.yaml", 16, 1, 5, 2, (None, 3e-2)),
    Case("lstm", "lstm char LM 128-256 seq 64, Adam + clip", "models/lstm.yaml", 32, 1, 10, 2,
         (None,)),
]
# Time steps of the text models' windows.
SEQ = {"gpt": 128, "lstm": 64}

# The optimizers the model files name, as PyTorch spells them. `PROG info` prints
# Kiln's reading of the model's train section next to these, so the two are seen
# side by side in the output.
GPT_WARMUP, GPT_STEPS = 50, 600


def gpt_lr_lambda(s):
    """models/gpt.yaml's schedule, {cosine: {warmup: 50}} over 600 steps, min_lr 0:
    the factor of the base rate at step s (docs/training.md, learning-rate schedules)."""
    if s < GPT_WARMUP:
        return (s + 1) / GPT_WARMUP
    p = min(1.0, (s - GPT_WARMUP) / (GPT_STEPS - GPT_WARMUP))
    return 0.5 * (1 + math.cos(math.pi * p))


OPTIM = {
    "mlp": dict(kind="sgd", lr=0.5, wd=0.0, clip=None, sched=None,
                torch="SGD(lr=0.5)"),
    "mlp784": dict(kind="adam", lr=1e-3, wd=0.0, clip=None, sched=None,
                   torch="Adam(lr=1e-3, betas=(0.9, 0.999), eps=1e-8)"),
    "gpt": dict(kind="adamw", lr=1e-3, wd=0.1, clip=1.0, sched=gpt_lr_lambda,
                torch="AdamW(lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.1), "
                      "clip_grad_norm_(1.0), LambdaLR(cosine, warmup 50, 600 steps)"),
    "lstm": dict(kind="adam", lr=2e-3, wd=0.0, clip=1.0, sched=None,
                 torch="Adam(lr=2e-3, betas=(0.9, 0.999), eps=1e-8), clip_grad_norm_(1.0)"),
}
BETA1, BETA2, EPS = 0.9, 0.999, 1e-8


class LSTMLM(nn.Module):
    """models/lstm.yaml: embedding, one LSTM layer, dense head. The layer is
    PyTorch's own (torch.lstm, what nn.LSTM runs) on Kiln's parameters, named and
    laid out as Kiln's: weight_ih [I, 4H] and weight_hh [H, 4H] are handed over
    transposed (views), and Kiln's one bias stands for bias_ih (bias_hh is zero);
    the gate order is i f g o in both."""

    def __init__(self, vocab=96, embed=128, hidden=256):
        super().__init__()
        self.emb = nn.Embedding(vocab, embed)
        self.rnn = nn.Module()
        self.rnn.l0 = nn.Module()
        self.rnn.l0.weight_ih = nn.Parameter(torch.empty(embed, 4 * hidden))
        self.rnn.l0.weight_hh = nn.Parameter(torch.empty(hidden, 4 * hidden))
        self.rnn.l0.bias = nn.Parameter(torch.empty(4 * hidden))
        self.register_buffer("bias_hh", torch.zeros(4 * hidden), persistent=False)
        self.logits = nn.Linear(hidden, vocab)
        self.hidden = hidden

    def forward(self, idx):
        x, l0 = self.emb(idx), self.rnn.l0
        h0 = x.new_zeros(1, x.shape[0], self.hidden)
        weights = [l0.weight_ih.t(), l0.weight_hh.t(), l0.bias, self.bias_hh]
        y, _, _ = torch.lstm(x, (h0, h0), weights, True, 1, 0.0, self.training, False, True)
        return self.logits(y)


def torch_model(case):
    if case.key == "lstm":
        return LSTMLM()
    if case.key == "mlp":
        return fw.MLP([("dense_0", 5, 16, nn.Sigmoid()), ("logits", 16, 2, None)])
    if case.key == "mlp784":
        return fw.MLP([("fc1", 784, 512, nn.ReLU()), ("fc2", 512, 512, nn.ReLU()),
                       ("logits", 512, 10, None)])
    return fw.GPT()


class TorchTrainer:
    """The idiomatic PyTorch training step for a case."""

    def __init__(self, case, module, lr=None):
        o = dict(OPTIM[case.key], **({"lr": lr} if lr else {}))
        self.module = module.train()
        params = list(module.parameters())
        if o["kind"] == "sgd":
            self.opt = torch.optim.SGD(params, lr=o["lr"])
        elif o["kind"] == "adam":
            self.opt = torch.optim.Adam(params, lr=o["lr"], betas=(BETA1, BETA2), eps=EPS)
        else:
            self.opt = torch.optim.AdamW(params, lr=o["lr"], betas=(BETA1, BETA2), eps=EPS,
                                         weight_decay=o["wd"])
        self.sched = torch.optim.lr_scheduler.LambdaLR(self.opt, o["sched"]) if o["sched"] else None
        self.clip = o["clip"]

    def step(self, x, y):
        self.opt.zero_grad()
        logits = self.module(x)
        loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), y.reshape(-1))
        loss.backward()
        norm = None
        if self.clip:
            norm = torch.nn.utils.clip_grad_norm_(self.module.parameters(), self.clip)
        self.opt.step()
        if self.sched:
            self.sched.step()
        return loss, norm


#
# One batch, as files Kiln reads and as tensors PyTorch takes
#
def make_batch(case, rng, work):
    """(x, y, data arguments for `PROG train`): exactly one batch of samples."""
    if case.key == "mlp":
        # Multiples of 1/1024: their shortest decimal is exact, so the CSV holds
        # exactly the float32 values PyTorch gets, whatever parser reads it.
        x = (np.round(rng.standard_normal((case.batch, 5)) * 1024) / 1024).astype(np.float32)
        y = rng.integers(0, 2, size=case.batch).astype(np.int32)
        path = os.path.join(work, "batch.csv")
        with open(path, "w") as f:
            for r in range(case.batch):
                f.write(",".join(repr(float(v)) for v in x[r]) + f",{y[r]}\n")
        return x, y, ["--data", path]
    if case.key == "mlp784":
        x = rng.standard_normal((case.batch, 784)).astype(np.float32)
        y = rng.integers(0, 10, size=case.batch).astype(np.int32)
        xp, yp = os.path.join(work, "x.npy"), os.path.join(work, "label.npy")
        np.save(xp, x)
        np.save(yp, y)
        return x, y, ["--data", f"x={xp}", "--data", f"label={yp}"]
    # GPT and LSTM: the models train on text. B windows of T characters plus one
    # make exactly B samples (windows at 0, T, ...; target = input shifted by
    # one). A character's id is its rank among the distinct bytes of the file.
    # The same file is given as --eval-data, so that the model's val_split holds
    # nothing out of the one batch.
    T = SEQ[case.key]
    raw = rng.integers(0, 96, size=case.batch * T + 1)
    text = bytes(int(b) + 32 for b in raw)
    vocab = sorted(set(text))
    ids = np.array([vocab.index(b) for b in text], dtype=np.int32)
    x = np.stack([ids[s * T:(s + 1) * T] for s in range(case.batch)])
    y = np.stack([ids[s * T + 1:(s + 1) * T + 1] for s in range(case.batch)])
    path = os.path.join(work, "batch.txt")
    with open(path, "wb") as f:
        f.write(text)
    return x, y, ["--data", path, "--eval-data", path]


def to_torch(a, dtype=None):
    t = torch.from_numpy(a.astype(np.int64) if a.dtype == np.int32 else a.copy())
    return t.to(dtype) if dtype is not None and t.is_floating_point() else t


#
# Safetensors with metadata (the init checkpoint), and a reader
#
def write_checkpoint(path, tensors, meta):
    header, blobs, at = {"__metadata__": meta}, [], 0
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


def read_safetensors(path):
    with open(path, "rb") as f:
        blob = f.read()
    n = int.from_bytes(blob[:8], "little")
    header = json.loads(blob[8:8 + n])
    meta = header.pop("__metadata__", {})
    out = {}
    for name, e in header.items():
        if e["dtype"] != "F32":
            sys.exit(f"train.py: {path}: {name} is {e['dtype']}, expected F32")
        b, end = e["data_offsets"]
        out[name] = np.frombuffer(blob[8 + n + b:8 + n + end], dtype="<f4").reshape(e["shape"])
    return out, meta


def opt_state_names(case, params):
    """Kiln's optimizer state tensors: adam.m.NAME and adam.v.NAME (adam and adamw);
    plain SGD has none (compiler/cpu/module.c)."""
    if OPTIM[case.key]["kind"] == "sgd":
        return []
    return [f"adam.{k}.{n}" for k in ("m", "v") for n in params]


def init_checkpoint(case, exe, weights, data_args, work):
    """A checkpoint at step 0 holding `weights` and zero optimizer state. Its
    metadata (model name, seed, base learning rate, ...) is Kiln's own: taken from
    a one-step run of Kiln's initialization on the same data, so that nothing of
    the training setup comes from this script."""
    probe = os.path.join(work, "probe.safetensors")
    run([exe, "train", "--steps", "1", "--save", probe, "--threads", "1", "--quiet"] + data_args)
    _, meta = read_safetensors(probe)
    meta.update(step="0", epoch="0", pos="0")
    tensors = dict(weights)
    for name in opt_state_names(case, weights):
        tensors[name] = np.zeros_like(weights[name.split(".", 2)[2]])
    return tensors, meta


#
# Equivalence
#
# Tolerances (float32 against float32, the same maths in different orders):
#   loss:      |kiln - torch| <= 1e-5 |torch|
#   grad norm: |kiln - torch| <= 1e-5 |torch|
#   gradients: per tensor, max |g_kiln - g_torch| <= 1e-4 * max |g_torch|, where g
#              is (w0 - w1) / lr for SGD (plus the 2 ulp that w0 - w1 loses) and the
#              first Adam moment m = (1 - beta1) g for Adam/AdamW against exp_avg
#              (the second moment v against exp_avg_sq, 2e-4 of its max)
#   update:    Adam: Kiln's new weights against PyTorch's update rule evaluated in
#              float64 on Kiln's own w0, m and v: |diff| <= 4 ulp(max(|w0|, lr)),
#              every element (this isolates the optimizer from the gradients)
#   weights:   Kiln's new weights against PyTorch's:
#              |diff| <= 2 ulp(max(|w0|, lr*)) + 1e-3 lr*, where lr* is the largest
#              change a weight could make (SGD: lr max|g|, Adam: lr). For Adam an
#              element may differ more where the two gradients (checked above)
#              imply it: |diff| <= that bound + 2 lr |gk/(|gk|+eps) - gt/(|gt|+eps)|,
#              the difference of the two first-step updates. That is Adam at
#              |g| ~ eps, where g / (|g| + eps) amplifies rounding, and gradients
#              that are rounding noise (attention key biases, whose exact gradient
#              is 0); such elements are counted and printed.
LOSS_RTOL, GRAD_RTOL, W_LRFRAC = 1e-5, 1e-4, 1e-3


def ulp(a):
    a = np.abs(np.asarray(a, dtype=np.float32))
    return np.spacing(a).astype(np.float64)


class Mismatch(Exception):
    pass


def torch_step(case, weights, x, y, dtype, lr):
    """One PyTorch step from `weights` in `dtype`: loss, grad norm, {name: new weight
    in Kiln's layout}, {name: gradient (clipped)}, {name: (exp_avg, exp_avg_sq)}."""
    module = fw.load_into_torch(torch_model(case), weights).to(dtype)
    tr = TorchTrainer(case, module, lr)
    loss, norm = tr.step(to_torch(x, dtype), to_torch(y))
    new, grads, state = {}, {}, {}
    for name, p in module.named_parameters():
        tr_ = fw.is_linear_weight(module, name)
        fix = (lambda t: t.detach().t().numpy().astype(np.float64)) if tr_ else \
              (lambda t: t.detach().numpy().astype(np.float64))
        new[name] = fix(p)
        grads[name] = fix(p.grad)
        s = tr.opt.state.get(p, {})
        if "exp_avg" in s:
            state[name] = (fix(s["exp_avg"]), fix(s["exp_avg_sq"]))
    return float(loss), (float(norm) if norm is not None else None), new, grads, state


def read_log(path):
    with open(path) as f:
        rows = [line.rstrip("\n").split(",") for line in f]
    head, first = rows[0], rows[1]
    row = dict(zip(head, first))
    return float(row["loss"]), float(row["lr"]), (float(row["grad_norm"]) if row["grad_norm"] else None)


def check_equivalence(case, exe, model_name, weights, rng, work):
    x, y, data_args = make_batch(case, rng, work)
    tensors, meta = init_checkpoint(case, exe, weights, data_args, work)
    if meta.get("kiln_model") != model_name or meta.get("samples") != str(case.batch):
        raise Mismatch(f"{case.name}: Kiln's checkpoint is of model {meta.get('kiln_model')} with "
                       f"{meta.get('samples')} samples per epoch, expected {model_name} and {case.batch}")
    init = os.path.join(work, "init.safetensors")
    write_checkpoint(init, tensors, meta)

    return [check_step(case, exe, weights, x, y, data_args, init, work, base_lr)
            for base_lr in case.check_lrs]


def check_step(case, exe, weights, x, y, data_args, init, work, base_lr):
    """One step from the init checkpoint in Kiln (1 and 2 threads) and PyTorch
    (float32 and float64) at the model's base learning rate, or base_lr."""
    o = dict(OPTIM[case.key])
    lr_args = []
    if base_lr is not None:
        o["lr"] = base_lr
        lr_args = ["--lr", repr(base_lr)]
    # PyTorch's sums are ordered by its thread count: one thread, so that the
    # reference step is the same whatever ran before it.
    torch.set_num_threads(1)
    fw.openblas_set_threads(1)
    t_loss, t_norm, t_new, t_grad, t_state = torch_step(case, weights, x, y, torch.float32, o["lr"])
    d_loss, d_norm, d_new, d_grad, d_state = torch_step(case, weights, x, y, torch.float64, o["lr"])
    lr_step = o["lr"] * (o["sched"](0) if o["sched"] else 1.0)
    report = {"torch_loss": t_loss, "f64_loss": d_loss, "torch_norm": t_norm, "f64_norm": d_norm,
              "lr": lr_step, "base_lr": base_lr, "threads": []}

    for threads in (1, 2):
        after = os.path.join(work, f"after{threads}.safetensors")
        log = os.path.join(work, f"log{threads}.csv")
        for p in (after, log):
            if os.path.exists(p):
                os.unlink(p)
        run([exe, "train", "--resume", init, "--steps", "1", "--save", after, "--log", log,
             "--threads", str(threads), "--quiet"] + data_args + lr_args)
        k, kmeta = read_safetensors(after)
        k_loss, k_lr, k_norm = read_log(log)
        r = {"threads": threads, "loss": k_loss, "norm": k_norm, "k_lr": k_lr}
        fails = []

        def bad(what):
            fails.append(what)

        if kmeta.get("step") != "1":
            bad(f"the saved checkpoint is at step {kmeta.get('step')}, not 1")
        if abs(k_lr - lr_step) > 1e-6 * lr_step:
            bad(f"learning rate of step 1: kiln {k_lr:.9g}, expected {lr_step:.9g}")
        if abs(k_loss - t_loss) > LOSS_RTOL * abs(t_loss):
            bad(f"loss: kiln {k_loss:.9g}, torch {t_loss:.9g}, float64 {d_loss:.9g}")
        if o["clip"]:
            if k_norm is None or abs(k_norm - t_norm) > LOSS_RTOL * t_norm:
                bad(f"gradient norm: kiln {k_norm}, torch {t_norm:.9g}, float64 {d_norm:.9g}")

        grad_err = upd_err = 0.0   # worst relative gradient error; worst update error in ulp
        w_err_lr, w_med_lr, w_noise, w_n, kf64 = 0.0, 0.0, 0, 0, 0.0
        v_err = 0.0
        for name, w0 in weights.items():
            w0 = w0.astype(np.float64)
            w1 = k[name].astype(np.float64)
            tg, dg = t_grad[name], d_grad[name]
            # Gradients.
            if o["kind"] == "sgd":
                kg, ref = (w0 - w1) / lr_step, tg
                kg_tol = GRAD_RTOL * np.abs(ref).max() + 2 * ulp(w0).max() / lr_step
            else:
                m, v = k[f"adam.m.{name}"].astype(np.float64), k[f"adam.v.{name}"].astype(np.float64)
                kg, ref = m, t_state[name][0]
                kg_tol = GRAD_RTOL * np.abs(ref).max()
                tv = t_state[name][1]
                ve = np.abs(v - tv).max() / max(np.abs(tv).max(), 1e-30)
                v_err = max(v_err, ve)
                if ve > 2 * GRAD_RTOL:
                    bad(f"{name}: second moment differs by {ve:.3g} of its largest value")
            ge = np.abs(kg - ref).max()
            grad_err = max(grad_err, ge / max(np.abs(ref).max(), 1e-30))
            if ge > kg_tol and np.abs(ref).max() > 0:
                i = np.unravel_index(np.argmax(np.abs(kg - ref)), ref.shape)
                bad(f"{name}: gradient at {tuple(int(j) for j in i)}: kiln {kg[i]:.9g}, torch "
                    f"{ref[i]:.9g} (max |diff| {ge:.3g} > {kg_tol:.3g})")
            # Kiln's update rule, given Kiln's own gradient (float64).
            if o["kind"] == "sgd":
                expect = None  # w1 = w0 - lr g is the definition of kg above
            else:
                b1, b2 = 1 - BETA1, 1 - BETA2   # step 1: bias corrections 1 - beta^1
                expect = w0 - lr_step * (m / b1) / (np.sqrt(v / b2) + EPS)
                if o["kind"] == "adamw":
                    expect -= lr_step * o["wd"] * w0
                # in ulps of the larger of w0 and the step lr, the two terms of w0 - lr u
                unit = ulp(np.maximum(np.abs(w0), lr_step))
                ue = (np.abs(w1 - expect) / unit).max()
                upd_err = max(upd_err, ue)
                if ue > 4:
                    i = np.unravel_index(np.argmax(np.abs(w1 - expect) / unit), w1.shape)
                    bad(f"{name}: Kiln's new weight at {tuple(int(j) for j in i)} is {ue:.1f} ulp "
                        f"from Adam's rule on its own state: {w1[i]:.9g}, expected {expect[i]:.9g}")
            # New weights against PyTorch's.
            lr_star = lr_step * (np.abs(tg).max() if o["kind"] == "sgd" else 1.0)
            diff = np.abs(w1 - t_new[name])
            tol = 2 * ulp(np.maximum(np.abs(w0), lr_star)) + W_LRFRAC * lr_star
            # Adam's first step moves a weight by lr g / (|g| + eps): near |g| ~ eps
            # (and for gradients that are rounding noise) a tiny gradient difference
            # moves it by up to lr. Such elements may differ by what the two
            # gradients, already checked above, imply.
            if o["kind"] == "sgd":
                rounding = np.zeros(diff.shape, dtype=bool)
            else:
                gk, gt = kg / (1 - BETA1), ref / (1 - BETA1)
                implied = lr_step * np.abs(gk / (np.abs(gk) + EPS) - gt / (np.abs(gt) + EPS))
                rounding = diff <= tol + 2 * implied
            w_noise += int((rounding & (diff > tol)).sum())
            w_n += diff.size
            w_err_lr = max(w_err_lr, float(diff.max() / lr_star))
            w_med_lr = max(w_med_lr, float(np.median(diff) / lr_star))
            f64_ref = dg if o["kind"] == "sgd" else (1 - BETA1) * dg
            kf64 = max(kf64, float(np.abs(kg - f64_ref).max() / max(np.abs(f64_ref).max(), 1e-30)))
            out = (diff > tol) & ~rounding
            if out.any():
                i = tuple(int(j) for j in np.argwhere(out)[0])
                bad(f"{name}: {int(out.sum())} of {out.size} new weights differ beyond 2 ulp + "
                    f"{W_LRFRAC} lr*; first at {i}: kiln {w1[i]:.9g}, torch {t_new[name][i]:.9g}, "
                    f"float64 {d_new[name][i]:.9g}, w0 {w0[i]:.9g}, torch grad {tg[i]:.3g}")
        r.update(grad_err=grad_err, upd_err=upd_err, w_err_lr=w_err_lr, w_med_lr=w_med_lr,
                 w_noise=w_noise, w_n=w_n, v_err=v_err, kf64=kf64)
        report["threads"].append(r)
        if fails:
            raise Mismatch(f"{case.name}, {threads} threads:\n  " + "\n  ".join(fails[:12]) +
                           (f"\n  ... {len(fails) - 12} more" if len(fails) > 12 else ""))
    # Distances from float64, for scale.
    report["torch_grad_f64"] = max(
        float(np.abs(t_grad[n] - d_grad[n]).max() / max(np.abs(d_grad[n]).max(), 1e-30))
        for n in weights)
    return report


def print_check(case, r):
    parts = [f"loss kiln {r['threads'][0]['loss']:.7g} / torch {r['torch_loss']:.7g} / "
             f"float64 {r['f64_loss']:.7g}"]
    if r["torch_norm"] is not None:
        parts.append(f"grad norm kiln {r['threads'][0]['norm']:.7g} / torch {r['torch_norm']:.7g} "
                     f"/ float64 {r['f64_norm']:.7g}")
    lr = f"base lr {r['base_lr']:g} (--lr), " if r["base_lr"] is not None else ""
    print(f"ok  {case.name}, batch {case.batch}, {lr}lr of the step {r['lr']:.3g}: " + "; ".join(parts))
    for t in r["threads"]:
        extra = (f", update vs Adam's rule {t['upd_err']:.2g} ulp, v {t['v_err']:.2g}"
                 if t["upd_err"] else "")
        noise = (f"; {t['w_noise']} of {t['w_n']} beyond 2 ulp + {W_LRFRAC} lr*, each as its "
                 f"gradients' difference implies at |g| ~ eps" if t["w_noise"] else "")
        print(f"    {t['threads']} thr: |dloss| {abs(t['loss'] - r['torch_loss']):.2g}; gradients: "
              f"vs torch {t['grad_err']:.2g} of max, vs float64 {t['kf64']:.2g}{extra}; new weights "
              f"vs torch: max {t['w_err_lr']:.2g} lr*, median {t['w_med_lr']:.2g} lr*{noise}")
    print(f"    PyTorch float32 gradients vs float64: {r['torch_grad_f64']:.2g} of max", flush=True)


#
# Timing
#
TRAIN_RE = re.compile(r"train step: median ([0-9.]+) us, min ([0-9.]+) us")
DONE_RE = re.compile(r"done: (\d+) steps .* in [0-9.]+ s, ([0-9.]+) samples/s")


def time_kiln(exe, wfile, threads, case):
    time.sleep(0.2)  # let PyTorch's OpenBLAS workers go to sleep
    out = run([exe, "bench", "--train", "--weights", wfile, "--runs", str(case.runs),
               "--warmup", str(case.warmup), "--threads", str(threads)])
    m = TRAIN_RE.search(out)
    if not m:
        sys.exit(f"train.py: cannot read the step time from `{exe} bench --train`:\n{out}")
    return float(m.group(1)) * case.steps, float(m.group(2)) * case.steps


def time_kiln_loop(exe, data, threads, samples, epochs=2000):
    """us per epoch of Kiln's own `train` loop (shuffling, batch copies, logging
    bookkeeping included), from its final samples/s."""
    out = run([exe, "train", "--data", data, "--epochs", str(epochs), "--quiet",
               "--threads", str(threads)])
    m = DONE_RE.search(out)
    if not m:
        sys.exit(f"train.py: cannot read `{exe} train`'s summary:\n{out}")
    return samples / float(m.group(2)) * 1e6


def time_calls(fn, case, sync=lambda: None):
    """(median us, min us) per call of fn: case.warmup calls, then case.runs runs of
    enough calls to last 1 ms; sync() waits for work fn left running (JAX)."""
    for _ in range(case.warmup):
        fn()
    sync()
    t0 = time.perf_counter()
    fn()
    sync()
    one = time.perf_counter() - t0
    reps = 1 if one > 1e-3 else int(1e-3 / max(one, 1e-8)) + 1
    times = []
    for _ in range(case.runs):
        t0 = time.perf_counter()
        for _ in range(reps):
            fn()
        sync()
        times.append((time.perf_counter() - t0) / reps)
    return statistics.median(times) * 1e6, min(times) * 1e6


def time_torch(fn, threads, case):
    torch.set_num_threads(threads)
    fw.openblas_set_threads(threads)
    return time_calls(fn, case)


def torch_timed_fn(case, weights, rng):
    """The function PyTorch is timed on: an epoch of the seed MLP over its data, or
    one step on a fixed random batch (as `PROG bench --train` takes)."""
    module = fw.load_into_torch(torch_model(case), weights)
    tr = TorchTrainer(case, module)
    if case.key == "mlp":
        data = np.loadtxt(os.path.join(ROOT, "models/mlp.csv"), delimiter=",", dtype=np.float64)
        X = torch.from_numpy(data[:, :5].astype(np.float32))
        Y = torch.from_numpy(data[:, 5].astype(np.int64))
        n, b = X.shape[0], case.batch

        def epoch():
            perm = torch.randperm(n)
            for i in range(0, n - b + 1, b):
                idx = perm[i:i + b]
                tr.step(X[idx], Y[idx])
        return epoch
    if case.key == "mlp784":
        x = torch.from_numpy(rng.standard_normal((case.batch, 784)).astype(np.float32))
        y = torch.from_numpy(rng.integers(0, 10, size=case.batch))
    else:
        x = torch.from_numpy(rng.integers(0, 96, size=(case.batch, SEQ[case.key])))
        y = torch.from_numpy(rng.integers(0, 96, size=(case.batch, SEQ[case.key])))
    return lambda: tr.step(x, y)


def print_table(title, rows, t, reps):
    print(title)
    print("| model | batch | unit | runs x reps | Kiln us | PyTorch us | PyTorch/Kiln | Kiln best "
          "| PyTorch best | best/best | Kiln GFLOP/s |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for case, mflop, k, p, loop in rows:
        km, pm = [m for m, _ in k[t]], [m for m, _ in p[t]]
        kb, pb = min(b for _, b in k[t]), min(b for _, b in p[t])
        paired = statistics.median(pt / kt for pt, kt in zip(pm, km))
        unit = "epoch (10 steps)" if case.steps > 1 else "step"
        gflops = f"{3 * mflop * case.steps / statistics.median(km) * 1e3:.3g}" if mflop > 0 else "-"
        print(f"| {case.name} | {case.batch} | {unit} | {case.runs} x {reps} | {fw.spread(km)} | "
              f"{fw.spread(pm)} | {paired:.2f} | {fw.fmt_us(kb)} | {fw.fmt_us(pb)} | {pb / kb:.2f} "
              f"| {gflops} |")
    for case, mflop, k, p, loop in rows:
        if loop and loop[t]:
            pm = [m for m, _ in p[t]]
            print(f"\n{case.name}: Kiln's own `train` loop (shuffle, batch copies, 2000 epochs): "
                  f"{fw.spread(loop[t])} us per epoch; PyTorch/that "
                  f"{statistics.median(pt / lt for pt, lt in zip(pm, loop[t])):.2f}")
    print()


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--kiln", default=os.path.join(ROOT, "build", "kiln"), help="kiln binary")
    ap.add_argument("--reps", type=int, default=5, help="repetitions per measurement")
    ap.add_argument("--threads", default="1,2", help="thread counts, comma-separated")
    ap.add_argument("--runs-scale", type=float, default=1.0,
                    help="multiply every case's runs per repetition by this")
    ap.add_argument("--only", default="", help="run only cases whose key (mlp, mlp784, gpt, lstm) is this")
    ap.add_argument("--check-only", action="store_true", help="check equivalence, time nothing")
    ap.add_argument("--keep", default="", help="keep the built programs and files in this folder")
    ap.add_argument("--seed", type=int, default=1)
    args = ap.parse_args()
    threads = [int(t) for t in args.threads.split(",")]
    if not os.access(args.kiln, os.X_OK):
        sys.exit(f"train.py: no kiln at {args.kiln}; build it (see README.md) or pass --kiln")

    ob = fw.load_openblas()
    print(f"machine: {os.cpu_count()} CPUs ({len(os.sched_getaffinity(0))} usable), "
          f"{fw.cpu_model()}; load average {fw.loadavg()}")
    env = " ".join(f"{v}={fw.ORIGINAL_ENV.get(v, '(unset)')}" for v in
                   ("OPENBLAS_CORETYPE", "OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "OMP_WAIT_POLICY"))
    print(f"environment (as given, used for Kiln): {env}")
    print(f"PyTorch process: OMP_WAIT_POLICY={os.environ['OMP_WAIT_POLICY']}; threads set per "
          f"measurement with torch.set_num_threads(N) and openblas_set_num_threads(N)")
    if ob is not None:
        print(f"openblas: {ob.openblas_get_config().decode()}, core {ob.openblas_get_corename().decode()}")
    print(f"kiln: {run([args.kiln, 'version']).strip()} ({args.kiln}); torch {torch.__version__}, "
          f"numpy {np.__version__}")
    print()

    cases = [c for c in CASES if not args.only or args.only == c.key]
    rows = []
    tmp = None if args.keep else tempfile.TemporaryDirectory(prefix="kiln-train-bench-")
    work = args.keep or tmp.name
    os.makedirs(work, exist_ok=True)
    try:
        for case in cases:
            # One stream per case: the same weights and batches with --only or
            # --check-only as in a full run.
            rng = np.random.default_rng([args.seed, [c.key for c in CASES].index(case.key)])
            cwork = os.path.join(work, case.key)
            os.makedirs(cwork, exist_ok=True)
            model = os.path.join(ROOT, case.model)
            exe = os.path.join(cwork, case.key)
            run([args.kiln, "build", model, "-o", exe, "--dim", f"batch={case.batch}"])
            info = run([exe, "info"])
            name = re.search(r"^model:\s+(\S+)", info, re.M).group(1)
            kt = re.search(r"^training:\s+(.*)$", info, re.M).group(1)
            print(f"{case.name}: kiln: {kt}; torch: {OPTIM[case.key]['torch']}")
            params = fw.kiln_params(args.kiln, model, case.batch)
            weights = fw.random_weights(params, rng)
            wfile = os.path.join(cwork, "w.safetensors")
            fw.write_safetensors(wfile, weights)
            try:
                rep = check_equivalence(case, exe, name, weights, rng, cwork)
            except Mismatch as e:
                sys.exit(f"train.py: MISMATCH {e}\n(files kept with --keep DIR)")
            for r in rep:
                print_check(case, r)
            if args.check_only:
                continue
            case = case._replace(runs=max(3, int(round(case.runs * args.runs_scale))))
            mflop = fw.forward_mflop(args.kiln, model, case.batch)
            fn = torch_timed_fn(case, weights, rng)
            k = {t: [] for t in threads}
            p = {t: [] for t in threads}
            loop = {t: [] for t in threads} if case.key == "mlp" else None
            for r in range(args.reps):
                for t in threads:  # alternate which of the pair goes first
                    if r % 2 == 0:
                        k[t].append(time_kiln(exe, wfile, t, case))
                    p[t].append(time_torch(fn, t, case))
                    if r % 2 == 1:
                        k[t].append(time_kiln(exe, wfile, t, case))
                    if loop is not None:
                        loop[t].append(time_kiln_loop(exe, os.path.join(ROOT, "models/mlp.csv"),
                                                      t, 100))
            rows.append((case, mflop, k, p, loop))
            print(f"timed {case.name}", flush=True)
    finally:
        if tmp:
            tmp.cleanup()
    if args.check_only:
        return
    print()
    print("Kiln us, PyTorch us: median of the repetitions' medians [their min-max], us per step "
          "(per epoch for the seed MLP). PyTorch/Kiln: median over repetitions of the ratio of the "
          "two measurements taken back to back (> 1: Kiln faster). best: the fastest run of all "
          "repetitions. Kiln GFLOP/s: 3 x the forward FLOPs of `kiln check` (forward + backward) "
          "per step over Kiln's median time.")
    print()
    for t in threads:
        title = f"{t} thread{'s' if t > 1 else ''}"
        title += " (the stable numbers)" if t == 1 else " (depends on what else runs on this machine)"
        print_table(title, rows, t, args.reps)
    print(f"load average at the end: {fw.loadavg()}")


if __name__ == "__main__":
    main()
