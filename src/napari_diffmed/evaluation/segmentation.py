"""Scores of a segmentation ensemble against a reference: overlap, boundary distance, diversity,
whether the uncertainty points at the errors, calibration, and a classical baseline.

Dice and the 95th-percentile Hausdorff distance come from ``monai.metrics`` (imported lazily);
the rest is numpy. Masks are anything whose non-zero voxels are the structure. Every score can be
restricted to a ``region`` (e.g. the slices the ensemble saw, or the brain).
"""

from __future__ import annotations

import warnings
from typing import Any, Sequence

import numpy as np

from ..uncertainty import DEFAULT_RULE
from .anomaly import auroc


def _binary(mask: np.ndarray, region: np.ndarray | None = None) -> np.ndarray:
    m = np.asarray(mask) > 0
    return m if region is None else m & np.asarray(region, dtype=bool)


def _same_shape(*arrays: np.ndarray) -> None:
    shapes = {np.shape(a) for a in arrays if a is not None}
    if len(shapes) > 1:
        raise ValueError(f"arrays of different shapes cannot be compared: {sorted(shapes)}")


def dice(prediction: np.ndarray, reference: np.ndarray, region: np.ndarray | None = None) -> float:
    """Dice overlap of two binary masks (MONAI ``compute_dice``); 1 when both are empty."""
    import torch
    from monai.metrics import compute_dice

    _same_shape(prediction, reference, region)
    p, r = (torch.from_numpy(_binary(a, region)[None, None].astype(np.float32)) for a in (prediction, reference))
    return float(compute_dice(p, r, include_background=True, ignore_empty=False)[0, 0])


def hd95(prediction: np.ndarray, reference: np.ndarray, spacing: Sequence[float] | None = None,
         region: np.ndarray | None = None) -> float:
    """95th-percentile symmetric Hausdorff distance in mm (MONAI ``compute_hausdorff_distance``).

    0 when both masks are empty; NaN when exactly one is (the distance is undefined).
    """
    from monai.metrics import compute_hausdorff_distance

    _same_shape(prediction, reference, region)
    p, r = _binary(prediction, region), _binary(reference, region)
    if not p.any() and not r.any():
        return 0.0
    if not p.any() or not r.any():
        return float("nan")
    sp = None if spacing is None else [float(s) for s in spacing][-p.ndim:]
    with warnings.catch_warnings():  # MONAI 1.5+ warns about its own internal argument
        warnings.simplefilter("ignore", FutureWarning)
        out = compute_hausdorff_distance(p[None, None], r[None, None], include_background=True, percentile=95,
                                         spacing=sp)
    return float(out[0, 0])


def iou_distance(a: np.ndarray, b: np.ndarray) -> float:
    """1 - intersection over union of two binary masks (0 when both are empty)."""
    a, b = np.asarray(a) > 0, np.asarray(b) > 0
    union = np.count_nonzero(a | b)
    return 0.0 if union == 0 else 1.0 - np.count_nonzero(a & b) / union


def _mean_distance(xs: np.ndarray, ys: np.ndarray) -> float:
    return float(np.mean([[iou_distance(x, y) for y in ys] for x in xs]))


def generalised_energy_distance(samples: np.ndarray, references: np.ndarray,
                                region: np.ndarray | None = None) -> float:
    """GED^2 = 2 E[d(S, Y)] - E[d(S, S')] - E[d(Y, Y')] with d = 1 - IoU (Kohl et al. 2018).

    ``samples`` is ``(S, ...)`` (e.g. the members' hard masks); ``references`` ``(R, ...)`` or one mask
    ``(...)`` (then E[d(Y, Y')] = 0). Expectations run over all pairs, a sample with itself included,
    as in Kohl et al.'s code. 0 means the ensemble matches the references' distribution.
    """
    s = np.asarray(samples) > 0
    y = np.asarray(references) > 0
    y = y[None] if y.ndim == s.ndim - 1 else y
    if s.ndim < 2 or s.shape[1:] != y.shape[1:]:
        raise ValueError(f"samples {s.shape} and references {np.shape(references)} do not fit (S, ...) and (R, ...)")
    if region is not None:
        keep = np.asarray(region, dtype=bool)
        s, y = s & keep, y & keep
    return 2 * _mean_distance(s, y) - _mean_distance(s, s) - _mean_distance(y, y)


