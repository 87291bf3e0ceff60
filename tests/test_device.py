"""Device choice and seeded generators."""

from __future__ import annotations

import re

import numpy as np
import pytest
import torch

from napari_diffmed import device as device_module
from napari_diffmed.device import DEVICE_CHOICES, available_devices, make_generator, resolve_seed, select_device


def test_auto_picks_the_best_available_device():
    best = available_devices()[0]
    assert select_device("auto") == select_device(None) == torch.device(best)
    if not torch.cuda.is_available() and best != "mps":
        assert select_device("auto") == torch.device("cpu")


def test_auto_prefers_cuda_then_mps_then_cpu(monkeypatch):
    for available, expected in ((["cuda", "mps", "cpu"], "cuda"), (["mps", "cpu"], "mps"), (["cpu"], "cpu")):
        monkeypatch.setattr(device_module, "available_devices", lambda available=available: available)
        assert select_device("auto") == torch.device(expected)


def test_cpu_is_always_available():
    assert available_devices()[-1] == "cpu"
    assert select_device("cpu") == torch.device("cpu") == select_device("CPU")
    assert select_device("cpu:0") == torch.device("cpu:0")


def test_explicit_device_passes_through():
    assert select_device(torch.device("cpu")) == torch.device("cpu")


@pytest.mark.parametrize("name", ["cuda", "cuda:1", "mps"])
def test_unavailable_device_names_the_available_ones(name, monkeypatch):
    monkeypatch.setattr(device_module, "available_devices", lambda: ["cpu"])
    with pytest.raises(ValueError, match=rf"device '{name}' is not available here; available: \['cpu'\]"):
        select_device(name)


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA")
def test_cuda_is_refused_on_this_machine():
    with pytest.raises(ValueError, match="not available here; available: .*'cpu'"):
        select_device("cuda")


@pytest.mark.parametrize("name", ["gpu", "tpu", "cuda0"])
def test_bad_name_lists_the_choices(name):
    with pytest.raises(ValueError, match=re.escape(f"device {name!r} is not one of {DEVICE_CHOICES!r}")):
        select_device(name)


def test_empty_name_means_auto():
    assert select_device("") == select_device(None) == torch.device(available_devices()[0])


def test_same_seed_same_numbers():
    cpu = torch.device("cpu")
    a = torch.randn(16, generator=make_generator(7, cpu))
    b = torch.randn(16, generator=make_generator(7, cpu))
    c = torch.randn(16, generator=make_generator(8, cpu))
    assert torch.equal(a, b) and not torch.equal(a, c)


def test_generator_is_independent_of_the_global_rng():
    cpu = torch.device("cpu")
    torch.manual_seed(0)
    a = torch.randn(8, generator=make_generator(3, cpu))
    torch.manual_seed(123)
    torch.randn(5)
    b = torch.randn(8, generator=make_generator(3, cpu))
    assert torch.equal(a, b)


def test_no_seed_gives_fresh_numbers():
    cpu = torch.device("cpu")
    a = torch.randn(16, generator=make_generator(None, cpu))
    b = torch.randn(16, generator=make_generator(None, cpu))
    assert not torch.equal(a, b)


def test_mps_gets_a_cpu_generator():
    assert make_generator(0, torch.device("mps")).device == torch.device("cpu")
    assert make_generator(0, torch.device("cpu")).device == torch.device("cpu")


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_generator_lives_on_the_gpu():
    cuda = torch.device("cuda")
    generator = make_generator(5, cuda)
    assert generator.device.type == "cuda"
    a = torch.randn(16, generator=generator, device=cuda)
    assert torch.equal(a, torch.randn(16, generator=make_generator(5, cuda), device=cuda))


def test_a_fresh_seed_leaves_the_global_generators_alone():
    torch.manual_seed(5)
    expected = torch.randn(3)
    torch.manual_seed(5)
    np.random.seed(5)
    make_generator(None, torch.device("cpu"))
    seeds = {resolve_seed(None) for _ in range(4)}
    assert len(seeds) > 1 and all(isinstance(s, int) and s >= 0 for s in seeds)
    assert torch.equal(torch.randn(3), expected), "torch's global generator was reseeded"
    assert np.random.rand() == np.random.RandomState(5).rand(), "numpy's global generator was reseeded"
    assert resolve_seed(7) == 7
