"""``ultracram bench budget``: what a CPU can learn. GLUE dev score and MLM validation loss of a
few presets against the pretraining budget, next to the majority and bag-of-words baselines.

One tokenizer and one set of shards serve every preset (``ultracram.study.prepare_data``). Each
(preset, budget) pair is a cell with its own directory; budget ``0`` fine-tunes the initial
weights (``pretrain.save_initial_checkpoint``: the weights pretraining starts from), every other
budget is its own pretraining run from scratch, because the learning-rate schedule and the batch
ramp follow the budget (a 60-minute run is not a 30-minute run continued). Each cell's
checkpoint is fine-tuned with ``run_glue`` (the same train and dev examples for every cell, so
the baselines and the paired tests are the same), and its MLM loss is measured by one function
(``ultracram.train.mlm_eval``, as the study's) on the same held-out sequences with the same masks
for every cell, with its interval.

Layout of ``out``::

    settings.json              what every cell shares (a rerun must agree; models and budgets may grow)
    tokenizer/, shards/        one tokenizer and one set of shards for every preset
    <preset>/<budget>/         one cell: pretrain/ (or initial/ for budget 0), glue/, result.json
    budget.json, budget.md, budget.png

A cell is finished once its ``result.json`` exists, and is then skipped; an interrupted cell
resumes its pretraining and GLUE runs from their own states. The report is rewritten after
every cell (marked incomplete until the last), so a killed run leaves a readable curve.
"""

from __future__ import annotations

import dataclasses
import json
import math
import re
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

from ultracram.bench.timing import load_report, machine_load
from ultracram.config import ConfigError, get_preset
from ultracram.data.glue import TASKS, GlueDataError, find_split, get_task, hub_source
from ultracram.errors import RunMismatchError, UltracramError
from ultracram.fileio import (
    atomic_write_json,
    atomic_write_path,
    atomic_write_text,
    check_same_run,
    guard_output_dir,
)
from ultracram.train.baselines import BOW, MAJORITY
from ultracram.train.finetune_settings import FinetuneError, FinetuneSettings, resolve_settings
from ultracram.train.pretrain_config import PretrainConfig, PretrainError, parse_budget
from ultracram.train.state import latest_state

NO_PRETRAINING = "0"
FINETUNE_UNSET = FinetuneSettings()  # the protocol decides
SETTINGS_NAME = "settings.json"
RESULT_NAME = "result.json"


class BudgetError(UltracramError):
    """The budget curve cannot run or resume as asked."""


@dataclass(frozen=True)
class BudgetSettings:
    """Settings of the budget curve (a rerun in the same --out must keep them; --models and --budgets may grow)

    Each cell is independent, so adding presets or budgets reuses every finished cell."""

    corpus: list[str]
    """Raw text files or directories to pretrain on (plain, .xz, .gz, .zst)."""
    glue_dir: str
    """GLUE directory (glue_data layout or HF parquet); the task's full train set is used."""
    models: list[str] = field(default_factory=lambda: ["crammed-bert-tiny", "crammed-bert-mini"])
    """Presets, one curve each (ultracram models lists them)."""
    budgets: list[str] = field(default_factory=lambda: ["0", "5m", "15m", "30m", "60m"])
    """Pretraining budgets: 0 (no pretraining: the initial weights), a time (5m, 90s, 1h), tokens
    (5M-tokens) or steps (300-steps); each is its own run from scratch."""
    task: str = "sst2"
    """GLUE task fine-tuned and scored on its dev set."""
    seeds: int = 1
    """Fine-tuning seeds per cell (the median is reported)."""
    protocol: Literal["fit", "sane", "bert"] = "fit"
    """GLUE fine-tuning protocol (fit: learning rate chosen on a held-out part of the train set;
    sane: cramming's GLUE-sane; bert: BERT's recipe)."""
    finetune: FinetuneSettings = FINETUNE_UNSET
    """Fine-tuning settings, as ultracram glue takes them (null: the protocol's)."""
    micro_batch_size: int = 32
    """Pretraining sequences per forward/backward pass."""
    batch_size: int | None = 256
    """Pretraining batch in sequences, the same for every cell (the study's CPU setting); null:
    the recipe's, fitted to each budget (docs/pretraining.md)."""
    seed: int = 0
    """Seed of the initial weights, data order and masking of every pretraining run."""
    vocab_size: int | None = None
    """Tokenizer vocabulary; null: the largest preset vocabulary among the models."""
    seq_len: int = 128
    """Tokens per pretraining sequence."""
    val_sequences: int = 256
    """Held-out sequences on which every cell's MLM loss is measured (fixed rows and masks)."""
    device: Literal["cpu", "cuda"] = "cpu"
    """Where pretraining and fine-tuning run; the budget is this device's time (cpu: the curve
    this command is for)."""


