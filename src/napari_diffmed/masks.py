"""Masks: the brain of a skull-stripped scan, painted masks checked and made binary, and masks moved
between voxel grids."""

from __future__ import annotations

from typing import Sequence

import numpy as np
from scipy import ndimage


def foreground_mask(image: np.ndarray) -> np.ndarray:
    """Brain mask of a skull-stripped scan: above 0.4 x the Otsu level, holes filled slice by slice,
    connected parts of at least 5% of the largest kept. Scans with skull need a mask given explicitly."""
    from skimage.filters import threshold_otsu

    from .geometry import Normaliser

    arr = np.asarray(image, dtype=np.float32)
    unit = (Normaliser.fit(arr, 0.5, 99.5).forward(arr) + 1) / 2
    fg = unit > 0.4 * threshold_otsu(unit)
    plane = ndimage.generate_binary_structure(2, 1)
    if fg.ndim == 3:  # every slice at once: a structure without through-plane neighbours fills slice by slice
        plane = np.stack([np.zeros_like(plane), plane, np.zeros_like(plane)])
    fg = ndimage.binary_fill_holes(fg, structure=plane)
    parts, n = ndimage.label(fg)
    if n > 1:
        sizes = ndimage.sum_labels(fg, parts, range(1, n + 1))
        fg = np.concatenate([[False], sizes >= 0.05 * sizes.max()])[parts]
    return fg


def as_binary_mask(mask: np.ndarray, shape: Sequence[int]) -> tuple[np.ndarray, list[str]]:
    """A boolean mask from bool, 0/1 or integer labels (any non-zero label); clear errors otherwise."""
    m = np.asarray(mask)
    if m.shape != tuple(shape):
        raise ValueError(f"mask of shape {m.shape} does not match the image's shape {tuple(shape)}; "
                         "paint it on the image's grid or resample it (masks.mask_on_grid)")
    if m.dtype == bool:
        return m.copy(), []
    if not np.issubdtype(m.dtype, np.number) or np.issubdtype(m.dtype, np.complexfloating):
        raise ValueError(f"mask must hold 0/1 or integer labels, got dtype {m.dtype}")
    notes = []
    if np.issubdtype(m.dtype, np.floating):
        odd = m[(m != 0) & (m != 1)]
        if odd.size:
            raise ValueError(f"mask must be binary (0/1) or integer labels, got values such as {odd.flat[0]!r}; "
                             "threshold it first (e.g. mask > 0.5)")
    elif m.size and (m.max() > 1 or m.min() < 0):
        labels = np.unique(m[m != 0])
        notes.append(f"mask labels {labels[:8].tolist()} are all treated as the region to fill")
    return m != 0, notes


def resample_mask(mask: np.ndarray, mask_to_world: np.ndarray, image_shape: Sequence[int],
                  image_to_world: np.ndarray) -> np.ndarray:
    """Nearest-neighbour resampling of a mask onto an image's voxel grid, given both (ndim+1)^2 affines."""
    m = np.asarray(mask)
    n = len(image_shape)
    if m.ndim != n or np.shape(mask_to_world) != (n + 1, n + 1) or np.shape(image_to_world) != (n + 1, n + 1):
        raise ValueError(f"cannot resample a {m.ndim}D mask onto a {n}D image")
    to_mask = np.linalg.inv(np.asarray(mask_to_world, float)) @ np.asarray(image_to_world, float)
    out = ndimage.affine_transform((m != 0).astype(np.uint8), to_mask, output_shape=tuple(image_shape),
                                   order=0, mode="constant", cval=0)
    return out.astype(bool)


def mask_on_grid(mask: np.ndarray, mask_to_world: np.ndarray, image_shape: Sequence[int],
                 image_to_world: np.ndarray, mask_name: str = "the mask",
                 image_name: str = "the scan") -> tuple[np.ndarray, list[str]]:
    """``mask`` on an image's voxel grid, and notes for the user: a copy where both grids agree, else
    resampled (nearest neighbour, as booleans) with a note saying so."""
    mask, shape = np.asarray(mask), tuple(int(n) for n in image_shape)
    if mask.ndim != len(shape):
        raise ValueError(f"{mask_name} has {mask.ndim} axes {mask.shape} but {image_name} has {len(shape)} {shape}")
    tolerance = 1e-4 * max(1.0, float(np.abs(image_to_world).max()))
    if mask.shape == shape and np.allclose(mask_to_world, image_to_world, atol=tolerance):
        return mask.copy(), []
    out = resample_mask(mask, mask_to_world, shape, image_to_world)
    return out, [f"{mask_name} {mask.shape} lies on another grid than {image_name} {shape}; resampled onto "
                 f"{image_name}'s grid (nearest neighbour): {int((mask != 0).sum())} -> {int(out.sum())} voxels"]
