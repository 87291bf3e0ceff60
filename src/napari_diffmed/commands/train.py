"""``napari-diffmed train``: train a shipped recipe, or a new model on a folder of NIfTI files."""

from __future__ import annotations

import argparse
from pathlib import Path

from ..device import DEVICE_CHOICES
from ..models.card import PREDICTION_TYPES

# Options that only make sense with --data; with --recipe the recipe fixes them (so its card's command reproduces it).
FOLDER_ONLY = ("task", "dims", "image_size", "spacing", "classes", "labels", "name", "channels", "prediction",
               "held_out", "threshold_band",
               "batch_size", "lr", "grad_accum", "checkpoint_every", "seed")
DEFAULT_SIZE = {2: ([64, 64], [3.0, 3.0]), 3: ([32, 40, 32], [5.0, 5.0, 5.0])}


def add_parser(subparsers) -> None:
    from ..training.recipes import RECIPES

    p = subparsers.add_parser(
        "train", help="train a diffusion model (a shipped recipe, or your own NIfTI folder)",
        description="Train a model and write NAME.safetensors + NAME.json (its card: training command, data "
                    "fingerprint, steps, losses) into --out, with a resume state beside them. Either --recipe "
                    "(re)makes one of the shipped models from the bundled MNI152 templates, or --data trains a "
                    "new one on a folder of NIfTI volumes (masks as NAME_mask.nii.gz or masks/NAME.nii.gz for "
                    "--task segmentation; classes from --labels CSV or from the file names). See docs/training.md.",
    )
    source = p.add_mutually_exclusive_group(required=True)
    source.add_argument("--recipe", choices=sorted(RECIPES), help="a shipped model's recipe")
    source.add_argument("--data", type=Path, help="folder of NIfTI training images")
    p.add_argument("--out", required=True, type=Path, help="output folder for NAME.safetensors and NAME.json")
    g = p.add_argument_group("model (with --data)")
    g.add_argument("--name", default=None, help="model name (file names and card)")
    g.add_argument("--task", choices=("image", "segmentation"), default=None, help="default: image")
    g.add_argument("--dims", type=int, choices=(2, 3), default=None, help="2: axial slices (default), 3: volumes")
    g.add_argument("--image-size", type=int, nargs="+", default=None, metavar="N",
                   help="model grid in pixels, z y x order (default 64 64 in 2D, 32 40 32 in 3D)")
    g.add_argument("--spacing", type=float, nargs="+", default=None, metavar="MM",
                   help="model pixel size in mm, z y x order (default 3 3 in 2D, 5 5 5 in 3D)")
    g.add_argument("--classes", nargs="+", default=None, help="class names for a class-conditional image model")
    g.add_argument("--labels", type=Path, default=None, help="CSV with columns file,class")
    g.add_argument("--channels", type=int, nargs="+", default=None, metavar="C",
                   help="UNet channels per level (default 32 64 64)")
    g.add_argument("--prediction", choices=PREDICTION_TYPES, default=None,
                   help="what the network predicts: the noise (epsilon, default), the clean image (sample) or v")
    g.add_argument("--threshold-band", type=float, nargs=2, default=None, metavar=("LOW", "HIGH"),
                   help="segmentation: each draw thresholds the probability masks with a smooth field uniform on "
                        "[LOW, HIGH]; 0 1 (default) keeps the ensemble mean calibrated to the masks, 0.3 0.7 (the "
                        "shipped model's) makes a majority of a few members steadier")
    g.add_argument("--held-out", type=float, default=None, help="fraction of subjects held out (default 0.2)")
    t = p.add_argument_group("training")
    t.add_argument("--steps", type=int, default=None, help="optimiser steps (default: recipe's, or 1000)")
    t.add_argument("--batch-size", type=int, default=None, help="default 16")
    t.add_argument("--lr", type=float, default=None, help="peak learning rate (default 2e-4)")
    t.add_argument("--grad-accum", type=int, default=None, help="batches per optimiser step (default 1)")
    t.add_argument("--checkpoint-every", type=int, default=None, help="steps between checkpoints (default 250)")
    t.add_argument("--seed", type=int, default=None, help="default 0")
    t.add_argument("--init", type=Path, default=None, metavar="WEIGHTS",
                   help="start from this model's weights (NAME.safetensors with its card; same network), "
                        "e.g. to fine-tune a shipped model on your data")
    t.add_argument("--resume", action="store_true", help="continue from NAME.resume.safetensors if present")
    t.add_argument("--overwrite", action="store_true", help="start again even if NAME.safetensors exists")
    t.add_argument("--device", default="auto", choices=DEVICE_CHOICES)
    t.add_argument("--quiet", action="store_true", help="no progress output")
    p.set_defaults(func=run)


