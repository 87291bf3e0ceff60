"""Segmentation ensembles: shapes and geometry, bounds, seeds, batching, re-fusing, uncertainty maps, errors."""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from napari_diffmed.ensemble import (  # noqa: E402
    DEFAULTS, binary_entropy, estimate_bytes, fuse, iter_segment_ensemble, planned_calls, segment_ensemble,
    slice_ranking, summarise,
)

FAST = dict(members=4, steps=5, device="cpu")


@pytest.fixture
def result(tiny_seg_model, small_volume):
    return segment_ensemble(small_volume.image, small_volume.spacing, model=tiny_seg_model, **FAST)


def test_maps_on_the_input_grid_within_bounds(result, small_volume):
    shape = small_volume.image.shape
    assert result.members.shape == (4, *shape) and result.members.dtype == np.float32
    for name in ("mean", "votes", "variance", "entropy", "mutual_information", "covered"):
        assert getattr(result, name).shape == shape
    assert 0 <= result.members.min() and result.members.max() <= 1
    assert 0 <= result.variance.min() and result.variance.max() <= 0.25 + 1e-6
    assert 0 <= result.entropy.min() and result.entropy.max() <= 1 + 1e-6
    assert np.all(result.mutual_information <= result.entropy + 1e-6) and result.mutual_information.min() >= 0
    assert set(np.unique(result.votes * 4)) <= {0, 1, 2, 3, 4}  # the fraction of 4 member masks
    np.testing.assert_allclose(result.mean, result.members.mean(axis=0), atol=1e-6)
    assert result.variance.max() > 0  # random-weight members disagree
    outside = ~result.covered
    assert outside.any() and np.all(result.members[:, outside] == 0) and np.all(result.entropy[outside] == 0)
    labels = result.labels()
    assert labels.dtype == np.uint8 and set(np.unique(labels)) <= {0, 1}
    assert np.array_equal(labels, result.mean > 0.5)  # the consensus: the members' mean probability over 0.5
    assert np.array_equal(result.labels("majority"), result.votes > 0.5)  # or a strict majority of member masks
    prov = result.provenance
    assert prov["model"] == "tiny_seg" and prov["members"] == 4 and prov["entropy_units"] == "bits"
    assert prov["slices"] == list(range(6)) and prov["scheduler"] == "DDIMScheduler"


def test_input_untouched_and_2d_image_gives_2d_maps(tiny_seg_model, small_volume):
    image = small_volume.image[3].copy()
    before = image.copy()
    r = segment_ensemble(image, small_volume.spacing[1:], model=tiny_seg_model, **FAST)
    assert np.array_equal(image, before)
    assert r.members.shape == (4, *image.shape) and r.mean.shape == r.labels().shape == image.shape


def test_same_seed_same_members_other_seed_other_members(tiny_seg_model, small_volume):
    run = lambda seed, chunk=8: segment_ensemble(  # noqa: E731
        small_volume.image, small_volume.spacing, model=tiny_seg_model, seed=seed, chunk=chunk, **FAST).members
    a, b, c = run(1), run(1), run(2)
    assert np.array_equal(a, b)
    assert not np.allclose(a, c)
    # DDIM draws noise only at the start, item by item: the chunk size changes nothing but memory
    np.testing.assert_allclose(run(1, chunk=24), a, atol=1e-5)


def test_members_and_slices_are_batched(tiny_seg_model, small_volume):
    from napari_diffmed.models import get_model

    network = get_model(tiny_seg_model, "cpu").network
    sizes = []
    hook = network.register_forward_hook(lambda module, args, kwargs=None: sizes.append(args[0].shape[0]))
    try:
        events = list(_events(iter_segment_ensemble(small_volume.image, small_volume.spacing, model=tiny_seg_model,
                                                    chunk=10, indices=[1, 2, 3], **FAST)))
    finally:
        hook.remove()
    # 3 slices x 4 members = 12 inputs in chunks of 10: two batches of 5 steps
    assert sizes == [10] * 5 + [2] * 5
    assert [e.done for e in events] == list(range(1, 11)) and events[-1].total == 10
    card = get_model(tiny_seg_model).card
    assert planned_calls(card, 3, members=4, steps=5, chunk=10) == 10
    assert events[-1].preview.shape == small_volume.image.shape


def test_only_chosen_slices_are_segmented(tiny_seg_model, small_volume):
    r = segment_ensemble(small_volume.image, small_volume.spacing, model=tiny_seg_model, indices=[2, 4], **FAST)
    assert np.all(r.members[:, [0, 1, 3, 5]] == 0) and not r.covered[[0, 1, 3, 5]].any()
    assert r.members[:, [2, 4]].max() > 0 and set(r.ranking().tolist()) <= {2, 4}
    r1 = segment_ensemble(small_volume.image, small_volume.spacing, model=tiny_seg_model, axis=2, indices=[16], **FAST)
    assert r1.covered[:, :, 16].any() and not r1.covered[:, :, 15].any() and r1.provenance["axis"] == 2


