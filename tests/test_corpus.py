"""Pretraining data: prepare_corpus and TokenShards on a slice of the shared Wikipedia text.

The packed output is checked against an independent re-implementation of the format (hold out
validation documents by the documented hash rule, encode each document, filter, join with [SEP],
cut [CLS] ... [SEP] rows) written here in plain Python.
"""

import gzip
import hashlib
import json
import lzma
from pathlib import Path

import numpy as np
import pytest

from ultracram.data.corpus import (
    DataError,
    HashSet,
    TokenShards,
    file_sha256,
    iter_file_documents,
    prepare_corpus,
)
from ultracram.data.tokenizer import train_tokenizer

WIKI = "corpus/enwiki-2015-extract-174M.txt.xz"
SEQ = 64


def read_wiki_prefix(shared_data: Path, nbytes: int) -> str:
    """The first ``nbytes`` of the Wikipedia text (streamed from the .xz), cut at an article end."""
    with lzma.open(shared_data / WIKI, "rb") as f:
        raw = f.read(nbytes)
    text = raw.decode("utf-8", errors="ignore")
    return text[: text.rindex("\n\n") + 1]


@pytest.fixture(scope="module")
def wiki(shared_data, tmp_path_factory):
    """A ~600 kB Wikipedia slice, its documents and a 4096-token tokenizer trained on it."""
    d = tmp_path_factory.mktemp("wiki")
    text = read_wiki_prefix(shared_data, 600_000)
    path = d / "wiki.txt"
    path.write_text(text, encoding="utf-8")
    docs = list(iter_file_documents(path))
    tok = train_tokenizer(docs, vocab_size=4096)
    tok.save(str(d / "tokenizer.json"))
    return {"dir": d, "path": path, "text": text, "docs": docs, "tok": tok, "tok_path": d / "tokenizer.json"}


def held_out(doc: str, fraction: float) -> bool:
    """The documented validation rule: blake2b-64 (little-endian) of the document's UTF-8 text,
    below fraction x 2^64."""
    return (
        int.from_bytes(hashlib.blake2b(doc.encode("utf-8"), digest_size=8).digest(), "little")
        < fraction * 2**64
    )


def reference_rows(tok, docs, seq_len, ratio=None, sort=False, validation_fraction=0.005, split="train"):
    """Independent packer: the rows (n, seq_len) of ``split`` prepare_corpus must produce, and
    how many of that split's documents the ratio filter drops. The default ratio is the
    documented rule: 0.25 tokens per character for vocabularies of 32768 and more, else 0.5.
    ``validation_fraction`` defaults to prepare_corpus's."""
    ratio = ratio if ratio is not None else (0.25 if tok.get_vocab_size() >= 32768 else 0.5)
    docs = [d for d in docs if held_out(d, validation_fraction) == (split == "validation")]
    kept = []
    for d in docs:
        ids = tok.encode(d, add_special_tokens=False).ids
        if len(ids) <= ratio * len(d):
            kept.append(ids)
    if sort:
        kept.sort(key=len)
    stream = []
    for ids in kept:
        stream += [*ids, 3]
    body = seq_len - 2
    n = len(stream) // body
    rows = [[2, *stream[i * body : (i + 1) * body], 3] for i in range(n)]
    return np.array(rows, dtype=np.int64).reshape(n, seq_len), len(docs) - len(kept)


def all_rows(out) -> np.ndarray:
    s = TokenShards(out)
    return s.get_rows(np.arange(len(s)))


def test_blank_line_documents(wiki):
    articles = [a for a in wiki["text"].split("\n\n") if a.strip()]
    assert wiki["docs"] == [a.strip("\n") for a in articles]
    assert wiki["docs"][0].startswith("Anarchism\n")


