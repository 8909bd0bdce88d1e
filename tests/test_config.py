import pytest

from ultracram.config import PRESETS, ConfigError, ModelConfig, get_preset


def test_one_error_lists_every_problem():
    values = {**get_preset("crammed-bert-tiny").to_dict(), "hidden_szie": 64, "num_layers": "two",
              "hidden_size": 66, "num_heads": 4}  # fmt: skip
    with pytest.raises(ConfigError) as err:
        ModelConfig.from_dict(values)
    msg = str(err.value)
    assert len(err.value.problems) == 3, msg
    assert "unknown key 'hidden_szie'" in msg and "did you mean 'hidden_size'" in msg
    assert "num_layers: expected an integer, got 'two'" in msg
    assert "hidden_size (66) is not divisible by num_heads (4)" in msg


def test_literal_and_bool_types_are_checked():
    with pytest.raises(ConfigError) as err:
        ModelConfig.from_dict({"ffn": "sparse", "bias": 1})
    assert "ffn: expected one of 'dense' | 'glu' | 'fff' | 'moe', got 'sparse'" in str(err.value)
    assert "bias: expected true or false, got 1" in str(err.value)
    assert "bias: expected true or false" in str(err.value)


def test_direct_construction_validates_too():
    with pytest.raises(ConfigError, match="divisible"):
        ModelConfig(hidden_size=100, num_heads=12)


def test_config_is_frozen_and_replace_validates():
    c = get_preset("crammed-bert")
    with pytest.raises(AttributeError):
        c.hidden_size = 1  # type: ignore[misc]
    assert c.replace(dropout=0.1).dropout == 0.1
    with pytest.raises(ConfigError):
        c.replace(dropout=2.0)


def test_presets_and_generic_fff_names():
    for name in PRESETS:
        assert get_preset(name).name == name
    c = get_preset("ultrafastbert-4x7")
    assert (c.ffn, c.fff_trees, c.fff_depth, c.fff_nodes) == ("fff", 4, 7, 255)
    with pytest.raises(ConfigError, match=r"unknown preset 'crammed-bret'.*crammed-bert"):
        get_preset("crammed-bret")


def test_published_shapes():
    c = get_preset("crammed-bert")
    assert (c.num_layers, c.hidden_size, c.num_heads, c.intermediate_size, c.vocab_size, c.max_seq_len) == (
        16, 768, 12, 3072, 32768, 128)  # fmt: skip
    assert not c.bias and c.norm_position == "pre" and c.ffn == "glu" and c.tie_embeddings
    assert get_preset("ultrafastbert-1x11").fff_nodes == 4095
    b = get_preset("bert-base")
    assert b.norm_position == "post" and b.bias and b.mask_rate == 0.15 and b.type_vocab_size == 2


def test_one_settings_layer_converts_and_reports_everything():
    from typing import Literal

    from ultracram.settings import SettingsError, build, coerce
    from ultracram.train.pretrain_config import PretrainConfig

    assert coerce("1e-3", float) == 1e-3 and coerce(4.0, int) == 4 and coerce("none", int | None) is None
    assert coerce("true", bool) is True and coerce("a,b", list[str]) == ["a", "b"]
    for value, annotation in ((True, int), (2.5, int), ("x", float), (1, bool), ("c", Literal["a", "b"])):
        with pytest.raises(ValueError):
            coerce(value, annotation)
    with pytest.raises(SettingsError) as e:  # unknown key, wrong type and bad value, all in one error
        build(PretrainConfig, {"lrr": 1.0, "micro_batch_size": "many", "budget": "forever"}, "test")
    assert [p.split(":")[0].split(" (")[0] for p in e.value.problems] == [
        "unknown key 'lrr'", "micro_batch_size", "budget"]  # fmt: skip
    assert "did you mean 'lr'" in str(e.value)
