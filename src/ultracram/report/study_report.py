"""The comparison study's report: one table, a few figures, and everything needed to repeat it,
as Markdown with PNG files and as one self-contained HTML file (figures inlined as base64)."""

from __future__ import annotations

import base64
import html
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # no display on servers and CI
import matplotlib.pyplot as plt

from ultracram.fileio import atomic_write_text


@dataclass
class ModelResult:
    """What the study measured for one model. Missing measurements stay None and print as '-'."""

    model: str
    parameters: int
    flops_per_token: float
    tokens_seen: int | None = None
    final_mlm_loss: float | None = None
    glue: dict[str, float] = field(default_factory=dict)
    glue_average: float | None = None
    glue_average_covers: list[str] = field(default_factory=list)
    cpu_tokens_per_s: float | None = None  # median of interleaved rounds (study.measure_speeds)
    gpu_tokens_per_s: float | None = None
    curve: list[dict[str, float]] = field(default_factory=list)  # rows with elapsed_s, tokens, loss
    fff_usage: list[list[float]] | None = None  # per layer: fraction of leaves ever reached, etc.
    cpu_tokens_per_s_range: list[float] | None = None  # [slowest, fastest] interleaved round
    gpu_tokens_per_s_range: list[float] | None = None

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


def result_table(results: list[ModelResult]) -> tuple[list[str], list[list[str]]]:
    """Header and rows: per-task GLUE scores, average, size, cost, pretraining and speed."""
    tasks = list(dict.fromkeys(t for r in results for t in r.glue))  # first-seen (paper) order
    header = ["model", *tasks, "GLUE avg", "params (M)", "MFLOP/token", "pretrain tokens", "final MLM loss",
              "CPU tokens/s", "GPU tokens/s"]  # fmt: skip
    rows = []
    for r in results:
        rows.append([
            r.model, *[_fmt(r.glue.get(t), 1) for t in tasks], _fmt(r.glue_average, 1),
            _fmt(r.parameters / 1e6), _fmt(r.flops_per_token / 1e6, 2), _fmt(r.tokens_seen),
            _fmt(r.final_mlm_loss, 3), _speed(r.cpu_tokens_per_s, r.cpu_tokens_per_s_range),
            _speed(r.gpu_tokens_per_s, r.gpu_tokens_per_s_range),
        ])  # fmt: skip
    return header, rows


def _figures(results: list[ModelResult], out: Path) -> dict[str, Path]:
    out.mkdir(parents=True, exist_ok=True)
    figs: dict[str, Path] = {}
    if any(r.curve for r in results):
        fig, (a, b) = plt.subplots(1, 2, figsize=(11, 4))
        for r in results:
            if r.curve:
                a.plot([c["elapsed_s"] / 60 for c in r.curve], [c["loss"] for c in r.curve], label=r.model)
                b.plot([c["tokens"] / 1e6 for c in r.curve], [c["loss"] for c in r.curve], label=r.model)
        a.set(xlabel="wall-clock minutes", ylabel="MLM loss", title="Loss vs time")
        b.set(xlabel="tokens seen (millions)", ylabel="MLM loss", title="Loss vs tokens")
        a.legend()
        fig.tight_layout()
        figs["loss"] = out / "loss.png"
        fig.savefig(figs["loss"], dpi=100)
        plt.close(fig)
    points = [r for r in results if r.glue_average is not None and r.cpu_tokens_per_s]
    if points:
        fig, ax = plt.subplots(figsize=(6, 4))
        for r in points:
            ax.scatter(1e6 / r.cpu_tokens_per_s, r.glue_average)
            ax.annotate(r.model, (1e6 / r.cpu_tokens_per_s, r.glue_average), fontsize=8)
        ax.set(xlabel="CPU inference cost (seconds per million tokens)", ylabel="GLUE average",
               title="Quality vs inference cost")  # fmt: skip
        fig.tight_layout()
        figs["quality_vs_cost"] = out / "quality_vs_cost.png"
        fig.savefig(figs["quality_vs_cost"], dpi=100)
        plt.close(fig)
    fff = [r for r in results if r.fff_usage]
    if fff:
        fig, ax = plt.subplots(figsize=(6, 4))
        for r in fff:
            ax.plot(range(len(r.fff_usage)), [u[0] for u in r.fff_usage], marker="o", label=r.model)
        ax.set(xlabel="layer", ylabel="fraction of leaves reached", ylim=(0, 1.05), title="FFF routing usage")
        ax.set_xticks(range(max(len(r.fff_usage) for r in fff)))  # layers are whole numbers
        ax.legend()
        fig.tight_layout()
        figs["fff_usage"] = out / "fff_usage.png"
        fig.savefig(figs["fff_usage"], dpi=100)
        plt.close(fig)
    return figs


_CAPTIONS = {
    "loss": "MLM loss against wall-clock time and tokens seen, same budget for every model.",
    "quality_vs_cost": "GLUE average against CPU inference cost: up and to the left is better.",
    "fff_usage": "Share of FFF leaves that tokens of the evaluation text reach, per layer.",
}


def write_report(out_dir: str | Path, results: list[ModelResult], meta: dict[str, Any]) -> tuple[Path, Path]:
    """Write ``report.md`` (+ ``figures/*.png``) and a self-contained ``report.html``.

    ``meta`` holds what makes the study repeatable: the command, configuration, versions and
    hardware; it is printed verbatim as JSON at the end of both files.
    """
    out = Path(out_dir)
    figs = _figures(results, out / "figures")
    header, rows = result_table(results)
    title = meta.get("title", "ultracram comparison study")
    notes = meta.get("notes", [])

    md = [f"# {title}", ""]
    md += [f"- {n}" for n in notes] + ([""] if notes else [])
    md += ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    md += ["| " + " | ".join(r) + " |" for r in rows]
    for key, path in figs.items():
        md += ["", f"![{key}](figures/{path.name})", "", f"*{_CAPTIONS[key]}*"]
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

    def cell(tag: str, v: str) -> str:
        return f"<{tag}>{html.escape(v)}</{tag}>"

    table = ("<table><thead><tr>" + "".join(cell("th", h) for h in header) + "</tr></thead><tbody>" +
             "".join("<tr>" + "".join(cell("td", v) for v in r) + "</tr>" for r in rows) + "</tbody></table>")  # fmt: skip
    images = "".join(
        f'<figure><img alt="{k}" src="data:image/png;base64,{base64.b64encode(p.read_bytes()).decode()}">'
        f"<figcaption>{html.escape(_CAPTIONS[k])}</figcaption></figure>"
        for k, p in figs.items()
    )
    page = f"""<!doctype html><html><head><meta charset="utf-8"><title>{html.escape(title)}</title>
<style>body{{font-family:system-ui,sans-serif;max-width:1100px;margin:2em auto;padding:0 1em}}
table{{border-collapse:collapse}}td,th{{border:1px solid #ccc;padding:4px 8px;text-align:right}}
td:first-child,th:first-child{{text-align:left}}img{{max-width:100%}}pre{{background:#f6f6f6;padding:1em;overflow:auto}}</style>
</head><body><h1>{html.escape(title)}</h1><ul>{"".join(f"<li>{html.escape(n)}</li>" for n in notes)}</ul>
{table}{images}<h2>Configuration, versions and hardware</h2><pre>{html.escape(json.dumps(meta, indent=2))}</pre>
</body></html>"""
    html_path = out / "report.html"
    atomic_write_text(html_path, page)
    return md_path, html_path
