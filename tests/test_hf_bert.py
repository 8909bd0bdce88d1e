"""ultracram's bert architecture against Hugging Face's BertForMaskedLM (issue 2)."""

import pytest
import torch

from conftest import perturbed_hf_bert

transformers = pytest.importorskip("transformers")

from ultracram.interop.hf_bert import ConversionError, config_from_hf_bert, state_dict_from_hf_bert  # noqa: E402
from ultracram.model import build_model  # noqa: E402


@pytest.fixture(scope="module")
def pair():
    hf = perturbed_hf_bert(vocab_size=500, hidden_size=64, num_hidden_layers=3, num_attention_heads=4,
                           intermediate_size=128, max_position_embeddings=64)  # fmt: skip
    hf_config = hf.config
    config = config_from_hf_bert(hf_config.to_dict())
    ours = build_model(config, "mlm").eval()
    state = state_dict_from_hf_bert(hf.state_dict(), config.num_layers)
    missing, unexpected = ours.load_state_dict(state, strict=False)
    assert missing == ["mlm_head.decoder.weight"] and not unexpected  # the decoder is tied to the embeddings
    return hf, ours


def test_same_logits_without_padding(pair):
    hf, ours = pair
    ids = torch.randint(5, 500, (3, 40))
    types = torch.randint(0, 2, (3, 40))
    with torch.no_grad():
        ref = hf(input_ids=ids, token_type_ids=types).logits
        got = ours(ids, token_type_ids=types).logits
    assert (got - ref).abs().max() < 1e-4


def test_same_logits_with_padding(pair):
    hf, ours = pair
    ids = torch.randint(5, 500, (3, 40))
    mask = torch.ones_like(ids)
    mask[0, 25:] = 0
    mask[2, 10:] = 0
    ids = ids.masked_fill(mask == 0, 0)
    with torch.no_grad():
        ref = hf(input_ids=ids, attention_mask=mask).logits
        got = ours(ids, attention_mask=mask).logits
    real = mask.bool()
    assert (got[real] - ref[real]).abs().max() < 1e-4


def test_missing_and_unused_tensors_are_errors(pair):
    hf, _ = pair
    state = dict(hf.state_dict())
    state.pop("bert.encoder.layer.1.output.dense.weight")
    state["bert.encoder.layer.0.extra.weight"] = torch.zeros(1)
    with pytest.raises(ConversionError) as err:
        state_dict_from_hf_bert(state, 3)
    assert "missing tensor bert.encoder.layer.1.output.dense.weight" in str(err.value)
    assert "unused tensor bert.encoder.layer.0.extra.weight" in str(err.value)
