"""Hostile and broken model cards (issue 16, items 1, 2 and the model cache of 9)."""

from __future__ import annotations

import inspect
import json
import os
import shutil
from pathlib import Path

import pytest

from napari_diffmed.cli import main
from napari_diffmed.models import ModelCard, ModelCardError, build_network, get_model, list_models, save_model
from napari_diffmed.models.card import sha256_file
from napari_diffmed.models.registry import SHIPPED_DIR


def _card_file(tiny_image_model: Path, folder: Path, edit, name: str = "tiny_image") -> Path:
    """A copy of the tiny model's weights and card in ``folder`` with ``edit(dict)`` applied to the card."""
    folder.mkdir(parents=True, exist_ok=True)
    shutil.copy(tiny_image_model, folder / f"{name}.safetensors")
    data = json.loads(tiny_image_model.with_suffix(".json").read_text())
    edit(data)
    card = folder / f"{name}.json"
    card.write_text(data if isinstance(data, str) else json.dumps(data))
    return card


def _nested(depth: int) -> str:
    return "[" * depth + "]" * depth


HOSTILE = [
    (lambda d: d["scheduler"].update(num_train_timesteps=10**9), r"scheduler\.num_train_timesteps must be"),
    (lambda d: d["network"].update(channels=[4096, 4096, 4096, 4096], attention_levels=[False] * 4,
                                   norm_num_groups=8), r"network\.channels asks for about .* GiB"),
    (lambda d: d.update(image_size=[65536, 65536]), r"image_size asks for about .* GiB"),
    (lambda d: d.update(image_size=[100000, 100000]), r"image_size\[0\] must be a whole number from 1 to 65536"),
    (lambda d: d.update(scheduler="DDPMScheduler"), r"scheduler must be a JSON object"),
    (lambda d: d.update(null_class=7), r"null_class must be 2"),
    (lambda d: d.update(image_size=[-16, 16]), r"image_size\[0\] must be a whole number"),
    (lambda d: d["network"].update(channels=[-8, 16]), r"network\.channels\[0\] must be a whole number"),
    (lambda d: d["scheduler"].update(betas="cosine"), r"scheduler has unknown keys \['betas'\]"),
    (lambda d: d.update(spacing=[0.0, 4.0]), r"spacing\[0\] must be a finite number"),
    (lambda d: d.update(spacing=[float("nan"), 4.0]), r"spacing\[0\] must be a finite number"),
    (lambda d: d["network"].update(num_res_blocks="two"), r"network\.num_res_blocks must be a whole number"),
    (lambda d: d["network"].update(dropout=0.5), r"network has unknown keys \['dropout'\]"),
    (lambda d: d.update(class_names="healthy"), r"class_names must be a list"),
    (lambda d: d.update(normalisation={"method": "zscore"}), r"normalisation\.method 'zscore'"),
    (lambda d: d.update(normalisation={"lower": 99, "upper": 1}), r"normalisation\.lower must be below"),
    (lambda d: d.update(metrics={"a": json.loads(_nested(20))}), r"metrics is nested more than 12 levels"),
    (lambda d: d.update(spatial_dims=True), r"spatial_dims must be 2 or 3"),
    (lambda d: d.update(image_size=[15, 16]), r"image_size \[15, 16\] must be divisible by 2"),
    (lambda d: d.update(weights_sha256="../../etc/passwd"), r"weights_sha256 must be 64 hexadecimal digits"),
]


@pytest.mark.parametrize("edit, message", HOSTILE)
def test_hostile_card_fields_are_refused_at_load_naming_the_field(tiny_image_model, tmp_path, edit, message):
    card = _card_file(tiny_image_model, tmp_path, edit)
    with pytest.raises(ModelCardError, match=message) as info:
        ModelCard.read(card)
    assert str(card) in str(info.value)  # and the file


@pytest.mark.parametrize("text, message", [
    (_nested(100_000), "nested more than 32 levels"),  # json.loads would hit a RecursionError
    ('{"name": ' + "9" * 5000 + "}", "cannot read model card"),  # longer than int() reads
    (b"\xff\xfe{}", "cannot read model card"),
], ids=["nested", "long_number", "not_utf8"])
def test_unreadable_card_text_is_a_card_error(tiny_image_model, tmp_path, text, message):
    card = _card_file(tiny_image_model, tmp_path, lambda d: None)
    card.write_bytes(text if isinstance(text, bytes) else text.encode())
    with pytest.raises(ModelCardError, match=message):
        ModelCard.read(card)


