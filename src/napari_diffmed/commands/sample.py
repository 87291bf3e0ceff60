"""``napari-diffmed sample``: synthetic scans as NIfTI files plus a JSON provenance sidecar."""

from __future__ import annotations

import argparse
from pathlib import Path

from ..outputs import OutputSet, file_prefix
from ..sampling import SCHEDULER_NAMES
from ..synthesis import DEFAULTS, MAX_SAMPLES
from ..batch import write_sidecar
from .common import add_common, on_server, printer


def add_parser(subparsers) -> None:
    parser = subparsers.add_parser(
        "sample", help="sample synthetic scans from an image model",
        description="Sample synthetic scans. 2D models write one stack volume (samples along the first axis); "
                    "3D models write one file per volume. Intensities are on [0, 1] (the model's "
                    "normalisation range). A JSON sidecar records model, settings and timing.",
    )
    add_common(parser, model_help="image model name or path to NAME.safetensors (default: the shipped 2D model)")
    parser.set_defaults(seed=DEFAULTS.seed)
    parser.add_argument("-n", "--n", type=int, default=DEFAULTS.n, help=f"number of samples, 1 to {MAX_SAMPLES}")
    parser.add_argument("--steps", type=int, default=DEFAULTS.steps, help="denoising steps (DDPM needs 1000)")
    parser.add_argument("--scheduler", default=DEFAULTS.scheduler, type=str.lower, choices=sorted(SCHEDULER_NAMES))
    parser.add_argument("--class", dest="class_name", default=DEFAULTS.class_name,
                        help="class to sample for conditional models (default: the model's first class)")
    parser.add_argument("--guidance", type=float, default=DEFAULTS.guidance,
                        help="classifier-free guidance scale: 0 unconditional, 1 conditional, >1 stronger")
    parser.add_argument("--sweep", type=_scales, default=None, metavar="W1,W2,...",
                        help="guidance sweep: the same seed at each of these scales (one file per scale)")
    parser.add_argument("--eta", type=float, default=DEFAULTS.eta, help="DDIM stochasticity, 0 to 1")
    parser.add_argument("--prefix", default="synthesis", type=file_prefix, help="output file name prefix")
    parser.set_defaults(func=run)


def _scales(text: str) -> tuple[float, ...]:
    try:
        return tuple(float(part) for part in text.split(",") if part.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated numbers, got {text!r}") from None


def _targets(out: Path, prefix: str, n: int, dims: int, tags: list[str]) -> list[list[Path]]:
    """Output paths: per tag (guidance scale or ''), one stack (2D) or one file per volume (3D)."""
    files = []
    for tag in tags:
        stem = f"{prefix}{tag}"
        files.append([out / f"{stem}.nii.gz"] if dims == 2 else [out / f"{stem}_{i:03d}.nii.gz" for i in range(n)])
    return files


def _write(paths: list[Path], result, overwrite: bool) -> None:
    from ..io import write_nifti

    if result.spatial_dims == 2:  # stack axis first; it has no physical meaning, so 1 mm
        write_nifti(paths[0], result.samples, scale=(1.0, *result.spacing), overwrite=overwrite)
    else:
        for path, volume in zip(paths, result.samples):
            write_nifti(path, volume, scale=result.spacing, overwrite=overwrite)


def run(args: argparse.Namespace) -> int:
    from ..models import ModelCard, default_model, load, resolve
    from ..models.checkpoint import card_path
    from ..synthesis import SynthesisSettings, check_settings, guidance_sweep, synthesize

    guidance_sweep, load, synthesize = on_server(args, guidance_sweep, load, synthesize)
    class_name = int(args.class_name) if args.class_name is not None and args.class_name.isdigit() else args.class_name
    if args.server is None:
        card = ModelCard.read(card_path(resolve(args.model or default_model("image", 2, "synthesis"))))  # no weights
    else:
        card = load("synthesis", args.model).card  # the server's card
    tags = [f"_w{w:g}" for w in args.sweep] if args.sweep else [""]
    targets = _targets(args.out, args.prefix, args.n, card.spatial_dims, tags)
    sidecar = args.out / f"{args.prefix}.json"
    outputs = OutputSet(args.out, sum(targets, []), sidecar, args.overwrite)
    settings = SynthesisSettings(n=args.n, steps=args.steps, scheduler=args.scheduler, seed=args.seed,
                                 class_name=class_name, guidance=args.guidance, device=args.device, eta=args.eta)
    for w in args.sweep or [args.guidance]:
        check_settings(card, settings.replace(guidance=w))
    loaded = load("synthesis", args.model, args.device)  # after the checks: loading takes a while
    if not args.quiet:
        what = f"guidance sweep {list(args.sweep)}" if args.sweep else f"guidance {args.guidance:g}"
        what = f"class {class_name if class_name is not None else card.class_names[0]}, {what}, " \
            if card.conditional else ""
        print(f"model {loaded.model_id} ({card.spatial_dims}D, {loaded.path})")
        print(f"sampling {args.n} with {args.scheduler} x {args.steps} steps, seed {args.seed}, {what}"
              f"device {args.device}")
    if args.sweep:
        results = guidance_sweep(loaded, scales=args.sweep, settings=settings, callback=printer(args.quiet)).results
    else:
        results = [synthesize(loaded, settings=settings, callback=printer(args.quiet))]
    with outputs.staging() as stage:
        for paths, result in zip(targets, results):
            _write([stage(p) for p in paths], result, args.overwrite)
        record = {"files": [[p.name for p in paths] for paths in targets], "runs": [r.provenance for r in results],
                  "messages": []}
        write_sidecar(stage(sidecar), record, overwrite=args.overwrite)
    if not args.quiet:
        used = results[0].provenance
        print(f"used {used['scheduler']}, class {used['class_name']}, device {used['device']}; "
              f"{sum(r.provenance['seconds'] for r in results):.1f} s")
        for path in [*sum(targets, []), sidecar]:
            print(f"wrote {path}")
    return 0
