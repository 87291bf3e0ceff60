"""Pixel-level scores of an anomaly heatmap against a reference lesion mask (numpy only).

Every score is computed over the pixels of an optional ``mask`` (e.g. the brain).
A pixel is called anomalous when its score is ``>= threshold``. The held-out lesion cases the
scores are reported on are made in :mod:`napari_diffmed.training.lesions`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from ..training.lesions import LesionCases


def _flatten(scores: np.ndarray, reference: np.ndarray, mask: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
    scores, reference = np.asarray(scores, dtype=np.float64), np.asarray(reference) > 0
    if scores.shape != reference.shape:
        raise ValueError(f"heatmap of shape {scores.shape} and reference of shape {reference.shape} differ")
    if mask is not None:
        mask = np.asarray(mask, dtype=bool)
        if mask.shape != scores.shape:
            raise ValueError(f"mask of shape {mask.shape} does not match the heatmap's {scores.shape}")
        return scores[mask], reference[mask]
    return scores.ravel(), reference.ravel()


def _curve(scores: np.ndarray, positive: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """True and false positives at each distinct threshold, highest first, and those thresholds."""
    order = np.argsort(-scores, kind="mergesort")
    s, y = scores[order], positive[order]
    last = np.r_[np.flatnonzero(np.diff(s)), len(s) - 1]  # last index of each run of equal scores
    tps = np.cumsum(y)[last].astype(np.float64)
    fps = (last + 1) - tps
    return tps, fps, s[last]


def _check(positive: np.ndarray) -> None:
    if positive.all() or not positive.any():
        raise ValueError("the reference must contain both lesion and non-lesion pixels inside the mask")


def auroc(scores: np.ndarray, reference: np.ndarray, mask: np.ndarray | None = None) -> float:
    """Area under the ROC curve (ties count half, as in the Mann-Whitney statistic)."""
    s, y = _flatten(scores, reference, mask)
    _check(y)
    tps, fps, _ = _curve(s, y)
    tpr = np.r_[0.0, tps / tps[-1]]
    fpr = np.r_[0.0, fps / fps[-1]]
    return float(np.sum(np.diff(fpr) * (tpr[1:] + tpr[:-1]) / 2))


def auprc(scores: np.ndarray, reference: np.ndarray, mask: np.ndarray | None = None) -> float:
    """Average precision: the precision at each threshold weighted by the gain in recall."""
    s, y = _flatten(scores, reference, mask)
    _check(y)
    tps, fps, _ = _curve(s, y)
    precision = tps / (tps + fps)
    recall = np.r_[0.0, tps / tps[-1]]
    return float(np.sum(np.diff(recall) * precision))


def dice(prediction: np.ndarray, reference: np.ndarray, mask: np.ndarray | None = None) -> float:
    """Dice overlap of two binary masks (1 when both are empty)."""
    p, r = _flatten(prediction, reference, mask)
    p = p > 0
    denominator = p.sum() + r.sum()
    return 1.0 if denominator == 0 else float(2 * np.sum(p & r) / denominator)


def best_dice(scores: np.ndarray, reference: np.ndarray, mask: np.ndarray | None = None) -> tuple[float, float]:
    """The highest Dice over all thresholds, and the threshold (``scores >= threshold``) that gives it."""
    s, y = _flatten(scores, reference, mask)
    _check(y)
    tps, fps, thresholds = _curve(s, y)
    d = 2 * tps / (tps + fps + tps[-1])
    i = int(np.argmax(d))
    return float(d[i]), float(thresholds[i])


def anomaly_scores(
    heatmap: np.ndarray, reference: np.ndarray, threshold: float | None = None, mask: np.ndarray | None = None
) -> dict[str, Any]:
    """AUROC, AUPRC, best achievable Dice (and its threshold) and, given a threshold, the Dice there."""
    best, at = best_dice(heatmap, reference, mask)
    out: dict[str, Any] = {
        "auroc": auroc(heatmap, reference, mask), "auprc": auprc(heatmap, reference, mask),
        "best_dice": best, "best_threshold": at,
    }
    if threshold is not None:
        out["threshold"] = float(threshold)
        out["dice"] = dice(np.asarray(heatmap) >= threshold, reference, mask)
    return out


def median_filter_heatmap(cases: "LesionCases", card, size: int = 9, smoothing_mm: float = 3.0) -> np.ndarray:
    """Classical baseline on the model's grid: |slice - median filter of ``size`` pixels| / 2, smoothed
    inside the foreground mask like the model's heatmap, mapped back to the scan."""
    from scipy import ndimage

    from ..heatmap import model_mask, on_input, smooth_inside
    from ..masks import foreground_mask
    from ..volumes import prepare

    prepared = prepare(cases.scan, cases.spacing, card, indices=cases.indices)
    residual = np.abs(prepared.data - ndimage.median_filter(prepared.data, size=(1, size, size))) / 2
    brain = foreground_mask(cases.scan)
    heat = smooth_inside(residual, model_mask(prepared, brain), [smoothing_mm / s for s in card.spacing])
    return on_input(prepared, heat, cases.scan, 0.0) * brain


def score_cases(heatmap: np.ndarray, cases: "LesionCases", threshold: float | None = None) -> dict[str, Any]:
    """:func:`anomaly_scores` over the cases' scored region, rounded to 4 decimals."""
    return {k: round(v, 4) for k, v in anomaly_scores(heatmap, cases.reference, threshold, cases.region()).items()}
