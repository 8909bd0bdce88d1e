"""Training speed of FFF: forward + backward of one layer per implementation, and a model step.

``bench_fff_train`` times, in one run and on the same inputs:

- one FFF layer (H=768) for each preset shape (1x11 and 128x4 by default) through each
  training implementation: ``masked`` (the reference UltraFastBERT trains with), ``gather``
  (autograd through index gathers) and ``conditional`` (kernels/autograd.py; ``auto`` picks
  masked instead for very shallow trees on CPU, see ``ultracram.model.dispatch``); on CPU also
  its backends forced, ``conditional/numba`` and ``conditional/torch``;
- crammed-bert's GLU FFN (768 -> 3072 GLU -> 768) on the same tokens;
- optionally a whole-model MLM training step (``engine.train_step``: forward, loss, backward,
  clipping, AdamW) of a shallow ultrafastbert vs crammed-bert of the same width.

Each conditional path's output and gradients are checked against the masked reference in
the same run before it is timed. Every path of a benchmark (all shapes and the GLU; all
models of the model step) is then warmed up and timed in one block of ``repeats`` interleaved
rounds, each round running every path once in a rotated order (``bench.timing``), so a slow
spell of a shared machine falls on all of them alike. Times are the minimum over rounds (the
least disturbed sample); the median is recorded too. The load average before and after is
recorded (``load`` in the JSON), with a warning when the machine was busy.
"""

from __future__ import annotations

import functools
import json
import platform
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal

import torch
import torch.nn.functional as F

from ultracram.bench.timing import interleaved_rounds, load_report, machine_load
from ultracram.config import IGNORE_INDEX, get_preset
from ultracram.kernels import FFF_IMPLEMENTATIONS
from ultracram.kernels.autograd import fff_conditional
from ultracram.model import build_model
from ultracram.model.feedforward import FastFeedForward, GatedFeedForward
from ultracram.settings import comma_list
from ultracram.train import engine
from ultracram.train.engine import prepare, setup_fabric
from ultracram.train.optim import build_optimizer
from ultracram.train.pretrain_config import RECIPES

MODEL_STEP_SHAPE = (4, 128)  # batch x sequence length of the optional whole-model step


def _time(
    steps: dict[str, Callable[[], Any]], repeats: int, device: torch.device
) -> dict[str, dict[str, float]]:
    """Per step: min and median seconds over ``repeats`` interleaved rounds (rotated order),
    after one warm-up call of each (numba / Triton compilation, allocator)."""

    def sync():
        if device.type == "cuda":
            torch.cuda.synchronize()

    def timed(step: Callable[[], Any]) -> Callable[[], float]:
        def unit() -> float:  # waits for the device: CUDA is asynchronous
            t0 = time.perf_counter()
            step()
            sync()
            return time.perf_counter() - t0

        return unit

    for step in steps.values():
        step()
        sync()
    times = interleaved_rounds({name: timed(step) for name, step in steps.items()}, repeats)
    return {name: {"min_s": min(t), "median_s": statistics.median(t)} for name, t in times.items()}


# The per-visit torch paths (gather, conditional/torch) take minutes for 128x4 (640 visits per
# token) on a 2-core CPU; above this many visits per token they are skipped.
MAX_VISITS_FOR_TORCH_PATHS = 64


def _layer_paths(device: torch.device, visits: int) -> dict[str, Callable]:
    paths = {name: FFF_IMPLEMENTATIONS[name] for name in ("masked", "gather", "conditional")}
    if device.type == "cpu":
        paths["conditional/numba"] = functools.partial(fff_conditional, backend="numba")
        paths["conditional/torch"] = functools.partial(fff_conditional, backend="torch")
        if visits > MAX_VISITS_FOR_TORCH_PATHS:
            del paths["gather"], paths["conditional/torch"]
    return paths


def _check(got: list[torch.Tensor], want: list[torch.Tensor]) -> float:
    """Largest |got - want| / max|want| over the output and the four gradients."""
    return max(((g.double() - w.double()).abs().max() / w.double().abs().max().clamp_min(1e-30)).item()
               for g, w in zip(got, want, strict=True))  # fmt: skip


