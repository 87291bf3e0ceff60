"""Arguments and output shared by the subcommands."""

from __future__ import annotations

import argparse
import os
import sys
import warnings
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable

from ..device import DEVICE_CHOICES


def add_common(parser: argparse.ArgumentParser, model_help: str = "model name or path (default: shipped)") -> None:
    parser.add_argument("--out", required=True, type=Path, help="output folder (created; files are never overwritten)")
    parser.add_argument("--model", default=None, help=model_help)
    parser.add_argument("--device", default="auto", choices=DEVICE_CHOICES)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--overwrite", action="store_true", help="replace existing output files")
    parser.add_argument("--quiet", action="store_true", help="no progress output")
    parser.add_argument("--server", default=None, metavar="URL",
                        help="run on a napari-diffmed server (token: $NAPARI_DIFFMED_TOKEN or the user's server list)")


def on_server(args: argparse.Namespace, *functions: Callable[..., Any]) -> tuple[Callable[..., Any], ...]:
    """``functions`` themselves, or with ``--server`` the remote client's functions of the same names."""
    if args.server is None:
        return functions
    from ..remote import Client

    if args.device != "auto":
        raise ValueError("--device chooses this computer's device; a server runs on its own (serve --device)")
    client = Client(args.server)
    return tuple(getattr(client, f.__name__) for f in functions)


def add_preprocess(parser: argparse.ArgumentParser) -> None:
    """Flags of the step that brings a scan to the model's template space and back, and of the domain check."""
    from ..preprocess.pipeline import REGISTER, SKULL

    group = parser.add_argument_group("preprocessing (to the model's template space and back; docs/generalisation.md)")
    group.add_argument("--preprocess", choices=("auto", "none"), default="auto",
                       help="auto: where the model card names a template (the shipped models), bias-correct, "
                            "register and brain-extract the scan first and map results back (default auto)")
    group.add_argument("--register", choices=REGISTER, default="affine", help="registration (default affine)")
    group.add_argument("--n4", action=argparse.BooleanOptionalAction, default=True,
                       help="N4 bias-field correction (default on)")
    group.add_argument("--skull-strip", choices=SKULL, default="auto",
                       help="brain extraction by the template's brain mask: auto (where a skull is found), yes, no")
    group.add_argument("--force", action="store_true",
                       help="run even where the scan is outside the model's training domain (e.g. a T2 or b0 image)")


def preprocess_from(args: argparse.Namespace) -> dict[str, Any]:
    """``preprocess`` and ``force`` settings from :func:`add_preprocess`'s flags: "auto" (the defaults, where the
    model's card names a template), the stages chosen, or None."""
    from ..preprocess import PreprocessSettings

    if args.preprocess == "none":
        return {"preprocess": None, "force": args.force}
    chosen = PreprocessSettings(n4=args.n4, register=args.register, skull_strip=args.skull_strip)
    return {"preprocess": "auto" if chosen == PreprocessSettings() else chosen, "force": args.force}


def indices_from(slices: Any) -> list[int] | None:
    """``--slices`` (START:STOP or I,J,K, already parsed or not) as slice indices; None for every slice."""
    from ..slices import parse_slices

    return parse_slices(slices) if isinstance(slices, str) or slices is None else [int(i) for i in slices]


@contextmanager
def domain_notices(command: str):
    """Each :class:`~napari_diffmed.domain.DomainWarning` raised inside as one line on stderr."""
    from ..domain import DomainWarning

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", DomainWarning)
        yield
    for w in caught:
        if issubclass(w.category, DomainWarning):
            print(f"napari-diffmed {command}: warning: {w.message}", file=sys.stderr)
        else:
            warnings.showwarning(w.message, w.category, w.filename, w.lineno)


def printer(quiet: bool):
    """A progress callback printing ``done/total`` on one line."""
    def show(event) -> None:
        if not quiet:
            end = "\n" if event.done >= event.total else "\r"
            print(f"  {event.message or 'step'} {event.done}/{event.total}", end=end, flush=True)
    return show


def file_runner(command: str) -> Callable[..., list[Path]]:
    """``run_file(path, out_dir, **options) -> list[Path]``: subcommand ``command`` on one scan, with its
    options by their Python names (``steps=20``, ``slices="40:52"``, ``overwrite=True``; inpainting's
    ``mask``), through :func:`napari_diffmed.batch.run_file`. Returns the files of the scan's output set
    (when the whole set exists already and ``overwrite`` is off, that set: a rerun skips finished files)."""

    def run_file(path: str | os.PathLike, out_dir: str | os.PathLike, **options: Any) -> list[Path]:
        from ..batch import run_file as run

        settings, files = command_options(command, options)
        return run(command, path, out_dir, settings, **files)

    run_file.__name__ = run_file.__qualname__ = "run_file"
    return run_file


def command_options(command: str, options: dict[str, Any]) -> tuple[Any, dict[str, Any]]:
    """(the task's settings, the other options of :func:`napari_diffmed.batch.run_file`) from subcommand
    ``command``'s options by their Python names, the rest at the command's own defaults."""
    import importlib

    from ..cli import build_parser

    module = importlib.import_module(f"napari_diffmed.commands.{command}")
    needs = [name for name in getattr(module, "POSITIONAL", ()) if name not in options]
    if needs:
        raise ValueError(f"{command} needs {needs}")
    placeholders = ["-"] * (1 + len(getattr(module, "POSITIONAL", ())))
    defaults = vars(build_parser().parse_args([command, *placeholders, "--out", "-"]))  # the command's defaults
    known = set(defaults) - {"func", "command", "scan", "out", "quiet"}
    unknown = sorted(set(options) - known - set(getattr(module, "POSITIONAL", ())) - {"quiet"})
    if unknown:
        raise ValueError(f"unknown {command} settings {unknown}; known: {sorted(known)}")
    args = argparse.Namespace(**{**defaults, **options, "quiet": True})
    try:
        settings = module.settings_from(args)
    except ValueError as err:
        raise ValueError(f"invalid {command} settings: {err}") from None
    return settings, module.file_options(args)
