"""Simplex noise: seeded, standardised, spatially correlated, independent across the batch."""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from napari_diffmed.simplex import simplex_noise  # noqa: E402


def _gen(seed: int):
    return torch.Generator().manual_seed(seed)


def _lag_correlation(x: torch.Tensor, lag: int) -> float:
    a, b = x[..., :-lag].flatten(), x[..., lag:].flatten()
    return float(torch.corrcoef(torch.stack([a, b]))[0, 1])


def test_same_seed_same_noise_other_seed_other_noise():
    a = simplex_noise((3, 1, 32, 32), 2, generator=_gen(1))
    b = simplex_noise((3, 1, 32, 32), 2, generator=_gen(1))
    c = simplex_noise((3, 1, 32, 32), 2, generator=_gen(2))
    assert torch.equal(a, b)
    assert not torch.allclose(a, c)


@pytest.mark.parametrize("shape, dims", [((16, 1, 32, 32), 2), ((4, 1, 12, 16, 12), 3)])
def test_zero_mean_unit_variance(shape, dims):
    noise = simplex_noise(shape, dims, generator=_gen(0))
    assert noise.shape == shape and noise.dtype == torch.float32
    fields = noise.reshape(shape[0], -1)
    assert fields.mean(1).abs().max() < 1e-4
    assert torch.allclose(fields.std(1), torch.ones(shape[0]), atol=1e-3)
    # across independent fields, each pixel is roughly standard too (not only after standardising)
    per_pixel = noise.reshape(shape[0], -1)
    assert per_pixel.mean(0).abs().mean() < 0.5
    assert 0.5 < float(per_pixel.var(0).mean()) < 1.5


@pytest.mark.parametrize("shape, dims", [((8, 1, 48, 48), 2), ((4, 1, 16, 20, 16), 3)])
def test_spatially_correlated_unlike_white_noise(shape, dims):
    noise = simplex_noise(shape, dims, generator=_gen(0))
    white = torch.randn(shape, generator=_gen(0))
    near, far = _lag_correlation(noise, 1), _lag_correlation(noise, 6)
    assert near > 0.5, near
    assert far < near
    assert abs(_lag_correlation(white, 1)) < 0.05


def test_batch_fields_are_independent():
    noise = simplex_noise((2, 64, 64), 2, generator=_gen(3))
    r = float(torch.corrcoef(noise.reshape(2, -1))[0, 1])
    assert abs(r) < 0.25, r


def test_low_frequencies_dominate():
    """More octaves with lower persistence -> smoother fields: the first octave carries most power."""
    smooth = simplex_noise((8, 64, 64), 2, generator=_gen(0), octaves=1, period=16.0)
    rough = simplex_noise((8, 64, 64), 2, generator=_gen(0), octaves=6, persistence=1.0, period=16.0)
    assert _lag_correlation(smooth, 1) > _lag_correlation(rough, 1)


@pytest.mark.parametrize("kwargs, match", [
    ({"spatial_dims": 4}, "spatial_dims"), ({"octaves": 0}, "octaves"), ({"persistence": 1.5}, "persistence"),
    ({"period": -1.0}, "period"),
])
def test_bad_arguments_name_the_value(kwargs, match):
    args = {"spatial_dims": 2, **kwargs}
    with pytest.raises(ValueError, match=match):
        simplex_noise((1, 8, 8), **args)


def test_numpy_roundtrip_is_finite():
    noise = simplex_noise((2, 1, 8, 8, 8), 3, generator=_gen(0)).numpy()
    assert np.all(np.isfinite(noise))
