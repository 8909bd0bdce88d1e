"""The comparison study: raw text -> one tokenizer and one set of shards -> for each model,
pretraining under the same budget, GLUE fine-tuning, inference speed -> one report.

Every stage writes its result before the next starts, and a rerun of the same study skips
what is finished (a model is done once ``models/<name>/result.json`` exists; pretraining and
GLUE resume from their own states), so a study killed half-way continues where it stopped.

Layout of ``out_dir``::

    study.json                the study's settings (a rerun must use the same)
    tokenizer/tokenizer.json  one tokenizer for every model
    shards/                   one set of token shards for every model
    models/<name>/pretrain/   the pretraining run (metrics.csv, final/ checkpoint, ...)
    models/<name>/init/       the weights pretraining starts from: the no-pretraining control
    models/<name>/glue/       GLUE runs of both checkpoints, the baselines, results.json
    models/<name>/result.json what the report shows for this model
    report.md, report.html, figures/
"""

from __future__ import annotations

import dataclasses
import importlib.metadata as md
import json
import math
import os
import platform
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
import torch.nn.functional as F

from ultracram import __version__
from ultracram.bench.timing import load_report, machine_load
from ultracram.checkpoint import load_checkpoint
from ultracram.config import ConfigError, get_preset
from ultracram.data.corpus import (
    TokenShards,
    find_text_files,
    iter_file_documents,
    prepare_corpus,
)
from ultracram.data.glue import TASKS, eval_columns
from ultracram.data.sample import sample_corpus_path, sample_glue_dir
from ultracram.data.tokenizer import save_tokenizer, train_tokenizer
from ultracram.errors import RunMismatchError, UltracramError
from ultracram.fileio import atomic_write_json, check_same_run
from ultracram.kernels import fff_paths
from ultracram.model import FastFeedForward, flops_per_token, for_inference, parameter_counts
from ultracram.report.compare import DevSet
from ultracram.settings import SettingsError
from ultracram.train.finetune_settings import FinetuneSettings
from ultracram.train.metrics import read_metrics
from ultracram.train.mlm_eval import (
    MLM_EVAL_MASK_RATE,
    MLM_EVAL_SEED,
    MLM_EVAL_SEQUENCES,
    mlm_eval_batch,
    mlm_validation,
)
from ultracram.train.pretrain_config import PretrainConfig, parse_budget, resolve_recipe
from ultracram.train.state import latest_state

TINY_MODELS = ("bert-tiny", "crammed-bert-tiny", "ultrafastbert-tiny", "fnet-tiny", "switch-tiny")


class StudyError(UltracramError):
    """The study cannot run or resume as asked."""


# The study's pretraining: minutes, not a day. The same batch of 256 for every model (cramming's
# ramp to 8192 takes a budget of hours to pay off); a state every 2 min.
STUDY_PRETRAIN = PretrainConfig(budget="60s", micro_batch_size=32, batch_size=256, checkpoint_every_min=2.0)
STUDY_SET_PER_MODEL = ("preset", "data", "out")
FINETUNE_UNSET = FinetuneSettings()  # the protocol decides


