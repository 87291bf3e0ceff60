"""NIfTI reader and writers: an asymmetric phantom in several orientations lands where nibabel says it is."""

from __future__ import annotations

import gzip
import os
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from napari_diffmed import io
from napari_diffmed._napari_io import get_reader, read_layers, write_image, write_labels

pytestmark = pytest.mark.filterwarnings("ignore:Non-orthogonal slicing:UserWarning")  # napari, oblique layers

SHAPE = (10, 12, 8)  # (x, y, z) of the RAS phantom
RAS_AFFINE = np.array([[2.0, 0, 0, -10], [0, 2.5, 0, 20], [0, 0, 3.0, -5], [0, 0, 0, 1]])
# (new axis -> old axis, flipped new axes, expected axis codes)
ORIENTATIONS = {
    "RAS": ((0, 1, 2), (), "RAS"),
    "LAS": ((0, 1, 2), (0,), "LAS"),
    "LPS": ((0, 1, 2), (0, 1), "LPS"),
    "PSL": ((1, 2, 0), (0, 2), "PSL"),  # a sagittal-like storage order: axes permuted too
}


def _rotation(degrees_z: float, degrees_x: float) -> np.ndarray:
    cz, sz = np.cos(np.radians(degrees_z)), np.sin(np.radians(degrees_z))
    cx, sx = np.cos(np.radians(degrees_x)), np.sin(np.radians(degrees_x))
    rz = np.array([[cz, -sz, 0], [sz, cz, 0], [0, 0, 1]])
    rx = np.array([[1, 0, 0], [0, cx, -sx], [0, sx, cx]])
    out = np.eye(4)
    out[:3, :3] = rz @ rx
    return out


OBLIQUE_AFFINE = _rotation(20, 10) @ RAS_AFFINE


def phantom() -> np.ndarray:
    """RAS (x, y, z) volume: unique ramp, a bright block near the origin corner and a marker far from it."""
    p = np.arange(np.prod(SHAPE), dtype=np.float32).reshape(SHAPE) * 0.01
    p[1:4, 2:5, 1:3] += 100.0
    p[8, 9, 6] += 50.0
    return p


def reoriented(data: np.ndarray, perm: tuple[int, ...], flips: tuple[int, ...]) -> tuple[np.ndarray, np.ndarray]:
    """The same anatomy stored in another voxel order, with the affine that keeps its world position."""
    new = np.transpose(data, perm)
    old_from_new = np.zeros((4, 4))
    old_from_new[3, 3] = 1
    for k, old in enumerate(perm):
        n = new.shape[k]
        if k in flips:
            old_from_new[old, k], old_from_new[old, 3] = -1, n - 1
        else:
            old_from_new[old, k] = 1
    for k in flips:
        new = np.flip(new, axis=k)
    return np.ascontiguousarray(new), RAS_AFFINE @ old_from_new


def save(path, data, affine, intent: str | None = None, codes=(1, 2)) -> str:
    img = nib.Nifti1Image(data, affine)
    img.set_qform(affine, code=codes[0])
    img.set_sform(affine, code=codes[1])
    if intent:
        img.header.set_intent(intent)
    nib.save(img, str(path))
    return str(path)


@pytest.fixture(params=[*ORIENTATIONS, "oblique"])
def scan(request, tmp_path):
    """(path, source voxels, affine, name) for each orientation."""
    if request.param == "oblique":
        data, affine = phantom(), OBLIQUE_AFFINE
    else:
        perm, flips, codes = ORIENTATIONS[request.param]
        data, affine = reoriented(phantom(), perm, flips)
        assert "".join(nib.aff2axcodes(affine)) == codes
    return save(tmp_path / f"scan_{request.param}.nii.gz", data, affine), data, affine, request.param


def open_layer(path):
    from napari.layers import Layer

    reader = get_reader(path)
    assert reader is not None
    (layer_data,) = reader(path)
    return Layer.create(*layer_data)


