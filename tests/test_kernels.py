"""FFF inference kernels (issue 6) against the masked dense reference: the numba CPU kernel
here, the Triton kernel under the interpreter in a subprocess."""

import json
import os
import subprocess
import sys
import textwrap

import pytest
import torch
import torch.nn.functional as F

from ultracram.kernels import FFF_IMPLEMENTATIONS, fff_cpu, fff_masked, fff_nodes
from ultracram.kernels import cpu as cpu_kernels


def random_tree(depth, trees, hidden=32, seed=0):
    """Random weights, larger than the init so routing decisions are far from ties."""
    g = torch.Generator().manual_seed(seed)
    width = trees * fff_nodes(depth)
    w_in = torch.randn(width, hidden, generator=g) * 0.5
    b_in = torch.randn(width, generator=g) * 0.5
    w_out = torch.randn(hidden, width, generator=g) * 0.5
    return w_in, b_in, w_out


def assert_matches_reference(got, ref):
    # Relative to the tensor's scale (as tests/test_fff.py): single entries that cancel to ~0
    # differ by a few ulps of the summands, not of themselves.
    err = (got - ref).abs().max()
    assert err <= 1e-5 * ref.abs().max().clamp_min(1e-30), err


@pytest.mark.parametrize("depth", range(12))
@pytest.mark.parametrize("trees", [1, 3])
def test_cpu_kernel_equals_masked_reference(depth, trees):
    w_in, b_in, w_out = random_tree(depth, trees, seed=depth)
    # 1..7 tokens (the four-token lanes with every remainder), one thread in one call below
    # PARALLEL_MIN_TOKENS, and the three-step path (all threads) above it.
    for tokens in (
        1,
        2,
        3,
        4,
        5,
        7,
        cpu_kernels.PARALLEL_MIN_TOKENS - 1,
        cpu_kernels.PARALLEL_MIN_TOKENS + 13,
    ):
        x = torch.randn(tokens, 32)
        with torch.no_grad():
            ref = fff_masked(x, w_in, b_in, w_out, depth, trees)
            got = fff_cpu(x, w_in, b_in, w_out, depth, trees)
        assert got.shape == ref.shape and got.dtype == torch.float32
        assert_matches_reference(got, ref)


@pytest.mark.parametrize("threads", [1, 2])
def test_cpu_kernel_thread_counts(threads):
    """One thread: one call below SPLIT_MIN_TOKENS, the three serial steps (leaf-ordered
    output) above; several threads: the parallel steps above PARALLEL_MIN_TOKENS."""
    w_in, b_in, w_out = random_tree(6, 3, seed=5)
    before = cpu_kernels.numba.get_num_threads()
    for tokens in (123, cpu_kernels.SPLIT_MIN_TOKENS + 45):
        x = torch.randn(tokens, 32)
        cpu_kernels.set_num_threads(threads)
        try:
            with torch.no_grad():
                got = fff_cpu(x, w_in, b_in, w_out, 6, 3)
        finally:
            cpu_kernels.set_num_threads(before)
        with torch.no_grad():
            assert_matches_reference(got, fff_masked(x, w_in, b_in, w_out, 6, 3))


def test_cpu_kernel_at_full_width():
    """UltraFastBERT's shape: hidden 768, depth 11, 4,095 nodes."""
    w_in, b_in, w_out = random_tree(11, 1, hidden=768, seed=1)
    w_in, b_in = w_in * 0.1, b_in * 0.1
    x = torch.randn(64, 768)
    with torch.no_grad():
        assert_matches_reference(
            fff_cpu(x, w_in, b_in, w_out, 11, 1), fff_masked(x, w_in, b_in, w_out, 11, 1)
        )


def test_cpu_kernel_non_contiguous_input_and_relu():
    w_in, b_in, w_out = random_tree(5, 3)
    for tokens in (50, 300):  # the one-call path applies the activation itself, above: torch
        x = torch.randn(32, tokens).t()  # (tokens, 32) transposed view
        assert not x.is_contiguous()
        with torch.no_grad():
            for act in (F.gelu, F.relu):
                assert_matches_reference(
                    fff_cpu(x, w_in, b_in, w_out, 5, 3, act), fff_masked(x, w_in, b_in, w_out, 5, 3, act)
                )
    with torch.no_grad():
        sliced = torch.randn(40, 64)[::2, 16:48]  # strided rows and columns
        assert_matches_reference(
            fff_cpu(sliced, w_in, b_in, w_out, 5, 3), fff_masked(sliced, w_in, b_in, w_out, 5, 3)
        )


