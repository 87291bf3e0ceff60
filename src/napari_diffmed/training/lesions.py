"""Procedural lesions planted into images on [0, 1], with their masks (2D or 3D)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage


@dataclass(frozen=True)
class LesionStyle:
    """Families of lesion shape, size (radius in pixels of the model grid) and contrast."""

    shapes: tuple[str, ...] = ("ellipse", "blob")
    radius: tuple[float, float] = (2.0, 6.0)
    contrast: tuple[float, float] = (0.3, 0.6)
    polarity: tuple[str, ...] = ("bright", "dark")
    count: tuple[int, int] = (1, 1)


# What the shipped models see in training, and a different family kept for evaluation.
TRAIN_STYLE = LesionStyle()
HELD_OUT_STYLE = LesionStyle(
    shapes=("ring", "lobed"), radius=(3.0, 8.0), contrast=(0.25, 0.5), polarity=("bright", "dark"), count=(1, 2)
)


def _shape_mask(shape: tuple[int, ...], centre: np.ndarray, radius: float, kind: str, rng: np.random.Generator):
    grids = np.meshgrid(*[np.arange(n, dtype=np.float32) for n in shape], indexing="ij")
    axes = radius * rng.uniform(0.6, 1.4, size=len(shape))
    d = np.stack([g - c for g, c in zip(grids, centre)])
    if len(shape) == 2:  # random in-plane rotation
        a = rng.uniform(0, np.pi)
        rot = np.array([[np.cos(a), -np.sin(a)], [np.sin(a), np.cos(a)]], dtype=np.float32)
        d = np.einsum("ij,j...->i...", rot, d)
    r = np.sqrt(sum((di / ai) ** 2 for di, ai in zip(d, axes)))
    if kind in ("blob", "lobed"):
        amount = 0.35 if kind == "blob" else 0.6
        field = ndimage.gaussian_filter(rng.standard_normal(shape).astype(np.float32), sigma=radius / 2)
        field /= np.abs(field).max() + 1e-6
        r = r + amount * field
    soft = np.clip(1.5 - r, 0.0, 1.0)  # one-pixel soft edge
    if kind == "ring":
        soft = soft * np.clip(r - 0.25, 0.0, 1.0) * 1.6 + 0.4 * soft
    return np.clip(soft, 0.0, 1.0)


def plant_lesions(
    image: np.ndarray, brain: np.ndarray, rng: np.random.Generator, style: LesionStyle = TRAIN_STYLE
) -> tuple[np.ndarray, np.ndarray]:
    """Plant lesions inside ``brain`` of an image on [0, 1]; return the image and the binary mask."""
    image = np.asarray(image, dtype=np.float32)
    inside = ndimage.binary_erosion(brain, iterations=2)
    candidates = np.argwhere(inside)
    mask = np.zeros(image.shape, dtype=bool)
    if len(candidates) == 0:
        return image.copy(), mask
    out = image.copy()
    for _ in range(rng.integers(style.count[0], style.count[1] + 1)):
        centre = candidates[rng.integers(len(candidates))].astype(np.float32)
        kind = style.shapes[rng.integers(len(style.shapes))]
        soft = _shape_mask(image.shape, centre, rng.uniform(*style.radius), kind, rng) * inside
        sign = 1.0 if style.polarity[rng.integers(len(style.polarity))] == "bright" else -1.0
        out = np.clip(out + sign * rng.uniform(*style.contrast) * soft, 0.0, 1.0)
        mask |= soft > 0.5
    return out, mask