# --------------------------------------------------------------------------------------------
# Settings: every problem at once, before any work
# --------------------------------------------------------------------------------------------


def cell_name(budget: str) -> str:
    """The directory and table name of a budget: its text without spaces (``2e6 tokens`` ->
    ``2e6tokens``)."""
    return re.sub(r"\s+", "", budget)


def check_settings(out: Path, s: BudgetSettings) -> list[str]:
    """Every problem with ``s`` and ``out`` (empty when the curve can run)."""
    problems: list[str] = []
    if not s.models:
        problems.append("--models: give at least one preset")
    for m in s.models:
        try:
            preset = get_preset(m)
        except ConfigError as e:
            problems += [f"--models: {p}" for p in e.problems]
            continue
        if s.seq_len > preset.max_seq_len:
            problems.append(f"--seq_len {s.seq_len}: longer than {m}'s max_seq_len {preset.max_seq_len}")
    if not s.budgets:
        problems.append("--budgets: give at least one budget (0: no pretraining)")
    seen: dict[Any, str] = {}
    for b in s.budgets:
        if b.strip() == NO_PRETRAINING:
            key: Any = NO_PRETRAINING
        else:
            try:
                key = parse_budget(b)
            except PretrainError as e:
                hint = " (0 alone means no pretraining)" if b.strip()[:1] == "0" else ""
                problems.append(f"--budgets: {str(e).removeprefix('budget: ')}{hint}")
                continue
        if key in seen:
            problems.append(f"--budgets: {seen[key]!r} and {b!r} are the same budget")
        seen[key] = b
    task = None
    try:
        task = get_task(s.task)
    except GlueDataError as e:
        problems.append(f"--task: {e}")
    if not s.corpus:
        problems.append("--corpus: give the text to pretrain on (files or directories)")
    problems += [f"--corpus {c}: no such file or directory" for c in s.corpus if not Path(c).exists()]
    if hub_source(s.glue_dir) is None and not Path(s.glue_dir).is_dir():
        problems.append(f"--glue_dir {s.glue_dir}: no such directory")
    elif task is not None:
        try:
            for split in ("train", task.dev_splits[0]):
                if find_split(task, split, [s.glue_dir]) is None:
                    problems.append(f"--glue_dir {s.glue_dir}: no {task.display} {split} split "
                                    f"(expected {task.display}/{split}.tsv)")  # fmt: skip
        except GlueDataError as e:
            problems.append(f"--glue_dir: {e}")
    if task is not None:
        try:
            resolve_settings([task], s.protocol, s.finetune)
        except FinetuneError as e:
            problems.append(" ".join(str(e).split()))
    if s.seeds < 1:
        problems.append(f"--seeds: must be >= 1, got {s.seeds}")
    if s.val_sequences < 1:
        problems.append(f"--val_sequences: must be >= 1, got {s.val_sequences}")
    try:
        pretrain_template(s)
    except ConfigError as e:
        problems += [f"--{p}" for p in e.problems]
    sources = {"--glue_dir": s.glue_dir} if hub_source(s.glue_dir) is None else {}
    sources |= {"--corpus" + (f" ({i + 1})" if len(s.corpus) > 1 else ""): c for i, c in enumerate(s.corpus)}
    try:  # an earlier run of this command here is resumed, never replaced (hence overwrite=True)
        guard_output_dir(out, command="ultracram bench budget", sources=sources, overwrite=True,
                         is_own_output=lambda p: (p / SETTINGS_NAME).is_file())  # fmt: skip
    except UltracramError as e:
        problems.append(str(e))
    return problems