@dataclass(frozen=True)
class StudySettings:
    """What defines a study; a rerun in the same directory must agree on all of it."""

    models: list[str] = field(default_factory=lambda: list(TINY_MODELS))
    """Presets to compare (ultracram models lists them)."""
    corpus: list[str] = field(default_factory=list)
    """Raw text files or directories; empty: the embedded Wikipedia sample."""
    glue: str = ""
    """GLUE directory in the glue_data layout; empty: the embedded GLUE slices."""
    tasks: str = "all"
    """GLUE tasks (comma separated, or all)."""
    seeds: int = 1
    """Fine-tuning seeds per task (the median is reported)."""
    vocab_size: int | None = None
    """Tokenizer vocabulary; null: the largest preset vocabulary among the models."""
    seq_len: int = 128
    """Tokens per pretraining sequence (the shards') and per inference-speed sequence."""
    max_token_ratio: float | None = None
    """Drop documents with more tokens than this x characters; null: by the vocabulary, as
    ultracram data prepare does (0.25 for 32768 and more, 0.5 below)."""
    pretrain: PretrainConfig = STUDY_PRETRAIN
    """Pretraining settings for every model, as ultracram pretrain takes them (preset, data and
    out are set by the study for each model)."""
    protocol: Literal["fit", "sane", "bert"] = "fit"
    """GLUE fine-tuning protocol: fit (the learning rate chosen per task and model on held-out
    training examples), cramming's GLUE-sane or BERT's."""
    finetune: FinetuneSettings = FINETUNE_UNSET
    """Fine-tuning settings for every task, as ultracram glue takes them (null: the protocol's)."""
    per_task: dict[str, dict[str, Any]] = field(default_factory=dict)
    """Fine-tuning settings for one task, e.g. --per_task.rte.epochs 10."""
    control: bool = True
    """Also fine-tune each model's initial weights (no pretraining), to show what pretraining
    bought: the row "<model> (no pretraining)" of the report."""

    def __post_init__(self) -> None:
        problems = [f"pretrain.{name}: set by the study for each model; leave it out (models: --models)"
                    for name in STUDY_SET_PER_MODEL
                    if getattr(self.pretrain, name) != getattr(STUDY_PRETRAIN, name)]  # fmt: skip
        for m in self.models:
            try:
                get_preset(m)
            except ConfigError as e:
                problems += [f"models: {p}" for p in e.problems]
        if not self.models:
            problems.append("models: give at least one preset")
        if self.seeds < 1:
            problems.append(f"seeds: must be >= 1, got {self.seeds}")
        if self.pretrain.monitor_every:
            problems.append("pretrain.monitor_every: the doctor's live monitor is not available in a study; "
                            "run ultracram pretrain --monitor_every N on one model")  # fmt: skip
        if problems:
            raise SettingsError(problems, "study settings")


def _check_settings(out: Path, settings: StudySettings) -> None:
    """Record the settings on first run (with the environment, which is not compared); refuse
    to mix a different study into the directory (``ultracram.fileio.check_same_run``)."""
    try:
        check_same_run(out / "study.json", {"settings": asdict(settings)}, what="study",
                       hint="use another --out directory, or the same settings to resume",
                       record={"environment": environment()})  # fmt: skip
    except RunMismatchError as e:
        raise StudyError(str(e)) from e


def environment() -> dict[str, Any]:
    """Versions and hardware, so the study can be repeated."""

    def version(pkg: str) -> str | None:
        try:
            return md.version(pkg)
        except md.PackageNotFoundError:
            return None

    env: dict[str, Any] = {
        "ultracram": __version__, "python": platform.python_version(), "platform": platform.platform(),
        "cpu": platform.processor() or platform.machine(), "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        **{p: version(p) for p in ("torch", "lightning", "tokenizers", "numba", "triton", "transformers")},
        "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
    }  # fmt: skip
    return env


SAMPLE_VALIDATION_FRACTION = 0.1


def prepare_data(out: Path, settings: StudySettings, log: Callable[[str], None]) -> Path:
    """One tokenizer and one set of shards for every model (skipped when already there)."""
    inputs = [Path(p) for p in settings.corpus] or [sample_corpus_path()]
    tok_path = out / "tokenizer" / "tokenizer.json"
    vocab = settings.vocab_size or max(get_preset(m).vocab_size for m in settings.models)
    if not tok_path.is_file():
        log(f"training a {vocab}-token WordPiece tokenizer on {', '.join(map(str, inputs))}")
        docs = (d for f in find_text_files(inputs) for d in iter_file_documents(f))
        save_tokenizer(train_tokenizer(docs, vocab_size=vocab), tok_path)
    shards = out / "shards"
    log("tokenising and packing the corpus into shards (resumed or skipped when already done)")
    # Held-out documents for the MLM validation loss: data prepare's 0.5% of a real corpus, but 10%
    # of the embedded sample's 128 documents (0.5% is none of them: the loss would then be
    # measured on text the models trained on).
    fraction = SAMPLE_VALIDATION_FRACTION if not settings.corpus else 0.005
    prepare_corpus(inputs, shards, tok_path, seq_len=settings.seq_len, max_token_ratio=settings.max_token_ratio,
                   validation_fraction=fraction, show_progress=True)  # fmt: skip
    return shards


