"""ultracram export --format hf: transformers loads the directory offline and gives ultracram's
outputs; export -> import gives back the same weights (issue 8)."""

import json
import logging
import os

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # everything here is local
transformers = pytest.importorskip("transformers")

from ultracram.checkpoint import load_checkpoint, save_checkpoint, unique_state_dict  # noqa: E402
from ultracram.cli import main  # noqa: E402
from ultracram.interop.export import export_checkpoint  # noqa: E402
from ultracram.interop.importer import import_checkpoint  # noqa: E402
from ultracram.model import build_model  # noqa: E402

PRESETS = ["bert-tiny", "crammed-bert-tiny", "ultrafastbert-tiny", "fnet-tiny", "switch-tiny"]
VOCAB = 4096  # the tiny presets' vocabulary


@pytest.fixture(scope="module")
def tokenizer_file(tmp_path_factory):
    from tokenizers import BertWordPieceTokenizer

    words = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + [f"w{i}" for i in range(VOCAB - 5)]
    path = tmp_path_factory.mktemp("tok") / "tokenizer.json"
    BertWordPieceTokenizer({w: i for i, w in enumerate(words)}).save(str(path))
    return path


def _checkpoint(tmp_path, preset, task, tokenizer_file, num_labels=3):
    torch.manual_seed(0)
    model = build_model(preset, task, num_labels=num_labels).eval()
    with torch.no_grad():  # non-trivial norms and biases so that a mis-mapped tensor shows
        for name, p in model.named_parameters():
            if "norm" in name or name.endswith("bias") or name.endswith("scale"):
                p.add_(torch.randn_like(p) * 0.1)
    return model, save_checkpoint(model, tmp_path / f"{preset}-{task}", tokenizer_path=tokenizer_file)


def _inputs():
    g = torch.Generator().manual_seed(3)
    ids = torch.randint(5, VOCAB, (3, 24), generator=g)
    mask = torch.ones_like(ids)
    mask[1, 15:] = 0
    mask[2, 7:] = 0
    return ids.masked_fill(mask == 0, 0), mask, torch.randint(0, 2, (3, 24), generator=g)


@pytest.mark.parametrize("preset", PRESETS)
def test_export_mlm_loads_in_transformers_with_same_logits(tmp_path, preset, tokenizer_file):
    model, ckpt = _checkpoint(tmp_path, preset, "mlm", tokenizer_file)
    out = export_checkpoint(ckpt, tmp_path / "hf")
    cfg = json.loads((out / "config.json").read_text())
    native = preset.startswith("bert")
    assert cfg["model_type"] == ("bert" if native else "ultracram")
    assert (out / "modeling_ultracram.py").exists() != native
    if not native:  # the modeling file stands alone
        assert "ultracram." not in (out / "modeling_ultracram.py").read_text().replace(
            "configuration_ultracram", ""
        )
    hf = transformers.AutoModelForMaskedLM.from_pretrained(out, trust_remote_code=True).eval()
    assert type(hf).__name__ == ("BertForMaskedLM" if native else "UltracramForMaskedLM")
    ids, mask, types = _inputs()
    types = types if native else None
    real = mask.bool()
    with torch.no_grad():
        ref = model(ids, attention_mask=mask, token_type_ids=types).logits
        got = hf(input_ids=ids, attention_mask=mask, token_type_ids=types).logits
        assert (got[real] - ref[real]).abs().max() < 1e-4
        base = transformers.AutoModel.from_pretrained(out, trust_remote_code=True).eval()
        hidden = base(input_ids=ids, attention_mask=mask, token_type_ids=types).last_hidden_state
        assert (hidden[real] - model.encoder(ids, mask, types)[real]).abs().max() < 1e-4
    tok = transformers.AutoTokenizer.from_pretrained(out)
    assert tok("w1 w2 w30")["input_ids"] == [2, 6, 7, 35, 3]
    assert tok.mask_token_id == 4 and tok.pad_token_id == 0


