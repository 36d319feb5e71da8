"""Typed configuration: dataclasses that round-trip to YAML and reject bad input.

A run is described by :class:`Config` (``model``, ``data``, ``train``). Presets
are YAML files shipped in ``lamina/presets``; ``key=value`` overrides use dotted
paths (``train.steps=100``, ``model.layers=[hgrn,hgrn,attn]``) and values are
read as YAML. Unknown keys, wrong types, values outside a fixed set and numbers
outside a field's bounds are :class:`~lamina.errors.LaminaError` messages that
name the key, the value, what is allowed and what to set instead. They are
raised while the config is built, before a corpus is read or a model allocated.

A numeric field states its bounds where it is declared (:func:`bounded`), and
one routine (:func:`check_values`) checks every dataclass against them, the
mixers' ``Options`` included (:mod:`lamina.mixers.base` declares theirs). A
float field never takes NaN or an infinity.

The model families' own sections (``model.hmt``, ``model.hat``,
``model.megabyte``) are declared beside their models as :class:`ModelSection`
dataclasses, with their checks and exclusions; this module finds them by key
(:func:`section_class`) when a config is built.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import re
import types
import typing
from dataclasses import dataclass, field, fields
from importlib import resources
from pathlib import Path
from typing import Any, ClassVar, Literal, Optional, Union

import yaml

from lamina.errors import LaminaError, one_line, os_reason

# --------------------------------------------------------------------------- bounds


@dataclass(frozen=True)
class Bounds:
    """The numbers a field allows: at least ``ge`` (or more than ``gt``), at most ``le`` (or less than ``lt``).

    ``note`` says what a special value means (``"0: the whole validation split"``). NaN and the infinities are
    never allowed in a float field.
    """

    ge: float | None = None
    gt: float | None = None
    le: float | None = None
    lt: float | None = None
    note: str = ""

    def allows(self, value: float) -> bool:
        if not math.isfinite(value):
            return False
        return not (
            (self.ge is not None and value < self.ge) or (self.gt is not None and value <= self.gt)
            or (self.le is not None and value > self.le) or (self.lt is not None and value >= self.lt)
        )

    def describe(self, name: str, integer: bool, optional: bool) -> str:
        """``"an integer >= 1"``, ``"a finite number with 0 <= beta1 < 1"``, ``"... or null"``, then the note."""
        kind = "an integer" if integer else "a finite number"
        low = (">=", self.ge) if self.ge is not None else (">", self.gt) if self.gt is not None else None
        high = ("<=", self.le) if self.le is not None else ("<", self.lt) if self.lt is not None else None
        if low and high:
            flip = {">=": "<=", ">": "<"}[low[0]]
            text = f"{kind} with {_number(low[1])} {flip} {name} {high[0]} {_number(high[1])}"
        elif low or high:
            op, limit = low or high
            text = f"{kind} {op} {_number(limit)}"
        else:
            text = kind
        if optional:
            text += " or null"
        return f"{text} ({self.note})" if self.note else text


NO_BOUNDS = Bounds()


def bounded(default: Any, *, ge=None, gt=None, le=None, lt=None, note: str = "") -> Any:
    """A dataclass field with ``default`` whose value must lie within the given :class:`Bounds`."""
    return field(default=default, metadata={"bounds": Bounds(ge, gt, le, lt, note)})


_DECLARED: dict[type, dict[str, Bounds]] = {}


def declare_bounds(cls: type, bounds: dict[str, Bounds]) -> None:
    """Bounds for fields of dataclass ``cls`` declared elsewhere than on the field (the mixers' ``Options``,
    by option name, in :mod:`lamina.mixers.base`). A bound given on the field itself wins."""
    _DECLARED.setdefault(cls, {}).update(bounds)
    _field_checks.cache_clear()


@functools.lru_cache(maxsize=None)
def _field_checks(cls: type) -> tuple[tuple[str, str, bool, Bounds, Any], ...]:
    """``(name, "int"|"float", optional, bounds, default)`` for each numeric field of dataclass ``cls``."""
    hints = typing.get_type_hints(cls)
    declared = {}
    for klass in reversed(cls.__mro__):
        declared.update(_DECLARED.get(klass, {}))
    checks = []
    for f in fields(cls):
        tp, optional = hints[f.name], False
        if typing.get_origin(tp) in (Union, types.UnionType):
            args = [a for a in typing.get_args(tp) if a is not type(None)]
            optional = len(args) < len(typing.get_args(tp))
            tp = args[0] if len(args) == 1 else None
        if tp not in (int, float):
            continue
        bounds = f.metadata.get("bounds") or declared.get(f.name, NO_BOUNDS)
        checks.append((f.name, tp.__name__, optional, bounds, f.default))
    return tuple(checks)


def check_values(obj: Any, where: str) -> None:
    """Check every numeric field of dataclass ``obj`` (config key ``where``) against its bounds.

    An int field needs an integer (not a bool), a float field a finite number; ``None`` only where the
    annotation is optional. The message names the key, the value, what is allowed and an example.
    """
    for name, kind, optional, bounds, default in _field_checks(type(obj)):
        value = getattr(obj, name)
        if value is None and optional:
            continue
        integer = kind == "int"
        if isinstance(value, bool) or not isinstance(value, int if integer else (int, float)):
            ok = False
        else:
            ok = bounds.allows(value)
        if not ok:
            key = _join(where, name)
            allowed = bounds.describe(name, integer, optional)
            raise LaminaError(f"{key} must be {allowed}, got {_show(value)}; {_example(where, name, default)}")


def _number(x: float) -> str:
    return str(int(x)) if float(x).is_integer() and abs(x) < 1e16 else f"{x:g}"


def _show(value: Any) -> str:
    if isinstance(value, float) and (math.isnan(value) or math.isinf(value) or value.is_integer()):
        return str(value)  # nan, inf, -inf, 2.0
    return repr(value)


def _example(where: str, name: str, default: Any) -> str:
    """What to write instead: an override where the key is one, else the option as YAML."""
    if default is dataclasses.MISSING:
        return "give a value within those bounds"
    text = "null" if default is None else _number(default) if isinstance(default, (int, float)) else repr(default)
    if "[" in where or where.split(".")[0] not in ("model", "train", "data"):  # a mixer's option in a schedule
        return f"e.g. {name}: {text} (the default)"
    return f"e.g. {_join(where, name)}={text} (the default)"

# --------------------------------------------------------------------------- the config sections


class ModelSection:
    """The options of a model family, the mapping at config key ``model.<key>`` (null: the family is off).

    A family declares its options beside its code (``lamina.models.hmt_options`` and the like) as a dataclass
    subclass registered with :func:`register_section`; its numeric fields state their bounds with
    :func:`bounded`, :meth:`check` checks what relates several options, and :meth:`complete` what depends
    on the rest of the config. ``conflicts`` names the other ``model`` keys it cannot be used with, and why.
    """

    key: ClassVar[str]  # the key under model
    conflicts: ClassVar[dict[str, str]] = {}  # other model key -> why both cannot be set
    tokenizer: ClassVar[Optional[str]] = None  # the tokenizer the family needs, if any
    layer_schedules: ClassVar[tuple[tuple[str, Optional[str]], ...]] = ()  # (layers field, its mixers field)

    @property
    def config_key(self) -> str:
        return f"model.{self.key}"

    def __post_init__(self):
        check_values(self, self.config_key)
        self.check()

    def check(self) -> None:
        """Refuse values that are each within bounds but disagree with each other (a :class:`LaminaError`)."""

    def complete(self, config: Config) -> None:
        """Fill what defaults to another part of ``config`` and check against it, once the whole config is built."""
        if self.tokenizer is not None and config.data.tokenizer not in (None, self.tokenizer):
            raise LaminaError(f"{self.config_key} needs data.tokenizer={self.tokenizer} "
                              "(or null on a corpus whose own tokenizer it is)")


_SECTIONS: dict[str, type[ModelSection]] = {}


def register_section(cls: type[ModelSection]) -> type[ModelSection]:
    """Class decorator: ``cls`` holds the options at ``model.<cls.key>`` (a :class:`ModelSection` dataclass)."""
    if not dataclasses.is_dataclass(cls) or not issubclass(cls, ModelSection):
        raise TypeError(f"{cls.__name__} must be a dataclass subclass of ModelSection")
    _SECTIONS[cls.key] = cls
    return cls


def section_class(key: str) -> type[ModelSection]:
    """The options class of ``model.<key>``.

    The classes live with their models, a tier above this module, and register themselves when
    :mod:`lamina.models` is imported; it is imported here when a config first needs one rather than when this
    module loads, so that ``import lamina.config`` stays light and free of cycles.
    """
    if key not in _SECTIONS:
        import lamina.models  # noqa: F401  (registers every model family's options)
    return _SECTIONS[key]


def section() -> Any:
    """A field of :class:`ModelConfig` holding a model family's options (:func:`section_class` of its name)."""
    return field(default=None, metadata={"section": True})


