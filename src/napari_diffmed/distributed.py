"""Run a task over many NIfTI files on Dask distributed: one Dask task per file.

Each registered task is :func:`napari_diffmed.batch.run_file`, the code the command line runs: it
reads the scan, loads its model through the registry (cached once per worker process), runs the task
as its settings say and writes the output set into ``out_dir``. Only paths, the task's settings
object (:mod:`napari_diffmed.settings`) and plain options travel through the scheduler, never a
network. Each worker runs one torch thread per task. A file that fails is reported in its
:class:`FileResult`; the other files carry on.

Dask is an optional extra: ``pip install "napari-diffmed[distributed]"``.
"""

from __future__ import annotations

import importlib
import os
import time
import traceback
import uuid
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Mapping, Union

from .io import is_nifti

# Task name -> "module:function" implementing ``run_file(path, out_dir, settings=None, **options) -> list[Path]``.
TASKS = {
    "segment": "napari_diffmed.batch:segment_file",
    "inpaint": "napari_diffmed.batch:inpaint_file",
    "anomaly": "napari_diffmed.batch:anomaly_file",
}

PathLike = Union[str, os.PathLike]
FileItem = Union[PathLike, tuple[PathLike, Mapping[str, Any]]]


@dataclass(frozen=True)
class FileResult:
    """What happened to one input file: the files written, or why it failed."""

    source: Path
    outputs: tuple[Path, ...] = ()
    error: str | None = None
    traceback: str = ""
    seconds: float = 0.0
    worker: str = ""

    @property
    def ok(self) -> bool:
        return self.error is None


def _import_distributed():
    try:
        import distributed
    except ImportError:
        raise ImportError(
            "running on Dask needs the optional extra: pip install \"napari-diffmed[distributed]\""
        ) from None
    return distributed


def resolve_task(task: str) -> str:
    """``"module:function"`` for a registered task name (or such a string itself), checked importable."""
    target = TASKS.get(task, task)
    if ":" not in target:
        raise ValueError(f"unknown task {task!r}; choose one of {sorted(TASKS)} or give 'module:function'")
    _load(target)
    return target


def _load(target: str) -> Callable[..., Iterable[PathLike]]:
    module_name, _, attr = target.partition(":")
    try:
        func = getattr(importlib.import_module(module_name), attr)
    except (ImportError, AttributeError) as err:
        raise ValueError(f"task function {target!r} cannot be loaded: {err}") from None
    if not callable(func):
        raise ValueError(f"task function {target!r} is not callable")
    return func


def _check_settings(settings: Mapping[str, Any], where: str) -> None:
    for key, value in settings.items():
        if type(value).__module__.split(".")[0] == "torch" or type(value).__name__ == "LoadedModel":
            raise ValueError(
                f"{where} {key}={type(value).__name__} cannot be sent to Dask workers; pass a model name "
                "or path and plain values (workers load models themselves)"
            )


def _collect(items: PathLike | Iterable[FileItem]) -> list[tuple[Path, dict[str, Any]]]:
    """Inputs as (absolute path, per-file settings); a folder means its NIfTI files."""
    if isinstance(items, (str, os.PathLike)):
        folder = Path(items).expanduser()
        if not folder.is_dir():
            raise ValueError(f"{folder} is not a folder; give a folder or a list of NIfTI files")
        items = sorted(p for p in folder.iterdir() if is_nifti(p))
    jobs = []
    for item in items:
        path, extra = (item[0], dict(item[1])) if isinstance(item, tuple) else (item, {})
        path = Path(path).expanduser().absolute()
        _check_settings(extra, f"setting for {path.name}:")
        jobs.append((path, extra))
    if not jobs:
        raise ValueError("no input files: give NIfTI files (.nii or .nii.gz) or a folder holding some")
    bad = [str(p) for p, _ in jobs if not is_nifti(p)]
    if bad:
        raise ValueError(f"not NIfTI files (.nii or .nii.gz): {bad[:5]}")
    stems: dict[str, Path] = {}
    for path, _ in jobs:
        stem = path.name.split(".nii")[0]
        if stem in stems:
            raise ValueError(f"{stems[stem]} and {path} share the name {stem!r}: their results would collide")
        stems[stem] = path
    return jobs


def _arguments(task: str, options: dict[str, Any]) -> dict[str, Any]:
    """A registered task's keyword arguments for :func:`napari_diffmed.batch.run_file`: a ``settings`` object
    given as it is (other settings fields in ``options`` replace its own), else the command line's options by
    their Python names (``members=8``, ``slices="40:52"``) made into one, at the command's defaults."""
    if task not in TASKS:
        return options
    from .contract import TaskSettings

    given = options.pop("settings", None)
    if given is None:
        from .commands.common import command_options

        settings, files = command_options(task, options)
        return {"settings": settings, **files}
    if not isinstance(given, TaskSettings):
        raise ValueError(f"settings must be a task's settings object, got {type(given).__name__}")
    fields = set(given.fields())
    return {"settings": given.replace(**{k: v for k, v in options.items() if k in fields}),
            **{k: v for k, v in options.items() if k not in fields}}


