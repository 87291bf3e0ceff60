"""Anomaly heatmaps: shapes and geometry, seeds, inputs untouched, re-thresholding, DDIM inversion."""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from napari_diffmed.anomaly import AnomalySettings, anomaly_map, iter_anomaly_map, planned_calls  # noqa: E402
from napari_diffmed.masks import foreground_mask  # noqa: E402
from napari_diffmed.sampling import inversion_start, iter_invert  # noqa: E402
from napari_diffmed.slices import parse_slices  # noqa: E402

FAST = dict(steps=20, device="cpu")


@pytest.mark.parametrize("method", ["gaussian", "simplex", "ddim"])
def test_volume_heatmap_on_the_input_grid(tiny_image_model, small_volume, method):
    scan = small_volume.image
    before = scan.copy()
    result = anomaly_map(scan, small_volume.spacing, model=tiny_image_model, method=method, **FAST)
    assert np.array_equal(scan, before)  # the input is never modified
    for arr in (result.heatmap, result.reconstruction, result.brain_mask):
        assert arr.shape == scan.shape
    assert result.heatmap.dtype == np.float32 and result.heatmap.min() >= 0
    assert np.all(result.heatmap[~result.brain_mask] == 0)
    assert result.heatmap[result.brain_mask].max() > 0
    assert result.variance is None
    assert result.provenance["method"] == method and result.provenance["model"] == "tiny_image"
    labels = result.labels()
    assert labels.shape == scan.shape and 0 < labels.sum() < result.brain_mask.sum()


def test_2d_image_gives_2d_maps(tiny_image_model, small_volume):
    image = small_volume.image[3]
    result = anomaly_map(image, small_volume.spacing[1:], model=tiny_image_model, method="gaussian", **FAST)
    assert result.heatmap.shape == result.reconstruction.shape == result.brain_mask.shape == image.shape


def test_same_seed_same_map_other_seed_other_map(tiny_image_model, small_volume):
    run = lambda seed: anomaly_map(small_volume.image, small_volume.spacing, model=tiny_image_model,  # noqa: E731
                                   method="simplex", seed=seed, **FAST).heatmap
    a, b, c = run(1), run(1), run(2)
    assert np.array_equal(a, b)
    assert not np.allclose(a, c)


def test_reconstructions_average_and_give_variance(tiny_image_model, small_volume):
    result = anomaly_map(small_volume.image, small_volume.spacing, model=tiny_image_model, method="gaussian",
                         reconstructions=3, batch_size=6, **FAST)
    assert result.variance.shape == small_volume.image.shape
    assert result.variance.min() >= 0 and result.variance[result.brain_mask].max() > 0
    assert result.provenance["reconstructions"] == 3


def test_only_chosen_slices_are_analysed(tiny_image_model, small_volume):
    scan = small_volume.image
    result = anomaly_map(scan, small_volume.spacing, model=tiny_image_model, method="gaussian", indices=[2, 3], **FAST)
    others = [0, 1, 4, 5]
    assert np.all(result.heatmap[others] == 0)
    assert np.array_equal(result.reconstruction[others], scan[others])
    assert result.heatmap[[2, 3]].max() > 0
    assert result.provenance["slices"] == [2, 3]


def test_progress_counts_planned_calls_and_previews_on_input_grid(tiny_image_model, small_volume):
    from napari_diffmed.models import get_model

    events = []
    gen = iter_anomaly_map(small_volume.image, small_volume.spacing, model=tiny_image_model, method="ddim",
                           preview=0.0, batch_size=4, **FAST)
    while True:
        try:
            events.append(next(gen))
        except StopIteration:
            break
    card = get_model(tiny_image_model).card
    total = planned_calls(card, small_volume.image.shape[0], AnomalySettings(method="ddim", batch_size=4, **FAST))
    assert [e.done for e in events] == list(range(1, total + 1))
    assert all(e.total == total for e in events)
    assert {e.message for e in events} == {"inverting", "denoising", "decoding without guidance"}
    assert events[-1].preview.shape == small_volume.image.shape


