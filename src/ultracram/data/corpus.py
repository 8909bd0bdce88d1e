"""Pretraining corpora: raw text -> filtered, tokenised, packed fixed-length token shards.

Size (~560 lines): the writer (parallel tokenising, packing, atomic shards, resume) and the
reader (``TokenShards``) share the manifest format and are kept together; text reading lives in
``data/text.py``.

Layout of a prepared directory (``prepare_corpus``; read back with ``TokenShards``)::

    out/
      manifest.json        sources (+sha256), tokenizer sha256, counts, filters, seq_len, dtype,
                           shards, validation (the held-out split's shards)
      tokenizer.json       a copy of the tokenizer the shards were made with
      shard_00000.bin      (sequences, seq_len) uint16 (uint32 when the vocabulary exceeds 65536)
      ...
      val_00000.bin        the validation split, same format (absent with validation_fraction 0)

Documents are blank-line separated blocks (the shared Wikipedia file has one empty line between
articles; a one-document-per-line corpus without blank lines therefore becomes chunks of up to
``MAX_DOC_CHARS`` characters, split at line ends). Documents are tokenised without special
tokens, joined with [SEP] into one stream, and cut into sequences ``[CLS] <seq_len-2 tokens> [SEP]``
(fully packed, no padding; the last incomplete sequence of the corpus is dropped).

Validation split (``is_validation``): a document is held out when ``document_hash`` of its text
(blake2b-64 of its UTF-8 bytes as read, so identical documents always fall on the same side) is
below ``validation_fraction`` x 2^64. The split is by document, before packing, so no sequence
mixes training and validation text; it depends on nothing but the text (not on workers,
batching, resume or order). The raw text is hashed, not the case/whitespace-normalised text
``--dedup`` compares: normalising costs ~8x more (str.split), about 6 s of the main process on
the 174 MB benchmark corpus; with ``--dedup`` only the first spelling of a document is kept, so
variants cannot fall on both sides either. Held-out documents are kept in memory as they stream
past (a resumed run sees them again) and packed the same way into ``val_NNNNN.bin`` at the end.

Memory is constant in the corpus size (apart from the held-out validation text): text is
streamed in batches of documents, at most ``2 x workers`` batches are in flight, and a shard is
written (temp name, fsync, rename) as soon as it is full. The manifest is rewritten atomically
after each shard with the reader position, so a killed run resumes after its last complete
shard and never counts a half-written one.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import itertools
import json
import multiprocessing
import os
import re
import sys
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from tokenizers import Tokenizer

from ultracram.data.text import MAX_DOC_CHARS, SourceState, find_text_files, iter_file_documents
from ultracram.data.tokenizer import load_tokenizer
from ultracram.errors import DataError, RunMismatchError, UltracramError
from ultracram.fileio import (
    atomic_replace_dir,
    atomic_write_bytes,
    atomic_write_text,
    check_writable_dir,
    link_or_copy_tree,
    sha256_bytes,
    sha256_file,
)
from ultracram.progress import ProgressDisplay

MANIFEST = "manifest.json"
TOKENIZER = "tokenizer.json"
FORMAT_VERSION = 1
file_sha256 = sha256_file
"""The old name of ``ultracram.fileio.sha256_file``."""
SORT_BUFFER_TOKENS = 1 << 24
"""The length-sorting buffer is also flushed at this many tokens (64 MiB as uint32), so its memory
stays bounded whatever the document sizes."""


def normalized_hash(text: str) -> int:
    """8-byte hash of a document with case and whitespace runs normalised (for exact de-dup)."""
    norm = " ".join(text.lower().split()).encode("utf-8")
    return int.from_bytes(hashlib.blake2b(norm, digest_size=8).digest(), "little")


def document_hash(text: str) -> int:
    """8-byte hash of a document's UTF-8 bytes as read (for the validation split)."""
    return int.from_bytes(hashlib.blake2b(text.encode("utf-8"), digest_size=8).digest(), "little")


def validation_threshold(validation_fraction: float) -> int:
    """Hashes below this (of 2^64) are validation documents."""
    return int(validation_fraction * 2**64)  # exact: a float times a power of two


def is_validation(text: str, validation_fraction: float) -> bool:
    """Whether ``prepare_corpus`` holds the document ``text`` out for validation: its
    ``document_hash`` (blake2b-64, little-endian, of the UTF-8 text) is below
    ``validation_fraction`` x 2^64."""
    return document_hash(text) < validation_threshold(validation_fraction)


