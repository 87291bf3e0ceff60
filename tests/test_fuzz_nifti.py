"""Property-based fuzzing of the NIfTI reader: a clear error or a valid result, within memory and time limits.

Valid small files are built with random shapes, voxel types, affines and compression, then their
headers are overwritten with random field values, random bytes are flipped and the files cut
short. Whatever comes out, :func:`napari_diffmed.io.read_nifti` must either return a layer (in
memory, of at most the voxel limit, with a finite positive spacing) or raise a ``ValueError`` that
names the file; each call must stay under a second and 64 MiB of new allocations.
"""

from __future__ import annotations

import gzip
import os
import tempfile
import time
import tracemalloc
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from napari_diffmed.io import read_nifti

pytestmark = pytest.mark.fuzz
LIMIT = 2**16
FLOATS = st.floats(allow_nan=True, allow_infinity=True, width=32)
DTYPES = [np.uint8, np.int8, np.int16, np.uint16, np.int32, np.float32, np.float64, np.complex64,
          np.dtype([("R", "u1"), ("G", "u1"), ("B", "u1")])]
FIELDS = {  # header field -> values to try (besides the valid one)
    "dim": st.lists(st.integers(-(2**15), 2**15 - 1), min_size=8, max_size=8),
    "datatype": st.sampled_from([0, 1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 768, 1024, 1280, 1536, 1792, 2048,
                                 2304, 9999]),
    "bitpix": st.integers(-(2**15), 2**15 - 1),
    "vox_offset": st.one_of(FLOATS, st.integers(0, 2**40).map(float)),
    "pixdim": st.lists(FLOATS, min_size=8, max_size=8),
    "scl_slope": FLOATS, "scl_inter": FLOATS,
    "sform_code": st.integers(-5, 5), "qform_code": st.integers(-5, 5),
    "srow_x": st.lists(FLOATS, min_size=4, max_size=4), "srow_y": st.lists(FLOATS, min_size=4, max_size=4),
    "quatern_b": FLOATS, "quatern_c": FLOATS, "qoffset_x": FLOATS, "intent_code": st.integers(0, 2000),
    "sizeof_hdr": st.sampled_from([348, 540, 0, 2**24]), "magic": st.sampled_from([b"n+1", b"ni1", b"xyz"]),
}


@st.composite
def nifti_files(draw) -> tuple[bytes, bool]:
    shape = tuple(draw(st.lists(st.integers(1, 6), min_size=2, max_size=4)))
    dtype = np.dtype(draw(st.sampled_from(DTYPES)))
    raw = bytes(draw(st.binary(min_size=dtype.itemsize, max_size=dtype.itemsize)))
    data = np.frombuffer(raw * int(np.prod(shape)), dtype=dtype).reshape(shape).copy()
    header = nib.Nifti1Image(data, np.eye(4)).header
    if draw(st.booleans()):  # a random sform, written as it is
        rows = np.array(draw(st.lists(st.floats(-1e3, 1e3), min_size=12, max_size=12))).reshape(3, 4)
        header["srow_x"], header["srow_y"], header["srow_z"] = rows
        header["sform_code"] = 1
    for field in draw(st.lists(st.sampled_from(sorted(FIELDS)), max_size=4, unique=True)):
        try:
            header[field] = draw(FIELDS[field])
        except (ValueError, TypeError, OverflowError):
            pass
    block = bytearray(header.binaryblock + b"\0" * 4 + data.tobytes())
    for _ in range(draw(st.integers(0, 3))):
        block[draw(st.integers(0, len(block) - 1))] = draw(st.integers(0, 255))
    cut = draw(st.one_of(st.none(), st.integers(0, len(block))))
    return bytes(block[:cut]), draw(st.booleans())


def _declared(block: bytes) -> int:
    """Voxels a NIfTI-1 header declares (0 when it is not one, or nibabel cannot parse it)."""
    if 348 not in (int.from_bytes(block[:4], "little"), int.from_bytes(block[:4], "big")) or \
            block[344:348] not in (b"n+1\0", b"ni1\0"):
        return 0
    try:
        return int(np.prod(nib.Nifti1Header(block[:348], check=False).get_data_shape(), dtype=np.float64))
    except Exception:
        return 0


def _layer_is_valid(data, kwargs, kind) -> None:
    assert kind in ("image", "labels") and isinstance(data, np.ndarray) and not isinstance(data, np.memmap)
    assert 2 <= data.ndim <= 4 and data.size <= LIMIT
    spacing = np.asarray(kwargs["metadata"]["spacing"])
    assert np.all(np.isfinite(spacing)) and np.all(spacing > 0)
    assert np.all(np.isfinite(kwargs.get("affine", kwargs.get("scale"))))


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(nifti_files())
def test_reader_gives_a_clear_error_or_a_valid_layer(case):
    block, compressed = case
    os.environ["NAPARI_DIFFMED_MAX_VOXELS"] = str(LIMIT)
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / ("fuzz.nii.gz" if compressed else "fuzz.nii")
        path.write_bytes(gzip.compress(block, compresslevel=1) if compressed else block)
        tracemalloc.start()
        start = time.perf_counter()
        try:
            layer = read_nifti(path)
        except ValueError as err:
            assert str(path) in str(err), err
            if _declared(block) > LIMIT:  # refused for its size, before anything was read
                assert f"more than the limit of {LIMIT:,} voxels" in str(err), err
            layer = None
        finally:
            seconds, peak = time.perf_counter() - start, tracemalloc.get_traced_memory()[1]
            tracemalloc.stop()
            del os.environ["NAPARI_DIFFMED_MAX_VOXELS"]
        event("read" if layer is not None else "refused")
        if layer is not None:
            _layer_is_valid(*layer)
    assert seconds < 1.0 and peak < 64 * 2**20
