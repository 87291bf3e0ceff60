"""Training data: slices or volumes on a model's grid, augmented, with planted lesions or masks."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from ..geometry import Grid, Normaliser
from .augment import augmentation
from .lesions import TRAIN_STYLE, LesionStyle, plant_lesions
from .templates import Template, held_out_slices


@dataclass
class GridData:
    """Images on [0, 1] (and optional probability maps) on a model grid, split into train and held-out."""

    images: np.ndarray  # (N, *image_size)
    probs: np.ndarray | None  # (N, *image_size) or None
    held_out: np.ndarray  # (N,) bool
    spacing: tuple[float, ...]

    def split(self, held_out: bool) -> "GridData":
        keep = self.held_out == held_out
        probs = None if self.probs is None else self.probs[keep]
        return GridData(self.images[keep], probs, self.held_out[keep], self.spacing)


def template_slices(
    template: Template, image_size: tuple[int, int], spacing: tuple[float, float], prob: str | None = None,
    min_brain_fraction: float = 0.08,
) -> GridData:
    """Axial slices of the template on a 2D model grid; slabs chosen by :func:`held_out_slices` are held out."""
    norm = Normaliser.fit(template.t1)
    grid = Grid.for_volume(template.t1, template.spacing, image_size, spacing)
    images = np.clip((grid.to_model(norm.forward(template.t1), cval=-1.0) + 1.0) / 2.0, 0, 1)
    probs = None
    if prob is not None:
        probs = np.clip(grid.to_model(getattr(template, prob), cval=0.0), 0, 1)
    held = held_out_slices(len(images))
    brain = (images > 0.15).mean(axis=(1, 2))
    keep = brain >= min_brain_fraction
    return GridData(images[keep], None if probs is None else probs[keep], held[keep], tuple(spacing))


def template_volume(template: Template, image_size: tuple[int, int, int], spacing: tuple[float, ...]) -> GridData:
    """The whole template on a 3D model grid (a single training volume; augmentation makes the rest)."""
    norm = Normaliser.fit(template.t1)
    grid = Grid.for_volume(template.t1, template.spacing, image_size, spacing)
    image = np.clip((grid.to_model(norm.forward(template.t1), cval=-1.0) + 1.0) / 2.0, 0, 1)
    return GridData(image[None], None, np.zeros(1, dtype=bool), tuple(spacing))


def check_band(band: "tuple[float, float] | list[float]") -> tuple[float, float]:
    """``(low, high)`` as floats, or ValueError unless ``0 <= low < high <= 1``."""
    low, high = (float(b) for b in band)
    if not 0.0 <= low < high <= 1.0:
        raise ValueError(f"the threshold band must satisfy 0 <= low < high <= 1, got {list(band)}")
    return low, high


def random_threshold_field(shape: tuple[int, ...], rng: np.random.Generator, smooth: float = 6.0,
                           band: tuple[float, float] = (0.0, 1.0)) -> np.ndarray:
    """A smooth random field with uniform marginals on ``band``: ``p > u`` then has mean
    ``clip((p - low) / (high - low), 0, 1)``, which is ``p`` itself for the band (0, 1)."""
    from scipy.special import ndtr

    low, high = check_band(band)
    field = ndimage.gaussian_filter(rng.standard_normal(shape), sigma=smooth, mode="wrap")
    field /= field.std() + 1e-8
    return (low + (high - low) * ndtr(field)).astype(np.float32)


def member_probability(prob: np.ndarray, band: "tuple[float, float] | list[float]" = (0.0, 1.0)) -> np.ndarray:
    """The chance that a mask drawn with :func:`random_threshold_field` on ``band`` covers a voxel of
    probability ``prob``: what a calibrated ensemble's mean estimates."""
    low, high = band
    return np.clip((np.asarray(prob, dtype=np.float32) - low) / (high - low), 0.0, 1.0)


class Batches:
    """Endless augmented batches drawn with a seeded generator.

    ``kind="image"`` yields ``(x, labels)`` with planted lesions on half of the
    draws (class 1) when ``lesion_prob > 0``; ``kind="segmentation"`` yields
    ``(mask, image)`` where the mask is the probability map thresholded by a
    smooth random field uniform on ``threshold_band``: with (0, 1) the ensemble mean
    is calibrated to the map; a narrower band around 0.5 makes the members agree
    outside it, so a few members give a steadier consensus of ``map > 0.5``.
    """

    def __init__(self, data: GridData, batch_size: int, kind: str = "image", lesion_prob: float = 0.0,
                 style: LesionStyle = TRAIN_STYLE, seed: int = 0, augment: bool = True,
                 threshold_band: tuple[float, float] = (0.0, 1.0)) -> None:
        if kind not in ("image", "segmentation"):
            raise ValueError(f"kind must be 'image' or 'segmentation', got {kind!r}")
        if kind == "segmentation" and data.probs is None:
            raise ValueError("segmentation batches need probability maps")
        if len(data.images) == 0:
            raise ValueError("no training images")
        self.data, self.batch_size, self.kind = data, batch_size, kind
        self.lesion_prob, self.style, self.threshold_band = lesion_prob, style, check_band(threshold_band)
        self.rng = np.random.default_rng(seed)
        dims = data.images.ndim - 1
        keys = ("image", "prob") if kind == "segmentation" else ("image",)
        self.augment = augmentation(keys, dims, seed=seed) if augment else None

    def _one(self) -> tuple[np.ndarray, np.ndarray | int]:
        i = self.rng.integers(len(self.data.images))
        item = {"image": self.data.images[i][None]}
        if self.kind == "segmentation":
            item["prob"] = self.data.probs[i][None]
        if self.augment is not None:
            item = self.augment(item)
        image = np.clip(np.asarray(item["image"], dtype=np.float32)[0], 0, 1)
        if self.kind == "segmentation":
            prob = np.clip(np.asarray(item["prob"], dtype=np.float32)[0], 0, 1)
            mask = prob > random_threshold_field(prob.shape, self.rng, band=self.threshold_band)
            return mask.astype(np.float32) * 2 - 1, image * 2 - 1
        label = 0
        if self.lesion_prob > 0 and self.rng.random() < self.lesion_prob:
            image, _ = plant_lesions(image, image > 0.15, self.rng, self.style)
            label = 1
        return image * 2 - 1, label

    def __iter__(self):
        return self

    def __next__(self):
        import torch

        items = [self._one() for _ in range(self.batch_size)]
        x = torch.from_numpy(np.stack([a for a, _ in items])[:, None].astype(np.float32))
        if self.kind == "segmentation":
            return x, torch.from_numpy(np.stack([b for _, b in items])[:, None].astype(np.float32))
        return x, torch.tensor([b for _, b in items], dtype=torch.long)
