"""Hugging Face models for checkpoints exported by ultracram (``ultracram export --format hf``).

A self-contained re-implementation of ultracram's encoder (it does not import ultracram): load
with ``AutoModel`` / ``AutoModelForMaskedLM`` / ``AutoModelForSequenceClassification`` and
``trust_remote_code=True``. Module and parameter names are ultracram's, so the exported
weights load unchanged, and the outputs equal ultracram's (checked by ultracram's tests).

Variants (the ``ultracram_model`` dict in config.json): token mixing by self-attention or FNet's
Fourier transform; feedforward dense, GLU (cramming), fast feedforward trees (UltraFastBERT,
computed densely and masked: same outputs as the conditional kernels), or Switch MoE; pre- or
post-LayerNorm; learned or scaled-sinusoidal positions. Shapes: B batch, T sequence, H hidden.
"""

import math

import torch
import torch.nn.functional as F
import transformers
from torch import nn
from transformers import PreTrainedModel
from transformers.modeling_outputs import BaseModelOutput, MaskedLMOutput, SequenceClassifierOutput

from .configuration_ultracram import UltracramConfig

try:  # transformers >= 5: these skip tensors that were loaded from the checkpoint
    from transformers import initialization as init
except ImportError:  # transformers 4
    from torch.nn import init

_TRANSFORMERS_5 = int(transformers.__version__.split(".")[0]) >= 5
ACTIVATIONS = {"gelu": F.gelu, "relu": F.relu}
IGNORE_INDEX = -100


class _Config:
    """Attribute access to the ultracram_model dict."""

    def __init__(self, values):
        self.__dict__.update(values)


def _layer_norm(c):
    return nn.LayerNorm(c.hidden_size, eps=c.layer_norm_eps, bias=c.bias)


