#!/usr/bin/env python3
"""The generated sgemm kernels (compiler/cpu/gemm.c) against OpenBLAS on the
products the bundled models run: GFLOP/s of each tile and of cblas_sgemm, one
thread, medians of --runs runs, with OpenBLAS as the environment configures it
and with OPENBLAS_CORETYPE=Haswell, and each figure's share of this machine's FMA
peak, measured in the same run (`kiln peak --measure`).

usage: bench/gemm.py [--build build] [--runs N] [--only PREFIX]

The driver, bench/gemm.c, is compiled here against the build's static libraries
(compiler/cpu/ and what it needs) and LLVM; the `rule` column says what
kiln_cpu_sgemm picks for the shape (gen: the generated kernel, blas: OpenBLAS).
"""
import argparse
import os
import re
import subprocess
import sys
import tempfile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TILES = ["6x16", "4x24", "6x16 packed"]


def llvm_config(flag):
    for exe in ("/usr/lib/llvm-16/bin/llvm-config", "llvm-config-16", "llvm-config"):
        try:
            return subprocess.run([exe, flag], check=True, capture_output=True,
                                  text=True).stdout.split()
        except (OSError, subprocess.CalledProcessError):
            continue
    sys.exit("llvm-config not found (llvm-16-dev)")


def compile_driver(build, out):
    libs = [os.path.join(build, f"libkiln_{n}.a") for n in ("cpu", "passes", "ir")]
    cmd = (["cc", "-O2", "-std=c11", "-D_POSIX_C_SOURCE=200809L", "-I", ROOT, "-I"]
           + llvm_config("--includedir") + [os.path.join(ROOT, "bench", "gemm.c"), "-o", out]
           + libs + ["-L" + llvm_config("--libdir")[0]] + llvm_config("--libs")
           + ["-lopenblas", "-lm", "-ldl"])
    subprocess.run(cmd, check=True)


def peak(build):
    out = subprocess.run([os.path.join(build, "kiln"), "peak", "--measure"], check=True,
                         capture_output=True, text=True).stdout
    m = re.search(r"compute:\s+([\d.]+) GFLOP/s", out)
    if not m:
        sys.exit("cannot read the FMA peak from:\n" + out)
    return float(m.group(1))


def run(driver, runs, tmp, coretype, only):
    env = dict(os.environ, OPENBLAS_NUM_THREADS="1")
    env.pop("OPENBLAS_CORETYPE", None)
    if coretype:
        env["OPENBLAS_CORETYPE"] = coretype
    out = subprocess.run([driver, str(runs), tmp] + ([only] if only else []), check=True,
                         capture_output=True, text=True, env=env).stdout
    rows = []
    for line in out.splitlines():
        f = line.split("\t")
        v = [tuple(float(x) for x in c.split("/")) for c in f[6:7 + len(TILES)]]
        rows.append({"name": f[0], "op": ("T" if f[1] == "1" else "N") + ("T" if f[2] == "1" else "N"),
                     "mnk": "x".join(f[3:6]), "gen": v[:len(TILES)], "blas": v[len(TILES)],
                     "rule": f[7 + len(TILES)] == "1", "tile": int(f[8 + len(TILES)])})
    return rows


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--build", default=os.path.join(ROOT, "build"))
    ap.add_argument("--runs", type=int, default=15)
    ap.add_argument("--only", help="only the products whose names start so (attn, lstm, ...)")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        driver = os.path.join(tmp, "gemm")
        compile_driver(args.build, driver)
        pk = peak(args.build)
        env_core = os.environ.get("OPENBLAS_CORETYPE")
        base = run(driver, args.runs, tmp, env_core, args.only)
        hsw = run(driver, args.runs, tmp, "Haswell", args.only)
        pk = max(pk, peak(args.build))  # best of two: other work only lowers it
    label = f"OPENBLAS_CORETYPE={env_core}" if env_core else "OPENBLAS_CORETYPE unset"
    print(f"one thread, GFLOP/s of thread CPU time, medians of {args.runs} runs (share of the FMA peak, "
          f"{pk:.1f} GFLOP/s by kiln peak --measure); load average {os.getloadavg()[0]:.1f}. "
          "Causal attention products cover the four blocks of 32 query rows (32..128 keys). "
          "gen/blas: the picked tile's time against OpenBLAS's in the same process, "
          "medians (best runs in parentheses).")
    print()
    print("| product | op | m x n x k | " + " | ".join(TILES) +
          f" | OpenBLAS ({label}) | gen/blas | OpenBLAS (Haswell) | gen/blas | picks |")
    print("|---|---|---|" + "---|" * (len(TILES) + 5))

    def ratio(r):
        g = r["gen"][r["tile"]] if r["tile"] >= 0 else max(r["gen"])
        return f"{g[0] / r['blas'][0]:.2f} ({g[1] / r['blas'][1]:.2f})"

    for r, h in zip(base, hsw):
        cells = [f"{g[0]:.1f}" for g in r["gen"]]
        if r["tile"] >= 0:
            cells[r["tile"]] = f"**{cells[r['tile']]}**"
        share = lambda x: f"{x[0]:.1f} ({100 * x[0] / pk:.0f}%)"
        pick = TILES[r["tile"]] if r["rule"] and r["tile"] >= 0 else "OpenBLAS"
        print(f"| {r['name']} | {r['op']} | {r['mnk']} | " + " | ".join(cells) +
              f" | {share(r['blas'])} | {ratio(r)} | {share(h['blas'])} | {ratio(h)} | {pick} |")


if __name__ == "__main__":
    main()
