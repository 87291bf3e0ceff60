"""Model cards' quality figures: written into the card (merging a partial re-evaluation) and shown as a table."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import numpy as np

SECTIONS = ("evaluation", "synthesis", "held_out_loss", "anomaly", "inpainting", "volume", "segmentation")


def plain(value: Any) -> Any:
    """JSON-ready copy: numpy scalars to Python numbers, tuples to lists, floats rounded to 5 digits."""
    if isinstance(value, dict):
        return {str(k): plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [plain(v) for v in value]
    if isinstance(value, (np.integer, bool, int)) or value is None or isinstance(value, str):
        return value.item() if isinstance(value, np.integer) else value
    return round(float(value), 5)


def write_card_metrics(weights_path: str | os.PathLike, metrics: dict[str, Any]) -> Path:
    """Rewrite ``NAME.json`` atomically with ``metrics``: the sections it has replace the card's; the others
    stay when the card's evaluation is of the same weights (a re-run of some parts), and go otherwise.

    Refuses when the weights no longer match the card, or the metrics are of other weights.
    """
    from ..io import atomic_write
    from ..models.card import ModelCard, ModelCardError, sha256_file
    from ..models.checkpoint import card_path
    from ..models.registry import resolve

    weights = resolve(weights_path)
    card_file = card_path(weights)
    card = ModelCard.read(card_file)
    actual = sha256_file(weights)
    if card.weights_sha256 != actual:
        raise ModelCardError(f"{weights.name} no longer matches its card (sha256 {actual[:12]}... vs "
                             f"{card.weights_sha256[:12]}...); evaluate the current weights")
    evaluated = metrics.get("evaluation", {}).get("weights_sha256")
    if evaluated not in (None, actual):
        raise ValueError(f"these metrics are of weights {evaluated[:12]}..., not of {weights.name} ({actual[:12]}...)")
    new = plain(metrics)
    earlier = card.metrics.get("evaluation", {})
    calibrated = card.metrics.get("anomaly", {}).get("threshold")  # of these weights: the card matches them
    if calibrated and "anomaly" in new:
        new["anomaly"].setdefault("threshold", calibrated)  # the default thresholds (evaluation.threshold) stay
    if earlier.get("weights_sha256") == actual and "evaluation" in new:  # a partial re-evaluation: merge
        kept = {k: v for k, v in card.metrics.items() if k not in new}
        timings = {key: {**earlier.get(key, {}), **new["evaluation"].get(key, {})} for key in ("seconds", "dates")}
        new["evaluation"] = {**earlier, **new["evaluation"], **timings}
    else:
        kept = {k: v for k, v in card.metrics.items() if k not in SECTIONS}
    card.metrics = {**kept, **new}
    card.validate()
    atomic_write(card_file, lambda tmp: Path(tmp).write_text(card.to_json()))
    return card_file


def format_table(metrics: dict[str, Any], prefix: str = "") -> str:
    """A two-column Markdown table of the figures, nested keys joined with dots."""
    def rows(d: dict[str, Any], pre: str) -> list[tuple[str, str]]:
        out: list[tuple[str, str]] = []
        for key, value in d.items():
            if isinstance(value, dict) and key != "settings":
                out += rows(value, f"{pre}{key}.")
            else:
                out.append((f"{pre}{key}", f"{value:.4f}" if isinstance(value, float) else json.dumps(value)))
        return out

    found = rows(metrics, prefix)
    width = max(len(k) for k, _ in found)
    head = [f"| {'figure':<{width}} | value |", f"|{'-' * (width + 2)}|-------|"]
    return "\n".join(head + [f"| {k:<{width}} | {v.strip(chr(34))} |" for k, v in found])
