"""The ``napari-diffmed`` command: one subcommand per task, over the same functions as the widgets."""

from __future__ import annotations

import argparse
import importlib
import os
import sys
import warnings
from typing import Sequence

# Each module in napari_diffmed.commands defines ``add_parser(subparsers)`` and sets ``func`` on it.
COMMANDS = ("sample", "segment", "inpaint", "anomaly", "train", "models", "serve", "label")


class _Parser(argparse.ArgumentParser):
    """An argument parser whose errors are one line (the usage is one ``--help`` away)."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
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
    """Entry point; returns the exit status. Errors are one line on stderr, never a traceback: 2 for bad
    input (files, values, models, memory, the file system), 1 for anything else (set
    ``$NAPARI_DIFFMED_TRACEBACK=1`` to see its traceback), 130 when cancelled."""
    parser = build_parser()
    args = parser.parse_args(argv)
    where = f"napari-diffmed {args.command}"
    with warnings.catch_warnings():
        warnings.showwarning = lambda message, *_, **__: print(f"{where}: warning: {message}", file=sys.stderr)
        try:
            if args.command != "models":  # torch threads: $OMP_NUM_THREADS, else the cores not already busy
                from .device import configure_threads

                configure_threads()
            return int(args.func(args) or 0)
        except KeyboardInterrupt:
            print(f"{where}: cancelled", file=sys.stderr)
            return 130
        except (ValueError, KeyError, OSError, MemoryError, RecursionError) as err:  # OSError: ConnectionError too
            print(f"{where}: error: {_one_line(err)}", file=sys.stderr)
            return 2
        except Exception as err:
            if os.environ.get("NAPARI_DIFFMED_TRACEBACK"):
                raise
            print(f"{where}: internal error: {type(err).__name__}: {_one_line(err)} "
                  "(set NAPARI_DIFFMED_TRACEBACK=1 for the traceback)", file=sys.stderr)
            return 1


def _one_line(err: BaseException) -> str:
    text = " ".join(str(err).split()) or type(err).__name__
    if isinstance(err, KeyError):
        text = f"unknown key {text}"
    elif isinstance(err, MemoryError):
        text = f"not enough memory{': ' + text if str(err) else ''}; use a smaller input or fewer samples"
    return text


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
