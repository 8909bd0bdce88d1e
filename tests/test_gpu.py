"""FFF kernels, models and one training step on a real CUDA device (``pytest -m gpu``).

Skipped without CUDA or without Triton. Everything is compared with the masked dense reference
(``fff_masked``) computed on the same device, in fp32, on the same (for bf16: bf16-rounded)
values:

- Triton inference kernel (``fff_triton``): fp32 within 1e-5 of the reference's largest
  magnitude, bf16 within 1e-2 (the kernel accumulates in fp32 and rounds once to bf16 on
  store: 2^-9 of an element at most, 0.2% of the largest one; 1e-2 leaves 5x slack).
- Triton training path (``fff_conditional`` on CUDA tensors): output and the four gradients,
  same tolerances (every one of them is fp32 sums rounded once to the input dtype); weight
  gradients bitwise reproducible.
- Whole tiny models before and after ``for_inference``: fp32 within 1e-5.
- One bf16-mixed training step of a tiny UltraFastBERT through ``ultracram.train.engine``.

Routing caveat: the kernels sum a token's logit in another order than cuBLAS, so a logit within
rounding of zero may take the other branch, and then the whole row differs. Rather than
allowing some rows to differ, the layer tests draw inputs whose exact (fp64) route has no
decision within ``ROUTE_MARGIN`` of zero, relative to sum_h |x_h w_h| + |b| (the scale of the
rounding error of any fp32 summation order; its worst case at H = 768 is 768 * 2^-24 = 4.6e-5
of that): tokens that have one are redrawn (a few percent at depth 11). Both sides then take
the same route and every row must match: 0 rows may differ, in fp32 and bf16 alike (bf16
values multiply exactly in fp32, so bf16 routing has the same fp32 error). The model tests
cannot choose the hidden states inside the model; they use weights scaled so that near-ties
are rare (as tests/test_inference.py does on CPU).

Sizes are small (at most 1,001 tokens x 768 hidden x 12,285 rows) so the module runs in
seconds on an H200 once Triton has compiled its kernels (cached on disk after the first run).
Every check is a helper that takes the device and backend, so the logic can be run on CPU
under ``TRITON_INTERPRET=1`` with small sizes; the tests themselves target CUDA.
"""

from __future__ import annotations

import copy
import math

import pytest
import torch
import torch.nn.functional as F

from conftest import model_outputs, tiny_fff_model
from ultracram.config import get_preset
from ultracram.data.mlm import mask_tokens
from ultracram.data.tokenizer import SPECIAL_TOKENS
from ultracram.kernels import FFF_IMPLEMENTATIONS, fff_masked, fff_nodes, fff_paths
from ultracram.kernels.autograd import fff_conditional, triton_available
from ultracram.model import FastFeedForward, build_model, for_inference
from ultracram.model.dispatch import fff_implementations, resolve, set_fff_implementation

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA"),
    pytest.mark.skipif(not triton_available(), reason="needs triton (pip install ultracram[gpu])"),
]

DEVICE = "cuda"
FP32_REL = 1e-5  # of the reference tensor's largest magnitude (as tests/test_fff_training.py)
BF16_REL = 1e-2  # one bf16 rounding of each output element (<= 2^-9 of it), with 5x slack
ROUTE_MARGIN = 1e-4  # near-tie threshold, relative to sum |x_h w_h| + |b| (see module doc)
NAMES = ["out", "grad_x", "grad_w_in", "grad_b_in", "grad_w_out"]


@pytest.fixture(autouse=True)
def _ieee_fp32_matmuls():
    """The fp32 reference must be IEEE fp32: TF32 (10-bit mantissa) matmuls would be ~1e-3 off."""
    before = torch.get_float32_matmul_precision()
    torch.set_float32_matmul_precision("highest")
    yield
    torch.set_float32_matmul_precision(before)


@pytest.fixture
def triton_calls(monkeypatch):
    """Count the Triton training backend's route and weight-gradient launches (so a test knows
    ``fff_conditional`` really picked Triton on CUDA, not numba or torch)."""
    from ultracram.kernels import triton_train

    calls = {"route": 0, "weight_grads": 0}
    for name in calls:
        real = getattr(triton_train.TritonBackend, name)

        def spy(*args, _real=real, _name=name, **kwargs):
            calls[_name] += 1
            return _real(*args, **kwargs)

        monkeypatch.setattr(triton_train.TritonBackend, name, staticmethod(spy))
    return calls


