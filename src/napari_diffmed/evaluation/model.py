"""The quality figures of a model card, measured on data the model did not train on (quick enough for CPU).

2D image models (the shipped ``mni_t1_axial_64``), each part timed:

- ``synthesis``: samples (DDIM, class "healthy", classifier-free guidance) against the training
  slices on the model grid: median nearest-neighbour SSIM (realism), fraction above 0.95
  (memorisation), mean pairwise SSIM (diversity), intensity distance; ``baseline_nn_ssim_median``
  is the same realism figure for the real held-out slices;
- ``held_out_loss``: the training loop's validation loss (fixed noise and timesteps) on held-out slices;
- ``anomaly``: pixel AUROC, AUPRC and best Dice inside the brain on the held-out evaluation slab with
  planted ``HELD_OUT_STYLE`` lesions, per method, and for a median-filter baseline;
- ``inpainting``: the same kind of lesion masks filled on the lesion-free template: mean absolute
  error inside the mask (intensities on [0, 1]) of the mean proposal, of single proposals, and of
  filling with the mean of a 3-voxel ring around the mask.

3D image models (``mni_t1_volume_32``): ``volume``: sampled volumes against the training volume
(NN-SSIM in 3D; baseline: augmented training draws, i.e. what the model was shown) and the
foreground fraction of samples and template.

Data: the model's training recipe (:data:`~napari_diffmed.training.recipes.RECIPES`) when it has
one, else the MNI152 template on the model's grid.

    python -m napari_diffmed.evaluation.model mni_t1_axial_64 --quick
    python -m napari_diffmed.evaluation.model .scratch/models/mni_t1_axial_64.safetensors --write

(``python -m napari_diffmed.training.evaluate``, the command the shipped cards record, runs the same.)
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from .cards import format_table, plain, write_card_metrics

PARTS_2D = ("synthesis", "loss", "anomaly", "inpainting")
BRAIN_LEVEL = 0.15  # intensity on [0, 1] above which a voxel counts as brain (as the training data's filter)


@dataclass(frozen=True)
class EvalSettings:
    """Sizes of one evaluation; :data:`FULL` writes the card, :data:`QUICK` is for tests and checks."""

    n_samples: int = 64
    steps: int = 50  # the synthesis default: 25 DDIM steps give visibly noisier samples (NN-SSIM 0.25 vs 0.30)
    guidance: float = 2.0
    class_name: str = "healthy"
    anomaly_cases: int = 4
    anomaly_stride: int = 3  # score every 3rd slab slice (1 mm slices; the model's pixels are 3 mm)
    anomaly_methods: tuple[str, ...] = ("gaussian", "simplex", "ddim")
    inpaint_cases: int = 2
    proposals: int = 3
    volumes: int = 4
    volume_steps: int = 25
    seed: int = 0


FULL = EvalSettings()
QUICK = EvalSettings(n_samples=16, anomaly_cases=2, inpaint_cases=1, proposals=2, volumes=2, seed=1)


def tissue_contrast(images: np.ndarray) -> float:
    """Mean over images of the intensity std inside the foreground eroded by 2 voxels (0 for a flat blob)."""
    from scipy import ndimage

    values = []
    for image in np.asarray(images, dtype=np.float32):
        inside = ndimage.binary_erosion(image > BRAIN_LEVEL, iterations=2)
        values.append(float(image[inside].std()) if inside.any() else 0.0)
    return float(np.mean(values))


def grid_data(card):
    """(training-recipe data on the model grid, lesion probability of its batches, description)."""
    from ..training.datasets import template_slices, template_volume
    from ..training.recipes import RECIPES
    from ..training.templates import load_mni152

    recipe = RECIPES.get(card.name)
    if recipe is not None and recipe.card().network == card.network and recipe.card().spacing == card.spacing:
        return recipe.data(), recipe.lesion_prob, f"training recipe {card.name!r} (MNI152 2009a, 1 mm)"
    size, spacing = tuple(card.image_size), tuple(card.spacing)
    make = template_slices if card.spatial_dims == 2 else template_volume
    lesion_prob = 0.5 if "lesion" in card.class_names else 0.0
    return make(load_mni152(1), size, spacing), lesion_prob, "MNI152 2009a template on the model grid"


def synthesis_part(loaded, train: np.ndarray, held: np.ndarray | None, s: EvalSettings,
                   n: int | None = None, steps: int | None = None, device: str = "cpu") -> tuple[dict, np.ndarray]:
    """Figures of ``n`` samples against ``train`` (and ``held`` real images as baseline); and the samples."""
    from .synthesis import synthesis_metrics
    from ..synthesis import synthesize

    card = loaded.card
    cls = s.class_name if card.conditional else None
    result = synthesize(loaded, n=n or s.n_samples, steps=steps or s.steps, scheduler="ddim", seed=s.seed,
                        class_name=cls, guidance=s.guidance if card.conditional else 0.0, device=device)
    metrics = synthesis_metrics(result.samples, train, held_out=held)
    out = {**metrics.summary(), "n_samples": len(result.samples), "n_training": len(train),
           "n_held_out": 0 if held is None else len(held), "steps": steps or s.steps, "scheduler": "ddim",
           "class_name": cls, "guidance": s.guidance if card.conditional else None,
           "nn_ssim_min": float(metrics.nn_ssim.min()), "nn_ssim_max": float(metrics.nn_ssim.max()),
           "foreground_fraction": float((result.samples > BRAIN_LEVEL).mean()),
           "foreground_fraction_training": float((train > BRAIN_LEVEL).mean()),
           "tissue_contrast": tissue_contrast(result.samples), "tissue_contrast_training": tissue_contrast(train)}
    return out, result.samples


def held_out_loss(loaded, held, lesion_prob: float, device: str = "cpu") -> float:
    """The training loop's validation loss on a fixed batch of 32 held-out slices (as the recipe logs it)."""
    from ..models import build_scheduler
    from ..training.datasets import Batches
    from ..training.loop import validation_loss

    batch = next(Batches(held, 32, "image", lesion_prob, seed=1, augment=False))  # drawn with replacement
    return validation_loss(loaded.trained, build_scheduler(loaded.card), loaded.card, batch, device)


