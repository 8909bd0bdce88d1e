"""One training engine: every loop calls ``engine.train_step``; the doctor's step and optimizer
are pretraining's; fine-tuning through the conditional FFF kernels equals the masked reference."""

import copy
from pathlib import Path

import pytest
import torch

from ultracram.config import get_preset
from ultracram.data.glue import TASKS, GlueSplit
from ultracram.data.mlm import mask_tokens
from ultracram.data.tokenizer import SPECIAL_TOKENS
from ultracram.doctor.setup import default_setup
from ultracram.model import build_model
from ultracram.model.dispatch import fff_implementations, set_fff_implementation
from ultracram.train import engine
from ultracram.train.optim import build_optimizer
from ultracram.train.pretrain_config import PretrainConfig, resolve_recipe


@pytest.fixture
def counted(monkeypatch):
    """Wrap ``engine.train_step``: every call is recorded, then runs the real step."""
    calls = []
    real = engine.train_step

    def wrapper(*args, **kwargs):
        calls.append(len(args[3]))  # micro batches of the step
        return real(*args, **kwargs)

    monkeypatch.setattr(engine, "train_step", wrapper)
    return calls


def _mlm_batch(config, batch=4, seq=32, seed=0):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(len(SPECIAL_TOKENS), config.vocab_size, (batch, seq), generator=g)
    masked, labels = mask_tokens(ids, config.mask_rate, mask_token_id=SPECIAL_TOKENS.index("[MASK]"),
                                 vocab_size=config.vocab_size, special_ids=list(range(len(SPECIAL_TOKENS))),
                                 generator=g)  # fmt: skip
    return {"input_ids": masked, "attention_mask": torch.ones_like(ids), "labels": labels}


@pytest.mark.parametrize(("preset", "recipe"), [("crammed-bert-tiny", "cramming"), ("bert-tiny", "bert")])
def test_doctor_optimizer_and_step_are_pretrainings(preset, recipe):
    setup = default_setup(preset, seq_len=32, batch_size=4)
    config = resolve_recipe(PretrainConfig(preset=preset))
    assert setup.recipe == config.recipe == recipe
    assert (setup.lr, setup.grad_clip) == (config.lr, config.grad_clip)
    model = setup.build_model()
    doctor_opt = setup.optimizer_factory(list(model.parameters()), setup.lr)
    pretrain_opt = build_optimizer(model, lr=config.lr, betas=(config.beta1, config.beta2), eps=config.eps,
                                   weight_decay=config.weight_decay)  # fmt: skip
    assert len(doctor_opt.param_groups) == len(pretrain_opt.param_groups) == 2  # decay / no decay
    for a, b in zip(doctor_opt.param_groups, pretrain_opt.param_groups, strict=True):
        assert [id(p) for p in a["params"]] == [id(p) for p in b["params"]]
        assert {k: v for k, v in a.items() if k != "params"} == {k: v for k, v in b.items() if k != "params"}

    # One step each from the same weights on the same batch: the doctor's step (its loss parts)
    # and pretraining's (the head's loss through engine.train_step) give the same weights.
    batch = setup.make_batch(0)
    twin = copy.deepcopy(model)
    torch.manual_seed(5)  # the same dropout masks (bert has dropout)
    setup.train_step(setup, model, doctor_opt, batch)
    fabric = engine.setup_fabric("cpu", 1, precision="32-true")
    opt = build_optimizer(twin, lr=config.lr, betas=(config.beta1, config.beta2), eps=config.eps,
                          weight_decay=config.weight_decay)  # fmt: skip
    data = {"input_ids": batch.input_ids, "attention_mask": batch.attention_mask, "labels": batch.labels}
    torch.manual_seed(5)
    engine.train_step(fabric, twin, opt, [data], grad_clip=config.grad_clip, lr=config.lr)
    for (name, p), q in zip(model.named_parameters(), twin.parameters(), strict=True):
        assert torch.equal(p, q), name


