"""A faster network forward for inference, chosen per device and checked against the plain one.

Switches (each falls back to the plain forward where unsupported or where its check fails):

- ``fused_attention``: MONAI's ``use_flash_attention=True`` (torch's ``scaled_dot_product_attention``)
  on a twin of the network with the same weights; exact up to float rounding.
- ``channels_last``: NHWC (NDHWC in 3D) weights and inputs; exact up to float rounding.
- ``bf16``: autocast to bfloat16 around the UNet forward only. The output is cast back to float32
  before anything else touches it, so the conversion of an x0 or v prediction to epsilon (which
  indexes ``alphas_cumprod``) and every scheduler step stay in float32: autocasting them too
  wrecks the segmentation model (Dice 0.41 against float32). Not exact: its difference is measured.
- ``compile``: ``torch.compile`` of the forward; ``graphs`` compiles with CUDA graphs
  (``mode="reduce-overhead"``). Slow to start, so off unless asked.

:func:`options_for` gives the defaults for a device (measured, see docs/performance.md): on CPU and
CUDA fused attention and channels_last; bf16 and compilation only when asked, through
``$NAPARI_DIFFMED_FAST`` (``off``, ``auto``, or a comma list of switch names) or
:func:`accelerate`'s ``options``. :func:`accelerate` applies them to a loaded model and runs a
two-sample probe through the plain and fast forwards; exact switches that move the output by more
than rounding are dropped with a warning, and the bf16 difference is recorded in ``LoadedModel.fast``.
"""

from __future__ import annotations

import os
import warnings
from dataclasses import asdict, dataclass, replace
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch

    from .models.checkpoint import LoadedModel

ENV_VAR = "NAPARI_DIFFMED_FAST"
SWITCHES = ("fused_attention", "channels_last", "bf16", "compile", "graphs")


@dataclass(frozen=True)
class FastOptions:
    """Which switches to use; see the module docstring."""

    fused_attention: bool = False
    channels_last: bool = False
    bf16: bool = False
    compile: bool = False
    graphs: bool = False

    @property
    def any(self) -> bool:
        return any(asdict(self).values())

    def names(self) -> list[str]:
        return [k for k, v in asdict(self).items() if v]


PLAIN = FastOptions()
DEFAULTS = {"cpu": FastOptions(fused_attention=True, channels_last=True),
            "cuda": FastOptions(fused_attention=True, channels_last=True)}


def parse(spec: str) -> FastOptions | None:
    """``"off"`` -> plain, ``"auto"``/empty -> None (the device's defaults), else a comma list of switches."""
    text = (spec or "").strip().lower()
    if text in ("", "auto"):
        return None
    if text in ("off", "none", "0"):
        return PLAIN
    names = [t.strip() for t in text.split(",") if t.strip()]
    bad = [n for n in names if n not in SWITCHES]
    if bad:
        raise ValueError(f"{ENV_VAR}={spec!r}: unknown switch {bad[0]!r}; use 'auto', 'off' or a comma list of "
                         f"{list(SWITCHES)}")
    return FastOptions(**{n: True for n in names})


def options_for(device: "str | torch.device", spec: str | None = None) -> FastOptions:
    """The switches for ``device``: ``spec`` (default ``$NAPARI_DIFFMED_FAST``) or the device's defaults."""
    chosen = parse(os.environ.get(ENV_VAR, "") if spec is None else spec)
    if chosen is not None:
        return chosen
    return DEFAULTS.get(str(device).split(":")[0], PLAIN)


