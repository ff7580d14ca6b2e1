#!/usr/bin/env python3
"""Generates a few hundred .npy files with hostile or unusual headers and records numpy's verdict
on each (np.load with mmap_mode='r': shape, dtype and order, or the exception).

Usage: npy_differential.py OUT_DIR
Writes OUT_DIR/case_NNN.npy and OUT_DIR/verdicts.json, a list of
  {"file": ..., "ok": true, "shape": [...], "dtype": "<f4", "fortran": false}
  {"file": ..., "ok": false, "error": "..."}
tests/npy_differential.rs checks that isoclip's header parser agrees with every accepted case
(or refuses it) and never accepts what numpy refuses. Deterministic (fixed seed).
"""
import json
import os
import random
import struct
import sys
import warnings

import numpy as np

DESCRS = [
    "<f2", "<f4", "<f8", "|f4", "=f4", "<e", "<f", "<d", ">f4", ">f8", "!f4", "<c8", "<c16",
    "|b1", "<?", "|i1", "<i1", "|u1", "<b", "<B", "<i2", "<h", "<u2", "<H", "<i4", "<i", "<u4",
    "<I", "<i8", "<q", "<l", "<u8", "<Q", "<L", ">i2", ">u8", "<M8[ns]", "<m8[s]", "|O", "<U4",
    "|S3", "|V8", "<f16", "<g", "f4", "float32", "<f3", "", "<", "é4", "<f4 ",
]

SHAPES = [
    "()", "(3,)", "(3, )", "(2, 3)", "(2,3,)", "( 2 , 3 )", "(2, 3, 4)", "(0,)", "(0, 4)",
    "(3)", "(-1, 2)", "(2.0, 3)", "('2', 3)", "(True, 2)", "(3L, 2L)", "(0x2, 3)", "(02, 3)",
    "(00, 3)", "[2, 3]", "(2, 3", "(1_0, 3)", "(4611686018427387904, 4)",
    "(2305843009213693952, 8)", "(99999999999999999999999,)",
]

FORTRAN = ["False", "True", "0", "1", "'False'", "None", "false"]

QUOTES = ["'", '"']


def entry(q, key, value):
    return f"{q}{key}{q}: {value}"


def dict_text(rng):
    """A header dict assembled from random parts, most of them valid."""
    q = rng.choice(QUOTES)
    descr = rng.choice(DESCRS)
    vq = rng.choice(QUOTES)
    entries = [
        entry(q, "descr", f"{vq}{descr}{vq}"),
        entry(q, "fortran_order", rng.choice(FORTRAN) if rng.random() < 0.3 else "False"),
        entry(q, "shape", rng.choice(SHAPES) if rng.random() < 0.6 else "(2, 3)"),
    ]
    r = rng.random()
    if r < 0.08:
        entries.append(rng.choice(entries))  # duplicate key
    elif r < 0.14:
        entries.append(entry(q, "extra", "True"))  # unknown key
    elif r < 0.2:
        entries.pop(rng.randrange(len(entries)))  # missing key
    elif r < 0.24:
        entries[0] = entry(q, "descr", "[('a', '<f4')]")  # structured
    if rng.random() < 0.5:
        rng.shuffle(entries)
    sep = rng.choice([", ", ",", " , ", ",\n", ",\t"])
    text = "{" + sep.join(entries) + rng.choice(["", ",", ", ", " "]) + "}"
    r = rng.random()
    if r < 0.05:
        text += " # comment"
    elif r < 0.1:
        text += " x"
    elif r < 0.13:
        text = "  " + text
    elif r < 0.15:
        text = text.replace(":", " :")
    elif r < 0.17:
        text = text.replace("'", "\\'", 1)
    return descr, text


def header(version, text, pad=True, declared_extra=0):
    body = text.encode("latin1" if version < 3 else "utf8", errors="replace")
    prefix = 10 if version == 1 else 12
    if pad:
        total = -(-(prefix + len(body) + 1) // 64) * 64
        body = body + b" " * (total - prefix - len(body) - 1) + b"\n"
    length = len(body) + declared_extra
    fmt = "<H" if version == 1 else "<I"
    return b"\x93NUMPY" + bytes([version, 0]) + struct.pack(fmt, length) + body


def data_for(text, rng):
    """Enough data for a small valid array (or deliberately too little)."""
    n = 24 * 16
    if rng.random() < 0.1:
        n = rng.randrange(0, 8)
    return bytes(rng.randrange(256) for _ in range(n))


def verdict(path):
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            a = np.load(path, mmap_mode="r", allow_pickle=False)
        return {
            "ok": True,
            "shape": list(a.shape),
            "dtype": a.dtype.str,
            # None when the layout cannot tell (1-D, scalars, a dimension of 0 or 1).
            "fortran": None
            if a.flags.c_contiguous and a.flags.f_contiguous
            else bool(a.flags.f_contiguous),
        }
    except Exception as e:  # numpy refuses: any exception type
        return {"ok": False, "error": f"{type(e).__name__}: {e}"[:300]}


def cases(rng):
    # Exactly what numpy writes, for every dtype isoclip reads and a few it does not.
    for dt in ["<f2", "<f4", "<f8", "|i1", "<i2", "<i4", "<i8", "|u1", "<u2", "<u4", "<u8",
               "|b1", ">f4", "<c8"]:
        for shape in [(2, 3), (5,), (0, 4), ()]:
            for order in "CF":
                yield ("numpy", np.zeros(shape, dtype=dt, order=order), None)
    for i in range(320):
        version = rng.choice([1, 1, 2, 3])
        descr, text = dict_text(rng)
        r = rng.random()
        if r < 0.04:
            raw = header(version, text, declared_extra=rng.choice([1, 100, 70000]))
        elif r < 0.08:
            raw = header(version, text, pad=False)
        elif r < 0.1:
            raw = header(version, text)[: rng.randrange(4, 14)]
        elif r < 0.12:
            raw = header(rng.choice([0, 4, 255]), text)
        elif r < 0.14:
            raw = header(version, text).replace(b"\n", b"\0")
        else:
            raw = header(version, text)
        yield ("raw", raw + data_for(text, rng), None)


def main():
    out = sys.argv[1]
    os.makedirs(out, exist_ok=True)
    rng = random.Random(20240611)
    verdicts = []
    for i, (kind, payload, _) in enumerate(cases(rng)):
        path = os.path.join(out, f"case_{i:03d}.npy")
        if kind == "numpy":
            np.save(path, payload)
        else:
            with open(path, "wb") as f:
                f.write(payload)
        v = verdict(path)
        v["file"] = path
        v["written_by_numpy"] = kind == "numpy"
        verdicts.append(v)
    with open(os.path.join(out, "verdicts.json"), "w") as f:
        json.dump(verdicts, f, indent=0)
    accepted = sum(v["ok"] for v in verdicts)
    print(f"{len(verdicts)} cases, numpy accepts {accepted}")


if __name__ == "__main__":
    main()
