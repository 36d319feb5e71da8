"""Configs: presets load, overrides apply, bad keys and values are named."""

import pytest

from lamina.config import Config, config_from_yaml, load_config, preset_names
from lamina.errors import LaminaError
from lamina.models import build_model, parse_layers


@pytest.mark.parametrize("name", preset_names())
def test_every_preset_builds_a_model(name):
    cfg = load_config(name)
    model = build_model(cfg.model, 257)
    assert model.num_parameters() > 0
    assert config_from_yaml(cfg.to_yaml(), "round trip") == cfg


def test_overrides_are_typed():
    cfg = load_config("default", ["train.steps=7", "train.lr=1e-3", "model.layers=[gru, attn]", "train.carry_state=false"])
    assert cfg.train.steps == 7 and cfg.train.lr == pytest.approx(1e-3) and cfg.train.carry_state is False
    assert [s.name for s in parse_layers(cfg.model.layers)] == ["gru", "attn"]


@pytest.mark.parametrize(
    "override,words",
    [
        ("train.stpes=5", ["unknown key", "train.stpes", "steps"]),
        ("model.layers=[hgrn, transformr]", ["unknown mixer", "transformr", "attn"]),
        ("train.steps=many", ["train.steps", "integer", "many"]),
        ("train.precision=fp8", ["train.precision", "bf16"]),
        ("model.mixers={attn: {haeds: 2}}", ["haeds", "heads"]),
        ("bogus=1", ["unknown key", "bogus"]),
    ],
)
def test_bad_config_is_named(override, words):
    with pytest.raises(LaminaError) as err:
        cfg = load_config("default", [override])
        parse_layers(cfg.model.layers, cfg.model.mixers)
    message = str(err.value)
    assert "\n" not in message
    for word in words:
        assert word in message


def test_layer_schedule_forms():
    specs = parse_layers({"pattern": ["hgrn", {"attn": {"heads": 2}}], "repeat": 3}, {"attn": {"mem_len": 8}})
    assert [s.name for s in specs] == ["hgrn", "attn"] * 3
    assert specs[1].options.heads == 2 and specs[1].options.mem_len == 8


def test_unknown_preset():
    with pytest.raises(LaminaError, match="unknown preset"):
        load_config("no-such-preset")


def test_config_defaults_round_trip():
    cfg = Config()
    assert config_from_yaml(cfg.to_yaml(), "x") == cfg
