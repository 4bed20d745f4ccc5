#!/usr/bin/python3
"""PyTorch eager on a GPU for the models tests/gpu/run.sh times Kiln's CUDA programs on.

Measured, all in float32 (PyTorch's defaults: no TF32 in matrix products, which
the output records):

  train     one training step of bench/models/mlp784_train.yaml (784-512-512-10,
            Adam, batch 128) and of models/gpt.yaml (4 layers of 256, AdamW, clip
            1.0, cosine schedule, batch 16 x 128): zero_grad, forward,
            cross_entropy, backward, [clip_grad_norm_], step, [scheduler.step],
            with bench/train.py's modules and TorchTrainer (the optimizers its
            OPTIM table names) on one fixed random batch, as `PROG bench --train`
            takes one. A run is enough back-to-back steps to last --run-ms,
            bracketed by torch.cuda.synchronize(); the result is the median (and
            min) over --runs runs of the time per step, after --warmup steps.
  generate  the GPT decoding greedily from one token for --tokens tokens (the
            context minus one: the cache never restarts), one token per call
            through bench/generate.py's gpt_step with its key/value cache per
            layer; tokens/s is the median over --reps decodes of tokens over the
            decode's time, synchronized at its end. The next token stays on the
            device (argmax): PyTorch waits for nothing inside the loop, where
            Kiln's `generate` takes each token to the host to print it.

Weights are PyTorch's own initialization: a step's time does not depend on them.
Needs only numpy and torch (no safetensors, no network, no kiln binary). Prints
one JSON object on standard output (progress on standard error):

    python3 bench/gpu.py [--device cuda|cpu] [--only gpt] [--out FILE]

--device cpu runs the same code on the CPU, to try the script where there is no GPU.

--autocast bf16 times the training steps with the whole step under
torch.autocast(device_type, dtype=torch.bfloat16): the peer of Kiln's
--gpu-matmul=bf16. Autocast runs the forward pass's matmuls (nn.Linear, the
attention's products) in bf16 with f32 accumulation and keeps weights, gradients
and optimizer state in f32, as Kiln's option does; backward runs each op in the
dtype its forward chose. Kiln keeps attention in f32 where PyTorch's attention
products go to bf16: PyTorch does a little more in bf16. Generation is not timed
then.
"""
import argparse
import json
import os
import platform
import statistics
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import forward as fw  # noqa: E402  (sets OMP_WAIT_POLICY before torch is imported)
import generate as gen  # noqa: E402
import train as tr  # noqa: E402

import numpy as np  # noqa: E402
import torch  # noqa: E402

CASES = {c.key: c for c in tr.CASES}
TRAIN_KEYS = ("mlp784", "gpt")


def log(msg):
    print(f"gpu.py: {msg}", file=sys.stderr, flush=True)


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed_runs(fn, device, runs, warmup, run_ms):
    """Per-call seconds of `runs` runs of fn, each of enough calls to last about
    run_ms (the first call after warm-up decides how many), after `warmup` calls."""
    for _ in range(warmup):
        fn()
    sync(device)
    t0 = time.perf_counter()
    fn()
    sync(device)
    one = time.perf_counter() - t0
    calls = max(1, int(run_ms * 1e-3 / max(one, 1e-7)))
    times = []
    for _ in range(runs):
        sync(device)
        t0 = time.perf_counter()
        for _ in range(calls):
            fn()
        sync(device)
        times.append((time.perf_counter() - t0) / calls)
    return times, calls


def train_step_fn(key, device, rng):
    """The step PyTorch is timed on: TorchTrainer.step on one fixed random batch."""
    case = CASES[key]
    module = tr.torch_model(case).to(device)
    trainer = tr.TorchTrainer(case, module)
    if key == "mlp784":
        x = torch.from_numpy(rng.standard_normal((case.batch, 784)).astype(np.float32))
        y = torch.from_numpy(rng.integers(0, 10, size=case.batch))
    else:
        x = torch.from_numpy(rng.integers(0, 96, size=(case.batch, tr.SEQ[key])))
        y = torch.from_numpy(rng.integers(0, 96, size=(case.batch, tr.SEQ[key])))
    x, y = x.to(device), y.to(device)
    return lambda: trainer.step(x, y)


def gpt_decode(model, n, device):
    """Greedy decoding of n tokens from token 0 with bench/generate.py's gpt_step."""
    tok = torch.zeros(1, 1, dtype=torch.long, device=device)
    pos = torch.arange(n, device=device)
    cache = [None] * len(model.h)
    out = []
    for t in range(n):
        logits = gen.gpt_step(model, tok, pos[t:t + 1], cache)
        tok = logits.argmax().view(1, 1)
        out.append(tok)
    return torch.cat(out, dim=1)


