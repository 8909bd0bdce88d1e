"""The one place an FFF implementation is chosen: ``resolve`` and ``set_fff_implementation``.

A model is built with every ``FastFeedForward`` on ``masked``, the dense reference in plain
PyTorch, so a freshly built model runs anywhere. Kernels are applied from outside, by
``set_fff_implementation``, which pretraining, fine-tuning, the doctor, the benchmarks and
``for_inference`` all call; nothing else picks an implementation.

``auto`` resolves per layer, from the device its weights are on, the mode, and the tree shape:

=========  ==========================  =========================================================
mode       device                      implementation
=========  ==========================  =========================================================
train      CUDA with Triton            ``conditional`` (Triton forward and backward kernels)
train      CPU with numba              ``conditional`` (numba kernels) when the tree has at
                                       least ``CPU_MIN_NODES_PER_VISIT`` nodes per visited
                                       node; else ``masked`` (see below)
train      anything else               ``gather`` (pure PyTorch over visited nodes)
infer      CUDA with Triton            ``triton``
infer      CPU with numba              ``cpu``
infer      anything else               ``gather``
=========  ==========================  =========================================================

The CPU shallow-tree rule is the one place where ``auto`` prefers the dense reference: the
per-token walk reads one weight row per visit from memory, while the masked reference's BLAS
products reuse each row over many tokens. Numba kernels vs masked, forward+backward at 2,048
tokens, H=768, quiet 2-core machine (docs/fff-training.md), by nodes per visited node:
1x11 (341) 26x, 16x7 (32) 7.6x, 128x4 (6.2) 1.7x, 128x3 (3.75) 1.1x, 256x2 (2.3) 0.74x,
512x1 (1.5) 0.49x. Naming ``conditional`` explicitly always runs the kernels.
"""

from __future__ import annotations

from typing import Literal

import torch
from torch import nn

from ultracram.kernels import FFF_IMPLEMENTATIONS, TRAINABLE_FFF_IMPLEMENTATIONS, fff_nodes
from ultracram.kernels.autograd import numba_available, triton_available
from ultracram.model.feedforward import FastFeedForward

Mode = Literal["train", "infer"]
MODES = ("train", "infer")

# Below this many tree nodes per visited node, ``auto`` trains on CPU with ``masked``.
CPU_MIN_NODES_PER_VISIT = 3.5


def resolve(device: torch.device | str, mode: Mode = "train", depth: int = 11, trees: int = 1) -> str:
    """The ``FFF_IMPLEMENTATIONS`` name ``auto`` stands for (table in the module docstring).

    ``trees`` does not change the choice today (every tree of a layer has the same shape); it
    is part of the signature so a rule that depends on it has one place to go.
    """
    if mode not in MODES:
        raise ValueError(f"unknown FFF mode {mode!r}; known: {', '.join(MODES)}")
    kind = torch.device(device).type
    if kind == "cuda" and triton_available():
        return "conditional" if mode == "train" else "triton"
    if kind == "cpu" and numba_available():
        if mode == "infer":
            return "cpu"
        shallow = fff_nodes(depth) < CPU_MIN_NODES_PER_VISIT * (depth + 1)
        return "masked" if shallow else "conditional"
    return "gather"


def set_fff_implementation(model: nn.Module, name: str = "auto", mode: Mode = "train") -> list[str]:
    """Point every FFF layer of ``model`` at ``name`` (``auto``: ``resolve`` per layer, on the
    device of the layer's weights). Returns the implementation of each layer, in module order.

    ``mode="train"`` refuses inference-only kernels (``cpu``, ``triton``): they have no backward.
    """
    if name != "auto" and name not in FFF_IMPLEMENTATIONS:
        raise ValueError(
            f"unknown FFF implementation {name!r}; known: auto, {', '.join(FFF_IMPLEMENTATIONS)}"
        )
    if mode == "train" and name not in ("auto", *TRAINABLE_FFF_IMPLEMENTATIONS):
        raise ValueError(
            f"FFF implementation {name!r} is inference-only; for training use auto or one of "
            f"{', '.join(TRAINABLE_FFF_IMPLEMENTATIONS)}"
        )
    chosen = []
    for m in model.modules():
        if isinstance(m, FastFeedForward):
            m.implementation = (
                resolve(m.linear_in.weight.device, mode, m.depth, m.trees) if name == "auto" else name
            )
            chosen.append(m.implementation)
    return chosen


def fff_implementations(model: nn.Module) -> list[str]:
    """The implementation of each FFF layer of ``model``, in module order."""
    return [m.implementation for m in model.modules() if isinstance(m, FastFeedForward)]


__all__ = [
    "CPU_MIN_NODES_PER_VISIT",
    "MODES",
    "fff_implementations",
    "resolve",
    "set_fff_implementation",
]