def _pretrain(out: Path, model: str, shards: Path, settings: StudySettings, log) -> dict[str, Any]:
    from ultracram.train.pretrain import pretrain  # Lightning: imported only when a study trains

    run = out / "models" / model / "pretrain"
    summary_path = run / "summary.json"
    if summary_path.is_file() and (run / "final" / "config.json").is_file():
        return json.loads(summary_path.read_text())
    resume = latest_state(run / "states") is not None
    log(f"{model}: {'resuming' if resume else 'starting'} pretraining, budget {settings.pretrain.budget}")
    config = dataclasses.replace(settings.pretrain, preset=model, data=str(shards), out=str(run))
    return pretrain(config, resume=resume)


def measure_speeds(models: dict[str, torch.nn.Module], seq_len: int, device: str, batch: int = 8,
                   rounds: int = 7) -> dict[str, dict[str, float]]:  # fmt: skip
    """Encoder throughput of every model through ultracram's inference path (FFF layers on their
    fastest kernel), timed in one block: ``rounds`` rounds, each timing one forward of every
    model in a rotated order, so that a change in the machine's load hits every model alike.
    Per model: the median tokens/s, the slowest and fastest round; with the load average."""
    encoders = {name: for_inference(m.encoder.to(device), device) for name, m in models.items()}
    inputs = {
        name: torch.randint(5, m.config.vocab_size, (batch, seq_len), device=device)
        for name, m in models.items()
    }
    times: dict[str, list[float]] = {name: [] for name in models}
    load_before = machine_load()
    names = list(models)
    with torch.inference_mode():
        for name in names:  # warm-up: kernels compile, caches fill
            encoders[name](inputs[name], torch.ones_like(inputs[name]))
        for r in range(rounds):
            for name in names[r % len(names) :] + names[: r % len(names)]:
                ids = inputs[name]
                if device == "cuda":
                    torch.cuda.synchronize()
                start = time.perf_counter()
                encoders[name](ids, torch.ones_like(ids))
                if device == "cuda":  # the time covers the queued GPU work
                    torch.cuda.synchronize()
                times[name].append(time.perf_counter() - start)
    load = load_report(load_before, machine_load())
    tokens = batch * seq_len
    return {name: {"median": tokens / float(np.median(t)), "slowest": tokens / max(t), "fastest": tokens / min(t),
                   "rounds": rounds, "load": load}
            for name, t in times.items()}  # fmt: skip


def fff_usage(model: torch.nn.Module, shards_dir: Path, rows: int = 64) -> list[list[float]] | None:
    """Per FFF layer: [fraction of leaves reached, normalised routing entropy over leaves] on
    the last ``rows`` sequences of the shards."""
    layers = [m for m in model.modules() if isinstance(m, FastFeedForward)]
    if not layers:
        return None
    shards = TokenShards(shards_dir)
    n = min(rows, len(shards))
    ids = torch.from_numpy(shards.get_rows(np.arange(len(shards) - n, len(shards))))
    leaves: dict[int, torch.Tensor] = {}

    def hook(index: int):
        def record(module: FastFeedForward, args, _out) -> None:
            x = args[0].reshape(-1, args[0].shape[-1])
            logits = F.linear(x, module.linear_in.weight, module.linear_in.bias)
            path = fff_paths(logits, module.depth, module.trees)  # (T, K, D+1)
            first_leaf = 2**module.depth - 1
            leaf = path[:, :, -1] - first_leaf + torch.arange(module.trees) * 2**module.depth  # (T, K)
            leaves[index] = torch.bincount(leaf.flatten(), minlength=module.trees * 2**module.depth)

        return record

    handles = [m.register_forward_hook(hook(i)) for i, m in enumerate(layers)]
    try:
        with torch.inference_mode():
            model.eval().encoder(ids, torch.ones_like(ids))
    finally:
        for h in handles:
            h.remove()
    usage = []
    for i in range(len(layers)):
        counts = leaves[i].double()
        p = counts[counts > 0] / counts.sum()
        entropy = float(-(p * p.log()).sum() / math.log(len(counts))) if len(counts) > 1 else 1.0
        usage.append([float((counts > 0).double().mean()), entropy])
    return usage