class HashSet:
    """A set of 64-bit hashes at ~8 bytes each: a small Python set merged into a sorted numpy
    array when it grows past ``buffer`` entries (a plain set of ints costs ~70 bytes each)."""

    def __init__(self, buffer: int = 1 << 18):
        self.sorted = np.empty(0, dtype=np.uint64)
        self.recent: set[int] = set()
        self.buffer = buffer

    def add(self, h: int) -> bool:
        """Add ``h``; False when it was already there."""
        if h in self.recent:
            return False
        if len(self.sorted):
            i = int(np.searchsorted(self.sorted, np.uint64(h)))
            if i < len(self.sorted) and int(self.sorted[i]) == h:
                return False
        self.recent.add(h)
        if len(self.recent) >= self.buffer:
            new = np.fromiter(self.recent, dtype=np.uint64, count=len(self.recent))
            self.sorted = np.union1d(self.sorted, new)
            self.recent = set()
        return True

    def __len__(self) -> int:
        return len(self.sorted) + len(self.recent)


# --------------------------------------------------------------------------------------------
# Tokenising (in worker processes) and packing
# --------------------------------------------------------------------------------------------

_WORKER_TOKENIZER: Any = None


def _init_worker(tokenizer_json: str) -> None:
    # One tokenizer per process; rayon threads off so N processes use N cores, not N^2 threads.
    os.environ["TOKENIZERS_PARALLELISM"] = "false"
    global _WORKER_TOKENIZER
    _WORKER_TOKENIZER = Tokenizer.from_str(tokenizer_json)


def _encode_batch(docs: list[str], max_ratio: float) -> tuple[np.ndarray, np.ndarray, dict[str, int]]:
    """Tokenise ``docs`` and apply the cramming filter.

    Returns (ids of kept documents concatenated (N,) uint32, token count per kept doc (D,),
    stats). A document is dropped when tokens > ``max_ratio`` x characters (Geiping & Goldstein
    2022, sec. 4.4: such documents are mostly code, tables or unknown scripts that compress badly).
    """
    encs = _WORKER_TOKENIZER.encode_batch_fast(docs, add_special_tokens=False)
    lengths = np.fromiter((len(e.ids) for e in encs), dtype=np.int64, count=len(encs))
    chars = np.fromiter((len(d) for d in docs), dtype=np.int64, count=len(docs))
    keep = lengths <= max_ratio * chars
    kept = [e.ids for e, k in zip(encs, keep) if k]
    ids = np.fromiter(itertools.chain.from_iterable(kept), dtype=np.uint32, count=int(lengths[keep].sum()))
    stats = {
        "documents_encoded": len(docs),
        "documents_dropped_ratio": int((~keep).sum()),
        "characters": int(chars.sum()),
        "tokens_encoded": int(lengths.sum()),
    }
    return ids, lengths[keep], stats


class _Packer:
    """Joins documents with [SEP] and cuts ``[CLS] <seq_len-2 tokens> [SEP]`` sequences."""

    def __init__(self, seq_len: int, cls_id: int, sep_id: int, sort_buffer: int, dtype: np.dtype):
        self.body = seq_len - 2
        self.seq_len, self.cls, self.sep, self.dtype = seq_len, cls_id, sep_id, dtype
        self.sort_buffer = sort_buffer  # 0: keep corpus order
        self.carry = np.empty(0, dtype=np.uint32)  # < body tokens left over from the stream
        self.pending: list[np.ndarray] = []  # finished (n, seq_len) blocks not yet in a shard
        self.pending_rows = 0
        self.buffered: list[np.ndarray] = []  # documents waiting to be sorted by length
        self.buffered_docs = self.buffered_tokens = 0

    def add(self, ids: np.ndarray, lengths: np.ndarray) -> None:
        if not len(lengths):
            return
        if self.sort_buffer:
            ends = np.cumsum(lengths)
            self.buffered += np.split(ids, ends[:-1])
            self.buffered_docs += len(lengths)
            self.buffered_tokens += len(ids)
            if self.buffered_docs >= self.sort_buffer or self.buffered_tokens >= SORT_BUFFER_TOKENS:
                self.flush_sorted()
            return
        self._pack(ids, lengths)

    def flush_sorted(self) -> None:
        """Pack buffered documents shortest first (cramming's sentence-length ordering, applied
        within a bounded buffer of documents, not globally)."""
        if not self.buffered:
            return
        docs = sorted(self.buffered, key=len)
        self.buffered, self.buffered_docs, self.buffered_tokens = [], 0, 0
        self._pack(np.concatenate(docs), np.array([len(d) for d in docs], dtype=np.int64))

    def _pack(self, ids: np.ndarray, lengths: np.ndarray) -> None:
        # Stream = carry + doc1 [SEP] doc2 [SEP] ...; a [SEP] follows every document.
        ends = np.cumsum(lengths)
        stream = np.insert(ids, ends, self.sep).astype(np.uint32, copy=False)
        stream = np.concatenate([self.carry, stream])
        n = len(stream) // self.body
        self.carry = stream[n * self.body :].copy()
        if n:
            rows = np.empty((n, self.seq_len), dtype=self.dtype)
            rows[:, 0] = self.cls
            rows[:, 1:-1] = stream[: n * self.body].reshape(n, self.body)
            rows[:, -1] = self.sep
            self.pending.append(rows)
            self.pending_rows += n

    def take(self) -> np.ndarray:
        rows = np.concatenate(self.pending) if self.pending else np.empty((0, self.seq_len), self.dtype)
        self.pending, self.pending_rows = [], 0
        return rows


