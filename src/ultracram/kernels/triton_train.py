"""FFF training on GPU: the Triton backend of ``FFFConditional`` (kernels/autograd.py).

Four kernels, the same primitives as the numba and torch backends; every one reads and
writes fp32 or bf16/fp16 tensors and accumulates in fp32:

- ``_route``: a program takes BLOCK_T tokens and walks each tree root to leaf; per level it
  gathers the BLOCK_T visited rows of ``w_in`` and reduces ``x . w_in[row]`` over H in
  BLOCK_H chunks. Writes the visited rows (T, K, L) and pre-activations z (T, K, L).
- ``_dots``: the same reduction over given rows: ``da = grad_out . w_out[:, row]``.
- ``_combine``: a program takes BLOCK_T tokens x BLOCK_H columns and sums
  ``coef * w_rows[row]`` over the K*L visited nodes (forward output; grad_x in backward).
- ``_weight_grads``: deterministic, atomic-free weight gradients. The T*K*L visits are
  stably sorted by row (``torch.argsort(stable=True)``) and cut into one segment per visited
  row; a program owns one (segment, BLOCK_H columns) tile of ``grad_w_in``, ``grad_w_out``
  and writes it once, summing its visits in token order. So each weight-gradient element is
  written by exactly one program, in a fixed order: bitwise reproducible, no atomics and no
  zeroing races. Unvisited rows keep the zeros they were allocated with.

  Why sorting rather than ``tl.atomic_add``: atomics make the sum order (and the fp32 bits)
  depend on scheduling, and would write the root node's row from every token block. The sort
  is over T*K*L int32 keys, small next to the T*K*L*H multiply-adds. Its cost is load
  imbalance: the root's segment holds all T visits, so its programs loop T/BLOCK_E times
  while a leaf's loop once or twice. A split of long segments into chunks with a second,
  ordered reduction would remove it; not done (see docs/fff-training.md).

Not measured on a GPU (none was available); correct under ``TRITON_INTERPRET=1`` on CPU
(tests/test_fff_training_triton.py).
"""

from __future__ import annotations

import functools

import torch

from ultracram.kernels.reference import fff_nodes

BLOCK_T = 16
BLOCK_H = 64
BLOCK_E = 16