def test_prepare_matches_reference_packer(wiki, tmp_path):
    # 0.2: 4 of the slice's 20 documents are held out (0.005, the default, holds out none of them).
    m = prepare_corpus([wiki["path"]], tmp_path / "out", wiki["tok_path"], SEQ, workers=0, shard_sequences=500,
                       batch_docs=4, max_token_ratio=0.25, validation_fraction=0.2)  # fmt: skip
    ref, dropped = reference_rows(wiki["tok"], wiki["docs"], SEQ, ratio=0.25, validation_fraction=0.2)
    rows = all_rows(tmp_path / "out")
    np.testing.assert_array_equal(rows, ref)
    val_ref, val_dropped = reference_rows(wiki["tok"], wiki["docs"], SEQ, ratio=0.25, validation_fraction=0.2,
                                          split="validation")  # fmt: skip
    val = TokenShards(tmp_path / "out", split="validation")
    np.testing.assert_array_equal(val.get_rows(np.arange(len(val))), val_ref)
    c = m["counts"]
    assert c["documents"] == len(wiki["docs"])
    assert c["validation_documents"] == sum(held_out(d, 0.2) for d in wiki["docs"]) == 4
    assert (c["validation_sequences"], c["validation_documents_dropped_ratio"]) == (len(val_ref), val_dropped)
    assert c["documents_dropped_ratio"] == dropped > 0  # the filter does something on this slice
    assert c["sequences"] == len(ref) == sum(s["sequences"] for s in m["shards"])
    assert len(m["shards"]) >= 2
    # Manifest: dtype, vocab, tokenizer copy and hashes.
    shards = TokenShards(tmp_path / "out")
    assert (shards.seq_len, shards.vocab_size, m["dtype"]) == (SEQ, 4096, "uint16")
    assert shards.tokenizer_path.read_bytes() == wiki["tok_path"].read_bytes()
    assert m["tokenizer_sha256"] == file_sha256(wiki["tok_path"])
    assert m["sources"][0]["sha256"] == file_sha256(wiki["path"])
    for s in m["shards"] + m["validation"]:
        assert file_sha256(tmp_path / "out" / s["file"]) == s["sha256"]
    assert [(s["file"], s["sequences"]) for s in m["validation"]] == [  # 500 rows per shard, as training
        (f"val_{i // 500:05d}.bin", min(500, len(val_ref) - i)) for i in range(0, len(val_ref), 500)
    ]
    assert shards[3].dtype == np.uint16 and shards[3].shape == (SEQ,)
    np.testing.assert_array_equal(shards[-1], ref[-1])
    idx = np.array([len(ref) - 1, 0, 600, 7])
    np.testing.assert_array_equal(shards.get_rows(idx), ref[idx])
    assert shards.get_rows(idx).dtype == np.int64


def test_default_ratio_follows_the_vocabulary(wiki, tmp_path):
    m = prepare_corpus([wiki["path"]], tmp_path, wiki["tok_path"], SEQ, workers=0)
    assert m["max_token_ratio"] == 0.5  # a 4096-token vocabulary: 0.25 would drop ordinary English
    np.testing.assert_array_equal(all_rows(tmp_path), reference_rows(wiki["tok"], wiki["docs"], SEQ)[0])


def test_filter_ratio_off_keeps_all(wiki, tmp_path):
    m = prepare_corpus([wiki["path"]], tmp_path, wiki["tok_path"], SEQ, workers=0, max_token_ratio=10.0)
    assert m["counts"]["documents_dropped_ratio"] == 0
    ref, _ = reference_rows(wiki["tok"], wiki["docs"], SEQ, ratio=10.0)
    np.testing.assert_array_equal(all_rows(tmp_path), ref)


def test_progress_in_a_log_ends_with_the_final_counts(wiki, tmp_path, capsys):
    """Not a terminal (as in CI): plain lines, the last one with every sequence written."""
    m = prepare_corpus([wiki["path"]], tmp_path, wiki["tok_path"], SEQ, workers=0, show_progress=True)
    lines = [line for line in capsys.readouterr().out.splitlines() if line.startswith("prepare ")]
    assert lines and "100.0%" in lines[-1]
    assert f"{m['tokens'] // SEQ:,} seqs written" in lines[-1]


def test_sort_by_length(wiki, tmp_path):
    prepare_corpus([wiki["path"]], tmp_path, wiki["tok_path"], SEQ, workers=0, sort_by_length=True,
                   sort_buffer=10_000)  # fmt: skip
    ref, _ = reference_rows(wiki["tok"], wiki["docs"], SEQ, sort=True)
    np.testing.assert_array_equal(all_rows(tmp_path), ref)


