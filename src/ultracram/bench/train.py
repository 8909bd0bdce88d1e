"""``ultracram bench train``: training throughput (tokens/s) and MFU of each preset.

Each preset runs ``steps`` timed MLM training steps (forward, backward, clipping, AdamW) on one
fixed random batch, through the same Fabric setup, optimizer, FFF implementation choice and
loss as ``ultracram pretrain``. FFF presets run once per training path (``fff_paths``: the
masked reference, gather, the conditional kernels), each also given as a ratio to its own
masked run and to the crammed-bert preset of the same size. MFU = tokens/s x 3 x forward FLOPs
per token (``ultracram.model.flops_per_token``) / peak FLOP/s (``train.metrics.peak_flops``:
data sheet on GPUs, measured fp32 matmul peak on CPUs).

Every (preset, path) entry is built first (model, optimizer, batch, ``warmup`` untimed steps,
the ``max_batch`` search), then all are timed in one block of ``rounds`` interleaved rounds
(``bench.timing``): each round runs ``steps`` steps of every entry, in a rotated order, so a
change of the machine's load falls on every entry alike. Tokens/s is the median over rounds,
with the slowest and fastest round; MFU and the ratios come from the medians. Tiny presets are
held in memory through the block; a full-size preset is built, warmed up, timed and freed
inside each round instead, because with ``max_batch`` each is sized to fill the device alone
and holding several at once (weights, gradients, AdamW state) could run it out of memory.
"""

from __future__ import annotations