def control_label(model: str) -> str:
    """The report's name of ``model``'s no-pretraining control."""
    return f"{model} (no pretraining)"


def _initial_checkpoint(out: Path, model: str, shards: Path, settings: StudySettings) -> Path:
    """``models/<name>/init``: the weights ``model``'s pretraining starts from (same preset,
    vocabulary and seed), written once (``save_initial_checkpoint`` writes atomically)."""
    from ultracram.train.pretrain import save_initial_checkpoint  # Lightning: only when a study trains

    init = out / "models" / model / "init"
    if not (init / "config.json").is_file():
        config = dataclasses.replace(
            settings.pretrain, preset=model, data=str(shards), out=str(init.parent / "pretrain")
        )
        save_initial_checkpoint(resolve_recipe(config), init)
    return init


def glue_fields(entry: dict[str, Any], protocol: str) -> dict[str, Any]:
    """What the report shows of one checkpoint's results.json entry: the median main metric x100
    per column (paper order, MNLI-m and MNLI-mm separately), the average, and the entry itself
    (intervals, per-seed values, tests against the baselines, the chosen lr)."""
    scores = {}
    for c in eval_columns():
        r = entry["tasks"].get(c.task, {}).get("summary", {}).get(c.split)
        if r:
            scores[c.label] = 100 * r[TASKS[c.task].main_metric]["median"]
    return {"glue": scores, "glue_average": entry["average"]["value"], "glue_average_covers": entry["average"]["covers"],
            "glue_entry": entry, "protocol": protocol}  # fmt: skip


def run_model(
    out: Path, model: str, shards: Path, glue_dir: Path, settings: StudySettings, log
) -> dict[str, Any]:
    """Pretrain, fine-tune and measure one model (and its no-pretraining control, fine-tuned in
    the same ``run_glue`` call: one results.json, one set of baselines); returns (and stores)
    its report row, with the control's under ``control``."""
    from ultracram.train.finetune import run_glue  # Lightning: imported only when a study trains

    summary = _pretrain(out, model, shards, settings, log)
    run = out / "models" / model / "pretrain"
    checkpoints = {model: run / "final"}
    if settings.control:
        checkpoints[control_label(model)] = _initial_checkpoint(out, model, shards, settings)
    with_control = " and its no-pretraining control" if settings.control else ""
    log(f"{model}: GLUE fine-tuning ({settings.tasks}){with_control}")
    glue = run_glue([f"{label}={path}" for label, path in checkpoints.items()], [glue_dir],
                    out / "models" / model / "glue", tasks=settings.tasks, seeds=settings.seeds,
                    protocol=settings.protocol, overrides=settings.finetune, task_overrides=settings.per_task,
                    log=log)  # fmt: skip
    entries = {e["label"]: e for e in glue["checkpoints"]}
    log(f"{model}: MLM loss on {MLM_EVAL_SEQUENCES} fixed validation sequences")
    batch, source = mlm_eval_batch(shards)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    mlm = load_checkpoint(run / "final")
    config = mlm.config
    rows = read_metrics(run / "metrics.csv")
    result = {
        "model": model, "parameters": parameter_counts(mlm)["total"],
        "flops_per_token": flops_per_token(config, settings.seq_len)["total"],
        "tokens_seen": int(summary["tokens"]), "final_mlm_loss": float(summary["final_loss"]),
        **glue_fields(entries[model], settings.protocol),
        "mlm_validation": mlm_validation(mlm, batch, source, device),
        "curve": [{"elapsed_s": r["elapsed_s"], "tokens": r["tokens"], "loss": r["loss"]} for r in rows],
        "fff_usage": fff_usage(mlm.cpu(), shards),
    }  # fmt: skip
    if settings.control:
        label = control_label(model)
        result["control"] = {
            "model": label, "kind": "control", "control_of": model, "parameters": result["parameters"],
            "flops_per_token": result["flops_per_token"], "tokens_seen": 0,
            **glue_fields(entries[label], settings.protocol),
            "mlm_validation": mlm_validation(load_checkpoint(checkpoints[label]), batch, source, device),
        }  # fmt: skip
    atomic_write_json(out / "models" / model / "result.json", result)
    return result


