"""Embeddings, token mixers (attention, Fourier), the transformer block and the encoder.

Shapes: B batch, T sequence, H hidden, nh heads, hd head dim.
``attention_mask`` is (B, T) with 1 for real tokens and 0 for padding, as in Hugging Face.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from ultracram.config import ModelConfig
from ultracram.model.feedforward import FEEDFORWARDS


def layer_norm(config: ModelConfig) -> nn.LayerNorm:
    return nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps, bias=config.bias)


class ScaledSinusoidalPositions(nn.Module):
    """Fixed sinusoids times one learned scalar, initialised to 1/sqrt(H) (cramming,
    after Hua et al. 2022): positions cost one parameter and extrapolate."""

    def __init__(self, config: ModelConfig):
        super().__init__()
        h = config.hidden_size
        pos = torch.arange(config.max_seq_len).unsqueeze(1)  # (T, 1)
        freq = torch.exp(torch.arange(0, h, 2) * (-math.log(10000.0) / h))  # (H/2,)
        table = torch.zeros(config.max_seq_len, h)
        table[:, 0::2] = torch.sin(pos * freq)
        table[:, 1::2] = torch.cos(pos * freq[: h // 2])
        self.register_buffer("table", table, persistent=False)
        self.scale = nn.Parameter(torch.tensor(1.0 / math.sqrt(h)))

    def forward(self, seq_len: int) -> torch.Tensor:
        return self.table[:seq_len] * self.scale  # (T, H)


class Embeddings(nn.Module):
    """Word + position (+ token type) embeddings, optional LayerNorm, dropout."""

    def __init__(self, config: ModelConfig):
        super().__init__()
        self.word = nn.Embedding(config.vocab_size, config.hidden_size, padding_idx=config.pad_token_id)
        self.max_seq_len = config.max_seq_len
        if config.position_embedding == "learned":
            self.position: nn.Module = nn.Embedding(config.max_seq_len, config.hidden_size)
        else:
            self.position = ScaledSinusoidalPositions(config)
        self.token_type = (
            nn.Embedding(config.type_vocab_size, config.hidden_size) if config.type_vocab_size else None
        )
        self.norm = layer_norm(config) if config.embedding_norm else nn.Identity()
        self.dropout = nn.Dropout(config.dropout)

    def forward(self, input_ids: torch.Tensor, token_type_ids: torch.Tensor | None = None) -> torch.Tensor:
        T = input_ids.shape[1]
        if self.max_seq_len < T:
            raise ValueError(f"sequence length {T} exceeds the model's max_seq_len {self.max_seq_len}")
        x = self.word(input_ids)  # (B, T, H)
        if isinstance(self.position, nn.Embedding):
            x = x + self.position(torch.arange(T, device=input_ids.device))
        else:
            x = x + self.position(T)
        if self.token_type is not None:
            if token_type_ids is None:
                token_type_ids = torch.zeros_like(input_ids)
            x = x + self.token_type(token_type_ids)
        return self.dropout(self.norm(x))


class SelfAttention(nn.Module):
    """Multi-head self-attention through ``F.scaled_dot_product_attention`` (fused kernels
    where the device has them). One fused QKV projection, as in cramming."""

    def __init__(self, config: ModelConfig):
        super().__init__()
        self.num_heads = config.num_heads
        self.qkv = nn.Linear(config.hidden_size, 3 * config.hidden_size, bias=config.bias)
        self.out = nn.Linear(config.hidden_size, config.hidden_size, bias=config.bias)
        self.attention_dropout = config.attention_dropout

    def forward(self, x: torch.Tensor, attention_mask: torch.Tensor | None) -> torch.Tensor:
        B, T, H = x.shape
        q, k, v = self.qkv(x).view(B, T, 3, self.num_heads, H // self.num_heads).permute(2, 0, 3, 1, 4)
        # q, k, v: (B, nh, T, hd). Boolean mask (B, 1, 1, T): True = may attend to this key.
        mask = None if attention_mask is None else attention_mask[:, None, None, :].bool()
        y = F.scaled_dot_product_attention(
            q, k, v, attn_mask=mask, dropout_p=self.attention_dropout if self.training else 0.0
        )  # (B, nh, T, hd)
        return self.out(y.transpose(1, 2).reshape(B, T, H))


class FourierMixing(nn.Module):
    """FNet token mixing (Lee-Thorp et al. 2021): real part of the 2-D DFT over the sequence
    and hidden dimensions; no parameters. Padded positions are zeroed first so their content
    never leaks into real tokens. The DFT length is the padded length of the batch, as in FNet,
    which pads every sequence to a fixed length."""

    def __init__(self, config: ModelConfig):
        super().__init__()

    def forward(self, x: torch.Tensor, attention_mask: torch.Tensor | None) -> torch.Tensor:
        if attention_mask is not None:
            x = x * attention_mask[:, :, None].to(x.dtype)
        # FFT in fp32: half-precision FFTs need power-of-two sizes and lose accuracy.
        return torch.fft.fft2(x.float(), dim=(-2, -1)).real.to(x.dtype)


MIXERS: dict[str, type[nn.Module]] = {"attention": SelfAttention, "fourier": FourierMixing}


class Block(nn.Module):
    """One transformer block: token mixing then feedforward, each with a residual.

    pre-LN (cramming):  x = x + mix(norm1(x));   x = x + ffn(norm2(x))
    post-LN (BERT):     x = norm1(x + mix(x));   x = norm2(x + ffn(x))
    """

    def __init__(self, config: ModelConfig):
        super().__init__()
        self.pre_norm = config.norm_position == "pre"
        self.norm1, self.norm2 = layer_norm(config), layer_norm(config)
        self.mixer = MIXERS[config.mixer](config)
        self.ffn = FEEDFORWARDS[config.ffn](config)
        self.dropout = nn.Dropout(config.dropout)

    def forward(self, x: torch.Tensor, attention_mask: torch.Tensor | None) -> torch.Tensor:
        if self.pre_norm:
            x = x + self.dropout(self.mixer(self.norm1(x), attention_mask))
            return x + self.dropout(self.ffn(self.norm2(x), attention_mask))
        x = self.norm1(x + self.dropout(self.mixer(x, attention_mask)))
        return self.norm2(x + self.dropout(self.ffn(x, attention_mask)))


class Encoder(nn.Module):
    """Embeddings, blocks and the optional final LayerNorm: (B, T) ids -> (B, T, H) states."""

    def __init__(self, config: ModelConfig):
        super().__init__()
        self.config = config
        self.embeddings = Embeddings(config)
        self.layers = nn.ModuleList(Block(config) for _ in range(config.num_layers))
        self.final_norm = layer_norm(config) if config.final_norm else nn.Identity()

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        token_type_ids: torch.Tensor | None = None,
    ) -> torch.Tensor:
        x = self.embeddings(input_ids, token_type_ids)
        for layer in self.layers:
            x = layer(x, attention_mask)
        return self.final_norm(x)

    def aux_loss(self) -> torch.Tensor | None:
        """Weighted sum of the auxiliary losses the layers left from their last forward (Switch
        load balance, soft-FFF hardening): sum of ``m.aux_loss_weight * m.aux_loss``, ready to be
        added to the training loss; None when no layer left one."""
        losses = [
            m.aux_loss_weight * m.aux_loss
            for m in self.modules()
            if isinstance(getattr(m, "aux_loss", None), torch.Tensor)
        ]
        return torch.stack(losses).sum() if losses else None
