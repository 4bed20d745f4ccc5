"""kiln import end to end: models made in PyTorch, exported to ONNX here, imported
with `kiln import`, compiled with `kiln build`, and run on the same inputs as ONNX
Runtime. Also: the YAML is readable (layers named after the modules), unsupported
ops are listed by op and node, and a broken file is refused.

Usage: onnx_check.py KILN WORKDIR. Needs torch, onnx (Debian's python3-torch,
python3-onnx) and onnxruntime (PyPI, in the environment scripts/install-deps.sh
makes); exits 77 (skipped) when one is missing.
"""
import os

import pycheck

try:
    import numpy as np
    import onnxruntime as ort
    import torch
except ImportError as e:
    pycheck.skip("onnx_check", e)

KILN, WORK = pycheck.start("onnx_check")
check, run = pycheck.check, pycheck.run

# f32 kernels against ONNX Runtime's f32 kernels: both round each op's result to
# f32 but sum in different orders; through a few layers (layernorm, attention,
# softmax) that differs by a few ulps of O(1) values. 1e-5 is ~100 ulps at 1.0,
# far below any real mistake (a wrong transpose or bias is O(0.1)).
TOL = 1e-5


class MLP(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.fc1 = torch.nn.Linear(5, 16)
        self.fc2 = torch.nn.Linear(16, 3)

    def forward(self, x):
        return torch.softmax(self.fc2(torch.sigmoid(self.fc1(x))), -1)


class Block(torch.nn.Module):
    """A pre-norm transformer block: two-head self-attention, then an MLP."""

    def __init__(self, d, heads):
        super().__init__()
        self.heads = heads
        self.ln1 = torch.nn.LayerNorm(d)
        self.q = torch.nn.Linear(d, d)
        self.k = torch.nn.Linear(d, d)
        self.v = torch.nn.Linear(d, d)
        self.proj = torch.nn.Linear(d, d)
        self.ln2 = torch.nn.LayerNorm(d)
        self.mlp = torch.nn.Sequential(torch.nn.Linear(d, 4 * d), torch.nn.Tanh(),
                                       torch.nn.Linear(4 * d, d))

    def split(self, x):  # [B, T, D] -> [B, H, T, D/H]
        b, t, d = x.shape
        return x.reshape(b, t, self.heads, d // self.heads).transpose(1, 2)

    def forward(self, x):
        h = self.ln1(x)
        q, k, v = self.split(self.q(h)), self.split(self.k(h)), self.split(self.v(h))
        att = torch.softmax(q @ k.transpose(-1, -2) / (q.shape[-1] ** 0.5), -1)
        y = (att @ v).transpose(1, 2).reshape(x.shape)
        x = x + self.proj(y)
        return x + self.mlp(self.ln2(x))


class Tiny(torch.nn.Module):
    """Token embedding + learned positions, one block, final norm, vocabulary head."""

    def __init__(self, vocab=23, d=16, ctx=7):
        super().__init__()
        self.tok = torch.nn.Embedding(vocab, d)
        self.pos = torch.nn.Parameter(torch.randn(ctx, d) * 0.1)
        self.block = Block(d, 2)
        self.ln_f = torch.nn.LayerNorm(d)
        self.head = torch.nn.Linear(d, vocab)

    def forward(self, tokens):
        h = self.tok(tokens) + self.pos
        return torch.log_softmax(self.head(self.ln_f(self.block(h))), -1)


def export(model, example, name, inputs, outputs):
    # Random values everywhere (LayerNorm too), so a parameter read from the wrong
    # tensor or in the wrong layout shows in the outputs.
    torch.manual_seed(0)
    with torch.no_grad():
        for p in model.parameters():
            p.uniform_(-0.5, 0.5) if p.dim() > 1 else p.uniform_(0.5, 1.5)
    path = os.path.join(WORK, name + ".onnx")
    with torch.no_grad():
        torch.onnx.export(model, example, path, input_names=inputs, output_names=outputs,
                          opset_version=17)
    return path


def compare(name, model, feeds, kiln_inputs):
    onnx_path = export(model, tuple(torch.from_numpy(v) for v in feeds.values()), name,
                       list(feeds), ["out"])
    p = run(KILN, "import", onnx_path, "-o", name + ".yaml")
    check(f"{name}: import", p.returncode == 0)
    p = run(KILN, "build", name + ".yaml", "-o", name)
    check(f"{name}: build", p.returncode == 0)
    if p.returncode != 0:
        return ""
    args = []
    for k, v in kiln_inputs.items():
        np.save(os.path.join(WORK, f"{name}_{k}.npy"), v)
        args += ["--input", f"{k}={name}_{k}.npy"]
    p = run(os.path.join(WORK, name), "infer", "--weights", name + ".safetensors", *args,
            "--output", name + "_out.npy")
    check(f"{name}: infer", p.returncode == 0)
    ref = ort.InferenceSession(onnx_path).run(None, feeds)[0]
    got = np.load(os.path.join(WORK, name + "_out.npy")).reshape(ref.shape)
    err = float(np.abs(got - ref).max())
    print(f"{name}: max |kiln - onnxruntime| = {err:.2e} (tolerance {TOL})")
    check(f"{name}: matches ONNX Runtime", err <= TOL, f"max error {err}")
    with open(os.path.join(WORK, name + ".yaml")) as f:
        return f.read()


torch.manual_seed(0)
rng = np.random.default_rng(1)
x = rng.standard_normal((8, 5)).astype(np.float32)
text = compare("mlp", MLP().eval(), {"x": x}, {"x": x})
check("mlp: Linear layers become named dense layers",
      "dense: {units: 16, activation: sigmoid, name: fc1}" in text, text)

tokens = rng.integers(0, 23, (3, 7))
text = compare("tiny", Tiny().eval(), {"tokens": tokens}, {"tokens": tokens.astype(np.int32)})
for part in ["embedding: {vocab: 23, dim: 16, name: tok}", "layernorm: {eps:", "name: block_q}",
             "name: block_mlp_0}", "softmax", "transpose: {perm: [0, 2, 1, 3]", "log_softmax",
             "dtype: i32"]:
    check(f"tiny: the YAML has '{part}'", part in text, text)


class Gelu(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = torch.nn.Linear(4, 4)

    def forward(self, x):
        return torch.nn.functional.gelu(self.fc(x)).cumsum(-1)


path = export(Gelu(), (torch.randn(2, 4),), "gelu", ["x"], ["y"])
p = run(KILN, "import", path, "-o", "gelu.yaml", expect=1)
check("unsupported ops: exit status 1", p.returncode == 1)
check("unsupported ops: listed by op and node",
      "Erf (node '/Erf')" in p.stderr and "CumSum (node '/CumSum')" in p.stderr, p.stderr)
check("unsupported ops: no model file written", not os.path.exists(os.path.join(WORK, "gelu.yaml")))

with open(os.path.join(WORK, "junk.onnx"), "wb") as f:
    f.write(b"\xff\xff\xff\xff not a protobuf")
p = run(KILN, "import", "junk.onnx", expect=1)
check("a file that is not ONNX is refused", "not an ONNX model" in p.stderr, p.stderr)

pycheck.finish()
