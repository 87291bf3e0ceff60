"""Model cards + safetensors: round trips, tampering and bad files refused clearly, the registry."""

from __future__ import annotations

import json
import os
import pickle
import shutil
from pathlib import Path

import pytest

from napari_diffmed.models import (
    ModelCard, ModelCardError, build_network, default_model, get_model, list_models, load_model, resolve, save_model,
)
from napari_diffmed.models.card import sha256_file
from napari_diffmed.models.registry import SHIPPED_DIR


def copy_model(weights: Path, folder: Path, name: str | None = None) -> Path:
    """Copy a weights + card pair into ``folder`` (optionally renamed); returns the new weights path."""
    folder.mkdir(parents=True, exist_ok=True)
    target = folder / f"{name or weights.stem}.safetensors"
    shutil.copy(weights, target)
    shutil.copy(weights.with_suffix(".json"), target.with_suffix(".json"))
    return target


def edit_card(weights: Path, edit) -> None:
    card_file = weights.with_suffix(".json")
    data = json.loads(card_file.read_text())
    edit(data)
    card_file.write_text(json.dumps(data))


def test_round_trip_gives_the_same_outputs(tiny_image_model, tmp_path):
    import torch

    card = ModelCard.read(tiny_image_model.with_suffix(".json"))
    card.name, card.weights_sha256 = "round_trip", ""
    torch.manual_seed(1)
    net = build_network(card).eval()
    x, t, y = torch.randn(2, 1, 16, 16), torch.tensor([10, 700]), torch.tensor([0, 2])
    with torch.no_grad():
        expected = net(x, timesteps=t, class_labels=y)
    weights = save_model(net, card, tmp_path / "round_trip")
    assert weights.name == "round_trip.safetensors" and weights.with_suffix(".json").exists()
    for handle in (weights, weights.with_suffix(".json"), tmp_path / "round_trip"):
        loaded = load_model(handle)
        assert loaded.card == ModelCard.read(weights.with_suffix(".json"))
        assert loaded.card.weights_sha256 == sha256_file(weights)
        assert loaded.model_id == f"round_trip@{sha256_file(weights)[:12]}"
        assert not loaded.network.training
        with torch.no_grad():
            assert torch.equal(loaded.network(x, timesteps=t, class_labels=y), expected)
    with pytest.raises(FileExistsError, match="overwrite=True"):
        save_model(net, card, weights)
    assert save_model(net, card, weights, overwrite=True) == weights


def test_tampered_weights_are_refused_naming_the_hash(tiny_image_model, tmp_path):
    weights = copy_model(tiny_image_model, tmp_path)
    raw = bytearray(weights.read_bytes())
    raw[-1] ^= 0x01  # one bit in the last tensor's data
    weights.write_bytes(bytes(raw))
    with pytest.raises(ModelCardError, match=r"sha256 of tiny_image.safetensors is .* but its card says"):
        load_model(weights)


@pytest.mark.parametrize("edit, message", [
    (lambda d: d["network"].update(channels=[8, 32]), r"tensor '.+' has shape \(.*\) but the card's network expects"),
    (lambda d: (d.update(in_channels=2), d["network"].update(in_channels=2)), r"tensor 'conv_in\.conv\.weight'"),
    (lambda d: d.update(in_channels=2), r"in_channels=1\) disagree with the card \(.*in_channels=2\)"),
    (lambda d: d["network"].update(num_res_blocks=2), r"missing \['.*'"),
    (lambda d: d.update(image_size=[16, 16, 16]), r"image_size \[16, 16, 16\] does not have 2 entries"),
    (lambda d: d.update(architecture="VQVAE"), r"architecture 'VQVAE' is not allowed; allowed: \('DiffusionModelUNet',\)"),
    (lambda d: d.update(weights_url="https://example.org/x"), r"unknown fields \['weights_url'\]"),
    (lambda d: d.pop("task"), r"missing .*'task'"),
    (lambda d: d["scheduler"].update(name="EulerScheduler"), r"scheduler 'EulerScheduler' is not one of"),
    (lambda d: d["network"].update(num_class_embeds=5), r"num_class_embeds = 3"),
])
def test_tampered_or_wrong_cards_are_refused_naming_the_field(tiny_image_model, tmp_path, edit, message):
    weights = copy_model(tiny_image_model, tmp_path)
    edit_card(weights, edit)
    with pytest.raises(ModelCardError, match=message):
        load_model(weights)


