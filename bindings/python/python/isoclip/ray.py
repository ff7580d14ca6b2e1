"""Ray integration: project a gallery of shards as Ray tasks, or Ray Data batches.

Two entry points, both thin layers over the core package (Ray schedules and retries; isoclip has
no scheduler of its own):

- :func:`project_gallery` runs the resumable gallery job (:func:`isoclip.project_gallery`) as one
  ``ray.remote`` task per shard group: task ``i`` of ``n`` takes the shards ``k`` with
  ``k % n == i`` of the sorted listing. Ray retries a task whose worker died (``max_retries``);
  the per-shard completion records make the retry skip what its earlier attempt finished, so the
  outputs are byte-identical to one clean run.
- :class:`ProjectBatch` is a callable class for ``ray.data.Dataset.map_batches``: it loads the
  projector once per actor and projects one embeddings column per batch (numpy batches holding a
  2-D tensor column, or pyarrow batches holding a list column, flattened without per-row work).

ray is imported lazily: ``import isoclip.ray`` works without it.
"""

from __future__ import annotations

import os
import time
from typing import TYPE_CHECKING, Any, Dict, Mapping, Optional, Union

import numpy as np

from isoclip.spark import (
    _resolve_num_shards,
    _task_options,
    arrow_list_to_matrix,
    load_projector_cached,
    location_for_workers,
    matrix_to_arrow_list,
    merge_summaries,
)

if TYPE_CHECKING:  # pragma: no cover - typing only
    import pyarrow as pa

__all__ = ["project_gallery", "ProjectBatch"]


def project_gallery(
    input_url: str,
    output_url: str,
    projector_url: str,
    num_shards: Optional[int] = None,
    num_cpus: float = 1,
    num_gpus: float = 0,
    max_retries: int = 3,
    **options: Any,
) -> Dict[str, Any]:
    """Project a gallery of ``.npy`` shards with Ray, one task per shard group; resumable.

    Starts ``num_shards`` tasks of ``isoclip.project_gallery(input_url, output_url,
    projector_url, num_shards=n, shard_index=i, progress=False, **options)`` and waits for them.
    Calls ``ray.init()`` first when Ray is not initialised (Ray's own behaviour on first use).
    Every worker node must be able to read ``input_url`` and ``projector_url`` and write
    ``output_url`` (a shared file system or an object store); relative paths are made absolute
    on the driver first.

    Args:
        input_url: a directory, prefix or shard list (path or URL).
        output_url: the output directory or prefix, shared by all tasks.
        projector_url: the projector file (path or URL) readable from every node.
        num_shards: number of tasks; default the cluster's CPUs
            (``int(ray.cluster_resources()["CPU"])``, at least 1). The total, not the CPUs free
            right now: those depend on what else (an idle Ray Data actor) holds a CPU at the
            moment of the call, and tasks beyond the free CPUs simply wait.
        num_cpus, num_gpus: resources each task reserves (``num_gpus=1`` with
            ``device="cuda"`` puts each task on a GPU).
        max_retries: how many times Ray reruns a task whose worker process died (crash, OOM
            kill, lost node). An :class:`isoclip.Error` (bad input) is not retried: it would fail
            the same way again.
        **options: passed to :func:`isoclip.project_gallery` (``form``, ``dtype``, ``kind``,
            ``modality``, ``storage_options``, ``overwrite``, ``device``, ``threads``...).
            ``threads`` defaults to ``num_cpus`` (at least 1), the cores Ray reserved for the
            task.

    Returns:
        The merged summary (:func:`isoclip.spark.merge_summaries`): counts summed over the
        tasks, ``num_shards``, the driver's wall time in ``seconds``, and ``workers``, the
        per-task summaries in task order.

    Raises:
        ValueError: ``num_shards`` is not a positive integer.
        TypeError: ``options`` names an option the engine sets per task.
        ray.exceptions.RayTaskError: a task raised (its cause is the :class:`isoclip.Error`).
        ray.exceptions.WorkerCrashedError: a task's worker died more than ``max_retries`` times.
    """
    import ray

    if not ray.is_initialized():
        ray.init()
    count = _resolve_num_shards(num_shards, _cluster_cpus(ray))
    task_options = _task_options(options, default_threads=max(1, int(num_cpus)))
    remote = ray.remote(_run_shard_group).options(
        num_cpus=num_cpus,
        num_gpus=num_gpus,
        max_retries=max_retries,
        retry_exceptions=False,
    )
    locations = [location_for_workers(u) for u in (input_url, output_url, projector_url)]
    args = (*locations, count, task_options)
    started = time.monotonic()
    refs = [remote.remote(*args, index) for index in range(count)]
    summaries = ray.get(refs)
    return merge_summaries(summaries, seconds=time.monotonic() - started)


