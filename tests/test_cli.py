"""The command line: one generated parser per command (jsonargparse over typed signatures and
settings dataclasses), config files, --print_config, dotted overrides, errors, old forms."""

import importlib
import inspect
import json
import shlex
import subprocess
import sys

import pytest
import yaml

from ultracram import cli, cli_parser
from ultracram.cli import COMMANDS, main


def _commands(table=COMMANDS, prefix=()):
    for name, entry in table.items():
        if isinstance(entry, dict):
            yield from _commands(entry, (*prefix, name))
        else:
            yield (*prefix, name), entry


COMMAND_PATHS = [path for path, _ in _commands()]


@pytest.mark.parametrize("path", COMMAND_PATHS, ids=" ".join)
def test_every_command_explains_itself(path, capsys):
    target, summary = dict(_commands())[path]
    fn = cli.load(target)
    # The overview's line is the function's own summary, so the two cannot drift apart.
    assert inspect.getdoc(fn).splitlines()[0] == summary
    assert main([*path, "--help"]) == 0
    text = capsys.readouterr().out
    assert text.startswith(f"usage: ultracram {' '.join(path)}")
    assert "--config CONFIG" in text and "--print_config" in text
    parser = cli_parser.build_parser(list(path), fn)
    for action in parser._actions:  # every flag says what it is for
        if (
            action.option_strings[0].startswith("--")
            and action.help is not None
            and action.help != "==SUPPRESS=="
        ):
            assert action.help.strip() and not action.help.startswith("(type:"), action.option_strings


@pytest.mark.parametrize("group", ["bench", "data", "tokenizer", "explain"])
def test_groups_list_their_commands(group, capsys):
    assert main([group, "--help"]) == 0
    out = capsys.readouterr().out
    assert all(name in out for name in COMMANDS[group])


def test_top_level_help_is_instant_and_does_not_import_torch():
    code = "import sys; from ultracram.cli import main; main(['--help']); assert 'torch' not in sys.modules, 'torch'"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert "pretrain" in out.stdout and "study" in out.stdout


def test_models_json(capsys):
    assert main(["models", "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    by_name = {r["preset"]: r for r in rows}
    assert by_name["bert-base"]["total"] == 109_514_298
    assert by_name["ultrafastbert-1x11"]["gflops_per_token"] < by_name["crammed-bert"]["gflops_per_token"]


def _print_config(argv, capsys) -> dict:
    assert main([*argv, "--print_config"]) == 0
    return yaml.safe_load(capsys.readouterr().out)


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["nope"], "ultracram: error: unknown command 'nope'"),
        (["bench", "fnn"], "ultracram bench: error: unknown command 'fnn' (did you mean 'ffn'?)"),
        (["models", "--bogus"], "unknown flag --bogus"),
        (["pretrain", "--lrr", "1e-3"], "unknown flag --lrr (did you mean '--lr'?)"),
        (
            ["glue", "--checkpoint", "c", "--glue_dir", "g", "--finetune.lrr", "1"],
            "unknown flag --finetune.lrr (did you mean '--finetune.lr'?)",
        ),
        (["pretrain", "--lr", "abc"], "--lr: expected float | None, got 'abc'"),
        (["pretrain", "--micro_batch_size", "2.5"], "--micro_batch_size: expected int, got '2.5'"),
        (["pretrain", "--recipe", "adam"], "--recipe"),
    ],
)
def test_bad_flags_are_one_line_with_a_suggestion(argv, message, capsys):
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and "\n" not in err and "Traceback" not in err


def test_unknown_nested_key_and_bad_values_are_listed_together(capsys):
    argv = ["pretrain", "--data", "x", "--model.num_layer", "3", "--lr", "-1", "--model.mask_rate", "2"]
    assert main(argv) == 1
    err = capsys.readouterr().err
    assert "model: unknown key 'num_layer' (did you mean 'num_layers'?)" in err
    assert "lr: must be > 0" in err and "mask_rate: must be in (0, 1)" in err
    argv = shlex.split("glue --checkpoint c --glue_dir g --per_task.rtee.epochs 3 --per_task.rte.epoch 3")
    assert main(argv) == 1
    err = capsys.readouterr().err
    assert "unknown task 'rtee' in per-task settings (did you mean 'rte'?)" in err
    assert "rte: unknown key 'epoch' (did you mean 'epochs'?)" in err


