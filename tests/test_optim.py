"""Budget-driven schedules, the batch ramp, parameter groups and budget parsing."""

import pytest

from ultracram.model import build_model
from ultracram.train.optim import BudgetSchedule, accumulation_steps, parameter_groups
from ultracram.train.pretrain_config import PretrainConfig, PretrainError, parse_budget, resolve_recipe


def test_budget_triangle_matches_cramming():
    s = BudgetSchedule("budget-triangle", peak_at=0.75, start=0.25)
    assert s(0.0) == pytest.approx(0.25)
    assert s(0.375) == pytest.approx(0.625)  # halfway up
    assert s(0.75) == pytest.approx(1.0)
    assert s(0.875) == pytest.approx(0.5)  # halfway down
    assert s(1.0) == pytest.approx(0.0)
    values = [s(i / 100) for i in range(101)]
    peak = values.index(max(values))
    assert values[: peak + 1] == sorted(values[: peak + 1])
    assert values[peak:] == sorted(values[peak:], reverse=True)


def test_warmup_linear():
    s = BudgetSchedule("warmup-linear", peak_at=0.1)
    assert s(0.0) == 0.0 and s(0.05) == pytest.approx(0.5) and s(0.1) == pytest.approx(1.0)
    assert s(0.55) == pytest.approx(0.5) and s(1.0) == 0.0
    with pytest.raises(ValueError, match="unknown schedule"):
        BudgetSchedule("cosine")


def test_batch_ramp_reaches_target_at_ramp_end():
    target, micro = 8192, 128  # 64 micro batches at full size
    assert accumulation_steps(0.0, target, micro, 0.6) == 8  # the ramp moves in steps of 8 micro batches
    assert accumulation_steps(0.3, target, micro, 0.6) == 32
    assert accumulation_steps(0.6, target, micro, 0.6) == 64
    assert accumulation_steps(0.9, target, micro, 0.6) == 64
    assert accumulation_steps(0.1, target, micro, 0.0) == 64  # no ramp
    ramp = [accumulation_steps(f / 100, target, micro, 0.6) for f in range(101)]
    assert ramp == sorted(ramp)
    assert accumulation_steps(0.5, 100, 128, 0.6) == 1  # never below one micro batch
    # The same global batch on 1, 2, 4, 8 devices at every fraction (device-count invariance).
    for f in range(101):
        sizes = {w * accumulation_steps(f / 100, target, micro, 0.6, world=w) for w in (1, 2, 4, 8)}
        assert len(sizes) == 1, (f, sizes)


def test_no_decay_on_norms_biases_and_scalars():
    model = build_model("bert-tiny", "mlm")  # has biases, LayerNorms and tied embeddings
    decay, no_decay = parameter_groups(model, 0.01)
    assert decay["weight_decay"] == 0.01 and no_decay["weight_decay"] == 0.0
    names = {id(p): n for n, p in model.named_parameters()}
    assert all(p.ndim >= 2 for p in decay["params"])
    assert all(p.ndim < 2 for p in no_decay["params"])
    assert any("norm" in names[id(p)] for p in no_decay["params"])
    assert any(names[id(p)].endswith("bias") for p in no_decay["params"])
    assert len(decay["params"]) + len(no_decay["params"]) == len({id(p) for p in model.parameters()})
    crammed = build_model("crammed-bert-tiny", "mlm")
    _, no_decay = parameter_groups(crammed, 0.01)
    scale = crammed.encoder.embeddings.position.scale
    assert any(p is scale for p in no_decay["params"])


@pytest.mark.parametrize(
    "text, kind, amount",
    [("24h", "time", 86400), ("30m", "time", 1800), ("90s", "time", 90), ("1.5h", "time", 5400),
     ("50M-tokens", "tokens", 50e6), ("2e6 tokens", "tokens", 2e6), ("300-steps", "steps", 300),
     ("1.5k-steps", "steps", 1500)],
)  # fmt: skip
def test_parse_budget(text, kind, amount):
    b = parse_budget(text)
    assert b.kind == kind and b.amount == amount


@pytest.mark.parametrize(
    "text", ["", "24", "10 parsecs", "-5m", "0-steps", "1e999-steps", "1e999-tokens", "0.001-steps",
             "2.5-tokens", "9" * 400 + "h"],
)  # fmt: skip
def test_bad_budget(text):
    with pytest.raises(PretrainError, match="budget"):
        parse_budget(text)


def test_recipes():
    crammed = resolve_recipe(PretrainConfig(preset="ultrafastbert-1x11"))
    assert crammed.recipe == "cramming"
    assert (crammed.lr, crammed.beta2, crammed.eps, crammed.grad_clip) == (1e-3, 0.98, 1e-12, 0.5)
    assert (crammed.schedule, crammed.batch_size, crammed.batch_ramp_until) == ("budget-triangle", 8192, 0.6)
    bert = resolve_recipe(PretrainConfig(preset="bert-base", lr=5e-5))
    assert bert.recipe == "bert" and bert.lr == 5e-5 and bert.schedule == "warmup-linear"