def test_world_coordinates_agree_with_nibabel(scan):
    path, source, affine, name = scan
    layer = open_layer(path)
    block = np.argwhere(source >= 100.0)
    corners = np.array([[i, j, k] for i in (0, source.shape[0] - 1) for j in (0, source.shape[1] - 1)
                        for k in (0, source.shape[2] - 1)])
    marker = np.argwhere((source >= 50.0) & (source < 100.0))
    assert len(marker) == 1 and len(block) == 18
    for ijk in [*block, *corners, *marker]:
        world_nib = (affine @ [*ijk, 1])[:3]  # (R, A, S)
        napari_voxel = np.unravel_index(np.argmin(np.abs(layer.data - source[tuple(ijk)])), layer.data.shape)
        assert layer.data[napari_voxel] == pytest.approx(source[tuple(ijk)], abs=1e-4)
        world_napari = np.asarray(layer.data_to_world(napari_voxel))  # napari order: (S, A, R)
        np.testing.assert_allclose(world_napari[::-1], world_nib, atol=1e-4)
    linear = layer.affine.affine_matrix[:3, :3]  # oblique scans need napari's full affine, the others not
    assert np.allclose(linear, np.diag(np.diag(linear))) == (name != "oblique")


def test_same_anatomy_lands_on_the_same_napari_voxel(tmp_path):
    layers = {}
    for name, (perm, flips, _) in ORIENTATIONS.items():
        data, affine = reoriented(phantom(), perm, flips)
        layers[name] = open_layer(save(tmp_path / f"{name}.nii", data, affine))
    expected = np.transpose(phantom(), (2, 1, 0))  # RAS (x, y, z) -> napari (z, y, x)
    for name, layer in layers.items():
        np.testing.assert_array_equal(layer.data, expected, err_msg=name)
        np.testing.assert_allclose(layer.scale, [3.0, 2.5, 2.0], err_msg=name)
        np.testing.assert_allclose(layer.translate, [-5.0, 20.0, -10.0], err_msg=name)
        assert layer.metadata["axcodes"] == ORIENTATIONS[name][2]


def test_read_write_read_keeps_voxels_affine_and_header_codes(scan, tmp_path):
    path, source, affine, name = scan
    layer = open_layer(path)
    data, attributes, kind = layer.as_layer_data_tuple()
    assert kind == "image"
    out = tmp_path / "out" / f"copy_{name}.nii.gz"
    assert write_image(str(out), data, attributes) == [str(out)]
    written, original = nib.load(str(out)), nib.load(path)
    np.testing.assert_array_equal(np.asanyarray(written.dataobj), source)
    np.testing.assert_allclose(written.affine, affine, atol=1e-5)
    for key in ("qform_code", "sform_code", "intent_code"):
        assert int(written.header[key]) == int(original.header[key]), key
    again = open_layer(str(out))
    np.testing.assert_array_equal(again.data, layer.data)
    np.testing.assert_allclose(again.affine.affine_matrix, layer.affine.affine_matrix, atol=1e-5)
    np.testing.assert_allclose(again.scale, layer.scale, atol=1e-5)
    np.testing.assert_allclose(again.translate, layer.translate, atol=1e-5)


def test_labels_stay_integer_with_label_intent(tmp_path):
    labels = (phantom() >= 100).astype(np.uint16) * 3
    labels[0, 0, 0] = 40000  # beyond int16
    data, affine = reoriented(labels, *ORIENTATIONS["LPS"][:2])
    path = save(tmp_path / "atlas.nii.gz", data, affine, intent="label")
    layer = open_layer(path)
    assert layer.__class__.__name__ == "Labels" and np.issubdtype(layer.data.dtype, np.integer)
    assert set(np.unique(layer.data)) == {0, 3, 40000}
    out = tmp_path / "atlas_copy.nii.gz"
    write_labels(str(out), *layer.as_layer_data_tuple()[:2])
    written = nib.load(str(out))
    assert np.issubdtype(written.get_data_dtype(), np.integer) and written.header.get_intent()[0] == "label"
    np.testing.assert_array_equal(np.asanyarray(written.dataobj), data)
    again = open_layer(str(out))
    assert again.__class__.__name__ == "Labels" and again.data.dtype.kind == "i"


def test_integer_files_open_as_labels_only_when_they_say_so(tmp_path):
    mask = (phantom() >= 100).astype(np.uint8)
    assert open_layer(save(tmp_path / "lesion_mask.nii.gz", mask, RAS_AFFINE)).__class__.__name__ == "Labels"
    ct = (phantom() * 10).astype(np.int16)
    assert open_layer(save(tmp_path / "ct.nii.gz", ct, RAS_AFFINE)).__class__.__name__ == "Image"


