"""``napari-diffmed inpaint SCAN MASK --out DIR``: RePaint proposals, their mean and variance as NIfTI."""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from ..inpainting import DEFAULTS, MODES, describe
from ..outputs import OutputSet, file_prefix
from .common import (add_common, add_preprocess, domain_notices, file_runner, on_server, preprocess_kwargs, printer,
                     write_sidecar)


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


def to_world(kwargs: dict, ndim: int) -> np.ndarray:
    """The (ndim+1)^2 voxel -> world matrix of a layer's keyword arguments (affine, or scale and translate)."""
    if "affine" in kwargs:
        return np.asarray(kwargs["affine"], dtype=float)[-ndim - 1:, -ndim - 1:]
    matrix = np.eye(ndim + 1)
    matrix[:ndim, :ndim] = np.diag(kwargs.get("scale", (1.0,) * ndim)[-ndim:])
    matrix[:ndim, ndim] = kwargs.get("translate", (0.0,) * ndim)[-ndim:]
    return matrix


def _mask_on_scan(mask: np.ndarray, mask_kw: dict, scan: np.ndarray, scan_kw: dict, notes: list[str]) -> np.ndarray:
    from ..masks import resample_mask

    if mask.ndim != scan.ndim:
        raise ValueError(f"mask has {mask.ndim} axes {mask.shape} but the scan has {scan.ndim} {scan.shape}")
    m_world, s_world = to_world(mask_kw, mask.ndim), to_world(scan_kw, scan.ndim)
    if mask.shape == scan.shape and np.allclose(m_world, s_world, atol=1e-4):
        return mask
    out = resample_mask(mask, m_world, scan.shape, s_world)
    notes.append(f"the mask {mask.shape} lies on another grid than the scan {scan.shape}; resampled onto the "
                 f"scan's grid (nearest neighbour): {int((mask != 0).sum())} -> {int(out.sum())} voxels")
    return out.astype(np.uint8)


def _check_region(mask: np.ndarray, path: Path, axis: int, slices: list[int] | None) -> None:
    """Refuse an empty mask, slices outside the scan, and chosen slices without mask voxels (before any model)."""
    from ..slices import check_slices, describe

    if not mask.any():
        raise ValueError(f"the mask {path} has no non-zero voxels on the scan's grid: nothing to inpaint")
    if slices is None:
        return
    if mask.ndim == 2 and axis != 0:
        raise ValueError(f"slicing axis must be 0 for a 2D scan, got {axis}")
    moved = np.moveaxis(mask if mask.ndim == 3 else mask[None], axis, 0)
    chosen = check_slices(slices, len(moved), axis)
    if not moved[chosen].any():
        holding = np.flatnonzero(moved.reshape(len(moved), -1).any(axis=1))
        raise ValueError(f"the mask has no voxels on slices {describe(chosen)} along axis {axis}; it has some on "
                         f"slices {describe(holding)}")


def run(args: argparse.Namespace) -> int:
    from ..device import select_device
    from ..inpainting import image_model, inpaint, settings_for
    from ..io import read_scan, write_nifti
    from ..slices import describe as describe_slices

    image_model, inpaint = on_server(args, image_model, inpaint)
    say = (lambda *a: None) if args.quiet else print
    scan, scan_kw, _ = read_scan(args.scan, as_labels=False, series=args.series)
    try:
        mask, mask_kw, _ = read_scan(args.mask, as_labels=True)
    except ValueError as err:
        raise ValueError(f"{err}; a mask must be binary or integer labels (threshold it first)") from None
    notes: list[str] = []
    mask = _mask_on_scan(mask, mask_kw, scan, scan_kw, notes)
    _check_region(mask, args.mask, args.axis, args.slices)
    settings = settings_for(args.mode, args.steps, args.jump_length, args.resamplings)
    prefix = args.prefix or scan_kw["name"]
    names = [f"proposal{k}" for k in range(args.proposals)] + ["mean", "variance", "mask"]
    targets = {n: args.out / f"{prefix}_inpaint_{n}.nii.gz" for n in names}
    sidecar = args.out / f"{prefix}_inpaint.json"
    outputs = OutputSet(args.out, targets.values(), sidecar, args.overwrite)
    for note in notes:
        say(f"notice: {note}")
    loaded = image_model(args.model, args.device)  # after every check of the input: loading takes a while
    cls = args.class_name if loaded.card.conditional else None
    say(f"model {loaded.model_id} ({loaded.card.spatial_dims}D, {loaded.path})")
    say(f"inpainting with class {cls}, mode {args.mode}: {describe(settings)}; {args.proposals} proposals, "
        f"seed {args.seed}, device {select_device(args.device)}, axis {args.axis}, "
        f"slices {'all with mask voxels' if args.slices is None else describe_slices(args.slices)}")
    with domain_notices("inpaint"):
        result = inpaint(scan, mask, scan_kw["metadata"]["spacing"], model=loaded, class_name=cls,
                         steps=settings.steps, jump_length=settings.jump_length, resamplings=settings.resamplings,
                         proposals=args.proposals, seed=args.seed, mode=args.mode, axis=args.axis,
                         indices=args.slices, device=args.device, batch_size=args.batch_size,
                         on_progress=printer(args.quiet), **preprocess_kwargs(args, loaded.card, scan_kw["metadata"]))
    for note in result.messages:
        say(f"notice: {note}")
    notes += result.messages
    with outputs.staging() as stage:
        meta = scan_kw["metadata"]
        for k in range(args.proposals):
            write_nifti(stage(targets[f"proposal{k}"]), result.proposals[k], meta, overwrite=args.overwrite)
        write_nifti(stage(targets["mean"]), result.mean, meta, overwrite=args.overwrite)
        write_nifti(stage(targets["variance"]), result.variance, meta, overwrite=args.overwrite)
        write_nifti(stage(targets["mask"]), result.mask, meta, labels=True, overwrite=args.overwrite)
        record = {"scan": str(args.scan), "mask": str(args.mask), "files": [p.name for p in targets.values()],
                  **result.provenance, "messages": notes}
        write_sidecar(stage(sidecar), record, overwrite=args.overwrite)
    prov = result.provenance
    where = "the whole volume" if prov.get("slices") is None else f"slices {prov['slices']}"
    say(f"used {prov['network_calls']} network calls on {where}; {prov.get('seconds', 0):.1f} s")
    for path in [*targets.values(), sidecar]:
        say(f"wrote {path}")
    return 0


run_file = file_runner("inpaint", "mask")
