"""FFF training: a ``torch.autograd.Function`` whose forward and backward touch only visited nodes.

Same signature as every entry of ``FFF_IMPLEMENTATIONS``:
``fff_conditional(x (T, H), w_in (K*N, H), b_in (K*N,), w_out (H, K*N), depth, trees, activation)
-> (T, H)``; registered as ``"conditional"``.

With L = D+1 visited nodes per token and tree, and ``rows`` (T, K, L) the visited global rows:

forward   z[t,k,l]   = x[t] . w_in[r] + b_in[r]            (routing: r_{l+1} from z_l > 0)
          out[t]     = sum_{k,l} act(z[t,k,l]) * w_out[:, r]
backward  da[t,k,l]  = grad_out[t] . w_out[:, r];  dz = da * act'(z)
          grad_x[t]  = sum_{k,l} dz[t,k,l] * w_in[r]
          grad_w_in[r] = sum over (t,k,l) visiting r of dz * x[t];  grad_b_in[r] = sum dz
          grad_w_out[:, r] = sum over (t,k,l) visiting r of act(z) * grad_out[t]

Forward saves only ``rows`` (int32) and ``z`` (fp32), T*K*L numbers each, besides the inputs
(autograd through ``fff_gather`` instead keeps every gathered weight row: 2*T*K*L*H numbers).
Unvisited rows get exactly zero gradient, as in the masked reference. ``act'`` comes from
autograd on the activation itself, so any elementwise activation works.

The four primitives (route, combine, dots, weight_grads) have three backends, picked by device:

- ``numba`` (CPU): per-token loops in parallel over tokens; the weight gradients are sorted
  segment sums in parallel over visited rows (each thread owns whole rows and sums their
  visits in token order), so they need no atomics and are deterministic.
- ``triton`` (CUDA; CPU under ``TRITON_INTERPRET=1``): kernels/triton_train.py.
- ``torch`` (any device): per-level gathers and ``index_add_``; the fallback.

Routing caveat (as for the inference kernels): logits are summed in another order than the
reference's BLAS product, so a logit within a few ulps of zero may route differently.
"""

from __future__ import annotations

import functools

import numpy as np
import torch
import torch.nn.functional as F

from ultracram.kernels.reference import Activation, fff_nodes


# --------------------------------------------------------------------------- numba (CPU)
@functools.cache
def _numba_kernels():
    import numba
    from numba import njit, prange

    fm = {"reassoc", "contract"}  # vectorised dot products; see kernels/cpu.py for the measurement

    @njit(parallel=True, fastmath=fm, cache=True)
    def route(x, w_in, b_in, depth, trees, nodes, rows, z):
        T, H = x.shape
        for t in prange(T):
            for k in range(trees):
                node = 0
                for level in range(depth + 1):
                    r = k * nodes + node
                    s = x.dtype.type(0.0)
                    for h in range(H):
                        s += x[t, h] * w_in[r, h]
                    s += b_in[r]
                    rows[t, k, level] = r
                    z[t, k, level] = s
                    node = 2 * node + (2 if s > 0 else 1)

    @njit(parallel=True, fastmath=fm, cache=True)
    def combine(coef, rows, w_rows, out):
        T, K, L = rows.shape
        H = out.shape[1]
        for t in prange(T):
            for k in range(K):
                for level in range(L):
                    c = coef[t, k, level]
                    r = rows[t, k, level]
                    for h in range(H):
                        out[t, h] += c * w_rows[r, h]

    @njit(parallel=True, fastmath=fm, cache=True)
    def dots(v, rows, w_rows, out):
        T, K, L = rows.shape
        H = v.shape[1]
        for t in prange(T):
            for k in range(K):
                for level in range(L):
                    r = rows[t, k, level]
                    s = v.dtype.type(0.0)
                    for h in range(H):
                        s += v[t, h] * w_rows[r, h]
                    out[t, k, level] = s

    @njit(parallel=True, fastmath=fm, cache=True)
    def weight_grads(order, starts, seg_rows, dz, a, x, g, visits, grad_in, grad_b, grad_out_rows):
        # One segment = the visits of one row, in token order (stable sort). A thread owns a
        # whole row: it sums dz*x[t] and a*g[t] into that row (kept in L1) and writes it once,
        # so no two threads touch the same row and every sum runs in token order.
        H = x.shape[1]
        for s in prange(seg_rows.shape[0]):
            r = seg_rows[s]
            bias = dz.dtype.type(0.0)
            for e in range(starts[s], starts[s + 1]):
                v = order[e]
                t = v // visits
                c_in = dz[v]
                c_out = a[v]
                bias += c_in
                for h in range(H):
                    grad_in[r, h] += c_in * x[t, h]
                    grad_out_rows[r, h] += c_out * g[t, h]
            grad_b[r] = bias

    del numba
    return route, combine, dots, weight_grads