# --------------------------------------------------------------------------- layer helpers
def make_tree(depth, trees, hidden, dtype, seed):
    """Generator and FFF weights (w_in (K*N, H), b_in (K*N,), w_out (H, K*N)) on CPU, rounded
    to ``dtype``. Scaled as tests/test_fff_training.py: logits of order 1, biases that matter."""
    gen = torch.Generator().manual_seed(seed)
    rows = trees * fff_nodes(depth)
    w_in = torch.randn(rows, hidden, generator=gen) / hidden**0.5
    b_in = 0.3 * torch.randn(rows, generator=gen)
    w_out = torch.randn(hidden, rows, generator=gen) / hidden**0.5
    return gen, w_in.to(dtype), b_in.to(dtype), w_out.to(dtype)


def near_ties(x, w_in, b_in, depth, trees, margin=ROUTE_MARGIN):
    """(T,) bool: tokens whose exact route (fp64 on the given values) has a decision with
    |z| <= margin * (sum_h |x_h w_h| + |b|). Only levels 0..D-1 decide; the leaf does not."""
    T = x.shape[0]
    if depth == 0:
        return torch.zeros(T, dtype=torch.bool, device=x.device)
    x64, w64, b64 = x.double(), w_in.double(), b_in.double()
    z = F.linear(x64, w64, b64)  # (T, K*N)
    bound = F.linear(x64.abs(), w64.abs(), b64.abs())  # (T, K*N)
    path = fff_paths(z, depth, trees)[:, :, :depth]  # (T, K, D) deciding nodes, within-tree
    rows = (path + torch.arange(trees, device=x.device)[None, :, None] * fff_nodes(depth)).reshape(T, -1)
    return (z.gather(1, rows).abs() <= margin * bound.gather(1, rows)).any(1)


def route_safe_input(gen, tokens, hidden, w_in, b_in, depth, trees, dtype, device, rounds=50):
    """(tokens, hidden) standard normal input in ``dtype`` on ``device``, with every token
    redrawn until its route has no near-tie (``near_ties``)."""
    x = torch.randn(tokens, hidden, generator=gen).to(dtype)
    w_in, b_in = w_in.to(device), b_in.to(device)
    for _ in range(rounds):
        bad = near_ties(x.to(device), w_in, b_in, depth, trees).cpu()
        if not bad.any():
            return x.to(device)
        x[bad] = torch.randn(int(bad.sum()), hidden, generator=gen).to(dtype)
    raise AssertionError(f"could not draw {tokens} route-safe tokens (depth {depth}, trees {trees})")


def make_layer(tokens, hidden, depth, trees, dtype, seed, device):
    """x (T, H), w_in (K*N, H), b_in (K*N,), w_out (H, K*N), upstream grad (T, H) on ``device``."""
    gen, w_in, b_in, w_out = make_tree(depth, trees, hidden, dtype, seed)
    x = route_safe_input(gen, tokens, hidden, w_in, b_in, depth, trees, dtype, device)
    grad = torch.randn(tokens, hidden, generator=gen).to(dtype)
    return [x] + [t.to(device) for t in (w_in, b_in, w_out, grad)]


def differing_rows(got, want, rel):
    """Rows of ``got`` whose largest error exceeds rel x the reference's largest magnitude:
    (count, largest error, scale)."""
    scale = want.double().abs().max().clamp_min(1e-30)
    err = (got.double() - want.double()).abs().amax(dim=1)  # (rows,)
    return int((err > rel * scale).sum()), float(err.max()), float(scale)