@pytest.mark.parametrize("text, message", [
    ('{"name": "tiny_image", ', "cannot read model card"),
    ("[1, 2, 3]", "is not a JSON object"),
])
def test_card_that_is_not_a_json_object(tiny_image_model, tmp_path, text, message):
    weights = copy_model(tiny_image_model, tmp_path)
    weights.with_suffix(".json").write_text(text)
    with pytest.raises(ModelCardError, match=message):
        load_model(weights)


def test_missing_weights_or_card(tiny_image_model, tmp_path):
    weights = copy_model(tiny_image_model, tmp_path)
    weights.with_suffix(".json").unlink()
    with pytest.raises(ModelCardError, match="cannot read model card .*tiny_image.json"):
        load_model(weights)
    weights.unlink()
    with pytest.raises(FileNotFoundError, match="no weights file .*tiny_image.safetensors"):
        load_model(weights)


class _Payload:
    """Pickled, it creates a file when unpickled: what a malicious checkpoint would do."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


def test_pickle_renamed_safetensors_is_refused_without_running_it(tiny_image_model, tmp_path):
    armed = pickle.dumps({"conv_in.conv.weight": _Payload(tmp_path / "pwned")})
    pickle.loads(pickle.dumps(_Payload(tmp_path / "proof")))
    assert (tmp_path / "proof").exists()  # the payload is live when unpickled
    weights = copy_model(tiny_image_model, tmp_path)
    weights.write_bytes(armed)
    edit_card(weights, lambda d: d.update(weights_sha256=sha256_file(weights)))  # even with a matching hash
    with pytest.raises(ModelCardError, match="not a readable safetensors file"):
        load_model(weights)
    assert not (tmp_path / "pwned").exists()


def test_class_index(tiny_image_model):
    card = ModelCard.read(tiny_image_model.with_suffix(".json"))
    assert card.conditional and card.class_index("lesion") == 1 and card.class_index(0) == 0
    assert card.class_index(None) == card.null_class == 2
    with pytest.raises(ValueError, match=r"class 'tumour' is not one of .* \['healthy', 'lesion'\]"):
        card.class_index("tumour")
    with pytest.raises(ValueError, match="class 2 is not one of"):
        card.class_index(2)  # the null class is not a class a user can ask for


def test_unconditional_card_refuses_a_class(tiny_seg_model):
    card = ModelCard.read(tiny_seg_model.with_suffix(".json"))
    assert not card.conditional and card.class_index(None) is None
    with pytest.raises(ValueError, match="'tiny_seg' is not class-conditional"):
        card.class_index("lesion")


@pytest.fixture
def user_models(tiny_image_model, tiny_seg_model, tmp_path, monkeypatch):
    """Two user folders on $NAPARI_DIFFMED_MODELS, with a broken card and a training resume file."""
    first, second = tmp_path / "first", tmp_path / "second"
    image = copy_model(tiny_image_model, first)
    seg = copy_model(tiny_seg_model, second)
    (first / "broken.json").write_text("{")
    (first / "broken.safetensors").write_bytes(b"junk")
    copy_model(tiny_image_model, second, name="tiny_image.resume")
    (second / "no_weights.json").write_text(image.with_suffix(".json").read_text())
    monkeypatch.setenv("NAPARI_DIFFMED_MODELS", f"{first}{os.pathsep}{second}")
    return image, seg


def _shipped() -> set[str]:
    return {p.stem for p in SHIPPED_DIR.glob("*.json") if p.with_suffix(".safetensors").exists()}


def test_registry_lists_shipped_and_user_models(user_models):
    image, seg = user_models
    entries = {e.name: e for e in list_models()}
    assert set(entries) == _shipped() | {"tiny_image", "tiny_seg"}  # broken/resume/weightless skipped
    assert entries["tiny_image"].source == "user" and entries["tiny_image"].path == image
    assert all(entries[name].source == "shipped" for name in _shipped())
    assert {e.name for e in list_models(task="segmentation", spatial_dims=2)} >= {"tiny_seg"}
    assert all(e.card.task == "segmentation" for e in list_models(task="segmentation"))
    assert not {"tiny_image", "tiny_seg"} & {e.name for e in list_models(spatial_dims=3)}


def test_a_user_model_named_like_an_earlier_one_is_hidden_with_a_warning(user_models, tmp_path, monkeypatch):
    image, _ = user_models
    clash = copy_model(image, tmp_path / "third")
    monkeypatch.setenv("NAPARI_DIFFMED_MODELS", f"{os.environ['NAPARI_DIFFMED_MODELS']}{os.pathsep}{tmp_path / 'third'}")
    with pytest.warns(UserWarning, match=f"'tiny_image' at {clash} is hidden by the user model of that name at {image}"):
        assert resolve("tiny_image") == image
    assert resolve(clash) == clash  # still usable by its path


def test_registry_resolves_names_and_paths(user_models, tmp_path):
    image, seg = user_models
    assert resolve("tiny_seg") == seg
    assert resolve(str(image)) == image and resolve(image.with_suffix(".json")) == image
    with pytest.raises(ValueError, match=r"unknown model 'tiny_imag'; known models: .*'tiny_image'"):
        resolve("tiny_imag")
    with pytest.raises(FileNotFoundError, match="no weights at .*elsewhere.safetensors"):
        resolve(tmp_path / "elsewhere.json")


def test_get_model_checks_the_task_and_caches(user_models):
    loaded = get_model("tiny_image", task="image")
    assert loaded.card.name == "tiny_image" and get_model("tiny_image") is loaded
    with pytest.raises(ValueError, match=r"'tiny_seg' is a segmentation model; this task needs an image model.*'tiny_image'"):
        get_model("tiny_seg", task="image")


def test_default_models():
    assert default_model("image", 2) == "mni_t1_axial_64"
    assert default_model("image", 2, "synthesis") == "mni_t1_axial_64_v"  # the sharper v model samples
    assert default_model("image", 2, "an anomaly map") == "mni_t1_axial_64"
    assert default_model("segmentation", 2) == "mni_wm_seg_96"
    with pytest.raises(ValueError, match="no shipped default for a 3D segmentation model"):
        default_model("segmentation", 3)


@pytest.mark.parametrize("name", sorted(_shipped()) or [pytest.param(None, marks=pytest.mark.skip("no shipped models yet"))])
def test_shipped_models_load_and_say_how_they_were_made(name):
    loaded = load_model(SHIPPED_DIR / f"{name}.safetensors")
    card = loaded.card
    assert card.name == name and card.training.get("command") and card.training.get("data")


def test_re_evaluating_some_parts_keeps_the_other_figures_of_the_same_weights(tiny_image_model, tmp_path):
    """`evaluate NAME --parts anomaly --write` replaces the anomaly figures only; figures of other weights go."""
    from napari_diffmed.models.card import ModelCard, sha256_file
    from napari_diffmed.evaluation.cards import write_card_metrics

    weights = Path(shutil.copy(tiny_image_model, tmp_path / "tiny_image.safetensors"))
    shutil.copy(Path(tiny_image_model).with_suffix(".json"), tmp_path / "tiny_image.json")
    sha = sha256_file(weights)
    full = {"synthesis": {"nn_ssim_median": 0.5}, "anomaly": {"auroc": 0.8},
            "evaluation": {"weights_sha256": sha, "seconds": {"synthesis": 9.0, "anomaly": 3.0},
                           "dates": {"synthesis": "d1", "anomaly": "d1"}, "date": "d1"}}
    write_card_metrics(weights, full)
    write_card_metrics(weights, {"anomaly": {"auroc": 0.9}, "evaluation": {
        "weights_sha256": sha, "seconds": {"anomaly": 4.0}, "dates": {"anomaly": "d2"}, "date": "d2"}})
    metrics = ModelCard.read(weights.with_suffix(".json")).metrics
    assert metrics["synthesis"] == {"nn_ssim_median": 0.5} and metrics["anomaly"] == {"auroc": 0.9}
    assert metrics["evaluation"]["seconds"] == {"synthesis": 9.0, "anomaly": 4.0}
    assert metrics["evaluation"]["dates"] == {"synthesis": "d1", "anomaly": "d2"}

    card = ModelCard.read(weights.with_suffix(".json"))  # figures recorded for other weights are dropped
    card.metrics["evaluation"]["weights_sha256"] = "0" * 64
    weights.with_suffix(".json").write_text(card.to_json())
    write_card_metrics(weights, {"anomaly": {"auroc": 0.7}, "evaluation": {"weights_sha256": sha, "seconds": {}}})
    metrics = ModelCard.read(weights.with_suffix(".json")).metrics
    assert "synthesis" not in metrics and metrics["anomaly"] == {"auroc": 0.7}
