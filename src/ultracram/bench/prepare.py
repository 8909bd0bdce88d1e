"""``ultracram bench prepare``: corpus preparation speed and memory against ``encode_batch`` alone.

1. (untimed) train a tokenizer on a prefix of the corpus unless one is given;
2. run ``ultracram data prepare`` in a child process, from scratch: wall time, tokens/s
   (all tokens encoded, before the ratio filter) and peak RSS of the whole process tree
   (parent + tokenising workers, sampled every 0.1 s with psutil; plus the largest single
   process's ru_maxrss);
3. in this process, stream the same documents in the same batches and time only
   ``Tokenizer.encode_batch`` (the library's own thread pool on all cores): the reference.

The ratio prepare/encode_batch is measured within one run, so load from other processes on the
machine shifts both sides; the absolute numbers shift more.
"""

from __future__ import annotations

import contextlib
import json
import os
import platform
import resource
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ultracram.data.corpus import find_text_files, iter_file_documents
from ultracram.data.tokenizer import train_tokenizer_files
from ultracram.errors import optional_import


def _tree_rss(proc) -> int:
    """RSS of ``proc`` (a ``psutil.Process``) and its children, bytes."""
    psutil = optional_import("psutil", "bench prepare (memory of the process tree)")
    total = 0
    for p in [proc, *proc.children(recursive=True)]:
        with contextlib.suppress(psutil.Error):  # a worker that just exited
            total += p.memory_info().rss
    return total


def run_measured(cmd: list[str], poll_s: float = 0.1) -> dict[str, Any]:
    """Run ``cmd``; wall seconds and peak RSS (bytes) of its process tree."""
    psutil = optional_import("psutil", "bench prepare (memory of the process tree)")
    t0 = time.perf_counter()
    child = subprocess.Popen(cmd)
    proc = psutil.Process(child.pid)
    peak = 0
    while child.poll() is None:
        with contextlib.suppress(psutil.Error):
            peak = max(peak, _tree_rss(proc))
        time.sleep(poll_s)
    wall = time.perf_counter() - t0
    if child.returncode:
        raise RuntimeError(f"{' '.join(cmd)} exited with {child.returncode}")
    max_single = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * 1024  # KiB on Linux
    return {"wall_s": wall, "peak_rss_tree_bytes": peak, "peak_rss_largest_process_bytes": max_single}


def encode_batch_reference(inputs: Sequence[str | Path], tokenizer_path: Path, batch_docs: int,
                           batch_chars: int) -> dict[str, Any]:  # fmt: skip
    """Tokens/s of ``encode_batch`` alone (reading and decompression not timed)."""
    from tokenizers import Tokenizer

    os.environ.pop("TOKENIZERS_PARALLELISM", None)  # the library's default: all cores
    tok = Tokenizer.from_file(str(tokenizer_path))
    tokens = docs = 0
    timed = 0.0

    def encode(batch: list[str]) -> None:
        nonlocal tokens, timed
        t = time.perf_counter()
        encs = tok.encode_batch(batch, add_special_tokens=False)
        timed += time.perf_counter() - t
        tokens += sum(len(e.ids) for e in encs)

    batch: list[str] = []
    chars = 0
    for f in find_text_files(inputs):
        for doc in iter_file_documents(f):
            batch.append(doc)
            chars += len(doc)
            docs += 1
            if len(batch) >= batch_docs or chars >= batch_chars:
                encode(batch)
                batch, chars = [], 0
    if batch:
        encode(batch)
    return {"documents": docs, "tokens": tokens, "encode_s": timed, "tokens_per_s": tokens / timed}


