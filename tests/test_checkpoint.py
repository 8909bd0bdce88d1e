"""The checkpoint format: round trip and clear errors for every kind of bad file (issue 2)."""

import json

import pytest
import torch

from ultracram.checkpoint import CheckpointError, load_checkpoint, read_checkpoint_config, save_checkpoint
from ultracram.config import get_preset
from ultracram.data.tokenizer import train_tokenizer
from ultracram.model import build_model

TEXT = ["the quick brown fox jumps over the lazy dog", "a stitch in time saves nine"] * 50


@pytest.fixture
def saved(tmp_path):
    model = build_model(get_preset("ultrafastbert-tiny"), "mlm")
    return model, save_checkpoint(model, tmp_path / "ckpt")


def test_round_trip_same_weights_and_outputs(saved):
    model, path = saved
    loaded = load_checkpoint(path)
    assert loaded.config == model.config
    for (name, a), b in zip(model.state_dict().items(), loaded.state_dict().values()):
        assert torch.equal(a, b), name
    assert loaded.mlm_head.decoder.weight is loaded.encoder.embeddings.word.weight  # still tied
    ids = torch.randint(5, 100, (2, 9))
    torch.testing.assert_close(loaded.eval()(ids).logits, model.eval()(ids).logits)
    assert (path / "config.json").is_file() and (path / "model.safetensors").is_file()
    assert not list(path.parent.glob(".ckpt.tmp-*"))  # the temporary directory is gone


def test_mlm_checkpoint_loads_under_a_classification_head(saved):
    model, path = saved
    clf = load_checkpoint(path, task="classification", num_labels=3, config_overrides={"dropout": 0.1})
    assert clf.config.dropout == 0.1
    torch.testing.assert_close(
        clf.encoder.layers[1].ffn.linear_in.weight, model.encoder.layers[1].ffn.linear_in.weight
    )


