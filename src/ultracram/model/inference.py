"""``for_inference``: eval mode, with every FFF layer on the fastest inference path for its device.

The model's other modules are untouched; what changes is which entry of
``ultracram.kernels.FFF_IMPLEMENTATIONS`` each ``FastFeedForward`` calls, chosen by
``ultracram.model.dispatch`` (mode ``infer``). All paths give the masked reference's outputs
(fp32, within 1e-5 relative; see kernels/cpu.py for the one routing caveat), so predictions and
evaluation do not change, only their speed.
"""

from __future__ import annotations

import torch
from torch import nn

from ultracram.model.dispatch import set_fff_implementation


def for_inference(model: nn.Module, device: torch.device | str | None = None) -> nn.Module:
    """Prepare ``model`` (any ultracram model: MLM, classification, encoder) for inference.

    Moves it to ``device`` if one is given, sets ``eval()``, and switches every
    ``FastFeedForward`` to ``auto`` in ``infer`` mode: the numba kernel on CPU, the Triton kernel
    on CUDA, the gather path elsewhere. Returns the model. The fast kernels are inference-only:
    backward through them raises; to train again call
    ``set_fff_implementation(model, "auto", mode="train")``.
    """
    if device is not None:
        model = model.to(device)
    model.eval()
    set_fff_implementation(model, "auto", mode="infer")
    return model