def uncertainty_auroc(uncertainty: np.ndarray, prediction: np.ndarray, reference: np.ndarray,
                      region: np.ndarray | None = None) -> float:
    """AUROC of the uncertainty map for finding the voxels where ``prediction`` is wrong.

    0.5 is chance; NaN when the prediction is all right (or all wrong) inside ``region``.
    """
    _same_shape(uncertainty, prediction, reference, region)
    errors = (np.asarray(prediction) > 0) != (np.asarray(reference) > 0)
    inside = errors if region is None else errors[np.asarray(region, dtype=bool)]
    if inside.all() or not inside.any():
        return float("nan")
    return auroc(uncertainty, errors, region)


def expected_calibration_error(probability: np.ndarray, target: np.ndarray, bins: int = 10,
                               region: np.ndarray | None = None) -> float:
    """ECE: over ``bins`` equal-width bins of the predicted probability, the voxel-weighted mean of
    |mean prediction - mean target|. ``target`` is a binary mask or a probability map (its
    expectation); 0 is perfectly calibrated."""
    _same_shape(probability, target, region)
    p = np.asarray(probability, dtype=np.float64)
    t = np.asarray(target, dtype=np.float64)
    if region is not None:
        keep = np.asarray(region, dtype=bool)
        p, t = p[keep], t[keep]
    p, t = p.ravel(), t.ravel()
    if p.size == 0:
        raise ValueError("no voxels to score (the region is empty)")
    which = np.clip((np.clip(p, 0, 1) * bins).astype(int), 0, bins - 1)
    count = np.bincount(which, minlength=bins)
    gap = np.abs(np.bincount(which, p, bins) - np.bincount(which, t, bins))
    return float(gap.sum() / count.sum())


def multi_otsu_wm(image: np.ndarray, mask: np.ndarray | None = None, classes: int = 3) -> np.ndarray:
    """Classical baseline: multi-Otsu over the voxels in ``mask`` (default: the foreground of a
    skull-stripped scan); the brightest of ``classes`` classes is white matter on T1."""
    from skimage.filters import threshold_multiotsu

    from ..masks import foreground_mask

    arr = np.asarray(image, dtype=np.float32)
    inside = foreground_mask(arr) if mask is None else np.asarray(mask, dtype=bool)
    if inside.shape != arr.shape or not inside.any():
        raise ValueError(f"the mask (shape {inside.shape}) must fit the image's {arr.shape} and not be empty")
    top = threshold_multiotsu(arr[inside], classes=classes)[-1]
    return ((arr > top) & inside).astype(np.uint8)


def segmentation_scores(
    result, reference: np.ndarray, spacing: Sequence[float] | None = None, rule: str = DEFAULT_RULE,
    threshold: float = 0.5, region: np.ndarray | None = None, probability: np.ndarray | None = None,
) -> dict[str, Any]:
    """The scores a user checks for an :class:`~napari_diffmed.ensemble.EnsembleResult` against a
    reference mask, inside ``region`` (default: the voxels the ensemble saw, ``result.covered``).

    Dice and HD95 (mm) of the consensus, mean single-member Dice, GED of the members' hard masks vs
    the reference, AUROC of the entropy for the consensus errors, and, given a ``probability``
    reference map, the expected calibration errors of the ensemble's mean (``ece``) and of its
    votes (``ece_votes``).
    """
    region = result.covered if region is None else np.asarray(region, dtype=bool)
    _same_shape(result.mean, reference, region, probability)
    if not region.any():
        raise ValueError("no voxels to score: the region (or the part of the scan the ensemble saw) is empty")
    box = tuple(slice(int(i.min()), int(i.max()) + 1) for i in np.nonzero(region))  # scores only look in here
    region, labels = region[box], result.labels(rule, threshold)[box]
    ref = _binary(np.asarray(reference)[box], region)
    hard = (result.members[(slice(None), *box)] > 0.5) & region
    out = {
        "dice": dice(labels, ref, region), "hd95": hd95(labels, ref, spacing, region),
        "member_dice": float(np.mean([dice(m, ref) for m in hard])),
        "ged": generalised_energy_distance(hard, ref),
        "uncertainty_auroc": uncertainty_auroc(result.entropy[box], labels, ref, region),
    }
    if probability is not None:
        target = np.asarray(probability)[box]
        out["ece"] = expected_calibration_error(result.mean[box], target, region=region)
        out["ece_votes"] = expected_calibration_error(result.votes[box], target, region=region)
    return out
