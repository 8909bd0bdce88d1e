"""``ultracram bench budget`` end to end on the embedded sample: one preset, budgets 0 and
4 steps, a rerun that skips the finished cells, and bad input refused before any work."""

import dataclasses
import json

import pytest

from ultracram.bench import budget as budget_module
from ultracram.bench.budget import BudgetError, BudgetSettings, run_budget
from ultracram.cli import main
from ultracram.data.sample import sample_corpus_path, sample_glue_dir
from ultracram.train.baselines import BOW, MAJORITY
from ultracram.train.finetune_settings import FinetuneSettings

TINY = BudgetSettings(
    corpus=[str(sample_corpus_path())], glue_dir=str(sample_glue_dir()), models=["crammed-bert-tiny"],
    budgets=["0", "4-steps"], protocol="sane", finetune=FinetuneSettings(epochs=1, max_train_examples=32),
    micro_batch_size=8, batch_size=8,
)  # fmt: skip


def test_budget_curve_end_to_end_and_rerun_skips_finished_cells(tmp_path):
    out = tmp_path / "budget"
    lines: list[str] = []
    report = run_budget(out, TINY, log=lines.append)
    assert any(
        line.startswith("cell 1/2 crammed-bert-tiny budget 0: writing the initial weights") for line in lines
    )
    assert any(
        line.startswith("cell 2/2 crammed-bert-tiny budget 4-steps: starting pretraining") for line in lines
    )

    saved = json.loads((out / "budget.json").read_text())
    assert saved["complete"] and saved["task"] == "sst2" and saved["metric"] == "accuracy"
    cells = {c["name"]: c for c in saved["cells"]}
    assert set(cells) == {"0", "4-steps"} and saved == json.loads(json.dumps(report))
    assert cells["0"]["pretrain"]["steps"] == 0 and cells["0"]["budget_kind"] is None
    assert (
        cells["4-steps"]["pretrain"]["steps"] == 4 and cells["4-steps"]["pretrain"]["tokens"] == 4 * 8 * 128
    )
    for c in cells.values():
        g = c["glue"]
        assert 0 <= g["ci"][0] <= g["score"] <= g["ci"][1] <= 1 and g["train_examples"] == 32
        assert set(g["vs"]) == {MAJORITY, BOW} and 0 <= g["vs"][BOW]["p_value"] <= 1
        # every cell scored on the same sequences and masks, near ln V for nearly untrained weights
        assert c["mlm_val"]["sequences"] == 256 and c["mlm_val"]["mask_rate"] == 0.15
        assert 0 < c["mlm_val"]["loss"] < 2 * saved["ln_vocab"]
    assert cells["0"]["mlm_val"]["masked_tokens"] == cells["4-steps"]["mlm_val"]["masked_tokens"]
    assert cells["4-steps"]["pretrain"]["load"]["cores"] >= 1
    for label in (MAJORITY, BOW):
        b = saved["baselines"][label]
        assert 0 <= b["ci"][0] <= b["score"] <= b["ci"][1] <= 1

    md = (out / "budget.md").read_text()
    assert "| crammed-bert-tiny | 0 | 0 | 0 |" in md and "| crammed-bert-tiny | 4-steps | 4 |" in md
    assert f"| {MAJORITY} |" in md and f"| {BOW} |" in md and "INCOMPLETE" not in md
    assert (out / "budget.png").read_bytes()[:4] == b"\x89PNG"

    cell0, cell1 = out / "crammed-bert-tiny" / "0", out / "crammed-bert-tiny" / "4-steps"
    kept = [cell0 / "result.json", cell0 / "initial" / "config.json", cell0 / "glue" / "results.json",
            cell1 / "result.json", cell1 / "pretrain" / "summary.json", cell1 / "pretrain_load.json",
            cell1 / "glue" / "results.json"]  # fmt: skip
    stamps = {p: p.stat().st_mtime_ns for p in kept}
    lines.clear()
    again = run_budget(out, TINY, log=lines.append)
    assert "cell 1/2 crammed-bert-tiny budget 0: finished in an earlier run, skipped" in lines
    assert "cell 2/2 crammed-bert-tiny budget 4-steps: finished in an earlier run, skipped" in lines
    assert {p: p.stat().st_mtime_ns for p in kept} == stamps
    assert again["cells"] == saved["cells"]

    # other fine-tuning settings in the same directory: refused, naming the difference
    with pytest.raises(BudgetError, match="seeds: 1 -> 2"):
        run_budget(out, dataclasses.replace(TINY, seeds=2), log=lambda _: None)


def test_bad_input_is_one_line_before_any_work(tmp_path, capsys):
    out = tmp_path / "bad"
    bad = dataclasses.replace(TINY, models=["crammed-bert-tinyy"], budgets=["5x", "0", "0m"], task="sst9",
                              corpus=[str(tmp_path / "missing.txt")], glue_dir=str(tmp_path / "no-glue"))  # fmt: skip
    with pytest.raises(BudgetError) as e:
        run_budget(out, bad, log=lambda _: None)
    message = str(e.value)
    assert "\n" not in message
    for part in (
        "crammed-bert-tinyy",
        "'5x'",
        "0 alone means no pretraining",
        "sst9",
        "missing.txt",
        "no-glue",
    ):
        assert part in message, part
    assert not out.exists()

    args = ["bench", "budget", "--corpus", str(sample_corpus_path()), "--glue_dir", str(sample_glue_dir()),
            "--out", str(out)]  # fmt: skip
    assert main([*args, "--budgets", "0,5m,300s"]) == 1
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "'5m' and '300s' are the same budget" in err
    assert main([*args, "--models", "nope"]) == 1
    assert "unknown" in capsys.readouterr().err and not out.exists()


def test_interrupt_says_the_same_command_resumes(tmp_path, monkeypatch, capsys):
    def interrupted(out, settings):
        raise KeyboardInterrupt

    monkeypatch.setattr(budget_module, "run_budget", interrupted)
    code = main(["bench", "budget", "--corpus", "c.txt", "--glue_dir", "g", "--out", str(tmp_path / "o")])
    assert code == 130 and "the same command resumes" in capsys.readouterr().err
