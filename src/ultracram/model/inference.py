"""``for_inference``: switch every FFF layer of a model to the fastest path for its device.

The model's other modules are untouched; what changes is which entry of
``ultracram.kernels.FFF_IMPLEMENTATIONS`` each ``FastFeedForward`` calls. All paths give the
masked reference's outputs (fp32, within 1e-5 relative; see kernels/cpu.py for the one
routing caveat), so predictions and evaluation do not change, only their speed.
"""

from __future__ import annotations

import torch
from torch import nn

from ultracram.model.feedforward import FastFeedForward

# Fastest FFF implementation per device type; anything else uses the pure PyTorch gather.
FASTEST_FFF = {"cpu": "cpu", "cuda": "triton"}


def fastest_fff_implementation(device: torch.device | str) -> str:
    """Name of the fastest FFF implementation for ``device`` (a key of FFF_IMPLEMENTATIONS)."""
    kind = torch.device(device).type
    if kind == "cuda":
        try:
            import triton  # noqa: F401  (optional dependency: ultracram[gpu])
        except ImportError:
            return "gather"
    return FASTEST_FFF.get(kind, "gather")


def for_inference(model: nn.Module, device: torch.device | str | None = None) -> nn.Module:
    """Prepare ``model`` (any ultracram model: MLM, classification, encoder) for inference.

    Moves it to ``device`` if one is given, sets ``eval()``, and switches every
    ``FastFeedForward`` to the fastest path for the device its weights are on: the numba
    kernel on CPU, the Triton kernel on CUDA, the gather path elsewhere. Returns the model.
    The fast kernels are inference-only: backward through them raises; to train again set
    ``layer.implementation = "masked"`` (or ``"gather"``) on each FFF layer.
    """
    if device is not None:
        model = model.to(device)
    model.eval()
    for module in model.modules():
        if isinstance(module, FastFeedForward):
            module.implementation = fastest_fff_implementation(module.linear_in.weight.device)
    return model


def fff_implementations(model: nn.Module) -> list[str]:
    """The implementation of each FFF layer of ``model``, in module order."""
    return [m.implementation for m in model.modules() if isinstance(m, FastFeedForward)]