def time_generate(device, tokens, reps):
    model = fw.GPT().to(device).eval()
    times = []
    with torch.inference_mode():
        gpt_decode(model, tokens, device)  # warm-up
        sync(device)
        for _ in range(reps):
            t0 = time.perf_counter()
            gpt_decode(model, tokens, device)
            sync(device)
            times.append(time.perf_counter() - t0)
    med = statistics.median(times)
    return dict(tokens=tokens, reps=reps, ms_per_token=med / tokens * 1e3,
                tokens_per_s=tokens / med, best_tokens_per_s=tokens / min(times))


def device_info(device):
    info = dict(device=device.type, torch=torch.__version__, numpy=np.__version__,
                python=platform.python_version(), cuda=torch.version.cuda,
                tf32_matmul=bool(torch.backends.cuda.matmul.allow_tf32))
    if device.type == "cuda":
        p = torch.cuda.get_device_properties(device)
        info.update(name=p.name, capability=f"sm_{p.major}{p.minor}",
                    memory_gib=round(p.total_memory / 2**30, 1))
    else:
        info.update(name=fw.cpu_model(), threads=torch.get_num_threads())
    return info


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--device", default="cuda", help="cuda (default), cuda:N or cpu")
    ap.add_argument("--only", default="", help="comma-separated subset of: mlp784,gpt,generate")
    ap.add_argument("--runs", type=int, default=20, help="timed runs per training step")
    ap.add_argument("--warmup", type=int, default=10, help="warm-up steps")
    ap.add_argument("--run-ms", type=float, default=20, help="length of one timed run, ms")
    ap.add_argument("--tokens", type=int, default=127, help="tokens per decode (GPT ctx - 1)")
    ap.add_argument("--reps", type=int, default=5, help="timed decodes")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--out", default="", help="also write the JSON to this file")
    ap.add_argument("--autocast", choices=["bf16"], help="training steps under bf16 autocast")
    a = ap.parse_args()
    only = set(a.only.split(",")) - {""}
    if a.autocast:
        only = (only or set(TRAIN_KEYS)) - {"generate"}
    unknown = only - set(TRAIN_KEYS) - {"generate"}
    if unknown:
        sys.exit(f"gpu.py: --only: unknown {sorted(unknown)}; expected mlp784, gpt, generate")
    device = torch.device(a.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        sys.exit("gpu.py: torch sees no CUDA device (torch.cuda.is_available() is False); "
                 "--device cpu runs on the CPU")
    if device.type == "cuda" and device.index is not None:
        torch.cuda.set_device(device)
    torch.manual_seed(a.seed)
    result = dict(info=device_info(device), train={}, generate={},
                  settings=dict(runs=a.runs, warmup=a.warmup, run_ms=a.run_ms))
    if a.autocast:
        result["info"]["autocast"] = "bfloat16"
    log(f"torch {torch.__version__} on {result['info']['name']}"
        + (", autocast bfloat16" if a.autocast else ""))
    for key in TRAIN_KEYS:
        if only and key not in only:
            continue
        rng = np.random.default_rng([a.seed, TRAIN_KEYS.index(key)])
        step = train_step_fn(key, device, rng)
        if a.autocast:
            def step(plain=step):
                with torch.autocast(device_type=device.type, dtype=torch.bfloat16):
                    plain()
        times, calls = timed_runs(step, device, a.runs, a.warmup, a.run_ms)
        r = dict(name=CASES[key].name, batch=CASES[key].batch, optimizer=tr.OPTIM[key]["torch"],
                 median_us=statistics.median(times) * 1e6, min_us=min(times) * 1e6,
                 max_us=max(times) * 1e6, runs=a.runs, calls_per_run=calls)
        result["train"][key] = r
        log(f"train {key}: median {r['median_us']:.1f} us, min {r['min_us']:.1f} us "
            f"({a.runs} runs x {calls} steps)")
    if not only or "generate" in only:
        g = time_generate(device, a.tokens, a.reps)
        result["generate"]["gpt"] = g
        log(f"generate gpt: {g['tokens_per_s']:.1f} tokens/s ({g['ms_per_token']:.3f} ms per token)")
    text = json.dumps(result, indent=1)
    if a.out:
        with open(a.out, "w") as f:
            f.write(text + "\n")
    print(text)


if __name__ == "__main__":
    main()
