"""The reader and writer against bombs, odd geometry and truncation (issue 16, items 3, 4, 5 and 9)."""

from __future__ import annotations

import gzip
import re
import time
import tracemalloc

import nibabel as nib
import numpy as np
import pytest

from napari_diffmed.io import image_to_layer_data, read_nifti, write_nifti


def _header(shape, dtype=np.float32, **fields) -> bytes:
    """A valid NIfTI-1 single-file header (352 bytes, extension flag included) with ``fields`` set."""
    hdr = nib.Nifti1Header()
    hdr.set_data_shape(shape)
    hdr.set_data_dtype(dtype)
    hdr.set_sform(np.eye(4), code=1)
    hdr["vox_offset"] = 352
    for key, value in fields.items():
        hdr[key] = value
    return hdr.binaryblock + b"\0" * 4


def _gzip_stream(path, header: bytes, zeros: int) -> None:
    """``header`` then ``zeros`` zero bytes, gzip-compressed in pieces (a few KB for megabytes of zeros)."""
    block = b"\0" * 2**20
    with gzip.open(path, "wb", compresslevel=1) as fh:
        fh.write(header)
        for start in range(0, zeros, len(block)):
            fh.write(block[: min(len(block), zeros - start)])


def test_a_huge_declared_size_is_refused_before_reading(tmp_path):
    path = tmp_path / "bomb.nii.gz"
    _gzip_stream(path, _header((2048, 2048, 2048)), 2**20)  # declares 32 GiB of float32
    tracemalloc.start()
    start = time.perf_counter()
    with pytest.raises(ValueError, match=r"bomb.nii.gz: the header declares an array of shape \(2048, 2048, 2048\) "
                                         r".* more than the limit of 268,435,456 voxels.*NAPARI_DIFFMED_MAX_VOXELS"):
        read_nifti(path)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert time.perf_counter() - start < 1.0 and peak < 16 * 2**20


def test_the_limit_is_configurable(tmp_path, monkeypatch):
    path = tmp_path / "zeros.nii.gz"
    _gzip_stream(path, _header((64, 64, 64)), 4 * 64**3)  # a real (small) bomb: 1 MiB of zeros
    monkeypatch.setenv("NAPARI_DIFFMED_MAX_VOXELS", "100000")
    with pytest.raises(ValueError, match="more than the limit of 100,000 voxels"):
        read_nifti(path)
    assert read_nifti(path, max_voxels=64**3)[0].shape == (64, 64, 64)
    monkeypatch.setenv("NAPARI_DIFFMED_MAX_VOXELS", "lots")
    with pytest.raises(ValueError, match=r"\$NAPARI_DIFFMED_MAX_VOXELS must be a whole number"):
        read_nifti(path)


def test_decompression_stops_at_the_declared_size(tmp_path):
    path = tmp_path / "trailing.nii.gz"
    _gzip_stream(path, _header((16, 16, 16)), 4 * 16**3 + 256 * 2**20)  # 256 MiB of zeros after the data
    tracemalloc.start()
    start = time.perf_counter()
    data = read_nifti(path)[0]
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert data.shape == (16, 16, 16) and not data.any()
    assert time.perf_counter() - start < 1.0 and peak < 16 * 2**20


def test_data_placed_far_into_a_gzip_is_refused(tmp_path):
    path = tmp_path / "offset.nii.gz"
    path.write_bytes(gzip.compress(_header((4, 4, 4), vox_offset=2**31)))
    with pytest.raises(ValueError, match=r"offset.nii.gz: the header puts the voxels at byte 2,147,483,648"):
        read_nifti(path)


def _saved(path, data, affine=None, sform=None):
    img = nib.Nifti1Image(data, np.eye(4) if affine is None else affine)
    if sform is not None:
        header = img.header.copy()
        header.set_sform(np.eye(4), code=1)
        header["srow_x"], header["srow_y"], header["srow_z"] = sform[0], sform[1], sform[2]
        header["qform_code"] = 0
        img = nib.Nifti1Image(data, None, header=header)
    nib.save(img, path)
    return path


