"""FFF inference on CPU: a numba kernel that touches only the visited nodes, on all cores.

Same signature as every entry of ``FFF_IMPLEMENTATIONS``:
``fff_cpu(x (T, H), w_in (K*N, H), b_in (K*N,), w_out (H, K*N), depth, trees, activation) -> (T, H)``.

How it works (one thread below ``PARALLEL_MIN_TOKENS`` tokens, all threads above):

1. Routing: each token walks each tree root to leaf; a node's logit is
   ``x . w_in[n] + b_in[n]``. Routing is a dependency chain (the logit picks the next row to
   load), so four tokens walk together and their four dot products share one loop: four
   independent chains keep the core busy (measured 3x faster than one token at a time).
   The visited rows and activations are kept: (T, K*(D+1)) each.
2. Output: ``out[t] = sum over visited nodes of act(logit) * w_out[:, n]``, four visited rows
   per pass over ``out[t]``, from a row-major copy of ``w_out`` (K*N, H) made once per weight
   version and cached on the weight tensor. With many tokens, they are written in the order
   of their leaves (a counting sort), so tokens that share a node are adjacent and its output
   row is read from L3 about once instead of once per token (measured 1.35x on 4,096 tokens).

Measured choices (2-core Xeon, AVX-512, 2 MB L2 per core, 260 MB L3; docs/fff-inference.md):

- numba over a C++ extension: numba builds nothing at install time and caches its machine
  code on disk (``cache=True``); the loops it generates are the ones a C++ compiler would
  (vectorised FMAs), and the kernel is bound by moving the visited rows from L2/L3, not by
  code quality.
- ``fastmath={"reassoc", "contract"}`` and not ``False``: without reassociation LLVM keeps a
  dot product one scalar chain of adds (measured 8x slower). Only these two flags: no
  approximate functions, no NaN/inf assumptions; the sum is split over SIMD lanes, as a BLAS
  does, which changes the fp32 rounding by a few ulps.
- Routing token by token rather than grouping tokens by node at the upper levels: per token
  and level one 3 KB vector has to come from L2 either way (the token's input row when the
  node's weights stay in L1, or the node's weights when the token's row stays in L1); the
  grouped variant (walk 3 to 7 top levels, bucket tokens by subtree, then one small
  matrix-vector product per node) measured 0.9x to 1.2x the walk, so the simpler walk stays.

Routing caveat: the reference computes all logits with one BLAS matrix product, whose
summation order differs from this kernel's. Both are accurate to a few fp32 ulps of
``sum |x_h w_h|``, so a decision can differ only for a logit that close to zero, which random
inputs essentially never produce; an input built to sit on a node's hyperplane can flip one,
and then that token's output follows another branch.

Inference only: under autograd the forward runs, but backward raises (use ``gather`` to train).
"""

from __future__ import annotations

import math

import numba
import numpy as np
import torch
import torch.nn.functional as F
from numba import njit, prange

from ultracram.kernels.reference import Activation, fff_gather

# Activation functions the kernel has compiled in, by their code.
_ACTIVATION_CODES = {F.gelu: 0, F.relu: 1}
_SQRT_HALF = 0.7071067811865476
# Below this many tokens a single thread is faster: waking the thread pool costs ~10 us.
PARALLEL_MIN_TOKENS = 32
# Tokens per parallel work item: large enough to amortise scheduling, small enough to balance.
_BLOCK = 16
# Only reassociation (SIMD partial sums, as BLAS does) and fused multiply-add; no
# approximate functions and no NaN/inf assumptions. Plain fastmath=False keeps every dot
# product a serial chain of scalar adds: measured 8x slower.
_FASTMATH = {"reassoc", "contract"}


