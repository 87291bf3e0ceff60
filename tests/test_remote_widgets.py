"""The Synthesize and Segment widgets in a real napari window, run on a ``napari-diffmed serve`` on 127.0.0.1:
the same layers as local runs, Cancel stops the server's job, and a killed server adds no layer."""

from __future__ import annotations

import os
from pathlib import Path

import httpx
import numpy as np
import pytest

import napari_diffmed as dm
from server_helpers import one_thread, serve

pytestmark = pytest.mark.gui


@pytest.fixture
def on_server(monkeypatch, tmp_path, tiny_image_model, tiny_seg_model):
    """Save a server in a fresh user server list, and show the tiny models by name here too."""
    from napari_diffmed.remote import save_server

    monkeypatch.setenv("NAPARI_DIFFMED_CONFIG", str(tmp_path / "servers.json"))
    monkeypatch.setenv("NAPARI_DIFFMED_MODELS", os.pathsep.join(
        sorted({str(Path(p).parent) for p in (tiny_image_model, tiny_seg_model)})))
    monkeypatch.delenv("NAPARI_DIFFMED_TOKEN", raising=False)

    def choose(widget, server) -> None:
        url, token, _ = server
        save_server(url, token)
        widget.backend.reset_choices()
        widget.backend.value = url
        assert not widget.device.enabled  # the server's device, not this computer's

    return choose


def synthesis_widget(make_napari_viewer, steps: int):
    from napari_diffmed._qt.synthesis import SynthesisWidget

    viewer = make_napari_viewer()
    widget = SynthesisWidget(viewer)
    widget.model.value = "tiny_image"
    widget.n_samples.value, widget.steps.value, widget.seed.value = 2, steps, 5
    return viewer, widget


def segmentation_widget(make_napari_viewer, small_volume):
    from napari_diffmed._qt.segmentation import SegmentationWidget

    p = small_volume
    viewer = make_napari_viewer()
    viewer.add_image(p.image, name="scan", scale=p.spacing, metadata={"spacing": p.spacing})
    widget = SegmentationWidget(viewer)
    widget.model.value = "tiny_seg"
    widget.members.value, widget.steps.value, widget.first.value, widget.stop.value = 2, 3, 2, 4
    return viewer, widget


def test_synthesis_widget_runs_on_the_server(make_napari_viewer, qtbot, on_server, remote_server, tiny_image_model):
    viewer, widget = synthesis_widget(make_napari_viewer, steps=4)
    on_server(widget, remote_server)
    previews = []
    worker = widget.run()
    worker.yielded.connect(lambda e: previews.append(e.preview is not None))
    qtbot.waitUntil(lambda: widget.runner.worker is None, timeout=60_000)
    layer = viewer.layers["synthesis tiny_image"]
    with one_thread():
        local = dm.synthesize(model=tiny_image_model, n=2, steps=4, seed=5, device="cpu",
                              guidance=widget.guidance.value, class_name=widget.class_name.value)
    np.testing.assert_array_equal(layer.data, local.samples)
    assert layer.metadata["provenance"]["server"] == remote_server[0]
    assert "token" not in str(layer.metadata) and remote_server[1] not in str(layer.metadata)
    assert any(previews) and "synthesis preview" not in viewer.layers


def test_segmentation_widget_runs_on_the_server(make_napari_viewer, run_widget, on_server, remote_server,
                                                small_volume, tiny_seg_model):
    viewer, widget = segmentation_widget(make_napari_viewer, small_volume)
    on_server(widget, remote_server)
    run_widget(widget)
    p = small_volume
    with one_thread():
        local = dm.segment_ensemble(p.image.astype(np.float32), p.spacing, model=tiny_seg_model, members=2, steps=3,
                                    indices=[2, 3], device="cpu", seed=widget.seed.value)
    np.testing.assert_array_equal(viewer.layers["scan ensemble mean"].data, local.mean)
    np.testing.assert_array_equal(viewer.layers["scan consensus"].data, local.labels())
    assert viewer.layers["scan consensus"].metadata["provenance"]["server_device"] == "cpu"


def test_cancel_stops_the_server_job_within_one_step_and_adds_no_layer(make_napari_viewer, qtbot, on_server,
                                                                      remote_server):
    url, token, _ = remote_server
    viewer, widget = synthesis_widget(make_napari_viewer, steps=400)
    on_server(widget, remote_server)
    worker = widget.run()
    clicked = []

    def click_cancel_once(event) -> None:  # a person clicks Cancel once, at the second step
        if event.done >= 2 and not clicked:
            clicked.append(event.done)
            widget.cancel_button.changed.emit(True)

    worker.yielded.connect(click_cancel_once)
    qtbot.waitUntil(lambda: widget.runner.worker is None, timeout=60_000)
    auth = {"Authorization": f"Bearer {token}"}

    def stopped():
        status = httpx.get(f"{url}/jobs/{widget.backend.client.last_job_id}", headers=auth).json()
        return status if status["state"] == "cancelled" else None

    qtbot.waitUntil(lambda: stopped() is not None, timeout=10_000)
    status = stopped()
    assert status["done"] - status["done_at_cancel"] <= 1 and status["done"] < 400
    assert [layer.name for layer in viewer.layers] == [] and widget.status.value == "cancelled"


def test_a_killed_server_gives_a_clear_error_and_no_layer(make_napari_viewer, qtbot, on_server, tmp_path,
                                                          small_volume, tiny_image_model, tiny_seg_model):
    from napari_diffmed.remote import Client, ServerConnectionError

    viewer, widget = segmentation_widget(make_napari_viewer, small_volume)
    widget.steps.value = 400
    with serve(tmp_path, [tiny_image_model, tiny_seg_model]) as server, qtbot.capture_exceptions() as caught:
        on_server(widget, server)
        errors = []
        worker = widget.run()
        worker.errored.connect(errors.append)
        worker.yielded.connect(lambda e: server[2].poll() is None and server[2].kill())
        qtbot.waitUntil(lambda: widget.runner.worker is None, timeout=60_000)
    assert len(errors) == 1 and isinstance(errors[0], ServerConnectionError)
    assert [type(err) for _, err, _ in caught] == [ServerConnectionError]  # napari's notification of it
    assert "lost the connection to the server" in widget.status.value
    assert [layer.name for layer in viewer.layers] == ["scan"]
    with pytest.raises(ServerConnectionError, match="cannot reach the server"):
        Client(server[0], token=server[1]).health()