def check_inference(fn, depth, trees, tokens, hidden, *, dtype, rel, seed, device,
                    activation=F.gelu, strided=False, **kw):  # fmt: skip
    """``fn`` (an inference FFF implementation) vs fp32 ``fff_masked`` on the same values:
    no row may differ by more than rel x the reference's largest magnitude."""
    x, w_in, b_in, w_out, _ = make_layer(tokens, hidden, depth, trees, dtype, seed, device)
    if strided:  # rows 800 apart: the kernel must use x.stride(0), not H
        wide = torch.zeros(tokens, hidden + 32, dtype=dtype, device=device)
        wide[:, :hidden] = x
        x = wide[:, :hidden]
        assert not x.is_contiguous() and x.stride(1) == 1
    with torch.no_grad():
        want = fff_masked(*(t.float() for t in (x, w_in, b_in, w_out)), depth, trees, activation)
        got = fn(x, w_in, b_in, w_out, depth, trees, activation, **kw)
    assert got.shape == (tokens, hidden) and got.dtype == dtype and got.device == x.device
    bad, err, scale = differing_rows(got, want, rel)
    assert bad == 0, (
        f"depth={depth} trees={trees} T={tokens} H={hidden} {dtype}: {bad}/{tokens} rows differ; "
        f"max abs diff {err:.3g} > {rel} x {scale:.3g}"
    )


def forward_backward(fn, x, w_in, b_in, w_out, grad, depth, trees, **kw):
    """Output and gradients (x, w_in, b_in, w_out) of one forward + backward."""
    leaves = [t.clone().requires_grad_() for t in (x, w_in, b_in, w_out)]
    out = fn(*leaves, depth, trees, F.gelu, **kw)
    out.backward(grad)
    return [out.detach()] + [t.grad for t in leaves]


def check_training(depth, trees, tokens, hidden, *, dtype, rel, seed, device, backend=None):
    """``fff_conditional`` (``backend=None``: picked by device, Triton on CUDA) vs fp32
    ``fff_masked`` autograd on the same values: output and the four gradients within rel x
    each reference tensor's largest magnitude; unvisited rows' gradients exactly zero."""
    layer = make_layer(tokens, hidden, depth, trees, dtype, seed, device)
    want = forward_backward(fff_masked, *(t.float() for t in layer), depth, trees)
    got = forward_backward(fff_conditional, *layer, depth, trees, backend=backend)
    what = f"depth={depth} trees={trees} T={tokens} H={hidden} {dtype}"
    for name, g, w in zip(NAMES, got, want, strict=True):
        assert g.shape == w.shape and g.dtype == dtype, (what, name, g.shape, g.dtype)
        err = float((g.double() - w.double()).abs().max())
        scale = float(w.double().abs().max())
        assert err <= rel * scale, f"{what} {name}: max abs diff {err:.3g} > {rel} x {scale:.3g}"
    # Rows no token visited: the reference's gradients are exactly zero there, and so must ours be.
    _, _, g_in, g_b, g_out = got
    unvisited = (want[2] == 0).all(1) & (want[3] == 0) & (want[4] == 0).all(0)  # (K*N,)
    assert (g_in[unvisited] == 0).all() and (g_b[unvisited] == 0).all() and (g_out[:, unvisited] == 0).all()
    return got


# --------------------------------------------------------------------------- 1. inference kernel
@pytest.mark.parametrize("trees", [1, 3])
@pytest.mark.parametrize("depth", range(12))
def test_triton_inference_depth_sweep_fp32(depth, trees):
    # H = 64 (half of BLOCK_H = 128: the masked H tail); T = 1 (one program, 15 masked lanes),
    # 7, 333 and 1001 (not multiples of BLOCK_T = 16: the token tail).
    from ultracram.kernels.triton_infer import fff_triton

    for tokens in (1, 7, 333, 1001):
        check_inference(fff_triton, depth, trees, tokens, 64, dtype=torch.float32, rel=FP32_REL,
                        seed=100 * trees + depth, device=DEVICE)  # fmt: skip


@pytest.mark.parametrize(
    ("depth", "trees", "tokens"),
    [(11, 1, 1001), (11, 3, 333), (7, 16, 1001), (5, 3, 7), (1, 3, 1001), (0, 1, 1)],
)
def test_triton_inference_full_width_fp32(depth, trees, tokens):
    # UltraFastBERT's hidden size, through the registry entry that models call.
    fn = FFF_IMPLEMENTATIONS["triton"]
    check_inference(fn, depth, trees, tokens, 768, dtype=torch.float32, rel=FP32_REL,
                    seed=7 * depth + trees, device=DEVICE)  # fmt: skip


def test_triton_inference_relu_and_strided_rows():
    check_inference(FFF_IMPLEMENTATIONS["triton"], 6, 3, 333, 768, dtype=torch.float32, rel=FP32_REL,
                    seed=3, device=DEVICE, activation=F.relu, strided=True)  # fmt: skip


