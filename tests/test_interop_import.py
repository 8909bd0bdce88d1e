"""ultracram import: Hugging Face BERT, cramming's crammedBERT and UltraFastBERT (issue 8).

The cramming / UltraFastBERT checkpoints are built here with the published tensor names and
shapes (cramming/architectures/*.py, UltraFastBERT training/cramming/architectures/*.py), and the
imported model is checked against a forward pass written out below from the raw tensors,
following the published code (GPT-NeoX per-head QKV layout, pre-LN, GLU chunk order, FFF walk).
"""

import dataclasses
import json
import math

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import save_file

from conftest import NH, H, L, V, bert_vocab
from ultracram.checkpoint import load_checkpoint
from ultracram.interop.importer import import_checkpoint
from ultracram.interop.weights import ConversionError
from ultracram.kernels import FFF_IMPLEMENTATIONS
from ultracram.model import FastFeedForward
from ultracram.train.finetune_settings import PROTOCOLS

transformers = pytest.importorskip("transformers")

T = 12  # tokens per test sequence


@pytest.mark.parametrize("safe", [True, False], ids=["safetensors", "bin"])
def test_hf_bert_import_same_logits(hf_bert, tmp_path, safe):
    src = tmp_path / "hf"
    hf_bert.save_pretrained(src, safe_serialization=safe)
    if not safe and not (src / "pytorch_model.bin").exists():
        # transformers 5 always writes safetensors; write the .bin that transformers 4 writes
        (src / "model.safetensors").unlink()
        torch.save(hf_bert.state_dict(), src / "pytorch_model.bin")
    (src / "vocab.txt").write_text("\n".join(bert_vocab(V)) + "\n")
    assert (src / ("model.safetensors" if safe else "pytorch_model.bin")).is_file()
    import_checkpoint(src, tmp_path / "uc")
    ours = load_checkpoint(tmp_path / "uc").eval()
    meta = json.loads((tmp_path / "uc" / "config.json").read_text())
    assert meta["tokenizer"]["vocab_size"] == V  # vocab.txt became a tokenizer.json
    ids = torch.randint(5, V, (3, 20))
    mask = torch.ones_like(ids)
    mask[1, 14:] = 0
    types = torch.randint(0, 2, (3, 20))
    with torch.no_grad():
        ref = hf_bert(input_ids=ids, attention_mask=mask, token_type_ids=types).logits
        got = ours(ids, attention_mask=mask, token_type_ids=types).logits
    assert (got[mask.bool()] - ref[mask.bool()]).abs().max() < 1e-4


def test_hf_bert_compiled_prefix_and_errors(hf_bert, tmp_path):
    state = {f"_orig_mod.{k}": v.clone() for k, v in hf_bert.state_dict().items()}
    src = tmp_path / "hf"
    src.mkdir()
    (src / "config.json").write_text(hf_bert.config.to_json_string())
    save_file(state, str(src / "model.safetensors"))
    import_checkpoint(src, tmp_path / "uc")  # _orig_mod. prefixes are handled
    # shape mismatch names the tensor
    bad = dict(state)
    bad["_orig_mod.bert.encoder.layer.1.intermediate.dense.weight"] = torch.zeros(65, H)
    save_file(bad, str(src / "model.safetensors"))
    with pytest.raises(ConversionError, match=r"bert\.encoder\.layer\.1\.intermediate\.dense\.weight"):
        import_checkpoint(src, tmp_path / "uc2")
    # unknown architecture
    (src / "config.json").write_text(json.dumps({"model_type": "gpt2"}))
    with pytest.raises(ConversionError, match=r"unknown architecture.*gpt2"):
        import_checkpoint(src, tmp_path / "uc3")


def test_truncated_and_tampered_safetensors_name_the_tensor(hf_bert, tmp_path):
    src = tmp_path / "hf"
    hf_bert.save_pretrained(src)
    f = src / "model.safetensors"
    data = f.read_bytes()
    header_len = int.from_bytes(data[:8], "little")
    header = json.loads(data[8 : 8 + header_len])
    last = max((k for k in header if k != "__metadata__"), key=lambda k: header[k]["data_offsets"][1])
    f.write_bytes(data[:-100])  # truncated: the last tensor is cut short
    with pytest.raises(ConversionError, match=f"tensor {last} is truncated"):
        import_checkpoint(src, tmp_path / "uc")
    # tampered header: a shape that does not fit the bytes
    name = next(k for k in header if k != "__metadata__")
    header[name]["shape"] = [header[name]["shape"][0] + 1, *header[name]["shape"][1:]]
    blob = json.dumps(header).encode()
    f.write_bytes(len(blob).to_bytes(8, "little") + blob + data[8 + header_len :])
    with pytest.raises(ConversionError, match=f"tensor {name} is inconsistent"):
        import_checkpoint(src, tmp_path / "uc")
    # a damaged .bin
    f.unlink()
    (src / "pytorch_model.bin").write_bytes(b"not a zip file")
    with pytest.raises(ConversionError, match="weights_only=True"):
        import_checkpoint(src, tmp_path / "uc")


