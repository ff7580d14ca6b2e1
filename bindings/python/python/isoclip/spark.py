"""PySpark integration: project a gallery of shards, or a DataFrame column, on a Spark cluster.

Two entry points, both thin layers over the core package (no scheduling of our own: Spark
schedules, retries and reports):

- :func:`project_gallery` runs the resumable gallery job (:func:`isoclip.project_gallery`) as one
  Spark task per shard group, the pattern clip-retrieval uses: task ``i`` of ``n`` takes the
  shards ``k`` with ``k % n == i`` of the sorted listing. A failed task is retried by Spark
  (``spark.task.maxFailures``; in local mode the master ``local[N,F]`` sets it); the per-shard
  completion records make the retry skip the shards its earlier attempt finished, so retries and
  reruns end with the same bytes as one clean run.
- :func:`project_column` projects an ``array<float>`` column (the parquet layout autofaiss and
  embedding-reader read) with ``DataFrame.mapInArrow``: each Arrow record batch's list column is
  viewed as one ``(rows, dim)`` matrix without per-row Python work and projected in one call.

The helpers :func:`arrow_list_to_matrix`, :func:`matrix_to_arrow_list`, :func:`merge_summaries`,
:func:`load_projector_cached` and :func:`location_for_workers` are shared with :mod:`isoclip.ray`.

pyspark and pyarrow are imported lazily: ``import isoclip.spark`` works without them.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
import threading
import time
from typing import TYPE_CHECKING, Any, Dict, Iterator, List, Mapping, Optional, Sequence, Union

import numpy as np

if TYPE_CHECKING:  # pragma: no cover - typing only
    import pyarrow as pa
    from pyspark.sql import DataFrame, SparkSession

    import isoclip

__all__ = [
    "project_gallery",
    "project_column",
    "arrow_list_to_matrix",
    "matrix_to_arrow_list",
    "merge_summaries",
    "load_projector_cached",
    "location_for_workers",
]

#: Options of :func:`isoclip.project_gallery` that the engine sets itself, per task.
_ENGINE_OWNED_OPTIONS = ("num_shards", "shard_index", "progress")

#: Summary fields that add up across workers (counts of shards, rows and bytes).
_SUMMED_PREFIXES = ("shards_", "rows_", "bytes_")
_SUMMED_SUFFIXES = ("_rows",)
#: Rates recomputed from the merged counts and the driver's wall time: rate -> (count, unit).
_RATES = {"rows_per_second": ("rows_processed", 1.0), "gb_per_second_read": ("bytes_read", 1e9)}

ProjectorSource = Union[str, "os.PathLike[str]", "isoclip.Projector"]


# ----------------------------------------------------------------------------------------------
# Gallery job: one Spark task per shard group
# ----------------------------------------------------------------------------------------------


def project_gallery(
    spark: "SparkSession",
    input_url: str,
    output_url: str,
    projector_url: str,
    num_shards: Optional[int] = None,
    **options: Any,
) -> Dict[str, Any]:
    """Project a gallery of ``.npy`` shards on Spark, one task per shard group; resumable.

    Runs ``spark.sparkContext.parallelize(range(n), n)``; task ``i`` calls
    ``isoclip.project_gallery(input_url, output_url, projector_url, num_shards=n, shard_index=i,
    progress=False, **options)`` on an executor. Every executor must be able to read
    ``input_url`` and ``projector_url`` and write ``output_url`` (a shared file system or an
    object store); relative paths are made absolute on the driver first. Spark retries a
    failed task; finished shards are skipped by their completion records, so a retried or
    rerun job ends byte-identical to a clean one.

    Args:
        spark: the active session.
        input_url: a directory, prefix or shard list (path or URL) as
            :func:`isoclip.project_gallery` takes it.
        output_url: the output directory or prefix, shared by all tasks.
        projector_url: the projector file (path or URL) readable from every executor.
        num_shards: number of tasks (shard groups); default
            ``spark.sparkContext.defaultParallelism``. More tasks than shards is allowed (the
            extra tasks have nothing to do).
        **options: passed to :func:`isoclip.project_gallery` (``form``, ``dtype``, ``kind``,
            ``modality``, ``storage_options``, ``overwrite``, ``device``, ``threads``...).
            ``threads`` defaults to ``spark.task.cpus`` so that tasks sharing an executor do not
            oversubscribe its cores.

    Returns:
        The merged summary (see :func:`merge_summaries`): counts of shards, rows and bytes
        summed over the tasks, ``num_shards``, the driver's wall time in ``seconds``, and
        ``workers``, the list of per-task summaries in task order.

    Raises:
        ValueError: ``num_shards`` is not a positive integer.
        TypeError: ``options`` names an option the engine sets per task.
        pyspark.errors.PythonException (or Py4JJavaError): a task failed more times than
            ``spark.task.maxFailures``; its message holds the task's :class:`isoclip.Error`.
    """
    sc = spark.sparkContext
    count = _resolve_num_shards(num_shards, sc.defaultParallelism)
    task_options = _task_options(options, default_threads=_spark_task_cpus(spark))
    locations = [location_for_workers(u) for u in (input_url, output_url, projector_url)]
    task = _ShardGroupTask(*locations, count, task_options)
    started = time.monotonic()
    summaries = sc.parallelize(range(count), count).map(task).collect()
    return merge_summaries(summaries, seconds=time.monotonic() - started)


class _ShardGroupTask:
    """What one Spark task runs: the gallery job restricted to shard group ``shard_index``.

    A picklable callable (by reference to this module, so executors import the installed
    ``isoclip``) holding the job's arguments.
    """

    def __init__(
        self,
        input_url: str,
        output_url: str,
        projector_url: str,
        num_shards: int,
        options: Mapping[str, Any],
    ) -> None:
        self.input_url = input_url
        self.output_url = output_url
        self.projector_url = projector_url
        self.num_shards = num_shards
        self.options = dict(options)

    def __call__(self, shard_index: int) -> Dict[str, Any]:
        import isoclip

        summary = isoclip.project_gallery(
            self.input_url,
            self.output_url,
            self.projector_url,
            num_shards=self.num_shards,
            shard_index=shard_index,
            progress=False,
            **self.options,
        )
        return {"shard_index": shard_index, **dict(summary)}


def location_for_workers(location: Union[str, "os.PathLike[str]"]) -> str:
    """``location`` as workers should see it: a URL unchanged, a path made absolute.

    Workers do not share the driver's working directory (Spark's Python workers run in the
    JVM's, Ray's in their own), so a relative path is resolved here, on the driver.
    """
    text = os.fspath(location)
    if "://" in text:
        return text
    return os.path.abspath(text)


def _resolve_num_shards(num_shards: Optional[int], default: int) -> int:
    """``num_shards`` if given, else ``default``; a positive int or a ValueError."""
    count = default if num_shards is None else num_shards
    if isinstance(count, bool) or not isinstance(count, (int, np.integer)) or count < 1:
        raise ValueError(f"num_shards must be a positive integer, got {count!r}")
    return int(count)


def _task_options(options: Mapping[str, Any], default_threads: Optional[int]) -> Dict[str, Any]:
    """The per-task options of the gallery job: the caller's, with ``threads`` defaulted."""
    owned = sorted(set(options) & set(_ENGINE_OWNED_OPTIONS))
    if owned:
        raise TypeError(
            f"{', '.join(owned)} cannot be passed: the engine sets num_shards, shard_index and "
            "progress for each task (pass num_shards as its own argument)"
        )
    merged = dict(options)
    if default_threads is not None and merged.get("threads") is None:
        merged["threads"] = default_threads
    return merged


