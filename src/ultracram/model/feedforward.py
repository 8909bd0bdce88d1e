"""Feedforward blocks behind one interface:
``forward(x: (B, T, H), attention_mask: (B, T) | None = None) -> (B, T, H)``.
Only the Switch layer reads the mask (padding must not take expert capacity).

``DenseFeedForward`` (BERT), ``GatedFeedForward`` (cramming's GLU), ``FastFeedForward``
(UltraFastBERT's trees) and ``SwitchFeedForward`` (top-1 mixture of experts).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from ultracram.config import ModelConfig
from ultracram.kernels import FFF_IMPLEMENTATIONS, fff_nodes
from ultracram.kernels.reference import fff_soft

ACTIVATIONS = {"gelu": F.gelu, "relu": F.relu}


class DenseFeedForward(nn.Module):
    """H -> I -> H with one nonlinearity (BERT)."""

    def __init__(self, config: ModelConfig):
        super().__init__()
        self.dense_in = nn.Linear(config.hidden_size, config.intermediate_size, bias=config.bias)
        self.dense_out = nn.Linear(config.intermediate_size, config.hidden_size, bias=config.bias)
        self.act = ACTIVATIONS[config.activation]

    def forward(self, x: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        return self.dense_out(self.act(self.dense_in(x)))


class GatedFeedForward(nn.Module):
    """Gated linear unit (cramming): dense_in to I, split into value and gate halves of I/2,
    ``value * act(gate)``, then I/2 -> H. The halving is not compensated, as in cramming."""

    def __init__(self, config: ModelConfig):
        super().__init__()
        self.dense_in = nn.Linear(config.hidden_size, config.intermediate_size, bias=config.bias)
        self.dense_out = nn.Linear(config.intermediate_size // 2, config.hidden_size, bias=config.bias)
        self.act = ACTIVATIONS[config.activation]

    def forward(self, x: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        value, gate = self.dense_in(x).chunk(2, dim=-1)  # (B, T, I/2) each
        return self.dense_out(value * self.act(gate))


class FastFeedForward(nn.Module):
    """Fast feedforward layer (Belcak & Wattenhofer 2023): K binary trees of depth D.

    Each node is one neuron with input weights and a bias and output weights without bias.
    A token walks root to leaf, turning right where the node's pre-activation is positive, so
    it touches D+1 of the 2^(D+1)-1 nodes of each tree; routing is hard, so only visited nodes
    receive gradients. Parameter names follow UltraFastBERT (``linear_in``, ``linear_out``).

    ``implementation`` names an entry of ``ultracram.kernels.FFF_IMPLEMENTATIONS``; all give the
    same outputs and gradients, ``masked`` being the dense reference. With
    ``config.fff_training == "soft"`` training routes softly instead (``kernels.reference.fff_soft``)
    and leaves the mean decision entropy in ``aux_loss`` (weight ``fff_hardening_weight``);
    eval mode routes hard whatever the training mode.
    """

    def __init__(self, config: ModelConfig, implementation: str = "masked"):
        super().__init__()
        self.depth, self.trees = config.fff_depth, config.fff_trees
        width = self.trees * fff_nodes(self.depth)
        self.linear_in = nn.Linear(config.hidden_size, width, bias=True)  # (K*N, H) + (K*N,)
        self.linear_out = nn.Linear(width, config.hidden_size, bias=False)  # (H, K*N)
        self.act = ACTIVATIONS[config.activation]
        self.implementation = implementation
        self.soft, self.temperature = config.fff_training == "soft", config.fff_soft_temperature
        self.aux_loss_weight = config.fff_hardening_weight
        self.aux_loss: torch.Tensor | None = None

    @property
    def implementation(self) -> str:
        return self._implementation

    @implementation.setter
    def implementation(self, name: str) -> None:
        if name not in FFF_IMPLEMENTATIONS:
            raise ValueError(f"unknown FFF implementation {name!r}; known: {', '.join(FFF_IMPLEMENTATIONS)}")
        self._implementation = name

    def forward(self, x: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        tokens = x.reshape(-1, x.shape[-1])  # (B*T, H)
        w_in, b_in, w_out = self.linear_in.weight, self.linear_in.bias, self.linear_out.weight
        if self.soft and self.training:
            out, entropy = fff_soft(
                tokens, w_in, b_in, w_out, self.depth, self.trees, self.act, self.temperature
            )
            entropy = entropy.mean(1)  # (B*T,): mean over trees
            if attention_mask is not None:  # padding does not count towards the hardening loss
                real = attention_mask.reshape(-1).to(entropy.dtype)
                self.aux_loss = (entropy * real).sum() / real.sum().clamp_min(1.0)
            else:
                self.aux_loss = entropy.mean()
            return out.view_as(x)
        self.aux_loss = None
        fn = FFF_IMPLEMENTATIONS[self._implementation]
        out = fn(tokens, w_in, b_in, w_out, self.depth, self.trees, self.act)
        return out.view_as(x)

    def extra_repr(self) -> str:
        return f"trees={self.trees}, depth={self.depth}, implementation={self._implementation!r}"


class SwitchFeedForward(nn.Module):
    """Switch Transformer FFN (Fedus et al. 2021): a router sends each token to one expert.

    Each expert has capacity ceil(capacity_factor * tokens / experts); tokens beyond it are
    dropped (the layer outputs zero for them, so the residual carries them through). The
    expert output is scaled by the router probability so the router gets a gradient.
    After each forward, ``aux_loss`` holds the load-balancing loss
    ``experts * sum_e(fraction of tokens routed to e * mean router probability of e)``,
    which is 1.0 for a perfectly balanced router; the model adds it, times ``aux_loss_weight``
    (``moe_aux_loss_weight``), to its loss.
    """

    def __init__(self, config: ModelConfig):
        super().__init__()
        h, i, e = config.hidden_size, config.intermediate_size, config.moe_experts
        self.experts, self.capacity_factor = e, config.moe_capacity_factor
        self.router = nn.Linear(h, e, bias=False)
        self.w_in = nn.Parameter(torch.empty(e, h, i))  # (E, H, I)
        self.w_out = nn.Parameter(torch.empty(e, i, h))  # (E, I, H)
        self.act = ACTIVATIONS[config.activation]
        self.aux_loss: torch.Tensor | None = None
        self.aux_loss_weight = config.moe_aux_loss_weight

    def forward(self, x: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        tokens = x.reshape(-1, x.shape[-1])  # (N, H)
        real = (torch.ones(tokens.shape[0], device=x.device) if attention_mask is None
                else attention_mask.reshape(-1).to(torch.float32))  # (N,) 1 = real token  # fmt: skip
        n = real.sum().clamp_min(1.0)
        probs = self.router(tokens).float().softmax(dim=-1)  # (N, E)
        gate, expert = probs.max(dim=-1)  # (N,), (N,)
        one_hot = (
            F.one_hot(expert, self.experts).to(probs.dtype) * real[:, None]
        )  # (N, E); padding routes nowhere
        # Load balance over real tokens: E * sum_e (fraction routed to e) * (mean probability of e).
        self.aux_loss = self.experts * ((one_hot.sum(0) / n) * ((probs * real[:, None]).sum(0) / n)).sum()
        capacity = math.ceil(self.capacity_factor * int(n.item()) / self.experts)
        # Position of each token in its expert's queue, in token order; beyond capacity -> dropped.
        position = (one_hot.cumsum(0) * one_hot).sum(-1).long() - 1  # (N,)
        keep = (position < capacity) & (real > 0)
        out = torch.zeros_like(tokens)
        for e in range(self.experts):
            idx = torch.nonzero((expert == e) & keep).squeeze(1)
            if idx.numel():
                h = self.act(tokens[idx] @ self.w_in[e]) @ self.w_out[e]  # (n_e, H)
                out.index_add_(0, idx, h * gate[idx, None].to(h.dtype))
        return out.view_as(x)


FEEDFORWARDS: dict[str, type[nn.Module]] = {
    "dense": DenseFeedForward,
    "glu": GatedFeedForward,
    "fff": FastFeedForward,
    "moe": SwitchFeedForward,
}