def test_head_loss_is_the_cross_entropy_once():
    """The MLM head reports the mean over its labelled count; the step logs exactly that."""
    config = get_preset("crammed-bert-tiny")
    torch.manual_seed(0)
    model = build_model(config, "mlm")
    batch = _mlm_batch(config)
    out = model(**batch)
    ref = torch.nn.functional.cross_entropy(out.logits.float(), out.labels, ignore_index=-100)
    assert torch.equal(out.task_loss, ref) and torch.equal(out.loss, ref)
    assert int(out.count) == int((batch["labels"] != -100).sum())
    fabric = engine.setup_fabric("cpu", 1, precision="32-true")
    opt = build_optimizer(model, lr=1e-3, betas=(0.9, 0.98), eps=1e-12, weight_decay=0.01)
    result = engine.train_step(fabric, model, opt, [batch, batch])  # two micro batches: the same mean
    assert result.finite and result.micro_batches == 2
    assert result.loss == pytest.approx(float(ref.detach()), rel=1e-6)


def test_non_finite_step_does_not_update():
    config = get_preset("crammed-bert-tiny")
    model = build_model(config, "mlm")
    before = {k: v.clone() for k, v in model.state_dict().items()}
    fabric = engine.setup_fabric("cpu", 1, precision="32-true")
    opt = build_optimizer(model, lr=1e-3, betas=(0.9, 0.98), eps=1e-12, weight_decay=0.01)
    result = engine.train_step(fabric, model, opt, [_mlm_batch(config)], grad_clip=0.5,
                               loss_hook=lambda loss: loss * float("nan"))  # fmt: skip
    assert not result.finite
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert all(p.grad is None for p in model.parameters())


def test_doctor_checks_run_the_engine_step(counted):
    from ultracram.doctor.checks import DoctorOptions, check_overfit

    setup = default_setup("crammed-bert-tiny", seq_len=32, batch_size=4)
    check_overfit(setup, DoctorOptions(overfit_steps=3))
    assert counted == [1, 1, 1]


def test_pretraining_runs_the_engine_step(counted, tmp_path):
    from ultracram.data.corpus import prepare_corpus
    from ultracram.data.sample import read_sample_paragraphs
    from ultracram.data.tokenizer import train_tokenizer
    from ultracram.train.pretrain import pretrain

    paragraphs = read_sample_paragraphs()[:300]
    train_tokenizer(paragraphs, vocab_size=256).save(str(tmp_path / "tokenizer.json"))
    (tmp_path / "text.txt").write_text("\n\n".join(paragraphs))
    prepare_corpus([tmp_path / "text.txt"], tmp_path / "shards", tmp_path / "tokenizer.json", seq_len=32,
                   workers=0, max_token_ratio=1.0)  # fmt: skip
    summary = pretrain(PretrainConfig(
        preset="crammed-bert-tiny", data=str(tmp_path / "shards"), out=str(tmp_path / "run"),
        budget="4-steps", micro_batch_size=4, batch_size=8, batch_ramp_until=0.0, progress=False,
        tensorboard=False, val_batches=1, peak_flops=1e9,
        model={"hidden_size": 32, "num_heads": 2, "intermediate_size": 64, "num_layers": 1, "pooler_size": 32},
    ))  # fmt: skip
    assert summary["steps"] == 4
    assert counted == [2, 2, 2, 2]  # every optimizer step, two micro batches of 4 each


def test_benchmarks_run_the_engine_step(counted, tmp_path):
    from ultracram.bench.fff_train import bench_model_step
    from ultracram.bench.train import bench_train

    bench_train(["crammed-bert-tiny"], steps=2, warmup=1, batch_size=2, seq_len=16, out=None, rounds=1)
    assert counted == [1, 1, 1]
    counted.clear()
    bench_model_step(layers=1, batch=1, seq=8, repeats=1, device=torch.device("cpu"))
    assert len(counted) == 4 * 2  # four models, a warm-up and one timed step each


