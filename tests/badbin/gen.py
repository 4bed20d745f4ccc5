#!/usr/bin/env python3
"""Writes the malformed-file corpus of tests/badbin and its manifest, EXPECT.

Each file is built by hand here, byte by byte, next to the error it must produce:
the expected messages are stated in this script, never taken from the readers.
tests/test_rt_badfiles.c loads every file listed in EXPECT with the reader its
name selects and requires a failure whose message contains the fragment:

  npy-*.npy           kiln_npy_read
  st-*.safetensors    kiln_st_read
  w-*.safetensors     kiln_ctx_load (weights) on the test's model
  ckpt-*.safetensors  kiln_ckpt_load on the test's model
  csv-*.csv           kiln_csv_read (no header line)
  tok-*.bin           token data (uint16) for windows of 3 ids below 16
  text-*.txt          text data for the same model

The model: parameters w f32[2] and b f32[1], SGD momentum sgd.v.w and sgd.v.b,
named "fake". Files are small; run this script after changing it and commit
both. Usage: tests/badbin/gen.py (Python 3 standard library only).
"""
import json
import os
import struct

HERE = os.path.dirname(os.path.abspath(__file__))
cases = []  # (file name, fragment)


def put(name, data, fragment):
    with open(os.path.join(HERE, name), "wb") as f:
        f.write(data)
    cases.append((name, fragment))


def seed(name, data):
    """A valid file: a fuzzing seed, not in EXPECT."""
    with open(os.path.join(HERE, name), "wb") as f:
        f.write(data)


def f32(*v):
    return struct.pack("<%df" % len(v), *v)


#
# .npy
#
def npy(header, data=b"", version=1, hlen=None):
    """header padded so the data starts at a multiple of 64, as numpy writes it."""
    text = header.encode()
    pre = 10 if version == 1 else 12
    text += b" " * ((-(pre + len(text) + 1)) % 64) + b"\n"
    n = len(text) if hlen is None else hlen
    size = struct.pack("<H", n) if version == 1 else struct.pack("<I", n)
    return b"\x93NUMPY" + bytes([version, 0]) + size + text + data


GOOD_NPY = npy("{'descr': '<f4', 'fortran_order': False, 'shape': (4,), }", f32(1, 2, 3, 4))
assert len(GOOD_NPY) == 128 + 16  # the header pads to 128
seed("ok-f4.npy", GOOD_NPY)
seed("ok-i8.npy", npy("{'descr': '<i8', 'fortran_order': False, 'shape': (2, 1), }",
                      struct.pack("<2q", 7, -3), version=2))

put("npy-empty.npy", b"", "not a .npy file (no \\x93NUMPY magic at file offset 0)")
put("npy-magic.npy", b"\x93NUMPX" + GOOD_NPY[6:], "no \\x93NUMPY magic at file offset 0")
put("npy-version.npy", GOOD_NPY[:6] + b"\x04\x00" + GOOD_NPY[8:],
    ".npy version 4.0 at file offset 6")
put("npy-trunc-8.npy", GOOD_NPY[:8], "not a .npy file")
put("npy-trunc-11.npy", npy("{}", version=2)[:11], "file ends inside the header length")
put("npy-trunc-40.npy", GOOD_NPY[:40], "header length 118 at file offset 8 is past the end")
put("npy-trunc-130.npy", GOOD_NPY[:130],
    "shape needs 16 data bytes at file offset 128, the file has 2")
put("npy-trunc-143.npy", GOOD_NPY[:143],
    "shape needs 16 data bytes at file offset 128, the file has 15")
put("npy-hlen-huge.npy", npy("{}", version=2, hlen=0xFFFFFFFF),
    "header length 4294967295 at file offset 8")
put("npy-descr-f2.npy", npy("{'descr': '<f2', 'fortran_order': False, 'shape': (2,), }", b"\0" * 4),
    "descr '<f2' is not supported")
put("npy-big-endian.npy", npy("{'descr': '>f4', 'fortran_order': False, 'shape': (1,), }", b"\0" * 4),
    "descr '>f4' is not supported")