@pytest.mark.parametrize("preset,num_labels", [(p, 3) for p in PRESETS] + [("crammed-bert-tiny", 1)])
def test_export_classification_same_logits(tmp_path, preset, num_labels, tokenizer_file):
    model, ckpt = _checkpoint(tmp_path, preset, "classification", tokenizer_file, num_labels=num_labels)
    out = export_checkpoint(ckpt, tmp_path / "hf")
    hf = transformers.AutoModelForSequenceClassification.from_pretrained(out, trust_remote_code=True).eval()
    ids, mask, _ = _inputs()
    labels = torch.tensor([0.5, 1.0, 2.0]) if num_labels == 1 else torch.tensor([0, 2, 1])
    with torch.no_grad():
        ref = model(ids, attention_mask=mask, labels=labels)
        got = hf(input_ids=ids, attention_mask=mask, labels=labels)
    assert got.logits.shape == (3, num_labels)
    assert (got.logits.reshape(ref.logits.shape) - ref.logits).abs().max() < 1e-4
    assert abs(got.loss.item() - ref.loss.item()) < 1e-4


@pytest.mark.parametrize("preset", PRESETS)
def test_round_trip_export_import_identical_weights(tmp_path, preset, tokenizer_file):
    for task in ("mlm", "classification", "encoder"):
        model, ckpt = _checkpoint(tmp_path, preset, task, tokenizer_file)
        export_checkpoint(ckpt, tmp_path / f"hf-{task}")
        back = load_checkpoint(
            import_checkpoint(tmp_path / f"hf-{task}", tmp_path / f"back-{task}"), task=task
        )
        assert back.config == model.config
        a, b = unique_state_dict(model), unique_state_dict(back)
        assert a.keys() == b.keys()
        assert all(torch.equal(a[k], b[k]) for k in a)
        meta = json.loads((tmp_path / f"back-{task}" / "config.json").read_text())
        assert meta["tokenizer"]["vocab_size"] == VOCAB


def test_cli_export_import(tmp_path, tokenizer_file, capsys):
    _, ckpt = _checkpoint(tmp_path, "ultrafastbert-tiny", "mlm", tokenizer_file)
    assert main(["export", "--checkpoint", str(ckpt), "--out", str(tmp_path / "hf")]) == 0
    printed = capsys.readouterr().out.splitlines()
    assert printed[0] == str(tmp_path / "hf")
    assert "UltracramForMaskedLM" in printed[1] and "trust_remote_code=True" in printed[1]  # not a BERT
    assert main(["import", "--source", str(tmp_path / "hf"), "--out", str(tmp_path / "back")]) == 0
    assert capsys.readouterr().out.strip() == str(tmp_path / "back")
    assert load_checkpoint(tmp_path / "back").config.name == "ultrafastbert-tiny"
    # a clean one-line error for bad input, naming the problem
    args = ["import", "--source", str(tmp_path / "hf"), "--out", str(tmp_path / "x"), "--format", "cramming"]
    assert main(args) == 1
    assert "not 'cramming'" in capsys.readouterr().err


# ---------------------------------------------------------------------------------------------
# Loading the export as a transformers user would: no prompt, no warning, the same token ids
# ---------------------------------------------------------------------------------------------

SENTENCE = "The Quick brown fox, naïve as ever, jumps over the lazy dog!"
TEXT = ["the quick brown fox jumps over the lazy dog", "naive foxes and lazy dogs, as ever", SENTENCE] * 40


@pytest.fixture
def hf_log(caplog, monkeypatch):
    """The warnings transformers logs (its load reports, the model-type mismatch, ...), and a
    failure instead of any interactive question (the trust_remote_code prompt)."""

    def no_prompt(*args):
        raise AssertionError(f"transformers asked a question: {args}")

    monkeypatch.setattr("builtins.input", no_prompt)
    transformers.utils.logging.enable_propagation()  # transformers' logger does not propagate by default
    caplog.set_level(logging.WARNING, logger="transformers")
    yield lambda: [r.getMessage() for r in caplog.records if r.name.startswith("transformers")]
    transformers.utils.logging.disable_propagation()


