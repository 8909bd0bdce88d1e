"""The FFF speed benchmarks (issue 6) on tiny sizes: they check outputs and report ratios."""

import json
import subprocess
import sys
from pathlib import Path

from ultracram.bench.fff import bench_ffn_layers, bench_model, time_calls
from ultracram.cli import main


def test_bench_ffn_checks_outputs_and_writes_json_and_plot(tmp_path):
    report = bench_ffn_layers(tokens=(1, 5), threads=[1], depth=3, hidden=64, min_time=0.0,
                              out=tmp_path / "ffn.json", plot=tmp_path / "ffn.png")  # fmt: skip
    assert report["all_outputs_match"]
    assert {c["path"] for c in report["checks"]} == {"gather", "cpu"}
    assert {r["path"] for r in report["results"]} == {"masked", "gather", "cpu", "dense", "glu"}
    assert report["config"]["dense_width"] == 15
    saved = json.loads((tmp_path / "ffn.json").read_text())
    assert len(saved["ratios"]) == 2
    for row in saved["ratios"]:
        dense = next(r for r in saved["results"] if r["path"] == "dense" and r["tokens"] == row["tokens"])
        cpu = next(r for r in saved["results"] if r["path"] == "cpu" and r["tokens"] == row["tokens"])
        assert abs(row["cpu_vs_dense"] - dense["min_s"] / cpu["min_s"]) < 1e-9
    assert (tmp_path / "ffn.png").read_bytes()[:4] == b"\x89PNG"
    assert set(saved["load"]) == {"before", "after", "cores", "other_cores", "busy", "warning"}


def test_bench_model_on_tiny_presets(tmp_path):
    report = bench_model(batches=(2,), seq_len=16, threads=[1], preset="ultrafastbert-tiny",
                         baseline="crammed-bert-tiny", min_time=0.0, out=tmp_path / "model.json")  # fmt: skip
    (check,) = report["checks"]
    assert check["max_relative_error"] <= 1e-5 and check["tokens_off"] == 0
    (row,) = report["ratios"]
    assert row["fast_vs_masked"] > 0 and "fast_vs_crammed-bert-tiny" in row
    assert {r["model"] for r in report["results"]} == {"fff_fast", "fff_masked", "crammed-bert-tiny"}
    assert report["load"]["cores"] >= 1 and "warning" in report["load"]


def test_time_calls_interleaves_and_batches_fast_calls():
    order = []
    times = time_calls({"a": lambda: order.append("a"), "b": lambda: order.append("b")}, min_time=0.0)
    assert set(times) == {"a", "b"}
    for t in times.values():
        assert t["rounds"] == 3 and 0 < t["min_s"] <= t["median_s"]
    assert order.count("a") > 6  # microsecond calls are timed many per batch
    last_a = len(order) - 1 - order[::-1].index("a")
    assert "b" in order[:last_a]  # rounds alternate between the calls


def test_time_calls_rotates_the_order_when_asked():
    def calls(order):
        return {k: (lambda k=k: order.append(k)) for k in "abc"}

    def round_starts(order):  # each call is repeated in a batch (~1 ms): one letter per batch
        return [k for i, k in enumerate(order) if i == 0 or order[i - 1] != k]

    fixed, turning = [], []
    time_calls(calls(fixed), min_time=0.0)
    time_calls(calls(turning), min_time=0.0, rotate=True)
    # After the warm-up and batch sizing (a, b, c once each), three rounds of three batches.
    assert round_starts(fixed)[-9:] == list("abcabcabc")
    assert round_starts(turning)[-9:] == list("abcbcacab")


def test_cli_bench_ffn_quick_flags(tmp_path):
    out = tmp_path / "ffn.json"
    args = ["bench", "ffn", "--tokens", "3", "--threads", "1", "--depth", "2", "--min_time", "0",
            "--out", str(out), "--plot", str(tmp_path / "ffn.png")]  # fmt: skip
    assert main(args) == 0
    assert json.loads(out.read_text())["all_outputs_match"]


def test_ffn_cache_states_script_prints_one_row_per_predecessor():
    script = Path(__file__).parents[1] / "scripts" / "ffn_cache_states.py"
    run = subprocess.run([sys.executable, str(script), "--tokens", "8", "--min-time", "0"],
                         capture_output=True, text=True, timeout=300, check=True)  # fmt: skip
    rows = [line for line in run.stdout.splitlines() if line.startswith("| ") and line.endswith("x |")]
    assert len(rows) == 4, run.stdout
    assert all(float(row.split("|")[-2].strip().rstrip("x")) > 0 for row in rows)