def _tiny_checkpoint(tmp_path: Path) -> Path:
    from ultracram.checkpoint import save_checkpoint
    from ultracram.data.sample import read_sample_paragraphs
    from ultracram.data.tokenizer import train_tokenizer

    tok = train_tokenizer(read_sample_paragraphs()[:200], vocab_size=300)
    tok.save(str(tmp_path / "tokenizer.json"))
    config = get_preset("ultrafastbert-tiny", vocab_size=tok.get_vocab_size(), fff_depth=5)
    torch.manual_seed(0)
    return save_checkpoint(
        build_model(config, "mlm"), tmp_path / "ckpt", tokenizer_path=tmp_path / "tokenizer.json"
    )


def _sst2_slice(n: int) -> GlueSplit:
    g = torch.Generator().manual_seed(0)
    words = ["good", "bad", "film", "great", "awful", "plot", "the", "a", "boring", "fun"]
    texts = [" ".join(words[i] for i in torch.randint(10, (8,), generator=g).tolist()) for _ in range(n)]
    labels = [int(("good" in t) or ("great" in t) or ("fun" in t)) for t in texts]
    return GlueSplit(TASKS["sst2"], "train", texts, None, labels, "made by the test")


def test_finetuning_runs_the_engine_step_with_the_conditional_kernels(counted, tmp_path, monkeypatch):
    from ultracram.train import finetune

    chosen = []
    real_prepare = finetune.prepare

    def spy(fabric, model, optimizer, **kw):
        out = real_prepare(fabric, model, optimizer, **kw)
        chosen.append(fff_implementations(engine.raw_module(out[0])))
        return out

    monkeypatch.setattr(finetune, "prepare", spy)
    ckpt = _tiny_checkpoint(tmp_path)
    train = _sst2_slice(40)
    settings = finetune.resolve_settings([TASKS["sst2"]], "sane", {"epochs": 1, "batch_size": 8})["sst2"]
    result = finetune.finetune_run(ckpt, train, [train], settings, 0, tmp_path / "run")
    assert counted == [1] * result["steps"] == [1] * 5
    assert chosen == [["conditional"] * 2]  # depth 5 on CPU: auto -> the conditional kernels


def test_finetuning_through_conditional_equals_masked(tmp_path):
    """One fine-tuning step of a classifier: outputs, loss and every gradient of the
    conditional kernels equal the masked reference's."""
    from ultracram.checkpoint import load_checkpoint

    ckpt = _tiny_checkpoint(tmp_path)
    torch.manual_seed(1)
    ref = load_checkpoint(ckpt, task="classification", num_labels=2, config_overrides={"dropout": 0.0,
                          "attention_dropout": 0.0, "classifier_dropout": 0.0})  # fmt: skip
    with torch.no_grad():  # weights that route: outputs depend on the path taken
        for m in ref.modules():
            if hasattr(m, "linear_in") and hasattr(m, "depth"):
                m.linear_in.bias.normal_(0, 0.3)
    fast = copy.deepcopy(ref)
    set_fff_implementation(ref, "masked")
    set_fff_implementation(fast, "conditional")
    g = torch.Generator().manual_seed(0)
    batch = {
        "input_ids": torch.randint(5, 300, (6, 20), generator=g),
        "labels": torch.tensor([0, 1, 1, 0, 1, 0]),
    }
    outs = []
    for model in (ref, fast):
        out = model(**batch)
        out.loss.backward()
        outs.append(out)
    assert torch.allclose(outs[1].logits, outs[0].logits, atol=1e-5)
    for (name, p), q in zip(ref.named_parameters(), fast.parameters(), strict=True):
        scale = p.grad.abs().max().clamp_min(1e-12)
        assert (q.grad - p.grad).abs().max() <= 1e-5 * scale, name