def pretrain_template(s: BudgetSettings) -> PretrainConfig:
    """The pretraining settings every cell shares: the study's CPU-friendly ones with this
    curve's batch and seed (preset, data, out and budget are set per cell)."""
    from ultracram.study import STUDY_PRETRAIN

    return dataclasses.replace(STUDY_PRETRAIN, micro_batch_size=s.micro_batch_size, batch_size=s.batch_size,
                               seed=s.seed, accelerator=s.device, devices="1")  # fmt: skip


def _identity(s: BudgetSettings, vocab: int) -> dict[str, Any]:
    """The settings every cell depends on (models and budgets left out: cells are independent)."""
    values = {k: v for k, v in asdict(s).items() if k not in ("models", "budgets")}
    values["corpus"] = [str(Path(c).resolve()) for c in s.corpus]
    values["glue_dir"] = s.glue_dir if hub_source(s.glue_dir) else str(Path(s.glue_dir).resolve())
    values["vocab_size"] = vocab
    values["task"] = get_task(s.task).name
    return values


# --------------------------------------------------------------------------------------------
# Measurements
# --------------------------------------------------------------------------------------------


def mlm_validation_loss(
    checkpoint: str | Path, shards_dir: str | Path, sequences: int, device: str
) -> dict[str, Any]:
    """The cell's MLM validation loss with its interval (``ultracram.train.mlm_eval``: the same
    sequences and masks for every cell, and for the study), without the per-sequence values."""
    from ultracram.checkpoint import load_checkpoint
    from ultracram.train.mlm_eval import mlm_eval_batch, mlm_validation

    batch, source = mlm_eval_batch(Path(shards_dir), sequences)
    m = mlm_validation(load_checkpoint(checkpoint), batch, source, device)
    return {k: v for k, v in m.items() if k not in ("loss_sum", "count")}


# --------------------------------------------------------------------------------------------
# One cell: a preset and a budget
# --------------------------------------------------------------------------------------------


def _checkpoint(
    cell: Path, preset: str, budget: str, shards: Path, s: BudgetSettings, log
) -> tuple[Path, dict]:
    """The cell's checkpoint and what pretraining did: the initial weights for budget 0, else a
    pretraining run (resumed from its newest state, skipped when finished). The load is recorded
    in ``pretrain_load.json`` next to the run, so a cell whose GLUE part is resumed keeps it."""
    base = dataclasses.replace(pretrain_template(s), preset=preset, data=str(shards))
    if budget.strip() == NO_PRETRAINING:
        initial = cell / "initial"
        if not (initial / "config.json").is_file():
            from ultracram.train.pretrain import save_initial_checkpoint

            log("writing the initial weights (no pretraining)")
            save_initial_checkpoint(base, initial)
        return initial, {"steps": 0, "tokens": 0, "elapsed_s": 0.0, "status": "no pretraining"}
    run = cell / "pretrain"
    load_path = run.parent / "pretrain_load.json"
    if (run / "summary.json").is_file() and (run / "final" / "config.json").is_file():
        summary = json.loads((run / "summary.json").read_text())
        load = json.loads(load_path.read_text()) if load_path.is_file() else None
    else:
        from ultracram.train.pretrain import pretrain  # Lightning: imported only when a cell trains

        resume = latest_state(run / "states") is not None
        log(f"{'resuming' if resume else 'starting'} pretraining ({budget} on {s.device})")
        before = machine_load()
        summary = pretrain(dataclasses.replace(base, out=str(run), budget=budget), resume=resume)
        after = machine_load()
        # The benchmarks' load block (load averages, cores, other processes' cores, warning).
        load = {**load_report(before, after), "wall_s": after["at"] - before["at"], "resumed": resume}
        atomic_write_json(load_path, load)
    keys = ("steps", "tokens", "elapsed_s", "status", "val_loss", "val_source", "tokens_per_s", "batch_size",
            "micro_batch_size", "budget")  # fmt: skip
    return run / "final", {**{k: summary.get(k) for k in keys}, "load": load}


