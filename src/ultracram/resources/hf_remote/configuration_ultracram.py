"""Hugging Face config for models exported by ultracram (``ultracram export --format hf``).

Self-contained: needs ``transformers`` and ``torch`` only, not ultracram. The architecture is the
ultracram ``ModelConfig`` stored as a dict under ``ultracram_model``.
"""

from transformers import PretrainedConfig


class UltracramConfig(PretrainedConfig):
    model_type = "ultracram"

    def __init__(self, ultracram_model=None, ultracram_task="mlm", **kwargs):
        model = dict(ultracram_model or {})
        self.ultracram_model = model
        self.ultracram_task = ultracram_task
        # The usual Hugging Face names, for tools that read them.
        self.vocab_size = model.get("vocab_size", 32768)
        self.hidden_size = model.get("hidden_size", 768)
        self.num_hidden_layers = model.get("num_layers", 16)
        self.num_attention_heads = model.get("num_heads", 12)
        self.max_position_embeddings = model.get("max_seq_len", 128)
        self.initializer_range = model.get("initializer_range", 0.02)
        kwargs.setdefault("pad_token_id", model.get("pad_token_id", 0))
        kwargs.setdefault("tie_word_embeddings", model.get("tie_embeddings", True))
        super().__init__(**kwargs)
