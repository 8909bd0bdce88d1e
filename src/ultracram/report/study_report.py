"""The comparison study's report: one table, a summary in words, a few figures, and everything
needed to repeat it, as Markdown with PNG files and as one self-contained HTML file (figures
inlined as base64).

Rows: each model, its no-pretraining control ("<model> (no pretraining)"), then the reference
rows of ``run_glue`` (majority class, bag of words). A GLUE cell is the median score x100 with its
95% bootstrap interval over the dev examples in brackets and, with several seeds, the range of
the per-seed scores; results written before intervals existed print the median alone. The
summary is generated from the same numbers (``summary``): which models beat the baselines
(``glue_table.comparison_sentences``), which models are distinguishable from each other, what
pretraining bought, which MLM-loss differences are real (``ultracram.report.compare``)."""

from __future__ import annotations

import base64
import html
import itertools
import json
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # no display on servers and CI
import matplotlib.pyplot as plt

from ultracram.data.glue import TASKS, eval_columns
from ultracram.fileio import atomic_write_text
from ultracram.report.compare import (
    ALPHA,
    DevSet,
    PairTest,
    average_interval,
    compare_losses,
    compare_systems,
    describe_pair,
)
from ultracram.train.baselines import BOW, MAJORITY, N_BOOT
from ultracram.train.glue_table import EDGE_NOTE, chosen_lr_text, comparison_sentences, selection_edge

COLUMNS = {c.label: c for c in eval_columns()}


@dataclass(frozen=True)
class ModelResult:
    """What the study measured for one row. Missing measurements stay None and print as '-'."""

    model: str
    parameters: int | None
    flops_per_token: float | None
    tokens_seen: int | None = None
    final_mlm_loss: float | None = None
    glue: dict[str, float] = field(default_factory=dict)  # column label -> median main metric x100
    glue_average: float | None = None
    glue_average_covers: list[str] = field(default_factory=list)
    cpu_tokens_per_s: float | None = None  # median of interleaved rounds (study.measure_speeds)
    gpu_tokens_per_s: float | None = None
    curve: list[dict[str, float]] = field(default_factory=list)  # rows with elapsed_s, tokens, loss
    fff_usage: list[list[float]] | None = None  # per layer: fraction of leaves ever reached, etc.
    cpu_tokens_per_s_range: list[float] | None = None  # [slowest, fastest] interleaved round
    gpu_tokens_per_s_range: list[float] | None = None
    kind: str = "model"
    """"model", "control" (a model's initial weights, fine-tuned alike) or "baseline"."""
    protocol: str | None = None
    """Fine-tuning protocol ("fit", "sane", "bert"; "fixed recipe" for a baseline)."""
    glue_entry: dict[str, Any] | None = None
    """The row's entry of run_glue's results.json: per task ``summary`` (median, per-seed
    ``values``, ``ci``), ``vs_baselines`` and, with the fit protocol, ``selection``."""
    mlm_validation: dict[str, Any] | None = None
    """``study.mlm_validation``: loss, ci, and per-sequence ``loss_sum`` and ``count``."""
    control_of: str | None = None
    """For a control row: the model whose initial weights it is."""

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ModelResult:
        return cls(**d)


def _fmt(v: Any, digits: int = 2) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:,.{digits}f}"
    if isinstance(v, int):
        return f"{v:,}"
    return str(v)


def _speed(median: float | None, spread: list[float] | None) -> str:
    """``12,345 (11,900-12,800)``: the median and the slowest and fastest rounds."""
    if median is None:
        return "-"
    return f"{median:,.0f}" + (f" ({spread[0]:,.0f}-{spread[1]:,.0f})" if spread else "")


def _glue_cell(r: ModelResult, label: str) -> str:
    """``81.2 [78.9, 83.4]``, with several seeds ``81.2 [78.9, 83.4] (seeds 79.0-82.5)``; the
    median alone for results without intervals."""
    c = COLUMNS[label]
    task = (r.glue_entry or {}).get("tasks", {}).get(c.task, {})
    cell = task.get("summary", {}).get(c.split, {}).get(TASKS[c.task].main_metric)
    if not cell:
        return _fmt(r.glue.get(label), 1)
    text = f"{100 * cell['median']:.1f}"
    ci = cell.get("ci")
    if ci and None not in ci:
        text += f" [{100 * ci[0]:.1f}, {100 * ci[1]:.1f}]"
    values = cell.get("values") or []
    if len(values) > 1:
        text += f" (seeds {100 * min(values):.1f}-{100 * max(values):.1f})"
    return text


