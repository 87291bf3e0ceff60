"""Output sets written as a whole: a run's files appear together, or the old set stays as it was.

A command's files (NIfTI maps plus a JSON record) are written into a hidden staging folder
beside the targets (the same file system, so moving them in is a rename), then moved in with
the record last. While they are moved, a marker ``.RECORD.incomplete`` lists the set; it is
removed after the record lands. So:

- a failure while computing or writing (an error, a full disk, a kill) leaves the targets
  untouched, and the staging folder is removed (or, after a kill, by the next run);
- a set with its record and every file is complete: a rerun without ``--overwrite`` refuses it
  with :class:`OutputSetComplete` (a :class:`FileExistsError`), which Dask runs take as "done";
- a set with the marker is incomplete: a rerun replaces the files the marker lists without asking.
"""

from __future__ import annotations

import argparse
import errno
import json
import os
import shutil
import socket
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Callable, Iterable, Iterator

from .io import atomic_write

STAGING = ".napari-diffmed-staging"
NO_LINKS = {errno.EPERM, errno.EOPNOTSUPP, errno.ENOTSUP, errno.ENOSYS}  # os.link on e.g. FAT or some shares


class OutputSetComplete(FileExistsError):
    """Every file of the set and its record exist already; ``files`` lists them."""

    def __init__(self, message: str, files: list[Path]):
        super().__init__(message)
        self.files = files


def file_prefix(text: str) -> str:
    """An output file name prefix: no path separators (it must not leave ``--out``), not empty."""
    seps = {"/", "\\", os.sep, os.altsep} - {None}
    if not text or any(s in text for s in seps) or "\0" in text or text in (".", ".."):
        raise argparse.ArgumentTypeError(f"a prefix is part of a file name inside --out: no path separators, "
                                         f"got {text!r}")
    return text


class OutputSet:
    """The files of one run in ``out`` and their ``record`` (the JSON sidecar, written last).

    Creating it checks the targets (before any work is done): existing files are refused unless
    ``overwrite`` or they are a previous run's incomplete set.
    """

    def __init__(self, out: str | os.PathLike, files: Iterable[str | os.PathLike], record: str | os.PathLike,
                 overwrite: bool = False):
        self.out, self.record, self.overwrite = Path(out), Path(record), overwrite
        if self.out.exists() and not self.out.is_dir():
            raise NotADirectoryError(f"the output folder {self.out} is a file; give a folder (--out)")
        self.files = [Path(f) for f in files if Path(f) != self.record]
        for path in [*self.files, self.record]:
            if path.parent != self.out:
                raise ValueError(f"output {path} lies outside the output folder {self.out}")
        self.marker = self.out / f".{self.record.name}.incomplete"
        self.leftover = _listed(self.marker)  # names of a previous run's set that stopped while moving in
        existing = [p for p in [*self.files, self.record] if p.exists() and p.name not in self.leftover]
        if existing and not overwrite:
            more = f" (and {len(existing) - 1} more of this run's outputs)" if len(existing) > 1 else ""
            message = f"{existing[0]} exists{more}; pass --overwrite to replace, or choose another --out"
            if len(existing) == len(self.files) + 1:
                raise OutputSetComplete(message, [*self.files, self.record])
            raise FileExistsError(message)

    @contextmanager
    def staging(self) -> Iterator[Callable[[Path], Path]]:
        """Yield ``stage(target) -> path to write instead``; on success move the set in, else discard it."""
        self.out.mkdir(parents=True, exist_ok=True)
        _remove_stale(self.out, self.record.name)
        folder = Path(tempfile.mkdtemp(dir=self.out, prefix=f"{STAGING}-{self.record.name}-{_owner()}-"))
        names = {p.name for p in [*self.files, self.record]}

        def stage(target: Path) -> Path:
            if Path(target).name not in names:
                raise ValueError(f"{target} is not one of this run's outputs")
            return folder / Path(target).name

        try:
            yield stage
            missing = sorted(n for n in names if not (folder / n).exists())
            if missing:
                raise RuntimeError(f"the run did not write {missing}")
            self._commit(folder)
        finally:
            shutil.rmtree(folder, ignore_errors=True)

    def _commit(self, folder: Path) -> None:
        marker = json.dumps([p.name for p in [*self.files, self.record]]) + "\n"
        atomic_write(self.marker, lambda tmp: Path(tmp).write_text(marker))
        for target in [*self.files, self.record]:  # the record last: its presence means the set is whole
            staged = folder / target.name
            if self.overwrite or target.name in self.leftover:
                os.replace(staged, target)
            else:
                try:
                    os.link(staged, target)  # never replaces a file that appeared meanwhile
                except FileExistsError:
                    raise FileExistsError(f"{target} appeared while this run was writing; pass --overwrite "
                                          "to replace it") from None
                except OSError as err:
                    if err.errno not in NO_LINKS:
                        raise
                    os.replace(staged, target)  # a file system without hard links
        self.marker.unlink()


def _listed(marker: Path) -> set[str]:
    """The file names an incomplete set's marker lists (none if there is no readable marker)."""
    try:
        names = json.loads(marker.read_text())
    except (OSError, ValueError):
        return set()
    return {n for n in names if isinstance(n, str) and "/" not in n} if isinstance(names, list) else set()


def _owner() -> str:
    return f"{socket.gethostname()}.{os.getpid()}"


def _remove_stale(out: Path, record: str) -> None:
    """Remove staging folders of this set left by killed processes of this machine."""
    host = socket.gethostname()
    for folder in out.glob(f"{STAGING}-{record}-{host}.*"):
        pid = folder.name[len(f"{STAGING}-{record}-{host}."):].split("-")[0]
        if pid.isdigit() and not _alive(int(pid)):
            shutil.rmtree(folder, ignore_errors=True)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True

