"""The comparison study end to end on the embedded sample, killed after one model and resumed."""

import dataclasses
import json
import re
import shutil

import pytest
import torch

from ultracram.checkpoint import load_checkpoint
from ultracram.study import STUDY_PRETRAIN, StudyError, StudySettings, run_study
from ultracram.train.baselines import BOW, MAJORITY
from ultracram.train.finetune_settings import FinetuneSettings
from ultracram.train.mlm_eval import mlm_eval_batch

# protocol "sane": one run per task (the default, "fit", first runs a learning-rate grid).
SMALL = StudySettings(
    models=["crammed-bert-tiny", "ultrafastbert-tiny"], tasks="sst2", protocol="sane",
    pretrain=dataclasses.replace(STUDY_PRETRAIN, budget="4-steps", micro_batch_size=8, batch_size=8),
    finetune=FinetuneSettings(epochs=1, max_train_examples=32),
)  # fmt: skip
CONTROL = "crammed-bert-tiny (no pretraining)"


class Killed(Exception):
    pass


def _check_mlm_validation(out, model: str, result: dict) -> None:
    """The stored per-sequence losses are the model's own MLM loss on those masked sequences."""
    m = result["mlm_validation"]
    assert m["ci"][0] < m["loss"] < m["ci"][1] and m["sequences"] == len(m["loss_sum"]) == len(m["count"])
    assert m["loss"] == pytest.approx(sum(m["loss_sum"]) / sum(m["count"]))
    batch, _ = mlm_eval_batch(out / "shards")
    first = {k: v[:16] for k, v in batch.items()}
    with torch.inference_mode():
        own = load_checkpoint(out / "models" / model / "pretrain" / "final").eval()(**first).task_loss
    assert sum(m["loss_sum"][:16]) / sum(m["count"][:16]) == pytest.approx(float(own), rel=1e-4)


def test_killed_study_resumes_without_redoing_finished_models(tmp_path):
    out = tmp_path / "study"

    def kill_after_first(model):
        if model == "crammed-bert-tiny":
            raise Killed

    with pytest.raises(Killed):
        run_study(out, SMALL, after_model=kill_after_first, log=lambda _: None)
    first = out / "models" / "crammed-bert-tiny"
    stamps = {p: p.stat().st_mtime_ns for p in (first / "result.json", first / "pretrain" / "summary.json",
                                                 first / "glue" / "results.json", first / "init" / "config.json")}  # fmt: skip
    assert not (out / "models" / "ultrafastbert-tiny" / "result.json").exists()
    partial = (out / "report.md").read_text()  # written after each model, marked incomplete
    assert "INCOMPLETE: 1 of 2 models finished" in partial and "| crammed-bert-tiny |" in partial
    assert (
        f"| {CONTROL} |" in partial and f"| {MAJORITY} |" in partial and "What pretraining bought" in partial
    )

    # The control is fine-tuned in the same run_glue call: one results.json, one set of baselines.
    glue = json.loads((first / "glue" / "results.json").read_text())
    assert [e["label"] for e in glue["checkpoints"]] == ["crammed-bert-tiny", CONTROL]
    assert [b["label"] for b in glue["baselines"]] == [MAJORITY, BOW]
    result = json.loads((first / "result.json").read_text())
    control = result["control"]
    assert control["kind"] == "control" and control["tokens_seen"] == 0 and "SST-2" in control["glue"]
    assert control["glue_entry"]["path"] == str(first / "init")
    assert result["glue_entry"]["tasks"]["sst2"]["summary"]["dev"]["accuracy"]["ci"][0] is not None
    _check_mlm_validation(out, "crammed-bert-tiny", result)
    assert control["mlm_validation"]["inputs_sha256"] == result["mlm_validation"]["inputs_sha256"]

    lines = []
    md, page = run_study(out, SMALL, log=lines.append)
    assert "crammed-bert-tiny: finished in an earlier run, skipped" in lines
    assert not any(line.startswith("crammed-bert-tiny: starting pretraining") for line in lines)
    assert all(p.stat().st_mtime_ns == t for p, t in stamps.items())  # nothing of model 1 rewritten
    second = json.loads((out / "models" / "ultrafastbert-tiny" / "result.json").read_text())
    assert second["tokens_seen"] > 0 and "SST-2" in second["glue"] and second["fff_usage"]
    report = md.read_text()
    assert (
        "| crammed-bert-tiny |" in report
        and "| ultrafastbert-tiny |" in report
        and "INCOMPLETE" not in report
    )
    assert "the same number of optimizer steps" in report and "Load average during the timing" in report
    # Rows: model, its control, ..., then the baselines; every GLUE cell with its interval.
    table = [row for row in report.splitlines() if row.startswith("| ")]
    names = [row.split(" | ")[0][2:] for row in table[1:] if "[" in row]  # table[0]: the header
    assert names == ["crammed-bert-tiny", CONTROL, "ultrafastbert-tiny", "ultrafastbert-tiny (no pretraining)",
                     MAJORITY, BOW]  # fmt: skip
    assert re.search(r"\| ultrafastbert-tiny \| \d+\.\d \[\d+\.\d, \d+\.\d\] \|", report)
    m = second["mlm_validation"]
    assert f"| {m['loss']:.3f} [{m['ci'][0]:.3f}, {m['ci'][1]:.3f}] |" in report
    # The generated summary: against the baselines, between models, what pretraining bought, MLM loss.
    summary = report.split("## Summary")[1]
    assert "- SST-2: " in summary and "bag-of-words baseline" in summary
    assert "Between models" in summary and "crammed-bert-tiny and ultrafastbert-tiny" in summary
    assert "not corrected for multiple comparisons" in summary and "(no pretraining)" in summary
    assert "MLM validation loss: paired bootstrap over the same 256 sequences" in summary
    # Speed: every model timed in the same interleaved rounds; the table shows median (slowest-fastest).
    speed = json.loads((out / "speed.json").read_text())["cpu"]
    assert set(speed) == {"crammed-bert-tiny", "ultrafastbert-tiny"}
    for v in speed.values():
        assert v["rounds"] == 7 and v["slowest"] <= v["median"] <= v["fastest"]
    assert f"{speed['ultrafastbert-tiny']['median']:,.0f} (" in report
    assert (
        "data:image/png;base64," in page.read_text()
        and "ultrafastbert-tiny (no pretraining)" in page.read_text()
    )

    # A record without the git-ignored runs/ (their per-seed predictions) is named, not silently left out.
    shutil.rmtree(first / "glue" / "runs")
    report = run_study(out, SMALL, log=lambda _: None)[0].read_text()
    assert (
        "No per-example dev predictions for crammed-bert-tiny, crammed-bert-tiny (no pretraining) (" in report
    )
    assert "Between models" not in report and "What pretraining bought" in report  # ultrafastbert-tiny's kept

    with pytest.raises(StudyError, match="different settings"):
        run_study(
            out,
            dataclasses.replace(SMALL, pretrain=dataclasses.replace(SMALL.pretrain, budget="5-steps")),
            log=lambda _: None,
        )
