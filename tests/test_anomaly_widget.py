"""The Anomaly map widget in a real napari viewer (Xvfb): the overlay, re-thresholding, scores, cancel."""

from __future__ import annotations

import numpy as np
import pytest

from napari_diffmed.anomaly import DEFAULTS

pytestmark = pytest.mark.gui


@pytest.fixture
def setup(make_napari_viewer, tiny_image_model, small_volume):
    from napari_diffmed._qt.anomaly import AnomalyWidget

    viewer = make_napari_viewer()
    scan = viewer.add_image(small_volume.image, name="scan", scale=small_volume.spacing,
                            translate=small_volume.translate, metadata={"spacing": small_volume.spacing})
    lesion = viewer.add_labels(small_volume.mask.astype(np.uint8), name="lesion", scale=small_volume.spacing,
                               translate=small_volume.translate)
    widget = AnomalyWidget(viewer)
    viewer.window.add_dock_widget(widget)
    widget.model_file.value = tiny_image_model
    widget.device.value = "cpu"
    widget.method.value, widget.steps.value = "gaussian", 10
    return viewer, widget, scan, lesion


def test_opens_with_the_shared_defaults(make_napari_viewer):
    from napari_diffmed._qt.anomaly import AnomalyWidget

    widget = AnomalyWidget(make_napari_viewer())
    s = widget.settings()
    assert (s["method"], s["depth"], s["guidance"], s["compare"], s["steps"], s["seed"]) == (
        DEFAULTS.method, DEFAULTS.depth, DEFAULTS.guidance, DEFAULTS.compare, DEFAULTS.steps, DEFAULTS.seed)
    hidden = lambda w: w.native.isHidden()  # noqa: E731 - set hidden (the viewer itself is not on screen)
    assert widget.model.value == "mni_t1_axial_64" and hidden(widget.level) and not hidden(widget.depth)
    widget.method.value = "simplex"
    assert not hidden(widget.level) and hidden(widget.depth)


def test_overlay_rethreshold_and_scores(run_widget, setup, qtbot, tiny_image_model):
    from napari_diffmed.models import get_model

    viewer, widget, scan, lesion = setup
    widget.reference.value = lesion
    original = scan.data.copy()
    run_widget(widget)
    names = [layer.name for layer in viewer.layers]
    assert names == ["scan", "lesion", "scan pseudo-healthy", "scan anomaly heatmap", "scan anomaly mask"]
    heat, mask = viewer.layers["scan anomaly heatmap"], viewer.layers["scan anomaly mask"]
    assert heat.colormap.name == "inferno" and heat.blending == "additive" and 0 < heat.opacity < 1
    for layer in (heat, mask, viewer.layers["scan pseudo-healthy"]):
        assert layer.data.shape == scan.data.shape
        np.testing.assert_allclose(layer.scale, scan.scale)
        np.testing.assert_allclose(layer.translate, scan.translate)
    assert heat.metadata["provenance"]["compared_with"] == "unguided decoding"
    np.testing.assert_array_equal(scan.data, original)  # the input layer is untouched
    assert "AUROC" in widget.metrics.value and "Dice here" in widget.metrics.value

    calls = []
    hook = get_model(tiny_image_model, "cpu").network.register_forward_hook(lambda *a: calls.append(1))
    try:
        before = int(mask.data.sum())
        inside = heat.data[widget.result.brain_mask]
        widget.threshold.value = float(np.percentile(inside, 20))  # the slider, moved down
        loose = int(mask.data.sum())
        widget.threshold.value = float(np.percentile(inside, 99))
        tight = int(mask.data.sum())
    finally:
        hook.remove()
    assert loose > before > tight > 0
    assert calls == []  # re-thresholding never runs the model


def test_cancel_leaves_only_the_prior_layers(setup, qtbot):
    viewer, widget, _, _ = setup
    widget.steps.value = 1000  # long enough to be stopped mid-run
    widget.method.value, widget.level.value = "gaussian", 999
    worker = widget.run()
    qtbot.waitUntil(lambda: "scan reconstruction (running)" in viewer.layers, timeout=60_000)
    widget.cancel_button.changed.emit(True)
    qtbot.waitUntil(lambda: widget.runner.worker is None, timeout=30_000)
    assert worker.abort_requested and widget.status.value == "cancelled"
    assert widget.progress.value < widget.progress.max
    assert [layer.name for layer in viewer.layers] == ["scan", "lesion"]  # the preview went with the job


def test_bad_input_is_refused_without_a_run(setup, tiny_seg_model):
    viewer, widget, _, _ = setup
    widget.slices.value = "a-b"
    assert widget.run() is None and "40:52" in widget.status.value
    widget.slices.value = ""
    widget.model_file.value = tiny_seg_model
    assert widget.run() is None and "an anomaly map needs an image model" in widget.status.value
    assert [layer.name for layer in viewer.layers] == ["scan", "lesion"]