def _spark_task_cpus(spark: "SparkSession") -> int:
    """``spark.task.cpus`` (cores Spark reserves per task), 1 when unset."""
    value = spark.sparkContext.getConf().get("spark.task.cpus", "1")
    try:
        return max(1, int(value))
    except ValueError:
        return 1


def merge_summaries(
    summaries: Sequence[Mapping[str, Any]], seconds: Optional[float] = None
) -> Dict[str, Any]:
    """One summary for a job run as several workers.

    Fields counting shards, rows or bytes (``shards_*``, ``rows_*``, ``bytes_*``, ``*_rows``) are
    summed; per-worker rates (``*_per_second``) and times are left out; any other field is kept
    when every worker reports the same value (the options, the dimensions, the projector) and
    left out otherwise. ``seconds``, when given, is the driver's wall time, and the rates
    ``rows_per_second`` and ``gb_per_second_read`` are recomputed from it. ``num_shards`` is the
    number of workers; ``workers`` lists the per-worker summaries as given.
    """
    workers = [dict(s) for s in summaries]
    merged: Dict[str, Any] = {}
    keys: List[str] = []
    for summary in workers:
        keys.extend(k for k in summary if k not in keys and k != "shard_index")
    for key in keys:
        values = [s[key] for s in workers if key in s]
        if _is_summed(key) and all(_is_number(v) for v in values):
            merged[key] = sum(values)
        elif key == "seconds" or key.endswith("_per_second"):
            continue
        elif len(values) == len(workers) and all(v == values[0] for v in values):
            merged[key] = values[0]
    merged["num_shards"] = len(workers)
    if seconds is not None:
        merged["seconds"] = seconds
        for rate, (count, unit) in _RATES.items():
            if count in merged:
                merged[rate] = merged[count] / unit / seconds if seconds > 0 else 0.0
    merged["workers"] = workers
    return merged