def _section(value: Any, key: str) -> Any:
    """An optional config section given as a mapping in Python (YAML goes through :func:`from_dict`)."""
    if isinstance(value, dict):
        cls = section_class(key)
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

    config_key: ClassVar[str] = "model"

    d_model: int = bounded(256, ge=1)
    layers: Any = field(default_factory=lambda: ["hgrn"] * 4)
    mixers: dict = field(default_factory=dict)
    mlp_hidden: Optional[int] = bounded(None, ge=1, note="null: 8/3 d_model rounded up to 64")
    dropout: float = bounded(0.0, ge=0, lt=1)
    tie_embeddings: bool = True
    norm_eps: float = bounded(1e-5, gt=0)
    vocab_size: int = bounded(0, ge=0, note="0: the tokenizer's")
    # Recurrent Memory Transformer: memory tokens read and written per segment
    memory_tokens: int = bounded(0, ge=0, note="0: off")
    memory_segment: Optional[int] = bounded(None, ge=1, note="null: train.seq_len")  # tokens per memory segment
    # the model families' options (lamina.models.*_options), each a mapping of its keys ({} for the defaults);
    # null: off. Hierarchical Memory Transformer:
    hmt: Optional[ModelSection] = section()
    # Hierarchical Autoregressive Transformer:
    hat: Optional[ModelSection] = section()
    # MEGABYTE: the layers above are the global model over patches of bytes, this the local one:
    megabyte: Optional[ModelSection] = section()

    def __post_init__(self):
        for f in fields(self):
            if f.metadata.get("section"):
                setattr(self, f.name, _section(getattr(self, f.name), f.name))  # built in Python, not from YAML
        check_values(self, self.config_key)
        for key, options in self.sections():
            for other, why in options.conflicts.items():
                if getattr(self, other):
                    off = "null" if getattr(ModelConfig, other, None) is None else getattr(ModelConfig, other)
                    raise LaminaError(f"model.{key} and model.{other} {why}; set model.{other}={off} "
                                      f"or model.{key}=null")
        self._check_schedules()

    def sections(self) -> list[tuple[str, ModelSection]]:
        """``(key, options)`` of every model family that is on."""
        return [(f.name, getattr(self, f.name)) for f in fields(self)
                if f.metadata.get("section") and getattr(self, f.name) is not None]

    def _check_schedules(self) -> None:
        """Parse every layer schedule, so that an unknown mixer or a bad option is refused with the config.

        (Options that depend on the width, such as heads dividing ``d_model``, are checked when the model is
        built; :func:`lamina.train.budget.check_fits` builds it on the meta device, before any allocation.)
        """
        from lamina.models.schedule import parse_layers  # the mixer registry sits above the config

        parse_layers(self.layers, self.mixers)
        for key, options in self.sections():
            for layers, mixers in options.layer_schedules:
                defaults = self.mixers if mixers is None else getattr(options, mixers)
                parse_layers(getattr(options, layers), defaults, f"model.{key}.{layers}")