def test_workers_give_the_same_shards(wiki, tmp_path):
    prepare_corpus([wiki["path"]], tmp_path / "a", wiki["tok_path"], SEQ, workers=0)
    prepare_corpus([wiki["path"]], tmp_path / "b", wiki["tok_path"], SEQ, workers=2, batch_docs=8)
    np.testing.assert_array_equal(all_rows(tmp_path / "a"), all_rows(tmp_path / "b"))


def test_compressed_inputs_and_directories(wiki, tmp_path):
    import zstandard

    docs = wiki["docs"]
    parts = ["\n\n".join(docs[i::3]) + "\n" for i in range(3)]
    plain = tmp_path / "plain"
    comp = tmp_path / "comp"
    plain.mkdir()
    (comp / "sub").mkdir(parents=True)
    for i, p in enumerate(parts):
        (plain / f"{i}.txt").write_text(p, encoding="utf-8")
    (comp / "0.txt.gz").write_bytes(gzip.compress(parts[0].encode()))
    (comp / "1.txt.xz").write_bytes(lzma.compress(parts[1].encode()))
    (comp / "sub" / "2.txt.zst").write_bytes(zstandard.ZstdCompressor().compress(parts[2].encode()))
    (comp / "notes.json").write_text("{}")  # not a text file: ignored in a directory
    a = prepare_corpus([comp], tmp_path / "a", wiki["tok_path"], SEQ, workers=0)
    b = prepare_corpus(sorted(plain.iterdir()), tmp_path / "b", wiki["tok_path"], SEQ, workers=0)
    np.testing.assert_array_equal(all_rows(tmp_path / "a"), all_rows(tmp_path / "b"))
    assert [Path(s["path"]).name for s in a["sources"]] == ["0.txt.gz", "1.txt.xz", "2.txt.zst"]
    for s in a["sources"]:
        assert s["sha256"] == file_sha256(s["path"])
    assert a["counts"]["documents"] == b["counts"]["documents"] == len(docs)


def test_dedup(wiki, tmp_path):
    docs = wiki["docs"][:20]
    variants = [docs[3].upper(), docs[5].replace(" ", "  "), docs[7]]  # same after normalising
    path = tmp_path / "dup.txt"
    path.write_text("\n\n".join(docs + variants + docs[:10]) + "\n", encoding="utf-8")
    m = prepare_corpus([path], tmp_path / "d", wiki["tok_path"], SEQ, workers=0, dedup=True)
    assert m["counts"]["documents"] == 33
    assert m["counts"]["documents_dropped_duplicate"] == 13
    ref, _ = reference_rows(wiki["tok"], docs, SEQ)
    np.testing.assert_array_equal(all_rows(tmp_path / "d"), ref)
    m = prepare_corpus([path], tmp_path / "n", wiki["tok_path"], SEQ, workers=0)
    assert m["counts"]["documents_dropped_duplicate"] == 0


def test_hash_set_matches_python_set():
    rng = np.random.default_rng(0)
    values = rng.integers(0, 2**63, 3000).tolist()
    values += values[:500]  # duplicates, some after a merge into the sorted array
    hs, ref = HashSet(buffer=256), set()
    for v in values:
        assert hs.add(v) == (v not in ref)
        ref.add(v)
    assert len(hs) == len(ref) == 3000


class Killed(Exception):
    pass


