"""The training engine: one Fabric setup and one training step for every loop in ultracram.

Pretraining (``train/pretrain.py``), GLUE fine-tuning (``train/finetune.py``), the doctor's
default ``TrainingSetup`` (``doctor/setup.py``) and the training benchmarks (``bench/train.py``,
``bench/fff_train.py``) all call ``train_step`` below; a test counts the calls. What the doctor
and the benchmarks check is therefore the step users run.

The model stays plain PyTorch. What is applied to it from outside happens here, in one place:

- ``setup_fabric``: devices, strategy (DDP, FSDP), precision policy (``resolve_precision``);
- ``prepare``: the FFF implementation (``ultracram.model.dispatch``), ``torch.compile``, then
  Fabric's wrappers;
- ``train_step``: micro-batch accumulation, the loss the model's head returns (one loss
  computation per micro batch), backward, clipping, the optimizer step, non-finite handling.

The schedule (what learning rate a step uses) and the recovery policy for a non-finite step
(pretraining rolls back and lowers the learning rate; fine-tuning stops with a message) belong
to the caller: ``train_step`` reports, it does not decide.
"""

from __future__ import annotations

import contextlib
import ctypes
import math
import os
import signal
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from lightning.fabric import Fabric
from lightning.fabric.wrappers import _FabricModule
from torch import nn

from ultracram.model.dispatch import set_fff_implementation
from ultracram.model.encoder import Block
from ultracram.train.optim import grad_norm, set_learning_rate
from ultracram.train.state import (
    TrainStateError,
    capture_rng_state,
    load_train_state,
    restore_rng_state,
    save_train_state,
)

# --------------------------------------------------------------------------------------------
# Fabric: devices, distribution, precision
# --------------------------------------------------------------------------------------------


def resolve_precision(precision: str, accelerator: str) -> str:
    """``auto``: bf16 autocast on CUDA cards that have bf16 (Ampere and later), fp16 autocast
    with loss scaling on older cards, full fp32 elsewhere. Anything else is Fabric's name."""
    if precision != "auto":
        return precision
    if accelerator == "cuda":
        return "bf16-mixed" if torch.cuda.is_bf16_supported() else "16-mixed"
    return "32-true"


def resolve_accelerator(accelerator: str) -> str:
    if accelerator == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return accelerator


def setup_fabric(
    accelerator: str = "auto",
    devices: int | str = "auto",
    num_nodes: int = 1,
    strategy: str = "auto",
    precision: str = "auto",
) -> Fabric:
    """The one place where devices, distribution and precision are chosen.

    ``devices="auto"`` on CPU means one process (Fabric's own "auto" would start one per core);
    ask for DDP on CPU explicitly. ``strategy="fsdp"`` shards at transformer-block granularity.
    """
    accelerator = resolve_accelerator(accelerator)
    chosen: Any = strategy
    if strategy == "fsdp":
        from lightning.fabric.strategies import FSDPStrategy

        # Each block's weights are gathered only while it runs (the usual wrap policy).
        chosen = FSDPStrategy(auto_wrap_policy={Block}, state_dict_type="full")
    n = devices if devices == "auto" else int(devices)
    if n == "auto" and accelerator == "cpu":
        n = 1
    if int(os.environ.get("LOCAL_RANK", "0") or 0) > 0:
        end_with_parent()  # a rank that Fabric's launcher (or torchrun) started
    return Fabric(accelerator=accelerator, devices=n, num_nodes=num_nodes, strategy=chosen,
                  precision=resolve_precision(precision, accelerator))  # fmt: skip


def end_with_parent() -> None:
    """Make this process end when its parent dies (Linux ``PR_SET_PDEATHSIG``). The ranks that
    Fabric's launcher starts would otherwise outlive a SIGKILLed launcher, waiting in a
    collective for half an hour; elsewhere this does nothing."""
    if not sys.platform.startswith("linux"):
        return
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, signal.SIGKILL)  # 1 = PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        return
    if os.getppid() == 1:  # the parent died before the signal was armed
        os._exit(1)