def bench_layers(
    shapes: list[str], tokens: int, repeats: int, device: torch.device, dtype: torch.dtype
) -> list[dict[str, Any]]:
    """Forward+backward tokens/s of one FFF layer per path and of crammed-bert's GLU FFN."""
    rows = []
    glu_config = get_preset("crammed-bert")
    glu = GatedFeedForward(glu_config).to(device, dtype)
    x = torch.randn(tokens, glu_config.hidden_size, device=device, dtype=dtype)
    grad = torch.randn_like(x)

    def glu_step():
        xi = x.detach().requires_grad_()
        glu.zero_grad(set_to_none=True)
        glu(xi).backward(grad)

    # Every (shape, path) is checked first, then all of them and the GLU are timed in one block.
    steps: dict[str, Callable] = {"glu": glu_step}
    errors: dict[tuple[str, str], float] = {}  # (shape, path) -> max relative error vs masked
    for shape in shapes:
        config = get_preset(shape)
        layer = FastFeedForward(config).to(device, dtype)
        params = [layer.linear_in.weight, layer.linear_in.bias, layer.linear_out.weight]
        reference = None
        for name, fn in _layer_paths(device, config.fff_trees * (config.fff_depth + 1)).items():

            def step(fn=fn, params=params, config=config):
                xi = x.detach().requires_grad_()
                for p in params:
                    p.grad = None
                out = fn(xi, *params, config.fff_depth, config.fff_trees, F.gelu)
                out.backward(grad)
                return [out.detach(), xi.grad, *(p.grad for p in params)]

            result = step()
            if reference is None:
                reference = result
            errors[shape, name] = _check(result, reference)
            steps[f"{shape}/{name}"] = step
        del reference
    times = _time(steps, repeats, device)
    glu_time = times["glu"]
    for (shape, name), err in errors.items():
        t = times[f"{shape}/{name}"]
        rows.append({"shape": shape, "path": name, "tokens": tokens, **t,
                     "tokens_per_s": tokens / t["min_s"], "max_rel_err_vs_masked": err})  # fmt: skip
    for shape in shapes:
        masked = next(r for r in rows if r["shape"] == shape and r["path"] == "masked")
        for r in rows:
            if r["shape"] == shape:
                r["speedup_vs_masked"] = masked["min_s"] / r["min_s"]
                r["speedup_vs_glu"] = glu_time["min_s"] / r["min_s"]
    rows.append({"shape": "crammed-bert GLU 768->3072->768", "path": "glu", "tokens": tokens, **glu_time,
                 "tokens_per_s": tokens / glu_time["min_s"], "speedup_vs_glu": 1.0})  # fmt: skip
    return rows


def bench_model_step(
    layers: int, batch: int, seq: int, repeats: int, device: torch.device
) -> list[dict[str, Any]]:
    """MLM training step of shallow full-width models, tokens/s: ``engine.train_step`` (forward,
    loss, backward, clipping, AdamW), as ``ultracram pretrain`` takes it, per FFF path."""
    fabric = setup_fabric(device.type, [device.index] if device.index is not None else 1)
    recipe = RECIPES["cramming"]
    gen = torch.Generator().manual_seed(0)
    rows, steps = [], {}
    cases = [("crammed-bert", None)] + [
        ("ultrafastbert-1x11", p) for p in ("masked", "gather", "conditional")
    ]
    for preset, path in cases:
        config = get_preset(preset, num_layers=layers)
        torch.manual_seed(0)
        model = build_model(config, "mlm")
        optimizer = build_optimizer(model, lr=recipe["lr"], betas=(recipe["beta1"], recipe["beta2"]),
                                    eps=recipe["eps"], weight_decay=recipe["weight_decay"])  # fmt: skip
        model, optimizer = prepare(fabric, model, optimizer, fff=path or "auto")
        ids = torch.randint(5, config.vocab_size, (batch, seq), generator=gen)
        labels = torch.where(torch.rand(batch, seq, generator=gen) < 0.15, ids, IGNORE_INDEX)
        data = [{"input_ids": fabric.to_device(ids), "labels": fabric.to_device(labels)}]

        def step(model=model, optimizer=optimizer, data=data):
            engine.train_step(fabric, model, optimizer, data, grad_clip=recipe["grad_clip"])

        steps[path or "glu"] = step
    # Every model is built before any is timed, then all are timed in one block.
    times = _time(steps, repeats, device)
    for preset, path in cases:
        t = times[path or "glu"]
        rows.append({"preset": preset, "layers": layers, "path": path or "glu", **t,
                     "tokens_per_s": batch * seq / t["min_s"]})  # fmt: skip
    glu = rows[0]["min_s"]
    masked = rows[1]["min_s"]
    for r in rows:
        r["speedup_vs_crammed"] = glu / r["min_s"]
        r["speedup_vs_masked"] = masked / r["min_s"] if r["preset"] != "crammed-bert" else None
    return rows


