"""Task models: an encoder plus a head. Every head has the same contract as in Hugging Face:
labels in, loss out; the loss includes the encoder's weighted auxiliary losses (Switch load
balance, soft-FFF hardening). Besides ``loss``, a head reports the task loss alone and the number
of items it averaged over (``task_loss``, ``count``), so a training step can weight micro
batches and ranks by their item counts without computing the loss a second time."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from ultracram.config import IGNORE_INDEX, ModelConfig, masked_token_count
from ultracram.model.encoder import Encoder, layer_norm
from ultracram.model.feedforward import ACTIVATIONS


@dataclass
class ModelOutput:
    """``logits``: (B, T, V) for dense MLM, (k, V) for sparse MLM with labels (k masked
    positions, their labels in ``labels``), (B, C) for classification, (B,) for regression."""

    logits: torch.Tensor
    loss: torch.Tensor | None = None  # task_loss + aux_loss: what a plain loop backpropagates
    labels: torch.Tensor | None = None
    aux_loss: torch.Tensor | None = None  # weighted, already in loss (Encoder.aux_loss)
    task_loss: torch.Tensor | None = None  # () fp32: mean of the task loss over `count` items
    count: torch.Tensor | None = None  # () int64: labelled items (masked tokens, examples)


def sparse_mlm_loss(
    hidden: torch.Tensor, labels: torch.Tensor, mask_rate: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """Select the masked positions for a sparse MLM head, with a static count.

    hidden (B, T, H), labels (B, T) -> hidden at masked positions (k, H), their labels (k,),
    where k = masked_token_count(B*T, mask_rate) is fixed by the batch shape, so the decoder's
    matmul has one shape every step (cramming's sparse prediction; torch.compile keeps one
    graph and the vocabulary projection costs mask_rate of the dense one). The collator masks
    exactly k positions; a stable sort puts them first. Any selected position that is not
    masked carries IGNORE_INDEX and adds nothing to the loss.
    """
    flat_labels = labels.reshape(-1)
    k = masked_token_count(flat_labels.numel(), mask_rate)
    order = torch.argsort((flat_labels != IGNORE_INDEX).to(torch.int8), descending=True, stable=True)[:k]
    return hidden.reshape(-1, hidden.shape[-1])[order], flat_labels[order]


class MaskedLMHead(nn.Module):
    """Optional BERT transform (dense, activation, LayerNorm), then the vocabulary decoder."""

    def __init__(self, config: ModelConfig):
        super().__init__()
        if config.mlm_head_transform:
            self.transform: nn.Module = nn.Sequential(
                nn.Linear(config.hidden_size, config.hidden_size, bias=config.bias),
                _Activation(config.activation),
                layer_norm(config),
            )
        else:
            self.transform = nn.Identity()
        self.decoder = nn.Linear(config.hidden_size, config.vocab_size, bias=config.bias)

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.decoder(self.transform(hidden))


class _Activation(nn.Module):
    def __init__(self, name: str):
        super().__init__()
        self.name, self.fn = name, ACTIVATIONS[name]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fn(x)

    def extra_repr(self) -> str:
        return self.name


class EncoderForMaskedLM(nn.Module):
    """Encoder + MLM head. With ``sparse_prediction`` and labels, logits are computed only at
    masked positions; without labels, logits cover every position (for inference)."""

    def __init__(self, config: ModelConfig):
        super().__init__()
        self.config = config
        self.encoder = Encoder(config)
        self.mlm_head = MaskedLMHead(config)
        if config.tie_embeddings:
            self.mlm_head.decoder.weight = self.encoder.embeddings.word.weight

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        token_type_ids: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
    ) -> ModelOutput:
        hidden = self.encoder(input_ids, attention_mask, token_type_ids)  # (B, T, H)
        aux = self.encoder.aux_loss()
        if labels is None:
            return ModelOutput(logits=self.mlm_head(hidden), aux_loss=aux)
        if self.config.sparse_prediction:
            hidden, labels = sparse_mlm_loss(hidden, labels, self.config.mask_rate)  # (k, H), (k,)
        logits = self.mlm_head(hidden)
        flat = labels.reshape(-1)
        task_loss = F.cross_entropy(logits.reshape(flat.numel(), -1).float(), flat, ignore_index=IGNORE_INDEX)
        count = (flat != IGNORE_INDEX).sum()
        loss = task_loss if aux is None else task_loss + aux
        return ModelOutput(logits=logits, loss=loss, labels=labels, aux_loss=aux, task_loss=task_loss,
                           count=count)  # fmt: skip


class Pooler(nn.Module):
    """(B, T, H) -> (B, P): dense+tanh on [CLS] (BERT/cramming), raw [CLS], or masked mean."""

    def __init__(self, config: ModelConfig):
        super().__init__()
        self.kind = config.pooler
        if self.kind == "cls_tanh":
            self.dense = nn.Linear(config.hidden_size, config.pooler_size, bias=True)
        self.out_features = config.pooler_size if self.kind == "cls_tanh" else config.hidden_size

    def forward(self, hidden: torch.Tensor, attention_mask: torch.Tensor | None) -> torch.Tensor:
        if self.kind == "mean":
            if attention_mask is None:
                return hidden.mean(1)
            m = attention_mask[:, :, None].to(hidden.dtype)
            return (hidden * m).sum(1) / m.sum(1).clamp_min(1.0)
        cls = hidden[:, 0]
        return torch.tanh(self.dense(cls)) if self.kind == "cls_tanh" else cls


class EncoderForSequenceClassification(nn.Module):
    """Encoder + pooler + dropout + linear classifier. ``num_labels == 1`` is regression
    (MSE, e.g. STS-B); otherwise single-label classification (cross-entropy)."""

    def __init__(self, config: ModelConfig, num_labels: int = 2):
        super().__init__()
        if num_labels < 1:
            raise ValueError(f"num_labels must be >= 1, got {num_labels}")
        self.config, self.num_labels = config, num_labels
        self.encoder = Encoder(config)
        self.pooler = Pooler(config)
        self.dropout = nn.Dropout(config.classifier_dropout)
        self.classifier = nn.Linear(self.pooler.out_features, num_labels)

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        token_type_ids: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
    ) -> ModelOutput:
        hidden = self.encoder(input_ids, attention_mask, token_type_ids)
        aux = self.encoder.aux_loss()
        logits = self.classifier(self.dropout(self.pooler(hidden, attention_mask)))  # (B, C)
        if self.num_labels == 1:
            logits = logits.squeeze(-1)  # (B,)
        if labels is None:
            return ModelOutput(logits=logits, aux_loss=aux)
        if self.num_labels == 1:
            task_loss = F.mse_loss(logits.float(), labels.float())
        else:
            task_loss = F.cross_entropy(logits.float(), labels.long())
        count = torch.tensor(labels.shape[0], device=labels.device)
        loss = task_loss if aux is None else task_loss + aux
        return ModelOutput(logits=logits, loss=loss, labels=labels, aux_loss=aux, task_loss=task_loss,
                           count=count)  # fmt: skip
