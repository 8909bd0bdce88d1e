"""The validation split `data prepare` holds out: by document, by a hash of the text, so the same
documents with any number of workers, after a kill and resume, with dedup and length sorting;
disjoint from training; about `validation_fraction` of the documents; read back with
`TokenShards(split="validation")`; used by pretraining's final validation.

Data: the first 2000 paragraphs of the embedded Wikipedia sample (one document each), so these
tests run without ../shared/data.
"""

import hashlib
import json
import math
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from ultracram.data.corpus import DataError, TokenShards, has_validation, is_validation, prepare_corpus
from ultracram.data.sample import read_sample_paragraphs
from ultracram.data.tokenizer import train_tokenizer
from ultracram.errors import RunMismatchError

SEQ = 64
FRACTION = 0.1  # ~200 of the 2000 documents: enough to measure the split's size
CLS, SEP = 2, 3


def held_out(doc: str, fraction: float) -> bool:
    """The documented validation rule: blake2b-64 (little-endian) of the document's UTF-8 text,
    below fraction x 2^64."""
    return (
        int.from_bytes(hashlib.blake2b(doc.encode("utf-8"), digest_size=8).digest(), "little")
        < fraction * 2**64
    )


def reference(tok, docs: list[str], seq_len: int = SEQ, ratio: float = 0.5, sort: bool = False) -> np.ndarray:
    """Independent packer: ``docs`` encoded, filtered (tokens <= ratio x characters), joined with
    [SEP], cut into [CLS] <seq_len-2> [SEP] rows (n, seq_len)."""
    kept = [ids for d in docs if len(ids := tok.encode(d, add_special_tokens=False).ids) <= ratio * len(d)]
    if sort:
        kept.sort(key=len)
    stream = [t for ids in kept for t in (*ids, SEP)]
    body = seq_len - 2
    n = len(stream) // body
    return np.array([[CLS, *stream[i * body : (i + 1) * body], SEP] for i in range(n)], np.int64).reshape(
        n, seq_len
    )


def rows(directory: Path, split: str = "train") -> np.ndarray:
    s = TokenShards(directory, split=split)
    return s.get_rows(np.arange(len(s)))


def documents_in(r: np.ndarray) -> set[tuple[int, ...]]:
    """The complete documents (token tuples) packed in rows (n, seq_len): bodies joined, split at [SEP]."""
    stream = r[:, 1:-1].reshape(-1).tolist()
    docs, cur = [], []
    for t in stream:
        if t == SEP:
            docs.append(tuple(cur))
            cur = []
        else:
            cur.append(t)
    return set(docs)  # the unfinished document at the end (cut by the dropped tail) is left out


@pytest.fixture(scope="module")
def sample(tmp_path_factory):
    d = tmp_path_factory.mktemp("valsplit")
    docs = read_sample_paragraphs()[:2000]
    (d / "text.txt").write_text("\n\n".join(docs) + "\n", encoding="utf-8")
    tok = train_tokenizer(docs, vocab_size=2048)
    tok.save(str(d / "tokenizer.json"))
    out = d / "prepared"
    m = prepare_corpus([d / "text.txt"], out, d / "tokenizer.json", SEQ, workers=0, shard_sequences=300,
                       batch_docs=4, validation_fraction=FRACTION)  # fmt: skip
    return {"dir": d, "text": d / "text.txt", "docs": docs, "tok": tok, "tok_path": d / "tokenizer.json",
            "out": out, "manifest": m}  # fmt: skip


def test_split_follows_the_rule_and_is_disjoint(sample):
    docs, tok, m = sample["docs"], sample["tok"], sample["manifest"]
    val_docs = [d for d in docs if held_out(d, FRACTION)]
    train_docs = [d for d in docs if not held_out(d, FRACTION)]
    assert [is_validation(d, FRACTION) for d in docs] == [held_out(d, FRACTION) for d in docs]
    np.testing.assert_array_equal(rows(sample["out"]), reference(tok, train_docs))
    np.testing.assert_array_equal(rows(sample["out"], "validation"), reference(tok, val_docs))
    # Re-tokenised, every packed document is in the split its hash names and in no other.
    in_train, in_val = documents_in(rows(sample["out"])), documents_in(rows(sample["out"], "validation"))
    assert not in_train & in_val
    encoded = {d: tuple(tok.encode(d, add_special_tokens=False).ids) for d in docs}
    assert {encoded[d] for d in val_docs} >= in_val and not {encoded[d] for d in train_docs} & in_val
    assert {encoded[d] for d in train_docs} >= in_train and not {encoded[d] for d in val_docs} & in_train
    c = m["counts"]
    assert c["validation_documents"] == len(val_docs)
    assert (
        c["validation_sequences"]
        == sum(s["sequences"] for s in m["validation"])
        == len(rows(sample["out"], "validation"))
    )
    assert m["validation_fraction"] == FRACTION and "blake2b-64" in m["filters"]["validation"]


