"""Fixtures shared by the engine tests (test_spark.py, test_ray.py).

A small gallery of ``.npy`` shards, a projector fitted by the CLI on random projectors, and the
CLI's own projection of the gallery (the reference every engine's output must equal, byte for
byte). Everything is session-scoped: made once, read by every test. The test modules star-import
this module so pytest sees the fixtures (it is not a conftest.py, which the core's tests own).
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path
from typing import Dict, List

import numpy as np
import pytest

REPO_ROOT = Path(__file__).resolve().parents[3]

#: Rows of each gallery shard: uneven, one single-row shard, five shards so that two workers
#: get different numbers of shards (0, 2, 4 and 1, 3).
SHARD_ROWS = (37, 64, 1, 50, 23)
INPUT_DIM = 48
EMBED_DIM = 32
#: The options every engine test projects with, spelled for the CLI and for Python.
GALLERY_OPTIONS = {"form": "compact", "dtype": "f16", "kind": "features"}
CLI_OPTIONS = ["--form", "compact", "--dtype", "f16", "--input-kind", "features"]


def isoclip_bin() -> str:
    """The CLI the outputs are compared with: ``$ISOCLIP_BIN``, else the debug build."""
    path = os.environ.get("ISOCLIP_BIN", str(REPO_ROOT / "target" / "debug" / "isoclip"))
    if not os.access(path, os.X_OK):
        pytest.fail(f"the isoclip CLI is not at {path}: build it (cargo build) or set ISOCLIP_BIN")
    return path


def run_cli(*args: str) -> None:
    """Runs the CLI; a failure fails the test with its stderr."""
    result = subprocess.run([isoclip_bin(), *args], capture_output=True, text=True)
    if result.returncode != 0:
        pytest.fail(f"isoclip {' '.join(args)} exited {result.returncode}: {result.stderr}")


@pytest.fixture(scope="session")
def engine_data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The session's folder for the gallery, projector and reference outputs."""
    return tmp_path_factory.mktemp("engines")


@pytest.fixture(scope="session")
def projector_path(engine_data: Path) -> str:
    """A projector fitted by ``isoclip fit`` on random .npy projectors (48 -> 32, band 4/4)."""
    rng = np.random.default_rng(11)
    image, text = engine_data / "image_proj.npy", engine_data / "text_proj.npy"
    np.save(image, rng.standard_normal((INPUT_DIM, EMBED_DIM)).astype(np.float32))
    np.save(text, rng.standard_normal((EMBED_DIM, EMBED_DIM)).astype(np.float32))
    path = engine_data / "projector.safetensors"
    run_cli("fit", "--image-proj", str(image), "--text-proj", str(text),
            "--k-top", "4", "--k-bottom", "4", "-o", str(path))
    return str(path)


@pytest.fixture(scope="session")
def gallery(engine_data: Path) -> Path:
    """Five float16 shards ``img_emb_000K.npy`` of SHARD_ROWS rows x INPUT_DIM."""
    rng = np.random.default_rng(12)
    folder = engine_data / "gallery"
    folder.mkdir()
    for index, rows in enumerate(SHARD_ROWS):
        shard = rng.standard_normal((rows, INPUT_DIM)).astype(np.float16)
        np.save(folder / f"img_emb_{index:04d}.npy", shard)
    return folder


@pytest.fixture(scope="session")
def cli_outputs(engine_data: Path, gallery: Path, projector_path: str) -> Dict[str, bytes]:
    """The CLI's projection of the gallery (one worker): shard name -> output file bytes."""
    output = engine_data / "cli-output"
    run_cli("project", "--projector", projector_path, "--input", str(gallery),
            "--output", str(output), "--device", "cpu", "--quiet", *CLI_OPTIONS)
    return output_shards(output)


def output_shards(folder: Path) -> Dict[str, bytes]:
    """The ``.npy`` files directly in ``folder``: name -> bytes (records and manifests aside)."""
    return {p.name: p.read_bytes() for p in sorted(Path(folder).glob("*.npy"))}


def shard_groups(num_shards: int) -> List[List[str]]:
    """Which shard names each of ``num_shards`` workers takes (k mod n of the sorted listing)."""
    names = [f"img_emb_{index:04d}.npy" for index in range(len(SHARD_ROWS))]
    return [names[index::num_shards] for index in range(num_shards)]


def embedding_matrix(rows: int, seed: int) -> np.ndarray:
    """A (rows, INPUT_DIM) float32 matrix of features for the column tests."""
    return np.random.default_rng(seed).standard_normal((rows, INPUT_DIM)).astype(np.float32)
