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


def fff_soft(
    x: torch.Tensor, w_in: torch.Tensor, b_in: torch.Tensor, w_out: torch.Tensor,
    depth: int, trees: int, activation: Activation = F.gelu, temperature: float = 1.0,
) -> tuple[torch.Tensor, torch.Tensor]:  # fmt: skip
    """Soft training mode (after Belcak & Wattenhofer's "Fast Feedforward Networks", 2023):
    x (T, H) -> (output (T, H), decision entropy (T, K)).

    Each node decides softly: it sends a token right with probability p = sigmoid(z / temperature)
    (z its pre-activation), so a token reaches every node with the product of the decision
    probabilities on the way, and the output sums reach(n) * act(z_n) * w_out[:, n] over all
    nodes. Every node gets a gradient, not only the visited ones. As the temperature goes to 0
    (or as training makes |z| large) reach becomes the hard path and the output the masked
    reference's. The entropy is the reach-weighted binary entropy of the decisions, per token
    and tree, averaged over the D decision levels (nats, 0 = hard, ln 2 = undecided): adding it
    to the loss ("hardening") drives the tree towards the hard routing used at inference.
    Costs as much as ``fff_masked`` (all nodes).
    """
    T = x.shape[0]
    n = fff_nodes(depth)
    z = F.linear(x, w_in, b_in).view(T, trees, n)  # (T, K, N)
    p_right = torch.sigmoid(z / temperature)
    reach = [z.new_ones(T, trees, 1)]  # level 0: the root, reached with probability 1
    entropy = z.new_zeros(T, trees)
    for level in range(depth):
        first, count = 2**level - 1, 2**level
        r = reach[-1]  # (T, K, 2^level)
        p = p_right[:, :, first : first + count]
        # Children of node m are 2m+1 (left) and 2m+2 (right): interleave left and right.
        reach.append(torch.stack([r * (1 - p), r * p], dim=-1).reshape(T, trees, 2 * count))
        # Binary entropy from logits (finite for saturated p): softplus(s) - s * sigmoid(s).
        s = z[:, :, first : first + count] / temperature
        entropy = entropy + (r * (F.softplus(s) - s * p)).sum(-1)
    weights = torch.cat(reach, dim=-1)  # (T, K, N) in breadth-first node order
    out = F.linear((weights * activation(z)).reshape(T, trees * n), w_out)
    return out, entropy / max(depth, 1)