def test_new_layer_without_source_uses_scale_and_translate(tmp_path):
    data = np.zeros((4, 5, 6), dtype=np.uint8)
    data[1, 2, 3] = 7
    out = write_labels(str(tmp_path / "painted"), data, {"scale": [3.0, 2.0, 1.0], "translate": [1.0, 2.0, 3.0]})
    assert out == [str(tmp_path / "painted.nii.gz")]
    img = nib.load(out[0])
    np.testing.assert_allclose(img.affine, [[1, 0, 0, 3], [0, 2, 0, 2], [0, 0, 3, 1], [0, 0, 0, 1]])
    assert np.asanyarray(img.dataobj)[3, 2, 1] == 7


def test_an_existing_file_is_never_overwritten(tmp_path):
    target = tmp_path / "result.nii.gz"
    target.write_bytes(b"precious")
    with pytest.raises(FileExistsError, match="never replaces"):
        write_image(str(target), np.ones((3, 4, 5), np.float32), {})
    with pytest.raises(FileExistsError, match="exists"):
        io.write_nifti(target, np.ones((3, 4, 5), np.float32))
    assert target.read_bytes() == b"precious"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["result.nii.gz"]


def test_a_file_appearing_during_the_write_is_not_replaced(tmp_path, monkeypatch):
    target = tmp_path / "result.nii"
    real_save = nib.save

    def racing_save(img, filename):
        real_save(img, filename)
        target.write_bytes(b"written by someone else meanwhile")

    monkeypatch.setattr(nib, "save", racing_save)
    with pytest.raises(FileExistsError):
        io.write_nifti(target, np.ones((3, 4, 5), np.float32))
    assert target.read_bytes() == b"written by someone else meanwhile"
    assert [p.name for p in tmp_path.iterdir()] == ["result.nii"]


def test_a_failed_write_leaves_no_partial_file(tmp_path, monkeypatch):
    def broken_save(img, filename):
        with open(filename, "wb") as fh:
            fh.write(b"half a file")
        raise OSError("disk full")

    monkeypatch.setattr(nib, "save", broken_save)
    with pytest.raises(OSError, match="disk full"):
        write_image(str(tmp_path / "scan.nii.gz"), np.ones((3, 4, 5), np.float32), {})
    assert list(tmp_path.iterdir()) == []


def test_written_files_follow_the_umask(tmp_path):
    old = os.umask(0o027)
    try:
        image = io.write_nifti(tmp_path / "scan.nii", np.ones((3, 4, 5), np.float32))
        io.atomic_write(tmp_path / "card.json", lambda tmp: open(tmp, "w").write("{}"))
    finally:
        os.umask(old)
    assert (image.stat().st_mode & 0o777) == 0o640
    assert ((tmp_path / "card.json").stat().st_mode & 0o777) == 0o640


def test_atomic_write_keeps_the_old_file_on_failure_and_refuses_without_overwrite(tmp_path):
    target = tmp_path / "card.json"
    target.write_text("old")

    def broken(tmp):
        Path(tmp).write_text("half")
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        io.atomic_write(target, broken)
    with pytest.raises(FileExistsError, match="exists"):
        io.atomic_write(target, lambda tmp: Path(tmp).write_text("new"), overwrite=False)
    assert target.read_text() == "old" and [p.name for p in tmp_path.iterdir()] == ["card.json"]
    io.atomic_write(target, lambda tmp: Path(tmp).write_text("new"))
    assert target.read_text() == "new" and [p.name for p in tmp_path.iterdir()] == ["card.json"]


def test_4d_file_gets_a_leading_axis_and_round_trips(tmp_path):
    data4 = np.random.default_rng(0).random((6, 5, 4, 3), dtype=np.float32)
    _, affine = reoriented(phantom(), *ORIENTATIONS["LAS"][:2])
    layer = open_layer(save(tmp_path / "bold.nii.gz", data4, affine))
    assert layer.data.shape == (3, 4, 5, 6)
    assert layer.scale[0] == 1.0 and layer.translate[0] == 0.0
    np.testing.assert_array_equal(layer.data[2], np.transpose(data4[::-1, :, :, 2], (2, 1, 0)))
    out = tmp_path / "bold_copy.nii.gz"
    write_image(str(out), *layer.as_layer_data_tuple()[:2])
    np.testing.assert_array_equal(np.asanyarray(nib.load(str(out)).dataobj), data4)