def precision_name(fabric: Fabric) -> str:
    """Fabric's name of the precision in use (``32-true``, ``bf16-mixed``, ...)."""
    precision = fabric.strategy.precision
    return getattr(precision, "precision", type(precision).__name__)


def prepare(
    fabric: Fabric, model: nn.Module, optimizer: torch.optim.Optimizer, *, fff: str = "auto",
    compile: bool = False,
) -> tuple[nn.Module, torch.optim.Optimizer]:  # fmt: skip
    """Apply the FFF implementation, compile, and Fabric's wrappers, in that order.

    ``fff`` goes to ``set_fff_implementation(model, fff, mode="train")`` (``auto``: the fastest
    trainable path for the device). The model is compiled before ``fabric.setup``; Fabric then
    re-applies the compilation around its own wrapper.
    """
    set_fff_implementation(model, fff, mode="train")
    if compile:
        model = torch.compile(model)
    return fabric.setup(model, optimizer)


def raw_module(model: nn.Module) -> nn.Module:
    """The user's module under Fabric's (``.module``) and torch.compile's (``._orig_mod``) wrappers."""
    if isinstance(model, _FabricModule):
        model = model.module
    return getattr(model, "_orig_mod", model)


def synchronize(device: torch.device) -> None:
    """Wait for queued device work (CUDA), so a wall-clock timing covers it."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


# --------------------------------------------------------------------------------------------
# The loss of one micro batch
# --------------------------------------------------------------------------------------------


@dataclass
class LossTerms:
    """The loss of one micro batch on one rank, as a head reports it.

    ``task_loss``: () mean of the task loss over ``count`` items (masked tokens, examples);
    ``count``: () items; ``aux``: () weighted auxiliary loss (Switch load balance, soft-FFF
    hardening), added once per micro batch, or None.
    """

    task_loss: torch.Tensor
    count: torch.Tensor
    aux: torch.Tensor | None = None


LossFn = Callable[[nn.Module, Any], LossTerms]


def model_loss(model: nn.Module, batch: dict[str, torch.Tensor]) -> LossTerms:
    """The model's own loss: ``model(**batch)`` with labels in the batch ("labels in, loss out")."""
    out = model(**batch)
    return LossTerms(out.task_loss, out.count, out.aux_loss)


# --------------------------------------------------------------------------------------------
# The training step
# --------------------------------------------------------------------------------------------


@dataclass
class StepResult:
    """``loss``: the task loss averaged over the step's micro batches and ranks (without the
    auxiliary losses); ``grad_norm``: the global gradient norm before clipping; ``finite``:
    False if either is non-finite, in which case the optimizer did not step."""

    loss: float
    grad_norm: float
    finite: bool
    micro_batches: int


