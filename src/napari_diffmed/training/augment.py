"""MONAI augmentation pipelines for images on [0, 1] and their label maps."""

from __future__ import annotations

import math


def augmentation(keys: tuple[str, ...], spatial_dims: int, label_keys: tuple[str, ...] = (), seed: int = 0,
                 domain: bool = False):
    """Affine + elastic deformation on all keys, bias field and gamma on the image ("image" key).

    ``domain`` adds domain randomisation for scans that are not the template: stronger bias fields
    and gamma changes, noise, blur and lost resolution, and Gibbs ringing,
    and wider rotations, so that a model learns anatomy rather than the template's exact intensities."""
    from monai import transforms as T

    modes = tuple("nearest" if k in label_keys else "bilinear" for k in keys)
    rot = math.radians(25 if domain else 12)
    spatial = [
        T.RandAffined(
            keys=keys, prob=0.8, rotate_range=(rot,) if spatial_dims == 2 else (rot / 2, rot / 2, rot),
            scale_range=((0.15 if domain else 0.1),) * spatial_dims, translate_range=(3,) * spatial_dims,
            mode=modes, padding_mode="zeros",
        ),
    ]
    if spatial_dims == 2:
        spatial.append(
            T.Rand2DElasticd(keys=keys, prob=0.5, spacing=(16, 16), magnitude_range=(0.0, 1.5), mode=modes,
                             padding_mode="zeros")
        )
    if domain:
        intensity = [
            T.RandSimulateLowResolutiond(keys=("image",), prob=0.25, zoom_range=(0.4, 0.9),
                                         upsample_mode="bilinear" if spatial_dims == 2 else "trilinear"),
            T.RandGaussianSmoothd(keys=("image",), prob=0.2, sigma_x=(0.25, 1.2), sigma_y=(0.25, 1.2),
                                  sigma_z=(0.25, 1.2)),
            T.RandBiasFieldd(keys=("image",), prob=0.6, coeff_range=(0.0, 0.5)),
            T.RandAdjustContrastd(keys=("image",), prob=0.6, gamma=(0.6, 1.7)),
            T.RandGibbsNoised(keys=("image",), prob=0.1, alpha=(0.0, 0.6)),
            T.RandGaussianNoised(keys=("image",), prob=0.4, mean=0.0, std=0.06),
        ]
    else:
        intensity = [
            T.RandBiasFieldd(keys=("image",), prob=0.3, coeff_range=(0.0, 0.15)),
            T.RandAdjustContrastd(keys=("image",), prob=0.5, gamma=(0.75, 1.35)),
            T.RandScaleIntensityd(keys=("image",), prob=0.3, factors=0.08),
        ]
    pipeline = T.Compose(spatial + intensity)
    pipeline.set_random_state(seed=seed)
    return pipeline
