"""``napari-diffmed models``: the list of shipped and user models, one model's card, refusals with reasons."""

from __future__ import annotations

import json
import os
import shutil

import pytest

from napari_diffmed.cli import main
from napari_diffmed.models.registry import list_models


@pytest.fixture
def user_models(tiny_image_model, tiny_seg_model, tmp_path, monkeypatch):
    """The tiny models in two user folders, plus a broken card that must be skipped."""
    folders = []
    for i, weights in enumerate((tiny_image_model, tiny_seg_model)):
        folder = tmp_path / f"user{i}"
        folder.mkdir()
        shutil.copy(weights, folder)
        shutil.copy(weights.with_suffix(".json"), folder)
        folders.append(folder)
    (folders[0] / "broken.json").write_text("{")
    (folders[0] / "broken.safetensors").write_bytes(b"junk")
    monkeypatch.setenv("NAPARI_DIFFMED_MODELS", os.pathsep.join(map(str, folders)))
    return folders[0] / tiny_image_model.name, folders[1] / tiny_seg_model.name


def test_list_as_json(user_models, capsys):
    image, seg = user_models
    assert main(["models", "--json"]) == 0
    out, err = capsys.readouterr()
    rows = {row["name"]: row for row in json.loads(out)}
    assert rows["tiny_image"] == {
        "name": "tiny_image", "task": "image", "dims": 2, "image_size": [16, 16],
        "classes": ["healthy", "lesion"], "source": "user", "path": str(image),
    }
    assert rows["tiny_seg"]["task"] == "segmentation" and rows["tiny_seg"]["path"] == str(seg)
    assert set(rows) == {e.name for e in list_models()}  # shipped models too, whatever is installed
    assert all(row["source"] == "shipped" for name, row in rows.items() if not name.startswith("tiny_"))
    assert "broken" not in rows and "skipped" in err and "broken.json" in err


def test_list_as_table(user_models, capsys):
    assert main(["models", "--task", "image"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split()[:5] == ["name", "task", "dims", "image", "size"]
    row = next(line for line in lines if line.startswith("tiny_image"))
    assert row.split()[:6] == ["tiny_image", "image", "2D", "16x16", "healthy,lesion", "user"]
    assert not any(line.startswith("tiny_seg") for line in lines)


def test_empty_listing_says_where_it_looked(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr("napari_diffmed.models.registry.SHIPPED_DIR", tmp_path / "none")
    monkeypatch.setenv("NAPARI_DIFFMED_MODELS", str(tmp_path / "empty"))
    assert main(["models"]) == 0
    assert "no models found" in capsys.readouterr().out
    assert main(["models", "--json"]) == 0
    assert json.loads(capsys.readouterr().out) == []


def test_card_by_name_and_by_path(user_models, capsys):
    image, seg = user_models
    assert main(["models", "tiny_image"]) == 0
    text = capsys.readouterr().out
    assert text.startswith("tiny_image (image, 2D, user)")
    for expected in (str(image), "16x16", "healthy, lesion", "DDPMScheduler", "sha256"):
        assert expected in text
    assert main(["models", str(seg), "--json"]) == 0
    card = json.loads(capsys.readouterr().out)
    assert card["name"] == "tiny_seg" and card["condition_channels"] == 1 and card["source"] == "user"
    assert card["network"]["in_channels"] == 2 and len(card["weights_sha256"]) == 64


def test_unknown_model_is_a_clear_error(user_models, capsys):
    assert main(["models", "tiny_imag"]) == 2
    err = capsys.readouterr().err
    assert "unknown model 'tiny_imag'" in err and "tiny_image" in err


def test_listing_does_not_load_torch():
    import subprocess
    import sys

    code = ("import sys, napari_diffmed.cli as c; c.main(['models', '--json'])\n"
            "assert 'torch' not in sys.modules and 'monai' not in sys.modules")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
