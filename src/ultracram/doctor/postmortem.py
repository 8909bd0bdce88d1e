"""Post-mortem of a finished (or stopped) run from its ``metrics.csv``.

Reads the columns the pretraining loop writes (``ultracram.train.metrics.CSV_COLUMNS``); other
spellings are accepted through ``COLUMN_ALIASES``. Only ``step`` and ``loss`` are required.
The diagnosis names one verdict and lists the evidence:

- divergence: the loss became non-finite, climbed back to its initial value, or blew up far
  above it (by more than max(1, 25%)) before coming back down;
- loss rising: the smoothed loss ended well above its minimum (by more than 3x the run's
  step-to-step noise, so noisy small-batch runs are not called rising);
- learning rate too high: divergence, rising loss or repeated spikes (with the learning rate at
  that time, and the gradient norm when logged);
- plateau: the loss stopped improving in the last third of the run, well above its best;
- learning rate too low: the loss fell by under 10% of its start, smoothly, with a small lr;
- healthy: the loss fell, ended near its minimum, without spikes.

The report is Markdown plus one self-contained HTML file (figures inlined) with PNG figures.
"""

from __future__ import annotations

import base64
import csv
import html
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from ultracram.errors import UltracramError
from ultracram.fileio import atomic_write_text

# Canonical name -> accepted spellings (first match wins). The canonical names are the ones
# ultracram.train.metrics writes.
COLUMN_ALIASES: dict[str, tuple[str, ...]] = {
    "step": ("step", "global_step", "iter", "iteration"),
    "tokens": ("tokens", "tokens_seen", "num_tokens"),
    "elapsed_s": ("elapsed_s", "elapsed", "time_s", "seconds", "wall_s", "time"),
    "loss": ("loss", "train_loss", "mlm_loss", "training_loss"),
    "lr": ("lr", "learning_rate", "lr_0"),
    "grad_norm": ("grad_norm", "gradnorm", "grad_norm_total", "gnorm"),
    "val_loss": ("val_loss", "valid_loss", "validation_loss", "eval_loss"),
}


class RunLogError(UltracramError, ValueError):
    """A run directory or metrics file cannot be read; the message says which and why."""


@dataclass
class Diagnosis:
    kind: str
    severity: str  # info / warn / error
    message: str
    step: int | None = None


@dataclass
class PostMortem:
    verdict: str
    summary: str
    findings: list[Diagnosis] = field(default_factory=list)
    stats: dict[str, Any] = field(default_factory=dict)
    files: dict[str, str] = field(default_factory=dict)


def read_run_metrics(path: str | Path) -> dict[str, list[float]]:
    """``metrics.csv`` (or a run directory holding one) -> canonical column -> values (NaN where
    empty). Raises RunLogError naming the file and the missing columns."""
    path = Path(path)
    if path.is_dir():
        path = path / "metrics.csv"
    if not path.is_file():
        raise RunLogError(f"no metrics file at {path} (expected RUN_DIR/metrics.csv from pretraining)")
    with open(path, newline="") as f:
        reader = csv.DictReader(f)
        header = reader.fieldnames or []
        rows = list(reader)
    mapping = {}
    for canon, names in COLUMN_ALIASES.items():
        for n in names:
            if n in header:
                mapping[canon] = n
                break
    missing = [c for c in ("step", "loss") if c not in mapping]
    if missing:
        raise RunLogError(f"{path}: missing column(s) {', '.join(missing)}; found {', '.join(header) or 'none'} "
                          f"(accepted names: {', '.join(n for c in missing for n in COLUMN_ALIASES[c])})")  # fmt: skip
    out: dict[str, list[float]] = {}
    for canon, col in mapping.items():
        values = []
        for i, r in enumerate(rows, start=2):
            raw = (r.get(col) or "").strip()
            try:
                values.append(float(raw) if raw else math.nan)
            except ValueError as e:
                raise RunLogError(f"{path}:{i}: column {col!r} is not a number: {raw!r}") from e
        out[canon] = values
    return out


def _median(xs: list[float]) -> float:
    s = sorted(x for x in xs if math.isfinite(x))
    if not s:
        return math.nan
    m = len(s) // 2
    return s[m] if len(s) % 2 else 0.5 * (s[m - 1] + s[m])


def _smooth(xs: list[float], window: int) -> list[float]:
    """Running median (robust to single spikes)."""
    h = window // 2
    return [_median(xs[max(0, i - h) : i + h + 1]) for i in range(len(xs))]


