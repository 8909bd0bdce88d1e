"""`ultracram bench train`: numbers are consistent with the FLOP formula and the timing."""

import pytest

from ultracram.bench.train import bench_train
from ultracram.config import get_preset
from ultracram.model import flops_per_token


def test_bench_train_reports_consistent_numbers(tmp_path):
    report = bench_train(["crammed-bert-tiny", "ultrafastbert-tiny"], steps=2, warmup=1, batch_size=2,
                         seq_len=16, device="cpu", out=tmp_path / "train.json")  # fmt: skip
    assert (tmp_path / "train.json").is_file() and report["peak_flops"] > 0
    for r in report["results"]:
        assert r["tokens_per_s"] == pytest.approx(2 * 16 / r["seconds_per_step"])
        expected = 3 * flops_per_token(get_preset(r["preset"]), 16)["total"] * r["tokens_per_s"]
        assert r["flops_per_s"] == pytest.approx(expected)
        assert r["mfu"] == pytest.approx(r["flops_per_s"] / report["peak_flops"])
    # The FFF preset ran once per training path, with ratios taken within this run.
    rows = {(r["preset"], r["fff_path"]): r for r in report["results"]}
    assert set(rows) == {
        ("crammed-bert-tiny", None),
        *(("ultrafastbert-tiny", p) for p in ("masked", "gather", "conditional")),
    }
    crammed, masked = rows["crammed-bert-tiny", None], rows["ultrafastbert-tiny", "masked"]
    for path in ("masked", "gather", "conditional"):
        r = rows["ultrafastbert-tiny", path]
        assert r["vs_masked"] == pytest.approx(r["tokens_per_s"] / masked["tokens_per_s"])
        assert r["vs_crammed"] == pytest.approx(r["tokens_per_s"] / crammed["tokens_per_s"])


def test_bench_train_refuses_an_inference_only_path(tmp_path):
    with pytest.raises(ValueError, match="trainable: masked, gather, conditional"):
        bench_train(["ultrafastbert-tiny"], fff_paths=("cpu",), out=None)