@pytest.mark.parametrize("name, make, message", [
    ("nan_affine.nii", lambda p: _saved(p, np.ones((4, 4, 4), np.float32),
                                        sform=[[np.nan, 0, 0, 0], [0, 1, 0, 0], [0, 0, 1, 0]]),
     "affine .* holds NaN or infinite values"),
    ("inf_affine.nii.gz", lambda p: _saved(p, np.ones((4, 4, 4), np.float32),
                                           sform=[[1, 0, 0, np.inf], [0, 1, 0, 0], [0, 0, 1, 0]]),
     "affine .* holds NaN or infinite values"),
    ("zero_sform.nii", lambda p: _saved(p, np.ones((4, 4, 4), np.float32), sform=np.zeros((3, 4))),
     "affine .* is singular"),
    ("flat_sform.nii", lambda p: _saved(p, np.ones((4, 4, 4), np.float32),
                                        sform=[[1, 0, 0, 0], [1, 0, 0, 0], [0, 0, 1, 0]]),
     "affine .* is singular"),
    ("degenerate_2d.nii", lambda p: _saved(p, np.ones((2, 2), np.float32),  # found by test_fuzz_nifti
                                           sform=[[1, 0, 0, 0], [-4, 0, -1, 0], [4, 1, -2, 0]]),
     "onto fewer than 2 of the world axes shown"),
    ("rgb.nii", lambda p: _saved(p, np.zeros((4, 4, 4), dtype=[("R", "u1"), ("G", "u1"), ("B", "u1")])),
     "RGB/RGBA colour voxels .* are not supported"),
    ("complex.nii.gz", lambda p: _saved(p, np.full((4, 4, 4), 1 + 2j, np.complex64)),
     "complex-valued voxels .* are not supported"),
])
def test_odd_files_are_refused_naming_the_problem_and_the_file(tmp_path, name, make, message):
    path = make(tmp_path / name)
    with pytest.raises(ValueError, match=message) as info:
        read_nifti(path)
    assert str(path) in str(info.value) and "truncated" not in str(info.value)


def test_a_nibabel_image_in_memory_is_checked_too():
    img = nib.Nifti1Image(np.full((4, 4, 4), 1j, np.complex64), np.eye(4))
    with pytest.raises(ValueError, match="complex-valued"):
        image_to_layer_data(img, name="in memory")


def test_wrong_shape_writes_name_the_shapes_and_the_source(tmp_path):
    src = write_nifti(tmp_path / "scan.nii.gz", np.ones((6, 8, 10), np.float32), scale=(2.0, 1.0, 1.0))
    _, kwargs, _ = read_nifti(src)
    for data in (np.ones((2, 6, 8, 10), np.float32), np.ones((8, 10), np.float32)):
        with pytest.raises(ValueError, match=re.escape(f"layer of shape {data.shape}") + ".* does not fit the "
                                             + re.escape(f"source grid (10, 8, 6) of {src}")):
            write_nifti(tmp_path / "out.nii.gz", data, kwargs["metadata"])
    assert not (tmp_path / "out.nii.gz").exists()


def _views_a_file(arr) -> bool:
    while arr is not None:
        if isinstance(arr, np.memmap) or type(arr).__name__ == "mmap":
            return True
        arr = getattr(arr, "base", None)
    return False


@pytest.mark.parametrize("labels", [False, True])
def test_reading_never_hands_out_a_memory_map(tmp_path, labels):
    values = (np.arange(16 * 16 * 16) % 7).reshape(16, 16, 16).astype(np.float32 if not labels else np.int16)
    path = tmp_path / ("seg.nii" if labels else "scan.nii")
    nib.save(nib.Nifti1Image(values, np.eye(4)), path)
    data = read_nifti(path)[0]
    assert not _views_a_file(data)
    in_memory = image_to_layer_data(nib.load(path), name=str(path))[0]  # nibabel's default image is mapped
    assert not _views_a_file(in_memory)
    with open(path, "r+b") as fh:  # the file is truncated under the open scan: no SIGBUS, same values
        fh.truncate(400)
    assert float(data.sum()) == float(values.sum()) == float(in_memory.sum())


def test_a_header_extension_larger_than_the_file_is_refused_unread(tmp_path):
    path = tmp_path / "extension.nii"
    header = bytearray(_header((4, 4, 4), vox_offset=368))
    header[348] = 1  # extensions follow
    extension = (2**30).to_bytes(4, "little") + (0).to_bytes(4, "little") + b"\0" * 8  # declares 1 GiB
    path.write_bytes(bytes(header) + extension + b"\0" * 4 * 64)
    tracemalloc.start()
    with pytest.raises(ValueError, match=r"extension.nii: the header extension at byte 352 declares 1073741824 bytes"):
        read_nifti(path)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert peak < 16 * 2**20


def test_a_dicom_series_larger_than_the_limit_is_refused_before_decoding(monkeypatch):
    pydicom = pytest.importorskip("pydicom")
    from pydicom.data import get_testdata_file

    from napari_diffmed.io import read_scan

    path = get_testdata_file("MR_small.dcm")
    assert pydicom.dcmread(path).Rows * pydicom.dcmread(path).Columns == 4096
    monkeypatch.setenv("NAPARI_DIFFMED_MAX_VOXELS", "4000")
    with pytest.raises(ValueError, match=r"MR_small.dcm: the header declares an array of shape \(1, 64, 64\) "
                                         r"\(4,096 voxels\), more than the limit of 4,000 voxels"):
        read_scan(path)
    monkeypatch.setenv("NAPARI_DIFFMED_MAX_VOXELS", "4096")
    assert read_scan(path)[0].shape == (64, 64)
