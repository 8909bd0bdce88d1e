"""Train and load WordPiece tokenizers with Hugging Face ``tokenizers``."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from pathlib import Path

from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers

SPECIAL_TOKENS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]  # ids 0..4 in this order


def train_tokenizer(
    texts: Iterable[str],
    vocab_size: int = 32768,
    *,
    lowercase: bool = True,
    strip_accents: bool = True,
    min_frequency: int = 2,
    show_progress: bool = False,
) -> Tokenizer:
    """Train a BERT-style WordPiece tokenizer on an iterator of texts.

    Special tokens get ids 0..4 ([PAD] [UNK] [CLS] [SEP] [MASK]); encoding a pair gives
    ``[CLS] A [SEP] B [SEP]`` with token types 0/1, as in BERT.
    """
    tok = Tokenizer(models.WordPiece(unk_token="[UNK]"))
    tok.normalizer = normalizers.BertNormalizer(
        clean_text=True, handle_chinese_chars=True, strip_accents=strip_accents, lowercase=lowercase
    )
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tok.decoder = decoders.WordPiece(prefix="##")
    trainer = trainers.WordPieceTrainer(
        vocab_size=vocab_size, min_frequency=min_frequency, special_tokens=SPECIAL_TOKENS,
        show_progress=show_progress,
    )  # fmt: skip
    tok.train_from_iterator(_batched(texts), trainer=trainer)
    cls, sep = tok.token_to_id("[CLS]"), tok.token_to_id("[SEP]")
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]",
        pair="[CLS] $A [SEP] $B:1 [SEP]:1",
        special_tokens=[("[CLS]", cls), ("[SEP]", sep)],
    )
    return tok


def _batched(texts: Iterable[str], size: int = 1000) -> Iterator[list[str]]:
    batch: list[str] = []
    for t in texts:
        batch.append(t)
        if len(batch) == size:
            yield batch
            batch = []
    if batch:
        yield batch


def load_tokenizer(path: str | Path) -> Tokenizer:
    """Load a ``tokenizer.json`` (a file, or a directory that holds one)."""
    path = Path(path)
    if path.is_dir():
        path = path / "tokenizer.json"
    if not path.is_file():
        raise FileNotFoundError(f"no tokenizer at {path}")
    return Tokenizer.from_file(str(path))
