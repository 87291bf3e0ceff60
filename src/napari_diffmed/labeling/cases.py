"""What a labeling session is made of: its settings, its cases and a case's arrays, and the scans it finds."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

MAPS = ("mean", "votes", "entropy", "mutual_information")
STATES = ("not started", "proposed", "corrected", "accepted")
SCORES = ("expected_errors", "entropy", "mutual_information")
UNITS = {"expected_errors": "voxels/slice", "entropy": "bits", "mutual_information": "bits"}
MASK_SUFFIXES = ("_mask", "_seg", "_label", "_labels")


@dataclass(frozen=True)
class LabelSettings:
    """How proposals are made and ranked. ``slices``: ``"START:STOP"`` or ``"I,J,K"``; None = slices with
    foreground. ``score`` orders the cases and ``slice_score`` a case's slices (see :func:`score_map`).
    ``preprocess`` ("auto" or "none") and ``force`` are those of ``napari-diffmed segment``: the domain
    check, and for models with a template (the shipped ones) N4, registration and brain extraction."""

    model: str | None = None
    members: int = 8
    steps: int = 10
    scheduler: str = "ddim"
    seed: int = 0
    axis: int = 0
    slices: str | None = None
    score: str = "expected_errors"
    slice_score: str = "mutual_information"
    chunk: int = 16
    preprocess: str = "auto"
    force: bool = False


@dataclass
class Case:
    """One scan of the session and where its labeling stands."""

    id: str
    scan: str  # path relative to the scans folder
    state: str = "not started"
    score: float | None = None
    ranking: list[int] = field(default_factory=list)
    slices: list[int] = field(default_factory=list)
    history: list[dict] = field(default_factory=list)  # one entry per proposal: score, fixed voxels, model


@dataclass
class CaseData:
    """A case's arrays on the scan's grid (napari order) and the scan's spatial metadata."""

    scan: np.ndarray | None  # None when only the labels were read (saving)
    metadata: dict
    placement: dict  # scale and translate (or affine) of the scan's napari layers
    labels: np.ndarray
    proposal: np.ndarray | None
    corrected: np.ndarray
    maps: dict[str, np.ndarray]


def list_scans(folder: Path, exclude: Path | None = None) -> dict[str, str]:
    """``{case id: relative path}`` of the scans under ``folder``: NIfTI files (masks and hidden files left
    out) and folders holding a DICOM series (the folder is the case)."""
    from ..dicom import looks_like_dicom
    from ..training.folders import nifti_stem

    found: dict[str, str] = {}
    series: set[Path] = set()
    for path in sorted(folder.rglob("*")):
        rel = path.relative_to(folder)
        if (not path.is_file() or any(p.startswith(".") for p in rel.parts)
                or (exclude is not None and exclude in path.resolve().parents)):
            continue
        if not path.name.lower().endswith((".nii", ".nii.gz")):
            if path.parent not in series and looks_like_dicom(path):
                series.add(path.parent)
            continue
        if nifti_stem(path).lower().endswith(MASK_SUFFIXES):
            continue
        _add(found, "__".join(rel.parts[:-1] + (nifti_stem(path),)), rel)
    for path in sorted(series):
        rel = path.relative_to(folder)
        _add(found, "__".join(rel.parts) or folder.name, rel)
    if not found:
        raise ValueError(f"no scans (NIfTI files .nii, .nii.gz or DICOM series folders) in {folder}")
    return found


def _add(found: dict[str, str], case_id: str, rel: Path) -> None:
    if case_id in found:
        raise ValueError(f"{found[case_id]} and {rel} would both be case {case_id!r}; rename one")
    found[case_id] = rel.as_posix()


def score_map(maps: dict[str, np.ndarray], key: str) -> np.ndarray:
    """Per-voxel uncertainty ``key``: ``"expected_errors"`` is the minority's share of the member votes,
    ``min(votes, 1 - votes)``, the chance that the majority label is wrong if the members are samples of
    the truth; ``"entropy"`` and ``"mutual_information"`` are the ensemble's maps (bits)."""
    if key == "expected_errors":
        return np.minimum(maps["votes"], 1.0 - maps["votes"])
    return maps[key]


def case_score(maps: dict[str, np.ndarray], key: str, n_slices: int) -> float:
    """A case's score: for ``"expected_errors"`` the expected number of wrong voxels per proposed slice (what
    correcting a slice can gain); for the others the mean over the voxels any member labels (bits)."""
    value = score_map(maps, key)
    if key == "expected_errors":
        return float(value.sum() / max(1, n_slices))
    region = maps["votes"] > 0
    return float(value[region].mean()) if region.any() else 0.0


def check_settings(s: LabelSettings) -> None:
    """ValueError naming a setting outside its range."""
    if s.preprocess not in ("auto", "none") or not isinstance(s.force, bool):
        raise ValueError(f"preprocess must be 'auto' or 'none' and force True or False, got {s.preprocess!r}, "
                         f"{s.force!r}")
    for key in ("score", "slice_score"):
        if getattr(s, key) not in SCORES:
            raise ValueError(f"{key} {getattr(s, key)!r} is not one of {list(SCORES)}")
    for key, low, high in (("members", 1, 64), ("steps", 1, 1000), ("chunk", 1, 65536), ("axis", 0, 2)):
        value = getattr(s, key)
        if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
            raise ValueError(f"{key} must be a whole number from {low} to {high}, got {value!r}")


def proposal_slices(scan: np.ndarray, settings: LabelSettings) -> list[int]:
    """The slices proposals cover: the settings' ``slices``, or those with at least 2% foreground."""
    from ..masks import foreground_mask
    from ..slices import parse_slices

    chosen = parse_slices(settings.slices)
    if chosen is not None:
        return chosen
    fg = np.moveaxis(foreground_mask(scan), settings.axis, 0)
    keep = np.flatnonzero(fg.reshape(len(fg), -1).mean(axis=1) >= 0.02)
    return [int(i) for i in keep] or list(range(scan.shape[settings.axis]))


def merge_again(data: CaseData, maps: dict, labels: np.ndarray, ran: list[int] | None, axis: int):
    """Propose again's result into the case: the slices ``ran`` (None: all) take the new maps and labels,
    the others keep theirs, and the corrected voxels keep the person's labels."""
    rows = np.zeros(data.labels.shape[axis], bool)
    rows[ran if ran is not None else slice(None)] = True
    shape = [1] * data.labels.ndim
    shape[axis] = -1
    rows = rows.reshape(shape)
    maps = {key: np.where(rows, maps[key], data.maps.get(key, 0)) for key in MAPS}
    return maps, np.where(data.corrected, data.labels, np.where(rows, labels, data.labels))
