"""The anomaly heatmap from a scan and its reconstructions, on the model grid and back: the residual,
smoothing inside the brain, and the default threshold (a card's calibrated one or a percentile)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Sequence

import numpy as np
from scipy import ndimage

if TYPE_CHECKING:
    from .anomaly import AnomalySettings

THRESHOLD_PERCENTILE = 98.0


def default_threshold(heatmap: np.ndarray, mask: np.ndarray) -> float:
    """The ``THRESHOLD_PERCENTILE`` percentile of the heatmap inside the mask."""
    inside = np.asarray(heatmap)[np.asarray(mask, dtype=bool)]
    return float(np.percentile(inside, THRESHOLD_PERCENTILE)) if inside.size else 0.0


def default_rule(card, cfg: "AnomalySettings") -> tuple[dict[str, Any] | None, list[str]]:
    """The card's threshold for ``cfg.method``, calibrated on healthy held-out slices
    (:mod:`napari_diffmed.evaluation.threshold`), and notices: none when the run uses the settings it was
    calibrated at. Without one (None) the default cut is the heatmap's own ``THRESHOLD_PERCENTILE`` percentile."""
    entry = card.metrics.get("anomaly", {}).get("threshold", {}).get(cfg.method)
    if not entry:
        return None, [f"model {card.name!r} has no threshold calibrated for method {cfg.method!r}: the default cut is "
                      f"the {THRESHOLD_PERCENTILE:g}th percentile of this scan's heatmap, which flags "
                      f"{100 - THRESHOLD_PERCENTILE:g}% of any brain, healthy or not"]
    calibrated = entry.get("settings", {})
    differs = [f"{key}={getattr(cfg, key)!r} (calibrated at {value!r})" for key, value in calibrated.items()
               if hasattr(cfg, key) and getattr(cfg, key) != value]
    if not differs:
        return entry, []
    return entry, [f"the default threshold {entry['value']:g} was calibrated at the default settings; this run "
                   f"differs in {', '.join(differs)}, so the share of healthy voxels it flags is not known"]


def on_input(prepared, arr: np.ndarray, image: np.ndarray, fill) -> np.ndarray:
    """Model-grid ``(N, *size)`` -> the input's grid and shape (2D inputs stay 2D)."""
    return prepared.restore(arr, fill=fill).reshape(image.shape)


def model_mask(prepared, brain: np.ndarray) -> np.ndarray:
    """The input-grid mask on the model grid, ``(N, *image_size)`` booleans."""
    volume = brain.reshape(prepared.shape).astype(np.float32)
    if prepared.axis is None:
        return (prepared.grid.to_model(volume, cval=0.0) > 0.5)[None]
    moved = np.moveaxis(volume, prepared.axis, 0)[prepared.indices]
    return prepared.grid.to_model(moved, cval=0.0) > 0.5


def residual(scan: np.ndarray, healthy: np.ndarray, unguided: np.ndarray | None = None) -> np.ndarray:
    """The unsmoothed heatmap in model units: ``|scan - healthy| / 2``, or with an unguided twin
    decoding, how much further from the scan the healthy one lands, ``max(|scan - healthy| -
    |scan - unguided|, 0) / 2``."""
    away = np.abs(scan - healthy)
    if unguided is not None:
        away = np.maximum(away - np.abs(scan - unguided), 0.0)
    return away / 2


def smooth_inside(d: np.ndarray, mask: np.ndarray, sigma: Sequence[float]) -> np.ndarray:
    """Gaussian smoothing of ``d`` over its last axes inside ``mask`` only (normalised convolution)."""
    d = (d * mask).astype(np.float32)
    if max(sigma) == 0:
        return d
    num = ndimage.gaussian_filter(d, [0.0] * (d.ndim - len(sigma)) + list(sigma))
    den = ndimage.gaussian_filter(mask.astype(np.float32), [0.0] * (mask.ndim - len(sigma)) + list(sigma))
    return (num / np.maximum(den, 1e-3) * mask).astype(np.float32)