def _average_cell(r: ModelResult, interval: tuple[float, float] | None) -> str:
    text = _fmt(r.glue_average, 1)
    if r.glue_average is not None and interval and all(v == v for v in interval):
        text += f" [{100 * interval[0]:.1f}, {100 * interval[1]:.1f}]"
    return text


def _loss_cell(m: dict[str, Any] | None) -> str:
    """``5.123 [5.010, 5.240]``: the MLM validation loss and its interval over sequences."""
    if not m or m.get("loss") is None:
        return "-"
    ci = m.get("ci")
    return f"{m['loss']:.3f}" + (f" [{ci[0]:.3f}, {ci[1]:.3f}]" if ci and None not in ci else "")


def _chosen_lrs(r: ModelResult) -> dict[str, str]:
    """Task display name -> the lr the fit protocol chose, marked at an end of its grid (empty
    for the other protocols)."""
    tasks = (r.glue_entry or {}).get("tasks", {})
    return {TASKS[t].display: chosen_lr_text(e["selection"]) for t, e in tasks.items()
            if t in TASKS and (e.get("selection") or {}).get("chosen")}  # fmt: skip


def _protocol_cell(r: ModelResult) -> str:
    return _fmt(r.protocol) + (" (lr below)" if _chosen_lrs(r) else "")


def result_table(
    results: list[ModelResult], averages: dict[str, tuple[float, float] | None] | None = None
) -> tuple[list[str], list[list[str]]]:
    """Header and rows: per-task GLUE scores, average, fine-tuning protocol, size, cost,
    pretraining, MLM validation loss and speed. ``averages``: the GLUE average's interval per row."""
    tasks = [c.label for c in eval_columns() if any(c.label in r.glue for r in results)]  # paper order
    header = ["model", *tasks, "GLUE avg", "fine-tuning", "params (M)", "MFLOP/token", "pretrain tokens",
              "final MLM loss", "MLM val loss [95% CI]", "CPU tokens/s", "GPU tokens/s"]  # fmt: skip
    rows = []
    for r in results:
        rows.append([
            r.model, *[_glue_cell(r, t) for t in tasks], _average_cell(r, (averages or {}).get(r.model)),
            _protocol_cell(r), _fmt(None if r.parameters is None else r.parameters / 1e6),
            _fmt(None if r.flops_per_token is None else r.flops_per_token / 1e6, 2), _fmt(r.tokens_seen),
            _fmt(r.final_mlm_loss, 3), _loss_cell(r.mlm_validation),
            _speed(r.cpu_tokens_per_s, r.cpu_tokens_per_s_range), _speed(r.gpu_tokens_per_s, r.gpu_tokens_per_s_range),
        ])  # fmt: skip
    return header, rows


def lr_table(results: list[ModelResult]) -> tuple[list[str], list[list[str]]] | None:
    """The learning rates the fit protocol chose, one row per fine-tuned checkpoint; None if none."""
    chosen = {r.model: _chosen_lrs(r) for r in results if _chosen_lrs(r)}
    if not chosen:
        return None
    tasks = list(dict.fromkeys(t for lrs in chosen.values() for t in lrs))
    return ["model", *tasks], [[m, *(lrs.get(t, "-") for t in tasks)] for m, lrs in chosen.items()]


def _at_edge(results: list[ModelResult]) -> bool:
    """Whether the fit protocol chose an end of its grid for some model and task (``lr_table``
    marks those cells)."""
    return any(selection_edge(e["selection"]) for r in results
               for e in (r.glue_entry or {}).get("tasks", {}).values() if e.get("selection"))  # fmt: skip


# --------------------------------------------------------------------------------------------
# The summary in words
# --------------------------------------------------------------------------------------------


def _baseline_test(task_entry: dict[str, Any], split: str, baseline: str = MAJORITY) -> dict[str, Any] | None:
    """The paired test of a task entry's main metric against ``baseline`` (by default the
    majority class); None if absent."""
    t = ((task_entry.get("vs_baselines") or {}).get(split) or {}).get("vs", {}).get(baseline)
    return t if t and t.get("p_value") is not None else None


