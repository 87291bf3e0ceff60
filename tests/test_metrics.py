"""The evaluation metrics against scikit-learn's on random inputs, with ties and degenerate cases."""

import numpy as np
import pytest

sklearn_metrics = pytest.importorskip("sklearn.metrics")

from napari_diffmed.evaluation import anomaly as am  # noqa: E402
from napari_diffmed.evaluation import segmentation as sm  # noqa: E402

SEEDS = range(6)


def labelled_scores(seed: int, ties: bool):
    """Scores (continuous, or a few levels so that most are tied), a reference that follows them, a mask."""
    rng = np.random.default_rng(seed)
    shape = (4, 9, 11)
    scores = rng.integers(0, 4, shape).astype(np.float64) if ties else rng.normal(size=shape)
    reference = (scores + rng.normal(scale=1.5, size=shape)) > 1.0
    mask = rng.random(shape) > 0.3
    return scores, reference, mask


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("ties", [False, True])
def test_auroc_and_auprc_equal_scikit_learns(seed, ties):
    scores, reference, mask = labelled_scores(seed, ties)
    for m in (None, mask):
        s, y = (scores.ravel(), reference.ravel()) if m is None else (scores[m], reference[m])
        assert am.auroc(scores, reference, m) == pytest.approx(sklearn_metrics.roc_auc_score(y, s), abs=1e-12)
        assert am.auprc(scores, reference, m) == pytest.approx(sklearn_metrics.average_precision_score(y, s),
                                                               abs=1e-12)


@pytest.mark.parametrize("seed", SEEDS)
def test_best_dice_is_the_best_f1_over_scikit_learns_thresholds(seed):
    scores, reference, mask = labelled_scores(seed, ties=seed % 2 == 0)
    precision, recall, thresholds = sklearn_metrics.precision_recall_curve(reference[mask], scores[mask])
    with np.errstate(invalid="ignore", divide="ignore"):
        f1 = np.nan_to_num(2 * precision * recall / (precision + recall))[:-1]
    best, at = am.best_dice(scores, reference, mask)
    assert best == pytest.approx(f1.max(), abs=1e-12)
    assert am.dice(scores >= at, reference, mask) == pytest.approx(best, abs=1e-12)


@pytest.mark.parametrize("seed", SEEDS)
def test_dice_and_iou_distance_equal_scikit_learns(seed):
    rng = np.random.default_rng(seed)
    density = [0.02, 0.3, 0.7][seed % 3]
    a, b = rng.random((5, 12, 12)) < density, rng.random((5, 12, 12)) < density
    f1 = sklearn_metrics.f1_score(b.ravel(), a.ravel())
    assert am.dice(a, b) == pytest.approx(f1, abs=1e-12)
    assert sm.dice(a, b) == pytest.approx(f1, abs=1e-6)  # MONAI's, in float32
    assert sm.iou_distance(a, b) == pytest.approx(1 - sklearn_metrics.jaccard_score(b.ravel(), a.ravel()), abs=1e-12)


def test_degenerate_overlaps():
    empty, full = np.zeros((3, 4), bool), np.ones((3, 4), bool)
    # both empty: a perfect match, as scikit-learn says with zero_division=1
    assert am.dice(empty, empty) == sm.dice(empty, empty) == 1.0
    assert sklearn_metrics.f1_score(empty.ravel(), empty.ravel(), zero_division=1.0) == 1.0
    assert sm.iou_distance(empty, empty) == 0.0
    assert am.dice(full, empty) == sm.dice(full, empty) == sklearn_metrics.f1_score(empty.ravel(), full.ravel()) == 0
    assert sm.iou_distance(full, empty) == 1.0


