"""FFF inference on GPU: Triton kernels that touch only the visited nodes.

Same signature as every entry of ``FFF_IMPLEMENTATIONS``:
``fff_triton(x (T, H), w_in (K*N, H), b_in (K*N,), w_out (H, K*N), depth, trees, activation) -> (T, H)``.

Two launches:

1. ``_route``: a program takes BLOCK_T tokens and walks each tree root to leaf; at each level
   it gathers the BLOCK_T visited rows of ``w_in`` (one per token) and reduces
   ``x . w_in[row]`` over H in BLOCK_H chunks. It writes each visited node's activation and
   row index: (T, K*(D+1)) each, a few bytes per token.
2. ``_output``: a program takes BLOCK_T tokens x BLOCK_H outputs and sums
   ``act * w_rows[row]`` over the K*(D+1) visited nodes, reading a row-major copy of
   ``w_out`` (made once per weight version, cached on the weight) so the gathers are coalesced.

Inputs of any float dtype are computed in fp32 and written back in the input's dtype.
Runs on CUDA tensors, or on CPU tensors under ``TRITON_INTERPRET=1`` (the tests do that).
Routing has the same caveat as the CPU kernel (kernels/cpu.py): the logits are summed in
another order than cuBLAS's, so a logit within a few ulps of zero may route differently.
Triton is imported on first use: it is an optional dependency (``pip install ultracram[gpu]``).
"""

from __future__ import annotations

import functools
import os

import torch
import torch.nn.functional as F

from ultracram.kernels.cpu import InferenceOnly, needs_grad
from ultracram.kernels.reference import Activation

_ACTIVATION_CODES = {F.gelu: 0, F.relu: 1}


def interpreting() -> bool:
    """Whether Triton runs its CPU interpreter (``TRITON_INTERPRET=1``)."""
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


@functools.cache
def _kernels():
    import triton
    import triton.language as tl

    @triton.jit
    def _route(x_ptr, w_in_ptr, b_ptr, acts_ptr, rows_ptr, T, H, stride_x, depth, trees, nodes,
               ACT: tl.constexpr, BLOCK_T: tl.constexpr, BLOCK_H: tl.constexpr):  # fmt: skip
        t = tl.program_id(0) * BLOCK_T + tl.arange(0, BLOCK_T)  # (BLOCK_T,) token ids
        t_ok = t < T
        visited = trees * (depth + 1)
        for k in range(trees):
            node = tl.zeros([BLOCK_T], dtype=tl.int64)
            for level in range(depth + 1):
                row = k * nodes + node  # (BLOCK_T,) visited row per token
                z = tl.zeros([BLOCK_T], dtype=tl.float32)
                for h0 in range(0, H, BLOCK_H):
                    h = h0 + tl.arange(0, BLOCK_H)
                    m = t_ok[:, None] & (h < H)[None, :]
                    xt = tl.load(x_ptr + t[:, None] * stride_x + h[None, :], mask=m, other=0.0)
                    wt = tl.load(w_in_ptr + row[:, None] * H + h[None, :], mask=m, other=0.0)
                    z += tl.sum(xt.to(tl.float32) * wt.to(tl.float32), axis=1)
                z += tl.load(b_ptr + row, mask=t_ok, other=0.0).to(tl.float32)
                if ACT == 0:
                    a = 0.5 * z * (1.0 + tl.math.erf(z * 0.7071067811865476))  # exact GELU
                else:
                    a = tl.maximum(z, 0.0)
                slot = t * visited + k * (depth + 1) + level
                tl.store(acts_ptr + slot, a, mask=t_ok)
                tl.store(rows_ptr + slot, row, mask=t_ok)
                node = 2 * node + 1 + (z > 0).to(tl.int64)

    @triton.jit
    def _output(acts_ptr, rows_ptr, w_rows_ptr, out_ptr, T, H, visited,
                BLOCK_T: tl.constexpr, BLOCK_H: tl.constexpr):  # fmt: skip
        t = tl.program_id(0) * BLOCK_T + tl.arange(0, BLOCK_T)
        h = tl.program_id(1) * BLOCK_H + tl.arange(0, BLOCK_H)
        t_ok = t < T
        m = t_ok[:, None] & (h < H)[None, :]
        acc = tl.zeros([BLOCK_T, BLOCK_H], dtype=tl.float32)
        for v in range(visited):
            a = tl.load(acts_ptr + t * visited + v, mask=t_ok, other=0.0)
            row = tl.load(rows_ptr + t * visited + v, mask=t_ok, other=0)
            w = tl.load(w_rows_ptr + row[:, None] * H + h[None, :], mask=m, other=0.0)
            acc += a[:, None] * w.to(tl.float32)
        tl.store(out_ptr + t[:, None] * H + h[None, :], acc.to(out_ptr.dtype.element_ty), mask=m)

    return triton, _route, _output


def output_rows(w_out: torch.Tensor) -> torch.Tensor:
    """Row-major copy of ``w_out`` (H, K*N) -> (K*N, H), cached on ``w_out`` and rebuilt when
    the weight changes in place (its version counter moves)."""
    cached = getattr(w_out, "_ultracram_rows", None)
    if cached is not None and cached[0] == w_out._version:
        return cached[1]
    rows = w_out.detach().t().contiguous()
    w_out._ultracram_rows = (w_out._version, rows)
    return rows


def fff_triton(
    x: torch.Tensor, w_in: torch.Tensor, b_in: torch.Tensor, w_out: torch.Tensor,
    depth: int, trees: int, activation: Activation = F.gelu,
    block_t: int = 16, block_h: int = 128,
) -> torch.Tensor:  # fmt: skip
    """FFF forward with the Triton kernels (inference only). x (T, H) -> (T, H)."""
    if not (x.is_cuda or interpreting()):
        raise ValueError(
            f"the 'triton' FFF implementation needs CUDA tensors (or TRITON_INTERPRET=1), got {x.device}"
        )
    code = _ACTIVATION_CODES.get(activation)
    if code is None:
        raise ValueError(f"the 'triton' FFF kernel knows gelu and relu, not {activation!r}")
    if needs_grad(x, w_in, b_in, w_out):
        return InferenceOnly.apply("triton", _run, x, w_in, b_in, w_out, depth, trees, code, block_t, block_h)
    return _run(x, w_in, b_in, w_out, depth, trees, code, block_t, block_h)


def _run(x, w_in, b_in, w_out, depth, trees, code, block_t, block_h):
    triton, route, output = _kernels()
    T, H = x.shape
    if x.stride(1) != 1:
        x = x.contiguous()
    visited = trees * (depth + 1)
    acts = torch.empty(T, visited, dtype=torch.float32, device=x.device)
    rows = torch.empty(T, visited, dtype=torch.int64, device=x.device)
    out = torch.empty(T, H, dtype=x.dtype, device=x.device)
    if T == 0:
        return out
    w_in, b_in = w_in.detach().contiguous(), b_in.detach().contiguous()
    route[(triton.cdiv(T, block_t),)](
        x, w_in, b_in, acts, rows, T, H, x.stride(0), depth, trees, 2 ** (depth + 1) - 1,
        ACT=code, BLOCK_T=block_t, BLOCK_H=block_h,
    )  # fmt: skip
    output[(triton.cdiv(T, block_t), triton.cdiv(H, block_h))](
        acts, rows, output_rows(w_out), out, T, H, visited, BLOCK_T=block_t, BLOCK_H=block_h
    )
    return out