def _beats_majority(test: dict[str, Any]) -> bool:
    """Whether a test against a baseline says the checkpoint is better (5% level)."""
    return test["p_value"] < ALPHA and test["diff"] > 0


def at_chance(r: ModelResult) -> bool | None:
    """Whether ``r`` is better than the majority class on no task (paired bootstrap, 5% level);
    None when its results hold no such test (older versions)."""
    tests = [_baseline_test(t, split) for t in (r.glue_entry or {}).get("tasks", {}).values()
             for split in t.get("summary", {})]  # fmt: skip
    tests = [t for t in tests if t]
    return not any(map(_beats_majority, tests)) if tests else None


def _uncorrected(n: int) -> str:
    """The level, and how many of ``n`` tests would come out significant by chance alone."""
    tests = f"{n} test{'s' * (n != 1)}"
    return (f"two-sided, {100 * ALPHA:.0f}% level, not corrected for multiple comparisons ({tests} here: about "
            f"{ALPHA * n:.1f} would come out distinguishable by chance alone if nothing differed)")  # fmt: skip


def _baseline_part(models: list[ModelResult]) -> list[tuple[str, list[str]]]:
    """Each model against the bag of words and the majority class (``comparison_sentences``), in
    bold every column where every model is at chance, and in bold when no model beats both the
    bag of words and the majority class anywhere (with where to read the budget at which one
    first does)."""
    entries = [r.glue_entry for r in models if r.glue_entry]
    sentences = comparison_sentences({"checkpoints": entries}) if entries else []
    if not sentences:
        return []
    both_tests, all_at_chance = [], []
    for c in eval_columns():
        tests = [_baseline_test(e["tasks"].get(c.task, {}), c.split) for e in entries]
        if len(entries) > 1 and all(tests) and not any(map(_beats_majority, tests)):
            all_at_chance.append(c.label)
        # Beating the bag of words counts only above chance (on WNLI it scores under the majority class).
        both_tests += [
            (_baseline_test(e["tasks"].get(c.task, {}), c.split, BOW), t) for e, t in zip(entries, tests)
        ]
    if all_at_chance:  # one line for all such columns: each column's sentence has the details
        columns = ", ".join(all_at_chance[:-1]) + " and " * (len(all_at_chance) > 1) + all_at_chance[-1]
        sentences.append(
            f"**On {columns} every model is at chance: none is better than the majority class.**"
        )
    both_tests = [(b, m) for b, m in both_tests if b and m]
    if both_tests and not any(_beats_majority(b) and _beats_majority(m) for b, m in both_tests):
        sentences.append(
            "**No model is better than both the bag-of-words baseline and the majority class on any task: at "
            "this pretraining budget and on these training examples none does measurably better than a word "
            "count. ultracram's docs/budget.md measures how much CPU pretraining a model needs before it first "
            "does better.**"
        )
    intro = ("Against the baselines (paired bootstrap of the main metric on the same dev examples, two-sided, "
             f"{100 * ALPHA:.0f}% level, not corrected for multiple comparisons):")  # fmt: skip
    return [(intro, sentences)]


def _column_sentence(column: str, tests: list[PairTest], nothing: str) -> str:
    """``SST-2: A beats B by ...; A and C are not distinguishable (...)``; when no test is
    significant (several tests), on the dev examples nor across seeds, ``nothing`` says so first."""
    quiet = not any(t.significant or t.significant_across_seeds for t in tests)
    lead = f"{nothing}: " if len(tests) > 1 and quiet else ""
    return f"{column}: {lead}" + "; ".join(describe_pair(t) for t in tests) + "."


_BOOT = (f"paired bootstrap of the main metric on the same dev examples ({N_BOOT} resamples; with several seeds, "
         "the run nearest the median)")  # fmt: skip


def _pair_part(
    dev_sets: Sequence[DevSet], pairs: list[tuple[str, str]], intro: str, nothing: str
) -> list[tuple[str, list[str]]]:
    """One sentence per dev column with every pair of ``pairs`` that has predictions there."""
    lines, n = [], 0
    for d in dev_sets:
        present = [(a, b) for a, b in pairs if a in d.predictions and b in d.predictions]
        if present:
            tests = compare_systems(d, present)
            n += len(tests)
            lines.append(_column_sentence(d.column, tests, nothing))
    return [(f"{intro}: {_BOOT}, {_uncorrected(n)}.", lines)] if lines else []