def _cluster_cpus(ray: Any) -> int:
    """The CPUs of the cluster, at least 1."""
    return max(1, int(ray.cluster_resources().get("CPU", 1)))


def _run_shard_group(
    input_url: str,
    output_url: str,
    projector_url: str,
    num_shards: int,
    options: Mapping[str, Any],
    shard_index: int,
) -> Dict[str, Any]:
    """What one Ray task runs: the gallery job restricted to shard group ``shard_index``."""
    import isoclip

    summary = isoclip.project_gallery(
        input_url,
        output_url,
        projector_url,
        num_shards=num_shards,
        shard_index=shard_index,
        progress=False,
        **options,
    )
    return {"shard_index": shard_index, **dict(summary)}


Batch = Union[Dict[str, np.ndarray], "pa.Table"]


class ProjectBatch:
    """Ray Data callable class: projects one embeddings column of each batch.

    Use it with ``ray.data.Dataset.map_batches``::

        ds.map_batches(
            isoclip.ray.ProjectBatch,
            fn_constructor_kwargs={"projector": "b16.safetensors", "column": "embedding"},
            batch_format="numpy",
            concurrency=2,
        )

    Each actor loads the projector once (a path or URL readable from the worker nodes). With
    ``batch_format="numpy"`` the column must be a 2-D float16/float32 tensor column (as
    ``ray.data.from_numpy`` or ``from_items`` with equal-length arrays make); with
    ``batch_format="pyarrow"`` it may also be an Arrow list column (parquet ``list<float>``,
    flattened without per-row work). The output column holds a ``(rows, m)`` array of the
    projection (float16 or float32), replacing ``column`` unless ``output_column`` is given.

    Args:
        projector: path or URL of the projector file.
        column: the embeddings column (default ``"embedding"``).
        output_column: where to write the projection; default ``column``.
        form, dtype, normalize, kind, modality: as :meth:`isoclip.Projector.project` takes them.
        storage_options: object-store options for loading a projector URL.

    Raises (on the workers, surfaced by Ray): KeyError for a missing column; TypeError for a
    column that is not a float16/float32 matrix or list; ValueError for null or unequal rows;
    :class:`isoclip.Error` for a dimension the projector does not take.
    """

    def __init__(
        self,
        projector: Union[str, "os.PathLike[str]"],
        column: str = "embedding",
        output_column: Optional[str] = None,
        form: str = "compact",
        dtype: Optional[str] = None,
        normalize: bool = True,
        kind: str = "features",
        modality: Optional[str] = None,
        storage_options: Optional[Mapping[str, str]] = None,
    ) -> None:
        self.projector = load_projector_cached(os.fspath(projector), storage_options)
        self.column = column
        self.output_column = column if output_column is None else output_column
        self.options = {
            "form": form,
            "dtype": dtype,
            "normalize": normalize,
            "kind": kind,
            "modality": modality,
        }

    def __call__(self, batch: Batch) -> Batch:
        if isinstance(batch, dict):
            return self._project_numpy(batch)
        return self._project_arrow(batch)

    def _project_numpy(self, batch: Dict[str, np.ndarray]) -> Dict[str, np.ndarray]:
        if self.column not in batch:
            raise KeyError(f"column {self.column!r} is not in the batch (columns: {list(batch)})")
        matrix = _numpy_column_to_matrix(batch[self.column], self.column)
        result = dict(batch)
        result[self.output_column] = self.projector.project(matrix, **self.options)
        return result

    def _project_arrow(self, table: "pa.Table") -> "pa.Table":
        import pyarrow as pa

        if self.column not in table.column_names:
            raise KeyError(
                f"column {self.column!r} is not in the batch (columns: {table.column_names})"
            )
        if table.num_rows == 0:
            element = pa.float16() if self.options["dtype"] == "f16" else pa.float32()
            values = pa.array([], pa.list_(element))
        else:
            matrix = arrow_list_to_matrix(table.column(self.column), self.column)
            values = matrix_to_arrow_list(self.projector.project(matrix, **self.options))
        if self.output_column in table.column_names:
            index = table.column_names.index(self.output_column)
            return table.set_column(index, self.output_column, values)
        return table.append_column(self.output_column, pa.chunked_array([values]))


def _numpy_column_to_matrix(values: np.ndarray, column: str) -> np.ndarray:
    """A 2-D float16/float32 matrix from a numpy batch column, or a TypeError saying why not."""
    if values.dtype == object:
        raise TypeError(
            f"column {column!r} holds ragged or object rows; use batch_format='pyarrow' for a "
            "list column, or make it a 2-D tensor column of equal-length float rows"
        )
    if values.ndim != 2:
        raise TypeError(f"column {column!r} has shape {values.shape}, expected (rows, dim)")
    if values.dtype not in (np.float16, np.float32):
        raise TypeError(f"column {column!r} is {values.dtype}, expected float16 or float32")
    return values

