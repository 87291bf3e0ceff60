"""MONAI augmentation pipelines for images on [0, 1] and their label maps."""

from __future__ import annotations

import math


def augmentation(keys: tuple[str, ...], spatial_dims: int, label_keys: tuple[str, ...] = (), seed: int = 0):
    """Affine + elastic deformation on all keys, bias field and gamma on the image ("image" key)."""
    from monai import transforms as T

    modes = tuple("nearest" if k in label_keys else "bilinear" for k in keys)
    rot = math.radians(12)
    spatial = [
        T.RandAffined(
            keys=keys, prob=0.8, rotate_range=(rot,) if spatial_dims == 2 else (rot / 2, rot / 2, rot),
            scale_range=(0.1,) * spatial_dims, translate_range=(3,) * spatial_dims,
            mode=modes, padding_mode="zeros",
        ),
    ]
    if spatial_dims == 2:
        spatial.append(
            T.Rand2DElasticd(keys=keys, prob=0.5, spacing=(16, 16), magnitude_range=(0.0, 1.5), mode=modes,
                             padding_mode="zeros")
        )
    intensity = [
        T.RandBiasFieldd(keys=("image",), prob=0.3, coeff_range=(0.0, 0.15)),
        T.RandAdjustContrastd(keys=("image",), prob=0.5, gamma=(0.75, 1.35)),
        T.RandScaleIntensityd(keys=("image",), prob=0.3, factors=0.08),
    ]
    pipeline = T.Compose(spatial + intensity)
    pipeline.set_random_state(seed=seed)
    return pipeline
