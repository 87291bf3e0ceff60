"""Inpainting (RePaint): exact outside the mask, schedules, masks, and quality with the shipped model."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
from scipy import ndimage

from napari_diffmed.inpainting import (
    DEFAULTS, MODES, InpaintSettings, count_network_calls, edge_energy, inpaint, iter_inpaint, repaint_schedule,
    seam_energy, settings_for,
)

FAST = dict(steps=4, jump_length=2, resamplings=2, device="cpu")


def _outside_exact(result, image, mask):
    out = ~mask
    for proposal in result.proposals:
        assert proposal.dtype == result.mean.dtype
        assert np.array_equal(proposal[out], image[out].astype(proposal.dtype))
    assert np.array_equal(result.mean[out], image[out].astype(result.mean.dtype))
    assert np.all(result.variance[out] == 0)


@pytest.fixture
def scan():
    """A phantom (6, 24, 24) at 3 x 2 x 2 mm: inside the tiny models' 64 mm field of view."""
    from napari_diffmed.sample_data import make_phantom

    return make_phantom(shape=(6, 24, 24), spacing=(3.0, 2.0, 2.0), seed=0)


def _blob(shape, seed):
    rng = np.random.default_rng(seed)
    return ndimage.gaussian_filter(rng.standard_normal(shape), 1.5) > 0.25


# --- schedule -----------------------------------------------------------------------------------------


def test_schedule_jumps_back_on_the_ddim_grid():
    path = repaint_schedule(InpaintSettings(steps=6, jump_length=2, resamplings=2))
    stride = 1000 // 6
    assert path == [830, 664, 498, 830, 664, 498, 332, 166, 498, 332, 166, 0, -1]
    assert all(t % stride == 0 for t in path[:-1])
    moves = np.diff(path[:-1])
    assert set(moves[moves < 0]) == {-stride} and set(moves[moves > 0]) == {2 * stride}
    assert count_network_calls(path) == 6 + 2 * 2


@pytest.mark.parametrize("mode", sorted(MODES))
def test_mode_call_counts_follow_the_formula(mode):
    s = MODES[mode]
    jumps = len(range(s.jump_length, s.steps, s.jump_length))
    assert count_network_calls(repaint_schedule(s)) == s.steps + (s.resamplings - 1) * s.jump_length * jumps
    assert count_network_calls(repaint_schedule(MODES["fast"])) < count_network_calls(repaint_schedule(MODES["quality"]))


@pytest.mark.parametrize("kwargs, words", [
    (dict(mode="slow"), "mode 'slow'"), (dict(steps=0), "steps"), (dict(steps=1001), "1000"),
    (dict(steps=10, jump_length=10), "jump_length"), (dict(resamplings=True), "resamplings"),
    (dict(jump_length=2.5), "jump_length"),
])
def test_bad_settings_are_named(kwargs, words):
    with pytest.raises(ValueError, match=words):
        settings_for(**{"mode": "fast", **kwargs})


def test_the_loop_runs_the_counted_calls_per_batch(scan, tiny_image_model):
    mask = np.zeros(scan.image.shape, bool)
    mask[1:4, 8:16, 6:14] = True
    events = []
    result = inpaint(scan.image, mask, scan.spacing, model=tiny_image_model, proposals=2,
                     batch_size=4, callback=events.append, **FAST)
    calls = count_network_calls(repaint_schedule(settings_for("fast", **{k: FAST[k] for k in FAST if k != "device"})))
    assert result.provenance["slices"] == [1, 2, 3]  # only slices holding the mask
    assert len(events) == result.provenance["network_calls"] == calls * 2  # 6 items in batches of 4
    assert [e.done for e in events] == list(range(1, len(events) + 1))


# --- exact outside the mask ---------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["box", "blob", "voxel", "border", "one_slice"])
def test_2d_model_on_a_volume_is_exact_outside_the_mask(scan, tiny_image_model, kind):
    image = scan.image
    mask = np.zeros(image.shape, bool)
    if kind == "box":
        mask[2:4, 6:18, 8:20] = True
    elif kind == "blob":
        mask = _blob(image.shape, 1)
    elif kind == "voxel":
        mask[3, 12, 12] = True
    elif kind == "border":
        mask[:, :5, :] = True
    else:
        mask[5] = scan.mask[3] > 0
    before = image.copy(), mask.copy()
    result = inpaint(image, mask, scan.spacing, model=tiny_image_model, proposals=3, seed=1, **FAST)
    _outside_exact(result, image, mask)
    assert np.array_equal(result.mask, mask)
    assert result.proposals.shape == (3, *image.shape) and result.mean.shape == image.shape
    assert np.array_equal(image, before[0]) and np.array_equal(mask, before[1])  # inputs untouched
    inside = result.proposals[:, mask]
    assert not np.array_equal(inside[0], inside[1]) and not np.array_equal(inside[1], inside[2])
    assert np.all(result.variance[mask] >= 0) and result.variance[mask].max() > 0
    np.testing.assert_allclose(result.mean[mask], inside.mean(axis=0), rtol=1e-5, atol=1e-3)


