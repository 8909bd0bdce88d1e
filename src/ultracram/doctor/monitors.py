"""Live training monitors: cheap, opt-in statistics that flag trouble while a run goes on.

Use::

    monitor = Monitor(model, every=100)          # registers forward hooks
    for step in ...:
        loss = ...; loss.backward(); optimizer.step()
        for finding in monitor.on_step(step, model, loss, optimizer):
            log(finding)                          # Finding(step, kind, severity, message, ...)
    report = monitor.summary(); monitor.close()   # close() removes the hooks

Every ``every`` steps the hooks are armed for one forward pass (the one after the call to
``on_step`` that armed them) and record:

- attention entropy per layer (recomputed from the layer's input; SDPA hides the weights);
  a mean entropy far below ln(T) is an *entropy collapse* (Zhai et al. 2023);
- dead feedforward neurons: units whose pre-activation was never positive while armed;
- FFF routing (UltraFastBERT): visits per node, per level; leaves ever reached; routing entropy
  per level (normalised to [0, 1]); starved nodes (visited < 1% of a uniform share).

At the step before an armed one it snapshots the 2-D weights, so at the armed step it can
report the update/weight ratio ``|W_t - W_{t-1}| / |W_t|`` per layer (Karpathy's rule of thumb:
about 1e-3; early in training with Adam and N(0, 0.02) weights it is about lr/0.02; far above 0.1 the
learning rate is too high, below 1e-5 too low).
The loss-spike detector runs every step: it keeps an exponential mean and variance of the loss
and flags a loss more than ``spike_sigma`` deviations above the mean (and non-finite losses).
Outside armed steps the hooks return at once, so the cost is one Python call per module.
"""

from __future__ import annotations

import math
from collections import defaultdict
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
from torch import nn

from ultracram.kernels import fff_paths
from ultracram.model.encoder import SelfAttention
from ultracram.model.feedforward import DenseFeedForward, FastFeedForward, GatedFeedForward


@dataclass
class Finding:
    """One thing a monitor noticed. ``severity``: info, warn or error."""

    step: int
    kind: str
    severity: str
    message: str
    layer: str = ""
    value: float = float("nan")


@dataclass
class _FFFStats:
    depth: int
    trees: int
    counts: torch.Tensor  # (K, N) visits per node, accumulated over armed steps


@dataclass
class MonitorState:
    losses: list[tuple[int, float]] = field(default_factory=list)
    attention_entropy: dict[str, float] = field(default_factory=dict)
    update_ratio: dict[str, float] = field(default_factory=dict)


