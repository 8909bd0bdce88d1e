"""for_inference (issue 6): whole models give the same outputs through the fast FFF path."""

import pytest
import torch

from conftest import model_outputs, tiny_fff_model
from ultracram.config import get_preset
from ultracram.model import FastFeedForward, build_model, for_inference
from ultracram.model.dispatch import fff_implementations, resolve


@pytest.mark.parametrize("task", ["mlm", "classification", "encoder"])
@pytest.mark.parametrize("trees", [1, 3])
def test_for_inference_keeps_the_outputs(task, trees):
    model = tiny_fff_model(task, trees=trees)
    model.train()
    ids = torch.randint(5, 4096, (3, 40))
    mask = torch.ones_like(ids)
    mask[1, 30:] = 0
    model.eval()
    before = model_outputs(model, task, ids, mask)
    assert set(fff_implementations(model)) == {"masked"}

    same = for_inference(model)
    assert same is model and not model.training
    assert fff_implementations(model) == ["cpu"] * model_layers(model)
    after = model_outputs(model, task, ids, mask)
    scale = before.abs().max()
    assert (after - before).abs().max() <= 1e-5 * scale


def model_layers(model):
    return sum(isinstance(m, FastFeedForward) for m in model.modules())


def test_for_inference_runs_without_no_grad_and_refuses_backward():
    model = for_inference(tiny_fff_model("mlm"))
    logits = model(torch.randint(5, 4096, (2, 16))).logits  # autograd on: the forward works
    with pytest.raises(RuntimeError, match="inference-only"):
        logits.sum().backward()


def test_for_inference_leaves_other_models_alone():
    model = build_model(get_preset("crammed-bert-tiny"), task="mlm")
    assert for_inference(model) is model and not model.training


def test_fastest_inference_implementation_per_device():
    assert resolve("cpu", "infer") == "cpu"
    assert resolve("meta", "infer") == "gather"
    assert resolve("cuda", "infer") in ("triton", "gather")
