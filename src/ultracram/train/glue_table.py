"""GLUE results as a Markdown table laid out like the papers' (BERT table 1, cramming table 3):
one row per checkpoint, one column per dev set, the average last; then the reference rows
(majority class, bag of words) and, below the table, one sentence per column saying which
checkpoints beat the bag of words and which are at chance."""

from __future__ import annotations

from typing import Any

from ultracram.data.glue import TASKS, eval_columns
from ultracram.report.stats import format_p
from ultracram.train.baselines import BOW, MAJORITY

_METRIC_SHORT = {
    "accuracy": "acc",
    "f1": "F1",
    "matthews": "MCC",
    "pearson": "Pearson",
    "spearman": "Spearman",
}

SIGNIFICANCE = 0.05
"""Level of the paired tests in the sentences below the table."""


EDGE_NOTE = (
    "An lr marked lowest or highest of grid is still an end of the grid after the steps tried past it "
    "(at most two), and the best held-out score is there: a better lr may lie further out, so that cell may "
    "understate the model (try a fixed lr further out with --per_task.TASK.lr)."
)


def selection_edge(selection: dict[str, Any]) -> str | None:
    """Which end of its learning-rate grid the fitted protocol chose ("lowest" or "highest"),
    when the best held-out score is at that end too (the best lr may then lie beyond it); None
    otherwise. A choice at an end whose best score lies inside the grid is the one-standard-
    error rule's (``finetune.choose_lr``) lower-lr pick among scores alike, not a sign of a grid
    too narrow."""
    grid = selection.get("grid", [])
    lrs = [g["lr"] for g in grid]
    lr = (selection.get("chosen") or {}).get("lr")
    scores = [g["score"] for g in grid if g.get("score") is not None]  # None: diverged
    if len(lrs) < 2 or lr is None or not scores:
        return None
    best = max(scores)
    at_best = {g["lr"] for g in grid if g.get("score") == best}
    if lr == min(lrs) and lr in at_best:
        return "lowest"
    return "highest" if lr == max(lrs) and lr in at_best else None


def chosen_lr_text(selection: dict[str, Any]) -> str:
    """``2e-3``, or ``1e-3 (lowest of grid)`` at an end of the grid."""
    edge = selection_edge(selection)
    return f"{selection['chosen']['lr']:g}" + (f" ({edge} of grid)" if edge else "")


def _cell(r: dict[str, Any] | None, metric: str) -> str:
    """``81.2 [78.9, 83.4]``: the score x100 and its bootstrap interval (when there is one)."""
    if not r:
        return "–"
    m = r[metric]
    text = f"{100 * m['median']:.1f}"
    ci = m.get("ci")
    if ci and None not in ci:
        text += f" [{100 * ci[0]:.1f}, {100 * ci[1]:.1f}]"
    return text


def glue_markdown(results: dict[str, Any]) -> str:
    """The table for ``results`` as written by ``ultracram.train.finetune.run_glue``.

    Cells are the median over seeds of the task's main metric x100 (F1 for MRPC/QQP,
    Spearman for STS-B, Matthews correlation for CoLA, accuracy otherwise), with the 95%
    bootstrap interval in brackets when results.json has one. Columns without any result are
    left out; a missing cell is "–". The average column is labelled with the columns it covers
    whenever it does not cover all of them. The baselines (``results["baselines"]``) follow the
    checkpoints; results written before there were baselines give the table without them.
    """
    baselines = results.get("baselines") or []
    present = {t for e in results["checkpoints"] for t in e["tasks"]}
    cols = [c for c in eval_columns() if c.task in present]
    averages = [e["average"] for e in results["checkpoints"]]
    complete = all(a["complete"] for a in averages)
    avg_label = "GLUE avg" if complete else "Avg (partial)"
    header = ["checkpoint", *(c.label for c in cols), avg_label]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" + "---:|" * (len(header) - 1)]
    for e in [*results["checkpoints"], *baselines]:
        cells = [e["label"]]
        for c in cols:
            cells.append(
                _cell(e["tasks"].get(c.task, {}).get("summary", {}).get(c.split), TASKS[c.task].main_metric)
            )
        avg = e["average"]["value"]
        cells.append("–" if avg is None else f"{avg:.1f}")
        lines.append("| " + " | ".join(cells) + " |")
    seeds = len(results["seeds"])
    foot = [
        "",
        f"Dev-set scores x100, median over {seeds} seed{'s' * (seeds != 1)} ({results['protocol']} protocol). "
        "Metrics: " + ", ".join(f"{c.label} {_METRIC_SHORT[TASKS[c.task].main_metric]}" for c in cols) + ".",
    ]
    boot = results.get("bootstrap")
    if boot:
        foot.append(
            f"In brackets: {100 * boot['level']:.0f}% percentile bootstrap interval over the dev examples "
            f"({boot['resamples']} resamples) of {'the run nearest the median' if seeds > 1 else 'the run'}. "
            f"Baselines, trained on the same training examples: {MAJORITY} = the most frequent training label "
            f"(STS-B: the mean score); {BOW} = TF-IDF of word 1-2-grams + logistic regression (STS-B: ridge)."
        )
    chosen = [f"{e['label']}: " + ", ".join(f"{TASKS[t].display} {chosen_lr_text(r['selection'])}"
                                             for t, r in e["tasks"].items() if r.get("selection"))
              for e in results["checkpoints"] if any(r.get("selection") for r in e["tasks"].values())]  # fmt: skip
    if chosen:
        foot.append("Learning rates chosen on held-out training examples (never on dev), from a grid scaled to "
                    "the model's width: " + "; ".join(chosen) + ".")  # fmt: skip
        if any(selection_edge(r["selection"]) for e in results["checkpoints"] for r in e["tasks"].values()
               if r.get("selection")):  # fmt: skip
            foot.append(EDGE_NOTE)
    for e in results["checkpoints"]:
        a = e["average"]
        if not a["complete"]:
            foot.append(
                f"{e['label']}: average over {len(a['covers'])} column(s) only ({', '.join(a['covers'])}); "
                f"missing {', '.join(a['missing'])}. Not comparable with a full GLUE score."
            )
    if "WNLI" in [c.label for c in cols]:
        foot.append("WNLI is shown but not averaged (as in BERT and cramming).")
    limited = []
    for name, r in results["checkpoints"][0]["tasks"].items() if results["checkpoints"] else []:
        full = r.get("available_examples", {})
        used = {"train": r.get("train_examples", 0), **r.get("dev_examples", {})}
        cut = [f"{split} {n} of {full[split]}" for split, n in used.items() if n < full.get(split, n)]
        if cut:
            limited.append(f"{TASKS[name].display} ({', '.join(cut)})")
    if limited:
        foot.append("Subsampled (fixed random subsets): " + "; ".join(limited) + ".")
    foot += [f"Note: {n}" for n in results.get("notes", [])]
    if boot:
        comparisons = comparison_sentences(results)
        if comparisons:
            foot += [
                "",
                f"Against the baselines (paired bootstrap of the main metric on the same dev examples, "
                f"two-sided, {100 * SIGNIFICANCE:.0f}% level, not corrected for multiple comparisons):",
                "",
                *(f"- {s}" for s in comparisons),
            ]
    if results.get("pairwise"):
        from ultracram.report.compare import PairTest, describe_pair

        foot += ["", "Between checkpoints (paired bootstrap of the main metric on the same dev examples, each "
                 f"checkpoint's run nearest the median seed; two-sided, {100 * SIGNIFICANCE:.0f}% level, not corrected "
                 "for multiple comparisons):", ""]  # fmt: skip
        foot += [f"- {t['what']}: {describe_pair(PairTest(**t))}." for t in results["pairwise"]]
    return "\n".join(lines + foot) + "\n"