def train_step(
    fabric: Fabric,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    micro_batches: Sequence[Any],
    *,
    grad_clip: float | None = None,
    lr: float | None = None,
    loss_fn: LossFn = model_loss,
    loss_hook: Callable[[torch.Tensor], torch.Tensor] | None = None,
    grad_hook: Callable[[nn.Module], None] | None = None,
) -> StepResult:
    """One optimizer step over ``micro_batches`` (gradient accumulation), on every rank.

    For micro batch ``a`` with mean task loss m_a over c_a items on this rank, the loss that is
    backpropagated is ``m_a * c_a * world / C_a + aux_a``, divided by the number of micro batches,
    where C_a is the item count over all ranks: DDP averages gradients over ranks, so each micro
    batch contributes the gradient of its *global* mean loss however the items fall across ranks
    (on one rank the factor is exactly 1). Then: clip to ``grad_clip`` (None or 0: only measure),
    and step unless the loss or the gradient norm is non-finite (under fp16 loss scaling, an
    overflow with a finite loss goes to the scaler, which skips the update and lowers the scale,
    and counts as finite). Gradients are zeroed before and after. ``lr`` (if given) is set on every parameter group first. ``micro_batches`` may be any
    sequence, e.g. one that builds each batch on access. ``loss_hook`` / ``grad_hook`` are test
    hooks (fault injection) applied to each micro batch's loss and to the gradients before
    clipping.
    """
    if lr is not None:
        set_learning_rate(optimizer, lr)
    model.train()
    optimizer.zero_grad(set_to_none=True)
    n = len(micro_batches)
    world = fabric.world_size
    loss_sum = torch.zeros((), device=fabric.device)
    for a in range(n):
        with _no_sync(fabric, model, a < n - 1), fabric.autocast():
            terms = loss_fn(model, micro_batches[a])
            task_loss = terms.task_loss if loss_hook is None else loss_hook(terms.task_loss)
            if world > 1:  # this rank's share of the micro batch's items, times world (see above)
                count = terms.count.to(fabric.device, torch.float32)
                total = fabric.all_reduce(count.clone(), reduce_op="sum").clamp_min(1.0)  # in place
                task_loss = task_loss * (count * world / total)
            loss = task_loss if terms.aux is None else task_loss + terms.aux
            fabric.backward(loss / n)
        loss_sum += task_loss.detach() / world
    if grad_hook is not None:
        grad_hook(model)
    loss_value = float(loss_sum if world == 1 else fabric.all_reduce(loss_sum, reduce_op="sum")) / n
    norm = _clip(fabric, model, optimizer, grad_clip)
    finite = math.isfinite(loss_value) and math.isfinite(norm)
    # fp16 with loss scaling: overflowing gradients with a finite loss are the scaler's business
    # (its step skips the update and lowers the scale), not a divergence.
    overflow = not finite and math.isfinite(loss_value) and _loss_scaler(fabric) is not None
    if finite or overflow:
        optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return StepResult(loss=loss_value, grad_norm=norm, finite=finite or overflow, micro_batches=n)


def _loss_scaler(fabric: Fabric):
    """The fp16 GradScaler of Fabric's precision plugin (``16-mixed``), else None."""
    return getattr(fabric.strategy.precision, "scaler", None)


def _no_sync(fabric: Fabric, model: nn.Module, skip: bool):
    """Skip DDP's gradient all-reduce on all but the last micro batch of a step."""
    if skip and isinstance(model, _FabricModule):
        return fabric.no_backward_sync(model, enabled=True)
    return contextlib.nullcontext()


def _clip(fabric: Fabric, model: nn.Module, optimizer, max_norm: float | None) -> float:
    """Clip to ``max_norm`` (None or 0: only measure) and return the global gradient norm before
    clipping (inf/nan if any gradient is non-finite). Fabric unscales fp16 gradients first, so
    the norm is the true one under loss scaling too."""
    if max_norm and max_norm > 0:
        return float(fabric.clip_gradients(model, optimizer, max_norm=max_norm, error_if_nonfinite=False))
    if _loss_scaler(fabric) is not None:  # an infinite bound measures the unscaled norm, changes nothing
        return float(fabric.clip_gradients(model, optimizer, max_norm=math.inf, error_if_nonfinite=False))
    return grad_norm(raw_module(model).parameters())


# --------------------------------------------------------------------------------------------
# Training state: one layout for pretraining and fine-tuning
# --------------------------------------------------------------------------------------------
# A state is {"model", "optimizer", "progress", "rng", "config"}: the module and optimizer state
# dicts (full, gathered on rank zero under FSDP), the loop's position (a JSON-able dict the
# caller owns: step, data position, tokens, elapsed budget, lr scale, ...), every RNG state,
# and the caller's settings. Files are written by ``ultracram.train.state`` (safetensors,
# atomic, nothing unpickled).


def _is_fsdp(fabric: Fabric) -> bool:
    from lightning.fabric.strategies import FSDPStrategy

    return isinstance(fabric.strategy, FSDPStrategy)


