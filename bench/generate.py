#!/usr/bin/python3
"""Per-token generation latency: Kiln's `generate` against PyTorch doing the same,
with and without a cache, for the bundled GPT and LSTM.

Both sides decode greedily from a one-character prompt for N tokens (GPT: the
context minus one, so the key/value cache never restarts; LSTM: the same count)
and the time per generated token is the whole loop's time over N, prompt step
included, the median of --reps runs.

  cached     Kiln: the decode model (one step per token over the key/value caches,
             or the LSTM's carried h and c). PyTorch: the same modules run one
             token at a time with a hand-written key/value cache (the attention
             of bench/forward.py's GPT, fed past keys and values) or torch.lstm
             with (h, c) carried.
  recompute  Kiln: `--no-cache`, the window model over the whole context (its
             shape is static: every step computes all T positions). PyTorch: the
             usual loop without a cache, the model run on the tokens so far
             (growing to N), as nanoGPT's generate does.

Weights: Kiln's own initialization (from the model's seed), and PyTorch's; the
latency does not depend on the values. Threads 1 and 2: PyTorch gets
torch.set_num_threads(N); Kiln --threads N.

    /usr/bin/python3 bench/generate.py [--kiln build/kiln] [--reps 5] [--only gpt]
"""
import argparse
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

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def dims_of(kiln, model):
    """The model's dims as `kiln check` prints them ("dims: a=1 b=2")."""
    out = subprocess.run([kiln, "check", model], capture_output=True, text=True, check=True).stdout
    m = re.search(r"dims:\s*(.*)", out)
    return {k: int(v) for k, v in (p.split("=") for p in m.group(1).split())}


#
# PyTorch: the same architectures, decoding with and without a cache.
#
def gpt_step(model, tok, pos, cache):
    """One token through bench/forward.py's GPT with a key/value cache per layer."""
    x = model.wte(tok) + model.wpe(pos)  # (1, 1, D)
    for i, block in enumerate(model.h):
        a = block.attn
        h = block.ln1(x)
        q, k, v = a.qkv(h).split(a.d, dim=2)
        dh = a.d // a.heads
        q, k, v = (t.view(1, 1, a.heads, dh).transpose(1, 2) for t in (q, k, v))
        if cache[i] is not None:
            k = torch.cat([cache[i][0], k], dim=2)
            v = torch.cat([cache[i][1], v], dim=2)
        cache[i] = (k, v)
        att = F.softmax((q @ k.transpose(-2, -1)) / math.sqrt(dh), dim=-1)
        y = (att @ v).transpose(1, 2).reshape(1, 1, a.d)
        x = x + a.proj(y)
        x = x + block.proj(block.act(block.fc(block.ln2(x))))
    return model.logits(model.ln_f(x))[0, -1]


def gpt_generate(model, n, cached):
    idx = torch.zeros(1, 1, dtype=torch.long)
    cache = [None] * len(model.h)
    tok = idx
    for t in range(n):
        if cached:
            logits = gpt_step(model, tok, torch.tensor([t]), cache)
        else:
            logits = model(idx)[0, -1]
        tok = logits.argmax().view(1, 1)
        idx = torch.cat([idx, tok], dim=1)
    return idx


def lstm_generate(model, n, cached):
    l0 = model.rnn.l0
    weights = [l0.weight_ih.t(), l0.weight_hh.t(), l0.bias, model.bias_hh]
    idx = torch.zeros(1, 1, dtype=torch.long)
    state = (torch.zeros(1, 1, model.hidden), torch.zeros(1, 1, model.hidden))
    tok = idx
    for _ in range(n):
        if cached:
            y, h, c = torch.lstm(model.emb(tok), state, weights, True, 1, 0.0, False, False, True)
            state = (h, c)
            logits = model.logits(y)[0, -1]
        else:
            logits = model(idx)[0, -1]
        tok = logits.argmax().view(1, 1)
        idx = torch.cat([idx, tok], dim=1)
    return idx


def time_torch(fn, threads, reps):
    torch.set_num_threads(threads)
    fw.openblas_set_threads(threads)
    with torch.inference_mode():
        fn()  # warm-up
        times = []
        for _ in range(reps):
            t0 = time.perf_counter()
            fn()
            times.append(time.perf_counter() - t0)
    return statistics.median(times)


TOKEN_RE = re.compile(r"in ([0-9.]+) ms: ([0-9.]+) ms per generated token")


def time_kiln(exe, n, threads, reps, cached):
    cmd = [exe, "generate", "--prompt", "\n", "--tokens", str(n), "--temperature", "0",
           "--threads", str(threads)] + ([] if cached else ["--no-cache"])
    subprocess.run(cmd, capture_output=True, check=True)  # warm-up
    times = []
    for _ in range(reps):
        time.sleep(0.1)  # PyTorch's BLAS workers spin down
        r = subprocess.run(cmd, capture_output=True, text=True, check=True)
        m = TOKEN_RE.search(r.stderr)
        if not m:
            sys.exit("generate.py: cannot read the time from `%s`:\n%s" % (" ".join(cmd), r.stderr))
        times.append(float(m.group(1)) / 1e3)
    return statistics.median(times)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--kiln", default=os.path.join(ROOT, "build", "kiln"))
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--only", default="")
    a = ap.parse_args()
    torch.manual_seed(0)
    print("CPU: %s; load average %s; OPENBLAS_CORETYPE=%s" % (
        fw.cpu_model(), fw.loadavg(), os.environ.get("OPENBLAS_CORETYPE", "(unset)")))
    print("ms per generated token, median of %d runs (greedy, one-character prompt)\n" % a.reps)
    print("| model | tokens | threads | Kiln cached | PyTorch cached | ratio | "
          "Kiln recompute | PyTorch recompute | ratio |")
    print("|---|---|---|---|---|---|---|---|---|")
    with tempfile.TemporaryDirectory() as work:
        for key in ("gpt", "lstm"):
            if a.only and a.only != key:
                continue
            yaml = os.path.join(ROOT, "models", key + ".yaml")
            exe = os.path.join(work, key)
            subprocess.run([a.kiln, "build", yaml, "-o", exe], check=True)
            d = dims_of(a.kiln, yaml)
            if key == "gpt":
                model = fw.GPT(d["vocab"], d["ctx"], d["d"], d["heads"], 4).eval()
                n = d["ctx"] - 1
                gen = lambda cached: gpt_generate(model, n, cached)
            else:
                sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
                import train as tr
                model = tr.LSTMLM(d["vocab"], d["embed"], d["hidden"]).eval()
                for p in model.parameters():
                    torch.nn.init.uniform_(p, -0.05, 0.05)
                n = d["seq"] - 1
                gen = lambda cached: lstm_generate(model, n, cached)
            for threads in (1, 2):
                row = []
                for cached in (True, False):
                    k = time_kiln(exe, n, threads, a.reps, cached) / n * 1e3
                    t = time_torch(lambda: gen(cached), threads, a.reps) / n * 1e3
                    row += ["%.3f" % k, "%.3f" % t, "%.2fx" % (t / k)]
                print("| %s | %d | %d | %s |" % (key, n, threads, " | ".join(row)), flush=True)
    print("\nratio: PyTorch's time over Kiln's (above 1: Kiln is faster).")


if __name__ == "__main__":
    main()
