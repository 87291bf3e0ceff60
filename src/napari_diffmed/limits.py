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
    """Read a NIfTI-1/2 header (streamed from a ``.gz``) and refuse huge declared sizes and odd types."""
    import nibabel as nib
    import numpy as np

    path = Path(path)
    try:
        with (gzip.open(path, "rb") if str(path).lower().endswith(".gz") else open(path, "rb")) as fh:
            raw = fh.read(540)
    except (OSError, EOFError, zlib.error) as err:
        raise ValueError(f"cannot read {path}: {err}") from None
    header = None
    for klass, size in ((nib.Nifti1Header, 348), (nib.Nifti2Header, 540)):
        if len(raw) >= size and size in (int.from_bytes(raw[:4], "little"), int.from_bytes(raw[:4], "big")):
            try:
                header = klass(raw[:size], check=False)
                shape, dtype, offset = header.get_data_shape(), header.get_data_dtype(), header.get_data_offset()
            except Exception as err:  # nibabel's HeaderDataError and friends for impossible fields
                raise ValueError(f"cannot read {path}: its header is invalid ({err})") from None
            break
    if header is None:
        raise ValueError(f"cannot read {path}: it does not start with a NIfTI-1 or NIfTI-2 header "
                         f"({len(raw)} bytes read)")
    if dtype.fields is not None or np.issubdtype(dtype, np.complexfloating):
        what = "complex-valued" if dtype.fields is None else "RGB/RGBA colour"
        raise ValueError(f"{path}: {what} voxels (NIfTI type {header.get_value_label('datatype')}) are not "
                         "supported; save one real channel (e.g. the magnitude, or grey values) as a NIfTI first")
    check_declared(shape, path, limit)
    if offset > MAX_DATA_OFFSET:
        raise ValueError(f"{path}: the header puts the voxels at byte {offset:,} (vox_offset), beyond the "
                         f"{MAX_DATA_OFFSET:,} bytes of header extensions allowed")