def _trained_checkpoint(tmp_path, preset, task="mlm"):
    """A checkpoint with a tokenizer trained by ultracram (BERT normaliser, lower-casing, accents
    stripped, [CLS] A [SEP] B [SEP] template) and a model of its vocabulary size."""
    from ultracram.config import get_preset
    from ultracram.data.tokenizer import train_tokenizer

    tok = train_tokenizer(TEXT, vocab_size=80, min_frequency=1)
    tok.save(str(tmp_path / "tokenizer.json"))
    torch.manual_seed(0)
    model = build_model(get_preset(preset).replace(vocab_size=tok.get_vocab_size()), task).eval()
    return tok, model, save_checkpoint(model, tmp_path / "ckpt", tokenizer_path=tmp_path / "tokenizer.json")


@pytest.mark.parametrize("preset", ["bert-tiny", "ultrafastbert-tiny"])
def test_export_tokenizer_needs_no_remote_code(tmp_path, preset, hf_log):
    tok, _, ckpt = _trained_checkpoint(tmp_path, preset)
    out = export_checkpoint(ckpt, tmp_path / "hf")
    tok_cfg = json.loads((out / "tokenizer_config.json").read_text())
    assert tok_cfg["tokenizer_class"] == "PreTrainedTokenizerFast" and "auto_map" not in tok_cfg
    if preset.startswith("bert"):  # no custom code anywhere: the plain AutoTokenizer call
        loaded = [transformers.AutoTokenizer.from_pretrained(out)]
    else:
        # The model needs remote code; the tokenizer does not. transformers 5's AutoTokenizer reads
        # config.json (custom code) first, so it takes the flag; the tokenizer class alone does not.
        loaded = [transformers.PreTrainedTokenizerFast.from_pretrained(out),
                  transformers.AutoTokenizer.from_pretrained(out, trust_remote_code=True)]  # fmt: skip
    ours = tok.encode(SENTENCE)
    pair = tok.encode(SENTENCE, "lazy dogs")
    for hf_tok in loaded:
        assert hf_tok(SENTENCE)["input_ids"] == ours.ids
        got = hf_tok(SENTENCE, "lazy dogs")
        assert got["input_ids"] == pair.ids
        if preset.startswith("bert"):
            assert got["token_type_ids"] == pair.type_ids
        else:  # the model has no token types; the tokenizer does not offer them
            assert "token_type_ids" not in got
        assert hf_tok.mask_token_id == tok.token_to_id("[MASK]") and hf_tok.pad_token_id == 0
    assert hf_log() == []


def test_native_bert_export_names_weights_like_bert_for_masked_lm(tmp_path, tokenizer_file, hf_log):
    """The same tensor names as BertForMaskedLM.save_pretrained (tied decoder left out), so
    AutoModelForMaskedLM loads silently and AutoModel reports exactly what it reports for
    transformers' own BertForMaskedLM checkpoints (the MLM head it has no place for)."""
    from safetensors import safe_open

    model, ckpt = _checkpoint(tmp_path, "bert-tiny", "mlm", tokenizer_file)
    out = export_checkpoint(ckpt, tmp_path / "hf")
    cfg = transformers.AutoConfig.from_pretrained(out)
    transformers.BertForMaskedLM(cfg).save_pretrained(tmp_path / "reference")
    with safe_open(str(out / "model.safetensors"), "pt") as f:
        names = set(f.keys())
    with safe_open(str(tmp_path / "reference" / "model.safetensors"), "pt") as f:
        assert names == set(f.keys())
    assert not any("decoder" in k for k in names)
    hf_log()  # the reference's own save is not under test
    mlm = transformers.AutoModelForMaskedLM.from_pretrained(out).eval()
    assert hf_log() == []
    # the decoder is tied again by transformers
    assert mlm.cls.predictions.decoder.weight is mlm.bert.embeddings.word_embeddings.weight
    ids, mask, types = _inputs()
    with torch.no_grad():
        ref = model(ids, attention_mask=mask, token_type_ids=types).logits
        got = mlm(input_ids=ids, attention_mask=mask, token_type_ids=types).logits
    assert (got[mask.bool()] - ref[mask.bool()]).abs().max() < 1e-4

    def auto_model_report(directory):
        """The lines transformers logs loading ``directory`` with AutoModel, in any order (its
        report lists the keys of a set), the directory's name left out."""
        start = len(hf_log())
        transformers.AutoModel.from_pretrained(directory)
        return sorted(
            line.replace(str(directory), "DIR") for m in hf_log()[start:] for line in m.splitlines()
        )

    ours = auto_model_report(out)
    assert ours == auto_model_report(tmp_path / "reference")
    assert not any("mlm_head" in line or "decoder" in line or "model of type" in line for line in ours)