def run_one(path: str, out_dir: str, target: str, settings: dict[str, Any]) -> FileResult:
    """Run on a worker: the task function on one file, errors caught into the result."""
    start = time.perf_counter()
    try:
        from distributed import get_worker

        worker = get_worker().address
    except (ImportError, ValueError):
        worker = ""
    try:
        _one_thread_per_task()
        Path(out_dir).mkdir(parents=True, exist_ok=True)
        outputs = tuple(Path(p) for p in _load(target)(Path(path), Path(out_dir), **settings))
        return FileResult(Path(path), outputs, seconds=time.perf_counter() - start, worker=worker)
    except Exception as err:  # reported per file, the other files carry on
        return FileResult(
            Path(path), error=f"{type(err).__name__}: {err}", traceback=traceback.format_exc(),
            seconds=time.perf_counter() - start, worker=worker,
        )


def _one_thread_per_task() -> None:
    """In a worker process, one torch thread: each of the worker's threads runs one task, and the
    worker processes share the cores (Dask sets OMP_NUM_THREADS=1 there for the same reason)."""
    import multiprocessing

    if multiprocessing.parent_process() is not None:  # not a worker thread inside the caller's process
        from .device import configure_threads

        configure_threads(1)


@contextmanager
def _client(distributed, address) -> Iterator[Any]:
    if isinstance(address, distributed.Client):
        yield address
        return
    if address is None:
        try:
            existing = distributed.default_client()
        except ValueError:  # no client yet: start a local one
            existing = None
        if existing is not None:
            yield existing
            return
        address = "local"
    if address == "local":
        with distributed.LocalCluster(threads_per_worker=1, processes=True, dashboard_address=None) as cluster:
            with distributed.Client(cluster) as client:
                yield client
        return
    if not isinstance(address, str) or "://" not in address:
        raise ValueError(f"address {address!r} is not None, 'local', a distributed.Client or 'tcp://host:port'")
    try:
        client = distributed.Client(address)
    except OSError as err:
        raise OSError(f"cannot reach the Dask scheduler at {address!r}: {err}") from None
    with client:
        yield client


def map_files(
    task: str,
    paths: PathLike | Iterable[FileItem],
    out_dir: PathLike,
    address=None,
    *,
    on_result: Callable[[FileResult, int, int], Any] | None = None,
    **settings: Any,
) -> list[FileResult]:
    """Run ``task`` on every file as one Dask task each; results in input order.

    For a registered task, ``settings`` holds ``settings=`` the task's settings object (with any further
    fields in place) and the other options of :func:`napari_diffmed.batch.run_file` (``model``,
    ``overwrite``, ``mask``, ...), or else the command line's options by their Python names.

    ``task`` is a name in :data:`TASKS` or ``"module:function"``. ``paths`` is a
    folder or a list of files, where an item may be ``(path, {settings})`` to
    override ``settings`` for that file (e.g. its own mask). ``address``: None
    uses the current Dask client or else starts a local cluster, ``"local"``
    starts one (a process per core, one thread each), a ``"tcp://..."`` address
    or a ``distributed.Client`` uses that cluster, whose workers must see the
    input files and ``out_dir`` under the same paths. ``on_result(result, done,
    total)`` is called as each file finishes.
    """
    distributed = _import_distributed()
    target = resolve_task(task)
    _check_settings(settings, "setting")
    jobs = [(path, _arguments(task, {**settings, **extra})) for path, extra in _collect(paths)]
    out = str(Path(out_dir).expanduser().absolute())
    token = uuid.uuid4().hex[:8]
    with _client(distributed, address) as client:
        futures = [
            client.submit(
                run_one, str(path), out, target, arguments,
                key=f"napari-diffmed-{task.split(':')[-1]}-{path.name}-{i}-{token}",
            )
            for i, (path, arguments) in enumerate(jobs)
        ]
        order = {future.key: i for i, future in enumerate(futures)}
        by_index: dict[int, FileResult] = {}
        try:
            for done, future in enumerate(distributed.as_completed(futures), 1):
                i = order[future.key]
                try:
                    result = future.result()
                except Exception as err:  # the task could not run at all (e.g. its worker died)
                    result = FileResult(jobs[i][0], error=f"{type(err).__name__}: {err}")
                by_index[i] = result
                if on_result is not None:
                    on_result(result, done, len(jobs))
        finally:
            pending = [f for f in futures if not f.done()]
            if pending:
                client.cancel(pending)
    return [by_index[i] for i in range(len(jobs))]
