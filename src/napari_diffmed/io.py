"""NIfTI (and, through :mod:`.dicom`, DICOM) <-> napari layer data, true to physical space.

Reading reorients to the closest canonical (RAS+) orientation and returns the
array in napari axis order (z, y, x), with spacing as ``scale``, origin as
``translate`` (or a full ``affine`` for oblique scans) and the source's affine
and header in ``metadata`` so that writers can put results back into the exact
source grid. Nothing else in the package reads or writes files.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any, Callable

import numpy as np

NIFTI_SUFFIXES = (".nii", ".nii.gz")
LABEL_HINTS = ("label", "mask", "seg", "lesion", "aseg", "roi")
INTENT_LABEL = 1002


def is_nifti(path: str | os.PathLike) -> bool:
    return str(path).lower().endswith(NIFTI_SUFFIXES)


def _to_napari_matrix(affine: np.ndarray, spatial: int) -> np.ndarray:
    """Permute a (spatial+1)^2 voxel->world affine from (x, y, z) to napari's (z, y, x) on both sides."""
    perm = list(range(spatial))[::-1]
    out = np.eye(spatial + 1)
    out[:spatial, :spatial] = affine[np.ix_(perm, perm)]
    out[:spatial, spatial] = affine[perm, spatial]
    return out


def _label_dtype(data: np.ndarray, preferred: type = np.int16) -> type:
    """``preferred`` signed integer type, widened until it holds every value of ``data``."""
    if not data.size:
        return preferred
    lo, hi = np.min(data), np.max(data)
    for dtype in (preferred, np.int32, np.int64):
        info = np.iinfo(dtype)
        if np.dtype(dtype).itemsize >= np.dtype(preferred).itemsize and info.min <= lo and hi <= info.max:
            return dtype
    raise ValueError(f"label values {lo}..{hi} do not fit a 64-bit integer")


def chmod_by_umask(path: str | os.PathLike) -> None:
    """Give a ``tempfile.mkstemp`` file (mode 0600) the permissions a plain ``open()`` would have."""
    try:
        with open("/proc/self/status") as fh:  # Linux: read the umask without changing it
            umask = next(int(line.split()[1], 8) for line in fh if line.startswith("Umask:"))
    except (OSError, StopIteration, ValueError):
        umask = os.umask(0o022)
        os.umask(umask)
    os.chmod(path, 0o666 & ~umask)


def image_to_layer_data(img, name: str = "image", as_labels: bool | None = None) -> tuple[np.ndarray, dict, str]:
    """Convert a nibabel image into ``(data, layer_kwargs, layer_type)`` in napari order."""
    import nibabel as nib

    if img.ndim > 4 or img.ndim < 2:
        raise ValueError(f"{name}: NIfTI images with {img.ndim} axes are not supported (2 to 4 are)")
    check_geometry(img, name)
    source = img
    if img.ndim == 2:  # nibabel cannot reorient 2D arrays with a 3D affine: add the singleton z axis
        flat = np.asanyarray(img.dataobj)[..., None]
        img = nib.Nifti1Image(flat, img.affine, dtype=flat.dtype)
    canonical = nib.as_closest_canonical(img)
    data = np.asanyarray(canonical.dataobj)
    if img.ndim == 4:  # (x, y, z, t) -> (t, z, y, x)
        data = np.transpose(data, (3, 2, 1, 0))
    else:
        data = np.transpose(data, (2, 1, 0))
    affine3 = canonical.affine.copy()  # always 4x4 for (x, y, z)
    lead = 1 if img.ndim == 4 else 0
    napari_affine = _to_napari_matrix(affine3, 3)
    keep = [i for i, n in enumerate(data.shape[lead:]) if n > 1]
    if len(keep) < 2:
        raise ValueError(f"{name}: image of shape {img.shape} has fewer than two non-singleton spatial axes")
    squeeze_axes = tuple(lead + i for i in range(3) if i not in keep)
    data = np.squeeze(data, axis=squeeze_axes) if squeeze_axes else data
    idx = keep + [3]
    sub = napari_affine[np.ix_(idx, idx)]
    linear = sub[:-1, :-1]
    spacing = np.sqrt((linear**2).sum(axis=0))
    if not np.all(spacing > 0) or abs(np.linalg.det(linear)) <= 1e-6 * float(np.prod(spacing)):
        raise ValueError(f"{name}: the affine maps the image's axes {tuple(int(n) for n in data.shape[lead:])} "
                         f"onto fewer than {len(keep)} of the world axes shown; the file's geometry is degenerate")
    oblique = not np.allclose(linear, np.diag(np.diag(linear)), atol=1e-6 * max(1.0, spacing.max()))
    img = source
    header = img.header
    intent = int(header.get("intent_code", 0)) if hasattr(header, "get") else 0
    integer = np.issubdtype(data.dtype, np.integer)
    if as_labels is None:
        hinted = any(h in Path(name).name.lower() for h in LABEL_HINTS)
        as_labels = intent == INTENT_LABEL or (integer and hinted)
    if as_labels:
        if not integer and not np.allclose(data, np.round(data)):
            raise ValueError(f"{name}: cannot open as labels, the voxels are not whole numbers")
        data = np.asarray(data).astype(_label_dtype(data, np.int32 if data.dtype.itemsize >= 4 else np.int16))
    else:
        data = np.asarray(data, dtype=np.float32)
    if _mapped(data):  # never hand out a memory map of a user's file: truncating it would crash the reader
        data = data.copy()
    ndim = data.ndim
    metadata: dict[str, Any] = {
        "affine": np.asarray(img.affine, dtype=np.float64),
        "header": header.copy(),
        "source_shape": tuple(img.shape),
        "spacing": tuple(float(s) for s in spacing),
        "axcodes": "".join(nib.aff2axcodes(img.affine)),
        "squeezed": squeeze_axes,
        "source": name,
    }
    kwargs: dict[str, Any] = {"name": Path(name).name.split(".nii")[0], "metadata": metadata}
    if oblique:
        full = np.eye(ndim + 1)
        full[lead:, lead:] = sub
        kwargs["affine"] = full
    else:
        kwargs["scale"] = tuple([1.0] * lead + [float(s) for s in np.diag(linear)])
        kwargs["translate"] = tuple([0.0] * lead + [float(t) for t in sub[:-1, -1]])
    return data, kwargs, "labels" if as_labels else "image"


