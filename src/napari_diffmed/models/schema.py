"""The model card's schema: types, ranges and known keys of every field, and a memory estimate.

A card is user input: its sha256 covers the weights, not the card. Everything a run would
allocate from it (network, scheduler tables, one batch) is bounded here, before torch is
imported, and a refusal names the field (``network.channels``, ``scheduler.num_train_timesteps``).
No torch or MONAI import: the napari menu lists cards without them.
"""

from __future__ import annotations

import math
import os
import re
from typing import Any

import numpy as np

from ..schedulers import SCHEDULERS

MAX_CARD_BYTES = 4 * 2**20  # the JSON text
MAX_JSON_DEPTH = 32  # nesting of the whole card, checked before json.loads recurses
MAX_FREE_DEPTH = 12  # nesting inside free-form fields (training, metrics, domain)
MAX_TIMESTEPS = 100_000
MODEL_BYTES_ENV = "NAPARI_DIFFMED_MAX_MODEL_BYTES"
DEFAULT_MODEL_BYTES = 8 * 2**30
SLICE_AXES = (None, "axial", "coronal", "sagittal")
NORMALISATIONS = ("percentile",)
NOISE_SCHEDULES = {"linear_beta": {"beta_start", "beta_end"}, "scaled_linear_beta": {"beta_start", "beta_end"},
                   "sigmoid_beta": {"beta_start", "beta_end", "sig_range"}, "cosine": {"s"}}
SCHEDULER_KEYS = {kind.monai: kind.keys for kind in SCHEDULERS.values()}  # the card keys MONAI accepts
NETWORK_KEYS = {"spatial_dims", "in_channels", "out_channels", "num_res_blocks", "channels", "attention_levels",
                "norm_num_groups", "norm_eps", "resblock_updown", "num_head_channels", "with_conditioning",
                "transformer_num_layers", "cross_attention_dim", "num_class_embeds", "upcast_attention",
                "dropout_cattn", "include_fc", "use_combined_linear", "use_flash_attention"}


class SchemaError(ValueError):
    """One field of a card is wrong; the message starts with the field's name."""


def json_depth(text: str) -> int:
    """Deepest nesting of ``[`` and ``{`` in JSON text, not counting brackets inside strings."""
    bare = re.sub(r'"(?:[^"\\]|\\.)*"', '""', text)
    steps = np.frombuffer(bare.encode("utf-8", "replace"), dtype=np.uint8)
    delta = np.isin(steps, (91, 123)).astype(np.int32) - np.isin(steps, (93, 125)).astype(np.int32)
    return int(np.cumsum(delta).max(initial=0))


def _fail(field: str, problem: str) -> None:
    raise SchemaError(f"{field} {problem}")


