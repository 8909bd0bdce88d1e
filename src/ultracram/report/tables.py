"""Console and Markdown tables."""

from __future__ import annotations

import json as jsonlib  # "json" is print_model_table's parameter (the --json flag)

from rich.console import Console
from rich.table import Table

from ultracram.config import PRESETS, get_preset
from ultracram.model import build_model, flops_per_token, parameter_counts


def model_rows() -> list[dict]:
    """One row per preset: parameters and forward FLOPs per token (built on the meta device,
    so even the 365M-parameter Switch preset costs no memory)."""
    import torch

    rows = []
    for name in PRESETS:
        config = get_preset(name)
        with torch.device("meta"):
            counts = parameter_counts(build_model(config, "mlm"))
        rows.append({
            "preset": name, "ffn": config.ffn, "mixer": config.mixer, "layers": config.num_layers,
            "hidden": config.hidden_size, "vocab": config.vocab_size, **counts,
            "gflops_per_token": flops_per_token(config)["total"] / 1e9,
        })  # fmt: skip
    return rows


def print_model_table(json: bool = False) -> None:
    """list model presets with parameter counts and FLOPs per token

    List every preset: family, parameters (embedding / non-embedding) and forward FLOPs per
    token at the preset's sequence length (formula: ultracram.model.flops_per_token). Any
    ultrafastbert-KxD (K trees of depth D) also works where a preset is asked for.

    Args:
        json: print JSON instead of a table
    """
    rows = model_rows()
    if json:
        print(jsonlib.dumps(rows, indent=2))
        return
    table = Table(title="ultracram presets (forward FLOPs per token at the preset's sequence length)")
    for col in ("preset", "mixer", "ffn", "L", "H", "vocab", "params M", "emb. M", "non-emb. M", "MFLOP/tok"):
        table.add_column(col, justify="left" if col in ("preset", "mixer", "ffn") else "right", no_wrap=True)
    for r in rows:
        table.add_row(r["preset"], r["mixer"], r["ffn"], str(r["layers"]), str(r["hidden"]), str(r["vocab"]),
                      f"{r['total'] / 1e6:.2f}", f"{r['embedding'] / 1e6:.2f}", f"{r['non_embedding'] / 1e6:.2f}",
                      f"{r['gflops_per_token'] * 1e3:.2f}")  # fmt: skip
    Console(width=max(Console().width, 110)).print(table)