put("npy-fortran.npy", npy("{'descr': '<f4', 'fortran_order': True, 'shape': (1,), }", f32(1)),
    "header at file offset 44: fortran_order True is not supported")
put("npy-rank7.npy", npy("{'descr': '<f4', 'fortran_order': False, 'shape': (1,1,1,1,1,1,1), }",
                         f32(1)), "expected a shape of rank at most 6")
put("npy-dim-64bit.npy", npy("{'descr': '<f4', 'fortran_order': False, "
                             "'shape': (99999999999999999999,), }"),
    "expected a dimension that fits 64 bits")
put("npy-count-overflow.npy", npy("{'descr': '<f4', 'fortran_order': False, "
                                  "'shape': (4294967296, 4294967296), }"),
    "shape's element count overflows at dim 1")
put("npy-lying-shape.npy", npy("{'descr': '<f4', 'fortran_order': False, 'shape': (1000,), }",
                               f32(1, 2, 3, 4)),
    "shape needs 4000 data bytes at file offset 128, the file has 16")
put("npy-extra-key.npy", npy("{'descr': '<f4', 'fortran_order': False, 'shape': (1,), "
                             "'x': 1, }", f32(1)),
    "expected one of the keys 'descr', 'fortran_order', 'shape'")
put("npy-quote.npy", npy("{'descr': '<f4"), "header at file offset 64: expected a closing quote")
put("npy-negative-dim.npy", npy("{'descr': '<f4', 'fortran_order': False, 'shape': (-1,), }"),
    "expected a non-negative integer")
put("npy-f8-range.npy", npy("{'descr': '<f8', 'fortran_order': False, 'shape': (2,), }",
                            struct.pack("<2d", 1.0, 1e300)),
    "value 1e+300 at index 1 does not fit f32")
put("npy-i8-range.npy", npy("{'descr': '<i8', 'fortran_order': False, 'shape': (1,), }",
                            struct.pack("<q", 1 << 40)),
    "value 1099511627776 at index 0 does not fit i32")


#
# safetensors
#
def st(header, data=b"", hlen=None):
    text = header if isinstance(header, bytes) else json.dumps(header).encode()
    n = len(text) if hlen is None else hlen
    return struct.pack("<Q", n) + text + data


def entry(dtype, shape, begin, end):
    return {"dtype": dtype, "shape": shape, "data_offsets": [begin, end]}


GOOD_ST = st({"__metadata__": {"kiln_model": "fake"}, "b": entry("F32", [1], 0, 4),
              "w": entry("F32", [2], 4, 12)}, f32(0.5, 1, 2))
seed("ok-weights.safetensors", GOOD_ST)
HLEN = struct.unpack("<Q", GOOD_ST[:8])[0]

put("st-short.safetensors", b"\x10\0\0\0\0", "file is 5 bytes, too short for the 8-byte header")
put("st-trunc-4.safetensors", GOOD_ST[:4], "file is 4 bytes, too short")
put("st-trunc-40.safetensors", GOOD_ST[:40],
    "header length %d at file offset 0 runs past the end of the file (40 bytes)" % HLEN)
put("st-trunc-data.safetensors", GOOD_ST[:8 + HLEN + 6],
    "tensor 'w': data_offsets [4, 12] end past the data section (6 bytes at file offset %d)"
    % (8 + HLEN))
put("st-hlen-huge.safetensors", st(b"{}", hlen=1 << 63),
    "header length 9223372036854775808 at file offset 0 exceeds the 100000000-byte limit")
put("st-not-json.safetensors", st(b'{"w": {"dtype" "F32"}}'),
    "header is not valid JSON at file offset 28")  # jansson: the end of the bad token
put("st-not-object.safetensors", st(b"[1, 2]"), "header is not a JSON object")
put("st-dup-name.safetensors",
    st(b'{"w": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]}, '
       b'"w": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]}}', f32(1)),
    "duplicate object key")
put("st-deep.safetensors", st(b"[" * 5000 + b"]" * 5000), "maximum parsing depth")
put("st-dtype-f16.safetensors", st({"w": entry("F16", [2], 0, 4)}, b"\0" * 4),
    "tensor 'w': dtype 'F16' is not supported")
