"""Implementations of the fast feedforward (FFF) layer, all with one signature:

``fn(x (T, H), w_in (K*N, H), b_in (K*N,), w_out (H, K*N), depth, trees, activation) -> (T, H)``.

``FFF_IMPLEMENTATIONS`` is the one table that maps a name to an implementation; the model's
``FastFeedForward`` looks its ``implementation`` up here.
"""

from ultracram.kernels.reference import fff_gather, fff_masked, fff_nodes, fff_paths

FFF_IMPLEMENTATIONS = {
    "masked": fff_masked,  # dense reference: every node computed, then masked
    "gather": fff_gather,  # pure PyTorch, only visited nodes; works on every device
}

__all__ = ["FFF_IMPLEMENTATIONS", "fff_gather", "fff_masked", "fff_nodes", "fff_paths"]
