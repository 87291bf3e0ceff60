"""What a new user meets first on the command line: every check of the input runs before a model loads,
messages print plain numbers, every notice is in the JSON record, one slice convention (STOP excluded)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from napari_diffmed.cli import main
from napari_diffmed.io import write_nifti
from napari_diffmed.slices import check_slices, describe, parse_slices

FAST_INPAINT = ["--steps", "4", "--jump-length", "2", "--resamplings", "2", "--proposals", "1", "--device", "cpu"]
FAST_ANOMALY = ["--method", "gaussian", "--level", "100", "--steps", "10", "--device", "cpu"]


@pytest.fixture
def files(tmp_path, small_volume):
    """A 6-slice phantom scan and a lesion mask on slices 2 and 3, as NIfTI files on the same grid."""
    p = small_volume
    scan = write_nifti(tmp_path / "scan.nii.gz", p.image, scale=p.spacing, translate=p.translate)
    mask = np.zeros(p.image.shape, np.uint8)
    mask[2:4, 8:16, 8:16] = 1
    mask_file = write_nifti(tmp_path / "mask.nii.gz", mask, labels=True, scale=p.spacing, translate=p.translate)
    empty = write_nifti(tmp_path / "empty.nii.gz", np.zeros_like(mask), labels=True, scale=p.spacing,
                        translate=p.translate)
    return scan, mask_file, empty, p


@pytest.fixture
def no_model(monkeypatch):
    """Loading any model fails loudly (an AssertionError, which the CLI does not catch): an error that comes
    out instead was raised before the model loaded."""
    import napari_diffmed.models as models
    import napari_diffmed.models.registry as registry

    def refuse(*args, **kwargs):
        raise AssertionError("a model was loaded before the input was checked")

    monkeypatch.setattr(registry, "get_model", refuse)
    monkeypatch.setattr(models, "get_model", refuse)


def _command(name: str, files, out, model) -> list[str]:
    scan, mask, _, _ = files
    positional = [str(scan), str(mask)] if name == "inpaint" else [str(scan)]
    return [name, *positional, "--out", str(out), "--model", str(model), "--device", "cpu", "--quiet"]


def test_one_slice_convention_stop_excluded():
    assert parse_slices("40:52") == list(range(40, 52)) and parse_slices("3,5,7") == [3, 5, 7]
    assert parse_slices(None) is None and parse_slices(" ") is None
    assert describe(range(40, 52)) == "40:52" and describe([3, 5, 7]) == "3,5,7"
    assert check_slices(np.array([3, 1, 1], dtype=np.int64), 4) == [1, 3]
    assert all(type(i) is int for i in check_slices(np.arange(3, dtype=np.int64), 4))
    with pytest.raises(ValueError, match="select no slice"):
        parse_slices("5:5")
    with pytest.raises(ValueError, match="40:52"):
        parse_slices("40-52")


@pytest.mark.parametrize("command", ["segment", "anomaly", "inpaint"])
def test_slices_outside_the_scan_fail_before_the_model_with_plain_numbers(command, files, tmp_path, capsys,
                                                                          no_model, tiny_image_model):
    code = main([*_command(command, files, tmp_path / "out", tiny_image_model), "--slices", "40:52"])
    err = capsys.readouterr().err
    assert code == 2
    assert "slice indices must lie in 0:6 (the scan's 6 slices along axis 0); 40:52 do not" in err
    assert "np." not in err and "int64" not in err
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("command", ["segment", "anomaly", "inpaint", "sample"])
def test_existing_outputs_fail_before_the_model(command, files, tmp_path, capsys, no_model, tiny_image_model):
    out = tmp_path / "out"
    out.mkdir()
    sidecar = out / {"segment": "scan_segment.json", "anomaly": "scan_anomaly.json",
                     "inpaint": "scan_inpaint.json", "sample": "synthesis.json"}[command]
    sidecar.write_text("{}")
    argv = (["sample", "--out", str(out), "--model", str(tiny_image_model), "--quiet"] if command == "sample"
            else _command(command, files, out, tiny_image_model))
    assert main(argv) == 2
    assert f"{sidecar} exist" in capsys.readouterr().err
    assert sidecar.read_text() == "{}"


def test_bad_sample_settings_fail_before_the_model(tmp_path, capsys, no_model, tiny_image_model):
    assert main(["sample", "--out", str(tmp_path / "out"), "--model", str(tiny_image_model), "-n", "0"]) == 2
    assert "number of samples" in capsys.readouterr().err


def test_inpaint_masks_that_leave_nothing_to_do_fail_before_the_model(files, tmp_path, capsys, no_model,
                                                                      tiny_image_model):
    scan, _, empty, _ = files
    out = tmp_path / "out"
    assert main(["inpaint", str(scan), str(empty), "--out", str(out), "--model", str(tiny_image_model)]) == 2
    assert "has no non-zero voxels on the scan's grid: nothing to inpaint" in capsys.readouterr().err
    argv = _command("inpaint", files, out, tiny_image_model)
    assert main([*argv, "--slices", "0:2"]) == 2
    assert "the mask has no voxels on slices 0,1 along axis 0; it has some on slices 2,3" in capsys.readouterr().err
    assert not out.exists()


def test_a_resampling_notice_is_in_the_json_record(files, tmp_path, capsys, tiny_image_model):
    scan, _, _, p = files
    mask = np.zeros(p.image.shape, np.uint8)
    mask[2:4, 8:16, 8:16] = 1
    fine = np.repeat(np.repeat(mask, 2, axis=1), 2, axis=2)  # 1 mm in-plane, the same field of view
    translate = (p.translate[0], p.translate[1] - 0.5, p.translate[2] - 0.5)
    fine_file = write_nifti(tmp_path / "fine.nii.gz", fine, labels=True, scale=(3.0, 1.0, 1.0), translate=translate)
    out = tmp_path / "out"
    assert main(["inpaint", str(scan), str(fine_file), "--out", str(out), "--model", str(tiny_image_model),
                 *FAST_INPAINT]) == 0
    printed = [line for line in capsys.readouterr().out.splitlines() if line.startswith("notice: ")]
    record = json.loads((out / "scan_inpaint.json").read_text())
    assert printed and [f"notice: {m}" for m in record["messages"]] == printed
    assert any("resampled onto the scan's grid" in m for m in record["messages"])


def test_an_uncalibrated_threshold_notice_is_in_the_json_record(files, tmp_path, capsys, tiny_image_model):
    out = tmp_path / "out"
    assert main([*_command("anomaly", files, out, tiny_image_model)[:-1], *FAST_ANOMALY]) == 0
    printed = [line.strip() for line in capsys.readouterr().out.splitlines() if "notice: " in line]
    record = json.loads((out / "scan_anomaly.json").read_text())
    assert [f"notice: {m}" for m in record["messages"]] == printed
    assert "no threshold calibrated for method 'gaussian'" in record["messages"][0]
