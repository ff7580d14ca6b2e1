"""isoclip.ray on a local Ray: the gallery job with a killed worker, and ProjectBatch.

Ray is started once for the module (``ray.init(num_cpus=2, include_dashboard=False)``). Outputs
are compared byte for byte with the CLI's (gallery) and with ``Projector.project`` on the stacked
matrix (Ray Data).
"""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path
from typing import Any, Callable, Dict, Iterator

import numpy as np
import pytest

# The engines' test dependencies (requirements-engines.txt) are required, not optional: a
# missing one fails here rather than skipping the module.
import pyarrow as pa  # noqa: E402
import pyarrow.parquet as pq  # noqa: E402
import ray  # noqa: E402
import ray.data  # noqa: E402,F401

import isoclip  # noqa: E402
import isoclip.ray  # noqa: E402
import isoclip.spark  # noqa: E402
from conftest_engines import *  # noqa: E402,F401,F403  (the shared fixtures)
from conftest_engines import (  # noqa: E402
    GALLERY_OPTIONS,
    REPO_ROOT,
    SHARD_ROWS,
    embedding_matrix,
    output_shards,
    shard_groups,
)


@pytest.fixture(scope="module")
def ray_cluster() -> Iterator[None]:
    """A local Ray with two CPUs, started once for the module."""
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    ray.data.DataContext.get_current().enable_progress_bars = False
    yield
    ray.shutdown()


def _exit_after_first_attempt_of_task_1(marker: str, real: Callable[..., Any]) -> Callable:
    """The real task function, except that task 1's worker dies (os._exit) after its first run.

    The first attempt finishes its shards and then kills its worker process before returning,
    so Ray retries the task and the retry must skip what the dead attempt completed.
    """

    def run(*args: Any) -> Dict[str, Any]:
        shard_index = args[-1]
        summary = real(*args)
        if shard_index == 1 and not os.path.exists(marker):
            Path(marker).write_text("killed once")
            os._exit(1)
        return summary

    return run


def test_gallery_with_a_killed_task_is_retried_and_equals_the_cli(
    ray_cluster, gallery, projector_path, cli_outputs, tmp_path, monkeypatch
):
    marker = tmp_path / "task-1-killed"
    ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])
    real = isoclip.ray._run_shard_group
    monkeypatch.setattr(
        isoclip.ray, "_run_shard_group", _exit_after_first_attempt_of_task_1(str(marker), real)
    )
    output = tmp_path / "ray-output"

    summary = isoclip.ray.project_gallery(
        str(gallery), str(output), projector_path, num_shards=2, max_retries=1, **GALLERY_OPTIONS
    )

    assert marker.read_text() == "killed once", "the injected kill did not happen"
    assert output_shards(output) == cli_outputs
    assert summary["num_shards"] == 2
    retried = summary["workers"][1]
    assert retried["shard_index"] == 1
    assert retried["shards_processed"] == 0
    assert retried["shards_skipped"] == len(shard_groups(2)[1])
    assert summary["rows_processed"] + summary["rows_skipped"] == sum(SHARD_ROWS)


#: The README's Ray example, verbatim (test_readme_has_the_ray_examples_verbatim checks it).
README_RAY_EXAMPLE = """\
import isoclip.ray

summary = isoclip.ray.project_gallery("img_emb/", "iso_emb/", "b16.safetensors")
print(summary["rows_processed"], "rows projected by", summary["num_shards"], "tasks")
"""

#: The README's Ray Data example, verbatim.
README_RAY_DATA_EXAMPLE = """\
import os
import ray
import isoclip.ray

ds = ray.data.read_parquet(os.path.abspath("embeddings.parquet"))
ds = ds.map_batches(
    isoclip.ray.ProjectBatch,
    fn_constructor_kwargs={"projector": os.path.abspath("b16.safetensors"), "column": "embedding"},
    batch_format="pyarrow",
    concurrency=1,
)
ds.write_parquet(os.path.abspath("iso_embeddings"))
"""