# ---------------------------------------------------------------------------------------------
# cramming / UltraFastBERT: state dicts with the published names and shapes
# ---------------------------------------------------------------------------------------------


def _arch(fff: bool = False, k: int = 2, d: int = 2) -> dict:
    """The arch section of cramming's crammed-bert.yaml (resolved, tiny sizes) or UltraFastBERT's
    crammed-bert-fff.yaml."""
    arch = {
        "architectures": ["ScriptableCrammedBERT"], "num_transformer_layers": L, "hidden_size": H,
        "intermed_size": 64, "hidden_dropout_prob": 0.1, "norm": "LayerNorm", "norm_eps": 1e-12,
        "norm_scheme": "pre", "nonlin": "GELUglu", "tie_weights": True, "decoder_bias": False,
        "sparse_prediction": 0.25, "loss": "cross-entropy", "objective_layout": "MLM",
        "embedding": {"vocab_size": V, "pos_embedding": "scaled-sinusoidal", "dropout_prob": 0.1, "pad_token_id": 0,
                      "max_seq_length": 32, "embedding_dim": H, "normalization": True, "stable_low_precision": False},
        "attention": {"type": "self-attention", "causal_attention": False, "num_attention_heads": NH,
                      "dropout_prob": 0.1, "skip_output_projection": False, "qkv_bias": False,
                      "rotary_embedding": False, "seq_op_in_fp32": False, "sequence_op": "torch-softmax"},
        "init": {"type": "normal", "std": 0.02}, "ffn_layer_frequency": 1, "skip_head_transform": True,
        "use_bias": False, "final_norm": True, "num_labels": None,
        "classification_head": {"pooler": "avg", "include_ff_layer": True, "head_dim": 48, "nonlin": "Tanh",
                                "classifier_dropout": 0.1},
    }  # fmt: skip
    if fff:
        arch.update(intermed_type="fff", intermed_size=k, intermed_depth=d, nonlin="GELU")
    return arch


