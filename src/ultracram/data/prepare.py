"""``ultracram data prepare``: its settings and the command (raw text and/or a Hugging Face
dataset -> token shards, through ``ultracram.data.corpus.prepare_corpus``)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from ultracram.settings import SettingsError


@dataclass(frozen=True)
class PrepareSettings:
    """What ``ultracram data prepare`` makes, and how."""

    tokenizer: str
    """tokenizer.json (or a directory holding one); copied into --out."""
    out: str
    """Output directory: shards, manifest.json, tokenizer.json."""
    input: list[str] = field(default_factory=list)
    """Text files or directories (plain, .xz, .gz, .zst; documents are blank-line separated blocks)."""
    hf_dataset: str | None = None
    """Also a Hugging Face dataset (needs the network, or a builder such as parquet with
    --hf_data_files), streamed once into OUT/hf_source/."""
    hf_config: str | None = None
    """Dataset configuration (e.g. 20231101.en)."""
    hf_split: str = "train"
    """Dataset split."""
    hf_column: str = "text"
    """Text column."""
    hf_data_files: list[str] | None = None
    """Local files for a builder dataset."""
    hf_max_documents: int | None = None
    """Stop after this many documents of the dataset."""
    seq_len: int = 128
    """Tokens per packed sequence, [CLS] and [SEP] included."""
    dedup: bool = False
    """Drop exact duplicate documents (case and whitespace normalised)."""
    sort_by_length: bool = False
    """Pack documents shortest first, within buffers of --sort_buffer documents."""
    sort_buffer: int = 16384
    """Documents per sort buffer."""
    max_token_ratio: float | None = None
    """Drop documents with more tokens than this x characters; null: 0.25 for vocabularies of
    32768 and more, 0.5 below (see docs/data.md)."""
    validation_fraction: float = 0.005
    """Hold out this fraction of documents as the validation split (val_*.bin), chosen by a hash
    of each document's text, so the same documents whatever the workers, order or resume; 0:
    none. In [0, 0.5)."""
    workers: int | None = None
    """Tokenising processes; null: all cores; 0: in-process with the tokenizer's threads."""
    shard_sequences: int = 65536
    """Sequences per shard."""
    restart: bool = False
    """Start over instead of resuming after the last complete shard."""
    overwrite: bool = False
    """Replace a finished prepare with different settings in --out (its shards stay until the
    new ones are complete)."""

    def __post_init__(self) -> None:
        # The numbers are checked by prepare_corpus, which library callers use too.
        if not self.input and not self.hf_dataset:
            raise SettingsError(
                ["give --input files/directories, --hf_dataset NAME, or both"], "data prepare settings"
            )


def prepare_command(settings: PrepareSettings) -> dict:
    """raw text -> filtered, tokenised, packed fixed-length shards + manifest.json

    Stream text files/directories and/or a Hugging Face dataset's text column, drop documents
    with too many tokens per character (cramming's filter), optionally de-duplicate and order by
    length, and pack [CLS] ... [SEP] sequences into memory-mapped shards. A killed run resumes
    after its last complete shard when rerun with the same arguments. Whole documents (a
    --validation_fraction of them, by a hash of their text) are held out as the validation split.

    Args:
        settings: what to prepare (its fields are this command's flags).
    """
    from ultracram.data.corpus import prepare_corpus
    from ultracram.fileio import check_writable_dir

    s = settings
    check_writable_dir(s.out)  # before --hf_dataset writes OUT/hf_source
    inputs = list(s.input)
    if s.hf_dataset:
        from ultracram.data.hf_source import export_hf_dataset

        inputs.append(export_hf_dataset(s.hf_dataset, Path(s.out) / "hf_source", config=s.hf_config, split=s.hf_split,
                                        column=s.hf_column, data_files=s.hf_data_files,
                                        max_documents=s.hf_max_documents))  # fmt: skip
    try:
        m = prepare_corpus(inputs, s.out, s.tokenizer, s.seq_len, dedup=s.dedup, sort_by_length=s.sort_by_length,
                           sort_buffer=s.sort_buffer, max_token_ratio=s.max_token_ratio,
                           validation_fraction=s.validation_fraction, workers=s.workers,
                           shard_sequences=s.shard_sequences, resume=not s.restart, show_progress=True,
                           overwrite=s.overwrite)  # fmt: skip
    except KeyboardInterrupt:
        raise KeyboardInterrupt(f"the complete shards in {s.out} are kept; the same command resumes after the "
                                "last of them") from None  # fmt: skip
    c = m["counts"]
    print(f"{s.out}: {c['sequences']:,} sequences x {m['seq_len']} in {len(m['shards'])} shard(s); "
          f"{c['documents']:,} documents, {c['documents_dropped_ratio']:,} dropped by the ratio filter "
          f"(> {m['max_token_ratio']} tokens per character), "
          f"{c['documents_dropped_duplicate']:,} duplicates; validation: {c['validation_sequences']:,} sequences "
          f"from {c['validation_documents']:,} held-out documents")  # fmt: skip
    return m
