"""``napari-diffmed sample``: NIfTI files, a provenance sidecar, refusals with reasons."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest

from napari_diffmed.cli import build_parser, main
from napari_diffmed.io import read_nifti
from napari_diffmed.synthesis import DEFAULTS, synthesize


def _run(out, *extra):
    return main(["sample", "--out", str(out), "--device", "cpu", "-n", "3", "--steps", "3", *map(str, extra)])


def test_2d_samples_become_one_stack_with_sidecar(tiny_image_model, tmp_path, capsys):
    assert _run(tmp_path, "--model", tiny_image_model, "--seed", 4, "--class", "lesion", "--guidance", 2) == 0
    data, kwargs, kind = read_nifti(tmp_path / "synthesis.nii.gz")
    assert kind == "image" and data.shape == (3, 16, 16)
    assert kwargs["metadata"]["spacing"] == pytest.approx((1.0, 4.0, 4.0))
    expected = synthesize(tiny_image_model, n=3, steps=3, seed=4, class_name="lesion", guidance=2.0, device="cpu")
    np.testing.assert_allclose(data, expected.samples, atol=1e-6)
    record = json.loads((tmp_path / "synthesis.json").read_text())
    run = record["runs"][0]
    assert record["files"] == [["synthesis.nii.gz"]]
    assert (run["model"], run["seed"], run["class_name"], run["guidance"]) == ("tiny_image", 4, "lesion", 2.0)
    assert run["model_sha256"] == expected.provenance["model_sha256"] and run["scheduler"] == "DDIMScheduler"
    printed = capsys.readouterr().out
    assert "tiny_image@" in printed and "DDIMScheduler" in printed and "wrote" in printed


def test_existing_files_are_kept_unless_overwrite(tiny_image_model, tmp_path, capsys):
    assert _run(tmp_path, "--model", tiny_image_model, "--seed", 1) == 0
    before = (tmp_path / "synthesis.nii.gz").read_bytes()
    assert _run(tmp_path, "--model", tiny_image_model, "--seed", 2) == 2
    assert "exists" in capsys.readouterr().err
    assert (tmp_path / "synthesis.nii.gz").read_bytes() == before
    assert _run(tmp_path, "--model", tiny_image_model, "--seed", 2, "--overwrite") == 0
    assert (tmp_path / "synthesis.nii.gz").read_bytes() != before


def test_3d_model_writes_one_file_per_volume(tiny_volume_model, tmp_path):
    assert _run(tmp_path, "--model", tiny_volume_model) == 0
    names = sorted(p.name for p in tmp_path.iterdir())
    assert names == ["synthesis.json", "synthesis_000.nii.gz", "synthesis_001.nii.gz", "synthesis_002.nii.gz"]
    data, kwargs, _ = read_nifti(tmp_path / "synthesis_001.nii.gz")
    assert data.shape == (8, 8, 8) and kwargs["metadata"]["spacing"] == pytest.approx((8.0, 8.0, 8.0))


def test_guidance_sweep_writes_one_stack_per_scale(tiny_image_model, tmp_path):
    assert _run(tmp_path, "--model", tiny_image_model, "--sweep", "0,1.5", "--prefix", "sweep") == 0
    record = json.loads((tmp_path / "sweep.json").read_text())
    assert record["files"] == [["sweep_w0.nii.gz"], ["sweep_w1.5.nii.gz"]]
    assert [r["guidance"] for r in record["runs"]] == [0.0, 1.5]
    assert {r["seed"] for r in record["runs"]} == {0}


@pytest.mark.parametrize("extra, reason", [
    (("-n", 0), "number of samples must be a whole number from 1 to 256, got 0"),
    (("--steps", 0), "steps must be a whole number from 1 to 1000, got 0"),
    (("--scheduler", "ddpm"), "needs steps=1000"),
    (("--class", "tumour"), "class 'tumour' is not one of"),
    (("--guidance", -2), "guidance scale must be a number from 0 to 20, got -2.0"),
])
def test_bad_input_exits_non_zero_with_reason(tiny_image_model, tmp_path, capsys, extra, reason):
    out = tmp_path / "out"
    assert _run(out, "--model", tiny_image_model, *extra) == 2
    assert reason in capsys.readouterr().err
    assert not out.exists()


def test_segmentation_model_is_refused(tiny_seg_model, tmp_path, capsys):
    assert _run(tmp_path / "out", "--model", tiny_seg_model) == 2
    assert "is a segmentation model" in capsys.readouterr().err


def test_defaults_are_shared_with_the_python_api(tmp_path):
    args = build_parser().parse_args(["sample", "--out", str(tmp_path)])
    assert (args.model, args.n, args.steps, args.scheduler) == (DEFAULTS.model, DEFAULTS.n, DEFAULTS.steps, "ddim")
    assert (args.seed, args.class_name, args.guidance, args.device) == (
        DEFAULTS.seed, DEFAULTS.class_name, DEFAULTS.guidance, DEFAULTS.device)


def test_console_entry_point(tiny_volume_model, tmp_path):
    cmd = [sys.executable, "-m", "napari_diffmed.cli", "sample", "--out", str(tmp_path), "--model",
           str(tiny_volume_model), "-n", "1", "--steps", "2", "--class", "healthy", "--device", "cpu"]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert done.returncode == 2 and "not class-conditional" in done.stderr
