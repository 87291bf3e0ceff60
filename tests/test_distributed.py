"""Dask distributed runner: one task per file on a real (in-process) LocalCluster."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

from napari_diffmed.distributed import TASKS, map_files, resolve_task
from napari_diffmed.io import read_nifti, write_nifti

distributed = pytest.importorskip("distributed")


def scale_file(path: Path, out_dir: Path, factor: float = 2.0) -> list[Path]:
    """A task following the ``run_file`` contract: read a scan, write ``factor`` times it."""
    data, kwargs, _ = read_nifti(path)
    out = out_dir / f"{kwargs['name']}_scaled.nii.gz"
    return [write_nifti(out, data * factor, kwargs["metadata"])]


TARGET = f"{__name__}:scale_file"


@pytest.fixture(scope="module")
def cluster():
    with distributed.LocalCluster(
        processes=False, n_workers=1, threads_per_worker=1, dashboard_address=None
    ) as cluster:
        yield cluster


@pytest.fixture
def scans(tmp_path):
    """Three readable scans and one corrupt file, all named .nii.gz."""
    rng = np.random.default_rng(0)
    folder = tmp_path / "in"
    paths = [
        write_nifti(folder / f"scan{i}.nii.gz", rng.random((4, 5, 6), dtype=np.float32), scale=(3.0, 2.0, 2.0))
        for i in range(3)
    ]
    broken = folder / "broken.nii.gz"
    broken.write_bytes(b"this is not a NIfTI file")
    return paths[:2] + [broken] + paths[2:]


def test_one_task_per_file_results_in_order_and_failures_isolated(cluster, scans, tmp_path):
    before = [p.read_bytes() for p in scans]
    seen = []
    results = map_files(
        TARGET, scans, tmp_path / "out", address=cluster.scheduler_address, factor=3.0,
        on_result=lambda r, done, total: seen.append((done, total)),
    )
    assert [r.source for r in results] == [p.absolute() for p in scans]
    assert sorted(seen) == [(i, 4) for i in range(1, 5)]
    workers = set(cluster.scheduler.workers)
    for path, result in zip(scans, results):
        assert result.worker in workers  # ran on the cluster, not in the caller
        if path.name == "broken.nii.gz":
            assert not result.ok and "cannot read" in result.error and "broken.nii.gz" in result.error
            assert result.outputs == ()
            continue
        assert result.ok, result.error
        (out,) = result.outputs
        assert out.parent == (tmp_path / "out").absolute() and out.exists()
        np.testing.assert_allclose(read_nifti(out)[0], 3.0 * read_nifti(path)[0], rtol=1e-6)
    assert [p.read_bytes() for p in scans] == before  # inputs untouched


def test_per_file_settings_and_current_client(cluster, scans, tmp_path):
    good = [p for p in scans if p.name != "broken.nii.gz"]
    with distributed.Client(cluster):  # address=None uses the current client
        results = map_files(TARGET, [good[0], (good[1], {"factor": 5.0})], tmp_path / "out")
    assert all(r.ok for r in results)
    assert {r.worker for r in results} <= set(cluster.scheduler.workers)
    for path, result, factor in zip(good, results, (2.0, 5.0)):
        np.testing.assert_allclose(read_nifti(result.outputs[0])[0], factor * read_nifti(path)[0], rtol=1e-6)


def test_folder_input_and_existing_outputs_reported(cluster, scans, tmp_path):
    out = tmp_path / "out"
    first = map_files(TARGET, scans[0].parent, out, address=cluster.scheduler_address)
    assert sorted(r.source.name for r in first) == sorted(p.name for p in scans)
    again = map_files(TARGET, [scans[0]], out, address=cluster.scheduler_address)
    assert not again[0].ok and "FileExistsError" in again[0].error  # never overwritten silently


def test_task_functions_never_get_torch_objects(tmp_path, scans):
    torch = pytest.importorskip("torch")
    with pytest.raises(ValueError, match="model=Linear.*model name or path"):
        map_files(TARGET, scans, tmp_path, address="tcp://127.0.0.1:1", model=torch.nn.Linear(1, 1))
    with pytest.raises(ValueError, match="scan0.nii.gz.*net=Linear"):
        map_files(TARGET, [(scans[0], {"net": torch.nn.Linear(1, 1)})], tmp_path, address="tcp://127.0.0.1:1")


def test_bad_inputs_are_named(tmp_path, scans):
    with pytest.raises(ValueError, match="unknown task 'segmnt'.*anomaly.*inpaint.*segment"):
        map_files("segmnt", scans, tmp_path)
    with pytest.raises(ValueError, match="no_such_function"):
        map_files(f"{__name__}:no_such_function", scans, tmp_path)
    with pytest.raises(ValueError, match="not NIfTI.*notes.txt"):
        map_files(TARGET, [tmp_path / "notes.txt"], tmp_path)
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="no input files"):
        map_files(TARGET, tmp_path / "empty", tmp_path)
    other = write_nifti(tmp_path / "elsewhere" / "scan0.nii", np.ones((3, 3, 3)))
    with pytest.raises(ValueError, match="share the name 'scan0'"):
        map_files(TARGET, [scans[0], other], tmp_path)
    with pytest.raises(ValueError, match="address 'localhost:8786'.*tcp://"):
        map_files(TARGET, scans, tmp_path, address="localhost:8786")


def test_missing_dask_gives_install_hint(monkeypatch, scans, tmp_path):
    monkeypatch.setitem(sys.modules, "distributed", None)
    with pytest.raises(ImportError, match=r"napari-diffmed\[distributed\]"):
        map_files(TARGET, scans, tmp_path)


@pytest.mark.parametrize("name", sorted(TASKS))
def test_registered_tasks_follow_the_run_file_contract(name):
    """Every registered task module exposes ``run_file(path, out_dir, **settings)``."""
    import inspect

    module, _, func = resolve_task(name).partition(":")
    inspect.signature(getattr(sys.modules[module], func)).bind(Path("scan.nii.gz"), Path("out"))
