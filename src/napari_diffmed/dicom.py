"""DICOM series folders and (multi-frame) DICOM files -> the same layer data as NIfTI.

pydicom reads the headers and pixels; the slices of one series are sorted along
their normal, checked for even spacing, and stacked into a NIfTI image whose
affine maps voxels to RAS+ millimetres (DICOM's patient space is LPS+). That
image goes through :func:`napari_diffmed.io.image_to_layer_data`, so a series
opens with exactly the array, scale, translate/affine and metadata of the NIfTI
it would convert to, and :func:`napari_diffmed.io.write_nifti` saves results in
the series' voxel grid.
"""

from __future__ import annotations

import os
from collections import defaultdict
from pathlib import Path
from typing import Any

import numpy as np

DICOM_SUFFIXES = (".dcm", ".dicom", ".ima")
LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])
SEGMENTATION_SOP = "1.2.840.10008.5.1.4.1.1.66.4"


def looks_like_dicom(path: str | os.PathLike) -> bool:
    """Cheap test for the napari reader: a DICOM file, or a folder holding one (never raises)."""
    try:
        path = Path(path)
        if path.is_dir():
            files = (p for p in sorted(path.iterdir()) if p.is_file() and not p.name.startswith("."))
            return any(_has_preamble(p) for _, p in zip(range(20), files))
        return path.suffix.lower() in DICOM_SUFFIXES or _has_preamble(path)
    except OSError:
        return False


def _has_preamble(path: Path) -> bool:
    with open(path, "rb") as fh:
        return fh.read(132)[128:132] == b"DICM"


def _header(path: Path, strict: bool):
    """The header of a DICOM file, None if it is not one (an error naming the file if ``strict``)."""
    import pydicom
    from pydicom.errors import InvalidDicomError

    try:
        return pydicom.dcmread(path, stop_before_pixels=True)
    except InvalidDicomError:  # no preamble: old files may still be DICOM
        try:
            ds = pydicom.dcmread(path, stop_before_pixels=True, force=True)
            if "SOPClassUID" in ds:
                return ds
        except Exception:  # noqa: BLE001 - not DICOM at all
            pass
    except Exception as err:  # noqa: BLE001 - truncated or corrupt headers
        raise ValueError(f"cannot read DICOM file {path}: {err}") from None
    if strict:
        raise ValueError(f"{path} is not a DICOM file (nor NIfTI .nii/.nii.gz)")
    return None


def _is_image(ds) -> bool:
    return "Rows" in ds and "Columns" in ds


def _describe(headers: list) -> str:
    ds = headers[0]
    return f"{ds.get('Modality', '?')} '{ds.get('SeriesDescription', '')}', {len(headers)} files"


def series_files(folder: str | os.PathLike, series: str | None = None) -> list[Path]:
    """The files of the one image series in ``folder`` (or of series UID ``series``), unsorted."""
    folder = Path(folder)
    entries = sorted(p for p in folder.iterdir() if not p.name.startswith("."))
    files = [p for p in entries if p.is_file() and p.name.upper() != "DICOMDIR"]
    subfolders = [p.name for p in entries if p.is_dir()]
    hint = f"; point at one series folder among {subfolders[:5]}" if subfolders else ""
    return _one_series(files, str(folder), series, hint)


def _one_series(files: list[Path], where: str, series: str | None, hint: str = "") -> list[Path]:
    groups: dict[str, list] = defaultdict(list)
    others, skipped = [], 0
    for path in files:
        ds = _header(path, strict=path.suffix.lower() in DICOM_SUFFIXES)
        if ds is None:
            skipped += 1
        elif _is_image(ds):
            groups[str(ds.get("SeriesInstanceUID", ""))].append((path, ds))
        else:
            others.append(ds)
    if not groups and others:
        kinds = sorted({getattr(ds.SOPClassUID, "name", str(ds.SOPClassUID)) for ds in others})
        raise ValueError(f"{where} holds no DICOM images, only {len(others)} non-image objects ({', '.join(kinds)})")
    if not groups:
        raise ValueError(f"no DICOM files in {where} ({skipped} other files){hint}")
    if series is not None:
        if series not in groups:
            raise ValueError(f"series {series!r} is not in {where}; it holds {sorted(groups)}")
        return [p for p, _ in groups[series]]
    if len(groups) > 1:
        listing = "; ".join(f"{uid} ({_describe([ds for _, ds in g])})" for uid, g in sorted(groups.items()))
        raise ValueError(f"{where} holds {len(groups)} image series, choose one with series=UID "
                         f"(--series UID on the command line) or give each its own folder: {listing}")
    return [p for p, _ in next(iter(groups.values()))]