def _glue_row(results: dict[str, Any], task: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """(the checkpoint's score, interval, tests against the baselines and, with the fit protocol,
    the chosen lr; the baselines' scores and intervals) on the task's first dev split, from
    run_glue's results (fractions, as there)."""
    t = TASKS[task]
    split, metric = t.dev_splits[0], t.main_metric
    entry = results["checkpoints"][0]["tasks"][task]
    cell = entry["summary"][split][metric]
    compared = (entry.get("vs_baselines") or {}).get(split) or {}
    row = {"split": split, "metric": metric, "score": cell["median"], "values": cell.get("values"),
           "ci": cell.get("ci"), "vs": compared.get("vs") or {}, "train_examples": entry["train_examples"],
           "dev_examples": entry["dev_examples"].get(split),
           "lr": ((entry.get("selection") or {}).get("chosen") or {}).get("lr")}  # fmt: skip
    baselines = {}
    for b in results.get("baselines") or []:
        got = b["tasks"].get(task, {}).get("summary", {}).get(split, {}).get(metric)
        if got:
            baselines[b["label"]] = {"score": got["median"], "ci": got.get("ci")}
    return row, baselines


def run_cell(out: Path, preset: str, budget: str, shards: Path, glue_dir: str, s: BudgetSettings,
             log: Callable[[str], None]) -> dict[str, Any]:  # fmt: skip
    """Pretrain (or not), measure the MLM loss, fine-tune and score one cell; returns (and
    writes, last, to ``<cell>/result.json``) its row."""
    from ultracram.train.finetune import run_glue  # Lightning: imported only when a cell trains

    cell = out / preset / cell_name(budget)
    checkpoint, pretraining = _checkpoint(cell, preset, budget, shards, s, log)
    log("measuring the MLM validation loss")
    mlm = mlm_validation_loss(checkpoint, shards, s.val_sequences, s.device)
    task = get_task(s.task).name
    log(f"GLUE {TASKS[task].display} fine-tuning ({s.protocol}, {s.seeds} seed(s))")
    results = run_glue([f"{preset}@{cell_name(budget)}={checkpoint}"], [glue_dir], cell / "glue", tasks=task,
                       seeds=s.seeds, protocol=s.protocol, overrides=s.finetune, device=s.device, log=log)  # fmt: skip
    glue, baselines = _glue_row(results, task)
    result = {"preset": preset, "budget": budget, "name": cell_name(budget),
              "budget_kind": None if budget.strip() == NO_PRETRAINING else parse_budget(budget).kind,
              "checkpoint": str(checkpoint), "pretrain": pretraining, "mlm_val": mlm, "glue": glue,
              "baselines": baselines}  # fmt: skip
    atomic_write_json(cell / RESULT_NAME, result)
    return result


# --------------------------------------------------------------------------------------------
# The whole curve
# --------------------------------------------------------------------------------------------


def run_budget(
    out_dir: str | Path, s: BudgetSettings, *, log: Callable[[str], None] = print
) -> dict[str, Any]:
    """Run (or resume) the budget curve; returns the report also written to ``budget.json``
    (with ``budget.md`` and ``budget.png``). Cells run budget by budget (all presets at the
    first budget, then the next), so an interrupted run already has the cheap end of every
    curve."""
    out = Path(out_dir)
    problems = check_settings(out, s)
    if problems:
        raise BudgetError("; ".join(problems))
    from ultracram.study import StudySettings, prepare_data

    vocab = s.vocab_size or max(get_preset(m).vocab_size for m in s.models)
    try:
        check_same_run(out / SETTINGS_NAME, _identity(s, vocab), what="budget curve",
                       hint="use another --out, or the same settings to resume (--models and --budgets may change)")  # fmt: skip
    except RunMismatchError as e:
        raise BudgetError(str(e)) from e
    shards = prepare_data(out, StudySettings(models=list(s.models), corpus=list(s.corpus), vocab_size=vocab,
                                             seq_len=s.seq_len), log)  # fmt: skip
    cells = [(p, b) for b in s.budgets for p in s.models]
    results: dict[tuple[str, str], dict[str, Any]] = {}
    for i, (preset, budget) in enumerate(cells, 1):
        prefix = f"cell {i}/{len(cells)} {preset} budget {cell_name(budget)}"

        def cell_log(message: str, prefix: str = prefix) -> None:
            log(message if "\n" in message else f"{prefix}: {message}")  # run_glue's table: as it is

        done = out / preset / cell_name(budget) / RESULT_NAME
        if done.is_file():
            cell_log("finished in an earlier run, skipped")
            results[preset, budget] = json.loads(done.read_text())
        else:
            results[preset, budget] = r = run_cell(out, preset, budget, shards, s.glue_dir, s, cell_log)
            ci = r["glue"]["ci"]
            cell_log(f"{TASKS[get_task(s.task).name].display} {100 * r['glue']['score']:.1f}"
                     + (f" ({100 * ci[0]:.1f}-{100 * ci[1]:.1f})" if ci and None not in ci else "")
                     + f", MLM validation loss {r['mlm_val']['loss']:.3f}")  # fmt: skip
        ordered = [results[p, b] for p in s.models for b in s.budgets if (p, b) in results]
        report = write_report(out, s, ordered, total=len(cells), shards=shards)
    log(
        f"budget curve{'' if report['complete'] else ' (incomplete)'}: {out / 'budget.md'}, {out / 'budget.png'}"
    )
    return report


def write_report(out: Path, s: BudgetSettings, cells: list[dict[str, Any]], *, total: int,
                 shards: Path) -> dict[str, Any]:  # fmt: skip
    """budget.json, budget.md and budget.png of the cells finished so far."""
    from ultracram.data.corpus import TokenShards
    from ultracram.study import environment

    task = get_task(s.task)
    baselines = next((c["baselines"] for c in cells if c["baselines"]), {})
    report = {
        "title": f"What a {s.device.upper()} can learn: {task.display} dev {task.main_metric} and MLM "
                 "validation loss vs pretraining budget",
        "task": task.name, "display": task.display, "split": task.dev_splits[0], "metric": task.main_metric,
        "complete": len(cells) == total, "cells_done": len(cells), "cells_total": total,
        "models": list(s.models), "budgets": list(s.budgets),
        "ln_vocab": math.log(TokenShards(shards).vocab_size), "baselines": baselines, "cells": cells,
        "settings": json.loads(json.dumps(asdict(s))), "environment": environment(),
    }  # fmt: skip
    atomic_write_json(out / "budget.json", report)
    atomic_write_text(out / "budget.md", budget_markdown(report))
    plot_budget(report, out / "budget.png")
    return report


# --------------------------------------------------------------------------------------------
# Report: table and figure
# --------------------------------------------------------------------------------------------


def _pct(v: float | None, digits: int = 1) -> str:
    return "-" if v is None else f"{100 * v:.{digits}f}"


def _signed(v: float | None) -> str:
    return "-" if v is None else f"{100 * v:+.1f}"


def _score(score: float | None, ci: list | None) -> str:
    """``81.3 (78.6-83.9)``: x100, with the 95% interval when there is one."""
    if score is None:
        return "-"
    return _pct(score) + (f" ({_pct(ci[0])}-{_pct(ci[1])})" if ci and None not in ci else "")


def _loss(m: dict[str, Any]) -> str:
    """``6.412 [6.371, 6.455]``: the MLM loss and its 95% interval over sequences."""
    ci = m.get("ci")
    return f"{m['loss']:.3f}" + (f" [{ci[0]:.3f}, {ci[1]:.3f}]" if ci else "")


def _p(p: float | None) -> str:
    return "-" if p is None else ("< 0.001" if p < 0.001 else f"{p:.3f}")


def busy(cell: dict[str, Any]) -> bool:
    """Whether other processes took more than half the cores during the cell's time-budgeted
    pretraining (the load average cannot tell: it counts this run's own threads)."""
    load = cell["pretrain"].get("load") or {}
    others = load.get("other_cores")
    return cell["budget_kind"] == "time" and others is not None and others > 0.5 * load["cores"]


def budget_markdown(report: dict[str, Any]) -> str:
    """budget.md: the table (preset x budget), the baselines, the figure and how to read them."""
    display, split, metric = report["display"], report["split"], report["metric"]
    s = report["settings"]
    lines = [f"# {report['title']}", ""]
    if not report["complete"]:
        lines += [f"INCOMPLETE: {report['cells_done']} of {report['cells_total']} cells finished; this file is "
                  "rewritten as the run goes on (the same command resumes it).", ""]  # fmt: skip
    lines += [
        f"| preset | budget | steps | tokens | pretraining min | val MLM loss | {display} {split} {metric} (95% CI) "
        "| vs bag-of-words: diff (95% CI) | p | other load (cores) |",
        "|---|---|---:|---:|---:|---:|---|---|---:|---:|",
    ]  # fmt: skip
    for c in report["cells"]:
        p, g = c["pretrain"], c["glue"]
        vs = g["vs"].get(BOW) or {}
        diff = ("-" if vs.get("diff") is None else
                f"{100 * vs['diff']:+.1f} ({_signed(vs.get('low'))} to {_signed(vs.get('high'))})")  # fmt: skip
        others = (p.get("load") or {}).get("other_cores")
        status = "" if p.get("status") in ("ok", "no pretraining") else f" ({p.get('status')})"
        lines.append(
            f"| {c['preset']} | {c['name']}{' *' if busy(c) else ''}{status} | {p['steps']:,} | {p['tokens']:,} "
            f"| {p['elapsed_s'] / 60:.1f} | {_loss(c['mlm_val'])} | {_score(g['score'], g['ci'])} | {diff} "
            f"| {_p(vs.get('p_value'))} | {'-' if others is None else f'{others:.1f}'} |"
        )
    for label in (MAJORITY, BOW):
        b = report["baselines"].get(label)
        if b:
            lines.append(f"| {label} | | | | | | {_score(b['score'], b['ci'])} | | | |")
    first = report["cells"][0] if report["cells"] else None
    lines += ["", "![dev score and MLM validation loss vs pretraining minutes](budget.png)", "", "Notes:", ""]
    if first:
        g, m = first["glue"], first["mlm_val"]
        lines += [
            f"- {display}: fine-tuned on {g['train_examples']:,} train examples, scored on the {g['dev_examples']:,} "
            f"{split} examples; protocol {s['protocol']}, median of {s['seeds']} seed(s); scores x100. The interval "
            "is a 95% percentile bootstrap over dev examples; diff and p: paired bootstrap test against the "
            "bag-of-words baseline (TF-IDF + logistic regression trained on the same examples), two-sided, "
            "not corrected for multiple comparisons.",
            f"- Val MLM loss: loss per masked token of every cell's checkpoint on the same {m['sequences']} "
            f"sequences of the {m['source']} with the same masks ({m['mask_rate']:.0%} masked, seed "
            f"{m['seed']}), with its 95% bootstrap interval over sequences; ln V = {report['ln_vocab']:.2f} is a "
            "uniform guess.",
        ]  # fmt: skip
    lines += [
        f"- Pretraining: batch {s['batch_size'] or 'from the recipe'}, micro batch {s['micro_batch_size']}, "
        f"seed {s['seed']}, sequences of {s['seq_len']} tokens, on {s['device']}; budget 0 is the initial weights "
        "(no pretraining). Each budget is its own run from scratch; pretraining min is the measured training time.",
    ]  # fmt: skip
    chosen = [
        f"{c['preset']} {c['name']}: {c['glue']['lr']:g}" for c in report["cells"] if c["glue"].get("lr")
    ]
    if chosen:
        lines.append(
            f"- Fine-tuning learning rate chosen per cell on held-out training examples: {', '.join(chosen)}."
        )
    noisy = [f"{c['preset']} {c['name']}" for c in report["cells"] if busy(c)]
    if noisy:
        lines.append(f"- WARNING (*): other processes used more than half the cores during the pretraining of "
                     f"{', '.join(noisy)}; a time budget then buys fewer steps than on a quiet machine: compare "
                     "their steps and tokens, or rerun them on a quiet machine (delete the cell's directory).")  # fmt: skip
    else:
        lines.append("- Time budgets are fair only on a quiet machine; no time-budgeted pretraining here shared "
                     "more than half the cores with other processes (other load: cores other processes kept "
                     "busy on average, from /proc/stat; '-' where not measured).")  # fmt: skip
    return "\n".join(lines) + "\n"


def plot_budget(report: dict[str, Any], path: Path) -> None:
    """Two panels against pretraining minutes: the dev score with its interval per preset and
    the baselines as lines; the MLM validation loss per preset."""
    import matplotlib

    matplotlib.use("Agg")  # no display on servers and CI
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4.2))
    for preset in report["models"]:
        cells = sorted(
            (c for c in report["cells"] if c["preset"] == preset), key=lambda c: c["pretrain"]["elapsed_s"]
        )
        if not cells:
            continue
        x = [c["pretrain"]["elapsed_s"] / 60 for c in cells]
        y = [100 * c["glue"]["score"] for c in cells]
        # (2, N) distances below and above each point; 0 where a cell has no interval
        err = [[100 * (c["glue"]["score"] - c["glue"]["ci"][0]) if c["glue"]["ci"] and None not in c["glue"]["ci"]
                else 0.0 for c in cells],
               [100 * (c["glue"]["ci"][1] - c["glue"]["score"]) if c["glue"]["ci"] and None not in c["glue"]["ci"]
                else 0.0 for c in cells]]  # fmt: skip
        left.errorbar(x, y, yerr=err, marker="o", capsize=3, label=preset)
        loss = [c["mlm_val"]["loss"] for c in cells]
        ci = [
            c["mlm_val"].get("ci") or [v, v] for c, v in zip(cells, loss, strict=True)
        ]  # 95%, over sequences
        right.errorbar(x, loss, yerr=[[v - lo for v, (lo, _) in zip(loss, ci, strict=True)],
                                      [hi - v for v, (_, hi) in zip(loss, ci, strict=True)]],
                       marker="o", capsize=3, label=preset)  # fmt: skip
    for label, style, color in ((BOW, "--", "dimgray"), (MAJORITY, ":", "firebrick")):
        b = report["baselines"].get(label)
        if b:
            left.axhline(100 * b["score"], color=color, linestyle=style, label=label)
            if label == BOW and b["ci"] and None not in b["ci"]:  # the line to beat, with its interval
                left.axhspan(100 * b["ci"][0], 100 * b["ci"][1], color=color, alpha=0.12)
    right.axhline(report["ln_vocab"], color="gray", linestyle=":", label="uniform guess (ln V)")
    device = report["settings"]["device"]
    for ax, ylabel in ((left, f"{report['display']} {report['split']} {report['metric']} (x100)"),
                       (right, "MLM validation loss")):  # fmt: skip
        ax.set_xlabel(f"pretraining minutes on {device} (measured)")
        ax.set_ylabel(ylabel)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    left.set_title("dev score (95% interval) vs budget")
    right.set_title("MLM validation loss vs budget")
    fig.tight_layout()
    try:
        atomic_write_path(path, lambda tmp: fig.savefig(tmp, format="png", dpi=120))
    finally:
        plt.close(fig)