@njit(cache=True, fastmath=_FASTMATH, inline="always")
def _dot4(x0, w0, x1, w1, x2, w2, x3, w3):
    """Four independent dot products over H in one loop.

    Routing is a dependency chain (a node's logit picks the next row to load), so one token
    alone leaves the core waiting; four tokens give it four chains to overlap (measured 3x).
    """
    s0 = s1 = s2 = s3 = np.float32(0.0)
    for j in range(x0.shape[0]):
        s0 += x0[j] * w0[j]
        s1 += x1[j] * w1[j]
        s2 += x2[j] * w2[j]
        s3 += x3[j] * w3[j]
    return s0, s1, s2, s3


@njit(cache=True, fastmath=_FASTMATH, inline="always")
def _activate(z: np.float32, code: int) -> np.float32:
    if code == 0:  # exact (erf) GELU, as F.gelu
        return np.float32(0.5 * z * (1.0 + math.erf(z * _SQRT_HALF)))
    return max(z, np.float32(0.0))  # relu


@njit(cache=True, fastmath=_FASTMATH, inline="always")
def _axpy4(o, a0, w0, a1, w1, a2, w2, a3, w3, accumulate):
    """o (H,) (+)= a0*w0 + a1*w1 + a2*w2 + a3*w3: four rows per pass over o, a quarter of
    the loads and stores of o."""
    if accumulate:
        for h in range(o.shape[0]):
            o[h] += (a0 * w0[h] + a1 * w1[h]) + (a2 * w2[h] + a3 * w3[h])
    else:
        for h in range(o.shape[0]):
            o[h] = (a0 * w0[h] + a1 * w1[h]) + (a2 * w2[h] + a3 * w3[h])


@njit(cache=True, fastmath=_FASTMATH, inline="always")
def _write_rows(o, acts, rows, count, w_rows, accumulate):
    """o (+)= sum over v < count of acts[v] * w_rows[rows[v]]."""
    zero = np.float32(0.0)
    for v in range(0, count, 4):
        r0 = rows[v]
        r1 = rows[min(v + 1, count - 1)]
        r2 = rows[min(v + 2, count - 1)]
        r3 = rows[min(v + 3, count - 1)]
        a1 = acts[v + 1] if v + 1 < count else zero
        a2 = acts[v + 2] if v + 2 < count else zero
        a3 = acts[v + 3] if v + 3 < count else zero
        _axpy4(o, acts[v], w_rows[r0], a1, w_rows[r1], a2, w_rows[r2], a3, w_rows[r3],
               accumulate or v > 0)  # fmt: skip
    if count == 0 and not accumulate:
        o[:] = 0.0


@njit(cache=True, fastmath=_FASTMATH, inline="always")
def _route4(x, w_in, b_in, base, levels, code, t0, acts, rows, col):
    """Walk tokens t0..t0+3 down the tree whose first row is ``base``; write each visited
    node's activation and row to acts/rows (T, K*(D+1)) from column ``col`` on."""
    x0, x1, x2, x3 = x[t0], x[t0 + 1], x[t0 + 2], x[t0 + 3]
    n0 = n1 = n2 = n3 = 0
    for i in range(levels):
        r0, r1, r2, r3 = base + n0, base + n1, base + n2, base + n3
        z0, z1, z2, z3 = _dot4(x0, w_in[r0], x1, w_in[r1], x2, w_in[r2], x3, w_in[r3])
        z0, z1, z2, z3 = z0 + b_in[r0], z1 + b_in[r1], z2 + b_in[r2], z3 + b_in[r3]
        c = col + i
        acts[t0, c], acts[t0 + 1, c] = _activate(z0, code), _activate(z1, code)
        acts[t0 + 2, c], acts[t0 + 3, c] = _activate(z2, code), _activate(z3, code)
        rows[t0, c], rows[t0 + 1, c], rows[t0 + 2, c], rows[t0 + 3, c] = r0, r1, r2, r3
        n0, n1 = 2 * n0 + (2 if z0 > 0 else 1), 2 * n1 + (2 if z1 > 0 else 1)
        n2, n3 = 2 * n2 + (2 if z2 > 0 else 1), 2 * n3 + (2 if z3 > 0 else 1)


