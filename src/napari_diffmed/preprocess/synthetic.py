"""A T1 head made from a skull-stripped brain: CSF, skull and scalp shells around it (tests, benchmarks, docs)."""

from __future__ import annotations

from typing import Sequence

import numpy as np


def add_skull(brain: np.ndarray, spacing: Sequence[float], seed: int = 0, noise: float = 0.02) -> np.ndarray:
    """``brain`` (background 0) padded by 16 mm on every side and wrapped in T1-like shells by distance from
    the brain: CSF 0-3 mm (dark), bone 3-8 mm (darker), scalp fat 8-14 mm (bright), then background with a
    little noise."""
    from scipy import ndimage

    pad = [(int(np.ceil(16.0 / s)),) * 2 for s in spacing]
    vol = np.pad(np.asarray(brain, dtype=np.float32), pad)
    mask = ndimage.binary_fill_holes(vol > 0.02 * vol.max())
    dist = ndimage.distance_transform_edt(~mask, sampling=tuple(float(s) for s in spacing))
    level = float(np.median(vol[mask]))
    head = vol.copy()
    for low, high, value in ((0.0, 3.0, 0.15), (3.0, 8.0, 0.05), (8.0, 14.0, 1.1)):
        head[(dist > low) & (dist <= high)] = value * level
    rng = np.random.default_rng(seed)
    head = ndimage.gaussian_filter(head, 0.6) + rng.normal(0.0, noise * level, head.shape).astype(np.float32)
    return np.abs(head).astype(np.float32)
