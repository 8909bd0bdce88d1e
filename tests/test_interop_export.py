"""ultracram export --format hf: transformers loads the directory offline and gives ultracram's
outputs; export -> import gives back the same weights (issue 8)."""

import json
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
    assert printed[0] == str(tmp_path / "hf") and "trust_remote_code=True" in printed[1]  # not a BERT
    assert main(["import", "--source", str(tmp_path / "hf"), "--out", str(tmp_path / "back")]) == 0
    assert capsys.readouterr().out.strip() == str(tmp_path / "back")
    assert load_checkpoint(tmp_path / "back").config.name == "ultrafastbert-tiny"
    # a clean one-line error for bad input, naming the problem
    args = ["import", "--source", str(tmp_path / "hf"), "--out", str(tmp_path / "x"), "--format", "cramming"]
    assert main(args) == 1
    assert "not 'cramming'" in capsys.readouterr().err
