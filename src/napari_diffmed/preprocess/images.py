"""numpy (napari order z, y, x) <-> SimpleITK images, resampling, and N4 bias-field correction.

Scans and the template are placed with their spacing only (origin 0, axes aligned): registration
finds where one lies in the other, so nothing depends on a file's origin being meaningful.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np


def to_itk(array: np.ndarray, spacing: Sequence[float]):
    """A 3D array in napari order ``(z, y, x)`` as a float32 SimpleITK image (ITK spacing is ``x, y, z``)."""
    import SimpleITK as sitk

    image = sitk.GetImageFromArray(np.ascontiguousarray(array, dtype=np.float32))
    image.SetSpacing(tuple(float(s) for s in reversed(list(spacing))))
    return image


def from_itk(image) -> np.ndarray:
    import SimpleITK as sitk

    return sitk.GetArrayFromImage(image)


def resample(array: np.ndarray, spacing: Sequence[float], reference, transform, order: int, fill: float = 0.0,
             smooth: bool = True) -> np.ndarray:
    """``array`` (on a grid of ``spacing``) resampled onto ``reference``'s grid through ``transform``
    (reference point -> array point). Linear maps are smoothed first where the reference is coarser."""
    import SimpleITK as sitk

    image = to_itk(array, spacing)
    if order > 0 and smooth:
        ratio = np.array(reference.GetSpacing()) / np.array(image.GetSpacing())
        sigma = np.maximum(0.0, (ratio - 1.0) / 2.0) * np.array(image.GetSpacing())
        if sigma.max() > 0:
            image = sitk.SmoothingRecursiveGaussian(image, [float(max(s, 1e-3)) for s in sigma])
    interp = sitk.sitkLinear if order > 0 else sitk.sitkNearestNeighbor
    out = sitk.Resample(image, reference, transform, interp, float(fill), sitk.sitkFloat32)
    return from_itk(out)


def foreground(array: np.ndarray) -> np.ndarray:
    """Head (or brain) foreground: above half the Otsu level, holes filled (a skull's dark ring inside the
    scalp too), the largest part kept."""
    from scipy import ndimage
    from skimage.filters import threshold_otsu

    arr = np.asarray(array, dtype=np.float32)
    fg = ndimage.binary_fill_holes(arr > 0.5 * threshold_otsu(arr))
    parts, n = ndimage.label(fg)
    if n > 1:
        fg = parts == 1 + int(np.argmax(ndimage.sum_labels(fg, parts, range(1, n + 1))))
    return fg


def n4_bias_field(array: np.ndarray, spacing: Sequence[float], shrink_mm: float = 6.0,
                  iterations: Sequence[int] = (30, 20)) -> np.ndarray:
    """Multiplicative bias field (mean 1 inside the foreground) by N4, fitted on a copy shrunk to about
    ``shrink_mm`` voxels and evaluated on the full grid; the scan divided by it is the corrected scan."""
    import SimpleITK as sitk

    arr = np.asarray(array, dtype=np.float32)
    shift = float(min(arr.min(), 0.0))  # N4 works on positive intensities
    image = to_itk(arr - shift + 1e-3, spacing)
    mask = to_itk(foreground(arr).astype(np.float32), spacing)
    factors = [max(1, int(round(shrink_mm / s))) for s in image.GetSpacing()]
    small = sitk.Shrink(image, factors)
    small_mask = sitk.Cast(sitk.Shrink(mask, factors) > 0.5, sitk.sitkUInt8)
    corrector = sitk.N4BiasFieldCorrectionImageFilter()
    corrector.SetMaximumNumberOfIterations([int(i) for i in iterations])
    corrector.Execute(small, small_mask)
    log_field = from_itk(corrector.GetLogBiasFieldAsImage(image))
    fg = from_itk(mask) > 0.5
    log_field -= log_field[fg].mean() if fg.any() else 0.0
    return np.exp(log_field).astype(np.float32)
