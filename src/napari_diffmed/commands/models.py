"""``napari-diffmed models``: the shipped and user models, and one model's card."""

from __future__ import annotations

import argparse
import json
import sys
import warnings
from dataclasses import asdict
from pathlib import Path
from typing import Any


def add_parser(subparsers) -> None:
    parser = subparsers.add_parser(
        "models", help="list the available models, or show one model's card",
        description="List the shipped models and those in the folders of $NAPARI_DIFFMED_MODELS "
                    "(os.pathsep-separated), or print the card of one model given by name or path. "
                    "Cards that cannot be read are reported on stderr and skipped.",
    )
    parser.add_argument("name", nargs="?", default=None, help="model name, or path to NAME.safetensors/NAME.json")
    parser.add_argument("--task", default=None, choices=("image", "segmentation"), help="list only this task")
    parser.add_argument("--json", action="store_true", help="machine-readable output")
    parser.set_defaults(func=run)


def _row(entry) -> dict[str, Any]:
    card = entry.card
    return {
        "name": entry.name, "task": card.task, "dims": card.spatial_dims, "image_size": list(card.image_size),
        "classes": list(card.class_names), "source": entry.source, "path": str(entry.path),
    }


def _broken_cards() -> list[tuple[Path, str]]:
    """Cards in the model folders that :func:`list_models` skips, with the reason."""
    from ..models.card import ModelCard, ModelCardError
    from ..models.registry import model_dirs

    broken = []
    for folder, _ in model_dirs():
        for card_file in sorted(folder.glob("*.json")) if folder.is_dir() else ():
            if card_file.name.endswith(".resume.json"):
                continue
            if not card_file.with_suffix(".safetensors").exists():
                broken.append((card_file, "no weights file beside it"))
                continue
            try:
                ModelCard.read(card_file)
            except ModelCardError as err:
                broken.append((card_file, str(err)))
    return broken


def _table(rows: list[dict[str, Any]]) -> str:
    headers = ["name", "task", "dims", "image size", "classes", "source", "path"]
    cells = [[r["name"], r["task"], f"{r['dims']}D", "x".join(map(str, r["image_size"])),
              ",".join(r["classes"]) or "-", r["source"], r["path"]] for r in rows]
    widths = [max(len(str(c)) for c in column) for column in zip(headers, *cells)]
    lines = ["  ".join(str(c).ljust(w) for c, w in zip(row, widths)).rstrip() for row in [headers, *cells]]
    return "\n".join(lines)


def _card_text(card, path: Path, source: str) -> str:
    """The card as aligned ``key: value`` lines."""
    lines = [
        f"{card.name} ({card.task}, {card.spatial_dims}D, {source})",
        f"  path:          {path}",
        f"  image size:    {'x'.join(map(str, card.image_size))} at spacing {card.spacing} mm",
        f"  channels:      in {card.in_channels}, condition {card.condition_channels}, out {card.out_channels}",
        f"  classes:       {', '.join(card.class_names) or '- (unconditional)'}",
        f"  slice axis:    {card.slice_axis or '-'}",
        f"  scheduler:     {json.dumps(card.scheduler)}",
        f"  normalisation: {json.dumps(card.normalisation)}",
        f"  network:       {json.dumps(card.network)}",
        f"  sha256:        {card.weights_sha256}",
    ]
    if card.description:
        lines.insert(1, f"  {card.description}")
    for key in ("training", "metrics"):
        value = getattr(card, key)
        if value:
            lines.append(f"  {key + ':':<14} {json.dumps(value, indent=2, default=str).replace(chr(10), chr(10) + '  ')}")
    return "\n".join(lines)


def _show(name: str, as_json: bool) -> int:
    from ..models.card import ModelCard
    from ..models.checkpoint import card_path
    from ..models.registry import list_models, resolve

    weights = resolve(name)
    card = ModelCard.read(card_path(weights))
    known = {e.path.resolve(): e.source for e in list_models()}
    source = known.get(weights.resolve(), "path")
    if as_json:
        print(json.dumps({**asdict(card), "source": source, "path": str(weights)}, indent=2, default=str))
    else:
        print(_card_text(card, weights, source))
    return 0


def run(args: argparse.Namespace) -> int:
    from ..models.registry import ENV_VAR, SHIPPED_DIR, list_models

    if args.name:
        return _show(args.name, args.json)
    with warnings.catch_warnings():  # the skipped cards are reported below, with their reasons
        warnings.filterwarnings("ignore", message="skipped the model card")
        rows = [_row(entry) for entry in list_models(task=args.task)]
    for card_file, reason in _broken_cards():
        print(f"napari-diffmed models: skipped {card_file}: {reason}", file=sys.stderr)
    if args.json:
        print(json.dumps(rows, indent=2))
    elif rows:
        print(_table(rows))
    else:
        print(f"no models found (shipped: {SHIPPED_DIR}; user folders: ${ENV_VAR})")
    return 0
