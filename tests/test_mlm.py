"""MLM batches: exact mask counts, 80/10/10, special tokens untouched, (seed, step) determinism, DDP."""

import json

import numpy as np
import pytest
import torch

from ultracram.config import IGNORE_INDEX, get_preset, masked_token_count
from ultracram.data.corpus import TokenShards
from ultracram.data.mlm import MASK_ID, SPECIAL_IDS, MLMBatches, batch_rows, mask_tokens, mlm_batch

VOCAB, T, N = 1000, 32, 96


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    """A prepared-directory stand-in: random ids, [CLS] ... [SEP] rows, some [SEP]/[PAD] inside."""
    d = tmp_path_factory.mktemp("shards")
    rng = np.random.default_rng(0)
    rows = rng.integers(5, VOCAB, (N, T)).astype(np.uint16)
    rows[:, 0], rows[:, -1] = 2, 3
    rows[::3, 10] = 3  # document boundaries
    rows[::4, 20:24] = 0  # padding must never be masked
    rows[::5, 5] = 1  # [UNK]
    rows[:40].tofile(d / "shard_00000.bin")
    rows[40:].tofile(d / "shard_00001.bin")
    manifest = {"complete": True, "seq_len": T, "vocab_size": VOCAB, "dtype": "uint16", "tokenizer": "tokenizer.json",
                "shards": [{"file": "shard_00000.bin", "sequences": 40}, {"file": "shard_00001.bin", "sequences": 56}]}  # fmt: skip
    (d / "manifest.json").write_text(json.dumps(manifest))
    return TokenShards(d), rows.astype(np.int64)


def test_reader_spans_shards(shards):
    s, rows = shards
    assert len(s) == N
    idx = np.array([95, 39, 40, 0, 39])
    np.testing.assert_array_equal(s.get_rows(idx), rows[idx])
    np.testing.assert_array_equal(s[40], rows[40])


@pytest.mark.parametrize("rate", [0.15, 0.25])
def test_exact_count_and_no_specials(shards, rate):
    s, _ = shards
    for step in range(5):
        b = mlm_batch(s, step=step, batch_size=16, seed=3, mask_rate=rate)
        original = torch.from_numpy(s.get_rows(batch_rows(N, step, 16, 3)))
        masked = b["labels"] != IGNORE_INDEX
        assert int(masked.sum()) == masked_token_count(16 * T, rate)
        assert not torch.isin(original[masked], torch.tensor(SPECIAL_IDS)).any()
        torch.testing.assert_close(b["labels"][masked], original[masked])
        torch.testing.assert_close(b["input_ids"][~masked], original[~masked])  # the rest untouched
        torch.testing.assert_close(b["attention_mask"], (original != 0).long())
        assert all(v.dtype == torch.int64 and v.shape == (16, T) for v in b.values())


def test_80_10_10(shards):
    s, _ = shards
    counts = np.zeros(3)
    for step in range(40):
        b = mlm_batch(s, step=step, batch_size=16, seed=1, mask_rate=0.25)
        m = b["labels"] != IGNORE_INDEX
        inp, lab = b["input_ids"][m], b["labels"][m]
        is_mask = inp == MASK_ID
        same = inp == lab
        counts += [int(is_mask.sum()), int((~is_mask & ~same).sum()), int(same.sum())]
        assert not torch.isin(
            inp[~is_mask & ~same], torch.tensor(SPECIAL_IDS)
        ).any()  # random ones are real tokens
    frac = counts / counts.sum()
    np.testing.assert_allclose(frac, [0.8, 0.1, 0.1], atol=0.01)


def test_mask_rate_from_presets():
    assert get_preset("crammed-bert").mask_rate == 0.25
    assert get_preset("bert-base").mask_rate == 0.15


def test_same_seed_and_step_same_batch(shards):
    s, _ = shards
    a = mlm_batch(s, step=7, batch_size=8, seed=5, mask_rate=0.25)
    b = MLMBatches(s, batch_size=8, seed=5, mask_rate=0.25)(7)  # a "resumed" run
    c = mlm_batch(s, step=8, batch_size=8, seed=5, mask_rate=0.25)
    d = mlm_batch(s, step=7, batch_size=8, seed=6, mask_rate=0.25)
    for k in a:
        torch.testing.assert_close(a[k], b[k])
    assert not torch.equal(a["input_ids"], c["input_ids"])
    assert not torch.equal(a["input_ids"], d["input_ids"])


def test_epochs_visit_every_row_once():
    rows = np.concatenate([batch_rows(N, step, 16, 0) for step in range(N // 16)])
    assert sorted(rows.tolist()) == list(range(N))
    nxt = np.concatenate([batch_rows(N, step, 16, 0) for step in range(N // 16, 2 * N // 16)])
    assert sorted(nxt.tolist()) == list(range(N)) and not np.array_equal(rows, nxt)
    # A batch straddling the epoch boundary (N % 20 != 0) still sees the epochs' orders.
    straddle = batch_rows(N, 4, 20, 0)  # samples 80..99: the last 16 of epoch 0, the first 4 of epoch 1
    np.testing.assert_array_equal(straddle[:16], batch_rows(N, 0, N, 0)[80:])
    np.testing.assert_array_equal(straddle[16:], batch_rows(N, 1, N, 0)[:4])


def test_rank_split_union_is_the_single_batch(shards):
    s, _ = shards
    full = mlm_batch(s, step=2, batch_size=12, seed=0, mask_rate=0.25)
    parts = [
        mlm_batch(s, step=2, batch_size=12, seed=0, mask_rate=0.25, rank=r, world_size=3) for r in range(3)
    ]
    original = [torch.where(p["labels"] == IGNORE_INDEX, p["input_ids"], p["labels"]) for p in parts]
    whole = torch.where(full["labels"] == IGNORE_INDEX, full["input_ids"], full["labels"])
    torch.testing.assert_close(torch.cat(original), whole)
    for p in parts:
        assert int((p["labels"] != IGNORE_INDEX).sum()) == masked_token_count(4 * T, 0.25)
    with pytest.raises(ValueError, match="split evenly"):
        mlm_batch(s, step=0, batch_size=10, seed=0, mask_rate=0.25, rank=0, world_size=3)


def test_mask_tokens_with_few_maskable():
    ids = torch.tensor([[2, 7, 3, 0, 0, 0]])
    g = torch.Generator().manual_seed(0)
    out, labels = mask_tokens(ids, 0.9, mask_token_id=4, vocab_size=10, special_ids=SPECIAL_IDS, generator=g)
    assert labels.tolist() == [[-100, 7, -100, -100, -100, -100]]  # all maskable tokens, no more
    assert out[0, [0, 2, 3, 4, 5]].tolist() == [2, 3, 0, 0, 0]