def test_killed_run_resumes_without_half_written_shard(wiki, tmp_path):
    out = tmp_path / "out"
    kw = dict(workers=0, shard_sequences=150, batch_docs=2)
    full = prepare_corpus([wiki["path"]], tmp_path / "full", wiki["tok_path"], SEQ, **kw)
    assert len(full["shards"]) >= 4

    def kill_after_two(n):
        if n == 2:
            raise Killed

    with pytest.raises(Killed):
        prepare_corpus([wiki["path"]], out, wiki["tok_path"], SEQ, _after_shard=kill_after_two, **kw)
    # Simulate a kill in the middle of writing shard 2: a temp file and a truncated shard.
    (out / ".shard_00002.bin.tmp").write_bytes(b"\0" * 1000)
    (out / "shard_00002.bin").write_bytes(b"\0" * 1000)
    with pytest.raises(DataError, match="did not finish"):
        TokenShards(out)
    partial = TokenShards(out, allow_incomplete=True)
    assert len(partial) == sum(s["sequences"] for s in full["shards"][:2])  # the half shard not counted
    seen = []
    m = prepare_corpus([wiki["path"]], out, wiki["tok_path"], SEQ, _after_shard=seen.append, **kw)
    assert seen[0] == 3  # resumed after the two complete shards
    assert m["counts"] == full["counts"]
    np.testing.assert_array_equal(all_rows(out), all_rows(tmp_path / "full"))
    assert not list(out.glob(".*.tmp"))
    # Different settings: starts over cleanly, no stale shards left.
    m2 = prepare_corpus([wiki["path"]], out, wiki["tok_path"], 2 * SEQ, workers=0, shard_sequences=10_000)
    assert sorted(p.name for p in out.glob("shard_*")) == [s["file"] for s in m2["shards"]]
    assert TokenShards(out).seq_len == 2 * SEQ


def test_cli_prepare(wiki, tmp_path, capsys):
    from ultracram.cli import main

    rc = main(["data", "prepare", "--input", str(wiki["path"]), "--tokenizer", str(wiki["tok_path"]),
               "--out", str(tmp_path), "--seq_len", str(SEQ), "--workers", "0", "--dedup"])  # fmt: skip
    assert rc == 0
    manifest = json.loads((tmp_path / "manifest.json").read_text())
    assert manifest["complete"] and manifest["dedup"]
    assert manifest["validation_fraction"] == 0.005  # the default, recorded with the other settings
    assert len(TokenShards(tmp_path)) == manifest["counts"]["sequences"] > 0
    assert "validation: 0 sequences from 0 held-out documents" in capsys.readouterr().out


# ---------------------------------------------------------------------------------------------
# Bad input
# ---------------------------------------------------------------------------------------------


def test_empty_file(wiki, tmp_path):
    (tmp_path / "empty.txt").write_text("\n\n  \n")
    with pytest.raises(DataError, match=r"empty\.txt: the file is empty"):
        prepare_corpus([tmp_path / "empty.txt"], tmp_path / "o", wiki["tok_path"], workers=0)


def test_non_utf8(wiki, tmp_path):
    path = tmp_path / "bad.txt"
    path.write_bytes(b"first line\nsecond\nok \xff\xfe here\n")
    with pytest.raises(DataError, match=r"bad\.txt: line 3, byte offset 21 .*not valid UTF-8"):
        prepare_corpus([path], tmp_path / "o", wiki["tok_path"], workers=0)
    gz = tmp_path / "bad.txt.gz"
    gz.write_bytes(gzip.compress(b"fine\n\xc3\x28\n"))
    with pytest.raises(DataError, match=r"bad\.txt\.gz: line 2, byte offset 5"):
        prepare_corpus([gz], tmp_path / "o", wiki["tok_path"], workers=0)


def test_directories_without_text(wiki, tmp_path):
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "x.json").write_text("{}")
    with pytest.raises(DataError, match=r"d: directory has no text files"):
        prepare_corpus([tmp_path / "d"], tmp_path / "o", wiki["tok_path"], workers=0)
    with pytest.raises(DataError, match="no such file or directory"):
        prepare_corpus([tmp_path / "missing"], tmp_path / "o", wiki["tok_path"], workers=0)


def test_corpus_without_sequences(wiki, tmp_path):
    path = tmp_path / "short.txt"
    path.write_text("a tiny document\n\nand another\n")
    with pytest.raises(DataError, match=r"short\.txt: the corpus yields no sequences of 64 tokens"):
        prepare_corpus([path], tmp_path / "o", wiki["tok_path"], SEQ, workers=0)


def test_not_a_prepared_directory(tmp_path):
    with pytest.raises(DataError, match=r"no manifest\.json"):
        TokenShards(tmp_path)


def test_corrupt_compressed_file(wiki, tmp_path):
    path = tmp_path / "x.txt.xz"
    path.write_bytes(b"not xz at all")
    with pytest.raises(DataError, match=r"x\.txt\.xz: cannot decompress"):
        prepare_corpus([path], tmp_path / "o", wiki["tok_path"], workers=0)
