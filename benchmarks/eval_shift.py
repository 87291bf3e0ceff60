"""The shipped models under domain shift, with and without preprocessing, each beside its classical baseline.

Every scan is the 1 mm MNI152 template (the held-out slabs of eval_segmentation.py and eval_anomaly.py are
scored), changed by one shift: a bias field, a contrast change (gamma), noise, a lower in-plane resolution,
an in-plane rotation in voxel space, or another storage order (the array flipped along y and x, as an LPS
array would be; preprocessing is then told that the orientation is unknown). The reference maps go through
the same geometric shift. Each task runs on the shifted scan as it is and with ``preprocess`` (N4, affine
registration to the template, brain extraction where a skull is found, quantile matching), and beside its
baseline on the same shifted scan:

- segmentation (mni_wm_seg_96): Dice of the consensus against the white-matter map > 0.5, per held-out slab
  (inside the brain, on the slab's slices), and of a three-class multi-Otsu threshold;
- anomaly (mni_t1_axial_64, defaults): pixel AUROC of the heatmap for planted held-out-style lesions on the
  evaluation slab, and of the median-filter residual;
- inpainting (mni_t1_axial_64, fast, 1 proposal): mean absolute error inside a masked blob (fraction of the
  scan's 0.5-99.5 percentile range) against the scan itself, and of filling with the mean of a ring around it;
- routes (no network): what the way back alone costs the white-matter Dice (see :func:`route_rows`).

The documented configuration (the tables in docs/generalisation.md): every fourth slab slice (3 of each
12-slice slab), 4 members, one lesion case, all seven shifts. ``--quick`` scores one slice per slab (stride
12) under three shifts (none, bias, noise; ``--shifts`` overrides), for a check in a few minutes. ``--model
PATH`` (``NAME.safetensors`` with its ``NAME.json``) evaluates a candidate exactly as the shipped model is
evaluated: the segmentation table for a segmentation model, the anomaly, inpainting and ablation tables for
an image model; a candidate card without a ``domain`` (written before the recipes recorded it) borrows the
shipped card's of the same name, and the rows say so. Every row names the model it scored.

    OMP_NUM_THREADS=1 python benchmarks/eval_shift.py --tasks segmentation --write seg.json
    OMP_NUM_THREADS=1 python benchmarks/eval_shift.py --tasks segmentation --quick --model run/mni_wm_seg_96.safetensors
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import warnings

import numpy as np
from scipy import ndimage

SHIFTS = ("none", "bias", "gamma", "noise", "lowres", "rotation", "storage")
QUICK_SHIFTS = ("none", "bias", "noise")


def shift_volume(volume: np.ndarray, name: str, kind: str = "image", seed: int = 0) -> tuple[np.ndarray, tuple]:
    """``volume`` (1 mm template grid) under shift ``name``; ``kind`` image, map (linear) or labels (nearest)."""
    v = np.asarray(volume, dtype=np.float32)
    spacing = (1.0, 1.0, 1.0)
    order = 0 if kind == "labels" else 1
    if name == "lowres":
        zoom = (1.0, 1 / 3, 1 / 3)
        v = ndimage.zoom(ndimage.gaussian_filter(v, (0, 1.0, 1.0)) if kind == "image" else v, zoom, order=order)
        spacing = (1.0, 3.0, 3.0)
    elif name == "rotation":
        v = ndimage.rotate(v, 15.0, axes=(1, 2), reshape=False, order=order)
    elif name == "storage":
        v = v[:, ::-1, ::-1].copy()
    if kind != "image":
        return v, spacing
    high = float(np.percentile(v, 99.5))
    rng = np.random.default_rng(seed)
    if name == "bias":
        zz, yy, xx = np.meshgrid(*[np.linspace(-1, 1, n) for n in v.shape], indexing="ij")
        v = v * np.exp(0.35 * (0.8 * xx + 0.5 * yy - 0.4 * zz + 0.3 * xx * yy))
    elif name == "gamma":
        v = high * np.clip(v / high, 0, None) ** 1.8
    elif name == "noise":
        v = np.abs(v + rng.normal(0, 0.06 * high, v.shape))
    return v.astype(np.float32), spacing


def settings_for(shift: str):
    from napari_diffmed.preprocess import PreprocessSettings

    return PreprocessSettings(oriented=shift != "storage")


def load(path: str | None, task: str):
    """The model a table scores: the shipped default for ``task``, or the candidate at ``path`` (a card
    without a ``domain`` borrows the shipped card's of its name, so that preprocessing runs as it will)."""
    from napari_diffmed.models import get_model
    from napari_diffmed.runner import load_model

    loaded = load_model(task, path, "cpu")  # the task's own default and checks
    if path is not None and not loaded.card.domain:
        loaded.card.domain = dict(get_model(loaded.card.name, device="cpu").card.domain)
        loaded.card.training = {**loaded.card.training, "domain_from": "the shipped card (eval_shift)"}
        print(f"eval_shift: {path}: the card has no domain; using the shipped {loaded.card.name}'s", file=sys.stderr)
    return loaded


def named(loaded) -> dict:
    """What every row records about the model it scored."""
    row = {"model": loaded.model_id}
    if "domain_from" in loaded.card.training:
        row["domain_from"] = loaded.card.training["domain_from"]
    return row


def segmentation_rows(shifts, members: int, stride: int, model_path: str | None = None,
                      rule: str = "majority") -> list[dict]:
    from napari_diffmed.masks import foreground_mask
    from napari_diffmed.ensemble import segment_ensemble
    from napari_diffmed.settings import RULES
    from napari_diffmed.evaluation.segmentation import dice, multi_otsu_wm
    from napari_diffmed.training.templates import load_mni152

    sys_path_benchmarks()
    from eval_segmentation import slabs

    template, model = load_mni152(1), load(model_path, "segmentation")
    brain0 = foreground_mask(template.t1)
    rows = []
    for shift in shifts:
        scan, spacing = shift_volume(template.t1, shift)
        reference = shift_volume(template.wm, shift, "map")[0] > 0.5
        brain = shift_volume(brain0.astype(np.float32), shift, "map")[0] > 0.5
        chosen = [slab[::stride] for slab in slabs(1)]
        runs = {}
        for label, pre in (("raw", None), ("preprocessed", settings_for(shift))):  # all slabs in one run
            start = time.perf_counter()
            runs[label] = segment_ensemble(scan, spacing, model=model, members=members, device="cpu", force=True,
                                           indices=np.concatenate(chosen), preprocess=pre)
            runs[f"{label}_seconds"] = round(time.perf_counter() - start, 1)
        for idx in chosen:
            region = np.zeros(brain.shape, bool)
            region[idx] = True
            region &= brain
            otsu = np.zeros(brain.shape, np.uint8)
            otsu[idx] = multi_otsu_wm(scan[idx], brain[idx])
            row = {"task": "segmentation", "shift": shift, "slab": f"{idx[0]}-{idx[-1]}", **named(model),
                   "members": members, "stride": stride, "rule": rule,
                   "baseline": round(dice(otsu, reference, region), 4), "rules": {}}
            for label in ("raw", "preprocessed"):
                result = runs[label]
                for each in RULES:  # every fusion rule on the same members, side by side
                    row["rules"].setdefault(each, {})[label] = round(
                        dice(result.labels(each), reference, region & result.covered), 4)
                row[label] = row["rules"][rule][label]
                row[f"{label}_seconds (both slabs)"] = runs[f"{label}_seconds"]
            row["similarity"] = runs["preprocessed"].provenance["preprocess"]["similarity"]
            rows.append(row)
            print(json.dumps(row), flush=True)
    return rows


def route_rows(shifts, stride: int) -> list[dict]:
    """White-matter Dice of the ideal member (the map on the model's grid, what the model is trained to give)
    taken back to the scan by each route, thresholded at 0.5: what the pipeline alone costs."""
    from napari_diffmed.masks import foreground_mask
    from napari_diffmed.ensemble import load_model
    from napari_diffmed.evaluation.segmentation import dice
    from napari_diffmed.preprocess import to_model_space
    from napari_diffmed.training.templates import load_mni152
    from napari_diffmed.volumes import prepare

    sys_path_benchmarks()
    from eval_segmentation import slabs

    template, card = load_mni152(1), load_model(None, "cpu").card
    chosen = [slab[::stride] for slab in slabs(1)]
    every = np.concatenate(chosen)
    rows = []
    for shift in shifts:
        scan, spacing = shift_volume(template.t1, shift)
        wm = shift_volume(template.wm, shift, "map")[0]
        brain = shift_volume(foreground_mask(template.t1).astype(np.float32), shift, "map")[0] > 0.5
        raw = prepare(scan, spacing, card, 0, every)
        ideal = np.clip(raw.grid.to_model(wm[every], cval=0.0), 0, 1)
        on_scan = {"raw, linear then threshold": raw.grid.from_model(ideal, cval=0.0) > 0.5,
                   "raw, threshold then nearest": raw.grid.from_model((ideal > 0.5).astype(np.float32), 0) > 0.5}
        model_scan, tf = to_model_space(scan, spacing, card, settings_for(shift), force=True)
        slices = tf.model_slices(0, every)
        pre = prepare(model_scan, tf.model_spacing, card, 0, slices)
        ideal = np.clip(pre.grid.to_model(template.wm[slices], cval=0.0), 0, 1)
        linear = np.zeros(template.wm.shape, np.float32)
        linear[slices] = pre.grid.from_model(ideal, cval=0.0)
        on_scan["preprocessed, linear twice then threshold"] = tf.back(linear, "map")[every] > 0.5
        on_scan["preprocessed, threshold then nearest"] = tf.back((linear > 0.5).astype(np.uint8), "labels")[every] > 0
        for idx in chosen:
            region = np.zeros(brain.shape, bool)
            region[idx] = True
            row = {"task": "routes", "shift": shift, "slab": f"{idx[0]}-{idx[-1]}"}
            for name, labels in on_scan.items():
                full = np.zeros(brain.shape, bool)
                full[every] = labels
                row[name] = round(dice(full, wm > 0.5, region & brain), 4)
            rows.append(row)
            print(json.dumps(row), flush=True)
    return rows


def shifted_case(base, shift: str):
    """A lesion case's scan, spacing, lesion mask and brain mask under ``shift``."""
    scan, spacing = shift_volume(base.scan, shift)
    reference = shift_volume(base.reference.astype(np.uint8), shift, "labels")[0] > 0
    brain = shift_volume(base.brain.astype(np.float32), shift, "map")[0] > 0.5
    return scan, spacing, reference, brain


def anomaly_rows(shifts, stride: int, model_path: str | None = None) -> list[dict]:
    from napari_diffmed.anomaly import anomaly_map
    from napari_diffmed.evaluation.anomaly import auroc, median_filter_heatmap
    from napari_diffmed.training.lesions import LesionCases, make_lesion_cases

    base = make_lesion_cases("evaluation", 1, seed=0, stride=stride)
    model = load(model_path, "anomaly")
    rows = []
    for shift in shifts:
        scan, spacing, reference, brain = shifted_case(base, shift)
        cases = LesionCases(scan, reference, brain, base.indices, spacing)
        region = cases.region()
        row = {"task": "anomaly", "shift": shift, **named(model), "stride": stride,
               "baseline": round(auroc(median_filter_heatmap(cases, model.card), reference, region), 4)}
        for label, pre in (("raw", None), ("preprocessed", settings_for(shift))):
            start = time.perf_counter()
            result = anomaly_map(scan, spacing, indices=base.indices, model=model, device="cpu", preprocess=pre,
                                 force=True)
            row[label] = round(auroc(result.heatmap, reference, region), 4)
            row[f"{label}_seconds"] = round(time.perf_counter() - start, 1)
            if pre is not None:
                row["similarity"] = result.provenance["preprocess"]["similarity"]
        rows.append(row)
        print(json.dumps(row), flush=True)
    return rows


def ablation_rows(shifts, stride: int, model_path: str | None = None) -> list[dict]:
    """Anomaly AUROC with preprocessing less one stage: what each stage adds."""
    from dataclasses import replace

    from napari_diffmed.anomaly import anomaly_map
    from napari_diffmed.evaluation.anomaly import auroc
    from napari_diffmed.training.lesions import make_lesion_cases

    base = make_lesion_cases("evaluation", 1, seed=0, stride=stride)
    model = load(model_path, "anomaly")
    rows = []
    for shift in shifts:
        scan, spacing, reference, brain = shifted_case(base, shift)
        region = np.zeros(brain.shape, bool)
        region[base.indices] = True
        region &= brain
        full = settings_for(shift)
        row = {"task": "ablation", "shift": shift, **named(model)}
        for label, pre in (("without N4", replace(full, n4=False)), ("without registration", replace(
                full, register="none")), ("without intensity matching", replace(full, standardise=False))):
            result = anomaly_map(scan, spacing, indices=base.indices, model=model, device="cpu", preprocess=pre,
                                 force=True)
            row[label] = round(auroc(result.heatmap, reference, region), 4)
        rows.append(row)
        print(json.dumps(row), flush=True)
    return rows


def inpainting_rows(shifts, model_path: str | None = None) -> list[dict]:
    from napari_diffmed.training.lesions import held_out_slabs
    from napari_diffmed.inpainting import inpaint
    from napari_diffmed.training.templates import load_mni152

    template, model = load_mni152(1), load(model_path, "inpainting")
    slab = held_out_slabs()["evaluation"]
    centre = np.array([slab[len(slab) // 2], 140, 70])  # in the white matter of the left hemisphere
    zz, yy, xx = np.ogrid[tuple(slice(0, n) for n in template.t1.shape)]
    blob = (((zz - centre[0]) / 3.0) ** 2 + ((yy - centre[1]) / 9.0) ** 2 + ((xx - centre[2]) / 9.0) ** 2) < 1
    rows = []
    for shift in shifts:
        scan, spacing = shift_volume(template.t1, shift)
        mask = shift_volume(blob.astype(np.uint8), shift, "labels")[0] > 0
        low, high = np.percentile(scan, [0.5, 99.5])
        ring = ndimage.binary_dilation(mask, iterations=3) & ~mask
        ring_fill = np.where(mask, scan[ring].mean(), scan)
        row = {"task": "inpainting", "shift": shift, **named(model),
               "baseline": round(float(np.abs(ring_fill - scan)[mask].mean() / (high - low)), 4)}
        for label, pre in (("raw", None), ("preprocessed", settings_for(shift))):
            start = time.perf_counter()
            result = inpaint(scan, mask, spacing, model=model, proposals=1, mode="fast", device="cpu",
                             preprocess=pre, force=True)
            row[label] = round(float(np.abs(result.mean - scan)[mask].mean() / (high - low)), 4)
            row[f"{label}_seconds"] = round(time.perf_counter() - start, 1)
            if pre is not None:
                row["similarity"] = result.provenance["preprocess"]["similarity"]
        rows.append(row)
        print(json.dumps(row), flush=True)
    return rows


def sys_path_benchmarks() -> None:
    import sys
    from pathlib import Path

    here = str(Path(__file__).resolve().parent)
    if here not in sys.path:
        sys.path.insert(0, here)


def markdown(rows: list[dict]) -> str:
    """One table per task: per shift, the baseline, the model as it is and with preprocessing (the median
    over slabs for segmentation), and the registration's similarity."""
    names = {"segmentation": "white-matter Dice (median, here the mean, of the two slabs; higher is better)",
             "anomaly": "pixel AUROC (higher is better)",
             "inpainting": "MAE inside the mask, fraction of the intensity range (lower is better)"}
    baselines = {"segmentation": "multi-Otsu", "anomaly": "median-filter residual", "inpainting": "ring-mean fill"}
    out = []
    for task in names:
        mine = [r for r in rows if r["task"] == task]
        if not mine:
            continue
        if task == "segmentation" and all("rules" in r for r in mine):
            out += segmentation_markdown(mine, names[task])
            continue
        out += [f"**{task}**: {names[task]}", "",
                f"| shift | {baselines[task]} | model, raw | model, preprocessed | registration similarity |",
                "| --- | --- | --- | --- | --- |"]
        for shift in SHIFTS:
            sel = [r for r in mine if r["shift"] == shift]
            if sel:
                med = {k: float(np.median([r[k] for r in sel])) for k in ("baseline", "raw", "preprocessed")}
                out.append(f"| {shift} | {med['baseline']:.3f} | {med['raw']:.3f} | {med['preprocessed']:.3f} | "
                           f"{float(np.median([r['similarity'] for r in sel])):.3f} |")
        out.append("")
    ablation = [r for r in rows if r["task"] == "ablation"]
    if ablation:
        full = {r["shift"]: r["preprocessed"] for r in rows if r["task"] == "anomaly"}
        stages = [k for k in ablation[0] if k.startswith("without")]
        out += ["**What each stage adds** (anomaly pixel AUROC with all stages, and with one left out)", "",
                "| shift | all stages | " + " | ".join(stages) + " |", "| --- " * (len(stages) + 2) + "|"]
        for r in ablation:
            out.append(f"| {r['shift']} | {full.get(r['shift'], float('nan')):.3f} | "
                       + " | ".join(f"{r[k]:.3f}" for k in stages) + " |")
        out.append("")
    return "\n".join(out)


def segmentation_markdown(rows: list[dict], name: str) -> list[str]:
    """The segmentation table with every fusion rule side by side (rows that record ``rules``)."""
    rules = list(rows[0]["rules"])
    setup = sorted({(r["members"], r["stride"]) for r in rows})
    out = [f"**segmentation**: {name}; " + ", ".join(f"{m} members, every {s}th slab slice" for m, s in setup), "",
           "| shift | multi-Otsu | " + " | ".join(f"{label}, {rule}" for label in ("raw", "preprocessed")
                                                 for rule in rules) + " | registration similarity |",
           "| --- " * (2 * len(rules) + 3) + "|"]
    for shift in SHIFTS:
        sel = [r for r in rows if r["shift"] == shift]
        if sel:
            cells = [float(np.median([r["rules"][rule][label] for r in sel]))
                     for label in ("raw", "preprocessed") for rule in rules]
            out.append(f"| {shift} | {float(np.median([r['baseline'] for r in sel])):.3f} | "
                       + " | ".join(f"{c:.3f}" for c in cells)
                       + f" | {float(np.median([r['similarity'] for r in sel])):.3f} |")
    return out + [""]


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tasks", nargs="+", default=["segmentation", "anomaly", "inpainting"],
                        choices=("segmentation", "anomaly", "inpainting", "ablation", "routes"))
    parser.add_argument("--shifts", nargs="+", default=None, choices=SHIFTS, help="default: all (--quick: "
                        + ", ".join(QUICK_SHIFTS) + ")")
    parser.add_argument("--members", type=int, default=4)
    parser.add_argument("--rule", default="majority", choices=("majority", "mean"),
                        help="segmentation: the consensus rule of the table's columns (every rule is in the rows)")
    parser.add_argument("--stride", type=int, default=None, help="score every stride-th slab slice (default 4; "
                        "--quick: 12, one slice per slab)")
    parser.add_argument("--quick", action="store_true", help="a check in minutes, not the documented table")
    parser.add_argument("--model", default=None, help="a candidate NAME.safetensors (with NAME.json) instead of the "
                        "shipped model of its task")
    parser.add_argument("--write", default=None, help="also write the rows to this JSON file")
    parser.add_argument("--table", nargs="+", default=None, help="only print the markdown table of these JSON files")
    args = parser.parse_args(argv)
    if args.table:
        print(markdown([row for path in args.table for row in json.load(open(path))]))
        return 0
    shifts = args.shifts or list(QUICK_SHIFTS if args.quick else SHIFTS)
    stride = args.stride or (12 if args.quick else 4)
    paths = {"segmentation": None, "image": None}
    if args.model is not None:
        from napari_diffmed.models import ModelCard
        from napari_diffmed.models.registry import resolve

        task = ModelCard.read(resolve(args.model).with_suffix(".json")).task
        tasks = [t for t in args.tasks if t != "routes" and (t == "segmentation") == (task == "segmentation")]
        if not tasks:
            parser.error(f"--model is a {task!r} model; it scores none of the tasks {args.tasks}")
        args.tasks, paths[task] = tasks, args.model
    warnings.simplefilter("ignore")  # the domain warnings are the point of the shifts; the figures say the rest
    start = time.perf_counter()
    rows: list[dict] = []
    if "segmentation" in args.tasks:
        rows += segmentation_rows(shifts, args.members, stride, paths["segmentation"], args.rule)
    if "anomaly" in args.tasks:
        rows += anomaly_rows(shifts, stride, paths["image"])
    if "inpainting" in args.tasks:
        rows += inpainting_rows(shifts, paths["image"])
    if "ablation" in args.tasks:
        rows += ablation_rows(shifts, stride, paths["image"])
    if "routes" in args.tasks:
        rows += route_rows(shifts, stride)
    print(f"eval_shift: {len(rows)} rows in {time.perf_counter() - start:.0f} s of wall time", file=sys.stderr)
    if args.write:
        with open(args.write, "w") as fh:
            json.dump(rows, fh, indent=1)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
