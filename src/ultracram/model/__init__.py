"""Models: plain ``nn.Module``s built from a ``ModelConfig`` by ``build_model``."""

from ultracram.model.build import TASKS, build_model, flops_per_token, init_weights, parameter_counts
from ultracram.model.dispatch import fff_implementations, resolve, set_fff_implementation
from ultracram.model.encoder import Encoder
from ultracram.model.feedforward import FastFeedForward
from ultracram.model.heads import (
    EncoderForMaskedLM,
    EncoderForSequenceClassification,
    ModelOutput,
    sparse_mlm_loss,
)
from ultracram.model.inference import for_inference

__all__ = [
    "TASKS",
    "Encoder",
    "EncoderForMaskedLM",
    "EncoderForSequenceClassification",
    "FastFeedForward",
    "ModelOutput",
    "build_model",
    "fff_implementations",
    "flops_per_token",
    "for_inference",
    "init_weights",
    "parameter_counts",
    "resolve",
    "set_fff_implementation",
    "sparse_mlm_loss",
]
