"""White-matter segmentation ensembles on the held-out MNI152 slabs, against a classical baseline.

The slabs that ``training.templates.held_out_slices`` keeps out of training (on the 1 mm template's
axial slices) and that contain brain are segmented one slab per run, on the 1 mm template and on the
2 mm template (the same slabs, found by their world z, on a grid the model never saw; saved as LAS
NIfTI files and opened with the plugin's reader, which puts them back in RAS order). The reference
is the template's white-matter probability map: > 0.5 for Dice, HD95, GED and the uncertainty AUROC,
the map itself for calibration (mapped through the card's ``training.threshold_band``: a model trained
on masks thresholded on [0.3, 0.7] should cover a voxel of probability p in a fraction
clip((p - 0.3) / 0.4, 0, 1) of its members). Every score is counted on the slab's slices inside the brain mask
(``masks.foreground_mask``): consensus (majority vote) Dice and HD95, the mean Dice of single
members, multi-Otsu (3 classes, WM = the brightest) Dice, GED of the members vs the reference mask,
AUROC of the entropy for the consensus errors, and the expected calibration errors of the mean and of
the votes (fraction of member masks) against the probability map. Dice is also pooled over the voxels
of all slabs (per template, and over everything), which weights each slab by its size.

    python benchmarks/eval_segmentation.py --model .scratch/models/mni_wm_seg_96.safetensors
"""

from __future__ import annotations

import argparse
import datetime
import json
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np

from napari_diffmed.masks import foreground_mask
from napari_diffmed.ensemble import DEFAULTS, segment_ensemble
from napari_diffmed.evaluation.segmentation import dice, multi_otsu_wm, segmentation_scores
from napari_diffmed.io import read_nifti
from napari_diffmed.training.datasets import member_probability
from napari_diffmed.evaluation.cards import write_card_metrics
from napari_diffmed.training.templates import held_out_slices, load_mni152

COLUMNS = ("dice", "member_dice", "otsu_dice", "hd95", "ged", "uncertainty_auroc", "ece", "ece_votes", "seconds")


def _world_z(template) -> np.ndarray:
    kw = template.layer_kwargs
    return kw["translate"][0] + np.arange(len(template.t1)) * kw["scale"][0]


def slabs(resolution: int) -> list[np.ndarray]:
    """Held-out slabs with brain, as slice indices of the template at ``resolution`` mm."""
    fine, template = load_mni152(1), load_mni152(resolution)
    held_fine = held_out_slices(len(fine.t1))
    k = np.rint((_world_z(template) - _world_z(fine)[0]) / fine.layer_kwargs["scale"][0]).astype(int)
    held = np.zeros(len(k), dtype=bool)
    inside = (k >= 0) & (k < len(held_fine))
    held[inside] = held_fine[k[inside]]
    brain = foreground_mask(template.t1)
    held &= brain.mean(axis=(1, 2)) > 0.05
    idx = np.flatnonzero(held)
    return [run for run in np.split(idx, np.flatnonzero(np.diff(idx) > 1) + 1) if len(run)]


def las_file_template(folder: Path) -> SimpleNamespace:
    """The 2 mm T1 and white-matter maps saved as LAS NIfTI files and opened by the plugin's reader,
    so that the scores also cover reading a scan that is not stored in RAS order."""
    import nibabel as nib
    from nilearn import datasets

    arrays = {}
    for key, img in (("t1", datasets.load_mni152_template(resolution=2)),
                     ("wm", datasets.load_mni152_wm_template(resolution=2))):
        ornt = nib.orientations.ornt_transform(nib.io_orientation(img.affine), nib.orientations.axcodes2ornt("LAS"))
        las = img.as_reoriented(ornt)
        assert nib.aff2axcodes(las.affine) == ("L", "A", "S")
        nib.save(las, str(folder / f"{key}_las.nii.gz"))
        arrays[key], kwargs, _ = read_nifti(folder / f"{key}_las.nii.gz")
    return SimpleNamespace(t1=arrays["t1"], wm=np.clip(arrays["wm"], 0, 1),
                           spacing=tuple(float(v) for v in kwargs["metadata"]["spacing"]))


def evaluate(resolution: int, slab: np.ndarray, model, members: int, steps: int, seed: int,
             band: tuple[float, float] = (0.0, 1.0)) -> dict:
    if resolution == 2:
        with tempfile.TemporaryDirectory() as folder:
            template = las_file_template(Path(folder))
    else:
        template = load_mni152(resolution)
    brain = foreground_mask(template.t1)
    region = np.zeros(brain.shape, dtype=bool)
    region[slab] = True
    region &= brain
    reference = template.wm > 0.5
    start = time.perf_counter()
    result = segment_ensemble(template.t1, template.spacing, model=model, members=members, steps=steps, seed=seed,
                              indices=slab, device="cpu", preprocess="none")  # the model as it is
    seconds = time.perf_counter() - start
    scores = segmentation_scores(result, reference, template.spacing, region=region & result.covered,
                                 probability=member_probability(template.wm, band))
    otsu = np.zeros(brain.shape, dtype=np.uint8)
    otsu[slab] = multi_otsu_wm(template.t1[slab], brain[slab])
    scores["otsu_dice"] = dice(otsu, reference, region)
    scores["seconds"] = seconds
    scores["model_id"] = result.provenance["model_id"]
    seen = region & result.covered  # the voxels scored, kept for Dice pooled over all slabs
    scores["voxels"] = {"consensus": result.labels()[seen] > 0, "otsu": otsu[seen] > 0, "reference": reference[seen]}
    return scores