# --------------------------------------------------------------------------------------------
# Writing: shards + manifest, atomically
# --------------------------------------------------------------------------------------------


def _write_manifest(out_dir: Path, manifest: dict) -> None:
    atomic_write_bytes(out_dir / MANIFEST, (json.dumps(manifest, indent=1) + "\n").encode())


def _vocab_dtype(vocab_size: int) -> np.dtype:
    return np.dtype(np.uint16) if vocab_size <= 65536 else np.dtype(np.uint32)


def _batched(docs: Iterator[str] | list[str], batch_docs: int, batch_chars: int) -> Iterator[list[str]]:
    """Documents in batches of at most ``batch_docs`` documents / about ``batch_chars`` characters."""
    batch: list[str] = []
    chars = 0
    for doc in docs:
        batch.append(doc)
        chars += len(doc)
        if len(batch) >= batch_docs or chars >= batch_chars:
            yield batch
            batch, chars = [], 0
    if batch:
        yield batch


# --------------------------------------------------------------------------------------------
# prepare_corpus
# --------------------------------------------------------------------------------------------


def default_token_ratio(vocab_size: int) -> float:
    """Cramming's document filter keeps documents with at most this many tokens per character:
    0.25 for vocabularies of 32768 and more (Geiping & Goldstein 2022), 0.5 below, because a
    4096-token vocabulary splits ordinary English into ~0.27 tokens per character, so 0.25
    would drop most of it."""
    return 0.25 if vocab_size >= 32768 else 0.5


