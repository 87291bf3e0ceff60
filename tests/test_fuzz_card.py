"""Property-based fuzzing of the model card loader: a clear error or a valid card, within memory and time limits.

Valid cards (the tiny conditional image model's and the segmentation model's) get random JSON values
at random places, lose fields, gain unknown ones, or have their text cut and bracketed. Whatever
comes out, :meth:`ModelCard.read` must either raise :class:`ModelCardError` naming the file, or
return a card whose network builds (on torch's ``meta`` device: no memory) within the memory
limit and whose scheduler builds, each read staying under a second; the registry lists the rest.
"""

from __future__ import annotations

import json
import tempfile
import time
import warnings
from pathlib import Path

import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from napari_diffmed.models import ModelCard, ModelCardError, build_network, build_scheduler
from napari_diffmed.models.schema import model_byte_limit, network_bytes

pytestmark = pytest.mark.fuzz
NET = dict(channels=[8, 16], attention_levels=[False, True], num_res_blocks=1, norm_num_groups=8,
           num_head_channels=8)
BASES = [
    dict(name="img", task="image", spatial_dims=2, image_size=[16, 16], spacing=[4.0, 4.0],
         network=dict(spatial_dims=2, in_channels=1, out_channels=1, num_class_embeds=3, **NET),
         scheduler={"name": "DDPMScheduler", "num_train_timesteps": 1000, "schedule": "linear_beta"},
         class_names=["healthy", "lesion"], null_class=2, metrics={"anomaly": {"threshold": 0.1}}),
    dict(name="seg", task="segmentation", spatial_dims=2, image_size=[16, 16], spacing=[4.0, 4.0],
         network=dict(spatial_dims=2, in_channels=2, out_channels=1, **NET), condition_channels=1,
         scheduler={"name": "DDIMScheduler", "num_train_timesteps": 1000, "prediction_type": "sample"}),
]
SCALARS = st.one_of(st.none(), st.booleans(), st.integers(-(2**70), 2**70), st.integers(-4, 300),
                    st.floats(allow_nan=True, allow_infinity=True), st.text(max_size=12),
                    st.sampled_from(["DDPMScheduler", "cosine", "sample", "image", "axial", "v_prediction"]))
VALUES = st.recursive(SCALARS, lambda inner: st.one_of(st.lists(inner, max_size=4),
                                                       st.dictionaries(st.text(max_size=8), inner, max_size=4)),
                      max_leaves=12)
SIZES = st.lists(st.sampled_from([4, 8, 12, 16, 24, 32]), min_size=2, max_size=3)
PLAUSIBLE = {  # values near the valid ones, so that many mutated cards are still valid and get checked
    "image_size": SIZES, "spacing": st.lists(st.floats(1e-3, 50), min_size=2, max_size=3),
    "spatial_dims": st.sampled_from([2, 3]), "in_channels": st.integers(1, 3), "out_channels": st.integers(1, 2),
    "channels": st.lists(st.sampled_from([8, 16, 24, 32, 64]), min_size=1, max_size=3),
    "attention_levels": st.lists(st.booleans(), min_size=1, max_size=3), "num_res_blocks": st.integers(1, 3),
    "norm_num_groups": st.sampled_from([1, 2, 4, 8, 16]), "num_head_channels": st.sampled_from([4, 8, 16, 32]),
    "num_class_embeds": st.sampled_from([None, 2, 3]), "null_class": st.sampled_from([None, 0, 2, 3]),
    "class_names": st.sampled_from([[], ["healthy"], ["healthy", "lesion"], ["a", "a"]]),
    "num_train_timesteps": st.sampled_from([2, 10, 1000, 50_000]),
    "schedule": st.sampled_from(["linear_beta", "scaled_linear_beta", "sigmoid_beta", "cosine"]),
    "beta_start": st.floats(1e-6, 0.9), "beta_end": st.floats(1e-6, 0.9),
    "prediction_type": st.sampled_from(["epsilon", "sample", "v_prediction"]),
    "name": st.sampled_from(["DDPMScheduler", "DDIMScheduler", "PNDMScheduler", "x"]),
    "condition_channels": st.integers(0, 2), "steps_offset": st.integers(0, 3),
}
KEYS = ["name", "task", "spatial_dims", "image_size", "spacing", "network", "scheduler", "in_channels",
        "out_channels", "condition_channels", "class_names", "null_class", "normalisation", "slice_axis",
        "training", "metrics", "weights_sha256", "card_version", "architecture", "extra"]
NET_KEYS = ["spatial_dims", "in_channels", "out_channels", "channels", "attention_levels", "num_res_blocks",
            "norm_num_groups", "num_head_channels", "num_class_embeds", "norm_eps", "resblock_updown",
            "use_flash_attention", "with_conditioning", "transformer_num_layers", "dropout"]
SCHED_KEYS = ["name", "num_train_timesteps", "schedule", "beta_start", "beta_end", "prediction_type",
              "clip_sample", "variance_type", "steps_offset", "set_alpha_to_one", "s", "sig_range"]


@st.composite
def card_texts(draw) -> str:
    card = json.loads(json.dumps(draw(st.sampled_from(BASES))))
    for _ in range(draw(st.integers(1, 4))):
        where = draw(st.sampled_from(["card", "network", "scheduler"]))
        target, keys = {"card": (card, KEYS), "network": (card.get("network"), NET_KEYS),
                        "scheduler": (card.get("scheduler"), SCHED_KEYS)}[where]
        if not isinstance(target, dict):
            continue
        key = draw(st.sampled_from(keys))
        if draw(st.integers(0, 4)) == 0:
            target.pop(key, None)
        else:
            plausible = PLAUSIBLE.get(key if not (key == "name" and where == "card") else "")
            target[key] = draw(plausible if plausible is not None and draw(st.booleans()) else VALUES)
    text = json.dumps(card)
    mangle = draw(st.sampled_from(["none", "none", "none", "cut", "nest"]))
    if mangle == "cut":
        text = text[: draw(st.integers(0, len(text)))]
    elif mangle == "nest":
        depth = draw(st.integers(1, 5000))
        text = text[:-1] + ', "metrics": ' + "[" * depth + "]" * depth + "}"
    return text


def _card_is_valid(card: ModelCard) -> None:
    import torch

    params, acts = network_bytes(card.network, card.image_size)
    assert params + acts <= model_byte_limit()
    with torch.device("meta"):
        net = build_network(card)  # the network the card describes can be built
    assert sum(p.numel() for p in net.parameters()) * 4 < 2 * params + 2**20
    scheduler = build_scheduler(card)
    assert len(scheduler.alphas_cumprod) == card.scheduler.get("num_train_timesteps", 1000)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(card_texts())
def test_card_loader_gives_a_clear_error_or_a_valid_card(text):
    from napari_diffmed.models import list_models

    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "fuzz.json"
        path.write_text(text)
        (Path(folder) / "fuzz.safetensors").write_bytes(b"")
        start = time.perf_counter()
        try:
            card = ModelCard.read(path)
        except ModelCardError as err:
            assert str(path) in str(err), err
            card = None
        assert time.perf_counter() - start < 1.0
        event("accepted" if card is not None else "refused")
        if card is not None:
            _card_is_valid(card)
        with pytest.MonkeyPatch.context() as mp, warnings.catch_warnings():
            warnings.simplefilter("ignore")
            mp.setenv("NAPARI_DIFFMED_MODELS", folder)
            names = {e.name for e in list_models()}
        assert (card is not None and card.name in names) or "mni_wm_seg_96" in names