def pooled(rows: list[dict]) -> dict[str, float]:
    """Consensus and multi-Otsu Dice over the voxels of all ``rows`` together (each slab weighted by its size)."""
    cat = {k: np.concatenate([r["voxels"][k] for r in rows]) for k in ("consensus", "otsu", "reference")}
    return {"dice": dice(cat["consensus"], cat["reference"]), "otsu_dice": dice(cat["otsu"], cat["reference"])}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default=None, help="segmentation model name or path (default: shipped)")
    parser.add_argument("--members", type=int, default=DEFAULTS.members)
    parser.add_argument("--steps", type=int, nargs="+", default=[DEFAULTS.steps], help="one or more step counts")
    parser.add_argument("--resolutions", type=int, nargs="+", default=[1, 2], choices=(1, 2))
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", default=None, help="also write the figures to this JSON file")
    parser.add_argument("--write", action="store_true", help="write the figures into the model's card")
    args = parser.parse_args(argv)
    from napari_diffmed.models import get_model

    band = get_model(args.model or "mni_wm_seg_96", task="segmentation").card.training.get("threshold_band", (0, 1))
    rows = []
    for resolution in args.resolutions:
        for slab in slabs(resolution):
            for steps in args.steps:
                scores = evaluate(resolution, slab, args.model, args.members, steps, args.seed, tuple(band))
                rows.append({"template": f"{resolution} mm", "slices": f"{slab[0]}-{slab[-1]}", "steps": steps,
                             **scores})
                print("  " + ", ".join(f"{k} {v:.3f}" if isinstance(v, float) else f"{k} {v}"
                                       for k, v in rows[-1].items() if k != "voxels"), flush=True)
    print(f"\n{args.members} members, model {rows[0]['model_id'] if rows else '?'}\n")
    print("| template | slices | steps | consensus Dice | mean member Dice | multi-Otsu Dice | HD95 mm | GED | "
          "uncertainty AUROC | ECE of mean | ECE of votes | seconds |\n" + "|---" * 12 + "|")
    for row in rows:
        print(f"| {row['template']} | {row['slices']} | {row['steps']} | "
              + " | ".join(f"{row[c]:.3f}" if c != "seconds" else f"{row[c]:.0f}" for c in COLUMNS) + " |")
    for steps in args.steps:
        same = [r for r in rows if r["steps"] == steps]
        if same:
            means = [np.nanmean([r[c] for r in same]) for c in COLUMNS]
            print(f"| mean of slabs | | {steps} | " + " | ".join(f"{m:.0f}" if c == "seconds" else f"{m:.3f}"
                                                              for c, m in zip(COLUMNS, means)) + " |")
            for name, group in [(f"{t} pooled", [r for r in same if r["template"] == t])
                                for t in dict.fromkeys(r["template"] for r in same)] + [("all pooled", same)]:
                p = pooled(group)
                print(f"| {name} | | {steps} | {p['dice']:.3f} | | {p['otsu_dice']:.3f} |" + " |" * 7)
    if args.json:
        with open(args.json, "w") as fh:
            json.dump([{k: v for k, v in r.items() if k != "voxels"} for r in rows], fh, indent=2, default=float)
    if args.write:
        print(f"wrote {write_card_metrics(args.model or 'mni_wm_seg_96', card_metrics(rows, args, band))}")
    return 0


def card_metrics(rows: list[dict], args, band) -> dict:
    """The card's ``segmentation`` and ``evaluation`` sections from the rows of one step count."""
    from napari_diffmed.models import get_model

    names = {"hd95": "hd95_mm"}
    keep = [c for c in COLUMNS if c != "seconds"]
    rows = [r for r in rows if r["steps"] == args.steps[0]]
    slabs = {f"{r['template']}{' LAS file' if r['template'] == '2 mm' else ''} {r['slices']}":
             {names.get(c, c): round(float(r[c]), 3) for c in keep} for r in rows}
    mean = {names.get(c, c): round(float(np.nanmean([r[c] for r in rows])), 3) for c in keep}
    mean.update({f"pooled_{k}": round(float(v), 3) for k, v in pooled(rows).items()})
    loaded = get_model(args.model or "mni_wm_seg_96", task="segmentation")
    return {
        "segmentation": {"reference": "MNI152 white-matter probability map > 0.5 (ECE against the map through "
                                      f"the training's threshold band {list(band)})",
                         "members": args.members, "steps": args.steps[0], "scheduler": "ddim", "seed": args.seed,
                         "rule": DEFAULTS.rule, "threshold": DEFAULTS.threshold,
                         "slabs": slabs, "mean": mean},
        "held_out_loss": loaded.card.training.get("held_out_loss"),  # the training loop's, in its own target's units
        "evaluation": {"model_id": loaded.model_id, "weights_sha256": loaded.card.weights_sha256,
                       "command": "python benchmarks/eval_segmentation.py --write",
                       "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d")},
    }


if __name__ == "__main__":
    raise SystemExit(main())