def test_memory_estimate_is_near_the_real_network_size():
    from napari_diffmed.models.schema import network_bytes

    for path in sorted(SHIPPED_DIR.glob("*.json")):
        card = ModelCard.read(path)
        real = 4 * sum(p.numel() for p in build_network(card).parameters())
        estimate, _ = network_bytes(card.network, card.image_size)
        assert 0.5 * real < estimate < 2 * real, path.name


def test_memory_limit_is_configurable(tiny_image_model, tmp_path, monkeypatch):
    card = _card_file(tiny_image_model, tmp_path, lambda d: None)
    monkeypatch.setenv("NAPARI_DIFFMED_MAX_MODEL_BYTES", "1000")
    with pytest.raises(ModelCardError, match=r"more than the limit of .*NAPARI_DIFFMED_MAX_MODEL_BYTES"):
        ModelCard.read(card)


def test_scheduler_keys_are_monais():
    from monai.networks import schedulers

    from napari_diffmed.models.schema import NOISE_SCHEDULES, SCHEDULER_KEYS

    for name, keys in SCHEDULER_KEYS.items():
        accepted = set(inspect.signature(getattr(schedulers, name).__init__).parameters)
        assert keys - {"name", "prediction_type"} <= accepted, name
    for schedule, keys in NOISE_SCHEDULES.items():
        accepted = set(inspect.signature(getattr(schedulers.NoiseSchedules, schedule)).parameters)
        assert keys <= accepted, schedule


def test_free_form_fields_stay_free_but_bounded(tiny_image_model, tmp_path):
    anomaly = {"threshold": 0.12, "calibration": {"curve": [[0.1, 0.2], [0.3, 0.4]], "note": None}}
    card = ModelCard.read(_card_file(tiny_image_model, tmp_path, lambda d: d["metrics"].update(anomaly=anomaly)))
    assert card.metrics["anomaly"] == anomaly


BROKEN_USER_CARDS = {
    "truncated": "{",
    "scheduler_string": lambda d: d.update(scheduler="DDPMScheduler"),
    "nested": _nested(50_000),
    "huge": lambda d: d["scheduler"].update(num_train_timesteps=10**9),
    "negative": lambda d: d.update(image_size=[-16, 16]),
}


@pytest.fixture
def broken_user_folder(tiny_image_model, tmp_path, monkeypatch):
    folder = tmp_path / "user"
    for name, edit in BROKEN_USER_CARDS.items():
        if isinstance(edit, str):
            card = _card_file(tiny_image_model, folder, lambda d: None, name)
            card.write_text(edit)
        else:
            _card_file(tiny_image_model, folder, lambda d, edit=edit: (edit(d), d.update(name=name)), name)
    _card_file(tiny_image_model, folder, lambda d: d.update(name="good"), "good")
    monkeypatch.setenv("NAPARI_DIFFMED_MODELS", str(folder))
    return folder


def test_a_broken_user_card_is_skipped_with_a_warning_naming_it(broken_user_folder):
    with pytest.warns(UserWarning) as caught:
        names = {e.name for e in list_models()}
    assert "good" in names and not names & set(BROKEN_USER_CARDS)
    warned = " ".join(str(w.message) for w in caught)
    for name in BROKEN_USER_CARDS:
        assert str(broken_user_folder / f"{name}.json") in warned
    with pytest.warns(UserWarning):
        assert get_model("mni_wm_seg_96").card.name == "mni_wm_seg_96"  # shipped models still load


def test_models_command_lists_the_rest(broken_user_folder, capsys):
    assert main(["models"]) == 0
    out, err = capsys.readouterr()
    assert "good" in out and "mni_wm_seg_96" in out
    assert all(f"{name}.json" in err for name in BROKEN_USER_CARDS)
    assert "Traceback" not in err


def test_model_cache_serves_changed_weights_even_with_the_old_time_stamp(tiny_image_model, tmp_path):
    import torch

    folder = tmp_path / "cache"
    weights = _card_file(tiny_image_model, folder, lambda d: None).with_suffix(".safetensors")
    first = get_model(weights)
    stamp = os.stat(weights)
    changed = build_network(first.card)
    with torch.no_grad():
        for param in changed.parameters():
            param.fill_(0.25)
    card = ModelCard.read(weights.with_suffix(".json"))
    save_model(changed, card, weights, overwrite=True)
    os.utime(weights, ns=(stamp.st_atime_ns, stamp.st_mtime_ns))  # the time stamp put back
    os.utime(weights.with_suffix(".json"), ns=(stamp.st_atime_ns, stamp.st_mtime_ns))
    second = get_model(weights)
    assert second is not first and second.card.weights_sha256 == sha256_file(weights)
    assert all(bool((p == 0.25).all()) for p in second.network.parameters())
