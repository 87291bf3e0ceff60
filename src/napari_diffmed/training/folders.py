"""Training data from a user's folder of NIfTI files: images, optional masks, optional class labels.

Layout (see docs/training.md)::

    folder/sub01.nii.gz            an image (3D volume); subfolders are searched too
    folder/sub01_mask.nii.gz       its mask (also _seg, _label, _labels), or masks/sub01.nii.gz
    labels.csv                     optional: columns file,class

Files are read and put on the model grid by the code inference uses for a scan
(:func:`~napari_diffmed.io.read_nifti`, then :func:`~napari_diffmed.volumes.prepare_grid`:
closest canonical orientation, the card's percentile normalisation, anti-aliasing and one
resampling onto the foreground-centred model grid), so a model trains on what it is shown.
"""

from __future__ import annotations

import csv
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np

from .datasets import Batches, GridData

MASK_SUFFIXES = ("_mask", "_seg", "_label", "_labels")
MASK_DIRS = ("masks", "labels")
SIDECAR_SUFFIXES = (".csv", ".tsv", ".json", ".txt", ".md")
NIFTI_EXTS = (".nii.gz", ".nii")


@dataclass(frozen=True)
class Item:
    """One image file, its mask (segmentation) and its class index (conditional models)."""

    subject: str
    image: Path
    mask: Path | None = None
    label: int | None = None


@dataclass
class FolderData(GridData):
    """:class:`GridData` with the class label and subject of every slice or volume."""

    labels: np.ndarray | None = None  # (N,) class index, or None for unconditional data
    subjects: np.ndarray | None = None  # (N,) subject name of each item

    def split(self, held_out: bool) -> "FolderData":
        keep = self.held_out == held_out
        return FolderData(
            self.images[keep], None if self.probs is None else self.probs[keep], self.held_out[keep], self.spacing,
            None if self.labels is None else self.labels[keep], None if self.subjects is None else self.subjects[keep],
        )


class LabelledBatches(Batches):
    """Augmented image batches whose labels are the items' classes (for class-conditional models)."""

    def __init__(self, data: FolderData, batch_size: int, seed: int = 0, augment: bool = True) -> None:
        if data.labels is None:
            raise ValueError("labelled batches need class labels")
        super().__init__(data, batch_size, "image", seed=seed, augment=augment)

    def _one(self) -> tuple[np.ndarray, int]:
        i = self.rng.integers(len(self.data.images))
        item = {"image": self.data.images[i][None]}
        if self.augment is not None:
            item = self.augment(item)
        image = np.clip(np.asarray(item["image"], dtype=np.float32)[0], 0, 1)
        return image * 2 - 1, int(self.data.labels[i])


def nifti_stem(path: Path) -> str:
    name = path.name
    return name[: -len(".nii.gz")] if name.lower().endswith(".nii.gz") else name[: -len(".nii")]


def _is_nifti(path: Path) -> bool:
    return path.name.lower().endswith(NIFTI_EXTS)


def _subject(rel_stem: str) -> str:
    """``sub-01``/``sub01`` from the name when present (sessions share a subject), else the name."""
    found = re.search(r"sub-?[A-Za-z0-9]+", Path(rel_stem).name)
    return found.group(0) if found else rel_stem


def _find_mask(folder: Path, image: Path) -> Path | None:
    stem, rel_dir = nifti_stem(image), image.parent.relative_to(folder)
    candidates = [image.parent / f"{stem}{suffix}{ext}" for suffix in MASK_SUFFIXES for ext in NIFTI_EXTS]
    candidates += [folder / d / rel_dir / f"{stem}{ext}" for d in MASK_DIRS for ext in NIFTI_EXTS]
    return next((c for c in candidates if c.is_file()), None)


def _read_csv(path: Path) -> dict[str, str]:
    if not path.is_file():
        raise FileNotFoundError(f"labels file {path} does not exist")
    with open(path, newline="") as fh:
        reader = csv.DictReader(fh)
        fields = {f.strip().lower(): f for f in reader.fieldnames or []}
        if "file" not in fields or "class" not in fields:
            raise ValueError(f"{path} needs the columns 'file' and 'class'; it has {reader.fieldnames}")
        rows = [(row[fields["file"]].strip(), row[fields["class"]].strip()) for row in reader]
    return {f: c for f, c in rows if f}