def _wrap(network, options: FastOptions, device_type: str, spatial_dims: int):
    """``network`` behind a forward that applies the layout, autocast and compile switches."""
    import torch

    class _Forward(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.network = network
            self.layout = None
            if options.channels_last:
                self.layout = torch.channels_last if spatial_dims == 2 else torch.channels_last_3d
            self.call = network
            if options.compile or options.graphs:
                self.call = torch.compile(network, mode="reduce-overhead" if options.graphs else "default",
                                          dynamic=False)

        def forward(self, x, timesteps, class_labels=None):
            if self.layout is not None:
                x = x.contiguous(memory_format=self.layout)
            with torch.autocast(device_type, dtype=torch.bfloat16, enabled=options.bf16):
                try:
                    out = self.call(x, timesteps=timesteps, class_labels=class_labels)
                except Exception as err:  # a compiler missing here: eager from now on
                    if self.call is self.network:
                        raise
                    warnings.warn(f"torch.compile failed ({type(err).__name__}: {err}); running eagerly",
                                  RuntimeWarning, stacklevel=2)
                    self.call = self.network
                    out = self.call(x, timesteps=timesteps, class_labels=class_labels)
            if options.graphs:  # a CUDA graph's next replay overwrites its output
                out = out.clone()
            return out.float().contiguous()

    return _Forward()


def _twin(trained, card, options: FastOptions, device):
    """(a copy of ``trained`` with the exact switches that work here, same weights; those options)."""
    import torch

    from .models.checkpoint import build_network

    net = None
    if options.fused_attention:
        try:
            net = build_network(card, use_flash_attention=True)
        except Exception as err:  # an older MONAI without the switch
            warnings.warn(f"fused attention unavailable ({err}); using MONAI's own", RuntimeWarning, stacklevel=3)
            options = replace(options, fused_attention=False)
    if net is None and options.channels_last:
        net = build_network(card)
    if net is None:
        return trained, options
    net.load_state_dict(trained.state_dict())
    net.to(device).eval()
    if options.channels_last:
        net = net.to(memory_format=torch.channels_last if card.spatial_dims == 2 else torch.channels_last_3d)
    return net, options


def probe_inputs(card, device, n: int = 2):
    """A fixed two-sample probe: noise plus image channels, timesteps 999 and 10, class 0 and null."""
    import torch

    gen = torch.Generator().manual_seed(0)
    x = torch.randn((n, card.network["in_channels"], *card.image_size), generator=gen).to(device)
    ts = torch.tensor([999, 10][:n] + [500] * max(0, n - 2), device=device)
    labels = None
    if card.network.get("num_class_embeds"):
        null = card.null_class if card.null_class is not None else 0
        labels = torch.tensor([0, null][:n] + [0] * max(0, n - 2), device=device)
    return x, ts, labels


def difference(a, b) -> float:
    """Largest absolute difference relative to the largest magnitude of ``a``."""
    return float((a.float() - b.float()).abs().max() / a.float().abs().max().clamp_min(1e-12))


def accelerate(loaded: "LoadedModel", options: FastOptions | None = None) -> "LoadedModel":
    """A copy of ``loaded`` whose ``network`` uses ``options`` (default :func:`options_for` its device).

    ``loaded.trained`` stays the plain network (for losses). The result's ``fast`` says which switches
    are on, the probe's relative difference for the exact ones (``exact_difference``) and for bf16
    (``bf16_difference``). Plain options return ``loaded`` itself.
    """
    import torch

    from .models.prediction import EpsilonView

    trained, card = loaded.trained, loaded.card
    device = next(trained.parameters()).device
    options = options_for(device) if options is None else options
    if device.type not in ("cpu", "cuda"):
        options = replace(options, bf16=False, graphs=False)
    if device.type == "cpu":
        options = replace(options, graphs=False)
    if device.type == "cuda" and options.bf16 and not torch.cuda.is_bf16_supported():
        options = replace(options, bf16=False)
    if not options.any:
        return loaded
    twin, options = _twin(trained, card, options, device)
    if not options.any:
        return loaded
    x, ts, labels = probe_inputs(card, device)
    info: dict[str, Any] = {}
    with torch.inference_mode():
        plain = trained(x, timesteps=ts, class_labels=labels)
        exact = _wrap(twin, replace(options, bf16=False, compile=False, graphs=False), device.type, card.spatial_dims)
        info["exact_difference"] = difference(plain, exact(x, timesteps=ts, class_labels=labels))
        tolerance = 1e-4 if device.type == "cpu" else 5e-3  # CUDA convolutions may run in TF32
        if not info["exact_difference"] <= tolerance:
            warnings.warn(f"the fast path moved {card.name}'s output by {info['exact_difference']:.2g} (relative); "
                          "using the plain network", RuntimeWarning, stacklevel=2)
            twin, options = trained, replace(options, fused_attention=False, channels_last=False)
        fast = _wrap(twin, options, device.type, card.spatial_dims)
        if options.bf16 or options.compile or options.graphs:
            moved = difference(plain, fast(x, timesteps=ts, class_labels=labels))
            key = "bf16_difference" if options.bf16 else "compiled_difference"
            info[key] = moved
            if not moved < (1.0 if options.bf16 else tolerance):
                warnings.warn(f"{' and '.join(options.names()[-2:])} moved {card.name}'s output by {moved:.2g} "
                              "(relative); dropping bf16 and compilation", RuntimeWarning, stacklevel=2)
                options = replace(options, bf16=False, compile=False, graphs=False)
                fast = _wrap(twin, options, device.type, card.spatial_dims)
    if not options.any:
        return loaded
    info["switches"] = options.names()
    network = fast.eval()
    if card.prediction_type != "epsilon":
        network = EpsilonView(fast, card.prediction_type, loaded.network.alphas_cumprod, card.out_channels)
        network = network.to(device).eval()
    return replace(loaded, network=network, fast=info)
