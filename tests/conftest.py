"""Shared fixtures: tiny models saved as real cards + safetensors, and small scans."""

from __future__ import annotations

import os

import pytest

os.environ.setdefault("NAPARI_DIFFMED_MODELS", "")

try:  # CI explores the same examples every run (reproducible); elsewhere hypothesis draws new ones
    from hypothesis import settings as _hypothesis_settings

    _hypothesis_settings.register_profile("ci", derandomize=True, print_blob=True)
    if os.environ.get("CI"):
        _hypothesis_settings.load_profile("ci")
except ImportError:  # pragma: no cover - hypothesis comes with the [test] extra
    pass


def _save_tiny(tmp_path_factory, card_kwargs: dict, seed: int = 0):
    import torch

    from napari_diffmed.models import ModelCard, build_network, save_model

    card = ModelCard(**card_kwargs)
    torch.manual_seed(seed)
    net = build_network(card)
    with torch.no_grad():  # MONAI zero-initialises the last layer of each block: give those weights, so that the
        for param in net.parameters():  # outputs depend on the input, timestep and class, as a trained network's do
            if param.ndim > 1 and not param.any():
                param.normal_(0.0, 0.05)
    folder = tmp_path_factory.mktemp("models")
    return save_model(net, card, folder / card.name)


TINY_NET = dict(channels=[8, 16], attention_levels=[False, False], num_res_blocks=1, norm_num_groups=8)
SCHEDULER = {"name": "DDPMScheduler", "num_train_timesteps": 1000, "schedule": "linear_beta", "clip_sample": True}


@pytest.fixture(scope="session")
def tiny_image_model(tmp_path_factory):
    """Path to a tiny class-conditional 2D image model (16x16, random weights)."""
    return _save_tiny(tmp_path_factory, dict(
        name="tiny_image", task="image", spatial_dims=2, image_size=[16, 16], spacing=[4.0, 4.0],
        network=dict(spatial_dims=2, in_channels=1, out_channels=1, num_class_embeds=3, **TINY_NET),
        scheduler=dict(SCHEDULER), class_names=["healthy", "lesion"], null_class=2,
    ))


@pytest.fixture(scope="session")
def tiny_seg_model(tmp_path_factory):
    """Path to a tiny image-conditioned 2D segmentation model (16x16, random weights)."""
    return _save_tiny(tmp_path_factory, dict(
        name="tiny_seg", task="segmentation", spatial_dims=2, image_size=[16, 16], spacing=[4.0, 4.0],
        network=dict(spatial_dims=2, in_channels=2, out_channels=1, **TINY_NET),
        scheduler=dict(SCHEDULER), condition_channels=1,
    ))


@pytest.fixture(scope="session")
def tiny_volume_model(tmp_path_factory):
    """Path to a tiny unconditional 3D image model (8x8x8, random weights)."""
    return _save_tiny(tmp_path_factory, dict(
        name="tiny_volume", task="image", spatial_dims=3, image_size=[8, 8, 8], spacing=[8.0, 8.0, 8.0],
        network=dict(spatial_dims=3, in_channels=1, out_channels=1, **TINY_NET),
        scheduler=dict(SCHEDULER), slice_axis=None,
    ))


@pytest.fixture
def small_volume():
    """A small brain-like volume (z, y, x) with a bright lesion, its mask and spacing."""
    from napari_diffmed.sample_data import make_phantom

    return make_phantom(shape=(6, 32, 32), spacing=(3.0, 2.0, 2.0), seed=0)


@pytest.fixture
def run_widget(qtbot):
    """Press a widget's Run (its ``run()``) and wait until its job has finished; returns the worker."""

    def run(widget, timeout: int = 60_000):
        worker = widget.run()
        assert worker is not None, f"{type(widget).__name__} refused to run: {widget.status.value}"
        qtbot.waitUntil(lambda: widget.runner.worker is None, timeout=timeout)
        return worker

    return run


@pytest.fixture(scope="session")
def remote_server(tmp_path_factory, tiny_image_model, tiny_seg_model):
    """(url, token, process) of one ``napari-diffmed serve`` on 127.0.0.1 (CPU) with the tiny models, small
    limits (1 MiB uploads, 100 000 voxels, 2 waiting jobs) and 5 s result lifetime, for the whole session."""
    from server_helpers import serve

    with serve(tmp_path_factory.mktemp("server"), [tiny_image_model, tiny_seg_model], "--max-request-mb", "1",
               "--max-voxels", "100000", "--max-queue", "2", "--result-ttl", "5") as server:
        yield server
