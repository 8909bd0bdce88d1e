"""Cases for the Triton backend of the FFF training Function, under the Triton CPU interpreter.

Not collected on its own: tests/test_fff_training_triton.py runs this file in a child pytest
with TRITON_INTERPRET=1, because Triton reads that variable when it is first imported and the
setting must not leak into the other tests of the session. Sizes are small: the interpreter
runs each program in numpy.
"""

import os

import pytest
import torch

from test_fff_training import assert_close, forward_backward, make_layer
from ultracram.kernels.autograd import fff_conditional
from ultracram.kernels.reference import fff_masked

assert os.environ.get("TRITON_INTERPRET") == "1", "run through tests/test_fff_training_triton.py"
pytest.importorskip("triton")


@pytest.mark.parametrize(("depth", "trees"), [(0, 1), (1, 3), (3, 1), (4, 3), (7, 1), (11, 1)])
def test_triton_matches_masked_fp32(depth, trees):
    # H = 70 > BLOCK_H exercises the masked tail of the H loop; T = 21 the token tail.
    tokens = 21 if depth < 11 else 6
    x, w_in, b_in, w_out, grad = make_layer(tokens, 70, depth, trees, seed=depth + 100 * trees)
    want = forward_backward(fff_masked, x, w_in, b_in, w_out, grad, depth, trees)
    got = forward_backward(fff_conditional, x, w_in, b_in, w_out, grad, depth, trees, backend="triton")
    assert_close(got, want, 1e-5, f"triton depth={depth} trees={trees}")


def test_triton_bf16_close_to_fp32_reference():
    depth, trees = 3, 2
    x, w_in, b_in, w_out, grad = make_layer(19, 40, depth, trees, dtype=torch.bfloat16)
    want = forward_backward(fff_masked, *[t.float() for t in (x, w_in, b_in, w_out, grad)], depth, trees)
    got = forward_backward(fff_conditional, x, w_in, b_in, w_out, grad, depth, trees, backend="triton")
    assert all(t.dtype == torch.bfloat16 for t in got)
    assert_close([t.float() for t in got], want, 1e-2, "triton bf16")


def test_triton_weight_gradients_are_deterministic():
    depth, trees = 4, 2
    x, w_in, b_in, w_out, grad = make_layer(40, 24, depth, trees)
    a = forward_backward(fff_conditional, x, w_in, b_in, w_out, grad, depth, trees, backend="triton")
    b = forward_backward(fff_conditional, x, w_in, b_in, w_out, grad, depth, trees, backend="triton")
    assert all(torch.equal(ta, tb) for ta, tb in zip(a, b, strict=True))
