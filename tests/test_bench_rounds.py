"""Speed benchmarks time every compared entry in interleaved, rotated rounds of one block, report
the median with the slowest and fastest round, and warn when the machine was busy."""

import json
import os

import pytest

from ultracram.bench import timing
from ultracram.bench.timing import (
    busy_warning,
    interleaved_rounds,
    load_report,
    machine_load,
    rotated,
    summarise,
)


def test_rounds_interleave_every_entry_in_a_rotated_order():
    calls = []

    def entry(name, seconds):
        def call():
            calls.append(name)
            return seconds

        return call

    times = interleaved_rounds({"a": entry("a", 1.0), "b": entry("b", 2.0), "c": entry("c", None)}, rounds=4)
    # Each round calls every entry once, starting one further along each time.
    assert calls == ["a", "b", "c", "b", "c", "a", "c", "a", "b", "a", "b", "c"]
    assert list(times) == ["a", "b", "c"]  # results in the entries' order, not the call order
    assert times["a"] == [1.0] * 4 and times["b"] == [2.0] * 4  # a returned time is used as is
    assert len(times["c"]) == 4 and all(0 <= t < 1 for t in times["c"])  # None: the call's wall clock
    assert rotated(["x", "y"], 3) == ["y", "x"] and rotated([], 2) == []


def test_summary_is_the_median_with_the_slowest_and_fastest_round():
    assert summarise([3.0, 1.0, 2.0, 10.0, 4.0]) == {"median": 3.0, "slowest": 10.0, "fastest": 1.0}
    assert summarise([2.0, 4.0])["median"] == 3.0
    with pytest.raises(ValueError):
        summarise([])


def test_a_busy_machine_gives_a_warning(monkeypatch):
    """Without /proc/stat: the load average decides."""
    monkeypatch.setattr(timing, "machine_cores", lambda: 8)
    monkeypatch.setattr(timing, "cpu_seconds", lambda: None)
    monkeypatch.setattr(os, "getloadavg", lambda: (1.0, 1.0, 1.0))
    quiet = machine_load()
    assert {k: quiet[k] for k in ("load_average", "cores", "cpu")} == {"load_average": [1.0, 1.0, 1.0], "cores": 8,
                                                                        "cpu": None}  # fmt: skip
    assert busy_warning(quiet, quiet) is None
    monkeypatch.setattr(os, "getloadavg", lambda: (4.5, 2.0, 1.0))  # over half of 8 cores
    busy = machine_load()
    warning = busy_warning(quiet, busy)
    assert warning and "busy" in warning and "4.5" in warning and "8 cores" in warning
    report = load_report(quiet, busy)
    assert report["busy"] and report["warning"] == warning
    assert report["before"] == [1.0, 1.0, 1.0] and report["after"] == [4.5, 2.0, 1.0]
    assert load_report(quiet, quiet)["warning"] is None
    assert busy_warning({"load_average": None, "cores": 8}, {"load_average": None, "cores": 8}) is None


def test_other_processes_decide_not_our_own_threads(monkeypatch):
    """With /proc/stat: the cores other processes kept busy decide, so a benchmark's own threads
    (a load average of 4.5 on 8 cores) give no warning, and other work over half the cores does."""
    monkeypatch.setattr(timing, "machine_cores", lambda: 8)
    monkeypatch.setattr(os, "getloadavg", lambda: (4.5, 2.0, 1.0))
    readings = iter(
        [(100.0, 10.0), (140.0, 48.0), (140.0, 48.0), (190.0, 50.0)]
    )  # (machine, this process) CPU s
    clock = iter([0.0, 10.0, 10.0, 20.0])
    monkeypatch.setattr(timing, "cpu_seconds", lambda: next(readings))
    monkeypatch.setattr(timing.time, "perf_counter", lambda: next(clock))
    a, b, c, d = (machine_load() for _ in range(4))
    assert timing.other_cores(a, b) == pytest.approx(0.2)  # 40 s busy, 38 of them ours, over 10 s
    assert busy_warning(a, b) is None
    assert timing.other_cores(c, d) == pytest.approx(4.8)  # 50 s busy, 2 ours
    warning = busy_warning(c, d)
    assert warning and "other processes kept 4.8 of 8 cores busy" in warning
    assert load_report(c, d)["other_cores"] == pytest.approx(4.8)


def test_bench_train_reports_medians_of_interleaved_rounds(tmp_path, monkeypatch, capsys):
    from ultracram.bench import train

    # The two tiny presets' entries, in rounds: record the order the timed units run in.
    order = []
    real = train._time_steps

    def recording(fabric, step, steps):
        order.append(step)
        return real(fabric, step, steps)

    monkeypatch.setattr(train, "_time_steps", recording)
    monkeypatch.setattr(timing, "machine_cores", lambda: 2)
    monkeypatch.setattr(os, "getloadavg", lambda: (5.0, 5.0, 5.0))  # busy: the warning appears
    monkeypatch.setattr(timing, "cpu_seconds", lambda: None)  # (the load average decides)
    report = train.bench_train(["crammed-bert-tiny", "ultrafastbert-tiny"], steps=1, warmup=1, rounds=2,
                               batch_size=2, seq_len=16, device="cpu", fff_paths="masked,conditional",
                               out=tmp_path / "train.json")  # fmt: skip
    assert report["rounds"] == 2 and len(order) == 3 * 2
    first, second = order[:3], order[3:]
    assert second == first[1:] + first[:1]  # the second round starts one entry further along
    for r in report["results"]:
        lo, hi = r["tokens_per_s_range"]
        assert len(r["seconds_per_step_rounds"]) == 2
        assert lo <= r["tokens_per_s"] <= hi
        assert r["tokens_per_s"] == pytest.approx(2 * 16 / r["seconds_per_step"])
        assert r["mfu"] == pytest.approx(r["flops_per_s"] / report["peak_flops"])
        assert not r["built_per_round"]
    rows = {r["fff_path"]: r for r in report["results"]}
    assert rows["conditional"]["vs_masked"] == pytest.approx(
        rows["conditional"]["tokens_per_s"] / rows["masked"]["tokens_per_s"]
    )
    assert report["load"]["before"] == [5.0, 5.0, 5.0] and report["load"]["busy"]
    saved = json.loads((tmp_path / "train.json").read_text())
    assert saved["load"]["warning"] == report["load"]["warning"]
    assert "machine busy" in capsys.readouterr().out.replace("\n", " ")


def test_a_full_size_preset_defaults_to_one_round_rebuilt_inside_it(monkeypatch):
    """--full (or any full-size preset) keeps the GPU check's time: one round unless asked, the
    model built inside the round (memory), its build left out of the time."""
    from ultracram.bench import train

    built = []
    monkeypatch.setattr(train, "_small", lambda name: name != "crammed-bert-tiny")  # a stand-in
    real = train._build
    monkeypatch.setattr(train, "_build", lambda *a, **k: built.append(a[1]) or real(*a, **k))
    report = train.bench_train(["crammed-bert-tiny"], steps=1, warmup=0, batch_size=2, seq_len=16,
                               device="cpu", out=None)  # fmt: skip
    assert report["rounds"] == 1 and built == ["crammed-bert-tiny"]
    (r,) = report["results"]
    assert r["built_per_round"] and r["parameters"] > 0
    assert r["tokens_per_s_range"][0] == pytest.approx(r["tokens_per_s"])
