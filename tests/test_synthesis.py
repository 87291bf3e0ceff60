"""Synthesis as a Python API: reproducibility, conditioning, classifier-free guidance, 3D, bad input, realism."""

from __future__ import annotations

import numpy as np
import pytest

from napari_diffmed.synthesis import DEFAULTS, guidance_sweep, iter_synthesize, synthesize

FAST = dict(n=3, steps=3, device="cpu")


@pytest.fixture(scope="module")
def live_image_model(tiny_image_model, tmp_path_factory):
    """The tiny image model with its zero-initialised layers (MONAI's output conv, ...) made random.

    With the fresh MONAI init the network predicts exactly zero noise, whatever the
    class, so conditioning and guidance could not show in the output.
    """
    import torch

    from napari_diffmed.models import load_model, save_model

    loaded = load_model(tiny_image_model)
    torch.manual_seed(1)
    with torch.no_grad():
        for param in loaded.network.parameters():
            if param.dim() > 1 and not param.any():
                torch.nn.init.normal_(param, std=0.05)
    return save_model(loaded.network, loaded.card, tmp_path_factory.mktemp("live") / "tiny_image")


def test_same_seed_same_samples_other_seed_differs(live_image_model):
    a = synthesize(live_image_model, seed=1, **FAST)
    b = synthesize(live_image_model, seed=1, **FAST)
    c = synthesize(live_image_model, seed=2, **FAST)
    assert a.samples.shape == (3, 16, 16) and a.samples.dtype == np.float32
    assert a.spacing == (4.0, 4.0)
    assert 0.0 <= a.samples.min() and a.samples.max() <= 1.0
    np.testing.assert_array_equal(a.samples, b.samples)
    assert np.abs(a.samples - c.samples).mean() > 0.01
    assert not np.allclose(a.samples[0], a.samples[1])  # samples in a batch differ too


def test_provenance_records_what_was_run(tiny_image_model):
    result = synthesize(tiny_image_model, seed=4, scheduler="pndm", class_name="lesion", guidance=2.5, **FAST)
    p = result.provenance
    assert p["model"] == "tiny_image" and len(p["model_sha256"]) == 64
    assert (p["scheduler"], p["steps"], p["seed"], p["n"]) == ("PNDMScheduler", 3, 4, 3)
    assert (p["class_name"], p["guidance"], p["device"]) == ("lesion", 2.5, "cpu")
    assert p["seconds"] > 0 and p["intensity_range"] == [0.0, 1.0]


def test_seed_none_draws_a_seed_that_reproduces(tiny_image_model):
    first = synthesize(tiny_image_model, seed=None, **FAST)
    again = synthesize(tiny_image_model, seed=first.provenance["seed"], **FAST)
    np.testing.assert_array_equal(first.samples, again.samples)


def test_iter_synthesize_yields_previews_then_returns(tiny_image_model):
    gen = iter_synthesize(tiny_image_model, seed=0, **FAST)
    events = []
    while True:
        try:
            events.append(next(gen))
        except StopIteration as stop:
            result = stop.value
            break
    assert [e.done for e in events] == [1, 2, 3] and {e.total for e in events} == {3}
    shown = [e for e in events if e.preview is not None]  # the first, the last, and at most every 0.25 s between
    assert events[0] in shown and events[-1] in shown
    assert all(e.preview.shape == (3, 16, 16) and 0 <= e.preview.min() <= e.preview.max() <= 1 for e in shown)
    np.testing.assert_array_equal(result.samples, synthesize(tiny_image_model, seed=0, **FAST).samples)


def test_class_changes_output_only_when_guided(live_image_model):
    healthy = synthesize(live_image_model, seed=3, class_name="healthy", guidance=1.0, **FAST)
    lesion = synthesize(live_image_model, seed=3, class_name="lesion", guidance=1.0, **FAST)
    assert np.abs(healthy.samples - lesion.samples).mean() > 1e-3
    by_index = synthesize(live_image_model, seed=3, class_name=1, guidance=1.0, **FAST)
    np.testing.assert_array_equal(by_index.samples, lesion.samples)
    # guidance 0 is the unconditional model: the class no longer matters
    u1 = synthesize(live_image_model, seed=3, class_name="healthy", guidance=0.0, **FAST)
    u2 = synthesize(live_image_model, seed=3, class_name="lesion", guidance=0.0, **FAST)
    np.testing.assert_array_equal(u1.samples, u2.samples)