def test_bench_finetune_smoke(tmp_path, counted):
    from ultracram.bench.finetune import bench_finetune

    r = bench_finetune("ultrafastbert-tiny", batch_size=2, seq_len=16, rounds=1, out=tmp_path / "f.json")
    by_path = {row["path"]: row for row in r["rows"]}
    assert by_path["auto"]["implementation"] == ["conditional"]
    assert by_path["masked"]["speedup_vs_masked"] == 1.0
    assert by_path["auto"]["first_loss_diff_vs_masked"] < 1e-5
    assert len(counted) == 2 * 2  # two paths: the compared first step and one timed round
    assert (tmp_path / "f.json").is_file()


def test_training_states_of_earlier_layouts_still_resume(tmp_path):
    """Pretraining states kept the lr scale under "schedule"; fine-tuning states kept "step" at
    the top with a LambdaLR "scheduler". Both load into the one layout."""
    from ultracram.train.state import capture_rng_state, save_train_state

    config = get_preset("crammed-bert-tiny")
    model = build_model(config, "mlm")
    opt = build_optimizer(model, lr=1e-3, betas=(0.9, 0.98), eps=1e-12, weight_decay=0.01)
    fabric = engine.setup_fabric("cpu", 1, precision="32-true")
    progress = {"step": 3, "micro_step": 6, "tokens": 99, "elapsed_s": 1.5, "lr_scale": 1.0, "recoveries": 1}
    old_pretrain = {"model": model.state_dict(), "optimizer": opt.state_dict(), "schedule": {"lr_scale": 0.25},
                    "progress": progress, "rng": capture_rng_state(), "config": {}}  # fmt: skip
    path = save_train_state(tmp_path / "p", 3, old_pretrain)
    assert engine.restore_state(fabric, path, model, opt) == {**progress, "lr_scale": 0.25}
    scheduler = torch.optim.lr_scheduler.LambdaLR(opt, lambda k: 1.0)
    old_finetune = {"model": model.state_dict(), "optimizer": opt.state_dict(), "scheduler": scheduler.state_dict(),
                    "step": 7, "rng": capture_rng_state()}  # fmt: skip
    path = save_train_state(tmp_path / "f", 7, old_finetune)
    assert engine.restore_state(fabric, path, model, opt) == {"step": 7}
    other = build_model(get_preset("crammed-bert-tiny", num_layers=1), "mlm")
    with pytest.raises(engine.TrainStateError, match="cannot resume from this training state"):
        engine.restore_state(fabric, path, other, build_optimizer(other, lr=1e-3, betas=(0.9, 0.98), eps=1e-12,
                                                                  weight_decay=0.01))  # fmt: skip


def test_a_rank_ends_when_its_launcher_is_killed(tmp_path):
    """``engine.end_with_parent`` (armed in every rank a launcher starts): the child of a
    SIGKILLed parent ends at once instead of waiting in a collective."""
    import os
    import signal
    import subprocess
    import sys
    import time

    armed = tmp_path / "armed"
    child_code = (
        "from ultracram.train.engine import end_with_parent; end_with_parent(); import time; "
        f"open({str(armed)!r}, 'w').write('1'); time.sleep(60)"
    )
    parent_code = (
        "import subprocess, sys, time\n"
        f"p = subprocess.Popen([sys.executable, '-c', {child_code!r}])\n"
        f"open({str(tmp_path / 'pid')!r}, 'w').write(str(p.pid))\n"
        "time.sleep(60)\n"
    )
    parent = subprocess.Popen([sys.executable, "-c", parent_code])
    deadline = time.time() + 60
    while not (tmp_path / "pid").exists() or not (tmp_path / "pid").read_text():
        assert time.time() < deadline
        time.sleep(0.1)
    child = int((tmp_path / "pid").read_text())
    while (
        not armed.exists()
    ):  # the child has imported ultracram (slow on a busy machine) and armed the signal
        assert time.time() < deadline
        time.sleep(0.1)
    os.kill(parent.pid, signal.SIGKILL)
    parent.wait()
    deadline = time.time() + 10
    while os.path.exists(f"/proc/{child}") and Path(f"/proc/{child}/stat").read_text().split()[2] != "Z":
        assert time.time() < deadline, "the child outlived its killed parent"
        time.sleep(0.2)