def test_split_size_is_near_the_fraction(sample):
    c = sample["manifest"]["counts"]
    expected = FRACTION * len(sample["docs"])  # 200; binomial sd ~13
    assert 0.75 * expected <= c["validation_documents"] <= 1.25 * expected, c
    share = c["validation_sequences"] / (c["validation_sequences"] + c["sequences"])
    assert 0.5 * FRACTION <= share <= 2 * FRACTION, share  # documents differ in length


class Killed(Exception):
    pass


def test_same_split_with_workers_and_after_a_kill(sample, tmp_path):
    text, tok_path, a = sample["text"], sample["tok_path"], sample["out"]
    kw = dict(workers=0, shard_sequences=300, batch_docs=4, validation_fraction=FRACTION)
    # Two worker processes, other batches: the same documents held out, the same shards.
    prepare_corpus([text], tmp_path / "b", tok_path, SEQ, **{**kw, "workers": 2, "batch_docs": 16})
    np.testing.assert_array_equal(rows(tmp_path / "b", "validation"), rows(a, "validation"))
    np.testing.assert_array_equal(rows(tmp_path / "b"), rows(a))

    # Killed after two training shards, with a stale validation shard left behind: the rerun
    # resumes after shard 2 and writes the whole validation split again.
    out = tmp_path / "c"

    def kill_after_two(n):
        if n == 2:
            raise Killed

    with pytest.raises(Killed):
        prepare_corpus([text], out, tok_path, SEQ, _after_shard=kill_after_two, **kw)
    (out / "val_00000.bin").write_bytes(b"\0" * 100)
    seen = []
    m = prepare_corpus([text], out, tok_path, SEQ, _after_shard=seen.append, **kw)
    assert seen[0] == 3
    assert m["counts"] == sample["manifest"]["counts"] and m["validation"] == sample["manifest"]["validation"]
    np.testing.assert_array_equal(rows(out, "validation"), rows(a, "validation"))
    np.testing.assert_array_equal(rows(out), rows(a))
    assert sorted(p.name for p in out.glob("val_*")) == [s["file"] for s in m["validation"]]


def test_split_with_dedup_and_sort_by_length(sample, tmp_path):
    docs, tok = sample["docs"][:600], sample["tok"]
    first = {" ".join(d.lower().split()): d for d in reversed(docs)}  # the sample repeats a few
    unique = [d for d in docs if first[" ".join(d.lower().split())] is d]
    val = [d for d in unique if held_out(d, FRACTION)]
    train = [d for d in unique if not held_out(d, FRACTION)]
    # Case/whitespace variants of a held-out and a training document, after them: --dedup keeps
    # the first spelling (on its side) and drops the variants, whatever side their text hashes to.
    variants = [val[0].upper(), train[0].replace(" ", "   ")]
    path = tmp_path / "dup.txt"
    path.write_text("\n\n".join(docs + variants) + "\n", encoding="utf-8")
    kw = dict(dedup=True, sort_by_length=True, sort_buffer=10_000, validation_fraction=FRACTION)
    m = prepare_corpus([path], tmp_path / "a", sample["tok_path"], SEQ, workers=0, **kw)
    prepare_corpus([path], tmp_path / "b", sample["tok_path"], SEQ, workers=2, **kw)
    assert m["counts"]["documents_dropped_duplicate"] == len(docs) - len(unique) + 2
    assert m["counts"]["validation_documents"] == len(val)
    for out in (tmp_path / "a", tmp_path / "b"):
        np.testing.assert_array_equal(rows(out, "validation"), reference(tok, val, sort=True))
        np.testing.assert_array_equal(rows(out), reference(tok, train, sort=True))


