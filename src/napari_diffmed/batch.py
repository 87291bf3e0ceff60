"""One file-level runner: read a scan, run a task on it as its settings say (domain check and
preprocessing included), write its results into the scan's space as one output set, atomically.

The command line (``napari-diffmed segment|inpaint|anomaly``) and Dask (:mod:`napari_diffmed.distributed`)
both call :func:`run_file`; the same settings give the same files.

>>> run_file("segmentation", "sub01.nii.gz", "out/", EnsembleSettings(members=8, indices=range(40, 52)))  # doctest: +SKIP
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Callable

import numpy as np

from .progress import Progress
from .settings import TaskSettings, settings_class

# the command names the command line and Dask know, as task names
ALIASES = {"segment": "segmentation", "inpaint": "inpainting", "anomaly": "anomaly"}
SEGMENT_OUTPUTS = {"labels": "seg_labels", "mean": "seg_mean", "votes": "seg_votes", "variance": "seg_variance",
                   "entropy": "seg_entropy", "mutual_information": "seg_mutual_information"}


def task_name(task: str) -> str:
    """``task`` ("segmentation", "inpainting", "anomaly", or a command name) as its settings know it."""
    name = ALIASES.get(task, task)
    if name not in ALIASES.values():
        raise ValueError(f"unknown task {task!r}; choose one of {sorted(ALIASES.values())} (or {sorted(ALIASES)})")
    return name


def run_file(
    task: str, path: str | os.PathLike, out_dir: str | os.PathLike, settings: TaskSettings | dict | None = None, *,
    model: Any = None, mask: str | os.PathLike | None = None, reference: str | os.PathLike | None = None,
    threshold: float | None = None, prefix: str | None = None, series: str | None = None, overwrite: bool = False,
    skip_done: bool = True, server: str | None = None, callback: Callable[[Progress], Any] | None = None,
    log: Callable[[str], Any] | None = None, **overrides: Any,
) -> list[Path]:
    """Run ``task`` on the scan at ``path`` and write its output set into ``out_dir``; return the set's files.

    ``settings`` (the task's settings class, a dict of its fields, or None for its defaults) with
    ``overrides`` in place; ``model`` (a name, path or loaded model) takes the place of ``settings.model``.
    ``mask``: the region to fill (inpainting, required) or a brain mask (anomaly); ``reference``: a
    reference mask to score against (segmentation, anomaly); ``threshold``: the anomaly mask's cut (default:
    the card's); ``prefix``: the inpainting outputs' name prefix (default: the scan's name); ``series``: the
    DICOM series to read. When the whole set exists already and ``overwrite`` is off, nothing runs and the
    existing set is returned (a rerun skips finished files), or with ``skip_done`` off, ``FileExistsError``. ``server``: run the task on that napari-diffmed
    server instead (its device; the files are written here). ``log(line)`` gets a few lines of what happens.
    """
    from .outputs import OutputSetComplete

    name = task_name(task)
    s = settings_class(name).build(settings, **overrides)
    job = _Job(name, Path(path), Path(out_dir), s, model, server, callback, log or (lambda *_: None), overwrite)
    if server is not None and s.device != "auto":
        raise ValueError("--device chooses this computer's device; a server runs on its own (serve --device)")
    try:
        if name == "segmentation":
            from .batch_tasks import segment

            return segment(job, reference=reference, series=series)
        if name == "inpainting":
            from .batch_tasks import inpaint

            if mask is None:
                raise ValueError(f"inpainting {path} needs a mask: the region to fill")
            return inpaint(job, mask=Path(mask), prefix=prefix, series=series)
        from .batch_tasks import anomaly

        return anomaly(job, mask=None if mask is None else Path(mask), reference=reference, threshold=threshold,
                       series=series)
    except OutputSetComplete as done:  # a rerun: this file's set is finished already
        if not skip_done:
            raise
        return sorted(done.files)


class _Job:
    """What every task's file run needs: its settings, where to write, and the functions to call (this
    computer's, or a server's of the same names)."""

    def __init__(self, task, path, out, settings, model, server, callback, log, overwrite) -> None:
        self.task, self.path, self.out, self.settings = task, path, out, settings
        self.model = settings.model if model is None else model
        self.callback, self.log, self.overwrite = callback, log, overwrite
        self.client = None
        if server is not None:
            from .remote import Client

            self.client = Client(server)

    def load(self):
        """The model (after every check of the input: loading takes a while)."""
        if self.client is not None:
            return self.client.load(self.task, self.model)
        from .runner import load_model

        return load_model(self.task, self.model, self.settings.device)

    def run(self, function_name: str, *args: Any, metadata: dict | None = None, **kwargs: Any):
        """The task's plain function on this computer (with ``metadata`` for the domain check) or the server."""
        if self.client is not None:
            return getattr(self.client, function_name)(*args, settings=self.settings, callback=self.callback,
                                                       **kwargs)
        from . import anomaly, ensemble, inpainting

        module = {"segment_ensemble": ensemble, "inpaint": inpainting, "anomaly_map": anomaly}[function_name]
        return getattr(module, function_name)(*args, settings=self.settings, callback=self.callback,
                                              metadata=metadata, **kwargs)


def read_scan(path: Path, series: str | None = None):
    """(scan, the reader's layer keyword arguments) of a 2D or 3D scan."""
    from .io import read_scan as read

    scan, kwargs, _ = read(path, as_labels=False, series=series)
    if scan.ndim == 4:
        raise ValueError(f"{path}: a 4D series of {scan.shape[0]} volumes {scan.shape[1:]} (fMRI or diffusion?), not "
                         "one structural scan; save the volume you mean as its own file (e.g. nibabel.funcs."
                         "four_to_three) and check it is the modality the model was trained on")
    if scan.ndim not in (2, 3):
        raise ValueError(f"{path}: expected a 2D or 3D scan, got shape {scan.shape}")
    return scan, kwargs


def read_mask(path: Path, shape: tuple[int, ...], flag: str) -> np.ndarray:
    """A mask on the scan's grid (``flag`` names it in the error)."""
    from .io import read_scan as read

    mask = read(path, as_labels=True)[0] > 0
    if mask.shape != shape:
        raise ValueError(f"--{flag} {path} has shape {mask.shape}, the scan {shape}")
    return mask


def chosen_slices(settings, shape: tuple[int, ...]) -> list[int] | None:
    """The settings' slices, checked against the scan (one error naming those outside it)."""
    from .slices import check_slices

    indices = None if settings.indices is None else list(settings.indices)
    return check_slices(indices, shape[settings.axis] if len(shape) == 3 else 1, settings.axis)


def write_sidecar(path: Path, record: dict[str, Any], overwrite: bool = False) -> Path:
    """Write a JSON provenance file beside the results."""
    if path.exists() and not overwrite:
        raise FileExistsError(f"{path} exists; pass --overwrite to replace it")
    path.write_text(json.dumps(record, indent=2, default=str) + "\n")
    return path


def segment_file(path: str | os.PathLike, out_dir: str | os.PathLike, settings=None, **options: Any) -> list[Path]:
    """:func:`run_file` for the segmentation ensemble (a Dask task)."""
    return run_file("segmentation", path, out_dir, settings, **options)


def inpaint_file(path: str | os.PathLike, out_dir: str | os.PathLike, settings=None, **options: Any) -> list[Path]:
    """:func:`run_file` for inpainting (a Dask task; ``mask`` is the region to fill)."""
    return run_file("inpainting", path, out_dir, settings, **options)


def anomaly_file(path: str | os.PathLike, out_dir: str | os.PathLike, settings=None, **options: Any) -> list[Path]:
    """:func:`run_file` for anomaly maps (a Dask task)."""
    return run_file("anomaly", path, out_dir, settings, **options)
