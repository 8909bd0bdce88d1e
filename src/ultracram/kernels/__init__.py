"""Implementations of the fast feedforward (FFF) layer, all with one signature:

``fn(x (T, H), w_in (K*N, H), b_in (K*N,), w_out (H, K*N), depth, trees, activation) -> (T, H)``.

``FFF_IMPLEMENTATIONS`` is the one table that maps a name to an implementation; the model's
``FastFeedForward`` looks its ``implementation`` up here. Which one a model uses is chosen in
``ultracram.model.dispatch``, nowhere else.
"""

from ultracram.kernels.autograd import fff_conditional
from ultracram.kernels.cpu import fff_cpu
from ultracram.kernels.reference import fff_gather, fff_masked, fff_nodes, fff_paths
from ultracram.kernels.triton_infer import fff_triton

FFF_IMPLEMENTATIONS = {
    "masked": fff_masked,  # dense reference: every node computed, then masked
    "conditional": fff_conditional,  # training: forward+backward over visited nodes (kernels/autograd.py)
    "gather": fff_gather,  # pure PyTorch, only visited nodes; works on every device
    "cpu": fff_cpu,  # numba kernel, inference only, CPU tensors (kernels/cpu.py)
    "triton": fff_triton,  # Triton kernel, inference only, CUDA tensors (kernels/triton_infer.py)
}
# The entries with a backward pass, i.e. what training may use.
TRAINABLE_FFF_IMPLEMENTATIONS = ("masked", "gather", "conditional")

__all__ = [
    "FFF_IMPLEMENTATIONS",
    "TRAINABLE_FFF_IMPLEMENTATIONS",
    "fff_conditional",
    "fff_cpu",
    "fff_gather",
    "fff_masked",
    "fff_nodes",
    "fff_paths",
    "fff_triton",
]
