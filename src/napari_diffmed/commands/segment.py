"""``napari-diffmed segment SCAN --out DIR``: ensemble labels and uncertainty maps as NIfTI in the scan's space."""

from __future__ import annotations

import argparse
from pathlib import Path

from ..ensemble import DEFAULTS, RULES
from ..sampling import SCHEDULER_NAMES
from .common import add_common, add_preprocess, domain_notices, file_runner, indices_from, preprocess_from, printer


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


def settings_from(args: argparse.Namespace):
    """The run's :class:`~napari_diffmed.settings.EnsembleSettings` from the command's options."""
    from ..settings import EnsembleSettings

    return EnsembleSettings(members=args.members, steps=args.steps, scheduler=args.scheduler, seed=args.seed,
                            chunk=args.chunk, rule=args.rule, threshold=args.threshold, axis=args.axis,
                            indices=indices_from(args.slices), device=args.device, **preprocess_from(args))


def file_options(args: argparse.Namespace) -> dict:
    """The options of :func:`napari_diffmed.batch.run_file` that are not settings."""
    return dict(model=args.model, reference=args.reference, series=args.series, overwrite=args.overwrite,
                server=args.server)


def run(args: argparse.Namespace) -> int:
    from ..batch import run_file

    settings = settings_from(args)
    with domain_notices("segment"):
        run_file("segmentation", args.scan, args.out, settings, callback=printer(args.quiet),
                 log=None if args.quiet else print, skip_done=False, **file_options(args))
    return 0


run_file = file_runner("segment")