@functools.cache
def _kernels():
    import triton
    import triton.language as tl

    @triton.jit
    def _route(x_ptr, w_ptr, b_ptr, rows_ptr, z_ptr, T, H, depth, trees, nodes,
               BLOCK_T: tl.constexpr, BLOCK_H: tl.constexpr):  # fmt: skip
        t = tl.program_id(0) * BLOCK_T + tl.arange(0, BLOCK_T)  # (BLOCK_T,)
        t_ok = t < T
        levels = depth + 1
        for k in range(trees):
            node = tl.zeros([BLOCK_T], dtype=tl.int32)
            for level in range(levels):
                row = k * nodes + node  # (BLOCK_T,)
                acc = tl.zeros([BLOCK_T], dtype=tl.float32)
                for h0 in range(0, H, BLOCK_H):
                    h = h0 + tl.arange(0, BLOCK_H)
                    m = t_ok[:, None] & (h < H)[None, :]
                    xv = tl.load(x_ptr + t[:, None].to(tl.int64) * H + h[None, :], mask=m, other=0.0)
                    wv = tl.load(w_ptr + row[:, None].to(tl.int64) * H + h[None, :], mask=m, other=0.0)
                    acc += tl.sum(xv.to(tl.float32) * wv.to(tl.float32), axis=1)
                acc += tl.load(b_ptr + row, mask=t_ok, other=0.0).to(tl.float32)
                off = (t.to(tl.int64) * trees + k) * levels + level
                tl.store(rows_ptr + off, row, mask=t_ok)
                tl.store(z_ptr + off, acc, mask=t_ok)
                node = 2 * node + 1 + (acc > 0).to(tl.int32)

    @triton.jit
    def _dots(v_ptr, w_ptr, rows_ptr, out_ptr, T, H, visits,
              BLOCK_T: tl.constexpr, BLOCK_H: tl.constexpr):  # fmt: skip
        t = tl.program_id(0) * BLOCK_T + tl.arange(0, BLOCK_T)
        t_ok = t < T
        for j in range(visits):
            off = t.to(tl.int64) * visits + j
            row = tl.load(rows_ptr + off, mask=t_ok, other=0)
            acc = tl.zeros([BLOCK_T], dtype=tl.float32)
            for h0 in range(0, H, BLOCK_H):
                h = h0 + tl.arange(0, BLOCK_H)
                m = t_ok[:, None] & (h < H)[None, :]
                vv = tl.load(v_ptr + t[:, None].to(tl.int64) * H + h[None, :], mask=m, other=0.0)
                wv = tl.load(w_ptr + row[:, None].to(tl.int64) * H + h[None, :], mask=m, other=0.0)
                acc += tl.sum(vv.to(tl.float32) * wv.to(tl.float32), axis=1)
            tl.store(out_ptr + off, acc, mask=t_ok)

    @triton.jit
    def _combine(coef_ptr, rows_ptr, w_ptr, out_ptr, T, H, visits,
                 BLOCK_T: tl.constexpr, BLOCK_H: tl.constexpr):  # fmt: skip
        t = tl.program_id(0) * BLOCK_T + tl.arange(0, BLOCK_T)
        h = tl.program_id(1) * BLOCK_H + tl.arange(0, BLOCK_H)
        t_ok = t < T
        m = t_ok[:, None] & (h < H)[None, :]
        acc = tl.zeros([BLOCK_T, BLOCK_H], dtype=tl.float32)
        for j in range(visits):
            off = t.to(tl.int64) * visits + j
            row = tl.load(rows_ptr + off, mask=t_ok, other=0)
            c = tl.load(coef_ptr + off, mask=t_ok, other=0.0).to(tl.float32)
            wv = tl.load(w_ptr + row[:, None].to(tl.int64) * H + h[None, :], mask=m, other=0.0)
            acc += c[:, None] * wv.to(tl.float32)
        out = out_ptr + t[:, None].to(tl.int64) * H + h[None, :]
        tl.store(out, acc.to(out_ptr.dtype.element_ty), mask=m)

    @triton.jit
    def _weight_grads(order_ptr, starts_ptr, seg_rows_ptr, dz_ptr, a_ptr, x_ptr, g_ptr,
                      grad_in_ptr, grad_b_ptr, grad_out_ptr, H, visits,
                      BLOCK_E: tl.constexpr, BLOCK_H: tl.constexpr):  # fmt: skip
        seg = tl.program_id(0)
        hb = tl.program_id(1)
        h = hb * BLOCK_H + tl.arange(0, BLOCK_H)
        h_ok = h < H
        start = tl.load(starts_ptr + seg)
        stop = tl.load(starts_ptr + seg + 1)
        row = tl.load(seg_rows_ptr + seg).to(tl.int64)
        acc_in = tl.zeros([BLOCK_H], dtype=tl.float32)
        acc_out = tl.zeros([BLOCK_H], dtype=tl.float32)
        acc_b = tl.zeros([BLOCK_E], dtype=tl.float32)
        for e0 in range(start, stop, BLOCK_E):
            e = e0 + tl.arange(0, BLOCK_E)
            e_ok = e < stop
            visit = tl.load(order_ptr + e, mask=e_ok, other=0)  # index into the (T*K*L,) visits
            tok = (visit // visits).to(tl.int64)
            dz = tl.load(dz_ptr + visit, mask=e_ok, other=0.0).to(tl.float32)
            a = tl.load(a_ptr + visit, mask=e_ok, other=0.0).to(tl.float32)
            m = e_ok[:, None] & h_ok[None, :]
            xv = tl.load(x_ptr + tok[:, None] * H + h[None, :], mask=m, other=0.0).to(tl.float32)
            gv = tl.load(g_ptr + tok[:, None] * H + h[None, :], mask=m, other=0.0).to(tl.float32)
            acc_in += tl.sum(dz[:, None] * xv, axis=0)
            acc_out += tl.sum(a[:, None] * gv, axis=0)
            acc_b += dz
        tl.store(grad_in_ptr + row * H + h, acc_in, mask=h_ok)
        tl.store(grad_out_ptr + row * H + h, acc_out, mask=h_ok)
        if hb == 0:
            tl.store(grad_b_ptr + row, tl.sum(acc_b, axis=0))

    return _route, _dots, _combine, _weight_grads


def _cdiv(a: int, b: int) -> int:
    return (a + b - 1) // b


class TritonBackend:
    """The primitives ``FFFConditional`` calls, as Triton launches (fp32 accumulation)."""

    reads_low_precision = True  # loads bf16/fp16 directly; no fp32 copies of x and weights

    @staticmethod
    def route(x, w_in, b_in, depth, trees):
        T, H = x.shape
        x, w_in, b_in = x.contiguous(), w_in.contiguous(), b_in.contiguous()
        rows = torch.empty(T, trees, depth + 1, dtype=torch.int32, device=x.device)
        z = torch.empty(T, trees, depth + 1, dtype=torch.float32, device=x.device)
        if T:
            _kernels()[0][(_cdiv(T, BLOCK_T),)](
                x, w_in, b_in, rows, z, T, H, depth, trees, fff_nodes(depth), BLOCK_T=BLOCK_T, BLOCK_H=BLOCK_H
            )
        return rows, z

    @staticmethod
    def dots(v, rows, w_rows):
        T, H = v.shape
        out = torch.empty(rows.shape, dtype=torch.float32, device=v.device)
        if T:
            _kernels()[1][(_cdiv(T, BLOCK_T),)](
                v.contiguous(), w_rows.contiguous(), rows.contiguous(), out, T, H, rows[0].numel(),
                BLOCK_T=BLOCK_T, BLOCK_H=BLOCK_H,
            )  # fmt: skip
        return out

    @staticmethod
    def combine(coef, rows, w_rows):
        T, H = rows.shape[0], w_rows.shape[1]
        out = torch.empty(T, H, dtype=w_rows.dtype, device=w_rows.device)
        if T:
            _kernels()[2][(_cdiv(T, BLOCK_T), _cdiv(H, BLOCK_H))](
                coef.contiguous(), rows.contiguous(), w_rows.contiguous(), out, T, H, rows[0].numel(),
                BLOCK_T=BLOCK_T, BLOCK_H=BLOCK_H,
            )  # fmt: skip
        return out

    @staticmethod
    def weight_grads(dz, a, rows, x, g, n_rows):
        T, H = x.shape
        dev = x.device
        grad_in = torch.zeros(n_rows, H, dtype=torch.float32, device=dev)
        grad_out_rows = torch.zeros(n_rows, H, dtype=torch.float32, device=dev)
        grad_b = torch.zeros(n_rows, dtype=torch.float32, device=dev)
        if T == 0:
            return grad_in, grad_b, grad_out_rows
        flat = rows.reshape(-1).long()  # (T*K*L,)
        order = torch.argsort(flat, stable=True)  # visits grouped by row, token order within a row
        seg_rows, counts = torch.unique_consecutive(flat[order], return_counts=True)
        starts = torch.zeros(counts.numel() + 1, dtype=torch.int64, device=dev)
        torch.cumsum(counts, 0, out=starts[1:])
        _kernels()[3][(seg_rows.numel(), _cdiv(H, BLOCK_H))](
            order, starts, seg_rows, dz.float().contiguous(), a.float().contiguous(), x.contiguous(), g.contiguous(),
            grad_in, grad_b, grad_out_rows, H, rows[0].numel(), BLOCK_E=BLOCK_E, BLOCK_H=BLOCK_H,
        )  # fmt: skip
        return grad_in, grad_b, grad_out_rows
