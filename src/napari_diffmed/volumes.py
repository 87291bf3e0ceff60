"""Scans in, model batches out, and back: the shared front and back end of every task.

2D models run slice by slice along a chosen axis (slices are a batch axis);
3D models see the whole volume resampled to their grid. Either way the results
are mapped back onto the input's voxel grid.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np

from .geometry import Grid, Normaliser
from .models.card import ModelCard
from .slices import check_slices


@dataclass(frozen=True)
class Prepared:
    """A scan on a model's grid: ``data`` is ``(N, *card.image_size)`` on [-1, 1]."""

    data: np.ndarray
    grid: Grid
    normaliser: Normaliser
    axis: int | None
    indices: np.ndarray
    shape: tuple[int, ...]

    def restore(self, out: np.ndarray, fill: float | np.ndarray = 0.0, order: int = 1) -> np.ndarray:
        """Map ``(..., N, *image_size)`` model output back to ``(..., *shape)`` on the input grid.

        Voxels the model did not see (other slices, outside its field of view)
        take ``fill``: a number, or an array of the input's shape (e.g. the scan).
        """
        lead = out.shape[: out.ndim - self.data.ndim]
        back = self.grid.from_model(out, order=order, cval=np.nan)
        full = np.empty(lead + self.shape, dtype=np.float32)
        full[...] = fill
        if self.axis is None:
            region = back[..., 0, :, :, :]
            ok = ~np.isnan(region)
            full[ok] = region[ok]
            return full
        moved = np.moveaxis(full, len(lead) + self.axis, len(lead))
        for j, i in enumerate(self.indices):
            region = back[..., j, :, :]
            target = moved[..., i, :, :]
            ok = ~np.isnan(region)
            target[ok] = region[ok]
        return full


def as_volume(image: np.ndarray, spacing: Sequence[float] | None) -> tuple[np.ndarray, tuple[float, ...]]:
    """Check an image and give it three axes (a 2D image becomes one slice)."""
    arr = np.asarray(image)
    if arr.ndim not in (2, 3):
        raise ValueError(f"expected a 2D image or a 3D volume, got an array of shape {arr.shape}")
    if not np.issubdtype(arr.dtype, np.number) or np.issubdtype(arr.dtype, np.complexfloating):
        raise ValueError(f"expected real numbers, got dtype {arr.dtype}")
    if not np.all(np.isfinite(arr)):
        raise ValueError("the image contains NaN or infinite values; fix or mask them before running a model")
    spacing = tuple(float(s) for s in (spacing if spacing is not None else (1.0,) * arr.ndim))
    if len(spacing) != arr.ndim or min(spacing) <= 0:
        raise ValueError(f"spacing {spacing} does not fit an image of shape {arr.shape}")
    if arr.ndim == 2:
        return arr[None].astype(np.float32), (1.0,) + spacing
    return arr.astype(np.float32), spacing


def prepare(
    image: np.ndarray, spacing: Sequence[float] | None, card: ModelCard, axis: int = 0,
    indices: Sequence[int] | None = None,
) -> Prepared:
    """Normalise a 2D/3D scan per the card and resample it (or its slices) onto the model grid."""
    norm = card.normalisation
    return prepare_grid(image, spacing, card.image_size, card.spacing, norm.get("lower", 0.5),
                        norm.get("upper", 99.5), axis, indices)


def prepare_grid(
    image: np.ndarray, spacing: Sequence[float] | None, image_size: Sequence[int], model_spacing: Sequence[float],
    lower: float = 0.5, upper: float = 99.5, axis: int = 0, indices: Sequence[int] | None = None,
) -> Prepared:
    """:func:`prepare` by the card's numbers: a grid of ``image_size`` pixels of ``model_spacing`` mm (2D: slices
    along ``axis``; 3D: the volume) and the ``lower``/``upper`` percentiles mapped to -1 and 1. Training
    reads a user's folders through this too, so a model trains on what it will be shown."""
    volume, spacing = as_volume(image, spacing)
    normaliser = Normaliser.fit(volume, lower, upper)
    unit = normaliser.forward(volume)
    shape = tuple(np.asarray(image).shape) if np.asarray(image).ndim == 3 else (1,) + tuple(np.asarray(image).shape)
    if len(image_size) == 3:
        grid = Grid.for_volume(volume, spacing, image_size, model_spacing)
        return Prepared(grid.to_model(unit)[None], grid, normaliser, None, np.array([0]), shape)
    if axis not in (0, 1, 2):
        raise ValueError(f"slicing axis must be 0, 1 or 2, got {axis}")
    moved = np.moveaxis(unit, axis, 0)
    in_plane = tuple(s for i, s in enumerate(spacing) if i != axis)
    all_idx = np.arange(moved.shape[0])
    idx = all_idx if indices is None else np.asarray(check_slices(indices, moved.shape[0], axis))
    grid = Grid.for_volume(moved, (1.0,) + in_plane, image_size, model_spacing)
    return Prepared(grid.to_model(moved[idx]), grid, normaliser, axis, idx, shape)
