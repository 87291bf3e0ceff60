"""The training loop: noise, x0 or v prediction (the card's) with MONAI schedulers, AdamW, EMA, resume, validation;
on several processes under torchrun with DistributedDataParallel (:mod:`.ddp`)."""

from __future__ import annotations

import json
import math
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable, Iterator

import numpy as np

from ..io import atomic_write
from ..models.card import ModelCard
from ..models.checkpoint import build_network, build_scheduler, save_model
from .ddp import Ranks, RankShard, mean_over_ranks, rows


@dataclass
class TrainConfig:
    steps: int = 1000
    batch_size: int = 16
    lr: float = 2e-4
    weight_decay: float = 1e-4
    ema_decay: float = 0.999
    grad_accum: int = 1
    cond_dropout: float = 0.15
    checkpoint_every: int = 250
    val_every: int = 250
    warmup: int = 100
    seed: int = 0
    device: str = "auto"
    amp: bool = True  # mixed precision on CUDA only


@dataclass
class TrainState:
    step: int
    losses: list[float]
    val: list[dict]


def _state_paths(out: Path) -> tuple[Path, Path]:
    return out.with_name(out.stem + ".resume.safetensors"), out.with_name(out.stem + ".resume.json")


def _flatten_optimizer(opt) -> tuple[dict, dict]:
    state = opt.state_dict()
    tensors, meta = {}, {"param_groups": state["param_groups"], "scalars": {}}
    for idx, entry in state["state"].items():
        for key, value in entry.items():
            name = f"opt.{idx}.{key}"
            if hasattr(value, "shape"):
                tensors[name] = value.detach().cpu().contiguous()
            else:
                meta["scalars"][name] = value
    return tensors, meta


def _unflatten_optimizer(tensors: dict, meta: dict) -> dict:
    state: dict = {}
    for name, value in list(tensors.items()) + list(meta["scalars"].items()):
        _, idx, key = name.split(".", 2)
        state.setdefault(int(idx), {})[key] = value
    return {"state": state, "param_groups": meta["param_groups"]}


def save_resume(out: Path, net, ema, opt, state: TrainState, config: TrainConfig, rng_state: dict) -> None:
    """Everything needed to resume, as safetensors + JSON (no pickle)."""
    import torch
    from safetensors.torch import save_file

    tensors = {f"net.{k}": v.detach().cpu().contiguous() for k, v in net.state_dict().items()}
    tensors.update({f"ema.{k}": v.detach().cpu().contiguous() for k, v in ema.state_dict().items()})
    opt_tensors, opt_meta = _flatten_optimizer(opt)
    tensors.update(opt_tensors)
    tensors["torch_rng"] = torch.get_rng_state()
    weights, meta = _state_paths(out)
    atomic_write(weights, lambda tmp: save_file(tensors, tmp))
    payload = json.dumps({"state": asdict(state), "config": asdict(config), "optimizer": opt_meta,
                          "data_rng": rng_state})
    atomic_write(meta, lambda tmp: Path(tmp).write_text(payload))


def load_resume(out: Path, net, ema, opt) -> tuple[TrainState, dict]:
    import torch
    from safetensors.torch import load_file

    weights, meta_path = _state_paths(out)
    tensors = load_file(str(weights))
    meta = json.loads(meta_path.read_text())
    net.load_state_dict({k[4:]: v for k, v in tensors.items() if k.startswith("net.")})
    ema.load_state_dict({k[4:]: v for k, v in tensors.items() if k.startswith("ema.")})
    opt.load_state_dict(_unflatten_optimizer({k: v for k, v in tensors.items() if k.startswith("opt.")},
                                             meta["optimizer"]))
    torch.set_rng_state(tensors["torch_rng"])
    return TrainState(**meta["state"]), meta["data_rng"]