def prepare_corpus(
    inputs: Sequence[str | Path],
    out_dir: str | Path,
    tokenizer_path: str | Path,
    seq_len: int = 128,
    *,
    dedup: bool = False,
    sort_by_length: bool = False,
    sort_buffer: int = 16384,
    max_token_ratio: float | None = None,
    validation_fraction: float = 0.005,
    workers: int | None = None,
    batch_docs: int = 64,
    batch_chars: int = 1 << 20,
    shard_sequences: int = 1 << 16,
    resume: bool = True,
    show_progress: bool = False,
    overwrite: bool = True,
    _after_shard: Callable[[int], None] | None = None,
) -> dict:
    """Prepare pretraining shards from raw text; returns the manifest (also in out_dir).

    inputs: files or directories (plain, .xz, .gz or .zst). tokenizer_path: a tokenizer.json
    (or a directory holding one); it is copied into ``out_dir``. ``dedup`` drops exact duplicate
    documents (case and whitespace normalised; ~8 bytes of memory per distinct document).
    ``sort_by_length`` packs documents shortest first within buffers of ``sort_buffer`` docs.
    Documents with more than ``max_token_ratio`` x characters tokens are dropped (None:
    ``default_token_ratio`` of the tokenizer's vocabulary). Documents whose ``document_hash``
    is below ``validation_fraction`` x 2^64 (``is_validation``; 0 disables) are held out and
    packed into ``val_NNNNN.bin`` (manifest key ``validation``, read with
    ``TokenShards(out_dir, split="validation")``), never into the training shards. ``workers``
    processes tokenise (default: all cores; 0 tokenises in this process with the tokenizer's own
    threads). With ``resume`` (default), a killed run with the same settings continues after its
    last complete shard; otherwise (or when the settings differ) it starts over.

    A finished prepare with the same settings whose shards are intact is kept as it is (nothing
    to do). A finished prepare already in ``out_dir`` is never removed before the new one is complete:
    the new one is built in a temporary sibling and swapped in (other files of ``out_dir`` are
    kept); with different settings it is replaced only with ``overwrite`` (else a
    ``RunMismatchError`` before any work). An unwritable ``out_dir``, a ``manifest.json`` that is
    not a prepare's, or a different ``tokenizer.json`` in a directory without one, is a
    ``DataError`` before any work.
    """
    if seq_len < 3:
        raise DataError(f"seq_len must be at least 3 ([CLS] token [SEP]), got {seq_len}")
    _check_numbers(workers=workers, shard_sequences=shard_sequences, batch_docs=batch_docs,
                   batch_chars=batch_chars, sort_buffer=sort_buffer if sort_by_length else None,
                   max_token_ratio=max_token_ratio)  # fmt: skip
    if not 0 <= validation_fraction < 0.5:  # also refuses NaN
        raise DataError(
            f"--validation_fraction must be in [0, 0.5) (0: no validation split), got {validation_fraction}"
        )
    out_dir = Path(out_dir)
    label = str(out_dir)
    try:
        check_writable_dir(out_dir)
    except UltracramError as e:
        raise DataError(str(e)) from e
    tok_path = Path(tokenizer_path)
    if tok_path.is_dir():
        tok_path = tok_path / TOKENIZER
    if not tok_path.is_file():
        raise DataError(f"{tok_path}: no such tokenizer file; expected a tokenizer.json "
                        "(`ultracram tokenizer train`)")  # fmt: skip
    try:
        tok: Tokenizer = load_tokenizer(tok_path)
    except Exception as e:
        raise DataError(f"{tok_path}: cannot load tokenizer: {e}") from e
    cls_id, sep_id = tok.token_to_id("[CLS]"), tok.token_to_id("[SEP]")
    if cls_id is None or sep_id is None:
        raise DataError(
            f"{tok_path}: tokenizer has no [CLS]/[SEP] token; train it with `ultracram tokenizer train`"
        )
    vocab_size = tok.get_vocab_size()
    max_token_ratio = default_token_ratio(vocab_size) if max_token_ratio is None else max_token_ratio
    dtype = _vocab_dtype(vocab_size)
    files = find_text_files(inputs)
    tok_json = tok_path.read_text(encoding="utf-8")
    tok_sha = sha256_bytes(tok_json.encode("utf-8"))
    workers = (os.cpu_count() or 1) if workers is None else workers

    settings = {
        "format_version": FORMAT_VERSION,
        "inputs": [
            {"path": str(f.resolve()), "bytes": f.stat().st_size, "mtime_ns": f.stat().st_mtime_ns}
            for f in files
        ],
        "tokenizer_sha256": tok_sha,
        "seq_len": seq_len,
        "dedup": dedup,
        "sort_by_length": sort_by_length,
        "sort_buffer": sort_buffer if sort_by_length else 0,
        "max_token_ratio": max_token_ratio,
        "validation_fraction": validation_fraction,
        "batch_docs": batch_docs,
        "batch_chars": batch_chars,
        "shard_sequences": shard_sequences,
        "max_doc_chars": MAX_DOC_CHARS,
    }

    def write(out_dir: Path, resume: bool) -> dict:
        """Prepare into ``out_dir`` (resuming an unfinished run there when ``resume``)."""
        out_dir.mkdir(parents=True, exist_ok=True)
        state = _resume_state(out_dir, settings) if resume else None
        _clean_dir(out_dir, keep={s["file"] for s in state["shards"]} if state else set())
        atomic_write_text(out_dir / TOKENIZER, tok_json)

        shards: list[dict] = state["shards"] if state else []
        counts: dict[str, int] = dict(state["counts"]) if state else {}
        for k in ("documents", "documents_encoded", "documents_dropped_ratio", "documents_dropped_duplicate", "characters",
                  "tokens_encoded", "tokens_kept", "sequences", "validation_documents",
                  "validation_documents_dropped_ratio", "validation_sequences"):  # fmt: skip
            counts.setdefault(k, 0)
        skip_batches = state["batches_done"] if state else 0
        packer = _Packer(seq_len, cls_id, sep_id, sort_buffer if sort_by_length else 0, dtype)
        if state:
            packer.carry = np.asarray(state["carry"], dtype=np.uint32)

        sources: list[SourceState] = [SourceState(str(f), f.stat().st_size) for f in files]
        total_bytes = sum(s.bytes for s in sources)

        held_out = (f"documents with blake2b-64 of the UTF-8 text < {validation_fraction} x 2^64 held out "
                    "(val_*.bin)")  # fmt: skip

        def base_manifest(complete: bool) -> dict:
            return {
                **settings,
                "complete": complete,
                "vocab_size": vocab_size,
                "dtype": dtype.name,
                "tokenizer": TOKENIZER,
                "sources": [dataclasses.asdict(s) for s in sources],
                "filters": {
                    "max_token_ratio": f"drop documents with tokens > {max_token_ratio} x characters",
                    "dedup": "exact, case/whitespace-normalised blake2b-64" if dedup else None,
                    "sort_by_length": f"shortest document first within {sort_buffer} documents"
                    if sort_by_length
                    else None,
                    "validation": held_out if validation_fraction else None,
                },
                "counts": dict(counts),
                "shards": list(shards),
                "validation": list(validation),
            }

        threshold = validation_threshold(validation_fraction)
        val_docs: list[str] = []  # held-out documents in corpus order, packed at the end

        def training_docs() -> Iterator[str]:
            # Every document passes here, also on a resumed run (its skipped batches included),
            # so val_docs ends up complete; the training batches are numbered the same each run.
            seen = HashSet() if dedup else None
            for src in sources:
                for doc in iter_file_documents(src.path, src):
                    if seen is not None and not seen.add(normalized_hash(doc)):
                        counts_dup[0] += 1
                        continue
                    if threshold and document_hash(doc) < threshold:
                        val_docs.append(doc)
                        continue
                    yield doc

        def batches() -> Iterator[list[str]]:
            return _batched(training_docs(), batch_docs, batch_chars)

        def bytes_done() -> int:
            return sum(s.bytes if s.sha256 else s.pos for s in sources)

        counts_dup = [0]
        validation: list[dict] = []  # val_NNNNN.bin entries, written after the last training shard
        progress = _Progress(total_bytes, show_progress, label)
        next_shard = len(shards)
        batch_index = skip_batches
        pool = None
        try:
            if workers > 0:
                pool = multiprocessing.get_context("spawn").Pool(
                    workers, initializer=_init_worker, initargs=(tok_json,)
                )
            else:
                _init_worker(tok_json)
                os.environ.pop("TOKENIZERS_PARALLELISM", None)

            in_flight: list = []
            dup_at_batch: list[int] = []

            def consume(result) -> None:
                nonlocal batch_index, next_shard
                ids, lengths, stats = result
                for k, v in stats.items():
                    counts[k] += v
                counts["tokens_kept"] += int(lengths.sum())
                packer.add(ids, lengths)
                batch_index += 1
                counts["documents_dropped_duplicate"] = dup_at_batch.pop(0)
                if packer.pending_rows >= shard_sequences and not packer.buffered:
                    next_shard = _flush_shard(out_dir, packer, next_shard, shards, counts)
                    _write_manifest(out_dir, {**base_manifest(False), "batches_done": batch_index,
                                              "carry": packer.carry.tolist()})  # fmt: skip
                    if _after_shard is not None:
                        _after_shard(len(shards))
                progress.update(bytes_done(), counts)

            for b, docs in enumerate(batches()):
                if b < skip_batches:  # already in complete shards (resume)
                    progress.update(bytes_done(), counts)
                    continue
                dup_at_batch.append(counts_dup[0])
                if pool is None:
                    consume(_encode_batch(docs, max_token_ratio))
                    continue
                in_flight.append(pool.apply_async(_encode_batch, (docs, max_token_ratio)))
                while len(in_flight) >= 2 * workers:  # bounded: constant memory
                    consume(in_flight.pop(0).get())
            while in_flight:
                consume(in_flight.pop(0).get())
            counts["documents_dropped_duplicate"] = counts_dup[0]
            packer.flush_sorted()
            if packer.pending_rows:
                next_shard = _flush_shard(out_dir, packer, next_shard, shards, counts)
            counts["tokens_dropped_tail"] = len(packer.carry)
            # The validation split: packed like the training stream, by its own packer.
            val_packer = _Packer(seq_len, cls_id, sep_id, sort_buffer if sort_by_length else 0, dtype)
            encode = functools.partial(_encode_batch, max_ratio=max_token_ratio)
            val_batches = _batched(val_docs, batch_docs, batch_chars)
            counts["validation_documents_dropped_ratio"] = 0
            for ids, lengths, stats in (
                map(encode, val_batches) if pool is None else pool.imap(encode, val_batches)
            ):
                counts["validation_documents_dropped_ratio"] += stats["documents_dropped_ratio"]
                val_packer.add(ids, lengths)
            val_packer.flush_sorted()
            counts["validation_documents"] = len(val_docs)
            counts["validation_sequences"] = _write_validation(
                out_dir, val_packer.take(), shard_sequences, validation
            )
            progress.update(bytes_done(), counts)  # the last shard's sequences
        finally:
            progress.close()
            if pool is not None:
                pool.terminate()
                pool.join()

        counts["documents"] = sum(s.documents for s in sources)
        if counts["sequences"] == 0:
            names = ", ".join(s.path for s in sources)
            raise DataError(
                f"{names}: the corpus yields no sequences of {seq_len} tokens ({counts['documents']} documents, "
                f"{counts['documents_dropped_ratio']} dropped by the token/character filter, "
                f"{counts['documents_dropped_duplicate']} duplicates, {counts['validation_documents']} held out "
                f"for validation, {counts['tokens_kept']} tokens kept); expected at least {seq_len - 2} tokens of text"
            )
        if validation_fraction and not counts["validation_sequences"]:
            print(
                f"warning: --validation_fraction {validation_fraction} held out {counts['validation_documents']} of "
                f"{counts['documents']} documents, too few for one sequence of {seq_len} tokens: no validation "
                "split was written (pretrain validates on the training shards); raise --validation_fraction",
                file=sys.stderr,
            )
        if counts["documents_dropped_ratio"] > counts["documents"] / 2:
            # Cramming's 0.25 suits a 32k vocabulary; smaller vocabularies split words into more
            # tokens and fail it on ordinary text, which silently shrinks the corpus.
            print(
                f"warning: the token/character filter dropped {counts['documents_dropped_ratio']} of "
                f"{counts['documents']} documents (max_token_ratio {max_token_ratio}); with a "
                f"{vocab_size}-token vocabulary ordinary text may exceed it: consider --max_token_ratio 0.5",
                file=sys.stderr,
            )
        manifest = base_manifest(True)
        manifest["counts"]["documents"] = counts["documents"]
        manifest["tokens"] = counts["sequences"] * seq_len
        _write_manifest(out_dir, manifest)
        return manifest

    finished = _finished_manifest(out_dir)
    if finished is None:
        _check_foreign_tokenizer(out_dir, tok_json)
        return write(out_dir, resume)
    # A finished prepare is replaced only once the new one is complete: built in a sibling
    # directory (with every file of out_dir that is not the prepare's own linked in) and swapped.
    changed = sorted(k for k, v in settings.items() if finished.get(k) != v)
    if not changed and _intact(out_dir, [*finished.get("shards", []), *(finished.get("validation") or [])]):
        # The same inputs (path, size, mtime), tokenizer and settings give the same bytes: a
        # rerun (a resumed study, a repeated command) has nothing to do.
        print(
            f"{out_dir}: already prepared with these settings, shards intact: nothing to do", file=sys.stderr
        )
        return finished
    if changed and not overwrite:
        raise RunMismatchError(
            f"{out_dir / MANIFEST} records a finished prepare with different settings ({', '.join(changed)}); "
            "pass --overwrite to replace it (its shards stay until the new ones are complete), or choose "
            "another --out"
        )
    made: dict[str, dict] = {}

    def build(tmp: Path) -> None:
        for entry in sorted(out_dir.iterdir()):
            if not _is_prepare_file(entry.name):
                link_or_copy_tree(entry, tmp / entry.name)
        made["manifest"] = write(tmp, False)

    atomic_replace_dir(out_dir, build)
    return made["manifest"]


