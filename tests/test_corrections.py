"""Propose again: voxels a person fixed are held exactly in every ensemble member, the rest is resampled."""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from napari_diffmed.corrections import check_fixed  # noqa: E402
from napari_diffmed.ensemble import segment_ensemble  # noqa: E402

FAST = dict(members=4, steps=5, device="cpu")


def _fixed(shape, seed=0):
    rng = np.random.default_rng(seed)
    fixed = np.full(shape, -1, dtype=np.int16)
    fixed[1, 4:20, 6:18] = rng.integers(0, 2, size=(16, 12))  # a painted patch of 0s and 1s
    fixed[4, :, :10] = 1  # a whole strip set to foreground
    return fixed


def test_fixed_voxels_are_exact_in_every_member_and_certain(tiny_seg_model, small_volume):
    fixed = _fixed(small_volume.image.shape)
    r = segment_ensemble(small_volume.image, small_volume.spacing, model=tiny_seg_model, fixed=fixed, **FAST)
    hold = fixed >= 0
    for member in r.members:
        assert np.array_equal(member[hold], fixed[hold].astype(np.float32))
    assert np.array_equal(r.labels()[hold], fixed[hold])
    assert np.all(r.entropy[hold] == 0) and np.all(r.variance[hold] == 0)
    assert r.variance[~hold & r.covered].max() > 0  # the free voxels are still sampled
    assert r.provenance["fixed_voxels"] == int(hold.sum())


def test_constraint_reaches_the_free_voxels_and_nothing_fixed_changes_nothing(tiny_seg_model, small_volume):
    args = (small_volume.image, small_volume.spacing)
    plain = segment_ensemble(*args, model=tiny_seg_model, seed=3, **FAST)
    none = segment_ensemble(*args, model=tiny_seg_model, seed=3, fixed=np.full(small_volume.image.shape, -1), **FAST)
    np.testing.assert_allclose(none.members, plain.members, atol=1e-5)  # an empty constraint is no constraint
    fixed = np.full(small_volume.image.shape, -1, dtype=np.int8)
    fixed[2, 8:24, 8:24] = 1
    held = segment_ensemble(*args, model=tiny_seg_model, seed=3, fixed=fixed, **FAST)
    free = (fixed < 0) & plain.covered
    assert not np.allclose(held.members[:, 2][:, free[2]], plain.members[:, 2][:, free[2]])  # the slice follows


def test_bad_fixed_labels_are_refused_by_name():
    with pytest.raises(ValueError, match="shape"):
        check_fixed(np.zeros((2, 3), int), (2, 4))
    with pytest.raises(ValueError, match=r"-1 \(free\), 0 or 1, got values \[2\]"):
        check_fixed(np.array([[0, 2]]), (1, 2))
    with pytest.raises(ValueError, match="integers"):
        check_fixed(np.zeros((1, 2)), (1, 2))
