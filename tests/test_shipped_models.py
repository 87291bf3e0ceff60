"""Quality of the shipped image models, loaded through the registry by name, on data they did not train on.

What a user would check, with margins that catch a broken or swapped model: the card's figures exist
and agree with a fresh, smaller, differently seeded evaluation; samples look like brain slices
without copying the training slices, differ from each other and follow the class label; anomaly
heatmaps find held-out-style lesions better than a median filter; sampled volumes have a brain's
structure. A missing shipped model fails (never skips). About 2-3 minutes on 2 CPU cores.
"""

from __future__ import annotations

import numpy as np
import pytest

pytestmark = pytest.mark.slow

# IMAGE serves inpainting and anomaly maps, SYNTH (re-targeted from it to v prediction) synthesis.
IMAGE, SYNTH, VOLUME = "mni_t1_axial_64", "mni_t1_axial_64_v", "mni_t1_volume_32"
# Floors under what the shipped weights reach (cards: NN-SSIM 0.33 for IMAGE and 0.56 for SYNTH, best AUROC 0.84,
# volume NN-SSIM 0.51), far above what random weights give (about 0.05 and 0.5): they catch a broken or swapped
# model. The targets (NN-SSIM 0.6, AUROC 0.9) need longer training than this CPU allowed; real held-out
# slices score about 0.8.
NN_SSIM_FLOOR = 0.4
MEMORISED_MAX = 0.10
AUROC_FLOOR = 0.8  # QUICK evaluation (2 cases) of the shipped weights: ddim 0.89; card (4 cases): 0.96
VOLUME_NN_SSIM_FLOOR = 0.35


@pytest.fixture(scope="module")
def image_model():
    from napari_diffmed.models import get_model

    return get_model(IMAGE, device="cpu", task="image")


@pytest.fixture(scope="module")
def synth_model():
    from napari_diffmed.models import get_model

    return get_model(SYNTH, device="cpu", task="image")


@pytest.fixture(scope="module")
def volume_model():
    from napari_diffmed.models import get_model

    return get_model(VOLUME, device="cpu", task="image")


@pytest.fixture(scope="module")
def slices(image_model):
    from napari_diffmed.evaluation.model import grid_data

    data = grid_data(image_model.card)[0]
    return data.split(held_out=False).images, data.split(held_out=True).images


@pytest.fixture(scope="module")
def fresh_synthesis(synth_model, slices):
    """QUICK evaluation's synthesis figures (16 samples, seed 1) of the synthesis model, and the samples."""
    from napari_diffmed.evaluation.model import QUICK, synthesis_part

    return synthesis_part(synth_model, *slices, QUICK)


@pytest.fixture(scope="module")
def fresh(image_model):
    """QUICK evaluation of the held-out loss and the anomaly heatmaps (2 lesion cases)."""
    from napari_diffmed.evaluation.model import evaluate_image_model

    return evaluate_image_model(IMAGE, quick=True, parts=("loss", "anomaly"))


def test_shipped_models_are_registered():
    from napari_diffmed.models import list_models

    names = {entry.name for entry in list_models(task="image")}
    assert {IMAGE, SYNTH, VOLUME} <= names, f"shipped image models missing: {sorted({IMAGE, SYNTH, VOLUME} - names)}"


@pytest.mark.parametrize("name", [IMAGE, SYNTH])
def test_cards_hold_figures_of_their_own_weights(name):
    from napari_diffmed.models import get_model

    card = get_model(name, device="cpu", task="image").card
    for section in ("evaluation", "synthesis", "held_out_loss", "anomaly", "inpainting"):
        assert section in card.metrics, f"card of {name} lacks metrics[{section!r}]; run the evaluation with --write"
    assert card.metrics["evaluation"]["weights_sha256"] == card.weights_sha256, "figures of other weights"


def test_synthesis_card_matches_a_fresh_evaluation(synth_model, fresh_synthesis):
    synth, new = synth_model.card.metrics["synthesis"], fresh_synthesis[0]
    assert abs(synth["nn_ssim_median"] - new["nn_ssim_median"]) < 0.1
    assert abs(synth["pairwise_ssim_mean"] - new["pairwise_ssim_mean"]) < 0.1
    assert synth["baseline_nn_ssim_median"] == pytest.approx(new["baseline_nn_ssim_median"], abs=1e-3)


def test_image_card_matches_a_fresh_evaluation(image_model, fresh):
    metrics = image_model.card.metrics
    anomaly = metrics["anomaly"]
    # the same fixed held-out batch, noise and timesteps: the same loss up to float rounding
    assert metrics["held_out_loss"] == pytest.approx(fresh["held_out_loss"], rel=0.02)
    new_anomaly = fresh["anomaly"]
    # two lesion draws against the card's four: the AUROC varies by up to about 0.1 between draws (0.89 and 0.96
    # for the shipped weights), so this catches other weights or a broken evaluation, not small changes
    assert abs(anomaly[anomaly["best_method"]]["auroc"] - new_anomaly[new_anomaly["best_method"]]["auroc"]) < 0.15
    assert 0 < metrics["inpainting"]["mae_mean_proposal"] < 0.5


