"""The study report from synthetic results: table rows and cells, the generated summary, figures."""

import base64

import numpy as np

from ultracram.report.compare import DevSet
from ultracram.report.study_report import ModelResult, at_chance, summary, write_report
from ultracram.train.baselines import BOW, MAJORITY

LABELS = np.random.default_rng(3).integers(0, 2, size=200)
CURVE = [{"elapsed_s": 60.0 * i, "tokens": 1e5 * i, "loss": 8.0 - i} for i in range(4)]


def _test(diff: float, p: float) -> dict:
    return {"diff": diff, "low": diff - 0.05, "high": diff + 0.05, "p_value": p}


def _entry(label: str, values: list[float], ci, vs_majority=(0.0, 1.0), vs_bow=(0.0, 1.0), lr=None) -> dict:
    """A results.json entry with SST-2 only: per-seed accuracies, interval, tests against the baselines."""
    task = {"summary": {"dev": {"accuracy": {"median": float(np.median(values)), "values": values, "ci": ci}}},
            "vs_baselines": {"dev": {"seed": 0, "metric": "accuracy",
                                     "vs": {MAJORITY: _test(*vs_majority), BOW: _test(*vs_bow)}}}}  # fmt: skip
    if lr is not None:
        task["selection"] = {"metric": "accuracy", "holdout_examples": 100, "grid": [{"lr": lr, "score": 0.6}],
                             "chosen": {"lr": lr}}  # fmt: skip
    avg = 100 * float(np.median(values))
    return {"label": label, "tasks": {"sst2": task}, "average": {"value": avg, "covers": ["SST-2"]}}


def _row(name: str, entry: dict | None, kind: str = "model", **kw) -> ModelResult:
    glue = {"SST-2": entry["average"]["value"]} if entry else kw.pop("glue", {})
    return ModelResult(name, kw.pop("parameters", 344_449), kw.pop("flops", 3.6e5), glue=glue,
                       glue_average=glue.get("SST-2"), glue_average_covers=["SST-2"], kind=kind, glue_entry=entry,
                       protocol=kw.pop("protocol", "fit"), **kw)  # fmt: skip


def _mlm(loss_per_token: float) -> dict:
    counts = np.full(64, 30)
    sums = (loss_per_token + np.random.default_rng(0).normal(0, 0.3, 64)) * counts
    return {"loss": float(sums.sum() / counts.sum()), "ci": [loss_per_token - 0.1, loss_per_token + 0.1],
            "source": "validation split", "sequences": 64, "inputs_sha256": "same",
            "loss_sum": sums.tolist(), "count": counts.tolist()}  # fmt: skip


def _results() -> list[ModelResult]:
    """Two models at chance (identical predictions), a control wrong on 30% more, the baselines."""
    a = _entry("model-a", [0.9, 0.8, 0.85], [0.8, 0.9], vs_majority=(0.02, 0.4), vs_bow=(-0.01, 0.7), lr=5e-4)
    b = _entry("model-b", [0.85], [0.8, 0.9], vs_majority=(0.01, 0.6), vs_bow=(-0.02, 0.5), lr=1e-3)
    return [
        _row("model-a", a, tokens_seen=400_000, final_mlm_loss=5.0, cpu_tokens_per_s=1e5, curve=CURVE,
             mlm_validation=_mlm(5.0)),
        _row("model-a (no pretraining)", _entry("model-a (no pretraining)", [0.55], [0.5, 0.6]), kind="control",
             control_of="model-a", tokens_seen=0, mlm_validation=_mlm(8.3)),
        _row("model-b", b, tokens_seen=400_000, cpu_tokens_per_s=1.5e5, curve=CURVE, fff_usage=[[0.9], [0.5]],
             mlm_validation=_mlm(5.0)),
        _row(MAJORITY, _entry(MAJORITY, [0.52], [0.45, 0.59]), kind="baseline", parameters=None, flops=None,
             protocol="fixed recipe"),
    ]  # fmt: skip


def _dev() -> DevSet:
    same = np.where(np.arange(200) < 30, 1 - LABELS, LABELS)  # wrong on 15%
    worse = np.where(np.arange(200) < 90, 1 - LABELS, LABELS)  # wrong on 45%
    seeds = [same, same, same]
    return DevSet("SST-2", "sst2", "accuracy", LABELS,
                  {"model-a": seeds, "model-b": [same], "model-a (no pretraining)": [worse]})  # fmt: skip