put("st-dtype-number.safetensors", st({"w": {"dtype": 1, "shape": [1], "data_offsets": [0, 4]}}),
    "tensor 'w': field 'dtype' is not a string")
put("st-rank7.safetensors", st({"w": entry("F32", [1] * 7, 0, 4)}, f32(1)),
    "tensor 'w': shape has rank 7, at most 6")
put("st-negative-dim.safetensors", st({"w": entry("F32", [-2], 0, 0)}),
    "tensor 'w': shape[0] is not a non-negative integer")
put("st-numel-overflow.safetensors", st({"w": entry("F32", [1 << 40, 1 << 40], 0, 4)}, f32(1)),
    "tensor 'w': shape's element count overflows at shape[1]")
put("st-offset-past-end.safetensors", st({"w": entry("F32", [1000], 0, 4000)}, f32(1, 2)),
    "tensor 'w': data_offsets [0, 4000] end past the data section (8 bytes")
put("st-offset-backwards.safetensors", st({"w": entry("F32", [1], 8, 4)}, f32(1, 2, 3)),
    "tensor 'w': data_offsets [8, 4] begin after end")
put("st-offset-negative.safetensors", st({"w": entry("F32", [1], -4, 0)}, f32(1)),
    "tensor 'w': data_offsets are not non-negative integers")
put("st-offset-huge.safetensors", st({"w": entry("F32", [1], 0, (1 << 63) - 1)}, f32(1)),
    "tensor 'w': data_offsets [0, 9223372036854775807] end past the data section")
put("st-size-mismatch.safetensors", st({"w": entry("F32", [2], 0, 12)}, f32(1, 2, 3)),
    "data_offsets [0, 12] hold 12 bytes, but dtype F32 and shape need 8")
put("st-overlap.safetensors", st({"a": entry("F32", [2], 0, 8), "b": entry("F32", [2], 4, 12)},
                                 f32(1, 2, 3)),
    "tensor 'b': data_offsets [4, 12] overlap tensor 'a' [0, 8]")
put("st-extra-field.safetensors",
    st({"w": dict(entry("F32", [1], 0, 4), foo=1)}, f32(1)), "tensor 'w': unexpected field 'foo'")
put("st-missing-offsets.safetensors", st({"w": {"dtype": "F32", "shape": [1]}}, f32(1)),
    "tensor 'w': missing field 'data_offsets'")
put("st-metadata-number.safetensors", st({"__metadata__": {"step": 3}}),
    "'__metadata__': value of 'step' is not a string")
put("st-long-name.safetensors", st({"n" * 300: entry("F32", [1], 0, 4)}, f32(1)),
    "tensor name of 300 bytes: expected 1 to")
put("st-nan.safetensors", st({"w": entry("F32", [2], 0, 8)}, f32(1, float("nan"))),
    "tensor 'w' holds NaN at element 1 (file offset")
put("st-inf.safetensors", st({"w": entry("F32", [3], 0, 12)}, f32(1, 2, float("-inf"))),
    "tensor 'w' holds an infinity at element 2")

#
# Weights and checkpoints of the test's model.
#
def fake_file(meta, w=(1, 2), b=(0.5,), vw=(0, 0), vb=(0,), w_dtype="F32", drop=()):
    tensors = [("b", b), ("sgd.v.b", vb), ("sgd.v.w", vw), ("w", w)]
    header, data = {"__metadata__": meta} if meta else {}, b""
    for name, v in tensors:
        if name in drop:
            continue
        dt = w_dtype if name == "w" else "F32"
        raw = struct.pack("<%di" % len(v), *v) if dt == "I32" else f32(*v)
        header[name] = entry(dt, [len(v)], len(data), len(data) + len(raw))
        data += raw
    return st(header, data)


STATE = {"kiln_model": "fake", "kiln_version": "test", "kiln_checkpoint": "1", "step": "3",
         "epoch": "0", "pos": "3", "seed": "42", "data_rng": "00000000000000ff", "samples": "18",
         "total_steps": "20", "lr": "0.05"}
