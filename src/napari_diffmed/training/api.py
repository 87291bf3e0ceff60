"""Train a model on a folder of NIfTI files: one GUI-free function behind the ``train`` command."""

from __future__ import annotations

import hashlib
import math
import re
import shlex
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

from ..io import atomic_write
from ..models.card import ModelCard
from .datasets import check_band
from .ddp import is_main
from .folders import LabelledBatches, held_out_subjects, load_folder, scan_folder
from .loop import TrainConfig, TrainState, _state_paths, train
from .recipes import SCHEDULER

NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")


@dataclass
class TrainResult:
    """Where the model went, its final card, and the loop's state (losses, held-out losses)."""

    weights: Path
    card: ModelCard
    state: TrainState


def data_fingerprint(folder: str | Path, files: Sequence[Path]) -> str:
    """sha256 over the sorted relative file names and sizes (cheap; changes when files are added or replaced)."""
    folder = Path(folder)
    digest = hashlib.sha256()
    for rel, size in sorted((_rel(folder, p), p.stat().st_size) for p in files):
        digest.update(f"{rel}\t{size}\n".encode())
    return digest.hexdigest()


def _rel(folder: Path, path: Path) -> str:
    try:
        return path.resolve().relative_to(folder.resolve()).as_posix()
    except ValueError:
        return path.name


def folder_card(
    name: str, task: str, image_size: Sequence[int], spacing: Sequence[float], channels: Sequence[int],
    classes: Sequence[str] = (), description: str = "", prediction_type: str = "epsilon",
) -> ModelCard:
    """A card for MONAI's ``DiffusionModelUNet`` with the shipped models' conventions (attention deepest, 2D)."""
    if not NAME_RE.match(name or ""):
        raise ValueError(f"model name {name!r} must be letters, digits, '_', '-' or '.', starting with a letter/digit")
    dims = len(image_size)
    channels = [int(c) for c in channels]
    if not channels or min(channels) < 1:
        raise ValueError(f"channels must be positive numbers, one per resolution level, got {channels}")
    if len(spacing) != dims or min(spacing) <= 0:
        raise ValueError(f"spacing {list(spacing)} must have {dims} positive entries (mm), like image_size")
    factor = 2 ** (len(channels) - 1)
    if any(int(s) < 1 or int(s) % factor for s in image_size):
        raise ValueError(f"image_size {list(image_size)} must be divisible by {factor} "
                         f"(the network halves it {len(channels) - 1} times for {len(channels)} channel levels)")
    groups = math.gcd(*channels)
    norm_groups = max(d for d in (16, 8, 4, 2, 1) if groups % d == 0)
    attention = [False] * len(channels)
    network = dict(spatial_dims=dims, in_channels=1 + (task == "segmentation"), out_channels=1, channels=channels,
                   attention_levels=attention, num_res_blocks=1, norm_num_groups=norm_groups)
    if dims == 2 and len(channels) >= 3:
        attention[-1] = True
        network["num_head_channels"] = 32 if channels[-1] % 32 == 0 else channels[-1]
    if classes:
        network["num_class_embeds"] = len(classes) + 1
    return ModelCard(
        name=name, task=task, spatial_dims=dims, image_size=[int(s) for s in image_size],
        spacing=[float(s) for s in spacing], network=network,
        scheduler=dict(SCHEDULER, **({} if prediction_type == "epsilon" else {"prediction_type": prediction_type})),
        condition_channels=1 if task == "segmentation" else 0, class_names=list(classes),
        null_class=len(classes) if classes else None, slice_axis="axial" if dims == 2 else None,
        description=description,
    )


def _command(folder, out, name, task, dims, image_size, spacing, classes, labels_csv, channels, held_out,
             config: TrainConfig, prediction_type: str, threshold_band: tuple[float, float]) -> str:
    parts = ["napari-diffmed", "train", "--data", str(folder), "--task", task, "--dims", str(dims),
             "--image-size", *map(str, image_size), "--spacing", *(f"{s:g}" for s in spacing)]
    if classes and labels_csv is None:
        parts += ["--classes", *classes]
    if labels_csv is not None:
        parts += ["--labels", str(labels_csv)]
    if task == "segmentation":
        parts += ["--threshold-band", *(f"{b:g}" for b in threshold_band)]
    parts += ["--name", name, "--channels", *map(str, channels), "--prediction", prediction_type,
              "--held-out", f"{held_out:g}",
              "--steps", str(config.steps), "--batch-size", str(config.batch_size), "--lr", f"{config.lr:g}",
              "--grad-accum", str(config.grad_accum), "--seed", str(config.seed), "--out", str(out)]
    return shlex.join(parts)