def test_table_has_control_and_baseline_rows_with_intervals_and_seed_ranges(tmp_path):
    md, page = write_report(tmp_path, _results(), {"command": "ultracram study ..."}, [_dev()])
    text = md.read_text()
    assert "| model | SST-2 | GLUE avg | fine-tuning | params (M) |" in text
    assert "| model-a | 85.0 [80.0, 90.0] (seeds 80.0-90.0) | 85.0 [" in text  # median, interval, seed range
    assert "| fit (lr below) | 0.34 | 0.36 | 400,000 | 5.000 | 5.0" in text
    assert "| model-a (no pretraining) | 55.0 [50.0, 60.0] | 55.0 [" in text
    assert f"| {MAJORITY} | 52.0 [45.0, 59.0] | 52.0 | fixed recipe | - | - |" in text
    assert "| model-a | 0.0005 |" in text and "| model-b | 0.001 |" in text  # the lr the fit protocol chose
    h = page.read_text()
    assert "model-a (no pretraining)" in h and "[80.0, 90.0]" in h and "<strong>" in h


def test_lr_at_an_end_of_the_grid_is_marked_and_explained(tmp_path):
    """A chosen lr at the grid's end where the best held-out score is too may not be the best lr:
    the lr table marks it and says so; one inside the grid is not marked (and no note when none
    is at an end)."""
    from ultracram.train.glue_table import EDGE_NOTE, selection_edge

    grid = [{"lr": lr, "score": s} for lr, s in [(1e-3, 0.81), (2e-3, 0.80), (5e-3, 0.54), (1e-2, 0.54)]]
    assert selection_edge({"grid": grid, "chosen": {"lr": 1e-3}}) == "lowest"
    assert selection_edge({"grid": grid, "chosen": {"lr": 2e-3}}) is None
    assert selection_edge({"grid": grid[::-1], "chosen": {"lr": 1e-3}}) == "lowest"  # order of the runs
    # At an end but the best score inside (the one-standard-error rule's pick): not marked.
    assert selection_edge({"grid": grid, "chosen": {"lr": 1e-2}}) is None
    inside = [{"lr": 5e-4, "score": 0.80}, *grid]
    assert selection_edge({"grid": inside, "chosen": {"lr": 5e-4}}) is None
    rising = [{"lr": lr, "score": s} for lr, s in [(1e-3, 0.5), (2e-3, 0.6), (5e-3, 0.7), (1e-2, None)]]
    assert selection_edge({"grid": rising, "chosen": {"lr": 5e-3}}) is None  # the highest lr diverged
    assert selection_edge({"grid": rising[:3], "chosen": {"lr": 5e-3}}) == "highest"
    results = _results()
    results[0].glue_entry["tasks"]["sst2"]["selection"] = {"grid": grid, "chosen": {"lr": 1e-3}}
    text = write_report(tmp_path / "edge", results, {}, [_dev()])[0].read_text()
    assert "| model-a | 0.001 (lowest of grid) |" in text and "| model-b | 0.001 |" in text
    assert EDGE_NOTE in text
    assert EDGE_NOTE not in write_report(tmp_path / "inside", _results(), {}, [_dev()])[0].read_text()


def test_summary_says_not_distinguishable_beats_and_at_chance_in_bold():
    parts = dict(summary(_results(), [_dev()]))
    text = "\n".join(s for sentences in parts.values() for s in sentences)
    intros = "\n".join(parts)
    # Identical predictions: p = 1; across seeds, Welch's test is not defined with one seed on a side.
    assert "SST-2: model-a and model-b are not distinguishable (model-a - model-b: +0.0 points" in text
    assert "SST-2: model-a beats model-a (no pretraining) by 30.0 points (95% CI" in text
    assert "**On SST-2 every model is at chance: none is better than the majority class.**" in text
    assert (
        "**No model is better than both the bag-of-words baseline and the majority class on any task" in text
    )
    assert "docs/budget.md" in text
    assert (
        "SST-2: no checkpoint is distinguishable from the bag-of-words baseline" in text
    )  # comparison_sentences
    assert "not corrected for multiple comparisons" in intros and "What pretraining bought" in intros
    # Same MLM loss distribution, same noise: not distinguishable.
    assert "model-a and model-b are not distinguishable (model-a - model-b: +0.000" in text


