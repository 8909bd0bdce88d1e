"""A Hugging Face dataset as a pretraining corpus: streamed once into a local text file.

``ultracram data prepare --hf_dataset NAME`` (or ``export_hf_dataset``) streams the dataset's
text column, one document at a time (constant memory), into ``<dir>/<name>.txt.zst`` in the
corpus layout the rest of the pipeline reads (documents separated by one blank line), and
then prepares that file like any other. Writing the file first keeps ``prepare_corpus``'s
resume, sha256 provenance and multi-process tokenising unchanged, and a rerun reuses the file
instead of downloading again. A dataset name needs the network; ``data_files`` with a
builder name (``parquet``, ``json``, ``text``) reads local files, which is how it is tested.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

from ultracram.errors import DataError, optional_import
from ultracram.fileio import atomic_write, atomic_write_text

_BLANK_LINES = re.compile(r"\n\s*\n+")


def hf_source_path(directory: str | Path, name: str, config: str | None = None, split: str = "train") -> Path:
    """Where ``export_hf_dataset`` puts the text of ``name`` / ``config`` / ``split``."""
    stem = re.sub(r"[^A-Za-z0-9._-]+", "_", "-".join(p for p in (name, config, split) if p))
    return Path(directory) / f"{stem}.txt.zst"


def export_hf_dataset(
    name: str,
    directory: str | Path,
    *,
    config: str | None = None,
    split: str = "train",
    column: str = "text",
    data_files: str | list[str] | None = None,
    max_documents: int | None = None,
) -> Path:
    """Stream ``column`` of the dataset into a .txt.zst corpus file; returns its path.

    A complete file from an earlier call (same arguments, recorded in ``<file>.json``) is
    reused. Blank lines inside a document are folded to single line breaks so that the
    document stays one block. Raises ``DataError`` naming the dataset when it cannot be
    loaded, has no such column, or yields no text.
    """
    zstandard = optional_import("zstandard", "data prepare --hf_dataset (it stores the text zstd-compressed)")
    path = hf_source_path(directory, name, config, split)
    meta_path = path.with_name(path.name + ".json")
    ident = {"name": name, "config": config, "split": split, "column": column, "data_files": data_files,
             "max_documents": max_documents}  # fmt: skip
    if path.is_file() and meta_path.is_file() and json.loads(meta_path.read_text()).get("source") == ident:
        return path
    try:
        from datasets import load_dataset

        ds = load_dataset(name, config, split=split, streaming=True, data_files=data_files)
    except Exception as e:  # datasets raises many types (network, missing config, bad files)
        raise DataError(
            f"cannot load Hugging Face dataset {name!r} (config {config!r}, split {split!r}): {e}"
        ) from e
    path.parent.mkdir(parents=True, exist_ok=True)
    counts = {"documents": 0, "characters": 0}

    def write(raw) -> None:
        with zstandard.ZstdCompressor(level=3).stream_writer(raw, closefd=False) as out:
            for row in ds:
                if column not in row:
                    raise DataError(f"Hugging Face dataset {name!r} has no column {column!r} "
                                    f"(columns: {', '.join(row)}); pass --hf_column")  # fmt: skip
                text = _BLANK_LINES.sub("\n", str(row[column] or "")).strip()
                if not text:
                    continue
                out.write((text + "\n\n").encode("utf-8"))
                counts["documents"] += 1
                counts["characters"] += len(text)
                if max_documents is not None and counts["documents"] >= max_documents:
                    break
        if counts["documents"] == 0:  # raised before the rename: no empty corpus file is left
            raise DataError(
                f"Hugging Face dataset {name!r} (split {split!r}) has no non-empty {column!r} text"
            )

    atomic_write(path, write, "wb")
    atomic_write_text(meta_path, json.dumps({"source": ident, **counts}, indent=2) + "\n")
    return path
