#!/usr/bin/env python3
"""Peer benchmark of `isoclip project`: one generated shard, file to file, through the pipelines a
user would pick instead (numpy, PyTorch CPU, FAISS `LinearTransform` + `normalize_L2`) and
through isoclip (full and compact), plus numpy's sgemm on the same shapes as the ceiling, all in
one run. Prints a markdown table.

    python3 benches/peers.py [--rows 524288] [--load N|0,1] [--cache warm|cold] [--repeats 3]

Rules, the same for every pipeline:
- input: one `.npy` shard of ROWS x 768 fp16 (`isoclip gallery`), the map: the built-in
  SYNTHETIC ViT-B/16 image projector of `isoclip fit` (band 200/50): full = 768 -> 512,
  compact = 768 -> 262;
- output: an L2-normalised fp16 `.npy` file, written by the peers through a memory-mapped output
  (`np.lib.format.open_memmap`) in chunks of --chunk-rows rows, then flushed and fsynced; isoclip
  writes its own way (O_DIRECT) and fsyncs; the output file is removed before every run;
- cache: before every run, `sync`, then the input shard is read whole (`--cache warm`, the
  default: every pipeline starts with the shard in the page cache) or its pages are dropped with
  POSIX_FADV_DONTNEED (`--cache cold`); no run starts with dirty pages left by another;
- threads: both cores everywhere (OpenBLAS 2, torch.set_num_threads(2), FAISS OpenMP 2, isoclip's
  default: one compute thread per core);
- each peer runs in its own Python process (no OpenMP runtime of one library spinning while
  another works); its time runs from opening the shard (after imports) to the fsync; isoclip's
  is the wall time of the whole `isoclip project` process (start, projector load and checksum
  included);
- `--load N` starts N busy processes (a Python spin loop each, pinned nowhere) around every
  measurement, ceiling included; `--load 0,1` measures at both, interleaved, and prints each
  pipeline's slowdown;
- runs are interleaved: each of --repeats rounds runs every (load, pipeline, width) once, and the
  best round is kept, so drift in the machine's other work touches every pipeline alike;
- every peer's output is checked against isoclip's of the same width (max difference in fp16
  ulps on elements of magnitude >= 2^-8, absolute difference below that, min cosine per row),
  so a fast wrong pipeline cannot win.

Needs a release build, numpy, faiss-cpu and torch (benches/peers.sh sets up a venv).
"""
import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _common import (  # noqa: E402
    BIN,
    BackgroundLoad,
    blas_description,
    clean_openblas_env,
    evict_file,
    fsync_path,
    load_projector_map,
    loadavg,
    run,
    sgemm_gflops,
    warm_file,
)

clean_openblas_env()
THREADS = 2
for _v in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_v, str(THREADS))

import numpy as np  # noqa: E402

PEERS = ("numpy", "torch", "faiss")


# ---------------------------------------------------------------------------------------------
# The peers, as a careful user would write them: chunked, memory-mapped output, fsync at the end.


def peer_numpy(shard, proj, name, out_path, chunk):
    A = np.ascontiguousarray(load_projector_map(proj, name))
    x = np.load(shard, mmap_mode="r")
    out = np.lib.format.open_memmap(out_path, mode="w+", dtype=np.float16, shape=(x.shape[0], A.shape[1]))
    for a in range(0, x.shape[0], chunk):
        y = x[a : a + chunk].astype(np.float32) @ A
        y /= np.maximum(np.linalg.norm(y, axis=1, keepdims=True), 1e-12)
        out[a : a + chunk] = y
    out.flush()
    del out
    fsync_path(out_path)


def peer_torch(shard, proj, name, out_path, chunk):
    import warnings

    import torch

    torch.set_num_threads(THREADS)
    warnings.filterwarnings("ignore", message=".*not writable.*")  # from_numpy on a read-only map
    W = torch.from_numpy(np.ascontiguousarray(load_projector_map(proj, name)))
    x = np.load(shard, mmap_mode="r")
    out = np.lib.format.open_memmap(out_path, mode="w+", dtype=np.float16, shape=(x.shape[0], W.shape[1]))
    with torch.inference_mode():
        for a in range(0, x.shape[0], chunk):
            xb = torch.from_numpy(x[a : a + chunk]).float()
            y = torch.nn.functional.normalize(xb @ W, dim=1)
            out[a : a + chunk] = y.half().numpy()
    out.flush()
    del out
    fsync_path(out_path)


