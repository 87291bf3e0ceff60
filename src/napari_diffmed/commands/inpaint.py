"""``napari-diffmed inpaint SCAN MASK --out DIR``: RePaint proposals, their mean and variance as NIfTI."""

from __future__ import annotations

import argparse
from pathlib import Path

from ..inpainting import DEFAULTS, MODES, describe
from ..outputs import file_prefix
from .common import add_common, add_preprocess, domain_notices, file_runner, indices_from, preprocess_from, printer

POSITIONAL = ("mask",)  # besides the scan


def add_parser(subparsers) -> None:
    parser = subparsers.add_parser(
        "inpaint", help="fill a masked region with several RePaint proposals (exact outside the mask)",
        description="Fill the non-zero voxels of MASK in SCAN with an image diffusion model (RePaint). Writes "
                    "each proposal, their mean and per-voxel variance into SCAN's space; outside the mask every "
                    "output equals SCAN exactly. 2D models process only the slices that hold mask voxels. "
                    "A JSON sidecar records model, settings and timing.",
    )
    add_common(parser, model_help=f"image model name or path to NAME.safetensors (default: {DEFAULTS.model})")
    parser.set_defaults(seed=DEFAULTS.seed, func=run)
    add_preprocess(parser)
    parser.add_argument("scan", type=Path, help="the scan (NIfTI, or DICOM series folder or file)")
    parser.add_argument("--series", default=None, metavar="UID", help="DICOM series to read if SCAN holds several")
    parser.add_argument("mask", type=Path, help="the region to fill (NIfTI; non-zero voxels); resampled onto "
                                                "the scan's grid with a notice if it lies on another grid")
    parser.add_argument("--class", dest="class_name", default=DEFAULTS.class_name,
                        help=f"class the fill should look like, for conditional models (default: {DEFAULTS.class_name})")
    parser.add_argument("--mode", choices=sorted(MODES), default=DEFAULTS.mode,
                        help="preset schedule: " + "; ".join(f"{k} = {describe(v)}" for k, v in MODES.items()))
    parser.add_argument("--steps", type=int, default=None, help="DDIM steps (overrides the mode)")
    parser.add_argument("--jump-length", type=int, default=None, help="steps per jump back (overrides the mode)")
    parser.add_argument("--resamplings", type=int, default=None, help="times each stretch is run (overrides the mode)")
    parser.add_argument("--proposals", type=int, default=DEFAULTS.proposals, help="number of proposals")
    parser.add_argument("--axis", type=int, default=DEFAULTS.axis, choices=(0, 1, 2),
                        help="slicing axis for 2D models, in the scan's (z, y, x) order")
    parser.add_argument("--slices", type=_slices, default=None, metavar="START:STOP|I,J,...",
                        help="only these slices along --axis: START:STOP (STOP excluded), e.g. 40:52, or 3,5,7; "
                             "default: every slice that holds mask voxels")
    parser.add_argument("--batch-size", type=int, default=DEFAULTS.batch_size, help="images per network call")
    parser.add_argument("--prefix", default=None, type=file_prefix,
                        help="output file name prefix (default: the scan's name)")


def _slices(text: str) -> list[int] | None:
    from ..slices import parse_slices

    try:
        return parse_slices(text)
    except ValueError as err:
        raise argparse.ArgumentTypeError(str(err)) from None


def settings_from(args: argparse.Namespace):
    """The run's :class:`~napari_diffmed.settings.InpaintSettings` from the command's options."""
    from ..settings import InpaintSettings

    return InpaintSettings(class_name=args.class_name, mode=args.mode, steps=args.steps, jump_length=args.jump_length,
                           resamplings=args.resamplings, proposals=args.proposals, seed=args.seed, axis=args.axis,
                           indices=indices_from(args.slices), device=args.device, batch_size=args.batch_size,
                           **preprocess_from(args))


def file_options(args: argparse.Namespace) -> dict:
    """The options of :func:`napari_diffmed.batch.run_file` that are not settings."""
    return dict(model=args.model or DEFAULTS.model, mask=args.mask, prefix=args.prefix, series=args.series,
                overwrite=args.overwrite, server=args.server)


def run(args: argparse.Namespace) -> int:
    from ..batch import run_file

    settings = settings_from(args)
    with domain_notices("inpaint"):
        run_file("inpainting", args.scan, args.out, settings, callback=printer(args.quiet),
                 log=None if args.quiet else print, skip_done=False, **file_options(args))
    return 0


run_file = file_runner("inpaint")
