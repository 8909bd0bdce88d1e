"""GLUE results as a Markdown table laid out like the papers' (BERT table 1, cramming table 3):
one row per checkpoint, one column per dev set, the average last."""

from __future__ import annotations

from typing import Any

from ultracram.data.glue import TASKS, eval_columns

_METRIC_SHORT = {
    "accuracy": "acc",
    "f1": "F1",
    "matthews": "MCC",
    "pearson": "Pearson",
    "spearman": "Spearman",
}


def glue_markdown(results: dict[str, Any]) -> str:
    """The table for ``results`` as written by ``ultracram.train.finetune.run_glue``.

    Cells are the median over seeds of the task's main metric x100 (F1 for MRPC/QQP,
    Spearman for STS-B, Matthews correlation for CoLA, accuracy otherwise). Columns without
    any result are left out; a missing cell is "–". The average column is labelled with the
    columns it covers whenever it does not cover all of them.
    """
    present = {t for e in results["checkpoints"] for t in e["tasks"]}
    cols = [c for c in eval_columns() if c.task in present]
    averages = [e["average"] for e in results["checkpoints"]]
    complete = all(a["complete"] for a in averages)
    avg_label = "GLUE avg" if complete else "Avg (partial)"
    header = ["checkpoint", *(c.label for c in cols), avg_label]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" + "---:|" * (len(header) - 1)]
    for e in results["checkpoints"]:
        cells = [e["label"]]
        for c in cols:
            r = e["tasks"].get(c.task, {}).get("summary", {}).get(c.split)
            cells.append(f"{100 * r[TASKS[c.task].main_metric]['median']:.1f}" if r else "–")
        avg = e["average"]["value"]
        cells.append("–" if avg is None else f"{avg:.1f}")
        lines.append("| " + " | ".join(cells) + " |")
    seeds = len(results["seeds"])
    foot = [
        "",
        f"Dev-set scores x100, median over {seeds} seed{'s' * (seeds != 1)} ({results['protocol']} protocol). "
        "Metrics: " + ", ".join(f"{c.label} {_METRIC_SHORT[TASKS[c.task].main_metric]}" for c in cols) + ".",
    ]
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
    return "\n".join(lines + foot) + "\n"