def _log(quiet: bool):
    from ..training.ddp import is_main

    quiet = quiet or not is_main()  # under torchrun rank 0 alone reports
    return (lambda message: None) if quiet else (lambda message: print(message, flush=True))


def _positive(args: argparse.Namespace) -> None:
    for key in ("steps", "batch_size", "grad_accum", "checkpoint_every"):
        value = getattr(args, key)
        if value is not None and value < 1:
            raise ValueError(f"--{key.replace('_', '-')} must be at least 1, got {value}")
    if args.lr is not None and not args.lr > 0:
        raise ValueError(f"--lr must be positive, got {args.lr}")


def run_recipe(args: argparse.Namespace) -> int:
    from ..training.recipes import train_default

    given = [f"--{k.replace('_', '-')}" for k in FOLDER_ONLY if getattr(args, k) is not None]
    if given:
        raise ValueError(f"{', '.join(given)} cannot be combined with --recipe (the recipe fixes them so that its "
                         "card's command reproduces the model); use --data to train your own")
    weights = args.out / f"{args.recipe}.safetensors"
    if weights.exists() and not (args.resume or args.overwrite):
        raise FileExistsError(f"{weights} exists; pass --resume to continue it or --overwrite to start again")
    log = _log(args.quiet)
    state = train_default(args.recipe, args.out, steps=args.steps, resume=args.resume, device=args.device, log=log,
                          init=args.init)
    log(f"wrote {weights} and {weights.with_suffix('.json').name} (step {state.step})")
    return 0


def run_folder(args: argparse.Namespace) -> int:
    from ..training.api import train_on_folder
    from ..training.loop import TrainConfig

    if args.name is None:
        raise ValueError("--data needs --name (the model's name and file names)")
    dims = args.dims or 2
    size, spacing = DEFAULT_SIZE[dims]
    size, spacing = args.image_size or size, args.spacing or spacing
    for flag, values in (("--image-size", size), ("--spacing", spacing)):
        if len(values) != dims:
            raise ValueError(f"{flag} needs {dims} numbers for --dims {dims}, got {values}")
    defaults = TrainConfig()
    config = TrainConfig(
        steps=args.steps or defaults.steps, batch_size=args.batch_size or defaults.batch_size,
        lr=args.lr or defaults.lr, grad_accum=args.grad_accum or defaults.grad_accum,
        checkpoint_every=args.checkpoint_every or defaults.checkpoint_every,
        val_every=args.checkpoint_every or defaults.val_every,
        seed=defaults.seed if args.seed is None else args.seed, device=args.device,
    )
    config.warmup = min(config.warmup, max(1, config.steps // 10))
    train_on_folder(
        args.data, args.out, args.name, task=args.task or "image", image_size=size, spacing=spacing,
        classes=args.classes, labels_csv=args.labels, channels=args.channels or (32, 64, 64),
        held_out=0.2 if args.held_out is None else args.held_out, config=config, resume=args.resume,
        overwrite=args.overwrite, log=_log(args.quiet), init=args.init, prediction_type=args.prediction or "epsilon",
        threshold_band=tuple(args.threshold_band or (0.0, 1.0)),
    )
    return 0


def run(args: argparse.Namespace) -> int:
    _positive(args)
    from ..device import select_device

    select_device(args.device)  # an unavailable device is an error before any data is loaded
    return run_recipe(args) if args.recipe else run_folder(args)