def check_geometry(img, name: str) -> None:
    """Refuse, naming the problem and the file, voxel types and affines no layer can show."""
    dtype = img.get_data_dtype()
    if dtype.fields is not None or np.issubdtype(dtype, np.complexfloating):
        what = "complex-valued" if dtype.fields is None else "RGB/RGBA colour"
        raise ValueError(f"{name}: {what} voxels ({dtype}) are not supported; save one real channel (e.g. the "
                         "magnitude, or grey values) as a NIfTI first")
    affine = np.asarray(img.affine, dtype=np.float64)
    if not np.all(np.isfinite(affine)):
        raise ValueError(f"{name}: the voxel-to-world affine (sform/qform) holds NaN or infinite values")
    sizes = np.linalg.svd(affine[:3, :3], compute_uv=False)
    if sizes[-1] <= 1e-9 * max(sizes[0], 1e-300):
        raise ValueError(f"{name}: the voxel-to-world affine (sform/qform) is singular (voxel sizes "
                         f"{np.round(np.sqrt((affine[:3, :3] ** 2).sum(axis=0)), 6).tolist()}): a zero or "
                         "repeated axis, so the scan has no place in space")


def _mapped(arr: np.ndarray) -> bool:
    """Whether ``arr`` views a memory-mapped file."""
    while arr is not None:
        if isinstance(arr, np.memmap) or type(arr).__name__ == "mmap":
            return True
        arr = getattr(arr, "base", None)
    return False


def read_nifti(path: str | os.PathLike, as_labels: bool | None = None,
               max_voxels: int | None = None) -> tuple[np.ndarray, dict, str]:
    """Read a NIfTI file into ``(data, layer_kwargs, layer_type)``; see :func:`image_to_layer_data`.

    The header is checked first: more declared voxels than ``max_voxels`` (default
    ``$NAPARI_DIFFMED_MAX_VOXELS`` or :data:`limits.DEFAULT_MAX_VOXELS`), complex or RGB voxels
    are refused before any voxel is read. The voxels are read into memory, never memory-mapped.
    """
    import nibabel as nib

    from .limits import check_nifti_header

    path = Path(path)
    if not is_nifti(path):
        raise ValueError(f"{path} is not a NIfTI file (.nii or .nii.gz)")
    check_nifti_header(path, max_voxels)
    try:
        img = nib.load(str(path), mmap=False)
    except Exception as err:  # nibabel raises many kinds for corrupt files
        raise ValueError(f"cannot read {path}: {err}") from None
    try:  # nibabel reads lazily: a truncated or corrupt file fails only here
        return image_to_layer_data(img, name=str(path), as_labels=as_labels)
    except ValueError as err:  # named after the file, whoever raised it
        if str(path) in str(err):
            raise
        raise ValueError(f"cannot read {path}: {err}") from None
    except Exception as err:  # EOFError, zlib.error, OSError ...
        raise ValueError(f"cannot read {path}: the file is truncated or corrupt ({type(err).__name__}: {err})") from err


def read_scan(
    path: str | os.PathLike, as_labels: bool | None = None, series: str | None = None,
) -> tuple[np.ndarray, dict, str]:
    """A NIfTI file, or a DICOM series folder or file (``series``: its UID if a folder holds several)."""
    if is_nifti(path) and not os.path.isdir(path):
        if series is not None:
            raise ValueError(f"{path}: series= chooses a series in a DICOM folder; a NIfTI file has one image")
        return read_nifti(path, as_labels=as_labels)
    from .dicom import read_dicom

    return read_dicom(path, series=series, as_labels=as_labels)


