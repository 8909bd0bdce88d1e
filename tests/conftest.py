import json
import os
from pathlib import Path
from typing import Any

import pytest
import torch

SHARED = Path(os.environ.get("ULTRACRAM_SHARED", Path(__file__).resolve().parents[1].parent / "shared"))


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """../shared/data beside the project (CI and developers have it)."""
    path = SHARED / "data"
    if not path.is_dir():
        pytest.skip(f"shared data not found at {path}")
    return path


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs CUDA")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


def pretrain_flags(values: dict[str, Any]) -> list[str]:
    """``ultracram pretrain`` flags for PretrainConfig field values (None: left out)."""
    args = []
    for k, v in values.items():
        if isinstance(v, bool):
            args += [f"--{k}", str(v).lower()]
        elif isinstance(v, dict):
            args += [f"--{k}", json.dumps(v)]
        elif v is not None:
            args += [f"--{k}", str(v)]
    return args


def perturbed_hf_bert(**config: Any):
    """A transformers ``BertForMaskedLM`` (eval mode, seed 0) from ``BertConfig(**config)``, with
    non-trivial LayerNorm and bias values, so that a mis-mapped tensor shows in a comparison."""
    import transformers

    torch.manual_seed(0)
    model = transformers.BertForMaskedLM(transformers.BertConfig(**config)).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "LayerNorm" in name or name.endswith("bias"):
                p.add_(torch.randn_like(p) * 0.1)
    return model


# The tiny transformers BERT of the interop tests: vocabulary V, hidden H, NH heads, L layers.
V, H, NH, L = 120, 32, 4, 2


def bert_vocab(n: int) -> list[str]:
    """A BERT vocab.txt's lines: the five special tokens, then w0, w1, ..."""
    return ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + [f"w{i}" for i in range(n - 5)]


@pytest.fixture(scope="module")
def hf_bert():
    return perturbed_hf_bert(vocab_size=V, hidden_size=H, num_hidden_layers=L, num_attention_heads=NH,
                             intermediate_size=64, max_position_embeddings=32)  # fmt: skip


def tiny_shards(directory: Path, paragraphs: int) -> Path:
    """Token shards of 32-token sequences, vocabulary 512, from the first ``paragraphs``
    paragraphs of the embedded Wikipedia sample, in ``directory / "shards"``."""
    from ultracram.data.corpus import prepare_corpus
    from ultracram.data.sample import read_sample_paragraphs
    from ultracram.data.tokenizer import train_tokenizer

    text = read_sample_paragraphs()[:paragraphs]
    train_tokenizer(text, vocab_size=512).save(str(directory / "tokenizer.json"))
    (directory / "text.txt").write_text("\n\n".join(text))
    prepare_corpus([directory / "text.txt"], directory / "shards", directory / "tokenizer.json", seq_len=32,
                   workers=0, max_token_ratio=1.0)  # fmt: skip
    return directory / "shards"


def tiny_fff_model(task: str, trees: int = 1, depth: int = 5):
    """ultrafastbert-tiny (H = 64, 2 layers) with FFF weights larger than the init, so outputs
    depend on routing and near-ties are rare."""
    from ultracram.config import get_preset
    from ultracram.model import FastFeedForward, build_model

    config = get_preset("ultrafastbert-tiny").replace(fff_trees=trees, fff_depth=depth)
    torch.manual_seed(0)
    model = build_model(config, task=task, num_labels=3)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, FastFeedForward):
                m.linear_in.weight.normal_(0, 0.3)
                m.linear_in.bias.normal_(0, 0.3)
                m.linear_out.weight.normal_(0, 0.3)
    return model


def model_outputs(model, task: str, ids, mask):
    """(B, T, H) hidden states, (B, T, V) MLM logits or (B, 3) class logits."""
    with torch.no_grad():
        out = model(ids, attention_mask=mask)
    return out if task == "encoder" else out.logits
