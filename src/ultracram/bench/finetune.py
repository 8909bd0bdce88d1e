"""``ultracram bench finetune``: one GLUE fine-tuning step through the engine, per FFF path.

The step is the one ``ultracram glue`` takes (``engine.train_step`` on a classifier built as
``finetune_run`` builds it: pooler, dropout, AdamW with the protocol's settings), on a random
batch of ``batch_size`` x ``seq_len`` tokens. Each path gets its own copy of the same weights;
paths are timed in interleaved rounds (``bench.timing``: round r times every path once, in a
rotated order), so load on a shared machine falls on all of them alike, and each is reported
with its ratio to ``masked`` (the dense reference UltraFastBERT itself fine-tunes with) from
the same run; the load average before and after is recorded, with a warning when the machine
was busy. Before timing, one step of each path from the same weights and dropout masks is
compared with ``masked``: the loss difference is reported.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import os
import platform
import statistics
import time
from pathlib import Path
from typing import Any, Literal

import torch

from ultracram.bench.timing import interleaved_rounds, load_report, machine_load
from ultracram.config import get_preset
from ultracram.model import build_model
from ultracram.model.dispatch import fff_implementations
from ultracram.settings import comma_list
from ultracram.train import engine
from ultracram.train.engine import precision_name, prepare, raw_module, setup_fabric, synchronize
from ultracram.train.finetune import make_optimizer
from ultracram.train.finetune_settings import PROTOCOLS, lr_grid


def bench_finetune(
    preset: str = "ultrafastbert-1x11",
    *,
    paths: list[str] | str = "masked,auto",
    batch_size: int = 16,
    seq_len: int = 128,
    rounds: int = 3,
    protocol: Literal["fit", "sane", "bert"] = "sane",
    device: str = "cpu",
    precision: str = "auto",
    out: str | None = "out/bench/finetune.json",
) -> dict[str, Any]:
    """one GLUE fine-tuning step per FFF path through the training engine, vs masked

    Time the step `ultracram glue` takes (engine.train_step on a classifier) for each FFF path,
    in interleaved rounds, with the ratio to the masked reference from the same run and the
    first-step loss difference. auto = what `ultracram glue` uses (the conditional kernels).
    Prints a table and writes JSON.

    Args:
        preset: model preset
        paths: FFF paths, comma list with masked
        batch_size: examples per step
        seq_len: tokens per example
        rounds: timed steps per path
        protocol: GLUE protocol whose classifier (dropout, pooler) and optimizer are timed (fit:
            at its learning-rate grid's width-scaled step)
        device: cpu or cuda
        precision: auto or a Lightning precision
        out: JSON output
    """
    paths = comma_list(paths)
    if "masked" not in paths:
        raise ValueError("paths must include masked, the reference the ratios are taken against")
    s = PROTOCOLS[protocol]
    if s.lr is None:  # fit chooses the lr per task; a step's speed does not depend on it
        s = dataclasses.replace(s, lr=lr_grid(get_preset(preset).hidden_size)[1])
    config = get_preset(preset, dropout=s.dropout, attention_dropout=s.attention_dropout,
                        classifier_dropout=s.classifier_dropout, pooler=s.pooler,
                        pooler_size=s.pooler_size or get_preset(preset).hidden_size)  # fmt: skip
    fabric = setup_fabric(device, 1, precision=precision)
    torch.manual_seed(0)
    base = build_model(config, "classification", num_labels=2)
    g = torch.Generator().manual_seed(0)
    batch = {
        "input_ids": fabric.to_device(
            torch.randint(5, config.vocab_size, (batch_size, seq_len), generator=g)
        ),
        "attention_mask": fabric.to_device(torch.ones(batch_size, seq_len, dtype=torch.long)),
        "labels": fabric.to_device(torch.randint(2, (batch_size,), generator=g)),
    }
    runs: dict[str, dict[str, Any]] = {}
    for path in paths:
        model = copy.deepcopy(base)
        model, optimizer = prepare(fabric, model, make_optimizer(model, s), fff=path)
        runs[path] = {"model": model, "optimizer": optimizer,
                      "implementation": sorted(set(fff_implementations(raw_module(model))))}  # fmt: skip
    del base

    def step(path: str) -> float:
        r = runs[path]
        return engine.train_step(
            fabric, r["model"], r["optimizer"], [batch], grad_clip=s.grad_clip, lr=s.lr
        ).loss

    # The first step from the same weights and dropout masks: the same loss on every path.
    first = {}
    for path in paths:
        torch.manual_seed(1)
        first[path] = step(path)

    def timed(path: str) -> float:  # the device drained before and after: CUDA is asynchronous
        synchronize(fabric.device)
        t0 = time.perf_counter()
        step(path)
        synchronize(fabric.device)
        return time.perf_counter() - t0

    load_before = machine_load()
    times = interleaved_rounds({path: (lambda path=path: timed(path)) for path in paths}, rounds)
    load = load_report(load_before, machine_load())
    rows = []
    for path in paths:
        t = times[path]
        rows.append({"path": path, "implementation": runs[path]["implementation"], "min_s": min(t),
                     "median_s": statistics.median(t), "times_s": t,
                     "tokens_per_s": batch_size * seq_len / statistics.median(t),
                     "first_loss": first[path], "first_loss_diff_vs_masked": abs(first[path] - first["masked"])})  # fmt: skip
    masked = next(r for r in rows if r["path"] == "masked")
    for r in rows:
        r["speedup_vs_masked"] = masked["median_s"] / r["median_s"]
    result = {
        "preset": preset, "batch_size": batch_size, "seq_len": seq_len, "rounds": rounds, "protocol": protocol,
        "device": str(fabric.device), "precision": precision_name(fabric),
        "cpu": platform.processor() or platform.machine(), "threads": torch.get_num_threads(),
        "load_average": os.getloadavg() if hasattr(os, "getloadavg") else None, "load": load, "rows": rows,
    }  # fmt: skip
    print(bench_finetune_markdown(result))
    if out:
        Path(out).parent.mkdir(parents=True, exist_ok=True)
        Path(out).write_text(json.dumps(result, indent=2) + "\n")
        print(f"wrote {out}")
    return result


def bench_finetune_markdown(result: dict[str, Any]) -> str:
    lines = [
        f"GLUE fine-tuning step of {result['preset']}, batch {result['batch_size']} x {result['seq_len']} tokens, "
        f"{result['device']} {result['precision']}, {result['threads']} threads, {result['rounds']} interleaved rounds",
        "",
        "| FFF path | runs | median s/step | min s/step | tokens/s | vs masked | first-step loss diff |",
        "|---|---|---:|---:|---:|---:|---:|",
    ]
    for r in result["rows"]:
        lines.append(f"| {r['path']} | {', '.join(r['implementation'])} | {r['median_s']:.3f} | {r['min_s']:.3f} | "
                     f"{r['tokens_per_s']:,.0f} | {r['speedup_vs_masked']:.2f}x | {r['first_loss_diff_vs_masked']:.1e} |")  # fmt: skip
    if (result.get("load") or {}).get("warning"):
        lines += ["", result["load"]["warning"]]
    return "\n".join(lines)


__all__ = ["bench_finetune", "bench_finetune_markdown"]
