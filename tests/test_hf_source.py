"""A Hugging Face dataset as corpus input, tested offline through the parquet builder."""

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from ultracram.cli import main
from ultracram.data.corpus import DataError, TokenShards, iter_file_documents
from ultracram.data.hf_source import export_hf_dataset
from ultracram.data.sample import read_sample_paragraphs
from ultracram.data.tokenizer import train_tokenizer


@pytest.fixture
def parquet_corpus(tmp_path):
    paragraphs = read_sample_paragraphs()[:120]
    # Articles of four paragraphs joined by blank lines (as Wikipedia dumps store them), plus
    # an empty row that must be skipped.
    articles = ["\n\n".join(paragraphs[i : i + 4]) for i in range(0, len(paragraphs), 4)] + [""]
    path = tmp_path / "wiki.parquet"
    pq.write_table(pa.table({"id": list(range(len(articles))), "text": articles}), path)
    return path, [a for a in articles if a]


def test_export_keeps_one_document_per_row_and_is_reused(tmp_path, parquet_corpus):
    path, articles = parquet_corpus
    out = export_hf_dataset("parquet", tmp_path / "src", data_files=str(path))
    docs = list(iter_file_documents(out))
    assert len(docs) == len(articles)
    assert docs[0] == articles[0].replace("\n\n", "\n")
    mtime = out.stat().st_mtime_ns
    assert export_hf_dataset("parquet", tmp_path / "src", data_files=str(path)) == out
    assert out.stat().st_mtime_ns == mtime  # reused, not written again


def test_cli_prepares_shards_from_a_dataset(tmp_path, parquet_corpus):
    path, articles = parquet_corpus
    train_tokenizer(read_sample_paragraphs()[:300], vocab_size=500).save(str(tmp_path / "tok.json"))
    args = ["data", "prepare", "--hf_dataset", "parquet", "--hf_data_files", str(path),
            "--tokenizer", str(tmp_path / "tok.json"), "--out", str(tmp_path / "shards"),
            "--seq_len", "32", "--workers", "0", "--max_token_ratio", "1.0"]  # fmt: skip
    assert main(args) == 0
    shards = TokenShards(tmp_path / "shards")
    assert len(shards) > 0 and shards.manifest["counts"]["documents"] == len(articles)


def test_missing_column_and_unknown_dataset_are_named(tmp_path, parquet_corpus):
    path, _ = parquet_corpus
    with pytest.raises(DataError, match=r"no column 'content'.*id, text"):
        export_hf_dataset("parquet", tmp_path / "src", data_files=str(path), column="content")
    with pytest.raises(DataError, match="cannot load Hugging Face dataset 'parquet'"):
        export_hf_dataset("parquet", tmp_path / "src", data_files=str(tmp_path / "missing.parquet"))
