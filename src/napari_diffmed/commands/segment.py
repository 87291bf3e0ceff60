"""``napari-diffmed segment SCAN --out DIR``: ensemble labels and uncertainty maps as NIfTI in the scan's space."""

from __future__ import annotations

import argparse
from pathlib import Path

from ..ensemble import DEFAULTS, RULES
from ..outputs import OutputSet
from ..sampling import SCHEDULER_NAMES
from .common import (add_common, add_preprocess, domain_notices, file_runner, on_server, preprocess_kwargs, printer,
                     write_sidecar)

OUTPUTS = {"labels": "seg_labels", "mean": "seg_mean", "votes": "seg_votes", "variance": "seg_variance",
           "entropy": "seg_entropy", "mutual_information": "seg_mutual_information"}


def add_parser(subparsers) -> None:
    p = subparsers.add_parser(
        "segment", help="segment a scan with a diffusion ensemble and map its uncertainty",
        description="Sample an ensemble of segmentations of SCAN with a diffusion segmentation model "
                    "(Wolleb et al. 2022) and write the consensus labels, the members' mean probability, the "
                    "fraction of members voting for each voxel, the members' variance, the predictive "
                    "entropy (bits) and the mutual information (bits) as NIfTI "
                    "files in the scan's space, with a JSON record of the run. Voxels the model did not see "
                    "(other slices, outside its field of view) are 0 in every map.",
    )
    p.add_argument("scan", type=Path, help="NIfTI scan (2D or 3D) or DICOM series folder or file")
    p.add_argument("--series", default=None, metavar="UID", help="DICOM series to read if SCAN holds several")
    add_common(p, model_help="segmentation model name or path (default: the shipped mni_wm_seg_96)")
    p.set_defaults(seed=DEFAULTS.seed, func=run)
    p.add_argument("--members", type=int, default=DEFAULTS.members,
                   help=f"ensemble members (default {DEFAULTS.members})")
    p.add_argument("--steps", type=int, default=DEFAULTS.steps, help=f"denoising steps (default {DEFAULTS.steps})")
    p.add_argument("--scheduler", type=str.lower, default=DEFAULTS.scheduler, choices=sorted(SCHEDULER_NAMES),
                   help=f"sampler (default {DEFAULTS.scheduler}; ddpm needs 1000 steps)")
    p.add_argument("--axis", type=int, default=0, choices=(0, 1, 2), help="slicing axis for 2D models (0 = axial)")
    p.add_argument("--slices", default=None, help="slices to segment along --axis: START:STOP (STOP excluded), "
                                                  "e.g. 40:52, or 3,5,7 (default: all)")
    p.add_argument("--rule", choices=RULES, default=DEFAULTS.rule,
                   help=f"consensus: majority vote of the members, or their mean probability (default {DEFAULTS.rule})")
    p.add_argument("--threshold", type=float, default=DEFAULTS.threshold,
                   help=f"consensus threshold on the vote fraction or mean (default {DEFAULTS.threshold})")
    p.add_argument("--chunk", type=int, default=DEFAULTS.chunk,
                   help=f"network inputs (members x slices) per call; lower it to save memory "
                        f"(default {DEFAULTS.chunk})")
    p.add_argument("--reference", type=Path, default=None, help="reference mask NIfTI: report Dice, HD95, GED, AUROC")
    add_preprocess(p)


def run(args: argparse.Namespace) -> int:
    from ..ensemble import segment_ensemble, segmentation_model
    from ..io import read_scan, write_nifti
    from ..slices import check_slices, parse_slices

    segment_ensemble, segmentation_model = on_server(args, segment_ensemble, segmentation_model)
    log = (lambda *a: None) if args.quiet else print
    if not 0 <= args.threshold <= 1:
        raise ValueError(f"--threshold must be from 0 to 1, got {args.threshold}")
    scan, kwargs, _ = read_scan(args.scan, as_labels=False, series=args.series)
    if scan.ndim not in (2, 3):
        raise ValueError(f"{args.scan}: expected a 2D or 3D scan, got shape {scan.shape}")
    reference = None
    if args.reference is not None:
        reference = read_scan(args.reference, as_labels=True)[0] > 0
        if reference.shape != scan.shape:
            raise ValueError(f"--reference {args.reference} has shape {reference.shape}, the scan {scan.shape}")
    indices = check_slices(parse_slices(args.slices), scan.shape[args.axis] if scan.ndim == 3 else 1, args.axis)
    stem = kwargs["name"]
    paths = {key: args.out / f"{stem}_{suffix}.nii.gz" for key, suffix in OUTPUTS.items()}
    sidecar = args.out / f"{stem}_segment.json"
    outputs = OutputSet(args.out, paths.values(), sidecar, args.overwrite)
    loaded = segmentation_model(args.model, args.device)  # after every check of the input: loading takes a while
    log(f"segment: {args.scan} {scan.shape}, model {loaded.model_id} ({loaded.path}), members={args.members}, "
        f"steps={args.steps}, scheduler={args.scheduler}, seed={args.seed}, axis={args.axis}, "
        f"slices={args.slices or 'all'}, rule={args.rule}, threshold={args.threshold:g}, device={args.device}")
    spacing = kwargs["metadata"]["spacing"]
    with domain_notices("segment"):
        result = segment_ensemble(scan, spacing, model=loaded, members=args.members, steps=args.steps,
                                  scheduler=args.scheduler, seed=args.seed, axis=args.axis, indices=indices,
                                  device=args.device, chunk=args.chunk, callback=printer(args.quiet),
                                  **preprocess_kwargs(args, loaded.card, kwargs["metadata"]))
    labels = result.labels(args.rule, args.threshold)
    with outputs.staging() as stage:
        meta = kwargs["metadata"]
        for key, path in paths.items():
            data = labels if key == "labels" else getattr(result, key)
            write_nifti(stage(path), data, meta, labels=key == "labels", overwrite=args.overwrite)
            log(f"  wrote {path}")
        ranking = result.ranking()
        record = {**result.provenance, "scan": str(args.scan), "rule": args.rule, "threshold": args.threshold,
                  "most_uncertain_slices": [int(i) for i in ranking[:10]],
                  "files": {key: str(path) for key, path in paths.items()}, "messages": []}
        if reference is not None:
            from ..evaluation.segmentation import segmentation_scores

            record["scores"] = segmentation_scores(result, reference, spacing, args.rule, args.threshold)
            log("  " + ", ".join(f"{key} {value:.3f}" for key, value in record["scores"].items()))
        write_sidecar(stage(sidecar), record, overwrite=args.overwrite)
    log(f"  most uncertain slices along axis {args.axis}: {record['most_uncertain_slices']}")
    log(f"  wrote {sidecar} ({result.provenance['seconds']:.0f} s of model time)")
    return 0


run_file = file_runner("segment")
