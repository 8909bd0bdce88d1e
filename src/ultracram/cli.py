"""The ``ultracram`` command: a table of subcommands, each one library function.

``ultracram.cli_parser`` builds each command's parser with jsonargparse from its function's
typed signature and docstring and from the settings dataclasses it takes
(``ultracram.settings``), so every command has, from the same source: typed flags, dotted
flags for nested settings (``--model.num_layers 4``, ``--finetune.lr 2e-5``,
``--per_task.rte.epochs 10``), ``--config FILE`` (YAML or JSON with the same keys; later flags
override it) and ``--print_config`` (the resolved settings, loadable by ``--config``).

Only the chosen command's module is imported, so ``ultracram --help`` stays instant; the
one-line summaries of the overview live in the table (a test checks they match the
functions' docstrings).
"""

from __future__ import annotations

import importlib
import sys
from typing import Any

from ultracram.cli_parser import UsageError, run_command

# command -> ("module:function", one-line summary) or a group of subcommands.
COMMANDS: dict[str, Any] = {
    "models": ("ultracram.report.tables:print_model_table", "list model presets with parameter counts and FLOPs per token"),
    "tokenizer": {
        "train": ("ultracram.data.tokenizer:train_tokenizer_command",
                  "train a WordPiece tokenizer on text files/directories (plain, .xz, .gz, .zst) -> DIR/tokenizer.json"),
    },
    "data": {
        "prepare": ("ultracram.data.prepare:prepare_command",
                    "raw text -> filtered, tokenised, packed fixed-length shards + manifest.json"),
    },
    "doctor": ("ultracram.doctor:run_doctor",
               "preflight checks before training, or a post-mortem of a run (code error or hyperparameters?)"),
    "pretrain": ("ultracram.commands:pretrain_command",
                 "masked-LM pretraining on Lightning Fabric under a time, token or step budget"),
    "glue": ("ultracram.train.finetune:glue_command", "fine-tune checkpoints on GLUE and evaluate on the dev sets"),
    "study": ("ultracram.study:study_command",
              "pretrain, fine-tune and benchmark several models under one budget; write one report"),
    "explain": {
        "fff": ("ultracram.doctor.explain:explain_fff",
                "token paths through the FFF trees of a checkpoint: tree diagrams, heatmaps, routing entropy"),
    },
    "import": ("ultracram.interop.importer:import_command",
               "convert a published checkpoint (HF BERT, crammedBERT, UltraFastBERT) into an ultracram one"),
    "export": ("ultracram.interop.export:export_command",
               "write an ultracram checkpoint as a Hugging Face transformers directory"),
    "bench": {
        "ffn": ("ultracram.bench.fff:bench_ffn",
                "FFF layer latency per implementation vs dense and GLU FFNs (tokens x threads)"),
        "model": ("ultracram.bench.fff:bench_model",
                  "whole-encoder throughput: UltraFastBERT via for_inference vs masked reference vs crammed-bert"),
        "train": ("ultracram.bench.train:bench_train",
                  "training throughput (tokens/s) and MFU of each preset, timed in interleaved rounds"),
        "fff-train": ("ultracram.bench.fff_train:bench_fff_train",
                      "FFF layer forward+backward tokens/s per training implementation vs masked and GLU"),
        "finetune": ("ultracram.bench.finetune:bench_finetune",
                     "one GLUE fine-tuning step per FFF path through the training engine, vs masked"),
        "glue": ("ultracram.bench.glue:bench_glue", "minutes per GLUE task per model preset (fine-tuning + dev evaluation)"),
        "prepare": ("ultracram.bench.prepare:bench_prepare",
                    "corpus preparation: wall time, tokens/s, peak RSS, ratio to tokenizers' encode_batch"),
        "budget": ("ultracram.bench.budget:bench_budget",
                   "GLUE dev score and MLM validation loss vs CPU pretraining budget, with the baselines"),
    },
    "selfcheck": ("ultracram.selfcheck:run_selfcheck",
                  "check and measure every GPU path in one command (scripts/gpu_check.sh); --device cpu --tiny: dry run"),
}  # fmt: skip

DESCRIPTION = (
    "Train transformer encoders (BERT, crammedBERT, UltraFastBERT, FNet, Switch) from scratch on a small "
    "budget, and compare them rigorously."
)


def resolve(path: list[str]) -> tuple[list[str], Any]:
    """Walk the table along ``path`` (e.g. ``["bench", "ffn"]``): (the command words used,
    the entry there: a ``(target, summary)`` pair or a group dict)."""
    entry: Any = COMMANDS
    used: list[str] = []
    for word in path:
        if not isinstance(entry, dict):
            break
        if word not in entry:
            from ultracram.settings import suggest

            error = UsageError(f"unknown command {word!r}{suggest(word, entry)}; known: {', '.join(entry)}")
            error.prog = " ".join(["ultracram", *used])
            raise error
        entry = entry[word]
        used.append(word)
    return used, entry


def overview(used: list[str], group: dict[str, Any]) -> str:
    """``ultracram [CMD] --help`` for a group: its commands with their summaries."""
    from ultracram import __version__

    prog = " ".join(["ultracram", *used])
    lines = [f"usage: {prog} {'CMD' if not used else 'WHAT'} [--help] ...", ""]
    lines += [DESCRIPTION, ""] if not used else []
    lines.append("commands:")
    width = max(len(name) for name in group)
    for name, entry in group.items():
        summary = entry[1] if isinstance(entry, tuple) else f"{', '.join(entry)} (`{prog} {name} --help`)"
        lines.append(f"  {name.ljust(width)}  {summary}")
    if not used:
        lines += ["", "options:", "  --help      show this message; `ultracram CMD --help` explains each command",
                  "  --version   print the version (ultracram " + __version__ + ")",
                  "  --debug     on an error, show the Python traceback instead of the one-line message"]  # fmt: skip
    return "\n".join(lines)


def load(target: str) -> Any:
    """The function a table entry names (``"module:function"``), importing only its module."""
    module, _, name = target.partition(":")
    return getattr(importlib.import_module(module), name)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    debug = False
    while argv[:1] == ["--debug"]:  # `ultracram --debug CMD ...`
        debug, argv = True, argv[1:]
    if argv[:1] == ["--version"]:
        from ultracram import __version__

        print(f"ultracram {__version__}")
        return 0
    words = argv[: next((i for i, a in enumerate(argv) if a.startswith("-")), len(argv))]
    name = "ultracram"
    try:
        used, entry = resolve(words)
        name = " ".join(["ultracram", *used])
        if isinstance(entry, dict):
            wants_help = any(a in ("-h", "--help") for a in argv)
            print(overview(used, entry), file=sys.stdout if wants_help else sys.stderr)
            return 0 if wants_help else 2
        run_command(used, load(entry[0]), argv[len(used) :])
    except SystemExit as e:  # --help and --print_config end the parse
        return int(e.code or 0)
    except UsageError as e:
        if debug:
            raise
        print(f"{getattr(e, 'prog', name)}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt as e:  # a command says what it kept and how to go on (e.args[0])
        if debug:
            raise
        said = e.args[0] if e.args and isinstance(e.args[0], str) else (
            "files already written are kept; pretraining, GLUE, data prepare and the study resume when the same "
            "command runs again")  # fmt: skip
        print(f"{name}: interrupted: {said}", file=sys.stderr)
        return 130
    except Exception as e:
        from ultracram.errors import UltracramError

        # bad input, or the file system (a full disk, a permission): one line, no traceback
        if debug or not isinstance(e, UltracramError | OSError):
            raise
        print(f"{name}: error: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
