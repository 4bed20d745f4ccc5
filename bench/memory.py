#!/usr/bin/env python3
"""Peak resident memory of a training run of the GPT (models/gpt.yaml, batch 16 x
128 tokens, AdamW, 3 steps): Kiln's program against PyTorch training the same
model (bench/forward.py's GPT, the idiomatic loop of bench/train.py). Both runs
are measured the same way: the child's peak RSS (getrusage RUSAGE_CHILDREN,
ru_maxrss). PyTorch's figure includes the interpreter and torch itself; the
figure after the model and optimizer are built is printed too, so the reader
can take out what importing torch costs.

usage: bench/install-deps.sh && /usr/bin/python3 bench/memory.py [--kiln build/kiln]
"""
import argparse
import os
import resource
import subprocess
import sys
import tempfile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

TORCH_RUN = r"""
import resource, sys, torch, torch.nn.functional as F
sys.path.insert(0, sys.argv[1])
import forward as fw
torch.manual_seed(0)
torch.set_num_threads(1)
model = fw.GPT().train()
opt = torch.optim.AdamW(model.parameters(), lr=3e-4, weight_decay=0.1)
built = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
x = torch.randint(0, 96, (16, 128))
y = torch.randint(0, 96, (16, 128))
for _ in range(3):
    opt.zero_grad()
    loss = F.cross_entropy(model(x).reshape(-1, 96), y.reshape(-1))
    loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
    opt.step()
print(built)
"""


def child_peak_kib(cmd, env=None):
    before = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    out = subprocess.run(cmd, check=True, capture_output=True, text=True, env=env).stdout
    after = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    # ru_maxrss of children is the largest of any child so far: measure the
    # larger run last, or run each in a fresh parent (below).
    return max(after, before), out


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--kiln", default=os.path.join(ROOT, "build", "kiln"))
    ap.add_argument("--which", choices=["kiln", "torch", "both"], default="both")
    args = ap.parse_args()
    if args.which == "both":
        # A fresh parent for each, so RUSAGE_CHILDREN sees one child only.
        for which in ("kiln", "torch"):
            subprocess.run([sys.executable, __file__, "--kiln", args.kiln, "--which", which], check=True)
        return
    if args.which == "kiln":
        with tempfile.TemporaryDirectory() as tmp:
            prog = os.path.join(tmp, "gpt")
            subprocess.run([args.kiln, "build", os.path.join(ROOT, "models", "gpt.yaml"), "-o", prog],
                           check=True)
            peak, _ = child_peak_kib([prog, "train", "--steps", "3", "--quiet", "--threads", "1"])
            info = subprocess.run([prog, "info"], check=True, capture_output=True, text=True).stdout
        mem = [l for l in info.splitlines() if l.startswith("memory:")][0]
        print(f"kiln    GPT train, 3 steps: peak RSS {peak / 1024:.0f} MiB   ({mem.strip()})")
    else:
        env = dict(os.environ, OMP_WAIT_POLICY="PASSIVE")
        peak, out = child_peak_kib([sys.executable, "-c", TORCH_RUN, os.path.join(ROOT, "bench")], env)
        built = int(out.strip().splitlines()[-1])
        print(f"pytorch GPT train, 3 steps: peak RSS {peak / 1024:.0f} MiB   "
              f"(after import, model and optimizer: {built / 1024:.0f} MiB; "
              f"the steps add {(peak - built) / 1024:.0f} MiB)")


if __name__ == "__main__":
    main()