def test_samples_are_realistic_and_not_memorised(fresh_synthesis):
    figures, _ = fresh_synthesis
    assert figures["nn_ssim_median"] >= NN_SSIM_FLOOR, figures
    assert figures["memorised_fraction"] <= MEMORISED_MAX, figures
    assert 0.5 < figures["foreground_fraction"] / figures["foreground_fraction_training"] < 1.5, figures
    assert figures["tissue_contrast"] > 0.6 * figures["tissue_contrast_training"], figures  # not flat blobs


def test_samples_differ_from_each_other(fresh_synthesis):
    from napari_diffmed.evaluation.synthesis import ssim_matrix

    figures, samples = fresh_synthesis
    assert figures["pairwise_ssim_mean"] < 0.8, figures
    pairs = ssim_matrix(samples, samples)[np.triu_indices(len(samples), k=1)]
    assert pairs.max() < 0.97, "two samples are (nearly) the same image"


def test_class_label_changes_the_samples(synth_model):
    from napari_diffmed.synthesis import synthesize
    from napari_diffmed.evaluation.model import FULL

    kwargs = dict(n=4, steps=20, seed=5, guidance=FULL.guidance, device="cpu")
    healthy = synthesize(synth_model, class_name="healthy", **kwargs).samples
    lesion = synthesize(synth_model, class_name="lesion", **kwargs).samples
    brain = (healthy > 0.15) | (lesion > 0.15)
    change = np.abs(healthy - lesion)[brain]
    assert change.mean() > 0.01, "the class label has (almost) no effect"
    assert np.quantile(change, 0.99) > 0.1, "no pixel changes clearly between the classes"


def test_anomaly_heatmaps_find_held_out_lesions(fresh):
    anomaly = fresh["anomaly"]
    best = anomaly[anomaly["best_method"]]
    assert best["auroc"] > AUROC_FLOOR, anomaly
    assert best["auroc"] > anomaly["median_filter"]["auroc"] + 0.2, anomaly  # clearly above the classical baseline
    assert best["auprc"] > anomaly["median_filter"]["auprc"], anomaly


def test_volumes_have_brain_structure(volume_model):
    from napari_diffmed.evaluation.synthesis import ssim_matrix
    from napari_diffmed.evaluation.model import QUICK, grid_data, volume_part

    metrics = volume_model.card.metrics
    assert "volume" in metrics and metrics["evaluation"]["weights_sha256"] == volume_model.card.weights_sha256
    data = grid_data(volume_model.card)[0]
    figures, samples = volume_part(volume_model, data, QUICK, n=2, steps=20)
    assert samples.shape == (2, *volume_model.card.image_size)
    # SSIM of whole volumes is dominated by the background: a flat brain-shaped blob reaches 0.59, noise 0.0,
    # augmented copies of the template (what training showed) about 0.4; so check the brain's size and its
    # tissue contrast too (the earlier, noise-predicting model filled 96% of the volume with noisy blobs)
    assert figures["nn_ssim_median"] > VOLUME_NN_SSIM_FLOOR, figures
    assert abs(figures["nn_ssim_median"] - metrics["volume"]["nn_ssim_median"]) < 0.15
    assert 0.7 < figures["foreground_fraction"] / figures["foreground_fraction_training"] < 1.3, figures
    assert figures["tissue_contrast"] > 0.5 * figures["tissue_contrast_training"], figures  # not flat blobs
    assert figures["intensity_distance"] < 0.05, figures
    assert ssim_matrix(samples[:1], samples[1:])[0, 0] < 0.98, "the two volumes are the same"


def test_segmentation_ensemble_on_a_held_out_slab():
    """The shipped WM model on held-out slices of the 2 mm template (a grid it never saw), against the WM map.

    Card (benchmarks/eval_segmentation.py) on this slab: consensus Dice 0.94, members 0.93, AUROC 0.94,
    calibration error of the mean 0.04 (against the map through the training's threshold band).
    """
    from napari_diffmed.masks import foreground_mask
    from napari_diffmed.ensemble import segment_ensemble
    from napari_diffmed.evaluation.segmentation import segmentation_scores
    from napari_diffmed.models import get_model
    from napari_diffmed.training.datasets import member_probability
    from napari_diffmed.training.templates import load_mni152

    card = get_model("mni_wm_seg_96", device="cpu", task="segmentation").card
    assert card.metrics["evaluation"]["weights_sha256"] == card.weights_sha256, "figures of other weights"
    template = load_mni152(2)
    slab = np.arange(54, 60)  # held out of training: 1 mm slices 108-119
    result = segment_ensemble(template.t1, template.spacing, members=8, seed=0, indices=slab, device="cpu")
    region = np.zeros(template.t1.shape, bool)
    region[slab] = True
    region &= foreground_mask(template.t1) & result.covered
    # members are trained to cover a voxel as often as member_probability says (the training's threshold band)
    expected = member_probability(template.wm, card.training["threshold_band"])
    scores = segmentation_scores(result, template.wm > 0.5, template.spacing, region=region, probability=expected)
    assert scores["dice"] > 0.92, scores
    assert scores["dice"] >= scores["member_dice"], scores  # the ensemble beats its members (Wolleb et al.)
    assert scores["uncertainty_auroc"] > 0.85, scores  # the uncertainty points at the errors
    assert scores["ece"] < 0.05 and scores["ece_votes"] < 0.08, scores  # mean and votes are calibrated
