"""Helpers shared by the Python benchmarks in benches/ (e2e_vs_numpy.py, peers.py,
query_latency_peers.py, eval_peers.py): the release binary, reading a projector's maps without
the safetensors package, OpenBLAS's environment, numpy's sgemm rate, page-cache control and
background load.

Import it before numpy: `clean_openblas_env()` may re-exec the interpreter.
"""
import json
import os
import struct
import subprocess
import sys
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BIN = os.path.join(REPO, "target", "release", "isoclip")
_OPENBLAS_FORCING = ("OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE")


def clean_openblas_env():
    """Re-execs the interpreter once without OPENBLAS_CORETYPE/OPENBLAS_L2_SIZE (they force an
    older, slower kernel on this machine); must run before numpy loads OpenBLAS."""
    if any(v in os.environ for v in _OPENBLAS_FORCING):
        env = {k: v for k, v in os.environ.items() if k not in _OPENBLAS_FORCING}
        os.execve(sys.executable, [sys.executable] + sys.argv, env)


def run(args, **kw):
    """Runs the isoclip binary, failing loudly (its stderr in the exception)."""
    return subprocess.run([BIN] + args, check=True, capture_output=True, text=True, **kw)


def load_projector_map(path, name):
    """Reads one tensor from an isoclip projector file (safetensors) without the safetensors package."""
    import numpy as np

    with open(path, "rb") as f:
        n = struct.unpack("<Q", f.read(8))[0]
        header = json.loads(f.read(n))
        info = header[name]
        a, b = info["data_offsets"]
        f.seek(8 + n + a)
        return np.frombuffer(f.read(b - a), dtype=np.float32).reshape(info["shape"])


def sgemm_gflops(rows, d_in, d_out, repeats=3):
    """numpy's f32 GEMM rate on (rows x d_in) @ (d_in x d_out), data in memory: the ceiling."""
    import numpy as np

    rng = np.random.default_rng(0)
    x = rng.standard_normal((rows, d_in), dtype=np.float32)
    w = rng.standard_normal((d_in, d_out), dtype=np.float32)
    y = np.empty((rows, d_out), dtype=np.float32)
    best = 1e9
    for _ in range(repeats):
        t = time.perf_counter()
        np.matmul(x, w, out=y)
        best = min(best, time.perf_counter() - t)
    return 2.0 * rows * d_in * d_out / best / 1e9


def blas_description():
    try:
        import threadpoolctl

        info = threadpoolctl.threadpool_info()
        return ", ".join(
            f"{i.get('internal_api')} {i.get('version')} {i.get('architecture')} x{i.get('num_threads')}" for i in info
        )
    except ImportError:
        return "(pip install threadpoolctl to see the OpenBLAS kernel)"


def warm_file(path):
    """Reads a file whole so that its pages are in the page cache."""
    with open(path, "rb") as f:
        while f.read(1 << 24):
            pass


def evict_file(path):
    """Drops a file's clean pages from the page cache (POSIX_FADV_DONTNEED: no root needed, the
    next read comes from the disk, or at least from below this kernel's cache)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fdatasync(fd)
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    finally:
        os.close(fd)


def fsync_path(path):
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class BackgroundLoad:
    """N busy processes (a pure-Python spin loop each, pinned nowhere) while the block runs."""

    def __init__(self, n):
        self.n = n
        self.procs = []

    def __enter__(self):
        for _ in range(self.n):
            self.procs.append(subprocess.Popen([sys.executable, "-c", "while True: pass"]))
        time.sleep(0.2 if self.n else 0)
        return self

    def __exit__(self, *exc):
        for p in self.procs:
            p.kill()
        for p in self.procs:
            p.wait()
        self.procs = []
        return False


def cpu_times_children():
    """(user, system) CPU seconds of waited-for children so far."""
    t = os.times()
    return t.children_user, t.children_system


def loadavg():
    with open("/proc/loadavg") as f:
        return " ".join(f.read().split()[:3])


def make_eval_data(work, n, d=512, classes=1000):
    """The synthetic retrieval set of benches/eval_100k.sh: n CLIP-like d-dim embeddings in
    `classes` classes (class centre + strong isotropic noise), fp16, and int64 labels, written to
    WORK/emb_N.npy and WORK/labels_N.npy (kept if present). Returns the two paths."""
    import numpy as np

    emb, lab = os.path.join(work, f"emb_{n}.npy"), os.path.join(work, f"labels_{n}.npy")
    if os.path.exists(emb) and os.path.exists(lab):
        return emb, lab
    rng = np.random.default_rng(12345)
    centres = rng.normal(size=(classes, d)).astype(np.float32)
    labels = rng.integers(0, classes, size=n).astype(np.int64)
    x = np.empty((n, d), dtype=np.float16)
    for a in range(0, n, 10000):
        b = min(a + 10000, n)
        x[a:b] = (centres[labels[a:b]] + 4.0 * rng.normal(size=(b - a, d))).astype(np.float16)
    np.save(emb, x)
    np.save(lab, labels)
    return emb, lab


if __name__ == "__main__" and len(sys.argv) >= 3 and sys.argv[1] == "make-eval-data":
    # benches/eval_100k.sh: python3 benches/_common.py make-eval-data WORK N D CLASSES
    make_eval_data(sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5]))