@dataclass
class DataConfig:
    """Which corpus, how it is tokenized, and where its files are found."""

    corpus: str = "stdlib"
    tokenizer: Optional[Literal["bytes", "words"]] = None  # None: the corpus' own default
    data_dir: Optional[str] = None  # else $LAMINA_DATA_DIR, then the user cache
    download: bool = True


_DEVICE = re.compile(r"auto|cpu|cuda(:\d+)?")


@dataclass
class TrainConfig:
    """Truncated-BPTT training: ``batch_size`` streams of ``seq_len``-token segments."""

    config_key: ClassVar[str] = "train"

    steps: int = bounded(1000, ge=1)
    batch_size: int = bounded(16, ge=1)
    seq_len: int = bounded(256, ge=1)
    carry_state: bool = True
    # streams: consecutive segments of batch_size streams (state carried);
    # random: windows at random offsets, nanoGPT-style (no state carried)
    sampling: Literal["streams", "random"] = "streams"
    lr: float = bounded(3e-3, gt=0, note="the peak learning rate")
    min_lr_ratio: float = bounded(0.1, ge=0, le=1, note="the final learning rate as a fraction of lr")
    warmup_steps: int = bounded(50, ge=0, note="0: no warmup")
    weight_decay: float = bounded(0.1, ge=0)
    beta1: float = bounded(0.9, ge=0, lt=1)
    beta2: float = bounded(0.95, ge=0, lt=1)
    grad_clip: float = bounded(1.0, gt=0, note="the largest gradient norm")
    # stop (and save) once this much wall time has passed
    max_minutes: Optional[float] = bounded(None, gt=0, note="null: no time limit")
    eval_every: int = bounded(250, ge=1)
    # tokens of the validation split scored per evaluation
    eval_tokens: int = bounded(65536, ge=0, note="0: the whole validation split")
    save_every: int = bounded(250, ge=1)
    keep_checkpoints: int = bounded(2, ge=1)
    log_every: int = bounded(10, ge=1)
    seed: int = bounded(0, ge=0, le=2**32 - 1)
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    precision: Literal["auto", "fp32", "bf16"] = "auto"  # auto: bf16 autocast on CUDA
    compile: bool = False
    out_dir: Optional[str] = None  # default: runs/<preset>
    sample_tokens: int = bounded(300, ge=0, note="0: none")  # a sample printed at the end
    # segments per optimizer step: the carried state is detached only every bptt_segments segments
    # (without carried state, e.g. sampling=random, it only averages the loss over that many batches)
    bptt_segments: int = bounded(1, ge=1)

    def __post_init__(self):
        check_values(self, self.config_key)
        if not isinstance(self.device, str) or not _DEVICE.fullmatch(self.device):
            raise LaminaError(f"train.device must be auto, cpu, cuda or cuda:N, got {self.device!r}; "
                              "e.g. train.device=auto (the default), which takes CUDA when there is one")