def _check_numbers(**values: float | None) -> None:
    """Each numeric setting in range, else a DataError naming its command-line flag."""
    least = {"workers": 0, "max_token_ratio": 0}
    for name, value in values.items():
        if value is None:
            continue
        low = least.get(name, 1)
        bad = value <= low if name == "max_token_ratio" else value < low
        if bad:
            flag = name if name.startswith("batch_") else "--" + name  # batch_*: not CLI flags
            op = "greater than" if name == "max_token_ratio" else "at least"
            raise DataError(f"{flag} must be {op} {low}, got {value}")


def _is_prepare_file(name: str) -> bool:
    """Whether ``name`` in an output directory is written by ``prepare_corpus`` itself."""
    return (name in (MANIFEST, TOKENIZER) or bool(re.fullmatch(r"(shard|val)_\d{5}\.bin", name))
            or bool(re.fullmatch(r"\..+\.tmp(-\d+)?", name)))  # fmt: skip


def _intact(out_dir: Path, files: list[dict]) -> bool:
    """Whether every shard of a manifest's list ({file, sha256, ...}) is in ``out_dir`` with its
    recorded sha256."""
    return all(
        (out_dir / f["file"]).is_file() and sha256_file(out_dir / f["file"]) == f["sha256"] for f in files
    )