def _floats(value, n: int, what: str, where: Any) -> np.ndarray:
    try:
        out = np.asarray([float(v) for v in value], dtype=np.float64)
    except (TypeError, ValueError):
        out = np.zeros(0)
    if out.shape != (n,):
        raise ValueError(f"{where}: {what} is missing or malformed, so its position in the patient is unknown")
    return out


def _item(ds, frame_groups, sequence: str, attribute: str):
    """``attribute`` from a multi-frame functional group (per-frame first, then shared), else from ``ds``."""
    for groups in frame_groups:
        if groups is not None and sequence in groups and attribute in groups[sequence][0]:
            return groups[sequence][0][attribute].value
    return ds.get(attribute)


def _frames(ds, where: Any) -> list[dict[str, Any]]:
    """Per frame of one dataset: position, orientation, pixel spacing, rescale and the frame index."""
    n = int(ds.get("NumberOfFrames", 1) or 1)
    per_frame = ds.get("PerFrameFunctionalGroupsSequence")
    shared = ds["SharedFunctionalGroupsSequence"][0] if "SharedFunctionalGroupsSequence" in ds else None
    offsets = ds.get("GridFrameOffsetVector")  # RT dose: frame positions along the normal
    frames = []
    for k in range(n):
        groups = (per_frame[k] if per_frame is not None and k < len(per_frame) else None, shared)
        orientation = _floats(_item(ds, groups, "PlaneOrientationSequence", "ImageOrientationPatient"), 6,
                              "ImageOrientationPatient", where)
        position = _floats(_item(ds, groups, "PlanePositionSequence", "ImagePositionPatient"), 3,
                           "ImagePositionPatient", where)
        if per_frame is None and n > 1:
            if offsets is None or len(offsets) != n:
                raise ValueError(f"{where}: a {n}-frame image without per-frame positions (functional groups "
                                 f"or GridFrameOffsetVector) has no known slice geometry")
            normal = np.cross(orientation[:3], orientation[3:])
            start = 0.0 if float(offsets[0]) == 0 else position @ normal  # relative or absolute offsets
            position = position + (float(offsets[k]) - start) * normal
        slope = _item(ds, groups, "PixelValueTransformationSequence", "RescaleSlope")
        intercept = _item(ds, groups, "PixelValueTransformationSequence", "RescaleIntercept")
        if "DoseGridScaling" in ds:
            slope = float(ds.DoseGridScaling) * float(slope if slope is not None else 1)
        frames.append({
            "orientation": orientation, "position": position, "index": k,
            "spacing": _floats(_item(ds, groups, "PixelMeasuresSequence", "PixelSpacing"), 2, "PixelSpacing", where),
            "thickness": float(ds.get("SpacingBetweenSlices") or ds.get("SliceThickness") or 1.0),
            "slope": float(slope) if slope is not None else 1.0,
            "intercept": float(intercept) if intercept is not None else 0.0,
        })
    return frames


def _sorted_geometry(frames: list[dict], label: str) -> tuple[list[dict], np.ndarray]:
    """Frames sorted along their normal, checked to form one evenly spaced stack, and its LPS affine."""
    first = frames[0]
    for f in frames[1:]:
        if not (np.allclose(f["orientation"], first["orientation"], atol=1e-4)
                and np.allclose(f["spacing"], first["spacing"], atol=1e-4)):
            raise ValueError(f"{label}: the images differ in orientation or pixel spacing; not one volume")
    row, col = first["orientation"][:3], first["orientation"][3:]
    normal = np.cross(row, col)
    frames = sorted(frames, key=lambda f: f["position"] @ normal)
    heights = np.array([f["position"] @ normal for f in frames])
    steps = np.diff(heights)
    if len(frames) > 1 and steps.min() < 1e-3:
        repeats = len(frames) - len(np.unique(np.round(heights, 3)))
        raise ValueError(f"{label}: {repeats} images repeat a slice position (several echoes, phases or "
                         f"time points?); give each acquisition its own folder")
    if len(frames) > 1:
        step = np.median(steps)
        bad = np.flatnonzero(np.abs(steps - step) > max(1e-2, 0.01 * step))
        if bad.size:
            k = int(bad[0])
            raise ValueError(f"{label}: missing slices or uneven spacing: slice positions jump by {steps[k]:.4g} mm "
                             f"from {heights[k]:.4g} to {heights[k + 1]:.4g} mm where the usual step is {step:.4g} mm "
                             f"({len(frames)} slices)")
        through = (frames[-1]["position"] - frames[0]["position"]) / (len(frames) - 1)
        expected = frames[0]["position"] + np.outer(np.arange(len(frames)), through)
        if np.abs(np.array([f["position"] for f in frames]) - expected).max() > max(1e-2, 0.01 * step):
            raise ValueError(f"{label}: the slice positions do not lie on one line; not one volume")
    else:  # one slice: its thickness, so that a saved NIfTI has a sensible third spacing
        through = normal * first["thickness"]
    affine = np.eye(4)
    affine[:3, 0] = row * first["spacing"][1]  # columns advance along the row direction
    affine[:3, 1] = col * first["spacing"][0]  # rows advance along the column direction
    affine[:3, 2] = through
    affine[:3, 3] = frames[0]["position"]
    return frames, affine


