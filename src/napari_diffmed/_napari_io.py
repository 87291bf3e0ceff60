"""npe2 reader and writers: NIfTI files and DICOM series as napari layers in physical (RAS, mm) space.

The work is done by :mod:`napari_diffmed.io`; this module only adapts it to the
npe2 signatures.

Overwriting: these writers never replace an existing file. napari's Qt save
dialog asks "replace?" before calling a writer, but a writer cannot tell that
call apart from ``viewer.layers.save(path)`` in a script, where nobody was
asked. So an existing target raises :class:`FileExistsError` (napari shows it
as a notification) and the old file stays untouched; choose a new name, or
call :func:`napari_diffmed.io.write_nifti` with ``overwrite=True`` on purpose.
Files are written to a temporary name and renamed, so a failed write leaves
no partial file.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from .dicom import looks_like_dicom, read_dicom
from .io import NIFTI_SUFFIXES, image_to_layer_data, is_nifti, read_nifti, write_nifti

LayerData = tuple[Any, dict, str]
PathOrPaths = str | os.PathLike | Sequence[str | os.PathLike]


def _paths(path: Any) -> list[str] | None:
    """The NIfTI file paths in ``path`` (one or a list), or None if any is not one."""
    items = [path] if isinstance(path, (str, os.PathLike)) else path
    if not isinstance(items, (list, tuple)) or not items:
        return None
    if not all(isinstance(p, (str, os.PathLike)) for p in items):
        return None
    paths = [os.fspath(p) for p in items]
    if not all(is_nifti(p) and not os.path.isdir(p) for p in paths):
        return None
    return paths


def get_reader(path: PathOrPaths) -> Callable[[PathOrPaths], list[LayerData]] | None:
    """npe2 reader contribution: NIfTI files, DICOM folders and files; None for anything else (never raises)."""
    try:
        return read_layers if _paths(path) or _dicom_paths(path) else None
    except Exception:  # a reader hook must not break napari's search for another reader
        return None


def _dicom_paths(path: Any) -> list[str] | None:
    """A DICOM series folder or file, or several DICOM files (one series), else None."""
    items = [path] if isinstance(path, (str, os.PathLike)) else path
    if not isinstance(items, (list, tuple)) or not items or not all(isinstance(p, (str, os.PathLike)) for p in items):
        return None
    paths = [os.fspath(p) for p in items]
    if (len(paths) > 1 and any(os.path.isdir(p) for p in paths)) or not all(looks_like_dicom(p) for p in paths):
        return None
    return paths


def read_layers(path: PathOrPaths) -> list[LayerData]:
    """Read one NIfTI file, or several of one grid stacked along a new leading axis (napari's ``stack=True``);
    or one DICOM series (a folder, a file, or the files of one series), shown the way readers of scans expect."""
    dicom = None if _paths(path) else _dicom_paths(path)
    if dicom is not None:
        data, kwargs, kind = read_dicom(dicom if len(dicom) > 1 else dicom[0])
        layers = [(data, {**kwargs, "colormap": "gray"} if kind == "image" else kwargs, kind)]
        show_as_readers_expect()
        return layers
    paths = _paths(path)
    if paths is None:
        raise ValueError(f"{path!r}: napari-diffmed reads only .nii/.nii.gz files and DICOM series")
    layers = [_layer(p) for p in paths]
    show_as_readers_expect()
    if len(layers) == 1:
        return layers
    return [_stack(paths, layers)]


def show_as_readers_expect() -> None:
    """Orient the current viewer's planes as scans are read (anterior/superior up; once, not over a user's choice)."""
    import napari

    viewer = napari.current_viewer()
    if viewer is not None:
        from ._qt.orientation import guide_for

        guide_for(viewer)


def _layer(path: str) -> LayerData:
    data, kwargs, kind = read_nifti(path)
    if kind == "image":
        kwargs.setdefault("colormap", "gray")
    return data, kwargs, kind


def _stack(paths: list[str], layers: list[LayerData]) -> LayerData:
    """One layer with a leading file axis; the grids must agree (the scans are not resampled)."""
    first, kw0, kind = layers[0]

    def grid(kw: dict) -> dict[str, np.ndarray]:
        return {key: np.asarray(kw[key], float) for key in ("scale", "translate", "affine") if key in kw}

    g0 = grid(kw0)
    for p, (data, kw, k) in zip(paths[1:], layers[1:]):
        g = grid(kw)
        same = data.shape == first.shape and k == kind and g.keys() == g0.keys()
        if not (same and all(np.allclose(g[key], g0[key], atol=1e-5) for key in g0)):
            raise ValueError(f"cannot stack {p} on {paths[0]}: shape, kind or voxel grid differ; open them separately")
    stacked = np.stack([data for data, _, _ in layers])
    kwargs: dict[str, Any] = {"name": f"{kw0['name']} stack", "metadata": {"sources": list(paths)}}
    if "affine" in kw0:
        full = np.eye(stacked.ndim + 1)
        full[1:, 1:] = kw0["affine"]
        kwargs["affine"] = full
    else:
        kwargs["scale"] = (1.0, *kw0["scale"])
        kwargs["translate"] = (0.0, *kw0["translate"])
    if kind == "image":
        kwargs["colormap"] = "gray"
    return stacked, kwargs, kind


def write_image(path: str, data: Any, attributes: dict) -> list[str]:
    """npe2 writer for one image layer: float32 NIfTI in the source's grid (or the layer's own)."""
    if attributes.get("rgb"):
        raise ValueError("RGB layers cannot be saved as NIfTI; convert the layer to one channel first")
    if attributes.get("multiscale"):
        data = data[0]  # the full-resolution level
    return _write(path, data, attributes, labels=False)


def write_labels(path: str, data: Any, attributes: dict) -> list[str]:
    """npe2 writer for one labels layer: integer NIfTI with the NIfTI 'label' intent."""
    if attributes.get("multiscale"):
        data = data[0]
    return _write(path, data, attributes, labels=True)


def _write(path: str, data: Any, attributes: dict, labels: bool) -> list[str]:
    path = os.fspath(path)
    if not os.path.splitext(path)[1]:  # like napari's own writers: add the default extension
        path += NIFTI_SUFFIXES[-1]
    if os.path.exists(path):
        raise FileExistsError(
            f"{path} exists; napari-diffmed never replaces files. Choose a new name or remove the old file first"
        )
    from .geometry import world_matrix

    data = np.asarray(data)
    world = world_matrix(attributes, data.ndim)
    meta = attributes.get("metadata") or {}
    if _metadata_fits(meta, data.shape, world):  # the source's exact grid, header codes included
        written = write_nifti(path, data, meta, labels=labels)
    elif np.allclose(world[:-1, :-1], np.diag(np.diag(world[:-1, :-1]))):
        written = write_nifti(path, data, labels=labels, scale=np.diag(world)[:-1], translate=world[:-1, -1])
    else:  # rotated/sheared layer without a source: let io put the array into a canonical grid first
        canonical, kwargs, _ = image_to_layer_data(_nifti_image(data, world), as_labels=labels)
        written = write_nifti(path, canonical, kwargs["metadata"], labels=labels)
    return [os.fspath(written)]


def _metadata_fits(meta: dict, shape: tuple[int, ...], world: np.ndarray) -> bool:
    """Whether the source metadata describes this array: the reader would give this shape and transform."""
    import nibabel as nib

    from .geometry import world_matrix

    if "affine" not in meta or "source_shape" not in meta:
        return False
    try:
        proxy = nib.Nifti1Image(np.broadcast_to(np.float32(0), tuple(meta["source_shape"])), meta["affine"])
        expected, kwargs, _ = image_to_layer_data(proxy, as_labels=False)
    except Exception:  # noqa: BLE001 - metadata from elsewhere: not ours to trust
        return False
    if expected.shape != tuple(shape):
        return False
    tolerance = 1e-4 * max(1.0, float(np.abs(world).max()))
    return bool(np.allclose(world_matrix(kwargs, len(shape)), world, atol=tolerance))


def _nifti_image(data: np.ndarray, world: np.ndarray):
    """A nibabel image of napari-ordered ``data`` (spatial axes last) with the layer's world matrix."""
    import nibabel as nib

    ndim = data.ndim
    spatial = min(ndim, 3)
    lead = ndim - spatial
    if ndim > 4 or not np.allclose(world[:lead, :], np.eye(ndim + 1)[:lead, :]):
        raise ValueError("only the last three axes of a rotated or sheared layer can be saved as NIfTI space")
    sub = world[lead:, lead:]  # (z, y, x) -> world (z, y, x), homogeneous
    affine = np.eye(4)
    perm = list(range(spatial))[::-1]
    affine[:spatial, :spatial] = sub[np.ix_(perm, perm)]
    affine[:spatial, 3] = sub[perm, spatial]
    return nib.Nifti1Image(np.transpose(data, tuple(range(ndim))[::-1]), affine)
