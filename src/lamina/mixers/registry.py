"""The mixer registry: names in layer schedules -> mixer classes, and the option bounds every mixer shares.

:func:`register` is the one door a mixer comes in by; importing
:mod:`lamina.mixers` registers every built-in mixer.
"""

from __future__ import annotations

import dataclasses

from lamina.config import Bounds, declare_bounds
from lamina.errors import LaminaError
from lamina.mixers.base import Mixer
from lamina.mixers.forms import FORMS

# The bounds of options by name, the same for every mixer that has the option: :func:`register` declares
# them on the mixer's ``Options``, so that ``from_dict`` refuses ``heads: 0``, ``mem_len: -1`` or a NaN with
# the config key, and :class:`Mixer` refuses them for options built in Python (a field's own
# ``lamina.config.bounded`` metadata wins). Every float option must be finite even when unlisted here.
# What depends on the width (heads dividing d_model) is each mixer's own check, when it is built.
OPTION_BOUNDS: dict[str, Bounds] = {
    "heads": Bounds(ge=1),
    "head_dim": Bounds(ge=1),
    "width": Bounds(ge=1, note="null: the mixer's default"),
    "hidden": Bounds(ge=1, note="null: d_model"),
    "expand": Bounds(ge=1),
    "expand_ratio": Bounds(ge=1),
    "expand_k": Bounds(gt=0),
    "expand_v": Bounds(gt=0),
    "n_state": Bounds(ge=1),
    "d_state": Bounds(ge=1),
    "groups": Bounds(ge=1),
    "gate_rank": Bounds(ge=1),
    "gate_temperature": Bounds(gt=0),
    "conv_width": Bounds(ge=1),
    "mem_len": Bounds(ge=0, note="0: no memory"),
    "cmem_len": Bounds(ge=0, note="0: no compressed memory"),
    "cmem_rate": Bounds(ge=1),
    "clamp_len": Bounds(ge=0, note="null: no clamping"),
    "window": Bounds(ge=1, note="null: unlimited"),
    "sinks": Bounds(ge=0, note="0: none"),
    "segment": Bounds(ge=1),
    "chunk_size": Bounds(ge=1),
    "persistent": Bounds(ge=0),
    "rope_base": Bounds(gt=0),
    "theta_max": Bounds(gt=0, note="null: the mixer's default"),
    "norm_eps": Bounds(gt=0),
    "eps": Bounds(gt=0),
    "dt_min": Bounds(gt=0),
    "dt_max": Bounds(gt=0),
    "dt_floor": Bounds(ge=0),
    "a_min": Bounds(gt=0),
    "a_max": Bounds(gt=0),
}


_REGISTRY: dict[str, type[Mixer]] = {}


def register(name: str):
    """Class decorator: make a mixer available under ``name`` in layer schedules."""

    def wrap(cls: type[Mixer]) -> type[Mixer]:
        if not dataclasses.is_dataclass(cls.Options):
            raise TypeError(f"mixer {name} must define an Options dataclass")
        check_forms(name, cls)
        options = {f.name for f in dataclasses.fields(cls.Options)}
        declare_bounds(cls.Options, {key: b for key, b in OPTION_BOUNDS.items() if key in options})
        _REGISTRY[name] = cls
        cls.name = name
        return cls

    return wrap


def _offers(cls: type[Mixer], form: str) -> bool:
    """Whether ``cls`` implements ``form``: ``step`` (or its own ``forward_recurrent``), else ``forward_<form>``."""
    if form == "recurrent":
        return callable(getattr(cls, "step", None)) or cls.forward_recurrent is not Mixer.forward_recurrent
    return callable(getattr(cls, f"forward_{form}", None))


def check_forms(name: str, cls: type[Mixer]) -> None:
    """Refuse a mixer whose declared ``forms`` and implemented methods disagree (a TypeError at registration).

    :meth:`Mixer._run` calls ``forward_<form>`` for whatever form the policy picks among those declared, so a
    declared form without its method would fail only when first picked, and a method for an undeclared form is
    never run (nor tested by the equivalence harness).
    """
    unknown = [f for f in cls.forms if f not in FORMS]
    if unknown or not cls.forms:
        raise TypeError(f"mixer {name} declares forms {cls.forms!r}; each must be one of {', '.join(FORMS)}")
    for form in FORMS:
        method = "step" if form == "recurrent" else f"forward_{form}"
        if form in cls.forms and not _offers(cls, form):
            raise TypeError(f"mixer {name} declares the {form} form but defines no {method}; define it or drop "
                            f"{form!r} from forms")
        if form not in cls.forms and _offers(cls, form):
            raise TypeError(f"mixer {name} defines {method} but does not declare the {form} form; add {form!r} "
                            "to forms or remove the method")


def mixer_names() -> list[str]:
    return sorted(_REGISTRY)


def mixer_class(name: str) -> type[Mixer]:
    if name not in _REGISTRY:
        raise LaminaError(f"unknown mixer {name!r}; available mixers: {', '.join(mixer_names())}")
    return _REGISTRY[name]
