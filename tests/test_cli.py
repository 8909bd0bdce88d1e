import json
import subprocess
import sys

import pytest

from ultracram.cli import build_parser, main


def _subcommands(parser):
    for action in parser._actions:
        if action.__class__.__name__ == "_SubParsersAction":
            return action.choices
    return {}


def test_every_command_explains_itself(capsys):
    parser = build_parser()
    commands = _subcommands(parser)
    assert {"models", "study", "pretrain", "glue", "bench", "doctor"} <= set(commands)
    for name, sub in commands.items():
        text = sub.format_help()
        assert sub.description, f"`ultracram {name}` has no description"
        assert "usage: ultracram" in text
        for nested_name, nested in _subcommands(sub).items():
            assert nested.description, f"`ultracram {name} {nested_name}` has no description"


def test_models_json(capsys):
    assert main(["models", "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    by_name = {r["preset"]: r for r in rows}
    assert by_name["bert-base"]["total"] == 109_514_298
    assert by_name["ultrafastbert-1x11"]["gflops_per_token"] < by_name["crammed-bert"]["gflops_per_token"]


def test_console_script_runs():
    out = subprocess.run([sys.executable, "-m", "ultracram", "--help"], capture_output=True, text=True, check=True)
    assert "ultracram" in out.stdout


@pytest.mark.parametrize("argv", [["nope"], ["models", "--bogus"]])
def test_bad_arguments_exit_nonzero(argv):
    with pytest.raises(SystemExit) as e:
        main(argv)
    assert e.value.code == 2


def test_errors_are_one_line_unless_debug_and_ctrl_c_says_what_is_kept(tmp_path, capsys, monkeypatch):
    from ultracram import cli
    from ultracram.errors import DataError

    args = ["pretrain", "--data", str(tmp_path / "nope"), "--out", str(tmp_path / "run"), "--budget", "1-steps"]
    assert cli.main(args) == 1
    err = capsys.readouterr().err
    assert err.startswith("ultracram pretrain: error: ") and "nope" in err and "Traceback" not in err
    with pytest.raises(DataError):
        cli.main(["--debug", *args])

    def interrupted(_args):
        raise KeyboardInterrupt

    parser = cli.build_parser()
    ns = parser.parse_args(["models"])
    monkeypatch.setattr(cli, "build_parser", lambda: parser)
    monkeypatch.setattr(parser, "parse_args", lambda argv=None: ns)
    ns.func = interrupted
    assert cli.main(["models"]) == 130
    assert "interrupted. Files already written are kept" in capsys.readouterr().err
