"""The ``ultracram`` command: each subcommand parses its flags and calls one library function.

Subcommands import their library modules lazily so that ``ultracram --help`` is instant.
Add a subcommand by writing one ``_add_<name>(sub)`` function and listing it in ``COMMANDS``.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable


def _add_models(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "models",
        help="list model presets with parameter counts and FLOPs per token",
        description="List every preset: family, parameters (embedding / non-embedding) and forward "
        "FLOPs per token at the preset's sequence length (formula: ultracram.model.flops_per_token). "
        "Any ultrafastbert-KxD (K trees of depth D) also works where a preset is asked for.",
    )
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")

    def run(args: argparse.Namespace) -> None:
        from ultracram.report.tables import print_model_table

        print_model_table(as_json=args.json)

    p.set_defaults(func=run)


def _add_quickstart(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "quickstart",
        help="the quick start's main job on the embedded sample data",
        description="Train a tokenizer on the embedded Wikipedia sample, build a tiny model and run a "
        "few MLM training steps on CPU, then save a checkpoint.",
    )
    p.add_argument("--out", default="out/quickstart", help="output directory (default: %(default)s)")
    p.add_argument("--preset", default="crammed-bert-tiny", help="model preset (default: %(default)s)")
    p.add_argument("--steps", type=int, default=60, help="training steps (default: %(default)s)")
    p.add_argument("--seed", type=int, default=0, help="random seed (default: %(default)s)")

    def run(args: argparse.Namespace) -> None:
        from ultracram.quickstart import run_quickstart

        run_quickstart(args.out, preset=args.preset, steps=args.steps, seed=args.seed)

    p.set_defaults(func=run)


def _int_list(text: str) -> list[int]:
    return [int(v) for v in text.split(",") if v.strip()]


def _add_bench_ffn(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "ffn",
        help="FFF layer latency per implementation vs dense and GLU FFNs (tokens x threads)",
        description="Time one feedforward layer: FFF depth D through the masked reference, gather and "
        "the fast kernel (cpu / triton), a dense FFN of the same width (768->4095->768) and "
        "crammed-bert's GLU FFN, for each token count and thread count. Outputs are checked against "
        "the masked reference and ratios are taken within the run. Writes JSON and a PNG plot.",
    )
    p.add_argument("--tokens", type=_int_list, default=None, help="comma list (default: 1,2,4,...,4096)")
    p.add_argument("--threads", type=_int_list, default=None, help="comma list (default: 1 and all cores)")
    p.add_argument("--depth", type=int, default=11, help="FFF depth (default: %(default)s)")
    p.add_argument("--min-time", type=float, default=0.3, help="seconds per point (default: %(default)s)")
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda"], help="(default: %(default)s)")
    p.add_argument("--quick", action="store_true", help="small sweep: tokens 1,64,1024, 0.1 s per point")
    p.add_argument("--out", default="out/bench/ffn.json", help="JSON output (default: %(default)s)")
    p.add_argument("--plot", default="out/bench/ffn.png", help="PNG plot (default: %(default)s)")

    def run(args: argparse.Namespace) -> None:
        from ultracram.bench.fff import FFN_TOKENS, FFN_TOKENS_QUICK, bench_ffn

        tokens = args.tokens or (FFN_TOKENS_QUICK if args.quick else FFN_TOKENS)
        bench_ffn(tokens, threads=args.threads, depth=args.depth, device=args.device, out=args.out,
                  min_time=0.1 if args.quick else args.min_time, plot=args.plot)  # fmt: skip

    p.set_defaults(func=run)


def _add_bench_model(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "model",
        help="whole-encoder throughput: UltraFastBERT via for_inference vs masked reference vs crammed-bert",
        description="Encoder forward (hidden states) at one sequence length and several batch sizes: the "
        "preset through for_inference, the same weights through the masked FFF reference, and the "
        "baseline preset. Hidden states are checked against the reference in the same run.",
    )
    p.add_argument("--preset", default="ultrafastbert-1x11", help="FFF preset (default: %(default)s)")
    p.add_argument("--baseline", default="crammed-bert", help="baseline preset (default: %(default)s)")
    p.add_argument("--batches", type=_int_list, default=None, help="comma list (default: 1,32)")
    p.add_argument("--seq-len", type=int, default=128, help="(default: %(default)s)")
    p.add_argument("--threads", type=_int_list, default=None, help="comma list (default: all cores)")
    p.add_argument("--min-time", type=float, default=1.0, help="seconds per point (default: %(default)s)")
    p.add_argument("--quick", action="store_true", help="batches 1,4 and 0.2 s per point")
    p.add_argument("--out", default="out/bench/model.json", help="JSON output (default: %(default)s)")

    def run(args: argparse.Namespace) -> None:
        from ultracram.bench.fff import bench_model

        batches = args.batches or ([1, 4] if args.quick else [1, 32])
        bench_model(batches, seq_len=args.seq_len, threads=args.threads, preset=args.preset,
                    baseline=args.baseline, min_time=0.2 if args.quick else args.min_time, out=args.out)  # fmt: skip

    p.set_defaults(func=run)


# `ultracram bench <what>`: each benchmark adds itself to BENCH_COMMANDS like a top-level command.
BENCH_COMMANDS: list[Callable[[argparse._SubParsersAction], None]] = []
BENCH_COMMANDS += [_add_bench_ffn, _add_bench_model]


def _add_bench(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "bench",
        help="speed benchmarks (ratios against a reference measured in the same run)",
        description="Speed benchmarks. Each prints ratios measured within one run and writes JSON; "
        "`ultracram bench WHAT --help` explains each.",
    )
    bench_sub = p.add_subparsers(dest="bench", metavar="WHAT")
    for add in BENCH_COMMANDS:
        add(bench_sub)
    p.set_defaults(func=lambda args: p.print_help())


def _add_import(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "import",
        help="convert a published checkpoint (HF BERT, crammedBERT, UltraFastBERT) into an ultracram one",
        description="Convert a local checkpoint directory (config.json + model.safetensors or "
        "pytorch_model.bin, read with torch.load(weights_only=True)) into an ultracram checkpoint. "
        "Formats: hf-bert (BertForMaskedLM -> bert-base architecture with its MLM head), cramming "
        "(crammedBERT -> crammed-bert; UltraFastBERT, intermed_type fff -> ultrafastbert-KxD), "
        "hf-ultracram (a directory written by `ultracram export`). Every tensor is mapped explicitly; "
        "missing, unused or mis-shaped tensors are errors. No network access.",
    )
    p.add_argument("--from", dest="source", required=True, help="checkpoint directory to convert")
    p.add_argument("--out", required=True, help="ultracram checkpoint directory to write")
    p.add_argument("--format", default="auto", choices=["auto", "hf-bert", "cramming", "hf-ultracram"],
                   help="source format (default: %(default)s, detected from config.json)")  # fmt: skip

    def run(args: argparse.Namespace) -> None:
        from ultracram.interop.importer import import_checkpoint

        print(import_checkpoint(args.source, args.out, format=args.format))

    p.set_defaults(func=run)


def _add_export(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "export",
        help="write an ultracram checkpoint as a Hugging Face transformers directory",
        description="Write a checkpoint as a directory that transformers loads offline: bert-* models as "
        "a native BertForMaskedLM / BertForSequenceClassification, every other model with a "
        "self-contained modeling_ultracram.py (load with trust_remote_code=True through AutoModel, "
        "AutoModelForMaskedLM or AutoModelForSequenceClassification). The tokenizer is included.",
    )
    p.add_argument("--checkpoint", required=True, help="ultracram checkpoint directory")
    p.add_argument("--out", required=True, help="directory to write")
    p.add_argument("--format", default="hf", choices=["hf"], help="output format (default: %(default)s)")

    def run(args: argparse.Namespace) -> None:
        from ultracram.interop.export import export_checkpoint

        print(export_checkpoint(args.checkpoint, args.out, format=args.format))

    p.set_defaults(func=run)


COMMANDS: list[Callable[[argparse._SubParsersAction], None]] = [_add_models, _add_quickstart, _add_bench]
COMMANDS += [_add_import, _add_export]


def build_parser() -> argparse.ArgumentParser:
    from ultracram import __version__

    parser = argparse.ArgumentParser(
        prog="ultracram",
        description="Train transformer encoders (BERT, crammedBERT, UltraFastBERT, FNet, Switch) from "
        "scratch on a small budget, and compare them rigorously. `ultracram CMD --help` explains each command.",
    )
    parser.add_argument("--version", action="version", version=f"ultracram {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="CMD")
    for add in COMMANDS:
        add(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    from ultracram.errors import UltracramError

    try:
        args.func(args)
    except (UltracramError, FileNotFoundError) as e:
        print(f"ultracram {args.command}: error: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