def diagnose(metrics: dict[str, list[float]]) -> PostMortem:
    """The verdict and evidence for one run (see the module docstring for the rules)."""
    steps, loss = metrics["step"], metrics["loss"]
    lr = metrics.get("lr") or [math.nan] * len(loss)
    gn = metrics.get("grad_norm")
    n = len(loss)
    findings: list[Diagnosis] = []
    if n < 5:
        last = int(steps[-1]) if steps else 0
        advice = (f"only {n} logged steps (the run made {last} optimizer steps); nothing to diagnose. A run "
                  "needs tens of optimizer steps to learn anything: give a longer --budget, or leave --batch_size "
                  "to the batch plan (it fits the batch to the budget) or lower it; a new run logs every step "
                  "for its first 100 (--log_every_steps)")  # fmt: skip
        return PostMortem("too short", advice, findings, {"rows": n})
    bad = next((i for i, v in enumerate(loss) if not math.isfinite(v)), None)
    finite = [v for v in loss if math.isfinite(v)]
    window = max(3, n // 20) | 1
    sm = _smooth(loss[: bad if bad is not None else n], window) or [math.nan]
    head = max(3, n // 20)
    # The first logged loss is the initialisation's (about ln V); a median over the first rows
    # would include the blow-up of a run that diverges at once.
    initial = loss[0] if math.isfinite(loss[0]) else _median(loss[:head])
    best_i = min(range(len(sm)), key=lambda i: sm[i] if math.isfinite(sm[i]) else math.inf)
    best = sm[best_i]
    tail = max(3, n // 10)
    final = _median(loss[-tail:]) if bad is None else math.inf
    lr_max = max((x for x in lr if math.isfinite(x)), default=math.nan)
    stats: dict[str, Any] = dict(rows=n, initial_loss=initial, best_loss=best, best_step=steps[best_i],
                                 final_loss=final, peak_lr=lr_max, first_nonfinite_step=None)  # fmt: skip

    # Spikes: points far above the running median, in units of the run's typical noise.
    resid = [abs(v - s) for v, s in zip(loss, sm) if math.isfinite(v) and math.isfinite(s)]
    noise = max(_median(resid) * 1.4826, 1e-3)
    spikes = [
        i
        for i in range(len(sm))
        if math.isfinite(loss[i]) and loss[i] - sm[i] > max(8 * noise, 0.1 * abs(sm[i]))
    ]
    stats["spikes"] = len(spikes)

    peak_i = max(range(len(sm)), key=lambda i: sm[i] if math.isfinite(sm[i]) else -math.inf)
    peak = sm[peak_i]

    def lr_at(i: int) -> str:
        return f" (lr {lr[i]:.2g})" if i < len(lr) and math.isfinite(lr[i]) else ""

    diverged = rising = False
    if bad is not None:
        stats["first_nonfinite_step"] = steps[bad]
        findings.append(Diagnosis("divergence", "error", f"loss became {loss[bad]} at step {int(steps[bad])}"
                                  f"{lr_at(bad)}", int(steps[bad])))  # fmt: skip
        diverged = True
    elif final > initial + max(0.1, 0.05 * abs(initial)):
        findings.append(
            Diagnosis("divergence", "error", f"loss ended at {final:.3f}, above its start {initial:.3f}")
        )
        diverged = True
    elif peak > initial + max(1.0, 0.25 * abs(initial)):
        # Blew up early and came back: the learning rate survived only thanks to clipping,
        # Adam's normalisation or the schedule; the steps spent climbing back are lost.
        findings.append(Diagnosis("divergence", "error", f"loss blew up to {peak:.3f} at step "
                                  f"{int(steps[peak_i])}{lr_at(peak_i)} (start {initial:.3f}) before coming back to "
                                  f"{final:.3f}", int(steps[peak_i])))  # fmt: skip
        diverged = True
    elif best < initial - 0.1 and final >= initial - 0.1 * (initial - best):
        findings.append(Diagnosis("divergence", "error", f"loss fell to {best:.3f} at step {int(steps[best_i])} "
                                  f"then climbed back to {final:.3f} (start {initial:.3f})", int(steps[best_i])))  # fmt: skip
        diverged = True
    elif final > best + max(0.3, 0.05 * best, 3 * noise) and best_i < n - tail:
        findings.append(Diagnosis("loss_rising", "warn", f"loss rose from {best:.3f} (step {int(steps[best_i])}) "
                                  f"to {final:.3f} at the end", int(steps[best_i])))  # fmt: skip
        rising = True
    if len(spikes) >= 3 or (spikes and len(spikes) > n // 50):
        i = spikes[0]
        findings.append(Diagnosis("loss_spikes", "warn", f"{len(spikes)} loss spikes, first at step "
                                  f"{int(steps[i])}{lr_at(i)}", int(steps[i])))  # fmt: skip
    if gn and diverged:
        g = [x for x in gn[: bad if bad is not None else n] if math.isfinite(x)]
        if len(g) > 5 and max(g[len(g) // 2 :]) > 10 * _median(g[: max(3, len(g) // 5)]):
            findings.append(Diagnosis("grad_norm_explosion", "warn", f"gradient norm grew to {max(g):.3g} from "
                                      f"{_median(g[: len(g) // 5 or 1]):.3g}"))  # fmt: skip

    third = sm[2 * len(sm) // 3 :]
    improvement = (initial - best) / max(abs(initial), 1e-9)
    late_gain = (third[0] - third[-1]) if len(third) > 1 else 0.0
    stats.update(improvement=improvement, late_gain=late_gain)

    if diverged or rising or len(spikes) >= 3:
        verdict = "learning rate too high"
        peak = f" (peak lr {lr_max:.2g})" if math.isfinite(lr_max) else ""
        summary = (f"learning rate too high{peak}: the loss {'diverged' if diverged else 'rose' if rising else 'spiked'}"
                   "; lower the peak learning rate 3-10x (`ultracram doctor --preset P` runs an lr range test), "
                   "lengthen warmup, keep gradient clipping")  # fmt: skip
    elif improvement < 0.1 and (not math.isfinite(lr_max) or lr_max < 1e-4):
        verdict = "learning rate too low"
        summary = (f"learning rate too low: the loss fell only {improvement:.0%} ({initial:.3f} -> {final:.3f})"
                   f"{f' with peak lr {lr_max:.2g}' if math.isfinite(lr_max) else ''}; raise it (try the doctor's "
                   "lr range test)")  # fmt: skip
        findings.append(Diagnosis("lr_too_low", "warn", summary))
    elif improvement < 0.1:
        verdict = "plateau"
        summary = (f"plateau from the start: the loss fell only {improvement:.0%} ({initial:.3f} -> {final:.3f}); "
                   "run `ultracram doctor --preset P` to look for a code error (labels, masking, frozen weights)")  # fmt: skip
        findings.append(Diagnosis("plateau", "warn", summary))
    elif abs(late_gain) < 0.01 * max(best, 1e-9) and len(third) > 10:
        verdict = "plateau"
        summary = (f"plateau: no progress in the last third ({third[0]:.3f} -> {third[-1]:.3f}); decay the "
                   "learning rate, or the model is at capacity for this budget")  # fmt: skip
        findings.append(Diagnosis("plateau", "info", summary))
    else:
        verdict = "healthy"
        summary = (f"loss {initial:.3f} -> {final:.3f} (best {best:.3f}), "
                   f"{'still falling' if late_gain > 0 else 'flattening'} at the end, {len(spikes)} spikes")  # fmt: skip
    stats["finite_rows"] = len(finite)
    return PostMortem(verdict, summary, findings, stats)


def _figures(metrics: dict[str, list[float]], out: Path) -> dict[str, str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    files = {}
    steps, loss = metrics["step"], metrics["loss"]
    fig, ax = plt.subplots(figsize=(7, 3.8))
    ax.plot(steps, [v if math.isfinite(v) else float("nan") for v in loss], lw=0.8, label="loss")
    bad = [s for s, v in zip(steps, loss) if not math.isfinite(v)]
    if bad:
        ax.axvline(bad[0], color="r", ls="--", label=f"non-finite at {int(bad[0])}")
    ax.set_xlabel("step")
    ax.set_ylabel("MLM loss")
    if "lr" in metrics:
        ax2 = ax.twinx()
        ax2.plot(steps, metrics["lr"], color="tab:orange", lw=0.8, label="lr")
        ax2.set_ylabel("learning rate", color="tab:orange")
    ax.legend(loc="upper right", fontsize=8)
    ax.set_title("loss and learning rate")
    fig.tight_layout()
    fig.savefig(out / "loss_lr.png", dpi=110)
    plt.close(fig)
    files["loss_lr"] = str(out / "loss_lr.png")
    if "grad_norm" in metrics:
        fig, ax = plt.subplots(figsize=(7, 3))
        ax.plot(steps, metrics["grad_norm"], lw=0.8)
        ax.set_yscale("log")
        ax.set_xlabel("step")
        ax.set_ylabel("gradient norm")
        ax.set_title("gradient norm (before clipping)")
        fig.tight_layout()
        fig.savefig(out / "grad_norm.png", dpi=110)
        plt.close(fig)
        files["grad_norm"] = str(out / "grad_norm.png")
    return files


def _markdown(pm: PostMortem, run: Path, figures: dict[str, str]) -> str:
    lines = [f"# Post-mortem: {run}", "", f"**Verdict: {pm.verdict}.** {pm.summary}", "", "## Findings", ""]
    if pm.findings:
        lines += ["| severity | finding | detail |", "| --- | --- | --- |"]
        lines += [f"| {d.severity} | {d.kind} | {d.message} |" for d in pm.findings]
    else:
        lines.append("None.")
    lines += ["", "## Numbers", "", "| quantity | value |", "| --- | --- |"]
    for k, v in pm.stats.items():
        lines.append(f"| {k} | {v:.4g} |" if isinstance(v, float) else f"| {k} | {v} |")
    lines += ["", "## Figures", ""]
    lines += [f"![{name}]({Path(p).name})" for name, p in figures.items()]
    return "\n".join(lines) + "\n"


def _html(markdown: str, pm: PostMortem, figures: dict[str, str]) -> str:
    rows = "".join(f"<tr><td>{html.escape(d.severity)}</td><td>{html.escape(d.kind)}</td>"
                   f"<td>{html.escape(d.message)}</td></tr>" for d in pm.findings)  # fmt: skip
    stats = "".join(f"<tr><td>{html.escape(k)}</td><td>{html.escape(f'{v:.4g}' if isinstance(v, float) else str(v))}"
                    "</td></tr>" for k, v in pm.stats.items())  # fmt: skip
    imgs = "".join(f'<figure><img alt="{n}" src="data:image/png;base64,'
                   f'{base64.b64encode(Path(p).read_bytes()).decode()}"/><figcaption>{n}</figcaption></figure>'
                   for n, p in figures.items())  # fmt: skip
    colour = "#2e7d32" if pm.verdict == "healthy" else "#c62828"
    return (f"<!doctype html><html><head><meta charset='utf-8'><title>ultracram post-mortem</title><style>"
            "body{font-family:sans-serif;max-width:60em;margin:2em auto}td{padding:2px 8px;border-bottom:1px solid #ddd}"
            f"</style></head><body><h1>Post-mortem</h1><p style='color:{colour}'><b>Verdict: "
            f"{html.escape(pm.verdict)}.</b> {html.escape(pm.summary)}</p><h2>Findings</h2><table>{rows or '<tr><td>none</td></tr>'}"
            f"</table><h2>Numbers</h2><table>{stats}</table><h2>Figures</h2>{imgs}</body></html>\n")  # fmt: skip


def run_postmortem(run_dir: str | Path, out_dir: str | Path | None = None, console: Any = None) -> PostMortem:
    """``ultracram doctor --run RUN_DIR``: diagnose, write ``postmortem.md``, ``postmortem.html``
    and PNG figures to ``out_dir`` (default ``RUN_DIR/doctor``), print the verdict."""
    import json

    from rich.console import Console

    run = Path(run_dir)
    metrics = read_run_metrics(run)
    pm = diagnose(metrics)
    out = Path(out_dir) if out_dir else (run if run.is_dir() else run.parent) / "doctor"
    out.mkdir(parents=True, exist_ok=True)
    figures = _figures(metrics, out)
    md = _markdown(pm, run, figures)
    atomic_write_text(out / "postmortem.md", md)
    atomic_write_text(out / "postmortem.html", _html(md, pm, figures))
    pm.files = {**figures, "markdown": str(out / "postmortem.md"), "html": str(out / "postmortem.html")}
    stats = {k: (v if not isinstance(v, float) or math.isfinite(v) else str(v)) for k, v in pm.stats.items()}
    atomic_write_text(out / "postmortem.json", json.dumps({**asdict(pm), "stats": stats}, indent=2) + "\n")
    console = console or Console()
    colour = "green" if pm.verdict == "healthy" else "red"
    console.print(f"[bold {colour}]{pm.verdict}[/]: {pm.summary}")
    for d in pm.findings:
        console.print(f"  [{d.severity}] {d.kind}: {d.message}")
    console.print(f"report: {out / 'postmortem.md'}, {out / 'postmortem.html'}")
    return pm
