"""FFF training path (kernels/autograd.py) against the masked dense reference, on CPU.

Outputs and all four gradients must match ``fff_masked`` within 1e-5 of the reference
tensor's largest magnitude (fp32), for depths 0..11 and 1 and 3 trees, with the numba and
torch backends; bf16 within 1e-2 (one bf16 rounding of each output, 2^-8 = 0.4%, plus slack).
"""

import pytest
import torch
import torch.nn.functional as F

from ultracram.config import get_preset
from ultracram.kernels import FFF_IMPLEMENTATIONS, fff_paths
from ultracram.kernels.autograd import fff_conditional
from ultracram.kernels.reference import fff_masked, fff_nodes
from ultracram.model.dispatch import resolve, set_fff_implementation
from ultracram.model.feedforward import FastFeedForward


def make_layer(tokens, hidden, depth, trees, dtype=torch.float32, seed=0):
    """Random FFF weights, input and upstream gradient; biases large enough to matter."""
    gen = torch.Generator().manual_seed(seed)
    rows = trees * fff_nodes(depth)
    x = torch.randn(tokens, hidden, generator=gen)
    w_in = torch.randn(rows, hidden, generator=gen) / hidden**0.5
    b_in = 0.3 * torch.randn(rows, generator=gen)
    w_out = torch.randn(hidden, rows, generator=gen) / hidden**0.5
    grad = torch.randn(tokens, hidden, generator=gen)
    return [t.to(dtype) for t in (x, w_in, b_in, w_out, grad)]


def forward_backward(fn, x, w_in, b_in, w_out, grad, depth, trees, **kw):
    """Output and gradients (x, w_in, b_in, w_out) of one forward + backward."""
    leaves = [t.clone().requires_grad_() for t in (x, w_in, b_in, w_out)]
    out = fn(*leaves, depth, trees, F.gelu, **kw)
    out.backward(grad)
    return [out.detach()] + [t.grad for t in leaves]


NAMES = ["out", "grad_x", "grad_w_in", "grad_b_in", "grad_w_out"]


def assert_close(got, want, rel, what=""):
    for name, g, w in zip(NAMES, got, want, strict=True):
        assert g.shape == w.shape and g.dtype == w.dtype, (what, name, g.shape, w.shape)
        err = (g.double() - w.double()).abs().max().item()
        scale = w.double().abs().max().item()
        assert err <= rel * scale, f"{what} {name}: max abs diff {err:.3g} > {rel} x {scale:.3g}"


@pytest.mark.parametrize("backend", ["numba", "torch"])
@pytest.mark.parametrize("trees", [1, 3])
@pytest.mark.parametrize("depth", range(12))
def test_matches_masked_fp32(depth, trees, backend):
    x, w_in, b_in, w_out, grad = make_layer(48, 24, depth, trees, seed=depth * 10 + trees)
    want = forward_backward(fff_masked, x, w_in, b_in, w_out, grad, depth, trees)
    got = forward_backward(fff_conditional, x, w_in, b_in, w_out, grad, depth, trees, backend=backend)
    assert_close(got, want, 1e-5, f"depth={depth} trees={trees} {backend}")


def test_unvisited_rows_get_exactly_zero_gradient():
    depth, trees = 6, 2
    x, w_in, b_in, w_out, grad = make_layer(20, 16, depth, trees)
    got = forward_backward(fff_conditional, x, w_in, b_in, w_out, grad, depth, trees)
    paths = fff_paths(F.linear(x, w_in, b_in), depth, trees)  # (T, K, D+1)
    rows = (paths + torch.arange(trees)[None, :, None] * fff_nodes(depth)).unique()
    unvisited = torch.ones(w_in.shape[0], dtype=torch.bool)
    unvisited[rows] = False
    assert unvisited.sum() > 0 and len(rows) > depth + 1
    _, _, g_in, g_b, g_out = got
    assert (g_in[unvisited] == 0).all() and (g_b[unvisited] == 0).all() and (g_out[:, unvisited] == 0).all()
    assert (g_in[rows].abs().sum(1) > 0).all() and (g_out[:, rows].abs().sum(0) > 0).all()


@pytest.mark.parametrize("backend", ["numba", "torch"])
def test_gradcheck_float64(backend):
    depth, trees = 2, 2
    x, w_in, b_in, w_out, _ = make_layer(5, 6, depth, trees, dtype=torch.float64)
    leaves = [t.requires_grad_() for t in (x, w_in, b_in, w_out)]

    def fn(*args):
        return fff_conditional(*args, depth, trees, F.gelu, backend=backend)

    # Routing is piecewise constant; random logits sit far from 0 compared with eps=1e-6.
    assert torch.autograd.gradcheck(fn, leaves, eps=1e-6, atol=1e-6)