def study_command(settings: StudySettings, out: str = "out/study") -> tuple[Path, Path]:
    """pretrain, fine-tune and benchmark several models under one budget; write one report

    The comparison study: one tokenizer and one set of shards for every model; each model is
    pretrained under the same budget (--pretrain.budget), fine-tuned and evaluated on GLUE, and
    its inference speed measured; the report (report.md with figures, and a self-contained
    report.html) shows it side by side with the configuration, versions and hardware. Rerunning
    the same command in the same --out resumes a killed study without redoing finished models.
    With no --corpus/--glue it runs the quick-start study on the embedded sample data.

    Args:
        settings: the study (its fields are this command's flags).
        out: study directory.
    """
    try:
        return run_study(out, settings)
    except KeyboardInterrupt:
        raise KeyboardInterrupt(f"finished models, the shards and each model's newest pretraining and GLUE states "
                                f"are kept in {out}; the same command resumes the study") from None  # fmt: skip


def run_study(
    out_dir: str | Path = "out/study",
    settings: StudySettings | None = None,
    *,
    log: Callable[[str], None] = print,
    after_model: Callable[[str], None] | None = None,
) -> tuple[Path, Path]:
    """Run (or resume) a study and write its report; returns (report.md, report.html).

    Default settings give the quick-start study: the five tiny presets, 60 s of pretraining
    each, on the embedded Wikipedia sample and GLUE slices. ``after_model`` is called after each
    finished model (tests use it to kill a study).
    """
    s = settings or StudySettings()
    out = Path(out_dir)
    _check_settings(out, s)
    glue_dir = Path(s.glue) if s.glue else sample_glue_dir()
    if not glue_dir.is_dir():
        raise StudyError(f"GLUE directory {glue_dir} does not exist")
    shards = prepare_data(out, s, log)
    results = []
    for m in s.models:
        done = out / "models" / m / "result.json"
        if done.is_file():
            log(f"{m}: finished in an earlier run, skipped")
            results.append(json.loads(done.read_text()))
        else:
            results.append(run_model(out, m, shards, glue_dir, s, log))
        if len(results) < len(s.models):  # a report to look at while the study goes on
            _report(out, s, results, log, speeds=None)
        if after_model:
            after_model(m)
    log("measuring inference speed: every model in one interleaved block")
    finals = {
        r["model"]: load_checkpoint(out / "models" / r["model"] / "pretrain" / "final") for r in results
    }
    speeds = {"cpu": measure_speeds(finals, s.seq_len, "cpu")}
    if torch.cuda.is_available():
        speeds["cuda"] = measure_speeds(finals, s.seq_len, "cuda")
    atomic_write_json(out / "speed.json", speeds)
    return _report(out, s, results, log, speeds=speeds)


