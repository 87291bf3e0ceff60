"""Fine-tune the session's segmentation model on its accepted cases, and switch to the result.

The accepted labels and their scans are cut to the slices the session proposed (the slices a person
reviewed; elsewhere a label file's zeros mean "not looked at", not "background") and written as a
training folder (``SCAN.nii.gz`` + ``SCAN_mask.nii.gz``), which the training code's own folder path
reads (:func:`~napari_diffmed.training.folders.load_folder`). Training starts from the current
model's weights (``--init``), keeps its network and card, and writes ``OUT/models/NAME`` with a card
recording the cases and a held-out accepted case's Dice before and after.

It is gentle so that a few cases do not make the model forget what it knew: part of every batch
replays the model's own training data (the shipped recipe's slices, when the model descends from
one), the learning rate is low, and the EMA of the weights is what is saved. The session switches to
the new model only when the held-out case's Dice did not drop; otherwise it keeps the old one and
says so (the new model stays in ``OUT/models`` to inspect).
"""

from __future__ import annotations

import json
import queue
import re
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Generator

import numpy as np

from ..progress import Progress
from .background import Cancelled


@dataclass(frozen=True)
class FinetuneSettings:
    """Steps of the training loop (batch ``batch_size``, AdamW at ``lr``, weights averaged with
    ``ema_decay``); ``replay`` is the share of each batch drawn from the model's own training data
    (0 for none; ignored when the model's data is unknown). ``eval_slices`` bounds the held-out case's
    slices scored before and after (spread over its labelled slices). ``switch``: switch the session to
    the new model when the held-out Dice did not drop (``"always"``: whatever it did; False: never)."""

    steps: int = 60
    batch_size: int = 8
    lr: float = 3e-5
    ema_decay: float = 0.999
    replay: float = 0.5
    seed: int = 0
    eval_slices: int = 12
    held_out: str | None = None
    switch: bool | str = True


def _runs(indices: list[int]) -> list[tuple[int, int]]:
    idx = sorted(set(indices))
    cuts = [0] + [i + 1 for i in range(len(idx) - 1) if idx[i + 1] != idx[i] + 1] + [len(idx)]
    return [(idx[a], idx[b - 1]) for a, b in zip(cuts, cuts[1:])]


def write_training_folder(session, cases: list[str], folder: Path) -> Path:
    """Scans (NIfTI, or DICOM series as NIfTI) and accepted labels of ``cases``, cut to their proposed slices
    (axial runs), as NIfTI."""
    import nibabel as nib

    from ..dicom import to_nifti
    from ..io import is_nifti

    folder.mkdir(parents=True, exist_ok=True)
    for case_id in cases:
        case = session.case(case_id)
        source = session.scans_dir / case.scan
        scan = nib.as_closest_canonical(nib.load(str(source)) if is_nifti(source) else to_nifti(source)[0])
        mask = nib.as_closest_canonical(nib.load(str(session.out_dir / "accepted" / f"{case_id}_labels.nii.gz")))
        for k, (a, b) in enumerate(_runs(case.slices)):  # napari axis 0 is the canonical array's last axis
            for img, suffix in ((scan, ""), (mask, "_mask")):
                nib.save(img.slicer[:, :, a:b + 1], str(folder / f"{case_id}_r{k}{suffix}.nii.gz"))
    return folder


def held_out_dice(session, case_id: str, model, eval_slices: int) -> tuple[float, list[int]]:
    """Consensus Dice of ``model``'s ensemble against the accepted labels, on up to ``eval_slices``
    labelled slices of the case (the session's ensemble settings)."""
    from ..ensemble import segment_ensemble
    from ..evaluation.segmentation import dice
    from ..io import read_nifti

    s, case = session.settings, session.case(case_id)
    scan, meta = session.read_scan(case_id)
    reference = read_nifti(session.out_dir / "accepted" / f"{case_id}_labels.nii.gz", as_labels=True)[0] > 0
    labelled = [i for i in case.slices if reference[i].any()] or case.slices
    pick = sorted({labelled[int(round(j))] for j in np.linspace(0, len(labelled) - 1, min(eval_slices,
                                                                                          len(labelled)))})
    result = segment_ensemble(scan, meta["spacing"], model=model, members=s.members, steps=s.steps,
                              scheduler=s.scheduler, seed=s.seed, indices=pick, device=session.device, chunk=s.chunk,
                              preprocess=s.preprocess, force=s.force)  # as the session's proposals
    region = np.zeros(scan.shape, bool)
    region[pick] = True
    return dice(result.labels(), reference, region & result.covered), pick