@pytest.mark.parametrize("backend", ["numba", "torch"])
def test_bf16_close_to_fp32_reference(backend):
    depth, trees = 5, 3
    x, w_in, b_in, w_out, grad = make_layer(32, 32, depth, trees, dtype=torch.bfloat16)
    # Reference: fp32 masked on the same bf16 values, so routing sees the same numbers.
    want = forward_backward(fff_masked, *[t.float() for t in (x, w_in, b_in, w_out, grad)], depth, trees)
    got = forward_backward(fff_conditional, x, w_in, b_in, w_out, grad, depth, trees, backend=backend)
    assert all(t.dtype == torch.bfloat16 for t in got)
    assert_close([t.float() for t in got], want, 1e-2, f"bf16 {backend}")


def test_numba_weight_gradients_are_deterministic():
    depth, trees = 7, 2
    x, w_in, b_in, w_out, grad = make_layer(200, 64, depth, trees)
    a = forward_backward(fff_conditional, x, w_in, b_in, w_out, grad, depth, trees, backend="numba")
    b = forward_backward(fff_conditional, x, w_in, b_in, w_out, grad, depth, trees, backend="numba")
    for name, ta, tb in zip(NAMES, a, b, strict=True):
        assert torch.equal(ta, tb), name


def test_fast_feedforward_module_trains_with_conditional():
    config = get_preset("ultrafastbert-tiny", fff_trees=2)
    ref, cond = FastFeedForward(config, "masked"), FastFeedForward(config, "conditional")
    cond.load_state_dict(ref.state_dict())
    x = torch.randn(2, 7, config.hidden_size)
    for layer in (ref, cond):
        layer(x).square().sum().backward()
    assert torch.allclose(cond(x), ref(x), atol=1e-5)
    for (name, p), q in zip(ref.named_parameters(), cond.parameters(), strict=True):
        assert torch.allclose(q.grad, p.grad, atol=1e-5 * p.grad.abs().max().item()), name


def test_auto_training_implementation():
    assert resolve("cpu", "train", depth=11) == "conditional"
    assert resolve("cpu", "train", depth=4) == "conditional"  # 128x4: 6.2 nodes per visit
    # 256x2 and 512x1: the masked reference's BLAS products win on CPU; auto says so by name.
    assert resolve("cpu", "train", depth=2) == "masked"
    assert resolve("cpu", "train", depth=1) == "masked"
    assert resolve(torch.device("cuda"), "train") in ("conditional", "gather")
    assert resolve("meta", "train") == "gather"
    assert all(resolve("cpu", "train", depth=d) in FFF_IMPLEMENTATIONS for d in range(12))


def test_set_fff_implementation_per_layer_and_refusals():
    from ultracram.config import get_preset
    from ultracram.model import build_model

    model = build_model(get_preset("ultrafastbert-tiny", fff_depth=2, fff_trees=4), "mlm")
    assert set_fff_implementation(model, "auto") == ["masked"] * 2
    assert set_fff_implementation(model, "conditional") == ["conditional"] * 2  # explicit: the kernels
    assert set_fff_implementation(model, "auto", mode="infer") == ["cpu"] * 2
    with pytest.raises(ValueError, match="inference-only"):
        set_fff_implementation(model, "cpu", mode="train")
    with pytest.raises(ValueError, match="unknown FFF implementation"):
        set_fff_implementation(model, "fastest")


def test_conditional_never_substitutes_masked():
    """A shallow tree on CPU named ``conditional`` runs the kernels (its backward is the
    custom Function's), not the masked reference under another name."""
    x, w_in, b_in, w_out, _ = make_layer(5, 8, 1, 4)
    x.requires_grad_()
    out = fff_conditional(x, w_in, b_in, w_out, 1, 4, F.gelu)
    assert type(out.grad_fn).__name__.startswith("FFFConditional")


def test_unknown_backend_is_rejected():
    x, w_in, b_in, w_out, _ = make_layer(3, 4, 1, 1)
    with pytest.raises(ValueError, match="unknown FFF training backend"):
        fff_conditional(x, w_in, b_in, w_out, 1, 1, F.gelu, backend="cuda-magic")
