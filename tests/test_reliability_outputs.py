"""Output sets and the command line's errors (issue 16, item 7, the prefix of item 9, one-line CLI errors)."""

from __future__ import annotations

import errno
import json
import os
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

import napari_diffmed.io as nio
from napari_diffmed.cli import main
from napari_diffmed.io import write_nifti

SEGMENT = ("--members", "2", "--steps", "2", "--device", "cpu", "--quiet")


@pytest.fixture
def scan(tmp_path, small_volume):
    return write_nifti(tmp_path / "scan.nii.gz", small_volume.image, scale=small_volume.spacing)


def _segment(scan, out, model, *extra) -> int:
    return main(["segment", str(scan), "--out", str(out), "--model", str(model), *SEGMENT, *extra])


def _contents(out: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(out.iterdir())}


def _disk_full_after(monkeypatch, writes: int) -> None:
    """``write_nifti`` fails with ENOSPC from its ``writes + 1``-th call on."""
    real, calls = nio.write_nifti, []

    def failing(path, *args, **kwargs):
        calls.append(path)
        if len(calls) > writes:
            raise OSError(errno.ENOSPC, "No space left on device", str(path))
        return real(path, *args, **kwargs)

    monkeypatch.setattr(nio, "write_nifti", failing)


def test_an_overwrite_failing_half_way_leaves_the_old_set_whole(scan, tmp_path, tiny_seg_model, monkeypatch, capsys):
    out = tmp_path / "out"
    assert _segment(scan, out, tiny_seg_model) == 0
    before = _contents(out)
    assert len(before) == 7
    _disk_full_after(monkeypatch, 3)
    assert _segment(scan, out, tiny_seg_model, "--overwrite", "--seed", "5") == 2
    assert "No space left on device" in capsys.readouterr().err
    assert _contents(out) == before  # no mix of two runs, no staging folder left behind


def test_a_full_disk_leaves_nothing_and_a_rerun_needs_no_overwrite(scan, tmp_path, tiny_seg_model, monkeypatch):
    out = tmp_path / "out"
    _disk_full_after(monkeypatch, 5)
    assert _segment(scan, out, tiny_seg_model) == 2
    assert not out.exists() or not any(out.iterdir())
    monkeypatch.undo()
    assert _segment(scan, out, tiny_seg_model) == 0
    assert len(_contents(out)) == 7


def test_a_set_cut_short_while_moving_in_is_replaced_by_a_rerun(scan, tmp_path, tiny_seg_model, monkeypatch):
    import napari_diffmed.outputs as outputs

    out = tmp_path / "out"
    real, moved = os.link, []

    def cut(src, dst, *args, **kwargs):
        if Path(dst).parent == out:  # a move into the target folder, not a write inside the staging one
            if len(moved) == 2:
                raise OSError(errno.EIO, "Input/output error", str(dst))
            moved.append(dst)
        return real(src, dst, *args, **kwargs)

    monkeypatch.setattr(outputs.os, "link", cut)
    assert _segment(scan, out, tiny_seg_model) == 2
    monkeypatch.undo()
    assert (out / ".scan_segment.json.incomplete").exists() and len(moved) == 2
    assert not (out / "scan_segment.json").exists()  # without its record the set is known to be incomplete
    assert _segment(scan, out, tiny_seg_model, "--seed", "3") == 0  # no --overwrite needed
    files = _contents(out)
    assert len(files) == 7 and json.loads(files["scan_segment.json"])["seed"] == 3
    assert _segment(scan, out, tiny_seg_model) == 2  # a complete set is never replaced unasked


def test_staging_left_by_a_killed_run_is_removed(scan, tmp_path, tiny_seg_model):
    import socket

    out = tmp_path / "out"
    stale = out / f".napari-diffmed-staging-scan_segment.json-{socket.gethostname()}.{2**22 + 12345}-x1"
    stale.mkdir(parents=True)
    (stale / "scan_seg_mean.nii.gz").write_bytes(b"half")
    assert _segment(scan, out, tiny_seg_model) == 0
    assert not stale.exists() and len(_contents(out)) == 7


def test_a_dask_rerun_skips_finished_files(scan, tmp_path, tiny_seg_model):
    distributed = pytest.importorskip("distributed")
    from napari_diffmed.distributed import map_files

    out = tmp_path / "out"
    settings = dict(model=str(tiny_seg_model), members=2, steps=2, device="cpu")
    with distributed.LocalCluster(processes=False, n_workers=1, threads_per_worker=1,
                                  dashboard_address=None) as cluster:
        first = map_files("segment", [scan], out, address=cluster.scheduler_address, **settings)
        stamps = {p: p.stat().st_mtime_ns for p in out.iterdir()}
        again = map_files("segment", [scan], out, address=cluster.scheduler_address, **settings)
    assert first[0].ok and again[0].ok, again[0].error
    assert sorted(again[0].outputs) == sorted(first[0].outputs) and len(first[0].outputs) == 7
    assert {p: p.stat().st_mtime_ns for p in out.iterdir()} == stamps  # nothing was redone


