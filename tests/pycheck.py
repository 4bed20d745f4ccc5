"""Shared by the Python end-to-end tests (onnx_check.py, torch_weights.py): the
pass and fail counts of tests/harness.sh, running programs in the work folder,
and CTest's skip status.

    KILN, WORK = pycheck.start("NAME")   # from argv: KILN WORKDIR
    pycheck.check("what", ok, "detail")
    p = pycheck.run(KILN, "build", ...)
    pycheck.finish()
"""
import os
import subprocess
import sys

SKIP = 77  # CTest's SKIP_RETURN_CODE: reported skipped, never passed
_name, _work, _passed, _failed = "", ".", 0, 0


def skip(name, why):
    print(f"{name}: SKIPPED, not passed: {why} (scripts/install-deps.sh installs it)")
    sys.exit(SKIP)


def start(name):
    global _name, _work
    _name, _work = name, sys.argv[2]
    os.makedirs(_work, exist_ok=True)
    return sys.argv[1], _work


def check(what, ok, detail=""):
    global _passed, _failed
    if ok:
        _passed += 1
    else:
        _failed += 1
        print(f"FAIL {what} {detail}")


def run(*args, expect=0):
    p = subprocess.run(list(args), capture_output=True, text=True, cwd=_work)
    if p.returncode != expect:
        print(f"{' '.join(args)}: exit {p.returncode}, expected {expect}\n{p.stderr[-2000:]}")
    return p


def finish():
    print(f"{_name}: {_passed} passed, {_failed} failed")
    sys.exit(1 if _failed else 0)
