"""What the command line accepts besides jsonargparse's own syntax, and its errors in one line.

Conveniences kept from the argparse CLI, for every command:

- ``--max-batch`` for ``--max_batch`` (hyphens in flag names);
- a bare boolean flag (``--compile``) for ``--compile true``, and ``--no-compile`` for
  ``--compile false``;
- a list flag takes several values (``--input a.txt b.txt``), comma-separated items
  (``--models bert-tiny,fnet-tiny``) or a JSON list, and may be repeated
  (``--checkpoint a --checkpoint b``): the items add up, replacing the default.

Deprecated forms of version 0.1, translated with a note on stderr (removed in the next
release): ``--set KEY=VALUE`` (glue, doctor), ``--settings FILE.json`` and the shortcuts
``--epochs`` / ``--lr`` / ... (glue), ``--from`` (import), ``--keep-accents`` (tokenizer
train), and the study's flat pretraining and fine-tuning flags.
"""

from __future__ import annotations

import json
import re
import sys
import typing
from pathlib import Path
from typing import Any

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
    print(f"ultracram {command}: note: {old} is deprecated and goes in the next release; use {new}", file=sys.stderr)


def _set_option(command: str, item: str) -> list[str]:
    """One deprecated ``--set KEY=VALUE`` as new flags."""
    key, sep, value = item.partition("=")
    if not sep or not key.strip():
        new = "--finetune.KEY VALUE or --per_task.TASK.KEY VALUE" if command == "glue" else "--model.KEY VALUE"
        raise UsageError(f"--set expects KEY=VALUE (e.g. lr=2e-5), got {item!r}; --set is deprecated: use {new}")
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
    _note("glue", f"--settings {path}", "--config FILE (keys protocol, finetune, per_task: see --print_config)")
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


class UsageError(Exception):
    """Bad flags or an unknown command: one line, exit code 2."""


def check_config_files(argv: list[str], fn: Any, settings_cls: type | None) -> None:
    """Every ``--config FILE`` in ``argv`` read and checked against the command's settings
    before jsonargparse loads it: a file it cannot read, or every unknown key, wrong type and
    bad value of the file at once (jsonargparse would stop at the first), naming the file."""
    for i, tok in enumerate(argv):
        name, eq, value = tok.partition("=")
        if name == "--config" and (eq or i + 1 < len(argv)):
            check_config_file(Path(value if eq else argv[i + 1]), fn, settings_cls)


def check_config_file(path: Path, fn: Any, settings_cls: type | None) -> None:
    import dataclasses

    import yaml

    from ultracram.settings import SettingsError, build, coerce, coerce_fields, suggest

    try:
        values = yaml.safe_load(path.read_text(encoding="utf-8"))  # JSON is YAML too
    except FileNotFoundError:
        raise UsageError(f"--config {path}: no such file") from None
    except UnicodeDecodeError as e:
        raise UsageError(f"--config {path}: not a text file ({e.reason})") from None
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f"line {mark.line + 1}: " if mark is not None else ""
        raise UsageError(f"--config {path}: {where}not valid YAML or JSON: {getattr(e, 'problem', e)}") from None
    if not isinstance(values, dict):
        raise UsageError(f"--config {path}: expected an object of settings (KEY: VALUE), got {values!r}")
    hints = {k: v for k, v in typing.get_type_hints(fn).items() if k not in ("settings", "return")}
    fields = typing.get_type_hints(settings_cls) if settings_cls else {}
    known = {**hints, **fields}
    problems, good = [], {}
    for key, value in values.items():
        kind = known.get(key)
        if kind is None:
            problems.append(f"unknown key {key!r}{suggest(key, known)}")
        elif dataclasses.is_dataclass(kind) and isinstance(value, dict):
            try:
                good[key] = build(kind, value, key)
            except SettingsError as e:
                problems += [f"{key}: {p}" for p in e.problems]
        elif key in fields:
            typed, bad = coerce_fields(settings_cls, {key: value})
            good.update(typed)
            problems += bad
        else:
            try:
                coerce(value, kind)
            except ValueError as e:
                problems.append(f"{key}: {e}, got {value!r}")
    if settings_cls is not None:
        try:
            settings_cls(**{k: v for k, v in good.items() if k in fields})
        except SettingsError as e:
            problems += e.problems
        except TypeError:  # a required setting comes from a flag: checked once all are known
            pass
    if problems:
        raise SettingsError(problems, f"settings in {path}")