@dataclass
class Config:
    preset: str = "default"
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)

    def __post_init__(self):
        if self.model.memory_tokens and self.model.memory_segment is None:
            self.model.memory_segment = self.train.seq_len  # memory segments are training segments
        for _, options in self.model.sections():
            options.complete(self)

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
    sections = {f.name for f in dataclasses.fields(cls) if f.metadata.get("section")}
    kwargs = {
        k: (None if v is None else from_dict(section_class(k), v, _join(where, k))) if k in sections
        else _coerce(v, hints[k], _join(where, k))
        for k, v in data.items()
    }
    obj = cls(**kwargs)
    check_values(obj, where)  # classes without a __post_init__ that checks (a mixer's Options) are checked here
    return obj


def _join(where: str, key: str) -> str:
    return key if where == "config" else f"{where}.{key}"


# --------------------------------------------------------------------------- presets and overrides


def preset_names() -> list[str]:
    files = resources.files("lamina").joinpath("presets").iterdir()
    return sorted(p.name[:-5] for p in files if p.name.endswith(".yaml"))


def yaml_problem(err: yaml.YAMLError) -> str:
    """A YAML error on one line: ``line L, column C: <problem> (<context> that starts at line L', column C')``.

    PyYAML's own text spans several lines with a copy of the offending line; the CLI prints one.
    """
    mark = getattr(err, "problem_mark", None)
    problem = getattr(err, "problem", None) or getattr(err, "context", None) or str(err)
    text = one_line(problem)
    if mark is not None:
        text = f"line {mark.line + 1}, column {mark.column + 1}: {text}"
    context, context_mark = getattr(err, "context", None), getattr(err, "context_mark", None)
    if context and context != problem:
        where = f" that starts at line {context_mark.line + 1}, column {context_mark.column + 1}" if context_mark else ""
        text += f" ({one_line(context)}{where})"
    return text


