"""One check of task inputs and settings, shared by every task, and of their results.

Every task (synthesis, ensemble, inpainting, anomaly) calls :func:`check_task_inputs` before
it copies or allocates anything: the image's axes, size and values, the spacing, the slicing
axis and indices, the mask and the seed, and the memory the run's arrays will take, judged
from the input's shape alone (a lazy 2000^3 array is refused without being read).
:func:`check_finite_result` refuses a result holding NaN or infinite values instead of
letting it pass as an empty map. Errors are ``ValueError`` naming the value and what is allowed.
"""

from __future__ import annotations

import math
import numbers
import os
from typing import Any, Sequence

import numpy as np

MAX_SEED = 2**63 - 1
SPACING_RANGE = (1e-3, 1e4)  # mm: 1 micrometre to 10 m per voxel
BYTES_ENV = "NAPARI_DIFFMED_MAX_BYTES"
DEFAULT_MAX_BYTES = 4 * 2**30


class NonFiniteResultError(ValueError):
    """A model produced NaN or infinite values: nothing of the result may be used or written."""


def whole(name: str, value: Any, low: int, high: int) -> int:
    """``value`` as an int if it is a whole number (not a bool, not a float) from ``low`` to ``high``."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or not low <= value <= high:
        raise ValueError(f"{name} must be a whole number from {low} to {high}, got {value!r}")
    return int(value)


def finite(name: str, value: Any, low: float = -math.inf, high: float = math.inf) -> float:
    """``value`` as a float if it is a finite real number from ``low`` to ``high``."""
    ok = not isinstance(value, bool) and isinstance(value, numbers.Real) and math.isfinite(value)
    if not ok or not low <= value <= high:
        raise ValueError(f"{name} must be a finite number from {low:g} to {high:g}, got {value!r}")
    return float(value)


def check_seed(seed: Any) -> None:
    """None (a fresh seed), or a whole number from 0 to 2**63 - 1."""
    if seed is not None and (isinstance(seed, bool) or not isinstance(seed, numbers.Integral)
                             or not 0 <= seed <= MAX_SEED):
        raise ValueError(f"seed must be a whole number >= 0 and below 2**63 (or None for a fresh one), got {seed!r}")


def max_bytes(limit: int | None = None) -> int:
    """``limit``, else ``$NAPARI_DIFFMED_MAX_BYTES``, else :data:`DEFAULT_MAX_BYTES`."""
    if limit is not None:
        return whole("max_bytes", limit, 1, 2**62)
    raw = os.environ.get(BYTES_ENV, "").strip()
    try:
        return int(float(raw)) if raw else DEFAULT_MAX_BYTES
    except ValueError:
        raise ValueError(f"${BYTES_ENV} must be a number of bytes, got {raw!r}") from None


def check_spacing(spacing: Sequence[float] | None, ndim: int) -> tuple[float, ...]:
    """Spacing (mm per voxel, one per axis): finite and within :data:`SPACING_RANGE`."""
    if spacing is None:
        return (1.0,) * ndim
    try:
        values = [float(s) for s in spacing]
    except (TypeError, ValueError):
        raise ValueError(f"spacing must be {ndim} numbers (mm per voxel), got {spacing!r}") from None
    low, high = SPACING_RANGE
    if len(values) != ndim or not all(math.isfinite(s) and low <= s <= high for s in values):
        raise ValueError(f"spacing {tuple(values)} does not fit an image of {ndim} axes: give {ndim} finite "
                         f"numbers from {low:g} to {high:g} mm")
    return tuple(values)


def check_image(image: Any, name: str = "image") -> tuple[tuple[int, ...], np.dtype]:
    """(shape, dtype) of a 2D image or 3D volume of real numbers with no empty axis; nothing is read."""
    shape = tuple(int(n) for n in getattr(image, "shape", np.shape(image)))
    dtype = np.dtype(image.dtype if hasattr(image, "dtype") else np.asarray(image).dtype)
    if len(shape) not in (2, 3):
        raise ValueError(f"expected a 2D image or a 3D volume, got an array of shape {shape}")
    if min(shape) == 0:
        raise ValueError(f"the {name} is empty (shape {shape})")
    if dtype == bool or not np.issubdtype(dtype, np.number) or np.issubdtype(dtype, np.complexfloating):
        raise ValueError(f"the {name} must hold real numbers, got dtype {dtype}")
    return shape, dtype


def check_axis(axis: Any, ndim: int) -> int:
    """A slicing axis: a whole number 0..ndim-1 (only 0 for a 2D image)."""
    allowed = (0,) if ndim == 2 else (0, 1, 2)
    if isinstance(axis, bool) or not isinstance(axis, numbers.Integral) or axis not in allowed:
        raise ValueError(f"slicing axis must be {'0' if ndim == 2 else '0, 1 or 2'} for a {ndim}D image, "
                         f"got {axis!r}")
    return int(axis)


def check_indices(indices: Sequence[Any] | None, length: int) -> list[int] | None:
    """Slice indices: whole numbers in 0..length-1, at least one."""
    if indices is None:
        return None
    items = list(indices) if not isinstance(indices, (str, bytes)) else [indices]
    ok = bool(items) and all(not isinstance(i, bool) and isinstance(i, numbers.Integral) and 0 <= i < length
                             for i in items)
    if not ok:
        raise ValueError(f"slice indices must lie in 0..{length - 1}, got {items[:6]}")
    return [int(i) for i in items]


def check_mask(mask: Any, shape: Sequence[int], name: str = "mask") -> None:
    """A mask on the image's grid holding booleans or numbers (not strings, objects or complex values)."""
    m_shape = tuple(getattr(mask, "shape", np.shape(mask)))
    if m_shape != tuple(shape):
        raise ValueError(f"{name} of shape {m_shape} does not match the image's shape {tuple(shape)}")
    dtype = np.dtype(mask.dtype if hasattr(mask, "dtype") else np.asarray(mask).dtype)
    if dtype != bool and (not np.issubdtype(dtype, np.number) or np.issubdtype(dtype, np.complexfloating)):
        raise ValueError(f"{name} must hold booleans, 0/1 or integer labels, got dtype {dtype}")


