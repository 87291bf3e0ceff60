"""The default anomaly threshold: the model card's, calibrated on healthy held-out slices, not the scan's own
percentile; runs at other settings say so; the shipped default flags at most 0.5% of healthy held-out brain."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

from napari_diffmed.anomaly import anomaly_map
from napari_diffmed.heatmap import default_threshold

RUN = dict(method="gaussian", level=100, steps=10, seed=0, device="cpu")


@pytest.fixture
def calibrated_model(tmp_path, tiny_image_model):
    """A copy of the tiny image model whose card holds a calibrated gaussian threshold at ``RUN``'s settings."""
    from napari_diffmed.anomaly import DEFAULTS
    from napari_diffmed.evaluation.threshold import calibration_settings, write_thresholds

    weights = tmp_path / "tiny_calibrated.safetensors"
    shutil.copy(tiny_image_model, weights)
    card = json.loads(tiny_image_model.with_suffix(".json").read_text())
    card["name"] = "tiny_calibrated"
    weights.with_suffix(".json").write_text(json.dumps(card))
    settings = {**calibration_settings("gaussian"), "level": RUN["level"], "steps": RUN["steps"]}
    assert settings["guidance"] == DEFAULTS.guidance
    write_thresholds(weights, {"gaussian": {"value": 0.01234, "healthy_fraction": 0.002, "settings": settings}})
    return weights


def test_the_default_threshold_is_the_cards_calibrated_one(small_volume, calibrated_model):
    result = anomaly_map(small_volume.image, small_volume.spacing, model=calibrated_model, **RUN)
    assert result.threshold == 0.01234 and result.messages == []
    assert result.provenance["threshold_healthy_fraction"] == 0.002 and result.provenance["messages"] == []
    assert "healthy held-out" in result.provenance["threshold_rule"]
    assert np.array_equal(result.labels(), ((result.heatmap >= 0.01234) & result.brain_mask).astype(np.uint8))


def test_other_settings_keep_the_threshold_and_say_so(small_volume, calibrated_model):
    result = anomaly_map(small_volume.image, small_volume.spacing, model=calibrated_model, **{**RUN, "guidance": 2.0})
    assert result.threshold == 0.01234
    assert len(result.messages) == 1 and "guidance=2.0 (calibrated at 5.0)" in result.messages[0]
    assert result.provenance["messages"] == result.messages


def test_a_card_without_calibration_falls_back_to_the_percentile_and_says_so(small_volume, tiny_image_model):
    result = anomaly_map(small_volume.image, small_volume.spacing, model=tiny_image_model, **RUN)
    assert result.threshold == pytest.approx(default_threshold(result.heatmap, result.brain_mask))
    assert "no threshold calibrated for method 'gaussian'" in result.messages[0]
    assert result.provenance["threshold_healthy_fraction"] is None


def test_re_scoring_the_card_keeps_the_thresholds(calibrated_model):
    from napari_diffmed.models import ModelCard
    from napari_diffmed.models.card import sha256_file
    from napari_diffmed.evaluation.cards import write_card_metrics

    sha = sha256_file(calibrated_model)
    write_card_metrics(calibrated_model, {"evaluation": {"weights_sha256": sha}, "anomaly": {"auroc": 0.9}})
    write_card_metrics(calibrated_model, {"evaluation": {"weights_sha256": sha}, "anomaly": {"auroc": 0.8}})
    anomaly = ModelCard.read(calibrated_model.with_suffix(".json")).metrics["anomaly"]
    assert anomaly["auroc"] == 0.8 and anomaly["threshold"]["gaussian"]["value"] == 0.01234


def test_the_shipped_thresholds_are_recorded_with_their_figures():
    from napari_diffmed.models import get_model

    card = get_model("mni_t1_axial_64", "cpu").card
    thresholds = card.metrics["anomaly"]["threshold"]
    assert set(thresholds) == {"gaussian", "simplex", "ddim"}
    for entry in thresholds.values():
        assert entry["healthy_fraction"] <= 0.005 and entry["held_out_healthy_fraction"] <= 0.005
        assert 0 < entry["value"] and 0 <= entry["sensitivity"] <= 1


@pytest.mark.slow
def test_the_shipped_default_flags_at_most_half_a_percent_of_healthy_held_out_brain():
    """The default run (ddim) on the healthy evaluation slab of the template, which calibration never saw."""
    from napari_diffmed.training.lesions import held_out_slabs
    from napari_diffmed.training.templates import load_mni152

    template = load_mni152(1)
    slab = held_out_slabs()["evaluation"]
    result = anomaly_map(template.t1, template.spacing, indices=slab, device="cpu")
    assert result.messages == []
    brain = result.brain_mask[slab]
    flagged = float((result.heatmap[slab][brain] >= result.threshold).mean())
    assert brain.sum() > 100_000 and flagged <= 0.005