def test_summary_names_the_better_model_and_the_real_mlm_difference():
    results = _results()
    better = ModelResult(**{**results[2].__dict__, "mlm_validation": _mlm(4.5)})
    dev = _dev()
    dev.predictions["model-b"] = [LABELS.copy()]  # right on every example
    text = "\n".join(
        s for _, sentences in summary([results[0], results[1], better], [dev]) for s in sentences
    )
    assert "SST-2: model-b beats model-a by 15.0 points" in text
    assert "No model is better than both" in text  # model-b's tests against the baselines say so
    beats_bow = _entry("model-b", [1.0], [0.98, 1.0], vs_majority=(0.3, 0.002), vs_bow=(0.05, 0.01))
    best = ModelResult(**{**better.__dict__, "glue_entry": beats_bow})
    text = "\n".join(s for _, sentences in summary([results[0], best], [dev]) for s in sentences)
    assert "No model is better than both" not in text
    at_chance_only = _entry("model-b", [1.0], [0.98, 1.0], vs_majority=(0.01, 0.6), vs_bow=(0.05, 0.01))
    text = "\n".join(
        s
        for _, sentences in summary(
            [results[0], ModelResult(**{**better.__dict__, "glue_entry": at_chance_only})], [dev]
        )
        for s in sentences
    )
    assert "No model is better than both" in text  # above the bag of words but not above chance: WNLI
    assert "model-b's MLM loss is lower than model-a's by 0.500" in text


def test_old_results_without_intervals_still_render(tmp_path):
    results = [
        ModelResult("crammed-bert-tiny", 344_449, 3.6e5, 400_000, 5.0, {"SST-2": 80.1, "CoLA": 10.0}, 45.1,
                    ["SST-2", "CoLA"], 1e5, None, CURVE),
        ModelResult("ultrafastbert-tiny", 311_551, 2.7e5, 400_000, 5.2, {"SST-2": 78.0}, None, [], 1.5e5, None,
                    CURVE, [[0.9], [0.5]]),
    ]  # fmt: skip
    md, page = write_report(tmp_path, results, {"command": "ultracram study ...", "notes_hidden": True})
    text = md.read_text()
    assert (
        "| crammed-bert-tiny | 80.1 | 10.0 | 45.1 | - | 0.34 | 0.36 | 400,000 | 5.000 | - | 100,000 | - |"
        in text
    )
    assert "| ultrafastbert-tiny | 78.0 | - | - |" in text  # missing scores print as '-'
    assert "## Summary" not in text  # nothing to compare without tests
    for name in ("loss.png", "quality_vs_cost.png", "fff_usage.png"):
        assert (tmp_path / "figures" / name).stat().st_size > 1000
    h = page.read_text()
    assert h.count("data:image/png;base64,") == 3 and "<img" in h and 'src="figures/' not in h
    first = h.split("data:image/png;base64,")[1].split('"')[0]
    assert base64.b64decode(first)[:8] == b"\x89PNG\r\n\x1a\n"
    assert "ultracram study ..." in text and "ultracram study ..." in h


def test_models_at_chance_are_hollow_in_the_figure_with_a_note(tmp_path):
    results = _results()
    assert at_chance(results[0]) is True and at_chance(ModelResult("old", 1, 1.0)) is None
    clear = _entry("model-b", [0.85], [0.8, 0.9], vs_majority=(0.3, 0.001))
    assert at_chance(ModelResult(**{**results[2].__dict__, "glue_entry": clear})) is False
    text = write_report(tmp_path, results, {}, [_dev()])[0].read_text()
    assert "Hollow grey: at chance" in text and "Error bars: 95% bootstrap interval" in text


def test_nothing_lead_only_when_no_test_says_something():
    """'no two models are distinguishable' leads a column only if neither the paired bootstrap
    nor Welch's test across seeds is significant for any pair."""
    from ultracram.report.compare import PairTest
    from ultracram.report.study_report import _column_sentence

    seeds = ((0.70, 0.71, 0.72), (0.60, 0.61, 0.62))
    quiet = PairTest("CoLA", "a", "b", 0.01, -0.02, 0.04, 0.5, *seeds, welch_p=0.4)
    across = PairTest("CoLA", "a", "c", 0.01, -0.02, 0.04, 0.5, *seeds, welch_p=0.01)
    assert _column_sentence("CoLA", [quiet, quiet], "nothing").startswith("CoLA: nothing: ")
    text = _column_sentence("CoLA", [quiet, across], "nothing")
    assert "nothing" not in text and text.endswith(", significant across seeds.")