def module_state(fabric: Fabric, model: nn.Module) -> dict[str, torch.Tensor]:
    """The full state dict of the user's module (every rank joins under FSDP)."""
    if _is_fsdp(fabric):
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

        return get_model_state_dict(
            raw_module(model), options=StateDictOptions(full_state_dict=True, cpu_offload=True)
        )
    return raw_module(model).state_dict()


def _optimizer_state(fabric: Fabric, model: nn.Module, optimizer) -> dict[str, Any]:
    opt = getattr(optimizer, "optimizer", optimizer)
    if _is_fsdp(fabric):
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_optimizer_state_dict

        return get_optimizer_state_dict(raw_module(model), opt,
                                        options=StateDictOptions(full_state_dict=True, cpu_offload=True))  # fmt: skip
    return opt.state_dict()


def _load_module_state(fabric: Fabric, model: nn.Module, state: dict[str, torch.Tensor]) -> None:
    if _is_fsdp(fabric):
        from torch.distributed.checkpoint.state_dict import StateDictOptions, set_model_state_dict

        set_model_state_dict(raw_module(model), state, options=StateDictOptions(full_state_dict=True))
        return
    raw_module(model).load_state_dict(state)


def _load_optimizer_state(fabric: Fabric, model: nn.Module, optimizer, state: dict[str, Any]) -> None:
    opt = getattr(optimizer, "optimizer", optimizer)
    if _is_fsdp(fabric):
        from torch.distributed.checkpoint.state_dict import StateDictOptions, set_optimizer_state_dict

        set_optimizer_state_dict(
            raw_module(model), opt, state, options=StateDictOptions(full_state_dict=True)
        )
        return
    opt.load_state_dict(state)


def save_state(
    fabric: Fabric, directory: str | Path, step: int, model: nn.Module, optimizer, progress: dict[str, Any],
    *, config: dict[str, Any] | None = None, keep_last: int | None = 3,
) -> None:  # fmt: skip
    """Write ``directory/state-<step>.safetensors`` on rank zero (all ranks must call: FSDP
    gathers); the newest ``keep_last`` states are kept."""
    state = {
        "model": module_state(fabric, model),
        "optimizer": _optimizer_state(fabric, model, optimizer),
        "progress": progress,
        "rng": capture_rng_state(),
        "config": config or {},
    }
    if fabric.global_rank == 0:
        save_train_state(directory, step, state, keep_last=keep_last)
    fabric.barrier()


def restore_state(fabric: Fabric, path: str | Path, model: nn.Module, optimizer) -> dict[str, Any]:
    """Load a state written by ``save_state`` into ``model`` and ``optimizer``, restore the RNGs,
    and return its ``progress`` dict.

    Older layouts load too: pretraining states before 0.2 kept the lr scale under
    ``schedule``; fine-tuning states kept ``step`` at the top and a LambdaLR ``scheduler``
    (whose learning rate is a function of the step, so the step is all that is needed).
    """
    state = load_train_state(path)
    try:
        _load_module_state(fabric, model, state["model"])
        _load_optimizer_state(fabric, model, optimizer, state["optimizer"])
        progress = dict(state["progress"]) if "progress" in state else {"step": int(state["step"])}
    except (KeyError, RuntimeError, ValueError) as e:
        raise TrainStateError(
            f"{path}: cannot resume from this training state ({type(e).__name__}: {e}); it was written "
            "for another model or by another version: delete it to restart from the previous one"
        ) from e
    if "schedule" in state:
        progress["lr_scale"] = state["schedule"]["lr_scale"]
    restore_rng_state(state["rng"])
    return progress


__all__ = [
    "LossFn",
    "LossTerms",
    "StepResult",
    "TrainStateError",
    "end_with_parent",
    "model_loss",
    "module_state",
    "precision_name",
    "prepare",
    "raw_module",
    "resolve_precision",
    "restore_state",
    "save_state",
    "setup_fabric",
    "synchronize",
    "train_step",
]
