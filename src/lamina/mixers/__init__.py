"""Tier 2: token mixers, one file per family, registered by name.

Importing this package registers every built-in mixer.
"""

from lamina.mixers import (  # noqa: F401  (registration)
    attn,
    block_recurrent,
    deltanet,
    fox,
    gla,
    hgrn,
    hgrn2,
    infini,
    linear_attn,
    mamba2,
    minrnn,
    retnet,
    rglru,
    rnn,
    titans,
    titans_mac,
    xl,
)
from lamina.mixers.base import Mixer, State, detach_state, mixer_class, mixer_names, register, reset_state
from lamina.mixers.forms import choose_form, use_form

__all__ = [
    "Mixer",
    "State",
    "choose_form",
    "detach_state",
    "mixer_class",
    "mixer_names",
    "register",
    "reset_state",
    "use_form",
]
