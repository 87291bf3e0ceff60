"""``napari-diffmed segment``: NIfTI in, labels and uncertainty maps out in the scan's space."""

from __future__ import annotations

import json

import numpy as np
import pytest

nib = pytest.importorskip("nibabel")

from napari_diffmed.cli import main  # noqa: E402
from napari_diffmed.io import read_nifti, write_nifti  # noqa: E402

MAPS = ("seg_labels", "seg_mean", "seg_votes", "seg_variance", "seg_entropy", "seg_mutual_information")


@pytest.fixture
def scan_files(tmp_path, small_volume):
    """The phantom, a reference mask, and the phantom with a flipped (LPS-like) affine."""
    scan = write_nifti(tmp_path / "sub01_t1.nii.gz", small_volume.image, scale=small_volume.spacing,
                       translate=small_volume.translate)
    ref = write_nifti(tmp_path / "sub01_wm_mask.nii.gz", (small_volume.image > 700).astype(np.uint8), labels=True,
                      scale=small_volume.spacing, translate=small_volume.translate)
    img = nib.load(str(scan))
    shift = np.eye(4)
    shift[0, 3] = -(img.shape[0] - 1)
    flipped = nib.Nifti1Image(np.asarray(img.dataobj)[::-1], img.affine @ np.diag([-1, 1, 1, 1]) @ shift)
    nib.save(flipped, str(tmp_path / "sub01_flipped.nii.gz"))
    return scan, ref, tmp_path / "sub01_flipped.nii.gz"


def _args(scan, out, model, *extra):
    return ["segment", str(scan), "--out", str(out), "--model", str(model), "--members", "4", "--steps", "3",
            "--device", "cpu", *extra]


def test_writes_maps_in_the_scan_space(scan_files, tmp_path, tiny_seg_model, capsys):
    scan, ref, _ = scan_files
    out = tmp_path / "out"
    assert main(_args(scan, out, tiny_seg_model, "--reference", str(ref))) == 0
    printed = capsys.readouterr().out
    assert "members=4" in printed and "steps=3" in printed and "tiny_seg@" in printed and "dice" in printed
    source = nib.load(str(scan))
    for name in MAPS:
        written = nib.load(str(out / f"sub01_t1_{name}.nii.gz"))
        assert written.shape == source.shape and np.allclose(written.affine, source.affine)
    labels, _, kind = read_nifti(out / "sub01_t1_seg_labels.nii.gz")
    entropy, _, entropy_kind = read_nifti(out / "sub01_t1_seg_entropy.nii.gz")
    assert kind == "labels" and entropy_kind == "image" and set(np.unique(labels)) <= {0, 1}
    assert 0 <= entropy.min() and entropy.max() <= 1 + 1e-6
    record = json.loads((out / "sub01_t1_segment.json").read_text())
    assert record["model"] == "tiny_seg" and record["members"] == 4 and record["entropy_units"] == "bits"
    assert set(record["scores"]) >= {"dice", "hd95", "ged", "uncertainty_auroc", "member_dice"}
    assert set(record["most_uncertain_slices"]) <= set(range(source.shape[2]))


def test_same_result_as_the_function_and_reoriented_scan_round_trips(scan_files, tmp_path, tiny_seg_model):
    from napari_diffmed.ensemble import segment_ensemble

    _, _, flipped = scan_files
    out = tmp_path / "flip"
    assert main(_args(flipped, out, tiny_seg_model, "--quiet", "--slices", "1:4", "--rule", "majority",
                      "--threshold", "0.3")) == 0
    source = nib.load(str(flipped))
    mean_img = nib.load(str(out / "sub01_flipped_seg_mean.nii.gz"))
    assert mean_img.shape == source.shape and np.allclose(mean_img.affine, source.affine)
    scan, kwargs, _ = read_nifti(flipped)
    expected = segment_ensemble(scan, kwargs["metadata"]["spacing"], model=tiny_seg_model, members=4, steps=3,
                                indices=range(1, 4), device="cpu")
    mean, _, _ = read_nifti(out / "sub01_flipped_seg_mean.nii.gz")
    labels, _, _ = read_nifti(out / "sub01_flipped_seg_labels.nii.gz")
    np.testing.assert_allclose(mean, expected.mean, atol=1e-6)
    assert np.array_equal(labels, expected.labels("majority", 0.3))
    assert not mean[[0, 4, 5]].any()  # only the chosen slices were segmented


def test_refuses_to_overwrite_and_keeps_files(scan_files, tmp_path, tiny_seg_model, capsys):
    scan, _, _ = scan_files
    out = tmp_path / "out"
    assert main(_args(scan, out, tiny_seg_model, "--quiet")) == 0
    mean = out / "sub01_t1_seg_mean.nii.gz"
    before = mean.read_bytes()
    assert main(_args(scan, out, tiny_seg_model, "--quiet", "--seed", "5")) == 2
    assert "--overwrite" in capsys.readouterr().err
    assert mean.read_bytes() == before
    assert main(_args(scan, out, tiny_seg_model, "--quiet", "--seed", "5", "--overwrite")) == 0
    assert mean.read_bytes() != before


@pytest.mark.parametrize("extra, match", [
    (["--members", "0"], "members"), (["--steps", "0"], "steps"), (["--slices", "x"], "slices"),
    (["--slices", "40:52"], "slice indices"), (["--threshold", "2"], "threshold"),
])
def test_bad_values_exit_2_with_the_reason(scan_files, tmp_path, tiny_seg_model, capsys, extra, match):
    scan, _, _ = scan_files
    assert main(_args(scan, tmp_path / "bad", tiny_seg_model, "--quiet", *extra)) == 2
    assert match in capsys.readouterr().err
    assert not (tmp_path / "bad").exists() or not list((tmp_path / "bad").glob("*.nii.gz"))


def test_image_model_and_wrong_reference_are_refused(scan_files, tmp_path, tiny_seg_model, tiny_image_model, capsys):
    scan, _, _ = scan_files
    assert main(_args(scan, tmp_path / "o", tiny_image_model)) == 2
    assert "made for task 'image'" in capsys.readouterr().err
    other = write_nifti(tmp_path / "other_mask.nii.gz", np.ones((3, 4, 5), dtype=np.uint8), labels=True)
    assert main(_args(scan, tmp_path / "o", tiny_seg_model, "--reference", str(other))) == 2
    assert "--reference" in capsys.readouterr().err


def test_help_shows_the_shared_defaults(capsys):
    from napari_diffmed.ensemble import DEFAULTS

    with pytest.raises(SystemExit):
        main(["segment", "--help"])
    text = capsys.readouterr().out
    assert f"default {DEFAULTS.members}" in text and f"default {DEFAULTS.steps}" in text and "--reference" in text


def test_run_file_is_the_command_for_dask(scan_files, tmp_path, tiny_seg_model):
    from napari_diffmed.commands.segment import run_file

    scan, _, _ = scan_files
    written = run_file(scan, tmp_path / "dask", model=str(tiny_seg_model), members=2, steps=2, device="cpu",
                       slices="2:4")
    assert sorted(p.name for p in written) == sorted(
        [f"sub01_t1_{name}.nii.gz" for name in MAPS] + ["sub01_t1_segment.json"])
    with pytest.raises(ValueError, match="unknown segment settings"):
        run_file(scan, tmp_path / "dask", colour="red")
