"""Procedural lesions planted into images on [0, 1], with their masks (2D or 3D), and the held-out MNI lesion
cases that the anomaly figures are measured on."""

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


# --- Held-out MNI cases with planted lesions (the templates loaded on use) --------------------------
# The two axial slabs of the 1 mm MNI152 template that ``training.templates.held_out_slices`` keeps out
# of training and that contain brain: the lower one is the VALIDATION split (tuning), the upper one the
# EVALUATION split (reported figures). Lesions are of :data:`HELD_OUT_STYLE`.

@dataclass
class LesionCases:
    """``scan``: cases stacked along z; ``indices``: the slab slices scored; ``reference``/``brain``: scan grid."""

    scan: np.ndarray
    reference: np.ndarray
    brain: np.ndarray
    indices: np.ndarray
    spacing: tuple[float, float, float]

    def region(self) -> np.ndarray:
        """Where scores are counted: the scored slab slices, inside the brain."""
        keep = np.zeros(self.scan.shape, dtype=bool)
        keep[self.indices] = True
        return keep & self.brain


def held_out_slabs() -> dict[str, np.ndarray]:
    """Slice indices of the held-out slabs that contain brain: validation (lower), evaluation (upper)."""
    from ..geometry import Normaliser
    from .templates import held_out_slices, load_mni152

    template = load_mni152(1)
    unit = (Normaliser.fit(template.t1).forward(template.t1) + 1) / 2
    held = held_out_slices(len(unit)) & ((unit > 0.15).mean(axis=(1, 2)) > 0.05)
    runs = np.split(np.flatnonzero(held), np.flatnonzero(np.diff(np.flatnonzero(held)) > 1) + 1)
    return {"validation": runs[0], "evaluation": runs[1]}


def make_lesion_cases(split: str, n_cases: int, seed: int = 0, pixel_mm: float = 3.0,
                      stride: int = 1) -> LesionCases:
    """``n_cases`` copies of the template with lesions planted in 3D in the split's slab, stacked along z.

    Lesion radii are in pixels of a model grid of ``pixel_mm``; ``stride`` scores every stride-th slab slice.
    """
    import dataclasses

    from ..geometry import Normaliser
    from .templates import load_mni152

    if split not in ("validation", "evaluation"):
        raise ValueError(f"split must be 'validation' or 'evaluation', got {split!r}")
    template = load_mni152(1)
    norm = Normaliser.fit(template.t1)
    unit = (norm.forward(template.t1) + 1) / 2
    brain = unit > 0.15
    slab = held_out_slabs()[split]
    scale = pixel_mm / min(template.spacing)
    style = dataclasses.replace(HELD_OUT_STYLE, radius=tuple(r * scale for r in HELD_OUT_STYLE.radius))
    rng = np.random.default_rng([seed, 0 if split == "validation" else 1])
    scans, refs = [], []
    for _ in range(n_cases):
        scan, ref = template.t1.copy(), np.zeros(unit.shape, dtype=bool)
        planted, ref[slab] = plant_lesions(unit[slab], brain[slab], rng, style)
        scan[slab] = norm.inverse(planted * 2 - 1)
        scans.append(scan)
        refs.append(ref)
    depth = len(unit)
    indices = np.concatenate([slab[::stride] + i * depth for i in range(n_cases)])
    return LesionCases(np.concatenate(scans), np.concatenate(refs), np.tile(brain, (n_cases, 1, 1)), indices,
                       tuple(float(s) for s in template.spacing))
