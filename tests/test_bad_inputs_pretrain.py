"""Bad input to ``ultracram pretrain``: one clear error naming the flag or file, no traceback,
non-zero exit, and every file that existed before is byte-identical afterwards (nothing is
written before the input is checked). Plus: the resume-changeable settings, divergence at the
end of a run, and the advice after too many recoveries. Tiny model and shards, CPU."""

import json
import math
import os
import shutil
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from conftest import pretrain_flags, tiny_shards

mlm = pytest.importorskip("ultracram.data.mlm")
if not hasattr(mlm, "mlm_batch"):
    pytest.skip("ultracram.data.mlm.mlm_batch not there yet", allow_module_level=True)

from ultracram.cli import main as cli_main  # noqa: E402
from ultracram.train.pretrain import FaultInjection, PretrainConfig, PretrainError, pretrain  # noqa: E402
from ultracram.train.pretrain_config import RESUME_CHANGEABLE, parse_budget  # noqa: E402

TINY = {"hidden_size": 32, "num_heads": 2, "intermediate_size": 64, "num_layers": 1, "pooler_size": 32}
BASE = dict(preset="crammed-bert-tiny", budget="2-steps", micro_batch_size=4, batch_size=4, batch_ramp_until=0.0,
            log_every_steps=1, progress=False, tensorboard=False, val_batches=1, peak_flops=1e9, accelerator="cpu",
            model=TINY)  # fmt: skip


@pytest.fixture(scope="module")
def made(tmp_path_factory) -> dict[str, Path]:
    """Tiny shards (vocabulary 512, 32-token sequences) and a finished 2-step run on them."""
    d = tmp_path_factory.mktemp("bad-inputs")
    tiny_shards(d, paragraphs=400)
    pretrain(PretrainConfig(**BASE, data=str(d / "shards"), out=str(d / "run")))
    return {"shards": d / "shards", "run": d / "run"}


def _args(data: Path, out: Path, **changes) -> list[str]:
    """Flags for BASE with ``changes``."""
    return pretrain_flags({**BASE, "data": str(data), "out": str(out), **changes})


def _snapshot(root: Path) -> dict[str, bytes | None]:
    """Every path under ``root``: a file's bytes, None for a directory."""
    return {
        str(p.relative_to(root)): (p.read_bytes() if p.is_file() else None) for p in sorted(root.rglob("*"))
    }


def _cli(args: list[str], capsys) -> tuple[int, str]:
    try:
        code = cli_main(["pretrain", *args])
    except SystemExit as e:  # argparse
        code = e.code if isinstance(e.code, int) else 1
    captured = capsys.readouterr()
    return code, captured.out + captured.err


# Each row: (id, build(tmp_path, made) -> argv, fragments the message must contain).
Build = Callable[[Path, dict], list[str]]


def _data(t: Path, m: dict) -> Path:
    shutil.copytree(m["shards"], t / "shards")
    return t / "shards"


def _run(t: Path, m: dict) -> Path:
    """A copy of the finished run, whose recorded data path is the module's shards."""
    shutil.copytree(m["run"], t / "run")
    return t / "run"


def _resume(**changes) -> Build:
    return lambda t, m: [*_args(m["shards"], _run(t, m), **changes), "--resume"]


def _flags(**changes) -> Build:
    return lambda t, m: _args(_data(t, m), t / "out", **changes)


def _config_file(text: str) -> Build:
    def build(t: Path, m: dict) -> list[str]:
        (t / "settings.json").write_text(text)
        return ["--config", str(t / "settings.json"), "--data", str(_data(t, m)), "--out", str(t / "out")]

    return build


def _out_below_a_file(t: Path, m: dict) -> list[str]:
    (t / "afile").write_text("not a directory\n")
    return _args(_data(t, m), t / "afile" / "run")


def _out_is_a_file(t: Path, m: dict) -> list[str]:
    (t / "out").write_text("not a directory\n")
    return _args(_data(t, m), t / "out")


def _vocab_too_small(t: Path, m: dict) -> list[str]:
    data = _data(t, m)
    manifest = json.loads((data / "manifest.json").read_text())
    manifest["vocab_size"] = 100  # the shards hold ids up to 511
    (data / "manifest.json").write_text(json.dumps(manifest))
    return _args(data, t / "out")


def _shard_modified(t: Path, m: dict) -> list[str]:
    data = _data(t, m)
    shard = data / "shard_00000.bin"
    raw = bytearray(shard.read_bytes())
    raw[0], raw[2] = raw[2], raw[0]  # two token ids swapped: still valid ids, other bytes
    shard.write_bytes(bytes(raw))
    return _args(data, t / "out")


def _other_data(t: Path, m: dict) -> list[str]:
    return [*_args(_data(t, m), _run(t, m)), "--resume"]


