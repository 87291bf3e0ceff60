"""``napari-diffmed anomaly``: NIfTI in, heatmap/reconstruction/masks out in the scan's space."""

from __future__ import annotations

import json

import numpy as np
import pytest

nib = pytest.importorskip("nibabel")

from napari_diffmed.cli import main  # noqa: E402
from napari_diffmed.io import read_nifti, write_nifti  # noqa: E402


@pytest.fixture
def scan_files(tmp_path, small_volume):
    """The phantom and its lesion written as NIfTI (LPS-like flipped affine to exercise reorientation)."""
    scan = write_nifti(tmp_path / "sub01_t1.nii.gz", small_volume.image, scale=small_volume.spacing,
                       translate=small_volume.translate)
    lesion = write_nifti(tmp_path / "sub01_lesion.nii.gz", small_volume.mask, labels=True,
                         scale=small_volume.spacing, translate=small_volume.translate)
    img = nib.load(str(scan))
    flipped = nib.Nifti1Image(np.asarray(img.dataobj)[::-1], img.affine @ np.diag([-1, 1, 1, 1]) @ _shift(img.shape[0]))
    nib.save(flipped, str(tmp_path / "sub01_flipped.nii.gz"))
    return scan, lesion, tmp_path / "sub01_flipped.nii.gz"


def _shift(n: int) -> np.ndarray:
    m = np.eye(4)
    m[0, 3] = -(n - 1)
    return m


def _args(scan, out, model, *extra):
    return ["anomaly", str(scan), "--out", str(out), "--model", str(model), "--steps", "10", "--device", "cpu",
            *extra]


def test_writes_maps_in_the_scan_space(scan_files, tmp_path, tiny_image_model, capsys):
    scan, lesion, _ = scan_files
    out = tmp_path / "out"
    assert main(_args(scan, out, tiny_image_model, "--method", "gaussian", "--reference", str(lesion))) == 0
    printed = capsys.readouterr().out
    assert "method=gaussian" in printed and "level=" in printed and "auroc" in printed
    source = nib.load(str(scan))
    for name in ("anomaly_heatmap", "pseudo_healthy", "anomaly_mask", "brain_mask"):
        written = nib.load(str(out / f"sub01_t1_{name}.nii.gz"))
        assert written.shape == source.shape
        assert np.allclose(written.affine, source.affine)
    heat, kwargs, kind = read_nifti(out / "sub01_t1_anomaly_heatmap.nii.gz")
    labels, _, label_kind = read_nifti(out / "sub01_t1_anomaly_mask.nii.gz")
    assert kind == "image" and label_kind == "labels" and heat.max() > 0 and 0 < labels.sum()
    record = json.loads((out / "sub01_t1_anomaly.json").read_text())
    assert record["method"] == "gaussian" and record["model"] == "tiny_image"
    assert set(record["scores"]) >= {"auroc", "auprc", "best_dice", "dice"}
    assert not (out / "sub01_t1_anomaly_variance.nii.gz").exists()


def test_reoriented_scan_round_trips(scan_files, tmp_path, tiny_image_model):
    _, _, flipped = scan_files
    out = tmp_path / "flip"
    assert main(_args(flipped, out, tiny_image_model, "--method", "ddim", "--reconstructions", "2", "--quiet")) == 0
    source = nib.load(str(flipped))
    for name in ("anomaly_heatmap", "anomaly_variance", "pseudo_healthy"):
        written = nib.load(str(out / f"sub01_flipped_{name}.nii.gz"))
        assert written.shape == source.shape and np.allclose(written.affine, source.affine)
    # outside the brain mask the pseudo-healthy scan is the scan itself, voxel for voxel in the source grid
    brain = np.asarray(nib.load(str(out / "sub01_flipped_brain_mask.nii.gz")).dataobj) > 0
    pseudo = np.asarray(nib.load(str(out / "sub01_flipped_pseudo_healthy.nii.gz")).dataobj)
    assert np.array_equal(pseudo[~brain], np.asarray(source.dataobj, dtype=np.float32)[~brain])
    assert not np.allclose(pseudo[brain], np.asarray(source.dataobj, dtype=np.float32)[brain])


def test_refuses_to_overwrite_and_keeps_files(scan_files, tmp_path, tiny_image_model, capsys):
    scan, _, _ = scan_files
    out = tmp_path / "out"
    assert main(_args(scan, out, tiny_image_model, "--quiet", "--method", "gaussian")) == 0
    heat = out / "sub01_t1_anomaly_heatmap.nii.gz"
    before = heat.read_bytes()
    assert main(_args(scan, out, tiny_image_model, "--quiet", "--method", "gaussian", "--seed", "5")) == 2
    assert "--overwrite" in capsys.readouterr().err
    assert heat.read_bytes() == before
    assert main(_args(scan, out, tiny_image_model, "--quiet", "--method", "gaussian", "--seed", "5",
                      "--overwrite")) == 0
    assert heat.read_bytes() != before


@pytest.mark.parametrize("extra, match", [
    (["--level", "0"], "level"), (["--guidance", "-1"], "guidance"), (["--slices", "x"], "slices"),
    (["--slices", "40:52"], "slice indices"),
])
def test_bad_values_exit_2_with_the_reason(scan_files, tmp_path, tiny_image_model, capsys, extra, match):
    scan, _, _ = scan_files
    assert main(_args(scan, tmp_path / "bad", tiny_image_model, "--method", "gaussian", *extra)) == 2
    assert match in capsys.readouterr().err
    assert not list((tmp_path / "bad").glob("*.nii.gz")) if (tmp_path / "bad").exists() else True


def test_mask_of_the_wrong_shape_is_refused(scan_files, tmp_path, tiny_image_model, capsys):
    scan, _, _ = scan_files
    other = write_nifti(tmp_path / "other_mask.nii.gz", np.ones((3, 4, 5), dtype=np.uint8), labels=True)
    assert main(_args(scan, tmp_path / "o", tiny_image_model, "--mask", str(other))) == 2
    assert "--mask" in capsys.readouterr().err


def test_help_shows_the_shared_defaults(capsys):
    from napari_diffmed.anomaly import DEFAULTS

    with pytest.raises(SystemExit):
        main(["anomaly", "--help"])
    text = capsys.readouterr().out
    assert f"default {DEFAULTS.method}" in text and "--depth" in text and "--reference" in text


def test_run_file_is_the_command_for_one_scan(scan_files, tmp_path, tiny_image_model):
    """The Dask entry point runs the command's own code and returns the files it wrote."""
    from napari_diffmed.commands.anomaly import run_file

    scan, _, _ = scan_files
    written = run_file(scan, tmp_path / "dask", model=str(tiny_image_model), method="gaussian", steps=10,
                       device="cpu", reconstructions=2)
    assert sorted(p.name for p in written) == sorted(
        f"sub01_t1_{n}" for n in ("anomaly_heatmap.nii.gz", "anomaly_variance.nii.gz", "pseudo_healthy.nii.gz",
                                  "anomaly_mask.nii.gz", "brain_mask.nii.gz", "anomaly.json"))
    assert json.loads((tmp_path / "dask" / "sub01_t1_anomaly.json").read_text())["reconstructions"] == 2
    with pytest.raises(ValueError, match="unknown anomaly settings.*'stepz'"):
        run_file(scan, tmp_path / "dask", stepz=3)
    with pytest.raises(ValueError, match="invalid anomaly settings"):
        run_file(scan, tmp_path / "dask", method="bogus")