def test_config_file_then_flags_and_print_config_round_trip(tmp_path, capsys):
    path = tmp_path / "run.yaml"
    path.write_text(yaml.safe_dump({"preset": "crammed-bert-tiny", "budget": "5m", "lr": 1e-3,
                                    "model": {"num_layers": 1}}))  # fmt: skip
    first = _print_config(["pretrain", "--lr", "9e-4", "--config", str(path), "--micro_batch_size", "8",
                           "--model.fff_depth", "3"], capsys)  # fmt: skip
    # The file overrides the flags before it; the flags after it override the file.
    assert (first["lr"], first["budget"], first["micro_batch_size"]) == (1e-3, "5m", 8)
    assert first["model"] == {"num_layers": 1, "fff_depth": 3}
    saved = tmp_path / "printed.yaml"
    saved.write_text(yaml.safe_dump(first))
    assert _print_config(["pretrain", "--config", str(saved)], capsys) == first
    # A run's recorded settings (JSON, recipe resolved) load the same way: `--config RUN/pretrain_config.json`.
    from ultracram.train.pretrain_config import PretrainConfig, resolve_recipe

    recorded = resolve_recipe(
        PretrainConfig(preset="ultrafastbert-tiny", budget="3-steps", model={"fff_depth": 2})
    )
    (tmp_path / "pretrain_config.json").write_text(json.dumps(recorded.to_dict()))
    again = _print_config(["pretrain", "--config", str(tmp_path / "pretrain_config.json")], capsys)
    assert PretrainConfig(**{k: v for k, v in again.items() if k != "resume"}) == recorded


@pytest.mark.parametrize(
    "argv",
    [
        shlex.split(
            "glue --checkpoint a=c1 --checkpoint c2 --glue_dir g --protocol bert --finetune.lr 2e-5 --per_task.rte.epochs 10"
        ),
        shlex.split("study --models crammed-bert-tiny,fnet-tiny --pretrain.budget 2m --finetune.epochs 2"),
        shlex.split("doctor --preset bert-tiny --model.num_layers 1 --only labels --only masking"),
        ["data", "prepare", "--input", "a.txt", "b.txt", "--tokenizer", "t.json", "--out", "s"],
        ["bench", "ffn", "--tokens", "1,64", "--quick"],
    ],
    ids=["glue", "study", "doctor", "data-prepare", "bench-ffn"],
)
def test_print_config_round_trips_for_every_settings_command(argv, tmp_path, capsys):
    printed = _print_config(argv, capsys)
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(printed))
    command = [w for w in argv if not w.startswith("-")][: 2 if argv[0] in ("data", "bench") else 1]
    assert _print_config([*command, "--config", str(path)], capsys) == printed


def test_list_flags_repeat_and_split_and_old_forms_still_work(capsys):
    c = _print_config(["glue", "--checkpoint", "a=c1", "--checkpoint", "c2", "--glue-dir", "g", "--set",
                       "rte.epochs=10", "--set", "lr=2e-5", "--epochs", "3"], capsys)  # fmt: skip
    assert c["checkpoint"] == ["a=c1", "c2"] and c["glue_dir"] == ["g"]
    assert (
        c["per_task"] == {"rte": {"epochs": 10}}
        and c["finetune"]["lr"] == 2e-5
        and c["finetune"]["epochs"] == 3
    )
    c = _print_config(["pretrain", "--micro-batch-size", "8", "--compile", "--no-progress", "--model",
                       '{"num_layers": 2}'], capsys)  # fmt: skip
    assert (c["micro_batch_size"], c["compile"], c["progress"], c["model"]) == (
        8,
        True,
        False,
        {"num_layers": 2},
    )
    c = _print_config(["glue", "--checkpoint", "c", "--glue_dir", "g", "--per_task.rte.epochs", "10",
                       "--per_task.rte.lr", "1e-5", "--per_task.sst2.lr", "2e-5"], capsys)  # fmt: skip
    assert c["per_task"] == {"rte": {"epochs": 10, "lr": 1e-5}, "sst2": {"lr": 2e-5}}  # all items kept
    c = _print_config(["doctor", "--set", "num_layers=1", "--set", "lr=1e-3"], capsys)
    assert c["model"] == {"num_layers": 1} and c["lr"] == 1e-3
    c = _print_config(["study", "--models", "bert-tiny", "--budget", "90s", "--batch-size", "recipe"], capsys)
    assert (
        c["models"] == ["bert-tiny"]
        and c["pretrain"]["budget"] == "90s"
        and c["pretrain"]["batch_size"] is None
    )


