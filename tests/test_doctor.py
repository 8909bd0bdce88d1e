"""Preflight checks: a correct setup passes everything; each planted bug is named by its check."""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F

from ultracram.config import IGNORE_INDEX
from ultracram.data.mlm import mask_tokens
from ultracram.doctor.checks import FAIL, PASS, WARN, DoctorOptions, run_checks, run_preflight
from ultracram.doctor.setup import DoctorSettings, default_setup, standard_mask_fn


@pytest.fixture(scope="module")
def setup():
    return default_setup("crammed-bert-tiny", seq_len=64, batch_size=8)


def _only(setup, name, **opts):
    [result] = run_checks(setup, DoctorOptions(**opts), only=[name])
    return result


def test_correct_setup_passes_every_check(setup, tmp_path):
    results = run_preflight(setup=setup, out_dir=tmp_path)
    bad = [(r.name, r.status, r.reason) for r in results if r.status != PASS]
    assert not bad, bad
    report = json.loads((tmp_path / "doctor.json").read_text())
    assert {r["name"] for r in report["results"]} >= {"labels", "overfit", "lr_range", "mixed_precision"}
    assert (tmp_path / "lr_range.png").stat().st_size > 1000


def test_labels_shifted_by_one(setup):
    good = standard_mask_fn(setup.config, setup.tokenizer)

    def shifted(ids, gen):
        inputs, labels = good(ids, gen)
        return inputs, torch.roll(labels, 1, dims=1)  # causal-LM habit: label of the previous position

    r = _only(setup.replace(mask_fn=shifted), "labels")
    assert r.status == FAIL and "shifted by" in r.reason, r.reason


def test_learning_rate_100x_too_high(setup):
    r = _only(setup.replace(lr=setup.lr * 100), "lr_range")
    assert r.status == FAIL and "learning rate too high" in r.reason, r.reason


def test_embeddings_frozen(setup):
    def frozen(config):
        model = setup.model_factory(config)
        model.encoder.embeddings.word.weight.requires_grad_(False)
        return model

    r = _only(setup.replace(model_factory=frozen), "gradients")
    assert r.status == FAIL and "embeddings frozen" in r.reason, r.reason
    assert "encoder.embeddings.word.weight" in r.reason


def test_special_tokens_masked(setup):
    tok = setup.tokenizer

    def careless(ids, gen):  # forgets to exclude [CLS]/[SEP]/[PAD]
        return mask_tokens(ids, setup.config.mask_rate, mask_token_id=tok.mask_id,
                           vocab_size=tok.vocab_size, special_ids=(), generator=gen)  # fmt: skip

    r = _only(setup.replace(mask_fn=careless), "special_tokens")
    assert r.status == FAIL and "special tokens masked" in r.reason, r.reason


def test_attention_mask_polarity_inverted(setup):
    def inverted(model, batch):
        out = model(batch.input_ids, attention_mask=1 - batch.attention_mask, labels=batch.labels)
        return out.logits, out.labels

    r = _only(setup.replace(forward_fn=inverted), "padding")
    assert r.status == FAIL and "polarity inverted" in r.reason, r.reason


def test_softmax_before_cross_entropy(setup):
    def double_softmax(logits, labels):
        return F.cross_entropy(logits.float().softmax(-1), labels, ignore_index=IGNORE_INDEX)

    r = _only(setup.replace(loss_fn=double_softmax), "loss_function")
    assert r.status == FAIL and "softmax applied before the cross-entropy" in r.reason, r.reason


def test_gradients_never_zeroed(setup):
    def no_zero_grad(s, model, optimizer, batch):
        loss = s.compute_loss(model, batch)
        loss.backward()
        optimizer.step()
        return loss.item()

    r = _only(setup.replace(train_step=no_zero_grad), "grad_zeroing")
    assert r.status == FAIL and "never zeroed" in r.reason, r.reason


def test_tokenizer_model_vocab_mismatch(setup):
    r = _only(setup.replace(config=setup.config.replace(vocab_size=2048)), "vocab")
    assert r.status == FAIL and "vocabulary mismatch" in r.reason, r.reason
    assert "4096" in r.reason and "2048" in r.reason