def layer_to_image(data: np.ndarray, metadata: dict | None, labels: bool = False, scale=None, translate=None):
    """Build a nibabel image putting napari-ordered ``data`` back into its source's voxel grid."""
    import nibabel as nib

    data = np.asarray(data)
    if labels:
        if np.issubdtype(data.dtype, np.floating) and not np.allclose(data, np.round(data)):
            raise ValueError("labels must hold whole numbers")
        data = data.astype(_label_dtype(data))
    else:
        data = data.astype(np.float32)
    meta = metadata or {}
    if "affine" in meta and "source_shape" in meta:
        affine = np.asarray(meta["affine"], dtype=np.float64)
        src_shape = tuple(meta["source_shape"])
        spatial = src_shape[:3]
        lead = 1 if len(src_shape) == 4 else 0
        arr = data
        want = 3 + lead - len(meta.get("squeezed", ()))
        if arr.ndim != want:
            raise ValueError(f"layer of shape {data.shape} ({data.ndim} axes) does not fit the source grid "
                             f"{src_shape} of {meta.get('source', 'its source')}: it needs {want} axes")
        for ax in meta.get("squeezed", ()):
            arr = np.expand_dims(arr, ax)
        canonical_shape = tuple(arr.shape)
        arr = np.transpose(arr, (3, 2, 1, 0)) if lead else np.transpose(arr, (2, 1, 0))
        ornt = nib.orientations.io_orientation(affine)
        back = nib.orientations.ornt_transform(nib.orientations.axcodes2ornt("RAS"), ornt)
        arr = nib.orientations.apply_orientation(arr, back)
        if tuple(arr.shape[:3]) != tuple(spatial) and len(spatial) == 3:
            raise ValueError(
                f"layer of shape {data.shape} (canonical {canonical_shape}) does not fit the source grid {src_shape}"
                f" of {meta.get('source', 'its source')}"
            )
        arr = arr.reshape(tuple(src_shape[: len(src_shape)]) if arr.size == np.prod(src_shape) else arr.shape)
        header = meta.get("header")
        img = nib.Nifti1Image(arr, affine, header=header.copy() if header is not None else None)
    else:  # no source: build an RAS affine from scale/translate (napari order)
        arr = np.transpose(data, tuple(range(data.ndim))[::-1])
        k = min(arr.ndim, 3)
        affine = np.eye(4)
        sc = list(scale if scale is not None else [1.0] * data.ndim)[::-1][:k]
        tr = list(translate if translate is not None else [0.0] * data.ndim)[::-1][:k]
        for i in range(k):
            affine[i, i] = sc[i]
            affine[i, 3] = tr[i]
        img = nib.Nifti1Image(arr, affine)
    img.set_data_dtype(arr.dtype)
    if labels:
        img.header.set_intent("label")
    else:
        img.header.set_intent("none")
    img.header["scl_slope"], img.header["scl_inter"] = np.nan, np.nan
    return img


def write_nifti(
    path: str | os.PathLike, data: np.ndarray, metadata: dict | None = None, labels: bool = False,
    overwrite: bool = False, scale=None, translate=None,
) -> Path:
    """Write napari-ordered data atomically into its source's space; refuse to overwrite unless asked."""
    import nibabel as nib

    path = Path(path)
    if not is_nifti(path):
        raise ValueError(f"{path}: the file name must end with .nii or .nii.gz")
    if path.exists() and not overwrite:
        raise FileExistsError(f"{path} exists; pass overwrite=True to replace it")
    img = layer_to_image(data, metadata, labels=labels, scale=scale, translate=translate)
    path.parent.mkdir(parents=True, exist_ok=True)
    return atomic_write(path, lambda tmp: nib.save(img, tmp), overwrite=overwrite)


def atomic_write(path: str | os.PathLike, write: Callable[[str], Any], overwrite: bool = True) -> Path:
    """Write a file whole or not at all: ``write(tmp)`` fills a temporary file beside ``path``, which is
    synced and moved in; a failure leaves ``path`` as it was. Without ``overwrite`` a file at ``path``
    (even one that appears meanwhile) is refused with :class:`FileExistsError`.

    The temporary name keeps ``path``'s suffix (``.nii.gz`` included) for writers that choose a format by it.
    """
    path = Path(path)
    name = path.name.lower()
    suffix = next((s for s in (".nii.gz", ".tar.gz") if name.endswith(s)), path.suffix)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=suffix)
    os.close(fd)
    try:
        write(tmp)
        with open(tmp, "rb+") as fh:  # on disk before the name points at it
            os.fsync(fh.fileno())
        chmod_by_umask(tmp)  # mkstemp makes 0600 files; results, weights and cards are meant to be shared
        if overwrite:
            os.replace(tmp, path)
        else:  # a hard link never replaces a file that appeared meanwhile
            try:
                os.link(tmp, path)
            except FileExistsError:
                raise FileExistsError(f"{path} exists; pass overwrite=True to replace it") from None
            except OSError:  # no hard links on this file system
                if path.exists():
                    raise FileExistsError(f"{path} exists; pass overwrite=True to replace it") from None
                os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return path