def _outputs_without_states(t: Path, m: dict) -> list[str]:
    run = _run(t, m)
    shutil.rmtree(run / "states")
    return _args(m["shards"], run)


ROWS: list[tuple[str, Build, tuple[str, ...]]] = [
    ("config-not-json", _config_file("{lr: 1"), ("settings.json", "line 1", "not valid YAML or JSON")),
    ("config-unknown-key", _config_file('{"learning_rate": 0.1}'), ("unknown key 'learning_rate'",)),
    ("config-missing", lambda t, m: ["--config", str(t / "nope.json"), "--data", "x"], ("nope.json",)),
    ("config-not-object", _config_file("[1, 2]"), ("settings.json", "an object of settings")),
    ("missing-data", lambda t, m: ["--out", str(t / "out")], ("--data",)),
    ("data-not-shards", lambda t, m: _args(t, t / "out"), ("manifest.json",)),
    ("data-typo", lambda t, m: _args(m["shards"].parent / "shardz", t / "out"), ("shardz", "did you mean 'shards'")),
    ("resume-without-state", lambda t, m: [*_args(_data(t, m), t / "out"), "--resume"], ("--resume", "no training state")),
    ("new-run-over-a-run", lambda t, m: _args(m["shards"], _run(t, m)), ("pass --resume",)),
    ("new-run-over-outputs", _outputs_without_states, ("metrics.csv", "another --out")),
    ("resume-other-seed", _resume(seed=1), ("--resume", "seed: 0 -> 1")),
    ("resume-other-model", _resume(model={**TINY, "num_layers": 2}), ("--resume", "model:")),
    ("resume-other-batch", _resume(batch_size=8, micro_batch_size=2), ("batch_size: 4 -> 8", "micro_batch_size")),
    ("resume-other-preset", _resume(preset="crammed-bert"), ("preset:",)),
    ("resume-other-recipe", _resume(weight_decay=0.1, grad_clip=2.0), ("weight_decay", "grad_clip")),
    ("resume-other-data", _other_data, ("data:",)),
    ("budget-infinite", _flags(budget="1e999-steps"), ("budget", "finite")),
    ("budget-fraction-of-a-step", _flags(budget="0.001-steps"), ("budget", "whole number")),
    ("budget-fraction-of-a-token", _flags(budget="2.5-tokens"), ("budget", "whole number")),
    ("log-every-0", _flags(log_every_steps=0), ("log_every_steps",)),
    ("devices-0", _flags(devices="0"), ("devices",)),
    ("num-nodes-0", _flags(num_nodes=0), ("num_nodes",)),
    ("out-below-a-file", _out_below_a_file, ("--out", "afile")),
    ("out-is-a-file", _out_is_a_file, ("--out", "not a directory")),
    ("token-ids-beyond-vocab", _vocab_too_small, ("shard_00000.bin", "token id", "vocabulary")),
    ("shard-modified-after-prepare", _shard_modified, ("shard_00000.bin", "sha256", "manifest.json")),
    ("negative-values", _flags(grad_clip=-1.0, weight_decay=-0.1, checkpoint_every_steps=-1, max_recoveries=-1),
     ("4 problems", "grad_clip", "weight_decay", "checkpoint_every_steps", "max_recoveries")),
    ("lr-nan", _flags(lr="nan"), ("--lr", "'nan'")),
    ("lr-nan-in-a-config-file", _config_file('{"lr": .nan, "budget": "forever", "model": {"num_layerz": 1}}'),
     ("3 problems", "lr: must be > 0", "budget: cannot parse", "model: unknown key 'num_layerz'")),
]  # fmt: skip


@pytest.mark.parametrize("build, fragments", [pytest.param(b, f, id=i) for i, b, f in ROWS])
def test_bad_input_is_one_line_and_writes_nothing(build, fragments, made, tmp_path, capsys):
    argv = build(tmp_path, made)
    before, shards_before = _snapshot(tmp_path), _snapshot(made["shards"])
    code, message = _cli(argv, capsys)
    assert code != 0, message
    assert "Traceback" not in message
    for fragment in fragments:
        assert fragment in message, (fragment, message)
    assert _snapshot(tmp_path) == before  # not a byte changed, nothing created
    assert _snapshot(made["shards"]) == shards_before


def test_resume_error_lists_every_difference_and_the_changeable_set(made, tmp_path, capsys):
    code, message = _cli(
        [*_args(made["shards"], _run(tmp_path, made), seed=3, mask_rate=0.2), "--resume"], capsys
    )
    assert code == 1
    assert "seed: 0 -> 3" in message and "mask_rate:" in message
    assert "budget" in message and "log_every_steps" in message  # what may change


