"""Speed of FFF inference: one layer (``bench_ffn``) and a whole encoder (``bench_model``).

Every number that is compared is measured in the same run, on the same inputs, right after
the outputs of each fast path were checked against the masked dense reference. The paths are
timed in interleaved rounds (``time_calls``), each round in a rotated order (``bench.timing``);
times are the minimum over rounds (the least disturbed one; the machine may be shared) and the
median is recorded next to it. The load average before and after the sweep is recorded
(``load`` in the JSON), with a warning when the machine was busy.

``bench_ffn``: tokens x threads x path, paths being the FFF layer through each implementation
(``masked`` reference, ``gather``, the ``cpu`` kernel; ``triton`` on CUDA), a dense FFN of the
same width (H -> 4095 -> H through torch) and crammed-bert's gated FFN (H -> 3072 GLU -> H).
``bench_model``: an UltraFastBERT encoder through ``for_inference`` vs the same encoder through
the masked reference vs crammed-bert, at one sequence length and several batch sizes.
"""

from __future__ import annotations

import json
import os
import platform
import statistics
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Literal

import torch

from ultracram.bench.timing import load_report, machine_load, rotated
from ultracram.config import get_preset
from ultracram.kernels import FFF_IMPLEMENTATIONS
from ultracram.kernels.cpu import set_num_threads
from ultracram.model import build_model, for_inference
from ultracram.model.feedforward import DenseFeedForward, FastFeedForward, GatedFeedForward
from ultracram.settings import comma_list

FFN_TOKENS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 2048, 4096)
FFN_TOKENS_QUICK = (1, 64, 1024)
# Outputs of fast paths must match the masked reference within this, relative to its scale.
TOLERANCE = 1e-5


