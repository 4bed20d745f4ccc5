#!/usr/bin/python3
"""Checks the reference interpreter (ir/interp.c) against NumPy.

Runs tests/interp_cases.c's program into a temporary folder, then recomputes every
case it wrote with NumPy, written independently of the C code (np.matmul,
np.logaddexp, explicit loops for lstm and attention), and compares. The gradient
ops (layernorm_dx, lstm_grad, attention_grad, ...) are not restated as backward
formulas: they are differentiated numerically from the NumPy forwards by the
complex step (see cs_grad), so a wrong backward formula in C cannot be copied here.

    interp_check.py INTERP_CASES_EXE     run the program into a temp dir and check
    interp_check.py --dir DIR            check a folder the program already wrote

Tolerance: |got - want| <= ATOL + RTOL * |want| elementwise, RTOL = ATOL = 1e-12.
Both sides compute in double; they differ only in summation order (numpy sums
pairwise, the interpreter left to right) and in libm versus numpy's own exp,
log, tanh (a few ulp). With inputs of magnitude <= 40 and at most ~120 terms
per sum, that is below 1e-13 absolute, so 1e-12 leaves margin and still catches
any real mistake (a wrong index or formula is off by far more). ATOL covers
results near zero where a relative bound means nothing (cancelling sums, gelu
and sigmoid far on the negative side).

The complex-step derivatives keep that tolerance: Im f(x + ih) / h with h = 1e-20
has no subtraction (unlike finite differences, whose truncation and cancellation
errors would be ~1e-10 at best), and its truncation error is O(h^2) = 1e-40, so
it is as exact as evaluating f itself in double: a few ulp per operation.

Every op of the table (ops.txt, written by the program from kiln_ops) must have
a case and a reference here; a missing one is a failure. The last line printed
is 'N passed, N failed'; the exit status is non-zero on any failure.
"""
import json
import os
import subprocess
import sys
import tempfile

try:
    import numpy as np
except ImportError:
    print("interp_check: numpy is missing; install Debian's python3-numpy "
          "(scripts/install-deps.sh) -- this check does not skip", file=sys.stderr)
    print("0 passed, 1 failed")
    sys.exit(1)

RTOL = 1e-12
ATOL = 1e-12


def sigmoid(x):
    # The tanh form: no overflow, and a different formula from the C side's
    # two-branch one. Absolute error ~1e-16, inside ATOL where x is very negative.
    return 0.5 * (1.0 + np.tanh(0.5 * x))


#
# SplitMix64, restated from the definition in ir/interp.c's run_dropout comment.
#
M64 = (1 << 64) - 1
GAMMA = 0x9E3779B97F4A7C15


def mix64(z):
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & M64
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & M64
    return z ^ (z >> 31)


def dropout(ins, a, case):
    x = ins[0]
    if not case["training"]:
        return x.copy()
    p = a["p"]
    s = case["seed"] ^ mix64(a["key"] & M64)  # the key is an int64; its 64 bits
    flat = x.ravel()
    keep = np.array([(mix64((s + (i + 1) * GAMMA) & M64) >> 11) / 2.0**53 >= p
                     for i in range(flat.size)], dtype=bool)
    n = flat.size
    # The stream must look random: the kept count within 5 sd of n (1 - p).
    if n >= 50 and abs(keep.sum() - n * (1 - p)) > 5 * np.sqrt(n * p * (1 - p)) + 1:
        raise AssertionError("kept %d of %d with p=%g" % (keep.sum(), n, p))
    return np.where(keep, flat / (1 - p), 0.0).reshape(x.shape)


def reduce(fn):
    def run(ins, a, case):
        axes = tuple(a["ints"]) if a["ints"] else None
        return np.asarray(fn(ins[0], axis=axes, keepdims=a["keepdims"]), dtype=np.float64)
    return run


def lse(x, axis):
    return np.logaddexp.reduce(x, axis=axis, keepdims=True)


def layernorm(ins, a, case):
    x, gamma, beta = ins
    mu = x.mean(axis=-1, keepdims=True)
    var = x.var(axis=-1, keepdims=True)  # ddof=0: biased
    return (x - mu) / np.sqrt(var + a["eps"]) * gamma + beta


def matmul(ins, a, case):
    x, y = ins
    if a["trans_a"]:
        x = np.swapaxes(x, -1, -2)
    if a["trans_b"]:
        y = np.swapaxes(y, -1, -2)
    return np.matmul(x, y)


