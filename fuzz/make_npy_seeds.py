#!/usr/bin/env python3
"""Writes the npy_header seed corpus: small arrays exactly as numpy saves them (every dtype
isoclip reads, C and Fortran order, versions 1-3). Run from fuzz/: python3 make_npy_seeds.py"""
import io
import os

import numpy as np

out = os.path.join(os.path.dirname(os.path.abspath(__file__)), "corpus", "npy_header")
os.makedirs(out, exist_ok=True)
for dt in ["<f2", "<f4", "<f8", "|i1", "<i8", "|b1", ">f4"]:
    for shape in [(2, 3), (4,)]:
        for order in "CF":
            buf = io.BytesIO()
            np.save(buf, np.arange(np.prod(shape)).reshape(shape).astype(dt, order=order))
            name = f"seed-{dt.strip('<>|')}-{'x'.join(map(str, shape))}-{order}.npy"
            with open(os.path.join(out, name), "wb") as f:
                f.write(buf.getvalue())
for version in [(2, 0), (3, 0)]:
    buf = io.BytesIO()
    np.lib.format.write_array(buf, np.zeros((2, 2), "<f4"), version=version)
    with open(os.path.join(out, f"seed-v{version[0]}.npy"), "wb") as f:
        f.write(buf.getvalue())