def _read_yaml(text: str, source: str) -> dict:
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as err:
        tabs = "; YAML indents with spaces, not tabs" if "'\\t'" in str(err) else ""
        raise LaminaError(f"{source} is not valid YAML: {yaml_problem(err)}; fix the syntax there{tabs}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise LaminaError(f"{source} must hold a mapping of keys to values")
    return data


def read_config_file(path: Path) -> str:
    """The text of a config file, or a one-line error naming the file and what is wrong with it."""
    if path.is_dir():
        raise LaminaError(f"config file {path} is a directory; give the path of a .yaml file")
    if not path.exists():
        raise LaminaError(f"config file {path} does not exist; give a shipped preset's name ({', '.join(preset_names())}) "
                          "or the path of a .yaml file")
    try:
        return path.read_text(encoding="utf-8")
    except UnicodeDecodeError as err:
        raise LaminaError(f"config file {path} is not UTF-8 text (byte 0x{err.object[err.start]:02x} at offset "
                          f"{err.start}); save it as UTF-8") from None
    except OSError as err:
        raise LaminaError(f"cannot read config file {path}: {os_reason(err)}") from None


def load_preset(name_or_path: str) -> dict:
    """A preset's raw mapping: a shipped preset's name, or the path of a YAML file."""
    path = Path(name_or_path)
    if name_or_path.endswith((".yaml", ".yml")) or path.is_file():
        data = _read_yaml(read_config_file(path), f"config file {path}")
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
    except yaml.YAMLError as err:
        raise LaminaError(
            f"override {assignment!r}: the value {raw!r} is not valid YAML: {yaml_problem(err).replace('line 1, ', '')}; "
            f"fix it, or quote text in YAML quotes: '{key}=\"...\"'"
        ) from None
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


def load_config(preset: str = "default", overrides: list[str] = (), layers: int | None = None) -> Config:
    """The one place an architecture's name becomes a config: a preset (a shipped preset's name or a YAML file) or
    a mixer's name (see :func:`load_preset`), then ``key=value`` overrides, validated. With ``layers``, a mixer's
    name gets that many layers of its mixer, even where a preset has its name: the analysis tools set the depth
    of the mixers they compare; a preset of another name keeps its own layer schedule."""
    data = load_preset(preset)
    if layers is not None:
        from lamina.mixers import mixer_names

        if preset in mixer_names():
            data["model"]["layers"] = [preset] * layers
    for assignment in overrides:
        apply_override(data, assignment)
    return from_dict(Config, data)


def with_overrides(cfg: Config, overrides: list[str]) -> Config:
    """``cfg`` with ``key=value`` overrides, validated again (a resumed run's saved config, for one)."""
    data = cfg.to_dict()
    for assignment in overrides:
        apply_override(data, assignment)
    return from_dict(Config, data)


def config_from_yaml(text: str, source: str) -> Config:
    return from_dict(Config, _read_yaml(text, source))
