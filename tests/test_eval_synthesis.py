"""Synthesis metrics: SSIM as scikit-image computes it, memorisation, diversity, intensity distance."""

from __future__ import annotations

import time

import numpy as np
import pytest
from scipy import ndimage
from skimage.metrics import structural_similarity

from napari_diffmed.evaluation.synthesis import (
    intensity_distance, nearest_neighbour_ssim, pairwise_ssim, ssim_matrix, synthesis_metrics,
)


def _smooth_images(n: int, size: int = 32, seed: int = 0) -> np.ndarray:
    """Blobby images on [0, 1], each different (smoothed noise, rescaled)."""
    rng = np.random.default_rng(seed)
    field = ndimage.gaussian_filter(rng.standard_normal((n, size, size)), sigma=(0, 3, 3))
    low, high = field.min(axis=(1, 2), keepdims=True), field.max(axis=(1, 2), keepdims=True)
    return ((field - low) / (high - low)).astype(np.float32)


@pytest.mark.parametrize("shape", [(20, 24), (9, 10, 11)])
def test_ssim_matrix_equals_scikit_image(shape):
    rng = np.random.default_rng(1)
    a = rng.random((3, *shape))
    b = 0.5 * rng.random((4, *shape)) + 0.5 * a[:1]
    expected = np.array([[structural_similarity(x, y, data_range=1.0) for y in b] for x in a])
    np.testing.assert_allclose(ssim_matrix(a, b), expected, atol=1e-10)
    np.testing.assert_allclose(ssim_matrix(a, b, max_elements=1), expected, atol=1e-10)  # one pair per chunk


def test_identical_sets_are_fully_memorised_and_not_diverse():
    images = _smooth_images(12)
    metrics = synthesis_metrics(images, images)
    np.testing.assert_allclose(metrics.nn_ssim, 1.0, atol=1e-6)
    assert list(metrics.nn_index) == list(range(12))
    assert metrics.nn_ssim_median == pytest.approx(1.0) and metrics.memorised_fraction == 1.0
    assert metrics.intensity_distance == pytest.approx(0.0, abs=1e-9)
    assert pairwise_ssim(np.repeat(images[:1], 3, axis=0)) == pytest.approx(1.0)


def test_noise_is_far_from_images_and_diverse():
    images = _smooth_images(20)
    noise = np.random.default_rng(5).random((8, 32, 32))
    metrics = synthesis_metrics(noise, images, held_out=_smooth_images(6, seed=9))
    assert metrics.nn_ssim_median < 0.2 and metrics.memorised_fraction == 0.0
    assert metrics.pairwise_ssim_mean < 0.1
    assert metrics.baseline_nn_ssim_median > metrics.nn_ssim_median  # real unseen images look more like training
    summary = metrics.summary()
    assert set(summary) >= {"nn_ssim_median", "memorised_fraction", "pairwise_ssim_mean", "intensity_distance"}
    assert all(isinstance(v, float) for v in summary.values())


def test_nearest_neighbour_finds_a_noisy_copy_and_threshold_counts_it():
    images = _smooth_images(10)
    rng = np.random.default_rng(2)
    samples = np.stack([np.clip(images[7] + rng.normal(0, 0.01, images[7].shape), 0, 1), _smooth_images(1, seed=3)[0]])
    values, index = nearest_neighbour_ssim(samples, images)
    assert index[0] == 7 and values[0] > 0.95 and values[1] < 0.95
    assert synthesis_metrics(samples, images).memorised_fraction == 0.5


def test_intensity_distance_measures_a_shift():
    images = _smooth_images(5)
    assert intensity_distance(np.clip(images + 0.2, 0, 10), images) == pytest.approx(0.2, rel=1e-3)


def test_bad_inputs_are_refused():
    with pytest.raises(ValueError, match="cannot be compared"):
        ssim_matrix(np.zeros((2, 16, 16)), np.zeros((2, 16, 17)))
    with pytest.raises(ValueError, match="win_size"):
        ssim_matrix(np.zeros((2, 5, 5)), np.zeros((2, 5, 5)))
    with pytest.raises(ValueError, match="NaN"):
        ssim_matrix(np.full((1, 8, 8), np.nan), np.zeros((1, 8, 8)))
    with pytest.raises(ValueError, match="at least two"):
        pairwise_ssim(np.zeros((1, 8, 8)))


def test_64_samples_against_150_slices_is_quick():
    training = np.random.default_rng(0).random((150, 64, 64)).astype(np.float32)
    samples = np.random.default_rng(1).random((64, 64, 64)).astype(np.float32)
    start = time.perf_counter()
    synthesis_metrics(samples, training)
    assert time.perf_counter() - start < 30