def bench_prepare(
    input: list[str],
    *,
    tokenizer: str | None = None,
    vocab_size: int = 32768,
    train_documents: int = 3000,
    seq_len: int = 128,
    workers: int | None = None,
    work_dir: str = "out/bench/prepare",
    out: str | None = "out/bench/prepare.json",
) -> dict[str, Any]:
    """corpus preparation: wall time, tokens/s, peak RSS, ratio to tokenizers' encode_batch

    Run `ultracram data prepare` on a corpus in a child process (wall time, tokens/s, peak RSS
    of the process tree), then time `tokenizers`' encode_batch alone on the same documents in
    the same run, and report the ratio of the two tokens/s. Without --tokenizer one is trained
    first on a prefix of the corpus (not timed). Prints a summary and writes JSON.

    Args:
        input: corpus files or directories
        tokenizer: tokenizer.json (default: train one on a prefix)
        vocab_size: for the trained tokenizer
        train_documents: documents to train it on
        seq_len: tokens per sequence
        workers: tokenising processes (default: all cores)
        work_dir: where shards go
        out: JSON output
    """
    inputs = list(input)
    work = Path(work_dir)
    work.mkdir(parents=True, exist_ok=True)
    result: dict[str, Any] = {"inputs": [str(i) for i in inputs], "seq_len": seq_len,
                              "cpu_count": os.cpu_count(), "load_avg_start": os.getloadavg(),
                              "machine": platform.platform()}  # fmt: skip
    if tokenizer is None:
        t = time.perf_counter()
        tokenizer = train_tokenizer_files(
            inputs, work / "tokenizer", vocab_size, max_documents=train_documents
        )
        result["tokenizer_train_s"] = time.perf_counter() - t
    result["tokenizer"] = str(tokenizer)
    shards = work / "shards"
    cmd = [sys.executable, "-m", "ultracram.cli", "data", "prepare", "--input", *map(str, inputs),
           "--tokenizer", str(tokenizer), "--out", str(shards), "--seq_len", str(seq_len), "--restart", "true"]  # fmt: skip
    if workers is not None:
        cmd += ["--workers", str(workers)]
    measured = run_measured(cmd)
    manifest = json.loads((shards / "manifest.json").read_text())
    c = manifest["counts"]
    prep = {**measured, "tokens_encoded": c["tokens_encoded"], "sequences": c["sequences"],
            "documents": c["documents"], "documents_dropped_ratio": c["documents_dropped_ratio"],
            "tokens_per_s": c["tokens_encoded"] / measured["wall_s"]}  # fmt: skip
    ref = encode_batch_reference(inputs, Path(tokenizer), manifest["batch_docs"], manifest["batch_chars"])
    result.update(prepare=prep, encode_batch=ref, ratio=prep["tokens_per_s"] / ref["tokens_per_s"],
                  load_avg_end=os.getloadavg())  # fmt: skip
    if ref["tokens"] != c["tokens_encoded"]:
        result["warning"] = (
            f"token counts differ: prepare {c['tokens_encoded']}, encode_batch {ref['tokens']}"
        )
    gib = 1024**3
    print(f"prepare: {prep['wall_s']:.1f} s wall, {prep['tokens_encoded'] / 1e6:.1f}M tokens, "
          f"{prep['tokens_per_s'] / 1e3:.0f}k tokens/s, peak RSS {prep['peak_rss_tree_bytes'] / gib:.2f} GiB "
          f"(process tree; largest process {prep['peak_rss_largest_process_bytes'] / gib:.2f} GiB)")  # fmt: skip
    print(f"encode_batch alone: {ref['tokens_per_s'] / 1e3:.0f}k tokens/s over {ref['encode_s']:.1f} s")
    print(f"ratio prepare / encode_batch: {result['ratio']:.2f} (target >= 0.8); "
          f"load average {result['load_avg_start'][0]:.1f} -> {result['load_avg_end'][0]:.1f} "
          f"on {os.cpu_count()} cores")  # fmt: skip
    if out:
        Path(out).parent.mkdir(parents=True, exist_ok=True)
        Path(out).write_text(json.dumps(result, indent=2) + "\n")
    return result