@pytest.mark.parametrize(
    ("depth", "trees", "tokens", "hidden"),
    [(11, 1, 1001, 768), (7, 16, 333, 768), (11, 3, 1001, 64), (4, 3, 7, 64), (0, 1, 1, 64)],
)
def test_triton_inference_bf16(depth, trees, tokens, hidden):
    # bf16 x and weights in, bf16 out; reference: fp32 masked on the same bf16-rounded values.
    check_inference(FFF_IMPLEMENTATIONS["triton"], depth, trees, tokens, hidden, dtype=torch.bfloat16,
                    rel=BF16_REL, seed=11 * depth + trees, device=DEVICE)  # fmt: skip


# --------------------------------------------------------------------------- 2. training path
@pytest.mark.parametrize("trees", [1, 3])
@pytest.mark.parametrize("depth", range(12))
def test_triton_training_depth_sweep_fp32(depth, trees, triton_calls):
    # H = 64 (the training kernels' BLOCK_H); T = 1, 7, 333: token tails of BLOCK_T = 16 and
    # segments of BLOCK_E = 16 (the root's segment holds all T visits, a leaf's one or two).
    for tokens in (1, 7, 333):
        check_training(depth, trees, tokens, 64, dtype=torch.float32, rel=FP32_REL,
                       seed=1000 + 100 * trees + depth, device=DEVICE)  # fmt: skip
    assert triton_calls["route"] == 3 and triton_calls["weight_grads"] == 3


@pytest.mark.parametrize(("depth", "trees", "tokens"), [(11, 1, 1001), (7, 3, 333), (4, 16, 1001)])
def test_triton_training_full_width_fp32(depth, trees, tokens, triton_calls):
    check_training(depth, trees, tokens, 768, dtype=torch.float32, rel=FP32_REL, seed=depth + trees,
                   device=DEVICE)  # fmt: skip
    assert triton_calls["route"] == 1


@pytest.mark.parametrize(
    ("depth", "trees", "tokens", "hidden"), [(11, 1, 333, 768), (5, 3, 1001, 64), (0, 1, 7, 64)]
)
def test_triton_training_bf16(depth, trees, tokens, hidden, triton_calls):
    # The Triton backend reads bf16 as it is and accumulates in fp32; every output and gradient
    # is rounded once to bf16.
    check_training(depth, trees, tokens, hidden, dtype=torch.bfloat16, rel=BF16_REL, seed=depth,
                   device=DEVICE)  # fmt: skip
    assert triton_calls["route"] == 1


@pytest.mark.parametrize(("depth", "trees", "tokens", "hidden"), [(7, 3, 1001, 768), (11, 1, 1001, 64)])
def test_triton_training_is_bitwise_deterministic(depth, trees, tokens, hidden):
    # Weight gradients are segment sums in token order, no atomics: the same bits every run.
    layer = make_layer(tokens, hidden, depth, trees, torch.float32, 5, DEVICE)
    a = forward_backward(fff_conditional, *layer, depth, trees)
    b = forward_backward(fff_conditional, *layer, depth, trees)
    for name, ta, tb in zip(NAMES, a, b, strict=True):
        assert torch.equal(ta, tb), name


# --------------------------------------------------------------------------- 3. whole models
def check_for_inference(task, trees, device, expect):
    """The masked model vs the same weights after ``for_inference(model, device)``: every FFF
    layer on ``expect``, outputs within 1e-5 of the largest magnitude."""
    model = tiny_fff_model(task, trees)
    reference = copy.deepcopy(model).to(device).eval()
    gen = torch.Generator().manual_seed(1)
    ids = torch.randint(len(SPECIAL_TOKENS), 4096, (3, 41), generator=gen).to(device)  # (B, T)
    mask = torch.ones_like(ids)
    mask[1, 30:] = 0  # padding at the end of two sequences
    mask[2, 9:] = 0
    before = model_outputs(reference, task, ids, mask)
    assert set(fff_implementations(reference)) == {"masked"}

    fast = for_inference(model, device)
    assert fast is model and not fast.training
    assert fff_implementations(fast) == [expect] * sum(isinstance(m, FastFeedForward) for m in fast.modules())
    after = model_outputs(fast, task, ids, mask)
    assert after.shape == before.shape and after.device == before.device
    err, scale = float((after - before).abs().max()), float(before.abs().max())
    assert err <= FP32_REL * scale, f"{task} trees={trees}: max abs diff {err:.3g} > {FP32_REL} x {scale:.3g}"