def _cramming_state(arch: dict) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(1)

    def r(*shape, scale=0.2):
        return torch.randn(*shape, generator=g) * scale

    s = {"encoder.embedding.word_embedding.weight": r(V, H, scale=1.0),
         "encoder.embedding.pos_embedding.scale_factor": torch.tensor([0.3]),
         "encoder.embedding.norm.weight": 1 + r(H), "encoder.embedding.norm.bias": r(H),
         "encoder.final_norm.weight": 1 + r(H), "encoder.final_norm.bias": r(H)}  # fmt: skip
    for i in range(L):
        p = f"encoder.layers.{i}."
        s.update({f"{p}norm1.weight": 1 + r(H), f"{p}norm1.bias": r(H), f"{p}norm2.weight": 1 + r(H),
                  f"{p}norm2.bias": r(H), f"{p}attn.self_attention.query_key_value.weight": r(3 * H, H),
                  f"{p}attn.self_attention.norm_factor": torch.tensor(H // NH).rsqrt(),
                  f"{p}attn.dense.weight": r(H, H)})  # fmt: skip
        if arch.get("intermed_type") == "fff":
            width = arch["intermed_size"] * (2 ** (arch["intermed_depth"] + 1) - 1)
            s.update({f"{p}ffn.linear_in.weight": r(width, H), f"{p}ffn.linear_in.bias": r(width),
                      f"{p}ffn.linear_out.weight": r(H, width)})  # fmt: skip
        else:
            s.update({f"{p}ffn.dense_in.weight": r(64, H), f"{p}ffn.dense_out.weight": r(H, 32)})
    s["decoder.weight"] = s["encoder.embedding.word_embedding.weight"].clone()  # tied, stored by torch.save
    return s


def _write(directory, arch, state, bin_file=False):
    directory.mkdir(parents=True, exist_ok=True)
    cfg = {"arch": arch, "architectures": ["ScriptableLMForPreTraining"], "model_type": "crammedBERT"}
    (directory / "config.json").write_text(json.dumps(cfg))
    if bin_file:
        torch.save(state, directory / "pytorch_model.bin")
    else:
        save_file({k: v.contiguous() for k, v in state.items()}, str(directory / "model.safetensors"))


def _ln(x, s, p):
    return F.layer_norm(x, (H,), s[f"{p}.weight"], s[f"{p}.bias"], eps=1e-12)


def _fff_walk(x, w_in, b_in, w_out, trees, depth):
    """UltraFastBERT's FFF, token by token: descend from the root of each tree, next node
    (current - platform) * 2 + move + next_platform (training/cramming/architectures/fff.py)."""
    n = 2 ** (depth + 1) - 1
    out = torch.zeros_like(x)
    for t in range(x.shape[0]):
        for k in range(trees):
            node = 0
            for d in range(depth + 1):
                row = k * n + node
                logit = w_in[row] @ x[t] + b_in[row]
                out[t] += F.gelu(logit) * w_out[:, row]
                if d < depth:
                    node = (node - (2**d - 1)) * 2 + int(logit > 0) + (2 ** (d + 1) - 1)
    return out


def _cramming_forward(s, arch, ids, mask):
    """The published crammedBERT / UltraFastBERT forward, written out from the raw tensors."""
    B, T_ = ids.shape
    hd = H // NH
    pos = torch.arange(32, dtype=torch.float).unsqueeze(1)
    div = torch.exp(torch.arange(0, H, 2).float() * (-math.log(10000.0) / H))
    pe = torch.zeros(32, H)
    pe[:, 0::2], pe[:, 1::2] = torch.sin(pos * div), torch.cos(pos * div)
    x = (
        s["encoder.embedding.word_embedding.weight"][ids]
        + s["encoder.embedding.pos_embedding.scale_factor"] * pe[:T_]
    )
    x = _ln(x, s, "encoder.embedding.norm")
    additive = (1.0 - mask[:, None, None, :].float()) * -10000.0  # get_extended_attention_mask
    for i in range(L):
        p = f"encoder.layers.{i}."
        h = _ln(x, s, f"{p}norm1")
        qkv = (h @ s[f"{p}attn.self_attention.query_key_value.weight"].T).view(B, T_, NH, 3 * hd)
        q, k, v = qkv.split(hd, dim=3)  # per head: [q | k | v] (GPT-NeoX layout)
        scores = torch.einsum("bqnd,bknd->bnqk", q, k) / math.sqrt(hd) + additive
        ctx = torch.einsum("bnqk,bknd->bqnd", scores.softmax(-1), v).reshape(B, T_, H)
        x = x + ctx @ s[f"{p}attn.dense.weight"].T
        h = _ln(x, s, f"{p}norm2")
        if arch.get("intermed_type") == "fff":
            f = _fff_walk(h.reshape(-1, H), s[f"{p}ffn.linear_in.weight"], s[f"{p}ffn.linear_in.bias"],
                          s[f"{p}ffn.linear_out.weight"], arch["intermed_size"], arch["intermed_depth"]).view_as(h)  # fmt: skip
        else:
            value, gate = (h @ s[f"{p}ffn.dense_in.weight"].T).chunk(2, dim=-1)  # components.GLU
            f = (F.gelu(gate) * value) @ s[f"{p}ffn.dense_out.weight"].T
        x = x + f
    x = _ln(x, s, "encoder.final_norm")
    return x @ s["decoder.weight"].T


@pytest.mark.parametrize("fff", [False, True], ids=["crammedBERT", "UltraFastBERT"])
def test_cramming_import_follows_published_architecture(tmp_path, fff):
    arch = _arch(fff=fff)
    state = _cramming_state(arch)
    _write(tmp_path / "src", arch, state, bin_file=fff)
    import_checkpoint(tmp_path / "src", tmp_path / "uc")
    model = load_checkpoint(tmp_path / "uc").eval()
    assert model.config.name == ("ultrafastbert-2x2" if fff else "crammed-bert")
    ids = torch.randint(5, V, (2, T))
    mask = torch.ones_like(ids)
    mask[1, 8:] = 0
    with torch.no_grad():
        ref = _cramming_forward(state, arch, ids, mask)
        got = model(ids, attention_mask=mask).logits
        assert (got[mask.bool()] - ref[mask.bool()]).abs().max() < 1e-4
        # the conditional fast paths give the same outputs on the imported weights
        for name in ("gather", "conditional", "cpu") if fff else ():
            if name not in FFF_IMPLEMENTATIONS:
                continue
            for m in model.modules():
                if isinstance(m, FastFeedForward):
                    m.implementation = name
            fast = model(ids, attention_mask=mask).logits
            assert (fast - got).abs().max() < 1e-4, name


def test_imported_model_fine_tunes(tmp_path):
    arch = _arch(fff=True)
    _write(tmp_path / "src", arch, _cramming_state(arch))
    import_checkpoint(tmp_path / "src", tmp_path / "uc")
    model = load_checkpoint(tmp_path / "uc", task="classification", num_labels=3)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    ids, labels = torch.randint(5, V, (4, T)), torch.tensor([0, 1, 2, 1])
    losses = []
    for _ in range(5):
        loss = model(ids, labels=labels).loss
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < losses[0]


def test_cramming_errors_name_the_tensor(tmp_path):
    arch = _arch()
    state = _cramming_state(arch)
    bad = dict(state)
    bad["encoder.layers.1.ffn.dense_in.weight"] = torch.zeros(66, H)
    _write(tmp_path / "a", arch, bad)
    with pytest.raises(
        ConversionError, match=r"shape mismatch for tensor encoder\.layers\.1\.ffn\.dense_in\.weight"
    ):
        import_checkpoint(tmp_path / "a", tmp_path / "uc")
    extra = {**state, "encoder.layers.0.attn.dense.bias": torch.zeros(H)}  # use_bias is False
    _write(tmp_path / "b", arch, extra)
    with pytest.raises(ConversionError, match=r"(?s)unused tensors.*encoder\.layers\.0\.attn\.dense\.bias"):
        import_checkpoint(tmp_path / "b", tmp_path / "uc")
    missing = {k: v for k, v in state.items() if k != "encoder.final_norm.bias"}
    _write(tmp_path / "c", arch, missing)
    with pytest.raises(ConversionError, match=r"missing tensor encoder\.final_norm\.bias"):
        import_checkpoint(tmp_path / "c", tmp_path / "uc")
    rotary = {**arch, "attention": {**arch["attention"], "rotary_embedding": True}, "norm": "RMSNorm"}
    _write(tmp_path / "d", rotary, state)
    with pytest.raises(
        ConversionError, match=r"(?s)arch\.norm = 'RMSNorm'.*arch\.attention\.rotary_embedding"
    ):
        import_checkpoint(tmp_path / "d", tmp_path / "uc")


def test_imported_hf_bert_runs_glue_finetuning(hf_bert, tmp_path):
    """An imported checkpoint (tokenizer built from vocab.txt) goes through ultracram's GLUE
    fine-tuning loop unchanged."""
    finetune = pytest.importorskip("ultracram.train.finetune")
    from ultracram.data.glue import GlueSplit, get_task

    src = tmp_path / "hf"
    hf_bert.save_pretrained(src)
    (src / "vocab.txt").write_text("\n".join(bert_vocab(V)) + "\n")
    import_checkpoint(src, tmp_path / "uc")
    g = torch.Generator().manual_seed(0)
    words = [f"w{i}" for i in torch.randint(0, V - 5, (64, 6), generator=g).flatten().tolist()]
    text = [" ".join(words[i * 6 : i * 6 + 6]) for i in range(64)]
    task = get_task("rte")
    train = GlueSplit(task, "train", text[:48], text[1:49], [i % 2 for i in range(48)], "synthetic")
    dev = GlueSplit(task, "dev", text[48:], text[47:63], [i % 2 for i in range(16)], "synthetic")
    settings = dataclasses.replace(PROTOCOLS["sane"], epochs=1, batch_size=8, pooler_size=0, max_length=32)
    result = finetune.finetune_run(tmp_path / "uc", train, [dev], settings, seed=0, run_dir=tmp_path / "run")
    assert result["steps"] == 6 and 0.0 <= result["metrics"]["dev"]["accuracy"] <= 1.0


def test_hf_bert_legacy_layernorm_names(hf_bert, tmp_path):
    """Early BERT checkpoints (Google's TensorFlow conversions, e.g. the original
    bert-base-uncased) name LayerNorm parameters gamma / beta; transformers reads them as
    weight / bias, and so does the import."""
    src = tmp_path / "hf"
    src.mkdir()
    (src / "config.json").write_text(hf_bert.config.to_json_string())

    def legacy(name: str) -> str:
        if ".LayerNorm." in name:
            return name.replace("LayerNorm.weight", "LayerNorm.gamma").replace(
                "LayerNorm.bias", "LayerNorm.beta"
            )
        return name

    state = {legacy(k): v.clone() for k, v in hf_bert.state_dict().items()}
    assert any(k.endswith("LayerNorm.gamma") for k in state)
    torch.save(state, src / "pytorch_model.bin")
    import_checkpoint(src, tmp_path / "uc")
    ours = load_checkpoint(tmp_path / "uc").eval()
    ids = torch.randint(5, V, (2, 16))
    with torch.no_grad():
        assert (ours(ids).logits - hf_bert(input_ids=ids).logits).abs().max() < 1e-4
    # both names for one tensor is ambiguous: an error naming it
    state["bert.embeddings.LayerNorm.weight"] = state["bert.embeddings.LayerNorm.gamma"]
    torch.save(state, src / "pytorch_model.bin")
    with pytest.raises(ConversionError, match=r"bert\.embeddings\.LayerNorm\.weight appears twice"):
        import_checkpoint(src, tmp_path / "uc2")
