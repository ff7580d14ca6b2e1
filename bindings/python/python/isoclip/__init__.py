"""isoclip: training-free intra-modal alignment of CLIP embeddings (IsoCLIP), on the Rust engine.

The same core as the ``isoclip`` command line and the C ABI::

    import isoclip
    projector = isoclip.Projector.load("b16.safetensors")       # from `isoclip fit`
    iso = projector.project(features)                          # float16/float32 rows
    isoclip.project_gallery("img_emb/", "iso_emb/", projector)  # resumable, like `isoclip project`

Errors are ``isoclip.Error`` subclasses carrying the library's message and the C ABI's status.
"""

from __future__ import annotations

import os
from typing import Any, Dict, Optional, Union

import numpy as np

from . import _errors
from ._errors import *  # noqa: F401,F403 (the exception classes)
from ._errors import Error
from ._native import Projector, __version__
from ._native import evaluate as _evaluate
from ._native import fit as _fit
from ._native import fit_checkpoint as _fit_checkpoint
from ._native import project_gallery as _project_gallery

PathLike = Union[str, "os.PathLike[str]"]


def fit(
    image_proj: Any,
    text_proj: Any,
    k_top: Optional[int] = None,
    k_bottom: Optional[int] = None,
    preset: Optional[str] = None,
    modality: Optional[str] = None,
    *,
    image_bias: Any = None,
    text_bias: Any = None,
) -> Projector:
    """Fits IsoCLIP from CLIP's projector weights (what ``isoclip fit --image-proj --text-proj`` does).

    ``image_proj`` is d_image x d and ``text_proj`` d_text x d (input x output), any float
    dtype. The band drops the ``k_top`` largest and ``k_bottom`` smallest singular directions
    of Psi = P_i P_t^T; ``preset`` names the authors' band for a model (explicit k's win).
    ``modality``: "image" (default), "text" or "both".
    """
    as64 = lambda a: None if a is None else np.ascontiguousarray(a, dtype=np.float64)  # noqa: E731
    return _fit(
        as64(image_proj),
        as64(text_proj),
        k_top,
        k_bottom,
        preset,
        modality,
        as64(image_bias),
        as64(text_bias),
    )


def fit_checkpoint(
    path: PathLike,
    preset: Optional[str] = None,
    k_top: Optional[int] = None,
    k_bottom: Optional[int] = None,
    modality: Optional[str] = None,
) -> Projector:
    """Fits IsoCLIP from a CLIP checkpoint (.safetensors, OpenAI or open_clip tensor names)."""
    return _fit_checkpoint(os.fspath(path), k_top, k_bottom, preset, modality)


def project_gallery(
    input: PathLike,
    output: PathLike,
    projector: Union[Projector, PathLike],
    *,
    form: str = "compact",
    dtype: Any = "f16",
    kind: str = "features",
    modality: Optional[str] = None,
    normalize: bool = True,
    nonfinite: str = "error",
    precision: str = "f32",
    num_shards: Optional[int] = None,
    shard_index: Optional[int] = None,
    storage_options: Optional[Dict[str, str]] = None,
    overwrite: bool = False,
    trust_outputs: bool = False,
    device: str = "auto",
    threads: Optional[int] = None,
    progress: bool = True,
) -> Dict[str, Any]:
    """Projects a gallery of .npy shards into ``output``, resumably: ``isoclip project``.

    ``input``: a .npy shard, a directory or prefix of shards, or a text file listing them
    (paths or URLs); ``output``: a directory or prefix. A rerun skips finished shards.
    ``num_shards``/``shard_index`` split the sorted listing between workers (default: from
    SLURM_ARRAY_TASK_*, JOB_COMPLETION_INDEX or ISOCLIP_NUM_SHARDS/ISOCLIP_SHARD_INDEX).
    ``precision``: "f32" or "bf16" (the CPU's AVX-512 BF16 GEMM, as ``--precision bf16``; with
    ``device="auto"`` it runs on the CPU), recorded per shard: a rerun at another precision
    redoes the shards.
    Ctrl-C stops the job at its next chunk (finished shards kept) and raises KeyboardInterrupt.
    Returns the run's summary (the CLI's ``--json``) as a dict.
    """
    return _project_gallery(
        os.fspath(input),
        os.fspath(output),
        projector,
        form=form,
        dtype=dtype,
        kind=kind,
        modality=modality,
        normalize=normalize,
        nonfinite=nonfinite,
        precision=precision,
        num_shards=num_shards,
        shard_index=shard_index,
        storage_options=storage_options,
        overwrite=overwrite,
        trust_outputs=trust_outputs,
        device=device,
        threads=threads,
        progress=progress,
    )


def evaluate(
    projector: Union[Projector, PathLike],
    features: Any = None,
    labels: Any = None,
    *,
    query_features: Any = None,
    query_labels: Any = None,
    gallery_features: Any = None,
    gallery_labels: Any = None,
    kind: str = "features",
    modality: Optional[str] = None,
    curve_k: int = 100,
    as_frame: bool = False,
) -> Any:
    """Plain CLIP vs IsoCLIP retrieval on labelled rows: ``isoclip eval``'s metrics table.

    One set (``features``, ``labels``: each row queries the others) or queries against a
    gallery. Returns a dict with ``clip``, ``isoclip`` and ``delta`` (mAP, mAP@R, P@R, R@K, x100)
    and the band; with ``as_frame=True`` and pandas installed, a DataFrame with one row per
    method (clip, isoclip, delta) and one column per metric.
    """
    if not isinstance(projector, Projector):
        projector = Projector.load(os.fspath(projector))
    rows = lambda a: None if a is None else np.ascontiguousarray(a, dtype=np.float32)  # noqa: E731
    ints = lambda a: None if a is None else np.ascontiguousarray(np.ravel(a), dtype=np.int64)  # noqa: E731
    table = _evaluate(
        projector,
        rows(features),
        ints(labels),
        query_features=rows(query_features),
        query_labels=ints(query_labels),
        gallery_features=rows(gallery_features),
        gallery_labels=ints(gallery_labels),
        kind=kind,
        modality=modality,
        curve_k=curve_k,
    )
    if not as_frame:
        return table
    import pandas as pd

    metrics = list(table["delta"].keys())
    return pd.DataFrame(
        {m: [table["clip"][m], table["isoclip"][m], table["delta"][m]] for m in metrics},
        index=["clip", "isoclip", "delta"],
    )


__all__ = [
    "Projector",
    "fit",
    "fit_checkpoint",
    "project_gallery",
    "evaluate",
    "__version__",
    *_errors.__all__,
]
