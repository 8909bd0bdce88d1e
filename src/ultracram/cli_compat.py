"""Deprecated command-line forms of version 0.1, translated into the new flags with a note on
stderr (they go in the next release): ``--set KEY=VALUE`` (glue, doctor), ``--settings FILE.json`` and the shortcuts
``--epochs`` / ``--lr`` / ... (glue), ``--from`` (import), ``--keep-accents`` (tokenizer
train), and the study's flat pretraining and fine-tuning flags.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

# command -> old flag -> new flag
RENAMED: dict[str, dict[str, str]] = {
    "glue": {"--epochs": "--finetune.epochs", "--lr": "--finetune.lr", "--batch-size": "--finetune.batch_size",
             "--max-train-examples": "--finetune.max_train_examples",
             "--max-eval-examples": "--finetune.max_eval_examples"},
    "import": {"--from": "--source"},
    "study": {"--budget": "--pretrain.budget", "--micro-batch-size": "--pretrain.micro_batch_size",
              "--batch-size": "--pretrain.batch_size", "--glue-epochs": "--finetune.epochs",
              "--glue-max-train": "--finetune.max_train_examples", "--glue-tasks": "--tasks"},
}  # fmt: skip
DOCTOR_SETUP_KEYS = ("lr", "seed", "batch_size", "seq_len")


def _note(command: str, old: str, new: str) -> None:
    print(
        f"ultracram {command}: note: {old} is deprecated and goes in the next release; use {new}",
        file=sys.stderr,
    )


def _set_option(command: str, item: str) -> list[str]:
    """One deprecated ``--set KEY=VALUE`` as new flags."""
    key, sep, value = item.partition("=")
    if not sep or not key.strip():
        new = (
            "--finetune.KEY VALUE or --per_task.TASK.KEY VALUE" if command == "glue" else "--model.KEY VALUE"
        )
        from ultracram.cli_parser import UsageError

        raise UsageError(
            f"--set expects KEY=VALUE (e.g. lr=2e-5), got {item!r}; --set is deprecated: use {new}"
        )
    task, dot, field = key.strip().rpartition(".")
    if command == "glue":
        new = f"--per_task.{task}.{field}" if dot else f"--finetune.{field}"
    else:  # doctor
        new = f"--{field}" if field in DOCTOR_SETUP_KEYS else f"--model.{field}"
    _note(command, f"--set {item}", f"{new} {value}")
    return [new, value]


def _settings_file(path: str) -> list[str]:
    """A deprecated ``glue --settings FILE.json`` (``{"protocol", "all", "tasks"}``) as flags."""
    from ultracram.settings import suggest
    from ultracram.train.finetune_settings import FinetuneError

    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError, UnicodeDecodeError) as e:
        raise FinetuneError(f"{path}: cannot read the settings file as JSON: {e}") from e
    if not isinstance(data, dict):
        raise FinetuneError(f"{path}: expected a JSON object with keys protocol, all, tasks; "
                            f"got a JSON {type(data).__name__}")  # fmt: skip
    unknown = sorted(set(data) - {"protocol", "all", "tasks"})
    if unknown:
        hints = "".join(suggest(k, ("protocol", "all", "tasks")) for k in unknown)
        raise FinetuneError(f"{path}: unknown key(s) {unknown}{hints}; expected protocol, all, tasks")
    if not isinstance(data.get("all", {}), dict):
        raise FinetuneError(f"{path}: 'all' must be an object of KEY: VALUE, got {data['all']!r}")
    tasks = data.get("tasks", {})
    if not isinstance(tasks, dict) or not all(isinstance(v, dict) for v in tasks.values()):
        raise FinetuneError(f"{path}: 'tasks' must be an object of TASK: {{KEY: VALUE}}, got {tasks!r}")
    out = []
    for key, value in data.items():
        if key == "protocol":
            out += ["--protocol", str(value)]
        elif key == "all":
            out += ["--finetune", json.dumps(value)]
        else:
            out += ["--per_task", json.dumps(value)]
    _note(
        "glue", f"--settings {path}", "--config FILE (keys protocol, finetune, per_task: see --print_config)"
    )
    return out


def deprecated(argv: list[str], command: str) -> list[str]:
    """``argv`` with the deprecated forms of ``command`` replaced by their new flags."""
    renamed = RENAMED.get(command, {})
    out: list[str] = []
    i = 0
    while i < len(argv):
        tok = argv[i]
        name, eq, value = tok.partition("=")
        has_value = bool(eq) or i + 1 < len(argv)
        nxt = value if eq else (argv[i + 1] if i + 1 < len(argv) else "")
        step = 1 if eq else 2
        if name == "--set" and command in ("glue", "doctor") and has_value:
            out += _set_option(command, nxt)
        elif name == "--settings" and command == "glue" and has_value:
            out += _settings_file(nxt)
        elif name in renamed:
            new = renamed[name]
            if command == "study" and name == "--batch-size" and nxt == "recipe":
                nxt = "null"
            _note(command, name, new)
            out += [new, nxt] if has_value else [new]
            step = step if has_value else 1
        elif name == "--keep-accents" and command == "tokenizer train":
            _note(command, name, "--strip_accents false")
            out += ["--strip_accents", "false"]
            step = 1
        else:
            out.append(tok)
            step = 1
        i += step
    return out