def anomaly_part(loaded, s: EvalSettings, device: str = "cpu") -> dict:
    """Pixel scores on the evaluation slab with held-out-style lesions, per method and for the median filter."""
    from ..anomaly import anomaly_map
    from ..heatmap import default_threshold
    from ..masks import foreground_mask
    from ..training.lesions import make_lesion_cases
    from .anomaly import median_filter_heatmap, score_cases

    card = loaded.card
    cases = make_lesion_cases("evaluation", s.anomaly_cases, seed=s.seed, pixel_mm=min(card.spacing),
                              stride=s.anomaly_stride)
    out: dict[str, Any] = {"split": "evaluation", "cases": s.anomaly_cases, "slices": len(cases.indices),
                           "lesion_pixels": int((cases.reference & cases.region()).sum())}
    start = time.perf_counter()
    out["median_filter"] = {**score_cases(median_filter_heatmap(cases, card), cases),
                            "seconds": round(time.perf_counter() - start, 1)}
    methods = [m for m in s.anomaly_methods if card.conditional or m != "ddim"]
    brain = foreground_mask(cases.scan)  # what anomaly_map would compute for each method
    for method in methods:
        start = time.perf_counter()
        result = anomaly_map(cases.scan, cases.spacing, mask=brain, indices=cases.indices, model=loaded,
                             method=method, seed=s.seed, device=device, preprocess="none")  # the model as it is
        # the default rule (98th percentile inside the brain) over the slices the model saw
        threshold = default_threshold(result.heatmap, brain & cases.region())
        seconds = round(time.perf_counter() - start, 1)
        out[method] = {**score_cases(result.heatmap, cases, threshold), "seconds": seconds}
    out["best_method"] = max(methods, key=lambda m: out[m]["auroc"])
    return out


def inpainting_part(loaded, s: EvalSettings, device: str = "cpu") -> dict:
    """MAE inside lesion-shaped masks on the clean held-out slab: mean proposal, one proposal, ring-mean fill."""
    from scipy import ndimage

    from ..training.lesions import make_lesion_cases
    from ..geometry import Normaliser
    from ..inpainting import inpaint
    from ..training.templates import load_mni152

    card = loaded.card
    cases = make_lesion_cases("evaluation", s.inpaint_cases, seed=s.seed + 100, pixel_mm=min(card.spacing),
                              stride=s.anomaly_stride)
    template = load_mni152(1)
    clean = np.tile(template.t1, (s.inpaint_cases, 1, 1))
    mask = cases.reference & cases.region()
    norm = Normaliser.fit(template.t1)
    unit = lambda x: (norm.forward(x) + 1) / 2  # noqa: E731
    truth = unit(clean)[mask]
    result = inpaint(clean, mask, cases.spacing, model=loaded, class_name="healthy" if card.conditional else None,
                     proposals=s.proposals, seed=s.seed, indices=cases.indices, device=device, preprocess="none")
    ring_fill = np.zeros(clean.shape, dtype=np.float32)
    for z in np.flatnonzero(mask.any(axis=(1, 2))):  # each masked region of a slice: its ring's mean
        parts, n_parts = ndimage.label(mask[z])
        for k in range(1, n_parts + 1):
            ring = ndimage.binary_dilation(parts == k, iterations=3) & ~mask[z] & cases.brain[z]
            ring_fill[z][parts == k] = unit(clean[z])[ring].mean() if ring.any() else 0.0
    return {"mode": result.provenance.get("mode"), "proposals": s.proposals, "cases": s.inpaint_cases,
            "mask_voxels": int(mask.sum()),
            "mae_mean_proposal": float(np.abs(unit(result.mean)[mask] - truth).mean()),
            "mae_single_proposal": float(np.mean([np.abs(unit(p)[mask] - truth).mean() for p in result.proposals])),
            "mae_ring_mean": float(np.abs(ring_fill[mask] - truth).mean()),
            "seconds": result.provenance.get("seconds")}