# --------------------------------------------------------------------------------------------
# Command
# --------------------------------------------------------------------------------------------


def bench_budget(settings: BudgetSettings, out: str = "out/budget") -> dict[str, Any]:
    """GLUE dev score and MLM validation loss vs CPU pretraining budget, with the baselines

    What a CPU can learn: for each preset (--models) and pretraining budget (--budgets; 0: no
    pretraining), pretrain on --corpus, measure the MLM loss on fixed held-out sequences and
    fine-tune on the --task's full train set (--glue_dir); write OUT/budget.json, OUT/budget.md
    (a table with 95% intervals and the paired test against the bag-of-words baseline) and
    OUT/budget.png. Each (preset, budget) cell has its own directory: rerunning the same command
    skips finished cells and resumes an interrupted one; --models and --budgets may grow. See
    docs/budget.md.

    Args:
        settings: the curve (its fields are this command's flags).
        out: output directory.
    """
    try:
        return run_budget(out, settings)
    except KeyboardInterrupt:
        raise KeyboardInterrupt(f"finished cells, the shards and each cell's newest pretraining and GLUE states "
                                f"are kept in {out}; the same command resumes") from None  # fmt: skip


__all__ = [
    "BudgetError",
    "BudgetSettings",
    "bench_budget",
    "budget_markdown",
    "check_settings",
    "mlm_validation_loss",
    "plot_budget",
    "run_budget",
    "run_cell",
]
