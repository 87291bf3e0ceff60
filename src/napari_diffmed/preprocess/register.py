"""Registration of a scan to a template with SimpleITK: an orientation search, a multi-resolution
affine fit (Mattes mutual information), and an optional deformable (demons) refinement.

Transforms follow ITK's convention: they map a point of the template (the fixed image) to the
point of the scan (the moving image) that lands there.
"""

from __future__ import annotations

import itertools
from typing import Sequence

import numpy as np

from .images import foreground, from_itk, to_itk


def orientations(search: bool) -> list[np.ndarray]:
    """Candidate axis orders and flips (signed permutation matrices): all 48 when the scan's orientation
    is unknown, else the identity alone."""
    if not search:
        return [np.eye(3)]
    out = []
    for perm in itertools.permutations(range(3)):
        for signs in itertools.product((1, -1), repeat=3):
            m = np.zeros((3, 3))
            m[range(3), perm] = signs
            out.append(m)
    return out


def _centre(array: np.ndarray, spacing: Sequence[float]) -> np.ndarray:
    """Physical centre of the foreground, ITK (x, y, z) order."""
    coords = np.array(np.nonzero(foreground(array)), dtype=np.float64)
    zyx = coords.mean(axis=1) * np.asarray(spacing, dtype=np.float64)
    return zyx[::-1]


def _method(sampling: float | list[float] = 0.1, seed: int = 0, bins: int = 32):
    import SimpleITK as sitk

    reg = sitk.ImageRegistrationMethod()
    reg.SetMetricAsMattesMutualInformation(numberOfHistogramBins=bins)
    reg.SetMetricSamplingStrategy(reg.RANDOM)
    if isinstance(sampling, list):
        reg.SetMetricSamplingPercentagePerLevel(sampling, seed)
    else:
        reg.SetMetricSamplingPercentage(sampling, seed)
    reg.SetInterpolator(sitk.sitkLinear)
    return reg


def affine(template: np.ndarray, template_spacing: Sequence[float], scan: np.ndarray,
           scan_spacing: Sequence[float], search: bool = False, template_mask: np.ndarray | None = None,
           seed: int = 0):
    """Affine transform (template point -> scan point) and its final Mattes MI (lower is better).

    The fit starts from the foregrounds' centres, tries every axis order and flip when ``search``
    (storage order unknown; the three best by MI at 8 mm are refined and the best kept), then refines a
    similarity transform (at 8 and 4 mm) and an affine one (4 and 2 mm). ``template_mask`` restricts the metric to the template's brain and a margin, so that a skull in
    the scan is not pulled onto the template's brain."""
    import SimpleITK as sitk

    fixed = to_itk(template, template_spacing)
    moving = to_itk(scan, scan_spacing)
    c_fixed, c_moving = _centre(template, template_spacing), _centre(scan, scan_spacing)
    mask = None
    if template_mask is not None:
        mask = sitk.Cast(to_itk(template_mask.astype(np.float32), template_spacing) > 0.5, sitk.sitkUInt8)
    coarse = [max(1, int(round(8.0 / s))) for s in fixed.GetSpacing()]
    f_small, m_small = sitk.Shrink(fixed, coarse), sitk.Shrink(moving, [max(1, int(round(8.0 / s)))
                                                                        for s in moving.GetSpacing()])
    scored = []
    for m in orientations(search):
        tx = sitk.AffineTransform(3)
        tx.SetCenter(tuple(c_fixed))
        tx.SetMatrix(tuple(m.ravel()))
        tx.SetTranslation(tuple(c_moving - c_fixed))
        reg = _method(sampling=0.5, seed=seed)
        reg.SetInitialTransform(tx, inPlace=False)
        scored.append((reg.MetricEvaluate(f_small, m_small), len(scored), tx))
    fixed_level, moving_level = _near(fixed, 2.0), _near(moving, 2.0)
    fits = [_refine(tx, fixed_level, moving_level, mask, seed) for _, _, tx in sorted(scored)[:3 if search else 1]]
    return min(fits, key=lambda fit: fit[1])  # of the three best starts, when the storage order is unknown