def _csv_key(table: dict[str, str], rel: str, name: str, stem: str) -> str | None:
    return next((k for k in (rel, name, stem) if k in table), None)


def scan_folder(
    folder: str | Path, task: str = "image", classes: Sequence[str] | None = None, labels_csv: str | Path | None = None,
) -> tuple[list[Item], list[str]]:
    """List the images (with masks and classes) in ``folder``; return the items and the class names."""
    folder = Path(folder)
    if task not in ("image", "segmentation"):
        raise ValueError(f"task must be 'image' or 'segmentation', got {task!r}")
    if not folder.is_dir():
        raise FileNotFoundError(f"data folder {folder} does not exist")
    files = sorted(p for p in folder.rglob("*") if p.is_file() and not any(
        part.startswith(".") for part in p.relative_to(folder).parts))
    other = [p for p in files if not _is_nifti(p) and p.suffix.lower() not in SIDECAR_SUFFIXES]
    if other:
        names = ", ".join(str(p.relative_to(folder)) for p in other[:5])
        raise ValueError(f"{folder} holds files that are not NIfTI (.nii, .nii.gz): {names}"
                         f"{' ...' if len(other) > 5 else ''}; convert them or move them out of the folder")
    images = [p for p in files if _is_nifti(p) and p.relative_to(folder).parts[0] not in MASK_DIRS
              and not nifti_stem(p).lower().endswith(MASK_SUFFIXES)]
    if not images:
        raise ValueError(f"no NIfTI images (.nii, .nii.gz) in {folder}")
    if classes is not None and len(set(classes)) != len(classes):
        raise ValueError(f"class names must be distinct, got {list(classes)}")
    table = _read_csv(Path(labels_csv)) if labels_csv is not None else None
    if table is not None and classes is None:
        classes = sorted(set(table.values()))
    classes = list(classes or [])
    if classes and task != "image":
        raise ValueError("classes are for image models; segmentation models are conditioned on the image")
    items, missing, used = [], [], set()
    for path in images:
        rel = str(path.relative_to(folder).as_posix())
        rel_stem = rel[: len(rel) - len(path.name)] + nifti_stem(path)
        mask = _find_mask(folder, path) if task == "segmentation" else None
        if task == "segmentation" and mask is None:
            missing.append(rel)
        label = None
        if table is not None:
            key = _csv_key(table, rel, path.name, nifti_stem(path))
            if key is None:
                raise ValueError(f"{rel} is not listed in {labels_csv} (column 'file')")
            used.add(key)
            if table[key] not in classes:
                raise ValueError(f"{labels_csv}: class {table[key]!r} of {key} is not one of {classes}")
            label = classes.index(table[key])
        elif classes:
            tokens = {t.lower() for t in re.split(r"[/_\-. ]+", rel_stem)}
            hits = [i for i, c in enumerate(classes) if c.lower() in tokens]
            if len(hits) != 1:
                raise ValueError(f"cannot tell the class of {rel} from its name: {len(hits)} of {classes} appear in "
                                 "it; name files like sub01_lesion.nii.gz, use class subfolders or give --labels CSV")
            label = hits[0]
        items.append(Item(_subject(rel_stem), path, mask, label))
    if missing:
        raise ValueError(f"no mask for {', '.join(missing[:5])}{' ...' if len(missing) > 5 else ''}: name masks "
                         f"like sub01_mask.nii.gz beside the image, or put them in masks/ under the same name")
    if table is not None and set(table) - used:
        raise ValueError(f"{labels_csv} lists files that are not in {folder}: {sorted(set(table) - used)[:5]}")
    return items, classes


def held_out_subjects(items: Sequence[Item], fraction: float = 0.2, seed: int = 0) -> set[str]:
    """Subjects kept out of training: a seeded choice, alternating between classes, at least one when possible."""
    if not 0.0 <= fraction < 1.0:
        raise ValueError(f"held-out fraction must be in [0, 1), got {fraction}")
    subjects = sorted({it.subject for it in items})
    if fraction == 0 or len(subjects) < 2:
        return set()
    n_held = min(len(subjects) - 1, max(1, round(fraction * len(subjects))))
    rng = np.random.default_rng(seed)
    label_of = {it.subject: it.label if it.label is not None else -1 for it in items}
    groups = [[s for s in subjects if label_of[s] == lab] for lab in sorted(set(label_of.values()))]
    queues = [[str(s) for s in rng.permutation(g)] for g in groups]
    order = []
    while any(queues):
        order += [q.pop(0) for q in queues if q]
    return set(order[:n_held])


