"""Typed configuration: dataclasses that round-trip to YAML and reject bad input.

A run is described by :class:`Config` (``model``, ``data``, ``train``). Presets
are YAML files shipped in ``lamina/presets``; ``key=value`` overrides use dotted
paths (``train.steps=100``, ``model.layers=[hgrn,hgrn,attn]``) and values are
read as YAML. Unknown keys, wrong types and values outside a fixed set are
:class:`~lamina.errors.LaminaError` messages that name the key and what is
allowed.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import dataclass, field, fields
from importlib import resources
from pathlib import Path
from typing import Any, Literal, Optional, Union

import yaml

from lamina.errors import LaminaError


@dataclass
class HMTConfig:
    """Hierarchical Memory Transformer options (He et al. 2024; see :mod:`lamina.models.hmt`)."""

    segment: Optional[int] = None  # tokens per segment; null: train.seq_len
    sensory: int = 8  # sensory memory: the last tokens of the previous segment, read before each segment
    cache: int = 32  # long-term memory: the last memory embeddings kept for recall (FIFO)
    summary_len: Optional[int] = None  # tokens summarised into the recall query; null: half a segment

    def __post_init__(self):
        for key, value, least in (("segment", self.segment, 1), ("sensory", self.sensory, 0),
                                  ("cache", self.cache, 1), ("summary_len", self.summary_len, 1)):
            if value is not None and value < least:
                kind = "a positive integer" if least else "0 (none) or a positive integer"
                raise LaminaError(f"model.hmt.{key} must be {kind}, got {value}")


@dataclass
class HATConfig:
    """Hierarchical Autoregressive Transformer options (Neitemeier et al. 2025; see :mod:`lamina.models.hat`).

    The backbone over words is ``model.layers`` at ``model.d_model``; the byte
    encoder and decoder are layer schedules of their own at ``d_byte``, with
    ``model.mixers`` as their defaults too.
    """

    d_byte: int = 128  # width of the byte encoder and decoder
    encoder_layers: Any = field(default_factory=lambda: ["attn"])
    decoder_layers: Any = field(default_factory=lambda: ["attn"])
    max_word_len: int = 16  # longer runs are cut into words of this many bytes (lamina.data.words)

    def __post_init__(self):
        for key in ("d_byte", "max_word_len"):
            value = getattr(self, key)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise LaminaError(f"model.hat.{key} must be a positive integer, got {value!r}")


@dataclass
class MegabyteConfig:
    """MEGABYTE options (Yu et al. 2023; see :mod:`lamina.models.megabyte`): the local model within each patch.

    The global model over patches is the model's own schedule (``layers``, ``mixers``, ``d_model``).
    """

    patch: int = 8  # P: bytes per patch
    local_d_model: int = 128  # width of the local model (and of each byte's embedding)
    local_layers: Any = field(default_factory=lambda: ["attn"])  # the local model's layer schedule
    local_mixers: dict = field(default_factory=dict)  # default options per mixer name in the local model

    def __post_init__(self):
        for key, value, least in (("patch", self.patch, 2), ("local_d_model", self.local_d_model, 1)):
            if isinstance(value, bool) or not isinstance(value, int) or value < least:
                raise LaminaError(f"model.megabyte.{key} must be an integer >= {least}, got {value!r}")


def _section(value: Any, cls: type, key: str) -> Any:
    """An optional config section given as a mapping in Python (YAML goes through :func:`from_dict`)."""
    if isinstance(value, dict):
        unknown = sorted(set(value) - {f.name for f in fields(cls)})
        if unknown:
            raise LaminaError(f"model.{key} has unknown keys {unknown}; known: {[f.name for f in fields(cls)]}")
        return cls(**value)
    return value


@dataclass
class ModelConfig:
    """The generic LM: embedding, ``len(layers)`` pre-norm blocks, tied head.

    ``layers`` is the layer schedule as data: a list whose entries are a mixer
    name (``hgrn``) or a one-key mapping with per-layer options
    (``{attn: {heads: 4}}``), or ``{pattern: [...], repeat: N}``.
    ``mixers`` gives default options per mixer name for every layer of it.
    """

    d_model: int = 256
    layers: Any = field(default_factory=lambda: ["hgrn"] * 4)
    mixers: dict = field(default_factory=dict)
    mlp_hidden: Optional[int] = None  # default: 8/3 * d_model rounded up to 64
    dropout: float = 0.0
    tie_embeddings: bool = True
    norm_eps: float = 1e-5
    vocab_size: int = 0  # 0: taken from the tokenizer
    # Recurrent Memory Transformer: memory tokens read and written per segment (0: off)
    memory_tokens: int = 0
    memory_segment: Optional[int] = None  # tokens per memory segment; null: train.seq_len
    # Hierarchical Memory Transformer: a mapping of HMTConfig's keys ({} for the defaults); null: off
    hmt: Optional[HMTConfig] = None
    # Hierarchical Autoregressive Transformer: a mapping of HATConfig's keys ({} for the defaults); null: off
    hat: Optional[HATConfig] = None
    # MEGABYTE: the layers above are the global model over patches of bytes, this the local one; null: off
    megabyte: Optional[MegabyteConfig] = None

    def __post_init__(self):
        self.hmt = _section(self.hmt, HMTConfig, "hmt")  # built in Python rather than loaded from YAML
        self.hat = _section(self.hat, HATConfig, "hat")
        self.megabyte = _section(self.megabyte, MegabyteConfig, "megabyte")
        if self.hat is not None and self.megabyte is not None:
            raise LaminaError("model.hat and model.megabyte are two byte models and only one can be used; "
                              "set model.hat=null or model.megabyte=null")
        for key in ("hat", "megabyte"):
            if getattr(self, key) is not None and (self.hmt is not None or self.memory_tokens):
                raise LaminaError(
                    f"model.{key} works on a byte stream of its own and takes no segment memory; "
                    f"set model.hmt=null and model.memory_tokens=0, or model.{key}=null"
                )
        if self.hmt is not None and self.memory_tokens:
            raise LaminaError(
                "model.hmt and model.memory_tokens are two segment memories and only one can be used; "
                "set model.memory_tokens=0 or model.hmt=null"
            )
        if self.memory_tokens < 0:
            raise LaminaError(f"model.memory_tokens must be 0 (off) or a positive integer, got {self.memory_tokens}")
        if self.memory_segment is not None and self.memory_segment < 1:
            raise LaminaError(f"model.memory_segment must be a positive integer or null, got {self.memory_segment}")


@dataclass
class DataConfig:
    """Which corpus, how it is tokenized, and where its files are found."""

    corpus: str = "stdlib"
    tokenizer: Optional[Literal["bytes", "words"]] = None  # None: the corpus' own default
    data_dir: Optional[str] = None  # else $LAMINA_DATA_DIR, then the user cache
    download: bool = True


@dataclass
class TrainConfig:
    """Truncated-BPTT training: ``batch_size`` streams of ``seq_len``-token segments."""

    steps: int = 1000
    batch_size: int = 16
    seq_len: int = 256
    carry_state: bool = True
    # streams: consecutive segments of batch_size streams (state carried);
    # random: windows at random offsets, nanoGPT-style (no state carried)
    sampling: Literal["streams", "random"] = "streams"
    lr: float = 3e-3
    min_lr_ratio: float = 0.1
    warmup_steps: int = 50
    weight_decay: float = 0.1
    beta1: float = 0.9
    beta2: float = 0.95
    grad_clip: float = 1.0
    max_minutes: Optional[float] = None  # stop (and save) once this much wall time has passed
    eval_every: int = 250
    eval_tokens: int = 65536  # tokens of the validation split scored per evaluation; 0: all
    save_every: int = 250
    keep_checkpoints: int = 2
    log_every: int = 10
    seed: int = 0
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    precision: Literal["auto", "fp32", "bf16"] = "auto"  # auto: bf16 autocast on CUDA
    compile: bool = False
    out_dir: Optional[str] = None  # default: runs/<preset>
    sample_tokens: int = 300  # a sample printed at the end; 0: none
    # segments per optimizer step: the carried state is detached only every bptt_segments segments
    # (without carried state, e.g. sampling=random, it only averages the loss over that many batches)
    bptt_segments: int = 1

    def __post_init__(self):
        if self.bptt_segments < 1:
            raise LaminaError(f"train.bptt_segments must be a positive integer, got {self.bptt_segments}")


@dataclass
class Config:
    preset: str = "default"
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)

    def __post_init__(self):
        if self.model.memory_tokens and self.model.memory_segment is None:
            self.model.memory_segment = self.train.seq_len  # memory segments are training segments
        if self.model.hmt is not None and self.model.hmt.segment is None:
            self.model.hmt.segment = self.train.seq_len
        for key in ("hat", "megabyte"):
            if getattr(self.model, key) is not None and self.data.tokenizer == "words":
                raise LaminaError(f"model.{key} models bytes: it needs data.tokenizer=bytes (or null on a byte corpus)")

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.to_dict(), sort_keys=False)


# --------------------------------------------------------------------------- parsing


def _type_name(tp: Any) -> str:
    origin = typing.get_origin(tp)
    if origin is Literal:
        return " | ".join(repr(a) for a in typing.get_args(tp))
    if origin in (Union, types.UnionType):
        return " or ".join(_type_name(a) for a in typing.get_args(tp))
    if tp is type(None):
        return "null"
    return getattr(tp, "__name__", str(tp))


def _coerce(value: Any, tp: Any, where: str) -> Any:
    """Check ``value`` against the annotation ``tp``; numbers given as strings are parsed."""
    if tp is Any:
        return value
    origin = typing.get_origin(tp)
    if origin in (Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        options = [a for a in args if a is not type(None)]
        if len(options) == 1 and dataclasses.is_dataclass(options[0]):  # an optional section: its own messages
            return from_dict(options[0], value, where)
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(value, arg, where)
            except LaminaError as err:
                errors.append(err)
        raise LaminaError(f"{where}: expected {_type_name(tp)}, got {value!r}")
    if origin is Literal:
        allowed = typing.get_args(tp)
        if value not in allowed:
            raise LaminaError(
                f"{where}: {value!r} is not allowed; choose one of {', '.join(map(str, allowed))}"
            )
        return value
    if dataclasses.is_dataclass(tp):
        return from_dict(tp, value, where)
    if tp is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "false"):
            return value.lower() == "true"
        raise LaminaError(f"{where}: expected true or false, got {value!r}")
    if tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, str):
            try:
                return int(value)
            except ValueError:
                pass
        raise LaminaError(f"{where}: expected an integer, got {value!r}")
    if tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):
            try:
                return float(value)
            except ValueError:
                pass
        raise LaminaError(f"{where}: expected a number, got {value!r}")
    if tp is str:
        if isinstance(value, str):
            return value
        raise LaminaError(f"{where}: expected a string, got {value!r}")
    if tp is dict or origin is dict:
        if value is None:
            return {}
        if isinstance(value, dict):
            return value
        raise LaminaError(f"{where}: expected a mapping, got {value!r}")
    raise TypeError(f"unsupported annotation {tp!r} at {where}")


def from_dict(cls: type, data: Any, where: str = "config") -> Any:
    """Build dataclass ``cls`` from a mapping, rejecting unknown keys and bad values."""
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise LaminaError(f"{where}: expected a mapping of keys to values, got {data!r}")
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    unknown = [k for k in data if k not in names]
    if unknown:
        raise LaminaError(
            f"unknown key {_join(where, unknown[0])!r}; allowed keys in {where}: {', '.join(names)}"
        )
    kwargs = {k: _coerce(v, hints[k], _join(where, k)) for k, v in data.items()}
    return cls(**kwargs)


def _join(where: str, key: str) -> str:
    return key if where == "config" else f"{where}.{key}"


# --------------------------------------------------------------------------- presets and overrides


def preset_names() -> list[str]:
    files = resources.files("lamina").joinpath("presets").iterdir()
    return sorted(p.name[:-5] for p in files if p.name.endswith(".yaml"))


def _read_yaml(text: str, source: str) -> dict:
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as err:
        raise LaminaError(f"{source} is not valid YAML: {err}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise LaminaError(f"{source} must hold a mapping of keys to values")
    return data


def load_preset(name_or_path: str) -> dict:
    """A preset's raw mapping: a shipped preset's name, or the path of a YAML file."""
    path = Path(name_or_path)
    if name_or_path.endswith((".yaml", ".yml")) or path.is_file():
        if not path.is_file():
            raise LaminaError(f"config file {name_or_path} does not exist")
        data = _read_yaml(path.read_text(encoding="utf-8"), str(path))
        data.setdefault("preset", path.stem)
        return data
    if name_or_path not in preset_names():
        from lamina.mixers import mixer_names

        if name_or_path in mixer_names():  # a mixer's name: the default preset with every layer of that mixer
            data = load_preset("default")
            data["model"]["layers"] = [name_or_path] * len(data["model"]["layers"])
            data["preset"] = name_or_path
            return data
        raise LaminaError(
            f"unknown preset {name_or_path!r}; shipped presets: {', '.join(preset_names())}; "
            f"or a mixer's name ({', '.join(mixer_names())}) for the default preset with that mixer in every layer, "
            "or the path of a .yaml file"
        )
    text = resources.files("lamina").joinpath("presets", f"{name_or_path}.yaml").read_text()
    data = _read_yaml(text, f"preset {name_or_path}")
    data["preset"] = name_or_path
    return data


def apply_override(data: dict, assignment: str) -> None:
    """Apply one ``dotted.key=value`` override to a raw config mapping in place."""
    key, sep, raw = assignment.partition("=")
    if not sep or not key:
        raise LaminaError(f"override {assignment!r} must look like key=value, e.g. train.steps=100")
    try:
        value = yaml.safe_load(raw) if raw != "" else None
    except yaml.YAMLError:
        value = raw
    parts = key.split(".")
    node = data
    for part in parts[:-1]:
        child = node.get(part)
        if child is None:
            child = node[part] = {}
        if not isinstance(child, dict):
            raise LaminaError(f"override {key!r}: {part!r} is not a section")
        node = child
    node[parts[-1]] = value


def load_config(preset: str = "default", overrides: list[str] = ()) -> Config:
    """Preset (name or file) plus ``key=value`` overrides, validated."""
    data = load_preset(preset)
    for assignment in overrides:
        apply_override(data, assignment)
    return from_dict(Config, data)


def config_from_yaml(text: str, source: str) -> Config:
    return from_dict(Config, _read_yaml(text, source))
