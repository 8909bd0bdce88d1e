"""Pure PyTorch FFF implementations: the masked dense reference and the index-gather path.

Weight layout (the UltraFastBERT layout, so published checkpoints load without reshaping):
``w_in`` (K*N, H) with bias ``b_in`` (K*N,), and ``w_out`` (H, K*N), where K is the number of
trees, N = 2^(D+1)-1 the nodes of one tree and row ``k*N + n`` belongs to node n of tree k.
Nodes are numbered breadth first: node n has children 2n+1 (pre-activation <= 0) and 2n+2
(pre-activation > 0). A token visits D+1 nodes, one per level, and the output is
sum over visited nodes of act(x . w_in[n] + b_in[n]) * w_out[:, n].
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F

Activation = Callable[[torch.Tensor], torch.Tensor]


def fff_nodes(depth: int) -> int:
    """Nodes in one tree of depth ``depth``."""
    return 2 ** (depth + 1) - 1


def fff_paths(logits: torch.Tensor, depth: int, trees: int) -> torch.Tensor:
    """Visited node (within-tree index) per token, tree and level, from all pre-activations.

    logits: (T, K*N) -> (T, K, D+1) long.
    """
    T = logits.shape[0]
    decisions = (logits > 0).view(T, trees, fff_nodes(depth))
    node = torch.zeros(T, trees, dtype=torch.long, device=logits.device)
    path = [node]
    for _ in range(depth):
        move = decisions.gather(2, node.unsqueeze(2)).squeeze(2).long()  # (T, K): 1 = go right
        node = 2 * node + 1 + move
        path.append(node)
    return torch.stack(path, dim=2)


def fff_masked(
    x: torch.Tensor, w_in: torch.Tensor, b_in: torch.Tensor, w_out: torch.Tensor,
    depth: int, trees: int, activation: Activation = F.gelu,
) -> torch.Tensor:  # fmt: skip
    """Reference: compute every node, zero all but the visited ones. x (T, H) -> (T, H).

    This is what UltraFastBERT trains with; it costs as much as a dense layer of K*N neurons.
    Gradients of unvisited nodes are exactly zero because their activations are masked.
    """
    T = x.shape[0]
    logits = F.linear(x, w_in, b_in)  # (T, K*N)
    with torch.no_grad():
        path = fff_paths(logits, depth, trees)  # (T, K, D+1)
        mask = torch.zeros(T, trees, fff_nodes(depth), dtype=x.dtype, device=x.device)
        mask.scatter_(2, path, 1.0)
    return F.linear(activation(logits) * mask.view(T, -1), w_out)


def fff_gather(
    x: torch.Tensor, w_in: torch.Tensor, b_in: torch.Tensor, w_out: torch.Tensor,
    depth: int, trees: int, activation: Activation = F.gelu,
) -> torch.Tensor:  # fmt: skip
    """Conditional path: gather only the D+1 visited rows per token and tree. x (T, H) -> (T, H).

    Autograd turns the gathers into index-adds, so only visited rows get (nonzero) gradients,
    identical to the masked reference.
    """
    T, H = x.shape
    n = fff_nodes(depth)
    offsets = torch.arange(trees, device=x.device) * n  # (K,) first row of each tree
    node = torch.zeros(T, trees, dtype=torch.long, device=x.device)
    w_out_rows = w_out.t()  # (K*N, H): row r = output weights of node r
    out = x.new_zeros(T, H)
    for level in range(depth + 1):
        rows = node + offsets  # (T, K) global row index
        logit = torch.bmm(w_in[rows], x.unsqueeze(2)).squeeze(2) + b_in[rows]  # (T, K)
        out = out + torch.bmm(activation(logit).unsqueeze(1), w_out_rows[rows]).squeeze(1)  # (T, H)
        if level < depth:
            node = 2 * node + 1 + (logit > 0).long()
    return out