def bench_fff_train(
    shapes: list[str] | str = "ultrafastbert-1x11,ultrafastbert-128x4",
    tokens: int = 2048,
    repeats: int = 3,
    model_layers: int = 0,
    device: Literal["cpu", "cuda"] = "cpu",
    dtype: Literal["float32", "bfloat16"] = "float32",
    out: str | None = "out/bench/fff_train.json",
) -> dict[str, Any]:
    """FFF layer forward+backward tokens/s per training implementation vs masked and GLU

    Time forward+backward of one FFF layer (H=768) through masked, gather and conditional (and
    its backends) against crammed-bert's GLU FFN on the same tokens; gradients are checked
    against the masked reference in the same run. Optionally a shallow whole-model MLM training
    step (batch 4 x 128 tokens, fp32). Prints a table and writes JSON.

    Args:
        shapes: comma list of presets
        tokens: tokens per step
        repeats: timed steps per path
        model_layers: also time a model step of this depth (0: no)
        device: cpu or cuda
        dtype: dtype of the layer benchmark
        out: JSON output
    """
    model_batch, model_seq = MODEL_STEP_SHAPE
    dev = torch.device(device)
    torch_dtype = {"float32": torch.float32, "bfloat16": torch.bfloat16}[dtype]
    load_before = machine_load()
    layer_rows = bench_layers(comma_list(shapes), tokens, repeats, dev, torch_dtype)
    print(
        f"FFF layer forward+backward, {tokens} tokens, {dtype}, {device} ({torch.get_num_threads()} threads)"
    )
    print(
        f"{'shape':34s} {'path':18s} {'tokens/s':>10s} {'vs masked':>10s} {'vs GLU':>8s} {'max rel err':>12s}"
    )
    for r in layer_rows:
        vm = f"{r['speedup_vs_masked']:.2f}x" if "speedup_vs_masked" in r else "-"
        err = f"{r['max_rel_err_vs_masked']:.1e}" if "max_rel_err_vs_masked" in r else "-"
        print(f"{r['shape']:34s} {r['path']:18s} {r['tokens_per_s']:10.0f} {vm:>10s} "
              f"{r['speedup_vs_glu']:7.2f}x {err:>12s}")  # fmt: skip
    model_rows = []
    if model_layers:
        model_rows = bench_model_step(model_layers, model_batch, model_seq, repeats, dev)
        print(f"\nMLM training step, {model_layers} layers, batch {model_batch} x seq {model_seq}, fp32")
        for r in model_rows:
            vm = f"{r['speedup_vs_masked']:.2f}x" if r["speedup_vs_masked"] else "-"
            print(f"{r['preset']:20s} {r['path']:12s} {r['tokens_per_s']:9.0f} tok/s  vs masked {vm:>6s}  "
                  f"vs crammed {r['speedup_vs_crammed']:.2f}x")  # fmt: skip
    load = load_report(load_before, machine_load())
    before, after = _load_text(load["before"]), _load_text(load["after"])
    print(f"\nload average (1 min) {before} -> {after} on {load['cores']} cores")
    if load["warning"]:
        print(load["warning"])
    result = {
        "device": device if dev.type == "cpu" else torch.cuda.get_device_name(dev),
        "cpu": platform.processor() or platform.machine(),
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "note": "times are the minimum over repeats, timed in interleaved rounds (rotated order); "
        "the machine may be shared (see median_s and load)",
        "load": load,
        "layers": layer_rows,
        "model_step": model_rows,
    }
    if out:
        Path(out).parent.mkdir(parents=True, exist_ok=True)
        Path(out).write_text(json.dumps(result, indent=2))
        print(f"\nwrote {out}")
    return result


def _load_text(load: list[float] | None) -> str:
    return "n/a" if load is None else f"{load[0]:.2f}"
