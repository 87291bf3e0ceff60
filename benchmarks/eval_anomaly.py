"""Anomaly heatmaps on held-out MNI slabs with planted lesions of the held-out style.

The two axial slabs of the 1 mm MNI152 template that ``training.templates.held_out_slices`` keeps
out of training and that contain brain are split: the lower one (cerebellum and temporal lobes)
is the VALIDATION split used to tune the defaults, the upper one (above the ventricles) the
EVALUATION split reported in docs/anomaly.md. Each case is the whole template with 1-2 lesions of
``training.lesions.HELD_OUT_STYLE`` (ring and lobed shapes the model never saw, sizes in pixels of
the model grid) planted in 3D inside the slab; the cases are stacked along z into one scan so a
single ``anomaly_map`` call runs them all in one batch stream. Scores are pixel-wise over the slab
slices inside the template's brain (the lesion planting's own mask), pooled over cases. Each method
runs once per ``--compare`` choice: the healthy reconstruction against its unguided twin, and
against the scan.

    NAPARI_DIFFMED_MODELS=/work/train/weights python benchmarks/eval_anomaly.py --split evaluation
"""

from __future__ import annotations

import argparse
import itertools
import json
import time

from napari_diffmed.anomaly import COMPARES, DEFAULTS, METHODS, anomaly_map
from napari_diffmed.evaluation.anomaly import median_filter_heatmap as median_baseline
from napari_diffmed.evaluation.anomaly import score_cases as score
from napari_diffmed.training.lesions import LesionCases as Cases
from napari_diffmed.training.lesions import held_out_slabs as slabs  # noqa: F401 - kept for callers
from napari_diffmed.training.lesions import make_lesion_cases as make_cases


def run_method(cases: Cases, method: str, model=None, **settings) -> tuple[dict, float, object]:
    start = time.perf_counter()
    result = anomaly_map(cases.scan, cases.spacing, indices=cases.indices, model=model, method=method,
                         **{"preprocess": "none", **settings})  # the model as it is, unless asked
    return score(result.heatmap, cases, result.threshold), time.perf_counter() - start, result


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--split", choices=("validation", "evaluation"), default="evaluation")
    parser.add_argument("--cases", type=int, default=4, help="lesion draws (each one slab of 12 slices)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--methods", nargs="+", choices=METHODS, default=list(METHODS))
    parser.add_argument("--compare", nargs="+", choices=COMPARES, default=list(COMPARES),
                        help="what the healthy reconstruction is compared with (each one a row per method)")
    parser.add_argument("--negative", nargs="+", default=[DEFAULTS.negative],
                        help="the class(es) the guidance pushes away from (each one a row per method): auto, none")
    parser.add_argument("--model", default=None)
    parser.add_argument("--json", default=None, help="also write the figures to this JSON file")
    args = parser.parse_args(argv)
    cases = make_cases(args.split, args.cases, args.seed)
    n_lesion = int(cases.reference.sum())
    print(f"{args.split}: {args.cases} cases x {len(cases.indices) // args.cases} slices, "
          f"{n_lesion} lesion pixels of {int(cases.region().sum())} brain pixels; defaults {DEFAULTS}")
    from napari_diffmed.models import load

    card = load("anomaly", args.model, "cpu").card
    rows = {"median filter baseline": (score(median_baseline(cases, card), cases), 0.0)}
    for method, compare, negative in itertools.product(args.methods, args.compare, args.negative):
        figures, seconds, result = run_method(cases, method, args.model, compare=compare, negative=negative)
        name = f"{method} vs {result.provenance['compared_with']}" + (
            "" if len(args.negative) == 1 else f", away from {result.provenance['negative_class']}")
        rows[name] = (figures, seconds)
        print(f"  {name}: {figures} in {seconds:.0f} s ({result.provenance['model_id']})", flush=True)
    print("\n| method | pixel AUROC | AUPRC | best Dice | Dice at default threshold | seconds |\n|---|---|---|---|---|---|")
    for name, (f, seconds) in rows.items():
        print(f"| {name} | {f['auroc']:.3f} | {f['auprc']:.3f} | {f['best_dice']:.3f} | "
              f"{f.get('dice', float('nan')):.3f} | {seconds:.0f} |")
    if args.json:
        with open(args.json, "w") as fh:
            json.dump({k: {"figures": f, "seconds": s} for k, (f, s) in rows.items()}, fh, indent=2)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
