"""The one voxel -> world matrix and the one mask-onto-grid, against napari's own transforms."""

import numpy as np
import pytest

from napari_diffmed.geometry import world_matrix
from napari_diffmed.masks import mask_on_grid, resample_mask


def napari_matrix(layer) -> np.ndarray:
    """A layer's data -> world matrix probed through napari's public ``data_to_world``."""
    n = layer.ndim
    origin = np.asarray(layer.data_to_world(np.zeros(n)), dtype=float)
    matrix = np.eye(n + 1)
    for i in range(n):
        matrix[:n, i] = np.asarray(layer.data_to_world(np.eye(n)[i]), dtype=float) - origin
    matrix[:n, n] = origin
    return matrix


@pytest.mark.parametrize("placement", [
    {},
    {"scale": (3.0, 1.5, 0.7), "translate": (-4.0, 2.0, 10.0)},
    {"scale": (3.0, 1.5, 0.7), "translate": (1.0, 2.0, 3.0), "rotate": (10.0, 20.0, 30.0)},
    {"scale": (2.0, 1.0, 1.0), "shear": (0.1, -0.2, 0.3), "rotate": (5.0, 0.0, -15.0), "translate": (0, 1, 2),
     "affine": np.array([[0, 1, 0, 5], [1, 0, 0, -3], [0, 0, 2, 1], [0, 0, 0, 1]], float)},
])
def test_world_matrix_is_naparis_own(placement):
    from napari.layers import Image

    layer = Image(np.zeros((3, 4, 5), np.float32), **placement)
    state = layer._get_state()  # what napari hands a writer: rotate as a matrix, shear as its upper triangle
    np.testing.assert_allclose(world_matrix(state, 3), napari_matrix(layer), atol=1e-12)
    np.testing.assert_allclose(world_matrix({"scale": layer.scale, "translate": layer.translate,
                                             "rotate": layer.rotate, "shear": layer.shear,
                                             "affine": layer.affine.affine_matrix}, 3), napari_matrix(layer),
                               atol=1e-12)


def test_world_matrix_of_reader_keywords_takes_the_last_axes():
    kwargs = {"scale": (1.0, 3.0, 2.0, 2.0), "translate": (0.0, 5.0, 6.0, 7.0)}  # a 4D reader's (t, z, y, x)
    np.testing.assert_array_equal(world_matrix(kwargs, 3), [[3, 0, 0, 5], [0, 2, 0, 6], [0, 0, 2, 7], [0, 0, 0, 1]])
    oblique = np.eye(5)
    oblique[1:4, 1:4] = [[0, 0, 2], [0, 3, 0], [1, 0, 0]]
    np.testing.assert_array_equal(world_matrix({"affine": oblique}, 3), oblique[1:, 1:])
    np.testing.assert_allclose(world_matrix({"rotate": 90.0}, 2)[:2, :2], [[0, -1], [1, 0]], atol=1e-12)
    with pytest.raises(ValueError, match="upper triangle"):
        world_matrix({"shear": (0.1, 0.2)}, 3)


def test_resample_mask_between_grids():
    coarse = np.zeros((4, 8, 8), np.uint8)
    coarse[1:3, 2:5, 3:6] = 1
    coarse_world = np.diag([2.0, 2.0, 2.0, 1.0])
    coarse_world[:3, 3] = 0.5  # voxel centres: coarse voxel k spans fine voxels 2k and 2k + 1
    fine_world = np.diag([1.0, 1.0, 1.0, 1.0])
    fine = resample_mask(coarse, coarse_world, (8, 16, 16), fine_world)
    assert fine.dtype == bool and fine.sum() == coarse.sum() * 8
    assert fine[2:6, 4:10, 6:12].all() and not fine[:2].any()
    with pytest.raises(ValueError, match="2D mask onto a 3D image"):
        resample_mask(coarse[0], np.eye(3), (8, 16, 16), fine_world)


def test_mask_on_grid_copies_on_the_same_grid_and_says_when_it_resamples():
    mask = np.zeros((4, 8, 8), np.int16)
    mask[1, 2:4, 2:4] = 3
    world = world_matrix({"scale": (2.0, 2.0, 2.0), "translate": (0.5, 0.5, 0.5)}, 3)
    same, notes = mask_on_grid(mask, world, mask.shape, world)
    assert notes == [] and np.array_equal(same, mask) and same is not mask
    fine, notes = mask_on_grid(mask, world, (8, 16, 16), np.eye(4), "the mask", "the scan")
    assert fine.sum() == 4 * 8 and "resampled onto the scan's grid (nearest neighbour): 4 -> 32 voxels" in notes[0]
    with pytest.raises(ValueError, match="the mask has 2 axes"):
        mask_on_grid(mask[0], np.eye(3), (4, 8, 8), world)
