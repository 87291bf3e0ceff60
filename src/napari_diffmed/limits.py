"""Size limits on what a scan file may make us allocate, checked from its header before any voxel is read.

A NIfTI header declares the array's shape and type; a 1 MB ``.nii.gz`` may declare 4 GiB of zeros.
:func:`check_nifti_header` reads only the first 540 bytes (decompressing just those from a
``.gz``), and refuses a file whose declared voxels exceed :func:`max_voxels` or whose data start
(``vox_offset``) lies absurdly far in. Reading then decompresses exactly the declared bytes.
Readers of other formats (DICOM) can call :func:`check_declared` with their own declared shape.
"""

from __future__ import annotations

import gzip
import math
import os
import zlib
from pathlib import Path
from typing import Sequence

VOXELS_ENV = "NAPARI_DIFFMED_MAX_VOXELS"
DEFAULT_MAX_VOXELS = 2**28  # 268 M voxels: 1 GiB as float32, e.g. 512 x 512 x 1024
MAX_DATA_OFFSET = 64 * 2**20  # header extensions before the voxels


def max_voxels(limit: int | None = None) -> int:
    """``limit`` if given, else ``$NAPARI_DIFFMED_MAX_VOXELS``, else :data:`DEFAULT_MAX_VOXELS`."""
    if limit is None:
        raw = os.environ.get(VOXELS_ENV, "").strip()
        try:
            limit = int(float(raw)) if raw else DEFAULT_MAX_VOXELS
        except ValueError:
            raise ValueError(f"${VOXELS_ENV} must be a whole number of voxels, got {raw!r}") from None
    if isinstance(limit, bool) or not isinstance(limit, int) or limit < 1:
        raise ValueError(f"max_voxels must be a whole number >= 1, got {limit!r}")
    return limit


def check_declared(shape: Sequence[int], source: str | os.PathLike, limit: int | None = None) -> int:
    """Refuse a declared array shape with more voxels than :func:`max_voxels`; returns the voxel count."""
    voxels = math.prod(int(n) for n in shape)
    top = max_voxels(limit)
    if voxels > top:
        raise ValueError(f"{source}: the header declares an array of shape {tuple(int(n) for n in shape)} "
                         f"({voxels:,} voxels), more than the limit of {top:,} voxels; raise it with "
                         f"${VOXELS_ENV} (or max_voxels=) if the file is genuine")
    return voxels


def check_nifti_header(path: str | os.PathLike, limit: int | None = None) -> None:
    """Read a NIfTI-1/2 header (streamed from a ``.gz``) and refuse huge declared sizes, odd voxel types and
    header extensions that overrun the voxels."""
    path = Path(path)
    try:
        with (gzip.open(path, "rb") if str(path).lower().endswith(".gz") else open(path, "rb")) as fh:
            raw = fh.read(540)
            offset, end_of_header = _check_header(raw, path, limit)
            if raw[end_of_header:end_of_header + 1] not in (b"", b"\0"):  # the extension flag
                _check_extensions(fh, end_of_header + 4, offset, raw, path)
    except (OSError, EOFError, zlib.error) as err:
        raise ValueError(f"cannot read {path}: {err}") from None


def _check_extensions(fh, start: int, end: int, raw: bytes, path: Path) -> None:
    """Walk the header extensions between ``start`` and the voxels at ``end`` without reading their contents:
    each must fit before the voxels (nibabel would otherwise allocate whatever size one declares)."""
    order = "little" if int.from_bytes(raw[:4], "little") in (348, 540) else "big"
    if end < start:  # nibabel would read extensions up to the end of the file, whatever sizes they declare
        raise ValueError(f"{path}: the header flags extensions but puts the voxels at byte {end}, inside the header")
    fh.seek(start)
    pos = start
    while end - pos >= 16:
        head = fh.read(8)
        esize = int.from_bytes(head[:4], order, signed=True) if len(head) == 8 else -1
        if esize < 8 or pos + esize > end:
            raise ValueError(f"{path}: the header extension at byte {pos} declares {esize} bytes, which do not fit "
                             f"before the voxels at byte {end}")
        pos += esize
        fh.seek(pos)


def _check_header(raw: bytes, path: Path, limit: int | None) -> tuple[int, int]:
    """(voxel offset, header size) of a NIfTI header whose declared size and voxel type are acceptable."""
    import nibabel as nib
    import numpy as np

    header = None
    for klass, size in ((nib.Nifti1Header, 348), (nib.Nifti2Header, 540)):
        if len(raw) >= size and size in (int.from_bytes(raw[:4], "little"), int.from_bytes(raw[:4], "big")):
            try:
                header = klass(raw[:size], check=False)
                shape, offset = header.get_data_shape(), header.get_data_offset()
            except Exception as err:  # nibabel's HeaderDataError and friends for impossible fields
                raise ValueError(f"cannot read {path}: its header is invalid ({type(err).__name__}: {err})") from None
            break
    if header is None:
        raise ValueError(f"cannot read {path}: it does not start with a NIfTI-1 or NIfTI-2 header "
                         f"({len(raw)} bytes read)")
    check_declared(shape, path, limit)
    try:
        dtype = header.get_data_dtype()
    except Exception:  # an unknown type code
        raise ValueError(f"cannot read {path}: its header gives an unknown voxel type code "
                         f"{int(header['datatype'])}") from None
    if dtype.fields is not None or np.issubdtype(dtype, np.complexfloating):
        what = "complex-valued" if dtype.fields is None else "RGB/RGBA colour"
        raise ValueError(f"{path}: {what} voxels (NIfTI type {header.get_value_label('datatype')}) are not "
                         "supported; save one real channel (e.g. the magnitude, or grey values) as a NIfTI first")
    if offset > MAX_DATA_OFFSET:
        raise ValueError(f"{path}: the header puts the voxels at byte {offset:,} (vox_offset), beyond the "
                         f"{MAX_DATA_OFFSET:,} bytes of header extensions allowed")
    return offset, size
