"""The check before every run: another modality refused (unless forced), missing spacing, another plane and a
4D file's volume warned about, in the API, on the command line and in the widget."""

from __future__ import annotations

import nibabel as nib
import numpy as np
import pytest

from napari_diffmed.domain import DomainWarning, OutOfDomainError, check_scan

DOMAIN = {"template": "MNI152NLin2009aSym", "template_resolution_mm": 2, "plane": "axial", "modality": "T1",
          "brain_extent_mm": [155.0, 181.0, 145.0], "skull": False}
FAST = dict(members=1, steps=2, device="cpu", preprocess="none")  # the check alone; test_preprocess runs the rest


@pytest.fixture(scope="module")
def domain_model(tmp_path_factory):
    """A tiny segmentation model whose card records a T1, axial, template-space training domain."""
    from conftest import SCHEDULER, TINY_NET, _save_tiny

    return _save_tiny(tmp_path_factory, dict(
        name="tiny_seg_domain", task="segmentation", spatial_dims=2, image_size=[16, 16], spacing=[8.0, 8.0],
        network=dict(spatial_dims=2, in_channels=2, out_channels=1, **TINY_NET), scheduler=dict(SCHEDULER),
        condition_channels=1, domain=DOMAIN))


@pytest.fixture(scope="module")
def scans():
    """The 2 mm template (T1) and a T2/b0-like image made from its tissue maps (CSF bright, white matter dark)."""
    from napari_diffmed.training.templates import load_mni152

    t = load_mni152(2)
    brain = t.t1 > 0.01
    csf = np.clip(1 - t.gm - t.wm, 0, 1) * brain
    t2 = ((0.25 * t.wm + 0.5 * t.gm + 1.0 * csf) * brain * 1000).astype(np.float32)
    return t.t1 * 1000, t2, t.spacing


def codes(record) -> set[str]:
    return {w["code"] for w in record}


def test_a_t2_like_scan_is_refused_and_forced_with_a_warning(domain_model, scans):
    from napari_diffmed.ensemble import segment_ensemble

    t1, t2, spacing = scans
    with pytest.raises(OutOfDomainError, match="T2, b0 or BOLD"):
        segment_ensemble(t2, spacing, model=domain_model, indices=[40], **FAST)
    with pytest.warns(DomainWarning, match="contrast"):
        result = segment_ensemble(t2, spacing, model=domain_model, indices=[40], force=True, **FAST)
    assert "contrast" in codes(result.provenance["domain"]) and result.labels().shape == t2.shape
    assert "contrast" not in codes(check_scan(t1, spacing, result_card(domain_model)))


def result_card(path):
    from napari_diffmed.models import ModelCard

    return ModelCard.read(path.with_suffix(".json"))


def test_missing_spacing_another_plane_and_a_4d_volume_are_named(domain_model, scans):
    t1, _, spacing = scans
    card = result_card(domain_model)
    assert "spacing_unknown" in codes(check_scan(t1, None, card))
    coronal = check_scan(t1[:, 60, :], spacing[::2], card, metadata={"squeezed": (1,), "source_shape": (99, 1, 95)})
    assert "plane" in codes(coronal) and "coronal" in coronal[0]["message"]
    assert "plane" in codes(check_scan(t1, spacing, card, axis=1))
    assert "plane_unknown" in codes(check_scan(t1[40], spacing[1:], card))
    four = check_scan(t1, spacing, card, metadata={"source_shape": (95, 117, 99, 30)})
    assert "volume_of_4d" in codes(four)
    assert not codes(check_scan(t1, spacing, card))  # the template itself is inside the domain