def test_2d_image_and_other_axes(scan, tiny_image_model):
    image2d = scan.image[3]
    mask2d = _blob(image2d.shape, 2)
    result = inpaint(image2d, mask2d, scan.spacing[1:], model=tiny_image_model, proposals=2, **FAST)
    assert result.proposals.shape == (2, *image2d.shape)
    _outside_exact(result, image2d, mask2d)
    mask = np.zeros(scan.image.shape, bool)
    mask[:, 10:14, 5:9] = True
    result = inpaint(scan.image, mask, scan.spacing, model=tiny_image_model, axis=2, **FAST)
    assert result.provenance["slices"] == [5, 6, 7, 8] and result.provenance["axis"] == 2
    _outside_exact(result, scan.image, mask)


def test_3d_model_is_exact_outside_the_mask(scan, tiny_volume_model):
    mask = _blob(scan.image.shape, 3)
    result = inpaint(scan.image, mask, scan.spacing, model=tiny_volume_model, class_name=None,
                     proposals=2, **FAST)
    _outside_exact(result, scan.image, mask)
    assert result.provenance["slices"] is None and result.proposals.shape == (2, *scan.image.shape)


@pytest.mark.parametrize("dtype", [np.int16, np.float64, np.uint8])
def test_dtypes_keep_the_input_values_exactly(scan, tiny_image_model, dtype):
    image = (scan.image / 5).astype(dtype) if dtype != np.float64 else scan.image.astype(np.float64) * np.pi
    mask = _blob(image.shape, 4)
    result = inpaint(image, mask, scan.spacing, model=tiny_image_model, proposals=2, **FAST)
    assert result.mean.dtype == np.result_type(dtype, np.float32)
    _outside_exact(result, image, mask)


def test_empty_mask_returns_the_input_with_a_notice(scan, tiny_image_model):
    events = []
    mask = np.zeros(scan.image.shape, np.uint8)
    result = inpaint(scan.image, mask, scan.spacing, model=tiny_image_model,
                     callback=events.append, **FAST)
    assert events == [] and result.provenance["network_calls"] == 0
    assert any("empty" in m for m in result.messages)
    for out in (*result.proposals, result.mean):
        assert np.array_equal(out, scan.image)


def test_full_mask_samples_everything_with_a_warning(scan, tiny_image_model):
    mask = np.ones(scan.image.shape, bool)
    with pytest.warns(UserWarning, match="whole image"):
        result = inpaint(scan.image, mask, scan.spacing, model=tiny_image_model, proposals=2, **FAST)
    assert any("whole image" in m for m in result.messages)
    assert result.mask.all() and np.isfinite(result.proposals).all()
    assert not np.array_equal(result.proposals[0], scan.image)
    assert not np.array_equal(result.proposals[0], result.proposals[1])


def test_same_seed_same_proposals(scan, tiny_image_model):
    mask = _blob(scan.image.shape, 5)
    run = lambda seed: inpaint(scan.image, mask, scan.spacing, model=tiny_image_model,  # noqa: E731
                               seed=seed, proposals=2, **FAST).proposals
    a, b, c = run(7), run(7), run(8)
    assert np.array_equal(a, b) and not np.array_equal(a, c)


def test_slice_range_limits_the_work_and_says_so(scan, tiny_image_model):
    mask = np.zeros(scan.image.shape, bool)
    mask[:, 10:16, 10:16] = True
    result = inpaint(scan.image, mask, scan.spacing, model=tiny_image_model, indices=[2, 3], **FAST)
    assert result.provenance["slices"] == [2, 3]
    assert result.mask[2:4].sum() == 72 and not result.mask[[0, 1, 4, 5]].any()
    assert any("outside the chosen range" in m for m in result.messages)
    _outside_exact(result, scan.image, result.mask)
    assert np.array_equal(result.mean[0], scan.image[0])  # masked but not chosen: left as it was


def test_mask_outside_the_field_of_view_keeps_its_values(tiny_image_model):
    image = np.random.default_rng(0).random((2, 40, 40)).astype(np.float32)
    image[:, 10:30, 10:30] += 3.0  # 80 mm wide, foreground in the middle; the tiny model sees 64 mm of it
    mask = np.zeros(image.shape, bool)
    mask[0, 0:4, 0:40] = True  # along the edge: outside the model's field of view
    mask[0, 20, 20] = True  # in the middle
    with pytest.warns(UserWarning, match="160 mask voxels lie outside the model's field of view"):
        result = inpaint(image, mask, (1.0, 2.0, 2.0), model=tiny_image_model, **FAST)
    assert result.mask.sum() == 1 and result.mask[0, 20, 20]
    _outside_exact(result, image, result.mask)