def test_refusing_makes_no_model_call(result, tiny_seg_model):
    from napari_diffmed.models import get_model

    network = get_model(tiny_seg_model, "cpu").network
    calls = []
    hook = network.register_forward_hook(lambda *a: calls.append(1))
    try:
        loose, strict = result.labels("majority", 0.0), result.labels("majority", 0.99)
        mean = result.labels("mean", 0.3)
    finally:
        hook.remove()
    assert calls == []
    assert loose.sum() > strict.sum() and loose.sum() >= mean.sum()
    assert np.array_equal(loose, (result.members > 0.5).any(axis=0))
    assert np.array_equal(strict, (result.members > 0.5).all(axis=0))


def test_identical_members_give_no_uncertainty():
    rng = np.random.default_rng(0)
    one = (rng.random((3, 8, 8)) > 0.5).astype(np.float32)
    maps = summarise(np.repeat(one[None], 5, axis=0))
    assert np.array_equal(maps["mean"], one) and np.array_equal(maps["votes"], one)
    for name in ("variance", "entropy", "mutual_information"):
        assert np.all(maps[name] == 0), name
    soft = summarise(np.full((5, 4), 0.3, np.float32))  # agreeing but unsure members: no disagreement
    np.testing.assert_allclose(soft["entropy"], binary_entropy(0.3))
    np.testing.assert_allclose(soft["variance"], 0, atol=1e-7)
    np.testing.assert_allclose(soft["mutual_information"], 0, atol=1e-6)
    assert np.all(soft["votes"] == 0)
    split = summarise(np.array([[0.0], [1.0]]))  # two certain members disagreeing: 1 bit, all of it MI
    assert split["entropy"][0] == pytest.approx(1) and split["mutual_information"][0] == pytest.approx(1)
    assert split["votes"][0] == 0.5 and split["variance"][0] == pytest.approx(0.25)
    unsure = summarise(np.array([[0.45], [0.55]]))  # split votes, but neither member is sure: little MI
    assert unsure["votes"][0] == 0.5 and unsure["entropy"][0] == pytest.approx(1)
    assert unsure["mutual_information"][0] < 0.01
    assert binary_entropy(np.array([0.0, 0.5, 1.0])).tolist() == [0.0, 1.0, 0.0]


def test_fuse_rules_and_ranking():
    members = np.array([[0.9, 0.9, 0.2], [0.8, 0.3, 0.2], [0.6, 0.4, 0.45]], np.float32)
    assert fuse(members).tolist() == [1, 1, 0]  # means 0.77, 0.53, 0.28
    assert fuse(members, "majority").tolist() == [1, 0, 0]  # votes 3/3, 1/3, 0/3
    assert fuse(members, "majority", 0.3).tolist() == [1, 1, 0]
    assert fuse(members, "mean", 0.5).tolist() == [1, 1, 0]  # means 0.77, 0.53, 0.28
    u = np.zeros((4, 3, 3))
    u[2] = 0.5
    u[0, 0, 0] = 0.2
    assert slice_ranking(u).tolist() == [2, 0]
    assert slice_ranking(u, keep_zero=True).tolist() == [2, 0, 1, 3]
    assert slice_ranking(u, axis=1).tolist() == [0, 1, 2]
    with pytest.raises(ValueError, match="fusion rule"):
        fuse(members, "vote")
    with pytest.raises(ValueError, match="threshold"):
        fuse(members, "mean", 1.5)


def test_image_model_is_refused_by_name(tiny_image_model, small_volume):
    with pytest.raises(ValueError, match="'tiny_image' is made for task 'image'.*'segmentation'"):
        segment_ensemble(small_volume.image, small_volume.spacing, model=tiny_image_model, **FAST)


@pytest.mark.parametrize("image, kwargs, match", [
    (np.zeros((2, 3, 4, 5)), {}, "2D image or a 3D volume"),
    (np.full((4, 8, 8), np.nan), {}, "NaN"),
    (None, {"members": 0}, "members"),
    (None, {"steps": 0}, "steps"),
    (None, {"scheduler": "euler"}, "scheduler"),
    (None, {"axis": 3}, "axis"),
    (None, {"indices": [40]}, "slice indices"),
    (None, {"chunk": 0}, "chunk"),
])
def test_bad_input_names_the_problem(tiny_seg_model, small_volume, image, kwargs, match):
    image = small_volume.image if image is None else image
    with pytest.raises(ValueError, match=match):
        segment_ensemble(image, None, model=tiny_seg_model, **{**FAST, **kwargs})


def test_too_large_is_refused_before_allocating(tiny_seg_model):
    big = np.broadcast_to(np.float32(1.0), (400, 512, 512))  # a view: nothing allocated for the test either
    need = estimate_bytes(big.shape, 400, 32, (16, 16))
    assert need > 4 * 2**30
    with pytest.raises(ValueError, match="GiB.*max_bytes"):
        next(iter_segment_ensemble(big, None, model=tiny_seg_model, members=32, device="cpu"))
    with pytest.raises(ValueError, match="max_bytes"):
        segment_ensemble(np.ones((2, 8, 8)), None, model=tiny_seg_model, max_bytes=1000, **FAST)


def test_defaults_are_the_documented_ones():
    assert (DEFAULTS.members, DEFAULTS.scheduler, DEFAULTS.rule, DEFAULTS.threshold) == (8, "ddim", "mean", 0.5)
    assert 10 <= DEFAULTS.steps <= 20


def _events(gen):
    while True:
        try:
            yield next(gen)
        except StopIteration:
            return