def load_item(item: Item, image_size: Sequence[int], spacing: Sequence[float], lower: float = 0.5,
              upper: float = 99.5) -> tuple[np.ndarray, np.ndarray | None]:
    """One image (and mask) on the model grid, read and prepared exactly as inference reads and prepares a
    scan (:func:`~napari_diffmed.io.read_nifti`, :func:`~napari_diffmed.volumes.prepare_grid`): 2D grids take
    the axial slices, 3D grids the volume. The image comes on [0, 1], the mask as a 0..1 fraction."""
    from ..volumes import prepare_grid

    image, kwargs = _read_volume(item.image)
    try:
        prepared = prepare_grid(image, kwargs["metadata"]["spacing"], image_size, spacing, lower, upper, axis=0)
    except ValueError as err:
        raise ValueError(f"{item.image}: {err}") from None
    on_grid = (prepared.data + 1.0) / 2.0
    if item.mask is None:
        return on_grid, None
    mask, _ = _read_volume(item.mask)
    if mask.shape != image.shape:
        raise ValueError(f"mask {item.mask} has shape {mask.shape[::-1]} but its image {item.image} has "
                         f"{image.shape[::-1]}")
    inside = (mask > 0).astype(np.float32)
    fraction = prepared.grid.to_model(inside[prepared.indices] if prepared.axis is not None else inside[None], cval=0.0)
    return on_grid, np.clip(fraction, 0, 1)


def _read_volume(path: Path) -> tuple[np.ndarray, dict]:
    """A 3D NIfTI volume through the reader (canonical orientation, napari order), or a clear error."""
    from ..io import read_nifti

    data, kwargs, _ = read_nifti(path, as_labels=False)
    if data.ndim == 4 and data.shape[0] == 1:  # (x, y, z, 1): one volume
        data = data[0]
    if data.ndim != 3 or kwargs["metadata"].get("squeezed"):
        raise ValueError(f"{path} has shape {kwargs['metadata']['source_shape']}; training needs 3D volumes "
                         "(one volume per file)")
    return data, kwargs


def load_folder(
    items: Sequence[Item], image_size: Sequence[int], spacing: Sequence[float], held_out: set[str] = frozenset(),
    min_foreground: float = 0.08, normalisation: dict | None = None, log=None,
) -> FolderData:
    """Load ``items`` onto a 2D (axial slices) or 3D (whole volumes) model grid as :class:`FolderData`."""
    dims = len(image_size)
    if dims not in (2, 3) or len(spacing) != dims:
        raise ValueError(f"image_size {list(image_size)} and spacing {list(spacing)} need 2 or 3 matching entries")
    norm = normalisation or {}
    images, probs, held, labels, subjects = [], [], [], [], []
    for n, item in enumerate(items):
        on_grid, prob = load_item(item, image_size, spacing, norm.get("lower", 0.5), norm.get("upper", 99.5))
        if dims == 2:
            keep = (on_grid > 0.15).mean(axis=(1, 2)) >= min_foreground
            on_grid, prob = on_grid[keep], None if prob is None else prob[keep]
        images.append(on_grid)
        probs.append(prob)
        count = len(on_grid)
        held += [item.subject in held_out] * count
        labels += [item.label if item.label is not None else -1] * count
        subjects += [item.subject] * count
        if log is not None:
            log(f"  loaded {item.image.name} ({n + 1}/{len(items)}): {count} {'slices' if dims == 2 else 'volume'}")
    if not sum(len(i) for i in images):
        raise ValueError(f"no slices with at least {min_foreground:.0%} foreground on the {list(image_size)} grid")
    has_masks = probs[0] is not None
    has_labels = items[0].label is not None
    return FolderData(
        np.concatenate(images).astype(np.float32), np.concatenate(probs).astype(np.float32) if has_masks else None,
        np.array(held, dtype=bool), tuple(float(s) for s in spacing),
        np.array(labels, dtype=np.int64) if has_labels else None, np.array(subjects),
    )