def _kind(action: Any) -> str:
    """'bool', 'list' or '' for a jsonargparse action, by its type hint."""
    hint = getattr(action, "_typehint", None)
    if hint is None:
        return ""
    options = [a for a in typing.get_args(hint) if a is not type(None)] if typing.get_origin(hint) in (
        typing.Union, __import__("types").UnionType) else [hint]  # fmt: skip
    if options == [bool]:
        return "bool"
    if all(typing.get_origin(o) in (list, tuple) for o in options):
        return "list"
    return ""


def normalise(argv: list[str], parser: Any, command: str) -> list[str]:
    """``argv`` in jsonargparse's syntax (see the module docstring)."""
    argv = deprecated(argv, command)
    actions = {opt: a for a in parser._actions for opt in a.option_strings}
    out: list[str] = []
    lists: dict[str, list[str]] = {}  # list flag -> its values, given once where it first appeared
    i = 0
    while i < len(argv):
        tok = argv[i]
        i += 1
        if not tok.startswith("--") or tok == "--":
            out.append(tok)
            continue
        name, eq, value = tok.partition("=")
        if name not in actions:
            name = "--" + name[2:].replace("-", "_")
        if name not in actions and name.startswith("--no_") and _kind(actions.get("--" + name[5:])) == "bool":
            out += ["--" + name[5:], "false"]
            continue
        kind = _kind(actions.get(name))
        if kind == "bool" and not eq and (i >= len(argv) or argv[i].startswith("--")):
            out += [name, "true"]
        elif kind == "list":
            values = [value] if eq else []
            while not eq and i < len(argv) and not argv[i].startswith("--"):
                values.append(argv[i])
                i += 1
            if name not in lists:
                lists[name] = []
                out += [name, name]  # placeholder for the JSON list
            for v in values:  # a JSON list, or comma-separated items
                lists[name] += json.loads(v) if v.lstrip().startswith("[") else [x for x in v.split(",") if x]
        else:
            out += [name + eq + value]
    for name, values in lists.items():
        out[out.index(name) + 1] = json.dumps(values)
    return out


def one_line(message: str, parser: Any) -> str:
    """A jsonargparse error as one line that names the flag, with a suggestion for an unknown one."""
    from ultracram.settings import describe, suggest

    options = [o for a in parser._actions for o in a.option_strings if o.startswith("--")]
    if m := re.match(r"unrecognized arguments: (.*)", message, re.S):
        flags = [t for t in m[1].split() if t.startswith("-")]
        if flags:
            return "; ".join(f"unknown flag {f.partition('=')[0]}{suggest(f.partition('=')[0], options)}"
                             for f in flags)  # fmt: skip
        return f"unexpected argument(s): {m[1].strip()} (every setting is a --flag; see --help)"
    if m := re.match(r'Parser key "([^"]+)":(.*)', message, re.S):
        key = m[1]
        action = next((a for a in parser._actions if f"--{key}" in a.option_strings), None)
        given = re.search(r"Given value: (.*)", m[2]) or re.search(r"Got value: (.*)", m[2])
        hint = getattr(action, "_typehint", None)
        expected = describe(hint) if hint is not None else "another value"
        shown = given[1].strip() if given else ""
        detail = " ".join(line.strip() for line in m[2].strip().splitlines()[:1])
        return f"--{key}: expected {expected}, got {shown!r}" if given else f"--{key}: {detail}"
    return " ".join(line.strip() for line in message.strip().splitlines())