class ScaledSinusoidalPositions(nn.Module):
    """Fixed sinusoids times one learned scalar (cramming). The table is computed on the fly."""

    def __init__(self, c):
        super().__init__()
        self.hidden_size = c.hidden_size
        self.scale = nn.Parameter(torch.tensor(1.0 / math.sqrt(c.hidden_size)))

    def forward(self, seq_len, device):
        h = self.hidden_size
        pos = torch.arange(seq_len, device=device).unsqueeze(1)  # (T, 1)
        freq = torch.exp(torch.arange(0, h, 2, device=device) * (-math.log(10000.0) / h))  # (H/2,)
        table = torch.zeros(seq_len, h, device=device)
        table[:, 0::2] = torch.sin(pos * freq)
        table[:, 1::2] = torch.cos(pos * freq[: h // 2])
        return table * self.scale  # (T, H)


class Embeddings(nn.Module):
    def __init__(self, c):
        super().__init__()
        self.word = nn.Embedding(c.vocab_size, c.hidden_size, padding_idx=c.pad_token_id)
        self.max_seq_len = c.max_seq_len
        if c.position_embedding == "learned":
            self.position = nn.Embedding(c.max_seq_len, c.hidden_size)
        else:
            self.position = ScaledSinusoidalPositions(c)
        self.token_type = nn.Embedding(c.type_vocab_size, c.hidden_size) if c.type_vocab_size else None
        self.norm = _layer_norm(c) if c.embedding_norm else nn.Identity()
        self.dropout = nn.Dropout(c.dropout)

    def forward(self, input_ids, token_type_ids=None):
        T = input_ids.shape[1]
        if self.max_seq_len < T:
            raise ValueError(f"sequence length {T} exceeds the model's max_seq_len {self.max_seq_len}")
        x = self.word(input_ids)  # (B, T, H)
        if isinstance(self.position, nn.Embedding):
            x = x + self.position(torch.arange(T, device=input_ids.device))
        else:
            x = x + self.position(T, input_ids.device)
        if self.token_type is not None:
            if token_type_ids is None:
                token_type_ids = torch.zeros_like(input_ids)
            x = x + self.token_type(token_type_ids)
        return self.dropout(self.norm(x))


class SelfAttention(nn.Module):
    """Fused QKV, rows ordered (q/k/v, head, head dim); scaled_dot_product_attention."""

    def __init__(self, c):
        super().__init__()
        self.num_heads = c.num_heads
        self.qkv = nn.Linear(c.hidden_size, 3 * c.hidden_size, bias=c.bias)
        self.out = nn.Linear(c.hidden_size, c.hidden_size, bias=c.bias)
        self.attention_dropout = c.attention_dropout

    def forward(self, x, attention_mask):
        B, T, H = x.shape
        q, k, v = self.qkv(x).view(B, T, 3, self.num_heads, H // self.num_heads).permute(2, 0, 3, 1, 4)
        mask = None if attention_mask is None else attention_mask[:, None, None, :].bool()
        y = F.scaled_dot_product_attention(
            q, k, v, attn_mask=mask, dropout_p=self.attention_dropout if self.training else 0.0
        )  # (B, nh, T, hd)
        return self.out(y.transpose(1, 2).reshape(B, T, H))


class FourierMixing(nn.Module):
    """FNet: real part of the 2-D DFT over sequence and hidden; padded positions zeroed first."""

    def __init__(self, c):
        super().__init__()

    def forward(self, x, attention_mask):
        if attention_mask is not None:
            x = x * attention_mask[:, :, None].to(x.dtype)
        return torch.fft.fft2(x.float(), dim=(-2, -1)).real.to(x.dtype)


class DenseFeedForward(nn.Module):
    def __init__(self, c):
        super().__init__()
        self.dense_in = nn.Linear(c.hidden_size, c.intermediate_size, bias=c.bias)
        self.dense_out = nn.Linear(c.intermediate_size, c.hidden_size, bias=c.bias)
        self.act = ACTIVATIONS[c.activation]

    def forward(self, x, attention_mask=None):
        return self.dense_out(self.act(self.dense_in(x)))


class GatedFeedForward(nn.Module):
    """GLU: dense_in to I, value half then gate half, value * act(gate), I/2 -> H."""

    def __init__(self, c):
        super().__init__()
        self.dense_in = nn.Linear(c.hidden_size, c.intermediate_size, bias=c.bias)
        self.dense_out = nn.Linear(c.intermediate_size // 2, c.hidden_size, bias=c.bias)
        self.act = ACTIVATIONS[c.activation]

    def forward(self, x, attention_mask=None):
        value, gate = self.dense_in(x).chunk(2, dim=-1)
        return self.dense_out(value * self.act(gate))


class FastFeedForward(nn.Module):
    """K trees of depth D (UltraFastBERT). Node n of tree k is row k*N + n, N = 2^(D+1)-1, nodes
    breadth first, children 2n+1 (pre-activation <= 0) and 2n+2 (> 0). Every node is computed,
    then all but the D+1 visited ones are masked."""

    def __init__(self, c):
        super().__init__()
        self.depth, self.trees = c.fff_depth, c.fff_trees
        self.nodes = 2 ** (self.depth + 1) - 1
        self.linear_in = nn.Linear(c.hidden_size, self.trees * self.nodes, bias=True)
        self.linear_out = nn.Linear(self.trees * self.nodes, c.hidden_size, bias=False)
        self.act = ACTIVATIONS[c.activation]

    def forward(self, x, attention_mask=None):
        tokens = x.reshape(-1, x.shape[-1])  # (N, H)
        n = tokens.shape[0]
        logits = self.linear_in(tokens)  # (N, K*nodes)
        with torch.no_grad():
            decisions = (logits > 0).view(n, self.trees, self.nodes)
            node = torch.zeros(n, self.trees, dtype=torch.long, device=x.device)
            mask = torch.zeros(n, self.trees, self.nodes, dtype=x.dtype, device=x.device)
            mask.scatter_(2, node.unsqueeze(2), 1.0)
            for _ in range(self.depth):
                node = 2 * node + 1 + decisions.gather(2, node.unsqueeze(2)).squeeze(2).long()
                mask.scatter_(2, node.unsqueeze(2), 1.0)
        return self.linear_out(self.act(logits) * mask.view(n, -1)).view_as(x)


class SwitchFeedForward(nn.Module):
    """Switch MoE: top-1 router, capacity ceil(factor * real tokens / experts), output scaled by
    the router probability; ``aux_loss`` is the load-balancing loss of the last forward."""

    def __init__(self, c):
        super().__init__()
        h, i, e = c.hidden_size, c.intermediate_size, c.moe_experts
        self.experts, self.capacity_factor = e, c.moe_capacity_factor
        self.router = nn.Linear(h, e, bias=False)
        self.w_in = nn.Parameter(torch.empty(e, h, i))  # (E, H, I)
        self.w_out = nn.Parameter(torch.empty(e, i, h))  # (E, I, H)
        self.act = ACTIVATIONS[c.activation]
        self.aux_loss = None

    def forward(self, x, attention_mask=None):
        tokens = x.reshape(-1, x.shape[-1])
        if attention_mask is None:
            real = torch.ones(tokens.shape[0], device=x.device)
        else:
            real = attention_mask.reshape(-1).to(torch.float32)
        n = real.sum().clamp_min(1.0)
        probs = self.router(tokens).float().softmax(dim=-1)  # (N, E)
        gate, expert = probs.max(dim=-1)
        one_hot = F.one_hot(expert, self.experts).to(probs.dtype) * real[:, None]
        self.aux_loss = self.experts * ((one_hot.sum(0) / n) * ((probs * real[:, None]).sum(0) / n)).sum()
        capacity = math.ceil(self.capacity_factor * int(n.item()) / self.experts)
        position = (one_hot.cumsum(0) * one_hot).sum(-1).long() - 1
        keep = (position < capacity) & (real > 0)
        out = torch.zeros_like(tokens)
        for e in range(self.experts):
            idx = torch.nonzero((expert == e) & keep).squeeze(1)
            if idx.numel():
                h = self.act(tokens[idx] @ self.w_in[e]) @ self.w_out[e]
                out.index_add_(0, idx, h * gate[idx, None].to(h.dtype))
        return out.view_as(x)


MIXERS = {"attention": SelfAttention, "fourier": FourierMixing}
FEEDFORWARDS = {"dense": DenseFeedForward, "glu": GatedFeedForward, "fff": FastFeedForward,
                "moe": SwitchFeedForward}  # fmt: skip


class Block(nn.Module):
    """pre-LN: x + mix(norm1(x)), x + ffn(norm2(x)); post-LN: norm1(x + mix(x)), norm2(x + ffn(x))."""

    def __init__(self, c):
        super().__init__()
        self.pre_norm = c.norm_position == "pre"
        self.norm1, self.norm2 = _layer_norm(c), _layer_norm(c)
        self.mixer = MIXERS[c.mixer](c)
        self.ffn = FEEDFORWARDS[c.ffn](c)
        self.dropout = nn.Dropout(c.dropout)

    def forward(self, x, attention_mask):
        if self.pre_norm:
            x = x + self.dropout(self.mixer(self.norm1(x), attention_mask))
            return x + self.dropout(self.ffn(self.norm2(x), attention_mask))
        x = self.norm1(x + self.dropout(self.mixer(x, attention_mask)))
        return self.norm2(x + self.dropout(self.ffn(x, attention_mask)))


class UltracramPreTrainedModel(PreTrainedModel):
    config_class = UltracramConfig
    base_model_prefix = "encoder"

    @torch.no_grad()
    def _init_weights(self, module):
        std = self.config.initializer_range
        if isinstance(module, nn.Linear | nn.Embedding):
            init.normal_(module.weight, 0.0, std)
            if getattr(module, "bias", None) is not None:
                init.zeros_(module.bias)
        elif isinstance(module, nn.LayerNorm):
            init.ones_(module.weight)
            if module.bias is not None:
                init.zeros_(module.bias)
        elif isinstance(module, SwitchFeedForward):
            init.normal_(module.w_in, 0.0, std)
            init.normal_(module.w_out, 0.0, std)
        elif isinstance(module, ScaledSinusoidalPositions):
            init.constant_(module.scale, 1.0 / math.sqrt(module.hidden_size))

    def _aux_loss(self):
        losses = [
            m.aux_loss for m in self.modules() if isinstance(getattr(m, "aux_loss", None), torch.Tensor)
        ]
        return torch.stack(losses).sum() if losses else None


class UltracramModel(UltracramPreTrainedModel):
    """Embeddings, blocks, optional final LayerNorm: (B, T) ids -> (B, T, H) hidden states."""

    def __init__(self, config):
        super().__init__(config)
        c = _Config(config.ultracram_model)
        self.embeddings = Embeddings(c)
        self.layers = nn.ModuleList(Block(c) for _ in range(c.num_layers))
        self.final_norm = _layer_norm(c) if c.final_norm else nn.Identity()
        self.post_init()

    def get_input_embeddings(self):
        return self.embeddings.word

    def set_input_embeddings(self, value):
        self.embeddings.word = value

    def forward(self, input_ids=None, attention_mask=None, token_type_ids=None, return_dict=None, **kwargs):
        x = self.embeddings(input_ids, token_type_ids)
        for layer in self.layers:
            x = layer(x, attention_mask)
        return BaseModelOutput(last_hidden_state=self.final_norm(x))


class UltracramForMaskedLM(UltracramPreTrainedModel):
    """Encoder + MLM head (optional BERT transform, then the decoder, tied to the embeddings).
    Logits cover every position; the loss is cross-entropy over labelled positions (plus the
    weighted Switch load-balancing loss)."""

    if _TRANSFORMERS_5:
        _tied_weights_keys = {"mlm_head.decoder.weight": "encoder.embeddings.word.weight"}
    else:
        _tied_weights_keys = ["mlm_head.decoder.weight"]

    def __init__(self, config):
        super().__init__(config)
        c = _Config(config.ultracram_model)
        self.encoder = UltracramModel(config)
        self.mlm_head = nn.Module()
        if c.mlm_head_transform:
            self.mlm_head.transform = nn.Sequential(
                nn.Linear(c.hidden_size, c.hidden_size, bias=c.bias),
                _Activation(c.activation),
                _layer_norm(c),
            )
        else:
            self.mlm_head.transform = nn.Identity()
        self.mlm_head.decoder = nn.Linear(c.hidden_size, c.vocab_size, bias=c.bias)
        self.aux_loss_weight = c.moe_aux_loss_weight
        self.post_init()

    def get_output_embeddings(self):
        return self.mlm_head.decoder

    def set_output_embeddings(self, value):
        self.mlm_head.decoder = value

    def forward(self, input_ids=None, attention_mask=None, token_type_ids=None, labels=None, return_dict=None,
                **kwargs):  # fmt: skip
        hidden = self.encoder(input_ids, attention_mask, token_type_ids).last_hidden_state
        logits = self.mlm_head.decoder(self.mlm_head.transform(hidden))  # (B, T, V)
        loss = None
        if labels is not None:
            loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]).float(), labels.reshape(-1),
                                   ignore_index=IGNORE_INDEX)  # fmt: skip
            aux = self._aux_loss()
            if aux is not None:
                loss = loss + self.aux_loss_weight * aux
        return MaskedLMOutput(loss=loss, logits=logits)


class _Activation(nn.Module):
    def __init__(self, name):
        super().__init__()
        self.fn = ACTIVATIONS[name]

    def forward(self, x):
        return self.fn(x)


class UltracramForSequenceClassification(UltracramPreTrainedModel):
    """Encoder + pooler (dense+tanh on [CLS], raw [CLS], or masked mean) + dropout + classifier.
    One label is regression (MSE); logits are (B, num_labels) as in Hugging Face."""

    def __init__(self, config):
        super().__init__(config)
        c = _Config(config.ultracram_model)
        self.num_labels = config.num_labels
        self.encoder = UltracramModel(config)
        self.pooler = nn.Module()
        self.pooler_kind = c.pooler
        if c.pooler == "cls_tanh":
            self.pooler.dense = nn.Linear(c.hidden_size, c.pooler_size, bias=True)
        width = c.pooler_size if c.pooler == "cls_tanh" else c.hidden_size
        self.dropout = nn.Dropout(c.classifier_dropout)
        self.classifier = nn.Linear(width, config.num_labels)
        self.aux_loss_weight = c.moe_aux_loss_weight
        self.post_init()

    def _pool(self, hidden, attention_mask):
        if self.pooler_kind == "mean":
            if attention_mask is None:
                return hidden.mean(1)
            m = attention_mask[:, :, None].to(hidden.dtype)
            return (hidden * m).sum(1) / m.sum(1).clamp_min(1.0)
        cls = hidden[:, 0]
        return torch.tanh(self.pooler.dense(cls)) if self.pooler_kind == "cls_tanh" else cls

    def forward(self, input_ids=None, attention_mask=None, token_type_ids=None, labels=None, return_dict=None,
                **kwargs):  # fmt: skip
        hidden = self.encoder(input_ids, attention_mask, token_type_ids).last_hidden_state
        logits = self.classifier(self.dropout(self._pool(hidden, attention_mask)))  # (B, C)
        loss = None
        if labels is not None:
            if self.num_labels == 1:
                loss = F.mse_loss(logits.squeeze(-1).float(), labels.float())
            else:
                loss = F.cross_entropy(logits.float(), labels.long())
            aux = self._aux_loss()
            if aux is not None:
                loss = loss + self.aux_loss_weight * aux
        return SequenceClassifierOutput(loss=loss, logits=logits)
