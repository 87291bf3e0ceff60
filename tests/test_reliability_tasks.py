"""Task inputs, settings and results (issue 16, items 6 and 8): one shared validation, no silent NaNs."""

from __future__ import annotations

import json

import numpy as np
import pytest

from napari_diffmed.anomaly import anomaly_map
from napari_diffmed.cli import main
from napari_diffmed.ensemble import segment_ensemble
from napari_diffmed.inpainting import inpaint
from napari_diffmed.io import write_nifti
from napari_diffmed.models import ModelCardError, build_network, load_model, save_model
from napari_diffmed.models.checkpoint import LoadedModel
from napari_diffmed.synthesis import synthesize

FAST = dict(steps=2, device="cpu")


def _run(task: str, image, spacing, model, seg_model, **kwargs):
    """Run one of the three image tasks with fast settings."""
    if task == "inpaint":
        mask = kwargs.pop("mask", np.broadcast_to(np.True_, np.shape(image)))
        return inpaint(image, mask, spacing, model=model, proposals=1, steps=4, jump_length=2, resamplings=1,
                       device="cpu", **kwargs)
    if task == "anomaly":
        return anomaly_map(image, spacing, model=model, method="gaussian", level=100, **{**FAST, **kwargs})
    kwargs.pop("mask", None)
    return segment_ensemble(image, spacing, model=seg_model, members=1, **{**FAST, **kwargs})


TASKS = ["inpaint", "anomaly", "ensemble"]
HUGE = np.broadcast_to(np.float32(1.0), (2000, 2000, 2000))  # a lazy view: 32 GB if anything copied it


@pytest.mark.parametrize("task", TASKS)
@pytest.mark.parametrize("case, image, spacing, kwargs, message", [
    ("empty", np.zeros((0, 16, 16), np.float32), None, {}, r"the image is empty \(shape \(0, 16, 16\)\)"),
    ("float_axis", None, None, {"axis": 1.0}, "slicing axis must be 0, 1 or 2 for a 3D image, got 1.0"),
    ("huge_index", None, None, {"indices": [2**63]}, r"slice indices must lie in 0\.\.5"),
    ("tiny_spacing", None, (1e-9, 1.0, 1.0), {}, r"spacing .* 0\.001 to 10000 mm"),
    ("nan_spacing", None, (np.nan, 2.0, 2.0), {}, "spacing .* finite"),
    ("negative_seed", None, None, {"seed": -1}, "seed must be a whole number >= 0"),
    ("string_image", np.full((6, 16, 16), "a"), None, {}, "must hold real numbers"),
    ("huge_lazy", HUGE, None, {"indices": [0]}, r"GiB"),
], ids=lambda v: v if isinstance(v, str) and v.isidentifier() else "")
def test_bad_task_inputs_are_refused_by_name(tiny_image_model, tiny_seg_model, small_volume, task, case, image,
                                             spacing, kwargs, message):
    image = small_volume.image[:, :16, :16] if image is None else image
    with pytest.raises(ValueError, match=message):
        _run(task, image, spacing, tiny_image_model, tiny_seg_model, **kwargs)


@pytest.mark.parametrize("task", ["inpaint", "anomaly"])
def test_a_mask_of_strings_is_refused(tiny_image_model, small_volume, task):
    image = small_volume.image
    with pytest.raises(ValueError, match=r"mask must hold booleans, 0/1 or integer labels, got dtype <U1"):
        _run(task, image, small_volume.spacing, tiny_image_model, None, mask=np.full(image.shape, "x"))


def test_seed_range_is_the_same_for_every_task(tiny_image_model):
    with pytest.raises(ValueError, match="seed must be a whole number >= 0 and below 2\\*\\*63"):
        synthesize(tiny_image_model, n=1, seed=-1, **FAST)
    with pytest.raises(ValueError, match="seed must be a whole number >= 0 and below 2\\*\\*63"):
        synthesize(tiny_image_model, n=1, seed=2**64, **FAST)


def _nan_weights(path, tmp_path):
    import torch

    loaded = load_model(path)
    net = build_network(loaded.card)
    net.load_state_dict(loaded.trained.state_dict())
    with torch.no_grad():
        next(net.parameters()).view(-1)[0] = float("nan")
    card = loaded.card
    card.weights_sha256 = ""
    return save_model(net, card, tmp_path / f"nan_{card.name}")  # the hash matches these weights


def test_weights_holding_nan_are_refused_at_load(tiny_image_model, tmp_path):
    weights = _nan_weights(tiny_image_model, tmp_path)
    with pytest.raises(ModelCardError, match=r"weights of 'tiny_image' hold 1 NaN or infinite values in tensor"):
        load_model(weights)


class _Broken:
    """A network that returns NaN: what overflowing or broken weights give."""

    def __new__(cls, loaded: LoadedModel) -> LoadedModel:
        import torch

        class NaNNet(torch.nn.Module):
            def __init__(self):
                super().__init__()
                self.anchor = torch.nn.Parameter(torch.zeros(1))

            def forward(self, x, timesteps=None, class_labels=None):
                return x[:, :1] * float("nan")

        return LoadedModel(network=NaNNet(), card=loaded.card, path=loaded.path)


@pytest.mark.parametrize("task", ["synthesis", *TASKS])
def test_non_finite_results_fail_with_the_reason(tiny_image_model, tiny_seg_model, small_volume, task):
    from napari_diffmed.validation import NonFiniteResultError

    image_model, seg_model = _Broken(load_model(tiny_image_model)), _Broken(load_model(tiny_seg_model))
    with pytest.raises(NonFiniteResultError, match=r"model tiny_\w+@\w+ produced \d+ NaN or infinite values"):
        if task == "synthesis":
            synthesize(image_model, n=1, seed=0, **FAST)
        else:
            _run(task, small_volume.image, small_volume.spacing, image_model, seg_model)


def test_nan_threshold_on_the_command_line_is_refused(tmp_path, tiny_image_model, small_volume, capsys):
    scan = write_nifti(tmp_path / "scan.nii.gz", small_volume.image, scale=small_volume.spacing)
    code = main(["anomaly", str(scan), "--out", str(tmp_path / "out"), "--model", str(tiny_image_model),
                 "--threshold", "nan", "--steps", "2", "--device", "cpu"])
    assert code == 2 and "--threshold must be a finite number" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_nan_threshold_in_the_api_is_refused(tiny_image_model, small_volume):
    result = anomaly_map(small_volume.image, small_volume.spacing, model=tiny_image_model, method="gaussian",
                         level=100, **FAST)
    with pytest.raises(ValueError, match="threshold must be a finite number"):
        result.labels(float("nan"))
    assert json.dumps(result.provenance, default=str)