def test_the_api_warns_with_its_own_category(domain_model, scans):
    from napari_diffmed.ensemble import segment_ensemble

    t1, _, _ = scans
    with pytest.warns(DomainWarning, match="spacing_unknown"):
        result = segment_ensemble(t1, None, model=domain_model, indices=[40], **FAST)
    assert "spacing_unknown" in codes(result.provenance["domain"])
    with pytest.warns(DomainWarning, match="volume_of_4d"):
        segment_ensemble(t1, (2.0, 2.0, 2.0), model=domain_model, indices=[40],
                         metadata={"source_shape": (95, 117, 99, 30)}, **FAST)
    with pytest.warns(DomainWarning, match="plane: slicing along axis 1 gives coronal slices"):
        result = segment_ensemble(t1, (2.0, 2.0, 2.0), model=domain_model, axis=1, indices=[60], **FAST)
    assert codes(result.provenance["domain"]) == {"plane"}


def _save(array_zyx: np.ndarray, path, spacing=2.0):
    nib.save(nib.Nifti1Image(np.ascontiguousarray(array_zyx.T), np.diag([spacing] * 3 + [1.0])), str(path))
    return path


def test_the_cli_refuses_on_stderr_and_forces_with_one_warning_line(domain_model, scans, tmp_path, capsys):
    from napari_diffmed.cli import main

    _, t2, _ = scans
    scan = _save(t2, tmp_path / "b0.nii.gz")
    argv = ["segment", str(scan), "--model", str(domain_model), "--slices", "40:41", "--members", "1", "--steps",
            "2", "--quiet", "--device", "cpu", "--preprocess", "none"]
    assert main(argv + ["--out", str(tmp_path / "a")]) == 2
    err = capsys.readouterr().err
    assert "T2, b0 or BOLD" in err and "--force" in err and not (tmp_path / "a").exists()
    assert main(argv + ["--out", str(tmp_path / "b"), "--force"]) == 0
    lines = [line for line in capsys.readouterr().err.splitlines() if "warning: contrast" in line]
    assert len(lines) == 1 and lines[0].startswith("napari-diffmed segment: warning:")
    record = (tmp_path / "b" / "b0_segment.json").read_text()
    assert '"contrast"' in record


def test_the_cli_names_a_coronal_slice(domain_model, scans, tmp_path, capsys):
    from napari_diffmed.cli import main

    t1, _, _ = scans
    coronal = t1[:, 60:61, :]  # one coronal slice, stored as a 3D file with a single y
    scan = _save(coronal, tmp_path / "coronal.nii.gz")
    argv = ["segment", str(scan), "--model", str(domain_model), "--members", "1", "--steps", "2", "--quiet",
            "--device", "cpu", "--out", str(tmp_path / "c")]
    assert main(argv) == 0
    assert "warning: plane: this is a coronal slice" in capsys.readouterr().err


def test_the_cli_refuses_a_4d_series_naming_it(domain_model, scans, tmp_path, capsys):
    from napari_diffmed.cli import main

    t1, _, _ = scans
    series = tmp_path / "bold.nii.gz"
    nib.save(nib.Nifti1Image(np.stack([t1.T] * 3, axis=-1), np.diag([2.0, 2.0, 2.0, 1.0])), str(series))
    argv = ["segment", str(series), "--model", str(domain_model), "--members", "1", "--steps", "2", "--quiet",
            "--device", "cpu", "--out", str(tmp_path / "o")]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "a 4D series of 3 volumes" in err and "fMRI or diffusion" in err and not (tmp_path / "o").exists()


@pytest.mark.gui
def test_the_widget_refuses_then_marks_a_forced_run(make_napari_viewer, run_widget, qtbot, domain_model, scans):
    from napari_diffmed._qt.segmentation import SegmentationWidget

    _, t2, spacing = scans
    viewer = make_napari_viewer()
    viewer.add_image(t2, name="b0", scale=spacing, metadata={"spacing": spacing})
    widget = SegmentationWidget(viewer)
    widget.model_file.value = str(domain_model)
    widget.members.value, widget.steps.value = 1, 2
    widget.first.value, widget.stop.value = 40, 41
    widget.device.value = "cpu"
    with qtbot.capture_exceptions() as caught:  # the job's error reaches the user as a notification
        worker = widget.run()
        qtbot.waitUntil(lambda: widget.runner.worker is None, timeout=60_000)
    assert [type(e[1]) for e in caught] == [OutOfDomainError]
    assert "T2, b0 or BOLD" in widget.status.value and widget.result is None
    widget.prep.force.value = True
    run_widget(widget)
    assert widget.result is not None and "contrast" in widget.prep.mark.value
    assert widget.prep.mark.value.startswith("\u26a0")
    del worker


