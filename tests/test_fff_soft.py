"""Soft FFF training mode: sigmoid decisions weighted by reach probability, hardening loss.

Checked against the masked (hard) reference in the zero-temperature limit, against a per-token
recursive evaluation of the soft tree, and end to end in a tiny model."""

import math

import pytest
import torch
import torch.nn.functional as F

from ultracram.config import ConfigError, get_preset
from ultracram.kernels.reference import fff_masked, fff_nodes, fff_soft
from ultracram.model import build_model


def make_tree(depth, trees, hidden=12, tokens=9, seed=0):
    g = torch.Generator().manual_seed(seed)
    n = trees * fff_nodes(depth)
    return (torch.randn(tokens, hidden, generator=g, dtype=torch.float64),
            torch.randn(n, hidden, generator=g, dtype=torch.float64),
            torch.randn(n, generator=g, dtype=torch.float64),
            torch.randn(hidden, n, generator=g, dtype=torch.float64))  # fmt: skip


def soft_by_recursion(x, w_in, b_in, w_out, depth, trees, temperature):
    """Independent reference: visit every node of every tree, one token at a time, carrying
    the probability of reaching it down an explicit stack."""
    n = fff_nodes(depth)
    outs, entropies = [], []
    for t in range(x.shape[0]):
        out, ent = torch.zeros(x.shape[1], dtype=x.dtype), 0.0
        for k in range(trees):
            stack = [(0, 0, 1.0)]  # (node, level, reach probability)
            while stack:
                node, level, reach = stack.pop()
                row = k * n + node
                z = x[t] @ w_in[row] + b_in[row]
                out = out + reach * F.gelu(z) * w_out[:, row]
                if level < depth:
                    p = torch.sigmoid(z / temperature)
                    ent += float(reach * -(p * p.log() + (1 - p) * (1 - p).log())) / (depth * trees)
                    stack += [
                        (2 * node + 1, level + 1, reach * (1 - p)),
                        (2 * node + 2, level + 1, reach * p),
                    ]
        outs.append(out)
        entropies.append(ent)
    return torch.stack(outs), torch.tensor(entropies, dtype=x.dtype)


@pytest.mark.parametrize(("depth", "trees"), [(0, 1), (1, 2), (3, 1), (4, 3)])
def test_soft_matches_recursive_reference(depth, trees):
    x, w_in, b_in, w_out = make_tree(depth, trees, seed=depth + 10 * trees)
    out, entropy = fff_soft(x, w_in, b_in, w_out, depth, trees, temperature=2.0)
    want_out, want_entropy = soft_by_recursion(x, w_in, b_in, w_out, depth, trees, 2.0)
    torch.testing.assert_close(out, want_out)
    if depth:
        torch.testing.assert_close(entropy.mean(1), want_entropy)


@pytest.mark.parametrize(("depth", "trees"), [(0, 1), (2, 2), (5, 1), (7, 3)])
def test_zero_temperature_is_the_hard_reference(depth, trees):
    x, w_in, b_in, w_out = make_tree(depth, trees, seed=depth)
    out, entropy = fff_soft(x, w_in, b_in, w_out, depth, trees, temperature=1e-12)
    torch.testing.assert_close(out, fff_masked(x, w_in, b_in, w_out, depth, trees))
    assert entropy.abs().max() < 1e-6


def test_undecided_tree_has_entropy_ln2_and_every_node_learns():
    depth, trees = 3, 2
    x, w_in, b_in, w_out = make_tree(depth, trees)
    _, entropy = fff_soft(x, torch.zeros_like(w_in), torch.zeros_like(b_in), w_out, depth, trees)
    torch.testing.assert_close(entropy, torch.full_like(entropy, math.log(2)))
    w_in.requires_grad_(True)
    out, _ = fff_soft(x, w_in, b_in, w_out, depth, trees)
    out.sum().backward()
    assert (w_in.grad.abs().sum(1) > 0).all()  # hard routing would leave most rows at zero


def test_soft_mode_in_a_model_trains_and_evaluates_hard():
    torch.manual_seed(0)
    config = get_preset("ultrafastbert-tiny", fff_depth=3, fff_training="soft", fff_hardening_weight=0.5)
    model = build_model(config, "mlm")
    ids = torch.randint(5, config.vocab_size, (4, 32))
    labels = torch.full_like(ids, -100)
    labels[:, ::4] = ids[:, ::4]
    # Training: the loss carries the weighted mean decision entropy of every FFF layer.
    out = model(ids, labels=labels)
    layers = [m for m in model.modules() if hasattr(m, "soft")]
    assert out.aux_loss is not None
    torch.testing.assert_close(out.aux_loss, sum(0.5 * m.aux_loss for m in layers))
    assert 0 < float(out.aux_loss.detach()) <= 0.5 * len(layers) * math.log(2)
    out.loss.backward()
    assert all((m.linear_in.weight.grad.abs().sum(1) > 0).all() for m in layers)
    # Hardening: a few steps on the entropy alone make the decisions sharper.
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    first = float(out.aux_loss.detach())
    for _ in range(20):
        opt.zero_grad()
        model(ids, labels=labels).aux_loss.backward()
        opt.step()
    assert float(model(ids, labels=labels).aux_loss.detach()) < 0.5 * first
    # Evaluation routes hard: the same outputs as the masked implementation, no aux loss.
    model.eval()
    with torch.no_grad():
        soft_eval = model(ids).logits
        for m in layers:
            m.soft = False
        hard = model(ids).logits
    torch.testing.assert_close(soft_eval, hard)
    assert model(ids).aux_loss is None


def test_soft_mode_settings_are_validated():
    with pytest.raises(ConfigError) as e:
        get_preset(
            "ultrafastbert-tiny", fff_training="fuzzy", fff_soft_temperature=0.0, fff_hardening_weight=-1.0
        )
    text = str(e.value)
    assert "fff_training" in text and "fff_soft_temperature" in text and "fff_hardening_weight" in text
