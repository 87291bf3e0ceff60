"""The MNI152 templates bundled with nilearn, as napari-ordered arrays (installs offline)."""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import numpy as np

from ..io import image_to_layer_data


@dataclass(frozen=True)
class Template:
    """A template volume in napari order (z, y, x) with its spacing and layer kwargs."""

    t1: np.ndarray
    gm: np.ndarray
    wm: np.ndarray
    spacing: tuple[float, float, float]
    layer_kwargs: dict


@lru_cache(maxsize=2)
def load_mni152(resolution: int = 1) -> Template:
    """T1 template and grey/white-matter probability maps from nilearn (no download)."""
    try:
        from nilearn import datasets
    except ImportError as err:  # pragma: no cover - nilearn is a dependency
        raise ImportError("the MNI152 templates need nilearn: pip install nilearn") from err
    t1, kwargs, _ = image_to_layer_data(datasets.load_mni152_template(resolution=resolution), "MNI152_T1")
    gm, _, _ = image_to_layer_data(datasets.load_mni152_gm_template(resolution=resolution), "MNI152_GM")
    wm, _, _ = image_to_layer_data(datasets.load_mni152_wm_template(resolution=resolution), "MNI152_WM")
    spacing = tuple(float(s) for s in kwargs["metadata"]["spacing"])
    return Template(t1, np.clip(gm, 0, 1), np.clip(wm, 0, 1), spacing, kwargs)


def held_out_slices(n_slices: int, slab: int = 12, every: int = 6, phase: int = 3) -> np.ndarray:
    """Boolean mask over slice indices marking slabs kept out of training."""
    idx = np.arange(n_slices)
    return (idx // slab) % every == phase