@njit(cache=True, fastmath=_FASTMATH, inline="always")
def _route1(x, w_in, b_in, base, levels, code, t, acts, rows, col):
    """``_route4`` for one token (the remainder of a range)."""
    xt = x[t]
    node = 0
    for i in range(levels):
        r = base + node
        w = w_in[r]
        z = np.float32(0.0)
        for j in range(xt.shape[0]):
            z += xt[j] * w[j]
        z += b_in[r]
        acts[t, col + i] = _activate(z, code)
        rows[t, col + i] = r
        node = 2 * node + (2 if z > 0 else 1)


@njit(cache=True, fastmath=_FASTMATH, inline="always")
def _route_range(x, w_in, b_in, depth, trees, code, start, stop, acts, rows):
    """Route tokens start..stop-1 through every tree."""
    n = 2 ** (depth + 1) - 1
    full = start + (stop - start) // 4 * 4
    for k in range(trees):
        col = k * (depth + 1)
        for t0 in range(start, full, 4):
            _route4(x, w_in, b_in, k * n, depth + 1, code, t0, acts, rows, col)
        for t in range(full, stop):
            _route1(x, w_in, b_in, k * n, depth + 1, code, t, acts, rows, col)


@njit(cache=True, fastmath=_FASTMATH, inline="always")
def _leaf_order(rows, depth):
    """Token order sorted by the leaf of the first tree (counting sort): tokens that share a
    node are then adjacent, so writing outputs in this order loads each visited node's output
    row from L3 about once instead of once per token (measured 1.35x at 4,096 tokens)."""
    T = rows.shape[0]
    first_leaf = 2**depth - 1
    counts = np.zeros(2**depth + 1, np.int64)
    for t in range(T):
        counts[rows[t, depth] - first_leaf + 1] += 1
    for j in range(2**depth):
        counts[j + 1] += counts[j]
    order = np.empty(T, np.int64)
    for t in range(T):
        j = rows[t, depth] - first_leaf
        order[counts[j]] = t
        counts[j] += 1
    return order


@njit(cache=True, fastmath=_FASTMATH, nogil=True)
def _fff_serial(x, w_in, b_in, w_rows, depth, trees, code, out):
    """One thread: route every token, then write the outputs (in leaf order when there are
    enough tokens to share nodes)."""
    T, visited = x.shape[0], trees * (depth + 1)
    acts = np.empty((T, visited), np.float32)
    rows = np.empty((T, visited), np.int64)
    _route_range(x, w_in, b_in, depth, trees, code, 0, T, acts, rows)
    if T < PARALLEL_MIN_TOKENS:
        for t in range(T):
            _write_rows(out[t], acts[t], rows[t], visited, w_rows, False)
    else:
        for t in _leaf_order(rows, depth):
            _write_rows(out[t], acts[t], rows[t], visited, w_rows, False)


