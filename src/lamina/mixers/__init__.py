"""Tier 2: token mixers, one file per family, registered by name.

Importing this package registers every built-in mixer. ``base`` is the state
API, ``kv_memory`` the protocol of key/value memories, ``registry`` the
names, ``state`` what works on any state, ``masks`` padding and document
starts, ``forms`` the form policy; ``parts`` holds pieces that are not mixers.
"""

from lamina.mixers import (  # noqa: F401  (registration)
    attn,
    block_recurrent,
    deltanet,
    fox,
    gated_deltanet,
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
    titans_mag,
    xl,
)
from lamina.mixers.base import Mixer
from lamina.mixers.forms import choose_form, use_form
from lamina.mixers.kv_memory import KVMemoryMixer
from lamina.mixers.registry import mixer_class, mixer_names, register
from lamina.mixers.state import State, detach_state, reset_state

__all__ = [
    "KVMemoryMixer",
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
