"""The shipped default models: their cards, data and training settings, one command each."""

from __future__ import annotations

import copy
import functools
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Callable

from ..models.card import ModelCard
from .datasets import Batches, GridData, template_slices, template_volume
from .loop import TrainConfig, TrainState, train
from .templates import load_mni152

TEMPLATE = "MNI152NLin2009aSym"  # the name preprocess/ looks up (nilearn's MNI152 2009a symmetric)
SPACE = "MNI152 2009a symmetric, 1 mm, as nilearn ships it (RAS; napari axes z, y, x = I-S, P-A, L-R)"
SCHEDULER = {"name": "DDPMScheduler", "num_train_timesteps": 1000, "schedule": "linear_beta", "clip_sample": True}


@dataclass
class Recipe:
    card: Callable[[], ModelCard]
    data: Callable[[], GridData]
    kind: str
    config: TrainConfig
    lesion_prob: float = 0.0
    init: str | None = None  # the model it fine-tunes (a registry name), when it is not trained from scratch
    threshold_band: tuple[float, float] = (0.0, 1.0)  # segmentation masks: see datasets.Batches


def _t1_slice_card(prediction_type: str = "epsilon") -> ModelCard:
    return ModelCard(
        name="mni_t1_axial_64", task="image", spatial_dims=2, image_size=[64, 64], spacing=[3.0, 3.0],
        network=dict(spatial_dims=2, in_channels=1, out_channels=1, channels=[32, 64, 64],
                     attention_levels=[False, False, True], num_res_blocks=1, num_head_channels=32,
                     norm_num_groups=16, num_class_embeds=3),
        scheduler=dict(SCHEDULER, prediction_type=prediction_type), class_names=["healthy", "lesion"], null_class=2,
        description="Axial T1 brain slices (3 mm, 64x64), class-conditional healthy/lesion with a null class "
                    "for classifier-free guidance. Serves inpainting and anomaly heatmaps.",
    )


def _t1_slice_v_card() -> ModelCard:
    card = _t1_slice_card("v_prediction")
    card.name = "mni_t1_axial_64_v"
    card.description = (
        "Axial T1 brain slices (3 mm, 64x64), class-conditional healthy/lesion with a null class for classifier-free "
        "guidance; the network predicts v (Salimans & Ho 2022). Re-targeted from the noise-predicting "
        "mni_t1_axial_64 (--init): its samples are sharper, with clean backgrounds, so it is the synthesis default; "
        "anomaly maps stay with mni_t1_axial_64, whose healthy guidance removes lesions more reliably.")
    return card


def _t1_slices() -> GridData:
    return template_slices(load_mni152(1), (64, 64), (3.0, 3.0))


def _wm_seg_card() -> ModelCard:
    return ModelCard(
        name="mni_wm_seg_96", task="segmentation", spatial_dims=2, image_size=[96, 96], spacing=[2.0, 2.0],
        network=dict(spatial_dims=2, in_channels=2, out_channels=1, channels=[16, 32, 64],
                     attention_levels=[False, False, False], num_res_blocks=1, norm_num_groups=8),
        scheduler=dict(SCHEDULER, prediction_type="sample"), condition_channels=1, class_names=[],
        description="White-matter segmentation of axial T1 slices (2 mm, 96x96) in the style of Wolleb et al. "
                    "2022: the image is concatenated to the noisy mask, and the network predicts the clean mask (x0), "
                    "which trains faster than noise prediction; masks are the MNI152 white-matter "
                    "probability map thresholded by a smooth random field uniform on [0.3, 0.7], so members "
                    "disagree where the probability is between 0.3 and 0.7 and a majority of 8 is a steady "
                    "estimate of probability > 0.5.",
    )


def _t1_volume_card() -> ModelCard:
    return ModelCard(
        name="mni_t1_volume_32", task="image", spatial_dims=3, image_size=[32, 40, 32], spacing=[5.0, 5.0, 5.0],
        network=dict(spatial_dims=3, in_channels=1, out_channels=1, channels=[16, 32, 64],
                     attention_levels=[False, False, False], num_res_blocks=1, norm_num_groups=8),
        scheduler=dict(SCHEDULER, prediction_type="sample"), slice_axis=None,
        description="Whole-brain T1 volumes at 5 mm (32x40x32) for volume synthesis; the network predicts the "
                    "clean volume (x0), which learns a brain's layout in far fewer steps than noise prediction.",
    )