@pytest.mark.gui
def test_the_widget_says_when_a_layer_has_no_spacing(make_napari_viewer, run_widget, domain_model, scans):
    from napari_diffmed._qt.segmentation import SegmentationWidget

    t1, _, spacing = scans
    viewer = make_napari_viewer()
    viewer.add_image(t1, name="array")  # a bare array: no reader's spacing, scale 1
    widget = SegmentationWidget(viewer)
    widget.model_file.value = str(domain_model)
    widget.members.value, widget.steps.value = 1, 2
    widget.first.value, widget.stop.value = 40, 41
    widget.device.value = "cpu"
    run_widget(widget)  # the template stage is on: without spacing it is skipped, and the mark says why
    assert widget.result is not None and "spacing_unknown" in widget.prep.mark.value
    assert "not_registered" in widget.prep.mark.value
    viewer.layers["array"].scale = spacing  # a scale someone set is the spacing
    widget.prep.use_template.value = False
    run_widget(widget)
    assert "spacing_unknown" not in widget.prep.mark.value


@pytest.mark.gui
def test_the_registered_preview_is_shown_without_taking_the_widgets_scan(make_napari_viewer, qtbot, domain_model,
                                                                         scans):
    from napari_diffmed._qt.segmentation import SegmentationWidget

    t1, _, spacing = scans
    viewer = make_napari_viewer()
    viewer.add_image(t1, name="T1", scale=spacing, metadata={"spacing": spacing})
    widget = SegmentationWidget(viewer)
    widget.model_file.value = str(domain_model)
    chosen = (widget.image.value, widget.first.value, widget.stop.value)
    worker = widget.prep.preview()
    qtbot.waitUntil(lambda: widget.prep.worker is None, timeout=120_000)
    assert "T1 registered" in [layer.name for layer in viewer.layers]
    assert widget.prep.mark.value.startswith("registered to")
    assert (widget.image.value, widget.first.value, widget.stop.value) == chosen  # Run still segments the scan
    del worker


@pytest.mark.parametrize("name", ["mni_t1_axial_64", "mni_t1_axial_64_v", "mni_wm_seg_96", "mni_t1_volume_32"])
def test_a_recipe_writes_the_domain_its_shipped_card_carries(name, tmp_path, monkeypatch):
    """The card a recipe's training hands to the loop (which writes it beside the weights) passes the schema
    and records the same domain as the shipped card, computed from the template rather than copied."""
    import json
    from dataclasses import replace
    from pathlib import Path

    import napari_diffmed.models
    from napari_diffmed.models import ModelCard
    from napari_diffmed.training import recipes
    from napari_diffmed.training.datasets import GridData
    from napari_diffmed.training.loop import TrainState

    seen = {}
    monkeypatch.setattr(recipes, "train", lambda card, *a, **k: seen.update(card=card) or TrainState(0, [], []))
    few = GridData(np.zeros((2, 8, 8), np.float32), np.zeros((2, 8, 8), np.float32), np.array([False, True]),
                   (2.0, 2.0))  # the loop is not run: the images do not matter, only what the card says
    monkeypatch.setitem(recipes.RECIPES, name, replace(recipes.RECIPES[name], data=lambda: few))
    recipes.train_default(name, tmp_path, steps=1, log=lambda m: None)
    written = ModelCard.from_dict(json.loads(seen["card"].to_json()))  # the schema's checks
    shipped = json.loads((Path(napari_diffmed.models.__file__).parent / "weights" / f"{name}.json").read_text())
    assert written.domain == shipped["domain"] and written.domain["template"] == "MNI152NLin2009aSym"
