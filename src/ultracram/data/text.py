"""Reading raw text corpora: files (plain, .xz, .gz, .zst) -> documents.

Shared by the tokenizer trainer (``ultracram.data.tokenizer``) and the shard writer
(``ultracram.data.corpus``). Documents are blank-line separated blocks; a block longer than
``MAX_DOC_CHARS`` is split at line ends, so memory stays bounded even for a file without
blank lines.
"""

from __future__ import annotations

import dataclasses
import gzip
import hashlib
import io
import lzma
from collections.abc import Iterator, Sequence
from pathlib import Path

from ultracram.errors import DataError, optional_import

COMPRESSED = (".xz", ".gz", ".zst")
TEXT_SUFFIXES = (".txt", ".text", ".raw")
MAX_DOC_CHARS = 1 << 20
"""A blank-line block longer than this is split at line ends, so memory stays bounded even for a
file with no blank lines at all."""


def find_text_files(inputs: Sequence[str | Path]) -> list[Path]:
    """Expand ``inputs`` (files or directories, searched recursively) into a sorted file list.

    In directories only ``*.txt``/``*.text``/``*.raw`` files, optionally compressed with
    .xz/.gz/.zst, are taken; files named explicitly are taken whatever their suffix.
    """
    if not inputs:
        raise DataError("no input given; expected text files or directories")
    files: list[Path] = []
    for item in inputs:
        p = Path(item)
        if p.is_dir():
            found = sorted(f for f in p.rglob("*") if f.is_file() and _is_text_name(f.name))
            if not found:
                raise DataError(
                    f"{p}: directory has no text files; expected *.txt (or .text/.raw), optionally "
                    "compressed as .xz/.gz/.zst"
                )
            files += found
        elif p.is_file():
            files.append(p)
        else:
            raise DataError(f"{p}: no such file or directory")
    return files


def _is_text_name(name: str) -> bool:
    name = name.lower()
    for c in COMPRESSED:
        if name.endswith(c):
            name = name[: -len(c)]
            break
    return name.endswith(TEXT_SUFFIXES)


class _CountingReader(io.RawIOBase):
    """Wraps a raw file: feeds sha256 of the stored bytes and counts them (for progress)."""

    def __init__(self, raw: io.BufferedReader):
        self.raw, self.sha, self.pos = raw, hashlib.sha256(), 0

    def readable(self) -> bool:
        return True

    def readinto(self, b) -> int:
        n = self.raw.readinto(b)
        if n:
            self.sha.update(memoryview(b)[:n])
            self.pos += n
        return n


def _open_binary(path: Path, counter: _CountingReader) -> io.BufferedIOBase:
    """A decompressed binary stream of ``path`` (by suffix: .xz, .gz, .zst, else plain)."""
    buffered = io.BufferedReader(counter, buffer_size=1 << 20)
    name = path.name.lower()
    if name.endswith(".xz"):
        return io.BufferedReader(lzma.LZMAFile(buffered), buffer_size=1 << 20)
    if name.endswith(".gz"):
        return io.BufferedReader(gzip.GzipFile(fileobj=buffered), buffer_size=1 << 20)
    if name.endswith(".zst"):
        zstandard = optional_import("zstandard", f"reading {name} (zstd-compressed)")
        return io.BufferedReader(zstandard.ZstdDecompressor().stream_reader(buffered), buffer_size=1 << 20)
    return buffered


@dataclasses.dataclass
class SourceState:
    """What the reader learnt about one input file (``pos``: stored bytes read so far)."""

    path: str
    bytes: int
    sha256: str | None = None
    documents: int = 0
    pos: int = 0


def iter_file_documents(path: str | Path, source: SourceState | None = None) -> Iterator[str]:
    """Documents of one file: blank-line separated blocks (split at ``MAX_DOC_CHARS``).

    ``source``, when given, is updated as the file is read (bytes read, documents, and the
    sha256 of the stored file at the end). Raises DataError naming the file, line and byte offset
    for non-UTF-8 bytes, and for a file that holds no text at all.
    """
    path = Path(path)
    with open(path, "rb") as raw:
        counter = _CountingReader(raw)
        stream = _open_binary(path, counter)
        lines: list[str] = []
        size = 0
        offset = 0  # byte offset in the decompressed text
        seen_text = False
        for number, line in enumerate(_lines(stream, path), start=1):
            try:
                text = line.decode("utf-8")
            except UnicodeDecodeError as e:
                raise DataError(
                    f"{path}: line {number}, byte offset {offset + e.start} (of the decompressed text): "
                    f"not valid UTF-8 ({e.reason}, byte 0x{line[e.start]:02x}); expected UTF-8 text"
                ) from None
            offset += len(line)
            text = text.rstrip("\r\n")
            if text.strip():
                seen_text = True
                lines.append(text)
                size += len(text) + 1
                if size < MAX_DOC_CHARS:
                    continue
            if lines:
                if source is not None:
                    source.pos = counter.pos
                    source.documents += 1
                yield "\n".join(lines)
                lines, size = [], 0
        if lines:
            if source is not None:
                source.documents += 1
            yield "\n".join(lines)
        if source is not None:
            for block in iter(lambda: raw.read(1 << 20), b""):  # bytes the decompressor left unread
                counter.sha.update(block)
                counter.pos += len(block)
            source.pos = counter.pos
            source.sha256 = counter.sha.hexdigest()
    if not seen_text:
        raise DataError(f"{path}: the file is empty (no text); expected UTF-8 text with documents "
                        "separated by blank lines")  # fmt: skip


def _lines(stream: io.BufferedIOBase, path: Path) -> Iterator[bytes]:
    try:
        yield from stream
    except (lzma.LZMAError, EOFError, OSError) as e:
        raise DataError(f"{path}: cannot decompress: {e}") from e
    except Exception as e:  # zstandard raises its own ZstdError
        if type(e).__name__ == "ZstdError":
            raise DataError(f"{path}: cannot decompress: {e}") from e
        raise


__all__ = [
    "COMPRESSED",
    "MAX_DOC_CHARS",
    "TEXT_SUFFIXES",
    "SourceState",
    "find_text_files",
    "iter_file_documents",
]
