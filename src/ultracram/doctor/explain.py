"""``ultracram explain fff``: which path each token takes through each FFF tree, as pictures.

For every FastFeedForward layer and tree, a token's path is the D+1 nodes it visits (breadth-
first numbering: node n's children are 2n+1 on a non-positive pre-activation, 2n+2 on a positive
one). Writes, per layer: ``layerL_tree.png`` (the tree with each node's visit count; trees deeper
than ``MAX_DRAW_DEPTH`` show their top levels), ``layerL_paths.png`` (tokens x levels heatmap of the
node reached at each level, with the turn L/R written in each cell) and ``explain.md`` with a text
summary (paths as L/R strings, leaves reached, routing entropy per level).
"""

from __future__ import annotations

import itertools
import json
from pathlib import Path
from typing import Any

import torch

from ultracram.checkpoint import load_checkpoint
from ultracram.data.tokenizer import load_tokenizer
from ultracram.doctor.monitors import fff_usage
from ultracram.errors import UltracramError
from ultracram.fileio import atomic_write_text
from ultracram.kernels import fff_paths
from ultracram.model.feedforward import FastFeedForward

MAX_DRAW_DEPTH = 6  # trees are drawn to this level: its 64 nodes already fill the widest figure (24 in)


class ExplainError(UltracramError, ValueError):
    """The checkpoint has no FFF layers, or the text is empty."""


def fff_token_paths(model: torch.nn.Module, input_ids: torch.Tensor) -> dict[str, torch.Tensor]:
    """Run ``model`` on ``input_ids`` (1, T) and return, per FastFeedForward module name, the
    visited nodes (T, K, D+1) (within-tree indices)."""
    paths: dict[str, torch.Tensor] = {}
    handles = []
    for name, m in model.named_modules():
        if isinstance(m, FastFeedForward):

            def hook(mod: Any, args: tuple, name: str = name) -> None:
                x = args[0].reshape(-1, args[0].shape[-1])
                paths[name] = fff_paths(mod.linear_in(x), mod.depth, mod.trees)

            handles.append(m.register_forward_pre_hook(hook))
    if not handles:
        raise ExplainError("the model has no FFF layers (ffn must be 'fff', e.g. preset ultrafastbert-tiny)")
    try:
        with torch.no_grad():
            model.eval()(input_ids)
    finally:
        for h in handles:
            h.remove()
    return paths


def turns(path: torch.Tensor) -> str:
    """Visited nodes (D+1,) -> 'LRRL...' (right = positive pre-activation)."""
    return "".join("R" if int(c) == 2 * int(p) + 2 else "L" for p, c in itertools.pairwise(path))