def train_on_folder(
    folder: str | Path, out: str | Path, name: str, task: str = "image", image_size: Sequence[int] = (64, 64),
    spacing: Sequence[float] = (3.0, 3.0), classes: Sequence[str] | None = None, labels_csv: str | Path | None = None,
    channels: Sequence[int] = (32, 64, 64), held_out: float = 0.2, config: TrainConfig | None = None,
    resume: bool = False, overwrite: bool = False, log: Callable[[str], None] = print,
    init: str | Path | None = None, prediction_type: str = "epsilon",
    threshold_band: tuple[float, float] = (0.0, 1.0),
) -> TrainResult:
    """Train a 2D (``len(image_size) == 2``) or 3D model on the NIfTI files in ``folder``.

    Writes ``out/NAME.safetensors`` + ``NAME.json`` at every checkpoint, and a resume
    state beside them (``NAME.resume.*``). ``resume=True`` continues from it; ``init``
    starts from another model's weights of the same network (fine-tuning). ``prediction_type`` is
    what the network learns to predict: ``epsilon``, ``sample`` (x0) or ``v_prediction``.
    ``threshold_band`` (segmentation): masks are the probability masks thresholded by a smooth field
    uniform on it (see :class:`~.datasets.Batches`); (0, 1) keeps the ensemble mean calibrated to them.
    """
    config = config or TrainConfig()
    folder, out = Path(folder), Path(out)
    threshold_band = check_band(threshold_band)
    if task != "segmentation" and threshold_band != (0.0, 1.0):
        raise ValueError("a threshold band applies to segmentation masks; this is an image model")
    dims = len(image_size)
    items, classes = scan_folder(folder, task, classes, labels_csv)
    card = folder_card(name, task, image_size, spacing, channels, classes,
                       description=f"{task} model trained on {len(items)} NIfTI files from {folder.name}/",
                       prediction_type=prediction_type)
    weights = out / f"{name}.safetensors"
    _check_outputs(weights, card, resume, overwrite, log)
    held = held_out_subjects(items, held_out, config.seed)
    log(f"{len(items)} images from {folder}; held out: {', '.join(sorted(held)) or 'none'}")
    data = load_folder(items, image_size, spacing, held, normalisation=card.normalisation, log=log)
    train_data = data.split(held_out=False)
    if len(train_data.images) == 0:
        raise ValueError("no training images left after holding out subjects; lower --held-out")
    held_data = data.split(held_out=True) if data.held_out.any() else None
    batches, val = _batches(train_data, held_data, task, bool(classes), config, threshold_band)
    files = [f for it in items for f in (it.image, it.mask) if f is not None]
    files += [Path(labels_csv)] if labels_csv is not None else []
    unit = "slices" if dims == 2 else "volumes"
    command = _command(folder, out, name, task, dims, image_size, spacing, classes, labels_csv, channels, held_out,
                       config, prediction_type, threshold_band)
    card.training = {
        "command": command + (f" --init {shlex.quote(str(init))}" if init is not None else ""),
        "data": f"{len(items)} NIfTI images" + (" with masks" if task == "segmentation" else "") + f" in {folder}"
                + (f", classes from {labels_csv}" if labels_csv else ", classes from file names" if classes else ""),
        "data_fingerprint": data_fingerprint(folder, files),
        "held_out": f"subjects {sorted(held)}" if held else "none",
        "train_items": int(len(train_data.images)),
        "held_out_items": int(0 if held_data is None else len(held_data.images)),
    }
    if task == "segmentation":
        card.training["threshold_band"] = list(threshold_band)
    log(f"training {name} ({task}, {dims}D {list(image_size)} at {list(spacing)} mm) on {card.training['train_items']} "
        f"{unit}, {card.training['held_out_items']} held out; {config.steps} steps of batch {config.batch_size}")
    state = train(card, batches, val, config, weights, resume=resume, log=log, init=init)
    if not is_main():  # under torchrun rank 0 alone writes the card
        return TrainResult(weights, card, state)
    card = _record_metrics(weights, state)
    log(f"wrote {weights} and {weights.with_suffix('.json').name} (step {state.step}, "
        f"loss {card.metrics['train_loss']:.4f}" + (f", held-out loss {card.metrics['held_out_loss']:.4f})"
                                                   if card.metrics.get("held_out_loss") is not None else ")"))
    return TrainResult(weights, card, state)


def _batches(train_data, held_data, task: str, conditional: bool, config: TrainConfig,
             threshold_band: tuple[float, float] = (0.0, 1.0)):
    from .datasets import Batches

    val_size = min(32, 4 * config.batch_size)
    if conditional:
        batches = LabelledBatches(train_data, config.batch_size, seed=config.seed)
        val = None if held_data is None else next(LabelledBatches(held_data, val_size, config.seed + 1, augment=False))
    else:
        batches = Batches(train_data, config.batch_size, task, seed=config.seed, threshold_band=threshold_band)
        val = None if held_data is None else next(Batches(held_data, val_size, task, seed=config.seed + 1,
                                                          augment=False, threshold_band=threshold_band))
    return batches, val


def _check_outputs(weights: Path, card: ModelCard, resume: bool, overwrite: bool, log) -> None:
    resume_file = _state_paths(weights)[0]
    if resume and resume_file.exists():
        old_card = weights.with_suffix(".json")
        if old_card.exists():
            old = ModelCard.read(old_card)
            for key in ("task", "image_size", "spacing", "network"):
                if getattr(old, key) != getattr(card, key):
                    raise ValueError(f"cannot resume {weights.name}: its {key} was {getattr(old, key)}, now "
                                     f"{getattr(card, key)}; use the same settings or another --name")
        return
    if resume:
        log(f"no resume state {resume_file.name}; starting from step 0")
    if weights.exists() and not (overwrite or resume):
        raise FileExistsError(f"{weights} exists; pass --resume to continue it or --overwrite to start again")


def _record_metrics(weights: Path, state: TrainState) -> ModelCard:
    """Copy the final losses into the card's ``metrics`` (weights, and so their sha256, unchanged)."""
    card_file = weights.with_suffix(".json")
    card = ModelCard.read(card_file)
    card.metrics = {**card.metrics, "train_loss": float(card.training.get("final_loss", float("nan"))),
                    "held_out_loss": state.val[-1]["loss"] if state.val else None,
                    "held_out_curve": state.val, "steps": state.step}
    atomic_write(card_file, lambda tmp: Path(tmp).write_text(card.to_json()))
    return card
