"""The small sample data shipped inside the package (provenance: resources/sample/PROVENANCE.md).

It makes the quick start, the tests and the examples run on a machine with no data and no
network: a few MB of English Wikipedia text and small slices of the GLUE tasks.
"""

from __future__ import annotations

import lzma
from importlib import resources
from pathlib import Path


def _sample_dir() -> Path:
    return Path(str(resources.files("ultracram") / "resources" / "sample"))


def sample_corpus_path() -> Path:
    """The embedded Wikipedia sample: one paragraph per line, xz-compressed."""
    return _sample_dir() / "wiki-sample.txt.xz"


def sample_glue_dir() -> Path:
    """The embedded GLUE slices, in the glue_data layout (``<Task>/train.tsv``, ``dev.tsv``)."""
    return _sample_dir() / "glue"


def read_sample_paragraphs() -> list[str]:
    """The non-empty paragraphs of the embedded Wikipedia sample."""
    with lzma.open(sample_corpus_path(), "rt", encoding="utf-8") as f:
        return [line.strip() for line in f if line.strip()]
