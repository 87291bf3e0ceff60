"""Arguments and output shared by the subcommands."""

from __future__ import annotations

import argparse
import json
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


def preprocess_kwargs(args: argparse.Namespace, card, metadata: dict | None) -> dict[str, Any]:
    """``preprocess``, ``force`` and ``metadata`` for a task function from :func:`add_preprocess`'s flags
    (none with ``--server``: the server runs the task as it is)."""
    from ..preprocess import PreprocessSettings, in_template_space

    if getattr(args, "server", None) is not None:
        return {}

    pre = None
    if args.preprocess == "auto" and in_template_space(card):
        pre = PreprocessSettings(n4=args.n4, register=args.register, skull_strip=args.skull_strip)
    return {"preprocess": pre, "force": args.force, "metadata": metadata}


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


def file_runner(command: str, *positional: str) -> Callable[..., list[Path]]:
    """``run_file(path, out_dir, **settings) -> list[Path]``: subcommand ``command`` on one scan.

    This is the Dask entry point (:mod:`napari_diffmed.distributed`): ``settings`` are the
    command's options by their Python names (``steps=20``, ``class_name="healthy"``,
    ``overwrite=True``), checked by the command's own parser; ``positional`` names the
    further positional arguments to take from ``settings`` (inpainting's ``mask``). Returns
    the files the run wrote, or, when the file's whole output set exists already (and
    ``overwrite`` is off), that set: a rerun skips finished files.
    """

    def run_file(path: str | os.PathLike, out_dir: str | os.PathLike, **settings: Any) -> list[Path]:
        from ..cli import build_parser
        from ..outputs import OutputSetComplete

        parser = build_parser()
        sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction)).choices[command]
        missing = [name for name in positional if name not in settings]
        if missing:
            raise ValueError(f"{command} needs {missing} for {path}")
        argv = [command, str(path), *(str(settings.pop(name)) for name in positional), "--out", str(out_dir)]
        argv += _options(sub, command, {"quiet": True, **settings})
        try:
            args = parser.parse_args(argv)
        except SystemExit:
            raise ValueError(f"invalid {command} settings {settings} (see napari-diffmed {command} --help)") from None
        out = Path(out_dir)
        before = _stamps(out)
        try:
            args.func(args)
        except OutputSetComplete as done:  # a rerun: this file's set is finished already
            return sorted(done.files)
        return sorted(p for p, stamp in _stamps(out).items() if before.get(p) != stamp)

    run_file.__name__ = run_file.__qualname__ = "run_file"
    return run_file


def _options(parser: argparse.ArgumentParser, command: str, settings: dict[str, Any]) -> list[str]:
    """Settings as command-line options of ``parser``."""
    by_dest = {a.dest: a for a in parser._actions if a.option_strings}
    unknown = sorted(set(settings) - set(by_dest))
    if unknown:
        raise ValueError(f"unknown {command} settings {unknown}; known: {sorted(set(by_dest) - {'help'})}")
    argv: list[str] = []
    for key, value in settings.items():
        action = by_dest[key]
        flag = action.option_strings[-1]
        if isinstance(action, argparse._StoreTrueAction):
            argv += [flag] if value else []
        elif isinstance(action, argparse.BooleanOptionalAction):  # --n4 / --no-n4
            argv += [action.option_strings[0] if value else action.option_strings[1]]
        elif value is not None:
            argv += [flag, *(str(v) for v in (value if isinstance(value, (list, tuple)) else [value]))]
    return argv


def _stamps(folder: Path) -> dict[Path, tuple[int, int]]:
    if not folder.is_dir():
        return {}
    return {p: (p.stat().st_mtime_ns, p.stat().st_size) for p in folder.iterdir() if p.is_file()}