def _finished_manifest(out_dir: Path) -> dict | None:
    """The manifest of a finished prepare in ``out_dir``, or None (no manifest, or an unfinished
    run's); a ``manifest.json`` that is not a prepare's is a DataError (it is left alone)."""
    path = out_dir / MANIFEST
    if not os.path.lexists(path):
        return None
    try:
        m = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise DataError(f"{path}: not the manifest of an `ultracram data prepare` ({e}); remove it or "
                        "choose another --out") from e  # fmt: skip
    if not isinstance(m, dict) or "format_version" not in m or "shards" not in m:
        raise DataError(f"{path}: not the manifest of an `ultracram data prepare`; remove it or "
                        "choose another --out")  # fmt: skip
    return m if m.get("complete") else None


def _check_foreign_tokenizer(out_dir: Path, tok_json: str) -> None:
    """Refuse to overwrite a different ``tokenizer.json`` in a directory that holds no prepare."""
    path = out_dir / TOKENIZER
    if os.path.lexists(out_dir / MANIFEST) or not os.path.lexists(path):
        return
    try:
        same = path.read_bytes() == tok_json.encode("utf-8")
    except OSError:
        same = False
    if not same:
        raise DataError(f"--out {out_dir} holds a different tokenizer.json and no prepared data; choose "
                        "another --out (the tokenizer is copied there)")  # fmt: skip