def _refine(start, fixed_level, moving_level, mask, seed: int):
    """A similarity, then an affine fit from ``start``; returns the affine transform and its final MI."""
    import SimpleITK as sitk

    stages = [("similarity", sitk.Similarity3DTransform()), ("affine", sitk.AffineTransform(3))]
    current = start
    voxels = np.prod(fixed_level.GetSize())
    for name, kind in stages:  # about 6000 metric samples per level
        shrinks = [2, 1] if name == "affine" else [4, 2]
        reg = _method([min(1.0, 6e3 * f**3 / voxels) for f in shrinks], seed=seed)
        if mask is not None:
            reg.SetMetricFixedMask(mask)
        reg.SetOptimizerAsRegularStepGradientDescent(learningRate=1.0, minStep=1e-3, numberOfIterations=40,
                                                     relaxationFactor=0.6, gradientMagnitudeTolerance=1e-6)
        reg.SetOptimizerScalesFromPhysicalShift()
        reg.SetShrinkFactorsPerLevel(shrinks)
        reg.SetSmoothingSigmasPerLevel([2.0 * f for f in shrinks])
        reg.SmoothingSigmasAreSpecifiedInPhysicalUnitsOn()
        reg.SetInitialTransform(_as(kind, current), inPlace=False)
        out = reg.Execute(fixed_level, moving_level)
        current = sitk.CompositeTransform(out).GetNthTransform(0) if out.GetName() == "CompositeTransform" else out
        current = _as(sitk.AffineTransform(3), current)
    return current, float(reg.GetMetricValue())


def _near(image, mm: float):
    """``image`` smoothed and shrunk to voxels of about ``mm`` (no finer than it is)."""
    import SimpleITK as sitk

    factors = [max(1, int(round(mm / s))) for s in image.GetSpacing()]
    if max(factors) == 1:
        return image
    sigma = [(f - 1) * s / 2 for f, s in zip(factors, image.GetSpacing())]
    return sitk.Shrink(sitk.SmoothingRecursiveGaussian(image, [max(x, 1e-3) for x in sigma]), factors)


def _as(kind, transform):
    """``transform`` (an affine-like) converted to ``kind`` (similarity or affine) with the same centre."""
    import SimpleITK as sitk

    matrix = np.array(transform.GetMatrix()).reshape(3, 3)
    centre = np.array(transform.GetCenter())
    translation = np.array(transform.GetTranslation())
    if isinstance(kind, sitk.Similarity3DTransform):
        u, s, vt = np.linalg.svd(matrix)
        if np.linalg.det(u @ vt) < 0:  # a mirror: similarity cannot hold it, keep the affine as it is
            return _affine(matrix, centre, translation)
        out = sitk.Similarity3DTransform()
        out.SetCenter(tuple(centre))
        out.SetMatrix(tuple((u @ vt).ravel()))
        out.SetScale(float(np.cbrt(np.prod(s))))
        out.SetTranslation(tuple(translation))
        return out
    return _affine(matrix, centre, translation)


def _affine(matrix, centre, translation):
    import SimpleITK as sitk

    out = sitk.AffineTransform(3)
    out.SetCenter(tuple(centre))
    out.SetMatrix(tuple(np.asarray(matrix).ravel()))
    out.SetTranslation(tuple(translation))
    return out


def deformable(template: np.ndarray, template_spacing: Sequence[float], moved: np.ndarray, mask: np.ndarray,
               iterations: int = 40, sigma_mm: float = 3.0):
    """Displacement field (template point -> point of ``moved``, the affinely registered scan on the
    template grid, intensities matched) by diffeomorphic demons at 2 mm, inside the brain mask's box;
    returns ``(field transform, its inverse)``."""
    import SimpleITK as sitk

    factors = [max(1, int(round(2.0 / s))) for s in reversed(list(template_spacing))]
    fixed = sitk.Shrink(to_itk(template * mask, template_spacing), factors)
    moving = sitk.Shrink(to_itk(moved * mask, template_spacing), factors)
    demons = sitk.DiffeomorphicDemonsRegistrationFilter()
    demons.SetNumberOfIterations(iterations)
    demons.SetStandardDeviations(sigma_mm / fixed.GetSpacing()[0])
    field = demons.Execute(fixed, moving)
    inverse = sitk.InvertDisplacementField(field, maximumNumberOfIterations=20)
    as_tx = lambda f: sitk.DisplacementFieldTransform(sitk.Cast(f, sitk.sitkVectorFloat64))  # noqa: E731
    return as_tx(field), as_tx(inverse)


def similarity(a: np.ndarray, b: np.ndarray, mask: np.ndarray) -> float:
    """Pearson correlation of two images inside ``mask`` (1: identical up to a linear map of intensities)."""
    x, y = np.asarray(a, np.float64)[mask], np.asarray(b, np.float64)[mask]
    if x.size < 2 or x.std() == 0 or y.std() == 0:
        return 0.0
    return float(np.corrcoef(x, y)[0, 1])


def field_stats(transform) -> float:
    """Largest displacement (mm) of a displacement-field transform."""
    import SimpleITK as sitk

    field = from_itk(sitk.Cast(transform.GetDisplacementField(), sitk.sitkVectorFloat64))
    return float(np.sqrt((field**2).sum(axis=-1)).max())
