"""``ultracram selfcheck`` (scripts/gpu_check.sh): the CPU dry run of the prepared GPU check, so
the script cannot rot between GPU runs, and its failure handling."""

import json
import sys

import pytest

from ultracram import selfcheck


def _dry_run(tmp_path, only):
    report = selfcheck.run_steps(tmp_path, device="cpu", tiny=True, only=only, log=lambda m: None)
    bad = {k: v["error"] for k, v in report["steps"].items() if v["status"] != "ok"}
    assert not bad, {k: (e, (tmp_path / "logs" / f"{k}.log").read_text()[-2000:]) for k, e in bad.items()}
    assert list(report["steps"]) == only
    saved = json.loads((tmp_path / "selfcheck.json").read_text())
    assert saved["steps"].keys() == report["steps"].keys()
    summary = (tmp_path / "summary.md").read_text()
    assert all(f"| {name} | ok |" in summary for name in only)
    return report


def test_dry_run_environment_tests_and_benchmarks(tmp_path):
    report = _dry_run(tmp_path, ["env", "pytest", "ffn", "model", "fff-train"])
    figures = {k: v["figures"] for k, v in report["steps"].items()}
    assert figures["env"]["torch"] and "cuda_available" in figures["env"]
    assert figures["pytest"]["failures"] == 0 and figures["pytest"]["errors"] == 0
    assert figures["ffn"]["max_rel_error"] < 1e-5
    assert figures["model"]["max_rel_error"] < 1e-5
    assert figures["fff-train"]["ultrafastbert-1x5"]["max_rel_err"] < 1e-5
    assert (tmp_path / "ffn.png").is_file()


def test_dry_run_training_and_end_to_end(tmp_path):
    report = _dry_run(tmp_path, ["train", "e2e"])
    train = report["steps"]["train"]["figures"]
    assert set(train) == {
        "crammed-bert-tiny",
        "ultrafastbert-tiny [masked]",
        "ultrafastbert-tiny [conditional]",
    }
    assert all(row["batch"] == 4 for row in train.values())  # doubled from 2 up to --max-batch 4
    e2e = report["steps"]["e2e"]["figures"]
    assert e2e["killed_returncode"] == -9 and e2e["resume_bitwise"] is True
    assert 0.0 <= e2e["rte_accuracy"] <= 1.0
    assert {t["target"]: t["met"] for t in report["targets"]}["kill + resume gives the same weights"] is True


@pytest.mark.slow
def test_dry_run_compiled_training(tmp_path):
    report = _dry_run(tmp_path, ["train-compile"])
    assert report["steps"]["train-compile"]["figures"]["crammed-bert-tiny"]["tokens_per_s"] > 0


def test_a_failing_or_hanging_step_is_recorded_and_the_others_run(tmp_path, monkeypatch):
    def step(name, code, limit=30):
        return selfcheck.Step(
            name, limit, limit, lambda ctx: [sys.executable, "-c", code], lambda ctx: {"ran": True}
        )

    monkeypatch.setattr(selfcheck, "STEPS", [
        step("fails", "import sys; print('boom'); sys.exit(3)"),
        step("hangs", "import time; time.sleep(30)", limit=1),
        step("works", "print('fine')"),
    ])  # fmt: skip
    monkeypatch.setattr(selfcheck, "STEP_NAMES", ["fails", "hangs", "works"])
    report = selfcheck.run_steps(tmp_path, device="cpu", tiny=True, log=lambda m: None)
    steps = report["steps"]
    assert steps["fails"]["status"] == "failed" and steps["fails"]["error"] == "exit 3: boom"
    assert steps["hangs"]["status"] == "timeout" and steps["hangs"]["seconds"] < 10
    assert steps["works"]["status"] == "ok" and steps["works"]["figures"] == {"ran": True}
    assert (tmp_path / "logs" / "fails.log").read_text().strip() == "boom"
    with pytest.raises(ValueError, match="unknown selfcheck step"):
        selfcheck.run_selfcheck(tmp_path, device="cpu", only=["nope"])