def test_unguided_comparison_decodes_twice_with_the_same_noise(tiny_image_model, small_volume, monkeypatch):
    """compare='unguided': two decodings of one noised scan, which are equal (a zero map) when the
    guidance has nothing to pull; compare='scan' is |healthy - scan|."""
    from napari_diffmed.models import get_model

    scan, spacing = small_volume.image, small_volume.spacing
    card = get_model(tiny_image_model).card
    run = lambda **kw: anomaly_map(scan, spacing, model=tiny_image_model, method="gaussian", seed=3, **FAST, **kw)  # noqa: E731
    paired, plain = run(), run(compare="scan")
    assert paired.provenance["compared_with"] == "unguided decoding" and plain.provenance["compared_with"] == "scan"
    np.testing.assert_array_equal(paired.reconstruction, plain.reconstruction)  # the same healthy decoding
    assert not np.allclose(paired.heatmap, plain.heatmap)
    per_batch = lambda **kw: planned_calls(card, scan.shape[0], AnomalySettings(method="gaussian", **FAST, **kw))  # noqa: E731
    assert per_batch() == 2 * per_batch(compare="scan")
    assert run(guidance=0.0).provenance["compared_with"] == "scan"  # no pull towards healthy to contrast

    import napari_diffmed.anomaly as anomaly  # identical classes: the two decodings are the same, the map 0
    from napari_diffmed.sampling import Conditioning

    monkeypatch.setattr(anomaly, "_conditioning", lambda card, cfg, n, device: 2 * (Conditioning(
        labels=torch.full((n,), card.null_class), null_class=card.null_class, guidance_scale=0.0),))
    assert run().heatmap.max() == 0


def test_the_unguided_map_keeps_only_what_the_guidance_takes_away_from_the_scan():
    """Errors both decodings make cancel; a healthy decoding pulled away from the scan scores the extra
    distance; one that the guidance brings closer to the scan scores 0; without a twin, |scan - healthy| / 2."""
    from napari_diffmed.heatmap import residual

    scan = np.zeros(5, np.float32)
    unguided = np.array([0.2, -0.2, 0.0, 0.4, 0.1], np.float32)
    healthy = np.array([0.2, -0.6, 0.5, 0.1, -0.1], np.float32)
    np.testing.assert_allclose(residual(scan, healthy, unguided), [0.0, 0.2, 0.25, 0.0, 0.0], atol=1e-7)
    np.testing.assert_allclose(residual(scan, healthy), np.abs(healthy) / 2)
    assert residual(scan, unguided, unguided).max() == 0


def test_rethresholding_makes_no_model_call(tiny_image_model, small_volume):
    from napari_diffmed.models import get_model

    result = anomaly_map(small_volume.image, small_volume.spacing, model=tiny_image_model, method="gaussian", **FAST)
    network = get_model(tiny_image_model, "cpu").network
    calls = []
    hook = network.register_forward_hook(lambda *a: calls.append(1))
    try:
        low = result.labels(float(np.percentile(result.heatmap[result.brain_mask], 50)))
        high = result.labels(float(np.percentile(result.heatmap[result.brain_mask], 95)))
    finally:
        hook.remove()
    assert calls == []
    assert low.sum() > high.sum() > 0


def test_ddim_inversion_then_decoding_returns_the_scan(tiny_image_model):
    """Unguided decoding retraces the inversion (partial noising does not): the inversion goes the right way.

    DDIM inversion is exact only in the limit of small steps (it uses the noise estimated at t for the step
    from t up): with 100 steps the round trip stays far closer to the scan than the inverted latent is."""
    from napari_diffmed.models import get_model
    from napari_diffmed.progress import drive as run
    from napari_diffmed.sampling import Conditioning, iter_denoise, make_scheduler

    loaded = get_model(tiny_image_model, "cpu")
    x0 = torch.rand(2, 1, 16, 16, generator=torch.Generator().manual_seed(0)) * 1.6 - 0.8
    sched = make_scheduler(loaded.card, "ddim", 100)
    cond = Conditioning(labels=torch.tensor([2, 2]), null_class=2)
    steps = list(iter_invert(loaded.network, sched, x0, 150, cond))
    xt = run(iter_invert(loaded.network, sched, x0, 150, cond))
    assert len(steps) == sum(1 for t in sched.timesteps if int(t) < inversion_start(sched, 150))
    back = run(iter_denoise(loaded.network, sched, xt, cond=cond, start_timestep=inversion_start(sched, 150)))
    assert (xt - x0).abs().mean() > 0.02
    assert (back - x0).abs().mean() < min(0.01, 0.2 * (xt - x0).abs().mean())


def test_foreground_mask_finds_the_brain(small_volume):
    mask = foreground_mask(small_volume.image)
    assert mask[small_volume.mask > 0].all()
    assert 0.1 < mask.mean() < 0.9


