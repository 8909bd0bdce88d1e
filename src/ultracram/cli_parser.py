"""How one command's parser is built and run (``ultracram.cli`` holds the table of commands).

jsonargparse builds the parser from the command function's typed signature and docstring
(``Args:``) and from the field docstrings of the settings dataclasses it takes. A parameter
named ``settings`` whose type is a dataclass is flattened: its fields are the command's
top-level flags (``ultracram pretrain --lr 1e-3``); other dataclass parameters are groups
of dotted flags (``--finetune.lr 2e-5``).

Besides jsonargparse's own syntax the command line accepts, for every command:

- ``--max-batch`` for ``--max_batch`` (hyphens in flag names);
- a bare boolean flag (``--compile``) for ``--compile true``, and ``--no-compile`` for
  ``--compile false``;
- the items of one entry of a dict of dicts add up (``--per_task.rte.epochs 10
  --per_task.rte.lr 1e-5``: both), where jsonargparse would keep the last;
- a list flag takes several values (``--input a.txt b.txt``), comma-separated items
  (``--models bert-tiny,fnet-tiny``) or a JSON list, and may be repeated
  (``--checkpoint a --checkpoint b``): the items add up, replacing the default.

Every ``--config FILE`` is checked before jsonargparse reads it, so that one error lists
every unknown key, wrong type and bad value of the file (jsonargparse stops at the first),
and jsonargparse's own errors become one line that names the flag.
"""

from __future__ import annotations

import dataclasses
import inspect
import json
import re
import types
import typing
from pathlib import Path
from typing import Any

import yaml

from ultracram import cli_compat


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
        raise UsageError(
            f"--config {path}: {where}not valid YAML or JSON: {getattr(e, 'problem', e)}"
        ) from None
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
    """'bool', 'list', 'dict' or '' for a jsonargparse action, by its type hint."""
    hint = getattr(action, "_typehint", None)
    if hint is None:
        return ""
    union = typing.get_origin(hint) in (typing.Union, types.UnionType)
    options = [a for a in typing.get_args(hint) if a is not type(None)] if union else [hint]
    if options == [bool]:
        return "bool"
    if all(typing.get_origin(o) is dict or o is dict for o in options):
        return "dict"
    if all(typing.get_origin(o) in (list, tuple) for o in options):
        return "list"
    return ""


def normalise(argv: list[str], parser: Any, command: str) -> list[str]:
    """``argv`` in jsonargparse's syntax (see the module docstring), deprecated forms replaced."""
    argv = cli_compat.deprecated(argv, command)
    actions = {opt: a for a in parser._actions for opt in a.option_strings}
    out: list[str] = []
    lists: dict[str, list[str]] = {}  # list flag -> its values, given once where it first appeared
    nested: dict[str, dict[str, Any]] = {}  # --per_task.rte -> the items of --per_task.rte.KEY flags
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
        head, _, rest = name.partition(".")
        if name not in actions and _kind(actions.get(head)) == "dict" and "." in rest:
            # --per_task.rte.epochs 10 --per_task.rte.lr 1e-5: jsonargparse would keep only the
            # last item of rte, so the items of one entry are given together, as one object.
            entry, _, key = name.rpartition(".")
            value = value if eq else (argv[i] if i < len(argv) else "")
            i += 0 if eq else 1
            if entry not in nested:
                nested[entry] = {}
                out += [entry, entry]  # placeholder for the JSON object
            nested[entry][key] = yaml.safe_load(value) if value else value
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
    for name, values in [*lists.items(), *nested.items()]:
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


def settings_class(fn: Any) -> type | None:
    """The dataclass of ``fn``'s ``settings`` parameter, whose fields become top-level flags."""
    if "settings" not in inspect.signature(fn).parameters:
        return None
    cls = typing.get_type_hints(fn)["settings"]
    return cls if dataclasses.is_dataclass(cls) else None


def build_parser(used: list[str], fn: Any) -> Any:
    """The jsonargparse parser of one command, from ``fn``'s signature and docstrings."""
    from jsonargparse import ArgumentParser, DefaultHelpFormatter, set_parsing_settings

    class Formatter(DefaultHelpFormatter):
        def _fill_text(self, text: str, width: int, indent: str) -> str:  # keep the paragraphs
            return "\n\n".join(
                super(Formatter, self)._fill_text(p, width, indent) for p in text.split("\n\n")
            )

    set_parsing_settings(docstring_parse_attribute_docstrings=True)
    doc = (fn.__doc__ or "").strip()
    parser = ArgumentParser(prog=" ".join(["ultracram", *used]), description=doc.split("Args:")[0].strip().replace("``", ""),
                            exit_on_error=False, env_prefix="ULTRACRAM", default_env=False,
                            formatter_class=Formatter, allow_abbrev=False)  # fmt: skip
    parser.add_argument("--config", action="config",
                        help="YAML or JSON file of these settings (the keys of --print_config); flags given after it override it")  # fmt: skip
    cls = settings_class(fn)
    if cls is not None:
        parser.add_class_arguments(cls, None, fail_untyped=True, sub_configs=True)
    parser.add_function_arguments(fn, None, skip={"settings"} if cls else None, fail_untyped=True)
    for item in [*parser._actions, *parser._action_groups]:  # docstrings' ``code`` reads as code in help
        for attr in ("help", "description", "title"):
            if isinstance(getattr(item, attr, None), str):
                setattr(item, attr, getattr(item, attr).replace("``", ""))
    return parser


def run_command(used: list[str], fn: Any, argv: list[str]) -> Any:
    """Parse ``argv`` for ``fn`` and call it."""
    parser = build_parser(used, fn)
    argv = normalise(argv, parser, " ".join(used))
    cls = settings_class(fn)
    check_config_files(argv, fn, cls)
    printing = [a for a in argv if a.partition("=")[0] == "--print_config"]
    if printing:
        # Check the values as the run would (the settings' own checks) before printing, so that
        # a configuration --print_config shows is one the command accepts; then print and exit.
        parse_values(parser, [a for a in argv if a not in printing], cls)
    return fn(**parse_values(parser, argv, cls))


def parse_values(parser: Any, argv: list[str], cls: type | None) -> dict[str, Any]:
    """``fn``'s keyword arguments from ``argv``: the settings dataclass built (its checks run)."""
    try:
        cfg = parser.parse_args(argv)
        values = parser.instantiate(cfg).as_dict()
    except Exception as e:  # jsonargparse's ArgumentError, or a settings dataclass's own check
        from ultracram.settings import SettingsError

        if isinstance(e, SettingsError):
            raise
        raise UsageError(one_line(str(e), parser)) from e
    for key in ("config", "print_config", "__path__"):
        values.pop(key, None)
    if cls is not None:
        names = {f.name for f in dataclasses.fields(cls)}
        values["settings"] = cls(**{k: values.pop(k) for k in list(values) if k in names})
    return values
