#!/usr/bin/env python3
"""`isoclip eval` against the pipelines a user would write instead, on the data of
benches/eval_100k.sh (N synthetic 512-d fp16 CLIP-like embeddings in 1000 classes, one-set
retrieval: each row ranked against the N - 1 others), in one run:

- **FAISS**: `IndexFlatIP` exact search over the L2-normalised rows with k = N (the full ranking:
  mAP needs every relevant item's rank), queries in blocks, the metrics computed from the returned
  ids with numpy, vectorised per block; up to --faiss-max rows (k = N is slow in FAISS);
- **FAISS top-k**: the same with k = the largest class + 1 (at least 101), as FAISS-based
  evaluation code does (pytorch-metric-learning's AccuracyCalculator): mAP@R, P@R, R@K and P@K
  exact, mAP truncated at k (a lower bound; not compared);
- **torchmetrics 1.4.0.post0** (the version the reference pins): the reference's per-query loop,
  scores from a torch matmul per block of queries, then per query
  `retrieval_average_precision` (mAP), the reference's own `retrieval_average_precision_atk`
  with top_k = R counted before self-exclusion (mAP@R, written in torch as the reference does),
  `retrieval_r_precision` (P@R) and `retrieval_hit_rate` (R@1/5/10). It is slow: it runs only up
  to --torchmetrics-max rows.

Every pipeline computes the same metric set as `isoclip eval --input-kind embeddings` for plain
CLIP (the rows, normalised) and IsoCLIP (the rows through the SYNTHETIC projector's embedding
route, `image.embedding.compact`, normalised): mAP, mAP@R, P@R, R@1/5/10 (FAISS also P@K,
K = 1..100). Values are checked against isoclip's.

    python3 benches/eval_peers.py [--rows 20000,50000] [--torchmetrics-max 10000]

Each pipeline runs in its own process: seconds (after imports, data loading included) and peak
RSS (the process's max resident set). Threads: both cores everywhere.
"""
import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _common import BIN, BackgroundLoad, clean_openblas_env, load_projector_map, loadavg, make_eval_data, run  # noqa: E402

clean_openblas_env()
THREADS = 2
for _v in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_v, str(THREADS))

import numpy as np  # noqa: E402

METRICS = ("map", "map_at_r", "p_at_r", "r_at_1", "r_at_5", "r_at_10")
CURVE_K = 100


def embeddings(emb_path, proj):
    """(plain, isoclip) L2-normalised f32 embeddings, as `isoclip eval --input-kind embeddings`."""
    x = np.load(emb_path).astype(np.float32)
    E = load_projector_map(proj, "image.embedding.compact")
    out = []
    for v in (x, x @ E):
        v /= np.maximum(np.linalg.norm(v, axis=1, keepdims=True), 1e-12)
        out.append(np.ascontiguousarray(v))
    return out


def metrics_from_ranked_ids(ids, q0, labels, class_size, acc):
    """Adds the metrics of queries q0.. given each query's ranking `ids` (B x k, best first, self
    usually included) to `acc`. One-set semantics: the query's own entry is removed (where it is
    not among the k, the last column goes instead). With k = N every metric is exact; with a
    shorter k, relevant items beyond it count as never found: mAP is then a lower bound, while
    mAP@R, P@R and R@K stay exact as long as k - 1 >= the largest class and K."""
    b, k = ids.shape
    q = np.arange(q0, q0 + b)
    keep = ids != q[:, None]
    no_self = keep.all(1)
    keep[no_self, -1] = False
    ids = ids[keep].reshape(b, k - 1)
    rel = labels[ids] == labels[q][:, None]
    r = class_size[labels[q]] - 1  # relevant gallery items: the class without the query
    r_before = r + 1  # the reference counts the query's own entry
    hits = np.cumsum(rel, axis=1, dtype=np.int32)
    pos = np.arange(1, k, dtype=np.float64)
    prec = np.where(rel, hits / pos, 0.0)
    safe_r = np.maximum(r, 1)
    acc["map"] += (prec.sum(1) / safe_r * (r > 0)).sum()
    top_k = np.minimum(r_before, len(labels) - 1)
    within = pos[None, :] <= top_k[:, None]
    acc["map_at_r"] += ((prec * within).sum(1) / np.maximum(np.minimum(r, top_k), 1) * (r > 0)).sum()
    acc["p_at_r"] += (hits[np.arange(b), np.maximum(r, 1) - 1] / safe_r * (r > 0)).sum()
    for kk in (1, 5, 10):
        acc[f"r_at_{kk}"] += rel[:, :kk].any(1).sum()
    acc["hits_at_k"] += hits[:, :CURVE_K].sum(0)