@njit(cache=True, fastmath=_FASTMATH, nogil=True, parallel=True)
def _fff_parallel(x, w_in, b_in, w_rows, depth, trees, code, out):
    """All threads: route blocks of tokens, then write the outputs in leaf order."""
    T, visited = x.shape[0], trees * (depth + 1)
    acts = np.empty((T, visited), np.float32)
    rows = np.empty((T, visited), np.int64)
    for b in prange((T + _BLOCK - 1) // _BLOCK):
        _route_range(x, w_in, b_in, depth, trees, code, b * _BLOCK, min(T, (b + 1) * _BLOCK), acts, rows)
    order = _leaf_order(rows, depth)
    for b in prange((T + _BLOCK - 1) // _BLOCK):
        for i in range(b * _BLOCK, min(T, (b + 1) * _BLOCK)):
            t = order[i]
            _write_rows(out[t], acts[t], rows[t], visited, w_rows, False)


def _weights(w_in: torch.Tensor, b_in: torch.Tensor, w_out: torch.Tensor) -> tuple:
    """numpy views of w_in and b_in and a row-major copy of w_out, cached on ``w_out``.

    The cache key holds the tensors' version counters, so an in-place update of any weight
    (optimizer step, ``load_state_dict``) rebuilds the copy on the next call.
    """
    key = (id(w_in), id(b_in), w_in._version, b_in._version, w_out._version)
    cached = getattr(w_out, "_ultracram_cpu_fff", None)
    if cached is not None and cached[0] == key:
        return cached[1]
    with torch.no_grad():
        arrays = (
            w_in.detach().float().contiguous().numpy(),  # (K*N, H)
            b_in.detach().float().contiguous().numpy(),  # (K*N,)
            w_out.detach().float().t().contiguous().numpy(),  # (K*N, H): row n = node n's outputs
        )
    w_out._ultracram_cpu_fff = (key, arrays)
    return arrays


def _run(x: torch.Tensor, w_in, b_in, w_out, depth: int, trees: int, code: int) -> torch.Tensor:
    w, b, w_rows = _weights(w_in, b_in, w_out)
    if x.requires_grad:  # no_grad mode with a leaf that requires grad
        x = x.detach()
    xs = (x if x.is_contiguous() else x.contiguous()).numpy()  # (T, H); copies only strided views
    out = np.empty_like(xs)
    if xs.shape[0] < PARALLEL_MIN_TOKENS or numba.get_num_threads() == 1:
        _fff_serial(xs, w, b, w_rows, depth, trees, code, out)
    else:
        # Dynamic scheduling, one block at a time: on a shared machine a thread whose core is
        # busy takes fewer blocks instead of holding up the others.
        with numba.parallel_chunksize(1):
            _fff_parallel(xs, w, b, w_rows, depth, trees, code, out)
    return torch.from_numpy(out)


class InferenceOnly(torch.autograd.Function):
    """Runs an inference kernel where autograd is on (e.g. an eval loop without no_grad);
    backward raises instead of silently returning wrong (zero) gradients.
    ``InferenceOnly.apply(name, run, *args)`` returns ``run(*args)``."""

    @staticmethod
    def forward(ctx, name, run, *args):
        ctx.name = name
        with torch.no_grad():
            return run(*(a.detach() if isinstance(a, torch.Tensor) else a for a in args))

    @staticmethod
    def backward(ctx, *grads):
        raise RuntimeError(
            f"the {ctx.name!r} FFF implementation is inference-only; train with "
            "implementation='gather' or 'masked'"
        )


def needs_grad(*tensors: torch.Tensor) -> bool:
    return torch.is_grad_enabled() and any(t.requires_grad for t in tensors)


def fff_cpu(
    x: torch.Tensor, w_in: torch.Tensor, b_in: torch.Tensor, w_out: torch.Tensor,
    depth: int, trees: int, activation: Activation = F.gelu,
) -> torch.Tensor:  # fmt: skip
    """FFF forward with the numba kernel. x (T, H) fp32 on CPU -> (T, H).

    Other dtypes and activations the kernel does not know go through ``fff_gather``.
    """
    if x.device.type != "cpu":
        raise ValueError(f"the 'cpu' FFF implementation needs CPU tensors, got {x.device}")
    code = _ACTIVATION_CODES.get(activation)
    if code is None or x.dtype != torch.float32:
        return fff_gather(x, w_in, b_in, w_out, depth, trees, activation)
    if needs_grad(x, w_in, b_in, w_out):
        return InferenceOnly.apply("cpu", _run, x, w_in, b_in, w_out, depth, trees, code)
    return _run(x, w_in, b_in, w_out, depth, trees, code)


def set_num_threads(n: int) -> None:
    """Threads for both torch and the numba kernel (benchmarks sweep 1 and all cores)."""
    torch.set_num_threads(n)
    numba.set_num_threads(n)