def test_truncated_file(saved):
    _, path = saved
    w = path / "model.safetensors"
    data = w.read_bytes()
    w.write_bytes(data[: len(data) // 2])
    meta = json.loads((path / "config.json").read_text())
    from ultracram.checkpoint import sha256_file

    meta["weights_sha256"] = sha256_file(w)  # so that the parse, not the checksum, must catch it
    (path / "config.json").write_text(json.dumps(meta))
    with pytest.raises(CheckpointError, match="cannot be read as safetensors"):
        load_checkpoint(path)


def test_tampered_file(saved):
    _, path = saved
    w = path / "model.safetensors"
    data = bytearray(w.read_bytes())
    data[-3] ^= 0xFF  # flip bits inside a weight: still parses, but the checksum catches it
    w.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match="corrupt or was modified"):
        load_checkpoint(path)


def test_unknown_preset_and_bad_config(saved):
    _, path = saved
    meta = json.loads((path / "config.json").read_text())
    meta["model"]["name"] = "ultrafastbert-turbo"
    (path / "config.json").write_text(json.dumps(meta))
    with pytest.raises(CheckpointError, match="unknown preset 'ultrafastbert-turbo'"):
        load_checkpoint(path)
    meta["model"]["name"] = "ultrafastbert-tiny"
    meta["model"]["hidden_dim"] = 3
    (path / "config.json").write_text(json.dumps(meta))
    with pytest.raises(CheckpointError, match="unknown key 'hidden_dim'"):
        load_checkpoint(path)
    (path / "config.json").write_text("{not json")
    with pytest.raises(CheckpointError, match="not valid JSON"):
        read_checkpoint_config(path)


def test_shape_mismatch_names_the_tensor(saved, tmp_path):
    _, path = saved
    meta = json.loads((path / "config.json").read_text())
    meta["model"]["fff_depth"] = 4  # the stored tree has depth 5
    (path / "config.json").write_text(json.dumps(meta))
    with pytest.raises(CheckpointError, match=r"shape mismatch for encoder.layers.0.ffn.linear_in.weight"):
        load_checkpoint(path)


def test_missing_files(tmp_path):
    with pytest.raises(CheckpointError, match="not a directory"):
        load_checkpoint(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(CheckpointError, match=r"has no config\.json"):
        load_checkpoint(tmp_path / "empty")


def test_tokenizer_recorded_and_vocab_mismatch(tmp_path):
    tok = train_tokenizer(TEXT, vocab_size=60, min_frequency=1)
    tok.save(str(tmp_path / "tokenizer.json"))
    vocab = tok.get_vocab_size()
    model = build_model(get_preset("crammed-bert-tiny").replace(vocab_size=vocab), "mlm")
    path = save_checkpoint(model, tmp_path / "ok", tokenizer_path=tmp_path / "tokenizer.json")
    meta = read_checkpoint_config(path)
    assert meta["tokenizer"]["vocab_size"] == vocab and (path / "tokenizer.json").is_file()
    wrong = build_model(get_preset("crammed-bert-tiny"), "mlm")
    with pytest.raises(CheckpointError, match="vocabulary mismatch"):
        save_checkpoint(wrong, tmp_path / "bad", tokenizer_path=tmp_path / "tokenizer.json")
    assert not (tmp_path / "bad").exists()  # nothing half-written


def test_overwrite_is_atomic_and_keeps_a_valid_checkpoint(saved):
    model, path = saved
    with torch.no_grad():
        model.encoder.final_norm.weight.fill_(2.0)
    save_checkpoint(model, path)
    assert torch.all(load_checkpoint(path).encoder.final_norm.weight == 2.0)


def test_non_finite_weights_are_refused_even_with_a_matching_checksum(saved):
    from safetensors.torch import load_file, save_file

    from ultracram.fileio import sha256_file

    _, path = saved
    weights = path / "model.safetensors"
    state = load_file(str(weights))
    state["encoder.final_norm.weight"][3] = float("inf")
    save_file(state, str(weights), metadata={"format": "pt"})
    meta = json.loads((path / "config.json").read_text())
    meta["weights_sha256"] = sha256_file(weights)
    (path / "config.json").write_text(json.dumps(meta))
    with pytest.raises(CheckpointError, match=r"safetensors: tensor encoder\.final_norm\.weight .*inf"):
        load_checkpoint(path)


def test_checkpoint_tokenizer_is_verified(tmp_path):
    from ultracram.checkpoint import load_checkpoint_tokenizer

    tok = train_tokenizer(TEXT, vocab_size=60, min_frequency=1)
    tok.save(str(tmp_path / "tokenizer.json"))
    model = build_model(get_preset("crammed-bert-tiny").replace(vocab_size=tok.get_vocab_size()), "mlm")
    path = save_checkpoint(model, tmp_path / "ok", tokenizer_path=tmp_path / "tokenizer.json")
    assert load_checkpoint_tokenizer(path).get_vocab_size() == tok.get_vocab_size()
    other = train_tokenizer(["completely different words here", "and more of them"] * 20, vocab_size=50,
                            min_frequency=1)  # fmt: skip
    other.save(str(path / "tokenizer.json"))
    with pytest.raises(CheckpointError, match=r"tokenizer\.json is not the tokenizer .* sha256"):
        load_checkpoint_tokenizer(path)
    # An old checkpoint (no sha256 recorded) still loads with its own tokenizer, and the
    # vocabulary size read from the file still catches a swap.
    meta = json.loads((path / "config.json").read_text())
    meta["tokenizer"] = None
    (path / "config.json").write_text(json.dumps(meta))
    with pytest.raises(CheckpointError, match=r"vocabulary mismatch: tokenizer .*tokenizer\.json has"):
        load_checkpoint_tokenizer(path)
    tok.save(str(path / "tokenizer.json"))
    assert load_checkpoint_tokenizer(path).get_vocab_size() == tok.get_vocab_size()
    (path / "tokenizer.json").unlink()
    with pytest.raises(CheckpointError, match=r"has no tokenizer\.json"):
        load_checkpoint_tokenizer(path)


def test_pretraining_run_directory_says_use_final(saved):
    _, path = saved
    run = path.parent / "run"
    run.mkdir()
    path.rename(run / "final")
    with pytest.raises(CheckpointError, match=r"pretraining run directory; use .*run/final"):
        load_checkpoint(run)


@pytest.mark.parametrize("preset", ["ultrafastbert-tiny", "bert-tiny", "switch-tiny"])
@pytest.mark.parametrize("stored", ["mlm", "classification"])
def test_encoder_task_loads_the_encoder_of_a_task_checkpoint(tmp_path, preset, stored):
    """``task="encoder"`` on a pretrained (MLM) or fine-tuned checkpoint gives its encoder: the
    same hidden states, bit for bit, as the saved model's own encoder."""
    torch.manual_seed(0)
    model = build_model(get_preset(preset), stored, num_labels=3).eval()
    with torch.no_grad():  # non-trivial norms and biases, so that a mis-loaded tensor shows
        for name, p in model.named_parameters():
            if "norm" in name or name.endswith("bias"):
                p.add_(torch.randn_like(p) * 0.1)
    path = save_checkpoint(model, tmp_path / "ckpt")
    encoder = load_checkpoint(path, task="encoder").eval()
    assert type(encoder).__name__ == "Encoder"
    ids = torch.randint(5, 100, (2, 9))
    mask = torch.ones_like(ids)
    mask[1, 6:] = 0
    with torch.no_grad():
        assert torch.equal(encoder(ids, mask), model.encoder(ids, mask))
    # and back: an encoder checkpoint under a new head keeps every encoder tensor
    enc_path = save_checkpoint(encoder, tmp_path / "enc")
    clf = load_checkpoint(enc_path, task="classification", num_labels=2).eval()
    with torch.no_grad():
        assert torch.equal(clf.encoder(ids, mask), model.encoder(ids, mask))


def test_encoder_task_keeps_the_checks(saved):
    """The checksum, shape and finiteness checks still apply when only the encoder is loaded."""
    from safetensors.torch import load_file, save_file

    from ultracram.fileio import sha256_file

    _, path = saved
    meta = json.loads((path / "config.json").read_text())
    meta["model"]["fff_depth"] = 4  # the stored trees have depth 5
    (path / "config.json").write_text(json.dumps(meta))
    with pytest.raises(
        CheckpointError, match=r"encoder of its mlm model.*\n.*shape mismatch for layers\.0\.ffn"
    ):
        load_checkpoint(path, task="encoder")
    meta["model"]["fff_depth"] = 5
    weights = path / "model.safetensors"
    state = load_file(str(weights))
    del state["encoder.final_norm.weight"]
    save_file(state, str(weights), metadata={"format": "pt"})
    with pytest.raises(CheckpointError, match="corrupt or was modified"):
        load_checkpoint(path, task="encoder")
    meta["weights_sha256"] = sha256_file(weights)
    (path / "config.json").write_text(json.dumps(meta))
    with pytest.raises(CheckpointError, match=r"missing tensor final_norm\.weight"):
        load_checkpoint(path, task="encoder")
    with pytest.raises(CheckpointError, match=r"unknown task 'decoder'"):
        load_checkpoint(path, task="decoder")
