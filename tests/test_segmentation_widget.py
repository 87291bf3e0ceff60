"""The Segment (ensemble) widget in a real napari viewer (Xvfb): layers, re-fusing, review, scores."""

from __future__ import annotations

import numpy as np
import pytest

from napari_diffmed.ensemble import DEFAULTS

pytestmark = pytest.mark.gui


@pytest.fixture
def setup(make_napari_viewer, tiny_seg_model):
    from napari_diffmed._qt.segmentation import SegmentationWidget
    from napari_diffmed.sample_data import make_phantom

    p = make_phantom(shape=(6, 24, 24), spacing=(3.0, 2.0, 2.0), seed=0)
    viewer = make_napari_viewer()
    scan = viewer.add_image(p.image, name="scan", scale=p.spacing, translate=p.translate,
                            metadata={"spacing": p.spacing, "source": "phantom"})
    widget = SegmentationWidget(viewer)
    viewer.window.add_dock_widget(widget)
    widget.device.value = "cpu"
    widget.model_file.value = tiny_seg_model
    widget.members.value, widget.steps.value = 4, 3
    return viewer, widget, scan


def test_opens_with_the_shared_defaults(make_napari_viewer):
    from napari_diffmed._qt.segmentation import SegmentationWidget

    widget = SegmentationWidget(make_napari_viewer())
    s = widget.settings()
    assert (s["members"], s["steps"], s["scheduler"], s["seed"]) == (
        DEFAULTS.members, DEFAULTS.steps, DEFAULTS.scheduler, DEFAULTS.seed)
    assert (widget.rule.value, widget.threshold.value) == (DEFAULTS.rule, DEFAULTS.threshold)


def test_run_adds_aligned_layers_and_refuses_without_the_model(run_widget, setup, qtbot, tiny_seg_model):
    from napari_diffmed.models import get_model

    viewer, widget, scan = setup
    original = scan.data.copy()
    assert (widget.first.value, widget.stop.value) == (0, 6)  # the default slab, clipped to the volume (6 excluded)
    widget.keep_members.value = True
    run_widget(widget)
    names = [layer.name for layer in viewer.layers]
    assert names == ["scan", "scan ensemble mean", "scan ensemble variance", "scan ensemble entropy",
                     "scan ensemble members", "scan consensus"]
    labels = viewer.layers["scan consensus"]
    for name in ("scan ensemble mean", "scan ensemble entropy", "scan consensus"):
        layer = viewer.layers[name]
        assert layer.data.shape == scan.data.shape
        np.testing.assert_allclose(layer.scale, scan.scale)
        np.testing.assert_allclose(layer.translate, scan.translate)
        assert layer.metadata["source"] == "phantom" and layer.metadata["provenance"]["members"] == 4
    stack = viewer.layers["scan ensemble members"]
    assert stack.data.shape == (4, *scan.data.shape)
    np.testing.assert_allclose(stack.scale, (1.0, *scan.scale))
    assert np.array_equal(scan.data, original)
    assert widget.progress.value == widget.progress.max == 3 * 2  # 6 slices x 4 members: 2 chunks of 16, 3 steps

    network = get_model(tiny_seg_model, "cpu").network
    calls = []
    hook = network.register_forward_hook(lambda *a: calls.append(1))
    try:
        widget.threshold.value = 0.0
        loose = labels.data.copy()
        widget.threshold.value = 0.9
        strict = labels.data.copy()
        widget.rule.value = "majority"
    finally:
        hook.remove()
    assert calls == []
    assert loose.sum() > strict.sum()
    assert np.array_equal(labels.data, widget.result.labels("majority", 0.9))

    widget.run_button.changed.emit(True)  # a second run gets its own names
    qtbot.waitUntil(lambda: widget.runner.worker is None, timeout=60_000)
    assert "scan consensus [1]" in [layer.name for layer in viewer.layers]


def test_review_moves_through_the_most_uncertain_slices(run_widget, setup, qtbot):
    viewer, widget, scan = setup
    widget.region.value = "slice range"
    widget.first.value, widget.stop.value = 1, 5
    run_widget(widget)
    order = widget._order
    assert sorted(order) == [1, 2, 3, 4] and len(widget.ranked.choices) == 4
    totals = widget.result.entropy.sum(axis=(1, 2))
    assert [totals[i] for i in order] == sorted(totals[[1, 2, 3, 4]], reverse=True)
    viewer.dims.current_step = (0, 0, 0)
    assert widget.step(1) == order[0] and viewer.dims.current_step[0] == order[0]
    assert widget.step(1) == order[1] and viewer.dims.current_step[0] == order[1]
    assert widget.step(-1) == order[0] and viewer.dims.current_step[0] == order[0]
    widget.ranked.value = [order[3]]  # picking from the list goes there too
    assert viewer.dims.current_step[0] == order[3]


def test_reference_labels_give_scores(run_widget, setup, qtbot):
    viewer, widget, scan = setup
    widget.region.value = "current slice"
    viewer.dims.current_step = (2, 0, 0)
    run_widget(widget)
    assert widget.result.provenance["slices"] == [2]
    assert widget.metrics.value == ""
    viewer.add_labels((scan.data > 700).astype(np.uint8), name="reference", scale=scan.scale,
                      translate=scan.translate)
    widget.reference.value = "reference"
    assert widget.ranked.choices == (widget._order[0],)  # the review list outlives layer changes
    text = widget.metrics.value
    assert "Dice" in text and "HD95" in text and "GED" in text and "AUROC" in text
    before = text
    widget.threshold.value = 0.99
    assert widget.metrics.value != before  # scores follow the re-fused consensus


def test_an_image_model_is_refused_before_running(setup, tiny_image_model):
    viewer, widget, scan = setup
    widget.model_file.value = tiny_image_model
    assert widget.run() is None
    assert "made for task 'image'" in widget.status.value
    widget.model_file.value = None
    widget.model.value = None
    assert widget.run() is None and "segmentation model" in widget.status.value