def diffusion_loss(net, scheduler, x0, cond, labels, generator=None, prediction_type: str = "epsilon",
                   ranks: Ranks = Ranks()):
    """MSE to the ``prediction_type`` target (noise, x0 or v) at uniformly drawn timesteps (image
    channels concatenated when ``cond``). With several ``ranks`` the noise and timesteps are drawn
    for the global batch and ``x0`` holds this rank's rows of it."""
    import torch
    import torch.nn.functional as F

    from ..models.prediction import training_target

    n, world = x0.shape[0], ranks.world
    noise = rows(torch.randn((world * n, *x0.shape[1:]), generator=generator, device=x0.device), ranks)
    t = rows(torch.randint(0, scheduler.num_train_timesteps, (world * n,), device=x0.device, generator=generator),
             ranks)
    noisy = scheduler.add_noise(original_samples=x0, noise=noise, timesteps=t)
    inp = noisy if cond is None else torch.cat([noisy, cond], dim=1)
    pred = net(inp, timesteps=t, class_labels=labels)
    alpha_bar = scheduler.alphas_cumprod.to(x0.device)[t].view(-1, *([1] * (x0.ndim - 1)))
    return F.mse_loss(pred.float(), training_target(prediction_type, x0, noise, alpha_bar))


def train(
    card: ModelCard, batches: Iterator, val_batch: tuple | None, config: TrainConfig, out: str | Path,
    resume: bool = False, log: Callable[[str], None] = print, init: str | Path | None = None,
    on_step: Callable[[TrainState], None] | None = None,
) -> TrainState:
    """Train ``card``'s network on ``batches``; write EMA weights + card to ``out`` at every checkpoint.

    ``init`` (a model's ``.safetensors``) starts the network and its EMA from that model's weights
    (fine-tuning) with a fresh optimiser; a resume state, when resuming, takes precedence. Under
    torchrun every process trains its rows of each global batch of ``batches`` (see :mod:`.ddp`).
    ``on_step(state)`` is called after every step (live loss); an exception raised there stops the run.
    """
    import torch

    from ..device import select_device
    from . import ddp

    out = Path(out).with_suffix(".safetensors")
    device = select_device(config.device)
    ranks = Ranks.from_env()
    if ranks.world > 1:
        device = ddp.start(ranks, device)
        batches = RankShard(batches, ranks, config.batch_size)
        log = log if ranks.main else (lambda message: None)
    torch.manual_seed(config.seed)
    net = build_network(card).to(device)
    ema = build_network(card).to(device)
    ema.load_state_dict(net.state_dict())
    ema.requires_grad_(False)
    opt = torch.optim.AdamW(net.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    scheduler = build_scheduler(card)
    state = TrainState(0, [], [])
    if resume and _state_paths(out)[0].exists():
        state, rng_state = load_resume(out, net, ema, opt)
        if hasattr(batches, "rng"):
            batches.rng.bit_generator.state = rng_state
        log(f"resumed {out.name} at step {state.step}")
    elif init is not None:
        card.training = {**card.training, "init": warm_start(net, ema, card, init)}
        log(f"starting from the weights of {card.training['init']['model_id']}")
    model = net
    if ranks.world > 1:
        model = torch.nn.parallel.DistributedDataParallel(net, device_ids=[device.index] if device.type == "cuda"
                                                          else None)
    use_amp = config.amp and device.type == "cuda"
    scaler = torch.amp.GradScaler("cuda", enabled=use_amp)
    segmentation = card.task == "segmentation"
    null = card.null_class
    start, tic = state.step, time.time()
    while state.step < config.steps:
        net.train()
        opt.zero_grad(set_to_none=True)
        total = 0.0
        for _ in range(config.grad_accum):
            x, extra = next(batches)
            x = x.to(device)
            cond = extra.to(device) if segmentation else None
            labels = None
            if card.conditional:
                labels = extra.to(device).clone()
                drop = rows(torch.rand((ranks.world * len(labels),), device=device), ranks) < config.cond_dropout
                labels[drop] = null
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=use_amp):
                loss = diffusion_loss(model, scheduler, x, cond, labels, prediction_type=card.prediction_type,
                                      ranks=ranks) / config.grad_accum
            scaler.scale(loss).backward()
            total += float(loss.detach())
        lr = config.lr * min(1.0, (state.step + 1) / config.warmup)
        lr *= 0.5 * (1 + math.cos(math.pi * min(1.0, state.step / max(1, config.steps))))  # cosine decay
        for group in opt.param_groups:
            group["lr"] = max(lr, config.lr * 0.05)
        scaler.unscale_(opt)
        torch.nn.utils.clip_grad_norm_(net.parameters(), 1.0)
        scaler.step(opt)
        scaler.update()
        decay = min(config.ema_decay, (1 + state.step) / (10 + state.step))
        with torch.no_grad():
            for pe, p in zip(ema.parameters(), net.parameters()):
                pe.lerp_(p, 1 - decay)
        state.step += 1
        state.losses.append(mean_over_ranks(total, ranks))
        if on_step is not None:
            on_step(state)
        if state.step % 25 == 0:
            rate = (state.step - start) / max(1e-6, time.time() - tic)
            log(f"step {state.step}/{config.steps} loss {np.mean(state.losses[-25:]):.4f} ({rate:.2f} steps/s)")
        if not ranks.main:
            continue
        if val_batch is not None and (state.step % config.val_every == 0 or state.step == config.steps):
            state.val.append({"step": state.step, "loss": validation_loss(ema, scheduler, card, val_batch, device)})
            log(f"step {state.step} held-out loss {state.val[-1]['loss']:.4f}")
        if state.step % config.checkpoint_every == 0 or state.step == config.steps:
            card.training = {**card.training, "steps": state.step, "batch_size": config.batch_size,
                             "config": asdict(config), "final_loss": float(np.mean(state.losses[-100:])),
                             "held_out_loss": state.val[-1]["loss"] if state.val else None}
            save_model(ema, card, out, overwrite=True)
            save_resume(out, net, ema, opt, state, config,
                        batches.rng.bit_generator.state if hasattr(batches, "rng") else {})
    if ranks.world > 1:
        ddp.stop()
    return state