def _flush_shard(out_dir: Path, packer: _Packer, index: int, shards: list[dict], counts: dict) -> int:
    rows = packer.take()
    name = f"shard_{index:05d}.bin"
    data = rows.tobytes()
    atomic_write_bytes(out_dir / name, data)
    shards.append({"file": name, "sequences": len(rows), "sha256": sha256_bytes(data)})
    counts["sequences"] += len(rows)
    return index + 1


def _write_validation(out_dir: Path, rows: np.ndarray, shard_sequences: int, entries: list[dict]) -> int:
    """Write the validation rows (n, seq_len) as val_00000.bin, ... of at most ``shard_sequences``
    rows, appending their manifest entries to ``entries``; returns n."""
    for index, start in enumerate(range(0, len(rows), shard_sequences)):
        part = rows[start : start + shard_sequences]
        name = f"val_{index:05d}.bin"
        data = part.tobytes()
        atomic_write_bytes(out_dir / name, data)
        entries.append({"file": name, "sequences": len(part), "sha256": sha256_bytes(data)})
    return len(rows)


def _resume_state(out_dir: Path, settings: dict) -> dict | None:
    """The state of an unfinished run with the same settings whose shards are intact, else None."""
    path = out_dir / MANIFEST
    if not path.is_file():
        return None
    try:
        old = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        return None
    if old.get("complete") or "batches_done" not in old:
        return None
    if any(old.get(k) != v for k, v in settings.items()):
        return None
    return old if _intact(out_dir, old.get("shards", [])) else None


def _clean_dir(out_dir: Path, keep: set[str]) -> None:
    """Remove shards / temp files of an earlier run that are not kept (stale or half-written);
    validation shards are never kept (they are written again at the end of every run)."""
    for f in out_dir.iterdir():
        if f.name in keep:
            continue
        # Temporary files of ultracram.fileio.atomic_write: ".<name>.tmp-<pid>".
        if re.fullmatch(r"(shard|val)_\d{5}\.bin", f.name) or re.fullmatch(r"\..+\.tmp(-\d+)?", f.name):
            f.unlink()
    if not keep and (out_dir / MANIFEST).exists():
        (out_dir / MANIFEST).unlink()


class _Progress:
    """Progress over input bytes (``ultracram.progress``: a bar on a terminal, plain lines in
    a log), or nothing."""

    def __init__(self, total: int, enabled: bool, out_dir: Path):
        self.total = total
        self.display = ProgressDisplay(f"prepare {out_dir}", total, enabled=enabled)

    def update(self, done: int, counts: dict) -> None:
        if not self.display.enabled:
            return
        info = (f"{done / 1e6:,.1f}/{self.total / 1e6:,.1f} MB  {counts['documents_encoded']:,} docs  "
                f"{counts['tokens_encoded'] / 1e6:.1f}M tok  {counts['sequences']:,} seqs written")  # fmt: skip
        self.display.update(done, info)

    def close(self) -> None:
        self.display.close()


# --------------------------------------------------------------------------------------------
# Reading shards
# --------------------------------------------------------------------------------------------


SPLITS = {"train": "shards", "validation": "validation"}
"""Split name -> the manifest key listing its shard files."""


def _validation_sequences(manifest: dict) -> int:
    return sum(int(s.get("sequences", 0)) for s in manifest.get("validation") or [])


def has_validation(data: str | Path | TokenShards) -> bool:
    """Whether a prepared directory (or an open ``TokenShards``) holds a non-empty validation
    split; False for a directory without a readable, finished manifest (``TokenShards`` of it
    says what is wrong)."""
    if not isinstance(data, (str, os.PathLike)):  # a TokenShards (or anything with its manifest)
        manifest = getattr(data, "manifest", None)
    else:
        try:
            manifest = json.loads((Path(data) / MANIFEST).read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError):
            return False
    return (
        isinstance(manifest, dict) and bool(manifest.get("complete")) and _validation_sequences(manifest) > 0
    )


