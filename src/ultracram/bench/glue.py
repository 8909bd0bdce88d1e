"""``ultracram bench glue``: how long GLUE fine-tuning takes per task and model preset.

Each preset is built with random weights (speed does not depend on what the weights are)
and a tokenizer trained on the embedded Wikipedia sample, then fine-tuned for one epoch on a
fixed subset of each task's train set and evaluated on a subset of its dev set. From the
measured seconds per example, the time of the full task under the chosen protocol (all
train examples x epochs, plus the full dev set; for the fitted protocol also its learning-rate
grid's runs, each on its training part x epochs plus its held-out part, as ``run_glue`` makes
them with ``selection_runs``, and its final run's ``final_epochs``) is extrapolated. Ratios are against the first preset, measured in
the same run (other processes on the machine shift the absolute numbers, much less the ratios).
"""

from __future__ import annotations

import dataclasses
import json
import tempfile
import time
from pathlib import Path
from typing import Any, Literal

import torch

from ultracram.checkpoint import save_checkpoint
from ultracram.config import get_preset
from ultracram.data.glue import find_split, load_split, parse_tasks
from ultracram.data.sample import read_sample_paragraphs
from ultracram.data.tokenizer import train_tokenizer
from ultracram.model import build_model
from ultracram.settings import comma_list
from ultracram.train.finetune import final_epochs, finetune_run, selection_runs, subsample
from ultracram.train.finetune_settings import FinetuneSettings, lr_grid, resolve_settings

DEFAULT_PRESETS = ("crammed-bert-tiny", "bert-tiny", "ultrafastbert-tiny", "fnet-tiny", "switch-tiny")


def _tiny_checkpoint(preset: str, directory: Path, tokenizer_path: Path, vocab_size: int) -> Path:
    config = get_preset(preset, vocab_size=vocab_size)
    return save_checkpoint(build_model(config, "mlm"), directory / preset, tokenizer_path=tokenizer_path)