def _is_summed(key: str) -> bool:
    return key.startswith(_SUMMED_PREFIXES) or key.endswith(_SUMMED_SUFFIXES)


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(value, bool)


# ----------------------------------------------------------------------------------------------
# DataFrame column: mapInArrow over record batches
# ----------------------------------------------------------------------------------------------


def project_column(
    df: "DataFrame",
    column: str,
    projector: ProjectorSource,
    *,
    output_column: Optional[str] = None,
    form: str = "compact",
    dtype: Optional[str] = "f32",
    normalize: bool = True,
    kind: str = "features",
    modality: Optional[str] = None,
    storage_options: Optional[Mapping[str, str]] = None,
) -> "DataFrame":
    """Project the ``array<float>`` column ``column`` of ``df`` (lazily, with ``mapInArrow``).

    Each Arrow record batch's list column is taken as one ``(rows, dim)`` float32 matrix (its
    flat values buffer, no per-row Python work), projected with ``projector.project`` and
    written back as an ``array<float>`` column. The projector is loaded once per Python worker.

    Args:
        df: the DataFrame; ``column`` must be ``array<float>`` (cast an ``array<double>`` column
            first: ``df.withColumn(c, df[c].cast("array<float>"))``).
        column: the embeddings column; every row must hold the same number of values, no nulls.
        projector: a path (made absolute on the driver) or URL readable from every executor
            (each Python worker loads it), or
            an :class:`isoclip.Projector`, whose saved bytes are broadcast to the executors.
        output_column: where to write the projection; default ``column`` (replaced in place).
            Another name appends a column.
        form, normalize, kind, modality: as :meth:`isoclip.Projector.project` takes them.
        dtype: ``"f32"`` (default) or ``"f16"``. Spark has no half-precision type, so f16
            values (rounded exactly as :meth:`isoclip.Projector.project` rounds them) are stored
            in an ``array<float>`` column; ``.astype(np.float16)`` gives the f16 bytes back.
        storage_options: object-store options for loading a projector URL.

    Returns:
        A DataFrame with the same columns (and ``output_column`` appended when new).

    Raises:
        KeyError: ``column`` is not a column of ``df``.
        TypeError: ``column`` is not ``array<float>``.
        ValueError: ``output_column`` names another existing column, or ``dtype`` is not
            f16/f32.
        isoclip.Error: the projector cannot be loaded (checked on the driver first).
        On the executors (raised by the action): a null row or element, rows of different
        lengths, or a dimension the projector does not take: a ValueError naming the column and
        the row within its batch.
    """
    from pyspark.sql.types import ArrayType, FloatType, StructField, StructType

    field = _array_float_field(df, column)
    target = column if output_column is None else output_column
    if target != column and target in df.columns:
        raise ValueError(f"output_column {target!r} is already a column of the DataFrame")
    if dtype not in ("f32", "f16"):
        raise ValueError(f"dtype must be 'f32' or 'f16' for a Spark column, got {dtype!r}")
    source = _projector_source_for_executors(df, projector, storage_options)
    output_field = StructField(target, ArrayType(FloatType(), containsNull=False), field.nullable)
    fields = [output_field if f.name == target else f for f in df.schema.fields]
    if target != column:
        fields.append(output_field)
    project = _ArrowColumnProjector(
        source=source,
        column=column,
        output_column=target,
        options={
            "form": form,
            "dtype": dtype,
            "normalize": normalize,
            "kind": kind,
            "modality": modality,
        },
    )
    return df.mapInArrow(project, StructType(fields))