def _draw_tree(counts: torch.Tensor, depth: int, title: str, path: Path, max_depth: int) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    d = min(depth, max_depth)
    fig, ax = plt.subplots(figsize=(min(2 + 0.45 * 2**d, 24), 1.2 + 0.9 * d))
    vmax = float(counts.max()) or 1.0
    cmap = plt.get_cmap("viridis")
    for lvl in range(d + 1):
        for j in range(2**lvl):
            node = 2**lvl - 1 + j
            x, y = (j + 0.5) / 2**lvl, -lvl
            if lvl < d:
                for child, cx in (
                    (2 * node + 1, (2 * j + 0.5) / 2 ** (lvl + 1)),
                    (2 * node + 2, (2 * j + 1.5) / 2 ** (lvl + 1)),
                ):
                    ax.plot(
                        [x, cx], [y, y - 1], color="0.7", lw=0.5 + 3 * float(counts[child]) / vmax, zorder=1
                    )
            c = float(counts[node])
            ax.scatter([x], [y], s=120 if d < 6 else 40, color=cmap(c / vmax) if c else "white",
                       edgecolors="k", linewidths=0.5, zorder=2)  # fmt: skip
            if d <= 5:
                ax.annotate(
                    str(int(c)), (x, y), textcoords="offset points", xytext=(0, 7), ha="center", fontsize=7
                )
    ax.set_axis_off()
    shown = "" if d == depth else f" (top {d + 1} of {depth + 1} levels)"
    ax.set_title(f"{title}: visits per node{shown}", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _draw_paths(paths: torch.Tensor, tokens: list[str], title: str, path: Path) -> None:
    """paths (T, D+1) for one tree -> heatmap of the position within each level."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    T, L = paths.shape
    pos = torch.stack([(paths[:, lv] - (2**lv - 1)).float() / max(2**lv - 1, 1) for lv in range(L)], 1)
    fig, ax = plt.subplots(figsize=(1.5 + 0.5 * L, 1 + 0.28 * T))
    im = ax.imshow(pos.numpy(), aspect="auto", cmap="coolwarm", vmin=0, vmax=1)
    for t in range(T):
        tr = turns(paths[t])
        for lv in range(1, L):
            ax.text(lv, t, tr[lv - 1], ha="center", va="center", fontsize=7)
    ax.set_yticks(range(T), tokens, fontsize=7)
    ax.set_xticks(range(L), [f"L{lv}" for lv in range(L)], fontsize=7)
    ax.set_xlabel("level (letter: turn taken; colour: position in level)", fontsize=7)
    ax.set_title(title, fontsize=9)
    fig.colorbar(im, ax=ax, fraction=0.04)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def explain_fff(checkpoint: str, text: str, out: str = "out/explain") -> dict[str, Any]:
    """token paths through the FFF trees of a checkpoint: tree diagrams, heatmaps, routing entropy

    The path each token of --text takes through each tree of each FFF layer, visit counts per
    node, leaves reached and routing entropy; writes tree diagrams and per-token path heatmaps
    (PNG), explain.md and explain.json to --out. A pretraining output directory (with model/)
    works as --checkpoint too.

    Args:
        checkpoint: checkpoint directory (with tokenizer.json)
        text: text to route through the model
        out: output directory
    """
    from rich.console import Console

    if not text.strip():
        raise ExplainError("--text is empty")
    ckpt = Path(checkpoint)
    if not (ckpt / "config.json").is_file() and (ckpt / "model" / "config.json").is_file():
        ckpt = ckpt / "model"  # a quick-start / pretraining output directory
    if not (ckpt / "tokenizer.json").is_file():
        raise ExplainError(f"checkpoint {ckpt} has no tokenizer.json to encode the text with")
    model = load_checkpoint(ckpt)  # any task: only the encoder runs
    tok = load_tokenizer(ckpt / "tokenizer.json")
    enc = tok.encode(text)
    ids = enc.ids[: model.config.max_seq_len]
    tokens = enc.tokens[: len(ids)]
    paths = fff_token_paths(model, torch.tensor([ids]))
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    report: dict[str, Any] = {"checkpoint": str(ckpt), "tokens": tokens, "layers": {}}
    md = [f"# FFF routing of {len(tokens)} tokens", "", f"checkpoint `{ckpt}`; text: {text!r}", ""]
    for li, (name, p) in enumerate(paths.items()):
        T, K, L = p.shape
        depth = L - 1
        counts = torch.zeros(K, 2 ** (depth + 1) - 1)
        for k in range(K):
            counts[k] = torch.bincount(p[:, k].reshape(-1), minlength=counts.shape[1]).float()
        usage = fff_usage(counts, depth)
        files = []
        for k in range(min(K, 4)):  # the first trees; all of them are in the JSON
            tree_png, path_png = out / f"layer{li}_tree{k}.png", out / f"layer{li}_paths{k}.png"
            _draw_tree(counts[k], depth, f"{name} tree {k}", tree_png, MAX_DRAW_DEPTH)
            _draw_paths(p[:, k], tokens, f"{name} tree {k}: path per token", path_png)
            files += [tree_png.name, path_png.name]
        leaves = [[int(p[t, k, -1]) - (2**depth - 1) for k in range(K)] for t in range(T)]
        report["layers"][name] = {"paths": p.tolist(), "leaf_index": leaves, "usage": usage, "figures": files}
        ent = ", ".join(f"{e:.2f}" for e in usage["routing_entropy_per_level"][1:])
        md += [f"## {name} ({K} tree{'s' * (K > 1)} of depth {depth})", "",
               f"{usage['leaves_reached']} of {usage['leaves_total']} leaves reached by these {T} tokens; "
               f"routing entropy per level (1 = even): {ent}", "", "| token | path (tree 0) | leaf |",
               "| --- | --- | --- |"]  # fmt: skip
        md += [f"| `{tokens[t]}` | {turns(p[t, 0])} | {leaves[t][0]} |" for t in range(T)]
        md += ["", *[f"![{f}]({f})" for f in files], ""]
    atomic_write_text(out / "explain.md", "\n".join(md) + "\n")
    atomic_write_text(out / "explain.json", json.dumps(report) + "\n")
    console = Console()
    for name, layer in report["layers"].items():
        u = layer["usage"]
        console.print(f"[bold]{name}[/]: {u['leaves_reached']}/{u['leaves_total']} leaves reached; entropy/level "
                      + " ".join(f"{e:.2f}" for e in u["routing_entropy_per_level"][1:]))  # fmt: skip
        width = max(len(t) for t in tokens)
        for t, tk in enumerate(tokens):
            console.print(f"  {tk:<{width}}  " + "  ".join(turns(torch.tensor(layer["paths"][t][k]))
                                                         for k in range(min(4, len(layer["paths"][t])))))  # fmt: skip
    console.print(f"pictures and summary: {out}/explain.md")
    report["out_dir"] = str(out)
    return report