def bench_glue(
    glue_dir: list[str],
    *,
    presets: list[str] | str = "crammed-bert-tiny,bert-tiny,ultrafastbert-tiny,fnet-tiny,switch-tiny",
    tasks: list[str] | str = "cola,sst2,mrpc,stsb,rte,wnli",
    max_train_examples: int = 256,
    max_eval_examples: int = 256,
    protocol: Literal["fit", "sane", "bert"] = "sane",
    device: str | None = None,
    out: str | None = "out/bench/glue.json",
) -> dict[str, Any]:
    """minutes per GLUE task per model preset (fine-tuning + dev evaluation)

    Fine-tune random-init presets for one epoch on subsets of each GLUE task and extrapolate
    the time of the full task under the protocol; ratios against the first preset.

    Args:
        glue_dir: GLUE directory (repeatable)
        presets: comma list of presets; the first is the reference
        tasks: comma list
        max_train_examples: train examples timed per task
        max_eval_examples: dev examples timed per task
        protocol: protocol to extrapolate to (fit: with its learning-rate grid's runs, timed at
            the grid's width-scaled lr)
        device: cpu or cuda (default: cuda when available)
        out: JSON output
    """
    presets = comma_list(presets)
    chosen = [t for t in parse_tasks(tasks) if find_split(t, "train", glue_dir) is not None]
    settings = resolve_settings(chosen, protocol)
    dev = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    rows = []
    with tempfile.TemporaryDirectory(prefix="ultracram-bench-glue-") as tmp:
        tmp_path = Path(tmp)
        tok = train_tokenizer(read_sample_paragraphs(), vocab_size=4096)
        tok.save(str(tmp_path / "tokenizer.json"))
        data = {}
        for t in chosen:
            train = load_split(t, "train", glue_dir)
            devs = [load_split(t, s, glue_dir) for s in t.dev_splits if find_split(t, s, glue_dir)]
            data[t.name] = (train, devs)
        for preset in presets:
            ckpt = _tiny_checkpoint(
                preset, tmp_path / "ckpt", tmp_path / "tokenizer.json", tok.get_vocab_size()
            )
            # Fit leaves the lr open: time at the grid's width-scaled step (the speed of a step does
            # not depend on the lr). One epoch, no mid-run training states.
            lr = lr_grid(get_preset(preset).hidden_size)[1]

            def timed(full: FinetuneSettings, lr: float = lr) -> FinetuneSettings:
                return dataclasses.replace(full, lr=full.lr or lr, epochs=1.0, checkpoint_every=10**9)

            # Warm-up run, not timed: first calls pay for lazy initialisation (JIT kernels, allocator).
            first_train, first_devs = data[chosen[0].name]
            warm = timed(settings[chosen[0].name])
            finetune_run(ckpt, subsample(first_train, 32), [subsample(first_devs[0], 32)], warm, 0,
                         tmp_path / "warmup" / preset, device=dev)  # fmt: skip
            for t in chosen:
                full = settings[t.name]
                train, devs = data[t.name]
                s = timed(full)
                sub_train = subsample(train, max_train_examples)
                sub_devs = [subsample(d, max_eval_examples) for d in devs]
                start = time.perf_counter()
                r = finetune_run(
                    ckpt, sub_train, sub_devs, s, 0, tmp_path / "runs" / preset / t.name, device=dev
                )
                total = time.perf_counter() - start
                per_train = r["train_seconds"] / len(sub_train)
                per_eval = r["eval_seconds"] / sum(len(d) for d in sub_devs)
                trained = len(train) * full.epochs  # examples x epochs
                scored = sum(len(d) for d in devs)
                if full.lr is None:  # fit: the grid's runs come first (training part, held-out part)
                    grid = selection_runs(ckpt, train, full, tmp_path / "select")
                    _, rest, held, _ = grid[0]
                    trained = len(train) * final_epochs(full.epochs, len(train), len(rest), len(held))
                    trained += len(grid) * len(rest) * full.epochs
                    scored += len(grid) * len(held)
                full_s = per_train * trained + per_eval * scored
                rows.append({"preset": preset, "task": t.display, "train_examples": len(sub_train),
                             "seconds": total, "train_ms_per_example": 1e3 * per_train,
                             "eval_ms_per_example": 1e3 * per_eval, "full_task_seconds": full_s,
                             "full_task_trained_examples": trained, "full_task_eval_examples": scored})  # fmt: skip
    base = {r["task"]: r["full_task_seconds"] for r in rows if r["preset"] == presets[0]}
    for r in rows:
        r["ratio_vs_" + presets[0]] = r["full_task_seconds"] / base[r["task"]]
    result = {"device": str(dev), "protocol": protocol, "torch_threads": torch.get_num_threads(),
              "max_train_examples": max_train_examples, "max_eval_examples": max_eval_examples,
              "settings": {k: dataclasses.asdict(v) for k, v in settings.items()}, "rows": rows}  # fmt: skip
    if out:
        Path(out).parent.mkdir(parents=True, exist_ok=True)
        Path(out).write_text(json.dumps(result, indent=2) + "\n")
    print(bench_markdown(result, presets[0]))
    return result


def bench_markdown(result: dict[str, Any], reference: str) -> str:
    """Markdown: extrapolated minutes per full task, one row per preset, one column per task."""
    tasks = list(dict.fromkeys(r["task"] for r in result["rows"]))
    presets = list(dict.fromkeys(r["preset"] for r in result["rows"]))
    cell = {(r["preset"], r["task"]): r for r in result["rows"]}
    lines = [f"| preset ({result['device']}) | " + " | ".join(tasks) + " | all | ratio vs " + reference + " |",
             "|---|" + "---:|" * (len(tasks) + 2)]  # fmt: skip
    ref_total = sum(cell[reference, t]["full_task_seconds"] for t in tasks)
    for p in presets:
        total = sum(cell[p, t]["full_task_seconds"] for t in tasks)
        lines.append(f"| {p} | " + " | ".join(f"{cell[p, t]['full_task_seconds'] / 60:.1f}" for t in tasks)
                     + f" | {total / 60:.1f} | {total / ref_total:.2f} |")  # fmt: skip
    return "\n".join(lines) + (
        f"\n\nMinutes per full task ({result['protocol']} protocol, 1 seed"
        + (", with the learning-rate grid's runs" if result["protocol"] == "fit" else "")
        + "), extrapolated from "
        f"{result['max_train_examples']} train / {result['max_eval_examples']} dev examples per task; "
        f"{result['torch_threads']} torch threads.\n"
    )


__all__ = ["DEFAULT_PRESETS", "FinetuneSettings", "bench_glue", "bench_markdown"]
