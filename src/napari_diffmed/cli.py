"""The ``napari-diffmed`` command: one subcommand per task, over the same functions as the widgets."""

from __future__ import annotations

import argparse
import importlib
import sys
from typing import Sequence

# Each module in napari_diffmed.commands defines ``add_parser(subparsers)`` and sets ``func`` on it.
COMMANDS = ("sample", "segment", "inpaint", "anomaly", "train", "models", "serve", "label")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="napari-diffmed", description="Diffusion models for medical images: NIfTI in, NIfTI out."
    )
    sub = parser.add_subparsers(dest="command", required=True)
    for name in COMMANDS:
        try:
            module = importlib.import_module(f"napari_diffmed.commands.{name}")
        except ModuleNotFoundError as err:
            if err.name != f"napari_diffmed.commands.{name}":
                raise
            continue
        module.add_parser(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point; returns the exit status (non-zero with the reason on stderr on bad input)."""
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except (ValueError, FileNotFoundError, FileExistsError, KeyError, ConnectionError) as err:
        print(f"napari-diffmed {args.command}: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"napari-diffmed {args.command}: cancelled", file=sys.stderr)
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
