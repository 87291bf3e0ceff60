"""``napari-diffmed label``: propose, list least certain first, accept, refuse a locked folder."""

from __future__ import annotations

import json

import pytest

pytest.importorskip("torch")

from napari_diffmed.cli import main  # noqa: E402


@pytest.fixture
def scans(tmp_path):
    from napari_diffmed.io import write_nifti
    from napari_diffmed.sample_data import make_phantom

    for k in range(2):
        p = make_phantom(shape=(3, 24, 24), spacing=(3.0, 2.0, 2.0), seed=k)
        write_nifti(tmp_path / "scans" / f"sub{k}.nii.gz", p.image, scale=p.spacing, translate=p.translate)
    return tmp_path / "scans"


def test_propose_list_and_accept_from_the_shell(scans, tmp_path, tiny_seg_model, capsys):
    out = tmp_path / "out"
    base = ["label", str(scans), "--out", str(out), "--device", "cpu", "--quiet"]
    assert main(base + ["--model", str(tiny_seg_model), "--members", "3", "--steps", "2", "--propose", "1"]) == 0
    table = capsys.readouterr().out.splitlines()
    assert table[1].split()[:2] == ["sub0", "proposed"] and table[2].split()[:3] == ["sub1", "not", "started"]
    assert main(base + ["--propose", "--accept", "sub0"]) == 0  # the stored settings carry over
    rows = [line.split()[:2] for line in capsys.readouterr().out.splitlines()[1:]]
    assert rows == [["sub1", "proposed"], ["sub0", "accepted"]]
    record = json.loads((out / "accepted" / "sub0_labels.json").read_text())
    assert record["proposed_by"]["members"] == 3 and record["corrected_voxels"] == 0
    (out / "session.lock").write_text(json.dumps({"host": "another-host", "pid": 1}))
    assert main(base) == 2
    assert "in use by another labeling session (pid 1 on another-host" in capsys.readouterr().err
