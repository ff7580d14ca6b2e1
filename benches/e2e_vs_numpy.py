#!/usr/bin/env python3
"""End-to-end benchmark: `isoclip project` vs the pipeline a numpy user would write, on the same
generated shard, in one run, plus numpy's sgemm rate on the same shape as the machine's ceiling
and the peak anonymous memory of isoclip on a small and a large shard.

    python3 benches/e2e_vs_numpy.py [--rows 1000000] [--big-rows 2800000] [--workdir DIR]

Needs a release build (`cargo build --release`) and numpy. OpenBLAS is run with
OPENBLAS_CORETYPE/OPENBLAS_L2_SIZE unset (they force an older, slower kernel on this machine);
the kernel it then uses is printed.
"""
import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _common import BIN, blas_description, clean_openblas_env, load_projector_map, run, sgemm_gflops  # noqa: E402,F401

clean_openblas_env()  # before numpy loads OpenBLAS

import numpy as np  # noqa: E402


def peak_anon_kib(cmd):
    """Runs cmd, sampling RssAnon (and VmHWM) from /proc; returns (seconds, peak RssAnon KiB, VmHWM KiB)."""
    t0 = time.perf_counter()
    p = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    peak = 0
    hwm = 0
    while p.poll() is None:
        try:
            with open(f"/proc/{p.pid}/status") as f:
                for line in f:
                    if line.startswith("RssAnon:"):
                        peak = max(peak, int(line.split()[1]))
                    elif line.startswith("VmHWM:"):
                        hwm = max(hwm, int(line.split()[1]))
        except OSError:
            pass
        time.sleep(0.005)
    if p.returncode != 0:
        raise SystemExit(p.stderr.read().decode())
    return time.perf_counter() - t0, peak, hwm


def numpy_pipeline(shard, A, out_path):
    x = np.load(shard, mmap_mode="r")
    y = x.astype(np.float32) @ A
    y /= np.linalg.norm(y, axis=1, keepdims=True)
    np.save(out_path, y.astype(np.float16))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--rows", type=int, default=1_000_000)
    ap.add_argument("--big-rows", type=int, default=2_800_000, help="rows of the ~4 GB shard for the memory check (0 to skip)")
    ap.add_argument("--workdir", default=None)
    ap.add_argument("--repeats", type=int, default=3)
    a = ap.parse_args()
    work = a.workdir or tempfile.mkdtemp(prefix="isoclip-bench-")
    os.makedirs(work, exist_ok=True)
    kernel = blas_description()
    print(f"machine: {os.cpu_count()} cores; numpy {np.__version__}; BLAS: {kernel}")

    proj = os.path.join(work, "p.safetensors")
    run(["fit", "-o", proj])
    A_full = load_projector_map(proj, "image.full.weight")
    A_compact = load_projector_map(proj, "image.compact.weight")
    d_in, d_full = A_full.shape
    d_compact = A_compact.shape[1]
    gal = os.path.join(work, "gallery")
    shutil.rmtree(gal, ignore_errors=True)
    run(["gallery", "--out", gal, "--shards", "1", "--rows", str(a.rows), "--dim", str(d_in), "--dtype", "f16"])
    shard = os.path.join(gal, "img_emb_0000.npy")
    gb = os.path.getsize(shard) / 1e9
    # Warm the page cache for everyone.
    with open(shard, "rb") as f:
        while f.read(1 << 24):
            pass

    results = {}
    for form, width in (("compact", d_compact), ("full", d_full)):
        best = 1e9
        for _ in range(a.repeats):
            out = os.path.join(work, f"out_{form}")
            os.sync()  # no writeback left over from the previous run
            t = time.perf_counter()
            run(["project", "--projector", proj, "--input", gal, "--output", out, "--form", form, "--overwrite", "--quiet"])
            best = min(best, time.perf_counter() - t)
        results[f"isoclip {form}"] = (best, width)
    best = 1e9
    for _ in range(a.repeats):
        os.sync()
        t = time.perf_counter()
        numpy_pipeline(shard, A_full, os.path.join(work, "numpy_out.npy"))
        best = min(best, time.perf_counter() - t)
    results["numpy pipeline (full)"] = (best, d_full)
    os.sync()  # let the numpy pipeline's unsynced output reach the disk before timing sgemm
    ceil = {w: sgemm_gflops(min(a.rows, 65536), d_in, w, repeats=5) for w in (d_compact, d_full)}

    print(f"\nshard: {a.rows} x {d_in} fp16 ({gb:.2f} GB), projector: synthetic ViT-B/16 image, band 200/50")
    print(f"{'pipeline':<24}{'seconds':>9}{'rows/s':>12}{'GFLOP/s':>10}{'numpy sgemm':>13}{'of sgemm':>10}")
    for name, (sec, width) in results.items():
        rps = a.rows / sec
        gf = rps * 2 * d_in * width / 1e9
        print(f"{name:<24}{sec:>9.3f}{rps:>12.0f}{gf:>10.1f}{ceil[width]:>13.1f}{gf / ceil[width]:>9.0%}")
    r_compact = results["isoclip compact"][0]
    r_numpy = results["numpy pipeline (full)"][0]
    print(f"isoclip compact moves {r_numpy / r_compact:.2f}x the rows/s of the numpy pipeline")
    print(f"isoclip full    moves {r_numpy / results['isoclip full'][0]:.2f}x the rows/s of the numpy pipeline")

    # Memory: small vs big shard.
    print("\npeak memory of `isoclip project` (RssAnon = anonymous memory; VmHWM includes mapped file pages):")
    for rows in (a.rows, a.big_rows):
        if rows <= 0:
            continue
        g = os.path.join(work, f"mem_{rows}")
        shutil.rmtree(g, ignore_errors=True)
        run(["gallery", "--out", g, "--shards", "1", "--rows", str(rows), "--dim", str(d_in), "--dtype", "f16"])
        size = os.path.getsize(os.path.join(g, "img_emb_0000.npy")) / 1e9
        sec, anon, hwm = peak_anon_kib([BIN, "project", "--projector", proj, "--input", g, "--output", g + "_out", "--quiet", "--overwrite"])
        print(f"  shard {size:5.2f} GB: {sec:6.2f} s, peak RssAnon {anon / 1024:7.1f} MiB, VmHWM {hwm / 1024:7.1f} MiB")
        shutil.rmtree(g, ignore_errors=True)
        shutil.rmtree(g + "_out", ignore_errors=True)
    if not a.workdir:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
