"""Configs: presets load, overrides apply, bad keys and values are named."""

import pytest

from lamina.config import Config, config_from_yaml, load_config, preset_names, with_overrides
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


def test_an_architecture_name_with_a_depth():
    """A mixer's name gets the layers asked for, also where a preset has its name (which keeps its other
    settings); a preset of another name keeps its own schedule; overrides still come last."""
    default, xl = load_config("default"), load_config("xl")
    assert load_config("hgrn", layers=3).model.layers == ["hgrn"] * 3
    assert load_config("hgrn").model.layers == ["hgrn"] * len(default.model.layers)
    two_xl = load_config("xl", layers=2)
    assert two_xl.model.layers == ["xl", "xl"] and two_xl.train == xl.train and two_xl.preset == "xl"
    assert load_config("samba", layers=2).model.layers == load_config("samba").model.layers
    assert load_config("gru", ["model.layers=[attn]"], layers=4).model.layers == ["attn"]


def test_with_overrides_checks_again():
    cfg = load_config("default")
    changed = with_overrides(cfg, ["train.steps=9"])
    assert changed.train.steps == 9 and cfg.train.steps != 9 and changed.model == cfg.model
    with pytest.raises(LaminaError, match="train.steps"):
        with_overrides(cfg, ["train.steps=0"])


def test_config_defaults_round_trip():
    cfg = Config()
    assert config_from_yaml(cfg.to_yaml(), "x") == cfg


# --------------------------------------------------------------------------- bad values, named before any compute

BAD_VALUES = [
    # the model
    ("model.d_model=-5", "model.d_model"),
    ("model.d_model=0", "model.d_model"),
    ("model.d_model=2.5", "model.d_model"),
    ("model.dropout=2", "model.dropout"),
    ("model.dropout=1", "model.dropout"),
    ("model.dropout=-0.1", "model.dropout"),
    ("model.dropout=nan", "model.dropout"),
    ("model.norm_eps=0", "model.norm_eps"),
    ("model.norm_eps=-1e-5", "model.norm_eps"),
    ("model.norm_eps=nan", "model.norm_eps"),
    ("model.norm_eps=.inf", "model.norm_eps"),
    ("model.mlp_hidden=0", "model.mlp_hidden"),
    ("model.mlp_hidden=-64", "model.mlp_hidden"),
    ("model.vocab_size=-1", "model.vocab_size"),
    ("model.memory_tokens=-2", "model.memory_tokens"),
    ("model.memory_segment=0", "model.memory_segment"),
    ("model.hmt={cache: 0}", "model.hmt.cache"),
    ("model.hat={d_byte: -8}", "model.hat.d_byte"),
    ("model.megabyte={local_d_model: 0}", "model.megabyte.local_d_model"),
    # the optimizer and its schedule
    ("train.lr=nan", "train.lr"),
    ("train.lr=.nan", "train.lr"),
    ("train.lr=-1", "train.lr"),
    ("train.lr=0", "train.lr"),
    ("train.lr=inf", "train.lr"),
    ("train.lr=-.inf", "train.lr"),
    ("train.lr=1e999", "train.lr"),
    ("train.min_lr_ratio=-0.1", "train.min_lr_ratio"),
    ("train.min_lr_ratio=1.5", "train.min_lr_ratio"),
    ("train.min_lr_ratio=nan", "train.min_lr_ratio"),
    ("train.weight_decay=-0.1", "train.weight_decay"),
    ("train.weight_decay=inf", "train.weight_decay"),
    ("train.beta1=1", "train.beta1"),
    ("train.beta1=-0.5", "train.beta1"),
    ("train.beta2=1.01", "train.beta2"),
    ("train.beta2=nan", "train.beta2"),
    ("train.grad_clip=0", "train.grad_clip"),
    ("train.grad_clip=-1", "train.grad_clip"),
    ("train.grad_clip=inf", "train.grad_clip"),
    ("train.grad_clip=nan", "train.grad_clip"),
    ("train.max_minutes=0", "train.max_minutes"),
    ("train.max_minutes=-3", "train.max_minutes"),
    ("train.max_minutes=inf", "train.max_minutes"),
    ("train.warmup_steps=-1", "train.warmup_steps"),
    # how long, how often
    ("train.steps=0", "train.steps"),
    ("train.steps=-3", "train.steps"),
    ("train.save_every=0", "train.save_every"),
    ("train.save_every=-10", "train.save_every"),
    ("train.eval_every=0", "train.eval_every"),
    ("train.eval_every=-1", "train.eval_every"),
    ("train.log_every=0", "train.log_every"),
    ("train.log_every=-5", "train.log_every"),
    ("train.eval_tokens=-5", "train.eval_tokens"),
    ("train.keep_checkpoints=0", "train.keep_checkpoints"),
    ("train.sample_tokens=-1", "train.sample_tokens"),
    ("train.bptt_segments=0", "train.bptt_segments"),
    ("train.seed=-1", "train.seed"),
    ("train.seed=99999999999999999999", "train.seed"),
    # the shapes of a batch
    ("train.batch_size=0", "train.batch_size"),
    ("train.batch_size=-4", "train.batch_size"),
    ("train.seq_len=0", "train.seq_len"),
    ("train.seq_len=-128", "train.seq_len"),
    ("train.device=gpu", "train.device"),
    # mixer options, as defaults and per layer
    ("model.mixers={attn: {heads: 0}}", "model.mixers.attn.heads"),
    ("model.mixers={attn: {heads: -2}}", "model.mixers.attn.heads"),
    ("model.mixers={attn: {mem_len: -1}}", "model.mixers.attn.mem_len"),
    ("model.mixers={attn: {window: 0}}", "model.mixers.attn.window"),
    ("model.mixers={attn: {rope_base: nan}}", "model.mixers.attn.rope_base"),
    ("model.mixers={xl: {cmem_rate: 0}}", "model.mixers.xl.cmem_rate"),
    ("model.layers=[{attn: {heads: 0}}]", "model.layers[0].attn.heads"),
    ("model.layers=[hgrn, {fox: {mem_len: -1}}]", "model.layers[1].fox.mem_len"),
    ("model.layers=[{gla: {expand_k: nan}}]", "model.layers[0].gla.expand_k"),
    ("model.layers=[{gla: {gate_temperature: 0}}]", "model.layers[0].gla.gate_temperature"),
    ("model.layers=[{hgrn2: {norm_eps: 0}}]", "model.layers[0].hgrn2.norm_eps"),
    ("model.layers=[{mamba2: {dt_min: -1}}]", "model.layers[0].mamba2.dt_min"),
    ("model.layers=[{retnet: {rope_base: 0}}]", "model.layers[0].retnet.rope_base"),
    ("model.layers=[{linear_attn: {eps: .inf}}]", "model.layers[0].linear_attn.eps"),
    ("model.layers=[{titans: {theta_max: 0}}]", "model.layers[0].titans.theta_max"),
    ("model.layers=[{gru: {hidden: 0}}]", "model.layers[0].gru.hidden"),
    ("model.layers=[{hgrn: {expand_ratio: -1}}]", "model.layers[0].hgrn.expand_ratio"),
    ("model.hat={encoder_layers: [{attn: {heads: 0}}]}", "model.hat.encoder_layers[0].attn.heads"),
    ("model.megabyte={local_layers: [{attn: {mem_len: -4}}]}", "model.megabyte.local_layers[0].attn.mem_len"),
]