def _report(
    out: Path, s: StudySettings, results: list[dict[str, Any]], log, speeds: dict | None
) -> tuple[Path, Path]:
    """The report of the models finished so far; without ``speeds`` it is marked incomplete.
    Rows: each model then its control, then the baselines (from the first model's results.json:
    every model's run_glue trained them on the same examples)."""
    from ultracram.report.study_report import ModelResult, write_report  # matplotlib: only when reporting

    rows = []
    for r in results:
        row = dict(r)
        control = row.pop("control", None)
        row.setdefault("protocol", s.protocol)  # result.json of older versions: the study's own protocol
        for device, key in (("cpu", "cpu_tokens_per_s"), ("cuda", "gpu_tokens_per_s")):
            speed = (speeds or {}).get(device, {}).get(r["model"])
            if speed:
                row[key], row[key + "_range"] = speed["median"], [speed["slowest"], speed["fastest"]]
        rows += [row, *([control] if control else [])]
    glue = {r["model"]: _glue_results(out, r["model"]) for r in results}
    rows += _baseline_rows(glue[results[0]["model"]]) if results else []
    covers = sorted({t for r in results for t in r["glue_average_covers"]})
    kind = {"time": "the same wall-clock time", "tokens": "the same number of tokens",
            "steps": "the same number of optimizer steps"}[parse_budget(s.pretrain.budget).kind]  # fmt: skip
    notes = [
        *([f"INCOMPLETE: {len(results)} of {len(s.models)} models finished; this report is rewritten as the "
           "study goes on (speed is measured at the end)."] if speeds is None else []),
        f"Same tokenizer, shards and pretraining budget ({s.pretrain.budget}: {kind}) for every model; "
        f"GLUE dev scores x100, median of {s.seeds} seed(s), {s.protocol} fine-tuning protocol.",
        *(["Each model's \"(no pretraining)\" row: its initial weights (the same preset, vocabulary and seed, "
           "before any pretraining step) fine-tuned exactly like the pretrained model: what pretraining bought."]
          if s.control else []),
        f"GLUE average over the tasks present: {', '.join(covers) or 'none'} (WNLI excluded) - not the full GLUE score."
        if covers else "No GLUE average.",
        f"MLM validation loss: loss per masked token on the same {MLM_EVAL_SEQUENCES} sequences (at most) with the "
        f"same masks for every model ({MLM_EVAL_MASK_RATE:.0%} masked, seed {MLM_EVAL_SEED}); the final MLM loss "
        "is the training loss over the last 10% of steps.",
        "Inference throughput: encoder forward, batch 8 x sequence "
        f"{s.seq_len}, FFF layers on their fastest kernel (ultracram.model.for_inference); every model timed "
        "in one block of 7 interleaved rounds: the median, with the slowest and fastest round.",
        *_load_notes(speeds),
    ]  # fmt: skip
    sets = dev_sets(out, glue, log)
    missing = _without_predictions(glue, sets)
    if missing:
        note = (f"No per-example dev predictions for {', '.join(missing)} (the result.json files of their fine-tuning runs "
                "under models/<model>/glue/runs/ are missing or from an older version): they are left out of the "
                "pairwise tests of the summary and have no interval on their GLUE average; to include them, delete "
                "models/<model>/result.json and models/<model>/glue/ and rerun (the pretraining is kept).")  # fmt: skip
        notes.append(note)
        log(f"note: {note}")
    meta = {"title": "ultracram comparison study", "notes": notes, "settings": json.loads(json.dumps(asdict(s))),
            "environment": environment()}  # fmt: skip
    md, page = write_report(out, [ModelResult.from_dict(r) for r in rows], meta, sets)
    log(f"report{' (incomplete)' if speeds is None else ''}: {md} and {page} (open it in a browser)")
    return md, page


def _glue_results(out: Path, model: str) -> dict[str, Any] | None:
    """``models/<model>/glue/results.json``, or None when it is missing or unreadable."""
    try:
        return json.loads((out / "models" / model / "glue" / "results.json").read_text())
    except (OSError, ValueError):
        return None


