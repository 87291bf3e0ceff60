"""What the task widgets share about running a job, in a real napari viewer (Xvfb): napari's GUI thread stays
responsive while each widget's job runs, Cancel leaves no result layer and stops the worker (also when it comes
after the last step), and a job's failure reaches the user once."""

from __future__ import annotations

import shutil
import time

import numpy as np
import pytest

pytestmark = pytest.mark.gui

class Lateness:
    """A 10 ms QTimer on the GUI thread. Between two ticks it keeps the delay beyond the period (wall clock: what
    the user sees, longer when other processes hold the cores) and the GUI thread's own CPU time (its work, the
    same on a loaded machine); each tick is one turn of napari's event loop."""

    def __init__(self) -> None:
        from qtpy.QtCore import QTimer

        self.late: list[float] = []
        self.busy: list[float] = []
        self.timer = QTimer()
        self.timer.setInterval(10)
        self.timer.timeout.connect(self._tick)

    def _tick(self) -> None:
        now, cpu = time.perf_counter(), time.thread_time()
        self.late.append(max(0.0, now - self.last - 0.010))
        self.busy.append(cpu - self.cpu)
        self.last, self.cpu = now, cpu

    def __enter__(self):
        self.last, self.cpu = time.perf_counter(), time.thread_time()
        self.timer.start()
        return self

    def __exit__(self, *exc) -> None:
        self.timer.stop()


@pytest.fixture
def viewer(make_napari_viewer):
    from napari_diffmed.sample_data import make_phantom

    p = make_phantom(shape=(4, 24, 24), spacing=(3.0, 2.0, 2.0), seed=0)
    viewer = make_napari_viewer()
    viewer.add_image(p.image, name="scan", scale=p.spacing, translate=p.translate, metadata={"spacing": p.spacing})
    painted = np.zeros(p.image.shape, np.uint8)
    painted[1:3, 8:14, 8:14] = 1
    viewer.add_labels(painted, name="painted", scale=p.spacing, translate=p.translate)
    return viewer


def _names(viewer) -> list[str]:
    return [layer.name for layer in viewer.layers]


def test_the_gui_thread_stays_responsive_while_each_widget_runs_a_job(viewer, qtbot, tiny_image_model,
                                                                      tiny_seg_model):
    from napari_diffmed._qt.anomaly import AnomalyWidget
    from napari_diffmed._qt.inpainting import InpaintingWidget
    from napari_diffmed._qt.segmentation import SegmentationWidget
    from napari_diffmed._qt.synthesis import SynthesisWidget

    setups = [
        (SynthesisWidget, tiny_image_model, dict(steps=3, n_samples=2)),
        (SegmentationWidget, tiny_seg_model, dict(members=2, steps=3, region="whole volume")),
        (InpaintingWidget, tiny_image_model, dict(steps=4, jump_length=2, resamplings=1, proposals=2)),
        (AnomalyWidget, tiny_image_model, dict(method="gaussian", steps=5)),
    ]
    for factory, model, values in setups:
        widget = factory(viewer)
        viewer.window.add_dock_widget(widget)
        widget.device.value, widget.model_file.value = "cpu", model
        for key, value in values.items():
            getattr(widget, key).value = value
        before = len(viewer.layers)
        with Lateness() as clock:
            worker = widget.run()
            assert worker is not None, widget.status.value
            qtbot.waitUntil(lambda: widget.runner.worker is None, timeout=120_000)
        assert len(viewer.layers) > before and widget.status.value.startswith("done"), widget.status.value
        # the event loop kept running while the job did: the work is off the GUI thread (how long the thread is
        # held is a figure of benchmarks/bench_gui.py, not a timed test)
        assert len(clock.busy) > 3, (factory.__name__, len(clock.busy))


def test_cancel_leaves_no_result_layer_and_stops_the_worker(viewer, qtbot, tiny_seg_model):
    from napari_diffmed._qt.segmentation import SegmentationWidget

    widget = SegmentationWidget(viewer)
    widget.device.value, widget.model_file.value = "cpu", tiny_seg_model
    widget.members.value, widget.region.value = 2, "whole volume"
    widget.scheduler.value, widget.steps.value = "ddpm", 1000
    events = []
    worker = widget.run()
    worker.yielded.connect(events.append)
    qtbot.waitUntil(lambda: len(events) >= 2, timeout=60_000)
    widget.cancel_button.changed.emit(True)
    at_cancel = len(events)
    qtbot.waitUntil(lambda: widget.runner.worker is None, timeout=30_000)
    assert worker.abort_requested and not worker.is_running and len(events) <= at_cancel + 2
    assert widget.status.value == "cancelled" and widget.run_button.enabled and not widget.cancel_button.enabled
    assert _names(viewer) == ["scan", "painted"]  # no result, and the preview went with the job

    # Cancel pressed at the last step, while the job restores and summarises its result: still nothing added
    widget.scheduler.value, widget.steps.value = "ddim", 3

    def cancel_at_the_end(event) -> None:
        if event.done >= event.total:
            widget.cancel_button.changed.emit(True)

    worker = widget.run()
    worker.yielded.connect(cancel_at_the_end)
    qtbot.waitUntil(lambda: widget.runner.worker is None, timeout=60_000)
    assert worker.abort_requested and not worker.is_running
    assert widget.status.value == "cancelled" and widget.result is None
    assert _names(viewer) == ["scan", "painted"]


def test_a_failed_job_is_reported_once(viewer, qtbot, monkeypatch, tmp_path, tiny_image_model):
    import sys

    from napari.utils.notifications import notification_manager

    from napari_diffmed._qt.synthesis import SynthesisWidget

    broken = tmp_path / "broken.safetensors"  # its card reads fine; the weights no longer match it
    shutil.copy(tiny_image_model, broken)
    shutil.copy(tiny_image_model.with_suffix(".json"), broken.with_suffix(".json"))
    with open(broken, "r+b") as f:
        f.seek(-4, 2)
        f.write(b"\x00\x01\x02\x03")
    monkeypatch.setattr(notification_manager, "catch_error", True)
    monkeypatch.setattr(sys, "excepthook", notification_manager.receive_error)  # as in napari's own window
    widget = SynthesisWidget(viewer)
    widget.device.value, widget.model_file.value, widget.steps.value = "cpu", broken, 2
    before = len(notification_manager.records)
    assert widget.run() is not None  # the card is fine: the weights are checked when the job loads them
    qtbot.waitUntil(lambda: widget.runner.worker is None, timeout=60_000)
    assert widget.status.value.startswith("failed") and "sha256" in widget.status.value
    told = [n for n in notification_manager.records[before:] if "sha256" in str(n.message)]
    assert len(told) == 1, [str(n.message) for n in told]
    assert _names(viewer) == ["scan", "painted"]