@pytest.mark.parametrize("command", ["sample", "inpaint"])
@pytest.mark.parametrize("prefix", ["../../escaped", "a/b", "ABSOLUTE", ""])
def test_a_prefix_cannot_leave_the_output_folder(tmp_path, scan, tiny_image_model, capsys, command, prefix):
    out = tmp_path / "deep" / "out"
    prefix = str(tmp_path / "escaped_abs") if prefix == "ABSOLUTE" else prefix
    args = [command, *([str(scan), str(scan)] if command == "inpaint" else []), "--out", str(out),
            "--model", str(tiny_image_model), "--prefix", prefix, "--steps", "2", "--device", "cpu"]
    with pytest.raises(SystemExit) as info:
        main(args)
    err = capsys.readouterr().err
    assert info.value.code == 2 and "no path separators" in err and err.count("\n") == 1
    assert not list(tmp_path.rglob("escaped*")) and not (tmp_path / "deep").exists()


def _broken_card(tmp_path: Path, tiny_image_model: Path, text: str) -> Path:
    weights = tmp_path / "bad.safetensors"
    weights.write_bytes(tiny_image_model.read_bytes())
    weights.with_suffix(".json").write_text(text)
    return weights


@pytest.mark.parametrize("case", ["corrupt", "missing", "nan_affine", "nested_card", "scheduler_string",
                                  "out_is_a_file", "complex", "four_axes", "bad_slices", "model_name"])
def test_bad_input_is_one_line_and_exit_2(tmp_path, scan, tiny_image_model, capsys, case):
    target, model, extra = scan, str(tiny_image_model), []
    out = tmp_path / "out"
    if case == "corrupt":
        target = tmp_path / "corrupt.nii.gz"
        target.write_bytes(scan.read_bytes()[:300])
    elif case == "missing":
        target = tmp_path / "nowhere.nii.gz"
    elif case == "nan_affine":
        img = nib.load(scan)
        header = img.header.copy()
        header["srow_x"] = [np.nan, 0, 0, 0]
        header["sform_code"], header["qform_code"] = 1, 0
        target = tmp_path / "nan.nii.gz"
        nib.save(nib.Nifti1Image(np.asarray(img.dataobj), None, header=header), target)
    elif case == "nested_card":
        model = str(_broken_card(tmp_path, tiny_image_model, "[" * 100_000 + "]" * 100_000))
    elif case == "scheduler_string":
        card = json.loads(tiny_image_model.with_suffix(".json").read_text())
        model = str(_broken_card(tmp_path, tiny_image_model, json.dumps({**card, "scheduler": "DDPMScheduler"})))
    elif case == "out_is_a_file":
        out = tmp_path / "file"
        out.write_text("not a folder")
    elif case == "complex":
        target = tmp_path / "complex.nii"
        nib.save(nib.Nifti1Image(np.ones((4, 4, 4), np.complex64), np.eye(4)), target)
    elif case == "four_axes":
        target = tmp_path / "series.nii.gz"
        nib.save(nib.Nifti1Image(np.ones((4, 4, 4, 3), np.float32), np.eye(4)), target)
    elif case == "bad_slices":
        extra = ["--slices", "1:x"]
    elif case == "model_name":
        model = "no_such_model"
    code = main(["anomaly", str(target), "--out", str(out), "--model", model, "--steps", "2", "--level", "100",
                 "--method", "gaussian", "--device", "cpu", "--quiet", *extra])
    err = capsys.readouterr().err
    assert code == 2 and err.startswith("napari-diffmed anomaly: error: ") and err.count("\n") == 1, err
    assert "Traceback" not in err


def test_argparse_errors_are_one_line(capsys):
    with pytest.raises(SystemExit) as info:
        main(["segment", "scan.nii.gz", "--out", "o", "--members", "many"])
    err = capsys.readouterr().err
    assert info.value.code == 2 and err.count("\n") == 1 and "--members" in err and "--help" in err


def test_the_installed_command_prints_no_traceback(tmp_path):
    bad = tmp_path / "bad.nii.gz"
    bad.write_bytes(b"\x1f\x8b not really gzip")
    run = subprocess.run([sys.executable, "-m", "napari_diffmed.cli", "segment", str(bad), "--out",
                          str(tmp_path / "o")], capture_output=True, text=True, timeout=120,
                         env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)})
    assert run.returncode == 2 and "Traceback" not in run.stderr
    assert run.stderr.count("\n") == 1 and str(bad) in run.stderr
