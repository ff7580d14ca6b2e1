"""Fixtures of the core package tests: the CLI to compare with, a projector fitted by the CLI
on the built-in synthetic model (ViT-B/16 shapes: 768-d image features, 512-d embeddings), and
random rows. Session-scoped: made once."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import numpy as np
import pytest

REPO_ROOT = Path(__file__).resolve().parents[3]
FEATURES = 768
EMBEDDINGS = 512


def cli_path() -> str:
    """``$ISOCLIP_BIN``, else the debug build."""
    path = os.environ.get("ISOCLIP_BIN", str(REPO_ROOT / "target" / "debug" / "isoclip"))
    if not os.access(path, os.X_OK):
        pytest.fail(f"the isoclip CLI is not at {path}: build it (cargo build) or set ISOCLIP_BIN")
    return path


def cli(*args: str) -> str:
    """Runs the CLI; a failure fails the test with its stderr. Returns stdout."""
    done = subprocess.run([cli_path(), *map(str, args)], capture_output=True, text=True)
    if done.returncode != 0:
        pytest.fail(f"isoclip {' '.join(map(str, args))} failed: {done.stderr}")
    return done.stdout


def cpu_has_bf16() -> bool:
    """Whether /proc/cpuinfo lists AVX-512F and AVX-512 BF16 (what precision="bf16" needs)."""
    try:
        info = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    for line in info.splitlines():
        if line.startswith("flags"):
            flags = set(line.split())
            return "avx512f" in flags and "avx512_bf16" in flags
    return False


def rows(n: int, cols: int, seed: int, dtype=np.float32) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((n, cols)).astype(dtype)


@pytest.fixture(scope="session")
def core_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("core")


@pytest.fixture(scope="session")
def core_projector_path(core_dir: Path) -> str:
    """`isoclip fit` of the synthetic model, image modality."""
    path = core_dir / "synthetic.isoclip.safetensors"
    cli("fit", "-o", path)
    return str(path)


@pytest.fixture(scope="session")
def core_projector(core_projector_path: str):
    import isoclip

    return isoclip.Projector.load(core_projector_path)
