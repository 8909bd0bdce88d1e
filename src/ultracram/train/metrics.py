"""Training metrics: one CSV (the source of truth, resumable), TensorBoard, optional W&B,
peak-FLOP estimates for MFU, and the loss-curve plot. Only rank zero creates one of these."""

from __future__ import annotations

import csv
import math
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import torch

from ultracram.errors import optional_import
from ultracram.fileio import atomic_write

CSV_COLUMNS = [
    "step", "tokens", "elapsed_s", "fraction", "loss", "lr", "batch_size", "grad_norm",
    "tokens_per_s", "mfu", "memory_gb",
]  # fmt: skip


class MetricsLogger:
    """Appends rows to ``metrics.csv`` and mirrors them to TensorBoard / W&B.

    On resume from ``resume_step``, rows after that step (written by the interrupted run
    after its last checkpoint) are dropped, and so are the rows a health rollback undoes, so
    the CSV describes exactly one trajectory (TensorBoard keeps the history, purged likewise).
    """

    def __init__(
        self, directory: Path, *, resume_step: int | None = None, tensorboard: bool = True,
        wandb: bool = False, run_config: dict[str, Any] | None = None,
    ):  # fmt: skip
        self.path = directory / "metrics.csv"
        directory.mkdir(parents=True, exist_ok=True)
        if resume_step is not None and self.path.is_file():
            self.truncate(resume_step)
        else:
            self.truncate(-1)
        self.tb = None
        if tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter

                self.tb = SummaryWriter(str(directory / "tensorboard"), purge_step=resume_step)
            except ImportError:  # tensorboard is a dependency, but a broken install must not stop training
                self.tb = None
        self.wandb = None
        if wandb:
            wb = optional_import("wandb", "--wandb (logging to Weights & Biases)")
            self.wandb = wb.init(project="ultracram", dir=str(directory), config=run_config, resume="allow")

    def truncate(self, step: int) -> None:
        """Drop the rows after ``step`` (a resume or a health rollback replays them). The CSV is
        rewritten atomically, and a last row cut short by a kill is dropped too."""
        rows: list[dict[str, float]] = []
        if step >= 0 and self.path.is_file():
            text = self.path.read_text(encoding="utf-8")
            rows = _parse_rows(text[: text.rfind("\n") + 1].splitlines())

        def write(f) -> None:
            w = csv.DictWriter(f, CSV_COLUMNS)
            w.writeheader()
            w.writerows({k: _fmt(r.get(k)) for k in CSV_COLUMNS} for r in rows if r["step"] <= step)

        atomic_write(self.path, write, "w", newline="")

    def log(self, row: dict[str, float]) -> None:
        with open(self.path, "a", newline="") as f:
            csv.DictWriter(f, CSV_COLUMNS).writerow({k: _fmt(row.get(k)) for k in CSV_COLUMNS})
        step = int(row["step"])
        if self.tb is not None:
            for k, v in row.items():
                if k != "step" and v is not None and not (isinstance(v, float) and math.isnan(v)):
                    self.tb.add_scalar(f"train/{k}", v, step)
        if self.wandb is not None:
            self.wandb.log({f"train/{k}": v for k, v in row.items() if k != "step"}, step=step)

    def log_scalar(self, name: str, value: float, step: int) -> None:
        if self.tb is not None:
            self.tb.add_scalar(name, value, step)
        if self.wandb is not None:
            self.wandb.log({name: value}, step=step)

    def close(self) -> None:
        if self.tb is not None:
            self.tb.close()
        if self.wandb is not None:
            self.wandb.finish()


def _fmt(v: Any) -> Any:
    if v is None:
        return ""
    if isinstance(v, float):
        return f"{v:.9g}"
    return v


def read_metrics(path: Path) -> list[dict[str, float]]:
    """The rows of a metrics CSV as floats (``step`` as int); empty cells become NaN."""
    with open(path, newline="") as f:
        return _parse_rows(f)


def _parse_rows(lines: Iterable[str]) -> list[dict[str, float]]:
    rows = []
    for r in csv.DictReader(lines):
        row = {k: (float(v) if v not in ("", None) else math.nan) for k, v in r.items() if k}
        row["step"] = int(row["step"])
        rows.append(row)
    return rows


