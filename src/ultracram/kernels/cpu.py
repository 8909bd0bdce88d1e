"""FFF inference on CPU: a numba kernel that touches only the visited nodes, on all cores.

Same signature as every entry of ``FFF_IMPLEMENTATIONS``:
``fff_cpu(x (T, H), w_in (K*N, H), b_in (K*N,), w_out (H, K*N), depth, trees, activation) -> (T, H)``.

How it works (few tokens: one thread, one call; many tokens: three steps, on all threads):

1. Routing: each token walks each tree root to leaf; a node's logit is
   ``x . w_in[n] + b_in[n]``. Routing is a dependency chain (the logit picks the next row to
   load), so four tokens walk together and their four dot products share one loop: four
   independent chains keep the core busy (measured 3x faster than one token at a time).
   The visited rows and logits are kept: (T, K*(D+1)) each.
2. Activation: with many tokens, torch applies the layer's own activation to the (T, K*(D+1))
   visited logits in one vectorised call; a scalar erf per visited node in the walk was a
   fifth of the layer's time at 4,096 tokens. With few tokens the walk applies it (one call
   instead of three).
3. Output: ``out[t] = sum over visited nodes of act(logit) * w_out[:, n]``, twelve visited
   rows per pass over ``out[t]`` (a depth-11 path), from a row-major copy of ``w_out``
   (K*N, H) made once per weight version and cached on the weight tensor. With many tokens,
   they are written in the order of their leaves (a counting sort), so tokens that share a
   node are adjacent and its output row is read from L3 about once instead of once per token
   (measured 1.35x on 4,096 tokens).

Measured choices (2-core Xeon and 2-core EPYC VMs, AVX-512; docs/fff-inference.md):

- numba over a C++ extension: numba builds nothing at install time and caches its machine
  code on disk (``cache=True``); the loops it generates are the ones a C++ compiler would
  (vectorised FMAs), and the kernel is bound by moving the visited rows from L2/L3, not by
  code quality.
- ``fastmath={"reassoc", "contract"}`` and not ``False``: without reassociation LLVM keeps a
  dot product one scalar chain of adds (measured 8x slower). Only these two flags: no
  approximate functions, no NaN/inf assumptions; the sum is split over SIMD lanes, as a BLAS
  does, which changes the fp32 rounding by a few ulps.
- Every token walks (one dot product per visited node) rather than one matrix-vector
  product per node over the tokens grouped there: per token and level one 3 KB vector has to
  come from L2 either way (the token's input row when the node's weights stay in L1, or the
  node's weights when the token's row stays in L1); the grouped variant measured 0.9x to
  1.2x. What does pay is the order of the walk: after the top levels the tokens are sorted by
  subtree, so the deep rows they share come from L2 rather than L3 (``_route_serial``).

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

# Activation functions the kernel has compiled in, by their code; _LOGIT keeps the logit.
_GELU, _RELU, _LOGIT = 0, 1, 2
_ACTIVATION_CODES = {F.gelu: _GELU, F.relu: _RELU}
_SQRT_HALF = 0.7071067811865476
# Paths by token count (measured, docs/fff-inference.md): below SPLIT_MIN_TOKENS one thread
# does everything in one call (the torch activation call costs ~10 us); from
# PARALLEL_MIN_TOKENS on, several threads (when set) run the three steps.
PARALLEL_MIN_TOKENS = 128
SPLIT_MIN_TOKENS = 192
# Levels walked in token order before the tokens are sorted by subtree (see _route_serial).
TOP_LEVELS = 4
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
    if code == _GELU:  # exact (erf) GELU, as F.gelu
        return np.float32(0.5 * z * (1.0 + math.erf(z * _SQRT_HALF)))
    if code == _RELU:
        return max(z, np.float32(0.0))
    return z  # _LOGIT: the activation is applied afterwards, vectorised, by torch


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
def _axpy12(o, a, r, v, w_rows, accumulate):
    """o (H,) (+)= sum over u < 12 of a[v+u] * w_rows[r[v+u]]: a depth-11 tree's whole path in
    one pass over o (measured 1.2x faster than three passes of four rows)."""
    w0, w1, w2, w3 = w_rows[r[v]], w_rows[r[v + 1]], w_rows[r[v + 2]], w_rows[r[v + 3]]
    w4, w5, w6, w7 = w_rows[r[v + 4]], w_rows[r[v + 5]], w_rows[r[v + 6]], w_rows[r[v + 7]]
    w8, w9, w10, w11 = w_rows[r[v + 8]], w_rows[r[v + 9]], w_rows[r[v + 10]], w_rows[r[v + 11]]
    a0, a1, a2, a3, a4, a5 = a[v], a[v + 1], a[v + 2], a[v + 3], a[v + 4], a[v + 5]
    a6, a7, a8, a9, a10, a11 = a[v + 6], a[v + 7], a[v + 8], a[v + 9], a[v + 10], a[v + 11]
    zero = np.float32(0.0)
    for h in range(o.shape[0]):
        s = (((a0 * w0[h] + a1 * w1[h]) + (a2 * w2[h] + a3 * w3[h]))
             + ((a4 * w4[h] + a5 * w5[h]) + (a6 * w6[h] + a7 * w7[h]))
             + ((a8 * w8[h] + a9 * w9[h]) + (a10 * w10[h] + a11 * w11[h])))  # fmt: skip
        o[h] = s + (o[h] if accumulate else zero)


@njit(cache=True, fastmath=_FASTMATH, inline="always")
def _write_rows(o, acts, rows, count, w_rows, accumulate):
    """o (+)= sum over v < count of acts[v] * w_rows[rows[v]]: twelve rows per pass, then
    four at a time."""
    zero = np.float32(0.0)
    v = 0
    while v + 12 <= count:
        _axpy12(o, acts, rows, v, w_rows, accumulate or v > 0)
        v += 12
    while v < count:
        r0 = rows[v]
        r1 = rows[min(v + 1, count - 1)]
        r2 = rows[min(v + 2, count - 1)]
        r3 = rows[min(v + 3, count - 1)]
        a1 = acts[v + 1] if v + 1 < count else zero
        a2 = acts[v + 2] if v + 2 < count else zero
        a3 = acts[v + 3] if v + 3 < count else zero
        _axpy4(o, acts[v], w_rows[r0], a1, w_rows[r1], a2, w_rows[r2], a3, w_rows[r3],
               accumulate or v > 0)  # fmt: skip
        v += 4
    if count == 0 and not accumulate:
        o[:] = 0.0


@njit(cache=True, fastmath=_FASTMATH, inline="always")
def _route4(x, w_in, b_in, base, levels, code, t0, t1, t2, t3, n0, n1, n2, n3, acts, rows, col):
    """Walk tokens t0..t3 ``levels`` levels down the tree whose first row is ``base``, from its
    (tree-local) nodes n0..n3; write each visited node's activation (or logit, code
    ``_LOGIT``) and row to acts/rows (T, K*(D+1)) from column ``col`` on. Returns the next
    node of each token."""
    x0, x1, x2, x3 = x[t0], x[t1], x[t2], x[t3]
    for i in range(levels):
        r0, r1, r2, r3 = base + n0, base + n1, base + n2, base + n3
        z0, z1, z2, z3 = _dot4(x0, w_in[r0], x1, w_in[r1], x2, w_in[r2], x3, w_in[r3])
        z0, z1, z2, z3 = z0 + b_in[r0], z1 + b_in[r1], z2 + b_in[r2], z3 + b_in[r3]
        c = col + i
        acts[t0, c], acts[t1, c] = _activate(z0, code), _activate(z1, code)
        acts[t2, c], acts[t3, c] = _activate(z2, code), _activate(z3, code)
        rows[t0, c], rows[t1, c], rows[t2, c], rows[t3, c] = r0, r1, r2, r3
        n0, n1 = 2 * n0 + (2 if z0 > 0 else 1), 2 * n1 + (2 if z1 > 0 else 1)
        n2, n3 = 2 * n2 + (2 if z2 > 0 else 1), 2 * n3 + (2 if z3 > 0 else 1)
    return n0, n1, n2, n3


@njit(cache=True, fastmath=_FASTMATH, inline="always")
def _route1(x, w_in, b_in, base, levels, code, t, node, acts, rows, col):
    """``_route4`` for one token (the remainder of a range)."""
    xt = x[t]
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
    return node


@njit(cache=True, fastmath=_FASTMATH, inline="always")
def _walk(x, w_in, b_in, base, levels, code, order, start, stop, nodes, acts, rows, col):
    """Walk tokens order[start:stop], four at a time, ``levels`` levels down from their
    nodes[t]; nodes[t] becomes the next node."""
    full = start + (stop - start) // 4 * 4
    for i in range(start, full, 4):
        t0, t1, t2, t3 = order[i], order[i + 1], order[i + 2], order[i + 3]
        n = _route4(x, w_in, b_in, base, levels, code, t0, t1, t2, t3,
                    nodes[t0], nodes[t1], nodes[t2], nodes[t3], acts, rows, col)  # fmt: skip
        nodes[t0], nodes[t1], nodes[t2], nodes[t3] = n
    for i in range(full, stop):
        t = order[i]
        nodes[t] = _route1(x, w_in, b_in, base, levels, code, t, nodes[t], acts, rows, col)


@njit(cache=True, nogil=True)
def _bucket_order(nodes, level):
    """Token order sorted by their node at ``level`` (a stable counting sort)."""
    first = 2**level - 1
    counts = np.zeros(2**level + 1, np.int64)
    for t in range(nodes.shape[0]):
        counts[nodes[t] - first + 1] += 1
    for j in range(2**level):
        counts[j + 1] += counts[j]
    order = np.empty(nodes.shape[0], np.int64)
    for t in range(nodes.shape[0]):
        j = nodes[t] - first
        order[counts[j]] = t
        counts[j] += 1
    return order


@njit(cache=True, nogil=True)
def _leaf_order(rows, depth):
    """Token order sorted by the leaf of the first tree: tokens that share a node are then
    adjacent, so writing outputs in this order loads each visited node's output row from L3
    about once instead of once per token (measured 1.35x at 4,096 tokens)."""
    return _bucket_order(rows[:, depth], depth)


@njit(cache=True, fastmath=_FASTMATH, nogil=True)
def _fff_few(x, w_in, b_in, w_rows, depth, trees, code, out):
    """Few tokens, one thread, one call: walk every token root to leaf (activation applied
    in the walk), then write the outputs in token order."""
    T, visited, n = x.shape[0], trees * (depth + 1), 2 ** (depth + 1) - 1
    acts = np.empty((T, visited), np.float32)
    rows = np.empty((T, visited), np.int32)
    order = np.arange(T)
    nodes = np.empty(T, np.int64)
    for k in range(trees):
        nodes[:] = 0
        _walk(x, w_in, b_in, k * n, depth + 1, code, order, 0, T, nodes, acts, rows, k * (depth + 1))
    for t in range(T):
        _write_rows(out[t], acts[t], rows[t], visited, w_rows, False)


# Many tokens: route (logits out), activation by torch, write in leaf order. Each step has a
# one-thread and an all-threads compilation; the bodies are the shared inline helpers above.
# Routing walks the top ``top`` = min(TOP_LEVELS, D+1) levels in token order, then sorts the
# tokens by their node there and walks the rest in that order: the tokens of one subtree
# (2^(D+1-top)-1 nodes, 765 KB at depth 11: fits in L2) follow each other, so the deep rows
# come from L2 instead of L3 (measured 1.4x for routing at 4,096 tokens, depth 11).
# order (T,) = arange(T) and nodes (T,) are int64 scratch arrays made by the caller.
@njit(cache=True, fastmath=_FASTMATH, nogil=True)
def _route_serial(x, w_in, b_in, depth, trees, top, logits, rows, order, nodes):
    T, n = x.shape[0], 2 ** (depth + 1) - 1
    for k in range(trees):
        col = k * (depth + 1)
        nodes[:] = 0
        _walk(x, w_in, b_in, k * n, top, _LOGIT, order, 0, T, nodes, logits, rows, col)
        if top <= depth:
            by_subtree = _bucket_order(nodes, top)
            _walk(x, w_in, b_in, k * n, depth + 1 - top, _LOGIT, by_subtree, 0, T, nodes, logits, rows, col + top)  # fmt: skip


@njit(cache=True, fastmath=_FASTMATH, nogil=True, parallel=True)
def _route_parallel(x, w_in, b_in, depth, trees, top, logits, rows, order, nodes):
    T, n = x.shape[0], 2 ** (depth + 1) - 1
    blocks = (T + _BLOCK - 1) // _BLOCK
    for k in range(trees):
        col = k * (depth + 1)
        for b in prange(blocks):
            start, stop = b * _BLOCK, min(T, (b + 1) * _BLOCK)
            for t in range(start, stop):
                nodes[t] = 0
            _walk(x, w_in, b_in, k * n, top, _LOGIT, order, start, stop, nodes, logits, rows, col)
        if top <= depth:
            by_subtree = _bucket_order(nodes, top)
            for b in prange(blocks):
                start, stop = b * _BLOCK, min(T, (b + 1) * _BLOCK)
                _walk(x, w_in, b_in, k * n, depth + 1 - top, _LOGIT, by_subtree, start, stop, nodes, logits, rows, col + top)  # fmt: skip


@njit(cache=True, fastmath=_FASTMATH, nogil=True)
def _write_serial(acts, rows, order, w_rows, out):
    for t in order:
        _write_rows(out[t], acts[t], rows[t], rows.shape[1], w_rows, False)


# No array creation in here: numba turns np.zeros into a parallel loop of its own, which
# parallel_chunksize(1) would split into one task per element (measured 150 us for 2,049).
@njit(cache=True, fastmath=_FASTMATH, nogil=True, parallel=True)
def _write_parallel(acts, rows, order, w_rows, out):
    T = rows.shape[0]
    for b in prange((T + _BLOCK - 1) // _BLOCK):
        for i in range(b * _BLOCK, min(T, (b + 1) * _BLOCK)):
            t = order[i]
            _write_rows(out[t], acts[t], rows[t], rows.shape[1], w_rows, False)


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


def _run(x: torch.Tensor, w_in, b_in, w_out, depth: int, trees: int, activation) -> torch.Tensor:
    w, b, w_rows = _weights(w_in, b_in, w_out)
    if x.requires_grad:  # no_grad mode with a leaf that requires grad
        x = x.detach()
    xs = (x if x.is_contiguous() else x.contiguous()).numpy()  # (T, H); copies only strided views
    out = np.empty_like(xs)
    T, visited = xs.shape[0], trees * (depth + 1)
    parallel = T >= PARALLEL_MIN_TOKENS and numba.get_num_threads() > 1
    if not parallel and T < SPLIT_MIN_TOKENS:
        _fff_few(xs, w, b, w_rows, depth, trees, _ACTIVATION_CODES[activation], out)
        return torch.from_numpy(out)
    logits = np.empty((T, visited), np.float32)
    rows = np.empty((T, visited), np.int32)
    order, nodes = np.arange(T), np.empty(T, np.int64)
    # Dynamic scheduling, one block at a time: on a shared machine a thread whose core is busy
    # takes fewer blocks instead of holding up the others.
    with numba.parallel_chunksize(1):
        (_route_parallel if parallel else _route_serial)(
            xs, w, b, depth, trees, min(TOP_LEVELS, depth + 1), logits, rows, order, nodes
        )
        # The activation of the T*K*(D+1) visited logits, vectorised by torch: the same
        # function as the reference's, and 1.25x faster for the whole layer at 4,096 tokens
        # than a scalar erf per node in the walk.
        acts = activation(torch.from_numpy(logits)).numpy()
        order = _leaf_order(rows, depth)
        (_write_parallel if parallel else _write_serial)(acts, rows, order, w_rows, out)
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
    if not x.is_cpu:  # (not x.device.type: 0.2 us of a 4 us one-token call)
        raise ValueError(f"the 'cpu' FFF implementation needs CPU tensors, got {x.device}")
    if activation not in _ACTIVATION_CODES or x.dtype != torch.float32:
        return fff_gather(x, w_in, b_in, w_out, depth, trees, activation)
    if needs_grad(x, w_in, b_in, w_out):
        return InferenceOnly.apply("cpu", _run, x, w_in, b_in, w_out, depth, trees, activation)
    return _run(x, w_in, b_in, w_out, depth, trees, activation)


def set_num_threads(n: int) -> None:
    """Threads for both torch and the numba kernel (benchmarks sweep 1 and all cores)."""
    torch.set_num_threads(n)
    numba.set_num_threads(n)
