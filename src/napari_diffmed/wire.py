"""What travels between ``napari-diffmed serve`` and :mod:`napari_diffmed.remote`: arrays as ``.npy``
bytes read without pickle, results as a JSON tree whose arrays are named, and bounded previews.

Plain numpy and JSON only, so both ends share it without the web stack.
"""

from __future__ import annotations

import dataclasses
import io
import math
from typing import Any

import numpy as np

ARRAY_KINDS = "biuf"  # bool, integers, floats: no objects, strings, structures or complex numbers
RESULT_TYPES = {  # result dataclass -> the module that defines it (the only classes a client rebuilds)
    "SynthesisResult": "synthesis", "GuidanceSweep": "synthesis", "EnsembleResult": "ensemble",
    "InpaintResult": "inpainting", "AnomalyResult": "anomaly",
}


class ArrayRefused(ValueError):
    """An array the limits refuse; ``too_large`` tells an oversized array from a malformed one."""

    def __init__(self, message: str, too_large: bool = False) -> None:
        super().__init__(message)
        self.too_large = too_large


def to_npy(array: np.ndarray) -> bytes:
    """``array`` as ``.npy`` bytes (refused if its dtype is not a plain number or bool)."""
    arr = np.asarray(array)
    if arr.dtype.kind not in ARRAY_KINDS:
        raise ArrayRefused(f"arrays must hold numbers or booleans, got dtype {arr.dtype}")
    buffer = io.BytesIO()
    np.save(buffer, arr, allow_pickle=False)
    return buffer.getvalue()


def npy_header(data: bytes) -> tuple[tuple[int, ...], np.dtype]:
    """Shape and dtype from ``.npy`` bytes without reading the data; ``ArrayRefused`` if malformed."""
    f = io.BytesIO(data)
    try:
        version = np.lib.format.read_magic(f)
        read = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
        shape, _, dtype = read(f)
    except (ValueError, OSError, SyntaxError, TypeError) as err:
        raise ArrayRefused(f"not a .npy array: {err}") from None
    if dtype.kind not in ARRAY_KINDS or dtype.hasobject:
        raise ArrayRefused(f"arrays must hold numbers or booleans (no objects or pickles), got dtype {dtype}")
    if len(data) - f.tell() != math.prod(shape) * dtype.itemsize:
        raise ArrayRefused(f".npy data of {len(data) - f.tell()} bytes does not match its header "
                           f"(shape {shape}, dtype {dtype})")
    return tuple(int(s) for s in shape), dtype


def from_npy(data: bytes, max_dims: int | None = None, max_voxels: int | None = None) -> np.ndarray:
    """The array in ``.npy`` bytes, checked against the limits before it is read; never unpickles."""
    shape, dtype = npy_header(data)
    if max_dims is not None and len(shape) > max_dims:
        raise ArrayRefused(f"arrays may have at most {max_dims} dimensions, got shape {shape}")
    if max_voxels is not None and math.prod(shape) > max_voxels:
        raise ArrayRefused(f"an array of shape {shape} has {math.prod(shape)} voxels, more than this server's "
                           f"limit of {max_voxels}", too_large=True)
    return np.load(io.BytesIO(data), allow_pickle=False)


def jsonable(value: Any) -> Any:
    """Settings as JSON: tuples, ranges and numpy scalars become lists and numbers."""
    if isinstance(value, (str, bool)) or value is None:
        return value
    if isinstance(value, (np.integer, np.floating, np.bool_)):
        return value.item()
    if isinstance(value, (int, float)):
        return value
    if isinstance(value, dict):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple, range, np.ndarray)):
        return [jsonable(v) for v in value]
    raise ValueError(f"setting {value!r} of type {type(value).__name__} cannot be sent to a server")


def encode_result(result: Any) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """A task's result dataclass -> (JSON tree, named arrays)."""
    arrays: dict[str, np.ndarray] = {}

    def walk(value: Any, path: str) -> Any:
        if isinstance(value, np.ndarray):
            arrays[path] = value
            return {"array": path}
        if dataclasses.is_dataclass(value):
            name = type(value).__name__
            if name not in RESULT_TYPES:
                raise TypeError(f"cannot send a {name}")
            fields = {f.name: walk(getattr(value, f.name), f"{path}.{f.name}") for f in dataclasses.fields(value)}
            return {"result": name, "fields": fields}
        if isinstance(value, tuple):
            return {"tuple": [walk(v, f"{path}.{i}") for i, v in enumerate(value)]}
        if isinstance(value, list):
            return [walk(v, f"{path}.{i}") for i, v in enumerate(value)]
        return jsonable(value)

    return walk(result, "r"), arrays


def decode_result(tree: Any, arrays: dict[str, np.ndarray]) -> Any:
    """The inverse of :func:`encode_result`: only the task result classes are rebuilt."""
    import importlib

    if isinstance(tree, list):
        return [decode_result(v, arrays) for v in tree]
    if not isinstance(tree, dict):
        return tree
    if "array" in tree:
        return arrays[tree["array"]]
    if "tuple" in tree:
        return tuple(decode_result(v, arrays) for v in tree["tuple"])
    if "result" in tree:
        name = tree["result"]
        if name not in RESULT_TYPES:
            raise ValueError(f"unknown result type {name!r} from the server")
        cls = getattr(importlib.import_module(f"napari_diffmed.{RESULT_TYPES[name]}"), name)
        return cls(**{k: decode_result(v, arrays) for k, v in tree["fields"].items()})
    return {k: decode_result(v, arrays) for k, v in tree.items()}


def preview_stride(shape: tuple[int, ...], max_voxels: int) -> int:
    """The smallest whole stride along every axis that brings an array of ``shape`` within ``max_voxels``."""
    stride = 1
    while math.prod(-(-s // stride) for s in shape) > max_voxels:
        stride += 1
    return stride


def shrink_preview(preview: np.ndarray, max_voxels: int) -> tuple[np.ndarray, int]:
    """(every ``stride``-th voxel of ``preview`` as float32, stride) within ``max_voxels``."""
    stride = preview_stride(preview.shape, max_voxels)
    part = preview[(slice(None, None, stride),) * preview.ndim] if stride > 1 else preview
    return np.ascontiguousarray(part, dtype=np.float32), stride


def grow_preview(part: np.ndarray, stride: int, shape: tuple[int, ...]) -> np.ndarray:
    """Undo :func:`shrink_preview` by repeating voxels (nearest neighbour) up to ``shape``."""
    full = part
    for axis in range(part.ndim):
        full = np.repeat(full, stride, axis=axis) if stride > 1 else full
    return full[tuple(slice(0, s) for s in shape)]