def all_threads() -> int:
    """Cores this process may use (what ``torch``/``numba`` use by default)."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def time_calls(
    calls: dict[str, Callable[[], Any]], min_time: float, min_rounds: int = 3, *, rotate: bool = False
) -> dict[str, dict[str, float]]:
    """Seconds per call of each of ``calls``, measured in interleaved rounds.

    Each call is timed in batches of at least ~1 ms (so the timer's own cost vanishes for
    microsecond calls); a round times one batch of every call in turn, so a slow spell of a
    shared machine hits all of them alike, and rounds repeat until each call has been timed
    for ``min_time`` seconds and ``min_rounds`` rounds. With ``rotate``, round r starts at the
    r-th call (``bench.timing.rotated``), so no call always runs first or right after the same
    neighbour (the benchmarks); without it the order is fixed, for measurements of what one
    call costs right after a chosen other (``scripts/ffn_cache_states.py``). Per call: the
    minimum over rounds (the least disturbed) and the median.
    """
    sizes, per_call, spent = {}, {name: [] for name in calls}, dict.fromkeys(calls, 0.0)
    for name, fn in calls.items():
        fn()  # warm up: first-call compilation, caches, allocator
        n = 1
        while True:
            start = time.perf_counter()
            for _ in range(n):
                fn()
            elapsed = time.perf_counter() - start
            if elapsed >= 1e-3 or n >= 2**16:
                break
            n *= 2
        sizes[name] = n
    rounds = 0
    while rounds < min_rounds or min(spent.values()) < min_time:
        for name in rotated(list(calls), rounds) if rotate else calls:
            fn, n = calls[name], sizes[name]
            start = time.perf_counter()
            for _ in range(n):
                fn()
            elapsed = time.perf_counter() - start
            spent[name] += elapsed
            per_call[name].append(elapsed / n)
        rounds += 1
    return {name: {"min_s": min(v), "median_s": statistics.median(v), "rounds": len(v)}
            for name, v in per_call.items()}  # fmt: skip


def _relative_error(got: torch.Tensor, ref: torch.Tensor) -> float:
    return float((got.float() - ref.float()).abs().max() / ref.float().abs().max().clamp_min(1e-30))


def _machine() -> dict[str, Any]:
    load = os.getloadavg() if hasattr(os, "getloadavg") else None
    return {"platform": platform.platform(), "processor": platform.processor(), "cpus": all_threads(),
            "torch": torch.__version__, "load_average": load}  # fmt: skip


def ffn_layers(
    hidden: int = 768, depth: int = 11, trees: int = 1, seed: int = 0
) -> dict[str, torch.nn.Module]:
    """The layers ``bench_ffn_layers`` compares, with N(0, 0.02) weights (BERT's init), in eval mode.

    ``fff``: UltraFastBERT's FFF (K trees of depth D); ``dense``: H -> K*(2^(D+1)-1) -> H,
    the dense layer of the same width; ``glu``: crammed-bert's gated FFN (H -> 3072 -> H).
    """
    torch.manual_seed(seed)
    fff_config = get_preset("ultrafastbert-1x11").replace(
        hidden_size=hidden, num_heads=1, fff_depth=depth, fff_trees=trees
    )
    width = trees * fff_config.fff_nodes
    layers = {
        "fff": FastFeedForward(fff_config),
        "dense": DenseFeedForward(fff_config.replace(ffn="dense", intermediate_size=width)),
        "glu": GatedFeedForward(get_preset("crammed-bert").replace(hidden_size=hidden, num_heads=1)),
    }
    with torch.no_grad():
        for layer in layers.values():
            for p in layer.parameters():
                p.normal_(0.0, 0.02)
            layer.eval()
    return layers


def ffn_calls(layers: dict[str, torch.nn.Module], x: torch.Tensor, fast: str) -> dict[str, Callable]:
    """One zero-argument call per path, all on the same input x (T, H)."""
    fff = layers["fff"]
    w = (fff.linear_in.weight, fff.linear_in.bias, fff.linear_out.weight)

    def fff_call(impl: str) -> Callable[[], torch.Tensor]:
        fn = FFF_IMPLEMENTATIONS[impl]
        return lambda: fn(x, *w, fff.depth, fff.trees, fff.act)

    calls = {impl: fff_call(impl) for impl in ("masked", "gather", fast)}
    calls["dense"] = lambda: layers["dense"](x)
    calls["glu"] = lambda: layers["glu"](x)
    return calls


def bench_ffn(
    tokens: list[int] | str | None = None,
    threads: list[int] | str | None = None,
    depth: int = 11,
    min_time: float = 0.3,
    device: Literal["cpu", "cuda"] = "cpu",
    quick: bool = False,
    out: str | None = "out/bench/ffn.json",
    plot: str | None = "out/bench/ffn.png",
) -> dict[str, Any]:
    """FFF layer latency per implementation vs dense and GLU FFNs (tokens x threads)

    Time one feedforward layer: FFF depth D through the masked reference, gather and the fast
    kernel (cpu / triton), a dense FFN of the same width (768->4095->768) and crammed-bert's GLU
    FFN, for each token count and thread count. Outputs are checked against the masked
    reference and ratios are taken within the run. Writes JSON and a PNG plot.

    Args:
        tokens: comma list (default: 1,2,4,...,4096)
        threads: comma list (default: 1 and all cores)
        depth: FFF depth
        min_time: seconds per point
        device: cpu or cuda (fast path: the cpu kernel or the Triton one)
        quick: small sweep: tokens 1,64,1024, 0.1 s per point
        out: JSON output
        plot: PNG plot
    """
    return bench_ffn_layers(
        comma_list(tokens, int) or (FFN_TOKENS_QUICK if quick else FFN_TOKENS),
        threads=comma_list(threads, int),
        depth=depth,
        min_time=0.1 if quick else min_time,
        device=device,
        out=out,
        plot=plot,
    )


def bench_ffn_layers(
    tokens: Sequence[int] = FFN_TOKENS,
    threads: Sequence[int] | None = None,
    depth: int = 11,
    hidden: int = 768,
    min_time: float = 0.3,
    device: str = "cpu",
    out: str | Path | None = None,
    plot: str | Path | None = None,
    seed: int = 0,
) -> dict[str, Any]:
    """The sweep behind ``bench_ffn``, at any hidden size: latency of one feedforward layer per
    path, tokens x threads; returns (and writes to ``out`` as JSON) the times, the output checks
    and the speed-ups over dense and GLU.

    Args:
        tokens: batch sizes in tokens.
        threads: thread counts (torch and numba); default 1 and all cores.
        depth: FFF tree depth (the dense baseline has the same 2^(depth+1)-1 width).
        hidden: hidden size.
        min_time: seconds of timing per measurement (after one warm-up call).
        device: ``cpu`` or ``cuda`` (fast path: the cpu kernel or the Triton one).
        out: JSON file to write.
        plot: PNG file to write (time per call vs tokens).
    """
    threads = list(threads or sorted({1, all_threads()}))
    layers = {name: m.to(device) for name, m in ffn_layers(hidden, depth, seed=seed).items()}
    fff = layers["fff"]
    fast = "triton" if device == "cuda" else "cpu"
    paths = ["masked", "gather", fast, "dense", "glu"]
    results, ratios, checks = [], [], []
    machine, load_before = _machine(), machine_load()
    for n_threads in threads:
        set_num_threads(n_threads)
        for n in tokens:
            x = torch.randn(n, hidden, device=device)
            calls = ffn_calls(layers, x, fast)
            sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
            with torch.no_grad():
                ref = calls["masked"]()
                for impl in ("gather", fast):
                    err = _relative_error(calls[impl](), ref)
                    checks.append({"threads": n_threads, "tokens": n, "path": impl, "relative_error": err,
                                   "ok": err <= TOLERANCE})  # fmt: skip
                timed = {p: (lambda f=calls[p], sync=sync: (f(), sync())) for p in paths}
                times = time_calls(timed, min_time, rotate=True)
                for path, t in times.items():
                    results.append({"threads": n_threads, "tokens": n, "path": path, **t,
                                    "tokens_per_s": n / t["min_s"]})  # fmt: skip
            row = {"threads": n_threads, "tokens": n}
            for base in ("dense", "glu", "masked"):
                for impl in ("gather", fast):
                    row[f"{impl}_vs_{base}"] = times[base]["min_s"] / times[impl]["min_s"]
            ratios.append(row)
            print(
                f"threads {n_threads:2d} tokens {n:5d}: " + "  ".join(
                    f"{p} {times[p]['min_s'] * 1e6:9.1f}us" for p in paths
                ) + f"  | {fast} vs dense {row[f'{fast}_vs_dense']:6.1f}x, vs glu {row[f'{fast}_vs_glu']:6.1f}x",
                flush=True,
            )  # fmt: skip
    set_num_threads(all_threads())
    report = {
        "benchmark": "ffn",
        "config": {"hidden": hidden, "depth": depth, "trees": 1, "dense_width": fff.linear_in.out_features,
                   "glu_width": layers["glu"].dense_in.out_features, "device": device, "dtype": "float32",
                   "min_time_s": min_time, "timing": "interleaved rounds, rotated order; min over rounds, median recorded"},
        "machine": {**machine, "load_average_end": os.getloadavg() if hasattr(os, "getloadavg") else None},
        "load": load_report(load_before, machine_load()),
        "results": results,
        "ratios": ratios,
        "checks": checks,
        "all_outputs_match": all(c["ok"] for c in checks),
    }  # fmt: skip
    print(markdown_table(report))
    _write(report, out)
    if plot:
        plot_ffn(report, plot)
    return report


def bench_model(
    batches: list[int] | str | None = None,
    seq_len: int = 128,
    threads: list[int] | str | None = None,
    preset: str = "ultrafastbert-1x11",
    baseline: str = "crammed-bert",
    min_time: float = 1.0,
    quick: bool = False,
    device: Literal["cpu", "cuda"] = "cpu",
    out: str | None = "out/bench/model.json",
) -> dict[str, Any]:
    """whole-encoder throughput: UltraFastBERT via for_inference vs masked reference vs crammed-bert

    Encoder forward (hidden states) at one sequence length and several batch sizes: the preset
    through for_inference, the same weights through the masked FFF reference, and the baseline
    preset. Hidden states are checked against the reference in the same run.

    On CUDA the fast path is the Triton kernel and threads do not apply. The check:
    max_relative_error over all hidden states, and tokens_off counts tokens whose hidden state
    differs by more than 1e-4 of the scale (a routing decision flipped by a logit within
    rounding of zero; see kernels/cpu.py).

    Args:
        batches: comma list (default: 1,32)
        seq_len: tokens per sequence
        threads: comma list (default: all cores)
        preset: FFF preset
        baseline: baseline preset
        min_time: seconds per point
        quick: batches 1,4 and 0.2 s per point
        device: cpu or cuda
        out: JSON output
    """
    batches = comma_list(batches, int) or ([1, 4] if quick else [1, 32])
    min_time = 0.2 if quick else min_time
    threads = (comma_list(threads, int) or [all_threads()]) if device == "cpu" else [all_threads()]
    torch.manual_seed(0)
    fast = build_model(get_preset(preset), task="encoder").eval().to(device)
    reference = build_model(get_preset(preset), task="encoder").eval().to(device)
    reference.load_state_dict(fast.state_dict())
    for_inference(fast)
    base = build_model(get_preset(baseline), task="encoder").eval().to(device)
    sync = torch.cuda.synchronize if device.startswith("cuda") else (lambda: None)
    models = {"fff_fast": fast, "fff_masked": reference, baseline: base}
    vocab = fast.config.vocab_size
    results, ratios, checks = [], [], []
    machine, load_before = _machine(), machine_load()
    for n_threads in threads:
        set_num_threads(n_threads)
        for batch in batches:
            ids = torch.randint(5, vocab, (batch, seq_len)).to(device)
            with torch.no_grad():
                got, ref = fast(ids), reference(ids)
                scale = ref.abs().max()
                diff = (got - ref).abs().amax(-1)  # (B, T)
                checks.append({"threads": n_threads, "batch": batch,
                               "max_relative_error": float(diff.max() / scale),
                               "tokens_off": int((diff > 1e-4 * scale).sum()), "tokens": batch * seq_len})  # fmt: skip
                # Each call waits for the device, so a wall-clock time covers the kernels (CUDA is async).
                timed = {
                    name: (lambda model=model, ids=ids: (model(ids), sync()))
                    for name, model in models.items()
                }
                times = time_calls(timed, min_time, min_rounds=2, rotate=True)
                for name, t in times.items():
                    results.append({"threads": n_threads, "batch": batch, "seq_len": seq_len, "model": name,
                                    **t, "tokens_per_s": batch * seq_len / t["min_s"]})  # fmt: skip
            row = {"threads": n_threads, "batch": batch,
                   "fast_vs_masked": times["fff_masked"]["min_s"] / times["fff_fast"]["min_s"],
                   f"fast_vs_{baseline}": times[baseline]["min_s"] / times["fff_fast"]["min_s"]}  # fmt: skip
            ratios.append(row)
            print(
                f"threads {n_threads:2d} batch {batch:3d} x {seq_len}: "
                + "  ".join(f"{m} {times[m]['min_s'] * 1e3:8.1f}ms" for m in models)
                + f"  | fast vs masked {row['fast_vs_masked']:.2f}x, vs {baseline} "
                f"{row[f'fast_vs_{baseline}']:.2f}x; max rel err {checks[-1]['max_relative_error']:.1e}",
                flush=True,
            )
    set_num_threads(all_threads())
    report = {
        "benchmark": "model",
        "config": {"preset": preset, "baseline": baseline, "seq_len": seq_len, "batches": list(batches), "device": device,
                   "dtype": "float32", "min_time_s": min_time, "output": "encoder hidden states",
                   "timing": "interleaved rounds, rotated order; min over rounds, median recorded"},
        "machine": {**machine, "load_average_end": os.getloadavg() if hasattr(os, "getloadavg") else None},
        "load": load_report(load_before, machine_load()),
        "results": results,
        "ratios": ratios,
        "checks": checks,
    }  # fmt: skip
    print(markdown_table(report))
    _write(report, out)
    return report


def markdown_table(report: dict[str, Any]) -> str:
    """The speed-ups of a ``bench_ffn`` or ``bench_model`` report as a Markdown table."""
    if report["benchmark"] == "ffn":
        fast = "triton" if report["config"]["device"] == "cuda" else "cpu"
        by = {(r["threads"], r["tokens"], r["path"]): r["min_s"] for r in report["results"]}
        lines = [f"| threads | tokens | {fast} (us) | dense (us) | GLU (us) | masked (us) | "
                 f"{fast} vs dense | {fast} vs GLU | {fast} vs masked |",
                 "| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]  # fmt: skip
        for row in report["ratios"]:
            k = (row["threads"], row["tokens"])
            lines.append(
                f"| {k[0]} | {k[1]} | {by[(*k, fast)] * 1e6:,.1f} | {by[(*k, 'dense')] * 1e6:,.0f} | "
                f"{by[(*k, 'glu')] * 1e6:,.0f} | {by[(*k, 'masked')] * 1e6:,.0f} | "
                f"{row[f'{fast}_vs_dense']:.0f}x | {row[f'{fast}_vs_glu']:.0f}x | {row[f'{fast}_vs_masked']:.0f}x |"
            )
        return "\n".join(lines + _load_lines(report))
    base = report["config"]["baseline"]
    by = {(r["threads"], r["batch"], r["model"]): r for r in report["results"]}
    checks = {(c["threads"], c["batch"]): c for c in report["checks"]}
    lines = [f"| threads | batch x seq | for_inference (tok/s) | masked (tok/s) | {base} (tok/s) | "
             f"vs masked | vs {base} | max rel. error | tokens off |",
             "| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]  # fmt: skip
    for row in report["ratios"]:
        k = (row["threads"], row["batch"])
        c = checks[k]
        lines.append(
            f"| {k[0]} | {k[1]} x {report['config']['seq_len']} | {by[(*k, 'fff_fast')]['tokens_per_s']:,.0f} | "
            f"{by[(*k, 'fff_masked')]['tokens_per_s']:,.0f} | {by[(*k, base)]['tokens_per_s']:,.0f} | "
            f"{row['fast_vs_masked']:.2f}x | {row[f'fast_vs_{base}']:.2f}x | {c['max_relative_error']:.1e} | "
            f"{c['tokens_off']} / {c['tokens']} |"
        )
    return "\n".join(lines + _load_lines(report))


def _load_lines(report: dict[str, Any]) -> list[str]:
    """The load average line under a table, and the busy warning when there is one."""
    load = report.get("load")
    if not load:
        return []
    text = " -> ".join("n/a" if v is None else f"{v[0]:.2f}" for v in (load["before"], load["after"]))
    return ["", f"load average (1 min) {text} on {load['cores']} cores"] + (
        [load["warning"]] if load["warning"] else []
    )


def _write(report: dict[str, Any], out: str | Path | None) -> None:
    if out:
        path = Path(out)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(report, indent=1))
        print(f"wrote {path}")


def plot_ffn(report: dict[str, Any], path: str | Path) -> None:
    """Time per call vs tokens, one panel per thread count, one line per path (log-log)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    threads = sorted({r["threads"] for r in report["results"]})
    fig, axes = plt.subplots(1, len(threads), figsize=(5.5 * len(threads), 4), squeeze=False, sharey=True)
    for ax, n_threads in zip(axes[0], threads):
        rows = [r for r in report["results"] if r["threads"] == n_threads]
        for p in dict.fromkeys(r["path"] for r in rows):
            pts = [(r["tokens"], r["min_s"] * 1e6) for r in rows if r["path"] == p]
            ax.plot(*zip(*pts), marker="o", ms=3, label=p)
        ax.set(xscale="log", yscale="log", xlabel="tokens", title=f"{n_threads} thread(s)")
        ax.grid(True, which="both", alpha=0.3)
    axes[0][0].set_ylabel("time per call (us)")
    axes[0][-1].legend()
    cfg = report["config"]
    fig.suptitle(f"FFN layer, hidden {cfg['hidden']}: FFF depth {cfg['depth']} vs dense {cfg['dense_width']} "
                 f"and GLU {cfg['glu_width']} ({cfg['dtype']})")  # fmt: skip
    fig.tight_layout()
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=80)
    plt.close(fig)
    print(f"wrote {path}")