def _mlm_part(models: list[ModelResult]) -> list[tuple[str, list[str]]]:
    """Paired bootstrap of the MLM validation loss between models scored on the same inputs."""
    scored = [r for r in models if (r.mlm_validation or {}).get("loss_sum")]
    same = [
        r for r in scored if r.mlm_validation["inputs_sha256"] == scored[0].mlm_validation["inputs_sha256"]
    ]
    if len(same) < 2:
        return []
    m = same[0].mlm_validation
    tests = compare_losses({r.model: (r.mlm_validation["loss_sum"], r.mlm_validation["count"]) for r in same})
    intro = (f"MLM validation loss: paired bootstrap over the same {m['sequences']} sequences and masks "
             f"({m['source']}; {N_BOOT} resamples), {_uncorrected(len(tests))}.")  # fmt: skip
    return [(intro, [describe_pair(t, loss=True) + "." for t in tests])]


def summary(results: list[ModelResult], dev_sets: Sequence[DevSet] = ()) -> list[tuple[str, list[str]]]:
    """The summary in words, every sentence computed from the numbers: (intro, sentences) for the
    comparison with the baselines, between models, each model against its no-pretraining control,
    and the MLM validation loss. A part without anything to compare is left out."""
    models = [r for r in results if r.kind == "model"]
    between = list(itertools.combinations([r.model for r in models], 2))
    pretraining = [(r.control_of, r.model) for r in results if r.kind == "control" and r.control_of]
    return [
        *_baseline_part(models),
        *_pair_part(dev_sets, between, "Between models", "no two models are distinguishable"),
        *_pair_part(dev_sets, pretraining, "What pretraining bought, each model against its own initial weights "
                    "fine-tuned alike", "pretraining bought nothing measurable at this budget"),
        *_mlm_part(models),
    ]  # fmt: skip


# --------------------------------------------------------------------------------------------
# Figures and files
# --------------------------------------------------------------------------------------------

CHANCE_NOTE = ("Hollow grey: at chance, better than the majority class on no task (paired bootstrap, 5% level): "
               "its height is noise, not a rank.")  # fmt: skip


def _quality_vs_cost(results: list[ModelResult], averages: dict[str, Any], path: Path) -> str | None:
    """GLUE average against CPU inference cost, with the average's interval as error bars;
    models at chance hollow and grey. Returns the caption (None: nothing to plot)."""
    points = [r for r in results if r.kind == "model" and r.glue_average is not None and r.cpu_tokens_per_s]
    if not points:
        return None
    fig, ax = plt.subplots(figsize=(6, 4))
    hollow = False
    for i, r in enumerate(points):
        x, y, ci = 1e6 / r.cpu_tokens_per_s, r.glue_average, averages.get(r.model)
        yerr = (
            [[max(0.0, y - 100 * ci[0])], [max(0.0, 100 * ci[1] - y)]]
            if ci and all(v == v for v in ci)
            else None
        )
        chance = at_chance(r) is True
        hollow |= chance
        color = "grey" if chance else f"C{i}"
        ax.errorbar(x, y, yerr=yerr, fmt="o", color=color, mfc="none" if chance else color, capsize=3)
        ax.annotate(r.model, (x, y), fontsize=8, color=color)
        control = next((c for c in results if c.kind == "control" and c.control_of == r.model), None)
        if control is not None and control.glue_average is not None:  # same architecture: same cost
            ax.plot(x, control.glue_average, "x", color=color, label="no pretraining" if i == 0 else None)
    for b in (b for b in results if b.kind == "baseline" and b.glue_average is not None):
        ax.axhline(b.glue_average, color="dimgray", linestyle="--" if b.model == BOW else ":", linewidth=1,
                   label=b.model)  # fmt: skip
    ax.set(xlabel="CPU inference cost (seconds per million tokens)", ylabel="GLUE average",
           title="Quality vs inference cost")  # fmt: skip
    ax.margins(x=0.2)  # room for the names
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=7, loc="best")
    if hollow:  # the note travels with the PNG too
        ax.text(
            0.01,
            0.01,
            "hollow grey: at chance on every task",
            transform=ax.transAxes,
            fontsize=7,
            color="grey",
        )
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    caption = ("GLUE average against CPU inference cost: up and to the left is better. Error bars: 95% bootstrap "
               "interval; x: the same model fine-tuned without pretraining; lines: the baselines.")  # fmt: skip
    return caption + (" " + CHANCE_NOTE if hollow else "")


