"""Is this scan within the model's reach? A check before every run, against the training domain that the
model card records (``card.domain``): contrast, spacing, plane, field of view, skull, orientation.

Findings that make a result doubtful are warned about with :class:`DomainWarning`; one that makes it
meaningless (a T2, b0 or BOLD-like contrast for a T1 model) raises :class:`OutOfDomainError` unless
``force``. Each finding is a dict ``{"code", "message", "refuse"}`` for the provenance.
"""

from __future__ import annotations

import warnings
from typing import TYPE_CHECKING, Any, Sequence

import numpy as np

if TYPE_CHECKING:
    from .models.card import ModelCard

PLANES = {0: "axial", 1: "coronal", 2: "sagittal"}  # napari axis of a scan opened by the reader -> plane
SKULL_VOLUME_ML = 2600.0  # a brain (even the large MNI152) stays under this; a head with its scalp does not


class DomainWarning(UserWarning):
    """The scan lies outside what the model was trained on; the result may not mean what it seems."""


class OutOfDomainError(ValueError):
    """The scan is so far outside the model's training domain that a result would be meaningless."""


def check_scan(
    image: np.ndarray, spacing: Sequence[float] | None, card: "ModelCard", *, axis: int | None = 0,
    metadata: dict[str, Any] | None = None, preprocessed: bool = False,
) -> list[dict[str, Any]]:
    """Findings for ``image`` against ``card.domain`` (generic ones only where the card has no domain).

    ``metadata`` is the reader's (source shape, squeezed axes, axis codes); ``preprocessed`` says that the
    scan will be registered and brain-extracted first, which settles orientation, plane and skull."""
    arr = np.asarray(image)
    domain = getattr(card, "domain", None) or {}
    meta = metadata or {}
    found: list[dict[str, Any]] = []

    def add(code: str, message: str, refuse: bool = False) -> None:
        found.append({"code": code, "message": message, "refuse": refuse})

    if spacing is None:
        add("spacing_unknown", "no spacing given: 1 mm voxels and the reader's axis order (z, y, x = I-S, P-A, "
            "L-R) are assumed; pass the scan's spacing (and open it with the reader) to be sure")
    source = tuple(meta.get("source_shape", ()))
    if len(source) == 4 and arr.ndim <= 3:
        add("volume_of_4d", f"this is one volume of a 4D series {source} (fMRI or diffusion?), not a "
            f"structural scan{' of ' + domain['modality'] if domain.get('modality') else ''}")
    if not domain:
        return found
    modality = domain.get("modality", "T1")
    plane = domain.get("plane")
    if plane and card.spatial_dims == 2 and not preprocessed:
        squeezed = tuple(meta.get("squeezed", ()))
        if arr.ndim == 2 and len(squeezed) == 1 and PLANES.get(squeezed[0]) != plane:
            add("plane", f"this is a {PLANES.get(squeezed[0])} slice; the model was trained on {plane} slices")
        elif arr.ndim == 2 and not squeezed:
            add("plane_unknown", f"the plane of a 2D array is not known; the model expects {plane} slices")
        elif arr.ndim == 3 and axis is not None and PLANES.get(axis) != plane:
            add("plane", f"slicing along axis {axis} gives {PLANES.get(axis)} slices of a scan opened by the reader;"
                f" the model was trained on {plane} slices (axis 0)")
    if arr.ndim < 2 or arr.size < 64:
        return found
    from .preprocess.intensity import contrast_signature, looks_inverted

    signature = contrast_signature(arr)
    if modality == "T1" and looks_inverted(signature):
        add("contrast", f"the intensities look like a T2, b0 or BOLD image (CSF bright: skew {signature['skew']:+.2f}, "
            f"{signature['dark_fraction']:.0%} dark and {signature['bright_fraction']:.0%} bright voxels), not "
            f"the {modality} the model was trained on", refuse=True)
    if spacing is not None and arr.ndim == 3:
        sp = np.asarray(spacing, dtype=float)
        in_plane = np.delete(sp, axis if axis in (0, 1, 2) and card.spatial_dims == 2 else 0)
        if in_plane.max() > 1.5 * max(card.spacing):
            add("resolution", f"in-plane voxels of {in_plane.max():g} mm are coarser than the model's "
                f"{max(card.spacing):g} mm")
        from .preprocess.images import foreground

        step = max(1, int(round((arr.size / 2e6) ** (1 / 3))))  # about 2 million voxels are enough
        fg = foreground(arr[::step, ::step, ::step])
        volume_ml = float(fg.sum() * np.prod(sp) * step**3 / 1000.0)
        if not preprocessed and not domain.get("skull", False) and volume_ml > SKULL_VOLUME_ML:
            add("skull", f"the scan looks like a whole head ({volume_ml:.0f} ml above background; a brain is under "
                f"{SKULL_VOLUME_ML:.0f}); the model was trained on skull-stripped brains: extract the brain "
                "(preprocess='auto')")
        extent = np.asarray(domain.get("brain_extent_mm", [0, 0, 0]), dtype=float)
        fov = np.asarray(arr.shape) * sp
        if not preprocessed and np.any(fov < 0.6 * extent):
            add("field_of_view", f"the field of view {np.round(fov).astype(int).tolist()} mm covers less than 60% "
                f"of a brain ({extent.astype(int).tolist()} mm) along some axis")
        touches = [i for i in range(3) if fg.take(0, axis=i).any() or fg.take(-1, axis=i).any()]
        if not preprocessed and len(touches) >= 2:
            add("coverage", f"the brain reaches the edge of the volume along axes {touches}: it is cropped")
    return found


def describe(volume: np.ndarray, spacing: Sequence[float], *, template: str | None, space: str | None,
             plane: str | None, modality: str = "T1", skull: bool = False, resolution_mm: int | None = None
             ) -> dict[str, Any]:
    """The ``domain`` a model card records for training scans like ``volume`` (napari order, ``spacing`` mm):
    what :func:`check_scan` compares a scan with (contrast signature, spacing, field of view, brain extent
    and volume) beside what the training says (template and its resolution, space, plane, modality, skull)."""
    from .preprocess.images import foreground
    from .preprocess.intensity import contrast_signature

    vol = np.asarray(volume, dtype=np.float32)
    sp = np.asarray([float(s) for s in spacing])
    fg = foreground(vol)
    extent = [float((np.ptp(np.flatnonzero(fg.any(axis=tuple(j for j in range(3) if j != i)))) + 1) * sp[i])
              for i in range(3)]
    return {"template": template, "template_resolution_mm": resolution_mm, "space": space, "plane": plane,
            "modality": modality, "contrast": contrast_signature(vol), "spacing_mm": sp.tolist(),
            "fov_mm": (np.asarray(vol.shape) * sp).tolist(), "brain_extent_mm": extent,
            "brain_volume_ml": round(float(fg.sum() * np.prod(sp) / 1000.0), 1), "skull": bool(skull)}


def report(findings: list[dict[str, Any]], force: bool = False, stacklevel: int = 3) -> list[dict[str, Any]]:
    """Warn (:class:`DomainWarning`) about each finding; raise :class:`OutOfDomainError` for the first one
    that refuses, unless ``force``. Returns the findings (for the provenance)."""
    for finding in findings:
        if finding["refuse"] and not force:
            raise OutOfDomainError(finding["message"] + "; pass force=True (--force) to run anyway")
    for finding in findings:
        warnings.warn(f"{finding['code']}: {finding['message']}", DomainWarning, stacklevel=stacklevel)
    return findings
