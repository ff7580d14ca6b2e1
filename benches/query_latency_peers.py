#!/usr/bin/env python3
"""The peers of benches/query_latency.c on the same projector and shapes, in the same run:
numpy (single-thread sgemm on the f32 map, the ceiling for 64 rows) and FAISS
(`LinearTransform.apply` + `normalize_L2`, single thread), as percentiles per call.

    python3 benches/query_latency_peers.py PROJECTOR.safetensors [calls]
"""
import sys
import time

import numpy as np
from threadpoolctl import threadpool_limits

from _common import load_projector_map  # benches/ is on sys.path: this script lives there


def percentiles(fn, calls):
    for _ in range(200):
        fn()
    t = np.empty(calls)
    for i in range(calls):
        t0 = time.perf_counter_ns()
        fn()
        t[i] = (time.perf_counter_ns() - t0) / 1e3
    t.sort()
    return t[calls // 2], t[int(calls * 0.90)], t[int(calls * 0.99)], t[-1]


def report(name, label, rows, d_in, d_out, p):
    flop = 2.0 * rows * d_in * d_out
    print(f"{name}\t{label}\trows={rows}\tp50_us={p[0]:.2f}\tp90_us={p[1]:.2f}\tp99_us={p[2]:.2f}"
          f"\tmax_us={p[3]:.2f}\tgflops_p50={flop / (p[0] * 1e3):.2f}")


def main():
    path = sys.argv[1]
    calls = int(sys.argv[2]) if len(sys.argv) > 2 else 20000
    w = np.ascontiguousarray(load_projector_map(path, "image.compact.weight"))  # d_in x d_out
    d_in, d_out = w.shape
    rng = np.random.default_rng(0)
    with threadpool_limits(1):
        for rows in (1, 64):
            x16 = rng.uniform(-1, 1, (rows, d_in)).astype(np.float16)
            out = np.empty((rows, d_out), np.float32)
            xf = x16.astype(np.float32)
            # The ceiling: the sgemm alone on f32 data already in cache.
            report("numpy-sgemm", "1-thread", rows, d_in, d_out,
                   percentiles(lambda: np.matmul(xf, w, out=out), calls))

            def numpy_pipeline():
                y = x16.astype(np.float32) @ w
                y /= np.linalg.norm(y, axis=1, keepdims=True)
                return y.astype(np.float16)
            report("numpy-pipeline", "1-thread", rows, d_in, d_out, percentiles(numpy_pipeline, calls))
    try:
        import faiss
    except ImportError:
        print("faiss\tskipped\tfaiss-cpu is not installed")
        return
    faiss.omp_set_num_threads(1)
    lt = faiss.LinearTransform(d_in, d_out, False)
    faiss.copy_array_to_vector(np.ascontiguousarray(w.T).ravel(), lt.A)
    lt.is_trained = True
    for rows in (1, 64):
        x16 = rng.uniform(-1, 1, (rows, d_in)).astype(np.float16)

        def faiss_pipeline():
            y = lt.apply(x16.astype(np.float32))
            faiss.normalize_L2(y)
            return y.astype(np.float16)
        report("faiss", "1-thread", rows, d_in, d_out, percentiles(faiss_pipeline, calls))


if __name__ == "__main__":
    main()