class TokenShards:
    """Read-only view of one split of a prepared directory: ``len(shards)`` sequences of
    ``seq_len`` ids.

    ``split`` "train" (default: ``shard_*.bin``) or "validation" (``val_*.bin``, the documents
    ``prepare_corpus`` held out; a ``DataError`` when the directory has none: see
    ``has_validation``). ``shards[i]`` is one sequence (seq_len,) in the stored dtype;
    ``get_rows(indices)`` gathers (n, seq_len) int64 rows. Shards are memory-mapped, so opening
    is instant at any size. ``entries`` are the split's manifest entries (file, sequences, sha256).
    """

    def __init__(self, directory: str | Path, *, split: str = "train", allow_incomplete: bool = False):
        if split not in SPLITS:
            raise DataError(f"split must be one of {', '.join(map(repr, SPLITS))}, got {split!r}")
        self.split = split
        self.directory = Path(directory)
        path = self.directory / MANIFEST
        if not path.is_file():
            raise DataError(f"{self.directory}: no {MANIFEST}; expected a directory made by "
                            "`ultracram data prepare`")  # fmt: skip
        try:
            self.manifest: dict = json.loads(path.read_text(encoding="utf-8"))
        except json.JSONDecodeError as e:
            raise DataError(f"{path}: not valid JSON: {e}") from e
        m = self.manifest
        missing = [k for k in ("seq_len", "vocab_size", "dtype", "shards") if k not in m]
        if missing:
            raise DataError(f"{path}: missing key(s) {', '.join(missing)}")
        if not m.get("complete", False) and not allow_incomplete:
            raise DataError(f"{path}: preparation did not finish ({len(m['shards'])} shard(s) written); "
                            "run `ultracram data prepare` again to resume")  # fmt: skip
        self.seq_len: int = int(m["seq_len"])
        self.vocab_size: int = int(m["vocab_size"])
        self.dtype = np.dtype(m["dtype"])
        self.tokenizer_path: Path = self.directory / m.get("tokenizer", TOKENIZER)
        if split == "validation" and not _validation_sequences(m):
            fraction = m.get("validation_fraction")
            how = ("prepared before `data prepare` held out a validation split" if fraction is None else
                   "prepared with --validation_fraction 0" if not fraction else
                   f"--validation_fraction {fraction} held out too little text for one sequence")  # fmt: skip
            raise DataError(f"{path}: no validation split ({how}); prepare again with --validation_fraction > 0, "
                            "or use the training shards")  # fmt: skip
        self.entries: list[dict] = list(m.get(SPLITS[split]) or [])
        self._maps: list[np.memmap] = []
        for s in self.entries:
            f = self.directory / s["file"]
            expected = s["sequences"] * self.seq_len * self.dtype.itemsize
            if not f.is_file() or f.stat().st_size != expected:
                got = f.stat().st_size if f.is_file() else "missing"
                raise DataError(f"{f}: expected {expected} bytes ({s['sequences']} sequences), got {got}")
            self._maps.append(np.memmap(f, dtype=self.dtype, mode="r", shape=(s["sequences"], self.seq_len)))
        self._starts = np.cumsum([0] + [len(mm) for mm in self._maps])  # (num_shards + 1,)

    def __len__(self) -> int:
        return int(self._starts[-1])

    def __getitem__(self, i: int) -> np.ndarray:
        n = len(self)
        if not -n <= i < n:
            raise IndexError(f"sequence {i} out of range for {n} sequences")
        i %= n
        s = int(np.searchsorted(self._starts, i, side="right")) - 1
        return np.asarray(self._maps[s][i - self._starts[s]])

    def get_rows(self, indices: np.ndarray | Sequence[int]) -> np.ndarray:
        """Rows ``indices`` (n,) -> (n, seq_len) int64, in the order given."""
        idx = np.asarray(indices, dtype=np.int64)
        if idx.size and (idx.min() < 0 or idx.max() >= len(self)):
            raise IndexError(f"indices out of range for {len(self)} sequences")
        out = np.empty((len(idx), self.seq_len), dtype=np.int64)
        shard = np.searchsorted(self._starts, idx, side="right") - 1
        for s in np.unique(shard):
            sel = shard == s
            out[sel] = self._maps[s][idx[sel] - self._starts[s]]
        return out

    def tokenizer(self):
        """The ``tokenizers.Tokenizer`` the shards were made with."""
        return load_tokenizer(self.tokenizer_path)

    def __repr__(self) -> str:
        split = "" if self.split == "train" else f", split={self.split!r}"
        return f"TokenShards({str(self.directory)!r}{split}, sequences={len(self)}, seq_len={self.seq_len})"


__all__ = [
    "MAX_DOC_CHARS",
    "DataError",
    "HashSet",
    "SourceState",
    "TokenShards",
    "document_hash",
    "find_text_files",
    "has_validation",
    "is_validation",
    "iter_file_documents",
    "normalized_hash",
    "prepare_corpus",
]