def test_cpu_kernel_follows_in_place_weight_updates():
    """The row-major copy of w_out is cached; an in-place update must invalidate it."""
    w_in, b_in, w_out = random_tree(4, 1)
    x = torch.randn(9, 32)
    with torch.no_grad():
        fff_cpu(x, w_in, b_in, w_out, 4, 1)
        w_out.mul_(-2.0)
        b_in.add_(0.3)
        assert_matches_reference(fff_cpu(x, w_in, b_in, w_out, 4, 1), fff_masked(x, w_in, b_in, w_out, 4, 1))


def test_cpu_kernel_is_inference_only_but_runs_under_autograd():
    w_in, b_in, w_out = random_tree(3, 2)
    w_in.requires_grad_(True)
    x = torch.randn(6, 32)
    out = fff_cpu(x, w_in, b_in, w_out, 3, 2)  # no torch.no_grad(): the forward still works
    with torch.no_grad():
        assert_matches_reference(out, fff_masked(x, w_in, b_in, w_out, 3, 2))
    with pytest.raises(RuntimeError, match="inference-only"):
        out.sum().backward()


def test_cpu_kernel_other_dtypes_and_activations_use_gather():
    w_in, b_in, w_out = random_tree(3, 1)
    x = torch.randn(5, 32)
    with torch.no_grad():
        got = fff_cpu(x, w_in, b_in, w_out, 3, 1, torch.tanh)
        assert_matches_reference(got, fff_masked(x, w_in, b_in, w_out, 3, 1, torch.tanh))
        d = [t.double() for t in (x, w_in, b_in, w_out)]
        got64 = fff_cpu(*d, 3, 1)
        assert got64.dtype == torch.float64
        torch.testing.assert_close(got64, fff_masked(*d, 3, 1))


def test_registry_names_the_kernels():
    assert FFF_IMPLEMENTATIONS["cpu"] is fff_cpu
    assert "triton" in FFF_IMPLEMENTATIONS


TRITON_SCRIPT = textwrap.dedent(
    """
    import json, os
    assert os.environ["TRITON_INTERPRET"] == "1"
    import torch
    from ultracram.kernels import fff_masked, fff_nodes
    from ultracram.kernels.triton_infer import fff_triton

    torch.manual_seed(0)
    errors = []
    for depth, trees, tokens in [(0, 1, 3), (1, 3, 5), (3, 1, 17), (4, 3, 2), (6, 1, 9)]:
        width = trees * fff_nodes(depth)
        w_in, b_in = torch.randn(width, 24) * 0.5, torch.randn(width) * 0.5
        w_out = torch.randn(24, width) * 0.5
        x = torch.randn(24, tokens).t()  # non-contiguous (tokens, 24) view
        with torch.no_grad():
            ref = fff_masked(x, w_in, b_in, w_out, depth, trees)
            got = fff_triton(x, w_in, b_in, w_out, depth, trees, block_t=4, block_h=16)
        errors.append([float((got - ref).abs().max()), float(ref.abs().max())])
    print(json.dumps(errors))
    """
)


def test_triton_kernel_under_interpreter():
    pytest.importorskip("triton")
    env = {**os.environ, "TRITON_INTERPRET": "1"}
    result = subprocess.run(
        [sys.executable, "-c", TRITON_SCRIPT], env=env, capture_output=True, text=True, timeout=600
    )
    assert result.returncode == 0, result.stderr[-3000:]
    errors = json.loads(result.stdout.strip().splitlines()[-1])
    assert len(errors) == 5
    for err, scale in errors:
        assert err <= 1e-5 * scale, (err, scale)


def test_triton_kernel_refuses_cpu_tensors_without_interpreter():
    if os.environ.get("TRITON_INTERPRET") == "1":
        pytest.skip("interpreter enabled in this process")
    from ultracram.kernels.triton_infer import fff_triton

    w_in, b_in, w_out = random_tree(2, 1)
    with pytest.raises(ValueError, match="CUDA"):
        fff_triton(torch.randn(3, 32), w_in, b_in, w_out, 2, 1)


@pytest.mark.gpu
def test_triton_kernel_on_cuda():
    from ultracram.kernels.triton_infer import fff_triton

    w_in, b_in, w_out = (t.cuda() for t in random_tree(11, 1, hidden=768))
    x = torch.randn(1000, 768, device="cuda") * 0.1
    with torch.no_grad():
        assert_matches_reference(
            fff_triton(x, w_in, b_in, w_out, 11, 1), fff_masked(x, w_in, b_in, w_out, 11, 1)
        )
