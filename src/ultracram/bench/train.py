"""``ultracram bench train``: training throughput (tokens/s) and MFU of each preset.

Each preset runs ``warmup`` untimed and then ``steps`` timed MLM training steps (forward,
backward, clipping, AdamW) on one fixed random batch, through the same Fabric setup, optimizer,
FFF implementation choice and loss as ``ultracram pretrain``. FFF presets run once per training
path (``fff_paths``: the masked reference, gather, the conditional kernels), each also given
as a ratio to its own masked run and to the crammed-bert preset of the same size. MFU = tokens/s x 3 x forward
FLOPs per token (``ultracram.model.flops_per_token``) / peak FLOP/s (``train.metrics.peak_flops``:
data sheet on GPUs, measured fp32 matmul peak on CPUs).
"""

from __future__ import annotations

import json
import platform
import time
from pathlib import Path
from typing import Any

import torch

from ultracram.config import get_preset, preset_names
from ultracram.data.mlm import mask_tokens
from ultracram.data.tokenizer import SPECIAL_TOKENS
from ultracram.kernels import TRAINABLE_FFF_IMPLEMENTATIONS
from ultracram.model import build_model, flops_per_token, parameter_counts
from ultracram.settings import comma_list
from ultracram.train import engine
from ultracram.train.engine import precision_name, prepare, setup_fabric, synchronize
from ultracram.train.metrics import peak_flops
from ultracram.train.optim import build_optimizer
from ultracram.train.pretrain_config import RECIPES

FULL_PRESETS = ["bert-base", "crammed-bert", "ultrafastbert-1x11", "ultrafastbert-128x4", "fnet", "switch"]


def tiny_presets() -> list[str]:
    return [p for p in preset_names() if p.endswith("-tiny")]


def bench_train(
    presets: list[str] | str | None = None,
    *,
    full: bool = False,
    steps: int | None = None,
    warmup: int = 2,
    batch_size: int | None = None,
    seq_len: int = 128,
    device: str = "auto",
    precision: str = "auto",
    compile: bool = False,
    fff_paths: list[str] | str = "masked,gather,conditional",
    max_batch: int = 0,
    out: str | None = "out/bench/train.json",
) -> dict[str, Any]:
    """training throughput (tokens/s) and MFU of each preset over a fixed number of steps

    Time a fixed number of MLM training steps (forward, backward, AdamW) per preset on random
    tokens, after warm-up steps; report tokens/s and MFU (3 x forward FLOPs per token from
    ultracram.model.flops_per_token over the device's peak). Tiny presets by default; --full adds
    the full-size presets with fewer steps. FFF presets run once per --fff_paths entry, with
    ratios to their own masked run and to crammed-bert of the same size. With --max_batch, the
    largest micro batch that fits is found per preset and path by doubling from --batch_size
    (one step each) until a step runs out of device memory; each result records the peak
    device memory (CUDA). Writes a JSON report and returns it.

    Args:
        presets: comma list (default: every *-tiny preset, plus the full presets with --full)
        full: also the full-size presets
        steps: timed steps (default: 10 tiny, 3 full)
        warmup: untimed steps first
        batch_size: sequences per step (default: 32 tiny, 8 full)
        seq_len: tokens per sequence
        device: cpu, cuda or auto
        precision: auto, 32-true, bf16-mixed, 16-mixed
        compile: torch.compile each model
        fff_paths: FFF training paths to time for FFF presets
        max_batch: find the largest micro batch that fits by doubling --batch_size up to this (0: off)
        out: JSON output
    """
    from rich.console import Console
    from rich.table import Table

    presets, fff_paths = comma_list(presets), comma_list(fff_paths)
    unknown = [p for p in fff_paths if p not in TRAINABLE_FFF_IMPLEMENTATIONS]
    if unknown:
        raise ValueError(
            f"unknown FFF training path(s) {unknown}; trainable: {', '.join(TRAINABLE_FFF_IMPLEMENTATIONS)}"
        )

    names = presets or (tiny_presets() + (FULL_PRESETS if full else []))
    fabric = setup_fabric(device, 1, precision=precision)
    peak, peak_source = peak_flops(fabric.device)
    console = Console()
    results = []
    for name in names:
        small = name.endswith("-tiny")
        n_steps = steps or (10 if small else 3)
        batch = batch_size or (32 if small else 8)
        for path in fff_paths if get_preset(name).ffn == "fff" else (None,):
            fits = (
                _largest_batch(fabric, name, batch, max_batch, seq_len, compile, peak, path)
                if max_batch
                else batch
            )
            results.append(_bench_one(fabric, name, n_steps, warmup, fits, seq_len, compile, peak, path))
            r = results[-1]
            console.print(f"{_shown(r)}: {r['tokens_per_s']:,.0f} tokens/s, MFU {r['mfu']:.1%}")
    _add_ratios(results)
    report = {
        "device": str(fabric.device),
        "device_name": torch.cuda.get_device_name(fabric.device) if fabric.device.type == "cuda" else platform.processor() or platform.machine(),
        "threads": torch.get_num_threads(),
        "precision": precision_name(fabric),
        "peak_flops": peak,
        "peak_source": peak_source,
        "seq_len": seq_len,
        "compile": compile,
        "results": results,
    }  # fmt: skip
    table = Table(title=f"training throughput on {report['device_name']} ({report['precision']}, peak "
                  f"{peak / 1e9:,.0f} GFLOP/s: {peak_source})")  # fmt: skip
    for col in ("preset [FFF path]", "params", "batch", "steps", "s/step", "tokens/s", "GFLOP/s", "MFU",
                "vs masked", "vs crammed"):  # fmt: skip
        table.add_column(col, justify="left" if col.startswith("preset") else "right")
    for r in results:
        table.add_row(_shown(r), f"{r['parameters'] / 1e6:.2f}M", str(r["batch_size"]), str(r["steps"]),
                      f"{r['seconds_per_step']:.3f}", f"{r['tokens_per_s']:,.0f}",
                      f"{r['flops_per_s'] / 1e9:,.1f}", f"{r['mfu']:.1%}", _ratio(r.get("vs_masked")),
                      _ratio(r.get("vs_crammed")))  # fmt: skip
    console.print(table)
    if out:
        Path(out).parent.mkdir(parents=True, exist_ok=True)
        Path(out).write_text(json.dumps(report, indent=2) + "\n")
        console.print(f"wrote {out}")
    return report


