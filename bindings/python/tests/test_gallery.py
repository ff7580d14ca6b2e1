"""project_gallery: equal to `isoclip project`, resumable, split between workers, Ctrl-C."""

from __future__ import annotations

import os
import signal
import threading
from pathlib import Path

import numpy as np
import pytest

import isoclip
from isoclip import _native
from conftest import FEATURES, cli, cpu_has_bf16, rows

SHARDS = {"a.npy": 120, "b.npy": 1, "c.npy": 77, "d.npy": 200}


def npy_files(folder: Path) -> dict:
    return {p.name: p.read_bytes() for p in sorted(folder.glob("*.npy"))}


@pytest.fixture(scope="module")
def gallery(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("gallery")
    for i, (name, n) in enumerate(SHARDS.items()):
        np.save(folder / name, rows(n, FEATURES, seed=30 + i))
    return folder


@pytest.fixture(scope="module")
def cli_output(gallery, core_projector_path, tmp_path_factory) -> dict:
    out = tmp_path_factory.mktemp("cli") / "out"
    cli("project", "--projector", core_projector_path, "--input", gallery, "--output", out, "--quiet")
    return npy_files(out)


def test_gallery_equals_the_cli_and_resumes(gallery, cli_output, core_projector, tmp_path):
    out = tmp_path / "out"
    summary = isoclip.project_gallery(gallery, out, core_projector, progress=False)
    assert npy_files(out) == cli_output
    assert summary["shards_total"] == 4 and summary["shards_processed"] == 4
    assert summary["rows_processed"] == sum(SHARDS.values())
    assert summary["d_out"] == core_projector.output_dim() and summary["dtype"] == "f16"
    again = isoclip.project_gallery(gallery, out, core_projector, progress=True)
    assert again["shards_skipped"] == 4 and again["shards_processed"] == 0


def test_projector_by_path_and_progress_lines(gallery, cli_output, core_projector_path, tmp_path, capsys):
    out = tmp_path / "out"
    isoclip.project_gallery(str(gallery), str(out), core_projector_path, progress=True)
    assert npy_files(out) == cli_output


def test_two_workers_cover_the_gallery(gallery, cli_output, core_projector, tmp_path):
    out = tmp_path / "out"
    first = isoclip.project_gallery(gallery, out, core_projector, num_shards=2, shard_index=0, progress=False)
    second = isoclip.project_gallery(gallery, out, core_projector, num_shards=2, shard_index=1, progress=False)
    assert first["shards_processed"] == 2 and second["shards_processed"] == 2
    assert npy_files(out) == cli_output


def test_keyboard_interrupt_cancels_and_a_rerun_completes(core_projector_path, core_projector, tmp_path):
    big = tmp_path / "big"
    big.mkdir()
    for i in range(6):
        np.save(big / f"s{i}.npy", rows(3000, FEATURES, seed=40 + i, dtype=np.float16))
    reference = tmp_path / "reference"
    cli("project", "--projector", core_projector_path, "--input", big, "--output", reference, "--quiet")
    out = tmp_path / "out"
    # SIGINT as soon as the first shard is written: five are left, the job is still running.
    def interrupt_once_started() -> None:
        while not (out / "s0.npy").exists() and not stop.is_set():
            stop.wait(0.001)
        if not stop.is_set():
            os.kill(os.getpid(), signal.SIGINT)

    stop = threading.Event()
    sender = threading.Thread(target=interrupt_once_started)
    sender.start()
    try:
        with pytest.raises(KeyboardInterrupt):
            _native.project_gallery(str(big), str(out), core_projector, progress=False, chunk_bytes=4096)
    finally:
        stop.set()
        sender.join()
    assert 1 <= len(npy_files(out)) < 6
    assert not list(out.glob(".*.isoclip-tmp"))  # the interrupted shard left no temporary file
    summary = isoclip.project_gallery(big, out, core_projector, progress=False)
    assert summary["shards_processed"] + summary["shards_skipped"] == 6
    assert summary["shards_processed"] >= 1
    assert npy_files(out) == npy_files(reference)


def test_gallery_precision_is_recorded_and_a_rerun_at_another_redoes_the_shards(gallery, cli_output, core_projector, tmp_path):
    with pytest.raises(ValueError, match=r'unknown precision "f16" \(expected "f32" or "bf16"\)'):
        isoclip.project_gallery(gallery, tmp_path / "bad", core_projector, precision="f16", progress=False)
    out = tmp_path / "out"
    if not cpu_has_bf16():
        with pytest.raises(isoclip.DeviceUnavailableError):
            isoclip.project_gallery(gallery, out, core_projector, precision="bf16", progress=False)
        return
    summary = isoclip.project_gallery(gallery, out, core_projector, precision="bf16", progress=False)
    assert summary["arithmetic"] == "bf16" and summary["shards_processed"] == 4
    assert summary["backend"].startswith("cpu")  # device="auto" means the CPU for bf16
    bf16 = {name: np.load(out / name).astype(np.float32) for name in SHARDS}
    assert npy_files(out) != cli_output
    manifest = (out / "isoclip-manifest.json").read_text()
    assert manifest.count('"arithmetic": "bf16"') == 4 and '"arithmetic": "f32"' not in manifest
    again = isoclip.project_gallery(gallery, out, core_projector, progress=False)
    assert again["arithmetic"] == "f32" and again["shards_processed"] == 4
    assert npy_files(out) == cli_output
    for name in SHARDS:  # f16 outputs: bf16 within 2e-2 of f32
        assert np.abs(bf16[name] - np.load(out / name).astype(np.float32)).max() < 2e-2


def test_gallery_errors(gallery, core_projector, tmp_path):
    with pytest.raises(isoclip.StorageError) as e:
        isoclip.project_gallery(tmp_path / "missing", tmp_path / "out", core_projector, progress=False)
    assert str(tmp_path / "missing") in str(e.value)
    with pytest.raises(isoclip.InvalidArgumentError, match="unknown device"):
        isoclip.project_gallery(gallery, tmp_path / "o2", core_projector, device="tpu", progress=False)
    with pytest.raises(isoclip.InvalidArgumentError):
        isoclip.project_gallery(gallery, tmp_path / "o3", core_projector, num_shards=2, shard_index=2, progress=False)
    with pytest.raises(TypeError, match="projector must be"):
        isoclip.project_gallery(gallery, tmp_path / "o4", 42, progress=False)