@pytest.mark.parametrize("shape, napari_shape", [((6, 5), (5, 6)), ((6, 1, 4), (4, 6)), ((1, 5, 4), (4, 5))])
def test_2d_and_singleton_axes_are_squeezed(tmp_path, shape, napari_shape):
    data = np.arange(np.prod(shape), dtype=np.float32).reshape(shape)
    _, affine = reoriented(phantom(), *ORIENTATIONS["LPS"][:2])  # not canonical: must be reoriented too
    path = tmp_path / "slice.nii.gz"
    nib.save(nib.Nifti1Image(data, affine), str(path))
    layer = open_layer(str(path))
    assert layer.data.shape == napari_shape and layer.ndim == 2
    out = tmp_path / "slice_copy.nii.gz"
    write_image(str(out), *layer.as_layer_data_tuple()[:2])
    written = nib.load(str(out))
    assert written.shape == shape
    np.testing.assert_array_equal(np.asanyarray(written.dataobj), data)


@pytest.mark.parametrize("path", ["scan.tif", "scan.nii.bak", "", None, 42, [], ["a.nii", "b.png"], [None]])
def test_reader_declines_what_is_not_nifti(path, tmp_path):
    assert get_reader(path) is None
    (tmp_path / "folder.nii").mkdir()
    assert get_reader(str(tmp_path / "folder.nii")) is None


def test_several_files_stack_along_a_new_axis(tmp_path):
    paths = [save(tmp_path / f"t{i}.nii.gz", phantom() + i, RAS_AFFINE) for i in range(2)]
    (data, kwargs, kind), = get_reader(paths)(paths)
    assert kind == "image" and data.shape == (2, 8, 12, 10) and kwargs["scale"][0] == 1.0
    other = save(tmp_path / "small.nii.gz", phantom()[:5], RAS_AFFINE)
    with pytest.raises(ValueError, match="cannot stack"):
        read_layers([paths[0], other])


def test_corrupt_files_give_a_clear_error(tmp_path):
    good = save(tmp_path / "good.nii.gz", phantom(), RAS_AFFINE)
    raw = open(good, "rb").read()
    cases = {
        "truncated.nii.gz": raw[: len(raw) // 2],
        "garbage.nii.gz": b"not a nifti file at all" * 20,
        "gzipped_junk.nii.gz": gzip.compress(b"\0" * 500),
    }
    for name, content in cases.items():
        (tmp_path / name).write_bytes(content)
        reader = get_reader(str(tmp_path / name))
        assert reader is not None
        with pytest.raises(ValueError, match=f"cannot read .*{name}"):
            reader(str(tmp_path / name))


def test_npe2_finds_the_reader_and_writer(tmp_path):
    import npe2

    npe2.PluginManager.instance().discover()
    path = save(tmp_path / "scan.nii.gz", *reoriented(phantom(), *ORIENTATIONS["LPS"][:2]))
    (data, kwargs, kind), = npe2.read([path], stack=False, plugin_name="napari-diffmed")
    np.testing.assert_array_equal(data, np.transpose(phantom(), (2, 1, 0)))
    out = str(tmp_path / "copy.nii.gz")
    assert npe2.write(out, [(data, kwargs, kind)], plugin_name="napari-diffmed") == [out]
    np.testing.assert_allclose(nib.load(out).affine, nib.load(path).affine, atol=1e-5)


@pytest.mark.gui
def test_open_and_save_in_a_real_viewer(make_napari_viewer, tmp_path):
    labels = (phantom() >= 100).astype(np.uint8)
    scan = save(tmp_path / "scan.nii.gz", *reoriented(phantom(), *ORIENTATIONS["LPS"][:2]))
    seg = save(tmp_path / "seg.nii.gz", *reoriented(labels, *ORIENTATIONS["LPS"][:2]), intent="label")
    viewer = make_napari_viewer()
    (image,) = viewer.open(scan, plugin="napari-diffmed")
    (mask,) = viewer.open(seg, plugin="napari-diffmed")
    assert image.__class__.__name__ == "Image" and mask.__class__.__name__ == "Labels"
    np.testing.assert_allclose(image.scale, [3.0, 2.5, 2.0])
    np.testing.assert_allclose(viewer.layers.extent.world, mask.extent.world)
    mask.data[0, 0, 0] = 2  # an edit in napari
    viewer.layers.selection = {mask}
    out = tmp_path / "seg_edited.nii.gz"
    assert viewer.layers.save(str(out), selected=True, plugin="napari-diffmed") == [str(out)]
    written = nib.load(str(out))
    np.testing.assert_allclose(written.affine, nib.load(seg).affine, atol=1e-5)
    assert np.asanyarray(written.dataobj).max() == 2 and written.header.get_intent()[0] == "label"
    with pytest.raises(FileExistsError):
        viewer.layers.save(str(out), selected=True, plugin="napari-diffmed")