@pytest.mark.parametrize("settings, match", [
    ({"method": "median"}, "method"), ({"level": 0}, "level"), ({"depth": 1000}, "depth"),
    ({"guidance": -1.0}, "guidance"), ({"reconstructions": 0}, "reconstructions"), ({"smoothing": -2.0}, "smoothing"),
    ({"colour": "red"}, "unknown settings"), ({"negative": "tumour"}, "negative"), ({"negative": "healthy"}, "negative"),
])
def test_bad_settings_name_the_value(tiny_image_model, small_volume, settings, match):
    with pytest.raises(ValueError, match=match):
        anomaly_map(small_volume.image, small_volume.spacing, model=tiny_image_model, **settings)


def test_the_guidance_pushes_away_from_the_lesion_class_by_default(tiny_image_model, tiny_volume_model, small_volume,
                                                                   monkeypatch):
    """negative='auto' contrasts healthy with the card's 'lesion' class (a negative prompt), 'none' with the
    null class; an unconditional model has neither; the class used is in the provenance."""
    import napari_diffmed.anomaly as anomaly
    from napari_diffmed.anomaly import negative_class
    from napari_diffmed.models import get_model

    card = get_model(tiny_image_model).card
    assert negative_class(card) == card.class_index("lesion") and negative_class(card, "lesion") == 1
    assert negative_class(card, "none") == card.null_class
    assert negative_class(get_model(tiny_volume_model).card) is None
    seen = []  # the (guided, twin) conditionings of each run
    original = anomaly._conditioning
    monkeypatch.setattr(anomaly, "_conditioning", lambda *a: seen.append(original(*a)) or seen[-1])
    runs, last = {}, {}
    for neg in ("auto", "none"):
        runs[neg] = anomaly_map(small_volume.image, small_volume.spacing, model=tiny_image_model, method="gaussian",
                                negative=neg, seed=1, **FAST)
        last[neg] = seen[-1]
    (healthy_auto, twin_auto), (healthy_none, twin_none) = last["auto"], last["none"]
    assert healthy_auto.null_class == 1 and healthy_none.null_class == card.null_class
    assert twin_auto.null_class == twin_none.null_class == card.null_class and twin_auto.guidance_scale == 0
    assert runs["auto"].provenance["negative_class"] == "lesion" and runs["none"].provenance["negative_class"] == "null"
    assert not np.allclose(runs["auto"].reconstruction, runs["none"].reconstruction)


def test_ddim_needs_a_conditional_model(tiny_volume_model, small_volume):
    with pytest.raises(ValueError, match="gaussian"):
        anomaly_map(small_volume.image, small_volume.spacing, model=tiny_volume_model, method="ddim", **FAST)


def test_3d_model_maps_the_whole_volume(tiny_volume_model, small_volume):
    result = anomaly_map(small_volume.image, small_volume.spacing, model=tiny_volume_model, method="simplex", **FAST)
    assert result.heatmap.shape == small_volume.image.shape
    assert result.provenance["axis"] is None and result.heatmap.max() > 0


def test_mask_must_fit(tiny_image_model, small_volume):
    with pytest.raises(ValueError, match="mask"):
        anomaly_map(small_volume.image, small_volume.spacing, model=tiny_image_model,
                    mask=np.ones((2, 2), dtype=bool), **FAST)


def test_parse_slices():
    assert parse_slices("2:5") == [2, 3, 4] and parse_slices("1,7") == [1, 7] and parse_slices(" ") is None
    with pytest.raises(ValueError, match="40:52"):
        parse_slices("a-b")


@pytest.mark.slow
def test_shipped_model_sees_a_planted_lesion():
    """A held-out MNI slice with a planted held-out-style lesion scores higher than the same slice healthy."""
    import dataclasses

    from napari_diffmed.geometry import Normaliser
    from napari_diffmed.models import get_model
    from napari_diffmed.training.lesions import HELD_OUT_STYLE, plant_lesions
    from napari_diffmed.training.templates import held_out_slices, load_mni152

    get_model("mni_t1_axial_64")
    template = load_mni152(1)
    z = int(np.flatnonzero(held_out_slices(len(template.t1)))[12 + 5])  # middle of the upper held-out slab
    norm = Normaliser.fit(template.t1)
    unit = (norm.forward(template.t1[z]) + 1) / 2
    style = dataclasses.replace(HELD_OUT_STYLE, radius=(18.0, 21.0), count=(1, 1), contrast=(0.4, 0.5))
    lesioned, lesion = plant_lesions(unit, unit > 0.15, np.random.default_rng(3), style)
    healthy = anomaly_map(unit, template.spacing[1:], seed=0)
    sick = anomaly_map(lesioned, template.spacing[1:], seed=0)
    assert sick.heatmap[sick.brain_mask].mean() > healthy.heatmap[healthy.brain_mask].mean()
    # where the map points is scored by AUROC over many lesions: tests/test_shipped_models.py