def lstm_from(x, w_ih, w_hh, b, h, c):
    """lstm over x's time steps from h and c, gate order i f g o."""
    H = w_hh.shape[0]
    out = np.zeros((x.shape[0], x.shape[1], H), dtype=np.result_type(x, w_ih, w_hh, b, h))
    for t in range(x.shape[1]):
        z = x[:, t, :] @ w_ih + h @ w_hh + b
        i, f = sigmoid(z[:, :H]), sigmoid(z[:, H:2 * H])
        g, o = np.tanh(z[:, 2 * H:3 * H]), sigmoid(z[:, 3 * H:])
        c = f * c + i * g
        h = o * np.tanh(c)
        out[:, t, :] = h
    return out


def lstm(ins, a, case):
    x, w_ih, w_hh, b = ins
    dt = np.result_type(*ins)  # complex under cs_grad
    zeros = np.zeros((x.shape[0], w_hh.shape[0]), dtype=dt)
    return lstm_from(x, w_ih, w_hh, b, zeros, zeros)


def lstm_step(ins, a, case):
    """lstm from state[0] (h) and state[1] (c) instead of zeros."""
    x, w_ih, w_hh, b, st = ins
    return lstm_from(x, w_ih, w_hh, b, st[0], st[1])


def attention_decode(ins, a, case):
    """The new k, v written at position p of the caches, then q attends to 0..p."""
    q, k, v, kc, vc, pos = ins
    kc, vc = kc.copy(), vc.copy()
    p = int(pos.reshape(-1)[0])
    kc[:, p, :], vc[:, p, :] = k[:, 0, :], v[:, 0, :]
    heads = a["heads"]
    dh = q.shape[2] // heads
    out = np.zeros(q.shape)
    for hd in range(heads):
        cols = slice(hd * dh, (hd + 1) * dh)
        for b in range(q.shape[0]):
            s = kc[b, :p + 1, cols] @ q[b, 0, cols] / np.sqrt(dh)
            e = np.exp(s - s.max())
            out[b, 0, cols] = (e / e.sum()) @ vc[b, :p + 1, cols]
    return out


def softmax_rows(s, mask):
    """Softmax over the last axis leaving out masked entries (p = 0 there).
    Shifted by the largest real part, so it also holds for complex s."""
    m = np.where(mask, -np.inf, s.real).max(axis=-1, keepdims=True)
    e = np.where(mask, 0.0, np.exp(np.where(mask, 0.0, s - m)))
    return e / e.sum(axis=-1, keepdims=True)


def attention(ins, a, case):
    q, k, v = ins
    nb, nt, d = q.shape
    heads = a["heads"]
    dh = d // heads
    out = np.zeros(q.shape, dtype=np.result_type(q, k, v))
    mask = np.triu(np.ones((nt, nt), dtype=bool), 1) if a["causal"] else np.zeros((nt, nt), bool)
    for hd in range(heads):
        cols = slice(hd * dh, (hd + 1) * dh)
        for b in range(nb):
            s = q[b, :, cols] @ k[b, :, cols].T / np.sqrt(dh)  # [T, T]
            out[b, :, cols] = softmax_rows(s, mask) @ v[b, :, cols]
    return out


def cross_entropy(ins, a, case):
    logits, labels = ins
    labels = labels.astype(np.int64)
    assert labels.min(initial=0) >= 0 and labels.max(initial=0) < logits.shape[-1]
    picked = np.take_along_axis(logits, labels[..., None], axis=-1)[..., 0]
    return np.mean(lse(logits, -1)[..., 0] - picked)


def bce(ins, a, case):
    x, y = ins
    return np.mean(np.logaddexp(0.0, x) - x * y)  # softplus(x) - x y


def gelu(x):
    return 0.5 * x * (1 + np.tanh(np.sqrt(2 / np.pi) * (x + 0.044715 * x**3)))


def unary(fn):
    return lambda ins, a, case: fn(ins[0], a)


def binary(fn):
    return lambda ins, a, case: fn(ins[0].astype(np.float64), ins[1].astype(np.float64))


#
# Gradients by the complex step: for f analytic and real on real inputs,
# df/dx_k = Im f(x + i h e_k) / h up to O(h^2). Every argument is made complex so
# the forwards above carry the perturbation through.
#
CS_H = 1e-20


def cs_grad(f, args, which):
    """The gradient of the real scalar f(*args) with respect to args[which]."""
    args = [np.array(v, dtype=np.complex128) for v in args]
    x = args[which]
    g = np.zeros(x.shape)
    for k in np.ndindex(*x.shape):
        x[k] += 1j * CS_H
        g[k] = f(*args).imag / CS_H
        x[k] = x[k].real
    return g


