"""What a labeling session is made of: its settings, its cases and a case's arrays, and the scans it finds."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

STATES = ("not started", "proposed", "corrected", "accepted")
SCORES = ("entropy", "mutual_information")
MASK_SUFFIXES = ("_mask", "_seg", "_label", "_labels")


@dataclass(frozen=True)
class LabelSettings:
    """How proposals are made. ``slices``: ``"START:STOP"`` or ``"I,J,K"``; None = slices with foreground."""

    model: str | None = None
    members: int = 8
    steps: int = 10
    scheduler: str = "ddim"
    seed: int = 0
    axis: int = 0
    slices: str | None = None
    score: str = "entropy"
    chunk: int = 16


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

    scan: np.ndarray
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


def check_settings(s: LabelSettings) -> None:
    """ValueError naming a setting outside its range."""
    if s.score not in SCORES:
        raise ValueError(f"score {s.score!r} is not one of {list(SCORES)}")
    for key, low, high in (("members", 1, 64), ("steps", 1, 1000), ("chunk", 1, 65536), ("axis", 0, 2)):
        value = getattr(s, key)
        if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
            raise ValueError(f"{key} must be a whole number from {low} to {high}, got {value!r}")