@pytest.mark.parametrize("override,key", BAD_VALUES, ids=[o for o, _ in BAD_VALUES])
def test_a_bad_value_is_named_when_the_config_is_built(override, key):
    with pytest.raises(LaminaError) as err:
        load_config("default", [override])
    message = str(err.value)
    assert "\n" not in message
    assert message.startswith(key + " ") or f"{key}:" in message, message
    value = override.partition("=")[2]
    if not value.startswith("{") and not value.startswith("["):  # the value is echoed back
        assert "got" in message
    if "must be" in message:  # a bound: what is allowed and what to write instead
        assert "(the default)" in message and "e.g." in message


def _numeric_fields(cls):
    import dataclasses
    import typing

    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        tp = hints[f.name]
        args = [a for a in typing.get_args(tp) if a is not type(None)] or [tp]
        if args[0] in (int, float):
            yield f.name, args[0]


SECTIONS = [("model", "ModelConfig"), ("train", "TrainConfig")]


@pytest.mark.parametrize("section,cls_name", SECTIONS)
def test_no_float_field_takes_nan_or_infinity(section, cls_name):
    import lamina.config as config

    floats = [name for name, tp in _numeric_fields(getattr(config, cls_name)) if tp is float]
    assert floats
    for name in floats:
        for bad in ("nan", ".inf", "-.inf"):
            with pytest.raises(LaminaError, match=rf"^{section}\.{name} must be a finite number"):
                load_config("default", [f"{section}.{name}={bad}"])


def test_no_mixer_float_option_takes_nan_or_infinity():
    from lamina.mixers import mixer_class, mixer_names

    checked = 0
    for mixer in mixer_names():
        for name, tp in _numeric_fields(mixer_class(mixer).Options):
            if tp is float:
                for bad in (".nan", ".inf"):
                    with pytest.raises(LaminaError, match=rf"model\.mixers\.{mixer}\.{name} must be a finite number"):
                        load_config("default", [f"model.mixers={{{mixer}: {{{name}: {bad}}}}}"])
                checked += 1
    assert checked >= 20


def test_every_lower_bound_is_enforced_one_below():
    """Each declared lower bound of the model and train sections refuses the integer just below it."""
    from lamina.config import ModelConfig, TrainConfig, _field_checks

    for section, cls in (("model", ModelConfig), ("train", TrainConfig)):
        for name, kind, _, bounds, _ in _field_checks(cls):
            if kind == "int" and bounds.ge is not None:
                with pytest.raises(LaminaError, match=rf"^{section}\.{name} "):
                    load_config("default", [f"{section}.{name}={int(bounds.ge) - 1}"])