def _figures(results: list[ModelResult], out: Path, averages: dict[str, Any]) -> dict[str, tuple[Path, str]]:
    """Figure name -> (PNG path, caption)."""
    out.mkdir(parents=True, exist_ok=True)
    figs: dict[str, tuple[Path, str]] = {}
    curves = [r for r in results if r.curve]
    if curves:
        fig, (a, b) = plt.subplots(1, 2, figsize=(11, 4))
        for r in curves:
            a.plot([c["elapsed_s"] / 60 for c in r.curve], [c["loss"] for c in r.curve], label=r.model)
            b.plot([c["tokens"] / 1e6 for c in r.curve], [c["loss"] for c in r.curve], label=r.model)
        a.set(xlabel="wall-clock minutes", ylabel="MLM loss", title="Loss vs time")
        b.set(xlabel="tokens seen (millions)", ylabel="MLM loss", title="Loss vs tokens")
        a.legend()
        fig.tight_layout()
        fig.savefig(out / "loss.png", dpi=100)
        plt.close(fig)
        figs["loss"] = (
            out / "loss.png",
            "MLM loss against wall-clock time and tokens seen, same budget for every model.",
        )
    caption = _quality_vs_cost(results, averages, out / "quality_vs_cost.png")
    if caption:
        figs["quality_vs_cost"] = (out / "quality_vs_cost.png", caption)
    fff = [r for r in results if r.fff_usage]
    if fff:
        fig, ax = plt.subplots(figsize=(6, 4))
        for r in fff:
            ax.plot(range(len(r.fff_usage)), [u[0] for u in r.fff_usage], marker="o", label=r.model)
        ax.set(xlabel="layer", ylabel="fraction of leaves reached", ylim=(0, 1.05), title="FFF routing usage")
        ax.set_xticks(range(max(len(r.fff_usage) for r in fff)))  # layers are whole numbers
        ax.legend()
        fig.tight_layout()
        fig.savefig(out / "fff_usage.png", dpi=100)
        plt.close(fig)
        figs["fff_usage"] = (
            out / "fff_usage.png",
            "Share of FFF leaves that tokens of the evaluation text reach, per layer.",
        )
    return figs


def _reading_notes(results: list[ModelResult]) -> list[str]:
    """How to read the table: only what it holds."""
    notes = []
    if any(r.glue_entry for r in results):
        notes.append("GLUE cells: the median over seeds x100 of the main metric, in brackets its 95% percentile "
                     "bootstrap interval over the dev examples (of the run nearest the median), then the range of "
                     "the per-seed scores when there are several seeds. GLUE avg: in brackets, the interval of the "
                     "mean over the averaged columns, each resampled on its own.")  # fmt: skip
    if any(r.kind == "baseline" for r in results):
        notes.append(f"Reference rows, trained on the same training examples and scored on the same dev examples: "
                     f"{MAJORITY} = the most frequent training label (STS-B: the mean score); bag-of-words = TF-IDF "
                     "of word 1-2-grams + logistic regression (STS-B: ridge), fixed hyperparameters.")  # fmt: skip
    if any(r.mlm_validation for r in results):
        notes.append("MLM val loss: loss per masked token on fixed validation sequences and masks, the same for "
                     "every row, in brackets its 95% bootstrap interval over the sequences.")  # fmt: skip
    return notes


def _md_table(header: list[str], rows: list[list[str]]) -> list[str]:
    return [
        "| " + " | ".join(header) + " |",
        "|" + "---|" * len(header),
        *("| " + " | ".join(r) + " |" for r in rows),
    ]


def _html_table(header: list[str], rows: list[list[str]]) -> str:
    def cell(tag: str, v: str) -> str:
        return f"<{tag}>{html.escape(v)}</{tag}>"

    return ("<table><thead><tr>" + "".join(cell("th", h) for h in header) + "</tr></thead><tbody>" +
            "".join("<tr>" + "".join(cell("td", v) for v in r) + "</tr>" for r in rows) + "</tbody></table>")  # fmt: skip


