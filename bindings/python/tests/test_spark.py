"""isoclip.spark on a local Spark: the gallery job with a retried task, and project_column.

One SparkSession for the whole module (``local[2,2]``: two cores, and a task may fail once and be
retried; plain ``local[2]`` never retries). Outputs are compared byte for byte with the CLI's
(gallery) and with ``Projector.project`` on the stacked matrix (column).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any, Dict, Iterator

import numpy as np
import pytest

# The engines' test dependencies (requirements-engines.txt) are required, not optional: a
# missing one fails here rather than skipping the module.
import pyarrow as pa  # noqa: E402
import pyarrow.parquet as pq  # noqa: E402
import pyspark  # noqa: E402,F401

import isoclip  # noqa: E402
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

#: Rows per Arrow batch in mapInArrow, small so that a column test spans several batches.
ARROW_BATCH_ROWS = 16


@pytest.fixture(scope="module")
def spark() -> Iterator[Any]:
    """A local SparkSession with task retries (local[2,2]), started once for the module."""
    from pyspark.sql import SparkSession

    if shutil.which("java") is None and not os.environ.get("JAVA_HOME"):
        pytest.fail("Spark needs Java 17 or 21: apt-get install -y openjdk-17-jre-headless")
    os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
    os.environ.setdefault("PYSPARK_DRIVER_PYTHON", sys.executable)
    session = (
        SparkSession.builder.master("local[2,2]")
        .appName("isoclip-tests")
        .config("spark.ui.enabled", "false")
        .config("spark.ui.showConsoleProgress", "false")
        .config("spark.sql.shuffle.partitions", "2")
        .config("spark.sql.execution.arrow.maxRecordsPerBatch", str(ARROW_BATCH_ROWS))
        .config("spark.driver.bindAddress", "127.0.0.1")
        .config("spark.driver.host", "127.0.0.1")
        .getOrCreate()
    )
    session.sparkContext.setLogLevel("ERROR")
    yield session
    session.stop()


class _FailFirstAttemptOfTask1(isoclip.spark._ShardGroupTask):
    """The real task, except that task 1's first attempt raises before doing anything.

    Shipped to the executors by value (see ``_ship_by_value``), so the executors run this class
    although only the driver's module attribute was replaced.
    """

    marker: str = ""

    def __call__(self, shard_index: int) -> Dict[str, Any]:
        from pyspark import TaskContext

        if shard_index == 1 and TaskContext.get().attemptNumber() == 0:
            Path(self.marker).write_text("failed once")
            raise RuntimeError("injected failure of task 1, attempt 0")
        return super().__call__(shard_index)


def _ship_by_value() -> None:
    """Makes Spark's pickler send this module's classes by value (executors cannot import it)."""
    from pyspark import cloudpickle

    cloudpickle.register_pickle_by_value(sys.modules[__name__])


def test_gallery_with_a_failed_task_is_retried_and_equals_the_cli(
    spark, gallery, projector_path, cli_outputs, tmp_path, monkeypatch
):
    marker = tmp_path / "task-1-failed"
    _ship_by_value()
    monkeypatch.setattr(_FailFirstAttemptOfTask1, "marker", str(marker))
    monkeypatch.setattr(isoclip.spark, "_ShardGroupTask", _FailFirstAttemptOfTask1)
    output = tmp_path / "spark-output"

    summary = isoclip.spark.project_gallery(
        spark, str(gallery), str(output), projector_path, num_shards=2, **GALLERY_OPTIONS
    )

    assert marker.read_text() == "failed once", "the injected failure did not happen"
    assert output_shards(output) == cli_outputs
    assert summary["num_shards"] == 2
    assert summary["rows_processed"] == sum(SHARD_ROWS)
    assert [w["shard_index"] for w in summary["workers"]] == [0, 1]
    assert [w["shards_processed"] for w in summary["workers"]] == [
        len(group) for group in shard_groups(2)
    ]


def test_gallery_rerun_skips_every_finished_shard(
    spark, gallery, projector_path, cli_outputs, tmp_path
):
    output = tmp_path / "spark-output"
    first = isoclip.spark.project_gallery(
        spark, str(gallery), str(output), projector_path, num_shards=3, **GALLERY_OPTIONS
    )
    rerun = isoclip.spark.project_gallery(
        spark, str(gallery), str(output), projector_path, num_shards=3, **GALLERY_OPTIONS
    )

    assert first["shards_processed"] == len(SHARD_ROWS)
    assert rerun["shards_processed"] == 0
    assert rerun["shards_skipped"] == len(SHARD_ROWS)
    assert output_shards(output) == cli_outputs


#: The README's Spark example, verbatim (test_readme_examples_are_verbatim checks the README).
README_SPARK_EXAMPLE = """\
from pyspark.sql import SparkSession
import isoclip.spark