seed("ok-ckpt.safetensors", fake_file(STATE))

put("w-nan.safetensors", fake_file({}, w=(1, float("nan"))), "tensor 'w' holds NaN at element 1")
put("w-inf.safetensors", fake_file({}, b=(float("inf"),)), "tensor 'b' holds an infinity at element 0")
put("w-i32.safetensors", fake_file({}, w_dtype="I32"), "'w' is i32[2], the model has f32[2]")
put("w-missing.safetensors", fake_file({}, drop=("b",)), "missing 'b'")
put("ckpt-nan-state.safetensors", fake_file(STATE, vw=(0, float("nan"))),
    "tensor 'sgd.v.w' holds NaN at element 1")
put("ckpt-weights-only.safetensors", fake_file({"kiln_model": "fake"}),
    "is a weights file, not a checkpoint")
put("ckpt-other-model.safetensors", fake_file(dict(STATE, kiln_model="other")),
    "is a checkpoint of model 'other', not of 'fake'")
put("ckpt-layout.safetensors", fake_file(dict(STATE, kiln_checkpoint="2")),
    "checkpoint layout '2', this runtime reads '1'")
put("ckpt-step.safetensors", fake_file(dict(STATE, step="-1")),
    "checkpoint metadata 'step' is not a count")
put("ckpt-step-huge.safetensors", fake_file(dict(STATE, step="99999999999999999999")),
    "checkpoint metadata 'step' is not a count")
put("ckpt-lr.safetensors", fake_file(dict(STATE, lr="nan")), "checkpoint metadata 'lr' is not a rate")
put("ckpt-no-seed.safetensors", fake_file({k: v for k, v in STATE.items() if k != "seed"}),
    "checkpoint metadata 'seed' is missing")
put("ckpt-vocab.safetensors", fake_file(dict(STATE, vocab="ba")),
    "checkpoint metadata 'vocab' is not an escaped vocabulary")
put("ckpt-missing-state.safetensors", fake_file(STATE, drop=("sgd.v.b",)), "missing 'sgd.v.b'")

#
# CSV, text and tokens.
#
seed("ok.csv", b"1,2,0\n3.5,-4e2,2\n")
put("csv-ragged.csv", b"1,2,0\n3,4\n", "csv-ragged.csv:2: row has 2 columns, expected 3")
put("csv-nan.csv", b"1,2,0\n1,nan,1\n", "csv-nan.csv:2:3: expected a number, got 'nan' (NaN")
put("csv-inf.csv", b"-inf,2,0\n", "(infinities are not allowed in data)")
put("csv-f32-range.csv", b"1e39,2,0\n", "csv-f32-range.csv:1:1: 1e39 is out of range for f32")
put("csv-binary.csv", b"1,2,0\n\x00\xff\x10,2,0\n", "csv-binary.csv:2:1: expected a number")
put("csv-empty.csv", b"\n\n", "no data rows")
put("csv-blank-between.csv", b"1,2,0\n\n1,2,0\n", "csv-blank-between.csv:2: blank line between rows")

seed("ok.bin", struct.pack("<8H", *range(8)))
seed("ok.txt", b"abcabcabc\n")
put("tok-odd.bin", b"\x01\x00\x02\x00\x03", "5 bytes is not a whole number of uint16 tokens")
put("tok-range.bin", struct.pack("<5H", 1, 2, 40000, 3, 4),
    "byte offset 4: token 40000 is outside the vocabulary [0, 16)")
put("tok-short.bin", struct.pack("<3H", 1, 2, 3), "3 tokens make no window of 3 plus one")
put("text-charset.txt", b"abcdefghijklmnopqrstuvwxyz",
    "the text has 26 distinct characters, more than the 16 ids")

with open(os.path.join(HERE, "EXPECT"), "w") as f:
    f.write("# file<TAB>fragment of the expected error (written by gen.py)\n")
    for name, frag in cases:
        f.write("%s\t%s\n" % (name, frag))
print("%d bad files, manifest EXPECT" % len(cases))
