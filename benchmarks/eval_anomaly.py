"""Anomaly heatmaps on held-out MNI slabs with planted lesions of the held-out style.

The two axial slabs of the 1 mm MNI152 template that ``training.templates.held_out_slices`` keeps
out of training and that contain brain are split: the lower one (cerebellum and temporal lobes)
is the VALIDATION split used to tune the defaults, the upper one (above the ventricles) the
EVALUATION split reported in docs/anomaly.md. Each case is the whole template with 1-2 lesions of
``training.lesions.HELD_OUT_STYLE`` (ring and lobed shapes the model never saw, sizes in pixels of
the model grid) planted in 3D inside the slab; the cases are stacked along z into one scan so a
single ``anomaly_map`` call runs them all in one batch stream. Scores are pixel-wise over the slab
slices inside the template's brain (the lesion planting's own mask), pooled over cases.

    NAPARI_DIFFMED_MODELS=/work/train/weights python benchmarks/eval_anomaly.py --split evaluation
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import time
from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from napari_diffmed.anomaly import DEFAULTS, METHODS, anomaly_map, foreground_mask
from napari_diffmed.evaluation.anomaly import anomaly_scores
from napari_diffmed.geometry import Normaliser
from napari_diffmed.training.lesions import HELD_OUT_STYLE, plant_lesions
from napari_diffmed.training.templates import held_out_slices, load_mni152

MODEL_PIXEL_MM = 3.0  # the shipped 2D model's pixel size: lesion radii are given in its pixels


@dataclass
class Cases:
    """``scan``: the cases stacked along z; ``indices``: slab slices; ``reference``/``brain`` on the scan's grid."""

    scan: np.ndarray
    reference: np.ndarray
    brain: np.ndarray
    indices: np.ndarray
    spacing: tuple[float, float, float]

    def region(self) -> np.ndarray:
        """Where scores are counted: the slab slices, inside the brain."""
        keep = np.zeros(self.scan.shape, dtype=bool)
        keep[self.indices] = True
        return keep & self.brain


def slabs() -> dict[str, np.ndarray]:
    """Slice indices of the held-out slabs that contain brain: validation (lower), evaluation (upper)."""
    template = load_mni152(1)
    unit = (Normaliser.fit(template.t1).forward(template.t1) + 1) / 2
    held = held_out_slices(len(unit)) & ((unit > 0.15).mean(axis=(1, 2)) > 0.05)
    runs = np.split(np.flatnonzero(held), np.flatnonzero(np.diff(np.flatnonzero(held)) > 1) + 1)
    return {"validation": runs[0], "evaluation": runs[1]}


def make_cases(split: str, n_cases: int, seed: int = 0) -> Cases:
    """``n_cases`` copies of the template with lesions planted in the split's slab, stacked along z."""
    template = load_mni152(1)
    norm = Normaliser.fit(template.t1)
    unit = (norm.forward(template.t1) + 1) / 2
    brain = unit > 0.15
    slab = slabs()[split]
    scale = MODEL_PIXEL_MM / min(template.spacing)
    style = dataclasses.replace(HELD_OUT_STYLE, radius=tuple(r * scale for r in HELD_OUT_STYLE.radius))
    rng = np.random.default_rng([seed, 0 if split == "validation" else 1])
    scans, refs = [], []
    for _ in range(n_cases):
        scan, ref = template.t1.copy(), np.zeros(unit.shape, dtype=bool)
        planted, ref[slab] = plant_lesions(unit[slab], brain[slab], rng, style)
        scan[slab] = norm.inverse(planted * 2 - 1)
        scans.append(scan)
        refs.append(ref)
    depth = len(unit)
    indices = np.concatenate([slab + i * depth for i in range(n_cases)])
    return Cases(np.concatenate(scans), np.concatenate(refs), np.tile(brain, (n_cases, 1, 1)), indices,
                 tuple(float(s) for s in template.spacing))


def median_baseline(cases: Cases, card, size: int = 9, smoothing_mm: float = 3.0) -> np.ndarray:
    """Classical baseline on the model's grid: |slice - median filter of ``size`` pixels| / 2, smoothed
    inside the foreground mask like the model's heatmap, mapped back to the scan."""
    from napari_diffmed.anomaly import _model_mask, _on_input, _smooth_inside
    from napari_diffmed.volumes import prepare

    prepared = prepare(cases.scan, cases.spacing, card, indices=cases.indices)
    residual = np.abs(prepared.data - ndimage.median_filter(prepared.data, size=(1, size, size))) / 2
    brain = foreground_mask(cases.scan)
    sigma = [smoothing_mm / s for s in card.spacing]
    heat = _smooth_inside(residual, _model_mask(prepared, brain), sigma)
    return _on_input(prepared, heat, cases.scan, 0.0) * brain


def score(heatmap: np.ndarray, cases: Cases, threshold: float | None = None) -> dict:
    return {k: round(v, 4) for k, v in anomaly_scores(heatmap, cases.reference, threshold, cases.region()).items()}


def run_method(cases: Cases, method: str, model=None, **settings) -> tuple[dict, float, object]:
    start = time.perf_counter()
    result = anomaly_map(cases.scan, cases.spacing, indices=cases.indices, model=model, method=method, **settings)
    return score(result.heatmap, cases, result.threshold), time.perf_counter() - start, result


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--split", choices=("validation", "evaluation"), default="evaluation")
    parser.add_argument("--cases", type=int, default=4, help="lesion draws (each one slab of 12 slices)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--methods", nargs="+", choices=METHODS, default=list(METHODS))
    parser.add_argument("--model", default=None)
    parser.add_argument("--json", default=None, help="also write the figures to this JSON file")
    args = parser.parse_args(argv)
    cases = make_cases(args.split, args.cases, args.seed)
    n_lesion = int(cases.reference.sum())
    print(f"{args.split}: {args.cases} cases x {len(cases.indices) // args.cases} slices, "
          f"{n_lesion} lesion pixels of {int(cases.region().sum())} brain pixels; defaults {DEFAULTS}")
    from napari_diffmed.anomaly import _load

    card = _load(args.model, "cpu").card
    rows = {"median filter baseline": (score(median_baseline(cases, card), cases), 0.0)}
    for method in args.methods:
        figures, seconds, result = run_method(cases, method, args.model)
        rows[method] = (figures, seconds)
        print(f"  {method}: {figures} in {seconds:.0f} s ({result.provenance['model_id']})", flush=True)
    print(f"\n| method | pixel AUROC | AUPRC | best Dice | Dice at default threshold | seconds |\n|---|---|---|---|---|---|")
    for name, (f, seconds) in rows.items():
        print(f"| {name} | {f['auroc']:.3f} | {f['auprc']:.3f} | {f['best_dice']:.3f} | "
              f"{f.get('dice', float('nan')):.3f} | {seconds:.0f} |")
    if args.json:
        with open(args.json, "w") as fh:
            json.dump({k: {"figures": f, "seconds": s} for k, (f, s) in rows.items()}, fh, indent=2)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