def check_memory(shape: Sequence[int], copies: float, what: str, limit: int | None = None) -> int:
    """Refuse a run whose float32 arrays (``copies`` of the input's size) would pass the byte limit."""
    need = int(4 * math.prod(shape) * copies)
    top = max_bytes(limit)
    if need > top:
        raise ValueError(f"{what} over an image of shape {tuple(shape)} needs about {need / 2**30:.2f} GiB, more "
                         f"than the limit of {top / 2**30:.2f} GiB (${BYTES_ENV}); crop the image or choose fewer "
                         "slices")
    return need


def check_task_inputs(image: Any, spacing: Sequence[float] | None = None, *, mask: Any = None,
                      axis: Any = 0, indices: Sequence[Any] | None = None, seed: Any = None,
                      copies: float = 4.0, what: str = "this run", limit: int | None = None,
                      values: bool = True) -> None:
    """The checks every task makes before allocating: image, spacing, axis, indices, mask, seed, memory
    (``copies`` float32 arrays of the image's size; 0 when the task estimates its own), and, with
    ``values``, once the size is known to be safe, that every voxel is a finite number."""
    shape, dtype = check_image(image)
    check_spacing(spacing, len(shape))
    check_seed(seed)
    ax = check_axis(axis, len(shape))
    check_indices(indices, shape[ax] if len(shape) == 3 else 1)
    if mask is not None:
        check_mask(mask, shape)
    if copies:
        check_memory(shape, copies, what, limit)
    if values and np.issubdtype(dtype, np.floating) and not np.all(np.isfinite(np.asarray(image))):
        raise ValueError("the image contains NaN or infinite values; fix or mask them before running a model")


def check_finite_result(name: str, values: Any, model_id: str) -> None:
    """Raise :class:`NonFiniteResultError` if a model's output holds NaN or infinite values."""
    arr = values.detach().cpu().numpy() if hasattr(values, "detach") else np.asarray(values)
    bad = int(arr.size - np.count_nonzero(np.isfinite(arr)))
    if bad:
        raise NonFiniteResultError(f"model {model_id} produced {bad} NaN or infinite values in the {name} "
                                   f"(of {arr.size}); its weights or card are unfit for this input, and nothing "
                                   "was kept")


def check_threshold(value: Any, name: str = "threshold") -> float:
    """A finite threshold (NaN would select nothing, silently)."""
    return finite(name, value)