import json
import platform
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from ultracram.bench.timing import interleaved_rounds, load_report, machine_load, summarise
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
    rounds: int | None = None,
    batch_size: int | None = None,
    seq_len: int = 128,
    device: str = "auto",
    precision: str = "auto",
    compile: bool = False,
    fff_paths: list[str] | str = "masked,gather,conditional",
    max_batch: int = 0,
    out: str | None = "out/bench/train.json",
) -> dict[str, Any]:
    """training throughput (tokens/s) and MFU of each preset, timed in interleaved rounds

    Time MLM training steps (forward, backward, AdamW) per preset on random tokens; report
    tokens/s and MFU (3 x forward FLOPs per token from ultracram.model.flops_per_token over the
    device's peak). Tiny presets by default; --full adds the full-size presets with fewer steps.
    FFF presets run once per --fff_paths entry, with ratios to their own masked run and to
    crammed-bert of the same size. Every entry is built and warmed up first, then all are timed
    in --rounds interleaved rounds of --steps steps each (rotated order); tokens/s is the median
    over rounds with the slowest and fastest round, MFU and ratios come from the medians, and
    the load average before and after is recorded (a warning when the machine was busy).
    Full-size presets are rebuilt in each round rather than held together (memory). With
    --max_batch, the largest micro batch that fits is found per preset and path by doubling
    from --batch_size (one step each) until a step runs out of device memory; each result
    records the peak device memory (CUDA). Writes a JSON report and returns it.

    Args:
        presets: comma list (default: every *-tiny preset, plus the full presets with --full)
        full: also the full-size presets
        steps: timed steps per round (default: 10 tiny, 3 full)
        warmup: untimed steps first
        rounds: interleaved timing rounds (default: 3; 1 with any full-size preset, for the GPU check's time)
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

    names = list(dict.fromkeys(presets or (tiny_presets() + (FULL_PRESETS if full else []))))
    # A full-size preset is rebuilt in every round (see the module docstring), and the GPU check
    # times several of them under a time limit: one round unless asked for more.
    n_rounds = (3 if all(_small(n) for n in names) else 1) if rounds is None else rounds
    if n_rounds < 1:
        raise ValueError(f"rounds must be >= 1, got {rounds}")
    fabric = setup_fabric(device, 1, precision=precision)
    peak, peak_source = peak_flops(fabric.device)
    console = Console()

    # Build phase: every entry is ready (or, for a full-size preset, sized) before any is timed.
    entries: list[_Entry] = []
    for name in names:
        small = _small(name)
        n_steps = steps or (10 if small else 3)
        batch = batch_size or (32 if small else 8)
        for path in fff_paths if get_preset(name).ffn == "fff" else (None,):
            if max_batch:
                batch_used = _largest_batch(fabric, name, batch, max_batch, seq_len, compile, path)
            else:
                batch_used = batch
            entry = _Entry(name, path, batch_used, n_steps)
            if small:
                entry.run = _build(fabric, name, batch_used, seq_len, compile, path, warmup)
                entry.parameters, entry.peak_memory_gb = entry.run.parameters, entry.run.peak_memory_gb
            entries.append(entry)
            console.print(f"{_shown(entry.row())}: batch {batch_used}, "
                          f"{'built and warmed up' if small else 'built in each round'}")  # fmt: skip

    units = {e.label: e.timed_unit(fabric, seq_len, compile, warmup) for e in entries}
    console.print(f"timing {len(entries)} entries in {n_rounds} interleaved round(s)")
    load_before = machine_load()
    times = interleaved_rounds(units, n_rounds)
    load_after = machine_load()
    load = load_report(load_before, load_after)

    results = []
    for e in entries:
        per_step = [t / e.steps for t in times[e.label]]
        results.append(e.result(per_step, seq_len, compile, peak))
        e.run = None  # the held model is no longer needed
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
        "rounds": n_rounds,
        "timing": ("every entry built and warmed up first, then timed in interleaved rounds (rotated order) of "
                   "`steps` steps each; tokens_per_s, mfu and ratios from the median round, "
                   "tokens_per_s_range = [slowest, fastest] round; full-size presets rebuilt in each round"),
        "load": load,
        "results": results,
    }  # fmt: skip
    table = Table(title=f"training throughput on {report['device_name']} ({report['precision']}, peak "
                  f"{peak / 1e9:,.0f} GFLOP/s: {peak_source}), median of {n_rounds} interleaved round(s)")  # fmt: skip
    for col in ("preset [FFF path]", "params", "batch", "steps", "s/step", "tokens/s", "slowest-fastest",
                "GFLOP/s", "MFU", "vs masked", "vs crammed"):  # fmt: skip
        table.add_column(col, justify="left" if col.startswith("preset") else "right")
    for r in results:
        lo, hi = r["tokens_per_s_range"]
        table.add_row(_shown(r), f"{r['parameters'] / 1e6:.2f}M", str(r["batch_size"]), str(r["steps"]),
                      f"{r['seconds_per_step']:.3f}", f"{r['tokens_per_s']:,.0f}", f"{lo:,.0f}-{hi:,.0f}",
                      f"{r['flops_per_s'] / 1e9:,.1f}", f"{r['mfu']:.1%}", _ratio(r.get("vs_masked")),
                      _ratio(r.get("vs_crammed")))  # fmt: skip
    console.print(table)
    console.print(f"load average before {_load_text(load['before'])}, after {_load_text(load['after'])} "
                  f"({load['cores']} cores)")  # fmt: skip
    if load["warning"]:
        console.print(load["warning"], style="bold red", markup=False)
    if out:
        Path(out).parent.mkdir(parents=True, exist_ok=True)
        Path(out).write_text(json.dumps(report, indent=2) + "\n")
        console.print(f"wrote {out}")
    return report


def _small(name: str) -> bool:
    return name.endswith("-tiny")


def _load_text(load: list[float] | None) -> str:
    return "n/a" if load is None else " / ".join(f"{v:.2f}" for v in load)


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


@dataclass
class _Run:
    """A built, warmed-up entry: ``step()`` is one training step as ``ultracram pretrain`` takes it."""

    step: Callable[[], None]
    parameters: int
    peak_memory_gb: float | None
    memory_baseline: int = 0  # bytes allocated on the device before this entry was built

    def peak_since_build(self, device: torch.device) -> float | None:
        """Peak device memory (GB) of this entry so far; only meaningful while no other entry
        ran since its build (peak statistics are per device)."""
        if device.type != "cuda":
            return None
        return (torch.cuda.max_memory_allocated(device) - self.memory_baseline) / 1e9


@dataclass
class _Entry:
    """One (preset, FFF path) of the block: held (``run`` set) or rebuilt in each round."""

    preset: str
    fff_path: str | None
    batch: int
    steps: int
    run: _Run | None = None
    parameters: int = 0
    peak_memory_gb: float | None = None

    @property
    def label(self) -> str:
        return _label(self.row())

    def row(self) -> dict[str, Any]:
        return {"preset": self.preset, "fff_path": self.fff_path}

    def timed_unit(self, fabric, seq_len: int, compile: bool, warmup: int) -> Callable[[], float]:
        """One round's unit: ``steps`` steps, returning their seconds (a rebuilt entry's build
        and warm-up are left out of the time)."""

        def held() -> float:
            return _time_steps(fabric, self.run.step, self.steps)

        def rebuilt() -> float:
            run = _build(fabric, self.preset, self.batch, seq_len, compile, self.fff_path, warmup)
            self.parameters = run.parameters
            seconds = _time_steps(fabric, run.step, self.steps)
            peak_gb = run.peak_since_build(fabric.device)  # nothing else ran since its build
            if peak_gb is not None:
                self.peak_memory_gb = max(self.peak_memory_gb or 0.0, peak_gb)
            del run
            if fabric.device.type == "cuda":
                torch.cuda.empty_cache()
            return seconds

        return rebuilt if self.run is None else held

    def result(self, per_step: list[float], seq_len: int, compile: bool, peak: float) -> dict[str, Any]:
        s = summarise(per_step)
        tokens = self.batch * seq_len
        tokens_per_s = tokens / s["median"]
        flops = 3 * flops_per_token(_config(self.preset, seq_len), seq_len)["total"] * tokens_per_s
        return {"preset": self.preset, "fff_path": self.fff_path, "parameters": self.parameters,
                "batch_size": self.batch, "steps": self.steps, "seconds_per_step": s["median"],
                "tokens_per_s": tokens_per_s, "tokens_per_s_range": [tokens / s["slowest"], tokens / s["fastest"]],
                "seconds_per_step_rounds": per_step, "flops_per_s": flops,
                "mfu": flops / peak if peak else float("nan"), "compile": compile,
                "built_per_round": not _small(self.preset), "peak_memory_gb": self.peak_memory_gb}  # fmt: skip


def _config(name: str, seq_len: int):
    return get_preset(name, max_seq_len=max(seq_len, get_preset(name).max_seq_len))


def _largest_batch(fabric, name: str, start: int, cap: int, seq_len: int, compile: bool,
                   fff_path: str | None) -> int:  # fmt: skip
    """The largest micro batch in start, 2*start, ... <= cap whose training step fits in memory."""
    fits, batch = start, start
    while batch <= cap:
        try:
            _build(fabric, name, batch, seq_len, compile, fff_path, warmup=1)
        except torch.OutOfMemoryError:
            break
        finally:
            if fabric.device.type == "cuda":
                torch.cuda.empty_cache()
        fits, batch = batch, batch * 2
    return fits


def _build(fabric, name: str, batch: int, seq_len: int, compile: bool, fff_path: str | None,
           warmup: int) -> _Run:  # fmt: skip
    """Model, optimizer and a fixed masked batch of ``name``, after ``warmup`` steps. The peak
    device memory (over the build and warm-up) is this entry's own: counted from what was
    allocated before it, since other entries may be held at the same time."""
    cuda = fabric.device.type == "cuda"
    baseline = 0
    if cuda:
        synchronize(fabric.device)
        baseline = torch.cuda.memory_allocated(fabric.device)
        torch.cuda.reset_peak_memory_stats(fabric.device)
    config = _config(name, seq_len)
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

    for _ in range(warmup):
        step()
    synchronize(fabric.device)
    run = _Run(step, params, None, baseline)
    run.peak_memory_gb = run.peak_since_build(fabric.device)
    return run


def _time_steps(fabric, step: Callable[[], None], steps: int) -> float:
    """Seconds of ``steps`` steps, the device drained before and after (CUDA is asynchronous)."""
    synchronize(fabric.device)
    t0 = time.perf_counter()
    for _ in range(steps):
        step()
    synchronize(fabric.device)
    return time.perf_counter() - t0


__all__ = ["FULL_PRESETS", "bench_train", "tiny_presets"]