spark = SparkSession.builder.master("local[2,2]").getOrCreate()
summary = isoclip.spark.project_gallery(spark, "img_emb/", "iso_emb/", "b16.safetensors")
print(summary["rows_processed"], "rows projected by", summary["num_shards"], "tasks")
"""

#: The README's project_column example, verbatim. Spark resolves its own relative paths against
#: the JVM's working directory (the test changes Python's), hence os.path.abspath; isoclip's
#: functions make relative paths absolute themselves.
README_SPARK_COLUMN_EXAMPLE = """\
import os

df = spark.read.parquet(os.path.abspath("embeddings.parquet"))
iso = isoclip.spark.project_column(df, "embedding", "b16.safetensors", output_column="iso")
iso.write.parquet(os.path.abspath("iso_embeddings.parquet"))
"""


def _readme_folder(folder: Path, gallery: Path, projector_path: str) -> None:
    """The files the README examples name, in ``folder``: img_emb/, b16.safetensors."""
    shutil.copytree(gallery, folder / "img_emb")
    shutil.copyfile(projector_path, folder / "b16.safetensors")


def test_readme_spark_examples_run_and_equal_the_cli_and_numpy(
    spark, gallery, projector_path, cli_outputs, parquet_table, features, tmp_path, monkeypatch
):
    _readme_folder(tmp_path, gallery, projector_path)
    shutil.copyfile(parquet_table, tmp_path / "embeddings.parquet")
    monkeypatch.chdir(tmp_path)
    namespace: Dict[str, Any] = {}

    exec(README_SPARK_EXAMPLE, namespace)
    exec(README_SPARK_COLUMN_EXAMPLE, namespace)

    # defaults: num_shards = defaultParallelism (2), compact f16 as the CLI's defaults
    assert namespace["summary"]["num_shards"] == spark.sparkContext.defaultParallelism == 2
    assert output_shards(tmp_path / "iso_emb") == cli_outputs
    written = spark.read.parquet(str(tmp_path / "iso_embeddings.parquet"))
    expected = isoclip.Projector.load(projector_path).project(features, dtype="f32")
    assert _collect_matrix(written, "iso").tobytes() == expected.tobytes()


def test_readme_has_the_spark_examples_verbatim():
    readme = (REPO_ROOT / "README.md").read_text()
    assert README_SPARK_EXAMPLE in readme
    assert README_SPARK_COLUMN_EXAMPLE in readme


@pytest.mark.parametrize("num_shards", [0, -1, 1.5, True])
def test_gallery_refuses_a_bad_num_shards(spark, gallery, projector_path, tmp_path, num_shards):
    with pytest.raises(ValueError, match=r"num_shards must be a positive integer, got"):
        isoclip.spark.project_gallery(
            spark, str(gallery), str(tmp_path / "out"), projector_path, num_shards=num_shards
        )
    assert not (tmp_path / "out").exists()


def test_gallery_refuses_the_options_the_engine_sets(spark, gallery, projector_path, tmp_path):
    with pytest.raises(TypeError, match=r"^shard_index cannot be passed: the engine sets"):
        isoclip.spark.project_gallery(
            spark, str(gallery), str(tmp_path / "out"), projector_path, shard_index=0
        )
    assert not (tmp_path / "out").exists()


# ----------------------------------------------------------------------------------------------
# project_column
# ----------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def features() -> np.ndarray:
    """100 rows of float32 features: several Arrow batches of ARROW_BATCH_ROWS rows."""
    return embedding_matrix(100, seed=21)


@pytest.fixture(scope="module")
def parquet_table(features, tmp_path_factory) -> str:
    """A parquet file as autofaiss/embedding-reader lay it out: id, embedding list<float>."""
    path = tmp_path_factory.mktemp("parquet") / "embeddings.parquet"
    table = pa.table(
        {
            "id": pa.array(np.arange(len(features), dtype=np.int64)),
            "embedding": isoclip.spark.matrix_to_arrow_list(features),
        }
    )
    pq.write_table(table, path, row_group_size=30)
    return str(path)


def _collect_matrix(df, column: str) -> np.ndarray:
    """The rows of ``column`` in id order, as a float32 matrix."""
    rows = df.orderBy("id").select(column).collect()
    return np.array([row[column] for row in rows], dtype=np.float32)


def test_project_column_equals_the_numpy_route(spark, parquet_table, features, projector_path):
    df = spark.read.parquet(parquet_table)

    projected = isoclip.spark.project_column(
        df, "embedding", projector_path, output_column="iso", form="compact", dtype="f32"
    )

    assert projected.columns == ["id", "embedding", "iso"]
    expected = isoclip.Projector.load(projector_path).project(features, form="compact", dtype="f32")
    assert _collect_matrix(projected, "iso").tobytes() == expected.tobytes()
    assert _collect_matrix(projected, "embedding").tobytes() == features.tobytes()


def test_project_column_f16_full_with_a_broadcast_projector_in_place(
    spark, parquet_table, features, projector_path
):
    projector = isoclip.Projector.load(projector_path)
    df = spark.read.parquet(parquet_table)

    projected = isoclip.spark.project_column(df, "embedding", projector, form="full", dtype="f16")

    assert projected.columns == ["id", "embedding"]
    expected = projector.project(features, form="full", dtype="f16")
    got = _collect_matrix(projected, "embedding").astype(np.float16)
    assert got.tobytes() == expected.tobytes()


def test_project_column_of_no_rows_gives_no_rows(spark, parquet_table, projector_path):
    empty = spark.createDataFrame([], "id long, embedding array<float>")
    filtered = spark.read.parquet(parquet_table).filter("id < 0")
    for df in (empty, filtered):
        projected = isoclip.spark.project_column(df, "embedding", projector_path)
        assert projected.collect() == []


def test_arrow_column_projector_passes_an_empty_batch_through(projector_path):
    # Spark may hand mapInArrow an empty batch: no rows, so no dimension to project.
    source = isoclip.spark._ProjectorSource(url=projector_path)
    project = isoclip.spark._ArrowColumnProjector(source, "embedding", "iso", {"dtype": "f32"})
    empty = pa.RecordBatch.from_arrays(
        [pa.array([], pa.int64()), pa.array([], pa.list_(pa.float32()))], names=["id", "embedding"]
    )
    [out] = list(project(iter([empty])))
    assert out.num_rows == 0
    assert out.schema.names == ["id", "embedding", "iso"]
    assert out.schema.field("iso").type == pa.list_(pa.float32())


def test_project_column_refuses_array_double(spark, projector_path):
    df = spark.createDataFrame([(0, [1.0, 2.0])], "id long, embedding array<double>")
    with pytest.raises(TypeError, match=r"column 'embedding' is array<double>, expected "
                                        r"array<float>; cast it first"):
        isoclip.spark.project_column(df, "embedding", projector_path)


def test_project_column_refuses_a_missing_column(spark, projector_path):
    df = spark.createDataFrame([(0, [1.0])], "id long, embedding array<float>")
    with pytest.raises(KeyError, match=r"column 'emb' is not in the DataFrame"):
        isoclip.spark.project_column(df, "emb", projector_path)


def test_project_column_names_the_row_of_unequal_length(spark, projector_path, features):
    from pyspark.errors import PythonException

    rows = [(0, features[0].tolist()), (1, features[1, :-1].tolist())]
    df = spark.createDataFrame(rows, "id long, embedding array<float>").coalesce(1)
    projected = isoclip.spark.project_column(df, "embedding", projector_path)
    with pytest.raises(PythonException, match=r"column 'embedding': row 1 has 47 values, but row 0 "
                                        r"has 48"):
        projected.collect()


# ----------------------------------------------------------------------------------------------
# Arrow helpers and the summary merge (no Spark needed)
# ----------------------------------------------------------------------------------------------


def test_arrow_list_to_matrix_reads_a_sliced_list_array_without_per_row_work(features):
    array = isoclip.spark.matrix_to_arrow_list(features)[5:9]
    matrix = isoclip.spark.arrow_list_to_matrix(array, "embedding")
    assert matrix.dtype == np.float32
    assert matrix.tobytes() == features[5:9].tobytes()


def test_arrow_list_to_matrix_reads_fixed_size_and_chunked_arrays(features):
    flat = pa.array(features[:3].reshape(-1))
    fixed = pa.FixedSizeListArray.from_arrays(flat, features.shape[1])
    chunked = pa.chunked_array([isoclip.spark.matrix_to_arrow_list(features[:2]),
                                isoclip.spark.matrix_to_arrow_list(features[2:3])])
    assert isoclip.spark.arrow_list_to_matrix(fixed).tobytes() == features[:3].tobytes()
    assert isoclip.spark.arrow_list_to_matrix(chunked).tobytes() == features[:3].tobytes()


@pytest.mark.parametrize(
    "array, error, message",
    [
        (pa.array([[1.0, 2.0], None], pa.list_(pa.float32())), ValueError,
         r"^column 'e': row 1 is null$"),
        (pa.array([[1.0, 2.0], [3.0, None]], pa.list_(pa.float32())), ValueError,
         r"^column 'e': row 1 holds a null value$"),
        (pa.array([[1.0, 2.0], [3.0]], pa.list_(pa.float32())), ValueError,
         r"^column 'e': row 1 has 1 values, but row 0 has 2$"),
        (pa.array([[1.0, 2.0]], pa.list_(pa.float64())), TypeError,
         r"^column 'e' holds double values, expected float32 or float16"),
        (pa.array([1.0, 2.0], pa.float32()), TypeError,
         r"^column 'e' is float, expected a list of float32 or float16$"),
    ],
)
def test_arrow_list_to_matrix_refuses_bad_columns(array, error, message):
    with pytest.raises(error, match=message):
        isoclip.spark.arrow_list_to_matrix(array, "e")


def test_engine_modules_import_without_pyspark_ray_or_pyarrow():
    # A None entry in sys.modules makes `import pyspark` (etc.) raise ImportError.
    code = (
        "import sys\n"
        "for name in ('pyspark', 'ray', 'pyarrow', 'pandas'):\n"
        "    sys.modules[name] = None\n"
        "import isoclip.spark, isoclip.ray\n"
        "print('imported')\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert result.stdout == "imported\n"


def test_gallery_task_threads_default_to_the_cores_the_engine_reserved():
    assert isoclip.spark._task_options({"form": "full"}, default_threads=2) == {
        "form": "full",
        "threads": 2,
    }
    assert isoclip.spark._task_options({"threads": 8}, default_threads=2) == {"threads": 8}


def test_merge_summaries_sums_counts_and_keeps_common_fields():
    workers = [
        {"shard_index": 0, "shards_processed": 3, "rows_processed": 88, "zero_norm_rows": 1,
         "bytes_read": 3_000_000_000, "form": "compact", "d_out": 24, "seconds": 1.0,
         "rows_per_second": 88.0, "gb_per_second_read": 3.0, "output_dir": "/out/0"},
        {"shard_index": 1, "shards_processed": 2, "rows_processed": 87, "zero_norm_rows": 0,
         "bytes_read": 2_000_000_000, "form": "compact", "d_out": 24, "seconds": 3.0,
         "rows_per_second": 29.0, "gb_per_second_read": 0.5, "output_dir": "/out/1"},
    ]
    merged = isoclip.spark.merge_summaries(workers, seconds=5.0)
    assert merged == {
        "shards_processed": 5,
        "rows_processed": 175,
        "zero_norm_rows": 1,
        "bytes_read": 5_000_000_000,
        "form": "compact",
        "d_out": 24,
        "seconds": 5.0,
        "rows_per_second": 35.0,
        "gb_per_second_read": 1.0,
        "num_shards": 2,
        "workers": workers,
    }


def test_merge_summaries_of_one_worker_recomputes_its_rates_from_the_driver_time():
    worker = {"shard_index": 0, "rows_processed": 10, "bytes_read": 4_000_000_000,
              "seconds": 1.0, "rows_per_second": 10.0, "gb_per_second_read": 4.0}
    merged = isoclip.spark.merge_summaries([worker], seconds=2.0)
    assert (merged["seconds"], merged["rows_per_second"], merged["gb_per_second_read"]) == (
        2.0, 5.0, 2.0)