def _counting_model(path):
    """A freshly loaded model whose network records (batch size, class labels) of every forward call."""
    from napari_diffmed.models import load_model

    loaded = load_model(path, device="cpu")
    calls = []

    def hook(module, args, kwargs):
        calls.append((args[0].shape[0], kwargs["class_labels"].tolist()))

    loaded.network.register_forward_pre_hook(hook, with_kwargs=True)
    return loaded, calls


@pytest.mark.parametrize("w, batch, labels", [
    (0.0, 3, [2, 2, 2]),  # unconditional: the null class only
    (1.0, 3, [1, 1, 1]),  # the conditional model only
    (3.0, 6, [1, 1, 1, 2, 2, 2]),  # cond + uncond halves in ONE batch
])
def test_classifier_free_guidance_batches(live_image_model, w, batch, labels):
    loaded, calls = _counting_model(live_image_model)
    result = synthesize(loaded, seed=0, class_name="lesion", guidance=w, **FAST)
    assert len(calls) == 3  # one network call per step, whatever the guidance
    assert all(call == (batch, labels) for call in calls)
    assert result.provenance["batch"] == batch and result.provenance["network_evaluations"] == 3


def test_guidance_extrapolates_away_from_unconditional(live_image_model):
    kw = dict(seed=5, class_name="lesion", **FAST)
    u, c, g = (synthesize(live_image_model, guidance=w, **kw).samples.ravel() for w in (0.0, 1.0, 3.0))
    # w = 3 pushes further than the conditional model, in the same direction away from the unconditional one
    assert np.abs(g - u).mean() > 2 * np.abs(c - u).mean() > 0.01
    assert np.corrcoef(c - u, g - u)[0, 1] > 0.5


def test_guidance_sweep_shares_the_noise(live_image_model):
    sweep = guidance_sweep(live_image_model, scales=(0.0, 2.0), seed=7, class_name="healthy", **FAST)
    assert sweep.samples.shape == (2, 3, 16, 16)
    single = synthesize(live_image_model, seed=7, class_name="healthy", guidance=2.0, **FAST)
    np.testing.assert_array_equal(sweep.results[1].samples, single.samples)
    assert [r.provenance["guidance"] for r in sweep.results] == [0.0, 2.0]
    assert np.abs(sweep.samples[0] - sweep.samples[1]).mean() > 0.01


def test_volume_model(tiny_volume_model):
    result = synthesize(tiny_volume_model, n=2, steps=2, seed=0, device="cpu")
    assert result.samples.shape == (2, 8, 8, 8) and result.spacing == (8.0, 8.0, 8.0)
    assert result.provenance["class_name"] is None and result.provenance["guidance"] is None
    with pytest.raises(ValueError, match="not class-conditional"):
        synthesize(tiny_volume_model, n=1, steps=2, class_name="healthy", device="cpu")
    with pytest.raises(ValueError, match="no guidance to sweep"):
        guidance_sweep(tiny_volume_model, n=1, steps=2, device="cpu")


@pytest.mark.parametrize("kwargs, message", [
    (dict(n=0), "number of samples .* got 0"),
    (dict(n=2.5), "number of samples .* got 2.5"),
    (dict(steps=0), "steps must be .* got 0"),
    (dict(steps=1001), "steps must be .* got 1001"),
    (dict(scheduler="ddpm", steps=10), "needs steps=1000"),
    (dict(scheduler="euler"), "unknown scheduler 'euler'"),
    (dict(scheduler="rflow"), "trained for 'DDPMScheduler'"),
    (dict(class_name="tumour"), r"class 'tumour' is not one of .*\['healthy', 'lesion'\]"),
    (dict(guidance=-1.0), "guidance scale .* got -1.0"),
    (dict(guidance=float("nan")), "guidance scale .* got nan"),
    (dict(seed=-3), "seed must be a whole number >= 0 .* got -3"),
    (dict(device="tpu"), "device 'tpu' is not one of"),
])
def test_bad_input_is_named(tiny_image_model, kwargs, message):
    settings = {**FAST, **kwargs}
    with pytest.raises(ValueError, match=message):
        synthesize(tiny_image_model, **settings)


def test_segmentation_model_is_refused(tiny_seg_model):
    with pytest.raises(ValueError, match="segmentation model"):
        synthesize(tiny_seg_model, **FAST)


def test_defaults_are_the_documented_quick_settings():
    assert (DEFAULTS.model, DEFAULTS.scheduler, DEFAULTS.steps, DEFAULTS.n) == (None, "ddim", 50, 12)
    assert 1.0 <= DEFAULTS.guidance <= 3.0 and DEFAULTS.class_name is None  # None: first class ("healthy")
