"""Projector.project: byte parity with `isoclip project`, layouts, out=, argument errors."""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import pytest

import isoclip
from conftest import EMBEDDINGS, FEATURES, cli, cpu_has_bf16, rows


def cli_project(projector_path: str, x: np.ndarray, tmp: Path, form: str, dtype: str, kind: str) -> np.ndarray:
    """The CLI's projection of `x` (one shard), loaded back."""
    tmp.mkdir(parents=True, exist_ok=True)
    np.save(tmp / "x.npy", x)
    out = tmp / "out"
    cli("project", "--projector", projector_path, "--input", tmp / "x.npy", "--output", out,
        "--form", form, "--dtype", dtype, "--input-kind", kind, "--quiet")
    return np.load(out / "x.npy")


@pytest.mark.parametrize("kind", ["features", "embeddings"])
@pytest.mark.parametrize("form", ["compact", "full"])
@pytest.mark.parametrize("dtype", ["f16", "f32"])
def test_project_is_byte_identical_to_the_cli(core_projector, core_projector_path, tmp_path, kind, form, dtype):
    x = rows(257, FEATURES if kind == "features" else EMBEDDINGS, seed=1)
    want = cli_project(core_projector_path, x, tmp_path, form, dtype, kind)
    got = core_projector.project(x, form=form, dtype=dtype, kind=kind)
    assert got.dtype == want.dtype and got.shape == want.shape
    assert got.tobytes() == want.tobytes()


def test_float16_input_matches_the_cli(core_projector, core_projector_path, tmp_path):
    x = rows(100, FEATURES, seed=2, dtype=np.float16)
    want = cli_project(core_projector_path, x, tmp_path, "compact", "f16", "features")
    got = core_projector.project(x)
    assert got.dtype == np.float16  # the input's dtype by default
    assert got.tobytes() == want.tobytes()


def test_dtype_accepts_numpy_dtypes(core_projector):
    x = rows(10, FEATURES, seed=3)
    assert core_projector.project(x, dtype=np.float16).tobytes() == core_projector.project(x, dtype="f16").tobytes()
    assert core_projector.project(x, dtype=np.dtype("float32")).dtype == np.float32
    with pytest.raises(TypeError, match="float64"):
        core_projector.project(x, dtype=np.float64)


def test_strided_views_equal_the_contiguous_result(core_projector):
    big = rows(400, FEATURES + 32, seed=4)
    for view in (big[::3, :FEATURES], big[:, 16 : 16 + FEATURES], np.asfortranarray(big[:50, :FEATURES]),
                 big[::-2, :FEATURES], big[:, :FEATURES][:, ::-1]):
        want = core_projector.project(np.ascontiguousarray(view))
        assert core_projector.project(view).tobytes() == want.tobytes()


def test_out_is_written_and_returned(core_projector):
    x = rows(64, FEATURES, seed=5)
    want = core_projector.project(x, dtype="f32")
    out = np.full((64, core_projector.output_dim()), 7.0, dtype=np.float32)
    got = core_projector.project(x, out=out)
    assert got is out
    assert out.tobytes() == want.tobytes()


def test_out_is_checked(core_projector):
    x = rows(8, FEATURES, seed=6)
    m = core_projector.output_dim()
    with pytest.raises(TypeError, match="out has dtype f16 but dtype=f32"):
        core_projector.project(x, dtype="f32", out=np.zeros((8, m), np.float16))
    with pytest.raises(TypeError, match="out has dtype float64"):
        core_projector.project(x, out=np.zeros((8, m), np.float64))
    with pytest.raises(ValueError, match=rf"out has shape \(8, {m + 1}\) but the result is \(8, {m}\)"):
        core_projector.project(x, out=np.zeros((8, m + 1), np.float32))
    with pytest.raises(ValueError, match="out must be C-contiguous"):
        core_projector.project(x, out=np.zeros((8, 2 * m), np.float32)[:, ::2])
    readonly = np.zeros((8, m), np.float32)
    readonly.flags.writeable = False
    with pytest.raises(ValueError, match="out cannot be written"):
        core_projector.project(x, out=readonly)


def test_bad_inputs_raise_clear_errors(core_projector):
    with pytest.raises(TypeError, match="x has dtype float64; project accepts float16 or float32"):
        core_projector.project(rows(4, FEATURES, 7, np.float64))
    with pytest.raises(TypeError, match="x has dtype int64"):
        core_projector.project(np.zeros((4, FEATURES), np.int64))
    with pytest.raises(TypeError, match="x must be a numpy.ndarray"):
        core_projector.project([[0.0] * FEATURES])
    with pytest.raises(ValueError, match=r"x must be 2-D \(rows x columns\), got an array of shape \(768,\)"):
        core_projector.project(np.zeros(FEATURES, np.float32))
    with pytest.raises(ValueError, match='unknown form "wide"'):
        core_projector.project(rows(4, FEATURES, 7), form="wide")
    with pytest.raises(isoclip.ShapeError) as e:
        core_projector.project(rows(4, 100, 7))
    assert str(e.value) == "input rows have 100 columns but the projector expects 768"
    assert isinstance(e.value, ValueError)
    assert (e.value.status, e.value.status_code) == ("ISOCLIP_ERR_SHAPE", 7)


def test_nonfinite_rows(core_projector):
    x = rows(6, FEATURES, seed=8)
    x[3, 5] = np.nan
    with pytest.raises(isoclip.NonFiniteRowError) as e:
        core_projector.project(x)
    assert str(e.value).startswith("row 3 contains NaN or Inf")
    assert 'nonfinite="zero"' in str(e.value)
    assert e.value.status == "ISOCLIP_ERR_NON_FINITE_ROW"
    y = core_projector.project(x, nonfinite="zero")
    assert not y[3].any() and y[2].any()


