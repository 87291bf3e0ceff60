"""Map scans to a model's grid and back: intensity normalisation and resampling.

A model sees a fixed physical pixel size (``card.spacing``) on a fixed grid
(``card.image_size``). :class:`Grid` resamples the last ``spatial_dims`` axes of
an array onto that grid, centred on the scan's foreground, and back again;
leading axes (slices, members, proposals) pass through untouched.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np
from scipy import ndimage


@dataclass(frozen=True)
class Normaliser:
    """Linear map of intensities ``[low, high] -> [-1, 1]`` (clipped), and back."""

    low: float
    high: float

    @classmethod
    def fit(cls, volume: np.ndarray, lower: float = 0.5, upper: float = 99.5) -> "Normaliser":
        finite = np.asarray(volume, dtype=np.float32)
        if not np.all(np.isfinite(finite)):
            raise ValueError("the image contains NaN or infinite values; fix or mask them before running a model")
        low, high = np.percentile(finite, [lower, upper])
        if not high > low:
            raise ValueError(f"the image has no intensity range (percentiles {lower} and {upper} are both {low})")
        return cls(float(low), float(high))

    def forward(self, x: np.ndarray) -> np.ndarray:
        y = (np.asarray(x, dtype=np.float32) - self.low) / (self.high - self.low)
        return np.clip(y * 2.0 - 1.0, -1.0, 1.0)

    def inverse(self, y: np.ndarray) -> np.ndarray:
        return ((np.asarray(y, dtype=np.float32) + 1.0) / 2.0) * (self.high - self.low) + self.low


def foreground_centre(volume: np.ndarray, axes: int) -> np.ndarray:
    """Centre of mass (voxel coordinates) of the bright part over the last ``axes`` axes."""
    vol = np.asarray(volume, dtype=np.float32)
    low, high = np.percentile(vol, [1, 99])
    mask = vol > low + 0.1 * (high - low)
    if not mask.any():
        return (np.array(vol.shape[-axes:], dtype=np.float64) - 1) / 2
    coords = np.nonzero(mask)[-axes:]
    return np.array([c.mean() for c in coords], dtype=np.float64)


@dataclass(frozen=True)
class Grid:
    """Resampling between an input grid and a model grid over the last ``len(out_shape)`` axes."""

    in_shape: tuple[int, ...]
    in_spacing: tuple[float, ...]
    out_shape: tuple[int, ...]
    out_spacing: tuple[float, ...]
    centre: tuple[float, ...]

    @classmethod
    def for_volume(
        cls, volume: np.ndarray, spacing: Sequence[float], out_shape: Sequence[int], out_spacing: Sequence[float]
    ) -> "Grid":
        k = len(out_shape)
        if volume.ndim < k:
            raise ValueError(f"need at least {k} axes, got an array of shape {volume.shape}")
        centre = foreground_centre(volume, k)
        return cls(
            tuple(int(s) for s in volume.shape[-k:]),
            tuple(float(s) for s in list(spacing)[-k:]),
            tuple(int(s) for s in out_shape),
            tuple(float(s) for s in out_spacing),
            tuple(float(c) for c in centre),
        )

    @property
    def ratio(self) -> np.ndarray:
        """Input voxels per model voxel along each axis."""
        return np.array(self.out_spacing) / np.array(self.in_spacing)

    def _transform(self, data: np.ndarray, forward: bool, order: int, cval: float) -> np.ndarray:
        k = len(self.out_shape)
        lead = data.ndim - k
        c_in = np.array(self.centre)
        c_out = (np.array(self.out_shape) - 1) / 2.0
        if forward:
            scale, offset, shape = self.ratio, c_in - c_out * self.ratio, self.out_shape
            sigma = np.maximum(0.0, (self.ratio - 1.0) / 2.0)
            if order > 0 and sigma.max() > 0:
                data = ndimage.gaussian_filter(data, sigma=[0.0] * lead + list(sigma), mode="nearest")
        else:
            scale, offset, shape = 1.0 / self.ratio, c_out - c_in / self.ratio, self.in_shape
        matrix = np.concatenate([np.ones(lead), scale])
        full_offset = np.concatenate([np.zeros(lead), offset])
        out_shape = tuple(data.shape[:lead]) + tuple(shape)
        return ndimage.affine_transform(
            np.asarray(data, dtype=np.float32), matrix, full_offset, output_shape=out_shape,
            order=order, mode="constant", cval=cval, prefilter=False,
        )

    def to_model(self, data: np.ndarray, order: int = 1, cval: float = -1.0) -> np.ndarray:
        """Resample ``(..., *in_shape)`` onto the model grid ``(..., *out_shape)``."""
        if tuple(data.shape[-len(self.in_shape):]) != self.in_shape:
            raise ValueError(f"array of shape {data.shape} does not end with the grid's {self.in_shape}")
        return self._transform(data, True, order, cval)

    def from_model(self, data: np.ndarray, order: int = 1, cval: float = 0.0) -> np.ndarray:
        """Resample ``(..., *out_shape)`` back onto the input grid ``(..., *in_shape)``."""
        if tuple(data.shape[-len(self.out_shape):]) != self.out_shape:
            raise ValueError(f"array of shape {data.shape} does not end with the model grid {self.out_shape}")
        return self._transform(data, False, order, cval)
