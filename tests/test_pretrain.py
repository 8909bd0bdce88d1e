"""Pretraining on Fabric: exact resume after SIGKILL, DDP == one process, health rollback,
config and CLI errors. Tiny model, tiny shards from the embedded sample, CPU."""

import dataclasses
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from conftest import pretrain_flags, tiny_shards
from ultracram.config import ConfigError

mlm = pytest.importorskip("ultracram.data.mlm")
if not hasattr(mlm, "mlm_batch"):
    pytest.skip("ultracram.data.mlm.mlm_batch not there yet", allow_module_level=True)

from ultracram.train.pretrain import FaultInjection, PretrainConfig, PretrainError, pretrain  # noqa: E402

# A model small enough that a step takes milliseconds; the crammed recipe and code paths are the real ones.
TINY = {"hidden_size": 32, "num_heads": 2, "intermediate_size": 64, "num_layers": 1, "pooler_size": 32}
ROOT = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "OMP_NUM_THREADS": "1",
       "PYTHONPATH": os.pathsep.join(p for p in (str(ROOT / "src"), os.environ.get("PYTHONPATH")) if p)}  # fmt: skip


@pytest.fixture(scope="module")
def shards(tmp_path_factory) -> Path:
    """~400 sequences of 32 tokens, vocabulary 512, from the embedded Wikipedia sample."""
    return tiny_shards(tmp_path_factory.mktemp("pretrain-data"), paragraphs=1500)


def _config(shards: Path, out: Path, **changes) -> PretrainConfig:
    values = dict(preset="crammed-bert-tiny", data=str(shards), out=str(out), budget="6000-tokens",
                  micro_batch_size=4, batch_size=8, batch_ramp_until=0.5, log_every_steps=1, progress=False,
                  tensorboard=False, val_batches=1, peak_flops=1e9, model=TINY)  # fmt: skip
    return PretrainConfig(**{**values, **changes})


def _cli_args(config: PretrainConfig) -> list[str]:
    return pretrain_flags(config.to_dict())


def _run_cli(args: list[str], timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "ultracram", "pretrain", *args], env=ENV, cwd=ROOT,
                          capture_output=True, text=True, timeout=timeout)  # fmt: skip


def _weights(run: Path) -> dict[str, torch.Tensor]:
    return load_file(str(run / "final" / "model.safetensors"))


def _losses(run: Path) -> list[float]:
    from ultracram.train.metrics import read_metrics

    return [r["loss"] for r in read_metrics(run / "metrics.csv")]