def _np(t: torch.Tensor):
    return t.detach().contiguous().numpy()


class _NumbaBackend:
    @staticmethod
    def route(x, w_in, b_in, depth, trees):
        T = x.shape[0]
        rows = torch.empty(T, trees, depth + 1, dtype=torch.int32)
        z = torch.empty(T, trees, depth + 1, dtype=x.dtype)
        _numba_kernels()[0](
            _np(x), _np(w_in), _np(b_in), depth, trees, fff_nodes(depth), rows.numpy(), z.numpy()
        )
        return rows, z

    @staticmethod
    def combine(coef, rows, w_rows):
        out = torch.zeros(rows.shape[0], w_rows.shape[1], dtype=w_rows.dtype)
        _numba_kernels()[1](_np(coef.to(w_rows.dtype)), _np(rows), _np(w_rows), out.numpy())
        return out

    @staticmethod
    def dots(v, rows, w_rows):
        out = torch.empty(rows.shape, dtype=v.dtype)
        _numba_kernels()[2](_np(v), _np(rows), _np(w_rows), out.numpy())
        return out

    @staticmethod
    def weight_grads(dz, a, rows, x, g, n_rows):
        H = x.shape[1]
        grad_in = torch.zeros(n_rows, H, dtype=x.dtype)
        grad_out_rows = torch.zeros(n_rows, H, dtype=x.dtype)
        grad_b = torch.zeros(n_rows, dtype=x.dtype)
        order, starts, seg_rows = _segments(rows)
        _numba_kernels()[3](order, starts, seg_rows, _np(dz.to(x.dtype).reshape(-1)), _np(a.to(x.dtype).reshape(-1)),
                            _np(x), _np(g), rows[0].numel(), grad_in.numpy(), grad_b.numpy(), grad_out_rows.numpy())  # fmt: skip
        return grad_in, grad_b, grad_out_rows


def _segments(rows: torch.Tensor):
    """Visits grouped by row: ``order`` (visit ids, stably sorted by row, so token order within
    a row), ``starts`` (segment s is order[starts[s]:starts[s+1]]) and ``seg_rows``."""
    flat = rows.reshape(-1).numpy()  # (T*K*L,) int32
    order = np.argsort(flat, kind="stable")
    sorted_rows = flat[order]
    cut = np.flatnonzero(np.diff(sorted_rows)) + 1
    starts = np.concatenate(([0], cut, [flat.size])).astype(np.int64)
    return order, starts, sorted_rows[starts[:-1]].copy()


# --------------------------------------------------------------------------- torch (any device)
class _TorchBackend:
    @staticmethod
    def route(x, w_in, b_in, depth, trees):
        T = x.shape[0]
        n = fff_nodes(depth)
        offsets = torch.arange(trees, device=x.device) * n  # (K,)
        node = torch.zeros(T, trees, dtype=torch.long, device=x.device)
        rows, zs = [], []
        for level in range(depth + 1):
            r = node + offsets  # (T, K)
            z = torch.bmm(w_in[r], x.unsqueeze(2)).squeeze(2) + b_in[r]  # (T, K)
            rows.append(r)
            zs.append(z)
            if level < depth:
                node = 2 * node + 1 + (z > 0).long()
        return torch.stack(rows, 2).int(), torch.stack(zs, 2)

    @staticmethod
    def combine(coef, rows, w_rows):
        T, _, L = rows.shape
        coef = coef.to(w_rows.dtype)
        out = w_rows.new_zeros(T, w_rows.shape[1])
        for level in range(L):  # one level at a time: (T, K, H) gathered, not (T, K, L, H)
            out += torch.bmm(coef[:, None, :, level], w_rows[rows[:, :, level].long()]).squeeze(1)
        return out

    @staticmethod
    def dots(v, rows, w_rows):
        return torch.stack(
            [
                torch.bmm(w_rows[rows[:, :, level].long()], v.unsqueeze(2)).squeeze(2)
                for level in range(rows.shape[2])
            ],
            2,
        )

    @staticmethod
    def weight_grads(dz, a, rows, x, g, n_rows):
        H = x.shape[1]
        grad_in = x.new_zeros(n_rows, H)
        grad_out_rows = x.new_zeros(n_rows, H)
        grad_b = x.new_zeros(n_rows)
        dz, a = dz.to(x.dtype), a.to(x.dtype)
        for level in range(rows.shape[2]):
            r = rows[:, :, level].long().reshape(-1)  # (T*K,)
            grad_in.index_add_(0, r, (dz[:, :, level, None] * x[:, None, :]).reshape(-1, H))
            grad_out_rows.index_add_(0, r, (a[:, :, level, None] * g[:, None, :]).reshape(-1, H))
            grad_b.index_add_(0, r, dz[:, :, level].reshape(-1))
        return grad_in, grad_b, grad_out_rows