def peer_faiss(shard, proj, name, out_path, chunk):
    import faiss

    faiss.omp_set_num_threads(THREADS)
    A = load_projector_map(proj, name)  # d_in x d_out
    d_in, d_out = A.shape
    lt = faiss.LinearTransform(d_in, d_out, False)
    faiss.copy_array_to_vector(np.ascontiguousarray(A.T).ravel(), lt.A)
    lt.is_trained = True
    x = np.load(shard, mmap_mode="r")
    out = np.lib.format.open_memmap(out_path, mode="w+", dtype=np.float16, shape=(x.shape[0], d_out))
    for a in range(0, x.shape[0], chunk):
        y = lt.apply(np.ascontiguousarray(x[a : a + chunk], dtype=np.float32))
        faiss.normalize_L2(y)
        out[a : a + chunk] = y
    out.flush()
    del out
    fsync_path(out_path)


def worker(args):
    """One timed run of one peer in this process; prints JSON (seconds, CPU, context switches)."""
    fn = {"numpy": peer_numpy, "torch": peer_torch, "faiss": peer_faiss}[args.worker]
    if args.worker == "torch":
        import torch  # noqa: F401  (import time is not the pipeline's)
    elif args.worker == "faiss":
        import faiss  # noqa: F401
    r0 = resource.getrusage(resource.RUSAGE_SELF)
    t = time.perf_counter()
    fn(args.shard, args.projector, args.map_name, args.out, args.chunk_rows)
    sec = time.perf_counter() - t
    r1 = resource.getrusage(resource.RUSAGE_SELF)
    print(json.dumps(usage(sec, r0, r1)))


def usage(sec, r0, r1):
    return {
        "seconds": sec,
        "user": r1.ru_utime - r0.ru_utime,
        "sys": r1.ru_stime - r0.ru_stime,
        "vcsw": r1.ru_nvcsw - r0.ru_nvcsw,
        "ivcsw": r1.ru_nivcsw - r0.ru_nivcsw,
    }


# ---------------------------------------------------------------------------------------------
# The driver.


def prepare_cache(shard, mode):
    os.sync()  # no writeback left over from the previous run
    if mode == "warm":
        warm_file(shard)
    else:
        evict_file(shard)


def timed_child(cmd, env=None):
    """Runs cmd; returns its wall time and rusage (all its threads) from wait4."""
    t = time.perf_counter()
    p = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)
    out, err = p.communicate()
    sec = time.perf_counter() - t
    if p.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed:\n{err.decode()}")
    return sec, out.decode()


def run_isoclip(a, proj, gal, out_dir, form):
    cmd = [a.isoclip_bin, "project", "--projector", proj, "--input", gal, "--output", out_dir,
           "--form", form, "--overwrite", "--quiet"] + a.isoclip_arg
    shutil.rmtree(out_dir, ignore_errors=True)
    r0 = resource.getrusage(resource.RUSAGE_CHILDREN)
    sec, _ = timed_child(cmd)
    r1 = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage(sec, r0, r1)


def run_peer(a, peer, proj, map_name, shard, out_path):
    if os.path.exists(out_path):
        os.remove(out_path)
    cmd = [sys.executable, os.path.abspath(__file__), "--worker", peer, "--shard", shard, "--projector", proj,
           "--map-name", map_name, "--out", out_path, "--chunk-rows", str(a.chunk_rows)]
    _, out = timed_child(cmd)
    return json.loads(out.strip().splitlines()[-1])


SMALL = 2.0**-8  # below this magnitude an element's fp16 ulp is far finer than f32 GEMM rounding