def test_one_class_references_are_refused_where_scikit_learn_has_no_auroc():
    scores = np.random.default_rng(0).random((4, 5))
    for reference in (np.zeros((4, 5), bool), np.ones((4, 5), bool)):
        with pytest.raises(ValueError, match="both lesion and non-lesion"):
            am.auroc(scores, reference)
        with pytest.warns(sklearn_metrics._ranking.UndefinedMetricWarning):  # scikit-learn: undefined, NaN
            assert np.isnan(sklearn_metrics.roc_auc_score(reference.ravel(), scores.ravel()))
        with pytest.raises(ValueError, match="both lesion and non-lesion"):
            am.best_dice(scores, reference)


def test_constant_scores_give_chance():
    reference = np.random.default_rng(1).random((6, 7)) > 0.6
    flat = np.full(reference.shape, 0.3)
    assert am.auroc(flat, reference) == sklearn_metrics.roc_auc_score(reference.ravel(), flat.ravel()) == 0.5
    assert am.auprc(flat, reference) == pytest.approx(
        sklearn_metrics.average_precision_score(reference.ravel(), flat.ravel()), abs=1e-12)
    assert am.auprc(flat, reference) == pytest.approx(reference.mean(), abs=1e-12)


def ece_with_scikit_learn(probability: np.ndarray, target: np.ndarray, bins: int) -> float:
    """ECE from ``sklearn.calibration.calibration_curve`` (uniform bins), weighted by each bin's count."""
    from sklearn.calibration import calibration_curve

    p, t = probability.ravel(), target.ravel()
    prob_true, prob_pred = calibration_curve(t, p, n_bins=bins, strategy="uniform")
    counts = np.histogram(p, bins=np.linspace(0, 1, bins + 1))[0]
    counts = counts[counts > 0]  # calibration_curve leaves out the empty bins
    return float(np.sum(counts * np.abs(prob_pred - prob_true)) / counts.sum())


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("bins", [5, 10, 15])
def test_expected_calibration_error_equals_scikit_learns(seed, bins):
    rng = np.random.default_rng(seed)
    probability = rng.beta(0.5, 0.5, size=(8, 16, 16))
    probability.flat[:10] = 1.0  # the end points fall in the first and last bins
    probability.flat[10:20] = 0.0
    target = rng.random(probability.shape) < probability ** (1 + seed % 3)  # calibrated for seeds 0, 3
    assert sm.expected_calibration_error(probability, target, bins) == pytest.approx(
        ece_with_scikit_learn(probability, target, bins), abs=1e-12)
    region = rng.random(probability.shape) > 0.5
    assert sm.expected_calibration_error(probability, target, bins, region) == pytest.approx(
        ece_with_scikit_learn(probability[region], target[region], bins), abs=1e-12)


def test_expected_calibration_error_degenerate_cases():
    target = np.random.default_rng(2).random((4, 8)) > 0.5
    assert sm.expected_calibration_error(target.astype(float), target) == 0.0  # certain and right
    assert sm.expected_calibration_error(1.0 - target, target) == 1.0  # certain and wrong
    half = np.full(target.shape, 0.5)
    assert sm.expected_calibration_error(half, target) == pytest.approx(abs(0.5 - target.mean()), abs=1e-12)
    assert sm.expected_calibration_error(half, target) == pytest.approx(ece_with_scikit_learn(half, target, 10))
    with pytest.raises(ValueError, match="region is empty"):
        sm.expected_calibration_error(half, target, region=np.zeros(target.shape, bool))


@pytest.mark.parametrize("seed", SEEDS)
def test_uncertainty_auroc_is_scikit_learns_auroc_on_the_errors(seed):
    rng = np.random.default_rng(seed)
    reference = rng.random((5, 10, 10)) > 0.5
    prediction = reference ^ (rng.random(reference.shape) < 0.2)
    uncertainty = (prediction != reference) * 0.5 + rng.random(reference.shape)
    expected = sklearn_metrics.roc_auc_score((prediction != reference).ravel(), uncertainty.ravel())
    assert sm.uncertainty_auroc(uncertainty, prediction, reference) == pytest.approx(expected, abs=1e-12)
    assert np.isnan(sm.uncertainty_auroc(uncertainty, reference, reference))  # no errors: undefined