def test_crashing_check_is_reported_not_raised(setup):
    def broken(model, batch):
        raise RuntimeError("boom")

    r = _only(setup.replace(forward_fn=broken), "init_loss")
    assert r.status == FAIL and "crashed" in r.reason and "boom" in r.reason


def test_settings_report_every_problem_and_name_every_check(tmp_path, capsys):
    from ultracram.cli import main
    from ultracram.doctor import CHECKS

    assert main(["doctor", "--model.num_layer", "1", "--model.mask_rate", "abc", "--lr", "-1",
                 "--out", str(tmp_path)]) == 1  # fmt: skip
    err = capsys.readouterr().err
    assert "lr: must be > 0" in err  # the doctor's own settings first, before any model is built
    with pytest.raises(ValueError) as e:
        run_preflight(DoctorSettings(model={"num_layer": 1, "mask_rate": "abc"}), out_dir=tmp_path)
    assert "did you mean 'num_layers'" in str(e.value) and "mask_rate" in str(e.value)
    # `ultracram doctor --help` lists every check --only accepts.
    assert main(["doctor", "--help"]) == 0
    text = " ".join(capsys.readouterr().out.split())
    assert all(name in text for name in CHECKS)


def test_cli_doctor_only_and_unknown_check(tmp_path, capsys):
    from ultracram.cli import main

    assert main(["doctor", "--preset", "crammed-bert-tiny", "--only", "vocab", "--only", "loss_function",
                 "--out", str(tmp_path)]) == 0  # fmt: skip
    report = json.loads((tmp_path / "doctor.json").read_text())
    assert [r["name"] for r in report["results"]] == ["vocab", "loss_function"]
    assert main(["doctor", "--only", "vocabulary", "--out", str(tmp_path)]) == 1
    assert "unknown check(s) vocabulary (did you mean 'vocab'?)" in capsys.readouterr().err


# ---------------------------------------------------------------------------------------------
# Prepared data: the overlap and data checks read the validation split `data prepare` held out
# ---------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
    """2000 paragraphs of the embedded sample prepared twice: with a validation split (10% of the
    documents) and without one (--validation_fraction 0)."""
    from ultracram.data.corpus import prepare_corpus
    from ultracram.data.sample import read_sample_paragraphs
    from ultracram.data.tokenizer import train_tokenizer

    d = tmp_path_factory.mktemp("doctor-data")
    docs = read_sample_paragraphs()[:2000]
    (d / "text.txt").write_text("\n\n".join(docs) + "\n", encoding="utf-8")
    train_tokenizer(docs, vocab_size=2048).save(str(d / "tokenizer.json"))
    for name, fraction in (("split", 0.1), ("none", 0.0)):
        prepare_corpus(
            [d / "text.txt"], d / name, d / "tokenizer.json", 64, workers=0, validation_fraction=fraction
        )
    return d


def test_overlap_passes_on_a_fresh_prepare(prepared):
    from ultracram.data.corpus import TokenShards

    setup = default_setup("crammed-bert-tiny", data=str(prepared / "split"), seq_len=64, batch_size=8)
    valid = setup.data_sample_fn("validation")
    assert len(valid) == len(TokenShards(prepared / "split", split="validation")) > 0
    assert "validation" in setup.description
    overlap, data = _only(setup, "overlap"), _only(setup, "data")
    assert overlap.status == PASS, overlap.reason
    assert overlap.details["validation_rows"] == len(valid)
    # Documents are held out whole: no validation sequence is a training sequence.
    train = {tuple(r) for r in setup.data_sample_fn("train")}
    assert not train & {tuple(r) for r in valid}
    assert data.status == PASS and f"{len(valid)} validation sequences, none empty" in data.reason, (
        data.reason
    )


def test_overlap_without_a_validation_split_says_how_to_get_one(prepared):
    setup = default_setup("crammed-bert-tiny", data=str(prepared / "none"), seq_len=64, batch_size=8)
    overlap, data = _only(setup, "overlap"), _only(setup, "data")
    assert overlap.status == WARN and overlap.reason == "no validation split found"
    assert "--validation_fraction" in overlap.fix
    assert data.status == PASS and "validation" not in data.reason, data.reason
