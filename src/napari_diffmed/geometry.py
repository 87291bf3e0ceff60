"""Where voxels lie, and mapping scans to a model's grid and back.

:func:`world_matrix` is the one voxel -> world matrix of a layer's placement (masks go onto an
image's grid with :func:`napari_diffmed.masks.mask_on_grid`).

A model sees a fixed physical pixel size (``card.spacing``) on a fixed grid
(``card.image_size``). :class:`Grid` resamples the last ``spatial_dims`` axes of
an array onto that grid, centred on the scan's foreground, and back again;
leading axes (slices, members, proposals) pass through untouched.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping, Sequence

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


def world_matrix(placement: Mapping[str, Any], ndim: int) -> np.ndarray:
    """The (ndim+1)^2 voxel -> world matrix of a layer's placement, as napari composes it:
    ``affine @ translate @ rotate @ shear @ scale``.

    ``placement`` holds napari layer keywords or attributes (the reader's, a layer's state): ``scale``,
    ``translate``, ``rotate`` (a matrix, or an angle in degrees for 2D), ``shear`` (a matrix or its
    upper-triangular values) and ``affine``; any may be missing. Vectors and matrices with fewer axes than
    ``ndim`` apply to the last axes, longer ones give their last ``ndim`` axes.
    """
    def vector(key: str, default: float) -> np.ndarray:
        out = np.full(ndim, default, dtype=float)
        given = placement.get(key)
        if given is not None:
            given = np.asarray(given, dtype=float).ravel()[-ndim:]
            out[ndim - len(given):] = given
        return out

    def square(value: Any, size: int) -> np.ndarray:
        """``value`` as a size x size matrix on the last axes of an identity."""
        m = np.asarray(value, dtype=float)
        full = np.eye(size)
        k = min(m.shape[0], size)
        full[size - k:, size - k:] = m[-k:, -k:]
        return full

    linear = np.diag(vector("scale", 1.0))
    shear = placement.get("shear")
    if shear is not None:
        s = np.asarray(shear, dtype=float)
        if s.ndim == 1:  # upper-triangular values, row by row
            n = int(round((1 + np.sqrt(1 + 8 * s.size)) / 2))
            if n * (n - 1) // 2 != s.size:
                raise ValueError(f"shear {s.tolist()} is neither a matrix nor the upper triangle of one")
            m = np.eye(n)
            m[np.triu_indices(n, 1)] = s
            s = m
        linear = square(s, ndim) @ linear
    rotate = placement.get("rotate")
    if rotate is not None:
        r = np.asarray(rotate, dtype=float)
        if r.ndim == 0:  # a 2D angle in degrees
            c, s = np.cos(np.radians(r)), np.sin(np.radians(r))
            r = np.array([[c, -s], [s, c]])
        elif r.ndim != 2:
            raise ValueError(f"rotate {r.tolist()}: give a rotation matrix (or an angle in degrees for 2D)")
        linear = square(r, ndim) @ linear
    matrix = np.eye(ndim + 1)
    matrix[:ndim, :ndim] = linear
    matrix[:ndim, ndim] = vector("translate", 0.0)
    if placement.get("affine") is not None:
        outer = np.asarray(placement["affine"], dtype=float)
        if outer.ndim != 2 or outer.shape[0] != outer.shape[1] or outer.shape[0] < 2:
            raise ValueError(f"affine of shape {outer.shape} is not a square matrix")
        matrix = square(outer, ndim + 1) @ matrix
    return matrix

