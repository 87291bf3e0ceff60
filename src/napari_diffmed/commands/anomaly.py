"""``napari-diffmed anomaly SCAN --out DIR``: heatmap, pseudo-healthy scan and masks as NIfTI in the scan's space."""

from __future__ import annotations

import argparse
from pathlib import Path

from ..anomaly import COMPARES, DEFAULTS, METHODS
from .common import add_common, add_preprocess, domain_notices, file_runner, indices_from, preprocess_from, printer


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


def settings_from(args: argparse.Namespace):
    """The run's :class:`~napari_diffmed.settings.AnomalySettings` from the command's options."""
    from ..settings import AnomalySettings

    return AnomalySettings(method=args.method, level=args.level, depth=args.depth, guidance=args.guidance,
                           compare=args.compare, negative=args.negative, reconstructions=args.reconstructions,
                           steps=args.steps, smoothing=args.smoothing, seed=args.seed, device=args.device,
                           axis=args.axis, indices=indices_from(args.slices), **preprocess_from(args))


def file_options(args: argparse.Namespace) -> dict:
    """The options of :func:`napari_diffmed.batch.run_file` that are not settings."""
    return dict(model=args.model, mask=args.mask, reference=args.reference, threshold=args.threshold,
                series=args.series, overwrite=args.overwrite, server=args.server)


def run(args: argparse.Namespace) -> int:
    from ..batch import run_file

    settings = settings_from(args)
    with domain_notices("anomaly"):
        run_file("anomaly", args.scan, args.out, settings, callback=printer(args.quiet),
                 log=None if args.quiet else print, skip_done=False, **file_options(args))
    return 0


run_file = file_runner("anomaly")
