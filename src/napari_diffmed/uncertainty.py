"""What an ensemble's members say together: their mean, votes, variance, entropy and mutual information,
the consensus labels, and the slices ranked by disagreement (numpy only; no model call).

Each member is kept *soft*: its final x0 estimate mapped to a probability ``(x0 + 1) / 2``; its
mask is ``x0 > 0`` (probability > 0.5). From the members, on the input's grid:

- ``mean`` and ``variance`` of the members' soft probabilities;
- ``votes``: the fraction of member masks covering a voxel (the mean of the sampled masks, as in
  Wolleb et al.). A partly trained model can squeeze its soft outputs towards 0.5, and then
  ``votes`` is the better calibrated probability, while ``entropy`` (from the soft mean,
  which has no ties) is the better pointer to errors;
- ``entropy``: binary predictive entropy of ``mean``, in **bits** (0 to 1);
- ``mutual_information`` (bits): ``entropy`` minus the members' mean entropy (the BALD
  decomposition), the part of the uncertainty due to members disagreeing rather than each
  being unsure. It needs the soft members: with binary members it would equal the entropy;
- consensus labels by :func:`fuse` (``votes`` above a threshold, i.e. a majority vote, or
  ``mean`` above it), which re-fuses the stored members without any model call.
"""

from __future__ import annotations

import numpy as np
from scipy.special import xlogy

from .settings import RULES
DEFAULT_RULE = "mean"
DEFAULT_THRESHOLD = 0.5


def binary_entropy(p: np.ndarray) -> np.ndarray:
    """Entropy in bits of a Bernoulli(p), elementwise (0 log 0 = 0)."""
    p = np.clip(np.asarray(p, dtype=np.float32), 0.0, 1.0)
    return (-(xlogy(p, p) + xlogy(1 - p, 1 - p)) / np.log(2)).astype(np.float32)


def summarise(members: np.ndarray) -> dict[str, np.ndarray]:
    """``mean``, ``votes``, ``variance``, ``entropy`` and ``mutual_information`` (bits) of ``(M, ...)``
    member probabilities (see the module's docstring). Identical binary members give 0 everywhere
    but ``mean`` and ``votes``; identical soft members leave only the entropy of their own doubt."""
    m = np.asarray(members, dtype=np.float32)
    if m.ndim < 2 or len(m) == 0:
        raise ValueError(f"expected a stack of members (M, ...), got shape {m.shape}")
    votes = np.zeros(m.shape[1:], dtype=np.float32)
    member_entropy = np.zeros(m.shape[1:], dtype=np.float32)
    for member in m:  # one member at a time: no (M, ...) temporaries
        votes += member > 0.5
        member_entropy += binary_entropy(member)
    mean = m.mean(axis=0, dtype=np.float64).astype(np.float32)
    entropy = binary_entropy(mean)
    return {"mean": mean, "votes": votes / len(m), "variance": m.var(axis=0, dtype=np.float64).astype(np.float32),
            "entropy": entropy, "mutual_information": np.clip(entropy - member_entropy / len(m), 0.0, None)}


def fuse(members: np.ndarray, rule: str = DEFAULT_RULE, threshold: float = DEFAULT_THRESHOLD) -> np.ndarray:
    """Consensus labels (uint8 0/1) from member probabilities ``(M, ...)``; no model call.

    ``majority``: the fraction of members whose mask (probability > 0.5) is set (the result's
    ``votes``) exceeds ``threshold`` (0.5 = a strict majority); ``mean``: the members' mean
    probability exceeds ``threshold``.
    """
    if rule not in RULES:
        raise ValueError(f"unknown fusion rule {rule!r}; choose one of {list(RULES)}")
    if isinstance(threshold, bool) or not isinstance(threshold, (int, float, np.floating)) or not 0 <= threshold <= 1:
        raise ValueError(f"threshold must be a number from 0 to 1, got {threshold!r}")
    m = np.asarray(members)
    score = (m > 0.5).mean(axis=0) if rule == "majority" else m.mean(axis=0, dtype=np.float64)
    return (score > threshold).astype(np.uint8)


def slice_scores(uncertainty: np.ndarray, axis: int = 0) -> np.ndarray:
    """Total uncertainty of each slice along ``axis`` (a 2D map is one slice)."""
    u = np.asarray(uncertainty, dtype=np.float64)
    if u.ndim == 2:
        return np.array([u.sum()])
    if axis not in range(u.ndim):
        raise ValueError(f"axis must be one of {list(range(u.ndim))} for a map of shape {u.shape}, got {axis!r}")
    return np.moveaxis(u, axis, 0).reshape(u.shape[axis], -1).sum(axis=1)


def slice_ranking(uncertainty: np.ndarray, axis: int = 0, keep_zero: bool = False) -> np.ndarray:
    """Slice indices along ``axis``, most disagreement (summed uncertainty) first; slices with none
    are left out unless ``keep_zero``. Ties keep slice order."""
    scores = slice_scores(uncertainty, axis)
    order = np.argsort(-scores, kind="stable")
    return order if keep_zero else order[scores[order] > 0]
