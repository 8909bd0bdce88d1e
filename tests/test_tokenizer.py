"""WordPiece tokenizer training on a slice of the shared Wikipedia text, and round trips."""

import lzma
import unicodedata

import pytest
from tokenizers import Tokenizer

from ultracram.data.corpus import DataError, iter_file_documents
from ultracram.data.tokenizer import SPECIAL_TOKENS, check_vocab_size, load_tokenizer, train_tokenizer_files

WIKI = "corpus/enwiki-2015-extract-174M.txt.xz"


@pytest.fixture(scope="module")
def wiki_xz(shared_data, tmp_path_factory):
    """The first ~1 MB of the Wikipedia text (streamed with lzma), re-compressed as a test input."""
    with lzma.open(shared_data / WIKI, "rb") as f:
        text = f.read(1_000_000).decode("utf-8", errors="ignore")
    text = text[: text.rindex("\n\n") + 1]
    path = tmp_path_factory.mktemp("tok") / "wiki.txt.xz"
    path.write_bytes(lzma.compress(text.encode("utf-8")))
    return path


@pytest.fixture(scope="module")
def trained(wiki_xz, tmp_path_factory):
    out = tmp_path_factory.mktemp("tokout")
    path = train_tokenizer_files([wiki_xz], out, vocab_size=4096)
    return load_tokenizer(path)


def bert_normalize(text: str) -> str:
    """Lowercase + strip accents (NFD, drop combining marks) + drop control/format characters
    (clean_text), as BertNormalizer does."""
    text = unicodedata.normalize("NFD", text.lower())
    return "".join(c for c in text if c.isspace() or unicodedata.category(c) not in ("Mn", "Cc", "Cf"))


def test_special_tokens_and_vocab(trained):
    assert [trained.token_to_id(t) for t in SPECIAL_TOKENS] == [0, 1, 2, 3, 4]
    assert trained.get_vocab_size() == 4096
    check_vocab_size(trained, 4096)
    with pytest.raises(DataError, match="smaller than the tokenizer's vocabulary"):
        check_vocab_size(trained, 1000)


def test_round_trip_on_wikipedia(trained, wiki_xz):
    docs = list(iter_file_documents(wiki_xz))
    assert len(docs) > 10
    unk = trained.token_to_id("[UNK]")
    compared = 0
    for doc in docs[:10]:
        enc = trained.encode(doc)
        assert enc.ids[0] == 2 and enc.ids[-1] == 3  # [CLS] ... [SEP]
        decoded = trained.decode(enc.ids)  # skips the special tokens
        if unk in enc.ids:
            continue
        # WordPiece puts spaces around punctuation; up to whitespace the text comes back.
        assert "".join(decoded.split()) == "".join(bert_normalize(doc).split())
        compared += 1
    assert compared >= 3
    plain = "the history of the city began in the middle ages"
    assert trained.decode(trained.encode(plain).ids) == plain


def test_pair_template(trained):
    enc = trained.encode("first part", "second part")
    assert enc.tokens[0] == "[CLS]" and enc.tokens.count("[SEP]") == 2 and enc.tokens[-1] == "[SEP]"
    sep = enc.tokens.index("[SEP]")
    assert set(enc.type_ids[: sep + 1]) == {0} and set(enc.type_ids[sep + 1 :]) == {1}


def test_cli_train_keeps_case(wiki_xz, tmp_path):
    from ultracram.cli import main

    rc = main(["tokenizer", "train", "--input", str(wiki_xz.parent), "--out", str(tmp_path), "--vocab_size",
               "600", "--lowercase", "false", "--strip_accents", "false", "--max_documents", "5"])  # fmt: skip
    assert rc == 0
    tok = Tokenizer.from_file(str(tmp_path / "tokenizer.json"))
    assert tok.get_vocab_size() == 600
    assert "Anarchism" in tok.decode(tok.encode("Anarchism").ids).replace(" ##", "")
    assert tok.normalizer.__getstate__() is not None
    assert tok.encode("Café").ids != tok.encode("cafe").ids


def test_bad_input(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="directory has no text files"):
        train_tokenizer_files([tmp_path / "empty"], tmp_path / "o")
    (tmp_path / "bad.txt").write_bytes(b"\x80abc\n")
    with pytest.raises(DataError, match=r"bad\.txt: line 1, byte offset 0"):
        train_tokenizer_files([tmp_path / "bad.txt"], tmp_path / "o", vocab_size=100)


def test_alphabet_limit_leaves_room_for_words():
    """Thousands of rare characters must not crowd a small vocabulary out of words."""
    from ultracram.data.sample import read_sample_paragraphs
    from ultracram.data.tokenizer import default_alphabet_limit, train_tokenizer

    english = read_sample_paragraphs()[:400]
    # ~1700 distinct letters (Greek, Cyrillic, Armenian, Hebrew, Arabic, Devanagari, ... blocks),
    # each frequent enough to pass min_frequency, as in a multi-script Wikipedia dump.
    rare = [chr(c) for c in range(0x0370, 0x1000) if unicodedata.category(chr(c)).startswith("L")][:3000]
    noise = [" ".join(c * 3 for c in rare[i : i + 50]) for i in range(0, len(rare), 50)] * 3
    text = english + noise

    def ratio(tok):
        ids = sum(len(e.ids) for e in tok.encode_batch(english, add_special_tokens=False))
        return ids / sum(map(len, english))

    limited = train_tokenizer(text, vocab_size=2048)
    unlimited = train_tokenizer(text, vocab_size=2048, limit_alphabet=10**6)
    singles = [t for t in limited.get_vocab() if len(t.removeprefix("##")) == 1]
    assert len(singles) <= 2 * default_alphabet_limit(2048) + 2 * 128  # (c, ##c) pairs, ASCII kept
    assert ratio(limited) < 0.8 * ratio(unlimited), (ratio(limited), ratio(unlimited))