def _label(r: dict[str, Any]) -> str:
    return f"{r['preset']} [{r['fff_path']}]" if r.get("fff_path") else r["preset"]


def _shown(r: dict[str, Any]) -> str:
    """The label for rich output, where "[masked]" would otherwise be read as a style tag."""
    from rich.markup import escape

    return escape(_label(r))


def _ratio(v: float | None) -> str:
    return "-" if v is None else f"{v:.2f}x"


def _add_ratios(results: list[dict[str, Any]]) -> None:
    """FFF rows: tokens/s over the same preset's masked run and over crammed-bert of the same
    size (crammed-bert-tiny for tiny presets), when those were measured in this run."""
    by_label = {_label(r): r for r in results}
    for r in results:
        if not r.get("fff_path"):
            continue
        masked = by_label.get(f"{r['preset']} [masked]")
        crammed = by_label.get("crammed-bert-tiny" if r["preset"].endswith("-tiny") else "crammed-bert")
        if masked is not None:
            r["vs_masked"] = r["tokens_per_s"] / masked["tokens_per_s"]
        if crammed is not None:
            r["vs_crammed"] = r["tokens_per_s"] / crammed["tokens_per_s"]


def _largest_batch(fabric, name: str, start: int, cap: int, seq_len: int, compile: bool, peak: float,
                   fff_path: str | None) -> int:  # fmt: skip
    """The largest micro batch in start, 2*start, ... <= cap whose training step fits in memory."""
    fits, batch = start, start
    while batch <= cap:
        try:
            _bench_one(fabric, name, 1, 1, batch, seq_len, compile, peak, fff_path)
        except torch.OutOfMemoryError:
            break
        finally:
            if fabric.device.type == "cuda":
                torch.cuda.empty_cache()
        fits, batch = batch, batch * 2
    return fits


def _bench_one(fabric, name: str, steps: int, warmup: int, batch: int, seq_len: int, compile: bool,
               peak: float, fff_path: str | None = None) -> dict[str, Any]:  # fmt: skip
    config = get_preset(name, max_seq_len=max(seq_len, get_preset(name).max_seq_len))
    recipe = RECIPES["bert" if name.startswith("bert") else "cramming"]
    fabric.seed_everything(0, verbose=False)
    with fabric.init_module():
        model = build_model(config, "mlm")
    params = parameter_counts(model)["total"]
    optimizer = build_optimizer(model, lr=recipe["lr"], betas=(recipe["beta1"], recipe["beta2"]),
                                eps=recipe["eps"], weight_decay=recipe["weight_decay"])  # fmt: skip
    model, optimizer = prepare(fabric, model, optimizer, fff=fff_path or "auto", compile=compile)
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(len(SPECIAL_TOKENS), config.vocab_size, (batch, seq_len), generator=g)
    masked, labels = mask_tokens(ids, config.mask_rate, mask_token_id=SPECIAL_TOKENS.index("[MASK]"),
                                 vocab_size=config.vocab_size, special_ids=list(range(len(SPECIAL_TOKENS))),
                                 generator=g)  # fmt: skip
    data = [{"input_ids": fabric.to_device(masked), "labels": fabric.to_device(labels)}]

    def step() -> None:  # the step ultracram pretrain takes (engine.train_step), one micro batch
        engine.train_step(fabric, model, optimizer, data, grad_clip=recipe["grad_clip"], lr=recipe["lr"])

    cuda = fabric.device.type == "cuda"
    if cuda:
        torch.cuda.reset_peak_memory_stats(fabric.device)
    for _ in range(warmup):
        step()
    synchronize(fabric.device)
    t0 = time.perf_counter()
    for _ in range(steps):
        step()
    synchronize(fabric.device)
    seconds = (time.perf_counter() - t0) / steps
    tokens_per_s = batch * seq_len / seconds
    flops = 3 * flops_per_token(config, seq_len)["total"] * tokens_per_s
    return {"preset": name, "fff_path": fff_path, "parameters": params, "batch_size": batch, "steps": steps,
            "seconds_per_step": seconds, "tokens_per_s": tokens_per_s, "flops_per_s": flops,
            "mfu": flops / peak if peak else float("nan"), "compile": compile,
            "peak_memory_gb": torch.cuda.max_memory_allocated(fabric.device) / 1e9 if cuda else None}  # fmt: skip


__all__ = ["FULL_PRESETS", "bench_train", "tiny_presets"]
