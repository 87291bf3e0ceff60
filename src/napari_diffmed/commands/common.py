"""Arguments and output shared by the subcommands."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from ..device import DEVICE_CHOICES


def add_common(parser: argparse.ArgumentParser, model_help: str = "model name or path (default: shipped)") -> None:
    parser.add_argument("--out", required=True, type=Path, help="output folder (created; files are never overwritten)")
    parser.add_argument("--model", default=None, help=model_help)
    parser.add_argument("--device", default="auto", choices=DEVICE_CHOICES)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--overwrite", action="store_true", help="replace existing output files")
    parser.add_argument("--quiet", action="store_true", help="no progress output")


def write_sidecar(path: Path, record: dict[str, Any], overwrite: bool = False) -> Path:
    """Write a JSON provenance file beside the results."""
    if path.exists() and not overwrite:
        raise FileExistsError(f"{path} exists; pass --overwrite to replace it")
    path.write_text(json.dumps(record, indent=2, default=str) + "\n")
    return path


def printer(quiet: bool):
    """A progress callback printing ``done/total`` on one line."""
    def show(event) -> None:
        if not quiet:
            end = "\n" if event.done >= event.total else "\r"
            print(f"  {event.message or 'step'} {event.done}/{event.total}", end=end, flush=True)
    return show
