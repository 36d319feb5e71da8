"""Model families own their options (``lamina.models.*_options``): found by key when a config is built, checked
there (bounds, relations between options, exclusions), and written back to YAML unchanged. A layer schedule is
parsed with the config, so a bad mixer name fails at load, naming its key."""

import subprocess
import sys

import pytest

from lamina.config import Config, ModelConfig, config_from_yaml, load_config, section_class
from lamina.errors import LaminaError
from lamina.models.hat_options import HATOptions
from lamina.models.hmt_options import HMTOptions
from lamina.models.megabyte_options import MegabyteOptions


def test_sections_are_found_by_key():
    assert section_class("hmt") is HMTOptions
    assert section_class("hat") is HATOptions
    assert section_class("megabyte") is MegabyteOptions


def test_importing_the_config_loads_no_model():
    code = "import sys, lamina.config; print(any(m.startswith(('lamina.models', 'lamina.mixers', 'torch')) " \
           "for m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False"


@pytest.mark.parametrize("overrides", [
    ["model.hmt={sensory: 4, cache: 4}", "train.seq_len=16"],
    ["model.hat={d_byte: 16, encoder_layers: [hgrn], max_word_len: 8}"],
    ["model.megabyte={patch: 4, local_layers: [{attn: {heads: 2}}], local_mixers: {attn: {mem_len: 3}}}"],
])
def test_yaml_round_trip_keeps_each_family(overrides):
    config = load_config("default", overrides)
    again = config_from_yaml(config.to_yaml(), "saved config")
    assert again == config
    assert [type(options) for _, options in again.model.sections()] == [
        type(options) for _, options in config.model.sections()] != []


def test_a_config_saved_before_the_move_still_loads():
    saved = ("preset: hat\nmodel:\n  d_model: 64\n  layers: [hgrn]\n  hmt: null\n  megabyte: null\n"
             "  hat:\n    d_byte: 32\n    encoder_layers: [attn]\n    decoder_layers: [attn]\n    max_word_len: 16\n")
    config = config_from_yaml(saved, "run.yaml")
    assert config.model.hat == HATOptions(d_byte=32)


def test_the_hmt_segment_comes_from_the_training_segment_and_is_checked_against_it():
    assert load_config("default", ["model.hmt={}", "train.seq_len=48"]).model.hmt.segment == 48
    with pytest.raises(LaminaError, match=r"model\.hmt\.sensory = 40 is longer than a segment .*= 32"):
        load_config("default", ["model.hmt={sensory: 40}", "train.seq_len=32"])
    with pytest.raises(LaminaError, match=r"model\.hmt\.summary_len = 9 is longer"):
        HMTOptions(segment=8, summary_len=9)  # checked by the options, before any model is built


@pytest.mark.parametrize("model, words", [
    ({"hmt": {}, "memory_tokens": 4}, ["model.hmt and model.memory_tokens", "model.memory_tokens=0", "model.hmt=null"]),
    ({"hat": {}, "megabyte": {}}, ["two byte models", "model.megabyte=null", "model.hat=null"]),
    ({"megabyte": {}, "hmt": {}}, ["no segment memory", "model.hmt=null", "model.megabyte=null"]),
])
def test_families_refuse_what_they_exclude(model, words):
    with pytest.raises(LaminaError) as err:
        ModelConfig(**model)
    assert all(w in str(err.value) for w in words), str(err.value)


def test_byte_models_need_the_byte_tokenizer():
    with pytest.raises(LaminaError, match="model.hat needs data.tokenizer=bytes"):
        load_config("default", ["model.hat={}", "data.tokenizer=words"])
    assert load_config("default", ["model.hat={}", "data.tokenizer=bytes"]).model.hat == HATOptions()


@pytest.mark.parametrize("where, overrides", [
    ("model.layers[2]", ["model.layers=[hgrn, hgrn, transformr]"]),
    ("model.layers[1]", ["model.layers={pattern: [hgrn, atn], repeat: 2}"]),
    ("model.mixers.transformr", ["model.mixers={transformr: {heads: 2}}"]),
    ("model.hat.encoder_layers[0]", ["model.hat={encoder_layers: [nope]}"]),
    ("model.megabyte.local_layers[0]", ["model.megabyte={local_layers: [nope]}"]),
])
def test_an_unknown_mixer_fails_at_load_naming_its_key(where, overrides):
    with pytest.raises(LaminaError) as err:
        load_config("default", overrides)
    message = str(err.value)
    assert message.startswith(f"{where}: unknown mixer") and "available mixers: attn" in message and "\n" not in message


def test_an_unknown_mixer_in_a_yaml_file_fails_at_load(tmp_path):
    path = tmp_path / "run.yaml"
    path.write_text("model:\n  layers: [hgrn, {atn: {heads: 2}}]\n")
    with pytest.raises(LaminaError, match=r"^model\.layers\[1\]: unknown mixer 'atn'"):
        load_config(str(path))


def test_a_whole_config_completes_every_family():
    config = Config(model=ModelConfig(hmt={"cache": 2}))
    assert config.model.hmt == HMTOptions(segment=config.train.seq_len, cache=2)