def compare(ref_path, got_path, chunk=65536):
    """(max |difference| in fp16 ulps over elements of magnitude >= 2^-8, max absolute difference
    over the smaller ones, min cosine per row) of two fp16 .npy files. Tiny elements are judged in
    absolute terms: an f32 GEMM's rounding (~1e-7 of the row norm) spans several fp16 ulps there."""
    a = np.load(ref_path, mmap_mode="r")
    b = np.load(got_path, mmap_mode="r")
    if a.shape != b.shape:
        raise SystemExit(f"{got_path}: shape {b.shape}, isoclip's is {a.shape}")
    max_ulps, max_small, min_cos = 0, 0.0, 1.0
    for s in range(0, a.shape[0], chunk):
        x = np.asarray(a[s : s + chunk])
        y = np.asarray(b[s : s + chunk])
        # fp16 bit patterns as integers ordered like the values (sign-magnitude -> two's complement)
        ix = x.view(np.int16).astype(np.int32)
        iy = y.view(np.int16).astype(np.int32)
        ix = np.where(ix < 0, -(ix & 0x7FFF), ix)
        iy = np.where(iy < 0, -(iy & 0x7FFF), iy)
        xf = x.astype(np.float32)
        yf = y.astype(np.float32)
        big = np.maximum(np.abs(xf), np.abs(yf)) >= SMALL
        if big.any():
            max_ulps = max(max_ulps, int(np.abs(ix - iy)[big].max()))
        if (~big).any():
            max_small = max(max_small, float(np.abs(xf - yf)[~big].max()))
        cos = (xf * yf).sum(1) / np.maximum(np.linalg.norm(xf, axis=1) * np.linalg.norm(yf, axis=1), 1e-30)
        min_cos = min(min_cos, float(cos.min()))
    return max_ulps, max_small, min_cos


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rows", type=int, default=524_288)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--load", default="0", help="busy background processes during every measurement; a list "
                    "(0,1) measures every pipeline at each, interleaved, and prints the slowdown")
    ap.add_argument("--cache", choices=("warm", "cold"), default="warm")
    ap.add_argument("--chunk-rows", type=int, default=16384, help="rows per chunk in the peers' loops")
    ap.add_argument("--only", default="", help="comma-separated subset: isoclip,numpy,torch,faiss")
    ap.add_argument("--widths", default="full,compact", help="maps to run: full,compact")
    ap.add_argument("--isoclip-bin", default=BIN, help="the isoclip binary (e.g. a prototype build)")
    ap.add_argument("--isoclip-arg", action="append", default=[], help="extra argument to `isoclip project` (repeatable)")
    ap.add_argument("--workdir", default=None)
    ap.add_argument("--keep", action="store_true", help="keep the work directory")
    # worker mode (internal)
    ap.add_argument("--worker", choices=PEERS, help=argparse.SUPPRESS)
    ap.add_argument("--shard", help=argparse.SUPPRESS)
    ap.add_argument("--projector", help=argparse.SUPPRESS)
    ap.add_argument("--map-name", help=argparse.SUPPRESS)
    ap.add_argument("--out", help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.worker:
        return worker(a)

    only = set(a.only.split(",")) if a.only else {"isoclip", *PEERS}
    loads = [int(v) for v in a.load.split(",")]
    widths = [w for w in ("full", "compact") if w in a.widths.split(",")]
    work = a.workdir or tempfile.mkdtemp(prefix="isoclip-peers-", dir=os.path.join(os.path.dirname(BIN), ".."))
    os.makedirs(work, exist_ok=True)
    versions = [f"numpy {np.__version__}"]
    for mod in ("torch", "faiss"):
        if mod in only:
            try:
                versions.append(f"{mod} {__import__(mod).__version__}")
            except ImportError:
                raise SystemExit(f"{mod} is not installed: run benches/peers.sh, or pass --only without it")
    cpu = next((l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo") if l.startswith("model name")), "?")
    print(f"machine: {cpu}, {os.cpu_count()} cores; load average before: {loadavg()}")
    print(f"versions: {', '.join(versions)}; BLAS: {blas_description()}")
    print(f"isoclip: {a.isoclip_bin} {' '.join(a.isoclip_arg)}".rstrip())

    proj = os.path.join(work, "p.safetensors")
    run(["fit", "-o", proj])
    maps = {"full": "image.full.weight", "compact": "image.compact.weight"}
    dims = {w: load_projector_map(proj, maps[w]).shape for w in maps}
    d_in = dims["full"][0]
    gal = os.path.join(work, "gallery")
    shard = os.path.join(gal, "img_emb_0000.npy")
    if not os.path.exists(shard) or np.load(shard, mmap_mode="r").shape != (a.rows, d_in):
        shutil.rmtree(gal, ignore_errors=True)
        run(["gallery", "--out", gal, "--shards", "1", "--rows", str(a.rows), "--dim", str(d_in), "--dtype", "f16"])
    gb = os.path.getsize(shard) / 1e9
    print(f"shard: {a.rows} x {d_in} fp16 ({gb:.2f} GB); projector: SYNTHETIC ViT-B/16 image, band 200/50; "
          f"cache: {a.cache}; load: {a.load} busy process(es); best of {a.repeats} interleaved rounds; "
          f"peers' chunk: {a.chunk_rows} rows")

    # Rounds: every (load, pipeline, width) once per round, so that drift in what else the machine
    # does spreads over all of them alike; the best of the rounds is kept.
    pipelines = [(p, w) for w in widths for p in ("isoclip", *PEERS) if p in only]
    best = {}
    ceiling = {}
    for rnd in range(a.repeats):
        for load in loads:
            with BackgroundLoad(load):
                for w in widths:  # the ceiling, measured in every round too: its best
                    g = sgemm_gflops(min(a.rows, 65536), d_in, dims[w][1], repeats=3)
                    ceiling.setdefault(load, {})[w] = max(ceiling.get(load, {}).get(w, 0.0), g)
                for p, w in pipelines:
                    prepare_cache(shard, a.cache)
                    if p == "isoclip":
                        u = run_isoclip(a, proj, gal, os.path.join(work, f"isoclip_{w}"), w)
                    else:
                        u = run_peer(a, p, proj, maps[w], shard, os.path.join(work, f"{p}_{w}.npy"))
                    key = (load, p, w)
                    if key not in best or u["seconds"] < best[key]["seconds"]:
                        best[key] = u
    print(f"load average after: {loadavg()}\n")
    checks = {}
    for p, w in pipelines:
        iso = os.path.join(work, f"isoclip_{w}", "img_emb_0000.npy")
        if p == "isoclip":
            checks[(p, w)] = (0, 0.0, 1.0)
        elif os.path.exists(iso):
            checks[(p, w)] = compare(iso, os.path.join(work, f"{p}_{w}.npy"))
        else:
            checks[(p, w)] = (None, None, None)

    print("| load | pipeline | width | seconds | rows/s | GFLOP/s | vs best peer, same width | of numpy sgemm | "
          "CPU s (user+sys) | invol. ctx switches | max Δ, fp16 ulps (\\|x\\| ≥ 2^-8) | max \\|Δ\\| (\\|x\\| < 2^-8) | min cosine |")
    print("|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for load in loads:
        best_peer = {}
        for p, w in pipelines:
            if p != "isoclip":
                best_peer[w] = min(best_peer.get(w, 1e9), best[(load, p, w)]["seconds"])
        for p, w in pipelines:
            u = best[(load, p, w)]
            d_out = dims[w][1]
            sec = u["seconds"]
            rps = a.rows / sec
            gf = rps * 2 * d_in * d_out / 1e9
            ratio = f"{best_peer[w] / sec:.2f}x" if w in best_peer else "-"
            ulps, small, cos = checks[(p, w)]
            check = f"{ulps} | {small:.1e} | {cos:.6f}" if ulps is not None else "- | - | -"
            name = f"isoclip {w}" if p == "isoclip" else f"{p} ({w} map)"
            print(f"| {load} | {name} | {d_out} | {sec:.3f} | {rps:,.0f} | {gf:.1f} | {ratio} | {gf / ceiling[load][w]:.0%} | "
                  f"{u['user'] + u['sys']:.2f} | {u['ivcsw']} | {check} |")
        if "full" in best_peer and ("isoclip", "compact") in pipelines:
            print(f"| {load} | isoclip compact vs the best peer's full 512-wide output | | | | | "
                  f"{best_peer['full'] / best[(load, 'isoclip', 'compact')]['seconds']:.2f}x | | | | | | |")
    for load in loads:
        for w in widths:
            print(f"load {load}: numpy sgemm ceiling, {min(a.rows, 65536)} x {d_in} @ {d_in} x {dims[w][1]} f32 in memory "
                  f"({THREADS} threads): {ceiling[load][w]:.1f} GFLOP/s")
    if len(loads) > 1:
        l0, l1 = loads[0], loads[-1]
        print(f"\nslowdown with {l1} busy process(es) (seconds at load {l1} / seconds at load {l0}; CPU seconds likewise):")
        for p, w in pipelines:
            u0, u1 = best[(l0, p, w)], best[(l1, p, w)]
            name = f"isoclip {w}" if p == "isoclip" else f"{p} ({w} map)"
            print(f"  {name:<22} wall {u1['seconds'] / u0['seconds']:.2f}x   CPU {(u1['user'] + u1['sys']) / (u0['user'] + u0['sys']):.2f}x"
                  f"   involuntary switches {u0['ivcsw']} -> {u1['ivcsw']}")
    bad = [k for k, c in checks.items() if c[0] is not None and (c[0] > 2 or c[1] > 2.0**-17 or c[2] < 0.9999)]
    if bad:
        print(f"WARNING: outputs differ from isoclip's (> 2 fp16 ulps, or > 2^-17 on elements below 2^-8, "
              f"or a cosine < 0.9999): {', '.join(f'{p} {w}' for p, w in bad)}")
    if not a.keep and not a.workdir:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
