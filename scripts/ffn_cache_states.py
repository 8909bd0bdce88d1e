"""How much the FFF CPU kernel's time depends on what the caches hold when it starts.

At 4,096 tokens the layer is memory-bound, so the same call is faster right after itself (part
of its data still cached) than after other long work, such as the dense layer that precedes it
in `ultracram bench ffn`'s interleaved rounds. This times the layer (depth 11, H 768, one
thread) in interleaved rounds after each of four predecessors and prints the ratio to the
dense 768->4095->768 layer measured in the same run (docs/fff-inference.md, "Why 4,096
tokens stop at ~128x").

    python scripts/ffn_cache_states.py [--tokens 4096] [--threads 1] [--min-time 1.0]
"""

from __future__ import annotations

import argparse

import numpy as np
import torch

from ultracram.bench.fff import ffn_calls, ffn_layers, time_calls
from ultracram.kernels.cpu import set_num_threads

_JUNK_MB = 64  # twice the L3 of the 2-core VMs: evicts everything the layer used


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tokens", type=int, default=4096)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--min-time", type=float, default=1.0, help="seconds of timing per row")
    args = parser.parse_args()
    set_num_threads(args.threads)
    torch.manual_seed(1)
    x = torch.randn(args.tokens, 768)
    calls = ffn_calls(ffn_layers(), x, "cpu")
    junk = np.random.default_rng(0).random(_JUNK_MB * 2**20 // 4, dtype=np.float32)
    before = {
        "the same layer (its data still cached)": None,
        f"a {_JUNK_MB} MB read (cache full of clean lines)": lambda: junk.sum(),
        f"a {_JUNK_MB} MB in-place write (dirty lines to write back)": lambda: np.multiply(junk, 1.0, out=junk),
        "the dense layer (as in `ultracram bench ffn`)": calls["dense"],
    }  # fmt: skip
    with torch.no_grad():
        dense = time_calls({"dense": calls["dense"]}, args.min_time)["dense"]["min_s"]
        print(f"dense {dense * 1e3:.1f} ms; FFF layer, {args.tokens} tokens, {args.threads} thread(s):")
        print("| what ran just before | layer (ms) | vs dense |\n| --- | ---: | ---: |")
        for label, first in before.items():
            pair = {"cpu": calls["cpu"]} if first is None else {"before": first, "cpu": calls["cpu"]}
            cpu = time_calls(pair, args.min_time)["cpu"]["min_s"]
            ratio = dense / cpu
            print(f"| {label} | {cpu * 1e3:.2f} | {ratio:.0f}x |" if ratio >= 10 else f"| {label} | {cpu * 1e3:.2f} | {ratio:.2f}x |")


if __name__ == "__main__":
    main()