def _array_float_field(df: "DataFrame", column: str) -> Any:
    """The schema field of ``column``, checked to be ``array<float>``."""
    from pyspark.sql.types import ArrayType, FloatType

    if column not in df.columns:
        raise KeyError(f"column {column!r} is not in the DataFrame (columns: {df.columns})")
    field = df.schema[column]
    kind = field.dataType
    if not (isinstance(kind, ArrayType) and isinstance(kind.elementType, FloatType)):
        raise TypeError(
            f"column {column!r} is {kind.simpleString()}, expected array<float>; cast it first: "
            f'df.withColumn("{column}", df["{column}"].cast("array<float>"))'
        )
    return field


class _ProjectorSource:
    """How executors get the projector: a path/URL to load, or broadcast bytes of its file."""

    def __init__(
        self,
        url: Optional[str] = None,
        broadcast: Any = None,
        digest: Optional[str] = None,
        storage_options: Optional[Mapping[str, str]] = None,
    ) -> None:
        self.url = url
        self.broadcast = broadcast
        self.digest = digest
        self.storage_options = dict(storage_options) if storage_options else None

    def load(self) -> "isoclip.Projector":
        if self.url is not None:
            return load_projector_cached(self.url, self.storage_options)
        return _projector_from_bytes_cached(self.digest, lambda: self.broadcast.value)


def _projector_source_for_executors(
    df: "DataFrame",
    projector: ProjectorSource,
    storage_options: Optional[Mapping[str, str]],
) -> _ProjectorSource:
    """A picklable source; a path/URL is loaded once on the driver so a bad one fails here."""
    if isinstance(projector, (str, os.PathLike)):
        url = location_for_workers(projector)
        load_projector_cached(url, storage_options)
        return _ProjectorSource(url=url, storage_options=storage_options)
    data = _projector_bytes(projector)
    digest = hashlib.sha256(data).hexdigest()
    broadcast = df.sparkSession.sparkContext.broadcast(data)
    return _ProjectorSource(broadcast=broadcast, digest=digest)


def _projector_bytes(projector: "isoclip.Projector") -> bytes:
    """The bytes of ``projector``'s file, through :meth:`isoclip.Projector.save`."""
    if not hasattr(projector, "save"):
        raise TypeError(
            "projector must be a path, a URL or an isoclip.Projector, "
            f"got {type(projector).__name__}"
        )
    with tempfile.TemporaryDirectory(prefix="isoclip-projector-") as folder:
        path = os.path.join(folder, "projector.safetensors")
        projector.save(path)
        with open(path, "rb") as file:
            return file.read()


class _ArrowColumnProjector:
    """The ``mapInArrow`` function: projects one list column of every record batch."""

    def __init__(
        self,
        source: _ProjectorSource,
        column: str,
        output_column: str,
        options: Mapping[str, Any],
    ) -> None:
        self.source = source
        self.column = column
        self.output_column = output_column
        self.options = dict(options)

    def __call__(self, batches: Iterator["pa.RecordBatch"]) -> Iterator["pa.RecordBatch"]:
        import pyarrow as pa

        projector = self.source.load()
        for batch in batches:
            if batch.num_rows == 0:
                values = pa.array([], pa.list_(pa.float32()))
            else:
                matrix = arrow_list_to_matrix(batch.column(self.column), self.column)
                projected = projector.project(matrix, **self.options)
                values = matrix_to_arrow_list(np.asarray(projected, dtype=np.float32))
            names = list(batch.schema.names)
            arrays = list(batch.columns)
            if self.output_column in names:
                arrays[names.index(self.output_column)] = values
            else:
                names.append(self.output_column)
                arrays.append(values)
            yield pa.RecordBatch.from_arrays(arrays, names=names)


# ----------------------------------------------------------------------------------------------
# Arrow <-> numpy, without per-row Python work
# ----------------------------------------------------------------------------------------------