def faiss_worker(emb_path, lab_path, proj, top_k):
    """FAISS IndexFlatIP exact search; k = N (top_k False: the full ranking, every metric exact) or
    k = the largest class + 1, at least CURVE_K + 1 (top_k True: what FAISS-based evaluation code
    such as pytorch-metric-learning's AccuracyCalculator does; mAP truncated at k)."""
    import faiss

    faiss.omp_set_num_threads(THREADS)
    labels = np.load(lab_path)
    n = len(labels)
    class_size = np.bincount(labels)
    k = min(n, max(int(class_size.max()) + 1, CURVE_K + 1)) if top_k else n
    out = {"k": k}
    for name, x in zip(("clip", "isoclip"), embeddings(emb_path, proj)):
        index = faiss.IndexFlatIP(x.shape[1])
        index.add(x)
        acc = {m: 0.0 for m in METRICS}
        acc["hits_at_k"] = np.zeros(CURVE_K, dtype=np.int64)
        block = max(16, min(4096, (96 << 20) // (12 * k)))  # ~100 MB of D and I per block
        for q0 in range(0, n, block):
            _, ids = index.search(x[q0 : q0 + block], k)
            metrics_from_ranked_ids(ids, q0, labels, class_size, acc)
        res = {m: 100.0 * acc[m] / n for m in METRICS}
        res["precision_at_k"] = [100.0 * h / ((i + 1) * n) for i, h in enumerate(acc["hits_at_k"])]
        out[name] = res
    return out


def torchmetrics_worker(emb_path, lab_path, proj):
    import torch
    import torchmetrics
    from torchmetrics.functional import retrieval_average_precision, retrieval_hit_rate, retrieval_r_precision

    assert torchmetrics.__version__.startswith("1.4.0"), torchmetrics.__version__
    torch.set_num_threads(THREADS)
    labels = torch.from_numpy(np.load(lab_path))
    n = len(labels)

    def average_precision_atk(preds, target, top_k=None):
        # The reference's utils.retrieval_average_precision_atk.
        top_k = top_k or preds.shape[-1]
        number_of_relevant = target.sum()
        sorted_indices = torch.topk(preds, k=min(int(top_k), preds.shape[-1]), sorted=True)[1]
        t = target[sorted_indices].long()
        precisions = torch.cumsum(t, dim=0) * t
        precisions = precisions / torch.arange(1, precisions.shape[0] + 1)
        return precisions.sum() / torch.minimum(number_of_relevant, torch.tensor(top_k))

    out = {}
    for name, x in zip(("clip", "isoclip"), embeddings(emb_path, proj)):
        x = torch.from_numpy(x)
        sums = {m: 0.0 for m in METRICS}
        for q0 in range(0, n, 1024):
            S = x[q0 : q0 + 1024] @ x.T
            for i in range(S.shape[0]):
                q = q0 + i
                query_true = labels == labels[q]
                relevant_per_query = int(query_true.sum())
                keep = torch.ones(n, dtype=torch.bool)
                keep[q] = False
                query_sim, query_true = S[i][keep], query_true[keep]
                sums["map"] += float(retrieval_average_precision(query_sim, query_true))
                v = float(average_precision_atk(query_sim, query_true, top_k=relevant_per_query))
                sums["map_at_r"] += 0.0 if v != v else v  # NaN (no relevant item) scored 0, as isoclip does
                sums["p_at_r"] += float(retrieval_r_precision(query_sim, query_true))
                for k in (1, 5, 10):
                    sums[f"r_at_{k}"] += float(retrieval_hit_rate(query_sim, query_true, top_k=k))
        out[name] = {m: 100.0 * sums[m] / n for m in METRICS}
    return out


def worker(a):
    fn = {
        "faiss": lambda *x: faiss_worker(*x, top_k=False),
        "faiss-topk": lambda *x: faiss_worker(*x, top_k=True),
        "torchmetrics": torchmetrics_worker,
    }[a.worker]
    if a.worker.startswith("faiss"):
        import faiss  # noqa: F401
    else:
        import torch  # noqa: F401
        import torchmetrics  # noqa: F401
    t = time.perf_counter()
    res = fn(a.emb, a.labels, a.projector)
    res["seconds"] = time.perf_counter() - t
    print(json.dumps(res))


def timed(cmd):
    """Wall seconds, peak RSS (MiB) and stdout of a child process."""
    t = time.perf_counter()
    p = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    out, err = p.stdout.read(), p.stderr.read()
    _, status, ru = os.wait4(p.pid, 0)
    sec = time.perf_counter() - t
    p.returncode = os.waitstatus_to_exitcode(status)
    if p.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed:\n{err.decode()}")
    return sec, ru.ru_maxrss / 1024, out.decode()


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rows", default="20000,50000", help="comma-separated N")
    ap.add_argument("--classes", type=int, default=1000)
    ap.add_argument("--torchmetrics-max", type=int, default=10000, help="largest N torchmetrics runs at")
    ap.add_argument("--faiss-max", type=int, default=20000, help="largest N FAISS with k = N runs at")
    ap.add_argument("--load", type=int, default=0, help="busy background processes during every measurement")
    ap.add_argument("--workdir", default=None)
    ap.add_argument("--worker", choices=("faiss", "faiss-topk", "torchmetrics"), help=argparse.SUPPRESS)
    ap.add_argument("--emb", help=argparse.SUPPRESS)
    ap.add_argument("--labels", help=argparse.SUPPRESS)
    ap.add_argument("--projector", help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.worker:
        return worker(a)
    work = a.workdir or tempfile.mkdtemp(prefix="isoclip-evalpeers-", dir=os.path.join(os.path.dirname(BIN), ".."))
    os.makedirs(work, exist_ok=True)
    proj = os.path.join(work, "synthetic.safetensors")
    run(["fit", "-o", proj])
    cpu = next((l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo") if l.startswith("model name")), "?")
    print(f"machine: {cpu}, {os.cpu_count()} cores; load average before: {loadavg()}; load: {a.load} busy process(es)")
    rows_list = [int(r) for r in a.rows.split(",")]
    table = []
    with BackgroundLoad(a.load):
        for n in rows_list:
            emb, lab = make_eval_data(work, n, 512, a.classes)
            cmd = [BIN, "eval", "--projector", proj, "--input-kind", "embeddings", "--features", emb, "--labels", lab, "--json"]
            sec, rss, out = timed(cmd)
            ref = json.loads(out)
            table.append((n, "isoclip eval", sec, rss, 0.0))
            base = sec
            for peer, cap in (("faiss", a.faiss_max), ("faiss-topk", n), ("torchmetrics", a.torchmetrics_max)):
                if n > cap:
                    table.append((n, peer, None, None, None))
                    continue
                cmd = [sys.executable, os.path.abspath(__file__), "--worker", peer, "--emb", emb, "--labels", lab, "--projector", proj]
                sec, rss, out = timed(cmd)
                got = json.loads(out.strip().splitlines()[-1])
                sec = got["seconds"]  # after the imports (torch's take seconds); isoclip's is its whole process
                exact = [m for m in METRICS if not (peer == "faiss-topk" and m == "map" and got["k"] < n)]
                diff = max(abs(got[s][m] - ref[s][m]) for s in ("clip", "isoclip") for m in exact)
                if "precision_at_k" in got["clip"]:
                    diff = max(diff, max(abs(x - y) for s in ("clip", "isoclip")
                                         for x, y in zip(got[s]["precision_at_k"], ref[s]["precision_at_k"])))
                name = f"faiss top-k (k = {got['k']}; mAP truncated)" if peer == "faiss-topk" else peer
                table.append((n, name, sec, rss, diff))
                print(f"  N={n} {peer}: {sec:.1f} s (isoclip {base:.1f} s); max |Δ metric| vs isoclip {diff:.4f} points",
                      flush=True)
            print(f"  N={n}: isoclip mAP CLIP {ref['clip']['map']:.3f} -> IsoCLIP {ref['isoclip']['map']:.3f}", flush=True)
    print(f"load average after: {loadavg()}\n")
    print("| N | pipeline | seconds | peak RSS (MiB) | isoclip's speed-up | max abs. difference of a metric from isoclip's (points of 100) |")
    print("|---:|---|---:|---:|---:|---:|")
    base = {}
    for n, name, sec, rss, diff in table:
        if name == "isoclip eval":
            base[n] = sec
        if sec is None:
            print(f"| {n:,} | {name} | not run (over its cap) | | | |")
            continue
        ratio = f"{sec / base[n]:.1f}x" if name != "isoclip eval" else "1x"
        print(f"| {n:,} | {name} | {sec:.2f} | {rss:,.0f} | {ratio} | {diff:.4f} |")
    print("\nmetric set: mAP, mAP@R (reference's R), P@R, R@1/5/10 for plain CLIP and IsoCLIP (FAISS: and P@K, K = 1..100)")
    if not a.workdir:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
