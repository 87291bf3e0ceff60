"""Preprocessing: a head with skull to the template and back, a known affine recovered, every output on the
scan's grid. Against the 2 mm template (a card whose domain names it) so that each registration takes seconds."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage

from napari_diffmed.preprocess import PreprocessSettings, RegistrationError, to_model_space

DOMAIN = {"template": "MNI152NLin2009aSym", "template_resolution_mm": 2, "plane": "axial", "modality": "T1",
          "brain_extent_mm": [155.0, 181.0, 145.0], "skull": False}


@pytest.fixture(scope="module")
def template():
    from napari_diffmed.training.templates import load_mni152

    return load_mni152(2)


@pytest.fixture(scope="module")
def card():
    from napari_diffmed.models import ModelCard

    return ModelCard(name="tiny_domain", task="segmentation", spatial_dims=2, image_size=[16, 16], spacing=[8.0, 8.0],
                     network=dict(spatial_dims=2, in_channels=2, out_channels=1, channels=[8, 16],
                                  attention_levels=[False, False], num_res_blocks=1, norm_num_groups=8),
                     scheduler={"name": "DDPMScheduler"}, condition_channels=1, domain=DOMAIN)


def rotated(volume: np.ndarray, degrees: float, shift: tuple[float, float, float]) -> np.ndarray:
    """``volume`` turned in the axial plane about its centre and shifted (voxels)."""
    a = np.deg2rad(degrees)
    m = np.array([[1, 0, 0], [0, np.cos(a), -np.sin(a)], [0, np.sin(a), np.cos(a)]])
    c = (np.array(volume.shape) - 1) / 2
    return ndimage.affine_transform(volume, m, offset=c - m @ c - np.array(shift), order=1)


@pytest.fixture(scope="module")
def head(template):
    """A T1 head at 3 mm: the template's brain, turned 7 degrees and shifted, in CSF, bone and scalp; with a
    bias field. Returns the head, its spacing and the brain's true mask on the head's grid."""
    from napari_diffmed.preprocess.synthetic import add_skull

    brain = ndimage.zoom(rotated(template.t1, 7.0, (3, -4, 5)), 2 / 3, order=1)
    scan = add_skull(brain, (3.0, 3.0, 3.0), seed=1)
    pad = (scan.shape[0] - brain.shape[0]) // 2
    truth = np.pad(brain > 0.05, pad)
    field = np.exp(0.25 * np.linspace(-1, 1, scan.shape[2]))[None, None]
    return (scan * field).astype(np.float32), (3.0, 3.0, 3.0), truth


def dice(a: np.ndarray, b: np.ndarray) -> float:
    return 2 * float((a & b).sum()) / max(1, int(a.sum() + b.sum()))


def test_head_with_skull_is_extracted_registered_and_mapped_back(head, card, template):
    scan, spacing, truth = head
    model_scan, tf = to_model_space(scan, spacing, card, PreprocessSettings())
    stages = tf.record["stages"]
    assert stages["skull"]["present"] and stages["skull"]["stripped"]
    assert tf.record["similarity"] > 0.85
    assert model_scan.shape == template.t1.shape
    assert not model_scan[~tf.brain].any()  # the skull and scalp are gone in the model's space
    assert 0.7 < stages["n4"]["field_range"][0] < 1.0 < stages["n4"]["field_range"][1] < 1.4
    brain_back = tf.back(tf.brain.astype(np.uint8), "labels")
    assert brain_back.shape == scan.shape and brain_back.dtype == np.uint8
    assert dice(brain_back > 0, truth) > 0.9  # brain extraction on the scan's own grid
    wm_back = tf.back(template.wm, "map")
    assert wm_back.shape == scan.shape and wm_back.dtype == np.float32
    assert float(wm_back[~truth].mean()) < 0.05 < float(wm_back[truth].mean())
    image_back = tf.back(model_scan, "image")  # intensities back in the scan's own units (bias put back)
    inner = ndimage.binary_erosion(truth, iterations=2)
    assert np.corrcoef(image_back[inner], scan[inner])[0, 1] > 0.8


def test_a_turned_and_shifted_template_is_registered_back(template, card):
    moved = rotated(template.t1, 10.0, (4, -6, 3))  # voxels of 2 mm: (8, -12, 6) mm along z, y, x
    settings = PreprocessSettings(n4=False, standardise=False, skull_strip="no")
    _, tf = to_model_space(moved, template.spacing, card, settings)
    matrix = np.array(tf.record["stages"]["affine"]["matrix"])  # template mm -> scan mm in ITK (x, y, z) order
    angle = np.rad2deg(np.arctan2(matrix[0, 1], matrix[0, 0]))
    assert abs(abs(angle) - 10.0) < 1.5
    assert tf.record["similarity"] > 0.95
    zyx = np.array([10.0, 60.0, 50.0])  # a voxel of the template, then where it lands in the moved volume
    a = np.deg2rad(10.0)
    m = np.array([[1, 0, 0], [0, np.cos(a), -np.sin(a)], [0, np.sin(a), np.cos(a)]])
    c = (np.array(template.t1.shape) - 1) / 2
    expected = np.linalg.solve(m, zyx - (c - m @ c - np.array([4, -6, 3])))
    landed = np.array(tf.forward.TransformPoint(tuple(zyx[::-1] * 2.0)))[::-1] / 2.0
    assert np.abs(landed - expected).max() < 1.0  # within a voxel (2 mm)


def test_model_slices_follow_the_scan_slab(template, card):
    settings = PreprocessSettings(n4=False, standardise=False, skull_strip="no")
    _, tf = to_model_space(np.roll(template.t1, 5, axis=0), template.spacing, card, settings)
    chosen = tf.model_slices(0, range(40, 46))
    assert set(range(35, 41)) <= set(chosen) <= set(range(34, 42))  # template slices 35-40 (registered to < 1 voxel)


def test_a_failed_registration_is_an_error_not_garbage(card):
    noise = np.random.default_rng(0).random((40, 48, 40)).astype(np.float32)
    settings = PreprocessSettings(n4=False, skull_strip="no")
    with pytest.raises(RegistrationError, match="correlation with the template"):
        to_model_space(noise, (4.0, 4.0, 4.0), card, settings)


@pytest.mark.parametrize("kwargs, match", [({"register": "rigid"}, "register"), ({"skull_strip": "maybe"}, "skull"),
                                           ({"min_similarity": 2}, "min_similarity")])
def test_bad_settings_name_the_value(kwargs, match):
    with pytest.raises(ValueError, match=match):
        PreprocessSettings(**kwargs)


def test_spacing_is_required(card, template):
    with pytest.raises(ValueError, match="spacing"):
        to_model_space(template.t1, None, card)


def test_the_command_line_preprocesses_and_writes_on_the_scan_grid(head, tmp_path, tmp_path_factory):
    import json

    import nibabel as nib

    from conftest import SCHEDULER, TINY_NET, _save_tiny
    from napari_diffmed.cli import main

    model = _save_tiny(tmp_path_factory, dict(
        name="tiny_seg_template", task="segmentation", spatial_dims=2, image_size=[16, 16], spacing=[8.0, 8.0],
        network=dict(spatial_dims=2, in_channels=2, out_channels=1, **TINY_NET), scheduler=dict(SCHEDULER),
        condition_channels=1, domain=DOMAIN))
    scan, spacing, _ = head
    path = tmp_path / "head.nii.gz"
    nib.save(nib.Nifti1Image(np.ascontiguousarray(scan.T), np.diag([*spacing, 1.0])), str(path))
    argv = ["segment", str(path), "--out", str(tmp_path / "out"), "--model", str(model), "--members", "2",
            "--steps", "2", "--slices", "30:32", "--quiet", "--device", "cpu", "--no-n4"]
    assert main(argv) == 0
    labels = nib.load(str(tmp_path / "out" / "head_seg_labels.nii.gz"))
    assert labels.shape == scan.T.shape and np.allclose(labels.affine, np.diag([*spacing, 1.0]))
    record = json.loads((tmp_path / "out" / "head_segment.json").read_text())
    assert record["preprocess"]["stages"]["skull"]["stripped"] and "n4" not in record["preprocess"]["stages"]
    assert record["slices"] == [30, 31] and record["axis"] == 0  # the scan's slices, not the
    assert record["preprocess"]["model_slices"] != [30, 31]  # template's slices
    entropy = np.asarray(nib.load(str(tmp_path / "out" / "head_seg_entropy.nii.gz")).dataobj).T
    assert not entropy[:30].any() and not entropy[32:].any()  # only the chosen slices, on the scan's grid


def test_dask_settings_reach_the_preprocessing_flags():
    from napari_diffmed.commands.common import command_options
    from napari_diffmed.preprocess import PreprocessSettings

    settings, _ = command_options("anomaly", {"n4": False, "register": "deformable", "skull_strip": "yes",
                                              "force": True})
    assert settings.preprocess == PreprocessSettings(n4=False, register="deformable", skull_strip="yes")
    assert settings.force is True


def test_the_python_api_preprocesses_by_default_as_the_command_line_does(head, tmp_path_factory):
    """``segment_ensemble`` with no ``preprocess`` brings a scan with skull to the template and back (the card
    names a template); without spacing it cannot, and says so instead of failing."""
    from conftest import SCHEDULER, TINY_NET, _save_tiny
    from napari_diffmed.domain import DomainWarning
    from napari_diffmed.ensemble import segment_ensemble

    model = _save_tiny(tmp_path_factory, dict(
        name="tiny_seg_api_template", task="segmentation", spatial_dims=2, image_size=[16, 16], spacing=[8.0, 8.0],
        network=dict(spatial_dims=2, in_channels=2, out_channels=1, **TINY_NET), scheduler=dict(SCHEDULER),
        condition_channels=1, domain=DOMAIN))
    scan, spacing, _ = head
    result = segment_ensemble(scan, spacing, model, members=1, steps=2, indices=[30], device="cpu")
    assert result.labels().shape == scan.shape
    assert result.provenance["preprocess"]["stages"]["skull"]["stripped"]
    with pytest.warns(DomainWarning, match="not_registered"):
        raw = segment_ensemble(scan, None, model, members=1, steps=2, indices=[30], device="cpu")
    assert "preprocess" not in raw.provenance and raw.labels().shape == scan.shape