def iter_finetune(session, settings: FinetuneSettings = FinetuneSettings()) -> Generator[Progress, None, dict]:
    """Yield progress (live loss in the message) and return ``{"weights", "dice_before", "dice_after", ...}``.

    Closing the generator cancels the training at its next step; nothing is switched then.
    """
    from ..ensemble import load_model
    from ..models.card import ModelCard
    from ..training.folders import load_folder, scan_folder
    from ..training.loop import TrainConfig, train

    s = session.settings
    if not 0.0 <= settings.replay <= 1.0 or settings.switch not in (True, False, "always"):
        raise ValueError(f"replay must be from 0 to 1 and switch True, False or 'always'; got {settings.replay!r}, "
                         f"{settings.switch!r}")
    if s.axis != 0:
        raise ValueError(f"fine-tuning trains on axial slices (axis 0); this session slices along axis {s.axis}")
    accepted = session.accepted()
    held = settings.held_out or (accepted[-1] if accepted else None)
    if held is not None and held not in accepted:
        raise ValueError(f"held-out case {held!r} is not accepted; accepted: {accepted}")
    train_ids = [c for c in accepted if c != held]
    if not train_ids:
        raise ValueError(f"fine-tuning needs at least 2 accepted cases (one is held out), got {len(accepted)}")
    loaded = load_model(s.model, session.device)
    if loaded.card.spatial_dims != 2:
        raise ValueError(f"fine-tuning from a session works for 2D models; {loaded.card.name!r} is 3D")
    base = re.sub(r"_ft\d+$", "", loaded.card.name)
    models = session.out_dir / "models"
    k = 1 + sum(1 for _ in models.glob(f"{base}_ft*.safetensors")) if models.exists() else 1
    name = f"{base}_ft{k}"
    yield Progress(0, settings.steps, None, f"held-out case {held}: Dice before")
    before, pick = held_out_dice(session, held, loaded, settings.eval_slices)
    data_dir = write_training_folder(session, train_ids, session.out_dir / "finetune" / name)
    items, _ = scan_folder(data_dir, "segmentation")
    card = ModelCard.from_dict(json.loads(loaded.card.to_json()))
    band = tuple(card.training.get("threshold_band", (0.0, 1.0)))
    data = load_folder(items, card.image_size, card.spacing, normalisation=card.normalisation, log=None)
    batches, replayed = _batches(data, base, band, settings)
    card.name, card.metrics = name, {}
    card.description = f"{loaded.card.name} fine-tuned on {len(train_ids)} accepted cases of a labeling session."
    card.training = {"data": f"{len(train_ids)} accepted cases of the labeling session in {session.out_dir}",
                     "cases": train_ids, "held_out": f"case {held}", "train_items": int(len(data.images)),
                     "threshold_band": list(band), "data_folder": str(data_dir), "replay": replayed}
    config = TrainConfig(steps=settings.steps, batch_size=settings.batch_size, lr=settings.lr, seed=settings.seed,
                         ema_decay=settings.ema_decay, warmup=max(1, min(20, settings.steps // 5)),
                         checkpoint_every=settings.steps, val_every=settings.steps, device=session.device)
    weights = models / f"{name}.safetensors"
    losses = yield from _train_in_thread(train, card, batches, config, weights, loaded.path)
    after, _ = held_out_dice(session, held, weights, settings.eval_slices)
    switched = settings.switch == "always" or (settings.switch is True and after >= before)
    _record(weights, {"labeling": {"held_out_case": held, "slices": pick, "dice_before": round(before, 4),
                                   "dice_after": round(after, 4), "before_model": loaded.model_id,
                                   "members": s.members, "steps": s.steps, "seed": s.seed, "switched": switched}})
    if switched:
        session.switch_model(str(weights))
    verdict = (f"the session now uses {name}" if switched else f"the session keeps {loaded.card.name}"
               + (" (held-out Dice dropped)" if after < before else ""))
    message = f"held-out {held} Dice {before:.3f} -> {after:.3f}: {verdict}"
    yield Progress(settings.steps, settings.steps, None, message)
    return {"weights": weights, "held_out": held, "dice_before": before, "dice_after": after, "losses": losses,
            "train_cases": train_ids, "switched": switched, "message": message, "replay": replayed}


def replay_data(base: str):
    """The training slices and threshold band of the shipped recipe ``base`` (None when it is not one)."""
    from ..training.recipes import RECIPES

    recipe = RECIPES.get(base)
    if recipe is None or recipe.kind != "segmentation":
        return None
    data = recipe.data()
    return (data.split(held_out=False) if data.held_out.any() else data), recipe.threshold_band


def _batches(data, base: str, band, settings: FinetuneSettings):
    """Batches of the accepted slices, with ``settings.replay`` of each drawn from the model's own training data;
    returns them and what the card records of the replay."""
    from ..training.datasets import Batches

    n_replay = int(round(settings.replay * settings.batch_size))
    replay = replay_data(base) if n_replay else None
    if replay is None:
        return Batches(data, settings.batch_size, "segmentation", seed=settings.seed, threshold_band=band), None
    n_replay = min(n_replay, settings.batch_size - 1)
    own = Batches(data, settings.batch_size - n_replay, "segmentation", seed=settings.seed, threshold_band=band)
    old = Batches(replay[0], n_replay, "segmentation", seed=settings.seed + 1, threshold_band=replay[1])
    return _Mixed(own, old), {"recipe": base, "per_batch": n_replay, "items": int(len(replay[0].images))}


class _Mixed:
    """Batches that join one batch of each source (masks, images)."""

    def __init__(self, *sources) -> None:
        self.sources = sources

    def __iter__(self):
        return self

    def __next__(self):
        import torch

        parts = [next(source) for source in self.sources]
        return torch.cat([p[0] for p in parts]), torch.cat([p[1] for p in parts])


def _train_in_thread(train, card, batches, config, weights: Path, init: Path):
    """Run the blocking training loop in a thread and turn its steps into progress events."""
    events: queue.Queue = queue.Queue()
    stop = threading.Event()

    def on_step(state) -> None:
        events.put(("step", state.step, state.losses[-1]))
        if stop.is_set():
            raise Cancelled()

    def work() -> None:
        try:
            train(card, batches, None, config, weights, init=init, log=lambda *_: None, on_step=on_step)
            events.put(("done", None, None))
        except BaseException as err:  # handed to the generator's thread
            events.put(("error", err, None))

    thread = threading.Thread(target=work, name="napari-diffmed fine-tune", daemon=True)
    thread.start()
    losses: list[float] = []
    try:
        while True:
            kind, a, b = events.get()
            if kind == "error":
                raise a
            if kind == "done":
                return losses
            losses.append(float(b))
            recent = float(np.mean(losses[-10:]))
            yield Progress(a, config.steps, None, f"fine-tuning step {a}/{config.steps}: loss {recent:.4f}")
    finally:
        stop.set()
        thread.join()


def _record(weights: Path, metrics: dict) -> None:
    """Add ``metrics`` to the card beside ``weights`` (atomically; the weights are unchanged)."""
    from ..models.card import ModelCard
    from .store import write_json

    card_file = weights.with_suffix(".json")
    card = ModelCard.read(card_file)
    card.metrics = {**card.metrics, **metrics}
    write_json(card_file, json.loads(card.to_json()))