def test_token_shards_validation_round_trip(sample, tmp_path):
    out = tmp_path / "p"
    shutil.copytree(sample["out"], out)
    m = sample["manifest"]
    val, train = TokenShards(out, split="validation"), TokenShards(out)
    assert (val.split, train.split) == ("validation", "train")
    assert len(val) == m["counts"]["validation_sequences"] and len(train) == m["counts"]["sequences"]
    assert val.entries == m["validation"] and train.entries == m["shards"]
    raw = np.fromfile(out / "val_00000.bin", dtype=np.uint16).reshape(-1, SEQ)
    np.testing.assert_array_equal(val.get_rows(np.arange(len(raw))), raw)
    assert val[0].dtype == np.uint16 and (val[0][0], val[-1][-1]) == (CLS, SEP)
    assert (val.seq_len, val.vocab_size, val.tokenizer_path) == (
        train.seq_len,
        train.vocab_size,
        train.tokenizer_path,
    )
    assert "split='validation'" in repr(val)
    assert has_validation(out) and has_validation(val) and has_validation(train)
    with pytest.raises(DataError, match="split must be one of 'train', 'validation', got 'test'"):
        TokenShards(out, split="test")
    # A damaged validation shard is refused as a training shard would be; training still opens.
    (out / "val_00000.bin").write_bytes((out / "val_00000.bin").read_bytes()[:-2])
    with pytest.raises(DataError, match=r"val_00000\.bin: expected \d+ bytes"):
        TokenShards(out, split="validation")
    assert len(TokenShards(out)) == len(train)
    # A manifest written before validation splits existed: training only, and says so.
    manifest = json.loads((out / "manifest.json").read_text())
    for key in ("validation", "validation_fraction"):
        del manifest[key]
    (out / "manifest.json").write_text(json.dumps(manifest))
    assert not has_validation(out)
    with pytest.raises(DataError, match=r"no validation split \(prepared before") as e:
        TokenShards(out, split="validation")
    assert "\n" not in str(e.value)
    assert len(TokenShards(out)) == len(train)
    assert not has_validation(tmp_path / "nothing-here")


def test_fraction_zero_and_too_little_held_out(sample, tmp_path, capsys):
    m = prepare_corpus(
        [sample["text"]], tmp_path / "z", sample["tok_path"], SEQ, workers=0, validation_fraction=0
    )
    assert (
        m["validation"] == []
        and m["counts"]["validation_documents"] == 0
        and m["filters"]["validation"] is None
    )
    assert not list((tmp_path / "z").glob("val_*")) and not has_validation(tmp_path / "z")
    with pytest.raises(DataError, match=r"no validation split \(prepared with --validation_fraction 0\)"):
        TokenShards(tmp_path / "z", split="validation")
    np.testing.assert_array_equal(rows(tmp_path / "z"), reference(sample["tok"], sample["docs"]))
    # One short held-out document: too few tokens for a sequence, so no split, and a warning.
    short = next(d for d in sample["docs"] if held_out(d, FRACTION) and len(d) < 100)
    train = [d for d in sample["docs"][:300] if not held_out(d, FRACTION)]
    (tmp_path / "s.txt").write_text("\n\n".join([short, *train]) + "\n", encoding="utf-8")
    capsys.readouterr()
    m = prepare_corpus([tmp_path / "s.txt"], tmp_path / "s", sample["tok_path"], SEQ, workers=0,
                       validation_fraction=FRACTION)  # fmt: skip
    assert (m["counts"]["validation_documents"], m["counts"]["validation_sequences"]) == (1, 0)
    assert "no validation split was written" in capsys.readouterr().err
    assert not has_validation(tmp_path / "s")
    with pytest.raises(DataError, match=r"--validation_fraction 0\.1 held out too little text"):
        TokenShards(tmp_path / "s", split="validation")


@pytest.mark.parametrize("fraction", [-0.1, 0.5, float("nan")])
def test_bad_fraction_is_refused_before_work(sample, tmp_path, fraction):
    with pytest.raises(DataError, match=r"^--validation_fraction must be in \[0, 0\.5\) .*, got") as e:
        prepare_corpus(
            [sample["text"]], tmp_path / "o", sample["tok_path"], SEQ, validation_fraction=fraction
        )
    assert "\n" not in str(e.value) and not (tmp_path / "o").exists()