def _pixels(ds, where: Path) -> np.ndarray:
    """The frames of ``ds`` as (frames, rows, columns); the encoded bytes are dropped once decoded."""
    try:
        arr = ds.pixel_array
    except Exception as err:  # noqa: BLE001 - truncated data, missing codecs
        raise ValueError(f"cannot read the pixel data of {where}: {err}") from None
    del ds.PixelData
    return arr.reshape((-1, *arr.shape[-2:]))


def to_nifti(path: str | os.PathLike | list, series: str | None = None):
    """A DICOM series (folder or list of files) or file as a NIfTI image (RAS+ affine, scanner qform/sform).

    Returns the image and the header of its first slice.
    """
    import nibabel as nib
    import pydicom

    if isinstance(path, (list, tuple)):  # the files of one series, e.g. dropped on napari together
        files = _one_series([Path(p) for p in path], f"{len(path)} files", series)
        path = Path(path[0]).parent
    else:
        path = Path(path)
        if not path.exists():
            raise FileNotFoundError(f"{path} does not exist")
        files = series_files(path, series) if path.is_dir() else [path]
    if len(files) == 1:
        header = _header(files[0], strict=True)
        if not _is_image(header):
            raise ValueError(f"{files[0]} is a DICOM {getattr(header.SOPClassUID, 'name', 'object')}, not an image")
    datasets = []
    for file in files:
        try:
            datasets.append((file, pydicom.dcmread(file, force=True)))
        except Exception as err:  # noqa: BLE001
            raise ValueError(f"cannot read DICOM file {file}: {err}") from None
    for file, ds in datasets:
        if int(ds.get("SamplesPerPixel", 1)) != 1:
            raise ValueError(f"{file}: colour DICOM images ({ds.get('PhotometricInterpretation')}) are not "
                             f"supported; napari-diffmed reads greyscale scans")
    multi = [f for f, ds in datasets if int(ds.get("NumberOfFrames", 1) or 1) > 1]
    if multi and len(datasets) > 1:
        raise ValueError(f"{path} mixes {len(multi)} multi-frame files with other images; open one file at a time")
    frames = [dict(f, file=file, ds=ds) for file, ds in datasets for f in _frames(ds, file)]
    shapes = {(int(ds.Rows), int(ds.Columns)) for _, ds in datasets}
    if len(shapes) > 1:
        raise ValueError(f"{path}: the images differ in size {sorted(shapes)}; not one volume")
    frames, lps = _sorted_geometry(frames, str(path))
    from .limits import check_declared

    check_declared((len(frames), *next(iter(shapes))), path)  # before any pixel is decoded
    pixels = {file: _pixels(ds, file) for file, ds in datasets}
    slices = [pixels[f["file"]][f["index"]] for f in frames]
    plain = all(f["slope"] == 1 and f["intercept"] == 0 for f in frames)
    stack = np.stack(slices if plain else [s.astype(np.float32) * np.float32(f["slope"]) + np.float32(f["intercept"])
                                           for s, f in zip(slices, frames)])
    affine = LPS_TO_RAS @ lps
    img = nib.Nifti1Image(np.ascontiguousarray(np.transpose(stack, (2, 1, 0))), affine)  # (k, r, c) -> (c, r, k)
    img.set_qform(affine, code=1)
    img.set_sform(affine, code=1)
    img.header.set_xyzt_units("mm")
    return img, frames[0]["ds"]


def read_dicom(path: str | os.PathLike | list, series: str | None = None,
               as_labels: bool | None = None) -> tuple[np.ndarray, dict, str]:
    """Read a DICOM series (folder or files) or file into ``(data, layer_kwargs, layer_type)`` like ``read_nifti``."""
    from .io import image_to_layer_data

    img, ds = to_nifti(path, series)
    if isinstance(path, (list, tuple)):
        path = Path(path[0]).parent
    if as_labels is None and str(ds.get("SOPClassUID", "")) == SEGMENTATION_SOP:
        as_labels = True
    data, kwargs, kind = image_to_layer_data(img, name=str(path), as_labels=as_labels)
    stem = Path(path).name
    kwargs["name"] = stem[: -len(Path(stem).suffix)] if Path(stem).suffix.lower() in DICOM_SUFFIXES else stem
    kwargs["metadata"]["dicom"] = {key: str(ds.get(key, "")) for key in (
        "SeriesInstanceUID", "Modality", "SeriesDescription", "PatientPosition")}
    return data, kwargs, kind