class Monitor:
    """Opt-in live monitors for a model being trained; see the module docstring."""

    def __init__(
        self,
        model: nn.Module,
        *,
        every: int = 100,
        spike_sigma: float = 6.0,
        spike_warmup: int = 20,
        entropy_floor: float = 0.1,
        dead_fraction_warn: float = 0.5,
        update_ratio_range: tuple[float, float] = (1e-5, 0.1),
    ):
        self.every, self.spike_sigma, self.spike_warmup = max(1, every), spike_sigma, spike_warmup
        self.entropy_floor, self.dead_fraction_warn = entropy_floor, dead_fraction_warn
        self.update_ratio_range = update_ratio_range
        self._armed = True  # the first forward is recorded
        self._mean, self._var, self._n = 0.0, 0.0, 0
        self._snapshot: dict[str, torch.Tensor] | None = None
        self.findings: list[Finding] = []
        self.state = MonitorState()
        self._entropy: dict[str, float] = {}
        self._ever_active: dict[str, torch.Tensor] = {}
        self._fff: dict[str, _FFFStats] = {}
        self._handles = []
        for name, m in model.named_modules():
            if isinstance(m, SelfAttention):
                self._handles.append(
                    m.register_forward_pre_hook(self._attention_hook(name), with_kwargs=True)
                )
            elif isinstance(m, FastFeedForward):
                self._fff[name] = _FFFStats(m.depth, m.trees, torch.zeros(m.trees, 2 ** (m.depth + 1) - 1))
                self._handles.append(m.register_forward_pre_hook(self._fff_hook(name), with_kwargs=True))
            elif isinstance(m, DenseFeedForward | GatedFeedForward):
                self._handles.append(m.dense_in.register_forward_hook(self._dead_hook(name, m)))

    # -- hooks ------------------------------------------------------------------------------
    def _attention_hook(self, name: str):
        def hook(module: nn.Module, args: tuple, kwargs: dict) -> None:
            if not self._armed:
                return
            x = args[0] if args else kwargs["x"]
            mask = args[1] if len(args) > 1 else kwargs.get("attention_mask")
            with torch.no_grad():
                B, T, H = x.shape
                nh = module.num_heads
                q, k, _ = module.qkv(x.detach()).view(B, T, 3, nh, H // nh).permute(2, 0, 3, 1, 4)
                scores = (q @ k.transpose(-1, -2)).float() / math.sqrt(H // nh)  # (B, nh, T, T)
                if mask is not None:
                    scores = scores.masked_fill(~mask[:, None, None, :].bool(), float("-inf"))
                p = scores.softmax(-1)
                ent = -(p * p.clamp_min(1e-12).log()).sum(-1)  # (B, nh, T)
                if mask is not None:
                    real = mask[:, None, :].bool().expand_as(ent)
                    ent = ent[real]
                self._entropy[name] = float(ent.mean())
                self._seq_len = T

        return hook

    def _fff_hook(self, name: str):
        def hook(module: nn.Module, args: tuple, kwargs: dict) -> None:
            if not self._armed:
                return
            x = args[0] if args else kwargs["x"]
            mask = args[1] if len(args) > 1 else kwargs.get("attention_mask")
            with torch.no_grad():
                tokens = x.detach().reshape(-1, x.shape[-1])
                if mask is not None:
                    tokens = tokens[mask.reshape(-1).bool()]
                logits = module.linear_in(tokens)  # (n, K*N)
                paths = fff_paths(logits, module.depth, module.trees)  # (n, K, D+1)
                st = self._fff[name]
                counts = torch.zeros_like(st.counts)
                for k in range(module.trees):
                    counts[k] += (
                        torch.bincount(paths[:, k].reshape(-1), minlength=counts.shape[1]).float().cpu()
                    )
                st.counts += counts

        return hook

    def _dead_hook(self, name: str, ffn: nn.Module):
        gated = ffn.__class__.__name__ == "GatedFeedForward"

        def hook(module: nn.Module, inputs: Any, output: torch.Tensor) -> None:
            if not self._armed:
                return
            with torch.no_grad():
                pre = output.detach()
                if gated:
                    pre = pre.chunk(2, dim=-1)[1]  # the gate half goes through the activation
                active = (pre.reshape(-1, pre.shape[-1]) > 0).any(0).cpu()
                prev = self._ever_active.get(name)
                self._ever_active[name] = active if prev is None else prev | active

        return hook

    # -- callback ---------------------------------------------------------------------------
    def on_step(
        self, step: int, model: nn.Module, loss: float | torch.Tensor, optimizer: Any = None
    ) -> list[Finding]:
        """Call once per optimizer step, after ``optimizer.step()``. Returns new findings."""
        new: list[Finding] = []
        value = float(loss.detach()) if isinstance(loss, torch.Tensor) else float(loss)
        self.state.losses.append((step, value))
        new += self._check_loss(step, value)
        if self._snapshot is not None:
            new += self._update_ratios(step, model)
            self._snapshot = None
        if self._armed:
            new += self._check_forward_stats(step)
        self._armed = (step + 1) % self.every == 0
        if (step + 2) % self.every == 0:  # snapshot one step before an armed step
            self._snapshot = {n: p.detach().clone() for n, p in model.named_parameters() if p.ndim >= 2}
        self.findings += new
        return new

    def _check_loss(self, step: int, value: float) -> list[Finding]:
        if not math.isfinite(value):
            return [Finding(step, "nonfinite_loss", "error", f"loss is {value} at step {step}", value=value)]
        out = []
        if self._n >= self.spike_warmup:
            std = math.sqrt(max(self._var, 1e-12))
            if value > self._mean + self.spike_sigma * std and value > self._mean * 1.05:
                out.append(Finding(step, "loss_spike", "warn", f"loss spike at step {step}: {value:.3f} vs "
                                   f"running mean {self._mean:.3f} (+{(value - self._mean) / std:.1f} sd)",
                                   value=value))  # fmt: skip
        alpha = 0.05 if self._n >= 10 else 1.0 / (self._n + 1)
        delta = value - self._mean
        self._mean += alpha * delta
        self._var = (1 - alpha) * (self._var + alpha * delta * delta)
        self._n += 1
        return out

    def _update_ratios(self, step: int, model: nn.Module) -> list[Finding]:
        per_layer: dict[str, list[float]] = defaultdict(lambda: [0.0, 0.0])
        for n, p in model.named_parameters():
            if n in self._snapshot:
                layer = _layer_name(n)
                per_layer[layer][0] += float((p.detach() - self._snapshot[n]).float().pow(2).sum())
                per_layer[layer][1] += float(p.detach().float().pow(2).sum())
        out = []
        lo, hi = self.update_ratio_range
        for layer, (du, w) in per_layer.items():
            r = math.sqrt(du) / max(math.sqrt(w), 1e-12)
            self.state.update_ratio[layer] = r
            if r > hi:
                out.append(Finding(step, "update_ratio_high", "warn", f"{layer}: update/weight ratio {r:.1e} > "
                                   f"{hi:g}; learning rate probably too high", layer, r))  # fmt: skip
            elif 0 < r < lo:
                out.append(Finding(step, "update_ratio_low", "info", f"{layer}: update/weight ratio {r:.1e} < "
                                   f"{lo:g}; learning rate may be too low", layer, r))  # fmt: skip
        return out

    def _check_forward_stats(self, step: int) -> list[Finding]:
        out = []
        for name, ent in self._entropy.items():
            self.state.attention_entropy[name] = ent
            if ent < self.entropy_floor:
                out.append(Finding(step, "attention_entropy_collapse", "warn", f"{name}: mean attention entropy "
                                   f"{ent:.3f} nats (uniform: {math.log(self._seq_len):.2f}); attention collapsed "
                                   "onto single tokens (lower the lr, add warmup, or QK-norm)", name, ent))  # fmt: skip
        for name, active in self._ever_active.items():
            dead = 1.0 - float(active.float().mean())
            if dead > self.dead_fraction_warn:
                out.append(Finding(step, "dead_neurons", "warn", f"{name}: {dead:.0%} of feedforward units never "
                                   "active in monitored batches", name, dead))  # fmt: skip
        for name, st in self._fff.items():
            stats = fff_usage(st.counts, st.depth)
            if stats["leaves_reached_fraction"] < 0.25 and st.counts.sum() > 8 * 2**st.depth:
                out.append(Finding(step, "fff_leaves_unused", "warn", f"{name}: only "
                                   f"{stats['leaves_reached_fraction']:.0%} of leaves ever reached",
                                   name, stats["leaves_reached_fraction"]))  # fmt: skip
        return out

    def summary(self) -> dict[str, Any]:
        """Everything recorded so far, JSON-ready."""
        dead = {n: 1.0 - float(a.float().mean()) for n, a in self._ever_active.items()}
        fff = {n: fff_usage(st.counts, st.depth) for n, st in self._fff.items()}
        losses = [v for _, v in self.state.losses]
        return {
            "steps": len(losses),
            "last_loss": losses[-1] if losses else None,
            "attention_entropy": dict(self.state.attention_entropy or self._entropy),
            "dead_neuron_fraction": dead,
            "update_ratio": dict(self.state.update_ratio),
            "fff": fff,
            "findings": [asdict(f) for f in self.findings],
        }

    def close(self) -> None:
        for h in self._handles:
            h.remove()
        self._handles.clear()


def _layer_name(param: str) -> str:
    parts = param.split(".")
    if "layers" in parts:
        return ".".join(parts[: parts.index("layers") + 2])
    return ".".join(parts[:-1]) or param


def fff_usage(counts: torch.Tensor, depth: int) -> dict[str, Any]:
    """Usage statistics of FFF trees from visit counts (K, N) (breadth-first node order).

    Returns per-level usage (visits of each node at that level, summed over trees), the fraction
    of leaves ever reached, the routing entropy per level normalised by its maximum
    (1 = tokens spread evenly over the level's 2^l nodes), and starved nodes: nodes whose visits
    are below 1% of a uniform share of their level (counted over levels 1..D).
    """
    K = counts.shape[0]
    levels, entropy = [], []
    starved = 0
    for lvl in range(depth + 1):
        lo, hi = 2**lvl - 1, 2 ** (lvl + 1) - 1
        c = counts[:, lo:hi]  # (K, 2^l)
        levels.append(c.sum(0).tolist())
        total = c.sum(1, keepdim=True).clamp_min(1e-12)
        p = c / total
        h = -(p * p.clamp_min(1e-12).log()).sum(1)  # (K,)
        entropy.append(float(h.mean() / math.log(2**lvl)) if lvl else 1.0)
        if lvl:
            starved += int((c < 0.01 * total / 2**lvl).sum())
    leaves = counts[:, 2**depth - 1 :]
    return {
        "trees": K,
        "depth": depth,
        "tokens_routed": float(counts[:, 0].sum() / max(K, 1)),
        "leaves_reached": int((leaves > 0).sum()),
        "leaves_total": int(leaves.numel()),
        "leaves_reached_fraction": float((leaves > 0).float().mean()),
        "routing_entropy_per_level": entropy,
        "starved_nodes": starved,
        "nodes_per_level_visits": levels,
    }
