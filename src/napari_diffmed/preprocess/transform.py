"""The way back: a scan's grid <-> the model's template grid, with the intensity maps of the stages."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Sequence

import numpy as np

from .images import resample, to_itk
from .intensity import QuantileMap

KINDS = ("labels", "map", "image")


@dataclass
class Transform:
    """How a scan was brought to a model's template space, and how to take results back.

    ``forward``/``inverse`` are SimpleITK transforms (template point -> scan point, and back);
    ``bias`` the N4 field on the scan's grid (or None); ``quantiles`` the intensity match (or None);
    ``brain`` the template's brain mask (model space); ``record`` the JSON-able provenance.
    """

    scan_shape: tuple[int, ...]
    scan_spacing: tuple[float, ...]
    model_shape: tuple[int, ...]
    model_spacing: tuple[float, ...]
    forward: Any
    inverse: Any
    brain: np.ndarray
    bias: np.ndarray | None = None
    quantiles: QuantileMap | None = None
    record: dict[str, Any] = field(default_factory=dict)

    def back(self, result: np.ndarray, kind: str = "map", fill: float = 0.0) -> np.ndarray:
        """``(..., *model_shape)`` on the template grid -> ``(..., *scan_shape)`` on the scan's exact grid.

        ``labels``: nearest neighbour, the dtype kept; ``map``: linear; ``image``: linear, then the
        intensity match undone and the bias field put back (the scan's own intensities). Voxels that fall
        outside the template's grid take ``fill``."""
        if kind not in KINDS:
            raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")
        arr = np.asarray(result)
        if tuple(arr.shape[-3:]) != self.model_shape:
            raise ValueError(f"array of shape {arr.shape} does not end with the model grid {self.model_shape}")
        reference = to_itk(np.zeros(self.scan_shape, np.float32), self.scan_spacing)
        order = 0 if kind == "labels" else 1
        flat = arr.reshape(-1, *self.model_shape)
        out = np.stack([resample(a, self.model_spacing, reference, self.inverse, order, np.nan, smooth=False)
                        for a in flat]).reshape(arr.shape[:-3] + self.scan_shape)
        outside = np.isnan(out)
        if kind == "image":
            if self.quantiles is not None:
                out = self.quantiles.inverse(out)
            if self.bias is not None:
                out = out * self.bias
        out[outside] = fill
        return out.astype(arr.dtype) if kind == "labels" else out.astype(np.float32)

    def to_model(self, array: np.ndarray, kind: str = "labels") -> np.ndarray:
        """A scan-grid array (a mask, a map) on the template grid."""
        reference = to_itk(np.zeros(self.model_shape, np.float32), self.model_spacing)
        order = 0 if kind == "labels" else 1
        out = resample(np.asarray(array, np.float32), self.scan_spacing, reference, self.forward, order, 0.0)
        return out.astype(np.asarray(array).dtype) if kind == "labels" else out

    def inside(self) -> np.ndarray:
        """Scan voxels that land on the template grid."""
        return self.back(np.ones(self.model_shape, np.uint8), "labels") > 0

    def model_slices(self, axis: int, indices: Sequence[int] | None) -> list[int] | None:
        """Axial template slices that the scan's slices ``indices`` along ``axis`` need where they meet the
        template's brain (None: all slices): the slice a point lies on, or the two it lies between."""
        if indices is None:
            return None
        idx = np.asarray(sorted(set(int(i) for i in indices)))
        shape = list(self.scan_shape)
        grids = [np.linspace(0, n - 1, min(n, 24)) for n in shape]
        grids[axis] = idx.astype(float)
        zyx = np.stack(np.meshgrid(*grids, indexing="ij"), -1).reshape(-1, 3) * np.asarray(self.scan_spacing)
        points = np.array([self.inverse.TransformPoint(tuple(float(v) for v in p[::-1])) for p in zyx])
        voxel = np.round(points[:, ::-1] / np.asarray(self.model_spacing)).astype(int)
        ok = np.all((voxel >= 0) & (voxel < np.asarray(self.model_shape)), axis=1)
        ok[ok] = self.brain[tuple(voxel[ok].T)]
        if not ok.any():
            raise ValueError(f"slices {list(idx)[:5]} along axis {axis} do not meet the template's brain")
        z = points[ok, 2] / self.model_spacing[0]
        near = np.abs(z - np.round(z)) < 0.05  # on a template slice: that slice; between two: both
        needed = np.concatenate([np.round(z[near]), np.floor(z[~near]), np.ceil(z[~near])]).astype(int)
        return sorted(set(int(k) for k in np.clip(needed, 0, self.model_shape[0] - 1)))