def test_values_on_the_bounds_are_accepted():
    cfg = load_config("default", [
        "model.dropout=0", "model.vocab_size=0", "model.mlp_hidden=null", "train.warmup_steps=0",
        "train.eval_tokens=0", "train.sample_tokens=0", "train.min_lr_ratio=0", "train.min_lr_ratio=1",
        "train.beta1=0", "train.weight_decay=0", "train.max_minutes=null", "train.max_minutes=0.5",
        "train.steps=1", "train.seed=4294967295", "train.device=cuda:1", "model.mixers={attn: {mem_len: 0, sinks: 0}}",
    ])
    assert cfg.train.eval_tokens == 0 and cfg.train.max_minutes == 0.5 and cfg.train.min_lr_ratio == 1


def test_python_built_configs_and_options_are_checked_too():
    import math

    from lamina.config import ModelConfig, TrainConfig
    from lamina.models.hmt_options import HMTOptions
    from lamina.mixers import mixer_class

    with pytest.raises(LaminaError, match=r"^train\.lr must be a finite number > 0.*got nan"):
        TrainConfig(lr=math.nan)
    with pytest.raises(LaminaError, match=r"^train\.steps must be an integer"):
        TrainConfig(steps=True)
    with pytest.raises(LaminaError, match=r"^model\.d_model must be an integer >= 1, got 0"):
        ModelConfig(d_model=0)
    with pytest.raises(LaminaError, match=r"^model\.hmt\.sensory must be an integer >= 0"):
        HMTOptions(sensory=-1)
    attn = mixer_class("attn")
    with pytest.raises(LaminaError, match=r"^attn\.heads must be an integer >= 1, got 0; e\.g\. heads: 4"):
        attn(32, attn.Options(heads=0))  # not a ZeroDivisionError
    with pytest.raises(LaminaError, match=r"^attn: d_model must be an integer >= 1"):
        attn(0, attn.Options())


def test_an_unknown_mixer_in_a_schedule_is_refused_with_the_config():
    from lamina.config import ModelConfig

    with pytest.raises(LaminaError, match="unknown mixer 'transformr'"):
        ModelConfig(layers=["hgrn", "transformr"])
    with pytest.raises(LaminaError, match=r"model\.hat\.decoder_layers\[0\]"):
        ModelConfig(hat={"decoder_layers": [{"attn": {"headz": 2}}]})


# --------------------------------------------------------------------------- config files and overrides


def test_a_yaml_syntax_error_is_one_line_with_its_place(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("model:\n  d_model: 64\n  layers: [hgrn, attn\ntrain:\n  steps: 5\n")
    with pytest.raises(LaminaError) as err:
        load_config(str(path))
    message = str(err.value)
    assert "\n" not in message
    assert str(path) in message and "not valid YAML" in message
    assert "line 4, column" in message and "flow sequence" in message and "line 3, column 11" in message


def test_an_override_that_is_not_yaml_is_one_line():
    with pytest.raises(LaminaError) as err:
        load_config("default", ["model.layers=[hgrn, attn"])
    message = str(err.value)
    assert "\n" not in message and "model.layers=[hgrn, attn" in message and "not valid YAML" in message
    assert "column" in message
    with pytest.raises(LaminaError, match="not valid YAML"):
        load_config("default", ["data.corpus=@corpus"])
    assert load_config("default", ['data.corpus="@corpus"']).data.corpus == "@corpus"  # quoted, it is text


def test_unreadable_config_files_are_one_line(tmp_path, monkeypatch):
    from pathlib import Path

    directory = tmp_path / "preset.yaml"
    directory.mkdir()
    with pytest.raises(LaminaError, match=r"config file .*preset\.yaml is a directory"):
        load_config(str(directory))
    with pytest.raises(LaminaError, match=r"config file .*missing\.yaml does not exist"):
        load_config(str(tmp_path / "missing.yaml"))
    latin = tmp_path / "latin.yaml"
    latin.write_bytes(b"preset: caf\xe9\n")
    with pytest.raises(LaminaError, match=r"config file .*latin\.yaml is not UTF-8 text \(byte 0xe9 at offset 11\)"):
        load_config(str(latin))
    locked = tmp_path / "locked.yaml"
    locked.write_text("train: {steps: 5}\n")
    read_text = Path.read_text

    def refuse(self, *args, **kwargs):
        if self == locked:
            raise PermissionError(13, "Permission denied", str(self))
        return read_text(self, *args, **kwargs)

    monkeypatch.setattr(Path, "read_text", refuse)
    with pytest.raises(LaminaError, match=r"^cannot read config file .*locked\.yaml: permission denied$"):
        load_config(str(locked))