def test_previews_show_the_fill_on_the_input_grid(scan, tiny_image_model):
    mask = _blob(scan.image.shape, 6)
    gen = iter_inpaint(scan.image, mask, scan.spacing, model=tiny_image_model, **FAST)
    events = list(gen)
    shown = [e.preview for e in events if e.preview is not None]
    assert shown and events[-1].preview is not None
    for picture in shown:
        assert picture.shape == scan.image.shape
        assert np.array_equal(picture[~mask], scan.image[~mask])


# --- bad masks ----------------------------------------------------------------------------------------


def test_bad_masks_get_clear_errors(scan, tiny_image_model):
    image = scan.image
    with pytest.raises(ValueError, match=r"mask of shape \(6, 16, 16\) does not match the image's shape"):
        inpaint(image, np.ones((6, 16, 16), bool), scan.spacing, model=tiny_image_model, **FAST)
    soft = np.zeros(image.shape, np.float32)
    soft[2, 5:9, 5:9] = 0.4
    with pytest.raises(ValueError, match="binary.*threshold"):
        inpaint(image, soft, scan.spacing, model=tiny_image_model, **FAST)
    with pytest.raises(ValueError, match="not one of model 'tiny_image'.s classes"):
        inpaint(image, soft > 0, scan.spacing, model=tiny_image_model, class_name="tumour", **FAST)
    with pytest.raises(ValueError, match="slice indices must lie in 0..5"):
        inpaint(image, soft > 0, scan.spacing, model=tiny_image_model, indices=[9], **FAST)
    with pytest.raises(ValueError, match="proposals"):
        inpaint(image, soft > 0, scan.spacing, model=tiny_image_model, proposals=0, **FAST)


def test_label_values_all_count_with_a_notice(scan, tiny_image_model):
    labels = np.zeros(scan.image.shape, np.int32)
    labels[2, 4:8, 4:8], labels[3, 16:20, 16:20] = 1, 3
    result = inpaint(scan.image, labels, scan.spacing, model=tiny_image_model, **FAST)
    assert any("[1, 3]" in m for m in result.messages)
    assert np.array_equal(result.mask, labels > 0)


def test_seam_measure_tells_a_smooth_fill_from_a_hole():
    y, x = np.mgrid[:64, :64]
    image = np.sin(x / 5.0) + (y > 32)  # smooth waves and one real edge
    mask = (y - 20) ** 2 + (x - 20) ** 2 < 64
    hole = np.where(mask, 0.0, image)
    assert seam_energy(image, mask) <= edge_energy(image) < seam_energy(hole, mask)


def test_defaults_are_the_documented_ones():
    assert (DEFAULTS.model, DEFAULTS.class_name, DEFAULTS.mode) == ("mni_t1_axial_64", "healthy", "fast")
    assert DEFAULTS.proposals >= 2


# --- quality with the shipped model ---------------------------------------------------------------------


@pytest.mark.slow
def test_shipped_model_beats_the_ring_mean_on_held_out_slices():
    from napari_diffmed.training.templates import held_out_slices, load_mni152

    template = load_mni152(1)
    image = template.t1
    brain = image > np.percentile(image, 60)
    rng = np.random.default_rng(0)
    slices = [z for z in np.flatnonzero(held_out_slices(len(image))) if brain[z].mean() > 0.15]
    slices = sorted(rng.choice(slices, 6, replace=False))
    mask = np.zeros(image.shape, bool)
    yy, xx = np.mgrid[: image.shape[1], : image.shape[2]]
    for z in slices:  # a 24 mm disc per slice somewhere inside the brain
        cy, cx = rng.choice(np.argwhere(ndimage.binary_erosion(brain[z], iterations=15)))
        mask[z] = (yy - cy) ** 2 + (xx - cx) ** 2 <= 12**2
    ring_fill = image.copy()
    plane = ndimage.generate_binary_structure(3, 1) * np.array([0, 1, 0])[:, None, None]
    ring = ndimage.binary_dilation(mask, structure=plane, iterations=2) & ~mask
    for z in slices:
        ring_fill[z][mask[z]] = image[z][ring[z]].mean()
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no field-of-view or other warnings expected here
        result = inpaint(image, mask, template.spacing, proposals=4, seed=0, device="cpu")
    _outside_exact(result, image, mask)
    mae_model = np.abs(result.mean - image)[mask].mean()
    mae_ring = np.abs(ring_fill - image)[mask].mean()
    seam = np.mean([seam_energy(result.mean[z], mask[z]) for z in slices])
    edges = edge_energy(image[slices])
    print(f"\nheld-out slices {slices}: MAE inside the mask {mae_model:.4f} (proposal mean) vs {mae_ring:.4f} "
          f"(ring mean), ratio {mae_model / mae_ring:.3f}; seam energy {seam:.5f} vs the image's edges {edges:.5f}")
    assert mae_model <= 0.9 * mae_ring  # at least 10% closer than the ring mean; shipped weights: 0.83
    assert seam <= edges