@pytest.mark.parametrize("trees", [1, 3])
@pytest.mark.parametrize("task", ["mlm", "classification", "encoder"])
def test_for_inference_on_cuda_keeps_the_outputs(task, trees):
    check_for_inference(task, trees, DEVICE, "triton")


# --------------------------------------------------------------------------- 4. dispatch
def test_auto_picks_the_triton_kernels_on_cuda():
    assert resolve("cuda", "train") == "conditional"
    assert resolve("cuda", "infer") == "triton"
    # No shallow-tree rule on CUDA (on CPU a 512x1 tree trains on masked).
    assert resolve("cuda", "train", depth=1, trees=512) == "conditional"
    model = build_model(get_preset("ultrafastbert-tiny"), "mlm").to(DEVICE)
    assert set_fff_implementation(model, "auto", mode="train") == ["conditional"] * 2
    assert set_fff_implementation(model, "auto", mode="infer") == ["triton"] * 2


# --------------------------------------------------------------------------- 5. a training step
def mlm_batch(config, device, batch=4, seq=32, seed=0):
    """As tests/test_engine.py: random ids, exactly masked_token_count of them masked."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(len(SPECIAL_TOKENS), config.vocab_size, (batch, seq), generator=g)
    masked, labels = mask_tokens(ids, config.mask_rate, mask_token_id=SPECIAL_TOKENS.index("[MASK]"),
                                 vocab_size=config.vocab_size, special_ids=list(range(len(SPECIAL_TOKENS))),
                                 generator=g)  # fmt: skip
    batch = {"input_ids": masked, "attention_mask": torch.ones_like(ids), "labels": labels}
    return {k: v.to(device) for k, v in batch.items()}


def two_steps(accelerator, fff, precision="bf16-mixed"):
    """Two ``engine.train_step``s of a tiny UltraFastBERT MLM on one batch, FFF on ``fff``.
    Returns the two StepResults, the layers' implementations, and the FFF weights before and after."""
    from ultracram.train import engine
    from ultracram.train.optim import build_optimizer

    fabric = engine.setup_fabric(accelerator, 1, precision=precision)
    assert engine.precision_name(fabric) == precision
    config = get_preset("ultrafastbert-tiny")
    torch.manual_seed(0)
    model = build_model(config, "mlm").to(fabric.device)  # on the device before auto resolves
    before = {n: p.detach().clone() for n, p in model.named_parameters() if "linear_" in n}
    opt = build_optimizer(model, lr=1e-3, betas=(0.9, 0.98), eps=1e-12, weight_decay=0.01)
    model, opt = engine.prepare(fabric, model, opt, fff=fff)
    batch = mlm_batch(config, fabric.device)
    results = [engine.train_step(fabric, model, opt, [batch], grad_clip=0.5) for _ in range(2)]
    raw = engine.raw_module(model)
    after = {n: p.detach().clone() for n, p in raw.named_parameters() if "linear_" in n}
    return results, fff_implementations(raw), before, after


def test_bf16_mixed_training_step_through_the_triton_kernels(triton_calls):
    results, implementations, before, after = two_steps(DEVICE, "auto")
    assert implementations == ["conditional", "conditional"]
    assert triton_calls["route"] >= 4 and triton_calls["weight_grads"] >= 4  # 2 layers x 2 steps
    first, second = results
    for r in results:
        assert r.finite and math.isfinite(r.loss) and math.isfinite(r.grad_norm) and r.micro_batches == 1
    assert second.loss < first.loss, (first.loss, second.loss)  # Adam on the same batch
    assert all(not torch.equal(before[n], after[n]) for n in before), "an FFF weight did not move"

    # The same step with the masked reference: the first loss is the same up to bf16 autocast
    # (masked runs its logits through bf16 matmuls, the kernels in fp32; a few tokens may route
    # differently), so 1% of the loss, which is ~ln(4096) = 8.3 here.
    (masked_first, _), masked_impl, _, _ = two_steps(DEVICE, "masked")
    assert masked_impl == ["masked", "masked"]
    assert abs(first.loss - masked_first.loss) <= 1e-2 * masked_first.loss, (first.loss, masked_first.loss)
