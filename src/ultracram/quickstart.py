"""The quick start's main job on the embedded sample: train a tokenizer, build a tiny model,
run a few MLM training steps and save a checkpoint. Later it grows into the full study."""

from __future__ import annotations

import lzma
import math
import time
from importlib import resources
from pathlib import Path

import torch
from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeRemainingColumn

from ultracram.checkpoint import save_checkpoint
from ultracram.config import get_preset
from ultracram.data.mlm import mask_tokens
from ultracram.data.tokenizer import SPECIAL_TOKENS, train_tokenizer
from ultracram.model import build_model, parameter_counts


def sample_text_path() -> Path:
    """Path of the embedded Wikipedia sample (see resources/sample/PROVENANCE.md)."""
    return Path(str(resources.files("ultracram") / "resources" / "sample" / "wiki-sample.txt.xz"))


def read_sample_paragraphs() -> list[str]:
    with lzma.open(sample_text_path(), "rt", encoding="utf-8") as f:
        return [line.strip() for line in f if line.strip()]


def run_quickstart(
    out_dir: str | Path = "out/quickstart",
    preset: str = "crammed-bert-tiny",
    steps: int = 60,
    batch_size: int = 32,
    seq_len: int = 128,
    lr: float = 1e-3,
    seed: int = 0,
) -> dict[str, float]:
    """Train ``preset`` for ``steps`` MLM steps on the embedded sample; returns first/last loss."""
    console = Console()
    torch.manual_seed(seed)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    config = get_preset(preset)
    paragraphs = read_sample_paragraphs()
    console.print(f"[bold]ultracram quick start[/]: {len(paragraphs)} paragraphs of embedded Wikipedia text")
    tok = train_tokenizer(paragraphs, vocab_size=config.vocab_size)
    if tok.get_vocab_size() != config.vocab_size:  # a small corpus may not fill the vocabulary
        config = config.replace(vocab_size=tok.get_vocab_size())
    tok.save(str(out / "tokenizer.json"))
    # Pack the token stream into rows of seq_len: [CLS] ... [SEP].
    stream = [t for enc in tok.encode_batch(paragraphs, add_special_tokens=False) for t in enc.ids]
    body = seq_len - 2
    rows = len(stream) // body
    cls, sep = tok.token_to_id("[CLS]"), tok.token_to_id("[SEP]")
    data = torch.tensor(stream[: rows * body]).view(rows, body)
    data = torch.cat([torch.full((rows, 1), cls), data, torch.full((rows, 1), sep)], dim=1)
    model = build_model(config, "mlm")
    counts = parameter_counts(model)
    console.print(f"model {preset}: {counts['total']:,} parameters, {rows} sequences of {seq_len} tokens")
    opt = torch.optim.AdamW(model.parameters(), lr=lr, betas=(0.9, 0.98), eps=1e-12, weight_decay=0.01)
    gen = torch.Generator().manual_seed(seed)
    special = [tok.token_to_id(t) for t in SPECIAL_TOKENS]
    losses = []
    start = time.perf_counter()
    columns = [TextColumn("{task.description}"), BarColumn(), TextColumn("{task.completed}/{task.total}"),
               TextColumn("loss {task.fields[loss]:.3f}"), TimeRemainingColumn()]  # fmt: skip
    with Progress(*columns, console=console, transient=False) as bar:
        task = bar.add_task("pretraining", total=steps, loss=float("nan"))
        for _ in range(steps):
            batch = data[torch.randint(rows, (batch_size,), generator=gen)]
            ids, labels = mask_tokens(batch, config.mask_rate, mask_token_id=tok.token_to_id("[MASK]"),
                                      vocab_size=config.vocab_size, special_ids=special, generator=gen)  # fmt: skip
            loss = model(ids, labels=labels).loss
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 0.5)
            opt.step()
            losses.append(loss.item())
            bar.update(task, advance=1, loss=losses[-1])
    ckpt = save_checkpoint(model, out / "model", tokenizer_path=out / "tokenizer.json")
    result = {"initial_loss": losses[0], "final_loss": sum(losses[-5:]) / 5,
              "ln_vocab": math.log(config.vocab_size), "seconds": time.perf_counter() - start}  # fmt: skip
    console.print(
        f"MLM loss {result['initial_loss']:.3f} -> {result['final_loss']:.3f} "
        f"(ln V = {result['ln_vocab']:.3f}) in {result['seconds']:.0f}s; checkpoint: {ckpt}"
    )
    return result
