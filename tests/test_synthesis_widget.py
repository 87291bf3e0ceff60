"""The Synthesize widget in a real napari viewer (Xvfb): run, preview, cancel, results, bad input."""

from __future__ import annotations

import numpy as np
import pytest

from napari_diffmed.synthesis import DEFAULTS, synthesize

pytestmark = pytest.mark.gui


@pytest.fixture
def widget(make_napari_viewer):
    from napari_diffmed._qt.synthesis import SynthesisWidget

    viewer = make_napari_viewer()
    viewer.add_image(np.zeros((8, 8), dtype=np.float32), name="scan")
    widget = SynthesisWidget(viewer)
    viewer.window.add_dock_widget(widget)
    widget.device.value = "cpu"
    return widget


def _names(viewer):
    return [layer.name for layer in viewer.layers]


def test_opens_with_the_shared_defaults(widget):
    assert widget.model.value == "mni_t1_axial_64_v"  # the synthesis default, not the anomaly one
    s = widget.settings()
    assert (s.n, s.steps, s.scheduler, s.seed, s.guidance) == (
        DEFAULTS.n, DEFAULTS.steps, DEFAULTS.scheduler, DEFAULTS.seed, DEFAULTS.guidance)


def test_run_cancel_and_run_again(run_widget, widget, qtbot, tiny_image_model):
    viewer = widget.viewer
    widget.model_file.value = tiny_image_model
    assert widget.class_name.choices == ("healthy", "lesion") and widget.class_name.enabled
    widget.steps.value, widget.n_samples.value, widget.seed.value = 3, 4, 1
    widget.class_name.value, widget.guidance.value = "lesion", 2.0

    run_widget(widget)
    assert _names(viewer) == ["scan", "synthesis tiny_image"]
    layer = viewer.layers["synthesis tiny_image"]
    assert layer.data.shape == (4, 16, 16)
    np.testing.assert_allclose(layer.scale, (1.0, 4.0, 4.0))
    assert tuple(layer.contrast_limits) == (0.0, 1.0)
    prov = layer.metadata["provenance"]
    assert (prov["model"], prov["seed"], prov["steps"], prov["class_name"], prov["guidance"]) == (
        "tiny_image", 1, 3, "lesion", 2.0)
    assert prov["scheduler"] == "DDIMScheduler" and prov["device"] == "cpu" and len(prov["model_sha256"]) == 64
    expected = synthesize(tiny_image_model, n=4, steps=3, seed=1, class_name="lesion", guidance=2.0, device="cpu")
    np.testing.assert_array_equal(layer.data, expected.samples)  # same settings, same samples
    assert widget.progress.value == widget.progress.max == 3

    # cancel mid-run: the preview goes, no result layer is added
    widget.steps.value = 1000
    widget.scheduler.value = "ddpm"
    worker = widget.run()
    events = []
    worker.yielded.connect(events.append)
    qtbot.waitUntil(lambda: "synthesis preview" in viewer.layers, timeout=60_000)
    widget.cancel_button.changed.emit(True)
    at_cancel = len(events)
    qtbot.waitUntil(lambda: widget.runner.worker is None, timeout=30_000)
    assert worker.abort_requested and len(events) <= at_cancel + 2 < 1000  # stopped within a step or two
    assert _names(viewer) == ["scan", "synthesis tiny_image"]
    assert widget.status.value == "cancelled"

    # a second run gets its own layer name
    widget.steps.value, widget.scheduler.value = 3, "ddim"
    run_widget(widget)
    names = _names(viewer)
    assert len(names) == 3 and len(set(names)) == 3 and names[2].startswith("synthesis tiny_image")


@pytest.mark.parametrize("setup, reason", [
    (dict(scheduler="ddpm", steps=10), "needs steps=1000"),
    (dict(model="seg"), "is a segmentation model"),
    (dict(sweep_scales="0, lots"), "sweep scales must be comma-separated numbers, got '0, lots'"),
    (dict(sweep_scales="1, 50"), "guidance scale must be a number from 0 to 20, got 50.0"),
    (dict(model="missing"), "cannot read model"),
])
def test_bad_input_is_reported_and_adds_nothing(widget, tiny_image_model, tiny_seg_model, tmp_path, setup, reason):
    from napari.utils.notifications import notification_manager

    models = {"seg": tiny_seg_model, "missing": tmp_path / "nothing.safetensors"}
    widget.model_file.value = models.get(setup.get("model"), tiny_image_model)
    widget.steps.value = setup.get("steps", 3)
    widget.scheduler.value = setup.get("scheduler", "ddim")
    if "sweep_scales" in setup:
        widget.sweep.value, widget.sweep_scales.value = True, setup["sweep_scales"]
    assert widget.run() is None  # refused on the GUI thread, before any worker starts
    assert reason in widget.status.value and widget.status.value.startswith("failed")
    assert any(reason in str(n.message) for n in notification_manager.records)
    assert _names(widget.viewer) == ["scan"]


def test_volume_model_and_guidance_sweep(run_widget, widget, qtbot, tiny_volume_model, tiny_image_model):
    viewer = widget.viewer
    widget.model_file.value = tiny_volume_model
    assert not widget.class_name.enabled and not widget.guidance.enabled and not widget.sweep.enabled
    widget.steps.value, widget.n_samples.value = 2, 2
    run_widget(widget)
    assert _names(viewer) == ["scan", "synthesis tiny_volume #0", "synthesis tiny_volume #1"]
    for layer in list(viewer.layers)[1:]:
        assert layer.data.shape == (8, 8, 8)
        np.testing.assert_allclose(layer.scale, (8.0, 8.0, 8.0))
        assert layer.metadata["provenance"]["guidance"] is None

    widget.model_file.value = tiny_image_model
    widget.sweep.value, widget.sweep_scales.value = True, "0, 3"
    assert widget.sweep_scales.enabled and not widget.guidance.enabled
    widget.steps.value, widget.n_samples.value = 3, 2
    run_widget(widget)
    w0, w3 = viewer.layers["synthesis tiny_image w=0"], viewer.layers["synthesis tiny_image w=3"]
    assert w0.data.shape == w3.data.shape == (2, 16, 16)
    assert w3.translate[-1] > w0.translate[-1] + 16 * 4.0  # side by side, not overlapping
    assert w0.metadata["provenance"]["seed"] == w3.metadata["provenance"]["seed"]
    assert widget.progress.value == 6