def cs_elem(fn, x):
    """The derivative of an elementwise fn at every element of x at once."""
    return fn(np.asarray(x, dtype=np.complex128) + 1j * CS_H).imag / CS_H


def layernorm_c(x, gamma, eps):
    # Written out, not x.var(): np.var takes |x - mean|^2, which is not analytic.
    mu = x.mean(axis=-1, keepdims=True)
    var = ((x - mu) ** 2).mean(axis=-1, keepdims=True)
    return (x - mu) / np.sqrt(var + eps) * gamma


def layernorm_dx(ins, a, case):
    x, gamma, dy = ins
    return cs_grad(lambda x, g: (dy * layernorm_c(x, g, a["eps"])).sum(), [x, gamma], 0)


def layernorm_dgamma(ins, a, case):
    x, dy = ins
    gamma = np.ones(x.shape[-1])
    return cs_grad(lambda x, g: (dy * layernorm_c(x, g, a["eps"])).sum(), [x, gamma], 1)


def embedding_grad(ins, a, case):
    ids, dy = ins
    d = dy.shape[-1]
    out = np.zeros((a["size"], d))
    np.add.at(out, ids.astype(np.int64).ravel(), dy.reshape(-1, d))
    return out


def lstm_grad(ins, a, case):
    dy = ins[4]
    loss = lambda *p: (dy * lstm(p, a, case)).sum()
    return np.concatenate([cs_grad(loss, ins[:4], w).ravel() for w in range(4)])


def attention_grad(ins, a, case):
    dy = ins[3]
    loss = lambda *p: (dy * attention(p, a, case)).sum()
    return np.concatenate([cs_grad(loss, ins[:3], w) for w in range(3)], axis=-1)


def cross_entropy_grad(ins, a, case):
    logits, labels = ins
    labels = labels.astype(np.int64)

    def mean_ce(x):
        m = x.real.max(axis=-1, keepdims=True)
        lse_x = (m + np.log(np.exp(x - m).sum(axis=-1, keepdims=True)))[..., 0]
        return np.mean(lse_x - np.take_along_axis(x, labels[..., None], axis=-1)[..., 0])

    return cs_grad(mean_ce, [logits], 0)


REF = {
    "input": lambda ins, a, case: ins[0],
    "param": lambda ins, a, case: ins[0],
    "const": lambda ins, a, case: np.full(case["out_shape"], a["value"]),
    "neg": unary(lambda x, a: -x),
    "exp": unary(lambda x, a: np.exp(x)),
    "log": unary(lambda x, a: np.log(x)),
    "sqrt": unary(lambda x, a: np.sqrt(x)),
    "rsqrt": unary(lambda x, a: 1 / np.sqrt(x)),
    "pow": unary(lambda x, a: np.power(x, a["exponent"])),
    "relu": unary(lambda x, a: np.where(x > 0, x, 0.0)),
    "sigmoid": unary(lambda x, a: sigmoid(x)),
    "tanh": unary(lambda x, a: np.tanh(x)),
    "gelu": unary(lambda x, a: gelu(x)),
    "silu": unary(lambda x, a: x * sigmoid(x)),
    "clamp": unary(lambda x, a: np.minimum(np.maximum(x, a["lo"]), a["hi"])),
    "dropout": dropout,
    "add": binary(np.add),
    "sub": binary(np.subtract),
    "mul": binary(np.multiply),
    "div": binary(np.divide),
    "where": lambda ins, a, case: np.where(ins[0] != 0, ins[1], ins[2]),
    "sum": reduce(np.sum),
    "mean": reduce(np.mean),
    "max": reduce(np.max),
    "softmax": lambda ins, a, case: np.exp(ins[0] - lse(ins[0], a["axis"])),
    "log_softmax": lambda ins, a, case: ins[0] - lse(ins[0], a["axis"]),
    "layernorm": layernorm,
    "matmul": matmul,
    "reshape": lambda ins, a, case: ins[0].reshape(a["ints"]),
    "transpose": lambda ins, a, case: np.transpose(ins[0], a["ints"]),
    "concat": lambda ins, a, case: np.concatenate(ins, axis=a["axis"]),
    "slice": lambda ins, a, case: np.take(ins[0], np.arange(a["start"], a["end"]), axis=a["axis"]),
    "broadcast": lambda ins, a, case: np.broadcast_to(ins[0], a["ints"]),
    "embedding": lambda ins, a, case: ins[1][ins[0].astype(np.int64)],
    "lstm": lstm,
    "attention": attention,
    "lstm_step": lstm_step,
    "attention_decode": attention_decode,
    "cross_entropy": cross_entropy,
    "mse": lambda ins, a, case: np.mean((ins[0] - ins[1]) ** 2),
    "binary_cross_entropy": bce,
    "gelu_grad": lambda ins, a, case: cs_elem(gelu, ins[0]) * ins[1],
    "silu_grad": lambda ins, a, case: cs_elem(lambda x: x * sigmoid(x), ins[0]) * ins[1],
    # Not differentiable at the bounds: the gradient passes on [lo, hi], bounds included.
    "clamp_grad": lambda ins, a, case: np.where((ins[0] >= a["lo"]) & (ins[0] <= a["hi"]),
                                                ins[1], 0.0),
    "layernorm_dx": layernorm_dx,
    "layernorm_dgamma": layernorm_dgamma,
    "embedding_grad": embedding_grad,
    "lstm_grad": lstm_grad,
    "attention_grad": attention_grad,
    "cross_entropy_grad": cross_entropy_grad,
}


