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