def _inline_html(text: str) -> str:
    """Escaped text with Markdown's **bold** as <strong>."""
    return re.sub(r"\*\*(.+?)\*\*", r"<strong>\1</strong>", html.escape(text))


def write_report(
    out_dir: str | Path, results: list[ModelResult], meta: dict[str, Any], dev_sets: Sequence[DevSet] = ()
) -> tuple[Path, Path]:
    """Write ``report.md`` (+ ``figures/*.png``) and a self-contained ``report.html``.

    ``dev_sets``: the rows' per-example dev predictions (``compare.DevSet``), for the pairwise
    tests of the summary and the GLUE average's interval; without them the summary holds the
    comparisons with the baselines and the MLM loss only. ``meta`` holds what makes the study
    repeatable: the command, configuration, versions and hardware; it is printed verbatim as
    JSON at the end of both files.
    """
    out = Path(out_dir)
    averages = {}
    for r in results:
        covered = [d for d in dev_sets if d.column in r.glue_average_covers]
        if r.glue_average_covers and len(covered) == len(r.glue_average_covers):
            averages[r.model] = average_interval(covered, r.model)
    figs = _figures(results, out / "figures", averages)
    header, rows = result_table(results, averages)
    lrs = lr_table(results)
    parts = summary(results, dev_sets)
    title = meta.get("title", "ultracram comparison study")
    notes = meta.get("notes", [])
    reading = _reading_notes(results)

    md = [f"# {title}", ""]
    md += [f"- {n}" for n in notes] + ([""] if notes else [])
    md += _md_table(header, rows)
    md += ["", *(f"- {n}" for n in reading)] if reading else []
    if lrs:
        md += [
            "",
            "Learning rates chosen by the fit protocol on held-out training examples (never on dev):",
            "",
        ]
        md += _md_table(*lrs)
        md += ["", EDGE_NOTE] if _at_edge(results) else []
    if parts:
        md += ["", "## Summary (generated from the numbers above)"]
        for intro, sentences in parts:
            md += ["", intro, "", *(f"- {s}" for s in sentences)]
    for key, (path, caption) in figs.items():
        md += ["", f"![{key}](figures/{path.name})", "", f"*{caption}*"]
    md += [
        "",
        "## Configuration, versions and hardware",
        "",
        "```json",
        json.dumps(meta, indent=2),
        "```",
        "",
    ]
    md_path = out / "report.md"
    atomic_write_text(md_path, "\n".join(md))

    def bullets(items: list[str]) -> str:
        return "<ul>" + "".join(f"<li>{_inline_html(n)}</li>" for n in items) + "</ul>"

    body = [bullets(notes), _html_table(header, rows), bullets(reading) if reading else ""]
    if lrs:
        body += ["<p>Learning rates chosen by the fit protocol on held-out training examples (never on dev):</p>",
                 _html_table(*lrs)]  # fmt: skip
        body += [f"<p>{_inline_html(EDGE_NOTE)}</p>"] if _at_edge(results) else []
    if parts:
        body.append("<h2>Summary (generated from the numbers above)</h2>")
        body += [f"<p>{_inline_html(intro)}</p>{bullets(sentences)}" for intro, sentences in parts]
    body += [f'<figure><img alt="{k}" src="data:image/png;base64,{base64.b64encode(p.read_bytes()).decode()}">'
             f"<figcaption>{html.escape(c)}</figcaption></figure>" for k, (p, c) in figs.items()]  # fmt: skip
    page = f"""<!doctype html><html><head><meta charset="utf-8"><title>{html.escape(title)}</title>
<style>body{{font-family:system-ui,sans-serif;max-width:1100px;margin:2em auto;padding:0 1em}}
table{{border-collapse:collapse}}td,th{{border:1px solid #ccc;padding:4px 8px;text-align:right}}
td:first-child,th:first-child{{text-align:left}}img{{max-width:100%}}pre{{background:#f6f6f6;padding:1em;overflow:auto}}</style>
</head><body><h1>{html.escape(title)}</h1>{"".join(body)}
<h2>Configuration, versions and hardware</h2><pre>{html.escape(json.dumps(meta, indent=2))}</pre>
</body></html>"""
    html_path = out / "report.html"
    atomic_write_text(html_path, page)
    return md_path, html_path
