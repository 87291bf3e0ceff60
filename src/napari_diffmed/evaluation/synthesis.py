"""Realism, diversity and memorisation of synthetic images against the training images (numpy/scipy only).

All images are on [0, 1] (the range synthesis returns and training uses). SSIM is
scikit-image's ``structural_similarity(a, b, data_range=1)`` (7-pixel uniform
window, sample covariance, K1 = 0.01, K2 = 0.03, mean over the window-cropped
image), computed for whole stacks of pairs at once.

- realism: the median over samples of the SSIM to the nearest training image
  (NN-SSIM); compare with the same figure for real held-out images (``baseline``);
- memorisation: the fraction of samples whose NN-SSIM exceeds a threshold (0.95);
- diversity: the mean SSIM over pairs of distinct samples (lower is more diverse);
- intensity: the 1-Wasserstein distance between the pooled intensity distributions.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
from scipy import ndimage

K1, K2, WIN = 0.01, 0.03, 7


def _stack(images: np.ndarray, name: str) -> np.ndarray:
    arr = np.asarray(images, dtype=np.float64)
    if arr.ndim not in (3, 4) or len(arr) == 0:
        raise ValueError(f"{name} must be a non-empty stack (N, H, W) or (N, D, H, W), got shape {arr.shape}")
    if not np.all(np.isfinite(arr)):
        raise ValueError(f"{name} contains NaN or infinite values")
    return arr


def _moments(x: np.ndarray, win: int) -> tuple[np.ndarray, np.ndarray]:
    size = (1,) + (win,) * (x.ndim - 1)
    return ndimage.uniform_filter(x, size=size), ndimage.uniform_filter(x * x, size=size)


def ssim_matrix(a: np.ndarray, b: np.ndarray, data_range: float = 1.0, win_size: int = WIN,
                max_elements: int = 1 << 22) -> np.ndarray:
    """SSIM of every image in ``a`` with every image in ``b``: an ``(len(a), len(b))`` matrix.

    Equal to ``skimage.metrics.structural_similarity(a[i], b[j], data_range=data_range)``
    (float64). Pairs are processed in chunks of at most ``max_elements`` voxels.
    """
    a, b = _stack(a, "a"), _stack(b, "b")
    if a.shape[1:] != b.shape[1:]:
        raise ValueError(f"images of shape {a.shape[1:]} and {b.shape[1:]} cannot be compared")
    if win_size % 2 == 0 or win_size > min(a.shape[1:]):
        raise ValueError(f"win_size must be odd and at most the smallest image side {min(a.shape[1:])}, got {win_size}")
    spatial = a.ndim - 1
    size = (1, 1) + (win_size,) * spatial
    n_pix = win_size**spatial
    cov_norm = n_pix / (n_pix - 1.0)
    c1, c2 = (K1 * data_range) ** 2, (K2 * data_range) ** 2
    pad = (win_size - 1) // 2
    crop = (slice(None), slice(None)) + (slice(pad, -pad if pad else None),) * spatial
    ux, uxx = _moments(a, win_size)
    uy, uyy = _moments(b, win_size)
    vx, vy = cov_norm * (uxx - ux * ux), cov_norm * (uyy - uy * uy)
    out = np.empty((len(a), len(b)), dtype=np.float64)
    chunk = max(1, max_elements // (len(b) * int(np.prod(a.shape[1:]))))
    for start in range(0, len(a), chunk):
        sl = slice(start, start + chunk)
        uxy = ndimage.uniform_filter(a[sl, None] * b[None], size=size)
        mx, my = ux[sl, None], uy[None]
        vxy = cov_norm * (uxy - mx * my)
        num = (2 * mx * my + c1) * (2 * vxy + c2)
        den = (mx * mx + my * my + c1) * (vx[sl, None] + vy[None] + c2)
        out[sl] = (num / den)[crop].reshape(num.shape[0], num.shape[1], -1).mean(axis=-1)
    return out


def nearest_neighbour_ssim(samples: np.ndarray, training: np.ndarray, **kwargs) -> tuple[np.ndarray, np.ndarray]:
    """For each sample, the highest SSIM to any training image and that image's index."""
    matrix = ssim_matrix(samples, training, **kwargs)
    index = matrix.argmax(axis=1)
    return matrix[np.arange(len(matrix)), index], index


def pairwise_ssim(samples: np.ndarray, **kwargs) -> float:
    """Mean SSIM over pairs of distinct samples (1 = all identical; lower = more diverse)."""
    samples = _stack(samples, "samples")
    if len(samples) < 2:
        raise ValueError("diversity needs at least two samples")
    matrix = ssim_matrix(samples, samples, **kwargs)
    return float(matrix[np.triu_indices(len(samples), k=1)].mean())


def intensity_distance(a: np.ndarray, b: np.ndarray) -> float:
    """1-Wasserstein distance between the pooled intensities of two stacks (in intensity units)."""
    from scipy.stats import wasserstein_distance

    return float(wasserstein_distance(np.ravel(a), np.ravel(b)))


@dataclass(frozen=True)
class SynthesisMetrics:
    """Per-sample nearest neighbours and the summary figures; :meth:`summary` is JSON-ready."""

    nn_ssim: np.ndarray  # (n_samples,) SSIM to the nearest training image
    nn_index: np.ndarray  # (n_samples,) index of that training image
    nn_ssim_median: float
    memorised_fraction: float
    memorisation_threshold: float
    pairwise_ssim_mean: float | None
    intensity_distance: float
    baseline_nn_ssim_median: float | None  # real held-out images to training, when given

    def summary(self) -> dict[str, Any]:
        return {k: v for k, v in asdict(self).items() if k not in ("nn_ssim", "nn_index")}


def synthesis_metrics(
    samples: np.ndarray, training: np.ndarray, held_out: np.ndarray | None = None, threshold: float = 0.95,
    **kwargs,
) -> SynthesisMetrics:
    """Realism, memorisation, diversity and intensity figures of ``samples`` against ``training``.

    ``held_out`` (real images not trained on) gives the NN-SSIM a real image reaches,
    the scale against which the samples' NN-SSIM is read.
    """
    samples, training = _stack(samples, "samples"), _stack(training, "training")
    nn, index = nearest_neighbour_ssim(samples, training, **kwargs)
    baseline = None
    if held_out is not None:
        baseline = float(np.median(nearest_neighbour_ssim(held_out, training, **kwargs)[0]))
    return SynthesisMetrics(
        nn_ssim=nn, nn_index=index, nn_ssim_median=float(np.median(nn)),
        memorised_fraction=float(np.mean(nn > threshold)), memorisation_threshold=float(threshold),
        pairwise_ssim_mean=pairwise_ssim(samples, **kwargs) if len(samples) > 1 else None,
        intensity_distance=intensity_distance(samples, training), baseline_nn_ssim_median=baseline,
    )
