"""Intensities: quantile matching to the template inside the brain (and its inverse), the skull test, and
the contrast signature that tells a T1 from a T2, b0 or BOLD image."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

QUANTILES = np.linspace(0.0, 100.0, 51)


@dataclass(frozen=True)
class QuantileMap:
    """Piecewise-linear, increasing map of scan intensities onto the template's (matched quantiles)."""

    scan: np.ndarray
    template: np.ndarray

    @classmethod
    def fit(cls, scan_values: np.ndarray, template_values: np.ndarray) -> "QuantileMap":
        q_scan = np.percentile(scan_values, QUANTILES)
        q_tmpl = np.percentile(template_values, QUANTILES)
        step = 1e-6 * max(1.0, float(np.ptp(q_scan)))
        q_scan = np.maximum.accumulate(q_scan) + step * np.arange(len(q_scan))  # strictly increasing
        q_tmpl = np.maximum.accumulate(q_tmpl) + 1e-6 * np.arange(len(q_tmpl))
        return cls(q_scan, q_tmpl)

    def forward(self, x: np.ndarray) -> np.ndarray:
        return np.interp(x, self.scan, self.template).astype(np.float32)

    def inverse(self, y: np.ndarray) -> np.ndarray:
        return np.interp(y, self.template, self.scan).astype(np.float32)


def skull_ratio(moved: np.ndarray, brain: np.ndarray, spacing: tuple[float, ...]) -> float:
    """Mean intensity in a shell 3-12 mm outside the (registered) brain over the brain's median: about 0 for
    a skull-stripped scan (background), well above 0 where scalp and skull are there."""
    from scipy import ndimage

    def grow(mm: float) -> np.ndarray:
        iters = max(1, int(round(mm / min(spacing))))
        return ndimage.binary_dilation(brain, iterations=iters)

    shell = grow(12.0) & ~grow(3.0)
    inside = np.median(moved[brain]) if brain.any() else 0.0
    if not shell.any() or inside <= 0:
        return 0.0
    return float(moved[shell].mean() / inside)


def contrast_signature(volume: np.ndarray) -> dict[str, float]:
    """How the foreground's intensities spread: the skewness and the fractions of the darkest and brightest
    of three Otsu classes. A T1 brain has most voxels bright (negative skew, few dark voxels); a T2, b0 or
    BOLD image has them dark with a bright CSF tail (positive skew, few bright voxels)."""
    from scipy import stats
    from skimage.filters import threshold_multiotsu

    from .images import foreground

    vol = np.asarray(volume, dtype=np.float32)
    step = max(1, int(round((vol.size / 2e6) ** (1 / 3)))) if vol.ndim == 3 else 1
    small = vol[::step, ::step, ::step] if vol.ndim == 3 else vol
    none = {"skew": 0.0, "dark_fraction": 0.0, "bright_fraction": 0.0}
    if np.ptp(small) == 0:
        return none
    x = small[foreground(small)]
    low, high = np.percentile(x, [1, 99]) if x.size >= 100 else (0.0, 0.0)
    if not high > low:  # too few voxels, or too few grey levels, to tell
        return none
    x = np.clip((x - low) / (high - low), 0, 1)
    try:
        classes = np.digitize(x, threshold_multiotsu(x, 3))
    except ValueError:
        return none
    fractions = np.bincount(classes, minlength=3) / x.size
    return {"skew": round(float(stats.skew(x)), 3), "dark_fraction": round(float(fractions[0]), 3),
            "bright_fraction": round(float(fractions[2]), 3)}


def looks_inverted(signature: dict[str, float]) -> bool:
    """Bulk dark with a bright tail (CSF bright): a T2, b0 or BOLD-like contrast, not a T1."""
    return signature["skew"] > 0.4 and signature["dark_fraction"] > 2.0 * signature["bright_fraction"]