def test_readme_ray_examples_run_and_equal_the_cli_and_numpy(
    ray_cluster, gallery, projector_path, cli_outputs, features, tmp_path, monkeypatch
):
    shutil.copytree(gallery, tmp_path / "img_emb")
    shutil.copyfile(projector_path, tmp_path / "b16.safetensors")
    table = pa.table({"id": np.arange(len(features)),
                      "embedding": isoclip.spark.matrix_to_arrow_list(features)})
    pq.write_table(table, tmp_path / "embeddings.parquet", row_group_size=20)
    monkeypatch.chdir(tmp_path)
    namespace: Dict[str, Any] = {}

    exec(README_RAY_EXAMPLE, namespace)
    exec(README_RAY_DATA_EXAMPLE, namespace)

    # defaults: num_shards = the cluster's 2 CPUs, compact f16 as the CLI's defaults
    assert namespace["summary"]["num_shards"] == 2
    assert output_shards(tmp_path / "iso_emb") == cli_outputs
    written = pq.read_table(tmp_path / "iso_embeddings").sort_by("id")
    expected = isoclip.Projector.load(projector_path).project(features)
    got = isoclip.spark.arrow_list_to_matrix(written.column("embedding"), "embedding")
    assert got.tobytes() == expected.tobytes()


def test_readme_has_the_ray_examples_verbatim():
    readme = (REPO_ROOT / "README.md").read_text()
    assert README_RAY_EXAMPLE in readme
    assert README_RAY_DATA_EXAMPLE in readme


def test_gallery_refuses_a_bad_num_shards(ray_cluster, gallery, projector_path, tmp_path):
    with pytest.raises(ValueError, match=r"num_shards must be a positive integer, got 0"):
        isoclip.ray.project_gallery(str(gallery), str(tmp_path / "out"), projector_path,
                                    num_shards=0)
    assert not (tmp_path / "out").exists()


@pytest.fixture(scope="module")
def features() -> np.ndarray:
    return embedding_matrix(70, seed=31)


def _in_id_order(batch: Dict[str, np.ndarray], column: str) -> np.ndarray:
    """``batch[column]`` as a matrix in id order (Ray Data may reorder blocks)."""
    order = np.argsort(batch["id"], kind="stable")
    return np.stack(batch[column])[order] if batch[column].dtype == object else \
        batch[column][order]


def test_map_batches_numpy_equals_the_numpy_route(ray_cluster, features, projector_path):
    ds = ray.data.from_items([{"id": i, "embedding": row} for i, row in enumerate(features)])

    projected = ds.map_batches(
        isoclip.ray.ProjectBatch,
        fn_constructor_kwargs={"projector": projector_path, "column": "embedding",
                               "output_column": "iso", "dtype": "f16"},
        batch_format="numpy",
        batch_size=16,
        concurrency=1,
    )
    batch = projected.take_batch(len(features), batch_format="numpy")

    expected = isoclip.Projector.load(projector_path).project(features, dtype="f16")
    got = _in_id_order(batch, "iso")
    assert got.dtype == np.float16
    assert got.tobytes() == expected.tobytes()
    assert _in_id_order(batch, "embedding").tobytes() == features.tobytes()


def test_map_batches_pyarrow_list_column_equals_the_numpy_route(ray_cluster, features,
                                                                 projector_path):
    table = pa.table({"id": np.arange(len(features)),
                      "embedding": isoclip.spark.matrix_to_arrow_list(features)})
    ds = ray.data.from_arrow(table)

    projected = ds.map_batches(
        isoclip.ray.ProjectBatch,
        fn_constructor_kwargs={"projector": projector_path, "form": "full", "dtype": "f32"},
        batch_format="pyarrow",
        batch_size=16,
        concurrency=1,
    )
    result = projected.to_arrow_refs()
    combined = pa.concat_tables(ray.get(result)).sort_by("id")

    expected = isoclip.Projector.load(projector_path).project(features, form="full", dtype="f32")
    got = isoclip.spark.arrow_list_to_matrix(combined.column("embedding"), "embedding")
    assert got.tobytes() == expected.tobytes()


def test_project_batch_refuses_a_ragged_numpy_column(projector_path):
    project = isoclip.ray.ProjectBatch(projector_path)
    ragged = np.empty(2, dtype=object)
    ragged[0], ragged[1] = np.zeros(48, np.float32), np.zeros(47, np.float32)
    with pytest.raises(TypeError, match=r"^column 'embedding' holds ragged or object rows"):
        project({"embedding": ragged})


def test_project_batch_refuses_float64(projector_path):
    project = isoclip.ray.ProjectBatch(projector_path)
    with pytest.raises(TypeError, match=r"^column 'embedding' is float64, expected float16 or "
                                        r"float32$"):
        project({"embedding": np.zeros((2, 48))})


def test_project_batch_names_a_missing_column(projector_path):
    project = isoclip.ray.ProjectBatch(projector_path, column="emb")
    with pytest.raises(KeyError, match=r"column 'emb' is not in the batch"):
        project({"embedding": np.zeros((2, 48), np.float32)})