@pytest.mark.parametrize("preset", ["crammed-bert-tiny", "ultrafastbert-tiny"])
def test_remote_code_export_loads_without_warnings(tmp_path, preset, tokenizer_file, hf_log):
    """BERT-family models that are not BERTs: AutoModel and AutoModelForMaskedLM load with no
    report at all (the tied decoder is not stored, so AutoModel finds nothing unexpected)."""
    model, ckpt = _checkpoint(tmp_path, preset, "mlm", tokenizer_file)
    out = export_checkpoint(ckpt, tmp_path / "hf")
    base = transformers.AutoModel.from_pretrained(out, trust_remote_code=True).eval()
    mlm = transformers.AutoModelForMaskedLM.from_pretrained(out, trust_remote_code=True).eval()
    assert hf_log() == []
    assert mlm.mlm_head.decoder.weight is mlm.encoder.embeddings.word.weight  # tied by transformers
    ids, mask, _ = _inputs()
    with torch.no_grad():
        assert (mlm(input_ids=ids, attention_mask=mask).logits - model(ids, attention_mask=mask).logits)[
            mask.bool()
        ].abs().max() < 1e-4
        hidden = base(input_ids=ids, attention_mask=mask).last_hidden_state
        assert (hidden - model.encoder(ids, mask))[mask.bool()].abs().max() < 1e-4


@pytest.mark.parametrize("preset", ["bert-tiny", "switch-tiny"])
def test_export_prints_how_to_load_it(tmp_path, preset, capsys, hf_log):
    """The summary names the class and whether trust_remote_code is needed, and its two lines of
    Python (tokenizer, model) run as printed, silently."""
    tok, model, ckpt = _trained_checkpoint(tmp_path, preset)
    assert main(["export", "--checkpoint", str(ckpt), "--out", str(tmp_path / "hf")]) == 0
    printed = capsys.readouterr().out.splitlines()
    assert printed[0] == str(tmp_path / "hf")
    native = preset.startswith("bert")
    assert ("BertForMaskedLM" if native else "UltracramForMaskedLM") in printed[1]
    assert ("no trust_remote_code needed" in printed[1]) == native
    assert ("trust_remote_code=True" in printed[1]) != native
    code = [line.strip() for line in printed if line.startswith("    from transformers import")]
    assert len(code) == 2
    scope: dict = {}
    for line in code:
        exec(line, scope)
    enc = scope["tokenizer"](SENTENCE, return_tensors="pt")
    assert enc["input_ids"][0].tolist() == tok.encode(SENTENCE).ids
    with torch.no_grad():
        got = scope["model"].eval()(**enc).logits
        ref = model(enc["input_ids"], enc["attention_mask"], enc.get("token_type_ids")).logits
    assert (got - ref).abs().max() < 1e-4
    assert hf_log() == []
