"""The file runner: the command line and Dask both run batch.run_file and write the same files."""

from __future__ import annotations

import json

import numpy as np
import pytest

from napari_diffmed.batch import run_file
from napari_diffmed.cli import main
from napari_diffmed.io import write_nifti
from napari_diffmed.settings import AnomalySettings, EnsembleSettings, InpaintSettings

RUN_KEYS = {"seconds", "scan", "files", "mask", "created"}  # where and when, not what


@pytest.fixture
def scan(tmp_path, small_volume):
    p = small_volume
    path = write_nifti(tmp_path / "in" / "sub01.nii.gz", p.image, scale=p.spacing, translate=p.translate)
    mask = write_nifti(tmp_path / "in" / "sub01_mask.nii.gz", p.mask.astype(np.uint8), labels=True, scale=p.spacing,
                       translate=p.translate)
    return path, mask


def _files(folder):
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir()) if p.name.endswith(".nii.gz")}


def _record(folder, name):
    record = json.loads((folder / name).read_text())
    return {k: v for k, v in record.items() if k not in RUN_KEYS}


def test_cli_and_dask_write_identical_files(scan, tmp_path, tiny_seg_model):
    distributed = pytest.importorskip("distributed")
    from napari_diffmed.distributed import map_files

    path, _ = scan
    assert main(["segment", str(path), "--out", str(tmp_path / "cli"), "--model", str(tiny_seg_model),
                 "--members", "3", "--steps", "3", "--slices", "2:4", "--seed", "5", "--device", "cpu",
                 "--quiet"]) == 0
    settings = EnsembleSettings(members=3, steps=3, indices=(2, 3), seed=5, device="cpu", preprocess="auto")
    with distributed.LocalCluster(n_workers=1, threads_per_worker=1, processes=True,
                                  dashboard_address=None) as cluster:
        (result,) = map_files("segment", [path], tmp_path / "dask", address=cluster.scheduler_address,
                              settings=settings, model=str(tiny_seg_model))
        workers = set(cluster.scheduler.workers)  # one real worker process
    assert result.ok, result.traceback
    assert len(workers) == 1 and result.worker in workers
    cli, dask = _files(tmp_path / "cli"), _files(tmp_path / "dask")
    assert len(cli) == 6 and cli == dask  # byte for byte
    assert _record(tmp_path / "cli", "sub01_segment.json") == _record(tmp_path / "dask", "sub01_segment.json")
    assert sorted(p.name for p in result.outputs) == sorted([*cli, "sub01_segment.json"])


def test_settings_objects_and_command_options_run_the_same(scan, tmp_path, tiny_image_model):
    from napari_diffmed.commands.anomaly import run_file as command_run_file

    path, _ = scan
    settings = AnomalySettings(method="gaussian", level=200, steps=10, indices=(1, 2), seed=3, device="cpu",
                               preprocess="auto")
    written = run_file("anomaly", path, tmp_path / "object", settings, model=str(tiny_image_model))
    again = command_run_file(path, tmp_path / "options", model=str(tiny_image_model), method="gaussian", level=200,
                             steps=10, slices="1:3", seed=3, device="cpu")
    assert [p.name for p in written] == [p.name for p in again]
    assert _files(tmp_path / "object") == _files(tmp_path / "options")
    rerun = run_file("anomaly", path, tmp_path / "object", settings, model=str(tiny_image_model))
    assert rerun == written  # the finished set is returned, nothing runs again


def test_inpainting_needs_its_mask_and_writes_exactly_outside_it(scan, tmp_path, tiny_image_model):
    import nibabel as nib

    path, mask = scan
    with pytest.raises(ValueError, match="needs a mask"):
        run_file("inpaint", path, tmp_path / "o", model=str(tiny_image_model))
    settings = InpaintSettings(proposals=2, steps=4, jump_length=2, resamplings=2, device="cpu")
    written = run_file("inpainting", path, tmp_path / "o", settings, model=str(tiny_image_model), mask=mask)
    assert len(written) == 2 + 3 + 1
    mean = np.asarray(nib.load(str(tmp_path / "o" / "sub01_inpaint_mean.nii.gz")).dataobj)
    source, region = (np.asarray(nib.load(str(p)).dataobj) for p in (path, mask))
    np.testing.assert_array_equal(mean[region == 0], source[region == 0])


def test_unknown_tasks_and_settings_are_refused_by_name(scan, tmp_path):
    path, _ = scan
    with pytest.raises(ValueError, match="unknown task 'segmnt'"):
        run_file("segmnt", path, tmp_path)
    with pytest.raises(ValueError, match="members must be a whole number"):
        run_file("segment", path, tmp_path, members=0)
    assert not (tmp_path / "sub01_segment.json").exists()


def test_the_server_builds_the_settings_from_json_and_runs_the_domain_check(small_volume):
    from napari_diffmed.server.tasks import RequestRefused, prepare_call

    image = {"image": small_volume.image}
    function, call = prepare_call("segment_ensemble", {"indices": [2, 3]}, image, "cpu", 0.5,
                                  settings=EnsembleSettings(members=2, force=True, device="cuda").to_dict())
    assert function.func.__name__ == "iter_run" and function.args == ("segmentation",)
    assert call["members"] == 2 and call["force"] is True and call["indices"] == [2, 3] and call["device"] == "cpu"
    with pytest.raises(RequestRefused, match="members must be a whole number"):
        prepare_call("segment_ensemble", {}, image, "cpu", 0.5, settings={"members": 0})
    with pytest.raises(RequestRefused, match=r"unknown settings \['colour'\]"):
        prepare_call("anomaly_map", {}, image, "cpu", 0.5, settings={"colour": "red"})