def divergence(
    first_loss: float, final_loss: float, ln_vocab: float, val_loss: float = math.nan
) -> str | None:
    """Why a finished pretraining run diverged, or None when it did not.

    The rule (the doctor's post-mortem thresholds, on the figures of ``summary.json``): the run
    diverged when its final loss (mean of the last tenth of the logged rows) is non-finite, or
    ends above its first logged loss by more than max(0.1, 5%), or ends above ln V (the loss of a
    uniform guess over the vocabulary) by more than max(1, 25%); or when the final validation
    loss (when measured, i.e. not NaN) is infinite or above ln V by that same margin. A run with
    no logged rows (first and final loss NaN) is not called diverged.
    """
    ln_margin = ln_vocab + max(1.0, 0.25 * ln_vocab)
    if math.isinf(final_loss) or (math.isnan(final_loss) and not math.isnan(first_loss)):
        return f"the final training loss is {final_loss}"
    if math.isfinite(first_loss) and final_loss > first_loss + max(0.1, 0.05 * abs(first_loss)):
        return f"the training loss ended at {final_loss:.4g}, above its start {first_loss:.4g}"
    if final_loss > ln_margin:
        return (f"the training loss ended at {final_loss:.4g}, far above ln V = {ln_vocab:.3f} "
                "(the loss of a uniform guess)")  # fmt: skip
    if math.isinf(val_loss) or val_loss > ln_margin:
        return f"the validation loss is {val_loss:.4g}, far above ln V = {ln_vocab:.3f} (the loss of a uniform guess)"
    return None


def plot_loss_curve(csv_path: Path, png_path: Path, title: str = "") -> Path | None:
    """Loss against tokens (and the learning rate on a second axis) as a small PNG."""
    rows = read_metrics(csv_path)
    if not rows:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 3), dpi=100)
    tokens = [r["tokens"] / 1e6 for r in rows]
    ax.plot(tokens, [r["loss"] for r in rows], color="C0", lw=1.2)
    ax.set_xlabel("tokens (millions)")
    ax.set_ylabel("MLM loss", color="C0")
    ax.grid(alpha=0.3)
    lr_ax = ax.twinx()
    lr_ax.plot(tokens, [r["lr"] for r in rows], color="C1", lw=0.8, alpha=0.7)
    lr_ax.set_ylabel("learning rate", color="C1")
    ax.set_title(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(png_path)
    plt.close(fig)
    return png_path


# Dense bf16/fp16 tensor-core peaks (FLOP/s) from the vendors' data sheets, for MFU on GPUs.
GPU_PEAK_FLOPS = {
    "H200": 989e12,
    "H100": 989e12,  # SXM; PCIe is 756e12
    "A100": 312e12,
    "A10G": 125e12,
    "L4": 121e12,
    "V100": 125e12,
    "T4": 65e12,
    "RTX 4090": 165e12,
    "RTX 3090": 71e12,
}


def peak_flops(device: torch.device) -> tuple[float, str]:
    """Peak FLOP/s used as the MFU denominator, and where the number comes from.

    GPUs: the data-sheet dense half-precision peak of the named model (fp32 runs use it too,
    which understates fp32 MFU honestly rather than flattering it). CPUs have no data sheet at
    hand, so the denominator is *measured*: the best fp32 matmul throughput of this process
    (a 1024^3 GEMM), i.e. MFU on CPU means "fraction of what torch.mm reaches here".
    """
    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
        for key, value in GPU_PEAK_FLOPS.items():
            if key in name:
                return value, f"data sheet ({key})"
        return 0.0, f"unknown GPU {name!r}: pass --peak_flops"
    n = 1024
    a, b = torch.randn(n, n), torch.randn(n, n)
    torch.mm(a, b)
    best = math.inf
    for _ in range(5):
        t0 = time.perf_counter()
        torch.mm(a, b)
        best = min(best, time.perf_counter() - t0)
    return 2 * n**3 / best, "measured fp32 torch.mm peak on this CPU"


def memory_gb(device: torch.device) -> float:
    """Peak accelerator memory allocated (GPU) or resident set size of this process (CPU), GB."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 1e9
    try:
        import psutil

        return psutil.Process().memory_info().rss / 1e9
    except ImportError:
        return math.nan


__all__ = [
    "CSV_COLUMNS",
    "MetricsLogger",
    "divergence",
    "memory_gb",
    "peak_flops",
    "plot_loss_curve",
    "read_metrics",
]