@pytest.fixture
def one_thread():
    """Bitwise comparisons between this process and a subprocess need the same thread count."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def test_sigkill_and_resume_is_bitwise_identical(shards, tmp_path, one_thread):
    full = _config(shards, tmp_path / "full", checkpoint_every_steps=3)
    killed = _config(shards, tmp_path / "killed", checkpoint_every_steps=3)
    steps = pretrain(full)["steps"]
    assert steps > 12
    # The killed run SIGKILLs itself after step 11: its newest state is step 9, two steps are lost.
    script = (
        "import os, signal\n"
        "from ultracram.train.pretrain import FaultInjection, PretrainConfig, pretrain\n"
        f"config = PretrainConfig(**{killed.to_dict()!r})\n"
        "def kill(step):\n"
        "    if step == 11: os.kill(os.getpid(), signal.SIGKILL)\n"
        "pretrain(config, faults=FaultInjection(after_step=kill))\n"
    )
    r = subprocess.run([sys.executable, "-c", script], env=ENV, cwd=ROOT, capture_output=True, text=True,
                       timeout=300)  # fmt: skip
    assert r.returncode == -9, r.stderr
    assert not (tmp_path / "killed" / "final").exists()
    assert (
        sorted(p.name for p in (tmp_path / "killed" / "states").iterdir())[-1]
        == "state-000000009.safetensors"
    )
    assert pretrain(killed, resume=True)["steps"] == steps
    a, b = _weights(tmp_path / "full"), _weights(tmp_path / "killed")
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k  # bitwise
    # The metrics CSV of the resumed run describes one trajectory, identical to the full run's.
    assert _losses(tmp_path / "killed") == _losses(tmp_path / "full")


def test_ddp_two_cpu_processes_match_one_process(shards, tmp_path):
    common = dict(budget="5-steps", batch_size=64, batch_ramp_until=0.5, accelerator="cpu", val_batches=3)
    # Same global batch and micro batch (4), with the batch ramp on (8 micro batches, then 16):
    # one process accumulates 8 then 16 micro batches, two processes 4 then 8 each.
    one = _config(shards, tmp_path / "one", micro_batch_size=4, devices="1", **common)
    two = _config(shards, tmp_path / "two", micro_batch_size=4, devices="2", strategy="ddp", **common)
    pretrain(one)
    r = _run_cli(_cli_args(two))  # Fabric's launcher starts the second process
    assert r.returncode == 0, r.stderr
    a, b = _losses(tmp_path / "one"), _losses(tmp_path / "two")
    assert len(a) == len(b) == 5
    assert max(abs(x - y) for x, y in zip(a, b)) < 1e-5, (a, b)
    assert a[-1] < a[0]
    from ultracram.train.metrics import read_metrics

    sizes = [
        [int(r["batch_size"]) for r in read_metrics(tmp_path / d / "metrics.csv")] for d in ("one", "two")
    ]
    assert sizes[0] == sizes[1] and sizes[0][0] < sizes[0][-1] == 64, sizes  # the ramp, identical
    summaries = [json.loads((tmp_path / d / "summary.json").read_text()) for d in ("one", "two")]
    assert summaries[1]["devices"] == 2
    # Validation covers the same val_batches micro batches however many devices share them.
    assert abs(summaries[0]["val_loss"] - summaries[1]["val_loss"]) < 1e-5, summaries


def test_nan_gradient_is_rolled_back_and_recovered(shards, tmp_path):
    config = _config(shards, tmp_path / "run", budget="12-steps", checkpoint_every_steps=4, nan_lr_factor=0.5)
    pretrain(_config(shards, tmp_path / "clean", budget="12-steps"))
    summary = pretrain(config, faults=FaultInjection(nan_grad_steps={6}))  # the 7th step
    assert summary["recoveries"] == 1 and summary["steps"] == 12
    assert math.isfinite(summary["final_loss"]) and summary["final_loss"] < summary["first_loss"]
    weights = _weights(tmp_path / "run")
    assert all(torch.isfinite(t).all() for t in weights.values())
    from ultracram.train.metrics import read_metrics

    rows = read_metrics(tmp_path / "run" / "metrics.csv")
    clean_rows = read_metrics(tmp_path / "clean" / "metrics.csv")
    # Steps before the rollback point are untouched; after it, the learning rate is halved.
    assert [r["loss"] for r in rows[:4]] == [r["loss"] for r in clean_rows[:4]]
    assert rows[-1]["step"] == 12
    after = [r for r in rows if r["step"] > 4]
    clean_after = {r["step"]: r["lr"] for r in clean_rows}
    assert all(r["lr"] == pytest.approx(0.5 * clean_after[r["step"]]) for r in after)


def test_always_nan_loss_stops_with_a_clear_message(shards, tmp_path):
    config = _config(shards, tmp_path / "run", budget="10-steps", max_recoveries=2)
    with pytest.raises(PretrainError, match=r"training diverged: loss nan.*max_recoveries is 2") as e:
        pretrain(config, faults=FaultInjection(always_nan_loss=True))
    assert "--resume --lr" in str(e.value)
    assert "--precision 32-true" not in str(e.value)  # CPU: already fp32
    assert (tmp_path / "run" / "diverged.txt").read_text().startswith("training diverged")


def test_outputs_and_final_checkpoint(shards, tmp_path):
    from ultracram.checkpoint import load_checkpoint

    summary = pretrain(_config(shards, tmp_path / "run", budget="8-steps", preset="ultrafastbert-tiny",
                               model={**TINY, "fff_depth": 2}, tensorboard=True, batch_size=64))  # fmt: skip
    run = tmp_path / "run"
    for name in ("metrics.csv", "loss_curve.png", "summary.json", "pretrain_config.json", "tensorboard"):
        assert (run / name).exists(), name
    model = load_checkpoint(run / "final")
    assert model.config.vocab_size == 512 and model.config.ffn == "fff"
    assert summary["steps"] == 8 and math.isfinite(summary["val_loss"])
    assert summary["status"] == "ok" and json.loads((run / "summary.json").read_text())["status"] == "ok"
    # The batch ramp grows the batch by accumulation, in steps of 8 micro batches of 4: 32
    # sequences first, 64 at the end.
    from ultracram.train.metrics import read_metrics

    sizes = [r["batch_size"] for r in read_metrics(run / "metrics.csv")]
    assert sizes[0] == 32 and sizes[-1] == 64


def test_doctor_monitor_reports_live_findings(shards, tmp_path):
    from ultracram.doctor.monitors import Monitor

    model = {**TINY, "fff_depth": 2}
    pretrain(_config(shards, tmp_path / "ok", budget="8-steps", preset="ultrafastbert-tiny", model=model,
                     monitor_every=2), monitor=Monitor)  # fmt: skip
    summary = json.loads((tmp_path / "ok" / "monitor.json").read_text())
    assert summary["steps"] == 8
    usage = next(iter(summary["fff"].values()))
    assert usage["tokens_routed"] > 0 and usage["leaves_total"] == 4
    # A learning rate 300x too high: the monitor names the update/weight ratio at once.
    pretrain(_config(shards, tmp_path / "hot", budget="8-steps", preset="ultrafastbert-tiny", model=model,
                     monitor_every=2, lr=0.3, lr_start=0.99), monitor=Monitor)  # fmt: skip
    findings = [json.loads(line) for line in (tmp_path / "hot" / "monitor.jsonl").read_text().splitlines()]
    assert any(f["kind"] == "update_ratio_high" for f in findings), findings


def test_refuses_to_overwrite_or_resume_nothing(shards, tmp_path):
    with pytest.raises(PretrainError, match="no training state"):
        pretrain(_config(shards, tmp_path / "run", budget="1-steps"), resume=True)
    pretrain(_config(shards, tmp_path / "run", budget="1-steps"))
    with pytest.raises(PretrainError, match="pass --resume"):
        pretrain(_config(shards, tmp_path / "run", budget="1-steps"))


def test_config_errors_are_listed_together(tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text(
        json.dumps({"lr": "high", "micro_batch": 2, "budget": "forever", "model": {"num_layerz": 1}})
    )
    r = _run_cli(["--config", str(bad), "--data", "x"], timeout=60)
    assert r.returncode == 1
    for fragment in (str(bad), "4 problems", "unknown key 'micro_batch' (did you mean 'micro_batch_size'?)",
                     "lr: expected a number (or null), got 'high'", "budget: cannot parse",
                     "model: unknown key 'num_layerz'"):  # fmt: skip
        assert fragment in r.stderr, r.stderr
    assert "Traceback" not in r.stderr
    with pytest.raises(ConfigError, match="mask_rate"):
        PretrainConfig.from_dict({"mask_rate": 1.5})


def test_batch_plan_fits_the_budget():
    from ultracram.train.plan import FEW_STEPS, MIN_STEPS, plan_batch
    from ultracram.train.pretrain_config import parse_budget

    common = dict(recipe_batch=8192, explicit=False, micro_batch=128, world=1, seq_len=128, ramp_until=0.6)
    # 3 minutes at 0.36 s per micro batch: 500 micro batches = 64,000 sequences; (1 + 0.6) x 64,000 / 200 = 512.
    short = plan_batch(parse_budget("3m"), data_sequences=100_000, micro_seconds=0.36, **common)
    assert short.batch_size == 512 and short.steps == pytest.approx(MIN_STEPS, rel=0.01)
    # A day keeps the recipe's batch, and a token budget needs no probe.
    assert (
        plan_batch(parse_budget("24h"), data_sequences=10**9, micro_seconds=0.36, **common).batch_size == 8192
    )
    tokens = plan_batch(parse_budget("10M-tokens"), data_sequences=10**9, micro_seconds=None, **common)
    assert tokens.batch_size == int(1.6 * 10e6 / 128 / MIN_STEPS) // 128 * 128
    # Never more than the data holds (one pass per step), never less than one micro batch per device.
    assert (
        plan_batch(parse_budget("24h"), data_sequences=5065, micro_seconds=0.36, **common).batch_size == 4992
    )
    tiny = plan_batch(parse_budget("10s"), data_sequences=10**6, micro_seconds=1.0, **{**common, "world": 2})
    assert tiny.batch_size == 256 and tiny.steps < FEW_STEPS and "hardly train" in tiny.warning()
    # An explicit batch is kept; a step budget keeps the recipe's.
    assert plan_batch(parse_budget("3m"), data_sequences=10**6, micro_seconds=0.36,
                      **{**common, "explicit": True}).batch_size == 8192  # fmt: skip
    assert (
        plan_batch(parse_budget("300-steps"), data_sequences=10**6, micro_seconds=None, **common).batch_size
        == 8192
    )


def test_time_budget_is_a_hard_limit_with_a_slow_step(shards, tmp_path):
    """Each micro batch takes >= 0.15 s (a slow device); the budget of 3 s ends within about one
    micro batch, the batch came from the plan, and the summary says by how much it ran over."""
    import time as clock

    slow = FaultInjection()
    slow.hooks = lambda step: {"loss_hook": lambda loss: (clock.sleep(0.15), loss)[1]}
    config = _config(shards, tmp_path / "run", budget="3s", batch_size=None, batch_ramp_until=None,
                     log_every_steps=None)  # fmt: skip
    summary = pretrain(config, faults=slow)
    assert 0.0 <= summary["overrun_s"] <= 1.5 * summary["micro_seconds"], summary  # about one micro batch
    assert summary["steps"] >= 2 and summary["batch_size"] < 8192  # fitted, not cramming's 8192
    stored = json.loads((tmp_path / "run" / "pretrain_config.json").read_text())
    assert stored["batch_size"] == summary["batch_size"]
    rows = (tmp_path / "run" / "metrics.csv").read_text().splitlines()
    assert len(rows) - 1 == summary["steps"]  # a short run logs every step
    # Resumed with a longer budget, the run keeps the batch its plan chose (no new probe, no mismatch).
    resumed = pretrain(dataclasses.replace(config, budget="4s"), resume=True, faults=slow)
    assert resumed["batch_size"] == summary["batch_size"]
    assert 0.0 <= resumed["overrun_s"] <= 1.5 * resumed["micro_seconds"], resumed


def test_ctrl_c_leaves_a_state_and_one_line_that_resumes_it(shards, tmp_path, monkeypatch, capsys):
    from ultracram import cli
    from ultracram.train import pretrain as module

    config = _config(shards, tmp_path / "run", checkpoint_every_steps=2)
    real = module.pretrain

    def interrupted_at_step_3(config, **kwargs):
        def stop(step):
            if step == 3:
                raise KeyboardInterrupt

        return real(config, **kwargs, faults=FaultInjection(after_step=stop))

    monkeypatch.setattr(module, "pretrain", interrupted_at_step_3)
    assert cli.main(["pretrain", *_cli_args(config)]) == 130
    [line] = capsys.readouterr().err.strip().splitlines()
    state = tmp_path / "run" / "states"
    assert "interrupted: the newest training state is" in line and str(state) in line and "(step 2)" in line
    command = line.split("continue with: ")[1].split()
    assert command[:2] == ["ultracram", "pretrain"] and command[-1] == "--resume"
    monkeypatch.setattr(module, "pretrain", real)
    assert cli.main(command[1:]) == 0  # the printed command continues the run to its budget
    assert json.loads((tmp_path / "run" / "summary.json").read_text())["tokens"] >= 6000


def test_initial_checkpoint_holds_the_weights_pretraining_starts_from(shards, tmp_path):
    """The no-pretraining control: ``save_initial_checkpoint`` writes the weights of the run's
    step-0 state (same preset, overrides, vocabulary and seed) with the shards' tokenizer."""
    from ultracram.checkpoint import load_checkpoint
    from ultracram.train.pretrain import save_initial_checkpoint
    from ultracram.train.state import list_states, load_train_state, state_step

    config = _config(shards, tmp_path / "run", budget="1-steps", keep_last=10, seed=3)
    pretrain(config)
    first = list_states(tmp_path / "run" / "states")[0]
    assert state_step(first) == 0
    step0 = load_train_state(first)["model"]
    rng = torch.get_rng_state()
    path = save_initial_checkpoint(config, tmp_path / "init")
    assert torch.equal(torch.get_rng_state(), rng)  # the caller's random state is untouched
    init = load_checkpoint(path)
    weights = init.state_dict()
    assert step0.keys() <= weights.keys()
    assert all(torch.equal(step0[k], weights[k]) for k in step0)
    assert (tmp_path / "init" / "tokenizer.json").read_bytes() == (shards / "tokenizer.json").read_bytes()
    other = load_checkpoint(save_initial_checkpoint(dataclasses.replace(config, seed=4), tmp_path / "init4"))
    assert not all(torch.equal(v, weights[k]) for k, v in other.state_dict().items())  # the seed matters