def _points(test: dict[str, Any], flat: bool = False) -> str:
    """``+3.1 points (95% CI 1.2 to 5.0, p = 0.002)``; ``flat``: ``+3.1 points, 95% CI ..., p = ...``
    (inside parentheses)."""
    ci = f"95% CI {100 * test['low']:.1f} to {100 * test['high']:.1f}, {format_p(test['p_value'])}"
    return f"{100 * test['diff']:+.1f} points" + (f", {ci}" if flat else f" ({ci})")


def _significant(test: dict[str, Any] | None) -> bool:
    return bool(test) and test["p_value"] is not None and test["p_value"] < SIGNIFICANCE


def comparison_sentences(results: dict[str, Any]) -> list[str]:
    """One sentence per column: each checkpoint's main metric against the bag-of-words baseline
    (beats it, is worse, or is not distinguishable from it, with the difference, its interval and
    the p-value), and, in bold, the checkpoints not significantly better than the majority class."""
    present = {t for e in results["checkpoints"] for t in e["tasks"]}
    out = []
    for c in (c for c in eval_columns() if c.task in present):
        tested, untested, chance = [], [], []
        for e in results["checkpoints"]:
            t = e["tasks"].get(c.task)
            if not t or c.split not in t.get("summary", {}):
                continue
            vs = (t.get("vs_baselines") or {}).get(c.split)
            bow = (vs or {}).get("vs", {}).get(BOW)
            if not bow or bow.get("p_value") is None or bow.get("low") is None:
                untested.append(e["label"])
                continue
            tested.append((e["label"], bow))
            maj = vs["vs"].get(MAJORITY)
            if maj and maj.get("p_value") is not None and not (_significant(maj) and maj["diff"] > 0):
                chance.append(f"{e['label']} ({100 * maj['diff']:+.1f} points, {format_p(maj['p_value'])})")
        if not tested and not untested:
            continue
        clauses = []
        if tested and not any(_significant(b) for _, b in tested):
            if len(tested) == 1:
                label, b = tested[0]
                clauses.append(
                    f"{label} is not distinguishable from the bag-of-words baseline ({_points(b, True)})"
                )
            else:
                clauses.append("no checkpoint is distinguishable from the bag-of-words baseline (p >= 0.05): "
                               + "; ".join(f"{label} {_points(b)}" for label, b in tested))  # fmt: skip
        else:
            for label, b in tested:
                if _significant(b) and b["diff"] > 0:
                    clauses.append(f"{label} beats bag-of-words by {_points(b)}")
                elif _significant(b):
                    clauses.append(f"{label} is worse than bag-of-words: {_points(b)}")
                else:
                    clauses.append(f"{label} is not distinguishable from bag-of-words ({_points(b, True)})")
        if untested:
            clauses.append(f"{', '.join(untested)} not tested (no per-example predictions in its runs: "
                           "written by an older ultracram)")  # fmt: skip
        sentence = f"{c.label}: " + "; ".join(clauses) + "."
        if chance:
            sentence += (f" **At chance: {', '.join(chance)} {'is' if len(chance) == 1 else 'are'} not better than "
                         f"the majority class.**")  # fmt: skip
        out.append(sentence)
    return out
