"""``napari-diffmed inpaint``: NIfTI in, proposals/mean/variance out in the scan's space, nothing overwritten."""

from __future__ import annotations

import json

import numpy as np
import pytest

from napari_diffmed.cli import main
from napari_diffmed.io import read_nifti, write_nifti

FAST = ["--steps", "4", "--jump-length", "2", "--resamplings", "2", "--device", "cpu"]


@pytest.fixture
def files(tmp_path):
    """A phantom scan and a lesion mask as NIfTI files on the same grid."""
    from napari_diffmed.sample_data import make_phantom

    p = make_phantom(shape=(6, 24, 24), spacing=(3.0, 2.0, 2.0), seed=0)
    scan = write_nifti(tmp_path / "scan.nii.gz", p.image, scale=p.spacing, translate=p.translate)
    mask = np.zeros(p.image.shape, np.uint8)
    mask[2:4, 6:14, 8:16] = 1
    mask_file = write_nifti(tmp_path / "mask.nii.gz", mask, labels=True, scale=p.spacing, translate=p.translate)
    return scan, mask_file, p, mask


def test_writes_proposals_mean_variance_exact_outside(files, tmp_path, tiny_image_model, capsys):
    scan, mask_file, p, mask = files
    out = tmp_path / "out"
    code = main(["inpaint", str(scan), str(mask_file), "--out", str(out), "--model", str(tiny_image_model),
                 "--proposals", "2", *FAST])
    assert code == 0
    printed = capsys.readouterr().out
    assert "class healthy" in printed and "6 network calls per batch" in printed and "seed 0" in printed
    image, _, _ = read_nifti(scan)
    inside = mask > 0
    for name in ("proposal0", "proposal1", "mean"):
        data, kwargs, _ = read_nifti(out / f"scan_inpaint_{name}.nii.gz")
        assert data.shape == image.shape
        np.testing.assert_allclose(kwargs["scale"], p.spacing)
        assert np.array_equal(data[~inside], image[~inside])
    a = read_nifti(out / "scan_inpaint_proposal0.nii.gz")[0]
    b = read_nifti(out / "scan_inpaint_proposal1.nii.gz")[0]
    assert not np.array_equal(a[inside], b[inside])
    variance = read_nifti(out / "scan_inpaint_variance.nii.gz")[0]
    assert np.all(variance[~inside] == 0) and variance[inside].max() > 0
    used = read_nifti(out / "scan_inpaint_mask.nii.gz", as_labels=True)[0]
    assert np.array_equal(used > 0, inside)
    record = json.loads((out / "scan_inpaint.json").read_text())
    assert record["model"] == "tiny_image" and record["slices"] == [2, 3] and record["network_calls"] == 6
    assert record["mode"] == "fast" and record["steps"] == 4 and record["proposals"] == 2

    # nothing is overwritten without --overwrite; the old result stays as it was
    before = (out / "scan_inpaint_mean.nii.gz").read_bytes()
    code = main(["inpaint", str(scan), str(mask_file), "--out", str(out), "--model", str(tiny_image_model),
                 "--seed", "5", *FAST])
    assert code == 2 and "exists" in capsys.readouterr().err
    assert (out / "scan_inpaint_mean.nii.gz").read_bytes() == before


def test_mask_on_another_grid_is_resampled_with_a_notice(files, tmp_path, tiny_image_model, capsys):
    scan, _, p, mask = files
    fine = np.repeat(np.repeat(mask, 2, axis=1), 2, axis=2)  # 1 mm in-plane, same field of view
    translate = (p.translate[0], p.translate[1] - 0.5, p.translate[2] - 0.5)
    fine_file = write_nifti(tmp_path / "fine_mask.nii.gz", fine, labels=True, scale=(3.0, 1.0, 1.0),
                            translate=translate)
    out = tmp_path / "out2"
    code = main(["inpaint", str(scan), str(fine_file), "--out", str(out), "--model", str(tiny_image_model),
                 "--proposals", "1", *FAST])
    assert code == 0
    assert "resampled onto the scan's grid" in capsys.readouterr().out
    used = read_nifti(out / "scan_inpaint_mask.nii.gz", as_labels=True)[0]
    assert np.array_equal(used > 0, mask > 0)


def test_bad_inputs_exit_2_with_the_reason(files, tmp_path, tiny_image_model, capsys):
    scan, mask_file, p, _ = files
    soft = write_nifti(tmp_path / "soft.nii.gz", np.full(p.image.shape, 0.3, np.float32), scale=p.spacing)
    flat = write_nifti(tmp_path / "flat_mask.nii.gz", np.ones((24, 24), np.uint8), labels=True)
    cases = [
        ([str(scan), str(soft)], "whole numbers"),
        ([str(scan), str(flat)], "mask has 2 axes"),
        ([str(scan), str(soft).replace("soft", "missing")], "missing"),
        ([str(scan), str(flat), "--mode", "best"], None),  # argparse rejects the choice
        ([str(scan), str(mask_file), "--steps", "1000", "--jump-length", "1000"], "jump_length"),
    ]
    for args, reason in cases:
        if reason is None:
            with pytest.raises(SystemExit):
                main(["inpaint", *args, "--out", str(tmp_path / "o"), "--model", str(tiny_image_model)])
            continue
        code = main(["inpaint", *args, "--out", str(tmp_path / "o"), "--model", str(tiny_image_model), *FAST[-2:]])
        assert code == 2, args
        assert reason in capsys.readouterr().err
    assert not (tmp_path / "o").exists()


def test_help_names_the_defaults(capsys):
    with pytest.raises(SystemExit):
        main(["inpaint", "--help"])
    text = capsys.readouterr().out
    assert "mni_t1_axial_64" in text and "healthy" in text and "fast" in text