def test_deprecated_forms_say_what_replaces_them(capsys):
    assert (
        main(["glue", "--checkpoint", "c", "--glue_dir", "g", "--set", "rte.epochs=10", "--print_config"])
        == 0
    )
    assert main(["import", "--from", "src", "--out", "o", "--print_config"]) == 0
    err = capsys.readouterr().err
    assert "--set rte.epochs=10 is deprecated" in err and "--per_task.rte.epochs 10" in err
    assert "--from is deprecated" in err and "--source" in err


def test_errors_are_one_line_unless_debug_and_ctrl_c_says_what_is_kept(tmp_path, capsys, monkeypatch):
    from ultracram.errors import UltracramError

    args = [
        "pretrain",
        "--data",
        str(tmp_path / "nope"),
        "--out",
        str(tmp_path / "run"),
        "--budget",
        "1-steps",
    ]
    assert cli.main(args) == 1
    err = capsys.readouterr().err
    assert err.startswith("ultracram pretrain: error: ") and "nope" in err and "Traceback" not in err
    with pytest.raises(
        UltracramError, match=r"no manifest\.json"
    ):  # --debug: the exception, with its traceback
        cli.main(["--debug", *args])

    def interrupted(json: bool = False) -> None:
        """list model presets with parameter counts and FLOPs per token

        Args:
            json: as JSON.
        """
        raise KeyboardInterrupt

    monkeypatch.setattr(cli, "load", lambda target: interrupted)
    assert cli.main(["models"]) == 130
    assert "ultracram models: interrupted: files already written are kept" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("argv", "target", "said"),
    [
        (
            ["glue", "--checkpoint", "c", "--glue_dir", "g", "--out", "o"],
            "ultracram.train.finetune.run_glue",
            "finished runs and each unfinished run's newest training state are kept in o; the same command resumes",
        ),
        (
            ["study", "--out", "s"],
            "ultracram.study.run_study",
            "finished models, the shards and each model's newest pretraining and GLUE states are kept in s",
        ),
        (
            ["data", "prepare", "--input", "a", "--tokenizer", "t", "--out", "d"],
            "ultracram.data.corpus.prepare_corpus",
            "the complete shards in d are kept; the same command resumes after the last of them",
        ),
    ],
    ids=["glue", "study", "data-prepare"],
)
def test_ctrl_c_says_what_was_kept_and_how_to_resume(argv, target, said, monkeypatch, capsys, tmp_path):
    """The command's own line (what it keeps is tested by the kill-and-resume tests of each stage)."""
    monkeypatch.chdir(tmp_path)
    module, _, name = target.rpartition(".")

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(importlib.import_module(module), name, interrupted)
    assert main(argv) == 130
    [line] = capsys.readouterr().err.strip().splitlines()
    command = " ".join(argv[: 2 if argv[0] == "data" else 1])
    assert line.startswith(f"ultracram {command}: interrupted: ") and said in line


@pytest.mark.parametrize(
    "argv, named",
    [
        (["pretrain", "--budget", "3x"], "budget"),
        (["study", "--seeds", "0"], "seeds"),
        (["glue", "--checkpoint", "c", "--glue_dir", "g", "--finetune.epochs", "-1"], "epochs"),
    ],
)
def test_print_config_refuses_values_the_run_refuses(argv, named, capsys):
    """A configuration --print_config shows is one the command accepts: a bad value is the run's
    one-line error (naming the key), and nothing is printed to stdout."""
    assert main([*argv, "--print_config"]) != 0
    out, err = capsys.readouterr()
    assert out == "" and named in err and "Traceback" not in err