def test_resume_may_change_the_budget_and_bookkeeping(made, tmp_path, capsys):
    run = _run(tmp_path, made)
    config_before = (run / "pretrain_config.json").read_bytes()
    changes = dict(budget="4-steps", log_every_steps=2, keep_last=2, val_batches=2, checkpoint_every_min=5.0)
    code, message = _cli([*_args(made["shards"], run, **changes), "--resume"], capsys)
    assert code == 0, message
    summary = json.loads((run / "summary.json").read_text())
    assert summary["steps"] == 4 and summary["status"] == "ok"
    assert (run / "pretrain_config.json").read_bytes() != config_before
    assert {"budget", "lr", "devices", "precision", "max_recoveries"} <= RESUME_CHANGEABLE
    assert (
        not {"seed", "data", "model", "preset", "batch_size", "micro_batch_size", "mask_rate"}
        & RESUME_CHANGEABLE
    )


def test_budget_parsing_rejects_non_finite_and_fractions():
    assert parse_budget("1.5k-steps").amount == 1500
    assert parse_budget("2e6 tokens").amount == 2_000_000
    for text in ("1e999-steps", "1e999-tokens", "0.001-steps", "0.5-tokens", "9" * 400 + "h"):
        with pytest.raises(PretrainError, match="budget"):
            parse_budget(text)


def test_a_diverging_run_says_so_and_exits_non_zero(made, tmp_path, capsys):
    out = tmp_path / "hot"
    code, message = _cli(_args(made["shards"], out, budget="6-steps", lr=300.0, grad_clip=0.0), capsys)
    summary = json.loads((out / "summary.json").read_text())
    assert summary["status"] == "diverged", summary
    assert summary["final_loss"] > summary["first_loss"]
    assert (out / "final").is_dir()  # written: nothing lost, but not silent either
    assert code == 1 and "diverged" in message and "Traceback" not in message


def test_after_max_recoveries_the_advice_works(made, tmp_path, capsys):
    # Non-finite gradients at the 3rd and 5th steps, a state after every step, one recovery
    # allowed: the run stops after step 4, whose state records 1 recovery and lr scale 0.5.
    run = tmp_path / "run"
    values = {**BASE, "budget": "6-steps", "max_recoveries": 1, "checkpoint_every_steps": 1}
    config = PretrainConfig(**values, data=str(made["shards"]), out=str(run))
    with pytest.raises(PretrainError, match="max_recoveries is 1") as e:
        pretrain(config, faults=FaultInjection(nan_grad_steps={2, 4}))
    message = str(e.value)
    assert "--resume --lr" in message and "(step 4)" in message
    assert "--precision 32-true" not in message  # already the precision on CPU
    lower = float(message.split("--resume --lr ")[1].split()[0].rstrip(","))
    assert lower == pytest.approx(1e-3 * 0.5 * 0.5)
    # The suggested command continues: the new lr applies, the recovery count starts again.
    code, out = _cli([*_args(made["shards"], run, **{**values, "lr": lower}), "--resume"], capsys)
    assert code == 0, out
    summary = json.loads((run / "summary.json").read_text())
    assert summary["steps"] == 6 and summary["recoveries"] == 0 and summary["status"] == "ok"
    from ultracram.train.metrics import read_metrics

    after = [r["lr"] for r in read_metrics(run / "metrics.csv") if r["step"] > 4]
    assert len(after) == 2 and all(0 < v <= lower for v in after)


def test_divergence_rule():
    from ultracram.train.metrics import divergence

    ln_v = math.log(32768)
    assert divergence(ln_v, ln_v - 2.0, ln_v) is None
    assert divergence(math.nan, math.nan, ln_v) is None  # nothing logged
    assert "above its start" in divergence(ln_v, 261_261.0, ln_v)
    assert "ln V" in divergence(300.0, 200.0, ln_v)  # started blown up, came down, still far off
    assert "validation" in divergence(ln_v, ln_v - 1, ln_v, val_loss=math.inf)
    assert divergence(ln_v, ln_v - 1, ln_v, val_loss=math.nan) is None


def test_shards_are_untouched_by_the_vocabulary_check(made):
    from ultracram.data.corpus import TokenShards
    from ultracram.train.pretrain import check_token_ids

    shards = TokenShards(made["shards"])
    check_token_ids(shards)  # ids < 512
    assert int(np.max(shards.get_rows(range(len(shards))))) < shards.vocab_size


@pytest.mark.skipif(not hasattr(os, "geteuid") or os.geteuid() == 0, reason="root may write anywhere")
def test_unwritable_out_is_refused_up_front(made, tmp_path, capsys):
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o500)
    try:
        code, message = _cli(_args(made["shards"], locked / "run"), capsys)
    finally:
        locked.chmod(0o700)
    assert code == 1 and "--out" in message and "not writable" in message
    assert not (locked / "run").exists()