def compare(got, want, shape):
    """None when got matches want, else a description of the worst element."""
    want = np.asarray(want, dtype=np.float64)
    if got.shape != tuple(shape) or want.shape != tuple(shape):
        return "shape: got %s, NumPy %s, graph %s" % (got.shape, want.shape, tuple(shape))
    if got.size == 0:
        return None
    if not np.all(np.isfinite(want)):
        return "NumPy's result is not finite (the case's inputs are out of the op's domain)"
    err = np.abs(got - want)
    bound = ATOL + RTOL * np.abs(want)
    bad = ~(err <= bound)  # NaN in got counts as bad
    if not bad.any():
        return None
    i = np.unravel_index(np.argmax(np.where(bad, err / bound, -1.0)), got.shape)
    return "%d of %d elements differ; worst at %s: got %.17g, NumPy %.17g" % (
        bad.sum(), got.size, list(i), got[i], want[i])


def check(folder):
    with open(os.path.join(folder, "ops.txt")) as f:
        table_ops = [line.strip() for line in f if line.strip()]
    cases = []
    with open(os.path.join(folder, "cases.jsonl")) as f:
        for line in f:
            cases.append(json.loads(line))
    passed = failed = 0
    seen = {}
    for case in cases:
        op = case["op"]
        seen[op] = seen.get(op, 0) + 1
        try:
            ins = [np.load(os.path.join(folder, name)) for name in case["inputs"]]
            got = np.load(os.path.join(folder, case["output"]))
            if op not in REF:
                raise AssertionError("no NumPy reference for op '%s'" % op)
            problem = compare(got, REF[op](ins, case["attrs"], case), case["out_shape"])
        except Exception as e:  # a broken reference or file is a failure, not a crash
            problem = "%s: %s" % (type(e).__name__, e)
        if problem is None:
            passed += 1
            continue
        failed += 1
        shapes = " ".join(str(list(np.load(os.path.join(folder, n)).shape))
                          for n in case["inputs"])
        print("FAIL case %d: %s %s attrs=%s training=%s: %s" % (
            case["case"], op, shapes, json.dumps(case["attrs"]), case["training"], problem))
    for op in table_ops:
        if op not in REF:
            print("FAIL op '%s' of the table has no NumPy reference in interp_check.py" % op)
            failed += 1
        elif op not in seen:
            print("FAIL op '%s' of the table has no case in interp_cases.c" % op)
            failed += 1
    for op in sorted(set(seen) - set(table_ops)):
        print("FAIL cases name op '%s', which is not in the table" % op)
        failed += 1
    print("interp_check: %d cases over %d ops, tolerance %g relative + %g absolute" % (
        len(cases), len(seen), RTOL, ATOL))
    return passed, failed


def main(argv):
    if len(argv) == 3 and argv[1] == "--dir":
        passed, failed = check(argv[2])
    elif len(argv) == 2:
        with tempfile.TemporaryDirectory(prefix="kiln-interp-") as folder:
            run = subprocess.run([argv[1], folder])
            if run.returncode != 0:
                print("interp_check: %s exited with status %d" % (argv[1], run.returncode))
                print("0 passed, 1 failed")
                return 1
            passed, failed = check(folder)
    else:
        print("usage: interp_check.py INTERP_CASES_EXE | --dir DIR", file=sys.stderr)
        print("0 passed, 1 failed")
        return 2
    print("%d passed, %d failed" % (passed, failed))
    return 1 if failed else 0


if __name__ == "__main__":
    try:
        status = main(sys.argv)
    except Exception:  # a crash is a failure with the closing line all the same
        import traceback
        traceback.print_exc()
        print("0 passed, 1 failed")
        status = 1
    sys.exit(status)