def _baseline_rows(glue: dict[str, Any] | None) -> list[dict[str, Any]]:
    """The majority and bag-of-words rows of a results.json (none in those of older versions)."""
    return [{"model": b["label"], "kind": "baseline", "parameters": None, "flops_per_token": None,
             **glue_fields(b, "fixed recipe")} for b in (glue or {}).get("baselines") or []]  # fmt: skip


def dev_sets(out: Path, glue: dict[str, dict[str, Any] | None], log: Callable[[str], None]) -> list[DevSet]:
    """Every model's and control's per-seed dev predictions (OUT/models/<model>/glue/runs/<label>/
    <task>/seed-<k>/result.json) with the dev labels they were scored on (``load_split`` and
    ``finetune.subsample``, as run_glue read them), for the report's pairwise tests. A column
    whose labels cannot be read, and a run without predictions (older versions), is left out."""
    from ultracram.data.glue import GlueDataError, load_split
    from ultracram.train.finetune import subsample  # Lightning: the study has it loaded already

    first = next((g for g in glue.values() if g and g.get("checkpoints")), None)
    if first is None:
        return []
    present = {t for e in first["checkpoints"] for t in e["tasks"]}
    sets = []
    for c in (c for c in eval_columns() if c.task in present):
        try:
            dev = subsample(
                load_split(c.task, c.split, first["glue_dirs"]),
                first["settings"][c.task]["max_eval_examples"],
            )
        except (GlueDataError, OSError, KeyError) as e:
            log(f"note: {c.label}: dev labels not readable ({e}); the report has no pairwise test on it")
            continue
        predictions = {}
        for model, g in glue.items():
            for e in (g or {}).get("checkpoints", []):
                runs = out / "models" / model / "glue" / "runs" / e["label"].replace("/", "__") / c.task
                preds = [_run_predictions(runs / f"seed-{k}" / "result.json", c.split) for k in g["seeds"]]
                if preds and all(p is not None and len(p) == len(dev) for p in preds):
                    predictions[e["label"]] = [np.asarray(p) for p in preds]
        sets.append(DevSet(c.label, c.task, TASKS[c.task].main_metric, np.asarray(dev.labels), predictions))
    return sets


def _without_predictions(glue: dict[str, dict[str, Any] | None], sets: list[DevSet]) -> list[str]:
    """The checkpoints (models and controls) missing from some dev set's predictions, which the
    report's pairwise tests and average intervals then leave out; none when no dev set could be
    read (``dev_sets`` says why)."""
    labels = [e["label"] for g in glue.values() for e in (g or {}).get("checkpoints", [])]
    return [label for label in labels if sets and any(label not in d.predictions for d in sets)]


def _run_predictions(path: Path, split: str) -> list | None:
    """A fine-tuning run's dev predictions on ``split`` (None without them)."""
    try:
        return (json.loads(path.read_text()).get("predictions") or {}).get(split)
    except (OSError, ValueError):
        return None


def _load_notes(speeds: dict | None) -> list[str]:
    """The machine's load around the timing (``bench.timing.load_report``), and its warning when
    other processes kept more than half the cores busy."""
    cpu = next(iter((speeds or {}).get("cpu", {}).values()), None)
    if not cpu or "load" not in cpu:
        return []
    load = cpu["load"]
    before, after = ("?" if not v else f"{v[0]:.2f}" for v in (load["before"], load["after"]))  # 1-minute
    note = f"Load average during the timing: {before} before, {after} after"
    if load.get("other_cores") is not None:
        note += f"; other processes kept {load['other_cores']:.2f} of {load['cores']} cores busy"
    note += "."
    if load["warning"]:
        note += (" WARNING: the machine was busy; the speed columns are less reliable (the ratios between "
                 "models less so, as the rounds interleave them).")  # fmt: skip
    return [note]
