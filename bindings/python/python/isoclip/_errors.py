"""The exceptions isoclip raises: one class per status of the C ABI, all under ``isoclip.Error``.

Each carries the library's message, the status name (``.status``, e.g. ``"ISOCLIP_ERR_SHAPE"``)
and its number (``.status_code``), as ``isoclip_status_name`` and the C header give them.
"""

from __future__ import annotations


class Error(Exception):
    """An error reported by the isoclip engine."""

    status: str = "ISOCLIP_ERR"
    status_code: int = -1

    def __init__(self, message: str, status: str | None = None, status_code: int | None = None):
        super().__init__(message)
        if status is not None:
            self.status = status
        if status_code is not None:
            self.status_code = status_code


class InvalidArgumentError(Error, ValueError):
    """An argument is out of range or inconsistent with the others."""


class StorageError(Error):
    """A file or an object store refused or failed a read, write, rename or sync."""


class FormatError(Error):
    """A file is not what its format promises (truncated, bad header, checksum mismatch)."""


class UnsupportedError(FormatError):
    """A well-formed file uses something this version does not support."""


class TensorNotFoundError(FormatError):
    """A checkpoint lacks the tensors needed."""


class ShapeError(Error, ValueError):
    """Two dimensions that must agree do not."""


class NonFiniteError(Error, ValueError):
    """NaN or Inf in projector weights or biases."""


class NonFiniteRowError(NonFiniteError):
    """An input row holds NaN or Inf (the message names the row, and the shard in a job)."""


class UnrepresentableError(Error, ValueError):
    """A finite row's result cannot be represented in the output dtype."""


class BandError(Error, ValueError):
    """The band keeps no direction, or keeps directions whose singular value is zero."""


class NumericalError(Error):
    """A numerical routine failed (the SVD did not converge)."""


class CancelledError(Error):
    """The run was cancelled."""


class DeviceUnavailableError(Error):
    """The requested device (a GPU) is not usable in this build or on this machine, or the CPU
    lacks AVX-512 BF16 for ``precision="bf16"``."""


class ResourceExhaustedError(Error):
    """Memory or threads could not be obtained."""


_BY_STATUS = {
    "ISOCLIP_ERR_INVALID_ARGUMENT": InvalidArgumentError,
    "ISOCLIP_ERR_IO": StorageError,
    "ISOCLIP_ERR_FORMAT": FormatError,
    "ISOCLIP_ERR_UNSUPPORTED": UnsupportedError,
    "ISOCLIP_ERR_SHAPE": ShapeError,
    "ISOCLIP_ERR_TENSOR_NOT_FOUND": TensorNotFoundError,
    "ISOCLIP_ERR_NON_FINITE": NonFiniteError,
    "ISOCLIP_ERR_NON_FINITE_ROW": NonFiniteRowError,
    "ISOCLIP_ERR_BAND": BandError,
    "ISOCLIP_ERR_NUMERICAL": NumericalError,
    "ISOCLIP_ERR_CANCELLED": CancelledError,
    "ISOCLIP_ERR_DEVICE_UNAVAILABLE": DeviceUnavailableError,
    "ISOCLIP_ERR_UNREPRESENTABLE": UnrepresentableError,
    "ISOCLIP_ERR_RESOURCE_EXHAUSTED": ResourceExhaustedError,
}


def error_for(status: str, status_code: int, message: str) -> Error:
    """The exception for a status (called by the extension module)."""
    return _BY_STATUS.get(status, Error)(message, status, status_code)


__all__ = [name for name, value in globals().items() if isinstance(value, type) and issubclass(value, Error)]