def warm_start(net, ema, card: ModelCard, init: str | Path) -> dict:
    """Load ``init``'s weights (hash-checked, safetensors) into ``net`` and ``ema``; what to record of it.

    The source may predict another target (e.g. noise, when this model predicts v): its features carry
    over and the training re-targets the output, as Stable Diffusion 2 was moved from epsilon to v."""
    from ..models.checkpoint import load_model
    from ..models.registry import resolve

    source = load_model(resolve(init))
    for key in ("task", "network"):
        if getattr(source.card, key) != getattr(card, key):
            raise ValueError(f"cannot start from {source.model_id}: its {key} is {getattr(source.card, key)}, "
                             f"this model's is {getattr(card, key)}")
    state = source.trained.state_dict()
    net.load_state_dict(state)
    ema.load_state_dict(state)
    return {"model_id": source.model_id, "weights_sha256": source.card.weights_sha256,
            "steps": source.card.training.get("steps"), "prediction_type": source.card.prediction_type}


def validation_loss(net, scheduler, card: ModelCard, batch: tuple, device, repeats: int = 4) -> float:
    """Mean loss on a fixed held-out batch with fixed noise and timesteps (comparable across steps)."""
    import torch

    net.eval()
    x, extra = batch
    x = x.to(device)
    cond = extra.to(device) if card.task == "segmentation" else None
    labels = extra.to(device) if card.conditional else None
    gen = torch.Generator(device=device).manual_seed(1234)
    with torch.inference_mode():
        losses = [float(diffusion_loss(net, scheduler, x, cond, labels, generator=gen,
                                       prediction_type=card.prediction_type)) for _ in range(repeats)]
    return float(np.mean(losses))
