"""The FFF gather implementation against the masked dense reference (issue 2)."""

import pytest
import torch
import torch.nn.functional as F

from ultracram.config import get_preset
from ultracram.kernels import fff_gather, fff_masked, fff_nodes, fff_paths
from ultracram.model.feedforward import FastFeedForward


def make_layer(depth, trees, hidden=32, seed=0):
    torch.manual_seed(seed)
    config = get_preset("ultrafastbert-tiny").replace(
        hidden_size=hidden, num_heads=4, fff_depth=depth, fff_trees=trees
    )
    layer = FastFeedForward(config)
    with torch.no_grad():  # larger weights than the init so routing is far from ties
        layer.linear_in.weight.normal_(0, 0.5)
        layer.linear_in.bias.normal_(0, 0.5)
        layer.linear_out.weight.normal_(0, 0.5)
    return layer


@pytest.mark.parametrize("depth", range(12))
@pytest.mark.parametrize("trees", [1, 3])
def test_gather_equals_masked_outputs_and_gradients(depth, trees):
    layer = make_layer(depth, trees)
    x = torch.randn(2, 37, 32)
    results = {}
    for impl in ("masked", "gather"):
        layer.zero_grad()
        layer.implementation = impl
        xi = x.clone().requires_grad_(True)
        out = layer(xi)
        (out * torch.linspace(-1, 1, out.numel()).view_as(out)).sum().backward()
        results[impl] = (out.detach(), xi.grad, *(p.grad.clone() for p in layer.parameters()))
    for ref, got in zip(results["masked"], results["gather"]):
        # Relative to the tensor's scale: sums over tokens are accumulated in another order
        # (matmul vs index_add), so single near-cancelling entries differ by a few ulps of the sum.
        assert (got - ref).abs().max() <= 1e-5 * ref.abs().max().clamp_min(1e-30), (got - ref).abs().max()


def test_unvisited_nodes_get_exactly_zero_gradient():
    layer = make_layer(depth=6, trees=2)
    layer.implementation = "gather"
    x = torch.randn(5, 32)
    layer(x).sum().backward()
    path = fff_paths(F.linear(x, layer.linear_in.weight, layer.linear_in.bias), 6, 2)  # (T, K, D+1)
    visited = torch.zeros(2 * fff_nodes(6), dtype=torch.bool)
    visited[(path + torch.tensor([0, fff_nodes(6)])[None, :, None]).flatten()] = True
    assert (layer.linear_in.weight.grad[~visited] == 0).all()
    assert (layer.linear_in.bias.grad[~visited] == 0).all()
    assert (layer.linear_out.weight.grad[:, ~visited] == 0).all()
    assert (layer.linear_in.bias.grad[visited] != 0).all()


@pytest.mark.parametrize("depth", [0, 1, 5, 11])
def test_each_token_walks_one_root_to_leaf_path(depth):
    layer = make_layer(depth, trees=3)
    x = torch.randn(64, 32)
    logits = F.linear(x, layer.linear_in.weight, layer.linear_in.bias).view(64, 3, -1)
    path = fff_paths(logits.view(64, -1), depth, 3)  # (T, K, D+1)
    assert path.shape == (64, 3, depth + 1)
    assert (path[:, :, 0] == 0).all()
    for level in range(depth):
        parent, child = path[:, :, level], path[:, :, level + 1]
        went_right = logits.gather(2, parent.unsqueeze(2)).squeeze(2) > 0
        assert torch.equal(child, 2 * parent + 1 + went_right.long())
    leaves = path[:, :, -1]
    assert ((leaves >= 2**depth - 1) & (leaves < 2 ** (depth + 1) - 1)).all()


def test_depth_zero_tree_is_a_one_neuron_dense_ffn():
    layer = make_layer(depth=0, trees=1)
    x = torch.randn(10, 32)
    dense = F.gelu(x @ layer.linear_in.weight.T + layer.linear_in.bias) @ layer.linear_out.weight.T
    for impl in ("masked", "gather"):
        layer.implementation = impl
        torch.testing.assert_close(layer(x), dense)


def test_reference_matches_a_per_token_tree_walk():
    """Independent check of the masked reference itself: walk each token in Python."""
    layer = make_layer(depth=4, trees=2)
    x = torch.randn(7, 32)
    w, b, wo = layer.linear_in.weight, layer.linear_in.bias, layer.linear_out.weight
    n = fff_nodes(4)
    expected = torch.zeros(7, 32)
    for t in range(7):
        for k in range(2):
            node = 0
            for _ in range(5):
                z = float((x[t] @ w[k * n + node] + b[k * n + node]).detach())
                expected[t] += F.gelu(torch.tensor(z)) * wo[:, k * n + node]
                node = 2 * node + (2 if z > 0 else 1)
    torch.testing.assert_close(fff_masked(x, w, b, wo, 4, 2).detach(), expected, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(fff_gather(x, w, b, wo, 4, 2).detach(), expected, rtol=1e-5, atol=1e-5)
