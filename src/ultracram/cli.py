"""The ``ultracram`` command: each subcommand parses its flags and calls one library function.

Size (~650 lines): hand-written argparse flags for every command; the settings issue (one
typed settings layer with a generated parser) replaces them with a table of commands.

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


def _add_glue(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "glue",
        help="fine-tune checkpoints on GLUE and evaluate on the dev sets",
        description="Fine-tune each --checkpoint on each GLUE task for --seeds seeds, evaluate on dev, "
        "and write OUT/results.json and OUT/results.md (one row per checkpoint, median over seeds, "
        "average last). Reruns skip finished runs and resume interrupted ones. Settings: --protocol, "
        'then --settings FILE.json ({"protocol", "all": {...}, "tasks": {"rte": {...}}}), then the '
        "shortcut flags, then --set (highest priority). See docs/glue.md.",
    )
    p.add_argument(
        "--checkpoint",
        action="append",
        required=True,
        metavar="[NAME=]DIR",
        help="checkpoint directory with tokenizer.json; repeat to compare several in one table",
    )
    p.add_argument(
        "--glue-dir",
        action="append",
        required=True,
        metavar="DIR",
        help="glue_data directory or HF parquet directory; repeat to search several in order",
    )
    p.add_argument(
        "--tasks", default="all", help="'all' or a comma list, e.g. cola,sst2 (default: %(default)s)"
    )
    p.add_argument("--out", default="out/glue", help="output directory (default: %(default)s)")
    p.add_argument("--seeds", type=int, default=1, help="seeds per task; the median is reported (default: 1)")
    p.add_argument(
        "--protocol",
        choices=["sane", "bert"],
        default=None,
        help="cramming's GLUE-sane (default) or BERT's original recipe",
    )
    p.add_argument("--settings", default=None, metavar="FILE.json", help="settings file, per task too")
    p.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="[TASK.]KEY=VALUE",
        help="override a setting for all tasks or one task, e.g. lr=2e-5 or rte.epochs=10",
    )
    p.add_argument("--epochs", type=float, default=None, help="shortcut for --set epochs=N")
    p.add_argument("--lr", type=float, default=None, help="shortcut for --set lr=X")
    p.add_argument("--batch-size", type=int, default=None, help="shortcut for --set batch_size=N")
    p.add_argument(
        "--max-train-examples", type=int, default=None, help="fixed random subset of each train set"
    )
    p.add_argument("--max-eval-examples", type=int, default=None, help="fixed random subset of each dev set")
    p.add_argument("--include-wnli", action="store_true", help="count WNLI in the average")
    p.add_argument("--device", default=None, help="cpu or cuda (default: cuda when available)")
    p.add_argument("--devices", type=int, default=1,
                   help="processes that share each step's batch (DDP), as in pretrain (default: 1)")  # fmt: skip
    p.add_argument("--precision", default="auto",
                   help="auto (bf16-mixed on CUDA with bf16, 16-mixed on older cards, 32-true on CPU, as in "
                   "pretrain) or a Lightning precision (default: auto)")  # fmt: skip

    def run(args: argparse.Namespace) -> None:
        from ultracram.train.finetune import run_glue_command

        shortcuts = {"epochs": args.epochs, "lr": args.lr, "batch_size": args.batch_size,
                     "max_train_examples": args.max_train_examples, "max_eval_examples": args.max_eval_examples}  # fmt: skip
        run_glue_command(args.checkpoint, args.glue_dir, args.out, tasks=args.tasks, seeds=args.seeds,
                         protocol=args.protocol, settings_file=args.settings, set_options=args.set,
                         shortcuts=shortcuts, device=args.device, devices=args.devices, precision=args.precision,
                         include_wnli=args.include_wnli)  # fmt: skip

    p.set_defaults(func=run)


def _add_bench_glue(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "glue",
        help="minutes per GLUE task per model preset (fine-tuning + dev evaluation)",
        description="Fine-tune random-init presets for one epoch on subsets of each GLUE task and "
        "extrapolate the time of the full task under the protocol; ratios against the first preset.",
    )
    p.add_argument(
        "--glue-dir", action="append", required=True, metavar="DIR", help="GLUE directory (repeatable)"
    )
    p.add_argument(
        "--presets",
        default="crammed-bert-tiny,bert-tiny,ultrafastbert-tiny,fnet-tiny,switch-tiny",
        help="comma list of presets; the first is the reference (default: %(default)s)",
    )
    p.add_argument(
        "--tasks", default="cola,sst2,mrpc,stsb,rte,wnli", help="comma list (default: %(default)s)"
    )
    p.add_argument("--max-train-examples", type=int, default=256, help="train examples timed per task")
    p.add_argument("--max-eval-examples", type=int, default=256, help="dev examples timed per task")
    p.add_argument("--protocol", choices=["sane", "bert"], default="sane", help="protocol to extrapolate to")
    p.add_argument("--device", default=None, help="cpu or cuda (default: cuda when available)")
    p.add_argument("--out", default="out/bench/glue.json", help="JSON output (default: %(default)s)")

    def run(args: argparse.Namespace) -> None:
        from ultracram.bench.glue import bench_glue

        bench_glue(args.glue_dir, presets=args.presets.split(","), tasks=args.tasks,
                   max_train_examples=args.max_train_examples, max_eval_examples=args.max_eval_examples,
                   protocol=args.protocol, device=args.device, out=args.out)  # fmt: skip

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
    p.add_argument("--device", choices=["cpu", "cuda"], default="cpu", help="(default: %(default)s)")
    p.add_argument("--out", default="out/bench/model.json", help="JSON output (default: %(default)s)")

    def run(args: argparse.Namespace) -> None:
        from ultracram.bench.fff import bench_model

        batches = args.batches or ([1, 4] if args.quick else [1, 32])
        bench_model(batches, seq_len=args.seq_len, threads=args.threads, preset=args.preset,
                    baseline=args.baseline, min_time=0.2 if args.quick else args.min_time, out=args.out,
                    device=args.device)  # fmt: skip

    p.set_defaults(func=run)


def _add_pretrain(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "pretrain",
        help="masked-LM pretraining on Lightning Fabric under a time or token budget",
        description="MLM pretraining of a preset on token shards (`ultracram data prepare`) until a budget "
        "is spent: wall-clock time (24h, 30m), tokens (50M-tokens) or steps (300-steps). CPU, one GPU, DDP "
        "or FSDP through Fabric (several nodes: launch under torchrun or SLURM). Checkpoints are atomic; "
        "--resume continues exactly. Settings: recipe defaults < --config FILE.json < flags.",
    )
    from ultracram.train.pretrain_config import add_arguments

    add_arguments(p)

    def run(args: argparse.Namespace) -> None:
        from ultracram.doctor.monitors import Monitor
        from ultracram.train.pretrain import run_from_args

        run_from_args(args, monitor=Monitor)

    p.set_defaults(func=run)


def _add_bench_train(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "train",
        help="training throughput (tokens/s) and MFU of each preset over a fixed number of steps",
        description="Time a fixed number of MLM training steps (forward, backward, AdamW) per preset on "
        "random tokens, after warm-up steps; report tokens/s and MFU (3 x forward FLOPs per token from "
        "ultracram.model.flops_per_token over the device's peak). Tiny presets by default; --full adds "
        "the full-size presets with fewer steps. FFF presets run once per --fff-paths entry, with ratios "
        "to their own masked run and to crammed-bert of the same size.",
    )
    p.add_argument("--presets", default=None, help="comma list (default: every *-tiny preset, plus full "
                   "presets with --full)")  # fmt: skip
    p.add_argument("--full", action="store_true", help="also the full-size presets")
    p.add_argument("--steps", type=int, default=None, help="timed steps (default: 10 tiny, 3 full)")
    p.add_argument("--warmup", type=int, default=2, help="untimed steps first (default: %(default)s)")
    p.add_argument("--batch-size", type=int, default=None, help="sequences per step (default: 32 tiny, 8 full)")
    p.add_argument("--seq-len", type=int, default=128, help="(default: %(default)s)")
    p.add_argument("--device", default="auto", help="cpu, cuda or auto (default: %(default)s)")
    p.add_argument("--precision", default="auto", help="auto, 32-true, bf16-mixed, 16-mixed (default: %(default)s)")
    p.add_argument("--compile", action="store_true", help="torch.compile each model")
    p.add_argument("--fff-paths", default="masked,gather,conditional",
                   help="FFF training paths to time for FFF presets (default: %(default)s)")
    p.add_argument("--max-batch", type=int, default=0,
                   help="find the largest micro batch that fits by doubling --batch-size up to this (0: off)")  # fmt: skip
    p.add_argument("--out", default="out/bench/train.json", help="JSON output (default: %(default)s)")

    def run(args: argparse.Namespace) -> None:
        from ultracram.bench.train import bench_train

        bench_train(presets=args.presets.split(",") if args.presets else None, full=args.full, steps=args.steps,
                    warmup=args.warmup, batch_size=args.batch_size, seq_len=args.seq_len, device=args.device,
                    precision=args.precision, compile=args.compile, fff_paths=tuple(args.fff_paths.split(",")),
                    max_batch=args.max_batch, out=args.out)  # fmt: skip

    p.set_defaults(func=run)


def _add_bench_prepare(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "prepare",
        help="corpus preparation: wall time, tokens/s, peak RSS, ratio to tokenizers' encode_batch",
        description="Run `ultracram data prepare` on a corpus in a child process (wall time, tokens/s, "
        "peak RSS of the process tree), then time `tokenizers`' encode_batch alone on the same documents "
        "in the same run, and report the ratio of the two tokens/s. Without --tokenizer one is trained "
        "first on a prefix of the corpus (not timed).",
    )
    p.add_argument("--input", nargs="+", required=True, help="corpus files or directories")
    p.add_argument("--tokenizer", default=None, help="tokenizer.json (default: train one on a prefix)")
    p.add_argument("--vocab-size", type=int, default=32768, help="for the trained tokenizer (default: %(default)s)")
    p.add_argument("--train-documents", type=int, default=3000, help="documents to train it on (default: %(default)s)")
    p.add_argument("--seq-len", type=int, default=128, help="(default: %(default)s)")
    p.add_argument("--workers", type=int, default=None, help="tokenising processes (default: all cores)")
    p.add_argument("--work-dir", default="out/bench/prepare", help="where shards go (default: %(default)s)")
    p.add_argument("--out", default="out/bench/prepare.json", help="JSON output (default: %(default)s)")

    def run(args: argparse.Namespace) -> None:
        from ultracram.bench.prepare import bench_prepare

        bench_prepare(args.input, tokenizer=args.tokenizer, vocab_size=args.vocab_size,
                      train_documents=args.train_documents, seq_len=args.seq_len, workers=args.workers,
                      work_dir=args.work_dir, out=args.out)  # fmt: skip

    p.set_defaults(func=run)


def _batch_size(text: str) -> int | None:
    if text == "recipe":
        return None
    if not text.isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"expected a positive number of sequences or 'recipe', got {text!r}")
    return int(text)


def _add_study(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "study",
        help="pretrain, fine-tune and benchmark several models under one budget; write one report",
        description="The comparison study: one tokenizer and one set of shards for every model; each model "
        "is pretrained under the same budget, fine-tuned and evaluated on GLUE, and its inference speed "
        "measured; the report (report.md with figures, and a self-contained report.html) shows it side by "
        "side with the configuration, versions and hardware. Rerunning the same command in the same --out "
        "resumes a killed study without redoing finished models. With no --corpus/--glue it runs the quick-"
        "start study on the embedded sample data.",
    )
    p.add_argument("--models", default="bert-tiny,crammed-bert-tiny,ultrafastbert-tiny,fnet-tiny,switch-tiny",
                   help="comma-separated presets (default: %(default)s)")
    p.add_argument("--budget", default="60s", help="pretraining budget per model: 1h, 90s, 5M-tokens (default: %(default)s)")
    p.add_argument("--corpus", nargs="*", default=[], help="raw text files/directories (default: embedded sample)")
    p.add_argument("--glue", default="", help="GLUE directory, glue_data layout (default: embedded slices)")
    p.add_argument("--glue-tasks", default="all", help="GLUE tasks, comma-separated or all (default: %(default)s)")
    p.add_argument("--glue-epochs", type=int, default=None, help="fine-tuning epochs (default: the protocol's 5)")
    p.add_argument("--glue-max-train", type=int, default=None, help="cap on training examples per task")
    p.add_argument("--seeds", type=int, default=1, help="fine-tuning seeds per task, median reported (default: 1)")
    p.add_argument("--vocab-size", type=int, default=None, help="tokenizer vocabulary (default: largest preset's)")
    p.add_argument("--max-token-ratio", type=float, default=None, help="drop documents with more tokens than this x "
                   "characters (default: cramming's 0.25 for vocabularies >= 32768, else 0.5)")
    p.add_argument("--micro-batch-size", type=int, default=32, help="pretraining micro batch (default: %(default)s)")
    p.add_argument("--batch-size", default=256, type=_batch_size, help="pretraining batch in sequences for every model, or 'recipe' "
                   "for each recipe's own (cramming: ramp to 8192, for budgets of hours) (default: %(default)s)")
    p.add_argument("--out", default="out/study", help="study directory (default: %(default)s)")

    def run(args: argparse.Namespace) -> None:
        from ultracram.study import run_study

        run_study(args.out, models=[m.strip() for m in args.models.split(",") if m.strip()], budget=args.budget,
                  corpus=args.corpus, glue=args.glue, glue_tasks=args.glue_tasks, glue_epochs=args.glue_epochs,
                  glue_max_train=args.glue_max_train, seeds=args.seeds, vocab_size=args.vocab_size,
                  micro_batch_size=args.micro_batch_size, max_token_ratio=args.max_token_ratio,
                  batch_size=args.batch_size)  # fmt: skip

    p.set_defaults(func=run)


def _add_bench_fff_train(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "fff-train",
        help="FFF layer forward+backward tokens/s per training implementation vs masked and GLU",
        description="Time forward+backward of one FFF layer (H=768) through masked, gather and "
        "conditional (and its backends) against crammed-bert's GLU FFN on the same tokens; gradients "
        "are checked against the masked reference in the same run. Optionally a shallow whole-model "
        "MLM training step. Writes JSON.",
    )
    p.add_argument("--shapes", default="ultrafastbert-1x11,ultrafastbert-128x4", help="comma list of presets")
    p.add_argument("--tokens", type=int, default=2048, help="tokens per step (default: %(default)s)")
    p.add_argument("--repeats", type=int, default=3, help="timed steps per path (default: %(default)s)")
    p.add_argument("--model-layers", type=int, default=0, help="also time a model step of this depth (0: no)")
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda"], help="(default: %(default)s)")
    p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"], help="(default: %(default)s)")
    p.add_argument("--out", default="out/bench/fff_train.json", help="JSON output (default: %(default)s)")

    def run(args: argparse.Namespace) -> None:
        from ultracram.bench.fff_train import bench_fff_train

        bench_fff_train(args.shapes.split(","), tokens=args.tokens, repeats=args.repeats,
                        model_layers=args.model_layers, device=args.device, dtype=args.dtype, out=args.out)  # fmt: skip

    p.set_defaults(func=run)


# `ultracram bench <what>`: each benchmark adds itself to BENCH_COMMANDS like a top-level command.
BENCH_COMMANDS: list[Callable[[argparse._SubParsersAction], None]] = [_add_bench_glue]
BENCH_COMMANDS += [_add_bench_ffn, _add_bench_model]
BENCH_COMMANDS += [_add_bench_train]
BENCH_COMMANDS += [_add_bench_prepare]
BENCH_COMMANDS += [_add_bench_fff_train]


def _add_bench_finetune(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "finetune",
        help="one GLUE fine-tuning step per FFF path through the training engine, vs masked",
        description="Time the step `ultracram glue` takes (engine.train_step on a classifier) for each FFF "
        "path, in interleaved rounds, with the ratio to the masked reference from the same run and the "
        "first-step loss difference. auto = what `ultracram glue` uses (the conditional kernels).",
    )
    p.add_argument("--preset", default="ultrafastbert-1x11", help="model preset (default: %(default)s)")
    p.add_argument("--paths", default="masked,auto", help="FFF paths, comma list with masked (default: %(default)s)")
    p.add_argument("--batch-size", type=int, default=16, help="examples per step (default: %(default)s)")
    p.add_argument("--seq-len", type=int, default=128, help="tokens per example (default: %(default)s)")
    p.add_argument("--rounds", type=int, default=3, help="timed steps per path (default: %(default)s)")
    p.add_argument("--device", default="cpu", help="cpu or cuda (default: %(default)s)")
    p.add_argument("--precision", default="auto", help="auto or a Lightning precision (default: %(default)s)")
    p.add_argument("--out", default="out/bench/finetune.json", help="JSON output (default: %(default)s)")

    def run(args: argparse.Namespace) -> None:
        from ultracram.bench.finetune import bench_finetune

        bench_finetune(args.preset, paths=tuple(args.paths.split(",")), batch_size=args.batch_size,
                       seq_len=args.seq_len, rounds=args.rounds, device=args.device, precision=args.precision,
                       out=args.out)  # fmt: skip

    p.set_defaults(func=run)


BENCH_COMMANDS += [_add_bench_finetune]


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
    p.add_argument("--overwrite", action="store_true", help="replace an earlier `ultracram import` output at "
                   "--out (a non-empty directory that is not one is always refused)")  # fmt: skip

    def run(args: argparse.Namespace) -> None:
        from ultracram.interop.importer import import_checkpoint

        print(import_checkpoint(args.source, args.out, format=args.format, overwrite=args.overwrite))

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
    p.add_argument("--overwrite", action="store_true", help="replace an earlier `ultracram export` output at "
                   "--out (a non-empty directory that is not one is always refused)")  # fmt: skip

    def run(args: argparse.Namespace) -> None:
        from ultracram.interop.export import export_checkpoint, needs_remote_code

        out = export_checkpoint(args.checkpoint, args.out, format=args.format, overwrite=args.overwrite)
        print(out)
        if needs_remote_code(out):
            print("note: not a BERT; load it with trust_remote_code=True (it ships modeling_ultracram.py)")

    p.set_defaults(func=run)


def _add_tokenizer(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "tokenizer",
        help="train a WordPiece tokenizer on raw text",
        description="Tokenizers. `ultracram tokenizer train` trains a BERT-style WordPiece tokenizer.",
    )
    tsub = p.add_subparsers(dest="action", metavar="ACTION")
    t = tsub.add_parser(
        "train",
        help="train WordPiece on text files/directories (plain, .xz, .gz, .zst) -> DIR/tokenizer.json",
        description="Train a WordPiece tokenizer with Hugging Face `tokenizers`, streaming the text. "
        "Lowercases and strips accents by default; special tokens [PAD]=0 [UNK]=1 [CLS]=2 [SEP]=3 "
        "[MASK]=4; template [CLS] A [SEP] (B [SEP]).",
    )
    t.add_argument("--input", nargs="+", required=True, help="text files or directories")
    t.add_argument("--out", required=True, help="output directory for tokenizer.json")
    t.add_argument("--vocab-size", type=int, default=32768, help="(default: %(default)s)")
    t.add_argument("--min-frequency", type=int, default=2, help="(default: %(default)s)")
    t.add_argument("--limit-alphabet", type=int, default=None, help="keep the N most frequent characters "
                   "(default: vocab/16, between 100 and 1000; the rest become [UNK])")
    t.add_argument("--max-documents", type=int, default=None, help="train on the first N documents only")
    t.add_argument("--no-lowercase", action="store_true", help="keep case")
    t.add_argument("--keep-accents", action="store_true", help="do not strip accents")
    t.add_argument("--overwrite", action="store_true", help="replace a tokenizer.json already in --out")

    def run(args: argparse.Namespace) -> None:
        from ultracram.data.tokenizer import train_tokenizer_files

        path = train_tokenizer_files(args.input, args.out, args.vocab_size, lowercase=not args.no_lowercase,
                                     strip_accents=not args.keep_accents, min_frequency=args.min_frequency,
                                     max_documents=args.max_documents, limit_alphabet=args.limit_alphabet,
                                     show_progress=True, overwrite=args.overwrite)  # fmt: skip
        print(f"wrote {path}")

    t.set_defaults(func=run)
    p.set_defaults(func=lambda args: p.print_help())


def _add_data(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "data",
        help="prepare pretraining data: raw text -> packed token shards",
        description="Pretraining data. `ultracram data prepare` tokenises and packs a corpus.",
    )
    dsub = p.add_subparsers(dest="action", metavar="ACTION")
    d = dsub.add_parser(
        "prepare",
        help="raw text -> filtered, tokenised, packed fixed-length shards + manifest.json",
        description="Stream text files/directories (plain, .xz, .gz, .zst; documents are blank-line "
        "separated blocks) and/or a Hugging Face dataset's text column (--hf-dataset), drop documents with more tokens than 0.25 x characters, optionally de-duplicate "
        "and order by length, and pack [CLS] ... [SEP] sequences into memory-mapped shards. A killed run "
        "resumes after its last complete shard when rerun with the same arguments.",
    )
    d.add_argument("--input", nargs="+", default=[], help="text files or directories")
    d.add_argument("--hf-dataset", metavar="NAME", help="also a Hugging Face dataset (needs the network, or "
                   "a builder such as parquet with --hf-data-files), streamed once into OUT/hf_source/")
    d.add_argument("--hf-config", default=None, help="dataset configuration (e.g. 20231101.en)")
    d.add_argument("--hf-split", default="train", help="(default: %(default)s)")
    d.add_argument("--hf-column", default="text", help="text column (default: %(default)s)")
    d.add_argument("--hf-data-files", nargs="+", default=None, help="local files for a builder dataset")
    d.add_argument("--hf-max-documents", type=int, default=None, help="stop after N documents")
    d.add_argument("--tokenizer", required=True, help="tokenizer.json (copied into --out)")
    d.add_argument("--out", required=True, help="output directory")
    d.add_argument("--seq-len", type=int, default=128, help="(default: %(default)s)")
    d.add_argument("--dedup", action="store_true", help="drop exact duplicate documents (case/space-normalised)")
    d.add_argument("--sort-by-length", action="store_true", help="shortest documents first, per buffer")
    d.add_argument("--sort-buffer", type=int, default=16384, help="documents per sort buffer (default: %(default)s)")
    d.add_argument("--max-token-ratio", type=float, default=0.25, help="drop docs with tokens > this x chars "
                   "(default: %(default)s)")  # fmt: skip
    d.add_argument("--workers", type=int, default=None, help="tokenising processes (default: all cores; 0: "
                   "in-process with the tokenizer's threads)")  # fmt: skip
    d.add_argument("--shard-sequences", type=int, default=65536, help="sequences per shard (default: %(default)s)")
    d.add_argument("--restart", action="store_true", help="start over instead of resuming")
    d.add_argument("--overwrite", action="store_true", help="replace a finished prepare with different settings "
                   "in --out (its shards stay until the new ones are complete)")  # fmt: skip

    def run(args: argparse.Namespace) -> None:
        from pathlib import Path

        from ultracram.data.corpus import prepare_corpus
        from ultracram.errors import DataError
        from ultracram.fileio import check_writable_dir

        check_writable_dir(args.out)  # before --hf-dataset writes OUT/hf_source
        for flag, value, least in (("--workers", args.workers, 0), ("--shard-sequences", args.shard_sequences, 1)):
            if value is not None and value < least:
                raise DataError(f"{flag} must be at least {least}, got {value}")
        inputs = list(args.input)
        if args.hf_dataset:
            from ultracram.data.hf_source import export_hf_dataset

            inputs.append(export_hf_dataset(args.hf_dataset, Path(args.out) / "hf_source", config=args.hf_config,
                                            split=args.hf_split, column=args.hf_column,
                                            data_files=args.hf_data_files, max_documents=args.hf_max_documents))  # fmt: skip
        if not inputs:
            d.error("give --input files/directories, --hf-dataset NAME, or both")
        m = prepare_corpus(inputs, args.out, args.tokenizer, args.seq_len, dedup=args.dedup,
                           sort_by_length=args.sort_by_length, sort_buffer=args.sort_buffer,
                           max_token_ratio=args.max_token_ratio, workers=args.workers,
                           shard_sequences=args.shard_sequences, resume=not args.restart,
                           show_progress=True, overwrite=args.overwrite)  # fmt: skip
        c = m["counts"]
        print(f"{args.out}: {c['sequences']:,} sequences x {m['seq_len']} in {len(m['shards'])} shard(s); "
              f"{c['documents']:,} documents, {c['documents_dropped_ratio']:,} dropped by the ratio filter, "
              f"{c['documents_dropped_duplicate']:,} duplicates")  # fmt: skip

    d.set_defaults(func=run)
    p.set_defaults(func=lambda args: p.print_help())


COMMANDS: list[Callable[[argparse._SubParsersAction], None]] = [
    _add_models,
    _add_bench,
    _add_glue,
    _add_pretrain,
]
COMMANDS += [_add_import, _add_export]
COMMANDS += [_add_tokenizer, _add_data]
COMMANDS += [_add_study]


def _add_selfcheck(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "selfcheck",
        help="check and measure every GPU path in one command (scripts/gpu_check.sh); --device cpu --tiny: dry run",
        description="Runs, each as a subprocess with its own time limit (a failure or time-out is recorded and "
        "the next step runs): env, pytest -m gpu, bench ffn, bench model, bench fff-train (bf16), bench train "
        "--full (bf16-mixed, largest micro batch that fits), the same with --compile for crammed-bert and "
        "ultrafastbert-1x11, and an end-to-end pretrain (killed and resumed) + GLUE RTE. Writes OUT/selfcheck.json "
        "(every figure), OUT/summary.md (printed at the end), OUT/logs/STEP.log and the benchmarks' JSON and "
        "plots. About 8 minutes on one H100/H200. See docs/gpu.md.",
    )
    p.add_argument("--out", required=True, help="directory for every result (created)")
    p.add_argument("--device", choices=["cuda", "cpu"], default="cuda", help="(default: %(default)s)")
    p.add_argument("--tiny", action="store_true", help="tiny presets, seconds per step (the CPU dry run)")
    p.add_argument("--only", default=None, help="comma list of steps: env,pytest,ffn,model,fff-train,train,"
                   "train-compile,e2e (default: all)")  # fmt: skip

    def run(args: argparse.Namespace) -> None:
        from ultracram.selfcheck import run_selfcheck

        run_selfcheck(args.out, device=args.device, tiny=args.tiny, only=args.only.split(",") if args.only else None)

    p.set_defaults(func=run)


COMMANDS += [_add_selfcheck]


def _add_doctor(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "doctor",
        help="preflight checks before training, or a post-mortem of a run (code error or hyperparameters?)",
        description="Preflight (--preset): checks labels, masking, padding, initial loss, loss function, "
        "gradients, one-batch overfitting, determinism, an lr range test and mixed precision; each "
        "PASS/WARN/FAIL with a reason and a fix; writes OUT/doctor.json and OUT/lr_range.png. Without "
        "--data it uses the embedded Wikipedia sample and a tokenizer trained on it. Tiny presets take "
        "about a minute on CPU; full-size presets (crammed-bert, bert-base) take many minutes. "
        "Post-mortem (--run RUN_DIR): diagnoses RUN_DIR/metrics.csv (divergence, plateau, lr too "
        "high/low) and writes a Markdown/HTML report with figures to RUN_DIR/doctor (or --out).",
    )
    p.add_argument("--preset", default="crammed-bert-tiny", help="model preset (default: %(default)s)")
    p.add_argument("--data", help="token-shard directory (default: the embedded sample)")
    p.add_argument("--tokenizer", help="tokenizer.json (default: DATA/tokenizer.json or trained on the sample)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a model config field or lr, seed, batch_size, seq_len (repeatable)")  # fmt: skip
    p.add_argument("--only", action="append", metavar="CHECK", help="run only these checks (repeatable)")
    p.add_argument("--run", help="post-mortem of this run directory instead of preflight checks")
    p.add_argument("--out", help="output directory (default: out/doctor, or RUN_DIR/doctor with --run)")

    def run(args: argparse.Namespace) -> None:
        from ultracram.doctor import run_doctor

        run_doctor(preset=args.preset, data=args.data, tokenizer=args.tokenizer, overrides=args.overrides,
                   only=args.only, run_dir=args.run, out_dir=args.out)  # fmt: skip

    p.set_defaults(func=run)


def _add_explain(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "explain",
        help="pictures of what a model does (explain fff: token paths through FFF trees)",
        description="`explain fff --checkpoint DIR --text TEXT`: the path each token takes through each "
        "tree of each FFF layer, visit counts per node, leaves reached and routing entropy; writes tree "
        "diagrams and per-token path heatmaps (PNG) and explain.md to --out.",
    )
    p.add_argument("what", choices=["fff"], help="what to explain")
    p.add_argument("--checkpoint", required=True, help="checkpoint directory (with tokenizer.json)")
    p.add_argument("--text", required=True, help="text to route through the model")
    p.add_argument("--out", default="out/explain", help="output directory (default: %(default)s)")

    def run(args: argparse.Namespace) -> None:
        from ultracram.doctor.explain import explain_fff

        explain_fff(args.checkpoint, args.text, args.out)

    p.set_defaults(func=run)


COMMANDS += [_add_doctor, _add_explain]


def build_parser() -> argparse.ArgumentParser:
    from ultracram import __version__

    parser = argparse.ArgumentParser(
        prog="ultracram",
        description="Train transformer encoders (BERT, crammedBERT, UltraFastBERT, FNet, Switch) from "
        "scratch on a small budget, and compare them rigorously. `ultracram CMD --help` explains each command.",
    )
    parser.add_argument("--version", action="version", version=f"ultracram {__version__}")
    parser.add_argument("--debug", action="store_true",
                        help="on an error, show the Python traceback instead of the one-line message")  # fmt: skip
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
    except KeyboardInterrupt:
        if args.debug:
            raise
        print(f"ultracram {args.command}: interrupted. Files already written are kept; pretraining, GLUE, "
              "data prepare and the study resume when the same command runs again.", file=sys.stderr)  # fmt: skip
        return 130
    except (UltracramError, OSError) as e:  # bad input, or the file system (a full disk, a permission)
        if args.debug:
            raise
        print(f"ultracram {args.command}: error: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