def arrow_list_to_matrix(array: "pa.Array", column: str = "column") -> np.ndarray:
    """A ``(rows, dim)`` numpy view of an Arrow list column of equal-length float rows.

    Accepts ``list``, ``large_list`` and ``fixed_size_list`` arrays (or chunked arrays, which are
    combined) of float16 or float32 values. The values buffer is reinterpreted, not copied, when
    the rows are contiguous; nothing is done per row in Python.

    Raises:
        TypeError: not a list array, or values that are not float16/float32.
        ValueError: a null row or element, or rows of different lengths (names ``column`` and
            the first offending row).
    """
    import pyarrow as pa

    if isinstance(array, pa.ChunkedArray):
        array = array.combine_chunks()
    kind = array.type
    if not (pa.types.is_list(kind) or pa.types.is_large_list(kind)
            or pa.types.is_fixed_size_list(kind)):
        raise TypeError(f"column {column!r} is {kind}, expected a list of float32 or float16")
    value_type = kind.value_type
    if not (pa.types.is_float32(value_type) or pa.types.is_float16(value_type)):
        raise TypeError(
            f"column {column!r} holds {value_type} values, expected float32 or float16 "
            "(cast the column first)"
        )
    rows = len(array)
    if array.null_count:
        first = int(np.flatnonzero(array.is_null().to_numpy(zero_copy_only=False))[0])
        raise ValueError(f"column {column!r}: row {first} is null")
    dim = _equal_row_length(array, column)
    flat = array.flatten()
    if flat.null_count:
        position = int(np.flatnonzero(flat.is_null().to_numpy(zero_copy_only=False))[0])
        row = position // dim if dim else 0
        raise ValueError(f"column {column!r}: row {row} holds a null value")
    values = flat.to_numpy(zero_copy_only=True)
    return values.reshape(rows, dim)


def _equal_row_length(array: "pa.Array", column: str) -> int:
    """The common row length of a list array without nulls, or a ValueError naming a row."""
    import pyarrow as pa

    if pa.types.is_fixed_size_list(array.type):
        return int(array.type.list_size)
    lengths = np.diff(array.offsets.to_numpy(zero_copy_only=False))
    if len(lengths) == 0:
        return 0
    dim = int(lengths[0])
    different = np.flatnonzero(lengths != dim)
    if len(different):
        row = int(different[0])
        raise ValueError(
            f"column {column!r}: row {row} has {int(lengths[row])} values, but row 0 has {dim}"
        )
    return dim


def matrix_to_arrow_list(matrix: np.ndarray) -> "pa.ListArray":
    """A list Arrow array (one row per matrix row, the matrix's float dtype) over a 2-D array."""
    import pyarrow as pa

    matrix = np.ascontiguousarray(matrix)
    rows, dim = matrix.shape
    if rows * dim > np.iinfo(np.int32).max:
        raise ValueError(f"{rows} x {dim} values do not fit one Arrow list array (int32 offsets)")
    offsets = (np.arange(rows + 1, dtype=np.int64) * dim).astype(np.int32)
    return pa.ListArray.from_arrays(pa.array(offsets), pa.array(matrix.reshape(-1)))


# ----------------------------------------------------------------------------------------------
# Projector cache: loaded once per Python worker process
# ----------------------------------------------------------------------------------------------

_CACHE_LOCK = threading.Lock()
_PROJECTORS: Dict[Any, "isoclip.Projector"] = {}


def load_projector_cached(
    url: str, storage_options: Optional[Mapping[str, str]] = None
) -> "isoclip.Projector":
    """``isoclip.Projector.load(url, storage_options)``, once per process for the same arguments.

    Engines call this in every task; a Python worker reused for many tasks (Spark's default,
    Ray's actors and workers) loads each projector once. A projector file replaced under the
    same URL while the workers live is not seen.
    """
    import isoclip

    key = ("url", url, tuple(sorted((storage_options or {}).items())))
    with _CACHE_LOCK:
        cached = _PROJECTORS.get(key)
        if cached is None:
            cached = isoclip.Projector.load(url, storage_options=storage_options)
            _PROJECTORS[key] = cached
        return cached


def _projector_from_bytes_cached(digest: Optional[str], data: Any) -> "isoclip.Projector":
    """The projector whose file bytes ``data()`` returns, loaded once per process per digest."""
    import isoclip

    key = ("bytes", digest)
    with _CACHE_LOCK:
        cached = _PROJECTORS.get(key)
        if cached is None:
            with tempfile.TemporaryDirectory(prefix="isoclip-projector-") as folder:
                path = os.path.join(folder, "projector.safetensors")
                with open(path, "wb") as file:
                    file.write(data())
                cached = isoclip.Projector.load(path)
            _PROJECTORS[key] = cached
        return cached
