"""The Inpaint widget in a real napari viewer (Xvfb): painted Labels and Shapes masks, cancel, accept."""

from __future__ import annotations

import numpy as np
import pytest

from napari_diffmed.inpainting import DEFAULTS, MODES, count_network_calls, repaint_schedule

pytestmark = pytest.mark.gui


@pytest.fixture
def setup(make_napari_viewer, tiny_image_model):
    from napari_diffmed._qt.inpainting import InpaintingWidget
    from napari_diffmed.sample_data import make_phantom

    p = make_phantom(shape=(6, 24, 24), spacing=(3.0, 2.0, 2.0), seed=0)
    viewer = make_napari_viewer()
    scan = viewer.add_image(p.image, name="scan", scale=p.spacing, translate=p.translate,
                            metadata={"spacing": p.spacing})
    labels = viewer.add_labels(np.zeros(p.image.shape, np.uint8), name="painted", scale=p.spacing,
                               translate=p.translate)
    widget = InpaintingWidget(viewer)
    viewer.window.add_dock_widget(widget)
    widget.device.value = "cpu"
    widget.model_file.value = tiny_image_model
    return viewer, widget, scan, labels


def _paint(labels, points, size=3):
    labels.brush_size = size
    for point in points:
        labels.paint(point, 1)  # what the brush does under the mouse


def test_opens_with_the_shared_defaults(make_napari_viewer):
    from napari_diffmed._qt.inpainting import InpaintingWidget

    widget = InpaintingWidget(make_napari_viewer())
    preset = MODES[DEFAULTS.mode]
    s = widget.settings()
    assert (s["mode"], s["steps"], s["jump_length"], s["resamplings"]) == (
        DEFAULTS.mode, preset.steps, preset.jump_length, preset.resamplings)
    assert (s["proposals"], s["seed"], s["axis"]) == (DEFAULTS.proposals, DEFAULTS.seed, DEFAULTS.axis)
    assert f"{count_network_calls(repaint_schedule(preset))} network calls" in widget.calls.value
    widget.mode.value = "quality"
    assert widget.steps.value == MODES["quality"].steps
    assert f"{count_network_calls(repaint_schedule(MODES['quality']))} network calls" in widget.calls.value


def test_painted_labels_give_proposals_mean_variance_and_accept(run_widget, setup, qtbot):
    viewer, widget, scan, labels = setup
    _paint(labels, [(2, 10, 10), (2, 11, 12), (3, 12, 13)])
    painted = labels.data > 0
    assert painted.any()
    original, mask_before = scan.data.copy(), labels.data.copy()
    assert widget.class_name.value == "healthy"
    widget.steps.value, widget.jump_length.value, widget.resamplings.value = 4, 2, 2
    widget.proposals.value = 2
    run_widget(widget)
    names = [layer.name for layer in viewer.layers]
    assert names == ["scan", "painted", "scan inpaint proposals", "scan inpaint mean", "scan inpaint variance"]
    proposals = viewer.layers["scan inpaint proposals"]
    mean, variance = viewer.layers["scan inpaint mean"].data, viewer.layers["scan inpaint variance"].data
    assert proposals.data.shape == (2, 6, 24, 24)
    np.testing.assert_allclose(proposals.scale, (1.0, 3.0, 2.0, 2.0))
    np.testing.assert_allclose(viewer.layers["scan inpaint mean"].translate, scan.translate)
    for out in (*proposals.data, mean):
        assert np.array_equal(out[~painted], original[~painted])
    assert not np.array_equal(proposals.data[0][painted], proposals.data[1][painted])
    assert np.all(variance[~painted] == 0) and variance[painted].max() > 0
    prov = proposals.metadata["provenance"]
    assert prov["slices"] == [2, 3] and prov["steps"] == 4 and prov["class_name"] == "healthy"
    assert np.array_equal(scan.data, original) and np.array_equal(labels.data, mask_before)

    widget.chosen.value = 1
    accepted = widget.accept()
    assert accepted.name == "scan inpainted #1" and np.array_equal(accepted.data, proposals.data[1])
    np.testing.assert_allclose(accepted.scale, scan.scale)
    assert np.array_equal(scan.data, original)


def test_shapes_mask_and_current_slice(run_widget, setup, qtbot):
    viewer, widget, scan, labels = setup
    z = scan.translate[0] + scan.scale[0]  # slice 1, in world coordinates (mm)
    world = np.array([[z, -10.0, -6.0], [z, -10.0, 4.0], [z, 0.0, 4.0], [z, 0.0, -6.0]])
    shapes = viewer.add_shapes([world], shape_type="rectangle", name="box")
    widget.mask.value = "box"
    _paint(labels, [(4, 12, 12)])  # not the chosen mask layer: ignored
    widget.steps.value, widget.jump_length.value, widget.resamplings.value = 4, 2, 1
    widget.region.value = "current slice"
    viewer.dims.set_point(0, z)
    run_widget(widget)
    prov = viewer.layers["scan inpaint mean"].metadata["provenance"]
    assert prov["slices"] == [1] and prov["network_calls"] == 4
    changed = np.any(viewer.layers["scan inpaint proposals"].data != scan.data, axis=0)
    assert changed.any() and np.argwhere(changed)[:, 0].tolist() == [1] * int(changed.sum())
    assert shapes.data[0].shape == (4, 3)


def test_cancel_within_a_step_adds_nothing(setup, qtbot):
    viewer, widget, scan, labels = setup
    _paint(labels, [(2, 10, 10)])
    widget.mode.value = "quality"
    widget.steps.value = 1000  # thousands of calls: certainly still running when Cancel is pressed
    worker = widget.run()
    qtbot.waitUntil(lambda: "scan inpaint preview" in viewer.layers, timeout=60_000)
    preview = viewer.layers["scan inpaint preview"].data
    assert preview.shape == scan.data.shape and np.array_equal(preview[labels.data == 0], scan.data[labels.data == 0])
    widget.cancel_button.changed.emit(True)
    qtbot.waitUntil(lambda: widget.runner.worker is None, timeout=30_000)
    assert worker.abort_requested and widget.status.value == "cancelled"
    assert widget.progress.value < widget.progress.max
    assert [layer.name for layer in viewer.layers] == ["scan", "painted"]


def test_mask_on_another_grid_and_bad_masks(run_widget, setup, qtbot, make_napari_viewer):
    viewer, widget, scan, labels = setup
    fine = np.zeros((6, 48, 48), np.uint8)
    fine[2, 20:28, 20:28] = 1  # 1 mm in-plane: resampled onto the 2 mm scan with a notice
    viewer.add_labels(fine, name="fine", scale=(3.0, 1.0, 1.0), translate=np.add(scan.translate, (0, -0.5, -0.5)))
    widget.mask.value = "fine"
    widget.steps.value, widget.jump_length.value, widget.resamplings.value, widget.proposals.value = 4, 2, 1, 1
    run_widget(widget)
    changed = np.any(viewer.layers["scan inpaint proposals"].data != scan.data, axis=0)
    assert changed[2, 10:14, 10:14].any() and not changed[:, :8].any()

    viewer.add_labels(np.zeros((24, 24), np.uint8), name="flat")
    widget.mask.value = "flat"
    assert widget.run() is None
    assert "has 2 axes" in widget.status.value
