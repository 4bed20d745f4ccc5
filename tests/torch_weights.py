"""Weights between PyTorch and Kiln, both ways, for one model:
- a torch state_dict saved as safetensors, converted with
  `kiln weights convert --from torch`, gives the compiled model torch's outputs;
- weights Kiln trained, converted with `--to torch`, load into the torch module
  (names mapped as docs/onnx.md says) and give the compiled model's outputs;
- a state_dict that does not fit is refused with every missing, unexpected and
  misshapen tensor named.

Usage: torch_weights.py KILN WORKDIR. Needs torch (Debian's python3-torch); exits
77 (skipped) without it. safetensors files are read and written here directly (an
8-byte header length, a JSON header, raw data), so the safetensors package is not
needed.
"""
import json
import os
import struct

import pycheck

try:
    import numpy as np
    import torch
except ImportError as e:
    pycheck.skip("torch_weights", e)

KILN, WORK = pycheck.start("torch_weights")
check, run = pycheck.check, pycheck.run
# The same f32 products in two libraries, summed in different orders: a few ulps.
TOL = 1e-5


def save_st(path, tensors):
    header, offset, blobs = {}, 0, []
    for name, t in tensors.items():
        b = np.ascontiguousarray(t, dtype="<f4").tobytes()
        header[name] = {"dtype": "F32", "shape": list(t.shape), "data_offsets": [offset, offset + len(b)]}
        offset += len(b)
        blobs.append(b)
    h = json.dumps(header).encode()
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(h)) + h + b"".join(blobs))


def load_st(path):
    with open(path, "rb") as f:
        n = struct.unpack("<Q", f.read(8))[0]
        header = json.loads(f.read(n))
        data = f.read()
    return {k: np.frombuffer(data[v["data_offsets"][0]:v["data_offsets"][1]], "<f4").reshape(v["shape"])
            for k, v in header.items() if k != "__metadata__"}


def kiln_name(torch_name):  # the documented mapping: module dots to '_'
    module, _, leaf = torch_name.rpartition(".")
    module = "".join(c if c.isalnum() or c == "_" else "_" for c in module)
    return ("_" + module if module[:1].isdigit() else module) + "." + leaf


class Net(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.net = torch.nn.Sequential(torch.nn.Linear(5, 12), torch.nn.Tanh(), torch.nn.Linear(12, 12))
        self.norm = torch.nn.LayerNorm(12)
        self.head = torch.nn.Linear(12, 3)

    def forward(self, x):
        return self.head(self.norm(self.net(x)))


MODEL = """kiln: 1
name: net
inputs:
  x: {shape: [16, 5]}
  label: {shape: [16], dtype: i32}
graph:
  - dense: {units: 12, activation: tanh, name: net_0}
  - dense: {units: 12, name: net_2}
  - layernorm: {name: norm}
  - dense: {units: 3, name: head}
outputs: [head]
loss: {cross_entropy: {logits: head, labels: label}}
train: {optimizer: {adam: {lr: 0.01}}, steps: 20, seed: 3}
data: {train: {csv: train.csv, x: [0, 5], label: 5}}
"""
with open(os.path.join(WORK, "net.yaml"), "w") as f:
    f.write(MODEL)
rng = np.random.default_rng(0)
x = rng.standard_normal((16, 5)).astype(np.float32)
np.save(os.path.join(WORK, "x.npy"), x)
labels = rng.integers(0, 3, 64)
rows = np.concatenate([rng.standard_normal((64, 5)), labels[:, None]], 1)
np.savetxt(os.path.join(WORK, "train.csv"), rows, delimiter=",", fmt=["%.6f"] * 5 + ["%d"])
check("build", run(KILN, "build", "net.yaml", "-o", "net").returncode == 0)


def kiln_forward(weights):
    p = run("./net", "infer", "--weights", weights, "--input", "x.npy", "--output", "out.npy")
    return np.load(os.path.join(WORK, "out.npy")) if p.returncode == 0 else None


# torch -> Kiln.
torch.manual_seed(0)
model = Net().eval()
with torch.no_grad():
    for p in model.parameters():
        p.uniform_(-0.5, 0.5) if p.dim() > 1 else p.uniform_(0.5, 1.5)
    want = model(torch.from_numpy(x)).numpy()
save_st(os.path.join(WORK, "torch.safetensors"), {k: v.numpy() for k, v in model.state_dict().items()})
p = run(KILN, "weights", "convert", "--from", "torch", "net.yaml", "torch.safetensors", "-o", "kiln.safetensors")
check("convert --from torch", p.returncode == 0)
got = kiln_forward("kiln.safetensors")
err = float(np.abs(got - want).max()) if got is not None else float("inf")
print(f"torch -> kiln: max |kiln - torch| = {err:.2e} (tolerance {TOL})")
check("torch weights give torch's outputs in Kiln", err <= TOL, f"max error {err}")
k = load_st(os.path.join(WORK, "kiln.safetensors"))
check("dense weights are [in, out] in Kiln",
      np.array_equal(k["net_0.weight"], model.state_dict()["net.0.weight"].numpy().T))

# Kiln -> torch: weights trained by the compiled program (a checkpoint: the
# optimizer state in it stays behind). net_2.weight is square, so a missing
# transpose would not show in the shapes, only in the outputs.
p = run("./net", "train", "--save", "trained.safetensors")
check("train", p.returncode == 0)
p = run(KILN, "weights", "convert", "--to", "torch", "net.yaml", "trained.safetensors", "-o", "back.safetensors")
check("convert --to torch", p.returncode == 0)
back = load_st(os.path.join(WORK, "back.safetensors")) if p.returncode == 0 else {}
check("only parameters go to torch", sorted(back) == sorted(map(kiln_name, model.state_dict())), sorted(back))
fresh = Net().eval()
if back:
    fresh.load_state_dict({n: torch.from_numpy(back[kiln_name(n)].copy()) for n in fresh.state_dict()})
with torch.no_grad():
    mine = fresh(torch.from_numpy(x)).numpy()
got = kiln_forward("trained.safetensors")
err = float(np.abs(got - mine).max()) if got is not None else float("inf")
print(f"kiln -> torch: max |torch - kiln| = {err:.2e} (tolerance {TOL})")
check("Kiln-trained weights give Kiln's outputs in torch", err <= TOL, f"max error {err}")

# A state_dict that does not fit: every problem named.
bad = {k: v.numpy() for k, v in model.state_dict().items() if k != "norm.bias"}
bad["head.weight"] = np.zeros((4, 12), np.float32)
bad["extra.weight"] = np.zeros((2,), np.float32)
save_st(os.path.join(WORK, "bad.safetensors"), bad)
p = run(KILN, "weights", "convert", "--from", "torch", "net.yaml", "bad.safetensors", "-o", "no.safetensors")
check("a misfit is refused", p.returncode == 1)
for part in ["missing 'norm.bias'", "unexpected 'extra.weight'", "'head.weight' is f32[12,4], the model has f32[12,3]"]:
    check(f"the error names: {part}", part in p.stderr, p.stderr)
check("nothing written for a misfit", not os.path.exists(os.path.join(WORK, "no.safetensors")))

pycheck.finish()
