"""``napari-diffmed anomaly SCAN --out DIR``: heatmap, pseudo-healthy scan and masks as NIfTI in the scan's space."""

from __future__ import annotations

import argparse
from pathlib import Path

from ..anomaly import COMPARES, DEFAULTS, METHODS
from ..outputs import OutputSet
from .common import (add_common, add_preprocess, domain_notices, file_runner, on_server, preprocess_kwargs, printer,
                     write_sidecar)


def add_parser(subparsers) -> None:
    p = subparsers.add_parser(
        "anomaly", help="anomaly heatmap of a scan against its pseudo-healthy reconstruction",
        description="Reconstruct a scan as healthy with a diffusion model and write the difference map "
                    "(smoothed, inside the brain), the reconstruction, the brain mask and the thresholded "
                    "anomaly mask as NIfTI files in the scan's space, with a JSON record of the run.",
    )
    p.add_argument("scan", type=Path, help="NIfTI scan or DICOM series (2D or 3D; skull-stripped, or give --mask)")
    p.add_argument("--series", default=None, metavar="UID", help="DICOM series to read if SCAN holds several")
    add_common(p, model_help="image model name or path (default: the shipped mni_t1_axial_64)")
    p.add_argument("--method", choices=METHODS, default=DEFAULTS.method,
                   help=f"gaussian/simplex: partial noising; ddim: inversion then guided decoding (default {DEFAULTS.method})")
    p.add_argument("--level", type=int, default=DEFAULTS.level, help="noising timestep of 1000 for gaussian/simplex")
    p.add_argument("--depth", type=int, default=DEFAULTS.depth, help="DDIM inversion timestep of 1000 for ddim")
    p.add_argument("--guidance", type=float, default=DEFAULTS.guidance, help="classifier-free guidance towards healthy")
    p.add_argument("--compare", choices=COMPARES, default=DEFAULTS.compare,
                   help="what the healthy reconstruction is compared with: the same decoding without guidance "
                        f"(cancels the model's own reconstruction errors) or the scan (default {DEFAULTS.compare})")
    p.add_argument("--negative", default=DEFAULTS.negative,
                   help="the class the guidance pushes away from: auto (the model's 'lesion' class if it has one), "
                        f"none (the null class: plain classifier-free guidance) or a class name (default {DEFAULTS.negative})")
    p.add_argument("--reconstructions", type=int, default=DEFAULTS.reconstructions,
                   help="average the heatmap over this many reconstructions (and write their variance)")
    p.add_argument("--steps", type=int, default=DEFAULTS.steps, help="DDIM steps over the whole schedule")
    p.add_argument("--smoothing", type=float, default=DEFAULTS.smoothing, help="heatmap smoothing sigma in mm")
    p.add_argument("--axis", type=int, default=0, choices=(0, 1, 2), help="slicing axis for 2D models (0 = axial)")
    p.add_argument("--slices", default=None, help="slices to analyse along --axis: START:STOP (STOP excluded), "
                                                  "e.g. 40:52, or 3,5,7 (default: all)")
    p.add_argument("--mask", type=Path, default=None, help="brain mask NIfTI (default: computed from the scan)")
    p.add_argument("--threshold", type=float, default=None,
                   help="anomaly mask threshold (default: the model card's, calibrated on healthy held-out slices)")
    p.add_argument("--reference", type=Path, default=None, help="reference lesion mask NIfTI: report AUROC, AUPRC, Dice")
    add_preprocess(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import numpy as np

    from ..anomaly import anomaly_map
    from ..evaluation.anomaly import anomaly_scores
    from ..io import read_scan, write_nifti
    from ..slices import check_slices, parse_slices
    from ..validation import check_threshold

    (anomaly_map,) = on_server(args, anomaly_map)
    if args.threshold is not None:
        check_threshold(args.threshold, "--threshold")
    scan, kwargs, _ = read_scan(args.scan, as_labels=False, series=args.series)
    if scan.ndim not in (2, 3):
        raise ValueError(f"{args.scan}: expected a 2D or 3D scan, got shape {scan.shape}")
    indices = check_slices(parse_slices(args.slices), scan.shape[args.axis] if scan.ndim == 3 else 1, args.axis)
    masks = {}
    for name in ("mask", "reference"):
        path = getattr(args, name)
        if path is not None:
            masks[name] = read_scan(path, as_labels=True)[0] > 0
            if masks[name].shape != scan.shape:
                raise ValueError(f"--{name} {path} has shape {masks[name].shape}, the scan {scan.shape}")
    stem = kwargs["name"]
    k = args.reconstructions
    names = {"heatmap": "anomaly_heatmap", "reconstruction": "pseudo_healthy", "labels": "anomaly_mask",
             "brain": "brain_mask", **({"variance": "anomaly_variance"} if k > 1 else {})}
    paths = {key: args.out / f"{stem}_{suffix}.nii.gz" for key, suffix in names.items()}
    sidecar = args.out / f"{stem}_anomaly.json"
    outputs = OutputSet(args.out, paths.values(), sidecar, args.overwrite)
    settings = dict(method=args.method, guidance=args.guidance, compare=args.compare, negative=args.negative,
                    reconstructions=k,
                    steps=args.steps,
                    smoothing=args.smoothing, seed=args.seed, device=args.device,
                    **({"depth": args.depth} if args.method == "ddim" else {"level": args.level}))
    log = (lambda *a: None) if args.quiet else print
    log(f"anomaly: {args.scan} {scan.shape}, model {args.model or 'mni_t1_axial_64 (default)'}, "
        + ", ".join(f"{key}={value}" for key, value in settings.items())
        + f", axis={args.axis}, slices={args.slices or 'all'}")
    extra = {"model": args.model}
    if args.server is None:  # the card says whether to preprocess
        from ..models import load_for_task

        loaded = load_for_task(args.model, "image", args.device, "an anomaly map")
        extra = {"model": loaded, **preprocess_kwargs(args, loaded.card, kwargs["metadata"])}
    with domain_notices("anomaly"):
        result = anomaly_map(scan, kwargs["metadata"]["spacing"], mask=masks.get("mask"), axis=args.axis,
                             indices=indices, callback=printer(args.quiet), **extra, **settings)
    threshold = result.threshold if args.threshold is None else float(args.threshold)
    for note in result.messages:
        log(f"  notice: {note}")
    with outputs.staging() as stage:
        meta = kwargs["metadata"]
        arrays = {"heatmap": (result.heatmap, False), "reconstruction": (result.reconstruction, False),
                  "labels": (result.labels(threshold), True), "brain": (result.brain_mask.astype(np.uint8), True),
                  "variance": (result.variance, False)}
        for key, path in paths.items():
            data, labels = arrays[key]
            write_nifti(stage(path), data, meta, labels=labels, overwrite=args.overwrite)
            log(f"  wrote {path}")
        record = {**result.provenance, "scan": str(args.scan), "threshold": threshold,
                  "messages": result.messages,
                  "files": {key: str(path) for key, path in paths.items()}}
        if "reference" in masks:
            try:
                record["scores"] = anomaly_scores(result.heatmap, masks["reference"], threshold, result.brain_mask)
                log("  " + ", ".join(f"{key} {value:.3f}" for key, value in record["scores"].items()))
            except ValueError as err:  # e.g. no lesion inside the brain mask: keep the results, say why
                record["scores"] = f"not scored: {err}"
                log(f"  {record['scores']}")
        write_sidecar(stage(sidecar), record, overwrite=args.overwrite)
    log(f"  wrote {sidecar} ({result.provenance['seconds']:.0f} s of model time)")
    return 0


run_file = file_runner("anomaly")
