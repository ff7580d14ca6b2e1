"""Type stubs of the extension module ``isoclip._native`` (re-exported by ``isoclip``)."""

from os import PathLike
from typing import Any, Dict, List, Mapping, Optional, Tuple, Union

import numpy as np
import numpy.typing as npt

__version__: str

_DType = Union[str, type, np.dtype]

class Projector:
    """A fitted IsoCLIP projector: the band's maps for one or both modalities. Immutable and
    shareable between threads; picklable (Spark, Ray)."""

    @staticmethod
    def load(
        path_or_url: Union[str, PathLike[str]],
        storage_options: Optional[Mapping[str, str]] = None,
    ) -> Projector:
        """Loads a projector file (``isoclip fit``'s output) from a path or a URL."""
    def save(self, path: Union[str, PathLike[str]]) -> None:
        """Writes the projector file."""
    @property
    def fingerprint(self) -> str:
        """The content digest of the projector file (what the resume records compare)."""
    @property
    def weights_fingerprint(self) -> str:
        """SHA-256 of the CLIP projector weights the band was fitted from."""
    @property
    def spectrum(self) -> npt.NDArray[np.float64]:
        """Singular values of Psi, descending."""
    @property
    def modalities(self) -> List[str]:
        """["image"], ["text"] or ["image", "text"]."""
    @property
    def band(self) -> Tuple[int, int]:
        """(k_top, k_bottom) of the only modality (a projector holding both raises)."""
    @property
    def bands(self) -> List[Tuple[str, Tuple[int, int]]]:
        """(modality, (k_top, k_bottom)) for every modality held."""
    @property
    def dims(self) -> Dict[str, Dict[str, int]]:
        """{modality: {"d_in": feature width, "d": embedding width, "compact": compact width}}."""
    @property
    def r(self) -> int:
        """The rank of Psi."""
    @property
    def preset(self) -> Optional[str]:
        """The preset the band came from, if any."""
    def output_dim(
        self, form: str = "compact", kind: str = "features", modality: Optional[str] = None
    ) -> int:
        """The width of ``project``'s output for these options."""
    def input_dim(self, kind: str = "features", modality: Optional[str] = None) -> int:
        """The width ``project`` expects for ``kind`` inputs."""
    def project(
        self,
        x: npt.NDArray[Any],
        form: str = "compact",
        dtype: Optional[_DType] = None,
        normalize: bool = True,
        kind: str = "features",
        modality: Optional[str] = None,
        nonfinite: str = "error",
        out: Optional[npt.NDArray[Any]] = None,
        precision: str = "f32",
    ) -> npt.NDArray[Any]:
        """Projects the rows of ``x`` (2-D float16/float32) into the IsoCLIP space.

        Byte-identical to ``isoclip project`` with the same options. ``form``: "compact"
        (m dims, same cosines) or "full" (d dims); ``dtype``: "f16", "f32" or a NumPy dtype
        (default: ``out``'s, else ``x``'s); ``kind``: "features" (pre-projection) or
        "embeddings" (CLIP embeddings); ``nonfinite``: "error" or "zero" for rows with NaN/Inf.
        C-contiguous inputs and row-strided views are read in place, other layouts copied once.
        ``out``: a C-contiguous writeable array of the result's shape and dtype, written and
        returned. ``precision``: "f32" (the reference) or "bf16" (inputs and weights rounded to
        bf16, f32 sums: the AVX-512 BF16 GEMM, cosines move by up to about 1e-3; a CPU without
        it raises ``isoclip.DeviceUnavailableError``). The GIL is released while computing;
        safe from many threads at once.
        """

def fit(
    image_proj: npt.NDArray[np.float64],
    text_proj: npt.NDArray[np.float64],
    k_top: Optional[int] = None,
    k_bottom: Optional[int] = None,
    preset: Optional[str] = None,
    modality: Optional[str] = None,
    image_bias: Optional[npt.NDArray[np.float64]] = None,
    text_bias: Optional[npt.NDArray[np.float64]] = None,
) -> Projector: ...
def fit_checkpoint(
    path: Union[str, PathLike[str]],
    k_top: Optional[int] = None,
    k_bottom: Optional[int] = None,
    preset: Optional[str] = None,
    modality: Optional[str] = None,
) -> Projector: ...
def project_gallery(
    input: str,
    output: str,
    projector: Union[Projector, str],
    *,
    form: str = "compact",
    dtype: Optional[_DType] = None,
    kind: str = "features",
    modality: Optional[str] = None,
    normalize: bool = True,
    nonfinite: str = "error",
    precision: str = "f32",
    num_shards: Optional[int] = None,
    shard_index: Optional[int] = None,
    storage_options: Optional[Mapping[str, str]] = None,
    overwrite: bool = False,
    trust_outputs: bool = False,
    device: str = "auto",
    threads: Optional[int] = None,
    progress: bool = True,
    chunk_bytes: int = 0,
) -> Dict[str, Any]: ...
def evaluate(
    projector: Projector,
    features: Optional[npt.NDArray[np.float32]] = None,
    labels_: Optional[npt.NDArray[np.int64]] = None,
    *,
    query_features: Optional[npt.NDArray[np.float32]] = None,
    query_labels: Optional[npt.NDArray[np.int64]] = None,
    gallery_features: Optional[npt.NDArray[np.float32]] = None,
    gallery_labels: Optional[npt.NDArray[np.int64]] = None,
    kind: str = "features",
    modality: Optional[str] = None,
    curve_k: int = 100,
) -> Dict[str, Any]: ...
