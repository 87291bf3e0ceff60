"""Scans shown the way readers expect: checked on screenshots of an asymmetric phantom, layers untouched."""

from __future__ import annotations

import nibabel as nib
import numpy as np
import pytest

from napari_diffmed._qt.orientation import edge_letters, screen_directions, world_letters

SHAPE = (40, 48, 36)  # (x, y, z) = (R, A, S) voxels of 1 mm
BLOB = (slice(28, 36), slice(36, 44), slice(26, 32))  # right, anterior, superior


def phantom_file(tmp_path) -> str:
    """The phantom stored LPS (as DICOM is), a dim head with one bright blob front-right-top."""
    data = np.full(SHAPE, 100, np.int16)
    data[BLOB] = 1000
    img = nib.Nifti1Image(data, np.eye(4))
    img = img.as_reoriented(nib.orientations.axcodes2ornt("LPS"))
    img.set_data_dtype(np.int16)
    nib.save(img, str(tmp_path / "phantom.nii.gz"))
    return str(tmp_path / "phantom.nii.gz")


@pytest.mark.parametrize("convention, displayed, expected", [
    ("radiological", "AR", {"top": "A", "bottom": "P", "left": "R", "right": "L"}),
    ("neurological", "AR", {"top": "A", "bottom": "P", "left": "L", "right": "R"}),
    ("radiological", "SR", {"top": "S", "bottom": "I", "left": "R", "right": "L"}),
    ("neurological", "SA", {"top": "S", "bottom": "I", "left": "A", "right": "P"}),
    ("napari", "AR", {"top": "P", "bottom": "A", "left": "L", "right": "R"}),
])
def test_edge_letters(convention, displayed, expected):
    vertical, horizontal = displayed
    assert edge_letters(vertical, horizontal, screen_directions(vertical, horizontal, convention)) == expected


def test_unknown_convention_is_refused():
    with pytest.raises(ValueError, match=r"unknown display convention 'upside'; choose from .*'radiological'"):
        screen_directions("A", "R", "upside")


def blob_centre(viewer) -> tuple[float, float]:
    """Centre of the bright blob on the canvas, as fractions of (height, width) from the top left."""
    shot = viewer.screenshot(canvas_only=True, flash=False)
    red = (shot[..., 0] > 150) & (shot[..., 1] < 80)  # the red colormap's bright end; letters are yellow
    assert red.sum() > 20, "the blob is not on screen"
    rows, cols = np.nonzero(red)
    return rows.mean() / shot.shape[0], cols.mean() / shot.shape[1]


PLANES = {"axial": (0, 1, 2), "coronal": (1, 0, 2), "sagittal": (2, 0, 1)}  # dims.order; the last two are shown


@pytest.mark.gui
def test_each_plane_in_the_chosen_convention_and_saving_is_unchanged(make_napari_viewer, tmp_path):
    from napari_diffmed._qt.orientation import OrientationWidget

    from test_dicom import write_series

    from napari_diffmed.dicom import to_nifti

    series = write_series(phantom_file(tmp_path), tmp_path / "series")  # a DICOM series, as a scanner sends it
    viewer = make_napari_viewer(show=True)  # screenshots need a drawn canvas (Xvfb)
    (layer,) = viewer.open(str(series), plugin="napari-diffmed")
    layer.colormap, layer.contrast_limits = "red", (0, 1000)
    before = {key: np.array(getattr(layer, key)) for key in ("scale", "translate")}
    before["affine"] = layer.affine.affine_matrix.copy()
    first = tmp_path / "before.nii"
    viewer.layers.selection = {layer}
    viewer.layers.save(str(first), selected=True, plugin="napari-diffmed")
    viewer.dims.point = (28.5, 39.5, 31.5)  # world (S, A, R) through the blob
    widget = OrientationWidget(viewer)
    assert widget.convention.value == "radiological"  # the reader already applied the default
    letters = lambda: {e: viewer.canvas.overlays[f"diffmed_orientation_{e}"].text for e in ("top", "left", "right")}
    # (plane, convention) -> the blob must be (up?, on the left?) and the letters read so
    expect = {
        ("axial", "radiological"): (True, True, {"top": "A", "left": "R", "right": "L"}),
        ("axial", "neurological"): (True, False, {"top": "A", "left": "L", "right": "R"}),
        ("coronal", "radiological"): (True, True, {"top": "S", "left": "R", "right": "L"}),
        ("coronal", "neurological"): (True, False, {"top": "S", "left": "L", "right": "R"}),
        ("sagittal", "radiological"): (True, True, {"top": "S", "left": "A", "right": "P"}),
        ("sagittal", "neurological"): (True, True, {"top": "S", "left": "A", "right": "P"}),
        ("axial", "napari"): (False, False, {"top": "", "left": "", "right": ""}),  # napari's own: anterior down
    }
    for (plane, convention), (up, left, text) in expect.items():
        widget.convention.value = convention
        viewer.dims.order = PLANES[plane]
        viewer.reset_view()
        row, col = blob_centre(viewer)
        assert (row < 0.5, col < 0.5) == (up, left), f"{plane} {convention}: blob at {row:.2f}, {col:.2f}"
        assert letters() == text, f"{plane} {convention}"
    second = tmp_path / "after.nii"
    viewer.layers.save(str(second), selected=True, plugin="napari-diffmed")
    assert second.read_bytes() == first.read_bytes()
    assert np.allclose(nib.load(str(second)).affine, to_nifti(series)[0].affine)  # the series' own grid
    np.testing.assert_array_equal(layer.scale, before["scale"])
    np.testing.assert_array_equal(layer.translate, before["translate"])
    np.testing.assert_array_equal(layer.affine.affine_matrix, before["affine"])


@pytest.mark.gui
def test_a_2d_dicom_slice_gets_axial_letters_and_the_widget_opens_from_the_menu(make_napari_viewer):
    from pydicom.data import get_testdata_file

    viewer = make_napari_viewer()
    (layer,) = viewer.open(get_testdata_file("CT_small.dcm"), plugin="napari-diffmed")
    assert world_letters(viewer) == ["A", "R"]
    assert viewer.canvas.overlays["diffmed_orientation_top"].text == "A"
    assert viewer.canvas.overlays["diffmed_orientation_left"].text == "R"
    _, widget = viewer.window.add_plugin_dock_widget("napari-diffmed", "View: scan orientation")
    widget.convention.value = "neurological"
    assert viewer.canvas.overlays["diffmed_orientation_left"].text == "L"
    assert tuple(viewer.camera.orientation2d) == ("up", "right")