def test_another_fraction_is_another_prepare(sample, tmp_path):
    out = tmp_path / "p"
    shutil.copytree(sample["out"], out)
    kw = dict(workers=0, shard_sequences=300, batch_docs=4)
    with pytest.raises(RunMismatchError, match="validation_fraction"):
        prepare_corpus(
            [sample["text"]], out, sample["tok_path"], SEQ, validation_fraction=0.2, overwrite=False, **kw
        )
    m = prepare_corpus([sample["text"]], out, sample["tok_path"], SEQ, validation_fraction=0.2, **kw)
    assert m["validation_fraction"] == 0.2
    assert m["counts"]["validation_documents"] == sum(held_out(d, 0.2) for d in sample["docs"])
    assert sorted(p.name for p in out.glob("val_*")) == [s["file"] for s in m["validation"]]


def test_cli_prints_the_split(sample, tmp_path, capsys):
    from ultracram.cli import main

    assert main(["data", "prepare", "--input", str(sample["text"]), "--tokenizer", str(sample["tok_path"]),
                 "--out", str(tmp_path), "--seq_len", str(SEQ), "--workers", "0",
                 "--validation_fraction", str(FRACTION)]) == 0  # fmt: skip
    c = json.loads((tmp_path / "manifest.json").read_text())["counts"]
    out = capsys.readouterr().out
    assert (
        f"validation: {c['validation_sequences']:,} sequences from {c['validation_documents']:,} held-out"
        in out
    )


# ---------------------------------------------------------------------------------------------
# Pretraining's final validation
# ---------------------------------------------------------------------------------------------


def _expected_loss(model, shards, val_batches: int, micro: int, seed: int, mask_rate: float) -> float:
    from ultracram.data.mlm import mlm_batch

    total = count = 0.0
    with torch.no_grad():
        for unit in range(val_batches):
            out = model(**mlm_batch(shards, step=unit, batch_size=micro, seed=seed, mask_rate=mask_rate))
            total += float(out.task_loss * out.count)
            count += float(out.count)
    return total / count


def test_validate_uses_the_validation_split(sample, tmp_path):
    from ultracram.config import get_preset
    from ultracram.model import build_model
    from ultracram.train.engine import setup_fabric
    from ultracram.train.pretrain import PretrainConfig, validate, validation_source

    tiny = {"hidden_size": 32, "num_heads": 2, "intermediate_size": 64, "num_layers": 1, "pooler_size": 32}
    model_config = get_preset("crammed-bert-tiny", vocab_size=2048, **tiny)
    torch.manual_seed(0)
    model = build_model(model_config, "mlm")
    fabric = setup_fabric("cpu", 1, precision="32-true")
    no_split = tmp_path / "z"
    prepare_corpus([sample["text"]], no_split, sample["tok_path"], SEQ, workers=0, validation_fraction=0)

    def run(data: Path, seed: int) -> float:
        config = PretrainConfig(preset="crammed-bert-tiny", data=str(data), out=str(tmp_path / "run"), seed=seed,
                                micro_batch_size=4, val_batches=3, model=tiny)  # fmt: skip
        return validate(fabric, config, model, TokenShards(data), model_config)

    held = TokenShards(sample["out"], split="validation")
    want = _expected_loss(model, held, 3, 4, 10_007, model_config.mask_rate)
    # The validation split, with a seed fixed across runs: any run seed gives the same loss.
    assert math.isclose(run(sample["out"], 0), want, rel_tol=1e-5)
    assert math.isclose(run(sample["out"], 5), want, rel_tol=1e-5)
    # No split: the training shards with fresh masks from the run's seed, as before.
    fallback = _expected_loss(model, TokenShards(no_split), 3, 4, 5 + 10_007, model_config.mask_rate)
    assert math.isclose(run(no_split, 5), fallback, rel_tol=1e-5)
    assert validation_source(sample["out"]) == "validation split"
    assert validation_source(TokenShards(sample["out"])) == "validation split"
    assert validation_source(no_split) == "training shards (no validation split)"