def test_bf16_precision_is_close_to_f32_and_matches_the_cli(core_projector, core_projector_path, tmp_path):
    x = rows(200, FEATURES, seed=40)
    f32 = core_projector.project(x, dtype="f32")
    assert core_projector.project(x, dtype="f32", precision="f32").tobytes() == f32.tobytes()
    if not cpu_has_bf16():
        with pytest.raises(isoclip.DeviceUnavailableError, match='precision="f32"'):
            core_projector.project(x, precision="bf16")
        return
    bf16 = core_projector.project(x, dtype="f32", precision="bf16")
    assert bf16.dtype == np.float32 and bf16.shape == f32.shape
    assert 0 < np.abs(bf16 - f32).max() < 2e-2
    assert bf16.tobytes() != f32.tobytes()
    np.save(tmp_path / "x.npy", x)
    cli("project", "--projector", core_projector_path, "--input", tmp_path / "x.npy", "--output",
        tmp_path / "out", "--dtype", "f32", "--precision", "bf16", "--quiet")
    assert np.load(tmp_path / "out" / "x.npy").tobytes() == bf16.tobytes()


def test_an_unknown_precision_is_a_value_error(core_projector):
    with pytest.raises(ValueError, match=r'unknown precision "fp16" \(expected "f32" or "bf16"\)'):
        core_projector.project(rows(2, FEATURES, seed=41), precision="fp16")


def test_zero_rows(core_projector):
    y = core_projector.project(np.zeros((0, FEATURES), np.float32))
    assert y.shape == (0, core_projector.output_dim())


def test_properties_and_pickle(core_projector, core_projector_path, tmp_path):
    p = core_projector
    assert p.modalities == ["image"]
    assert p.dims == {"image": {"d_in": FEATURES, "d": EMBEDDINGS, "compact": p.output_dim()}}
    assert p.output_dim("full") == EMBEDDINGS
    k_top, k_bottom = p.band
    assert p.output_dim() == p.r - k_top - k_bottom
    assert p.spectrum.dtype == np.float64 and p.spectrum.shape == (p.r,)
    assert np.all(np.diff(p.spectrum) <= 0)
    again = pickle.loads(pickle.dumps(p))
    assert again.fingerprint == p.fingerprint
    p.save(tmp_path / "copy.safetensors")
    assert isoclip.Projector.load(tmp_path / "copy.safetensors").fingerprint == p.fingerprint
    x = rows(5, FEATURES, seed=9)
    assert again.project(x).tobytes() == p.project(x).tobytes()


def test_fit_from_arrays_equals_the_cli_fit(core_dir, tmp_path):
    rng = np.random.default_rng(10)
    image, text = rng.standard_normal((48, 32)), rng.standard_normal((40, 32))
    np.save(tmp_path / "i.npy", image)
    np.save(tmp_path / "t.npy", text)
    cli("fit", "--image-proj", tmp_path / "i.npy", "--text-proj", tmp_path / "t.npy",
        "--k-top", 4, "--k-bottom", 10, "-o", tmp_path / "p.safetensors")
    from_cli = isoclip.Projector.load(tmp_path / "p.safetensors")
    from_py = isoclip.fit(image, text, k_top=4, k_bottom=10)
    assert from_py.band == (4, 10) == from_cli.band
    np.testing.assert_array_equal(from_py.spectrum, from_cli.spectrum)
    x = rows(20, 48, seed=11)
    for form in ("compact", "full"):
        assert from_py.project(x, form=form).tobytes() == from_cli.project(x, form=form).tobytes()
    with pytest.raises(isoclip.InvalidArgumentError, match="no band for image"):
        isoclip.fit(image, text)
    with pytest.raises(isoclip.ShapeError, match="different spaces"):
        isoclip.fit(image, rng.standard_normal((40, 31)), k_top=1, k_bottom=10)
    with pytest.raises(isoclip.BandError, match="rank 32"):
        isoclip.fit(image, text, k_top=4, k_bottom=3)


def test_load_errors_name_the_file(tmp_path):
    missing = tmp_path / "nope.safetensors"
    with pytest.raises(isoclip.StorageError) as e:
        isoclip.Projector.load(missing)
    assert str(missing) in str(e.value) and e.value.status == "ISOCLIP_ERR_IO"
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"not a projector")
    with pytest.raises(isoclip.FormatError) as e:
        isoclip.Projector.load(bad)
    assert str(e.value).startswith(f"{bad}: ")
    assert e.value.status_code == 5


def test_evaluate_equals_the_cli(core_projector, core_projector_path, tmp_path):
    rng = np.random.default_rng(12)
    centers = rng.standard_normal((6, FEATURES))
    labels = np.repeat(np.arange(6), 20)
    x = (centers[labels] + 2.0 * rng.standard_normal((120, FEATURES))).astype(np.float32)
    np.save(tmp_path / "f.npy", x)
    np.save(tmp_path / "l.npy", labels)
    import json

    want = json.loads(cli("eval", "--projector", core_projector_path, "--features", tmp_path / "f.npy",
                          "--labels", tmp_path / "l.npy", "--json"))
    got = isoclip.evaluate(core_projector, x, labels)
    assert got["delta"] == want["delta"]
    assert got["clip_details"] == want["clip"]
    assert got["isoclip_details"] == want["isoclip"]
    assert got["clip"]["mAP"] == want["clip"]["map"]