def _triton_backend():
    from ultracram.kernels import triton_train

    return triton_train.TritonBackend


@functools.cache
def triton_available() -> bool:
    """Whether Triton can be imported (it is an optional dependency)."""
    try:
        import triton  # noqa: F401
    except ImportError:
        return False
    return True


@functools.cache
def numba_available() -> bool:
    """Whether numba can be imported."""
    try:
        import numba  # noqa: F401
    except ImportError:
        return False
    return True


BACKENDS = ("numba", "triton", "torch")


def _backend(name: str | None, x: torch.Tensor, activation: Activation):
    if name is None:
        if x.is_cuda and triton_available():
            name = "triton"
        elif x.device.type == "cpu" and numba_available():
            name = "numba"
        else:
            name = "torch"
    if name == "triton":
        return _triton_backend()
    if name == "numba":
        return _NumbaBackend
    if name == "torch":
        return _TorchBackend
    raise ValueError(f"unknown FFF training backend {name!r}; known: {', '.join(BACKENDS)}")


# --------------------------------------------------------------------------- the Function
class FFFConditional(torch.autograd.Function):
    """FFF layer whose forward and backward compute only the visited nodes (see module doc).

    ``apply(x, w_in, b_in, w_out, depth, trees, activation, backend)``; ``backend`` is
    ``None`` (pick by device) or one of ``BACKENDS``.
    """

    @staticmethod
    def forward(ctx, x, w_in, b_in, w_out, depth, trees, activation, backend):
        be = _backend(backend, x, activation)
        compute = _compute_dtype(x, be)
        xc, w_in_c, b_in_c = x.to(compute), w_in.to(compute), b_in.to(compute)
        rows, z = be.route(xc, w_in_c, b_in_c, depth, trees)  # (T, K, L) int32, (T, K, L)
        w_out_rows = w_out.t().to(compute).contiguous()  # (K*N, H): node r's output row
        out = be.combine(activation(z), rows, w_out_rows)  # (T, H)
        ctx.save_for_backward(x, w_in, b_in, w_out, rows, z)
        ctx.depth, ctx.activation, ctx.be = depth, activation, be
        return out.to(x.dtype)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_out):
        x, w_in, b_in, w_out, rows, z = ctx.saved_tensors
        be = ctx.be
        compute = _compute_dtype(x, be)
        g = grad_out.to(compute).contiguous()  # (T, H)
        w_out_rows = w_out.t().to(compute).contiguous()  # (K*N, H)
        da = be.dots(g, rows, w_out_rows)  # (T, K, L)
        with torch.enable_grad():
            zz = z.detach().requires_grad_()
            a = ctx.activation(zz)
            (dz,) = torch.autograd.grad(a, zz, da)
        a = a.detach()
        grad_x = grad_w_in = grad_b = grad_w_out = None
        if ctx.needs_input_grad[0]:
            grad_x = be.combine(dz, rows, w_in.to(compute).contiguous()).to(x.dtype)
        if any(ctx.needs_input_grad[1:4]):
            gi, gb, go_rows = be.weight_grads(dz, a, rows, x.to(compute).contiguous(), g, w_in.shape[0])
            grad_w_in, grad_b, grad_w_out = gi.to(w_in.dtype), gb.to(b_in.dtype), go_rows.t().to(w_out.dtype)
        return grad_x, grad_w_in, grad_b, grad_w_out, None, None, None, None


def _compute_dtype(x: torch.Tensor, backend) -> torch.dtype:
    # fp64 stays fp64 (gradcheck); bf16/fp16 go to fp32 except for Triton, which loads them
    # as they are and accumulates in fp32 itself.
    if x.dtype == torch.float64 or getattr(backend, "reads_low_precision", False):
        return x.dtype
    return torch.float32


def fff_conditional(
    x: torch.Tensor, w_in: torch.Tensor, b_in: torch.Tensor, w_out: torch.Tensor,
    depth: int, trees: int, activation: Activation = F.gelu, backend: str | None = None,
) -> torch.Tensor:  # fmt: skip
    """FFF layer, forward and backward over visited nodes only. x (T, H) -> (T, H).

    ``backend``: ``None`` picks Triton on CUDA, numba on CPU, else torch. This always runs the
    conditional kernels; whether a shallow tree on CPU is better off on the masked reference is
    decided by ``ultracram.model.dispatch`` (``auto``), never here.
    """
    return FFFConditional.apply(x, w_in, b_in, w_out, depth, trees, activation, backend)
