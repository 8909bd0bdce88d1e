"""The comparison study end to end on the embedded sample, killed after one model and resumed."""

import dataclasses
import json

import pytest

from ultracram.study import STUDY_PRETRAIN, StudyError, StudySettings, run_study
from ultracram.train.finetune_settings import FinetuneSettings

SMALL = StudySettings(
    models=["crammed-bert-tiny", "ultrafastbert-tiny"], tasks="sst2",
    pretrain=dataclasses.replace(STUDY_PRETRAIN, budget="4-steps", micro_batch_size=8, batch_size=8),
    finetune=FinetuneSettings(epochs=1, max_train_examples=32),
)  # fmt: skip


class Killed(Exception):
    pass


def test_killed_study_resumes_without_redoing_finished_models(tmp_path):
    out = tmp_path / "study"

    def kill_after_first(model):
        if model == "crammed-bert-tiny":
            raise Killed

    with pytest.raises(Killed):
        run_study(out, SMALL, after_model=kill_after_first, log=lambda _: None)
    first = out / "models" / "crammed-bert-tiny"
    stamps = {p: p.stat().st_mtime_ns for p in (first / "result.json", first / "pretrain" / "summary.json",
                                                 first / "glue" / "results.json")}  # fmt: skip
    assert not (out / "models" / "ultrafastbert-tiny" / "result.json").exists()
    partial = (out / "report.md").read_text()  # written after each model, marked incomplete
    assert "INCOMPLETE: 1 of 2 models finished" in partial and "| crammed-bert-tiny |" in partial

    lines = []
    md, page = run_study(out, SMALL, log=lines.append)
    assert "crammed-bert-tiny: finished in an earlier run, skipped" in lines
    assert not any(line.startswith("crammed-bert-tiny: starting pretraining") for line in lines)
    assert all(p.stat().st_mtime_ns == t for p, t in stamps.items())  # nothing of model 1 rewritten
    second = json.loads((out / "models" / "ultrafastbert-tiny" / "result.json").read_text())
    assert second["tokens_seen"] > 0 and "SST-2" in second["glue"] and second["fff_usage"]
    report = md.read_text()
    assert "| crammed-bert-tiny |" in report and "| ultrafastbert-tiny |" in report and "INCOMPLETE" not in report
    assert "the same number of optimizer steps" in report and "Load average during the timing" in report
    # Speed: every model timed in the same interleaved rounds; the table shows median (slowest-fastest).
    speed = json.loads((out / "speed.json").read_text())["cpu"]
    assert set(speed) == {"crammed-bert-tiny", "ultrafastbert-tiny"}
    for v in speed.values():
        assert v["rounds"] == 7 and v["slowest"] <= v["median"] <= v["fastest"]
    assert f"{speed['ultrafastbert-tiny']['median']:,.0f} (" in report
    assert "data:image/png;base64," in page.read_text()

    with pytest.raises(StudyError, match="different settings"):
        run_study(out, dataclasses.replace(SMALL, pretrain=dataclasses.replace(SMALL.pretrain, budget="5-steps")),
                  log=lambda _: None)
