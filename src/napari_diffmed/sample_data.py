"""Sample data that works offline: a procedural brain phantom with a lesion, and the MNI152 templates."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage


@dataclass(frozen=True)
class Phantom:
    """A brain-like volume (z, y, x) with a planted lesion and its mask."""

    image: np.ndarray
    mask: np.ndarray
    spacing: tuple[float, ...]
    translate: tuple[float, ...]


def make_phantom(
    shape: tuple[int, int, int] = (24, 96, 96), spacing: tuple[float, float, float] = (3.0, 2.0, 2.0),
    seed: int = 0, lesion: bool = True,
) -> Phantom:
    """Deterministic from ``seed``: skull ring, grey-matter rim, white matter, ventricles and one lesion."""
    rng = np.random.default_rng(seed)
    zz, yy, xx = np.meshgrid(*[(np.arange(n) - (n - 1) / 2) * s for n, s in zip(shape, spacing)], indexing="ij")
    ry, rx = shape[1] * spacing[1] * 0.36, shape[2] * spacing[2] * 0.30
    rz = max(shape[0] * spacing[0] * 0.55, 1e-3)
    r = np.sqrt((yy / ry) ** 2 + (xx / rx) ** 2 + (zz / rz) ** 2)
    wobble = ndimage.gaussian_filter(rng.standard_normal(shape), sigma=(1, 4, 4)) * 0.6
    brain = r + 0.08 * wobble < 1.0
    wm = r + 0.15 * wobble < 0.72
    vent = (np.abs(xx) < rx * 0.12) & (np.abs(yy + ry * 0.1) < ry * 0.35) & (r < 0.5)
    skull = (r >= 1.05) & (r < 1.18)
    image = np.zeros(shape, dtype=np.float32)
    image[brain] = 0.55
    image[wm] = 0.8
    image[vent] = 0.15
    image[skull] = 0.4
    image = ndimage.gaussian_filter(image, sigma=(0.5, 0.8, 0.8)) + rng.normal(0, 0.015, shape).astype(np.float32)
    mask = np.zeros(shape, dtype=np.uint8)
    if lesion:
        centre = np.array([0.0, ry * 0.35, rx * 0.4])
        radius = min(ry, rx) * 0.18
        d = np.sqrt(((zz - centre[0]) / 1.5) ** 2 + (yy - centre[1]) ** 2 + (xx - centre[2]) ** 2)
        lesion_mask = (d < radius) & wm
        image[lesion_mask] = 1.05
        mask[lesion_mask] = 1
    image = np.clip(image, 0, None).astype(np.float32) * 1000.0
    translate = tuple(-(n - 1) / 2 * s for n, s in zip(shape, spacing))
    return Phantom(image, mask, tuple(float(s) for s in spacing), translate)


def phantom_sample():
    """napari sample: the phantom and its lesion as layers in physical space."""
    p = make_phantom()
    common = {"scale": p.spacing, "translate": p.translate}
    return [
        (p.image, {"name": "phantom", "colormap": "gray", **common}, "image"),
        (p.mask, {"name": "phantom lesion", "opacity": 0.5, **common}, "labels"),
    ]


def mni152_sample():
    """napari sample: the MNI152 T1 template with grey- and white-matter probability maps (needs nilearn)."""
    from .training.templates import load_mni152

    t = load_mni152(resolution=2)
    kw = {k: v for k, v in t.layer_kwargs.items() if k in ("scale", "translate", "affine")}
    return [
        (t.t1, {"name": "MNI152 T1", "colormap": "gray", "metadata": t.layer_kwargs["metadata"], **kw}, "image"),
        (t.gm, {"name": "MNI152 GM", "colormap": "magenta", "blending": "additive", "opacity": 0.4,
                "visible": False, **kw}, "image"),
        (t.wm, {"name": "MNI152 WM", "colormap": "cyan", "blending": "additive", "opacity": 0.4,
                "visible": False, **kw}, "image"),
    ]