RECIPES: dict[str, Recipe] = {
    "mni_t1_axial_64": Recipe(
        _t1_slice_card, _t1_slices, "image",
        TrainConfig(steps=3600, batch_size=16, lr=3e-4, checkpoint_every=100, val_every=250), lesion_prob=0.5,
    ),
    "mni_t1_axial_64_v": Recipe(
        _t1_slice_v_card, _t1_slices, "image",
        TrainConfig(steps=3000, batch_size=16, lr=3e-4, checkpoint_every=100, val_every=250), lesion_prob=0.5,
        init="mni_t1_axial_64",
    ),
    "mni_wm_seg_96": Recipe(
        _wm_seg_card, lambda: template_slices(load_mni152(1), (96, 96), (2.0, 2.0), prob="wm"), "segmentation",
        TrainConfig(steps=2400, batch_size=12, lr=3e-4, checkpoint_every=100, val_every=250),
        threshold_band=(0.3, 0.7),
    ),
    "mni_t1_volume_32": Recipe(
        _t1_volume_card, lambda: template_volume(load_mni152(1), (32, 40, 32), (5.0, 5.0, 5.0)), "image",
        TrainConfig(steps=1100, batch_size=4, lr=3e-4, checkpoint_every=100, val_every=250),
    ),
}


def template_domain(card: ModelCard) -> dict:
    """The card's ``domain`` (what :func:`napari_diffmed.domain.check_scan` compares scans with and where
    preprocessing takes them) for a model trained on the 1 mm template, computed from that training data."""
    return copy.deepcopy(_template_domain(card.slice_axis if card.spatial_dims == 2 else None))


@functools.lru_cache(maxsize=4)
def _template_domain(plane: str | None) -> dict:
    from ..domain import describe

    template = load_mni152(1)
    return describe(template.t1, template.spacing, template=TEMPLATE, space=SPACE, resolution_mm=1, plane=plane,
                    modality="T1", skull=False)


def recipe_card(name: str) -> ModelCard:
    """The card a recipe trains into (before training fills ``training`` and ``metrics``): its
    architecture, scheduler and description, and the training data's ``domain``."""
    if name not in RECIPES:
        raise ValueError(f"unknown default model {name!r}; choose one of {sorted(RECIPES)}")
    card = RECIPES[name].card()
    card.domain = template_domain(card)
    return card


def train_default(name: str, out_dir: str | Path, steps: int | None = None, resume: bool = True,
                  device: str = "auto", log=print, init: str | Path | None = None) -> TrainState:
    """Train (or resume) one shipped model into ``out_dir/NAME.safetensors`` + card; ``init`` starts
    from another model's weights (see :func:`~.loop.train`; default: the recipe's own ``init``)."""
    if name not in RECIPES:
        raise ValueError(f"unknown default model {name!r}; choose one of {sorted(RECIPES)}")
    recipe = RECIPES[name]
    init = recipe.init if init is None else init
    config = replace(recipe.config, steps=recipe.config.steps if steps is None else steps, device=device)
    command = (f"napari-diffmed train --recipe {name} --steps {config.steps} --out {out_dir}"
               + (f" --init {init}" if init is not None else ""))
    data = recipe.data()
    train_data = data.split(held_out=False) if data.held_out.any() else data
    held = data.split(held_out=True) if data.held_out.any() else data
    batches = Batches(train_data, config.batch_size, recipe.kind, recipe.lesion_prob, seed=config.seed,
                      threshold_band=recipe.threshold_band)
    val = next(Batches(held, min(32, 4 * config.batch_size), recipe.kind, recipe.lesion_prob,
                       seed=config.seed + 1, augment=False, threshold_band=recipe.threshold_band))
    card = recipe_card(name)
    card.training = {
        "command": command,
        "data": "nilearn MNI152 2009a symmetric templates (T1"
                + (f", white-matter probability thresholded by a smooth field uniform on {list(recipe.threshold_band)})"
                   if recipe.kind == "segmentation" else ")")
                + ("; procedural lesions (training style)" if recipe.lesion_prob else ""),
        "held_out": "axial slabs: (slice // 12) % 6 == 3 of the slices on the 1 mm template"
        if data.held_out.any() else "none (single volume)",
        "train_items": int(len(train_data.images)), "held_out_items": int(len(held.images)),
    }
    if recipe.kind == "segmentation":
        card.training["threshold_band"] = list(recipe.threshold_band)
    return train(card, batches, val, config, Path(out_dir) / name, resume=resume, log=log, init=init)
