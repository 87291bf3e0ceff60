"""The widgets as a new user first sees them in a real napari window (Xvfb): tab titles that fit, the image
choice following the scan opened last, fields that do not apply hidden, one primary result layer visible."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest

pytestmark = pytest.mark.gui

SCRIPT = Path(__file__).parents[1] / "scripts" / "launch_check.py"


def _launch_check():
    spec = importlib.util.spec_from_file_location("launch_check", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _add_scan(viewer, name: str, depth: int, seed: int = 0):
    from napari_diffmed.sample_data import make_phantom

    p = make_phantom(shape=(depth, 24, 24), spacing=(3.0, 2.0, 2.0), seed=seed)
    return viewer.add_image(p.image, name=name, scale=p.spacing, translate=p.translate,
                            metadata={"spacing": p.spacing})


def _pick(combo, value) -> None:
    """Choose ``value`` as a user does: the combo box's own ``activated`` signal comes with it."""
    combo.value = value
    combo.native.activated.emit(combo.native.currentIndex())


def test_the_tabs_fit_at_napari_default_window_size(make_napari_viewer, qtbot, tmp_path):
    check = _launch_check()
    viewer = make_napari_viewer(show=True)
    docks = check.dock_all(viewer)
    window = viewer.window._qt_window
    for size in (None, (1066, 791)):  # napari's own size under Xvfb, and the one the issue was seen at
        if size:
            viewer.window.resize(*size)
        qtbot.wait(100)
        titles = check.tab_titles(window)
        shown = [title for title, _ in titles]
        assert shown[:4] == ["Synthesize", "Segment", "Inpaint", "Anomaly"], size
        assert len(shown) == len(docks) and not any("napari-diffmed" in title for title in shown), shown
        assert all(full for _, full in titles), (size, window.size(), titles)
    shot = viewer.screenshot(str(tmp_path / "window.png"), canvas_only=False)
    assert shot.shape[:2] == (window.height(), window.width()) or shot.shape[0] >= 500
    assert shot[..., :3].std() > 5  # a drawn window, not a blank


def test_segment_follows_the_scan_opened_last_until_one_is_picked(make_napari_viewer, qtbot):
    from napari_diffmed._qt.segmentation import SegmentationWidget

    viewer = make_napari_viewer()
    _add_scan(viewer, "first", 40)
    widget = SegmentationWidget(viewer)
    assert widget.image.value.name == "first" and widget.stop.value - widget.first.value == 12  # the default slab
    _add_scan(viewer, "second", 8, seed=1)
    assert widget.image.value.name == "second"
    assert (widget.first.value, widget.stop.value) == (0, 8)  # re-centred on the new scan, clipped to it
    viewer.layers.selection.active = viewer.layers["first"]
    assert widget.image.value.name == "first"
    _pick(widget.image, "second")
    _add_scan(viewer, "third", 8, seed=2)
    viewer.layers.selection.active = viewer.layers["first"]
    assert widget.image.value.name == "second"  # picked by hand: it stays
    viewer.layers.remove("second")
    _add_scan(viewer, "fourth", 8, seed=3)
    assert widget.image.value.name == "fourth"  # the picked layer is gone: following again


def test_slice_range_fields_show_only_for_a_slice_range(make_napari_viewer):
    from napari_diffmed._qt.inpainting import InpaintingWidget
    from napari_diffmed._qt.segmentation import SegmentationWidget
    from napari_diffmed.slices import parse_slices

    viewer = make_napari_viewer()
    scan = _add_scan(viewer, "scan", 20)
    for widget in (InpaintingWidget(viewer), SegmentationWidget(viewer)):
        assert widget.stop.label == "stop slice (excluded)"
        for region in ("whole volume", "current slice"):
            widget.region.value = region
            assert widget.first.native.isHidden() and widget.stop.native.isHidden(), region
        widget.region.value = "slice range"
        assert not widget.first.native.isHidden() and not widget.stop.native.isHidden()
        widget.first.value, widget.stop.value = 4, 9
        assert widget._indices(scan) == parse_slices("4:9") == [4, 5, 6, 7, 8]  # as --slices 4:9


def test_anomaly_threshold_says_its_calibrated_default_before_a_run(make_napari_viewer):
    from napari_diffmed._qt.anomaly import AnomalyWidget
    from napari_diffmed.models import get_model

    viewer = make_napari_viewer()
    _add_scan(viewer, "first", 8)
    widget = AnomalyWidget(viewer)
    entry = get_model("mni_t1_axial_64", "cpu").card.metrics["anomaly"]["threshold"]["ddim"]
    assert widget.threshold.native.isHidden()  # no 0.00 before there is a heatmap to cut
    assert widget.threshold_info.value == (f"ddim default threshold {entry['value']:.4g}: flags "
                                           f"{100 * entry['healthy_fraction']:g}% of healthy brain voxels")
    widget.method.value = "gaussian"
    assert widget.threshold_info.value.startswith("gaussian default threshold")
    second = _add_scan(viewer, "second", 8, seed=1)
    assert widget.image.value is second


def test_results_arrive_with_only_the_primary_layer_visible(make_napari_viewer, run_widget, tiny_image_model,
                                                            tiny_seg_model):
    from napari_diffmed._qt.anomaly import AnomalyWidget
    from napari_diffmed._qt.inpainting import InpaintingWidget
    from napari_diffmed._qt.segmentation import SegmentationWidget

    viewer = make_napari_viewer()
    scan = _add_scan(viewer, "scan", 4)
    painted = np.zeros(scan.data.shape, np.uint8)
    painted[1:3, 8:14, 8:14] = 1
    viewer.add_labels(painted, name="painted", scale=scan.scale, translate=scan.translate)
    segment, anomaly, inpaint = SegmentationWidget(viewer), AnomalyWidget(viewer), InpaintingWidget(viewer)
    segment.model_file.value, segment.members.value, segment.steps.value = tiny_seg_model, 2, 2
    anomaly.model_file.value, anomaly.method.value, anomaly.steps.value = tiny_image_model, "gaussian", 5
    inpaint.model_file.value = tiny_image_model
    inpaint.steps.value, inpaint.jump_length.value, inpaint.resamplings.value = 4, 2, 1
    for widget, primary in ((segment, "scan consensus"), (anomaly, "scan anomaly heatmap"),
                            (inpaint, "scan inpaint proposals")):
        widget.device.value = "cpu"
        before = set(layer.name for layer in viewer.layers)
        run_widget(widget)
        added = {layer.name: layer.visible for layer in viewer.layers if layer.name not in before}
        assert [name for name, visible in added.items() if visible] == [primary], added
        assert len(added) >= 3
        assert widget.image.value in ("scan", scan)  # results are not followed as new scans
    assert not anomaly.threshold.native.isHidden() and "healthy" not in anomaly.threshold_info.value
