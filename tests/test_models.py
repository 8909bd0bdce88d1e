import math

import pytest
import torch

from ultracram.config import PRESETS, get_preset
from ultracram.model import build_model, flops_per_token, parameter_counts

TINY = [name for name in PRESETS if name.endswith(("-tiny", "-mini"))]


def mlm_batch(config, batch=8, seq=64, generator=None):
    """Random tokens with 25% of positions replaced by [MASK] (id 4) and labelled."""
    g = generator or torch.Generator().manual_seed(0)
    ids = torch.randint(5, config.vocab_size, (batch, seq), generator=g)
    labels = torch.full_like(ids, -100)
    chosen = torch.rand(batch, seq, generator=g) < config.mask_rate
    labels[chosen] = ids[chosen]
    ids = ids.masked_fill(chosen, 4)
    return ids, labels


@pytest.mark.parametrize("name", TINY)
def test_tiny_preset_forward_backward_and_initial_loss(name):
    config = get_preset(name)
    model = build_model(config, "mlm")
    ids, labels = mlm_batch(config)
    out = model(ids, torch.ones_like(ids), labels=labels)
    out.loss.backward()
    assert math.isfinite(out.loss.item())
    ln_v = math.log(config.vocab_size)
    assert abs(out.loss.item() - ln_v) / ln_v < 0.05, (out.loss.item(), ln_v)
    grads = [p.grad for p in model.parameters() if p.requires_grad]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)


@pytest.mark.parametrize("name", TINY)
def test_tiny_preset_classification_and_regression(name):
    config = get_preset(name)
    ids, _ = mlm_batch(config, batch=4, seq=16)
    clf = build_model(config, "classification", num_labels=3)
    out = clf(ids, labels=torch.tensor([0, 1, 2, 1]))
    assert out.logits.shape == (4, 3) and out.loss.ndim == 0
    reg = build_model(config, "classification", num_labels=1)
    out = reg(ids, labels=torch.tensor([0.5, 1.0, 4.2, 3.3]))
    assert out.logits.shape == (4,)
    out.loss.backward()


@pytest.mark.parametrize(
    "name", ["bert-tiny", "crammed-bert-tiny", "ultrafastbert-tiny", "switch-tiny", "fnet-tiny"]
)
def test_padding_changes_nothing_in_real_tokens(name):
    config = get_preset(name)
    model = build_model(config, "encoder").eval()
    ids = torch.randint(5, config.vocab_size, (1, 12))
    padded = torch.cat([ids, torch.zeros(1, 4, dtype=torch.long)], dim=1)
    mask = torch.cat([torch.ones(1, 12), torch.zeros(1, 4)], dim=1).long()
    a = model(ids, torch.ones_like(ids))
    b = model(padded, mask)[:, :12]
    if config.mixer == "fourier":
        # The DFT length is the padded length, so values change, but padded *content* must not
        # leak: changing the pad tokens' ids leaves the output unchanged.
        c = model(padded.masked_fill(mask == 0, 7), mask)[:, :12]
        torch.testing.assert_close(b, c)
    else:
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)


def test_sparse_prediction_static_shape():
    config = get_preset("crammed-bert-tiny")
    model = build_model(config, "mlm")
    ids, labels = mlm_batch(config, batch=4, seq=32)
    out = model(ids, labels=labels)
    k = math.ceil(4 * 32 * config.mask_rate)
    assert out.logits.shape == (k, config.vocab_size)
    # every truly masked position is among the predicted ones
    assert (out.labels != -100).sum() == min(k, (labels != -100).sum())
    # without labels, logits cover every position
    assert model(ids).logits.shape == (4, 32, config.vocab_size)


def test_switch_aux_loss_and_capacity():
    config = get_preset("switch-tiny").replace(moe_capacity_factor=0.5)
    model = build_model(config, "mlm")
    ids, labels = mlm_batch(config)
    out = model(ids, labels=labels)
    # >= 1 per layer (1 = perfectly balanced), times the weight
    assert (
        out.aux_loss is not None
        and out.aux_loss.item() >= config.num_layers * 0.99 * config.moe_aux_loss_weight
    )
    out.loss.backward()
    assert model.encoder.layers[0].ffn.router.weight.grad.abs().sum() > 0


def test_fff_model_uses_selected_implementation():
    config = get_preset("ultrafastbert-tiny")
    model = build_model(config, "mlm").eval()
    ids, _ = mlm_batch(config, batch=2, seq=16)
    ref = model(ids).logits
    for layer in model.encoder.layers:
        layer.ffn.implementation = "gather"
    torch.testing.assert_close(model(ids).logits, ref, atol=1e-5, rtol=1e-5)
    with pytest.raises(ValueError, match="unknown FFF implementation"):
        model.encoder.layers[0].ffn.implementation = "nope"


def _meta_counts(name):
    with torch.device("meta"):
        return parameter_counts(build_model(get_preset(name), "mlm"))


def test_bert_base_parameter_count_matches_huggingface():
    transformers = pytest.importorskip("transformers")
    with torch.device("meta"):
        hf = transformers.BertForMaskedLM(transformers.BertConfig())
    assert _meta_counts("bert-base")["total"] == hf.num_parameters() == 109_514_298


def test_crammed_and_fff_parameter_counts_by_formula():
    h, L, v, t, i = 768, 16, 32768, 128, 3072
    emb = v * h + 1 + h  # tokens, the sinusoid scale, embedding LayerNorm weight (no bias)
    attn = 3 * h * h + h * h
    glu = h * i + (i // 2) * h
    norms = 2 * h
    final = h
    body = h + L * (attn + glu + norms) + final  # embedding LayerNorm, blocks, final LayerNorm
    assert _meta_counts("crammed-bert") == {
        "total": emb + L * (attn + glu + norms) + final,
        "embedding": v * h + 1,
        "non_embedding": body,
    }
    n = 4095
    fff = n * h + n + n * h
    assert _meta_counts("ultrafastbert-1x11")["total"] == emb + L * (attn + fff + norms) + final
    assert t == get_preset("crammed-bert").max_seq_len


def test_flops_fff_counts_visited_nodes_only():
    dense = flops_per_token(get_preset("crammed-bert"))["ffn"]
    fff = flops_per_token(get_preset("ultrafastbert-1x11"))["ffn"]
    assert fff == 16 * 2 * 2 * 768 * 12
    assert dense / fff > 100