def volume_part(loaded, data, s: EvalSettings, n: int | None = None, steps: int | None = None,
                device: str = "cpu") -> tuple[dict, np.ndarray]:
    """Sampled volumes against the training volume; baseline: augmented draws of it (what training showed)."""
    from ..training.datasets import Batches

    x, _ = next(Batches(data, 4, "image", seed=s.seed + 7))
    augmented = ((x[:, 0].numpy() + 1) / 2).clip(0, 1)
    s3 = replace(s, n_samples=n or s.volumes, steps=steps or s.volume_steps)
    return synthesis_part(loaded, data.images, augmented, s3, device=device)


def evaluate_image_model(
    weights_path: str | os.PathLike, quick: bool = False, parts: Sequence[str] | None = None,
    settings: EvalSettings | None = None, device: str = "cpu", log: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """The card's quality figures for an image model (a registry name or a path to ``NAME.safetensors``).

    ``parts`` picks among :data:`PARTS_2D` for 2D models (default: all); 3D models have one part.
    ``settings`` overrides :data:`FULL` (or :data:`QUICK` with ``quick``). Returns a JSON-ready dict.
    """
    from ..device import select_device
    from ..models import get_model

    s = settings or (QUICK if quick else FULL)
    log = log or (lambda text: None)
    loaded = get_model(weights_path, device=str(select_device(device)), task="image")
    card, dev = loaded.card, str(next(loaded.network.parameters()).device)
    parts = tuple(parts) if parts is not None else (PARTS_2D if card.spatial_dims == 2 else ("volume",))
    allowed = PARTS_2D if card.spatial_dims == 2 else ("volume",)
    unknown = sorted(set(parts) - set(allowed))
    if unknown:
        raise ValueError(f"unknown parts {unknown} for a {card.spatial_dims}D model; choose from {list(allowed)}")
    data, lesion_prob, description = grid_data(card)
    seconds: dict[str, float] = {}
    out: dict[str, Any] = {}
    for part in parts:
        start = time.perf_counter()
        log(f"{card.name}: {part} ...")
        if part == "volume":
            out["volume"] = volume_part(loaded, data, s, device=dev)[0]
        elif part == "synthesis":
            held = data.split(held_out=True).images if data.held_out.any() else None
            out["synthesis"] = synthesis_part(loaded, data.split(held_out=False).images, held, s, device=dev)[0]
        elif part == "loss":
            out["held_out_loss"] = held_out_loss(loaded, data.split(held_out=True), lesion_prob, dev)
        elif part == "anomaly":
            out["anomaly"] = anomaly_part(loaded, s, dev)
        else:
            out["inpainting"] = inpainting_part(loaded, s, dev)
        seconds[part] = round(time.perf_counter() - start, 1)
        log(f"{card.name}: {part} done in {seconds[part]:.0f} s")
    date = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%MZ")
    out["evaluation"] = {
        "model_id": loaded.model_id, "weights_sha256": card.weights_sha256,
        "training_steps": card.training.get("steps"), "quick": bool(quick), "settings": asdict(s),
        "data": description, "device": dev, "seconds": seconds, "dates": {part: date for part in parts},
        "date": date,
        "command": f"python -m napari_diffmed.evaluation.model {card.name}{' --quick' if quick else ''} --write",
    }
    return plain(out)


def main(argv: Sequence[str] | None = None) -> int:
    import sys

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("model", help="a registry name or a path to NAME.safetensors")
    parser.add_argument("--quick", action="store_true", help="smaller, faster evaluation (about a minute)")
    parser.add_argument("--write", action="store_true", help="write the figures into the model card")
    parser.add_argument("--parts", nargs="+", default=None, help=f"2D: any of {' '.join(PARTS_2D)}")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--json", default=None, help="also write the figures to this JSON file")
    args = parser.parse_args(argv)
    metrics = evaluate_image_model(args.model, quick=args.quick, parts=args.parts, device=args.device,
                                   log=lambda text: print(text, file=sys.stderr, flush=True))
    print(format_table(metrics))
    if args.json:
        Path(args.json).write_text(json.dumps(metrics, indent=2) + "\n")
    if args.write:
        print(f"wrote {write_card_metrics(args.model, metrics)}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