def whole(field: str, value: Any, low: int, high: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        _fail(field, f"must be a whole number from {low} to {high}, got {value!r}")
    return value


def number(field: str, value: Any, low: float, high: float, open_low: bool = False) -> float:
    ok = not isinstance(value, bool) and isinstance(value, (int, float)) and math.isfinite(value)
    if not ok or not (low < value if open_low else low <= value) or value > high:
        _fail(field, f"must be a finite number from {low:g}{' (excluded)' if open_low else ''} to {high:g}, "
                     f"got {value!r}")
    return float(value)


def flag(field: str, value: Any) -> None:
    if not isinstance(value, bool):
        _fail(field, f"must be true or false, got {value!r}")


def text(field: str, value: Any, longest: int = 10_000, allow_none: bool = False) -> None:
    if (value is None and allow_none) or (isinstance(value, str) and len(value) <= longest):
        return
    _fail(field, f"must be a string of at most {longest} characters, got {_short(value)}")


def whole_list(field: str, value: Any, low: int, high: int, length: int | None = None) -> list[int]:
    if not isinstance(value, list) or not value or len(value) > 16 or (length is not None and len(value) != length):
        want = f"{length} entries" if length is not None else "1 to 16 entries"
        _fail(field, f"must be a list of {want}, got {_short(value)}")
    return [whole(f"{field}[{i}]", v, low, high) for i, v in enumerate(value)]


def free_form(field: str, value: Any) -> None:
    """A JSON object of any content, nested at most :data:`MAX_FREE_DEPTH` deep."""
    if not isinstance(value, dict):
        _fail(field, f"must be a JSON object, got {_short(value)}")
    stack = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if depth > MAX_FREE_DEPTH:
            _fail(field, f"is nested more than {MAX_FREE_DEPTH} levels deep")
        if isinstance(item, dict):
            if not all(isinstance(k, str) for k in item):
                _fail(field, "must have string keys")
            stack.extend((v, depth + 1) for v in item.values())
        elif isinstance(item, list):
            stack.extend((v, depth + 1) for v in item)
        elif not (item is None or isinstance(item, (str, int, float, bool))):
            _fail(field, f"holds a {type(item).__name__}, which is not JSON")


def _short(value: Any) -> str:
    shown = repr(value)
    return shown if len(shown) <= 60 else shown[:57] + "..."


def check_network(net: Any) -> None:
    """Types and ranges of ``network`` (MONAI ``DiffusionModelUNet`` keyword arguments)."""
    if not isinstance(net, dict):
        _fail("network", f"must be a JSON object of DiffusionModelUNet arguments, got {_short(net)}")
    unknown = sorted(set(net) - NETWORK_KEYS)
    if unknown:
        _fail("network", f"has unknown keys {unknown}; known: {sorted(NETWORK_KEYS)}")
    for key in ("spatial_dims", "in_channels", "out_channels", "channels", "attention_levels"):
        if key not in net:
            _fail(f"network.{key}", "is missing")
    whole("network.spatial_dims", net["spatial_dims"], 2, 3)
    whole("network.in_channels", net["in_channels"], 1, 64)
    whole("network.out_channels", net["out_channels"], 1, 64)
    channels = whole_list("network.channels", net["channels"], 1, 4096)
    levels = len(channels)
    attention = net["attention_levels"]
    if not isinstance(attention, list) or len(attention) != levels:
        _fail("network.attention_levels", f"must be a list of {levels} true/false (one per channel level), "
                                          f"got {_short(attention)}")
    for i, a in enumerate(attention):
        flag(f"network.attention_levels[{i}]", a)
    blocks = net.get("num_res_blocks", [2, 2, 2, 2])  # MONAI's default: one per level of its 4 levels
    if isinstance(blocks, list):
        whole_list("network.num_res_blocks", blocks, 1, 16, levels)
    else:
        whole("network.num_res_blocks", blocks, 1, 16)
    groups = whole("network.norm_num_groups", net.get("norm_num_groups", 32), 1, 4096)
    if any(c % groups for c in channels):
        _fail("network.channels", f"{channels} must all be multiples of network.norm_num_groups = {groups}")
    heads = net.get("num_head_channels", 8)
    heads = whole_list("network.num_head_channels", heads, 1, 4096, levels) if isinstance(heads, list) \
        else [whole("network.num_head_channels", heads, 1, 4096)] * levels
    for c, a, h in zip(channels, attention, heads):
        if a and c % h:
            _fail("network.num_head_channels", f"{h} must divide the channels {c} of each attention level")
    number("network.norm_eps", net.get("norm_eps", 1e-6), 0.0, 1.0, open_low=True)
    number("network.dropout_cattn", net.get("dropout_cattn", 0.0), 0.0, 1.0)
    whole("network.transformer_num_layers", net.get("transformer_num_layers", 1), 1, 16)
    for key in ("resblock_updown", "upcast_attention", "include_fc", "use_combined_linear", "use_flash_attention"):
        if key in net:
            flag(f"network.{key}", net[key])
    if net.get("with_conditioning", False) is not False or net.get("cross_attention_dim") is not None:
        _fail("network.with_conditioning", "and cross_attention_dim are not supported: the tasks give no "
                                           "cross-attention context")
    if net.get("num_class_embeds") is not None:
        whole("network.num_class_embeds", net["num_class_embeds"], 1, 10_000)


def check_scheduler(sched: Any, prediction_types: tuple[str, ...]) -> None:
    """Types, ranges and known keys of ``scheduler`` (``{"name": ..., **MONAI kwargs}``)."""
    if not isinstance(sched, dict):
        _fail("scheduler", f"must be a JSON object with a name, got {_short(sched)}")
    name = sched.get("name")
    if not isinstance(name, str) or name not in SCHEDULER_KEYS:
        _fail("scheduler", f"{name!r} is not one of {tuple(SCHEDULER_KEYS)}")
    unknown = sorted(set(sched) - SCHEDULER_KEYS[name] - NOISE_SCHEDULES.get(sched.get("schedule"), set()))
    if unknown:
        _fail("scheduler", f"has unknown keys {unknown} for {name}; known: {sorted(SCHEDULER_KEYS[name])} and "
                           "the keys of its noise schedule")
    whole("scheduler.num_train_timesteps", sched.get("num_train_timesteps", 1000), 2, MAX_TIMESTEPS)
    whole("scheduler.steps_offset", sched.get("steps_offset", 0), 0, 1000)
    if sched.get("prediction_type", "epsilon") not in prediction_types:
        _fail("scheduler prediction_type", f"{sched.get('prediction_type')!r} is not one of {prediction_types}")
    if "schedule" in sched and sched["schedule"] not in NOISE_SCHEDULES:
        _fail("scheduler.schedule", f"{sched['schedule']!r} is not one of {sorted(NOISE_SCHEDULES)}")
    for key in ("beta_start", "beta_end"):
        if key in sched:
            number(f"scheduler.{key}", sched[key], 0.0, 1.0, open_low=True)
    if sched.get("beta_start", 1e-4) >= sched.get("beta_end", 0.02):
        _fail("scheduler.beta_start", f"must be below scheduler.beta_end, got {sched.get('beta_start', 1e-4)} and "
                                      f"{sched.get('beta_end', 0.02)}")
    for key, low, high in (("sig_range", 0.0, 100.0), ("s", 0.0, 1.0), ("clip_sample_min", -1e3, 1e3),
                           ("clip_sample_max", -1e3, 1e3), ("loc", -1e3, 1e3), ("scale", 1e-6, 1e3),
                           ("transform_scale", 1e-6, 1e3)):
        if key in sched:
            number(f"scheduler.{key}", sched[key], low, high)
    for key in ("clip_sample", "set_alpha_to_one", "skip_prk_steps", "use_discrete_timesteps",
                "use_timestep_transform"):
        if key in sched:
            flag(f"scheduler.{key}", sched[key])
    if "variance_type" in sched and sched["variance_type"] not in ("fixed_small", "fixed_large", "learned",
                                                                   "learned_range"):
        _fail("scheduler.variance_type", f"{sched['variance_type']!r} is not one of fixed_small, fixed_large, "
                                         "learned, learned_range")
    if "sample_method" in sched and sched["sample_method"] not in ("uniform", "logit-normal"):
        _fail("scheduler.sample_method", f"{sched['sample_method']!r} is not 'uniform' or 'logit-normal'")
    if "base_img_size_numel" in sched:
        whole("scheduler.base_img_size_numel", sched["base_img_size_numel"], 1, 2**40)
    if "spatial_dim" in sched:
        whole("scheduler.spatial_dim", sched["spatial_dim"], 2, 3)


def check_normalisation(norm: Any) -> None:
    if not isinstance(norm, dict) or set(norm) - {"method", "lower", "upper"}:
        _fail("normalisation", f"must be an object with method, lower and upper, got {_short(norm)}")
    if norm.get("method", "percentile") not in NORMALISATIONS:
        _fail("normalisation.method", f"{norm.get('method')!r} is not one of {NORMALISATIONS}")
    lower = number("normalisation.lower", norm.get("lower", 0.5), 0.0, 100.0)
    upper = number("normalisation.upper", norm.get("upper", 99.5), 0.0, 100.0)
    if not lower < upper:
        _fail("normalisation.lower", f"must be below normalisation.upper, got {lower:g} and {upper:g}")


def network_bytes(net: dict[str, Any], image_size: list[int]) -> tuple[int, int]:
    """Estimated (parameter bytes, activation bytes of one sample's forward pass) of a ``DiffusionModelUNet``.

    Parameters: per level, the down and up residual blocks' 3^d convolutions (the up path takes
    the skip concatenation) and the attention projections; activations: the skip tensors kept
    for the up path, a few working copies and the attention matrices (tokens squared per head,
    unless flash attention is on). Within a factor of about 2 of the real figures; it only needs
    to catch what no machine could run.
    """
    dims = len(image_size)
    channels = [int(c) for c in net["channels"]]
    blocks = net.get("num_res_blocks", [2, 2, 2, 2])
    blocks = list(blocks) if isinstance(blocks, list) else [blocks] * len(channels)
    heads = net.get("num_head_channels", 8)
    heads = list(heads) if isinstance(heads, list) else [heads] * len(channels)
    kernel, voxels = 3**dims, math.prod(image_size)
    params, acts, attn = 8 * channels[0] ** 2, 0, 0
    for i, (c, b, a, h) in enumerate(zip(channels, blocks, net["attention_levels"], heads)):
        prev = channels[max(i - 1, 0)]
        params += kernel * (2 * b * c * c + (b + 1) * (3 * c * c + prev * c)) + (4 * c * c * (2 * b + 1) if a else 0)
        tokens = voxels / 2 ** (dims * i)
        acts += (2 * b + 2) * c * tokens
        if a and not net.get("use_flash_attention", False):
            attn = max(attn, (c // h) * tokens * tokens)
    acts = 4 * channels[0] * voxels + acts + attn
    return int(4 * params), int(4 * acts)


def model_byte_limit() -> int:
    """Bytes a card may ask for (network + one sample's forward), from ``$NAPARI_DIFFMED_MAX_MODEL_BYTES``."""
    raw = os.environ.get(MODEL_BYTES_ENV, "")
    try:
        return int(float(raw)) if raw.strip() else DEFAULT_MODEL_BYTES
    except ValueError:
        raise SchemaError(f"${MODEL_BYTES_ENV} must be a number of bytes, got {raw!r}") from None


def check_memory(net: dict[str, Any], image_size: list[int]) -> None:
    """Refuse a card whose network and one forward pass would need more than :func:`model_byte_limit`."""
    params, acts = network_bytes(net, image_size)
    limit = model_byte_limit()
    if params + acts > limit:
        field = "network.channels" if params >= acts else "image_size"
        _fail(field, f"asks for about {(params + acts) / 2**30:.1f} GiB (network {params / 2**30:.1f} GiB, one "
                     f"sample's forward pass {acts / 2**30:.1f} GiB), more than the limit of {limit / 2**30:.1f} GiB "
                     f"(${MODEL_BYTES_ENV})")
